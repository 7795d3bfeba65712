"""Blocking until something holds in a town, driven by its event stream (no sleep-polling).

Every state change of a worker, task or agent lands in ``tt:{town}:events`` in the same
atomic step, so a waiter blocks on ``XREAD BLOCK`` and re-checks its condition only when
something happened (and at least every few seconds, for changes made by tools that emit
no events, such as the Rust ``tt``).

Example::

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> task = town.assign("dev", "Fix #12")
    >>> wait_task(store, task.id, timeout=60).state
    <TaskState.COMPLETED: 'completed'>
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import archive, lookup, status, workflows
from .errors import AgentNotFound, WaitTimeout
from .models import Agent, AgentState, Task, TaskState
from .store import Store
from .tasks import list_tasks

RECHECK_SECS = 2.0  # re-check at least this often even without events
RECONCILE_SECS = 10.0  # while waiting for all tasks, file what tools keeping no index changed
Events = list[tuple[str, dict[str, str]]]


def until(store: Store, check: Callable[[Events], Any], *, timeout: float | None,
          describe: Callable[[], str], recheck: Callable[[], float] | None = None,
          settle: float = 0.0, progress: Callable[[], None] | None = None) -> Any:
    """Return the first non-None ``check(new_events)``; raise :class:`WaitTimeout` with
    ``describe()`` (the current state) when ``timeout`` seconds pass first. ``recheck()``
    may shorten the longest block (for a change that emits no event). ``settle`` lets
    events gather that long after a wake-up, so a busy town is checked in batches.
    ``progress()`` is called after every check that did not end the wait (a display).
    """
    client = store.blocking()
    stream = store.keys.events
    last = store.last_event_id()
    start = time.monotonic()
    events: Events = []
    while True:
        result = check(events)
        if result is not None:
            return result
        if progress is not None:
            progress()
        remaining = None if timeout is None else start + timeout - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise WaitTimeout(f"Timed out after {timeout:g}s waiting for {describe()}.")
        block = recheck() if recheck is not None else RECHECK_SECS
        block = block if remaining is None else min(remaining, block)
        reply = client.xread({stream: last}, block=max(1, int(block * 1000)), count=1000)
        events = [e for _, entries in reply or [] for e in entries]
        if events:
            last = events[-1][0]
            if settle:
                time.sleep(settle)


def wait_task(store: Store, task_id: str, timeout: float | None,
              progress: Callable[[], None] | None = None) -> Task:
    """Until the task is completed, failed or cancelled."""
    def check(_: Events) -> Task | None:
        task = lookup.task(store, task_id)
        return task if task.state.is_terminal else None

    def describe() -> str:
        task = lookup.task(store, task_id)
        who = ""
        if task.assigned_to:
            try:
                agent = lookup.agent(store, task.assigned_to)
                stuck = agent.state.is_terminal or agent.state == AgentState.PAUSED
                who = f" ({agent.name}" + (f", which is {agent.state.value})" if stuck else ")")
            except AgentNotFound:  # the assignee may be gone
                who = f" ({task.assigned_to[:8]})"
        return f"task {task.short_id} '{task.summary(40)}': it is still {task.state.value}{who}"

    return until(store, check, timeout=timeout, describe=describe, progress=progress)


def agent_status(store: Store, aid: str) -> tuple[Agent, int, int]:
    """The agent, how many messages wait for it (urgent + inbox) and how many it has taken
    and not finished (processing list)."""
    k = store.keys
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(k.agent(aid))
    for key in (k.urgent(aid), k.inbox(aid), k.processing(aid)):
        pipe.llen(key)
    h, urgent, inbox, taken = pipe.execute()
    agent = Agent.from_hash(h)
    if agent is None:
        raise AgentNotFound(aid)
    return agent, urgent + inbox, taken


def wait_agent(store: Store, aid: str, timeout: float | None,
               progress: Callable[[], None] | None = None) -> Agent:
    """Until the agent is idle with nothing queued, or terminal (stopped/error/cold)."""
    # idle with messages queued: consuming an info message emits no event, so look again
    # soon — backing off, as a worker that is gone will never take them
    quick = [0.0]

    def check(_: Events) -> Agent | None:
        agent, waiting, taken = agent_status(store, aid)
        if agent.state.is_terminal or (agent.state == AgentState.IDLE and not waiting + taken):
            return agent
        busy_idle = agent.state == AgentState.IDLE
        quick[0] = min(quick[0] * 2 or 0.05, RECHECK_SECS) if busy_idle else 0.0
        return None

    def describe() -> str:
        agent, waiting, taken = agent_status(store, aid)
        doing = f" on task {agent.current_task[:8]}" if agent.current_task else ""
        return (f"agent '{agent.name}' to be idle: it is {agent.state.value}{doing} with "
                f"{waiting} message(s) waiting" + (f" and {taken} in hand" if taken else ""))

    return until(store, check, timeout=timeout, describe=describe, progress=progress,
                 recheck=lambda: quick[0] or RECHECK_SECS)


def stuck_agents(store: Store) -> str:
    """``'; not running work: dev (stopped, 2 waiting), ops (paused)'`` — the agents that
    hold work they will not start: paused ones, and stopped or failed ones with messages
    waiting — or '' when there are none (for timeout messages)."""
    agents = lookup.all_agents(store)
    waiting = store.mail_counts([a.id for a in agents])
    stuck = []
    for a in agents:
        if a.state == AgentState.PAUSED:
            stuck.append(f"{a.name} (paused)")
        elif a.state.is_terminal and waiting.get(a.id):
            stuck.append(f"{a.name} ({a.state.value}, {waiting[a.id]} waiting)")
    return f"; not running work: {', '.join(stuck)}" if stuck else ""


def wait_all(store: Store, timeout: float | None,
             progress: Callable[[], None] | None = None) -> list[Task]:
    """Until every task of the town is terminal; returns them all.

    Each look is one read of the counts (O(1) in tasks); only the answer reads every task
    (:func:`wait_condition` waits the same way and returns the counts instead). Every
    ``RECONCILE_SECS`` while it waits, and once more when the counts say done,
    :func:`status.reconcile_if_due` files what a program keeping no index (the Rust
    ``tt``) changed — unless a reconcile ran in the last ``status.RECONCILE_EVERY``
    seconds (the connect that began the wait did one) — so its work is not missed (and
    :func:`workflows.sweep` releases the tasks that waited for it).
    """
    looked = [time.monotonic()]

    def check(_: Events) -> list[Task] | None:
        c = status.counts(store)
        if c.open_tasks == 0 or time.monotonic() - looked[0] > RECONCILE_SECS:
            looked[0] = time.monotonic()
            workflows.sweep(store)  # dependencies another program finished: passed on
            status.reconcile_if_due(store)
            archive.run_policy(store)  # [tinytown_nb] archive_after: one SET NX, runs every 10 min
            c = status.counts(store)
        return list_tasks(store) if c.open_tasks == 0 else None

    def describe() -> str:
        c = status.counts(store)
        detail = ", ".join(f"{n} {s}" for s, n in c.tasks.items()
                           if n and not TaskState(s).is_terminal)
        gates = workflows.gates(store)
        waiting = f"; {len(gates)} gate(s) wait for a decision (town.gates())" if gates else ""
        return (f"every task to finish: {c.open_tasks} of {c.total_tasks} are not ({detail}){waiting}"
                + stuck_agents(store))

    return until(store, check, timeout=timeout, describe=describe, settle=0.01, progress=progress)


def wait_condition(store: Store, condition: str, timeout: float | None,
                   progress: Callable[[status.Counts], None] | None = None) -> status.Counts:
    """Until the town is ``done`` or ``idle`` (:mod:`.status`); returns the counts that
    held. ``progress(counts)`` is called with every look that did not. Reconciles as
    :func:`wait_all` does."""
    status.check_condition(condition)
    last: list[status.Counts] = []
    looked = [time.monotonic()]

    def check(_: Events) -> status.Counts | None:
        c = status.counts(store)
        if c.holds(condition) or time.monotonic() - looked[0] > RECONCILE_SECS:
            looked[0] = time.monotonic()
            workflows.sweep(store)  # dependencies another program finished: passed on
            status.reconcile_if_due(store)
            archive.run_policy(store)  # [tinytown_nb] archive_after: one SET NX, runs every 10 min
            c = status.counts(store)
        last[:] = [c]
        if c.holds(condition):
            return c
        if progress is not None:
            progress(c)
        return None

    return until(store, check, timeout=timeout,
                 describe=lambda: (f"the town to be {condition} ({last[0].progress() if last else ''})"
                                   + stuck_agents(store)))
