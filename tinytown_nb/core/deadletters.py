"""Dead letters: messages (and their tasks) a worker set aside because the town cannot use
them — not UTF-8, not tinytown's JSON, a task record with an unknown state or of the wrong
type. A worker moves such a message here atomically, with the reason and an event, fails
its task with ``Quarantined: <reason>`` so nobody waits for it, and goes on.

Here you list them, put one back where it came from (after fixing its record) or drop it.

Example::

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> store.redis.rpush(store.keys.inbox(dev.id), "not json")     # what no worker can use
    1
    >>> town.wait("dev", timeout=10).state                          # set aside; dev goes on
    <AgentState.IDLE: 'idle'>
    >>> [d.reason for d in dead_letters(store)]
    ["not a tinytown message (message is not valid JSON: ...): 'not json'"]
    >>> dead = requeue(store, dead_letters(store)[0].id)            # after fixing it
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import lookup, transitions as tr
from .errors import ConfigError
from .models import TaskState, canonical_uuid, hash_ts, parse_ts, utcnow
from .store import Store


@dataclass(frozen=True)
class DeadLetter:
    """One message set aside: where it was, why, and its bytes (``text`` shows them with
    bytes that are not UTF-8 replaced)."""

    id: str
    reason: str
    agent_id: str | None
    source: str
    task_id: str | None
    at: datetime | None
    raw: bytes

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    @property
    def short_id(self) -> str:
        return self.id[:4]


def _decode(value: Any) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def dead_letters(store: Store) -> list[DeadLetter]:
    """Every dead letter, oldest first (records read tolerantly: nothing here raises)."""
    ids = store.redis.zrange(store.keys.dead_letters, 0, -1)
    pipe = store.raw.pipeline(transaction=False)
    for did in ids:
        pipe.hgetall(store.keys.dead_letter(did))
    out = []
    for did, h in zip(ids, pipe.execute(raise_on_error=False)):
        if not isinstance(h, dict) or not h:
            continue
        get = {_decode(k): v for k, v in h.items()}.get
        out.append(DeadLetter(did, _decode(get("reason")) or "", canonical_uuid(_decode(get("agent_id"))),
                              _decode(get("source")) or "inbox", canonical_uuid(_decode(get("task_id"))),
                              parse_ts(_decode(get("at"))), get("raw") or b""))
    return out


def find(store: Store, ref: Any) -> DeadLetter:
    """One dead letter by id or a unique id prefix (4+ characters)."""
    raw = str(ref).strip().lower()
    found = [d for d in dead_letters(store) if d.id == raw or (len(raw) >= 4 and d.id.startswith(raw))]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"No dead letter {str(ref)!r}. List them with town.dead_letters() or "
                          "`ttnb dead list`.")
    raise ConfigError(f"Dead letter id {raw!r} is ambiguous ({len(found)}); give more characters.")


def requeue(store: Store, ref: Any) -> DeadLetter:
    """Put a dead letter's message back where it was taken from (front of the agent's inbox,
    or its urgent list) and re-open the task it quarantined, atomically; the worker will try
    it again — fix what made it unusable first.

    Refused when its agent is gone (reclaim the message to another agent by hand)."""
    d = find(store, ref)
    if d.agent_id is None:
        raise ConfigError(f"Dead letter {d.short_id} names no agent; drop it instead.")
    agent = lookup.agent(store, d.agent_id)
    k = store.keys
    back = (["RPUSH", k.urgent(agent.id), tr.Raw(d.raw)] if d.source == "urgent"
            else ["LPUSH", k.inbox(agent.id), tr.Raw(d.raw)])
    cmds: list[list[Any]] = [back, *(tr.wake(k, agent.id) if d.source == "urgent" else []),
                             ["DEL", k.dead_letter(d.id)], ["ZREM", k.dead_letters, d.id]]
    if d.task_id:
        h = store.redis.hmget(k.task(d.task_id), "state", "result")
        if TaskState.parse(h[0]) is TaskState.FAILED and (h[1] or "").startswith("Quarantined:"):
            cmds += [["HSET", k.task(d.task_id), "state", TaskState.ASSIGNED.value,
                      "updated_at", hash_ts(utcnow())],
                     ["HDEL", k.task(d.task_id), "result", "completed_at"]]
    step = tr.Change(k.dead_letter(d.id), tr.streams(k, agent.id), {"require": True, "cmds": cmds})
    step.event("dead_letter", with_old_state=False, agent_id=agent.id, task_id=d.task_id,
               message=f"Dead letter {d.short_id} put back for {agent.name}")
    try:
        store.run(step)
    except tr.RecordMissing:
        raise ConfigError(f"Dead letter {d.short_id} was just requeued or dropped.") from None
    return d


def drop(store: Store, ref: Any) -> DeadLetter:
    """Delete a dead letter for good; returns it."""
    d = find(store, ref)
    pipe = store.redis.pipeline(transaction=True)
    pipe.delete(store.keys.dead_letter(d.id)).zrem(store.keys.dead_letters, d.id)
    pipe.execute()
    return d
