"""Shared fixtures: every test talks to a real server started by the package itself."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tinytown_nb.core import Town
from tinytown_nb.core.server import find_server_binary

TCP_PASSWORD = "sek" + "ret"  # built at run time, so tracebacks quoting test source stay clean

#: this interpreter, quoted for a command line (command agents run Python scripts with it)
PY = shlex.quote(sys.executable)


def script(tmp_path: Path, name: str, body: str) -> str:
    """Write a Python script; return the command line that runs it."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return f"{PY} {shlex.quote(str(path))}"


@pytest.fixture
def fast_heartbeat(monkeypatch):
    """Heartbeat every 0.3 s (workers inherit it): a dead worker is judged quickly and short
    stale thresholds can be tested. Modules that need it: ``pytestmark = usefixtures(...)``."""
    monkeypatch.setenv("TINYTOWN_HEARTBEAT_SECS", "0.3")


@pytest.fixture
def hermetic_git(monkeypatch, tmp_path):
    """The developer's ~/.gitconfig (hooks path, signing, default branch) must not leak into
    the test's repositories; worker processes inherit this too."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; its stdout (a failure fails the test with git's stderr)."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    return proc.stdout


def eventually(check, timeout: float = 10.0, what: str = "condition"):
    """Poll ``check`` until it is truthy, for what no event announces (a thread's refresh, a
    process exiting, a file appearing); returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_leftovers(root: Path) -> list[int]:
    """SIGKILL every process still running from a town directory (its command line names
    it, or its working directory is inside it): worker processes and the commands they ran.
    Linux only (reads /proc); a no-op elsewhere."""
    killed = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(root).encode() in cmdline or cwd == str(root) or cwd.startswith(f"{root}/"):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


@pytest.fixture
def town(tmp_path):
    """A fresh town with its own managed server (unix socket under .tt/), stopped afterwards
    together with every agent worker (and command) it started."""
    t = Town.init(tmp_path / "town", name="test")
    yield t
    try:
        t.shutdown()
    finally:
        kill_leftovers(t.root)


@pytest.fixture
def password_server(tmp_path):
    """A TCP server on loopback that requires ``TCP_PASSWORD``; yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [find_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
         "--requirepass", TCP_PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: proc.poll() is not None or _accepts(port), what="the TCP server")
        assert proc.poll() is None, "the TCP server exited at start"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
