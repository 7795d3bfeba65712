"""tinytown.toml: loading, saving and Redis URL rules (spec §5, acceptance scenarios 1-11)."""

from __future__ import annotations

import os
import shutil
import stat
from urllib.parse import quote
import subprocess

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tinytown_nb.core.config import (
    CLI_PRESETS,
    AgentCliConfig,
    RedisSettings,
    TownConfig,
    default_town_name,
    resolve_cli_command,
    resolve_cli_name,
)
from tinytown_nb.core.errors import ConfigError, InvalidName, NotInitialized

CODEX_MINI = CLI_PRESETS["codex-mini"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("REDIS_URL", "TINYTOWN_REDIS_PASSWORD", "TT_USE_SOCKET"):
        monkeypatch.delenv(var, raising=False)


def write(tmp_path, text):
    (tmp_path / "tinytown.toml").write_text(text)
    return tmp_path


def tcp(tmp_path, **opts):
    return TownConfig.new(tmp_path, "t", **opts)


# -- scenario 1: a new town's config file ------------------------------------------------


def test_new_town_config_written(tmp_path):
    cfg = TownConfig.new(tmp_path, "alpha")
    cfg.save()
    assert (tmp_path / "tinytown.toml").is_file()
    assert cfg.name == "alpha" and cfg.root == tmp_path
    loaded = TownConfig.load(tmp_path)
    assert loaded.name == "alpha" and loaded.root == tmp_path


def test_load_missing_file_is_not_initialized(tmp_path):
    with pytest.raises(NotInitialized):
        TownConfig.load(tmp_path)


# -- scenario 3: presets ------------------------------------------------------------------


def test_new_config_has_all_presets(tmp_path):
    cfg = TownConfig.new(tmp_path, "t")
    assert set(cfg.agent_clis) == {
        "claude", "auggie", "codex", "codex-mini", "aider", "gemini", "copilot", "cursor"
    }
    assert cfg.agent_clis["claude"] == AgentCliConfig(
        "claude", "claude --print --dangerously-skip-permissions"
    )
    assert cfg.default_cli == "claude"
    assert cfg.conductor_cli is None and cfg.conductor_cli_name() == "claude"


# -- scenario 4: minimal file, normalization ---------------------------------------------


def test_minimal_file_with_cli_names(tmp_path):
    write(tmp_path, 'name = "t"\ndefault_cli = "codex-mini"\nconductor_cli = "codex"\n')
    cfg = TownConfig.load(tmp_path)
    assert cfg.default_cli == "codex-mini"
    assert cfg.conductor_cli_name() == "codex"
    assert cfg.agent_clis == {}


@pytest.mark.parametrize(
    "legacy, preset",
    [
        ("codex --dangerously-bypass-approvals-and-sandbox", "codex"),
        ('codex --dangerously-bypass-approvals-and-sandbox -m gpt-5.4-mini -c model_reasoning_effort="medium"', "codex-mini"),
        (CODEX_MINI, "codex-mini"),
        ("claude --print --dangerously-skip-permissions", "claude"),
    ],
)
def test_legacy_commands_normalize(tmp_path, legacy, preset):
    write(tmp_path, f"name = 't'\ndefault_cli = '{legacy}'\nconductor_cli = '{legacy}'\n")
    cfg = TownConfig.load(tmp_path)
    assert cfg.default_cli == preset and cfg.conductor_cli == preset


def test_custom_default_cli_kept(tmp_path):
    write(tmp_path, 'name = "t"\ndefault_cli = "my-agent --batch"\n')
    assert TownConfig.load(tmp_path).default_cli == "my-agent --batch"


# -- scenario 5: streams and idle timeout ------------------------------------------------


def test_streams_and_idle_timeout(tmp_path):
    write(tmp_path, 'name = "t"\n')
    cfg = TownConfig.load(tmp_path)
    assert cfg.use_streams is False and cfg.idle_timeout_secs == 300
    write(tmp_path, 'name = "t"\nuse_streams = true\n[agent]\nidle_timeout_secs = 42\n')
    cfg = TownConfig.load(tmp_path)
    assert cfg.use_streams is True and cfg.idle_timeout_secs == 42


# -- scenario 6: redis defaults -----------------------------------------------------------


def test_redis_defaults(tmp_path):
    write(tmp_path, 'name = "t"\n')
    r = TownConfig.load(tmp_path).redis
    assert r == RedisSettings()
    assert (r.url, r.use_socket, r.socket_path, r.host, r.port) == (
        None, True, ".tt/redis.sock", "127.0.0.1", 6379
    )
    assert r.password is None and r.tls_enabled is False and r.bind == "127.0.0.1"
    assert r.aof_path == ".tt/redis.aof" and r.persist is False


def test_other_defaults(tmp_path):
    cfg = TownConfig.load(write(tmp_path, 'name = "t"\n'))
    assert (cfg.max_agents, cfg.use_central_redis, cfg.conductor_cli) == (10, False, None)
    assert cfg.townhall["rest_port"] == 8080 and cfg.townhall["auth"]["mode"] == "none"


# -- scenario 7: URLs ---------------------------------------------------------------------


def test_urls(tmp_path):
    sock = TownConfig.new(tmp_path, "t")
    assert sock.redis_url() == f"unix://{tmp_path}/.tt/redis.sock"
    assert sock.redis_url().endswith("redis.sock")
    assert tcp(tmp_path, port=6380).redis_url() == "redis://127.0.0.1:6380"
    assert (
        tcp(tmp_path, host="localhost", password="secret123").redis_url()
        == "redis://:secret123@localhost:6379"
    )
    assert (
        tcp(tmp_path, host="redis.example.com", password="tls-password", tls_enabled=True).redis_url()
        == "rediss://:tls-password@redis.example.com:6379"
    )
    # certificate files (relative ones from the town root) reach redis-py via the query
    tls = tcp(tmp_path, host="db", tls_enabled=True, tls_ca_cert="certs/ca.pem", tls_cert="/c.pem")
    assert tls.redis_url() == (f"rediss://db:6379?ssl_ca_certs={quote(str(tmp_path), safe='')}"
                               "%2Fcerts%2Fca.pem&ssl_certfile=%2Fc.pem")
    assert "ssl_" not in tcp(tmp_path, host="db", tls_ca_cert="ca.pem").redis_url()  # TLS off


def test_socket_path_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TownConfig.new("town", "t")
    assert cfg.socket_path_abs() == tmp_path / "town" / ".tt" / "redis.sock"


# -- scenario 8: password env override ----------------------------------------------------


def test_password_env_override(tmp_path, monkeypatch):
    cfg = tcp(tmp_path, host="localhost", password="config-pw")
    monkeypatch.setenv("TINYTOWN_REDIS_PASSWORD", "env-pw")
    assert cfg.redis_password() == "env-pw"
    assert cfg.redis_url() == "redis://:env-pw@localhost:6379"
    monkeypatch.delenv("TINYTOWN_REDIS_PASSWORD")
    assert cfg.redis_password() == "config-pw"
    assert cfg.redis_url() == "redis://:config-pw@localhost:6379"


# -- scenario 9: redaction ----------------------------------------------------------------


def test_redaction(tmp_path, monkeypatch):
    cfg = tcp(tmp_path, host="redis.example.com", password="secret")
    assert cfg.redacted_url() == "redis://:****@redis.example.com:6379"
    assert tcp(tmp_path, host="redis.example.com").redacted_url() == "redis://redis.example.com:6379"
    url = TownConfig.new(tmp_path, "t", url="rediss://default:cloud-secret@redis.example.com:6380/0")
    assert url.redacted_url() == "rediss://default:****@redis.example.com:6380/0"
    enc = TownConfig.new(tmp_path, "t", url="redis://user%40name:pw@redis.example.com:6379")
    assert enc.redacted_url() == "redis://user%40name:****@redis.example.com:6379"
    monkeypatch.setenv("REDIS_URL", "redis://default:cloud-secret@")
    assert TownConfig.new(tmp_path, "t").redacted_url() == "redis://default:****@"


def test_password_never_in_redacted_socket_url(tmp_path):
    assert TownConfig.new(tmp_path, "t").redacted_url() == f"unix://{tmp_path}/.tt/redis.sock"


# -- scenario 10: remote or local ---------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.1.1"])
def test_local_hosts(tmp_path, host):
    assert not tcp(tmp_path, host=host).is_remote_redis()


@pytest.mark.parametrize("host", ["redis.example.com", "192.168.1.100"])
def test_remote_hosts(tmp_path, host):
    assert tcp(tmp_path, host=host).is_remote_redis()


def test_socket_is_local_and_managed(tmp_path):
    cfg = TownConfig.new(tmp_path, "t")
    assert not cfg.is_remote_redis() and cfg.uses_managed_server()
    assert not tcp(tmp_path, host="localhost").uses_managed_server()


def test_explicit_urls_are_remote(tmp_path, monkeypatch):
    cfg = TownConfig.new(tmp_path, "t", url="redis://127.0.0.1:6379")
    assert cfg.is_remote_redis() and not cfg.uses_managed_server()
    plain = TownConfig.new(tmp_path, "t")
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379")
    assert plain.is_remote_redis() and not plain.uses_managed_server()
    monkeypatch.setenv("REDIS_URL", "   ")
    assert not plain.is_remote_redis() and plain.uses_managed_server()


# -- scenario 11: URL precedence ----------------------------------------------------------


def test_redis_url_env_beats_config(tmp_path, monkeypatch):
    write(tmp_path, 'name = "t"\n[redis]\nurl = "redis://from-config:6379"\n')
    cfg = TownConfig.load(tmp_path)
    assert cfg.redis_url() == "redis://from-config:6379"
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379")
    assert cfg.redis_url() == "redis://from-env:6379"


def test_url_beats_socket_and_tcp(tmp_path):
    cfg = TownConfig.new(tmp_path, "t", url="redis://db:1", host="other", password="x")
    assert cfg.redis_url() == "redis://db:1"


# -- saving and loading -------------------------------------------------------------------


def test_round_trip(tmp_path):
    cfg = TownConfig.new(
        tmp_path, "round", host="redis.example.com", port=6380, password="pw", tls_enabled=True
    )
    cfg.conductor_cli = "codex"
    cfg.idle_timeout_secs = 0
    cfg.agent_clis["mine"] = AgentCliConfig("mine", "mine --go", workdir="/w", env={"A": "1"})
    cfg.townhall["auth"]["api_key_scopes"] = ["town.read"]
    cfg.save()
    assert TownConfig.load(tmp_path) == cfg


def test_saved_file_has_every_preset(tmp_path):
    TownConfig.new(tmp_path, "t").save()
    data = tomllib.loads((tmp_path / "tinytown.toml").read_text())
    assert data["name"] == "t" and data["default_cli"] == "claude"
    for name, command in CLI_PRESETS.items():
        assert data["agent_clis"][name]["name"] == name
        assert data["agent_clis"][name]["command"] == command
    assert data["redis"]["use_socket"] is True and "password" not in data["redis"]
    assert data["agent"] == {"idle_timeout_secs": 300}
    assert {"auth", "tls", "mtls"} <= set(data["townhall"])
    assert CLI_PRESETS["codex-mini"].endswith('-c model_reasoning_effort="medium"')


def test_save_is_atomic_and_private_with_password(tmp_path):
    TownConfig.new(tmp_path, "t").save()
    assert stat.S_IMODE(os.stat(tmp_path / "tinytown.toml").st_mode) == 0o644
    tcp(tmp_path, password="pw").save()
    assert stat.S_IMODE(os.stat(tmp_path / "tinytown.toml").st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["tinytown.toml"]  # no temp files left


def test_malformed_toml_is_one_line(tmp_path):
    write(tmp_path, 'name = "t"\nthis is not toml\n')
    with pytest.raises(ConfigError) as err:
        TownConfig.load(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "tinytown.toml" in msg and "line 2" in msg


def test_missing_name(tmp_path):
    write(tmp_path, 'default_cli = "claude"\n')
    with pytest.raises(ConfigError, match="name"):
        TownConfig.load(tmp_path)


def test_wrong_type_is_config_error(tmp_path):
    write(tmp_path, 'name = "t"\n[redis]\nport = "abc"\n')
    with pytest.raises(ConfigError, match="port"):
        TownConfig.load(tmp_path)


def test_invalid_town_name(tmp_path):
    write(tmp_path, 'name = "a:b"\n')
    with pytest.raises(InvalidName):
        TownConfig.load(tmp_path)
    with pytest.raises(InvalidName):
        TownConfig.new(tmp_path, "bad name")


def test_unknown_keys_ignored(tmp_path):
    write(
        tmp_path,
        'name = "t"\nfuture_key = 1\n[redis]\nshiny = true\nport = 6390\n'
        '[agent_clis.x]\nname = "x"\ncommand = "x run"\nextra = 2\n[brand_new]\na = 1\n',
    )
    cfg = TownConfig.load(tmp_path)
    assert cfg.redis.port == 6390 and cfg.agent_clis["x"].command == "x run"


def test_unknown_sections_survive_a_save_and_the_archive_policy_is_read(tmp_path):
    write(tmp_path, 'name = "t"\nfuture_key = 1\n[brand_new]\na = [1, 2]\n'
                    '[tinytown_nb]\narchive_after = "7d"\nsomething_later = true\n')
    cfg = TownConfig.load(tmp_path)
    assert cfg.archive_after == 7 * 86400
    cfg.max_agents = 3
    cfg.save()  # rewriting the file keeps what this version does not read
    data = tomllib.loads((tmp_path / "tinytown.toml").read_text())
    assert data["future_key"] == 1 and data["brand_new"] == {"a": [1, 2]} and data["max_agents"] == 3
    assert data["tinytown_nb"] == {"archive_after": "7d", "something_later": True}
    assert TownConfig.load(tmp_path) == cfg
    assert TownConfig.new(tmp_path, "t").archive_after is None


@pytest.mark.parametrize("value, why", [('"soon"', "must be an age such as 7d"),
                                        ("-3", "must be an age such as 7d"),
                                        ('"0d"', "must be more than 0"),
                                        ("true", "must be an age such as 7d")])
def test_bad_archive_policy_is_one_line(tmp_path, value, why):
    write(tmp_path, f'name = "t"\n[tinytown_nb]\narchive_after = {value}\n')
    with pytest.raises(ConfigError, match=why) as err:
        TownConfig.load(tmp_path)
    assert "\n" not in str(err.value) and "[tinytown_nb] archive_after" in str(err.value)


def test_unknown_redis_option(tmp_path):
    with pytest.raises(ConfigError, match="Unknown Redis option"):
        TownConfig.new(tmp_path, "t", hots="x")


# -- CLI resolution -----------------------------------------------------------------------


def test_resolve_cli(tmp_path):
    cfg = TownConfig.new(tmp_path, "t")
    assert resolve_cli_name("", cfg) == "claude"
    assert resolve_cli_name("aider", cfg) == "aider"
    assert resolve_cli_name("gh copilot", cfg) == "copilot"
    assert resolve_cli_name("gh copilot suggest", cfg) == "copilot"
    assert resolve_cli_name("codex --full-auto", cfg) == "codex"
    assert resolve_cli_name("codex -m gpt-5.4-mini", cfg) == "codex-mini"
    assert resolve_cli_name("claude --model opus", cfg) == "claude"
    assert resolve_cli_name("mytool --x", cfg) == "mytool --x"
    assert resolve_cli_command("codex", cfg) == CLI_PRESETS["codex"]
    assert resolve_cli_command("mytool --x", cfg) == "mytool --x"


def test_resolve_cli_without_presets(tmp_path):
    cfg = TownConfig.load(write(tmp_path, 'name = "t"\n'))
    assert resolve_cli_name("claude --x", cfg) == "claude --x"
    assert resolve_cli_command("claude", cfg) == "claude"  # executed literally


# -- default town name --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_default_town_name_in_git(tmp_path):
    repo = tmp_path / "myrepo"
    repo.mkdir()

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    git("init", "-b", "main")
    assert default_town_name(repo) == "myrepo"  # no commits: branch lookup fails
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "--allow-empty", "-m", "x")
    assert default_town_name(repo) == "myrepo-main"
    git("checkout", "-b", "feature/auth")
    assert default_town_name(repo) == "myrepo-feature-auth"
    assert default_town_name(repo / "not-yet-created") == "myrepo-feature-auth"


def test_default_town_name_outside_git(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    town = tmp_path / "my town"
    town.mkdir()
    assert default_town_name(town) == "my-town"


def test_default_town_name_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary
    (tmp_path / "plain").mkdir()
    assert default_town_name(tmp_path / "plain") == "plain"


def test_reprs_never_show_the_password():
    for cfg in (TownConfig.new("/tmp/t", "t", host="redis.example.com", password="hunter2"),
                TownConfig.new("/tmp/t", "t", url="redis://user:hunter2@db:6380/0")):
        shown = repr(cfg) + repr(cfg.redis) + str(cfg)
        assert "hunter2" not in shown and "****" in shown
    assert "password=None" in repr(TownConfig.new("/tmp/t", "t").redis)
