"""What agents cost: usage per task, agent and tag, the town's totals, and a budget.

Usage is recorded in hashes of our own beside each task (``keys.usage``), per agent
(``keys.usage_agent``) and for the town (``keys.usage_total``), by :func:`~.usage.usage_cmds`
— in the worker's step that records a run's outcome, or here by :func:`record` (``ttnb task
usage``, ``town.record_usage``). Sums are read back as :class:`~.usage.Usage` records.

**The budget** (``keys.budget``): when the town's recorded cost reaches it, every AI agent
— an agent running a ``[agent_clis]`` preset, or any agent that has recorded a cost — is
paused (tinytown's ``paused``: it finishes its current run first, then takes nothing new)
and one ``budget_exceeded`` event is recorded. Raising the budget (or clearing it) and
``resume`` go on; an agent resumed while the cost is still over the budget is paused again
after its next run that records a cost.

Example::

    >>> set_budget(store, 5.0).usd
    5.0
    >>> dev = town.spawn("dev", cli="claude", start=False)
    >>> town.record_usage(town.assign("dev", "Fix #12"), cost_usd=0.42).cost_usd
    0.42
    >>> [(r.label, r.usage.cost_usd) for r in rows(store, "agent")]
    [('dev', 0.42)]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import checks, lookup, transitions as tr
from .errors import ConfigError, TaskNotFound
from .models import Task, parse_ts, truncate_summary
from .store import Store
from .usage import Usage, usage_cmds, usage_from_hash

BY = ("agent", "tag", "task")
NO_AGENT = "(none)"
NO_TAG = "(untagged)"


@dataclass(frozen=True)
class UsageRow:
    """One row of :func:`rows`: what a group (an agent, a tag or a task) used.

    ``key`` is the agent id, the tag or the task id; ``label`` the agent's name, the tag, or
    the task's short id and summary; ``agent`` the (last) agent that ran it (task rows);
    ``tasks`` how many tasks reported usage in the group.
    """

    key: str
    label: str
    usage: Usage
    tasks: int
    agent: str | None = None


@dataclass(frozen=True)
class Budget:
    """The town's cost budget: the limit (``usd``, None when none is set), the recorded
    cost, and when it was reached (None while it is not).

    >>> Budget(5.0, 1.25, None).left
    3.75
    """

    usd: float | None
    spent_usd: float
    exceeded_at: datetime | None = None

    @property
    def exceeded(self) -> bool:
        """The recorded cost has reached the limit."""
        return self.usd is not None and self.spent_usd >= self.usd

    @property
    def left(self) -> float | None:
        """Dollars left before the limit (None without one)."""
        return None if self.usd is None else max(0.0, self.usd - self.spent_usd)

    def __repr__(self) -> str:
        if self.usd is None:
            return f"<Budget: none set; ${self.spent_usd:.4f} recorded>"
        state = "reached: AI agents are paused" if self.exceeded else f"${self.left:.4f} left"
        return f"<Budget ${self.usd:g}: ${self.spent_usd:.4f} recorded, {state}>"


# --------------------------------------------------------------------------- reading


def totals(store: Store) -> Usage:
    """The town's sums (a zero Usage when nothing was reported)."""
    return usage_from_hash(store.redis.hgetall(store.keys.usage_total)) or Usage()


def agent_totals(store: Store, agent_ids: list[str]) -> dict[str, Usage]:
    """Each agent's sums (agents that reported nothing are left out), one round trip."""
    if not agent_ids:
        return {}
    pipe = store.redis.pipeline(transaction=False)
    for aid in agent_ids:
        pipe.hgetall(store.keys.usage_agent(aid))
    found = {aid: usage_from_hash(h) for aid, h in zip(agent_ids, pipe.execute())}
    return {aid: u for aid, u in found.items() if u is not None}


def of_task(store: Store, ref: Any) -> Usage | None:
    """One task's sums, None when nothing was reported."""
    tid = lookup.task_id(store, ref)
    return usage_from_hash(store.redis.hgetall(store.keys.usage(tid)))


def rows(store: Store, by: str = "agent") -> list[UsageRow]:
    """Usage summed per ``agent`` (who ran the task), ``tag`` (a task with several tags
    counts for each; none: ``(untagged)``) or ``task``; most expensive first (then most
    tokens). Reads every usage record and the tasks they belong to in bulk.

    >>> task = town.backlog_add("Speed up the API", tags=["backend"])
    >>> town.record_usage(task, input_tokens=1200, output_tokens=300, cost_usd=0.02).cost_usd
    0.02
    >>> rows(store, "tag")[0].label
    'backend'
    """
    if by not in BY:
        raise ConfigError(f"by must be one of {', '.join(BY)}, got {by!r}.")
    found = [(h["id"], usage_from_hash(h), h.get("agent_id")) for h in store.hashes("usage")]
    found = [(tid, u, aid) for tid, u, aid in found if u is not None]
    names = {a.id: a.name for a in lookup.all_agents(store)}
    tasks = {t.id: t for t in (Task.from_hash(h) for h in store.hashes("task", [f[0] for f in found]))
             if t is not None}
    groups: dict[str, list[tuple[str, Usage]]] = defaultdict(list)
    labels: dict[str, str] = {}
    agents: dict[str, str | None] = {}
    for tid, usage, aid in found:
        task = tasks.get(tid)
        if by == "agent":
            key = aid or NO_AGENT
            keys_of = [key]
            labels[key] = names.get(aid or "", (aid or NO_AGENT)[:8] if aid else NO_AGENT)
        elif by == "tag":
            keys_of = list(dict.fromkeys(task.tags)) if task and task.tags else [NO_TAG]
            labels.update((k, k) for k in keys_of)
        else:
            keys_of = [tid]
            labels[tid] = (f"{tid[:4]} {truncate_summary(task.description, 60)}" if task
                           else f"{tid[:4]} (task deleted)")
            agents[tid] = names.get(aid or "", aid) if aid else None
        for key in keys_of:
            groups[key].append((tid, usage))
    out = []
    for key, members in groups.items():
        total = Usage()
        for _, usage in members:
            total = total + usage
        out.append(UsageRow(key, labels[key], total, len({t for t, _ in members}), agents.get(key)))
    out.sort(key=lambda r: (-(r.usage.cost_usd or 0.0), -r.usage.total_tokens, r.label))
    return out


# --------------------------------------------------------------------------- recording


def record(store: Store, ref: Any, usage: Usage) -> Usage:
    """Add a usage report to a task (``ttnb task usage``; a function agent reports through
    ``ctx.usage``), atomically with the agent's and town's sums; the budget is applied
    after it. Returns the task's sums. Unknown task: TaskNotFound, nothing written."""
    task = lookup.task(store, ref)
    step = tr.Change(store.keys.task(task.id), [], {
        "require": True, "cmds": usage_cmds(store.keys, task.id, task.assigned_to, usage)})
    try:
        store.run(step)
    except tr.RecordMissing:
        raise TaskNotFound(ref) from None
    if usage.cost_usd:
        enforce(store)
    return of_task(store, task.id) or usage


# --------------------------------------------------------------------------- the budget


def budget(store: Store) -> Budget:
    """The town's budget and recorded cost, one round trip."""
    pipe = store.redis.pipeline(transaction=False)
    h, spent = pipe.hgetall(store.keys.budget).hget(store.keys.usage_total, "cost_usd").execute()
    return Budget(_dollars(h.get("usd")), _dollars(spent) or 0.0, parse_ts(h.get("exceeded_at")))


def set_budget(store: Store, usd: Any) -> Budget:
    """Set the town's budget in US dollars (``None`` clears it); a cost already at or over
    it pauses the AI agents at once (see the module docstring). Bad amounts (zero,
    negative, NaN, not a number) are refused and nothing is written."""
    limit = None if usd is None else checks.money(usd, "The budget")
    pipe = store.redis.pipeline(transaction=True)
    pipe.delete(store.keys.budget)
    if limit is not None:
        pipe.hset(store.keys.budget, "usd", repr(limit))
    pipe.execute()
    if limit is not None:
        enforce(store)
    return budget(store)


def would_reach(store: Store, cost: float) -> bool:
    """Whether recording ``cost`` more brings the town's cost to its budget (False without
    a budget): a worker then takes nothing new in the step that records it."""
    pipe = store.redis.pipeline(transaction=False)
    usd, spent = pipe.hget(store.keys.budget, "usd").hget(store.keys.usage_total, "cost_usd").execute()
    limit = _dollars(usd)
    return limit is not None and (_dollars(spent) or 0.0) + cost >= limit


def enforce(store: Store) -> list[str]:
    """If the town's recorded cost has reached its budget: record ``budget_exceeded`` (once
    per budget) and pause every AI agent that is starting, idle or working; returns the
    names paused (empty when under budget)."""
    k = store.keys
    pipe = store.redis.pipeline(transaction=False)
    usd, spent = pipe.hget(k.budget, "usd").hget(k.usage_total, "cost_usd").execute()
    limit, cost = _dollars(usd), _dollars(spent) or 0.0
    if limit is None or cost < limit:
        return []
    try:
        store.run(tr.budget_exceeded(k, usd=usd, spent=cost))
    except tr.Refused:
        pass  # marked already (or changed meanwhile): the agents are paused all the same
    agents = [a for a in lookup.all_agents(store) if not a.state.is_terminal]
    spenders = agent_totals(store, [a.id for a in agents])
    ai = [a for a in agents if a.cli in store.config.agent_clis
          or (spenders.get(a.id) is not None and spenders[a.id].cost_usd)]
    results = store.run_many([tr.budget_pause(k, a.id, a.name, usd=usd) for a in ai])
    return [a.name for a, r in zip(ai, results) if not isinstance(r, Exception)]


def _dollars(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if value == value and value >= 0 else None
