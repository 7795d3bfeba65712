"""Town events as records: one entry of ``tt:{town}:events`` (or an agent's stream).

Events are written inside :mod:`.transitions`, in the same atomic step as the change they
report, and read by the :class:`~.store.Store`.

Example::

    >>> e = decode_entry("1-0", {"event_type": "agent_resumed", "data": '{"message": "hi"}'})
    >>> e.type, e.message
    ('agent_resumed', 'hi')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
