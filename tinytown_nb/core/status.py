"""How many agents and tasks are in each state, kept by the transitions, not counted.

Every transition files the records it changes in the town's state indexes
(``transition.lua``; the keys are in :mod:`.keys`): a set of agent ids per agent state and a
sorted set of task ids per task state. Counts by state are the indexes' cardinalities, so
one :func:`counts` costs the same with 100 tasks or 100,000, and is one consistent read.
The dashboard header, ``status_frame``, ``ttnb status``, ``%tt_wait``/``%tt_watch`` and
``wait(all=True)`` all use it, so they always agree:

* **done**: no task is pending, assigned or running;
* **idle**: no task is assigned or running and no agent is working or draining.

Records written by a program that does not keep the indexes (the Rust ``tt``) are filed by
:func:`reconcile`, which ``Town.connect``, ``recover()`` and waiters run (see there).

Example::

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> tasks = town.assign_many("dev", ["Fix #1", "Fix #2"])
    >>> town.wait("dev", timeout=10).state                  # idle, nothing left to do
    <AgentState.IDLE: 'idle'>
    >>> c = counts(store)
    >>> c.tasks["completed"], c.holds("done")
    (2, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .errors import ConfigError
from .keys import SUPERVISOR_ID
from .models import AGENT_STATES, OPEN_TASK_STATES, TASK_STATES, AgentState, TaskState
from .store import SCAN_COUNT, Store
from .transitions import lua_source
from .wording import counted

#: Seconds between two automatic reconciles of a town (:func:`reconcile_if_due`).
RECONCILE_EVERY = 30.0
_HORIZON = 3600.0  # the reconcile stamp's lifetime: its remaining TTL tells its age

CONDITIONS = ("done", "idle")
_BUSY_AGENT = (AgentState.WORKING.value, AgentState.DRAINING.value)
_IN_FLIGHT = (TaskState.ASSIGNED.value, TaskState.RUNNING.value)
REFILE_BATCH = 500  # records filed per reconcile script run (a few ms of server time)
_REFILE = lua_source("reconcile.lua")

# One read of every count, atomic (a script): agent and task states, backlog, waiting mail.
_COUNTS_LUA = """local P = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local kind, name = string.match(ARGV[i], '^(%a+):(.*)$')
  if kind == 'agent' then out[#out + 1] = redis.call('SCARD', P .. 'index:agent-state:' .. name)
  else out[#out + 1] = redis.call('ZCARD', P .. 'index:task-state:' .. name) end
end
out[#out + 1] = redis.call('LLEN', P .. 'backlog')
local mail = 0
local ids = redis.call('SMEMBERS', P .. 'index:agents')
ids[#ids + 1] = KEYS[1]
for _, id in ipairs(ids) do
  mail = mail + redis.call('LLEN', P .. 'inbox:' .. id) + redis.call('LLEN', P .. 'urgent:' .. id)
end
out[#out + 1] = mail
return out"""


@dataclass
class Counts:
    """Agents and tasks by state (every state present, zeros included, lifecycle order),
    tasks waiting in the backlog and messages waiting in inboxes (the supervisor's too).

    >>> c = Counts(tasks={"completed": 2, "running": 1})
    >>> c.total_tasks, c.finished_tasks, c.holds("done")
    (3, 2, False)
    """

    agents: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    backlog: int = 0
    inbox: int = 0

    def __post_init__(self) -> None:
        self.agents = {s.value: int(self.agents.get(s.value, 0)) for s in AGENT_STATES}
        self.tasks = {s.value: int(self.tasks.get(s.value, 0)) for s in TASK_STATES}

    @property
    def total_agents(self) -> int:
        return sum(self.agents.values())

    @property
    def total_tasks(self) -> int:
        return sum(self.tasks.values())

    @property
    def finished_tasks(self) -> int:
        """Completed, failed or cancelled."""
        return sum(n for s, n in self.tasks.items() if TaskState(s).is_terminal)

    @property
    def open_tasks(self) -> int:
        """Pending, assigned or running."""
        return self.total_tasks - self.finished_tasks

    @property
    def busy_agents(self) -> int:
        """Working or draining."""
        return sum(self.agents[s] for s in _BUSY_AGENT)

    def holds(self, condition: str) -> bool:
        """Whether the town is ``done`` or ``idle`` (see the module docstring)."""
        check_condition(condition)
        if condition == "done":
            return self.open_tasks == 0
        return self.busy_agents == 0 and not any(self.tasks[s] for s in _IN_FLIGHT)

    def progress(self) -> str:
        """One line for a progress display.

        >>> Counts(tasks={"completed": 1, "running": 1}, agents={"working": 1}).progress()
        '1/2 tasks done, 1 agent busy'
        """
        return (f"{self.finished_tasks}/{counted(self.total_tasks, 'task')} done, "
                f"{counted(self.busy_agents, 'agent')} busy")

    def described(self, kind: str) -> str:
        """``kind`` ('agents' or 'tasks') counted, with the states that have any.

        >>> Counts(tasks={"completed": 4, "failed": 1}).described("tasks")
        '5 tasks (4 completed, 1 failed)'
        >>> Counts().described("agents")
        '0 agents'
        """
        by_state = self.agents if kind == "agents" else self.tasks
        states = ", ".join(f"{n} {s}" for s, n in by_state.items() if n)
        return counted(sum(by_state.values()), kind[:-1]) + (f" ({states})" if states else "")

    def summary(self) -> str:
        """Agents and tasks by state, backlog and inbox, on one line.

        >>> Counts(agents={"idle": 2}, tasks={"completed": 5}).summary()
        '2 agents (2 idle) · 5 tasks (5 completed) · backlog 0 · inbox 0'
        """
        return (f"{self.described('agents')} · {self.described('tasks')}"
                f" · backlog {self.backlog} · inbox {self.inbox}")


def check_condition(condition: object) -> str:
    """``condition`` if it is one a town can be waited for, else ConfigError."""
    if condition not in CONDITIONS:
        raise ConfigError(f"Unknown condition {condition!r}; use 'done' or 'idle'.")
    return condition  # type: ignore[return-value]


def counts(store: Store) -> Counts:
    """Every count of the town in one atomic read (O(agents), independent of the tasks).

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=10).state
    <TaskState.COMPLETED: 'completed'>
    >>> town.backlog_add("Triage issues").state
    <TaskState.PENDING: 'pending'>
    >>> counts(store).summary()
    '1 agent (1 idle) · 2 tasks (1 pending, 1 completed) · backlog 1 · inbox 0'
    """
    names = [f"agent:{s.value}" for s in AGENT_STATES] + [f"task:{s.value}" for s in TASK_STATES]
    reply = store.lua("counts", _COUNTS_LUA)(keys=[SUPERVISOR_ID], args=[store.keys.prefix, *names])
    n = len(AGENT_STATES)
    return Counts(dict(zip((s.value for s in AGENT_STATES), reply[:n])),
                  dict(zip((s.value for s in TASK_STATES), reply[n:len(names)])),
                  int(reply[-2]), int(reply[-1]))


def backlog_size(store: Store) -> int:
    """How many tasks wait in the backlog."""
    return int(store.redis.llen(store.keys.backlog))


# --------------------------------------------------------------------------- reconcile


def refile(store: Store, record_keys: Iterable[str]) -> int:
    """File these agent/task records again in the state indexes from what they say now
    (a missing record is taken out); atomic per batch. Returns how many were filed."""
    keys = list(dict.fromkeys(record_keys))
    script = store.lua("refile", _REFILE)
    pipe = store.redis.pipeline(transaction=False)
    for i in range(0, len(keys), REFILE_BATCH):
        script(keys=keys[i:i + REFILE_BATCH], args=[store.keys.prefix], client=pipe)
    return sum(int(n) for n in pipe.execute()) if keys else 0


def _drop_damaged_indexes(store: Store) -> None:
    """Delete index keys of the wrong type (written by another program): rebuilt next."""
    k = store.keys
    expected = {k.tasks_index: "zset", k.agents_index: "set", k.task_owners: "hash",
                **{k.tasks_in_state(s.value): "zset" for s in TaskState},
                **{k.agents_in_state(s.value): "set" for s in AgentState}}
    pipe = store.redis.pipeline(transaction=False)
    for key in expected:
        pipe.type(key)
    wrong = [key for key, got in zip(expected, pipe.execute()) if got not in ("none", expected[key])]
    if wrong:
        store.redis.delete(*wrong)


def reconcile(store: Store, *, full: bool = False) -> int:
    """Make the state indexes (and so the counts) true again for records written by a
    program that does not keep them, such as the Rust ``tt``. Returns records filed.

    * always: every agent (there are few), every task the indexes hold as pending,
      assigned or running (a ``tt task complete`` of one of ours), and — when the number
      of task records differs from the indexes' — every task (one ``tt assign`` or
      ``tt backlog add``);
    * ``full=True``: every record, and index entries whose record is gone.

    Costs one pass over the keyspace (SCAN, no record read) besides the records it files.
    The automatic reconciles go through :func:`reconcile_if_due`.

    >>> reconcile(store)   # nothing was written behind our back
    0
    """
    _drop_damaged_indexes(store)
    k = store.keys
    agents, tasks = _scan_records(store)
    pipe = store.redis.pipeline(transaction=False)
    pipe.smembers(k.agents_index).zcard(k.tasks_index)
    pipe.set(k.reconciled, "1", px=int(_HORIZON * 1000))  # its age: when this ran
    indexed_agents, indexed_count, _ = pipe.execute()
    agent_keys = sorted({k.agent(a) for a in indexed_agents} | set(agents))
    if full or len(tasks) != indexed_count:
        indexed = store.redis.zrange(k.tasks_index, 0, -1)
        task_keys = sorted({k.task(t) for t in indexed} | set(tasks))
    else:
        pipe = store.redis.pipeline(transaction=False)
        for s in OPEN_TASK_STATES:
            pipe.zrange(k.tasks_in_state(s.value), 0, -1)
        task_keys = [k.task(t) for ids in pipe.execute() for t in ids]
    return refile(store, agent_keys + task_keys)


def reconcile_if_due(store: Store, within: float = RECONCILE_EVERY) -> int | None:
    """:func:`reconcile` unless one ran in this town (from any process) in the last
    ``within`` seconds; None when skipped. What the waits run on every look that finds the
    town done (and every ``waiting.RECONCILE_SECS``), and the dashboard every
    ``reconcile_every``: waiting in a big town costs a round trip per look, not a pass over
    the keyspace — the connect that began it (``Town.connect`` always reconciles) or
    another process has just reconciled.

    >>> reconcile(store)
    0
    >>> reconcile_if_due(store) is None   # one ran just now
    True
    """
    left = store.redis.pttl(store.keys.reconciled)  # it lives _HORIZON from each reconcile
    if left > 0 and _HORIZON - left / 1000 < within:
        return None
    return reconcile(store)


def _scan_records(store: Store) -> tuple[list[str], list[str]]:
    """(agent record keys, task record keys) of the town: one SCAN of the keyspace for
    the keys whose kind starts ``agen``/``task`` (server-side match), then exact."""
    prefix = store.keys.prefix
    agents, tasks = [], []
    for key in store.redis.scan_iter(match=f"{prefix}[at][ga][es][nk]*", count=SCAN_COUNT):
        kind, sep, rest = key[len(prefix):].partition(":")
        if sep and rest and ":" not in rest:
            if kind == "agent":
                agents.append(key)
            elif kind == "task":
                tasks.append(key)
    return agents, tasks


