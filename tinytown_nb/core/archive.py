"""Retention: finished tasks moved out of Redis into the town's archive files.

A task stays in Redis until it is removed (about 620 B of server memory and 3.8 KB of AOF
writes each). :func:`archive` moves finished tasks older than an age out of the live
keyspace — the task hash, its output log (``tasklog``) and its workflow records (``deps:*``,
``gate:*``: history only, nothing waits for a finished task) — into JSON-lines files under
``.tt/archive/`` (one per month, ``tasks-YYYY-MM.jsonl``, mode 0600 like every town file).
Each line is the task hash as stored plus ``archived_at`` (and, nested, its run options
``taskopts`` and its ``usage`` when it has them); pandas reads a file with
``pd.read_json(path, lines=True)``, :func:`archived_hashes` reads them all.

Files, not a Redis stream: the point is to give the server its memory back and keep its
AOF short, and a stream would keep the data in memory. The files live on the machine that
ran the archive (for a town on a remote Redis, under that machine's ``.tt/``).

A batch of :data:`BATCH` tasks is crash-safe, never losing a task:

1. the tasks' hashes are read and appended to the month's file, which is fsynced;
2. one transition deletes them all or none: only if every one is still in the states
   asked for and unchanged since it was copied (so the state indexes and counts stay
   right, :mod:`.transitions`);
3. when it is refused the batch is read again: a task that no longer qualifies gets a
   ``withdrawn`` line, one that changed and still qualifies a fresh copy, and the rest is
   tried again.

A reader keeps the last line of each task id and drops withdrawn ones; a crash between 1
and 2 leaves a copy of a task that is still live, archived again (and so superseded) by
the next run.

The automatic policy, ``[tinytown_nb] archive_after = "7d"`` in ``tinytown.toml``, runs
from ``Town.recover()`` and while waiting for a town (:mod:`.waiting`), at most once per
:data:`POLICY_EVERY` seconds per town whoever looks (a lease key, one ``SET NX`` per look),
and moves at most :data:`POLICY_MAX` tasks per run (30,000 an hour; ``ttnb archive``
moves a larger heap at once).

Example::

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> town.wait(task=town.assign("dev", "Tidy up"), timeout=10).state
    <TaskState.COMPLETED: 'completed'>
    >>> archive(store, older_than="7d")          # finished a week ago or more: none yet
    0
    >>> archive(store, older_than=0)             # every finished task
    1
    >>> archived_hashes(store)[0]["archived_at"]
    '20...T...+00:00'
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import checks, status, tasks, transitions as tr, workflows
from .errors import ConfigError, TinytownError
from .models import Task, TaskState, hash_ts, parse_ts, utcnow
from .paths import open_private
from .store import Store

BATCH = 500  # tasks per deletion (one transition: a few ms of server time)
DEFAULT_AGE = 7 * 86400.0  # seconds
DEFAULT_STATES = ("completed", "cancelled")
POLICY_EVERY = 600  # seconds between runs of the automatic policy
POLICY_MAX = 5_000  # tasks one run of the policy moves at most (~1 s: ~0.2 ms a task)
_TRIES = 3  # attempts at one batch whose tasks keep changing
_log = logging.getLogger(__name__)


def check_states(states: Any) -> tuple[TaskState, ...]:
    """The finished states to archive: ``"completed,cancelled"`` or an iterable of states.

    >>> check_states("completed, cancelled")
    (<TaskState.COMPLETED: 'completed'>, <TaskState.CANCELLED: 'cancelled'>)
    >>> check_states(["running"])
    Traceback (most recent call last):
    ConfigError: Only finished tasks can be archived (completed, failed, cancelled), not 'running'.
    """
    if isinstance(states, (str, TaskState)):
        states = [states] if isinstance(states, TaskState) else states.split(",")
    try:
        items = [s for s in states if not (isinstance(s, str) and not s.strip())]
    except TypeError:
        raise ConfigError(f"states must be task states such as 'completed,cancelled', "
                          f"not {type(states).__name__}.") from None
    if not items:
        raise ConfigError("Say which finished states to archive, e.g. 'completed,cancelled'.")
    parsed = tuple(dict.fromkeys(TaskState.parse_strict(s) for s in items))
    for s in parsed:
        if not s.is_terminal:
            raise ConfigError(f"Only finished tasks can be archived (completed, failed, cancelled), "
                              f"not {s.value!r}.")
    return parsed


def archive(store: Store, older_than: Any = DEFAULT_AGE, states: Any = DEFAULT_STATES, *,
            limit: int | None = None, wait: bool = True) -> int:
    """Move the tasks in ``states`` whose last change (``completed_at``, else
    ``updated_at``) is older than ``older_than`` (seconds, a timedelta or ``"7d"``) to the
    archive; returns how many moved. ``limit``: at most that many. ``wait=False``: return 0
    at once when another process of this machine is archiving the town.

    >>> archive(store, "30d", ["completed", "cancelled", "failed"])
    0
    """
    age = checks.age(older_than, "older_than")
    wanted = check_states(states)
    checks.optional(checks.count, limit, "limit")
    status.reconcile(store)  # file what a program keeping no index wrote, so it is found
    workflows.sweep(store)  # pass on what it finished before its tasks go (they release others)
    cutoff = time.time() - age
    moved = 0
    with _locked(store, wait) as got:
        if not got:
            return 0
        have = tasks.runs_index(store)  # which tasks have run options / usage to copy too
        for ids in _batches(_candidates(store, wanted, cutoff), BATCH):
            if limit is not None:
                ids = ids[:limit - moved]
            moved += _move(store, ids, wanted, cutoff, have)
            if limit is not None and moved >= limit:
                break
    return moved


def run_policy(store: Store) -> int:
    """The town's automatic archive (``[tinytown_nb] archive_after``), if it has one and
    no process ran it in the last :data:`POLICY_EVERY` seconds; returns tasks moved. Never
    raises for a problem of the archive itself (it is logged): callers are doing other work.

    >>> run_policy(store)   # no archive_after in tinytown.toml
    0
    """
    after = store.config.archive_after
    if after is None or not store.redis.set(store.keys.archive_lease, os.getpid(), nx=True,
                                            px=POLICY_EVERY * 1000):
        return 0
    try:
        return archive(store, after, DEFAULT_STATES, limit=POLICY_MAX, wait=False)
    except (TinytownError, OSError) as exc:
        _log.warning("automatic archive of town %s failed: %s", store.name, exc)
        return 0


def archived_hashes(store: Store) -> list[dict[str, Any]]:
    """Every archived task hash (with ``archived_at``), in the order they were archived;
    the last copy of a task wins, withdrawn ones are left out, unreadable lines skipped.

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> town.wait(task=town.assign("dev", "Tidy up"), timeout=10).state
    <TaskState.COMPLETED: 'completed'>
    >>> archive(store, older_than=0)
    1
    >>> archived_hashes(store)[0]["state"]
    'completed'
    """
    found: dict[str, dict[str, Any]] = {}
    for path in store.paths.archive_files():
        with open(path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # e.g. a line cut short by a crash
                if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                    continue
                found.pop(entry["id"], None)  # so the order is that of the last copy
                if not entry.get("withdrawn"):
                    found[entry["id"]] = entry
    return list(found.values())


def archived(store: Store, state: Any = None) -> list[Task]:
    """The archived tasks (oldest first), optionally only one state.

    >>> task = town.cancel_task(town.backlog_add("Old idea"), "not needed")
    >>> archive(store, older_than=0)
    1
    >>> [t.description for t in archived(store, "cancelled")]
    ['Old idea']
    """
    wanted = TaskState.parse_strict(state) if state is not None else None
    found = (Task.from_hash({k: v for k, v in h.items() if isinstance(v, str)})
             for h in archived_hashes(store))
    return sorted((t for t in found if t is not None and (wanted is None or t.state == wanted)),
                  key=lambda t: t.created_at)


# --------------------------------------------------------------------------- steps


def _candidates(store: Store, wanted: Sequence[TaskState], cutoff: float) -> Iterator[str]:
    """Ids filed in the wanted states' indexes whose last change is older than ``cutoff``
    (the index score is the time of the last change, in ms)."""
    for s in wanted:
        yield from store.redis.zrangebyscore(store.keys.tasks_in_state(s.value), "-inf",
                                             int(cutoff * 1000))


def _batches(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for i in ids:
        batch.append(i)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _qualifies(h: dict[str, str], wanted: Sequence[TaskState], cutoff: float) -> bool:
    """The record is in a wanted state and its last change is older than ``cutoff``."""
    if TaskState.parse(h.get("state")) not in wanted:
        return False
    when = parse_ts(h.get("completed_at")) or parse_ts(h.get("updated_at"))
    return when is not None and when.timestamp() <= cutoff


def _move(store: Store, ids: list[str], wanted: Sequence[TaskState], cutoff: float,
          have: tuple[set[str], set[str]]) -> int:
    """Archive these tasks (those that qualify) in one batch; returns how many moved. A
    copy holds the task hash, and its run options and usage (``taskopts``, ``usage``)."""
    watched = store.redis.smismember(store.keys.deps_watched, ids)
    ids = [tid for tid, w in zip(ids, watched) if not w]  # still to be passed on (a failed sweep)
    copied: dict[str, dict[str, str]] = {}
    for _ in range(_TRIES):
        now = store.hashes_by_id("task", ids) if ids else {}
        keep = {tid: h for tid, h in now.items() if _qualifies(h, wanted, cutoff)}
        for kind, among in zip(("taskopts", "usage"), have):
            for tid, h in store.hashes_by_id(kind, [t for t in keep if t in among]).items():
                keep[tid] = {**keep[tid], kind: h}
        _append(store, [*({**h, "id": tid} for tid, h in keep.items() if copied.get(tid) != h),
                        *({"id": tid, "withdrawn": True} for tid in copied if tid not in keep)])
        copied = keep
        if not keep:
            return 0
        batch = [(tid, h.get("updated_at") or "") for tid, h in keep.items()]
        try:
            store.run(tr.archive_tasks(store.keys, batch, wanted))
            return len(batch)
        except (tr.Stale, tr.RecordMissing):
            ids = list(keep)  # one of them changed or went meanwhile: look again
    _append(store, [{"id": tid, "withdrawn": True} for tid in copied])
    return 0


def _append(store: Store, entries: list[dict[str, Any]]) -> None:
    """Add lines to this month's archive file, on disk before this returns."""
    if not entries:
        return
    stamp = hash_ts(utcnow())
    data = "".join(json.dumps({**e, "archived_at": stamp}, ensure_ascii=False,
                              separators=(",", ":")) + "\n" for e in entries)
    with open_private(store.paths.archive_file(stamp[:7])) as f:
        f.write(data.encode("utf-8", "surrogateescape"))
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def _locked(store: Store, wait: bool) -> Iterator[bool]:
    """Hold the archive lock of this machine (yields False when ``wait`` is off and another
    process holds it), creating ``.tt/archive/`` (0700) when missing."""
    store.paths.archive.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open_private(store.paths.archive / ".lock") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
