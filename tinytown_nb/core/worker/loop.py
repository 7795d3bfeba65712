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
2. with nothing to take it blocks until its inbox is not empty (``BLMOVE inbox inbox``: a
   rotation of one element that leaves the message where it is, so nothing is in flight
   while it waits), for up to ``IDLE_WAIT`` — no sleep-polling, so an assignment reaches
   an idle worker in about a millisecond. Meanwhile the heartbeat thread blocks on the
   agent's wake list (``BLPOP``; every agent transition and urgent mail push to it) and
   beats every ``HEARTBEAT_SECS``; it wakes the loop when urgent mail, a stop flag or a
   state change needs it, so an idle agent runs no step at all. A backlog agent
   (``backlog=True``) first claims a role-matching backlog task, and looks again every
   ``WAIT_SECS``;
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

**Runs you can watch and bound** (issues 10, 11): what a run prints reaches the task log
within about a second (:class:`_LiveLog`: lines wait at most ``LIVE_TICK`` for the
heartbeat thread to push them; the step that records the outcome carries the rest). A
task's ``timeout``/``silence_timeout`` (its ``taskopts``, read by the take step itself),
else the agent's (``spawn(task_timeout=..., silence_timeout=...)``), bound each attempt. A
failed attempt (error, exception, timeout) of a task with ``retries`` left is put back by
one *retry* step — task ``assigned`` again, its message at the front of the inbox, the
attempt count + 1 and a ``task_retried`` event, all at once — and, with a ``retry_delay``,
the worker waits that long before its next message (a stop or kill cuts the wait short).
A retry never follows a cancel, a kill or a report through ``ttnb task complete`` (the step
is refused when the task is no longer open), and a task put back after a crash keeps its
attempt number. The usage a run reports (an AI CLI's stream, ``ctx.usage``) is written in
the step that records its outcome; when that cost reaches the town's budget the AI agents
are paused (:mod:`..costs`) and this worker takes nothing new.

**Nothing stops a town** (issue 9): a message or task record the town cannot use (not
UTF-8, not tinytown's JSON, a task with an unknown state, a wrong-typed record) is set
aside as a *dead letter* with the reason and an event, and the worker goes on; messages are
taken and moved as the bytes stored, never re-encoded; a lost server is waited for as long
as the worker lives (with backoff and a log line a minute), and the step that records an
outcome is retried when it comes back; each run's id is recorded before the run can start,
and its command carries it (``TINYTOWN_RUN_ID``), so a recover finds and stops it even if
the worker died at once.

Example (a worker run in this thread, for one message)::

    >>> from tinytown_nb.core.runners import FunctionRunner
    >>> fn = lambda task: task.description.upper()
    >>> agent = town.spawn("upper", fn=fn, start=False)     # registered, no worker
    >>> task = town.assign("upper", "shout this")
    >>> Worker(store, agent.id, FunctionRunner(fn), max_rounds=1).run()
    'Max rounds (1) reached'
    >>> town.task(task).result
    'SHOUT THIS'
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from .. import checks, costs, lookup, procs, roles, tasks, transitions as tr, workflows
from ..errors import InvalidState, is_transient
from ..models import (TERMINAL_AGENT_STATES, Agent, Message, Task, TaskState, canonical_uuid,
                      hash_ts, spellings, task_problem, utcnow)
from ..keys import Keys
from ..runners import TASK_LOG_MAX, Outcome, Work
from ..runopts import RunOptions
from ..store import Store
from ..usage import Usage, usage_cmds
from .steps import Steps

log = logging.getLogger("tinytown_nb.worker")

_SWEPT: dict[str, float] = {}  # town root → when a worker of this process last swept (workflows)

WAIT_SECS = 1.0  # how often a backlog agent looks at the backlog while idle
RUN_POKE = b"run"  # the loop's entry on the wake list: a run started (see _poke_watch)
IDLE_WAIT = 30.0  # longest idle block; the heartbeat thread wakes the loop sooner when needed
KILL_CHECK_SECS = 0.5  # while a command runs, how often the monitor checks it was not killed
LIVE_TICK = 0.25  # how often the monitor pushes a running task's waiting output lines
TICK_GRACE = 2.0  # the monitor ticks this long after a run too (quick tasks need no poke)
LIVE_MAX_AGE = 0.5  # a new line finding older ones waiting this long pushes them itself
HEARTBEAT_SECS = 5.0  # default; env TINYTOWN_HEARTBEAT_SECS overrides (recover needs > ~3 beats)
RECONNECT_MAX_DELAY = 5.0  # longest pause between tries to get Redis back (it never gives up)
OUTAGE_LOG_SECS = 60.0  # one "still waiting for Redis" log line per this many seconds
PUT_BACK_LIMIT = 5  # a message put back this many times in a row is set aside
BACKLOG_SCAN = 100  # backlog entries a backlog agent looks at per idle turn


class Superseded(Exception):
    """Another worker took over this agent (restart, replace) or its record is gone."""


class _Refused(Exception):
    """The agent may not start new work now (paused, draining, stopped)."""


class _TaskChanged(Exception):
    """The task changed between reading it and starting it."""


@dataclass
class Taken:
    """A message a step moved to the processing list: the bytes as stored, where it came
    from, its task record (raw HGETALL, for a ``task_assign``), whether the step already
    started it, the id of the run the step recorded for it, and the ids of the tasks the
    task waited for (``after``, JSON, read by the step; None: not read, ``b""``: none)."""

    raw: bytes
    source: str
    task: list[bytes] | None
    started: bool
    run: str
    after: bytes | None = None
    opts: list[bytes] | None = None  # the task's run options (taskopts), as the step read them

    @classmethod
    def of(cls, reply: list[Any], run: str) -> "Taken | None":
        """The message a take step's reply names, or None."""
        if not reply or not reply[1]:
            return None
        after = (reply[5] or b"") if len(reply) > 5 and reply[3] else None
        return cls(reply[1], "urgent" if reply[2] == 1 else "inbox", reply[3] or None,
                   bool(reply[4]), run, after, reply[6] if len(reply) > 6 else None)


class Worker:
    """Runs one agent until it is stopped; see the module docstring.

    >>> from tinytown_nb.core.runners import FunctionRunner
    >>> fn = lambda task: task.description.upper()
    >>> agent = town.spawn("upper", fn=fn, start=False)
    >>> task = town.assign("upper", "shout this")
    >>> Worker(store, agent.id, FunctionRunner(fn), max_rounds=1).run()
    'Max rounds (1) reached'
    """

    def __init__(self, store: Store, agent_id: str, runner: Any, *, token: str | None = None,
                 max_rounds: int | None = None, idle_timeout: float | None = None,
                 backlog: bool = False, logger: logging.Logger | None = None,
                 task_timeout: float | None = None, silence_timeout: float | None = None):
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
        self.task_timeout = task_timeout  # the agent's limits for an attempt (a task's own win)
        self.silence_timeout = silence_timeout
        self.stop_event = threading.Event()  # shutdown of this process / SIGTERM
        self.heartbeat_secs = float(os.environ.get("TINYTOWN_HEARTBEAT_SECS") or HEARTBEAT_SECS)
        self.round = 0
        self.steps = Steps(store.keys, agent_id, self.token, store.mail_lists(agent_id))
        self.processing = self.k.processing(agent_id)
        self.r = store.redis
        self.blocking = store.new_blocking(decode=False)
        self._done = threading.Event()
        self._current: Work | None = None
        self._live: _LiveLog | None = None  # the running work's live task log
        self._run_started = 0.0
        self._next: Taken | None = None  # taken by the step that finished the last one
        self._found_none = False  # that step looked for the next message and found none
        self._cancel_reason: str | None = None
        self._agent: Agent | None = None
        self._run_id: str | None = None  # the run going on now (its command carries it)
        self._put_backs: tuple[bytes, int] = (b"", 0)
        self._after_outage = False
        # waking the idle loop (see _wake_loop): the heartbeat thread sets _woken, then
        # drops the blocking read's connection; the loop takes again
        self._woken = False
        self._blocked = threading.Event()  # the loop is in an idle blocking read
        self._watching = threading.Event()  # the heartbeat thread is in an idle block
        self._watch = store.new_blocking(decode=False)  # the heartbeat thread's BLPOP
        self._notes_used = 0  # notes the running prompt shows; dropped when its run is recorded

    @property
    def name(self) -> str:
        return self._agent.name if self._agent else self.aid

    # ------------------------------------------------------------------ plumbing
    def _run(self, change: tr.Change, *, raw: bool = False, durable: bool = False) -> Any:
        """Apply one step; a lost token or record means another worker owns the agent.
        ``raw``: the reply as stored bytes (a taken message). ``durable``: a step that
        records an outcome — after a lost connection it waits for the server and runs again
        (it is guarded, so a step that did land is refused the second time)."""
        while True:
            try:
                return self.store.run(change, raw=raw)
            except tr.Stale as why:
                if why.key == self.steps.worker_key:
                    raise Superseded(str(why)) from None
                raise
            except tr.RecordMissing as why:
                if change.key == self.steps.agent_key:
                    raise Superseded(str(why)) from None
                raise
            except redis.RedisError as exc:
                if not durable or self.stop_event.is_set() or not is_transient(exc):
                    raise
                self._after_outage = True  # then whatever a lost reply took goes back
                if not self._reconnect():
                    raise

    def _new_run(self) -> str:
        return uuid.uuid4().hex

    def _may_take_next(self) -> bool:
        """Whether a finishing step should take the next message (not when stopping or on
        the last round)."""
        return not (self.stop_event.is_set() or (self.max_rounds and self.round >= self.max_rounds))

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
                except redis.RedisError as exc:
                    if not is_transient(exc):
                        raise
                    if self.stop_event.is_set():  # woken from a blocking read by shutdown()
                        return self._stop_quietly()
                    self.log.warning("lost Redis (%s); waiting for it", exc)
                    if not self._reconnect():
                        return self._stop_quietly()
                    self._register()  # whatever was in flight goes back to the inbox
        except InvalidState as why:  # stopped before we started, or while we were away
            self.log.info("not started: %s", why)
            return str(why)
        except Superseded as exc:
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
            self._watch.connection_pool.disconnect()  # and the heartbeat thread's
            self._watch.close()
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
        wake a blocked read now."""
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
        """Wait for the server as long as this worker lives (backoff up to
        ``RECONNECT_MAX_DELAY`` s, one log line per ``OUTAGE_LOG_SECS``); False only when
        the worker is asked to stop meanwhile."""
        delay, started, logged = 0.1, time.monotonic(), time.monotonic()
        while not self.stop_event.wait(delay):
            try:
                if self.r.ping() and self.r.exists(self.steps.agent_key) >= 0:  # (not BUSY)
                    self.log.info("Redis is back after %.0fs", time.monotonic() - started)
                    return True
            except redis.RedisError as exc:
                if not is_transient(exc):
                    raise
            if time.monotonic() - logged >= OUTAGE_LOG_SECS:
                logged = time.monotonic()
                self.log.warning("still waiting for Redis (%.0fs)", logged - started)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
        return False

    def _register(self) -> None:
        """Claim the agent: worker hash, put back unfinished work, ``starting`` → ``idle``."""
        self._next = None  # (after a reconnect) whatever was taken goes back with the rest
        self._found_none = False
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
            if self._after_outage:  # a step's lost reply may have taken a message: put it back
                self._after_outage = False
                self._register()
                continue
            if self.max_rounds and self.round >= self.max_rounds:
                return self._stop(f"🏁 Max rounds ({self.max_rounds}) reached")
            if self._next is not None:  # taken by the step that finished the previous one
                taken, self._next = self._next, None
                self._handle(taken)
                last_active = time.monotonic()
                continue
            try:
                if self._found_none:  # the finishing step just looked: wait for mail at once
                    self._found_none, taken = False, None
                else:
                    run = self._new_run()
                    taken = Taken.of(self._run(self.steps.take(run), raw=True), run)
            except tr.Refused as why:
                if isinstance(why, tr.FlagSet):
                    return self._stop("🛑 Stopped by request", clear_flag=True)
                if not isinstance(why, tr.WrongState):
                    raise
                state = why.state.decode(errors="replace") if isinstance(why.state, bytes) else why.state
                if state is None or state in spellings(TERMINAL_AGENT_STATES):
                    return f"agent is {state or 'gone'}"  # stopped under us (recover)
                if state == "draining":  # closed: the current work is done (even if the stop
                    return self._stop("🛑 Stopped after draining", clear_flag=True)  # flag expired)
                self._wait_for_event(IDLE_WAIT)  # paused: take nothing new
                last_active = time.monotonic()
                continue
            if taken is None:
                if self.backlog and self._claim_backlog():
                    continue
                # wait until the inbox is not empty — the rotation moves nothing; the next take
                # step takes in order — or the heartbeat thread wakes us (urgent mail, a stop
                # flag, a kill: see _heartbeat_loop). Nothing else runs while an agent is idle.
                wait = WAIT_SECS if self.backlog else IDLE_WAIT
                if self.idle_timeout:
                    wait = min(wait, max(0.05, self.idle_timeout - (time.monotonic() - last_active)))
                woke = self._block(lambda: self.blocking.blmove(
                    self.steps.inbox, self.steps.inbox, wait, "LEFT", "LEFT"))
                if woke is None and self.idle_timeout and \
                        time.monotonic() - last_active >= self.idle_timeout:
                    reason = self._idle_out()
                    if reason:
                        return reason
                    last_active = time.monotonic()
                continue
            self._handle(taken)
            last_active = time.monotonic()

    def _sweep(self) -> None:
        """On an idle beat (at most every ``workflows.SWEEP_SECS`` per town and process: the
        workers of a shared process take turns): pass on tasks that a program knowing
        nothing of dependencies finished (:func:`workflows.sweep`)."""
        now = time.monotonic()
        town = str(self.store.root)
        if now - _SWEPT.get(town, 0.0) < workflows.SWEEP_SECS:
            return
        _SWEPT[town] = now
        try:
            workflows.sweep(self.store)
        except (redis.ResponseError, tr.Refused) as exc:  # a damaged key: say so, go on
            self.log.warning("dependency sweep failed: %s", exc)

    def _stop(self, line: str, *, clear_flag: bool = False) -> str:
        back = []
        if self._next is not None:  # taken but not run: back where it came from
            taken, self._next = self._next, None
            task = _task(taken.task)[0] if taken.started else None
            if task is not None:
                self._requeue(taken.raw, task, Outcome(False, "not run", []))
            else:
                back = [["LREM", self.processing, 1, tr.Raw(taken.raw)],
                        self.steps.back_to_source(taken.raw, taken.source)]
        try:
            self._run(self.steps.stop(f"Round {self.round + 1}: {line}", self.name, back, clear_flag))
        except tr.WrongState:  # restarted under us (starting): the new worker takes over
            self.log.info("the agent is being restarted; exiting without writing")
            return "superseded"
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
        """Block until something happens to this agent (e.g. resume) or ``secs`` pass (or
        the heartbeat thread wakes us)."""
        self._block(lambda: self.blocking.xread({self.k.agent_events(self.aid): "$"},
                                                block=max(1, int(secs * 1000)), count=1))

    def _block(self, read: Callable[[], Any]) -> Any:
        """Run an idle blocking read that :meth:`_wake_loop` may cut short (then None)."""
        self._blocked.set()  # before looking at _woken: a wake after this look cuts the read
        try:
            if self._woken:  # woken while it took: look again at once
                return None
            return read()
        except Exception:
            # cut short from the other thread: besides ConnectionError, redis-py may meet
            # its socket already gone mid-send. A real outage or a shutdown goes on up.
            if not self._woken or self.stop_event.is_set():
                raise
            return None
        finally:
            self._blocked.clear()
            self._woken = False

    def _wake_loop(self) -> None:
        """From the heartbeat thread: make the loop take again now. It drops the idle read's
        connection (the next read opens a new one), again while the loop has not seen the
        wake — the read may not have reached the server when the first drop came."""
        self._woken = True
        for _ in range(100):
            if not (self._woken and self._blocked.is_set()):
                return
            self.blocking.connection_pool.disconnect()
            if self._done.wait(0.02):
                return

    # ------------------------------------------------------------------ heartbeat thread
    def _heartbeat_loop(self) -> None:
        """The worker's second thread, blocked on the agent's wake list (``BLPOP``;
        :func:`~..transitions.wake` pushes to it — kill, pause, resume, urgent mail).

        While a run is in progress, and for ``TICK_GRACE`` after one (so a stream of quick
        tasks never needs a poke), it wakes every ``LIVE_TICK``: the run's output goes to the
        task log, and every ``KILL_CHECK_SECS`` — at once on a wake — a beat finds a kill or
        a takeover, which cancels the run. Idle, it blocks until a wake or its next beat
        (every ``heartbeat_secs``); each beat also looks for urgent mail, a stop flag or a
        state change another program made, and wakes the loop only then — an idle agent
        costs a beat every few seconds, nothing more. The loop pokes it out of an idle block
        when a run starts (:meth:`_poke_watch`).
        """
        # the first beat at a random point of the period: agents started together (a shared
        # process) do not all beat in the same instant, contending for the GIL
        last_beat = time.monotonic() - random.uniform(0, self.heartbeat_secs)
        last_run = 0.0  # when a run was last seen in progress
        wake_key = self.k.wake(self.aid)
        while not self._done.is_set():
            now = time.monotonic()
            if self._current is not None:
                last_run = now
            if now - last_run < TICK_GRACE:
                wait = LIVE_TICK
            else:  # idle: a long block, which the loop cuts short when a run starts
                self._watching.set()  # (set before looking: see _poke_watch)
                if self._current is not None:
                    self._watching.clear()
                    continue
                wait = max(0.05, self.heartbeat_secs - (now - last_beat))
            try:
                popped = self._watch.blpop([wake_key], timeout=wait)
            except Exception:  # an outage (or a shutdown): wait, then beat as usual
                popped = None
                self._done.wait(min(wait, 1.0))
            finally:
                self._watching.clear()
            if self._done.is_set():
                break
            signal = bool(popped) and popped[1] != RUN_POKE
            now = time.monotonic()
            if self._current is not None:  # a run in progress: a tick
                live = self._live
                if live is not None:
                    live.flush()  # output lines waiting: to the task log (within LIVE_TICK)
                if not signal and (now - self._run_started < KILL_CHECK_SECS
                                   or now - last_beat < KILL_CHECK_SECS):
                    continue
                last_beat = now
                state = self._beat()
                if state is None:
                    self._cancel_run("superseded")
                elif state[0] == "stopped":
                    self._cancel_run("killed")
                continue
            due = now - last_beat >= self.heartbeat_secs
            if not (signal or due):
                continue
            last_beat = now
            state = self._beat()
            if state is None:
                self._wake_loop()  # superseded: the loop's next step finds out and exits
                continue
            current, urgent, flag = state
            if signal or urgent or flag or current not in ("idle", "starting"):
                self._wake_loop()
            elif due:
                self._sweep()

    def _beat(self) -> tuple[str, int, int] | None:
        """One heartbeat: (the agent's state, urgent messages waiting, stop flag set), or
        None when another worker owns the agent; errors are waited out by the next beat."""
        try:
            return self._heartbeat()
        except (redis.RedisError, OSError, tr.Refused):
            return ("", 0, 0)

    def _poke_watch(self) -> None:
        """A run started: if the heartbeat thread is in an idle block, end it (an entry on
        the wake list ends its BLPOP, or its next one, at once) so it ticks. It sets
        ``_watching`` before it looks at ``_current``, and this runs after ``_current`` is
        set: one of the two always sees the other."""
        if not self._watching.is_set():
            return
        try:
            self.r.pipeline(transaction=False).lpush(self.k.wake(self.aid), RUN_POKE) \
                .ltrim(self.k.wake(self.aid), 0, 0).execute()
        except redis.RedisError:
            pass  # the heartbeat thread's next beat (an outage: the run fails anyway)

    def _heartbeat(self) -> tuple[str, int, int] | None:
        """One beat; returns (state, urgent waiting, stop flag), None when another worker
        owns the agent."""
        # a command's identity goes on record while it runs: if this worker dies, whoever
        # recovers or restarts the agent stops it (recovery.stop_left_command)
        pid = self.runner.pid if self._current is not None else None
        ident = procs.process_identity(pid) if pid else None
        try:
            state, urgent, flag = self._run(self.steps.heartbeat(ident))
        except Superseded:
            return None
        return (tr.normal_state(state), int(urgent), int(flag))

    def _cancel_run(self, reason: str) -> None:
        if self._current is not None and self._cancel_reason is None:
            self._cancel_reason = reason
            self.log.info("cancelling the running work: %s", reason)
            self.runner.cancel()

    # ------------------------------------------------------------------ messages
    def _handle(self, taken: Taken) -> None:
        raw = taken.raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._set_aside(taken, f"the message is not valid UTF-8 (byte {exc.start})")
            return
        try:
            msg = Message.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            self._set_aside(taken, f"not a tinytown message ({exc}): {text[:60]!r}")
            return
        if msg.type == "task_assign":
            self._do_task(taken, msg)
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
            self._do_text(taken, msg)
        else:
            # an AI CLI agent is shown informational messages and confirmations in its next
            # prompt (spec §7.3): kept in its notes list, in the step that consumes them
            note = self.steps.note(msg) if getattr(self.runner, "preset", False) else []
            self._ack(raw, f"ℹ️ {msg.category}: {msg.summary(100)}", note)

    def _ack(self, raw: bytes, line: str, extra: list[list[Any]] | None = None) -> None:
        run = self._new_run()
        self._run_taking(self.steps.ack(raw, line, extra or [], take_next=self._may_take_next(),
                                        run=run), run)

    def _set_aside(self, taken: Taken, reason: str, task_id: str | None = None,
                   fail_task: bool = False) -> None:
        """Move a message the town cannot use (or whose task it cannot use) to the dead
        letters, with the reason; go on with the next message."""
        run = self._new_run()
        step = self.steps.dead_letter(taken.raw, did=str(uuid.uuid4()), source=taken.source,
                                      reason=reason, name=self.name, task_id=task_id,
                                      fail_task=fail_task, take_next=self._may_take_next(), run=run)
        self.log.warning("set aside a message: %s", reason)
        self._run_taking(step, run)

    def _put_back(self, raw: bytes, source: str) -> None:
        """Return an untouched message to where it was taken from — unless it came back
        ``PUT_BACK_LIMIT`` times in a row, which only a record that cannot be used does."""
        last, times = self._put_backs
        times = times + 1 if last == raw else 1
        self._put_backs = (raw, times)
        if times >= PUT_BACK_LIMIT:
            self._put_backs = (b"", 0)
            self._set_aside(Taken(raw, source, None, False, ""),
                            f"it could not be started {times} times in a row")
            return
        self._run(self.steps.put_back(raw, source), durable=True)

    def _run_taking(self, change: tr.Change, run: str) -> Any:
        """Run a finishing step; keep the message it took (if any) for the next turn."""
        result = self._run(change, raw=True, durable=True)
        if "take" in change.spec:
            self._next = Taken.of(result, run)
            # it looked (no stop flag, idle) and found nothing: a take step now would find
            # nothing too — whatever comes next wakes the idle wait (inbox) or the heartbeat
            # thread (urgent mail, a stop, a pause)
            self._found_none = self._next is None and result[2] == 0
        return result

    def _do_task(self, taken: Taken, msg: Message, again: bool = True) -> None:
        tid = canonical_uuid(msg.body["task_id"])
        if tid is None:
            self._set_aside(taken, f"its task id {str(msg.body['task_id'])[:40]!r} is not a UUID")
            return
        flat = taken.task if taken.task is not None and tid == msg.body["task_id"] else None
        if flat is None:  # not read by the take step: read it now, as stored
            try:
                flat = _flatten(self.store.raw.hgetall(self.k.task(tid)))
            except redis.ResponseError:  # not a hash
                kind = self.r.type(self.k.task(tid))
                self._set_aside(taken, f"the record of task {tid[:8]} is a {kind}, not a hash", tid)
                return
        task, problem = _task(flat)
        if not flat and self.r.type(self.k.task(tid)) not in ("none", "hash"):
            problem = f"is a {self.r.type(self.k.task(tid))}, not a hash"
        if problem:  # failed too when it is ours, so nobody waits for it
            owner = dict(zip(flat[::2], flat[1::2])).get(b"assigned_to") if flat else None
            self._set_aside(taken, f"the record of task {tid[:8]} {problem}", tid,
                            fail_task=owner == self.aid.encode())
            return
        if taken.opts is None:  # not read by the take step
            taken.opts = _flatten(self.store.raw.hgetall(self.k.taskopts(tid)))
        if taken.started and task is not None:  # the take step already marked it running
            self.round += 1
            self._run_task(taken, task, msg)
            return
        why = ("names a task that does not exist" if task is None
               else f"is for a task already {task.state.value}" if task.state.is_terminal
               else "is for a task now assigned elsewhere" if task.assigned_to != self.aid else None)
        if why:
            self._ack(taken.raw, f"⏭️ Skipped task_assign {tid[:8]}: it {why}")
            return
        try:
            self._start(task, run=taken.run)
        except _Refused:
            self._put_back(taken.raw, taken.source)
            return
        except _TaskChanged:
            if again:
                self._do_task(Taken(taken.raw, taken.source, None, False, taken.run), msg, again=False)
            else:
                self._put_back(taken.raw, taken.source)
            return
        self._run_task(taken, task, msg)

    def _run_task(self, taken: Taken, task: Task, msg: Message) -> None:
        # the results of the tasks it waited for (workflows): read only for such a task
        inputs = workflows.inputs(self.store, task.id, taken.after) if taken.after != b"" else []
        flat = taken.opts or []
        opts = RunOptions.from_fields(dict(zip(flat[::2], flat[1::2]))) if flat else RunOptions()
        outcome = self._execute(Work(msg, task, self.round, self._agent, max_rounds=self.max_rounds,
                                     run_id=taken.run, timeout=opts.timeout or self.task_timeout,
                                     silence_timeout=opts.silence_timeout or self.silence_timeout,
                                     attempt=opts.attempt, inputs=inputs, **self._prompt_context()))
        if outcome.cancelled:  # kill, shutdown: not the task's failure (no retry, same attempt)
            self._requeue(taken.raw, task, outcome)
        elif not outcome.ok and opts.may_retry:
            self._retry(taken.raw, task, outcome, opts)
        else:
            self._finish(taken.raw, task, outcome)

    def _do_text(self, taken: Taken, msg: Message) -> None:
        try:
            self._start(None, what=msg.summary(80), run=taken.run)
        except (_Refused, _TaskChanged):
            self._put_back(taken.raw, taken.source)
            return
        outcome = self._execute(Work(msg, None, self.round, self._agent, max_rounds=self.max_rounds,
                                     run_id=taken.run, timeout=self.task_timeout,
                                     silence_timeout=self.silence_timeout, **self._prompt_context()))
        if outcome.cancelled:
            self._settle(taken.raw, f"Round {self.round}: ↩️ {msg.type} put back (run cancelled)",
                         [["LPUSH", self.steps.inbox, tr.Raw(taken.raw)]], count=False)
            return
        mark = "✅" if outcome.ok else "⚠️ failed:"
        first = (outcome.result.strip().splitlines() or [""])[0][:100]
        reached = self._budget_reached(outcome.usage)
        self._settle(taken.raw, f"Round {self.round}: {mark} {first}",
                     [*self.steps.task_log(msg.id, outcome.log), *self._usage(None, outcome.usage)],
                     take_next=not reached)
        if reached:
            self._enforce_budget()

    # ------------------------------------------------------------------ steps
    def _start(self, task: Task | None, what: str = "", run: str | None = None) -> None:
        try:
            self._run(self.steps.start(task, what, run=run), durable=True)
        except (tr.WrongState, tr.FlagSet) as why:
            raise _Refused(str(why)) from None
        except tr.Stale as why:
            raise _TaskChanged(str(why)) from None
        self.round += 1

    def _execute(self, work: Work) -> Outcome:
        self._current, self._cancel_reason, self._run_id = work, None, work.run_id
        started = self._run_started = time.monotonic()
        emit = self._live = _LiveLog(self.r, self.k, work.task.id if work.task else work.message.id)
        work.note = emit.note
        self._poke_watch()  # the heartbeat thread ticks while a run is in progress
        try:
            outcome = self.runner.run(work, emit=emit, on_start=self._command_started)
        finally:
            self._current = self._live = None
        if self._cancel_reason and self.runner.kind == "process":
            outcome.cancelled = True
        pending = emit.close()
        if emit.used:  # what was not pushed live yet goes with the step recording the outcome
            outcome.log = pending
        if outcome.fallback:
            self._notice("cli_fallback", f"⚠️ {outcome.fallback}"[:200], outcome.fallback)
        outcome.result = checks.clip_text(outcome.result)
        verdict = "cancelled" if outcome.cancelled else "ok" if outcome.ok else "failed"
        self.log.info("round %d: %s %s in %.2fs", work.round, verdict,
                      work.task.short_id if work.task else work.message.type, time.monotonic() - started)
        return outcome

    def _command_started(self, pid: int) -> None:
        """A command's identity goes on record as soon as it exists (the heartbeat keeps it
        there): if this worker dies, whoever recovers the agent stops that command."""
        ident = procs.process_identity(pid)
        if ident:
            try:
                self._run(self.steps.heartbeat(ident))
            except (redis.RedisError, tr.Refused, Superseded):
                pass  # the run id in its environment still identifies it

    def _finish(self, raw: bytes, task: Task, outcome: Outcome) -> None:
        mark = "✅ completed" if outcome.ok else "❌ failed"
        run = self._new_run()
        usage = self._usage(task.id, outcome.usage)
        reached = self._budget_reached(outcome.usage)
        step = self.steps.finish(raw, task, ok=outcome.ok, result=outcome.result, log=outcome.log,
                                 line=f"Round {self.round}: {mark} {task.short_id}",
                                 notes_shown=self._notes_used,
                                 take_next=self._may_take_next() and not reached, run=run, extra=usage)
        try:
            self._run_taking(step, run)
            self._notes_used = 0
        except (tr.WrongState, tr.Stale, tr.RecordMissing):
            # reported (ttnb task complete), cancelled or moved meanwhile: that stands (the
            # run's usage is still recorded)
            now_state = self.r.hget(self.k.task(task.id), "state") or "gone"
            self._settle(raw, f"Round {self.round}: ✅ {task.short_id} already {now_state}",
                         [*self.steps.task_log(task.id, outcome.log), *usage], task.id,
                         take_next=not reached)
        if reached:
            self._enforce_budget()

    def _retry(self, raw: bytes, task: Task, outcome: Outcome, opts: RunOptions) -> None:
        """Put a failed attempt back to be run again (one step, see :meth:`Steps.retry`);
        after a ``retry_delay``, wait before the next message. When the task ended
        meanwhile (cancelled, reported), it is finished as any run is instead."""
        run = self._new_run()
        usage = self._usage(task.id, outcome.usage)
        reached = self._budget_reached(outcome.usage)
        of = opts.retries + 1
        step = self.steps.retry(
            raw, task, attempt=opts.attempt, stored=opts.stored_attempts, of=of,
            reason=outcome.result, log=outcome.log, notes_shown=self._notes_used,
            line=f"Round {self.round}: ↻ {task.short_id} attempt {opts.attempt} of {of} failed; again",
            take_next=self._may_take_next() and not opts.retry_delay and not reached,
            run=run, extra=usage)
        try:
            self._run_taking(step, run)
            self._notes_used = 0
        except tr.Stale as why:
            if why.key == self.k.taskopts(task.id):  # a replay of a retry that landed
                return
            self._finish(raw, task, outcome)
            return
        except (tr.WrongState, tr.RecordMissing):
            self._finish(raw, task, outcome)  # refused there too; settles and says why
            return
        self.log.info("round %d: %s failed (attempt %d of %d); put back to run again",
                      self.round, task.short_id, opts.attempt, of)
        if reached:
            self._enforce_budget()
        elif opts.retry_delay and self._next is None:
            self._pause_before_retry(opts.retry_delay)

    def _pause_before_retry(self, secs: float) -> None:
        """Wait ``secs`` before taking the retried task again; cut short by a shutdown, a
        stop flag or any event of this agent that leaves it not idle (kill, pause)."""
        deadline = time.monotonic() + secs
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            pipe = self.r.pipeline(transaction=False)
            state, flag = pipe.hget(self.steps.agent_key, "state").exists(self.k.stop(self.aid)).execute()
            if flag or state != "idle":
                return
            self._wait_for_event(min(left, WAIT_SECS))

    def _usage(self, task_id: str | None, usage: Usage | None) -> list[list[Any]]:
        """The writes recording a run's usage (none when it reported nothing)."""
        return usage_cmds(self.k, task_id, self.aid, usage) if usage is not None else []

    def _budget_reached(self, usage: Usage | None) -> bool:
        """Whether recording this cost reaches the town's budget (then nothing new is taken
        in the same step, and the AI agents are paused after it)."""
        if usage is None or not usage.cost_usd:
            return False
        try:
            return costs.would_reach(self.store, usage.cost_usd)
        except redis.RedisError:
            return False

    def _enforce_budget(self) -> None:
        try:
            paused = costs.enforce(self.store)
        except (redis.RedisError, tr.Refused) as exc:
            self.log.warning("could not apply the cost budget: %s", exc)
            return
        if paused:
            self.log.info("cost budget reached: paused %s", ", ".join(paused))

    def _notice(self, event_type: str, line: str, message: str) -> None:
        """An activity line and event about this agent (best effort)."""
        try:
            self._run(self.steps.notice(line, event_type, message[:300]))
        except (redis.RedisError, tr.Refused):
            pass
        self.log.warning("%s", message)

    def _settle(self, raw: bytes, line: str, extra: list[list[Any]], task_id: str | None = None,
                count: bool = True, take_next: bool = True) -> None:
        run = self._new_run()
        self._run_taking(self.steps.settle(raw, line, extra, task_id=task_id, count=count,
                                           notes_shown=self._notes_used,
                                           take_next=take_next and self._may_take_next(), run=run), run)
        if count:
            self._notes_used = 0

    def _requeue(self, raw: bytes, task: Task, outcome: Outcome) -> None:
        line = f"Round {self.round}: ↩️ {task.short_id} put back ({self._cancel_reason or 'cancelled'})"
        try:
            self._run(self.steps.requeue(raw, task, line=line, log=outcome.log), durable=True)
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
    """A running task's output lines on their way to its task log (keeping the last
    ``TASK_LOG_MAX``, counting every line in ``keys.task_log_count``): the heartbeat thread
    pushes what waits every ``LIVE_TICK``, a new line pushes lines waiting longer than
    ``LIVE_MAX_AGE`` itself, and :meth:`close` hands what is left to the step that records
    the outcome — so a quick run costs no extra round trip. Best effort: a lost server
    never fails the task (the lines stay for that step). Thread-safe."""

    def __init__(self, r: redis.Redis, keys: Keys, log_id: str):
        self.r = r
        self.key, self.count_key = keys.task_log(log_id), keys.task_log_count(log_id)
        self.pending: deque[str] = deque(maxlen=TASK_LOG_MAX)
        self.used = False
        self.closed = False
        self._dropped = 0  # lines that fell out of a full buffer (counted, never shown)
        self._oldest = 0.0  # when the oldest waiting line came
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            if self.closed:
                return
            if not self.pending:
                self._oldest = time.monotonic()
            elif len(self.pending) == TASK_LOG_MAX:
                self._dropped += 1
            self.pending.append(line)
            self.used = True
            due = time.monotonic() - self._oldest >= LIVE_MAX_AGE
        if due:
            self.flush()

    def flush(self) -> None:
        """Push the waiting lines now (from any thread)."""
        with self._lock:
            if self.closed or not self.pending:
                return
            lines = list(self.pending)
            if self._push(lines, self._dropped):
                self.pending.clear()
                self._dropped = 0

    def _push(self, lines: list[str], dropped: int = 0) -> bool:
        try:
            pipe = self.r.pipeline(transaction=True)
            if lines:
                pipe.rpush(self.key, *lines).ltrim(self.key, -TASK_LOG_MAX, -1)
            pipe.incrby(self.count_key, len(lines) + dropped).execute()
            return True
        except redis.RedisError:
            return False

    def note(self, line: str) -> None:
        """Append one line at once, also after the run ended (a function's late result)."""
        with self._lock:
            self._push([line])

    def close(self) -> list[str]:
        """The run ended: the lines not pushed yet (nothing is pushed from now on)."""
        with self._lock:
            self.closed = True
            left = list(self.pending)
            self.pending.clear()
            if self._dropped:  # so a follower knows lines were never shown
                self._push([], self._dropped)
            return left


def _flatten(h: dict[bytes, bytes]) -> list[bytes]:
    """An HGETALL reply as a dict back into the flat list a take step returns."""
    return [x for kv in h.items() for x in kv]


def _task(flat: list[bytes] | None) -> tuple[Task | None, str | None]:
    """The task in a raw HGETALL reply, and why it cannot be used (None when it can): not
    UTF-8, or not fitting tinytown's schema (:func:`~..models.task_problem`). No record:
    (None, None)."""
    if not flat:
        return None, None
    h: dict[str, str] = {}
    for name, value in zip(flat[::2], flat[1::2]):
        try:
            h[name.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            label = name.decode("utf-8", "replace")
            return None, f"holds bytes that are not UTF-8 (field {label!r})"
    problem = task_problem(h)
    return (None if problem else Task.from_hash(h)), problem
