"""Messages between agents: sending, and reading what waits without taking it.

Messages are tinytown's JSON (spec §3.1). ``send`` appends to the recipient's inbox, or
pushes to its urgent list; an agent reads its urgent list oldest first, then its inbox
(:data:`~.store.MAIL_ORDER`) — and every listing here shows them in exactly that order.

Example::

    >>> dev = town.spawn("dev", cli="claude", start=False)   # no worker yet to read it
    >>> msg = send(store, "dev", "Please also update the docs", kind="info")
    >>> [m.text for m in inbox(store, "dev")]
    ['Please also update the docs']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from . import checks, lookup, transitions as tr
from .errors import ConfigError
from .keys import SUPERVISOR_ID
from .models import Message
from .store import Store
from .transitions import parse_message

#: ``kind`` of :func:`send` → how the message is built (``tt send`` / ``--query`` /
#: ``--info`` / ``--ack``).
KINDS = {"task": Message.task_text, "query": Message.query, "info": Message.informational,
         "ack": Message.confirmation}


def send(store: Store, to: Any, text: str, *, kind: str = "task", urgent: bool = False,
         sender: Any = None) -> Message:
    """Send a message: ``kind`` is ``task``, ``query``, ``info`` or ``ack``; urgent messages
    go to the agent's urgent list, read before its inbox."""
    if kind not in KINDS:
        raise ConfigError(f"Message kind {kind!r} is unknown; use one of {', '.join(KINDS)}.")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("Message text is empty. Say something to the agent.")
    checks.text(text, "A message")
    to_id = lookup.agent(store, to).id
    msg = KINDS[kind](text, sender=lookup.sender_id(store, sender), to=to_id)
    if urgent:  # and wake its idle worker: an urgent message is read at once
        pipe = store.redis.pipeline(transaction=True)
        pipe.lpush(store.keys.urgent(to_id), msg.to_json())
        for cmd in tr.wake(store.keys, to_id):
            pipe.execute_command(*cmd)
        pipe.execute()
    else:
        store.redis.rpush(store.keys.inbox(to_id), msg.to_json())
    return msg


def parse_messages(raw: Iterable[str]) -> list[Message]:
    """Messages from their JSON, skipping what cannot be read (as upstream's peek does)."""
    return [m for m in map(parse_message, raw) if m is not None]


def inboxes(store: Store, agent_ids: Iterable[str]) -> list[tuple[list[Message], list[Message]]]:
    """``(urgent, regular)`` waiting messages of many agent ids, each in reading order, in
    one pipelined read."""
    return [(parse_messages(u), parse_messages(r)) for u, r in store.read_mail(list(agent_ids))]


def inbox(store: Store, agent: Any) -> list[Message]:
    """Messages waiting for an agent in the order it will read them (urgent first),
    without taking them."""
    urgent, regular = inboxes(store, [lookup.agent(store, agent).id])[0]
    return urgent + regular


def inbox_counts(store: Store, agent_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Waiting messages per agent id (urgent + regular); default every agent + the supervisor."""
    ids = (list(agent_ids) if agent_ids is not None
           else [a.id for a in lookup.all_agents(store)] + [SUPERVISOR_ID])
    return store.mail_counts(ids)
