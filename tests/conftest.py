"""Shared fixtures: every test talks to a real server started by the package itself."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tinytown_nb.core import Town


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
