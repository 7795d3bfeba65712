"""How many agents and tasks are in each state, and the town-wide conditions built on it.

One read gives a :class:`Counts`; the dashboard header, ``status_frame``, ``ttnb status``,
``%tt_wait``/``%tt_watch`` and ``wait(all=True)`` all use it, so they always agree.

* **done**: no task is pending, assigned or running;
* **idle**: no task is assigned or running and no agent is working or draining.

Example::

    >>> c = counts(store)                                   # doctest: +SKIP
    >>> c.tasks["completed"], c.holds("done")               # doctest: +SKIP
    (7, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError
from .keys import SUPERVISOR_ID
from .lookup import all_agents
from .models import AGENT_STATES, TASK_STATES, AgentState, TaskState
from .store import Store

CONDITIONS = ("done", "idle")
_BUSY_AGENT = (AgentState.WORKING.value, AgentState.DRAINING.value)
_IN_FLIGHT = (TaskState.ASSIGNED.value, TaskState.RUNNING.value)


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
        '1/2 tasks done, 1 agents busy'
        """
        return f"{self.finished_tasks}/{self.total_tasks} tasks done, {self.busy_agents} agents busy"

    def summary(self) -> str:
        """Agents and tasks by state, backlog and inbox, on one line.

        >>> Counts(agents={"idle": 2}, tasks={"completed": 5}).summary()
        '2 agents (2 idle) · 5 tasks (5 completed) · backlog 0 · inbox 0'
        """
        def part(counts: dict[str, int]) -> str:
            return ", ".join(f"{n} {s}" for s, n in counts.items() if n)

        a, t = part(self.agents), part(self.tasks)
        return (f"{self.total_agents} agents" + (f" ({a})" if a else "")
                + f" · {self.total_tasks} tasks" + (f" ({t})" if t else "")
                + f" · backlog {self.backlog} · inbox {self.inbox}")


def check_condition(condition: object) -> str:
    """``condition`` if it is one a town can be waited for, else ConfigError."""
    if condition not in CONDITIONS:
        raise ConfigError(f"Unknown condition {condition!r}; use 'done' or 'idle'.")
    return condition  # type: ignore[return-value]


def task_state_counts(store: Store) -> dict[str, int]:
    """Tasks per state (aliases such as ``in_flight`` counted as the state they stand for);
    reads only the ``state`` field of each task."""
    raw: dict[str | None, int] = {}
    for h in store.hashes("task", fields=["state"]):
        raw[h["state"]] = raw.get(h["state"], 0) + 1
    out: dict[str, int] = {}
    for value, n in raw.items():  # the core's parser, once per distinct spelling
        state = TaskState.parse(value).value
        out[state] = out.get(state, 0) + n
    return out


def backlog_size(store: Store) -> int:
    """How many tasks wait in the backlog."""
    return int(store.redis.llen(store.keys.backlog))


def counts(store: Store) -> Counts:
    """One look at the town's counts (agents and inboxes, task states, backlog)."""
    agents = all_agents(store)
    by_state: dict[str, int] = {}
    for a in agents:
        by_state[a.state.value] = by_state.get(a.state.value, 0) + 1
    inbox = store.mail_counts([a.id for a in agents] + [SUPERVISOR_ID])
    return Counts(by_state, task_state_counts(store), backlog_size(store), sum(inbox.values()))
