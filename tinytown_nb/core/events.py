"""Reading the town's event streams (``tt:{town}:events`` and per-agent streams).

Writing happens inside :mod:`transitions` so that every event lands in the same atomic
step as the change it reports.

Example::

    >>> [e.type for e in read_events(r, keys.events, count=3)]   # doctest: +SKIP
    ['agent_spawned', 'task_assigned', 'task_completed']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from .models import parse_ts


@dataclass(frozen=True)
class Event:
    """One stream entry: its stream id, ``event_type`` and decoded ``data``."""

    id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def timestamp(self) -> datetime | None:
        return parse_ts(self.data.get("timestamp", ""))

    @property
    def message(self) -> str:
        return str(self.data.get("message", ""))

    @property
    def agent_id(self) -> str | None:
        return self.data.get("agent_id")

    @property
    def task_id(self) -> str | None:
        return self.data.get("task_id")


def decode_entry(entry_id: str, fields: dict[str, str]) -> Event:
    """Turn an XRANGE entry into an :class:`Event` (bad JSON gives empty data, not an error)."""
    try:
        data = json.loads(fields.get("data", "{}"))
        if not isinstance(data, dict):
            data = {}
    except ValueError:
        data = {}
    return Event(entry_id, fields.get("event_type", data.get("event_type", "")), data)


def read_events(r: redis.Redis, stream: str, *, count: int = 20, after: str | None = None) -> list[Event]:
    """Oldest-first events, from the start or strictly after ``after`` (exclusive range)."""
    start = f"({after}" if after else "-"
    return [decode_entry(i, f) for i, f in r.xrange(stream, start, "+", count=count)]


def recent_events(r: redis.Redis, stream: str, *, count: int = 30) -> list[Event]:
    """The last ``count`` events, oldest first (``tt history``)."""
    return [decode_entry(i, f) for i, f in reversed(r.xrevrange(stream, "+", "-", count=count))]
