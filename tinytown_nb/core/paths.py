"""Every file of a town, in one place: ``.tt/``, logs, round logs, prompt files, worktrees.

A town's runtime files live under ``<root>/.tt`` (spec §6.1). File names built from an
agent name only ever come from here, and only from a valid agent name (names.py), so a
name written into Redis by another program (``../../victim``) can never lead outside the
town.

Example::

    >>> p = TownPaths("/srv/town")
    >>> p.worker_log("dev")
    PosixPath('/srv/town/.tt/logs/dev.log')
    >>> p.round_log("dev", 3).name
    'dev_round_3.log'
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError
from .names import validate_agent_name

RUNTIME_DIR = ".tt"
_TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SUBDIRS = ("agents", "logs", "tasks")  # tt makes agents/ and tasks/ too (unused)


def town_root(path: str | os.PathLike) -> Path:
    """The absolute directory a town path names (``~`` expanded), or ConfigError when it
    cannot name one.

    >>> town_root("a\\0b")
    Traceback (most recent call last):
    ConfigError: The town path 'a\\x00b' holds a NUL byte; give a directory path.
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise ConfigError(f"A town path is a directory path, not {type(path).__name__}.")
    if "\0" in text:
        raise ConfigError(f"The town path {text!r} holds a NUL byte; give a directory path.")
    return Path(text).expanduser().resolve()


class TownPaths:
    """The files of the town rooted at ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.tt = self.root / RUNTIME_DIR
        self.logs = self.tt / "logs"

    def make(self) -> None:
        """Create ``.tt/`` (mode 0700: only its owner may enter; it holds task text, output
        and, for a managed town, the server's socket and data) and its subdirectories.

        >>> TownPaths(tmp).make()
        >>> oct((tmp / ".tt").stat().st_mode & 0o777)
        '0o700'
        """
        for sub in ("", *SUBDIRS):
            (self.tt / sub).mkdir(parents=True, exist_ok=True)
        self.secure()

    def secure(self) -> None:
        """Make ``.tt/`` 0700 again if it is ours and more open (a town made by another
        tool, or before this rule); no-op when it is missing or not ours."""
        try:
            st = self.tt.stat()
            if st.st_uid == os.getuid() and st.st_mode & 0o077:
                self.tt.chmod(0o700)
        except OSError:
            pass

    def worker_log(self, name: str) -> Path:
        """``.tt/logs/<name>.log``: what the agent's worker logged.

        >>> TownPaths("/t").worker_log("../x")
        Traceback (most recent call last):
        InvalidName: Agent name '../x' contains '/', which breaks Redis keys or file paths. ...
        """
        return self.logs / f"{validate_agent_name(name)}.log"

    def round_log(self, name: str, round: int) -> Path:
        """``.tt/logs/<name>_round_<N>.log``: what the agent's CLI printed in round N."""
        return self.logs / f"{validate_agent_name(name)}_round_{int(round)}.log"

    def round_logs(self, name: str) -> list[Path]:
        """The agent's round logs that exist, oldest round first.

        >>> TownPaths("/nowhere").round_logs("dev")
        []
        """
        found = self.logs.glob(f"{glob.escape(validate_agent_name(name))}_round_*.log")
        numbered = []
        for path in found:
            n = path.stem.rsplit("_", 1)[1]
            numbered.append((int(n) if n.isdigit() else -1, path))
        return [p for _, p in sorted(numbered)]

    def worktree(self, name: str) -> Path:
        """``.tt/worktrees/<name>``: the agent's own git checkout (``spawn(worktree=True)``).

        >>> TownPaths("/t").worktree("dev")
        PosixPath('/t/.tt/worktrees/dev')
        """
        return self.tt / "worktrees" / validate_agent_name(name)

    @property
    def archive(self) -> Path:
        """``.tt/archive/``: finished tasks moved out of Redis (``Town.archive``)."""
        return self.tt / "archive"

    def archive_file(self, month: str) -> Path:
        """``.tt/archive/tasks-<YYYY-MM>.jsonl``: the tasks archived in that month (UTC).

        >>> TownPaths("/t").archive_file("2026-12").name
        'tasks-2026-12.jsonl'
        """
        if not re.fullmatch(r"\d{4}-\d{2}", month):
            raise ConfigError(f"An archive month is YYYY-MM, not {month!r}.")
        return self.archive / f"tasks-{month}.jsonl"

    def archive_files(self) -> list[Path]:
        """The archive's files, oldest month first.

        >>> TownPaths("/nowhere").archive_files()
        []
        """
        return sorted(p for p in self.archive.glob("tasks-*.jsonl")
                      if re.fullmatch(r"tasks-\d{4}-\d{2}\.jsonl", p.name))

    def prompt_file(self, name: str) -> Path:
        """``.tt/agent_<name>_prompt.md``: the prompt of a CLI run given as a file."""
        return self.tt / f"agent_{validate_agent_name(name)}_prompt.md"

    def inputs_file(self, task_id: str) -> Path:
        """``.tt/inputs/<task id>.json``: the results of the tasks a task waited for, as its
        command reads them (``TINYTOWN_TASK_INPUTS``); only a canonical task id makes a name.

        >>> TownPaths("/t").inputs_file("3f2a9c1e-0000-4000-8000-000000000000").name
        '3f2a9c1e-0000-4000-8000-000000000000.json'
        """
        if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id):
            raise ValueError(f"not a canonical task id: {task_id!r}")
        return self.tt / "inputs" / f"{task_id}.json"


def open_private(path: Path, mode: str = "ab") -> BinaryIO:
    """Open a town file (a log, a prompt) creating it with mode 0600 — it may hold task text
    and output. ``mode``: ``"ab"`` to append, ``"wb"``/``"w+b"`` to truncate.

    >>> with open_private(Path(tmp) / "x.log") as f: f.write(b"hi")
    2
    >>> oct((Path(tmp) / "x.log").stat().st_mode & 0o777)
    '0o600'
    """
    flags = os.O_CREAT | os.O_WRONLY | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    return os.fdopen(fd, mode)


def write_private(path: Path, text: str) -> None:
    """Write a town file as text (UTF-8), mode 0600."""
    with open_private(path, "wb") as f:
        f.write(text.encode("utf-8"))
