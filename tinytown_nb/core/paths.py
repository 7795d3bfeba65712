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
from pathlib import Path

from .names import validate_agent_name

RUNTIME_DIR = ".tt"
SUBDIRS = ("agents", "logs", "tasks")  # tt makes agents/ and tasks/ too (unused)


class TownPaths:
    """The files of the town rooted at ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.tt = self.root / RUNTIME_DIR
        self.logs = self.tt / "logs"

    def make(self) -> None:
        """Create ``.tt/`` and its subdirectories (parents included) if missing.

        >>> TownPaths(tmp).make()   # doctest: +SKIP
        """
        for sub in ("", *SUBDIRS):
            (self.tt / sub).mkdir(parents=True, exist_ok=True)

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

    def prompt_file(self, name: str) -> Path:
        """``.tt/agent_<name>_prompt.md``: the prompt of a CLI run given as a file."""
        return self.tt / f"agent_{validate_agent_name(name)}_prompt.md"
