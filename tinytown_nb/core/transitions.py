"""Every state change of an agent or task: the rule table, one builder per atomic
operation, and the one script that applies them.

A change is one run of ``transition.lua``: it checks the current state (and any guards),
writes only the fields that change (never a whole-record rewrite that could clobber a
concurrent writer, spec §11.3), does its side writes (stop flag, inbox, backlog) and
appends the event to the town and agent streams — all or nothing. A refused change
writes nothing and comes back as one of the typed :class:`Refused` errors, parsed here
once.

The builders are pure: they turn a rule and its arguments into a :class:`Change`
(``Change.spec`` is what the script reads); :class:`Script` runs them.

Example::

    >>> keys = Keys("demo")
    >>> change = agent_change(keys, "3f2a0000-0000-4000-8000-000000000000", "interrupt",
    ...                       message="Agent dev interrupted")
    >>> change.spec["from"]
    ['starting', 'idle', 'working', 'draining']
    >>> change.spec["set"]["state"]
    'paused'
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import redis

from .errors import ConfigError, InvalidState
from .keys import SUPERVISOR_ID, Keys
from .models import (OPEN_TASK_STATES, TASK_STATE_ALIASES, TERMINAL_AGENT_STATES, AgentState, Message,
                     Task, TaskState, canonical_uuid, event_json, hash_ts, spellings, utcnow)



def lua_source(name: str) -> str:
    """A Lua script of this package with the state tables filled in from :mod:`.models`
    (so the scripts and Python read states by one rule).

    >>> "in_flight = 'running'" in lua_source("transition.lua")
    True
    """
    def table(values: Iterable[str]) -> str:
        return "{" + ", ".join(f"{v} = true" for v in values) + "}"

    return (Path(__file__).with_name(name).read_text()
            .replace("{{ALIASES}}", "{" + ", ".join(f"{a} = '{s.value}'" for a, s in TASK_STATE_ALIASES.items()) + "}")
            .replace("{{TASK_STATES}}", table(s.value for s in TaskState))
            .replace("{{AGENT_STATES}}", table(s.value for s in AgentState)))


_SCRIPT_SOURCE = lua_source("transition.lua")

#: A field value the script replaces with the server's time when it runs (hash form,
#: ``+00:00``): for times that must order with other changes, not with when a step was built.
NOW = "\u2063NOW\u2063"
ACTIVITY_MAX = 10  # upstream keeps the last 10 activity lines for an hour
ACTIVITY_TTL = 3600
STOP_TTL = 3600

_A = AgentState
_T = TaskState
_LIVE_AGENT = tuple(s for s in _A if not s.is_terminal)


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rule:
    """Which states a change may start from, where it leads, and the event it emits."""

    allowed_from: tuple[Any, ...]
    to: Any
    event: str | None
    verb: str  # for error messages: "cannot <verb> agent 'x' while it is stopped"

    @cached_property
    def sources(self) -> list[str]:
        """The wire spellings the script accepts as a starting state (aliases included);
        computed once per rule and shared by every change built from it (read only).

        >>> TASK_RULES["requeue"].sources
        ['running', 'assigned', 'in_flight']
        """
        return spellings(self.allowed_from)


AGENT_RULES: dict[str, Rule] = {
    "interrupt": Rule(tuple(s for s in _LIVE_AGENT if s is not _A.PAUSED), _A.PAUSED,
                      "agent_interrupted", "interrupt"),
    "resume": Rule((_A.PAUSED,), _A.IDLE, "agent_resumed", "resume"),
    "close": Rule(_LIVE_AGENT, _A.DRAINING, "agent_stopped", "close"),
    "kill": Rule(tuple(_A), _A.STOPPED, "agent_stopped", "kill"),
    "restart": Rule(TERMINAL_AGENT_STATES, _A.STARTING, "agent_state_changed", "restart"),
    "spawn": Rule(TERMINAL_AGENT_STATES, _A.STARTING, "agent_spawned", "spawn"),
    # written by workers
    "register": Rule(_LIVE_AGENT, _A.IDLE, "agent_state_changed", "start a worker for"),
    "idle": Rule((_A.STARTING, _A.IDLE, _A.WORKING, _A.DRAINING), _A.IDLE,
                 "agent_state_changed", "mark idle"),
    # draining is not listed: a close that lands between taking a message and starting it
    # puts the message back (the agent was asked to finish, not to begin something new)
    "work": Rule((_A.STARTING, _A.IDLE, _A.WORKING), _A.WORKING,
                 "agent_state_changed", "start work on"),
    "done": Rule((_A.WORKING,), _A.IDLE, "agent_state_changed", "finish work on"),
    # not from starting: a restart is under way (its new worker comes with a new token), and
    # the old worker's late stop (it saw the kill's stop flag just before) must not undo it
    "stopped": Rule(tuple(s for s in _A if s is not _A.STARTING), _A.STOPPED, "agent_stopped", "stop"),
    "drain": Rule((_A.IDLE, _A.STARTING), _A.DRAINING, "agent_state_changed", "drain"),
    "crash": Rule(_LIVE_AGENT, _A.ERROR, "agent_failed", "mark crashed"),
    "recover": Rule((_A.STARTING, _A.IDLE, _A.WORKING, _A.DRAINING), _A.STOPPED,
                    "agent_stopped", "recover"),
    "prune": Rule((_A.STOPPED, _A.ERROR), _A.STOPPED, None, "prune"),
}

TASK_RULES: dict[str, Rule] = {
    "start": Rule((_T.PENDING, _T.ASSIGNED), _T.RUNNING, "agent_state_changed", "start"),
    "complete": Rule(OPEN_TASK_STATES, _T.COMPLETED, "task_completed", "complete"),
    "fail": Rule(OPEN_TASK_STATES, _T.FAILED, "task_failed", "fail"),
    "cancel": Rule(OPEN_TASK_STATES, _T.CANCELLED, "task_failed", "cancel"),
    "requeue": Rule((_T.RUNNING, _T.ASSIGNED), _T.ASSIGNED, None, "requeue"),
    # a worker takes up a task_assign (running again after a crash is a redo: at-least-once)
    "run": Rule((_T.PENDING, _T.ASSIGNED, _T.RUNNING), _T.RUNNING, None, "run"),
    "claim": Rule((_T.PENDING,), _T.ASSIGNED, "task_assigned", "claim"),
    "to_backlog": Rule(OPEN_TASK_STATES, _T.PENDING, "task_delegated", "return to the backlog"),
    "reassign": Rule(OPEN_TASK_STATES, _T.ASSIGNED, "task_assigned", "reassign"),
    "retry": Rule((_T.FAILED, _T.CANCELLED), _T.ASSIGNED, "task_assigned", "retry"),
}


# --------------------------------------------------------------------------- refusals


class Refused(Exception):
    """The script refused a change; nothing was written. Parsed once from the script's
    error reply by :func:`refusal` (subclasses say why)."""


class RecordExists(Refused):
    """A record the change would create already exists."""


class RecordMissing(Refused):
    """The record the change is about does not exist."""


class FlagSet(Refused):
    """A key that must be absent exists (e.g. the agent's stop flag)."""

    def __init__(self, key: str):
        super().__init__(f"FLAG {key}")
        self.key = key


class WrongState(Refused):
    """The record is in a state the rule does not start from (``state`` None: no record)."""

    def __init__(self, state: str | None):
        super().__init__(f"STATE {state}")
        self.state = state

    def explain(self, rule: Rule, what: str, ref: str) -> InvalidState:
        """The one-line error a person sees.

        >>> print(WrongState("stopped").explain(AGENT_RULES["resume"], "agent", "dev"))
        Cannot resume agent 'dev' while it is stopped; only allowed from: paused.
        """
        allowed = ", ".join(s.value for s in rule.allowed_from)
        return InvalidState(f"Cannot {rule.verb} {what} {ref!r} while it is {self.state}; "
                            f"only allowed from: {allowed}.")


class Stale(Refused):
    """A guard failed: ``key``'s ``field`` no longer holds what the caller saw."""

    def __init__(self, key: str, field: str, value: str):
        super().__init__(f"STALE {key} {field}={value}")
        self.key, self.field, self.value = key, field, value


class NotInList(Refused):
    """The value the change would take out of a list is not there (taken meanwhile)."""


class NameTaken(Refused):
    """The agent name points at another live agent."""

    def __init__(self, owner: str):
        super().__init__(f"TAKEN {owner}")
        self.owner = owner


class TooLong(Refused):
    """A command of the change has more arguments than the script sends at once."""


class WrongType(Refused, ConfigError):
    """A key the change would write holds another type (written by another program);
    also the one-line error a person sees.

    >>> print(WrongType("tt:d:events", "string", "stream"))
    Key tt:d:events holds a string where tinytown keeps a stream, so nothing was changed. Another program wrote it: delete or rename that key (redis-cli DEL tt:d:events), then retry.
    """

    def __init__(self, key: str, holds: str, wanted: str):
        super().__init__(f"Key {key} holds a {holds} where tinytown keeps a {wanted}, so "
                         "nothing was changed. Another program wrote it: delete or rename "
                         f"that key (redis-cli DEL {key}), then retry.")
        self.key, self.holds, self.wanted = key, holds, wanted


class DependencyRefused(Refused):
    """The workflow part of a change was refused (transition.lua, "workflows"): ``code``
    is ``DEP_MISSING`` (no such task), ``DEP_DONE`` (it failed or was cancelled),
    ``DEP_SELF``, ``DEP_CYCLE`` (it already waits, transitively, for the task),
    ``DEP_OPEN`` (``detail``: how many dependencies are still open) or ``NOT_WAITING``
    (``detail``: the task's state); ``task_id`` is the dependency it names.

    >>> refusal(redis.ResponseError("DEP_DONE 3f2a0000-0000-4000-8000-000000000000 failed")).detail
    'failed'
    """

    def __init__(self, code: str, rest: str):
        super().__init__(f"{code} {rest}".strip())
        self.code = code
        first, _, detail = rest.partition(" ")
        self.task_id = first if code.startswith("DEP_") and code != "DEP_OPEN" else None
        self.detail = detail if self.task_id else rest


_REFUSAL = re.compile(r"(?:ERR )?(EXISTS|MISSING|FLAG|STATE|STALE|NOT_IN_LIST|TAKEN|TOO_LONG|"
                      r"DEP_MISSING|DEP_DONE|DEP_SELF|DEP_CYCLE|DEP_OPEN|NOT_WAITING)\b ?(.*)", re.S)
_WRONGTYPE = re.compile(r"WRONGTYPE (\S+) holds a (\w+), not a (\w+)")


def refusal(exc: BaseException) -> Refused | None:
    """The typed refusal a script error reply stands for, or None for any other error.

    >>> refusal(redis.ResponseError("STATE paused")).state
    'paused'
    >>> refusal(redis.ResponseError("STALE tt:d:worker:1 token=abc")).field
    'token'
    >>> refusal(redis.ResponseError("WRONGTYPE Operation against a key")) is None
    True
    """
    if isinstance(exc, Refused):
        return exc
    if not isinstance(exc, redis.ResponseError):
        return None
    wrong = _WRONGTYPE.match(str(exc))
    if wrong:
        return WrongType(*wrong.groups())
    m = _REFUSAL.match(str(exc))
    if not m:
        return None
    code, rest = m.groups()
    if code == "EXISTS":
        return RecordExists(code)
    if code == "MISSING":
        return RecordMissing(code)
    if code == "FLAG":
        return FlagSet(rest)
    if code == "STATE":
        return WrongState(None if rest in ("false", "nil", "") else rest)
    if code == "STALE":
        key, _, assignment = rest.partition(" ")
        name, _, value = assignment.partition("=")
        return Stale(key, name, value)
    if code == "NOT_IN_LIST":
        return NotInList(code)
    if code == "TAKEN":
        return NameTaken(rest)
    if code.startswith("DEP_") or code == "NOT_WAITING":
        return DependencyRefused(code, rest)
    return TooLong(f"TOO_LONG {rest}")


# --------------------------------------------------------------------------- changes

_OLD_MARK = "\u2063OLD\u2063"


@dataclass
class Change:
    """Arguments of one script run: the record key, the event streams and the spec."""

    key: str
    streams: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)

    def event(self, event_type: str, *, with_old_state: bool = True,
              new_state_from: str | None = None, **fields: Any) -> "Change":
        """Attach an event; its ``old_state`` is filled in by the script from the record.

        ``new_state_from`` names a hash whose state *after* the writes becomes
        ``new_state`` (for changes whose outcome depends on the state, e.g. a finished
        task leaves a paused agent paused).

        >>> Change("k", ["s"]).event("task_failed", with_old_state=False, message="x").spec["event"]["type"]
        'task_failed'
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


class Raw:
    """A value a change sends beside its JSON spec, byte for byte — for a message that may
    not be valid UTF-8 (JSON cannot carry it). The script sees it where the spec holds it.

    >>> encode_spec({"cmds": [["LREM", "k", 1, Raw(b"\\xff")]]}, "tt:d:")
    ['{"cmds": [["LREM", "k", 1, {"$": 2}]], "p": "tt:d:"}', b'\\xff']
    """

    __slots__ = ("value",)

    def __init__(self, value: bytes | str):
        self.value = value


def encode_spec(spec: dict[str, Any], prefix: str) -> list[Any]:
    """The script's ARGV for a spec: its JSON (with the town prefix ``p``), then the raw values."""
    raws: list[Any] = []

    def place(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.value)
            return {"$": len(raws) + 1}
        raise TypeError(f"cannot send {type(value).__name__} to the transition script")

    return [json.dumps({**spec, "p": prefix}, ensure_ascii=False, default=place), *raws]


class Script:
    """The transition script, registered once per client (EVALSHA with automatic load),
    for one town (``prefix``: its key prefix, so the script files changed records in the
    town's state indexes).

    Calling it runs one change and returns the script's reply; a refusal raises its
    :class:`Refused` type, any other error propagates.
    """

    def __init__(self, client: redis.Redis, prefix: str = ""):
        self._script = client.register_script(_SCRIPT_SOURCE)
        self.prefix = prefix

    def __call__(self, change: Change, client: Any = None) -> Any:
        try:
            return self._script(keys=[change.key, *change.streams],
                                args=encode_spec(change.spec, self.prefix), client=client)
        except redis.ResponseError as exc:
            why = refusal(exc)
            if why is None:
                raise
            raise why from None

    def run_many(self, client: redis.Redis, changes: Sequence[Change]) -> list[Any]:
        """Run changes in ONE pipelined round trip; each reply, :class:`Refused` or other
        error is returned in order, not raised.

        Unlike redis-py's pipelined scripts there is no SCRIPT EXISTS round trip first: if the
        server has lost the script (restart, SCRIPT FLUSH), it is loaded and the changes that
        got NOSCRIPT — which therefore did nothing — run again.
        """
        results: list[Any] = [None] * len(changes)
        todo = list(range(len(changes)))
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                c = changes[i]
                pipe.execute_command("EVALSHA", self._script.sha, 1 + len(c.streams), c.key,
                                     *c.streams, *encode_spec(c.spec, self.prefix))
            for i, result in zip(todo, pipe.execute(raise_on_error=False)):
                results[i] = refusal(result) or result
            todo = [i for i in todo if isinstance(results[i], redis.exceptions.NoScriptError)]
            if not todo or attempt == 2:
                return results
            self._script.sha = client.script_load(self._script.script)
        return results


# --------------------------------------------------------------------------- pieces


def streams(keys: Keys, *agent_ids: str | None) -> list[str]:
    """The event streams a change writes: the town's, then each named agent's (once each).

    >>> streams(Keys("d"), "a1", None, "a1")
    ['tt:d:events', 'tt:d:events:agent:a1']
    """
    seen = dict.fromkeys(a for a in agent_ids if a)
    return [keys.events, *(keys.agent_events(a) for a in seen)]


def activity(keys: Keys, aid: str, line: str) -> list[list[Any]]:
    """Commands appending one line to an agent's activity log (upstream: newest first,
    last 10 lines, for an hour).

    >>> activity(Keys("d"), "a1", "🛑 Stop requested")[0]
    ['LPUSH', 'tt:d:activity:a1', '🛑 Stop requested']
    """
    key = keys.activity(aid)
    return [["LPUSH", key, line], ["LTRIM", key, 0, ACTIVITY_MAX - 1], ["EXPIRE", key, ACTIVITY_TTL]]


def wake(keys: Keys, aid: str) -> list[list[Any]]:
    """Commands that wake the agent's idle worker now (its heartbeat thread waits on the
    wake list; one entry is enough, so the list never grows past one).

    >>> wake(Keys("d"), "a1")[0]
    ['LPUSH', 'tt:d:wake:a1', '1']
    """
    key = keys.wake(aid)  # (gone in an hour if no worker reads it: a beat looks anyway)
    return [["LPUSH", key, "1"], ["LTRIM", key, 0, 0], ["EXPIRE", key, STOP_TTL]]


def normal_state(raw: Any) -> str:
    """A state as read from a hash, in its normal spelling (as the script reads it).

    >>> normal_state("In_Flight"), normal_state(None)
    ('running', '')
    """
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    text = raw.lower() if isinstance(raw, str) else ""
    alias = TASK_STATE_ALIASES.get(text)
    return alias.value if alias is not None else text


def stop_flag(keys: Keys, aid: str) -> list[Any]:
    """The command that sets an agent's stop flag (``SET stop 1 EX 3600``, spec §2.5)."""
    return ["SET", keys.stop(aid), "1", "EX", STOP_TTL]


def task_ids_in(raws: Iterable[str], current: str | None = None) -> list[str]:
    """The task ids named by ``task_assign`` messages among ``raws`` (plus ``current``),
    sorted, unreadable entries skipped.

    >>> task_ids_in([], "3F2A0000-0000-4000-8000-000000000000")
    ['3f2a0000-0000-4000-8000-000000000000']
    """
    found = {canonical_uuid(current)} if canonical_uuid(current) else set()
    for raw in raws:
        msg = parse_message(raw)
        if msg is not None and msg.type == "task_assign" and canonical_uuid(msg.body["task_id"]):
            found.add(canonical_uuid(msg.body["task_id"]))
    return sorted(found)  # type: ignore[arg-type]


def parse_message(raw: str) -> Message | None:
    """A message from its JSON, or None when it cannot be read (never raises).

    >>> parse_message("not json") is None
    True
    """
    try:
        return Message.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None


def requeue(keys: Keys, aid: str, raws: Iterable[str], current: str | None,
            now: datetime | None = None) -> dict[str, Any]:
    """The ``requeue`` part of a change: the agent's processing list goes back to the front
    of its inbox (order kept) and its ``running`` tasks back to ``assigned`` — in-flight
    work of a worker that is gone, to be done again (at-least-once)."""
    return {"src": keys.processing(aid), "dst": keys.inbox(aid), "agent": aid,
            "tasks": [keys.task(t) for t in task_ids_in(raws, current)],
            "running": spellings([_T.RUNNING]), "now": hash_ts(now or utcnow())}


# --------------------------------------------------------------------------- agent changes


def agent_change(keys: Keys, aid: str, action: str, *, message: str,
                 fields: dict[str, str] | None = None, cmds: Sequence[list[Any]] = (),
                 delete: Sequence[str] = (), parent_id: str | None = None,
                 guards: Sequence[list[Any]] = ()) -> Change:
    """One rule of :data:`AGENT_RULES` applied to an agent, with its event.

    >>> agent_change(Keys("d"), "a1", "kill", message="x").spec["set"]["state"]
    'stopped'
    """
    rule = AGENT_RULES[action]
    now = utcnow()
    spec: dict[str, Any] = {"require": True, "from": rule.sources,
                            "set": {"state": rule.to.value, "last_heartbeat": hash_ts(now),
                                    **(fields or {})},
                            "cmds": [*cmds, *wake(keys, aid)]}
    if delete:
        spec["del"] = list(delete)
    if guards:
        spec["guards"] = list(guards)
    change = Change(keys.agent(aid), streams(keys, aid, parent_id), spec)
    if rule.event:
        change.event(rule.event, agent_id=aid, new_state=rule.to.debug_name, message=message,
                     timestamp=now)
    return change


def spawn_agent(keys: Keys, aid: str, name: str, *, record: dict[str, str], fresh: bool,
                parent_id: str | None, message: str) -> Change:
    """Create an agent record (``fresh``) or bring a dead one back with ``record``'s fields,
    pointing the name index at it — refused if a live agent has the name."""
    rule = AGENT_RULES["spawn"]
    now = utcnow()
    spec: dict[str, Any] = ({"absent": True} if fresh else {"require": True, "from": rule.sources})
    spec.update(set=record,
                claim={"key": keys.names, "name": name, "id": aid, "prefix": keys.agent(""),
                       "dead": spellings(TERMINAL_AGENT_STATES)},
                cmds=[["DEL", keys.stop(aid)], *activity(keys, aid, "🐣 Spawned")])
    change = Change(keys.agent(aid), streams(keys, aid, parent_id), spec)
    return change.event(rule.event, with_old_state=False, agent_id=aid, message=message,
                        new_state="Starting", parent_agent_id=parent_id,
                        child_agent_id=aid if parent_id else None, timestamp=now)


def prune_agent(keys: Keys, aid: str, name: str, *, only_dead: bool = True) -> Change:
    """Delete an agent and its mailboxes (only if still dead when it runs, unless not
    ``only_dead``)."""
    spec: dict[str, Any] = {"require": True,
                            "cmds": [["DEL", keys.agent(aid), keys.inbox(aid), keys.urgent(aid),
                                      keys.activity(aid), keys.stop(aid), keys.processing(aid),
                                      keys.worker(aid), keys.notes(aid), keys.wake(aid)],
                                     ["HDEL", keys.names, name]]}
    if only_dead:
        spec["from"] = AGENT_RULES["prune"].sources
    return Change(keys.agent(aid), [], spec)


def recover_agent(keys: Keys, aid: str, name: str, *, why: str, guards: Sequence[list[Any]],
                  ours: bool, raws: Sequence[str] = (), current: str | None = None) -> Change:
    """A dead worker's agent becomes ``stopped``; with ``ours`` (one of our workers) its
    token is revoked and its in-flight work put back (:func:`requeue`)."""
    rule = AGENT_RULES["recover"]
    spec: dict[str, Any] = {"require": True, "from": rule.sources, "guards": list(guards),
                            "set": {"state": rule.to.value},
                            "cmds": activity(keys, aid, f"🔄 Recovered (orphaned): {why}")}
    if ours:
        spec.update({"del": ["current_task"], "requeue": requeue(keys, aid, raws, current),
                     "cmds": [["HDEL", keys.worker(aid), "token"], *spec["cmds"]]})
    change = Change(keys.agent(aid), streams(keys, aid), spec)
    return change.event(rule.event, agent_id=aid, new_state=rule.to.debug_name,
                        message=f"Agent {name} recovered: {why}")


# --------------------------------------------------------------------------- task changes


def assign(keys: Keys, aid: str, task: Task, name_guard: str | None = None) -> Change:
    """Create an ``assigned`` task and queue its ``task_assign`` message (spec §7.6);
    ``name_guard``: only if the agent still has that name (a cached lookup)."""
    now = task.updated_at
    # Both ids are canonical already, so skip Message.new's re-validation: it was a third
    # of assign_many's Python time (benchmarks/bench_core.py).
    msg = Message(id=str(uuid.uuid4()), sender=SUPERVISOR_ID, to=aid, type="task_assign",
                  body={"task_id": task.id}, created_at=now)
    spec: dict[str, Any] = {"absent": True, "set": task.to_hash(),
                            "cmds": [["RPUSH", keys.inbox(aid), msg.to_json()]]}
    if name_guard is not None:
        spec["guards"] = [[keys.agent(aid), "name", name_guard]]
    change = Change(keys.task(task.id), streams(keys, aid), spec)
    return change.event("task_assigned", with_old_state=False, agent_id=aid, task_id=task.id,
                        new_state="Assigned", message=f"Task assigned: {task.summary(80)}",
                        timestamp=now)


def backlog_add(keys: Keys, task: Task) -> Change:
    """Create a ``pending`` task at the end of the backlog."""
    change = Change(keys.task(task.id), streams(keys), {
        "absent": True, "set": task.to_hash(), "cmds": [["RPUSH", keys.backlog, task.id]]})
    return change.event(TASK_RULES["to_backlog"].event, with_old_state=False, task_id=task.id,
                        new_state="Pending", message=f"Task added to backlog: {task.summary(80)}",
                        timestamp=task.created_at)


def claim(keys: Keys, tid: str, aid: str) -> Change:
    """Take a task off the backlog (only if it is still there) and assign it."""
    rule = TASK_RULES["claim"]
    now = utcnow()
    msg = Message.task_assign(tid, sender=SUPERVISOR_ID, to=aid)
    change = Change(keys.task(tid), streams(keys, aid), {
        "require": True, "from": rule.sources,
        "in_list": {"key": keys.backlog, "value": tid},
        "set": {"state": rule.to.value, "assigned_to": aid, "updated_at": hash_ts(now)},
        "cmds": [["RPUSH", keys.inbox(aid), msg.to_json()]]})
    return change.event(rule.event, agent_id=aid, task_id=tid, new_state="Assigned",
                        message="Task claimed from backlog", timestamp=now)


def backlog_remove(keys: Keys, tid: str) -> Change:
    """Take a task off the backlog and delete it — only if it is queued (a task that is
    not in the backlog is never deleted)."""
    return Change(keys.task(tid), [], {
        "require": True, "in_list": {"key": keys.backlog, "value": tid},
        "cmds": [["DEL", keys.task(tid)]]})


def finish_task(keys: Keys, task: Task, action: str, fields: dict[str, str], *, message: str,
                count_done: bool = False, cmds: Sequence[list[Any]] = ()) -> Change:
    """Complete, fail or cancel a task by hand (``ttnb task complete``): the assignee's
    ``current_task`` pointer is cleared and, for a completion, its counter bumped — only
    if the task is still assigned to whom the caller saw (else :class:`Stale`)."""
    rule = TASK_RULES[action]
    now = utcnow()
    spec: dict[str, Any] = {"require": True, "from": rule.sources,
                            "set": {"state": rule.to.value, "updated_at": hash_ts(now), **fields},
                            "guards": [[keys.task(task.id), "assigned_to", task.assigned_to or ""]],
                            "cmds": list(cmds)}
    if task.assigned_to:
        spec["companion"] = {"key": keys.agent(task.assigned_to), "clear_current": task.id}
        if count_done:
            spec["companion"]["incr"] = "tasks_completed"
    change = Change(keys.task(task.id), streams(keys, task.assigned_to), spec)
    if rule.event:
        change.event(rule.event, agent_id=task.assigned_to, task_id=task.id,
                     new_state=rule.to.debug_name, message=message, timestamp=now)
    return change


def retry_task(keys: Keys, task: Task) -> Change:
    """A failed or cancelled task goes back to ``assigned`` for the agent it was assigned
    to, with a new ``task_assign`` message in that agent's inbox (same task id); its
    result and times are cleared — only if it is still assigned to that agent.

    >>> t = Task.new("x"); t.assigned_to = "3f2a0000-0000-4000-8000-000000000000"
    >>> retry_task(Keys("d"), t).spec["from"]
    ['failed', 'cancelled']
    """
    rule = TASK_RULES["retry"]
    aid = task.assigned_to or ""
    now = utcnow()
    msg = Message(id=str(uuid.uuid4()), sender=SUPERVISOR_ID, to=aid, type="task_assign",
                  body={"task_id": task.id}, created_at=now)
    change = Change(keys.task(task.id), streams(keys, aid), {
        "require": True, "from": rule.sources,
        "guards": [[keys.task(task.id), "assigned_to", aid]],
        "set": {"state": rule.to.value, "updated_at": hash_ts(now)},
        "del": ["result", "started_at", "completed_at"],
        "cmds": [["RPUSH", keys.inbox(aid), msg.to_json()]]})
    return change.event(rule.event, agent_id=aid, task_id=task.id, new_state="Assigned",
                        message=f"Task retried: {task.summary(80)}", timestamp=now)


def task_companions(keys: Keys, tid: str) -> list[str]:
    """The keys that belong to one task beside its record: its output log and line count,
    run options, usage, and workflow records (what goes when the task goes).

    >>> task_companions(Keys("d"), "t1")[:3]
    ['tt:d:tasklog:t1', 'tt:d:tasklog-n:t1', 'tt:d:taskopts:t1']
    """
    return [keys.task_log(tid), keys.task_log_count(tid), keys.taskopts(tid), keys.usage(tid),
            keys.deps(tid), keys.deps_open(tid), keys.dependents(tid), keys.gate(tid)]


def archive_tasks(keys: Keys, batch: Sequence[tuple[str, str]], states: Iterable[TaskState]) -> Change:
    """Delete a batch of finished tasks with the keys beside them (:func:`task_companions`;
    moved to the town's archive file first, :mod:`.archive`) — all or none: refused
    (:class:`Stale`) unless every one is still in one of ``states`` and unchanged since it
    was copied (``batch``: ``(task id, updated_at as read)``; an absent ``updated_at`` is
    ``""``). One ``tasks_archived`` event for the batch. (A finished task releases or
    cancels what waits for it when it finishes, so nothing waits for it any more.)

    >>> c = archive_tasks(Keys("d"), [("t1", "2026-01-01T00:00:00+00:00")], [TaskState.COMPLETED])
    >>> c.spec["guards"][0], c.spec["cmds"][0][:3]
    (['tt:d:task:t1', 'state', ['completed']], ['DEL', 'tt:d:task:t1', 'tt:d:tasklog:t1'])
    """
    wanted = [TaskState(s).value for s in states]
    guards: list[list[Any]] = []
    for tid, updated in batch:
        guards += [[keys.task(tid), "state", wanted], [keys.task(tid), "updated_at", updated]]
    ids = [tid for tid, _ in batch]
    cmds: list[list[Any]] = [["DEL", keys.task(t), *task_companions(keys, t)] for t in ids]
    cmds += [["ZREM", keys.deps_index, *ids], ["ZREM", keys.gates, *ids], ["SREM", keys.deps_watched, *ids],
             ["SREM", keys.tasks_with_opts, *ids], ["SREM", keys.tasks_with_usage, *ids]]
    change = Change(keys.task(batch[0][0]), streams(keys), {"require": True, "guards": guards, "cmds": cmds})
    return change.event("tasks_archived", with_old_state=False,
                        message=f"{len(batch)} finished task(s) archived")


def task_to_backlog(keys: Keys, tid: str, owner: str, *, message: str,
                    take_from: tuple[str, str] | None = None) -> Change:
    """An unfinished task of a dead agent goes back to the backlog as ``pending`` with no
    assignee (``take_from``: the list and message it is taken out of, atomically)."""
    rule = TASK_RULES["to_backlog"]
    spec: dict[str, Any] = {"require": True, "from": rule.sources,
                            "guards": [[keys.task(tid), "assigned_to", owner]],
                            "set": {"state": rule.to.value, "updated_at": hash_ts(utcnow())},
                            "del": ["assigned_to", "started_at"],
                            "cmds": [["RPUSH", keys.backlog, tid]]}
    if take_from is not None:
        spec["in_list"] = {"key": take_from[0], "value": take_from[1]}
    change = Change(keys.task(tid), streams(keys, owner), spec)
    return change.event(rule.event, task_id=tid, agent_id=owner, new_state="Pending", message=message)


# --------------------------------------------------------------------------- workflows
# Tasks that wait for other tasks, and gates (core/workflows.py). The script keeps the
# deps:* keys and releases or cancels waiting tasks itself ("workflows" in transition.lua),
# whichever change finishes their dependencies; these builders only start and end a wait.

WAIT_KINDS = ("agent", "backlog", "gate")


def _ids_text(ids: Sequence[str], limit: int = 5) -> str:
    """``3f2a, 9c1e and 12 more``: short ids for an event message (bounded).

    >>> _ids_text(["3f2a0000", "9c1e0000"])
    '3f2a, 9c1e'
    """
    shown = ", ".join(i[:4] for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def wait_task(keys: Keys, task: Task, kind: str, after: Sequence[str], *, agent_id: str | None = None,
              name_guard: str | None = None) -> Change:
    """Create a ``pending`` task (no assignee, not in the backlog) that waits for the tasks
    ``after`` (canonical ids, in order). When they are all completed the script releases
    it: ``kind`` ``agent`` → ``assigned`` to ``agent_id`` with its ``task_assign``
    message; ``backlog`` → appended to the backlog; ``gate`` → it waits for a person
    (:func:`decide_gate`). Released in this same run when none is open.

    >>> c = wait_task(Keys("d"), Task.new("Review"), "gate", [])
    >>> c.spec["wait"]["kind"], c.spec["set"]["state"]
    ('gate', 'pending')
    """
    if kind not in WAIT_KINDS:
        raise ValueError(f"kind must be one of {WAIT_KINDS}, not {kind!r}")
    now = task.created_at
    fields = {"kind": kind, "after": json.dumps(list(after), separators=(",", ":")),
              "created_at": hash_ts(now)}
    wait: dict[str, Any] = {"task": task.id, "after": list(after), "new": True, "kind": kind,
                            "fields": fields}
    if kind == "agent":
        if not agent_id:
            raise ValueError("a task of kind 'agent' needs agent_id")
        fields.update({"agent": agent_id, "from": SUPERVISOR_ID, "msg_id": str(uuid.uuid4())})
        wait["agent"] = agent_id
    spec: dict[str, Any] = {"absent": True, "set": task.to_hash(), "wait": wait, "cmds": []}
    if kind == "gate":
        spec["cmds"] = [["HSET", keys.gate(task.id), "created_at", hash_ts(now)],
                        ["ZADD", keys.gates, f"{now.timestamp() * 1000:.3f}", task.id]]
    if name_guard is not None and agent_id:
        spec["guards"] = [[keys.agent(agent_id), "name", name_guard]]
    waits = _ids_text(list(after)) if after else "a person"
    what = "Gate" if kind == "gate" else "Task"
    change = Change(keys.task(task.id), streams(keys, agent_id), spec)
    return change.event("task_waiting", with_old_state=False, agent_id=agent_id, task_id=task.id,
                        new_state="Pending", message=f"{what} waits for {waits}: {task.summary(80)}",
                        timestamp=now)


def add_dependencies(keys: Keys, tid: str, after: Sequence[str]) -> Change:
    """More dependencies for a task that still waits (refused with ``NOT_WAITING`` when it
    was released, decided or finished, ``DEP_CYCLE`` when one of them waits for it)."""
    change = Change(keys.task(tid), streams(keys), {
        "require": True, "wait": {"task": tid, "after": list(after), "new": False}})
    return change.event("task_waiting", with_old_state=False, task_id=tid, new_state="Pending",
                        message=f"Task {tid[:4]} now also waits for {_ids_text(list(after))}")


def decide_gate(keys: Keys, gate: Task, *, approve: bool, note: str | None,
                inform: Sequence[str] = ()) -> Change:
    """Approve a gate (``completed``: the tasks waiting for it go on; refused with
    ``DEP_OPEN`` while it still waits for its own dependencies) or reject it (``failed``
    with the note: the tasks waiting for it are cancelled), recorded in its gate hash.
    A rejection's note goes to the agents ``inform`` as an informational message."""
    rule = TASK_RULES["complete" if approve else "fail"]
    now = utcnow()
    stamp = hash_ts(now)
    decision = "approved" if approve else "rejected"
    result = (note or "Approved") if approve else f"Rejected: {note}"
    cmds: list[list[Any]] = [["HSET", keys.gate(gate.id), "decision", decision, "note", note or "",
                              "decided_at", stamp]]
    text = f"Gate {gate.short_id} ({gate.summary(60)}) {decision}" + (f": {note}" if note else "")
    for aid in dict.fromkeys(inform):
        msg = Message(id=str(uuid.uuid4()), sender=SUPERVISOR_ID, to=aid, type="informational",
                      body={"summary": text}, created_at=now)
        cmds.append(["RPUSH", keys.inbox(aid), msg.to_json()])
    spec: dict[str, Any] = {"require": True, "from": spellings([TaskState.PENDING]),
                            "guards": [[keys.deps(gate.id), "kind", "gate"]],
                            "set": {"state": rule.to.value, "result": result, "completed_at": stamp,
                                    "updated_at": stamp},
                            "cmds": cmds}
    if approve:
        spec["deps_done"] = gate.id
    change = Change(keys.task(gate.id), streams(keys, *inform), spec)
    return change.event(rule.event, task_id=gate.id, new_state=rule.to.debug_name, timestamp=now,
                        message=f"Gate {decision}: " + (note.strip()[:120] if note else gate.summary(80)))


def settle_dependencies(keys: Keys, tids: Sequence[str]) -> Change:
    """Pass on the terminal state of tasks a program that knows nothing of dependencies
    finished (the sweep): their waiting tasks are released or cancelled as if this
    program had finished them; nothing happens for those already passed on.

    >>> settle_dependencies(Keys("d"), ["t1", "t2"]).spec
    {'settled': ['t1', 't2']}
    """
    return Change(keys.task(tids[0]), [], {"settled": list(tids)})


# --------------------------------------------------------------------------- the cost budget


def budget_exceeded(keys: Keys, *, usd: str, spent: float, now: datetime | None = None) -> Change:
    """Mark the town's budget (of ``usd``, as stored) reached, with a ``budget_exceeded``
    event — once: refused (STALE) when it is already marked or was changed meanwhile."""
    when = now or utcnow()
    change = Change(keys.budget, streams(keys), {
        "require": True, "guards": [[keys.budget, "exceeded_at", ""], [keys.budget, "usd", usd]],
        "set": {"exceeded_at": hash_ts(when)}})
    return change.event("budget_exceeded", with_old_state=False, timestamp=when,
                        message=f"Cost budget of ${float(usd):g} reached (${spent:.4f} recorded); "
                                "AI agents pause after their current run")


def budget_pause(keys: Keys, aid: str, name: str, *, usd: str) -> Change:
    """Pause one agent because the cost budget is reached (tinytown's ``paused``, as an
    interrupt: it finishes its current run first) — from starting, idle or working only
    (a draining agent goes on closing)."""
    change = agent_change(keys, aid, "interrupt",
                          message=f"Agent {name} paused: the ${float(usd):g} cost budget is reached",
                          cmds=activity(keys, aid, "⏸️ Paused: the cost budget is reached"))
    change.spec["from"] = spellings([_A.STARTING, _A.IDLE, _A.WORKING])
    return change
