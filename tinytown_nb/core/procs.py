"""Processes of this host: identity, liveness and stopping a whole process group.

A pid alone can be reused, so a process is identified by ``"<pid>:<start time>"`` (Linux
``/proc``). Workers record their command's identity; whoever recovers a dead worker stops
that command's group with it, and a later process that got the same pid never matches.

Example::

    >>> ident = process_identity(os.getpid())
    >>> ident.split(":")[0] == str(os.getpid())
    True
    >>> alive(os.getpid())
    True
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

RUN_ID_VAR = "TINYTOWN_RUN_ID"  # in the environment of every command a worker runs: its run's id
_children: list[subprocess.Popen] = []
_lock = threading.Lock()


def track(proc: subprocess.Popen) -> subprocess.Popen:
    """Remember a child we started (and will not wait for), so it is reaped when it exits.

    >>> track(subprocess.Popen(["true"])).args
    ['true']
    """
    with _lock:
        _children.append(proc)
    return proc


def reap() -> None:
    """Collect the exit status of tracked children that ended (no zombies left behind)."""
    with _lock:
        _children[:] = [p for p in _children if p.poll() is None]


def process_identity(pid: int) -> str | None:
    """``"<pid>:<start time>"`` of a live process (Linux ``/proc``), which a later process
    reusing the pid cannot match; None when it is gone, a zombie, or there is no ``/proc``.

    >>> process_identity(2**22 + 12345) is None
    True
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else f"{pid}:{fields[19]}"  # field 22: start time


def alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie counts as dead; ours are reaped first).

    >>> alive(2**22 + 12345)
    False
    """
    reap()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # a pid no process can have (read from a damaged record)
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def command_line(pid: int) -> bytes | None:
    """The raw ``/proc/<pid>/cmdline`` (NUL-separated argv), None if unreadable.

    >>> b"python" in (command_line(os.getpid()) or b"python")
    True
    """
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None


def has_proc() -> bool:
    """True where ``/proc`` describes processes (Linux)."""
    return Path("/proc/self").exists()


def stop_group(ident: str, grace: float = 3.0) -> bool:
    """Stop the process group led by the process ``ident`` names, if that very process
    still runs: SIGTERM to the group, SIGKILL after ``grace`` s. True if it was running.

    >>> stop_group("999999999:1")
    False
    """
    pid = ident.split(":")[0]
    if not pid.isdigit() or process_identity(int(pid)) != ident:
        return False  # gone already, or the pid now belongs to someone else
    pgid = int(pid)
    deadline = time.monotonic() + grace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return True
        while time.monotonic() < deadline and process_identity(pgid) == ident:
            time.sleep(0.05)
        if process_identity(pgid) != ident:
            break
    return True


def tagged(name: str, value: str) -> list[int]:
    """Pids of this host's processes whose environment holds ``name=value`` (Linux
    ``/proc``; a process started with it keeps it, and so do its children).

    >>> tagged("TINYTOWN_RUN_ID", "no-such-run")
    []
    """
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if wanted in entry.joinpath("environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def stop_tagged(name: str, value: str, grace: float = 3.0) -> bool:
    """Stop every process tagged ``name=value`` (see :func:`tagged`) with its process
    group: SIGTERM, SIGKILL after ``grace`` s. True if any was running."""
    pids = [p for p in tagged(name, value) if p != os.getpid()]
    idents = [i for i in (process_identity(os.getpgid(p)) if _has_group(p) else None
                          for p in pids) if i]
    for ident in dict.fromkeys(idents):
        stop_group(ident, grace)
    for pid in pids:  # a tagged process outside any group leader we found
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return bool(pids)


def _has_group(pid: int) -> bool:
    try:
        os.getpgid(pid)
        return True
    except (ProcessLookupError, PermissionError):
        return False
