"""The loop behind every agent: take a message, run it, record the outcome.

One :class:`Worker` runs one agent: in a detached process for CLI agents
(``python -m tinytown_nb.worker --town DIR --agent ID``), in a daemon thread of the calling
process for function agents. Both run the same loop:

1. one *take* step (:mod:`.steps`) checks the stop flag (→ ``stopped``), the agent's state
   (paused or draining: consume nothing, wait for an event) and the worker's token, moves
   the next message to the processing list — urgent list first, oldest first, then the
   inbox — and, if it is a ``task_assign`` of an open task of this agent, marks the task
   ``running`` and the agent ``working`` at once; max rounds and the idle timeout
   (``[agent] idle_timeout_secs``, per spawn; → ``draining`` → ``stopped``) are checked too;
2. with nothing to take it blocks in ``BLMOVE inbox → processing`` for ≈1 s — no
   sleep-polling, so an assignment reaches an idle worker in about a millisecond; what
   that read takes is only a wake-up, re-taken in order by the next take step. A backlog
   agent (``backlog=True``) first claims a role-matching backlog task;
3. the runner does the work while the heartbeat thread beats (every few seconds, and
   every 0.5 s while a command runs, which is also how a kill cancels it); then one step
   records ``completed`` (result) or ``failed`` (error), sets the agent back to ``idle``,
   counts the round, removes the message from the processing list — and takes (and
   starts) the next message, so a busy worker costs one round trip per task. Free-text
   ``task``/``query`` messages run the same way with no task record (the result goes to
   the activity log); ``informational``/``confirmation`` messages are logged and consumed.

**Delivery is at-least-once.** A message leaves the processing list only in the step that
records its outcome. A worker that starts (or a ``recover`` of a dead one) puts its
processing list back at the front of the inbox and its ``running`` tasks back to
``assigned``, so work interrupted by a crash is done again — possibly twice if the crash
came after the work but before the record. A task is *recorded* terminal exactly once.

Each launch gets a token stored in ``tt:{town}:worker:{aid}``; every write of the worker is
guarded by it, so a worker replaced by a restart (or declared dead by ``recover``) can
no longer write and exits.

Example::

    >>> Worker(store, agent.id, FunctionRunner(fn)).run()   # doctest: +SKIP
    'stopped by request'
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any

import redis

from .. import lookup, procs, roles, tasks, transitions as tr
from ..errors import InvalidState
from ..models import (TERMINAL_AGENT_STATES, Agent, Message, Task, TaskState, canonical_uuid,
                      hash_ts, spellings, utcnow)
from ..runners import TASK_LOG_MAX, Outcome, Work
from ..store import Store
from .steps import Steps

log = logging.getLogger("tinytown_nb.worker")

WAIT_SECS = 1.0  # longest blocking read; bounds how late a stop flag or backlog task is seen
KILL_CHECK_SECS = 0.5  # while a command runs, how often the monitor checks it was not killed
HEARTBEAT_SECS = 5.0  # default; env TINYTOWN_HEARTBEAT_SECS overrides (recover needs > ~3 beats)
RECONNECT_SECS = 10.0  # how long a worker tries to get Redis back before it gives up
BACKLOG_SCAN = 100  # backlog entries a backlog agent looks at per idle turn


class Superseded(Exception):
    """Another worker took over this agent (restart, replace) or its record is gone."""


class _Refused(Exception):
    """The agent may not start new work now (paused, draining, stopped)."""


class _TaskChanged(Exception):
    """The task changed between reading it and starting it."""


class Worker:
    """Runs one agent until it is stopped; see the module docstring.

    >>> Worker(store, agent.id, FunctionRunner(fn)).run()   # doctest: +SKIP
    'stopped by request'
    """

    def __init__(self, store: Store, agent_id: str, runner: Any, *, token: str | None = None,
                 max_rounds: int | None = None, idle_timeout: float | None = None,
                 backlog: bool = False, logger: logging.Logger | None = None):
        self.store = store
        self.log = logger or log
        self.k = store.keys
        self.aid = agent_id
        self.runner = runner
        self.token = token or uuid.uuid4().hex
        self.own_token = token is None
        self.max_rounds = max_rounds or None
        self.idle_timeout = store.config.idle_timeout_secs if idle_timeout is None else idle_timeout
        self.backlog = backlog
        self.stop_event = threading.Event()  # shutdown of this process / SIGTERM
        self.heartbeat_secs = float(os.environ.get("TINYTOWN_HEARTBEAT_SECS") or HEARTBEAT_SECS)
        self.round = 0
        self.steps = Steps(store.keys, agent_id, self.token, store.mail_lists(agent_id))
        self.processing = self.k.processing(agent_id)
        self.r = store.redis
        self.blocking = store.new_blocking()
        self._done = threading.Event()
        self._current: Work | None = None
        self._run_started = 0.0
        # (message, source, task hash, started) taken by the step that finished the last one
        self._next: tuple[str, str, list[str] | None, bool] | None = None
        self._cancel_reason: str | None = None
        self._agent: Agent | None = None
        # taken by BLMOVE (a wake-up, not yet re-taken by a step guarded by our token)
        self._loose: str | None = None
        self._notes_used = 0  # notes the running prompt shows; dropped when its run is recorded

    @property
    def name(self) -> str:
        return self._agent.name if self._agent else self.aid

    # ------------------------------------------------------------------ plumbing
    def _run(self, change: tr.Change, *, beat: bool = False) -> Any:
        """Apply one step; a lost token or record means another worker owns the agent."""
        try:
            result = self.store.run(change)
        except tr.Stale as why:
            if why.key == self.steps.worker_key:
                raise Superseded(str(why)) from None
            raise
        except tr.RecordMissing as why:
            if change.key == self.steps.agent_key:
                raise Superseded(str(why)) from None
            raise
        if not beat:  # we still owned the agent after the BLMOVE: a takeover requeued it
            self._loose = None
        return result

    def _may_take_next(self) -> bool:
        """Whether a finishing step should take the next message (not when stopping or on
        the last round)."""
        return not (self.stop_event.is_set() or (self.max_rounds and self.round >= self.max_rounds))

    def _return_loose(self) -> None:
        raw, self._loose = self._loose, None
        if raw is None:
            return
        try:
            self.store.run(self.steps.return_loose(raw))
            self.log.info("superseded after taking a message; put it back in the inbox")
        except (tr.Refused, redis.RedisError):  # NOT_IN_LIST: the new worker's start requeued it
            pass

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> str:
        """Register, loop until stopped, return why it stopped."""
        monitor = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                   name=f"tt-monitor-{self.aid[:8]}")
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
        except (redis.RedisError, tr.Refused, Superseded):
            self.log.info("shut down (the agent was already stopped for us)")
            return "shut down"

    def shutdown(self) -> None:
        """Ask the worker to stop now (call from another thread): a running command is
        cancelled and its task put back, then the agent becomes ``stopped``."""
        self.stop_event.set()
        self._cancel_run("shut down")
        self.blocking.connection_pool.disconnect()  # wakes a blocking read at once

    def supersede(self) -> None:
        """Another worker is taking over (its token is already written): stop writing and
        wake a blocked read now. A message the read took comes back through the new
        worker's start or the loose-message return."""
        self.stop_event.set()
        self.blocking.connection_pool.disconnect()

    def abandon(self, line: str = "🛑 Worker shut down; unfinished work put back") -> bool:
        """From another thread, for a worker that cannot stop in time (a Python function is
        still running): agent ``stopped``, its in-flight work back in the inbox (it will be
        done again: at-least-once), and the token revoked so the thread can no longer write.
        Returns False when the worker had already stopped (or the server is gone)."""
        try:
            raws, current = (self.r.pipeline(transaction=False).lrange(self.processing, 0, -1)
                             .hget(self.steps.agent_key, "current_task").execute())
            self.store.run(self.steps.abandon(raws, current, line, self.name))
        except (redis.RedisError, tr.Refused):
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
        pipe.hget(self.steps.agent_key, "current_task")
        raws, current = pipe.execute()
        pid = os.getpid()
        info = {"pid": pid, "host": socket.gethostname(), "kind": self.runner.kind,
                "started_at": hash_ts(utcnow()), "token": self.token}
        put_back = f"; {len(raws)} unfinished message(s) put back" if raws else ""
        step = self.steps.register(info, raws, current, guarded=not self.own_token,
                                   line=f"🚀 Worker started (pid {pid}){put_back}",
                                   message=f"Worker started ({self.runner.kind}, pid {pid})")
        try:
            self._run(step)
        except tr.WrongState as why:
            raise InvalidState(f"Agent {self.aid} is {why.state}; restart it with "
                               "town.restart(...) instead of starting a worker.") from None
        self._agent = lookup.agent(self.store, self.aid)
        self.log.info("worker %s started for agent %s (%s)", self.token[:8], self._agent.name, self.runner.kind)

    def _loop(self) -> str:
        last_active = time.monotonic()
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
                _, raw, which, task_hash, started = self._run(self.steps.take(self._loose))
            except tr.Refused as why:
                if self._loose is not None:  # refused before any write: still ours to return
                    self._put_back(self._loose, "inbox")
                if isinstance(why, tr.FlagSet):
                    return self._stop("🛑 Stopped by request", clear_flag=True)
                if not isinstance(why, tr.WrongState):
                    raise
                if why.state is None or why.state in spellings(TERMINAL_AGENT_STATES):
                    return f"agent is {why.state or 'gone'}"  # stopped under us (recover)
                if why.state == "draining":  # closed: the current work is done (even if the stop
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
                    self.steps.inbox, self.processing, WAIT_SECS, "LEFT", "RIGHT")
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
        back = []
        if self._next is not None:  # taken but not run: back where it came from
            (raw, source, task_hash, started), self._next = self._next, None
            if started:
                task = Task.from_hash(dict(zip(task_hash[::2], task_hash[1::2])))
                self._requeue(raw, task, Outcome(False, "not run", []))
            else:
                back = [["LREM", self.processing, 1, raw], self.steps.back_to_source(raw, source)]
        back += self.steps.unwake(self._loose)
        self._run(self.steps.stop(f"Round {self.round + 1}: {line}", self.name, back, clear_flag))
        self.log.info("%s", line)
        return line[2:].strip()

    def _idle_out(self) -> str | None:
        """``idle`` → ``draining`` → ``stopped``; None if the state changed meanwhile."""
        try:
            self._run(self.steps.drain(self.idle_timeout, self.name))
        except tr.Refused:
            return None  # state changed under us (work, pause): the loop sees it next turn
        return self._stop("🛑 Stopped after idle timeout")

    def _crash(self, exc: BaseException) -> None:
        try:
            self._run(self.steps.crash(exc))
        except Exception:  # noqa: BLE001 — best effort: the server may be what failed
            pass

    def _wait_for_event(self, secs: float) -> None:
        """Block until something happens to this agent (e.g. resume) or ``secs`` pass."""
        self.blocking.xread({self.k.agent_events(self.aid): "$"}, block=int(secs * 1000), count=1)

    # ------------------------------------------------------------------ heartbeat thread
    def _heartbeat_loop(self) -> None:
        """Heartbeat every few seconds for the whole life of the worker (long tasks
        included), and every ``KILL_CHECK_SECS`` while a run is in progress: a kill (state
        ``stopped``) or a takeover then cancels the running command within that time."""
        last_beat = time.monotonic()
        while not self._done.wait(min(self.heartbeat_secs, KILL_CHECK_SECS)):
            now = time.monotonic()
            running = self._current is not None and now - self._run_started >= KILL_CHECK_SECS
            if not running and now - last_beat < self.heartbeat_secs:
                continue
            last_beat = now
            try:
                state = self._heartbeat()
            except (redis.RedisError, OSError):
                continue
            if state is None:
                self._cancel_run("superseded")
            elif state == "stopped":
                self._cancel_run("killed")

    def _heartbeat(self) -> str | None:
        """One beat; returns the agent's state, None when another worker owns it."""
        # a command's identity goes on record while it runs: if this worker dies, whoever
        # recovers or restarts the agent stops it (recovery.stop_left_command)
        pid = self.runner.pid if self._current is not None else None
        ident = procs.process_identity(pid) if pid else None
        try:
            return self._run(self.steps.heartbeat(ident), beat=True)
        except Superseded:
            return None

    def _cancel_run(self, reason: str) -> None:
        if self._current is not None and self._cancel_reason is None:
            self._cancel_reason = reason
            self.log.info("cancelling the running work: %s", reason)
            self.runner.cancel()

    # ------------------------------------------------------------------ messages
    def _handle(self, raw: str, source: str, task_hash: list[str] | None = None,
                started: bool = False) -> None:
        msg = tr.parse_message(raw)
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
            # an AI CLI agent is shown informational messages and confirmations in its next
            # prompt (spec §7.3): kept in its notes list, in the step that consumes them
            note = self.steps.note(msg) if getattr(self.runner, "preset", False) else []
            self._ack(raw, f"ℹ️ {msg.category}: {msg.summary(100)}", note)

    def _ack(self, raw: str, line: str, extra: list[list[Any]] | None = None) -> None:
        self._run_taking(self.steps.ack(raw, line, extra or [], take_next=self._may_take_next()))

    def _put_back(self, raw: str, source: str) -> None:
        self._run(self.steps.put_back(raw, source))

    def _run_taking(self, change: tr.Change) -> Any:
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
                         [["LPUSH", self.steps.inbox, raw]], count=False)
            return
        mark = "✅" if outcome.ok else "⚠️ failed:"
        first = (outcome.result.strip().splitlines() or [""])[0][:100]
        self._settle(raw, f"Round {self.round}: {mark} {first}", self.steps.task_log(msg.id, outcome.log))

    # ------------------------------------------------------------------ steps
    def _start(self, task: Task | None, what: str = "") -> None:
        try:
            self._run(self.steps.start(task, what))
        except (tr.WrongState, tr.FlagSet) as why:
            raise _Refused(str(why)) from None
        except tr.Stale as why:
            raise _TaskChanged(str(why)) from None
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
        mark = "✅ completed" if outcome.ok else "❌ failed"
        step = self.steps.finish(raw, task, ok=outcome.ok, result=outcome.result, log=outcome.log,
                                 line=f"Round {self.round}: {mark} {task.short_id}",
                                 notes_shown=self._notes_used, take_next=self._may_take_next())
        try:
            self._run_taking(step)
            self._notes_used = 0
        except (tr.WrongState, tr.Stale, tr.RecordMissing):
            # reported (ttnb task complete), cancelled or moved meanwhile
            now_state = self.r.hget(self.k.task(task.id), "state") or "gone"
            self._settle(raw, f"Round {self.round}: ✅ {task.short_id} already {now_state}",
                         self.steps.task_log(task.id, outcome.log), task.id)

    def _settle(self, raw: str, line: str, extra: list[list[Any]], task_id: str | None = None,
                count: bool = True) -> None:
        self._run_taking(self.steps.settle(raw, line, extra, task_id=task_id, count=count,
                                           notes_shown=self._notes_used,
                                           take_next=self._may_take_next()))
        if count:
            self._notes_used = 0

    def _requeue(self, raw: str, task: Task, outcome: Outcome) -> None:
        line = f"Round {self.round}: ↩️ {task.short_id} put back ({self._cancel_reason or 'cancelled'})"
        try:
            self._run(self.steps.requeue(raw, task, line=line, log=outcome.log))
        except (tr.WrongState, tr.Stale, tr.RecordMissing):
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
        found = [t for t in (Task.from_hash(h) for h in self.store.hgetall_many(
            [self.k.task(i) for i in ids])) if t is not None]
        self._notes_used = len(notes)
        return {"backlog": [t for t in found if roles.task_matches(role, t)][:8],
                "backlog_total": total, "notes": notes}

    def _claim_backlog(self) -> bool:
        """Claim the first role-matching backlog task (atomically: the claim takes it off
        the backlog only if it is still there, so two workers never get the same)."""
        ids = self.r.lrange(self.k.backlog, 0, BACKLOG_SCAN - 1)
        if not ids:
            return False
        role = roles.role_for(roles.role_hint(self._agent))
        for h in self.store.hgetall_many([self.k.task(i) for i in ids]):
            task = Task.from_hash(h)
            if task is None or task.state != TaskState.PENDING or not roles.task_matches(role, task):
                continue
            try:
                tasks.claim(self.store, task.id, self.aid)
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
