"""Finding agents and tasks from what a person types: the one place references resolve.

Agents resolve as upstream's do (spec §4.3): ``supervisor``/``conductor``, a UUID, then
name, nickname, label (``Piper [worker]``) or 4-character short id, case-insensitively;
stopped agents match too. Tasks resolve by UUID or a unique id prefix of 4+ characters.

Example::

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> agent(store, "dev").state
    <AgentState.IDLE: 'idle'>
    >>> t = town.assign("dev", "Fix #12")
    >>> task_id(store, t.id[:4]) == t.id
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from .errors import AgentNotFound, AmbiguousAgent, ConfigError, TaskNotFound
from .keys import SUPERVISOR_ID
from .models import Agent, AgentState, AgentType, Task, canonical_uuid
from .names import is_reserved
from .runopts import with_runs
from .store import SCAN_COUNT, Store


def supervisor() -> Agent:
    """The well-known supervisor/conductor mailbox, shown as a (never stored) agent.

    >>> supervisor().name, supervisor().id[-4:]
    ('supervisor', '0001')
    """
    record = Agent.new("supervisor", "", id=SUPERVISOR_ID, nickname="supervisor")
    record.agent_type = AgentType.SUPERVISOR
    record.state = AgentState.IDLE
    return record


def all_agents(store: Store) -> list[Agent]:
    """Every agent record of the town, oldest first, from the agents index (kept by every
    transition; records another program wrote are filed by ``status.reconcile``, which
    ``Town.connect`` runs). Unreadable records are skipped."""
    ids = store.redis.smembers(store.keys.agents_index)
    return _sorted(Agent.from_hash(h) for h in store.hgetall_many([store.keys.agent(i) for i in ids]))


def scanned_agents(store: Store) -> list[Agent]:
    """Every agent record found by scanning the keyspace (also those no index holds yet:
    spawned by the Rust ``tt`` since this town was connected)."""
    return _sorted(Agent.from_hash(h) for h in store.hgetall_many(store.scan("agent")))


def _sorted(found: Iterable[Agent | None]) -> list[Agent]:
    return sorted((a for a in found if a is not None), key=lambda a: (a.created_at, a.name))


def agent(store: Store, ref: Any) -> Agent:
    """Resolve a name, nickname, label, 4-char short id, UUID or ``supervisor``/``conductor``.

    Raises :class:`AgentNotFound` or :class:`AmbiguousAgent`.
    """
    if isinstance(ref, Agent):
        ref = ref.id
    raw = str(ref).strip()
    if not raw:
        raise AgentNotFound(ref, "Give an agent name, nickname or id.")
    if is_reserved(raw):
        return supervisor()
    full = canonical_uuid(raw)
    if full:
        if full == SUPERVISOR_ID:
            return supervisor()
        found = Agent.from_hash(store.redis.hgetall(store.keys.agent(full)))
        if found is None:
            raise AgentNotFound(raw)
        return found
    # Fast path: names spawned here are indexed; an exact name needs no scan. Not for a
    # dead agent: the Rust `tt` spawns a second agent of a name without touching the
    # index, and the scan then reports the name as ambiguous, as `tt` does (spec 4.3)
    indexed = store.redis.hget(store.keys.names, raw)
    if indexed:
        found = Agent.from_hash(store.redis.hgetall(store.keys.agent(indexed)))
        if found is not None and found.name == raw and not found.state.is_terminal:
            return found
    wanted = raw.lower()

    def matching(agents: list[Agent]) -> list[Agent]:
        return [a for a in agents if wanted in (a.name.lower(), a.display_name.lower(),
                                                a.display_label.lower(), a.short_id.lower())]

    # every agent record, also those a program keeping no index wrote (the Rust tt allows
    # two agents of one name: both must be seen to say the name is ambiguous)
    known = scanned_agents(store)
    matches = matching(known)
    if not matches:
        close = difflib.get_close_matches(raw, [a.name for a in known], n=1, cutoff=0.6)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise AgentNotFound(raw, hint + "List agents with town.agents(), %tt_agents or `ttnb list`.")
    if len(matches) > 1:
        exact = [a for a in matches if a.name == raw]
        if len(exact) == 1:  # a name spelled exactly beats a nickname that happens to match
            return exact[0]
        raise AmbiguousAgent(raw, [f"{a.display_label} ({a.short_id})" for a in matches])
    return matches[0]


def agent_id(store: Store, ref: Any) -> str:
    """The id of an agent reference; a name seen before skips the lookup (the writes that
    use it carry a :func:`name_guard`, so a stale cache entry is caught by the script)."""
    if isinstance(ref, Agent):
        return ref.id
    raw = str(ref).strip()
    cached = store.name_ids.get(raw)
    if cached:
        return cached
    found = agent(store, raw)
    if found.name == raw and found.id != SUPERVISOR_ID:
        store.name_ids[raw] = found.id
    return found.id


def name_guard(store: Store, ref: Any, aid: str) -> str | None:
    """The name a write must still find on agent ``aid`` when ``ref`` was resolved from
    the name cache (None when it was not)."""
    if isinstance(ref, Agent) or aid == SUPERVISOR_ID:
        return None
    raw = str(ref).strip()
    return raw if store.name_ids.get(raw) == aid else None


def task_id(store: Store, ref: Any) -> str:
    """The canonical id of a task given its UUID, a :class:`Task`, or a unique id prefix
    (4+ hex characters). Raises :class:`TaskNotFound` or, for a prefix of several, ConfigError.
    """
    if isinstance(ref, Task):
        return ref.id
    raw = str(ref).strip().lower()
    full = canonical_uuid(raw)
    if full:
        return full
    if len(raw) >= 4 and all(c in "0123456789abcdef-" for c in raw):
        prefix = store.keys.task("")
        hits = [k[len(prefix):] for k in store.redis.scan_iter(match=f"{prefix}{raw}*", count=SCAN_COUNT)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(f"Task id {raw!r} is ambiguous ({len(hits)} tasks); give more characters.")
    raise TaskNotFound(ref)


def task(store: Store, ref: Any) -> Task:
    """One task record by reference (see :func:`task_id`), with its attempt count and usage
    (read in the same round trip)."""
    tid = task_id(store, ref)
    k = store.keys
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(k.task(tid)).hgetall(k.taskopts(tid)).hgetall(k.usage(tid))
    h, opts, usage = (r if isinstance(r, dict) else {} for r in pipe.execute(raise_on_error=False))
    found = Task.from_hash(h)
    if found is None:
        raise TaskNotFound(ref)
    return with_runs(found, opts, usage)


def sender_id(store: Store, sender: Any) -> str:
    """Who a message is from: a UUID as given (upstream checks no existence, spec §4.4),
    an agent reference resolved, or the supervisor when None."""
    if sender is None:
        return SUPERVISOR_ID
    full = canonical_uuid(sender.strip()) if isinstance(sender, str) else None
    return full or agent(store, sender).id
