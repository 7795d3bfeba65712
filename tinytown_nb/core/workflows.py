"""Workflows: tasks that wait for other tasks, and gates a person approves.

``assign(store, "reviewer", ["Review"], after=[draft])`` makes a task that waits: a plain
``pending`` task (no assignee, not in the backlog — the Rust ``tt`` lists it as pending)
plus keys of our own (``keys.py``: ``deps:*``). The transition script that records the
completion of its last dependency — whoever completes it: a worker's finish step,
``town.complete_task``, ``ttnb task complete``, a gate's approval — delivers it in that
same atomic step: ``assigned`` with its ``task_assign`` message in the agent's inbox (no
polling, no lost wake-up; ``transition.lua``, "workflows"). A task created after its
dependencies are all completed is delivered at once, in the step that creates it.

* **Failure.** When a dependency fails, is cancelled or deleted, every task waiting for
  it — transitively — is cancelled (``Cancelled: dependency 3f2a (Parse) failed``), one
  ``task_failed`` event each. A dependency on an unknown task, on itself, on a task that
  already failed, or one that would make a cycle (:func:`depend`) is refused with one
  line and nothing written (checked again in the script, so a dependency cancelled
  meanwhile leaves no dangling dependent).
* **Results.** A released task's worker reads its dependencies' results (:func:`inputs`):
  a function agent gets ``task.inputs`` ({dependency id: result}, in the order given), a
  CLI agent's prompt a section with each one's description and result (bounded), every
  command the JSON file named by ``TINYTOWN_TASK_INPUTS`` (:mod:`.runners`).
* **Backlog.** ``backlog_add(..., after=[...])``: the task joins the backlog (end of the
  queue) when its dependencies are done, so no backlog agent can claim it early.
* **Gates.** :func:`gate` makes a task no agent runs; it waits for a person, who
  :func:`approve`\\ s it (``completed``; refused while it still waits for its own
  dependencies) or :func:`reject`\\ s it with a note (``failed``; the tasks waiting for it
  are cancelled and the note goes, as an informational message, to the agents of the
  gate's own dependencies so an author can revise).
* **Sweep.** A task completed by a program that knows nothing of dependencies (a Rust
  ``tt`` agent) is passed on by :func:`sweep`, which looks only at the tasks some waiting
  task waits for (``deps:watched``): ``Town.recover()``, ``wait(all=True)`` and
  ``wait_until()`` (when they reconcile) and every idle worker (at most every
  ``SWEEP_SECS``) run it.

Example::

    >>> author = town.spawn("author", fn=lambda task: "Faster start-up")
    >>> publisher = town.spawn("publisher", fn=lambda task: "Published")
    >>> draft = town.assign("author", "Draft the release notes")
    >>> ok = town.gate("Approve the notes", after=[draft])
    >>> publish = town.assign("publisher", "Publish the notes", after=[ok])
    >>> publish.state
    <TaskState.PENDING: 'pending'>
    >>> town.wait(task=draft, timeout=10).result
    'Faster start-up'
    >>> town.approve(ok, "Ship it").state
    <TaskState.COMPLETED: 'completed'>
    >>> town.wait(task=publish, timeout=10).result
    'Published'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import lookup, tasks, transitions as tr
from .errors import AgentNotFound, ConfigError, InvalidState, TaskNotFound
from .models import Task, TaskState, parse_ts
from .runopts import RunOptions
from .store import Store

SWEEP_SECS = 5.0  # an idle worker sweeps at most this often

# Ids of watched tasks that are finished (or gone): the sweep's one read, O(watched tasks).
_FINISHED_LUA = """local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local ok, s = pcall(redis.call, 'HGET', ARGV[1] .. id, 'state')
  if ok then
    s = s and string.lower(s)
    if (not s and redis.call('EXISTS', ARGV[1] .. id) == 0)
        or s == 'completed' or s == 'failed' or s == 'cancelled' then out[#out + 1] = id end
  end
end
return out"""


@dataclass(frozen=True)
class Deps:
    """What one task waits (or waited) for.

    ``kind``: ``agent`` (delivered to ``agent_id``), ``backlog`` or ``gate``; ``after``:
    every dependency, in the order given; ``open``: those not completed yet (empty once
    released); ``state``: the task's own state; ``released_at``: when it was delivered.

    >>> Deps("t1", "agent", "a1", ("d1", "d2"), ("d2",), TaskState.PENDING).waiting_on
    ('d2',)
    """

    task_id: str
    kind: str
    agent_id: str | None
    after: tuple[str, ...]
    open: tuple[str, ...]
    state: TaskState | None
    created_at: datetime | None = None
    released_at: datetime | None = None

    @property
    def waiting_on(self) -> tuple[str, ...]:
        """The dependencies it still waits for: ``open`` while it is pending, else none."""
        return self.open if self.state is TaskState.PENDING else ()


@dataclass(frozen=True)
class Gate:
    """A gate: a task no agent runs, which a person approves or rejects.

    ``ready``: it waits for nothing but a person (pending, its dependencies done);
    ``decision`` (``approved``/``rejected``), ``note`` and ``decided_at`` once decided.

    >>> Gate(Task.new("Ship?"), (), (), None, None, None).ready
    True
    """

    task: Task
    after: tuple[str, ...]
    open: tuple[str, ...]
    decision: str | None
    note: str | None
    decided_at: datetime | None

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def short_id(self) -> str:
        return self.task.short_id

    @property
    def is_open(self) -> bool:
        """Not decided yet (the task is pending)."""
        return self.task.state is TaskState.PENDING

    @property
    def ready(self) -> bool:
        """Open, with every dependency completed: it waits only for a person."""
        return self.is_open and not self.open

    def __repr__(self) -> str:
        what = ("ready" if self.ready else f"waiting for {len(self.open)}") if self.is_open \
            else (self.decision or self.task.state.value)
        return f"<Gate {self.short_id} {what}: {self.task.summary(60)}>"


# --------------------------------------------------------------------------- creating


def dependency_ids(store: Store, after: Any) -> list[str]:
    """The canonical ids of ``after`` (tasks, ids or unique id prefixes), in order, each
    once. A single task or id is taken as a list of one; unknown prefixes raise
    :class:`TaskNotFound` (full ids are checked by the script).

    >>> draft = town.backlog_add("Draft the notes")
    >>> dependency_ids(store, "3f2a9c1e-0000-4000-8000-000000000000, " + draft.id[:4])
    ['3f2a9c1e-0000-4000-8000-000000000000', '...']
    >>> dependency_ids(store, " , ")      # a text that names no task is a mistake, not "none"
    Traceback (most recent call last):
    ConfigError: after=' , ' names no task: give task ids, e.g. '3f2a,9c1e'.
    """
    if after is None:
        return []
    if isinstance(after, str):
        ids = [a.strip() for a in after.split(",") if a.strip()]
        if not ids:
            raise ConfigError(f"after={after!r} names no task: give task ids, e.g. '3f2a,9c1e'.")
        after = ids
    elif isinstance(after, (Gate, Task)):
        after = [after]
    try:
        refs = list(after)
    except TypeError:
        raise ConfigError(f"after must be a list of tasks or task ids, not {type(after).__name__}.") from None
    return list(dict.fromkeys(lookup.task_id(store, _task_ref(ref)) for ref in refs))


def _task_ref(ref: Any) -> Any:
    """A gate stands for its task wherever a task reference is taken."""
    return ref.task if isinstance(ref, Gate) else ref


def _explain(why: tr.Refused, task: str = "the task") -> Exception:
    """The one-line error a person sees for a refused workflow change."""
    if isinstance(why, tr.DependencyRefused):
        dep = (why.task_id or "")[:8]
        if why.code == "DEP_MISSING":
            return TaskNotFound(why.task_id)
        if why.code == "DEP_DONE":
            return InvalidState(f"Task {dep} already {why.detail}, so a task waiting for it would "
                                "never run; nothing was created. Leave it out of after=, or retry it first.")
        if why.code == "DEP_SELF":
            return ConfigError(f"Task {dep} cannot wait for itself; leave it out of after=.")
        if why.code == "DEP_CYCLE":
            return ConfigError(f"Task {dep} already waits (directly or through others) for {task}; "
                               f"making {task} wait for it would be a cycle. Nothing was changed.")
        if why.code == "DEP_OPEN":
            return InvalidState(f"Gate {task} still waits for {why.detail} of its dependencies; "
                                "approve it once they are completed (or reject it now).")
        if why.code == "NOT_WAITING":
            state = why.detail if why.detail not in ("false", "nil") else "gone"
            return InvalidState(f"Task {task} does not wait (it is {state}, or already released); "
                                "only a waiting task or an open gate can get more dependencies.")
    return why


def _create(store: Store, changes: list[tr.Change]) -> None:
    """Run creation changes: the first alone, so that a refusal (an unknown or failed
    dependency) comes before anything is written; the others in one round trip."""
    for first, batch in ((True, changes[:1]), (False, changes[1:])):
        results = store.run_many(batch)
        for result in results:
            if isinstance(result, tr.Stale) and not first:  # the agent went away midway
                made = 1 + sum(not isinstance(r, Exception) for r in results)
                raise InvalidState(f"The agent was pruned or renamed while its tasks were created: "
                                   f"{made} of {len(changes)} were. Look at town.tasks() and retry the rest.")
            if isinstance(result, tr.Refused):
                raise _explain(result)
            if isinstance(result, Exception):
                raise result


def assign(store: Store, agent: Any, descriptions: Iterable[str], *, after: Any = None,
           tags: Iterable[str] = (), opts: RunOptions | None = None) -> list[Task]:
    """Tasks for an agent that wait for the tasks ``after`` (all of them, each task); with
    no ``after`` plain assignments (:func:`tasks.assign_many`). Returned as created: those
    whose dependencies were all completed already are ``assigned`` (delivered at once),
    the others ``pending``.

    >>> reviewer = town.spawn("reviewer", cli="claude", start=False)
    >>> draft = town.backlog_add("Draft the notes")
    >>> [t.state.value for t in assign(store, "reviewer", ["Review"], after=[draft])]
    ['pending']
    """
    deps = dependency_ids(store, after)
    if not deps:
        return tasks.assign_many(store, agent, descriptions, tags=tags, opts=opts)
    descriptions = [tasks.check_description(d, "Say what the agent should do.") for d in descriptions]
    tags = tasks.clean_tags(tags)
    made = [Task.new(d, tags=tags) for d in descriptions]
    for attempt in (1, 2):
        aid = lookup.agent_id(store, agent)
        guard = lookup.name_guard(store, agent, aid)
        try:
            _create(store, [tasks.with_opts(store, tr.wait_task(store.keys, t, "agent", deps, agent_id=aid,
                                                                 name_guard=guard), t.id, opts)
                            for t in made])
            return _reread(store, made)
        except tr.Stale:  # the cached name moved (agent pruned or renamed): look it up again
            store.name_ids.clear()
            if attempt == 2:
                raise AgentNotFound(agent) from None
    raise AgentNotFound(agent)


def _reread(store: Store, made: list[Task]) -> list[Task]:
    by_id = {t.id: t for t in (Task.from_hash(h) for h in store.hgetall_many(
        [store.keys.task(t.id) for t in made])) if t}
    return [by_id.get(t.id, t) for t in made]


def backlog_add(store: Store, description: str, *, after: Any = None, tags: Iterable[str] = (),
                opts: RunOptions | None = None) -> Task:
    """A backlog task that joins the backlog (at its end) once the tasks ``after`` are all
    completed — at once when they are; with no ``after`` a plain backlog task."""
    deps = dependency_ids(store, after)
    if not deps:
        return tasks.backlog_add(store, description, tags=tags, opts=opts)
    task = Task.new(tasks.check_description(description, "Say what needs doing."), tags=tasks.clean_tags(tags))
    _create(store, [tasks.with_opts(store, tr.wait_task(store.keys, task, "backlog", deps), task.id, opts)])
    return _reread(store, [task])[0]


def gate(store: Store, description: str, *, after: Any = None, tags: Iterable[str] = ()) -> Task:
    """A gate: a ``pending`` task no agent runs, which waits for the tasks ``after`` and
    then for a person (:func:`approve`, :func:`reject`)."""
    deps = dependency_ids(store, after)
    task = Task.new(tasks.check_description(description, "Say what the person should decide."),
                    tags=tasks.clean_tags(tags))
    _create(store, [tr.wait_task(store.keys, task, "gate", deps)])
    return task


def depend(store: Store, task: Any, after: Any) -> Deps:
    """Make a task that still waits (or an open gate) wait for more tasks; refused when it
    was released or decided already, or when one of them waits for it (a cycle)."""
    tid = lookup.task_id(store, _task_ref(task))
    deps = dependency_ids(store, after)
    if not deps:
        raise ConfigError("Say which tasks it should wait for: depend(task, after=[...]).")
    if tid in deps:
        raise ConfigError(f"Task {tid[:8]} cannot wait for itself; leave it out of after=.")
    try:
        store.run(tr.add_dependencies(store.keys, tid, deps))
    except tr.RecordMissing:
        raise TaskNotFound(task) from None
    except tr.Refused as why:
        raise _explain(why, tid[:8]) from None
    return deps_of(store, [tid])[0]


# --------------------------------------------------------------------------- gates


def _gate_task(store: Store, ref: Any) -> Task:
    found = lookup.task(store, _task_ref(ref))
    if store.redis.hget(store.keys.deps(found.id), "kind") != "gate":
        raise ConfigError(f"Task {found.short_id} is not a gate; approve or reject gates made "
                          "with town.gate(...). Finish other tasks with complete_task/fail_task.")
    return found


def _decide(store: Store, ref: Any, approve: bool, note: str | None) -> Task:
    g = _gate_task(store, ref)
    inform: list[str] = []
    if not approve:
        after = _after(store.redis.hget(store.keys.deps(g.id), "after"))
        inform = [t.assigned_to for t in (Task.from_hash(h) for h in store.hgetall_many(
            [store.keys.task(i) for i in after])) if t is not None and t.assigned_to]
    try:
        store.run(tr.decide_gate(store.keys, g, approve=approve, note=note, inform=inform))
    except tr.WrongState as why:
        raise InvalidState(f"Gate {g.short_id} is already {why.state} (decided); nothing was changed.") from None
    except tr.Refused as why:
        raise _explain(why, g.short_id) from None
    return lookup.task(store, g.id)


def approve(store: Store, ref: Any, note: str | None = None) -> Task:
    """Approve a gate: it is completed (result: the note, else ``Approved``) and the tasks
    waiting for it go on. Refused while it still waits for its own dependencies."""
    if note is not None and not isinstance(note, str):
        raise ConfigError(f"A note is text, not {type(note).__name__}.")
    return _decide(store, ref, True, note.strip() if note and note.strip() else None)


def reject(store: Store, ref: Any, note: str) -> Task:
    """Reject a gate with a note: it fails (``Rejected: <note>``), the tasks waiting for it
    are cancelled, and the note goes to the agents of its own dependencies."""
    if not isinstance(note, str) or not note.strip():
        raise ConfigError("Say why the gate is rejected: reject(gate, note='...'); the note goes "
                          "to the agents whose work it judged.")
    return _decide(store, ref, False, note.strip())


def gates(store: Store, open: bool = True) -> list[Gate]:
    """Gates, oldest first: those not decided yet (``open=True``) or all of them."""
    k = store.keys
    ids = store.redis.zrange(k.gates, 0, -1)
    if not ids:
        return []
    pipe = store.redis.pipeline(transaction=False)
    for gid in ids:
        pipe.hgetall(k.task(gid)).hgetall(k.gate(gid)).hget(k.deps(gid), "after").smembers(k.deps_open(gid))
    replies = pipe.execute(raise_on_error=False)
    found = []
    for i in range(len(ids)):
        task_h, gate_h, after, open_ids = replies[4 * i:4 * i + 4]
        task = Task.from_hash(task_h) if isinstance(task_h, dict) else None
        if task is None or (open and task.state is not TaskState.PENDING):
            continue
        gate_h = gate_h if isinstance(gate_h, dict) else {}
        order = _after(after if isinstance(after, str) else None)
        pending = set(open_ids) if isinstance(open_ids, set) else set()
        found.append(Gate(task, tuple(order), tuple(i for i in order if i in pending),
                          gate_h.get("decision") or None, gate_h.get("note") or None,
                          parse_ts(gate_h.get("decided_at"))))
    return found


# --------------------------------------------------------------------------- reading


def _after(raw: str | bytes | None) -> list[str]:
    """The ``after`` field (a JSON list of ids) as a list; anything else ⇒ [].

    >>> _after('["a","b"]'), _after("{}"), _after(None)
    (['a', 'b'], [], [])
    """
    try:
        value = json.loads(raw) if raw else []
    except (ValueError, TypeError):
        return []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def deps_of(store: Store, ids: Sequence[str] | None = None) -> list[Deps]:
    """The :class:`Deps` of these task ids (those that have one), or of every task that
    waits or waited (oldest first); one pipelined read."""
    k = store.keys
    every = ids is None
    if ids is None:
        ids = store.redis.zrange(k.deps_index, 0, -1)
    if not ids:
        return []
    pipe = store.redis.pipeline(transaction=False)
    for tid in ids:
        pipe.hgetall(k.deps(tid)).smembers(k.deps_open(tid)).hget(k.task(tid), "state")
    replies = pipe.execute(raise_on_error=False)
    found = []
    for i, tid in enumerate(ids):
        h, open_ids, state = replies[3 * i:3 * i + 3]
        if not isinstance(h, dict) or not h.get("kind"):
            continue
        order = _after(h.get("after"))
        pending = open_ids if isinstance(open_ids, set) else set()
        found.append(Deps(tid, h["kind"], h.get("agent") or None, tuple(order),
                          tuple(d for d in order if d in pending),
                          TaskState.parse(state) if isinstance(state, str) else None,
                          parse_ts(h.get("created_at")), parse_ts(h.get("released_at"))))
    if every:  # the index is ordered by the millisecond: ties in creation order
        found.sort(key=lambda d: d.created_at or datetime.min.replace(tzinfo=timezone.utc))
    return found


def waiting_on(store: Store, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """What each of these tasks (canonical ids) still waits for: ``{task id: open
    dependency ids, in the order given}``, only for the tasks that wait (pending, not
    released, a dependency not completed yet); one pipelined read, none for no ids.

    >>> reviewer = town.spawn("reviewer", cli="claude", start=False)
    >>> draft = town.backlog_add("Draft the notes")
    >>> review = town.assign("reviewer", "Review the notes", after=[draft])
    >>> waiting_on(store, [review.id, draft.id])   # {review: (draft,)}
    {'...': ('...',)}
    """
    ids = list(ids)
    if not ids:  # (deps_of reads every task for None, nothing for [])
        return {}
    return {d.task_id: d.waiting_on for d in deps_of(store, ids) if d.waiting_on}


def deps(store: Store, task: Any = None) -> list[Deps]:
    """Every task's :class:`Deps` (``task`` None), or one task's (``[]`` when it waits for
    nothing)."""
    return deps_of(store, None if task is None else [lookup.task_id(store, _task_ref(task))])


def inputs(store: Store, tid: str, after: str | bytes | None = None) -> list[Task]:
    """The records of the tasks ``tid`` waited for, in the order given (``after``: its
    ``deps:task`` ``after`` field when already read, e.g. by the worker's take step).
    Empty for a task that waited for nothing."""
    if after is None:
        after = store.redis.hget(store.keys.deps(tid), "after")
    if isinstance(after, bytes):
        after = after.decode("utf-8", "replace")
    ids = _after(after)
    if not ids:
        return []
    by_id = {t.id: t for t in (Task.from_hash(h) for h in store.hgetall_many(
        [store.keys.task(i) for i in ids])) if t}
    return [by_id[i] for i in ids if i in by_id]


def sweep(store: Store) -> int:
    """Pass on what a program that knows nothing of dependencies (the Rust ``tt``)
    finished: every watched task (one some waiting task waits for) that is completed,
    failed, cancelled or gone releases or cancels its waiting tasks. Returns how many
    tasks it passed on. One read, plus one atomic step when there is something to do.

    >>> reviewer = town.spawn("reviewer", cli="claude", start=False)
    >>> draft = town.backlog_add("Draft the notes")
    >>> review = town.assign("reviewer", "Review the notes", after=[draft])
    >>> _ = store.redis.hset(store.keys.task(draft.id), "state", "completed")   # as tt does
    >>> sweep(store)
    1
    >>> town.task(review).state
    <TaskState.ASSIGNED: 'assigned'>
    """
    k = store.keys
    finished = store.lua("deps_finished", _FINISHED_LUA)(keys=[k.deps_watched], args=[k.task("")])
    if not finished:
        return 0
    store.run(tr.settle_dependencies(k, finished))
    return len(finished)
