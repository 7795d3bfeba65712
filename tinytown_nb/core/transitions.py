"""Every state change of an agent or task: the rule table and the one atomic script.

A change is one Lua script run (``transition.lua``): it checks the current state, writes
only the fields that change (never a whole-record rewrite that could clobber a concurrent
writer, spec §11.3), performs side writes (stop flag, inbox, backlog) and appends the
event to the town and agent streams — all or nothing.

Example::

    >>> apply(r, keys.agent(aid), "interrupt", set={"state": "paused"}, ...)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import redis

from .errors import InvalidState
from .models import AgentState, TaskState, event_json

_SCRIPT_SOURCE = (Path(__file__).with_name("transition.lua")).read_text()

_A = AgentState
_T = TaskState
_NON_TERMINAL_AGENT = tuple(s for s in _A if not s.is_terminal)
_TERMINAL_AGENT = tuple(s for s in _A if s.is_terminal)
_OPEN_TASK = tuple(s for s in _T if not s.is_terminal)


@dataclass(frozen=True)
class Rule:
    """Which states a change may start from, where it leads, and the event it emits."""

    allowed_from: tuple[Any, ...]
    to: Any
    event: str | None
    verb: str  # for error messages: "cannot <verb> agent 'x' while it is stopped"


AGENT_RULES: dict[str, Rule] = {
    "interrupt": Rule(tuple(s for s in _NON_TERMINAL_AGENT if s is not _A.PAUSED), _A.PAUSED,
                      "agent_interrupted", "interrupt"),
    "resume": Rule((_A.PAUSED,), _A.IDLE, "agent_resumed", "resume"),
    "close": Rule(_NON_TERMINAL_AGENT, _A.DRAINING, "agent_stopped", "close"),
    "kill": Rule(tuple(_A), _A.STOPPED, "agent_stopped", "kill"),
    "restart": Rule(_TERMINAL_AGENT, _A.STARTING, "agent_state_changed", "restart"),
    # written by workers
    "idle": Rule((_A.STARTING, _A.IDLE, _A.WORKING, _A.DRAINING), _A.IDLE,
                 "agent_state_changed", "mark idle"),
    "work": Rule((_A.STARTING, _A.IDLE, _A.WORKING, _A.DRAINING), _A.WORKING,
                 "agent_state_changed", "start work on"),
    "stopped": Rule(tuple(_A), _A.STOPPED, "agent_stopped", "stop"),
    "drain": Rule(_NON_TERMINAL_AGENT, _A.DRAINING, "agent_state_changed", "drain"),
    "recover": Rule((_A.STARTING, _A.IDLE, _A.WORKING, _A.DRAINING), _A.STOPPED,
                    "agent_stopped", "recover"),
}

TASK_RULES: dict[str, Rule] = {
    "start": Rule((_T.PENDING, _T.ASSIGNED), _T.RUNNING, "agent_state_changed", "start"),
    "complete": Rule(_OPEN_TASK, _T.COMPLETED, "task_completed", "complete"),
    "fail": Rule(_OPEN_TASK, _T.FAILED, "task_failed", "fail"),
    "cancel": Rule(_OPEN_TASK, _T.CANCELLED, "task_failed", "cancel"),
    "requeue": Rule((_T.RUNNING, _T.ASSIGNED), _T.ASSIGNED, None, "requeue"),
    "claim": Rule((_T.PENDING,), _T.ASSIGNED, "task_assigned", "claim"),
    "to_backlog": Rule(_OPEN_TASK, _T.PENDING, None, "return to the backlog"),
}

_OLD_MARK = "\u2063OLD\u2063"


@dataclass
class Change:
    """Arguments of one script run; built by the Town, run by :func:`apply`."""

    key: str
    streams: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)

    def event(self, event_type: str, *, with_old_state: bool = True, **fields: Any) -> "Change":
        """Attach an event; its ``old_state`` is filled in by the script from the record."""
        if with_old_state:
            text = event_json(event_type, old_state=_OLD_MARK, **fields)
            marker = '"old_state":' + json.dumps(_OLD_MARK, ensure_ascii=False) + ","
            head, tail = text.split(marker, 1)
            self.spec["event"] = {"type": event_type, "head": head, "tail": tail, "old": True}
        else:
            self.spec["event"] = {"type": event_type, "head": event_json(event_type, **fields),
                                  "tail": "", "old": False}
        return self


class Script:
    """The transition script, registered once per client (EVALSHA with automatic load)."""

    def __init__(self, client: redis.Redis):
        self._script = client.register_script(_SCRIPT_SOURCE)

    def __call__(self, change: Change, client: Any = None) -> Any:
        return self._script(keys=[change.key, *change.streams],
                            args=[json.dumps(change.spec, ensure_ascii=False)], client=client)


def check_error(exc: redis.ResponseError, *, what: str, ref: str, rule: Rule | None) -> Exception:
    """Translate a script error reply into the package's one-line error."""
    text = str(exc)
    if text.startswith("STATE ") and rule is not None:
        current = text.split(" ", 1)[1]
        allowed = ", ".join(s.value for s in rule.allowed_from)
        return InvalidState(
            f"Cannot {rule.verb} {what} {ref!r} while it is {current}; "
            f"only allowed from: {allowed}."
        )
    return exc


def states(values: Iterable[Any]) -> list[str]:
    """Wire spellings of a list of enum states."""
    return [getattr(v, "value", v) for v in values]
