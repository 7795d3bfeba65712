"""Tasks: assigning, finishing by hand, the backlog, and what a task printed.

Every change is one atomic transition (:mod:`.transitions`): ``assign`` writes the task
hash and its ``task_assign`` message together (spec §7.6), a claim takes a task off the
backlog only if it is still there, a completion clears the assignee's pointer in the same
step.

Example::

    >>> dev = town.spawn("dev", cli="claude", start=False)
    >>> assign_many(store, "dev", ["Fix #1", "Fix #2"])[0].state
    <TaskState.ASSIGNED: 'assigned'>
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from . import checks, lookup, transitions as tr
from .errors import AgentNotFound, ConfigError, InvalidState, TaskNotFound
from .models import TASK_HASH_FIELDS, Task, TaskState, canonical_uuid, hash_ts, parse_ts, utcnow
from .runopts import RunOptions, with_runs
from .store import Store

PAGE = 1000  # tasks per page of a paged listing (ttnb task list)


# --------------------------------------------------------------------------- checks


def check_description(description: Any, advice: str) -> str:
    """``description`` if it can be a task's text, else ConfigError saying what to do.

    >>> check_description("  ", "Say what to do.")
    Traceback (most recent call last):
    ConfigError: Task description is empty. Say what to do.
    """
    if not isinstance(description, str):
        raise ConfigError(f"A task description is text, not {type(description).__name__}. {advice}")
    if not description.strip():
        raise ConfigError(f"Task description is empty. {advice}")
    return checks.text(description, "A task description", advice)


def clean_tags(tags: Iterable[str]) -> list[str]:
    """``"a, b"`` or ``["a", " b "]`` → ``["a", "b"]`` (blank ones dropped); a tag that is
    not a string is refused rather than dropped.

    >>> clean_tags("a, b,, c")
    ['a', 'b', 'c']
    """
    if isinstance(tags, str):
        tags = tags.split(",")
    try:
        tags = list(tags)
    except TypeError:
        raise ConfigError(f"Tags must be a list of strings or 'a, b', not {type(tags).__name__}.") from None
    odd = [t for t in tags if not isinstance(t, str)]
    if odd:
        raise ConfigError(f"Tags must be strings; got {odd[0]!r}. Pass tags=['a', 'b'] or 'a, b'.")
    return [t.strip() for t in tags if t.strip()]


# --------------------------------------------------------------------------- reading


def task_ids(store: Store, state: str | TaskState | None = None, agent: Any = None) -> list[str] | None:
    """Ids of the tasks in one state and/or of one assignee, from the state indexes (only
    the ids asked for are read), most recently changed last; None for every task (no filter)."""
    k = store.keys
    indexes = []
    if state is not None:
        indexes.append(k.tasks_in_state(TaskState.parse_strict(state).value))
    if agent is not None:
        indexes.append(k.tasks_of_agent(lookup.agent(store, agent).id))
    if not indexes:
        return None
    if len(indexes) == 1:
        return store.redis.zrange(indexes[0], 0, -1)
    pipe = store.redis.pipeline(transaction=False)
    for key in indexes:
        pipe.zrange(key, 0, -1)
    first, second = pipe.execute()
    inside = set(second)
    return [t for t in first if t in inside]


def task_columns(store: Store, fields: Sequence[str], state: str | TaskState | None = None,
                 agent: Any = None) -> dict[str, list[Any]]:
    """Fields of every task (or of one state and/or one assignee) as columns,
    ``{field: [value, …]}`` (``id`` always read, None for an absent field), read through
    the state indexes (:meth:`Store.columns` with ``index``); every task the keyspace holds
    is read, also one a program keeping no index (the Rust ``tt``) wrote since the last
    reconcile. A record that changed state or assignee since the index was read is left
    out of a filtered read.

    >>> dev = town.spawn("dev", cli="claude", start=False)
    >>> task = town.assign("dev", "Fix #12")
    >>> task_columns(store, ["state"], state="assigned")
    {'id': ['...'], 'state': ['assigned']}
    """
    k = store.keys
    wanted = TaskState.parse_strict(state) if state is not None else None
    owner = lookup.agent(store, agent).id if agent is not None else None
    names = ["id", *(f for f in fields if f != "id")]
    ids = None
    index = _index_of(store, wanted, owner)
    if index == k.tasks_index:
        prefix = len(k.task(""))
        pipe = store.redis.pipeline(transaction=False)
        pipe.zrange(index, 0, -1)
        indexed = pipe.execute()[0]
        known = set(indexed)
        ids = indexed + [key[prefix:] for key in store.scan("task") if key[prefix:] not in known]
    filtered = wanted is not None or owner is not None
    extra = [f for f in ("state", "assigned_to") if f not in names] if filtered else []
    cols = store.columns("task", ids, names + extra, index=index)
    if filtered:
        keep = [i for i, (s, a) in enumerate(zip(cols["state"], cols["assigned_to"]))
                if (wanted is None or TaskState.parse(s) == wanted)
                and (owner is None or canonical_uuid(a) == owner)]
        if len(keep) != len(cols["id"]):
            cols = {f: [values[i] for i in keep] for f, values in cols.items()}
    return {f: cols[f] for f in names}


def _index_of(store: Store, wanted: TaskState | None, owner: str | None) -> str:
    """The state index a read of these tasks goes through (the smaller one first)."""
    if owner is not None:
        return store.keys.tasks_of_agent(owner)
    if wanted is not None:
        return store.keys.tasks_in_state(wanted.value)
    return store.keys.tasks_index


def list_tasks(store: Store, state: str | TaskState | None = None, agent: Any = None) -> list[Task]:
    """All tasks (oldest first), optionally only one state and/or one assignee (then only
    those are read, found through the state indexes); see :func:`task_columns`. Each
    carries its attempt count and usage (:func:`attach_runs`)."""
    return attach_runs(store, sorted(Task.from_columns(task_columns(store, TASK_HASH_FIELDS, state, agent)),
                                     key=lambda t: t.created_at))


def attach_runs(store: Store, tasks: list[Task], have: tuple[set[str], set[str]] | None = None) -> list[Task]:
    """Fill in each task's attempt count and usage (two bulk reads for all of them);
    ``have``: the ids that have run options and usage records, when already read
    (:func:`runs_index`).

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=10).state
    <TaskState.COMPLETED: 'completed'>
    >>> attach_runs(store, town.tasks())[0].attempts
    1
    """
    if not tasks:
        return tasks
    have_opts, have_usage = have if have is not None else runs_index(store)
    ids = [t.id for t in tasks]
    opts = {h["id"]: h for h in store.hashes("taskopts", [i for i in ids if i in have_opts],
                                             fields=["attempts"])} if have_opts else {}
    usage = ({h["id"]: h for h in store.hashes("usage", [i for i in ids if i in have_usage])}
             if have_usage else {})
    return [with_runs(t, opts.get(t.id), usage.get(t.id)) for t in tasks]


def runs_index(store: Store) -> tuple[set[str], set[str]]:
    """(ids of the tasks with run options, ids of the tasks with usage): one round trip."""
    pipe = store.redis.pipeline(transaction=False)
    have_opts, have_usage = pipe.smembers(store.keys.tasks_with_opts).smembers(store.keys.tasks_with_usage).execute()
    return set(have_opts), set(have_usage)


def task_pages(store: Store, state: str | TaskState | None = None, agent: Any = None, *,
               limit: int | None = None, page: int | None = None) -> Iterator[list[Task]]:
    """The listing of :func:`list_tasks` (oldest first, optionally one state and/or one
    assignee) in pages of ``page`` tasks (default :data:`PAGE`), so a long listing can be
    shown while it is read: the ids and creation times of every task are read here (a
    light read, which also checks the arguments), the first page's records when it is asked
    for, and the others' in one bulk read after it. ``limit``: only the ``limit`` most
    recently changed tasks (read through the index: only those). A record that changed
    state or assignee meanwhile is left out of a filtered listing; one that is gone is
    skipped, one made after the listing began is not in it.

    >>> done = [town.complete_task(town.backlog_add(f"Fix #{i}")) for i in range(3)]
    >>> for tasks in task_pages(store, state="completed", page=2): print(len(tasks))
    2
    1
    """
    wanted = TaskState.parse_strict(state) if state is not None else None
    owner = lookup.agent(store, agent).id if agent is not None else None
    page = PAGE if page is None else page
    if limit is not None:
        chosen = sorted(recent(store, limit, wanted, owner), key=lambda t: t.created_at)
        return (chosen[i:i + page] for i in range(0, len(chosen), page))
    cols = task_columns(store, ["created_at"], wanted, owner)
    now = utcnow()  # as Task.from_hash reads a missing or bad created_at
    order = [tid for tid, _ in sorted(zip(cols["id"], (parse_ts(c) or now for c in cols["created_at"])),
                                      key=lambda pair: pair[1])]

    def keep(t: Task | None) -> bool:
        return (t is not None and (wanted is None or t.state == wanted)
                and (owner is None or t.assigned_to == owner))

    def pages() -> Iterator[list[Task]]:
        have = runs_index(store)  # (attempts and usage: read for each page's tasks)
        first = [Task.from_hash(h) for h in store.hgetall_many([store.keys.task(t) for t in order[:page]])]
        if any(keep(t) for t in first):
            yield attach_runs(store, [t for t in first if keep(t)], have)
        if len(order) <= page:
            return
        # the rest in one bulk read of the same index, the server assembling it (the least
        # work on both sides); ids the index does not hold are read on their own
        rest = store.columns("task", order[page:], TASK_HASH_FIELDS, index=_index_of(store, wanted, owner))
        by_id = {t.id: t for t in Task.from_columns(rest)}
        for i in range(page, len(order), page):
            tasks = [t for t in (by_id.get(tid) for tid in order[i:i + page]) if keep(t)]
            if tasks:
                yield attach_runs(store, tasks, have)

    return pages()


def recent(store: Store, limit: int = 15, state: str | TaskState | None = None,
           agent: Any = None) -> list[Task]:
    """The ``limit`` most recently changed tasks (newest first), optionally of one state
    and/or one assignee; reads only those records.

    >>> first = town.fail_task(town.backlog_add("Deploy"), "no credentials")
    >>> second = town.fail_task(town.backlog_add("Migrate"), "timed out")
    >>> [t.description for t in recent(store, 3, state="failed")]   # newest first
    ['Migrate', 'Deploy']
    """
    ids = task_ids(store, state, agent)
    ids = ids[::-1][:limit] if ids is not None else store.redis.zrevrange(store.keys.tasks_index, 0, limit - 1)
    found = (Task.from_hash(h) for h in store.hashes("task", ids))
    return attach_runs(store, [t for t in found if t is not None])


def current_task(store: Store, ref: Any) -> Task | None:
    """The task an agent is working on now, or None."""
    a = lookup.agent(store, ref)
    if not a.current_task:
        return None
    try:
        return lookup.task(store, a.current_task)
    except TaskNotFound:
        return None


def task_log(store: Store, ref: Any) -> list[str]:
    """Output captured while a task ran (the last 1,000 lines). Free-text messages have a
    log but no task record, so their id is accepted too."""
    tid = lookup.task_id(store, ref)
    pipe = store.redis.pipeline(transaction=False)
    pipe.exists(store.keys.task(tid))
    pipe.lrange(store.keys.task_log(tid), 0, -1)
    exists, lines = pipe.execute()
    if not exists and not lines:
        raise TaskNotFound(ref)
    return lines


# --------------------------------------------------------------------------- assigning


def assign_many(store: Store, agent: Any, descriptions: Iterable[str], *,
                tags: Iterable[str] = (), opts: RunOptions | None = None) -> list[Task]:
    """Assign many tasks to one agent in one pipelined round trip (one per task script).

    The agent's id comes from the name cache when the name was seen before; each script
    then checks the agent still has that name, and a stale entry is looked up again once.
    ``opts`` (time limit, retries; validated by the caller) are written in each task's
    script, beside its record.
    """
    descriptions = [check_description(d, "Say what the agent should do.") for d in descriptions]
    tags = clean_tags(tags)  # not list(tags): "a, b" must not become one tag per letter
    for attempt in (1, 2):
        aid = lookup.agent_id(store, agent)
        guard = lookup.name_guard(store, agent, aid)
        tasks = []
        for d in descriptions:
            task = Task.new(d, tags=tags)
            task.state, task.assigned_to = TaskState.ASSIGNED, aid
            tasks.append(task)
        results = store.run_many([with_opts(store, tr.assign(store.keys, aid, t, guard), t.id, opts)
                                  for t in tasks])
        refused = [r for r in results if isinstance(r, Exception)]
        if not refused:
            return tasks
        stale = [r for r in refused if isinstance(r, tr.Stale)]
        if attempt == 1 and len(stale) == len(refused):
            store.name_ids.clear()  # agent pruned or renamed since we looked: look again
            if len(stale) == len(results):
                continue
        raise AgentNotFound(agent) if stale else refused[0]
    raise AgentNotFound(agent)


def _finish(store: Store, action: str, task: Task, fields: dict[str, str], *, message: str,
            count_done: bool = False, cmds: list[list[Any]] | None = None, again: bool = True) -> Task:
    rule = tr.TASK_RULES[action]
    step = tr.finish_task(store.keys, task, action, fields, message=message,
                          count_done=count_done, cmds=cmds or [])
    try:
        store.run(step)
    except tr.RecordMissing:
        raise TaskNotFound(task.short_id) from None
    except tr.WrongState as why:
        raise why.explain(rule, "task", task.short_id) from None
    except tr.Stale:  # claimed or reassigned since it was read: read it again, once
        if not again:
            raise InvalidState(f"Task {task.short_id!r} kept changing while this ran; "
                               "look at it again and retry.") from None
        return _finish(store, action, lookup.task(store, task.id), fields, message=message,
                       count_done=count_done, cmds=cmds, again=False)
    return lookup.task(store, task.id)


def complete(store: Store, ref: Any, result: str | None = None) -> Task:
    """Mark a task completed with its result (``tt task complete``)."""
    task = lookup.task(store, ref)
    if result:
        checks.text(result, "A result")
    return _finish(store, "complete", task,
                   {"result": result or "Completed", "completed_at": hash_ts(utcnow())},
                   message=f"Task completed: {task.summary(80)}", count_done=True)


def fail(store: Store, ref: Any, error: str) -> Task:
    """Mark a task failed; the error text becomes its result (as upstream stores it)."""
    task = lookup.task(store, ref)
    if error:
        checks.text(error, "An error")
    return _finish(store, "fail", task,
                   {"result": error or "Failed", "completed_at": hash_ts(utcnow())},
                   message=f"Task failed: {(error or '').strip()[:120]}")


def cancel(store: Store, ref: Any, reason: str | None = None) -> Task:
    """Cancel an unfinished task (and take it out of the backlog if it is there)."""
    task = lookup.task(store, ref)
    text = f"Cancelled: {reason}" if reason else "Cancelled"
    return _finish(store, "cancel", task, {"result": text, "completed_at": hash_ts(utcnow())},
                   message=f"Task cancelled: {task.summary(80)}",
                   cmds=[["LREM", store.keys.backlog, 0, task.id]])


def retry(store: Store, ref: Any) -> Task:
    """Run a failed or cancelled task again: back to ``assigned`` with a new
    ``task_assign`` message to the agent it was assigned to (same task id), atomically."""
    task = lookup.task(store, ref)
    if not task.assigned_to:
        raise ConfigError(f"Task {task.short_id!r} is assigned to no agent, so there is no one "
                          "to retry it; assign its text again with assign().")
    try:
        store.run(tr.retry_task(store.keys, task))
    except tr.RecordMissing:
        raise TaskNotFound(task.short_id) from None
    except tr.WrongState as why:
        raise why.explain(tr.TASK_RULES["retry"], "task", task.short_id) from None
    except tr.Stale:
        raise InvalidState(f"Task {task.short_id!r} changed while this ran; look at it again "
                           "and retry.") from None
    return lookup.task(store, task.id)


# --------------------------------------------------------------------------- backlog


def backlog_add(store: Store, description: str, *, tags: Iterable[str] = (),
                opts: RunOptions | None = None) -> Task:
    """Put a new unassigned task on the backlog (FIFO), with its run options if any."""
    task = Task.new(check_description(description, "Say what needs doing."), tags=clean_tags(tags))
    store.run(with_opts(store, tr.backlog_add(store.keys, task), task.id, opts))
    return task


def with_opts(store: Store, change: tr.Change, tid: str, opts: RunOptions | None) -> tr.Change:
    """A task-creating change that also writes the task's run options (same script)."""
    if opts is not None:
        change.spec["cmds"] = [*change.spec.get("cmds", []), *opts.cmds(store.keys, tid)]
    return change


def backlog(store: Store) -> list[Task]:
    """Backlog tasks in queue order."""
    ids = store.redis.lrange(store.keys.backlog, 0, -1)
    by_id = {t.id: t for t in (Task.from_hash(h) for h in
                               store.hgetall_many([store.keys.task(i) for i in ids])) if t}
    return [by_id[i] for i in ids if i in by_id]


def claim(store: Store, tid: str, aid: str) -> None:
    """Assign one backlog task, atomically: only if it is still queued."""
    try:
        store.run(tr.claim(store.keys, tid, aid))
    except (tr.NotInList, tr.RecordMissing):
        raise TaskNotFound(f"{tid} (not in the backlog)") from None
    except tr.WrongState as why:
        raise why.explain(tr.TASK_RULES["claim"], "task", tid[:4]) from None


def backlog_claim(store: Store, task_ref: Any, agent: Any) -> Task:
    """Take one task off the backlog and assign it (the agent is resolved first, so a typo
    never loses the task — upstream bug §11.11)."""
    aid = lookup.agent_id(store, agent)
    tid = lookup.task_id(store, task_ref)
    claim(store, tid, aid)
    return lookup.task(store, tid)


def backlog_assign_all(store: Store, agent: Any) -> list[Task]:
    """Assign every backlog task, in order, to one agent; one round trip for all."""
    aid = lookup.agent_id(store, agent)
    ids = store.redis.lrange(store.keys.backlog, 0, -1)
    results = store.run_many([tr.claim(store.keys, tid, aid) for tid in ids])
    claimed = [tid for tid, r in zip(ids, results) if not isinstance(r, Exception)]
    return [t for t in (Task.from_hash(h) for h in
                        store.hgetall_many([store.keys.task(i) for i in claimed])) if t]


def backlog_remove(store: Store, ref: Any) -> Task:
    """Remove a task from the backlog and delete it; returns the deleted record."""
    task = lookup.task(store, ref)
    try:
        store.run(tr.backlog_remove(store.keys, task.id))
    except (tr.NotInList, tr.RecordMissing):
        raise TaskNotFound(f"{task.id} (not in the backlog)") from None
    return task

