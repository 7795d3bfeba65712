"""The worker loop behind every agent, and how workers are started and stopped.

One :class:`Worker` runs one agent: a detached process for CLI agents
(``python -m tinytown_nb.worker --town DIR --agent ID``), a daemon thread of the calling
process for function agents. Both run the same loop:

1. one *take* step (the transition script) checks the stop flag (→ ``stopped``), the
   agent's state (paused or draining: consume nothing, wait for an event) and the worker's
   token, moves the next message to the processing list — urgent list first, oldest first,
   then the inbox — and, if it is a ``task_assign`` of an open task of this agent, marks the
   task ``running`` and the agent ``working`` at once; max rounds and the idle timeout
   (``[agent] idle_timeout_secs``, per spawn; → ``draining`` → ``stopped``) are checked too;
2. with nothing to take it blocks in ``BLMOVE inbox → processing`` for ≈1 s — no
   sleep-polling, so an assignment reaches an idle worker in about a millisecond; a backlog
   agent (``backlog=True``) first claims a role-matching backlog task through the claim
   script;
3. the runner does the work while a monitor thread heartbeats (every few seconds, and every
   0.5 s while a command runs, which is also how a kill cancels it); then one step records
   ``completed`` (result) or ``failed`` (error), sets the agent back to ``idle``, counts the
   round, removes the message from the processing list — and takes (and starts) the next
   message, so a busy worker costs one round trip per task. Free-text ``task``/``query``
   messages run the same way with no task record (the result goes to the activity log);
   ``informational``/``confirmation`` messages are logged and consumed.

**Delivery is at-least-once.** A message leaves the processing list only in the step that
records its outcome. A worker that starts (or a :meth:`Town.recover` of a dead one) puts
its processing list back at the front of the inbox and its ``running`` tasks back to
``assigned``, so work interrupted by a crash is done again — possibly twice if the crash
came after the work but before the record. A task is *recorded* terminal exactly once.

Each launch gets a token stored in ``tt:{town}:worker:{aid}``; every write of the worker is
guarded by it, so a worker replaced by a restart (or declared dead by ``recover``) can
no longer write and exits.

Example::

    >>> town.spawn("dev", cli="python my_bot.py")        # starts a worker process
    >>> town.spawn("summarizer", fn=lambda t: t.description[:50])   # a worker thread
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from . import roles
from .errors import ConfigError, InvalidState
from .recovery import process_identity, requeue_spec, stop_left_command
from .models import (AgentState, Message, Task, TaskState, canonical_uuid, event_json, hash_ts,
                     json_ts, utcnow)
from .runners import TASK_LOG_MAX, CommandRunner, FunctionRunner, Outcome, Work
from .server import connect
from .transitions import AGENT_RULES, TASK_RULES, Change, states

if TYPE_CHECKING:
    from .models import Agent
    from .town import Town

log = logging.getLogger("tinytown_nb.worker")

WAIT_SECS = 1.0  # longest blocking read; bounds how late a stop flag or backlog task is seen
KILL_CHECK_SECS = 0.5  # while a command runs, how often the monitor checks it was not killed
HEARTBEAT_SECS = 5.0  # default; env TINYTOWN_HEARTBEAT_SECS overrides (recover needs > ~3 beats)
RECONNECT_SECS = 10.0  # how long a worker tries to get Redis back before it gives up
BACKLOG_SCAN = 100  # backlog entries a backlog agent looks at per idle turn
ACTIVITY_MAX, ACTIVITY_TTL = 10, 3600
NOTES_MAX = 50  # informational messages an AI CLI agent is shown at most (the newest)
_OPEN_TASK = states(s for s in TaskState if not s.is_terminal) + ["in_flight"]
_TID, _OLD, _TS, _SUM = ("\u2063TID\u2063", "\u2063OLD\u2063", "\u2063TS\u2063",
                         "\u2063SUM\u2063")  # the script fills these in
_LIVE = states(s for s in AgentState if not s.is_terminal)


class Superseded(Exception):
    """Another worker took over this agent (restart, replace) or its record is gone."""


class _Refused(Exception):
    """The agent may not start new work now (paused, draining, stopped)."""


class _TaskChanged(Exception):
    """The task changed between reading it and starting it."""


class Worker:
    """Runs one agent until it is stopped; see the module docstring.

    >>> Worker(town, agent.id, FunctionRunner(fn)).run()   # doctest: +SKIP
    'stopped by request'
    """

    def __init__(self, town: "Town", agent_id: str, runner: Any, *, token: str | None = None,
                 max_rounds: int | None = None, idle_timeout: float | None = None,
                 backlog: bool = False, logger: logging.Logger | None = None):
        self.town = town
        self.log = logger or log
        self.k = town.keys
        self.aid = agent_id
        self.runner = runner
        self.token = token or uuid.uuid4().hex
        self.own_token = token is None
        self.max_rounds = max_rounds or None
        self.idle_timeout = town.config.idle_timeout_secs if idle_timeout is None else idle_timeout
        self.backlog = backlog
        self.stop_event = threading.Event()  # shutdown of this process / SIGTERM
        self.heartbeat = float(os.environ.get("TINYTOWN_HEARTBEAT_SECS") or HEARTBEAT_SECS)
        self.round = 0
        self.agent_key = self.k.agent(agent_id)
        self.worker_key = self.k.worker(agent_id)
        self.processing = self.k.processing(agent_id)
        self.inbox, self.urgent = self.k.inbox(agent_id), self.k.urgent(agent_id)
        self.streams = [self.k.events, self.k.agent_events(agent_id)]
        self.r = town.redis
        self.blocking = connect(town.config.redis_url(), blocking=True)
        self._done = threading.Event()
        self._current: Work | None = None
        self._run_started = 0.0
        # (message, source, task hash, started) taken by the step that finished the last one
        self._next: tuple[str, str, list[str] | None, bool] | None = None
        self._cancel_reason: str | None = None
        self._agent: Agent | None = None
        self._start_template: dict[str, Any] | None = None
        # taken by BLMOVE (a wake-up, not yet re-taken by a step guarded by our token)
        self._loose: str | None = None
        self._notes_used = 0  # notes the running prompt shows; dropped when its run is recorded

    # ------------------------------------------------------------------ plumbing
    def _run(self, change: Change, *, beat: bool = False) -> Any:
        """Run one transition; a lost token or record means another worker owns the agent."""
        try:
            result = self.town._script(change)
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith(f"STALE {self.worker_key} ") or (
                    text == "MISSING" and change.key == self.agent_key):
                raise Superseded(text) from None
            raise
        if not beat:  # we still owned the agent after the BLMOVE: a takeover requeued it
            self._loose = None
        return result

    def _return_loose(self) -> None:
        """Superseded right after a BLMOVE (the one write not guarded by our token): put the
        message back at the front of the inbox — unless the new worker already did."""
        raw, self._loose = self._loose, None
        if raw is None:
            return
        try:
            self.town._script(Change(self.agent_key, [], {
                "in_list": {"key": self.processing, "value": raw}, "cmds": [["LPUSH", self.inbox, raw]]}))
            self.log.info("superseded after taking a message; put it back in the inbox")
        except redis.RedisError:  # NOT_IN_LIST: the new worker's start requeued it
            pass

    def _unwake(self) -> list[list[Any]]:
        """Commands that return the message a BLMOVE woke us with to the inbox's front
        (the step that runs them clears :attr:`_loose`)."""
        raw = self._loose
        return [["LREM", self.processing, 1, raw], ["LPUSH", self.inbox, raw]] if raw else []

    def _change(self, key: str | None = None, **spec: Any) -> Change:
        guards = [[self.worker_key, "token", self.token], *spec.pop("guards", [])]
        return Change(key or self.agent_key, self.streams, {"require": True, "guards": guards, **spec})

    def _activity(self, line: str) -> list[list[Any]]:
        key = self.k.activity(self.aid)
        return [["LPUSH", key, line], ["LTRIM", key, 0, ACTIVITY_MAX - 1],
                ["EXPIRE", key, ACTIVITY_TTL]]

    def _task_log(self, log_id: str, lines: list[str]) -> list[list[Any]]:
        if not lines:
            return []
        key = self.k.task_log(log_id)
        return [["RPUSH", key, *lines[-TASK_LOG_MAX:]], ["LTRIM", key, -TASK_LOG_MAX, -1]]

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> str:
        """Register, loop until stopped, return why it stopped."""
        monitor = threading.Thread(target=self._monitor, daemon=True, name=f"tt-monitor-{self.aid[:8]}")
        try:
            self._register()
            monitor.start()
            while True:
                try:
                    return self._loop()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    if self.stop_event.is_set():  # woken from a blocking read by shutdown()
                        return self._stop_quietly()
                    self.log.warning("lost Redis (%s); reconnecting", exc)
                    if not self._reconnect():
                        return "lost Redis"
                    self._register()  # whatever was in flight goes back to the inbox
        except InvalidState as why:  # stopped before we started, or while we were away
            self.log.info("not started: %s", why)
            return str(why)
        except Superseded as exc:
            self._return_loose()
            self.log.info("superseded (%s); exiting without writing", exc)
            return "superseded"
        except Exception as exc:  # a bug or a lost server: say so on the record if we can
            if self.stop_event.is_set() and isinstance(exc, redis.RedisError):
                return self._stop_quietly()  # shut down under us (town.shutdown)
            self.log.exception("worker crashed")
            self._crash(exc)
            return f"crashed: {exc}"
        finally:
            self._done.set()
            self.runner.close()
            self.blocking.close()
            self.blocking.connection_pool.disconnect()  # drop a blocked read (shutdown)
            if monitor.is_alive():
                monitor.join(timeout=2)
            if self.log is not log:  # our own log file (thread workers)
                for handler in list(self.log.handlers):
                    if getattr(handler, "tt_token", None) == self.token:
                        self.log.removeHandler(handler)
                        handler.close()

    def _stop_quietly(self) -> str:
        """Stop after a shutdown request, accepting that the server or the agent is gone."""
        try:
            return self._stop("🛑 Worker shut down")
        except (redis.RedisError, Superseded):
            self.log.info("shut down (the agent was already stopped for us)")
            return "shut down"

    def shutdown(self) -> None:
        """Ask the worker to stop now (call from another thread): a running command is
        cancelled and its task put back, then the agent becomes ``stopped``."""
        self.stop_event.set()
        self._cancel("shut down")
        self.blocking.connection_pool.disconnect()  # wakes a blocking read at once

    def supersede(self) -> None:
        """Another worker is taking over (its token is already written): stop writing and
        wake a blocked read now. A message the read took comes back through the new
        worker's start or :meth:`_return_loose`.

        >>> old_worker.supersede()   # doctest: +SKIP
        """
        self.stop_event.set()
        self.blocking.connection_pool.disconnect()

    def abandon(self, line: str = "🛑 Worker shut down; unfinished work put back") -> bool:
        """From another thread, for a worker that cannot stop in time (a Python function is
        still running): agent ``stopped``, its in-flight work back in the inbox (it will be
        done again: at-least-once), and the token revoked so the thread can no longer write.
        Returns False when the worker had already stopped (or the server is gone).

        >>> worker.abandon()   # doctest: +SKIP
        True
        """
        try:
            raws, current = (self.r.pipeline(transaction=False).lrange(self.processing, 0, -1)
                             .hget(self.agent_key, "current_task").execute())
            change = Change(self.agent_key, self.streams, {
                "require": True, "from": _LIVE, "guards": [[self.worker_key, "token", self.token]],
                "set": {"state": "stopped", "last_heartbeat": hash_ts(utcnow())},
                "del": ["current_task"], "requeue": requeue_spec(self.town, self.aid, raws, current),
                "cmds": [["HDEL", self.worker_key, "token"], *self._activity(line)]})
            change.event(AGENT_RULES["stopped"].event, agent_id=self.aid, new_state="Stopped",
                         message=f"Agent {self._agent.name if self._agent else self.aid}: {line[2:]}")
            self.town._script(change)
        except redis.RedisError:
            return False
        self.log.info("%s", line)
        return True

    def _reconnect(self) -> bool:
        deadline = time.monotonic() + RECONNECT_SECS
        while time.monotonic() < deadline:
            if self.stop_event.wait(0.5):
                return False
            try:
                return bool(self.r.ping())
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        return False

    def _register(self) -> None:
        """Claim the agent: worker hash, put back unfinished work, ``starting`` → ``idle``."""
        self._next = None  # (after a reconnect) whatever was taken goes back with the rest
        pipe = self.r.pipeline(transaction=False)
        pipe.lrange(self.processing, 0, -1)
        pipe.hget(self.agent_key, "current_task")
        raws, current = pipe.execute()
        tasks = {current} if canonical_uuid(current) else set()
        for raw in raws:
            msg = _parse(raw)
            if msg is not None and msg.type == "task_assign" and canonical_uuid(msg.body["task_id"]):
                tasks.add(canonical_uuid(msg.body["task_id"]))
        now = hash_ts(utcnow())
        info = {"pid": os.getpid(), "host": socket.gethostname(), "kind": self.runner.kind,
                "started_at": now, "token": self.token}
        change = Change(self.agent_key, self.streams, {
            "require": True, "from": _LIVE,
            "guards": [] if self.own_token else [[self.worker_key, "token", self.token]],
            "set": {"last_heartbeat": now, "last_active_at": now}, "del": ["current_task"],
            "companion": {"key": self.agent_key, "set_from": ["starting", "idle", "working", "draining"],
                          "set": {"state": "idle"}},
            "requeue": {"src": self.processing, "dst": self.inbox, "agent": self.aid,
                        "tasks": [self.k.task(t) for t in sorted(tasks)], "now": now},
            "cmds": [["HSET", self.worker_key, *[x for kv in info.items() for x in kv]],
                     *self._activity(f"🚀 Worker started (pid {os.getpid()})"
                                     + (f"; {len(raws)} unfinished message(s) put back" if raws else ""))]})
        change.event("agent_state_changed", agent_id=self.aid, new_state_from=self.agent_key,
                     message=f"Worker started ({self.runner.kind}, pid {os.getpid()})")
        try:
            self._run(change)
        except redis.ResponseError as exc:
            if str(exc).startswith("STATE"):
                raise InvalidState(f"Agent {self.aid} is {str(exc).split()[1]}; restart it with "
                                   "town.restart(...) instead of starting a worker.") from None
            raise
        self._agent = self.town.agent(self.aid)
        self.log.info("worker %s started for agent %s (%s)", self.token[:8], self._agent.name, self.runner.kind)

    def _loop(self) -> str:
        last_active = time.monotonic()
        # ONE call per message: checks the stop flag, the state and our token, and moves the
        # next message (urgent first, oldest first) to the processing list with its task
        base = self._change(no_keys=[self.k.stop(self.aid)],
                            **{"from": states(AGENT_RULES["work"].allowed_from)})
        while True:
            if self.stop_event.is_set():
                return self._stop("🛑 Worker shut down")
            if self.max_rounds and self.round >= self.max_rounds:
                return self._stop(f"🏁 Max rounds ({self.max_rounds}) reached")
            if self._next is not None:  # taken by the step that finished the previous one
                (raw, source, task_hash, started), self._next = self._next, None
                self._handle(raw, source, task_hash, started)
                last_active = time.monotonic()
                continue
            try:
                # the message a BLMOVE woke us with goes back to the front of the inbox in
                # the same step, so the take sees urgent messages that came meanwhile
                take = Change(base.key, base.streams,
                              {**base.spec, **self._take_spec(), "cmds": self._unwake()})
                _, raw, which, task_hash, started = self._run(take)
            except redis.ResponseError as exc:
                text = str(exc)
                if self._loose is not None:  # refused before any write: still ours to return
                    self._put_back(self._loose, "inbox")
                if text.startswith("FLAG"):
                    return self._stop("🛑 Stopped by request", clear_flag=True)
                if not text.startswith("STATE"):
                    raise
                state = text.split()[1]
                if state in ("stopped", "error", "cold", "false"):
                    return f"agent is {state}"  # stopped under us (recover): nothing of ours to write
                if state == "draining":  # closed: the current work is done (even if the stop
                    return self._stop("🛑 Stopped after draining", clear_flag=True)  # flag expired)
                self._wait_for_event(WAIT_SECS)  # paused: take nothing new
                last_active = time.monotonic()
                continue
            if not raw:
                if self.backlog and self._claim_backlog():
                    continue
                # wait for the inbox (an urgent message is seen within WAIT_SECS); what this
                # takes is only a wake-up: the next take step re-takes it, in order and checked
                self._loose = self.blocking.blmove(
                    self.inbox, self.processing, WAIT_SECS, "LEFT", "RIGHT")
                if self._loose is None and self.idle_timeout and \
                        time.monotonic() - last_active >= self.idle_timeout:
                    reason = self._idle_out()
                    if reason:
                        return reason
                    last_active = time.monotonic()
                continue
            self._handle(raw, "urgent" if which == 1 else "inbox", task_hash, started)
            last_active = time.monotonic()

    def _stop(self, line: str, *, clear_flag: bool = False) -> str:
        now = hash_ts(utcnow())
        back = []
        if self._next is not None:  # taken but not run: back where it came from
            (raw, source, task_hash, started), self._next = self._next, None
            if started:
                task = Task.from_hash(dict(zip(task_hash[::2], task_hash[1::2])))
                self._requeue(raw, task, Outcome(False, "not run", []))
            else:
                back = [["LREM", self.processing, 1, raw], self._back_cmd(raw, source)]
        back += self._unwake()
        change = self._change(set={"state": "stopped", "last_heartbeat": now},
                              cmds=[*back, *([["DEL", self.k.stop(self.aid)]] if clear_flag else []),
                                    *self._activity(f"Round {self.round + 1}: {line}")])
        change.event(AGENT_RULES["stopped"].event, agent_id=self.aid, new_state="Stopped",
                     message=f"Agent {self._agent.name}: {line[2:]}")
        self._run(change)
        self.log.info("%s", line)
        return line[2:].strip()

    def _idle_out(self) -> str | None:
        """``idle`` → ``draining`` → ``stopped``; None if the state changed meanwhile."""
        secs = self.idle_timeout
        line = f"🔻 Idle timeout reached after {secs:g}s; draining and stopping"
        change = self._change(**{"from": ["idle", "starting"]}, set={"state": "draining"},
                              cmds=self._activity(line))
        change.event(AGENT_RULES["drain"].event, agent_id=self.aid, new_state="Draining",
                     message=f"Agent {self._agent.name}: idle for {secs:g}s")
        try:
            self._run(change)
        except redis.ResponseError:
            return None  # state changed under us (work, pause): the loop sees it next turn
        return self._stop("🛑 Stopped after idle timeout")

    def _crash(self, exc: BaseException) -> None:
        try:
            change = self._change(**{"from": _LIVE}, set={"state": "error"},
                                  cmds=self._activity(f"❌ Worker crashed: {type(exc).__name__}: {exc}"[:200]))
            change.event("agent_failed", agent_id=self.aid, new_state="Error",
                         message=f"Worker crashed: {type(exc).__name__}: {exc}"[:300])
            self._run(change)
        except Exception:  # noqa: BLE001 — best effort: the server may be what failed
            pass

    def _wait_for_event(self, secs: float) -> None:
        """Block until something happens to this agent (e.g. resume) or ``secs`` pass."""
        stream = self.k.agent_events(self.aid)
        self.blocking.xread({stream: "$"}, block=int(secs * 1000), count=1)

    # ------------------------------------------------------------------ monitor thread
    def _monitor(self) -> None:
        """Heartbeat every few seconds for the whole life of the worker (long tasks
        included), and every ``KILL_CHECK_SECS`` while a run is in progress: a kill (state
        ``stopped``) or a takeover then cancels the running command within that time."""
        last_beat = time.monotonic()
        while not self._done.wait(min(self.heartbeat, KILL_CHECK_SECS)):
            now = time.monotonic()
            running = self._current is not None and now - self._run_started >= KILL_CHECK_SECS
            if not running and now - last_beat < self.heartbeat:
                continue
            last_beat = now
            try:
                state = self._beat()
            except (redis.RedisError, OSError):
                continue
            if state is None:
                self._cancel("superseded")
            elif state == "stopped":
                self._cancel("killed")

    def _beat(self) -> str | None:
        # a command's identity goes on record while it runs: if this worker dies, whoever
        # recovers or restarts the agent stops it (recovery.stop_left_command)
        pid = self.runner.pid if self._current is not None else None
        ident = process_identity(pid) if pid else None
        change = self._change(set={"last_heartbeat": hash_ts(utcnow())},
                              cmds=[["HSET", self.worker_key, "command", ident]] if ident else [])
        try:
            return self._run(change, beat=True)
        except Superseded:
            return None

    def _cancel(self, reason: str) -> None:
        if self._current is not None and self._cancel_reason is None:
            self._cancel_reason = reason
            self.log.info("cancelling the running work: %s", reason)
            self.runner.cancel()

    # ------------------------------------------------------------------ messages
    def _handle(self, raw: str, source: str, task_hash: list[str] | None = None,
                started: bool = False) -> None:
        msg = _parse(raw)
        if msg is None:
            self._ack(raw, f"⚠️ Skipped an unreadable message: {raw[:60]}")
        elif msg.type == "task_assign":
            self._do_task(raw, source, msg, task_hash, started)
        elif msg.type == "shutdown":
            self.stop_event.set()  # first: the acking step then takes (and starts) nothing
            self._ack(raw, "🛑 Shutdown message received")
        elif msg.type in ("status_request", "ping"):
            reply = (Message.new("status_response", {"state": "idle", "current_task": None},
                                 sender=self.aid, to=msg.sender, correlation_id=msg.id)
                     if msg.type == "status_request" else
                     Message.new("pong", sender=self.aid, to=msg.sender, correlation_id=msg.id))
            self._ack(raw, f"↩️ Answered {msg.type} from {msg.sender[:8]}",
                      [["RPUSH", self.k.inbox(msg.sender), reply.to_json()]])
        elif msg.actionable:
            self._do_text(raw, source, msg)
        else:
            self._ack(raw, f"ℹ️ {msg.category}: {msg.summary(100)}", self._note(msg))

    def _note(self, msg: Message) -> list[list[Any]]:
        """An AI CLI agent is shown informational messages and confirmations in its next
        prompt (spec §7.3): kept in its notes list, in the step that consumes them."""
        if not getattr(self.runner, "preset", False):
            return []
        key = self.k.notes(self.aid)
        return [["RPUSH", key, f"{msg.category}|{msg.summary(100)}"], ["LTRIM", key, -NOTES_MAX, -1]]

    def _notes_shown(self) -> list[list[Any]]:
        """Drop the notes the finished run's prompt showed (newer ones stay)."""
        return [["LTRIM", self.k.notes(self.aid), self._notes_used, -1]] if self._notes_used else []

    def _ack(self, raw: str, line: str, extra: list[list[Any]] | None = None) -> None:
        self._run_taking(self._change(cmds=[["LREM", self.processing, 1, raw],
                                            *self._activity(line), *(extra or [])],
                                      **self._take_next()))

    def _back_cmd(self, raw: str, source: str) -> list[Any]:
        return ["RPUSH", self.urgent, raw] if source == "urgent" else ["LPUSH", self.inbox, raw]

    def _put_back(self, raw: str, source: str) -> None:
        """Return an untouched message to where it was taken from."""
        self._run(self._change(cmds=[["LREM", self.processing, 1, raw], self._back_cmd(raw, source)]))

    def _take_spec(self, **conditions: Any) -> dict[str, Any]:
        """The ``take`` part of a step: the next message (urgent first) moves to the
        processing list, and a task assigned to us starts at once — one round trip."""
        when = utcnow()
        now = hash_ts(when)
        if self._start_template is None:
            self._start_template = self._start_event()
        start = {"agent": self.aid, "agent_key": self.agent_key, "ts": json_ts(when),
                 "agent_from": states(AGENT_RULES["work"].allowed_from),
                 "agent_set": {"state": "working", "last_heartbeat": now, "last_active_at": now},
                 "task_set": {"state": "running", "started_at": now, "updated_at": now},
                 "open": states(TASK_RULES["run"].allowed_from) + ["in_flight"],
                 "event": self._start_template}
        return {"take": {"lists": [[self.urgent, "RIGHT"], [self.inbox, "LEFT"]],
                         "dst": self.processing, "task_prefix": self.k.task(""), "start": start,
                         **conditions}}

    def _start_event(self) -> dict[str, Any]:
        """The start event as a template the script fills: task id, old state, timestamp."""
        stamp = datetime(2000, 1, 1, tzinfo=timezone.utc)
        text = event_json(AGENT_RULES["work"].event, agent_id=self.aid, task_id=_TID,
                          old_state=_OLD, new_state="Working", message=f"Working on task {_SUM}",
                          timestamp=stamp).replace(json_ts(stamp), _TS)
        pieces = re.split(f"({_TID}|{_OLD}|{_TS}|{_SUM})", text)
        names = {_TID: "tid", _OLD: "old", _TS: "ts", _SUM: "summary"}
        return {"type": AGENT_RULES["work"].event, "parts": pieces[::2],
                "fill": [names[m] for m in pieces[1::2]]}

    def _take_next(self) -> dict[str, Any]:
        """The ``take`` part a finishing step adds: the next message comes back (and starts)
        in the same round trip, unless the agent may not start it now (paused, draining,
        stopped, stop flag, last round done)."""
        if self.stop_event.is_set() or (self.max_rounds and self.round >= self.max_rounds):
            return {}
        return self._take_spec(if_key=self.agent_key, if_states=["idle", "starting"],
                               unless_keys=[self.k.stop(self.aid)])

    def _run_taking(self, change: Change) -> Any:
        """Run a finishing step; keep the message it took (if any) for the next turn."""
        result = self._run(change)
        if "take" in change.spec and result[1]:
            self._next = (result[1], "urgent" if result[2] == 1 else "inbox", result[3],
                          bool(result[4]))
        return result

    def _do_task(self, raw: str, source: str, msg: Message, task_hash: list[str] | None = None,
                 started: bool = False, _again: bool = True) -> None:
        tid = canonical_uuid(msg.body["task_id"])
        if task_hash is not None and tid == msg.body["task_id"]:  # read by the take step
            task = Task.from_hash(dict(zip(task_hash[::2], task_hash[1::2])))
        else:
            task = Task.from_hash(self.r.hgetall(self.k.task(tid))) if tid else None
        if started and task is not None:  # the take step already marked it running
            self.round += 1
            self._run_task(raw, task, msg)
            return
        why = ("has an unreadable task id" if tid is None else "names a task that does not exist"
               if task is None else f"is for a task already {task.state.value}"
               if task.state.is_terminal else "is for a task now assigned elsewhere"
               if task.assigned_to != self.aid else None)
        if why:
            self._ack(raw, f"⏭️ Skipped task_assign {str(msg.body['task_id'])[:8]}: it {why}")
            return
        try:
            self._start(task)
        except _Refused:
            self._put_back(raw, source)
            return
        except _TaskChanged:
            if _again:
                self._do_task(raw, source, msg, _again=False)  # re-read the task
            else:
                self._put_back(raw, source)
            return
        self._run_task(raw, task, msg)

    def _run_task(self, raw: str, task: Task, msg: Message) -> None:
        outcome = self._execute(Work(msg, task, self.round, self._agent,
                                     max_rounds=self.max_rounds, **self._prompt_context()))
        if outcome.cancelled:
            self._requeue(raw, task, outcome)
        else:
            self._finish(raw, task, outcome)

    def _do_text(self, raw: str, source: str, msg: Message) -> None:
        try:
            self._start(None, what=msg.summary(80))
        except (_Refused, _TaskChanged):
            self._put_back(raw, source)
            return
        outcome = self._execute(Work(msg, None, self.round, self._agent, max_rounds=self.max_rounds,
                                     **self._prompt_context()))
        if outcome.cancelled:
            self._settle(raw, f"Round {self.round}: ↩️ {msg.type} put back (run cancelled)",
                         [["LPUSH", self.inbox, raw]], count=False)
            return
        mark = "✅" if outcome.ok else "⚠️ failed:"
        first = (outcome.result.strip().splitlines() or [""])[0][:100]
        self._settle(raw, f"Round {self.round}: {mark} {first}", self._task_log(msg.id, outcome.log))

    # ------------------------------------------------------------------ steps
    def _start(self, task: Task | None, what: str = "") -> None:
        """ONE step: agent → working (+ current task), task → running."""
        now = hash_ts(utcnow())
        fields = {"state": "working", "last_heartbeat": now, "last_active_at": now}
        guards: list[list[Any]] = []
        spec: dict[str, Any] = {"from": states(AGENT_RULES["work"].allowed_from)}
        if task is not None:
            tkey = self.k.task(task.id)
            fields["current_task"] = task.id
            guards = [[tkey, "state", states(TASK_RULES["run"].allowed_from) + ["in_flight"]],
                      [tkey, "assigned_to", self.aid]]
            spec["companion"] = {"key": tkey, "set": {"state": "running", "started_at": now,
                                                      "updated_at": now}}
            what = f"task {task.short_id}: {task.summary(80)}"
        change = self._change(guards=guards, set=fields, no_keys=[self.k.stop(self.aid)], **spec)
        change.event(AGENT_RULES["work"].event, agent_id=self.aid, task_id=task.id if task else None,
                     new_state="Working", message=f"Working on {what}")
        try:
            self._run(change)
        except redis.ResponseError as exc:
            if str(exc).startswith(("STATE", "FLAG")):
                raise _Refused(str(exc)) from None
            if str(exc).startswith("STALE"):
                raise _TaskChanged(str(exc)) from None
            raise
        self.round += 1

    def _execute(self, work: Work) -> Outcome:
        self._current, self._cancel_reason = work, None
        started = self._run_started = time.monotonic()
        emit = _LiveLog(self.r, self.k.task_log(work.task.id if work.task else work.message.id))
        try:
            outcome = self.runner.run(work, emit=emit)
        finally:
            self._current = None
        if self._cancel_reason and self.runner.kind == "process":
            outcome.cancelled = True
        if emit.used:  # printed by a function: what was not pushed live yet
            outcome.log = list(emit.pending)
        verdict = "cancelled" if outcome.cancelled else "ok" if outcome.ok else "failed"
        self.log.info("round %d: %s %s in %.2fs", work.round, verdict,
                 work.task.short_id if work.task else work.message.type, time.monotonic() - started)
        return outcome

    def _finish(self, raw: str, task: Task, outcome: Outcome) -> None:
        """ONE step: task completed/failed + agent idle + counters + message off processing."""
        rule = TASK_RULES["complete" if outcome.ok else "fail"]
        now = hash_ts(utcnow())
        tkey = self.k.task(task.id)
        mark = "✅ completed" if outcome.ok else "❌ failed"
        line = f"Round {self.round}: {mark} {task.short_id}"
        incr = {"rounds_completed": 1, **({"tasks_completed": 1} if outcome.ok else {})}
        change = self._change(
            tkey, **{"from": _OPEN_TASK}, guards=[[tkey, "assigned_to", self.aid]],
            set={"state": rule.to.value, "result": outcome.result, "completed_at": now, "updated_at": now},
            companion={"key": self.agent_key, "set_from": ["working"], "incr": incr,
                       "clear_current": task.id,
                       "set": {"state": "idle", "last_active_at": now, "last_heartbeat": now}},
            cmds=[["LREM", self.processing, 1, raw], *self._activity(line),
                  *self._task_log(task.id, outcome.log), *self._notes_shown()], **self._take_next())
        verb = "completed" if outcome.ok else "failed"
        detail = task.summary(80) if outcome.ok else outcome.result.strip()[:120]
        change.event(rule.event, agent_id=self.aid, task_id=task.id, new_state=rule.to.debug_name,
                     message=f"Task {verb}: {detail}")
        try:
            self._run_taking(change)
            self._notes_used = 0
        except redis.ResponseError as exc:  # reported (ttnb task complete), cancelled or moved meanwhile
            if not str(exc).startswith(("STATE", "STALE", "MISSING")):
                raise
            now_state = self.r.hget(tkey, "state") or "gone"
            self._settle(raw, f"Round {self.round}: ✅ {task.short_id} already {now_state}",
                         self._task_log(task.id, outcome.log), task.id)

    def _settle(self, raw: str, line: str, extra: list[list[Any]], task_id: str | None = None,
                count: bool = True) -> None:
        """ONE step when there is no task record to finish: agent idle, round counted."""
        now = hash_ts(utcnow())
        change = self._change(
            companion={"key": self.agent_key, "set_from": ["working"],
                       "incr": {"rounds_completed": 1 if count else 0},
                       "set": {"state": "idle", "last_active_at": now, "last_heartbeat": now},
                       **({"clear_current": task_id} if task_id else {})},
            cmds=[["LREM", self.processing, 1, raw], *self._activity(line), *extra,
                  *(self._notes_shown() if count else [])],
            **self._take_next())
        change.event("agent_state_changed", agent_id=self.aid, task_id=task_id,
                     new_state_from=self.agent_key, message=line)
        self._run_taking(change)
        if count:
            self._notes_used = 0

    def _requeue(self, raw: str, task: Task, outcome: Outcome) -> None:
        """The run was cancelled (kill, shutdown): task back to ``assigned``, message back
        to the front of the inbox, so a restart or a reclaim does it again."""
        tkey = self.k.task(task.id)
        now = hash_ts(utcnow())
        change = self._change(
            tkey, **{"from": states(TASK_RULES["requeue"].allowed_from) + ["in_flight"]},
            guards=[[tkey, "assigned_to", self.aid]],
            set={"state": "assigned", "updated_at": now},
            companion={"key": self.agent_key, "clear_current": task.id, "set_from": ["working"],
                       "set": {"state": "idle"}},
            cmds=[["LREM", self.processing, 1, raw], ["LPUSH", self.inbox, raw],
                  *self._activity(f"Round {self.round}: ↩️ {task.short_id} put back "
                                  f"({self._cancel_reason or 'cancelled'})"),
                  *self._task_log(task.id, outcome.log)])
        try:
            self._run(change)
        except redis.ResponseError as exc:
            if not str(exc).startswith(("STATE", "STALE", "MISSING")):
                raise
            self._settle(raw, f"Round {self.round}: {task.short_id} ended while cancelling", [], task.id)

    # ------------------------------------------------------------------ backlog
    def _prompt_context(self) -> dict[str, Any]:
        """What an AI CLI's prompt shows besides its work: role-matching backlog tasks and
        the notes (informational messages, confirmations) not shown yet."""
        self._notes_used = 0
        if not getattr(self.runner, "preset", False):
            return {}
        pipe = self.r.pipeline(transaction=False)
        pipe.lrange(self.k.backlog, 0, BACKLOG_SCAN - 1).llen(self.k.backlog)
        ids, total, notes = pipe.lrange(self.k.notes(self.aid), 0, -1).execute()
        role = roles.role_for(roles.role_hint(self._agent))
        tasks = [t for t in (Task.from_hash(h) for h in self.town._hgetall_many(
            [self.k.task(i) for i in ids])) if t is not None]
        self._notes_used = len(notes)
        return {"backlog": [t for t in tasks if roles.task_matches(role, t)][:8],
                "backlog_total": total, "notes": notes}

    def _claim_backlog(self) -> bool:
        """Claim the first role-matching backlog task (atomically: the claim script takes it
        off the backlog only if it is still there, so two workers never get the same)."""
        ids = self.r.lrange(self.k.backlog, 0, BACKLOG_SCAN - 1)
        if not ids:
            return False
        role = roles.role_for(roles.role_hint(self._agent))
        for h in self.town._hgetall_many([self.k.task(i) for i in ids]):
            task = Task.from_hash(h)
            if task is None or task.state != TaskState.PENDING or not roles.task_matches(role, task):
                continue
            try:
                self.town._claim(task.id, self.aid)
                return True
            except Exception:  # noqa: BLE001 — taken by another worker first: try the next
                continue
        return False


class _LiveLog:
    """Pushes a running task's output lines to its task log at most once a second, keeping
    the last ``TASK_LOG_MAX`` lines; best effort (a lost server never fails the task)."""

    def __init__(self, r: redis.Redis, key: str):
        self.r, self.key = r, key
        self.pending: deque[str] = deque(maxlen=TASK_LOG_MAX)
        self.used = False
        self.last = time.monotonic()

    def __call__(self, line: str) -> None:
        self.pending.append(line)
        self.used = True
        if time.monotonic() - self.last >= 1.0:
            self.last = time.monotonic()
            try:
                self.r.pipeline(transaction=False).rpush(self.key, *self.pending).ltrim(
                    self.key, -TASK_LOG_MAX, -1).execute()
            except redis.RedisError:
                return  # kept for the final step
            self.pending.clear()


def _parse(raw: str) -> Message | None:
    try:
        return Message.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None


# =========================================================================== starting workers

_THREADS: dict[tuple[str, str], tuple[threading.Thread, Worker]] = {}
_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {}
_CHILDREN: list[subprocess.Popen] = []
_lock = threading.Lock()


def _town_key(town: "Town", aid: str) -> tuple[str, str]:
    return (f"{town.root}|{town.name}", aid)


def worker_options(town: "Town", aid: str) -> dict[str, Any]:
    """The options a worker was last started with (kind, max_rounds, idle_timeout, backlog)."""
    h = town.redis.hgetall(town.keys.worker(aid))
    return {"kind": h.get("kind"),
            "max_rounds": int(h["max_rounds"]) if h.get("max_rounds") else None,
            "idle_timeout": float(h["idle_timeout"]) if h.get("idle_timeout") else None,
            "backlog": h.get("backlog") == "1"}


def _prepare(town: "Town", aid: str, kind: str, max_rounds: int | None,
             idle_timeout: float | None, backlog: bool, **extra: str) -> str:
    """Write the worker hash for a new launch and return its token (first stopping a
    command the previous worker of this agent left running here)."""
    stop_left_command(town, aid)
    token = uuid.uuid4().hex
    fields = {"token": token, "kind": kind, "backlog": "1" if backlog else "0",
              "max_rounds": str(max_rounds or ""),
              "idle_timeout": "" if idle_timeout is None else f"{idle_timeout:g}", **extra}
    pipe = town.redis.pipeline(transaction=True)
    pipe.delete(town.keys.worker(aid))
    pipe.hset(town.keys.worker(aid), mapping=fields)
    pipe.execute()
    return token


def start_process_worker(town: "Town", agent: "Agent", *, max_rounds: int | None = None,
                         idle_timeout: float | None = None, backlog: bool = False) -> subprocess.Popen:
    """Launch the detached worker process of a CLI agent (it outlives this process).

    >>> start_process_worker(town, town.agent("dev"))   # doctest: +SKIP
    """
    _reap()
    token = _prepare(town, agent.id, "process", max_rounds, idle_timeout, backlog)
    logs = Path(town.root) / ".tt" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob(f"{agent.name}_round_*.log"):
        old.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "tinytown_nb.worker", "--town", str(town.root),
            "--agent", agent.id, "--token", token]
    log_path = logs / f"{agent.name}.log"
    log_path.write_bytes(b"")  # truncated per launch, then appended to (O_APPEND): a replaced
    with open(log_path, "ab") as out:  # worker still writing never leaves a hole in the file
        proc = subprocess.Popen(argv, cwd=town.root, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    with _lock:
        _CHILDREN.append(proc)
    return proc


def start_thread_worker(town: "Town", agent: "Agent", fn: Callable[..., Any] | None = None, *,
                        max_rounds: int | None = None, idle_timeout: float | None = None,
                        backlog: bool = False) -> threading.Thread:
    """Run a function agent in a daemon thread of this process; it logs to
    ``.tt/logs/<name>.log`` (never to the notebook's stderr).

    ``fn=None`` reuses the function the agent was last started with here. A worker this
    process still runs for the agent is superseded first (woken, and waited for briefly
    when it is not in the middle of a call), so it cannot keep a message the new one needs.

    >>> start_thread_worker(town, town.agent("summarizer"), lambda t: t.description[:50])  # doctest: +SKIP
    """
    key = _town_key(town, agent.id)
    fn = fn or _FUNCTIONS.get(key)
    if fn is None:
        raise ConfigError(f"Agent {agent.name!r} is a function agent started in another process; "
                          "spawn it again here with fn=... .")
    runner = FunctionRunner(fn, town)
    name = getattr(fn, "__qualname__", type(fn).__name__)
    token = _prepare(town, agent.id, "function", max_rounds, idle_timeout, backlog, function=name)
    worker = Worker(town, agent.id, runner, token=token, max_rounds=max_rounds,
                    idle_timeout=idle_timeout, backlog=backlog,
                    logger=_file_logger(town, agent, token))
    thread = threading.Thread(target=worker.run, daemon=True, name=f"tt-agent-{agent.name}")
    with _lock:
        old = _THREADS.get(key)
        _THREADS[key] = (thread, worker)
        _FUNCTIONS[key] = fn
    if old is not None and old[0].is_alive():
        old[1].supersede()  # its token is already replaced: it can only exit
        if old[1]._current is None and old[0] is not threading.current_thread():
            old[0].join(2.0)  # not running a call: it exits (returning a message) at once
    thread.start()
    return thread


def _file_logger(town: "Town", agent: "Agent", token: str) -> logging.Logger:
    """The logger of a thread worker: appends to ``.tt/logs/<name>.log`` (the handler is
    tagged with the launch token so the worker removes its own when it ends)."""
    logs = Path(town.root) / ".tt" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"tinytown_nb.worker.{agent.id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False  # never onto the notebook's stderr
    handler = logging.FileHandler(logs / f"{agent.name}.log", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.tt_token = token  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return logger


def local_thread(town: "Town", aid: str) -> threading.Thread | None:
    """The live thread running a function agent in this process, if any."""
    entry = _THREADS.get(_town_key(town, aid))
    return entry[0] if entry and entry[0].is_alive() else None


def has_function(town: "Town", aid: str) -> bool:
    """True when this process knows the function of a function agent (so it can restart it)."""
    return _town_key(town, aid) in _FUNCTIONS


def stop_local_workers(town: "Town", timeout: float = 3.0) -> None:
    """Stop this process's function-agent threads of a town: their agents become
    ``stopped``. Waits up to ``timeout`` seconds for a function still running; after that
    its agent is stopped for it and its task put back in the inbox (done again on the next
    start: at-least-once), and the thread, left to finish the call, exits without a word.

    >>> stop_local_workers(town)   # doctest: +SKIP
    """
    prefix = _town_key(town, "")[0]
    with _lock:
        mine = [(k, t, w) for k, (t, w) in _THREADS.items() if k[0] == prefix]
    for _, _, worker in mine:
        worker.shutdown()
    deadline = time.monotonic() + timeout
    for key, thread, worker in mine:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            worker.abandon()
        with _lock:
            if _THREADS.get(key, (None,))[0] is thread:
                del _THREADS[key]


def _worker_pid(town: "Town", aid: str) -> int | None:
    """The pid of a live local worker process of this agent (checked against its command line)."""
    h = town.redis.hgetall(town.keys.worker(aid))
    if h.get("kind") != "process" or h.get("host") != socket.gethostname() or not h.get("pid"):
        return None
    pid = int(h["pid"])
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"tinytown_nb.worker" not in cmdline or aid.encode() not in cmdline:
            return None
    except FileNotFoundError:
        return None
    except OSError:
        pass  # no /proc (macOS): trust the record
    return pid


def stop_process_workers(town: "Town", timeout: float = 5.0) -> list[int]:
    """SIGTERM the town's worker processes on this host and wait for them (they put their
    running work back and mark their agents ``stopped``); returns the pids signalled."""
    pids = {}
    for key in town.redis.scan_iter(match=town.keys.pattern("worker"), count=1000):
        aid = key.rsplit(":", 1)[1]
        pid = _worker_pid(town, aid)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                pids[pid] = aid
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for pid, aid in pids.items():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap()
            stop_left_command(town, aid)  # its command is now an orphan
    _reap()
    return list(pids)


def _alive(pid: int) -> bool:
    _reap()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _reap() -> None:
    with _lock:
        _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]


# =========================================================================== entry point


def run_in_foreground(town: "Town", agent: "Agent", *, max_rounds: int | None = None,
                      idle_timeout: float | None = None, backlog: bool = False) -> int:
    """Run a CLI agent's worker in this process until it stops (``ttnb spawn --foreground``,
    tt's ``--foreground``); its log goes to stdout. Ctrl-C stops it, putting running work
    back. Returns the exit status.

    >>> run_in_foreground(town, town.spawn("dev", cli="cat", start=False), max_rounds=1)   # doctest: +SKIP
    0
    """
    token = _prepare(town, agent.id, "process", max_rounds, idle_timeout, backlog)
    return main(["--town", str(town.root), "--agent", agent.id, "--token", token])


def main(argv: list[str] | None = None) -> int:
    """``python -m tinytown_nb.worker --town DIR --agent ID`` — run a CLI agent's worker.

    Options not given on the command line come from the worker hash written by ``spawn``.
    SIGTERM puts the running work back and stops the agent.
    """
    parser = argparse.ArgumentParser(prog="python -m tinytown_nb.worker", description=main.__doc__)
    parser.add_argument("--town", default=os.environ.get("TINYTOWN_TOWN_DIR", "."))
    parser.add_argument("--agent", required=True, help="agent id or name")
    parser.add_argument("--token", help="launch token written by spawn (omit when starting by hand)")
    parser.add_argument("--max-rounds", type=int)
    parser.add_argument("--idle-timeout", type=float)
    parser.add_argument("--backlog", action="store_true", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    from .town import Town  # noqa: PLC0415 — the town imports this module

    town = Town.connect(args.town)
    agent = town.agent(args.agent)
    opts = worker_options(town, agent.id) if args.token else {}
    runner = CommandRunner(town, agent, own_process=True)
    worker = Worker(town, agent.id, runner, token=args.token,
                    max_rounds=args.max_rounds if args.max_rounds is not None else opts.get("max_rounds"),
                    idle_timeout=args.idle_timeout if args.idle_timeout is not None else opts.get("idle_timeout"),
                    backlog=args.backlog if args.backlog is not None else opts.get("backlog", False))

    def on_term(signum: int, frame: Any) -> None:  # work outside the signal context (locks)
        threading.Thread(target=worker.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # Ctrl-C of a foreground worker: same clean stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reason = worker.run()
    log.info("worker exiting: %s", reason)
    return 1 if reason.startswith("crashed") else 0
