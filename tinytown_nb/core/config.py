"""Town configuration: ``<town>/tinytown.toml``, read and written like tinytown 0.10.

A file written here is the full struct the Rust ``tt`` writes (``toml::to_string_pretty``),
so ``tt`` can work in a town made by tinytown_nb and the other way round.

Example::

    >>> cfg = TownConfig.new("mytown", "mytown")
    >>> cfg.save()
    >>> TownConfig.load("mytown").redis_url()
    'unix:///.../mytown/.tt/redis.sock'
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import tomli_w

from . import checks
from .errors import ConfigError, NotInitialized
from .names import sanitize_town_name, validate_town_name
from .urls import is_local_host, redact_url

CONFIG_FILE = "tinytown.toml"
DEFAULT_CLI = "claude"

#: Built-in agent CLI presets, name -> command (spec §5.3).
CLI_PRESETS: dict[str, str] = {
    "claude": "claude --print --dangerously-skip-permissions",
    "auggie": "auggie --print",
    "codex": "codex exec --dangerously-bypass-approvals-and-sandbox",
    "codex-mini": (
        "codex exec --dangerously-bypass-approvals-and-sandbox -m gpt-5.4-mini "
        '-c model_reasoning_effort="medium"'
    ),
    "aider": "aider --yes --no-auto-commits --message",
    "gemini": "gemini",
    "copilot": "gh copilot",
    "cursor": "cursor",
}

#: Command lines that older tinytown versions stored as ``default_cli`` -> preset name.
#: The current preset commands themselves also normalize to their names.
LEGACY_CLI_COMMANDS: dict[str, str] = {
    "codex --dangerously-bypass-approvals-and-sandbox": "codex",
    "codex --dangerously-bypass-approvals-and-sandbox -m gpt-5.4-mini": "codex-mini",
    'codex --dangerously-bypass-approvals-and-sandbox -m gpt-5.4-mini -c model_reasoning_effort="medium"': "codex-mini",
    "codex exec --dangerously-bypass-approvals-and-sandbox -m gpt-5.4-mini": "codex-mini",
    **{command: name for name, command in CLI_PRESETS.items()},
}

#: tinytown_nb's own table in tinytown.toml (the Rust ``tt`` ignores it).
OWN_SECTION = "tinytown_nb"
# the top-level keys this module reads; any other is kept in TownConfig.extra
_READ = ("name", "default_cli", "conductor_cli", "max_agents", "use_central_redis", "use_streams",
         "agent", "redis", "agent_clis", "townhall")

_TCP_OPTIONS = ("host", "port", "password", "tls_enabled", "tls_cert", "tls_key", "tls_ca_cert", "bind")
_REDIS_OPTIONS = ("url", "use_socket", *_TCP_OPTIONS)


def _default_townhall() -> dict[str, Any]:
    return {
        "bind": "127.0.0.1",
        "rest_port": 8080,
        "request_timeout_ms": 30000,
        "auth": {"mode": "none", "api_key_scopes": [], "required_scopes": [], "clock_skew_seconds": 60},
        "tls": {"enabled": False},
        "mtls": {"enabled": False, "required": False},
    }


@dataclass
class AgentCliConfig:
    """One ``[agent_clis.<name>]`` table: a named command line for an agent CLI.

    >>> AgentCliConfig("aider", "aider --yes --no-auto-commits --message").command
    'aider --yes --no-auto-commits --message'
    """

    name: str
    command: str
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RedisSettings:
    """The ``[redis]`` section (spec §5.2); defaults are upstream's serde defaults.

    >>> RedisSettings().socket_path
    '.tt/redis.sock'
    """

    url: str | None = None
    use_socket: bool = True
    socket_path: str = ".tt/redis.sock"
    host: str = "127.0.0.1"
    port: int = 6379
    persist: bool = False
    aof_path: str = ".tt/redis.aof"
    password: str | None = None
    tls_enabled: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca_cert: str | None = None
    bind: str = "127.0.0.1"

    def __repr__(self) -> str:  # a notebook shows reprs: never the password
        shown = {**asdict(self), "url": self.url and redact_url(self.url),
                 "password": self.password and "****"}
        return f"RedisSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


@dataclass
class TownConfig:
    """A town's ``tinytown.toml`` plus its root directory (``root`` is not written).

    >>> cfg = TownConfig.load(town.root)
    >>> cfg.name, cfg.conductor_cli_name()
    ('demo', 'claude')
    """

    name: str
    root: Path = field(default_factory=Path.cwd)
    default_cli: str = DEFAULT_CLI
    conductor_cli: str | None = None
    max_agents: int = 10
    use_central_redis: bool = False
    use_streams: bool = False
    idle_timeout_secs: int = 300  # the [agent] table
    agent_clis: dict[str, AgentCliConfig] = field(default_factory=dict)
    redis: RedisSettings = field(default_factory=RedisSettings)
    townhall: dict[str, Any] = field(default_factory=_default_townhall)
    #: ``[tinytown_nb] archive_after`` in seconds: finished tasks older than that are moved
    #: to the town's archive automatically (``Town.archive``); None: never. The Rust ``tt``
    #: ignores the section.
    archive_after: float | None = None
    #: Top-level keys and tables this package does not read (``[tinytown_nb]`` among them),
    #: written back as they were by :meth:`save`.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """``<root>/tinytown.toml``."""
        return self.root / CONFIG_FILE

    # -- creating, loading, saving -------------------------------------------------------

    @classmethod
    def new(cls, root: str | os.PathLike, name: str, **redis_options: Any) -> TownConfig:
        """Config for a new town: every CLI preset, per-town socket Redis unless told otherwise.

        Redis options: ``url``, ``use_socket``, ``host``, ``port``, ``password``,
        ``tls_enabled``, ``tls_cert``, ``tls_key``, ``tls_ca_cert``, ``bind``. Giving a TCP
        option (host, port, password, TLS, bind) without ``use_socket`` selects TCP mode.
        Upstream's central mode (``~/.tt/config.toml``, shared Redis on port 16379) is not
        used for new towns: a town made here always gets its own socket Redis, which is what
        upstream's ``TT_USE_SOCKET=1`` forces, so that variable changes nothing here. (Towns
        that ``tt`` made in central mode are connected to; see :meth:`uses_central_server`.)

        >>> TownConfig.new("/tmp/t", "t", host="redis.example.com", password="pw").redis_url()
        'redis://:pw@redis.example.com:6379'
        """
        unknown = sorted(set(redis_options) - set(_REDIS_OPTIONS))
        if unknown:
            raise ConfigError(
                f"Unknown Redis option(s) {', '.join(unknown)}; use {', '.join(_REDIS_OPTIONS)}."
            )
        redis = RedisSettings(**{k: v for k, v in redis_options.items() if v is not None})
        if "use_socket" not in redis_options and not redis_options.get("url"):
            if any(redis_options.get(k) not in (None, False) for k in _TCP_OPTIONS):
                redis.use_socket = False
        _check_redis(redis, f"Redis options for town {name!r}")
        return cls(
            name=validate_town_name(name),
            root=Path(root).absolute(),
            agent_clis={n: AgentCliConfig(n, c) for n, c in CLI_PRESETS.items()},
            redis=redis,
        )

    @classmethod
    def load(cls, root: str | os.PathLike) -> TownConfig:
        """Read ``<root>/tinytown.toml``; only ``name`` is required, unknown keys are ignored.

        >>> TownConfig.load("/tmp/no-town")
        Traceback (most recent call last):
        NotInitialized: Town not initialized at /tmp/no-town. ...
        """
        root = Path(root).absolute()
        path = root / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotInitialized(root) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"Invalid TOML in {path}: {exc}. Fix the file or re-create the town."
            ) from None
        except OSError as exc:
            raise ConfigError(f"Cannot read {path}: {exc.strerror}. Check its permissions.") from None
        return cls.from_dict(data, root)

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: str | os.PathLike) -> TownConfig:
        """Build a config from parsed TOML (as :meth:`load` does), with spec defaults.

        >>> TownConfig.from_dict({"name": "t", "use_streams": True}, "/tmp/t").use_streams
        True
        """
        root = Path(root).absolute()
        where = str(root / CONFIG_FILE)
        if "name" not in data:
            raise ConfigError(f'{where} has no `name`. Add a line such as name = "my-town" at the top.')
        get = _Getter(where)
        try:
            name = validate_town_name(get(data, "name", str, None))
        except ConfigError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        default_cli = normalize_cli(get(data, "default_cli", str, DEFAULT_CLI)) or DEFAULT_CLI
        agent = get(data, "agent", dict, {})
        redis_t = get(data, "redis", dict, {})
        redis = RedisSettings(**{
            key: get(redis_t, key, str if default is None else type(default), default, "redis")
            for key, default in asdict(RedisSettings()).items()
        })
        _check_redis(redis, where)
        clis: dict[str, AgentCliConfig] = {}
        for key, entry in get(data, "agent_clis", dict, {}).items():
            if isinstance(entry, str):  # tolerate the global-config form `name = "command"`
                entry = {"command": entry}
            sect = f"agent_clis.{key}"
            if not isinstance(entry, dict) or "command" not in entry:
                raise ConfigError(f"{where}: [{sect}] needs a `command`. Add command = \"...\".")
            clis[key] = AgentCliConfig(
                name=get(entry, "name", str, key, sect),
                command=get(entry, "command", str, None, sect),
                workdir=get(entry, "workdir", str, None, sect),
                env={str(k): str(v) for k, v in get(entry, "env", dict, {}, sect).items()},
            )
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in _READ}
        own = get(data, OWN_SECTION, dict, {})
        archive_after = None
        if "archive_after" in own:
            archive_after = checks.age(own["archive_after"], f"{where}: [{OWN_SECTION}] archive_after")
            if not archive_after:
                raise ConfigError(f"{where}: [{OWN_SECTION}] archive_after must be more than 0; "
                                  "remove the line to archive only by hand.")
        townhall = _default_townhall()
        for key, value in get(data, "townhall", dict, {}).items():
            if isinstance(value, dict) and isinstance(townhall.get(key), dict):
                townhall[key].update(value)
            else:
                townhall[key] = value
        return cls(
            name=name,
            root=root,
            default_cli=default_cli,
            conductor_cli=normalize_cli(get(data, "conductor_cli", str, None)) or None,
            max_agents=get(data, "max_agents", int, 10),
            use_central_redis=get(data, "use_central_redis", bool, False),
            use_streams=get(data, "use_streams", bool, False),
            idle_timeout_secs=get(agent, "idle_timeout_secs", int, 300, "agent"),
            agent_clis=clis,
            redis=redis,
            townhall=townhall,
            archive_after=archive_after,
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """The TOML document :meth:`save` writes: every field, ``None`` values left out.

        >>> TownConfig.new("/tmp/t", "t").to_dict()["agent"]
        {'idle_timeout_secs': 300}
        """
        doc = {
            "name": self.name,
            "default_cli": self.default_cli,
            "conductor_cli": self.conductor_cli,
            "max_agents": self.max_agents,
            "use_central_redis": self.use_central_redis,
            "use_streams": self.use_streams,
            "redis": asdict(self.redis),
            "agent": {"idle_timeout_secs": self.idle_timeout_secs},
            "agent_clis": {k: asdict(v) for k, v in self.agent_clis.items()},
            "townhall": copy.deepcopy(self.townhall),
            **copy.deepcopy(self.extra),
        }
        return _drop_none(doc)

    def save(self) -> None:
        """Write ``<root>/tinytown.toml`` atomically (mode 0600 when it holds a password).

        >>> TownConfig.new("t", "t").save()
        """
        self.root.mkdir(parents=True, exist_ok=True)
        text = tomli_w.dumps(self.to_dict())
        secret = bool(self.redis.password) or redact_url(self.redis.url or "") != (self.redis.url or "")
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{CONFIG_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600 if secret else 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- CLIs ------------------------------------------------------------------------------

    def conductor_cli_name(self) -> str:
        """The CLI the conductor uses: ``conductor_cli`` if set, else ``default_cli``.

        >>> TownConfig.new("/tmp/t", "t").conductor_cli_name()
        'claude'
        """
        return resolve_cli_name(self.conductor_cli or self.default_cli, self)

    # -- Redis -----------------------------------------------------------------------------

    def explicit_url(self) -> str | None:
        """``REDIS_URL`` (non-blank) else ``[redis] url`` (non-blank) else None.

        >>> TownConfig.new("/tmp/t", "t", url="redis://db:6379").explicit_url()
        'redis://db:6379'
        """
        for url in (os.environ.get("REDIS_URL"), self.redis.url):
            if url and url.strip():
                return url.strip()
        return None

    def redis_password(self) -> str | None:
        """Env ``TINYTOWN_REDIS_PASSWORD`` (if non-empty) else ``[redis] password``.

        >>> TownConfig.new("/tmp/t", "t", password="pw").redis_password()
        'pw'
        """
        return os.environ.get("TINYTOWN_REDIS_PASSWORD") or self.redis.password

    def socket_path_abs(self) -> Path:
        """Absolute path of the managed server's unix socket.

        >>> TownConfig.new("/tmp/t", "t").socket_path_abs()
        PosixPath('/tmp/t/.tt/redis.sock')
        """
        return self.root.absolute() / self.redis.socket_path

    def redis_url(self) -> str:
        """Connection URL, first match wins: REDIS_URL, [redis] url, socket, TCP (spec §5.2).

        Contains the password: show :meth:`redacted_url` instead.

        >>> TownConfig.new("/tmp/t", "t", host="localhost", password="secret123").redis_url()
        'redis://:secret123@localhost:6379'
        """
        url = self.explicit_url()
        if url:
            return url
        if self.redis.use_socket:
            return f"unix://{self.socket_path_abs()}"
        scheme = "rediss" if self.redis.tls_enabled else "redis"
        pw = self.redis_password()
        auth = f":{pw}@" if pw else ""
        url = f"{scheme}://{auth}{self.redis.host}:{self.redis.port}"
        if self.redis.tls_enabled:  # redis-py takes these from the query string
            files = {"ssl_ca_certs": self.redis.tls_ca_cert, "ssl_certfile": self.redis.tls_cert,
                     "ssl_keyfile": self.redis.tls_key}
            given = {k: str(self.root / Path(v).expanduser()) for k, v in files.items() if v}
            if given:
                url += "?" + urlencode(given)
        return url

    def redacted_url(self) -> str:
        """:meth:`redis_url` with the password masked as ``****``.

        >>> TownConfig.new("/tmp/t", "t", host="redis.example.com", password="pw").redacted_url()
        'redis://:****@redis.example.com:6379'
        """
        return redact_url(self.redis_url())

    def is_remote_redis(self) -> bool:
        """True for an explicit URL (env or config) or TCP to a non-local host.

        >>> TownConfig.new("/tmp/t", "t", host="127.0.1.1").is_remote_redis()
        False
        """
        if self.explicit_url():
            return True
        return not self.redis.use_socket and not is_local_host(self.redis.host)

    def uses_managed_server(self) -> bool:
        """True when this package runs the town's own Redis: socket mode, no explicit URL.

        >>> TownConfig.new("/tmp/t", "t").uses_managed_server()
        True
        """
        return self.redis.use_socket and not self.explicit_url()

    def check_same_redis(self, options: dict[str, Any]) -> None:
        """Refuse Redis options that differ from this (existing) town's: re-running an init
        with the same options is fine, silently ignoring other ones is not.

        >>> TownConfig.new("/tmp/t", "t").check_same_redis({"url": "redis://db:6379"})
        Traceback (most recent call last):
        ConfigError: Town 't' in /tmp/t already has its Redis settings (url differs); ...
        """
        unknown = sorted(set(options) - set(_REDIS_OPTIONS))
        if unknown:
            raise ConfigError(
                f"Unknown Redis option(s) {', '.join(unknown)}; use {', '.join(_REDIS_OPTIONS)}."
            )
        differ = [k for k, v in options.items() if v is not None and v != getattr(self.redis, k)]
        if differ:
            raise ConfigError(
                f"Town {self.name!r} in {self.root} already has its Redis settings "
                f"({', '.join(differ)} differs); init does not change them. Edit [redis] in "
                f"{self.path}, set REDIS_URL, or init another directory."
            )

    def uses_central_server(self) -> bool:
        """True for a town the Rust ``tt`` made in central mode (``use_central_redis``, TCP
        to this machine): its server is ``tt``'s machine-wide one, started here when down.

        >>> TownConfig.new("/tmp/t", "t").uses_central_server()
        False
        """
        return (self.use_central_redis and not self.redis.use_socket and not self.explicit_url()
                and is_local_host(self.redis.host))

    def unreachable_hint(self) -> str:
        """What to do when the configured Redis does not answer, by where its URL came from.

        >>> TownConfig.new("/tmp/t", "t", port=6380).unreachable_hint()
        'Start the Redis server at 127.0.0.1:6380, or set use_socket = true under [redis] in tinytown.toml to give the town its own managed server.'
        """
        if os.environ.get("REDIS_URL", "").strip():
            return "Check that it is running and REDIS_URL is right, or unset REDIS_URL to use the town's own server."
        if self.explicit_url():
            return ("Check that it is running and the URL is right, or remove url from [redis] in "
                    "tinytown.toml to give the town its own managed server.")
        if self.redis.use_socket:
            return "Check that the town's server is running (Town.connect starts it)."
        return (f"Start the Redis server at {self.redis.host}:{self.redis.port}, or set use_socket = "
                "true under [redis] in tinytown.toml to give the town its own managed server.")


# -- CLI references ----------------------------------------------------------------------


def normalize_cli(value: str | None) -> str | None:
    """Map a legacy or preset command line to its preset name; other values unchanged.

    >>> normalize_cli("codex --dangerously-bypass-approvals-and-sandbox")
    'codex'
    """
    if value is None:
        return None
    value = value.strip()
    return LEGACY_CLI_COMMANDS.get(value, value)


def _infer_alias(ref: str) -> str | None:
    words = ref.split()
    first = words[0] if words else ""
    if first in ("claude", "auggie", "aider", "gemini", "cursor"):
        return first
    if first == "gh" and len(words) > 1 and words[1].startswith("copilot"):
        return "copilot"
    if first.startswith("codex"):
        return "codex-mini" if "gpt-5.4-mini" in ref else "codex"
    return None


def resolve_cli_name(ref: str | None, config: TownConfig | None = None) -> str:
    """Resolve a CLI reference (name or command line) to a configured CLI name (spec §5.3).

    Blank ⇒ ``claude``; a configured name ⇒ itself; a configured command ⇒ its name; a
    command whose first word names a configured CLI ⇒ that name; else the string itself.
    Without ``config`` the built-in presets are used.

    >>> resolve_cli_name("codex exec -m gpt-5.4-mini")
    'codex-mini'
    >>> resolve_cli_name("my-agent --batch")
    'my-agent --batch'
    """
    clis = {n: c.command for n, c in config.agent_clis.items()} if config else dict(CLI_PRESETS)
    ref = (ref or "").strip()
    if not ref:
        return DEFAULT_CLI
    if ref in clis:
        return ref
    for name, command in clis.items():
        if command == ref:
            return name
    alias = _infer_alias(ref)
    return alias if alias in clis else ref


def resolve_cli_command(ref: str | None, config: TownConfig | None = None) -> str:
    """The command line to run for a CLI reference: the configured command or the raw string.

    >>> resolve_cli_command("aider")
    'aider --yes --no-auto-commits --message'
    >>> resolve_cli_command("my-agent --batch")
    'my-agent --batch'
    """
    clis = config.agent_clis if config else {n: AgentCliConfig(n, c) for n, c in CLI_PRESETS.items()}
    name = resolve_cli_name(ref, config)
    if name in clis:
        return clis[name].command
    return (ref or "").strip() or name


# -- town name ---------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def default_town_name(path: str | os.PathLike = ".") -> str:
    """Default town name (spec §5.5): ``<repo>-<branch>`` in git, else the directory name.

    >>> _ = subprocess.run(["git", "switch", "-qc", "feature/auth"], cwd=repo)
    >>> default_town_name(repo)   # a git checkout named repo, on branch feature/auth
    'repo-feature-auth'
    """
    target = Path(path).expanduser().resolve()
    cwd = target
    while not cwd.is_dir() and cwd != cwd.parent:  # the town dir may not exist yet
        cwd = cwd.parent
    toplevel = _git(cwd, "rev-parse", "--show-toplevel")
    if toplevel:
        raw = Path(toplevel).name
        branch = _git(cwd, "rev-parse", "--abbrev-ref", "HEAD")
        if branch:
            raw = f"{raw}-{branch.replace('/', '-')}"
    else:
        raw = target.name or "tinytown"
    return sanitize_town_name(raw)


# -- helpers -----------------------------------------------------------------------------


class _Getter:
    """Typed lookups in parsed TOML with one-line errors that name the file and key."""

    _KIND = {str: "a string", bool: "true or false", int: "an integer", dict: "a table", list: "an array"}

    def __init__(self, where: str):
        self.where = where

    def __call__(self, table: dict, key: str, kind: type, default: Any, section: str = "") -> Any:
        if key not in table:
            return default
        value = table[key]
        label = f"[{section}] {key}" if section else key
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{self.where}: {label} must be {self._KIND.get(kind, kind.__name__)}, "
                f"got {value!r}. Fix that line."
            )
        if kind is int and value < 0:
            raise ConfigError(f"{self.where}: {label} must not be negative, got {value}. Fix that line.")
        return value


def _check_redis(redis: RedisSettings, where: str) -> None:
    if not isinstance(redis.port, int) or isinstance(redis.port, bool) or not 0 < redis.port < 65536:
        raise ConfigError(f"{where}: Redis port must be 1-65535, got {redis.port!r}.")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value
