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
    # draining is not listed: a close that lands between taking a message and starting it
    # puts the message back (the agent was asked to finish, not to begin something new)
    "work": Rule((_A.STARTING, _A.IDLE, _A.WORKING), _A.WORKING,
                 "agent_state_changed", "start work on"),
    "done": Rule((_A.WORKING,), _A.IDLE, "agent_state_changed", "finish work on"),
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
    # a worker takes up a task_assign (running again after a crash is a redo: at-least-once)
    "run": Rule((_T.PENDING, _T.ASSIGNED, _T.RUNNING), _T.RUNNING, None, "run"),
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

    def event(self, event_type: str, *, with_old_state: bool = True,
              new_state_from: str | None = None, **fields: Any) -> "Change":
        """Attach an event; its ``old_state`` is filled in by the script from the record.

        ``new_state_from`` names a hash whose state *after* the writes becomes
        ``new_state`` (for changes whose outcome depends on the state, e.g. a finished
        task leaves a paused agent paused).
        """
        if with_old_state or new_state_from is not None:
            if new_state_from is not None:
                fields.pop("new_state", None)
            text = event_json(event_type, old_state=_OLD_MARK, **fields)
            marker = '"old_state":' + json.dumps(_OLD_MARK, ensure_ascii=False) + ","
            head, tail = text.split(marker, 1)
            self.spec["event"] = {"type": event_type, "head": head, "tail": tail,
                                  "old": with_old_state}
            if new_state_from is not None:
                self.spec["event"]["new_key"] = new_state_from
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

    def run_many(self, client: redis.Redis, changes: list[Change]) -> list[Any]:
        """Run changes in ONE pipelined round trip; each result or error is returned, not raised.

        Unlike redis-py's pipelined scripts there is no SCRIPT EXISTS round trip first: if the
        server has lost the script (restart, SCRIPT FLUSH), it is loaded and the changes that
        got NOSCRIPT — which therefore did nothing — run again.

        >>> results = town._script.run_many(town.redis, changes)   # doctest: +SKIP
        """
        results: list[Any] = [None] * len(changes)
        todo = list(range(len(changes)))
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                c = changes[i]
                pipe.execute_command("EVALSHA", self._script.sha, 1 + len(c.streams), c.key,
                                     *c.streams, json.dumps(c.spec, ensure_ascii=False))
            for i, result in zip(todo, pipe.execute(raise_on_error=False)):
                results[i] = result
            todo = [i for i in todo if isinstance(results[i], redis.exceptions.NoScriptError)]
            if not todo or attempt == 2:
                return results
            self._script.sha = client.script_load(self._script.script)
        return results


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
