"""A town as typed pandas DataFrames: agents, tasks, inbox messages, events, counts and
the agents' git worktrees.

Every frame has fixed columns and dtypes, also when the town is empty: states are ordered
categoricals holding *every* state in lifecycle order (so ``value_counts()`` lists zeros and
``sort_values("state")`` follows the lifecycle), times are ``datetime64[us, UTC]``, counts
are nullable ``Int64``, text is ``string``. Rows come from the core's bulk reads (one
pipelined round trip per kind, never one per row); task hashes are parsed column by column,
the core's own parsers run once per *distinct* value (states, tags, odd ids).

Example::

    >>> from tinytown_nb import Town, frames
    >>> town = Town.init("demo")
    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=10).state
    <TaskState.COMPLETED: 'completed'>
    >>> frames.tasks_frame(town)[["agent", "description", "state"]]
      agent description      state
    0   dev     Fix #12  completed
    >>> frames.tasks_frame(town).groupby("agent").duration.mean()
    agent
    dev   0 days 00:00:...
    Name: duration, dtype: timedelta64[us]
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .core import AgentWorktree, Counts, Event, UsageRow
from .core.errors import ConfigError
from .core.keys import SUPERVISOR_ID
from .core.models import (
    AGENT_STATES,
    MESSAGE_CATEGORIES,
    MESSAGE_TYPES,
    TASK_STATES,
    Agent,
    Message,
    Priority,
    Task,
    TaskState,
    canonical_uuid,
)

__all__ = [
    "AGENT_STATE_DTYPE", "TASK_STATE_DTYPE", "UTC", "AGENT_COLUMNS", "TASK_COLUMNS",
    "INBOX_COLUMNS", "EVENT_COLUMNS", "agents_frame", "tasks_frame", "inbox_frame",
    "events_frame", "status_frame", "counts_to_frame", "backlog_frame", "agents_to_frame", "tasks_to_frame",
    "tasks_from_hashes", "tasks_from_columns", "TASK_FIELDS", "events_to_frame", "TIMELINE_COLUMNS",
    "TIMELINE_FIELDS", "timeline_from_hashes", "timeline_frame", "dead_letters_frame",
    "WORKTREE_COLUMNS", "worktrees_frame", "worktrees_to_frame", "DEPS_COLUMNS", "deps_frame",
    "waiting_frame", "GATE_COLUMNS", "gates_frame", "usage_frame", "usage_to_frame", "USAGE_COLUMNS",
    "archive_frame", "ARCHIVE_COLUMNS",
]

#: The one datetime dtype of every frame (timestamps carry microseconds on the wire).
UTC = pd.DatetimeTZDtype("us", "UTC")
DURATION = "timedelta64[us]"
AGENT_STATE_DTYPE = pd.CategoricalDtype([s.value for s in AGENT_STATES], ordered=True)
TASK_STATE_DTYPE = pd.CategoricalDtype([s.value for s in TASK_STATES], ordered=True)
_MESSAGE_TYPE = pd.CategoricalDtype(list(MESSAGE_TYPES))
_MESSAGE_CATEGORY = pd.CategoricalDtype(list(MESSAGE_CATEGORIES))
_PRIORITY = pd.CategoricalDtype([p.value for p in Priority], ordered=True)
_S = "string"

AGENT_COLUMNS: dict[str, Any] = {
    "name": _S, "nickname": _S, "role": _S, "state": AGENT_STATE_DTYPE, "cli": _S,
    "inbox": "Int64", "current_task": _S, "tasks_completed": "Int64",
    "rounds_completed": "Int64", "created_at": UTC, "last_heartbeat": UTC,
    "last_active_at": UTC, "parent": _S, "id": _S,
}
TASK_COLUMNS: dict[str, Any] = {
    "id": _S, "description": _S, "state": TASK_STATE_DTYPE, "agent": _S, "agent_id": _S,
    "waiting_on": object, "tags": object, "result": _S, "created_at": UTC, "updated_at": UTC, "started_at": UTC,
    "completed_at": UTC, "duration": DURATION, "parent_id": _S,
    # not tinytown fields: read beside the task (its run options and usage records)
    "attempts": "Int64", "input_tokens": "Int64", "output_tokens": "Int64", "cost_usd": "Float64",
}
#: Columns of :func:`usage_frame` after its first (``agent``, ``tag``, or ``task_id`` with
#: ``description`` and ``agent``).
USAGE_COLUMNS: dict[str, Any] = {
    "tasks": "Int64", "input_tokens": "Int64", "output_tokens": "Int64",
    "cache_creation_tokens": "Int64", "cache_read_tokens": "Int64", "turns": "Int64",
    "cost_usd": "Float64",
}
INBOX_COLUMNS: dict[str, Any] = {
    "agent": _S, "position": "Int64", "urgent": "boolean", "type": _MESSAGE_TYPE,
    "category": _MESSAGE_CATEGORY, "sender": _S, "text": _S, "priority": _PRIORITY,
    "created_at": UTC, "id": _S, "agent_id": _S,
}
_DEPS_KIND = pd.CategoricalDtype(["agent", "backlog", "gate"])
#: One row per dependency: the task that waits, what it waits for, and both states.
DEPS_COLUMNS: dict[str, Any] = {
    "task_id": _S, "description": _S, "kind": _DEPS_KIND, "state": TASK_STATE_DTYPE, "agent": _S,
    "depends_on": _S, "dependency": _S, "dependency_state": TASK_STATE_DTYPE, "waiting": "boolean",
    "created_at": UTC, "released_at": UTC,
}
#: One row per gate (a task a person approves or rejects).
GATE_COLUMNS: dict[str, Any] = {
    "id": _S, "description": _S, "state": TASK_STATE_DTYPE, "ready": "boolean", "waiting_on": object,
    "decision": _S, "note": _S, "created_at": UTC, "decided_at": UTC,
}
EVENT_COLUMNS: dict[str, Any] = {
    "time": UTC, "type": _S, "agent": _S, "task_id": _S, "old_state": _S, "new_state": _S,
    "message": _S, "agent_id": _S, "id": _S,
}
TIMELINE_COLUMNS: dict[str, Any] = {
    "id": _S, "agent": _S, "state": TASK_STATE_DTYPE, "start": UTC, "end": UTC,
    "duration": DURATION, "agent_id": _S,
}
#: The task fields a timeline reads (``id`` comes along).
TIMELINE_FIELDS = ("state", "assigned_to", "started_at", "completed_at")
WORKTREE_COLUMNS: dict[str, Any] = {
    "agent": _S, "branch": _S, "base": _S, "ahead": "Int64", "behind": "Int64",
    "changed": object, "merged": "boolean", "unsaved": _S, "exists": "boolean", "path": _S,
    "base_commit": _S, "created_at": UTC,
}
_TIME_FIELDS = ("created_at", "updated_at", "started_at", "completed_at")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --------------------------------------------------------------------------- helpers


def _frame(columns: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A frame with exactly ``columns`` (name → dtype); missing data gives empty columns."""
    data = data or {}
    n = len(next(iter(data.values()))) if data else 0
    out = {}
    for name, dtype in columns.items():
        values = data.get(name, [None] * n)
        out[name] = values.astype(dtype) if isinstance(values, pd.Series) else pd.Series(values, dtype=dtype)
    return pd.DataFrame(out, columns=list(columns)).reset_index(drop=True)


def _names(agents: Iterable[Agent]) -> dict[str, str]:
    """Agent id → name, the supervisor mailbox included."""
    names = {a.id: a.name for a in agents}
    names[SUPERVISOR_ID] = "supervisor"
    return names


def _per_distinct(values: list, fn) -> list:
    """``[fn(v) for v in values]``, calling ``fn`` once per distinct value."""
    table = {v: fn(v) for v in set(values)}
    return [table[v] for v in values]


def _id(value: Any) -> str | None:
    """A canonical UUID string, or None; canonical input passes without the core's parser."""
    if isinstance(value, str) and _UUID_RE.fullmatch(value):
        return value
    return canonical_uuid(value) if isinstance(value, str) else None


def _times(values: list) -> pd.Series:
    """RFC 3339 strings (``Z`` or ``+00:00``) → ``datetime64[us, UTC]``; bad or None ⇒ NaT."""
    return pd.Series(pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")).astype(UTC)


def _tags(raw: Any) -> list[str]:
    # The core's rule for the ``tags`` field (bad JSON or non-strings ⇒ []), run per distinct value.
    return Task.from_hash({"id": SUPERVISOR_ID, "tags": raw}).tags if raw is not None else []


# --------------------------------------------------------------------------- agents


def agents_to_frame(agents: Sequence[Agent], inbox: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Agent records → the agents frame; ``inbox`` maps agent id → waiting messages.

    >>> agents_to_frame([Agent.new("dev", "claude")]).state.tolist()
    ['starting']
    """
    names = _names(agents)
    inbox = inbox or {}
    return _frame(AGENT_COLUMNS, {
        "name": [a.name for a in agents],
        "nickname": [a.nickname for a in agents],
        "role": [a.effective_role for a in agents],
        "state": [a.state.value for a in agents],
        "cli": [a.cli for a in agents],
        "inbox": [inbox.get(a.id) for a in agents],
        "current_task": [a.current_task for a in agents],
        "tasks_completed": [a.tasks_completed for a in agents],
        "rounds_completed": [a.rounds_completed for a in agents],
        "created_at": [a.created_at for a in agents],
        "last_heartbeat": [a.last_heartbeat for a in agents],
        "last_active_at": [a.last_active_at for a in agents],
        "parent": [names.get(a.parent_agent_id, a.parent_agent_id) if a.parent_agent_id else None
                   for a in agents],
        "id": [a.id for a in agents],
    })


def agents_frame(town) -> pd.DataFrame:
    """Every agent (oldest first) with its state, waiting messages and counters.

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> reviewer = town.spawn("reviewer", fn=lambda task: "looks good")
    >>> df = agents_frame(town)
    >>> df[df.state == "idle"].name.tolist()
    ['dev', 'reviewer']
    """
    agents = town.agents()
    return agents_to_frame(agents, town.inbox_counts([a.id for a in agents]))


# --------------------------------------------------------------------------- tasks


#: The task hash fields the tasks frame reads (one bulk HMGET; nothing else is fetched).
#: A new column: add the fields it needs here and one line in :func:`tasks_from_columns`.
TASK_FIELDS: tuple[str, ...] = ("id", "description", "state", "assigned_to", "tags", "result",
                                *_TIME_FIELDS, "parent_id")


def tasks_from_columns(columns: Mapping[str, Sequence[Any]], names: Mapping[str, str] | None = None,
                       *, sort: bool = True, waiting: Mapping[str, Sequence[str]] | None = None,
                       runs: Mapping[str, Mapping[str, Any]] | None = None,
                       usage: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Task hash fields as columns (``Town.task_columns(TASK_FIELDS)``) → the tasks frame,
    oldest first (``sort=False`` keeps the given order); ``names`` maps agent id → name;
    ``waiting`` maps task id → the ids of the tasks it still waits for (``waiting_on``,
    else ``[]``); ``runs`` and ``usage`` map task id → its ``taskopts`` and ``usage`` hash
    (see :func:`tasks_from_hashes`). Rows without a valid ``id`` are skipped; an absent
    column reads as None.

    >>> h = Task.new("Write docs").to_hash()
    >>> tasks_from_columns({f: [h.get(f)] for f in TASK_FIELDS}).description.tolist()
    ['Write docs']
    """
    n = len(columns.get("id", ()))
    ids = [_id(v) for v in columns.get("id", ())]
    keep = None if all(ids) else [i for i, v in enumerate(ids) if v]  # tt skips what has no id
    if keep is not None and not keep:
        return _frame(TASK_COLUMNS)

    def col(field: str) -> list:
        values = columns.get(field)
        values = list(values) if values is not None else [None] * n
        return values if keep is None else [values[i] for i in keep]

    ids = [i for i in ids if i]
    names = dict(names or {})
    names.setdefault(SUPERVISOR_ID, "supervisor")
    agent_id = _per_distinct(col("assigned_to"), _id)
    times = {f: _times(col(f)) for f in _TIME_FIELDS}
    tags = _per_distinct(col("tags"), _tags)
    df = _frame(TASK_COLUMNS, {
        "id": ids,
        "description": col("description"),
        "state": _per_distinct(col("state"), lambda v: TaskState.parse(v).value),
        "agent": [names.get(a) if a else None for a in agent_id],
        "agent_id": agent_id,
        "waiting_on": [list(waiting.get(i, ())) for i in ids] if waiting else [[] for _ in ids],
        "tags": [list(t) for t in tags],  # each row its own list
        "result": col("result"),
        **times,
        "duration": times["completed_at"] - times["started_at"],
        "parent_id": _per_distinct(col("parent_id"), _id),
        **_run_columns(ids, [v is not None for v in col("started_at")], runs or {}, usage or {}),
    })
    if not sort:
        return df
    return df.sort_values("created_at", kind="stable", na_position="first", ignore_index=True)


def tasks_from_hashes(hashes: Sequence[Mapping[str, str]], names: Mapping[str, str] | None = None,
                      *, sort: bool = True, waiting: Mapping[str, Sequence[str]] | None = None,
                      runs: Mapping[str, Mapping[str, Any]] | None = None,
                      usage: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Raw task hashes (as ``Town.hashes("task")`` returns them) → the tasks frame, oldest
    first (``sort=False`` keeps the given order); ``names`` maps agent id → name. Hashes
    without a valid ``id`` are skipped. ``waiting`` maps task id → the ids of the tasks it
    still waits for (``waiting_on``, else ``[]``). ``runs`` and ``usage`` map task id → its
    ``taskopts`` and ``usage`` hash (``Town.hashes("taskopts"|"usage", ids)``): without an
    entry a task that started counts 1 attempt (0 before it runs) and has no token counts.

    >>> tasks_from_hashes([Task.new("Write docs").to_hash()]).description.tolist()
    ['Write docs']
    """
    return tasks_from_columns({f: [h.get(f) for h in hashes] for f in TASK_FIELDS}, names, sort=sort,
                              waiting=waiting, runs=runs, usage=usage)


def _run_columns(ids: list[str], started: list[bool], runs: Mapping[str, Mapping[str, Any]],
                 usage: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    """The attempts and usage columns of the tasks frame (only rows with a record cost more
    than a list copy)."""
    attempts = [int(ran) for ran in started]
    n = len(ids)
    tokens_in, tokens_out, cost = [None] * n, [None] * n, [None] * n
    for i, tid in enumerate(ids):
        if tid in runs:
            raw = runs[tid].get("attempts")
            if isinstance(raw, str) and raw.isdigit():
                attempts[i] = int(raw)
        if tid in usage:  # tokens are 0 when a report gave others; a cost stays unknown
            h = usage[tid]
            tokens_in[i], tokens_out[i] = _number(h.get("input_tokens"), 0), _number(h.get("output_tokens"), 0)
            cost[i] = _number(h.get("cost_usd"), None, float)
    return {"attempts": attempts, "input_tokens": tokens_in, "output_tokens": tokens_out,
            "cost_usd": cost}


def _number(raw: Any, default: Any, kind: type = int) -> Any:
    if raw is None:
        return default
    try:
        return kind(raw)
    except (TypeError, ValueError):
        return default


def tasks_to_frame(tasks: Sequence[Task], names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Task records → the tasks frame (same columns as :func:`tasks_frame`), in the order given.

    >>> tasks_to_frame([Task.new("Write docs")]).state.tolist()
    ['pending']
    """
    runs = {t.id: {"attempts": str(t.attempts)} for t in tasks if t.attempts}
    usage = {t.id: {"input_tokens": t.usage.input_tokens, "output_tokens": t.usage.output_tokens,
                    "cost_usd": t.usage.cost_usd} for t in tasks if t.usage is not None}
    return tasks_from_hashes([t.to_hash() for t in tasks], names, sort=False, runs=runs, usage=usage)


def tasks_frame(town, state: str | TaskState | None = None, agent: Any = None) -> pd.DataFrame:
    """Every task (oldest first), optionally only one state and/or one assignee.

    ``agent`` is resolved like everywhere else (name, nickname, short id); ``duration``
    is ``completed_at - started_at`` for tasks that ran to the end; ``waiting_on`` lists
    the tasks a pending task still waits for (made with ``after=``; a gate's too);
    ``attempts`` counts its runs (retries included); ``input_tokens``, ``output_tokens`` and
    ``cost_usd`` are what its runs reported (``<NA>``: nothing reported).

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=10).state
    <TaskState.COMPLETED: 'completed'>
    >>> tasks_frame(town, state="completed", agent="dev").duration.sum()
    Timedelta('0 days 00:00:...')
    """
    waiting = {d.task_id: d.waiting_on for d in town.deps() if d.waiting_on}
    # (without ids: only the tasks that have such records are read)
    runs = {h["id"]: h for h in town.hashes("taskopts", fields=["attempts"])}
    usage = {h["id"]: h for h in town.hashes("usage", fields=["input_tokens", "output_tokens",
                                                              "cost_usd"])}
    return tasks_from_columns(town.task_columns(TASK_FIELDS, state, agent), _names(town.agents()),
                              waiting=waiting, runs=runs, usage=usage)


ARCHIVE_COLUMNS: dict[str, Any] = {**TASK_COLUMNS, "archived_at": UTC}


def archive_frame(town, state: str | TaskState | None = None) -> pd.DataFrame:
    """The tasks moved to the town's archive (``town.archive()``), oldest first: the tasks
    frame's columns (attempts and usage as they were archived) plus ``archived_at``;
    optionally only one state.

    >>> done = town.complete_task(town.backlog_add("Triage open issues"))
    >>> gone = town.cancel_task(town.backlog_add("Old idea"))
    >>> town.archive(older_than=0)
    2
    >>> archive_frame(town).groupby("state").size()
    state
    completed    1
    cancelled    1
    dtype: int64
    """
    wanted = TaskState.parse_strict(state).value if state is not None else None
    hashes = town.archived_hashes()
    fields = (*TASK_FIELDS, "archived_at")
    columns = {f: [h.get(f) if isinstance(h.get(f), str) else None for h in hashes] for f in fields}
    nested = {kind: {h["id"]: h[kind] for h in hashes if isinstance(h.get(kind), dict)}
              for kind in ("taskopts", "usage")}
    df = tasks_from_columns(columns, _names(town.agents()), sort=False, runs=nested["taskopts"],
                            usage=nested["usage"])
    keep = [bool(_id(v)) for v in columns["id"]]  # the rows tasks_from_columns kept
    df["archived_at"] = _times([v for v, k in zip(columns["archived_at"], keep) if k])
    if wanted is not None:
        df = df[df["state"] == wanted]
    return df.sort_values("created_at", kind="stable", na_position="first", ignore_index=True)


def backlog_frame(town) -> pd.DataFrame:
    """The backlog's tasks in queue order (next to be claimed first).

    >>> task = town.backlog_add("Triage open issues")
    >>> backlog_frame(town).description.tolist()
    ['Triage open issues']
    """
    return tasks_to_frame(town.backlog(), _names(town.agents()))


def deps_frame(town) -> pd.DataFrame:
    """What tasks wait (or waited) for: one row per dependency (a gate or a task waiting
    for nothing gets one row with ``depends_on`` missing), oldest waiting task first.
    ``waiting`` is True while the task still waits for that dependency.

    >>> design = town.complete_task(town.backlog_add("Design the API"))
    >>> build = town.backlog_add("Build the API")
    >>> ship = town.backlog_add("Ship it", after=[design, build])
    >>> deps_frame(town)[["description", "dependency", "dependency_state", "waiting"]]
      description      dependency dependency_state  waiting
    0     Ship it  Design the API        completed    False
    1     Ship it   Build the API          pending     True
    """
    deps = town.deps()
    ids = list(dict.fromkeys([d.task_id for d in deps] + [a for d in deps for a in d.after]))
    tasks = {h["id"]: h for h in town.hashes("task", ids, fields=["description", "state"])}
    names = _names(town.agents())
    rows = [(d, dep) for d in deps for dep in (d.after or (None,))]

    def state(tid: str | None) -> str | None:
        h = tasks.get(tid) if tid else None
        return TaskState.parse(h.get("state")).value if h else None

    def text(tid: str | None) -> str | None:
        h = tasks.get(tid) if tid else None
        return h.get("description") if h else None

    return _frame(DEPS_COLUMNS, {
        "task_id": [d.task_id for d, _ in rows],
        "description": [text(d.task_id) for d, _ in rows],
        "kind": [d.kind if d.kind in ("agent", "backlog", "gate") else None for d, _ in rows],
        "state": [state(d.task_id) for d, _ in rows],
        "agent": [names.get(d.agent_id, d.agent_id) if d.agent_id else None for d, _ in rows],
        "depends_on": [dep for _, dep in rows],
        "dependency": [text(dep) for _, dep in rows],
        "dependency_state": [state(dep) for _, dep in rows],
        "waiting": [dep in d.waiting_on if dep else None for d, dep in rows],
        "created_at": [d.created_at for d, _ in rows],
        "released_at": [d.released_at for d, _ in rows],
    })


def waiting_frame(town) -> pd.DataFrame:
    """Tasks pending on their dependencies (not in the backlog: they are delivered when
    what they wait for is completed), in the tasks frame's columns, oldest first; gates
    waiting for a decision included.

    >>> build = town.backlog_add("Build the API")
    >>> ship = town.backlog_add("Ship it", after=[build])
    >>> waiting_frame(town)[["description", "state"]]
      description    state
    0     Ship it  pending
    """
    waiting = {d.task_id: d.waiting_on for d in town.deps()
               if d.state is TaskState.PENDING and d.released_at is None}
    hashes = town.hashes("task", list(waiting))
    return tasks_from_hashes(hashes, _names(town.agents()), waiting=waiting)


def gates_frame(town, open: bool = True) -> pd.DataFrame:
    """Gates waiting for a decision (``open=True``; ``ready`` once what they wait for is
    done) or every gate, oldest first.

    >>> build = town.backlog_add("Build the API")
    >>> ok = town.gate("Approve the release", after=[build])
    >>> review = town.gate("Review the design")
    >>> gates_frame(town)[["description", "ready"]]
               description  ready
    0  Approve the release  False
    1    Review the design   True
    """
    gates = town.gates(open=open)
    return _frame(GATE_COLUMNS, {
        "id": [g.id for g in gates],
        "description": [g.task.description for g in gates],
        "state": [g.task.state.value for g in gates],
        "ready": [g.ready for g in gates],
        "waiting_on": [list(g.open) if g.is_open else [] for g in gates],
        "decision": [g.decision for g in gates],
        "note": [g.note for g in gates],
        "created_at": [g.task.created_at for g in gates],
        "decided_at": [g.decided_at for g in gates],
    })


# --------------------------------------------------------------------------- messages


def inbox_frame(town, agent: Any = None) -> pd.DataFrame:
    """Messages waiting for one agent, or for every agent and the supervisor (``None``),
    in the order each agent will read them (urgent first); nothing is taken.

    >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
    >>> task = town.assign("dev", "Fix #12")
    >>> msg = town.send("dev", "Stop, the build is red", kind="info", urgent=True)
    >>> inbox_frame(town, "dev")[["position", "type", "text"]]   # urgent first
       position           type                                  text
    0         0  informational                Stop, the build is red
    1         1    task_assign  ...
    """
    agents = town.agents()
    names = _names(agents)
    if agent is not None:
        ids = [town.agent(agent).id]
    else:
        ids = [a.id for a in agents] + [SUPERVISOR_ID]
    rows: list[tuple[str, int, bool, Message]] = []
    for aid, (urgent, regular) in zip(ids, town.inboxes(ids)):
        for pos, (is_urgent, msg) in enumerate([(True, m) for m in urgent] + [(False, m) for m in regular]):
            rows.append((aid, pos, is_urgent, msg))
    return _frame(INBOX_COLUMNS, {
        "agent": [names.get(aid, aid) for aid, _, _, _ in rows],
        "position": [pos for _, pos, _, _ in rows],
        "urgent": [u for _, _, u, _ in rows],
        "type": [m.type for *_, m in rows],
        "category": [m.category for *_, m in rows],
        "sender": [names.get(m.sender, m.sender) for *_, m in rows],
        "text": [m.text for *_, m in rows],
        "priority": [m.priority.value for *_, m in rows],
        "created_at": [m.created_at for *_, m in rows],
        "id": [m.id for *_, m in rows],
        "agent_id": [aid for aid, *_ in rows],
    })


# --------------------------------------------------------------------------- events


def _event_time(e: Event) -> datetime | None:
    if e.timestamp is not None:
        return e.timestamp
    try:  # fall back on the stream id's milliseconds
        return pd.Timestamp(int(e.id.split("-")[0]), unit="ms", tz="UTC").to_pydatetime()
    except (ValueError, IndexError):
        return None


def events_to_frame(events: Sequence[Event], names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Event records → the events frame (oldest first as given).

    >>> events_to_frame([]).columns.tolist()[:3]
    ['time', 'type', 'agent']
    """
    names = names or {}
    return _frame(EVENT_COLUMNS, {
        "time": [_event_time(e) for e in events],
        "type": [e.type for e in events],
        "agent": [names.get(e.agent_id, e.agent_id) if e.agent_id else None for e in events],
        "task_id": [e.task_id for e in events],
        "old_state": [e.data.get("old_state") for e in events],
        "new_state": [e.data.get("new_state") for e in events],
        "message": [e.message for e in events],
        "agent_id": [e.agent_id for e in events],
        "id": [e.id for e in events],
    })


def events_frame(town, count: int = 50, *, agent: Any = None, after: str | None = None) -> pd.DataFrame:
    """The last ``count`` town events, oldest first (``tt history``); with ``after`` (a
    stream id, ``"0-0"`` for the start) the next ``count`` events after it (``tt events``).
    ``agent`` reads that agent's own stream.

    >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
    >>> task = town.assign("dev", "Fix #12")
    >>> events_frame(town, 10)[["type", "message"]]
                type                 message
    0  agent_spawned       Agent dev spawned
    1  task_assigned  Task assigned: Fix #12
    """
    if after is None:
        events = town.history(count, agent=agent)
    else:
        events = town.events(count, agent=agent, after=after)
    return events_to_frame(events, _names(town.agents()))


# --------------------------------------------------------------------------- timeline


def timeline_from_hashes(hashes: Sequence[Mapping[str, str]], names: Mapping[str, str] | None = None,
                         *, last: Any = None, now: Any = None) -> pd.DataFrame:
    """Task hashes (at least :data:`TIMELINE_FIELDS`) → the timeline frame: one row per task
    that ran (running, or finished after it started), ordered by start; ``end`` is NaT
    while it runs. ``last`` (seconds, a Timedelta or ``"10m"``) keeps only the tasks running
    or ended within that time before ``now``.

    >>> h = {"id": "3f2a0000-0000-4000-8000-000000000000", "state": "completed",
    ...      "started_at": "2026-12-01T10:00:00Z", "completed_at": "2026-12-01T10:00:05Z"}
    >>> timeline_from_hashes([h]).duration.tolist()
    [Timedelta('0 days 00:00:05')]
    """
    rows = [h for h in hashes if h.get("started_at") and _id(h.get("id"))]
    if not rows:
        return _frame(TIMELINE_COLUMNS)
    names = names or {}
    states = _per_distinct([h.get("state") for h in rows], lambda v: TaskState.parse(v).value)
    start = _times([h.get("started_at") for h in rows])
    end = _times([h.get("completed_at") for h in rows])
    ran = pd.Series([s == "running" or TaskState(s).is_terminal for s in states])
    agent_id = _per_distinct([h.get("assigned_to") for h in rows], _id)
    df = _frame(TIMELINE_COLUMNS, {
        "id": [_id(h.get("id")) for h in rows],
        "agent": [names.get(a, a[:8]) if a else None for a in agent_id],
        "state": states, "start": start, "end": end.where(pd.Series(states) != "running"),
        "duration": end - start, "agent_id": agent_id,
    })
    df = df[ran & df["start"].notna()]
    if last is not None:
        cut = (pd.Timestamp(now) if now is not None else pd.Timestamp.now(tz="UTC")) - _timedelta(last)
        df = df[df["end"].isna() | (df["end"] >= cut)]
    return df.sort_values("start", kind="stable", ignore_index=True)


def _timedelta(value: Any) -> pd.Timedelta:
    try:
        delta = pd.Timedelta(value, unit="s") if isinstance(value, (int, float)) else pd.Timedelta(value)
    except (ValueError, TypeError):
        delta = pd.NaT
    if pd.isna(delta) or delta <= pd.Timedelta(0):
        raise ConfigError(f"last must be a positive time span such as 600, '10m' or '2h', got {value!r}.")
    return delta


def timeline_frame(town, last: Any = None) -> pd.DataFrame:
    """The task stream: one row per task that ran — agent, state, start, end (NaT while it
    runs), duration — ordered by start; ``last`` (seconds, ``"10m"``, a Timedelta) keeps
    the tasks running or ended within that time. Draw it with :mod:`tinytown_nb.timeline`.

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> tasks = [town.wait(task=town.assign("dev", f"Fix #{i}"), timeout=10) for i in range(3)]
    >>> timeline_frame(town, last="10m").groupby("agent").duration.sum()
    agent
    dev   0 days 00:00:...
    Name: duration, dtype: timedelta64[us]
    """
    if last is not None:
        _timedelta(last)  # bad input fails before the read
    return timeline_from_hashes(town.hashes("task", fields=TIMELINE_FIELDS),
                                _names(town.agents()), last=last)
# --------------------------------------------------------------------------- worktrees


def worktrees_to_frame(worktrees: Sequence[AgentWorktree]) -> pd.DataFrame:
    """Worktree records (``Town.worktrees()``) → the worktrees frame, in the order given.

    >>> worktrees_to_frame([]).columns.tolist()[:4]
    ['agent', 'branch', 'base', 'ahead']
    """
    return _frame(WORKTREE_COLUMNS, {
        "agent": [w.agent for w in worktrees],
        "branch": [w.branch for w in worktrees],
        "base": [w.base for w in worktrees],
        "ahead": [w.ahead for w in worktrees],
        "behind": [w.behind for w in worktrees],
        "changed": [list(w.changed) for w in worktrees],
        "merged": [w.merged for w in worktrees],
        "unsaved": [w.unsaved for w in worktrees],
        "exists": [w.exists for w in worktrees],
        "path": [str(w.path) for w in worktrees],
        "base_commit": [w.base_commit for w in worktrees],
        "created_at": _times([w.created_at.isoformat() if w.created_at else None for w in worktrees]),
    })


def worktrees_frame(town) -> pd.DataFrame:
    """The agents' git worktrees (``spawn(worktree=True)``), oldest first: branch, base,
    commits ahead/behind the base, uncommitted ``changed`` files, ``merged``, and
    ``unsaved`` (why removing it would lose work). A pruned agent's kept worktree too.

    >>> alice = town.spawn("alice", fn=lambda task: "done", worktree=True)
    >>> worktrees_frame(town)[["agent", "ahead", "changed", "merged"]]
       agent  ahead changed  merged
    0  alice      0      []    True
    """
    return worktrees_to_frame(town.worktrees())


# --------------------------------------------------------------------------- counts


def status_columns() -> pd.MultiIndex:
    """The columns of :func:`status_frame`: ``(agents, state)``, ``(tasks, state)``,
    ``(backlog, tasks)``, ``(inbox, messages)``.

    >>> status_columns()[-2:].tolist()
    [('backlog', 'tasks'), ('inbox', 'messages')]
    """
    return pd.MultiIndex.from_tuples(
        [("agents", s.value) for s in AGENT_STATES] + [("tasks", s.value) for s in TASK_STATES]
        + [("backlog", "tasks"), ("inbox", "messages")])


def counts_to_frame(counts: Counts, town_name: str) -> pd.DataFrame:
    """A town's :class:`~tinytown_nb.core.Counts` → the one-row :func:`status_frame`.

    >>> counts_to_frame(Counts(tasks={"completed": 3}), "demo")[("tasks", "completed")].tolist()
    [3]
    """
    values = [*counts.agents.values(), *counts.tasks.values(), counts.backlog, counts.inbox]
    df = pd.DataFrame([values], columns=status_columns(), index=pd.Index([town_name], name="town"))
    return df.astype("Int64")


def status_frame(town) -> pd.DataFrame:
    """How many agents and tasks are in each state (every state, zeros included), how many
    tasks wait in the backlog and messages in inboxes: one row, indexed by town name.

    >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
    >>> tasks = town.assign_many("dev", ["Fix #1", "Fix #2"])
    >>> done = [town.complete_task(town.backlog_add(f"Triage #{i}")) for i in range(7)]
    >>> status_frame(town)["tasks"]
          pending  assigned  running  completed  failed  cancelled
    town
    demo        0         2        0          7       0          0
    """
    return counts_to_frame(town.counts(), town.name)


DEAD_LETTER_COLUMNS: dict[str, Any] = {
    "id": _S, "at": UTC, "agent": _S, "source": _S, "reason": _S, "task_id": _S, "message": _S,
    "agent_id": _S,
}


def dead_letters_frame(town) -> pd.DataFrame:
    """Messages workers set aside because the town cannot use them (oldest first), with
    the reason; ``message`` shows their bytes (ones that are not UTF-8 replaced).

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> town.redis.rpush(town.keys.inbox(dev.id), "not json")   # what no worker can use
    1
    >>> town.wait("dev", timeout=10).state
    <AgentState.IDLE: 'idle'>
    >>> dead_letters_frame(town)[["agent", "reason"]]
      agent                                             reason
    0   dev  not a tinytown message (message is not valid J...
    """
    found = town.dead_letters()
    names = _names(town.agents())
    return _frame(DEAD_LETTER_COLUMNS, {
        "id": [d.id for d in found],
        "at": [d.at for d in found],
        "agent": [names.get(d.agent_id or "", d.agent_id) for d in found],
        "source": [d.source for d in found],
        "reason": [d.reason for d in found],
        "task_id": [d.task_id for d in found],
        "message": [d.text[:500] for d in found],
        "agent_id": [d.agent_id for d in found],
    })


# --------------------------------------------------------------------------- usage


def usage_to_frame(rows: Sequence[UsageRow], by: str = "agent") -> pd.DataFrame:
    """Usage rows (``Town.usage(by)``) → the usage frame, in the order given.

    >>> usage_to_frame([], "tag").columns.tolist()[:2]
    ['tag', 'tasks']
    """
    if by == "task":
        head: dict[str, Any] = {"task_id": [r.key for r in rows],
                                "description": [r.label[5:] for r in rows],
                                "agent": [r.agent for r in rows]}
        kinds = {"task_id": _S, "description": _S, "agent": _S}
    else:
        head, kinds = {by: [r.label for r in rows]}, {by: _S}
    data = {**head, "tasks": [r.tasks for r in rows],
            **{c: [getattr(r.usage, c) for r in rows] for c in USAGE_COLUMNS if c != "tasks"}}
    if by == "agent":
        data["agent_id"], kinds["agent_id"] = [r.key for r in rows], _S
    if by == "task":
        data["model"], kinds["model"] = [r.usage.model for r in rows], _S
    columns = {**{k: kinds[k] for k in head}, **USAGE_COLUMNS,
               **{k: v for k, v in kinds.items() if k not in head}}
    return _frame(columns, data)


def usage_frame(town, by: str = "agent") -> pd.DataFrame:
    """Tokens and dollars summed per ``agent`` (who ran the task), ``tag`` (a task with
    several tags counts for each) or ``task``, most expensive first; ``cost_usd`` is
    ``<NA>`` where no run reported a cost (codex reports none).

    >>> usage = town.record_usage(town.backlog_add("Speed up the API", tags=["backend"]), cost_usd=0.42)
    >>> usage = town.record_usage(town.backlog_add("Fix the layout", tags=["ui"]), cost_usd=0.07)
    >>> usage = town.record_usage(town.backlog_add("Cache the API", tags=["backend"]), cost_usd=0.2)
    >>> usage_frame(town, by="tag")[["tag", "tasks", "cost_usd"]]
           tag  tasks  cost_usd
    0  backend      2      0.62
    1       ui      1      0.07
    """
    return usage_to_frame(town.usage(by), by)
