"""What a launch writes before its worker runs, and what a worker reads back: the worker
hash (``tt:{town}:worker:{aid}``: kind, launch options, the fresh token guarding its
writes) and the per-agent log file of a worker that shares its process (a function agent's
thread, an agent in a shared worker process).

Example::

    >>> agent = town.spawn("dev", cli="claude", start=False)
    >>> token = prepare(store, agent.id, "process", None, None, False)
    >>> worker_options(store, agent.id)["backlog"]
    False
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from .. import recovery, runopts
from ..models import Agent
from ..paths import open_private
from ..store import Store


def worker_options(store: Store, aid: str) -> dict[str, Any]:
    """The options a worker was last started with (kind, max_rounds, idle_timeout, backlog,
    task_timeout, silence_timeout, shared)."""
    h = store.redis.hgetall(store.keys.worker(aid))
    limits = runopts.RunOptions.from_fields({"timeout": h.get("task_timeout") or "",
                                             "silence_timeout": h.get("silence_timeout") or ""})

    def number(field: str, kind: type) -> Any:  # another program may have written anything
        try:
            value = kind(h.get(field) or "")
        except (ValueError, OverflowError):
            return None
        ok = value == value and value >= 0 and value < 10**9  # not NaN, negative or absurd
        return value if ok else None

    return {"kind": h.get("kind"), "max_rounds": number("max_rounds", int) or None,
            "idle_timeout": number("idle_timeout", float), "backlog": h.get("backlog") == "1",
            "task_timeout": limits.timeout, "silence_timeout": limits.silence_timeout,
            "shared": h.get("shared") == "1"}


def limits(task_timeout: float | None, silence_timeout: float | None) -> dict[str, str]:
    """An agent's default time limits as worker-hash fields (kept across restarts).

    >>> limits(90.0, None)
    {'task_timeout': '90', 'silence_timeout': ''}
    """
    return {"task_timeout": "" if task_timeout is None else f"{task_timeout:g}",
            "silence_timeout": "" if silence_timeout is None else f"{silence_timeout:g}"}


def prepare(store: Store, aid: str, kind: str, max_rounds: int | None,
            idle_timeout: float | None, backlog: bool, **extra: str) -> str:
    """Write the worker hash for a new launch and return its token (first stopping a
    command the previous worker of this agent left running here)."""
    recovery.stop_left_command(store, aid)
    token = uuid.uuid4().hex
    fields = {"token": token, "kind": kind, "backlog": "1" if backlog else "0",
              "max_rounds": str(max_rounds or ""),
              "idle_timeout": "" if idle_timeout is None else f"{idle_timeout:g}", **extra}
    pipe = store.redis.pipeline(transaction=True)
    pipe.delete(store.keys.worker(aid))
    pipe.hset(store.keys.worker(aid), mapping=fields)
    pipe.execute()
    return token


def file_logger(store: Store, agent: Agent, token: str) -> logging.Logger:
    """The logger of a worker sharing its process: appends to ``.tt/logs/<name>.log`` (the
    handler is tagged with the launch token so the worker removes its own when it ends)."""
    path = store.paths.worker_log(agent.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    open_private(path).close()  # created 0600 before the handler appends to it
    logger = logging.getLogger(f"tinytown_nb.worker.{agent.id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # never onto the notebook's stderr
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.tt_token = token  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return logger
