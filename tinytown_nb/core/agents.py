"""Agent records: registering, the state changes a person asks for, pruning, logs.

Starting and stopping the *workers* behind agents is the running layer's job
(:mod:`.worker.launch`); this module only changes records, each change one atomic
transition with its event.

Example::

    >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker
    >>> kill(store, "dev").state
    <AgentState.STOPPED: 'stopped'>
"""

from __future__ import annotations

from typing import Any

from . import lookup, transitions as tr
from .errors import AgentExists, AgentNotFound, InvalidState
from .keys import SUPERVISOR_ID
from .models import Agent, AgentState, SpawnMode, hash_ts, utcnow
from .store import SCAN_COUNT, Store

#: What ``reset(agents_only=True)`` deletes: every per-agent key kind.
AGENT_KEY_KINDS = ("agent", "inbox", "urgent", "stop", "activity", "processing", "worker", "notes",
                   "wake")


def change(store: Store, ref: Any, action: str, *, message: str = "",
           fields: dict[str, str] | None = None, cmds: list[list[Any]] | None = None,
           delete: tuple[str, ...] = ()) -> Agent:
    """Apply one rule of :data:`~.transitions.AGENT_RULES` to an agent (atomically, with
    its event). A record in hand is trusted only for its id and name: the script checks
    the state. Raises InvalidState when the state forbids it."""
    rule = tr.AGENT_RULES[action]
    agent = ref if isinstance(ref, Agent) else lookup.agent(store, ref)
    if agent.id == SUPERVISOR_ID:
        raise InvalidState("The supervisor is a mailbox, not a running agent; it cannot be "
                           f"{rule.verb}ed. Address a worker agent instead.")
    step = tr.agent_change(store.keys, agent.id, action, fields=fields, cmds=cmds or [],
                           delete=delete, parent_id=agent.parent_agent_id,
                           message=message or f"Agent {agent.name}: {action}")
    try:
        store.run(step)
    except tr.RecordMissing:
        raise AgentNotFound(agent.name) from None
    except tr.WrongState as why:
        raise why.explain(rule, "agent", agent.name) from None
    agent.state = rule.to
    return agent


def kill(store: Store, ref: Any, note: str | None = None) -> Agent:
    """Stop an agent now: state ``stopped`` plus the stop flag its worker obeys; ``note``
    is a further activity line written with it (e.g. that its worktree was kept)."""
    a = lookup.agent(store, ref)
    extra = tr.activity(store.keys, a.id, note) if note else []
    return change(store, a, "kill", message=f"Agent {a.name} killed",
                  cmds=[tr.stop_flag(store.keys, a.id),
                        *tr.activity(store.keys, a.id, "🛑 Stop requested"), *extra])


def interrupt(store: Store, ref: Any) -> Agent:
    """Pause an agent: it finishes the current task but starts nothing new until resumed."""
    a = lookup.agent(store, ref)
    return change(store, a, "interrupt", message=f"Agent {a.name} interrupted",
                  cmds=tr.activity(store.keys, a.id, "⏸️ Interrupted"))


def resume(store: Store, ref: Any) -> Agent:
    """Un-pause an agent (``paused`` → ``idle``) and clear any stop request."""
    a = lookup.agent(store, ref)
    return change(store, a, "resume", message=f"Agent {a.name} resumed",
                  cmds=[["DEL", store.keys.stop(a.id)],
                        *tr.activity(store.keys, a.id, "▶️ Resumed")])


def close(store: Store, ref: Any) -> Agent:
    """Let an agent finish its current work, then stop (``draining`` + stop flag)."""
    a = lookup.agent(store, ref)
    return change(store, a, "close", message="Agent closing (draining then stop)",
                  cmds=[tr.stop_flag(store.keys, a.id),
                        *tr.activity(store.keys, a.id, "🔻 Close requested")])


def reset_for_restart(store: Store, agent: Agent) -> Agent:
    """A stopped agent's record becomes ``starting`` with fresh round counters (its worker
    is started by the caller)."""
    return change(store, agent, "restart", message=f"Agent {agent.name} restarted",
                  fields={"rounds_completed": "0", "last_active_at": hash_ts(utcnow())},
                  cmds=[["DEL", store.keys.stop(agent.id)],
                        *tr.activity(store.keys, agent.id, "🔄 Restarted")])


def named(store: Store, name: str) -> list[Agent]:
    """Every agent record with exactly this name (the Rust ``tt`` allows several; its
    records are found even before a reconcile files them)."""
    return [a for a in lookup.scanned_agents(store) if a.name == name]


def register(store: Store, name: str, cli_name: str, *, role: str | None, nickname: str | None,
             parent_id: str | None, reuse: Agent | None) -> Agent:
    """Write the record of a spawned agent in state ``starting``: ``reuse`` a dead agent's
    id, inbox, history and counters, else a new one. Refused (AgentExists) when someone
    else made a live agent of that name meanwhile."""
    now = utcnow()
    if reuse is not None:
        # only the fields a spawn changes: counters and current_task written meanwhile by a
        # dying worker (its last task's completion) are kept, not overwritten
        record = {"state": AgentState.STARTING.value, "cli": cli_name, "rounds_completed": "0",
                  "last_heartbeat": hash_ts(now), "last_active_at": hash_ts(now),
                  "spawn_mode": SpawnMode.FRESH.value}
        given = {"role_id": role, "nickname": nickname, "parent_agent_id": parent_id}
        record.update({k: v for k, v in given.items() if v is not None})
        aid, message = reuse.id, f"Agent {name} respawned"
    else:
        fresh = Agent.new(name, cli_name, nickname=nickname, role_id=role, parent_agent_id=parent_id)
        record, aid, message = fresh.to_hash(), fresh.id, f"Agent {name} spawned"
    step = tr.spawn_agent(store.keys, aid, name, record=record, fresh=reuse is None,
                          parent_id=parent_id, message=message)
    try:
        store.run(step)
    except (tr.NameTaken, tr.WrongState, tr.RecordExists):
        raise AgentExists(f"Agent {name!r} was just spawned by someone else. Use it or pick "
                          "another name.") from None
    store.name_ids[name] = aid
    return lookup.agent(store, aid)


def prune(store: Store, all: bool = False) -> list[Agent]:
    """Delete stopped/error agents (every agent with ``all=True``) and their mailboxes;
    each atomically and only if still dead then (one restarted meanwhile is kept)."""
    dead = tr.AGENT_RULES["prune"].allowed_from
    doomed = [a for a in lookup.all_agents(store) if all or a.state in dead]
    results = store.run_many([tr.prune_agent(store.keys, a.id, a.name, only_dead=not all)
                              for a in doomed])
    pruned = [a for a, r in zip(doomed, results) if not isinstance(r, Exception)]
    for a in pruned:
        store.name_ids.pop(a.name, None)
    return pruned


def reset(store: Store, agents_only: bool = False) -> int:
    """Delete the whole town's data (or only agents and mailboxes); returns keys deleted."""
    k = store.keys
    patterns = [k.pattern(kind) for kind in AGENT_KEY_KINDS] if agents_only else [f"{k.prefix}*"]
    doomed = [key for p in patterns for key in store.redis.scan_iter(match=p, count=SCAN_COUNT)]
    if agents_only:  # the agents' index entries go with them (tasks keep theirs)
        doomed += [k.names, k.agents_index, *(k.agents_in_state(s.value) for s in AgentState)]
    deleted = 0
    for i in range(0, len(doomed), 1000):
        deleted += store.redis.delete(*doomed[i:i + 1000])
    store.name_ids.clear()
    return deleted


def activity(store: Store, ref: Any, n: int = 5) -> list[str]:
    """The agent's last ``n`` activity lines, newest first."""
    return store.redis.lrange(store.keys.activity(lookup.agent(store, ref).id), 0, n - 1)


def log_tails(store: Store, ref: Any, n: int = 8) -> dict[str, list[str]]:
    """The last ``n`` lines of the agent's worker log and of its newest round log, by file
    name; files that do not exist are left out (logs are files of this machine)."""
    name = lookup.agent(store, ref).name
    paths = store.paths
    out = {}
    for path in [paths.worker_log(name), *paths.round_logs(name)[-1:]]:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        out[path.name] = [ln for ln in lines if ln.strip()][-n:]
    return out
