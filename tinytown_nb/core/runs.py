"""Watching a run: the lines of a task's log as they come, from any process of the town.

A worker pushes what a run prints to the task log within about a second (every agent kind:
a command's output, an AI CLI's readable stream, a function's prints). The log keeps the
last lines (a LIST trimmed to 1,000) and a count of every line ever added
(``keys.task_log_count``), so a follower reads, in one atomic script, the task's state and
exactly the lines it has not seen — and says how many it missed if the log was trimmed
past them. It looks every ``FOLLOW_POLL`` seconds, and stops once it has read the lines
recorded with the task's end (the same atomic step writes both).

Example::

    >>> dev = town.spawn("dev", cli="claude")
    >>> task = town.assign("dev", "Run the tests")
    >>> for line in follow(store, task.id, timeout=600):
    ...     print(line)
    · claude started (model claude-...)
    ...
    → Bash: ...
    ...
    ✔ result: ...
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from . import checks, lookup
from .errors import TaskNotFound, WaitTimeout
from .models import TaskState
from .store import Store

FOLLOW_POLL = 0.2  # seconds between two looks of a follower

# KEYS: task hash, task log, its line count; ARGV[1]: lines seen (a count of all lines).
# Returns {state or false, lines ever added, the lines not seen that the log still holds,
# how many not seen it no longer holds}.
_READ_NEW = """local ok, state = pcall(redis.call, 'HGET', KEYS[1], 'state')
if not ok then state = false end
local okn, n = pcall(redis.call, 'LLEN', KEYS[2])
if not okn then n = 0 end
local okc, c = pcall(redis.call, 'GET', KEYS[3])
local total = tonumber(okc and c or '0') or 0
if total < n then total = n end
local first = total - n
local seen = tonumber(ARGV[1])
local from = seen - first
local lost = 0
if from < 0 then lost = -from; from = 0 end
local lines = {}
if n > 0 and from < n then lines = redis.call('LRANGE', KEYS[2], from, -1) end
return {state, total, lines, lost}"""


def follow(store: Store, ref: Any, timeout: float | None = None,
           poll: float = FOLLOW_POLL) -> Iterator[str]:
    """Yield each line of a task's log — those already there, then new ones as they come —
    until the task is completed, failed or cancelled (a retried task goes on: its attempts
    are one log). A free-text message's log (no task record) is yielded as it is. Raises
    :class:`WaitTimeout` after ``timeout`` seconds, TaskNotFound for an unknown id.

    >>> def two_steps(task):
    ...     print("step 1")
    ...     print("step 2")
    >>> dev = town.spawn("dev", fn=two_steps)
    >>> done_task = town.wait(task=town.assign("dev", "Do it"), timeout=10)
    >>> list(follow(store, done_task))
    ['step 1', 'step 2']
    """
    checks.optional(checks.seconds, timeout, "timeout")
    tid = lookup.task_id(store, ref)
    k = store.keys
    read = store.lua("tasklog_follow", _READ_NEW)
    keys = [k.task(tid), k.task_log(tid), k.task_log_count(tid)]
    seen, start, first = 0, time.monotonic(), True
    while True:
        state, total, lines, lost = read(keys=keys, args=[seen])
        if first and not state and not total:
            raise TaskNotFound(ref)
        first = False
        if lost:
            yield f"[… {lost} line(s) not shown: the task log keeps the last ones]"
        yield from lines
        seen = int(total)
        if not state or TaskState.parse(state).is_terminal:
            return
        if timeout is not None and time.monotonic() - start >= timeout:
            raise WaitTimeout(f"Timed out after {timeout:g}s following task {tid[:8]}: it is "
                              f"still {TaskState.parse(state).value}.")
        time.sleep(poll)
