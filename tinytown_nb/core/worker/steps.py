"""The worker's atomic steps, as pure builders: each returns one :class:`~..transitions.Change`.

Every write a worker makes carries a guard on its launch token (``worker:{aid}`` field
``token``), so a worker replaced by a restart — or declared dead by ``recover`` — can no
longer write. A finishing step also *takes* the next message (urgent first, oldest first)
and starts it when it is an open task of this agent, so a busy worker costs one round
trip per task.

Example::

    >>> k, aid = Keys("demo"), "3f2a9c1e-0000-4000-8000-000000000000"
    >>> steps = Steps(k, aid, token="abc", mail=[[k.urgent(aid), "RIGHT"], [k.inbox(aid), "LEFT"]])
    >>> raw = Message.task_assign("9c1e5b7a-0000-4000-8000-000000000000", sender=aid, to=aid).to_json()
    >>> steps.put_back(raw, "inbox").spec["guards"][0][1:]
    ['token', 'abc']
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Sequence

from ..keys import Keys
from ..models import Message, Task, TaskState, event_json, hash_ts, json_ts, spellings, utcnow
from .. import transitions as tr
from ..transitions import AGENT_RULES, TASK_RULES, Change

TASK_LOG_MAX = 1000  # lines kept per task log (a function's prints: the last ones)
NOTES_MAX = 50  # informational messages an AI CLI agent is shown at most (the newest)
_TID, _OLD, _TS, _SUM = ("\u2063TID\u2063", "\u2063OLD\u2063", "\u2063TS\u2063",
                         "\u2063SUM\u2063")  # the script fills these in
_OPEN_TASK = spellings(s for s in TaskState if not s.is_terminal)


class Steps:
    """Builds the changes of one worker launch (agent ``aid``, token ``token``).

    ``mail`` is where the next message comes from, in reading order
    (:meth:`~..store.Store.mail_lists`).
    """

    def __init__(self, keys: Keys, aid: str, token: str, mail: list[list[str]]):
        self.k = keys
        self.aid = aid
        self.token = token
        self.mail = mail
        self.agent_key = keys.agent(aid)
        self.worker_key = keys.worker(aid)
        self.processing = keys.processing(aid)
        self.inbox, self.urgent = keys.inbox(aid), keys.urgent(aid)
        self.streams = tr.streams(keys, aid)
        self._start_template: dict[str, Any] | None = None
        # the take parts of take() and take_next(): the same for every step of this launch
        # (the start's times are the server's, tr.NOW), so built once and shared (read only)
        self._take: dict[str, Any] | None = None
        self._take_next: dict[str, Any] | None = None

    # ------------------------------------------------------------------ pieces
    def guarded(self, key: str | None = None, **spec: Any) -> Change:
        """A change of the agent (or ``key``) that only applies while this launch owns it."""
        guards = [[self.worker_key, "token", self.token], *spec.pop("guards", [])]
        return Change(key or self.agent_key, self.streams, {"require": True, "guards": guards, **spec})

    def activity(self, line: str) -> list[list[Any]]:
        return tr.activity(self.k, self.aid, line)

    def task_log(self, log_id: str, lines: Sequence[str]) -> list[list[Any]]:
        """Commands appending output lines to a task's log (keeping the last ones)."""
        if not lines:
            return []
        key = self.k.task_log(log_id)
        lines = lines[-TASK_LOG_MAX:]
        return [["RPUSH", key, *lines], ["LTRIM", key, -TASK_LOG_MAX, -1],
                ["INCRBY", self.k.task_log_count(log_id), len(lines)]]

    def note(self, msg: Message) -> list[list[Any]]:
        """Keep an informational message or confirmation for the next AI CLI prompt."""
        key = self.k.notes(self.aid)
        return [["RPUSH", key, f"{msg.category}|{msg.summary(100)}"], ["LTRIM", key, -NOTES_MAX, -1]]

    def notes_shown(self, n: int) -> list[list[Any]]:
        """Drop the ``n`` notes the finished run's prompt showed (newer ones stay)."""
        return [["LTRIM", self.k.notes(self.aid), n, -1]] if n else []

    def back_to_source(self, raw: bytes | str, source: str) -> list[Any]:
        """The command that returns an untouched message to the front of where it was."""
        return ["RPUSH", self.urgent, tr.Raw(raw)] if source == "urgent" else ["LPUSH", self.inbox, tr.Raw(raw)]

    # ------------------------------------------------------------------ taking work
    def take_spec(self, **conditions: Any) -> dict[str, Any]:
        """The ``take`` part of a step: the next message moves to the processing list, and
        a task assigned to us starts at once — one round trip."""
        # the start's times are the server's when the script runs (tr.NOW), not this
        # process's when it builds the step: a step that waits for the GIL or the socket
        # must not start a task "before" the step that released it finished
        now = tr.NOW
        if self._start_template is None:
            self._start_template = self._start_event()
        start = {"agent": self.aid, "agent_key": self.agent_key,
                 "agent_from": AGENT_RULES["work"].sources,
                 "agent_set": {"state": AGENT_RULES["work"].to.value, "last_heartbeat": now,
                               "last_active_at": now},
                 "task_set": {"state": TASK_RULES["run"].to.value, "started_at": now, "updated_at": now},
                 "open": TASK_RULES["run"].sources, "event": self._start_template}
        return {"take": {"lists": self.mail, "dst": self.processing,
                         "task_prefix": self.k.task(""), "extra": self.k.taskopts(""),
                         "start": start, **conditions}}

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

    def run_id(self, run: str | None) -> list[list[Any]]:
        """Record the id of the run a step may start, before it can start: the command of
        that run carries it in its environment (``TINYTOWN_RUN_ID``), so whoever recovers a
        dead worker finds and stops it even if the worker died before saying its pid."""
        return [["HSET", self.worker_key, "run", run]] if run else []

    def take(self, run: str | None = None) -> Change:
        """The idle loop's step: checks the stop flag, the state and the token, and takes
        the next message in reading order (starting it when it is our open task)."""
        if self._take is None:
            self._take = self.take_spec()
        return self.guarded(no_keys=[self.k.stop(self.aid)], cmds=self.run_id(run),
                            **{"from": AGENT_RULES["work"].sources}, **self._take)

    def take_next(self) -> dict[str, Any]:
        """The ``take`` part a finishing step adds: only while the agent may start work
        (idle or starting, no stop flag)."""
        if self._take_next is None:
            self._take_next = self.take_spec(if_key=self.agent_key, if_states=["idle", "starting"],
                                             unless_keys=[self.k.stop(self.aid)])
        return self._take_next

    # ------------------------------------------------------------------ lifecycle
    def register(self, info: dict[str, Any], raws: Sequence[str], current: str | None, *,
                 guarded: bool, line: str, message: str) -> Change:
        """Claim the agent for this launch: worker hash, unfinished work put back (see
        :func:`~..transitions.requeue`), ``starting``/``idle``/… → ``idle``."""
        rule = AGENT_RULES["register"]
        now = hash_ts(utcnow())
        change = Change(self.agent_key, self.streams, {
            "require": True, "from": rule.sources,
            "guards": [[self.worker_key, "token", self.token]] if guarded else [],
            "set": {"last_heartbeat": now, "last_active_at": now}, "del": ["current_task"],
            "companion": {"key": self.agent_key, "set_from": AGENT_RULES["idle"].sources,
                          "set": {"state": rule.to.value}},
            "requeue": tr.requeue(self.k, self.aid, raws, current),
            "cmds": [["HSET", self.worker_key, *[x for kv in info.items() for x in kv]],
                     *self.activity(line)]})
        return change.event(rule.event, agent_id=self.aid, new_state_from=self.agent_key, message=message)

    def stop(self, line: str, name: str, back: Sequence[list[Any]] = (), clear_flag: bool = False) -> Change:
        """The worker ends: agent ``stopped`` (messages in ``back`` returned first)."""
        rule = AGENT_RULES["stopped"]
        cmds = [*back, *([["DEL", self.k.stop(self.aid)]] if clear_flag else []), *self.activity(line)]
        change = self.guarded(**{"from": rule.sources},
                              set={"state": rule.to.value, "last_heartbeat": hash_ts(utcnow())}, cmds=cmds)
        return change.event(rule.event, agent_id=self.aid, new_state="Stopped",
                            message=f"Agent {name}: {line[2:]}")

    def drain(self, secs: float, name: str) -> Change:
        """Idle for too long: ``idle`` → ``draining`` (the stop step follows)."""
        rule = AGENT_RULES["drain"]
        line = f"🔻 Idle timeout reached after {secs:g}s; draining and stopping"
        change = self.guarded(**{"from": rule.sources}, set={"state": rule.to.value},
                              cmds=self.activity(line))
        return change.event(rule.event, agent_id=self.aid, new_state="Draining",
                            message=f"Agent {name}: idle for {secs:g}s")

    def crash(self, exc: BaseException) -> Change:
        """The worker failed: agent ``error`` with the reason."""
        rule = AGENT_RULES["crash"]
        change = self.guarded(**{"from": rule.sources}, set={"state": rule.to.value},
                              cmds=self.activity(f"❌ Worker crashed: {type(exc).__name__}: {exc}"[:200]))
        return change.event(rule.event, agent_id=self.aid, new_state="Error",
                            message=f"Worker crashed: {type(exc).__name__}: {exc}"[:300])

    def heartbeat(self, command: str | None) -> Change:
        """The heartbeat (and, while a command runs, its identity on record); its reply is
        ``[state, urgent messages waiting, stop flag set]`` — what may need the idle loop."""
        return self.guarded(set={"last_heartbeat": hash_ts(utcnow())},
                            cmds=[["HSET", self.worker_key, "command", command]] if command else [],
                            peek=[self.urgent, self.k.stop(self.aid)])

    def abandon(self, raws: Sequence[str], current: str | None, line: str, name: str) -> Change:
        """For a worker that cannot stop in time: agent ``stopped``, in-flight work back in
        the inbox, token revoked (the stuck thread can no longer write)."""
        rule = AGENT_RULES["stopped"]
        change = Change(self.agent_key, self.streams, {
            "require": True, "from": AGENT_RULES["register"].sources,
            "guards": [[self.worker_key, "token", self.token]],
            "set": {"state": rule.to.value, "last_heartbeat": hash_ts(utcnow())},
            "del": ["current_task"], "requeue": tr.requeue(self.k, self.aid, raws, current),
            "cmds": [["HDEL", self.worker_key, "token"], *self.activity(line)]})
        return change.event(rule.event, agent_id=self.aid, new_state="Stopped",
                            message=f"Agent {name}: {line[2:]}")

    # ------------------------------------------------------------------ messages
    def ack(self, raw: str, line: str, extra: Sequence[list[Any]] = (), *,
            take_next: bool, run: str | None = None) -> Change:
        """A message consumed without a run (informational, answered, skipped)."""
        return self.guarded(cmds=[["LREM", self.processing, 1, tr.Raw(raw)], *self.activity(line), *extra,
                                  *self.run_id(run)],
                            **(self.take_next() if take_next else {}))

    def dead_letter(self, raw: bytes | str, *, did: str, source: str, reason: str, name: str,
                    task_id: str | None = None, fail_task: bool = False,
                    take_next: bool, run: str | None = None) -> Change:
        """Set aside a message (or the task it names) the town cannot use: the message goes,
        byte for byte, from the processing list to the dead letter ``did`` with the reason
        and an event; with ``fail_task`` its task (ours, unfinished) is failed with the
        reason, so no one waits for it. The agent goes on with its next message."""
        now = utcnow()
        stamp = hash_ts(now)
        value = tr.Raw(raw)
        record = ["HSET", self.k.dead_letter(did), "raw", value, "reason", reason,
                  "agent_id", self.aid, "source", source, "at", stamp,
                  *(["task_id", task_id] if task_id else [])]
        cmds: list[list[Any]] = [["LREM", self.processing, 1, value], record,
                                 ["ZADD", self.k.dead_letters, int(now.timestamp() * 1000), did]]
        done = AGENT_RULES["done"]
        spec: dict[str, Any] = {"companion": {"key": self.agent_key, "set_from": done.sources,
                                              "set": {"state": done.to.value, "last_active_at": stamp}}}
        if fail_task and task_id:
            tkey = self.k.task(task_id)
            rule = TASK_RULES["fail"]
            cmds.append(["HSET", tkey, "state", rule.to.value, "result", f"Quarantined: {reason}",
                         "completed_at", stamp, "updated_at", stamp])
            spec["companion"]["clear_current"] = task_id
        line = f"☣️ Set aside a message: {reason}"[:200]
        change = self.guarded(cmds=[*cmds, *self.activity(line), *self.run_id(run)], **spec,
                              **(self.take_next() if take_next else {}))
        return change.event("dead_letter", with_old_state=False, agent_id=self.aid, task_id=task_id,
                            message=f"Agent {name} set aside a message: {reason}"[:300])

    def put_back(self, raw: str, source: str) -> Change:
        """Return an untouched message to where it was taken from."""
        return self.guarded(cmds=[["LREM", self.processing, 1, tr.Raw(raw)], self.back_to_source(raw, source)])

    def start(self, task: Task | None, what: str, run: str | None = None) -> Change:
        """Agent → working (+ current task), task → running; refused (FLAG/STATE/STALE)
        when the agent may not work now or the task changed since it was read."""
        work, running = AGENT_RULES["work"], TASK_RULES["run"]
        now = hash_ts(utcnow())
        fields = {"state": work.to.value, "last_heartbeat": now, "last_active_at": now}
        guards: list[list[Any]] = []
        spec: dict[str, Any] = {"from": work.sources}
        if task is not None:
            tkey = self.k.task(task.id)
            fields["current_task"] = task.id
            guards = [[tkey, "state", running.sources], [tkey, "assigned_to", self.aid]]
            spec["companion"] = {"key": tkey, "set": {"state": running.to.value, "started_at": now,
                                                      "updated_at": now}}
            what = f"task {task.short_id}: {task.summary(80)}"
        change = self.guarded(guards=guards, set=fields, no_keys=[self.k.stop(self.aid)],
                              cmds=self.run_id(run), **spec)
        return change.event(work.event, agent_id=self.aid, task_id=task.id if task else None,
                            new_state="Working", message=f"Working on {what}")

    def finish(self, raw: str, task: Task, *, ok: bool, result: str, log: Sequence[str],
               line: str, notes_shown: int, take_next: bool, run: str | None = None,
               extra: Sequence[list[Any]] = ()) -> Change:
        """Task completed/failed + agent idle + counters + message off processing (+ the
        next message taken), in one step; ``extra``: further writes of the same step (the
        run's usage)."""
        rule = TASK_RULES["complete" if ok else "fail"]
        now = hash_ts(utcnow())
        tkey = self.k.task(task.id)
        incr = {"rounds_completed": 1, **({"tasks_completed": 1} if ok else {})}
        change = self.guarded(
            tkey, **{"from": _OPEN_TASK}, guards=[[tkey, "assigned_to", self.aid]],
            set={"state": rule.to.value, "result": result, "completed_at": now, "updated_at": now},
            companion={"key": self.agent_key, "set_from": AGENT_RULES["done"].sources, "incr": incr,
                       "clear_current": task.id,
                       "set": {"state": AGENT_RULES["done"].to.value, "last_active_at": now,
                               "last_heartbeat": now}},
            cmds=[["LREM", self.processing, 1, tr.Raw(raw)], *self.activity(line),
                  *self.task_log(task.id, log), *self.notes_shown(notes_shown), *self.run_id(run),
                  *extra],
            **(self.take_next() if take_next else {}))
        verb = "completed" if ok else "failed"
        detail = task.summary(80) if ok else result.strip()[:120]
        return change.event(rule.event, agent_id=self.aid, task_id=task.id,
                            new_state=rule.to.debug_name, message=f"Task {verb}: {detail}")

    def settle(self, raw: str, line: str, extra: Sequence[list[Any]], *, task_id: str | None = None,
               count: bool = True, notes_shown: int = 0, take_next: bool,
               run: str | None = None) -> Change:
        """When there is no task record to finish: agent idle, round counted (``count``),
        message off processing."""
        now = hash_ts(utcnow())
        done = AGENT_RULES["done"]
        change = self.guarded(
            companion={"key": self.agent_key, "set_from": done.sources,
                       "incr": {"rounds_completed": 1 if count else 0},
                       "set": {"state": done.to.value, "last_active_at": now, "last_heartbeat": now},
                       **({"clear_current": task_id} if task_id else {})},
            cmds=[["LREM", self.processing, 1, tr.Raw(raw)], *self.activity(line), *extra,
                  *(self.notes_shown(notes_shown) if count else []), *self.run_id(run)],
            **(self.take_next() if take_next else {}))
        return change.event(done.event, agent_id=self.aid, task_id=task_id,
                            new_state_from=self.agent_key, message=line)

    def requeue(self, raw: str, task: Task, *, line: str, log: Sequence[str]) -> Change:
        """The run was cancelled (kill, shutdown): task back to ``assigned``, message back
        to the front of the inbox, so a restart or a reclaim does it again."""
        rule = TASK_RULES["requeue"]
        tkey = self.k.task(task.id)
        return self.guarded(
            tkey, **{"from": rule.sources}, guards=[[tkey, "assigned_to", self.aid]],
            set={"state": rule.to.value, "updated_at": hash_ts(utcnow())},
            companion={"key": self.agent_key, "clear_current": task.id,
                       "set_from": AGENT_RULES["done"].sources,
                       "set": {"state": AGENT_RULES["done"].to.value}},
            cmds=[["LREM", self.processing, 1, tr.Raw(raw)], ["LPUSH", self.inbox, tr.Raw(raw)],
                  *self.activity(line), *self.task_log(task.id, log)])

    # ------------------------------------------------------------------ runs (issues 10, 11)
    def retry(self, raw: str, task: Task, *, attempt: int, stored: str, of: int, reason: str,
              log: Sequence[str], line: str, notes_shown: int, take_next: bool,
              run: str | None = None, extra: Sequence[list[Any]] = ()) -> Change:
        """A failed attempt ``attempt`` (of ``of``) is run again, in one step: task back to
        ``assigned`` (tinytown's requeue), its message back to the front of the inbox, the
        attempt count + 1 (guarded: only if the stored count is still ``stored``), agent
        idle, round counted, a ``task_retried`` event with the reason. Refused (STATE) when
        the task ended meanwhile — cancelled, or completed through ``ttnb task complete`` —
        so a retry never overrides either."""
        rule = TASK_RULES["requeue"]
        now = hash_ts(utcnow())
        tkey, okey = self.k.task(task.id), self.k.taskopts(task.id)
        why = reason.strip().splitlines()[0][:300] if reason.strip() else "failed"
        change = self.guarded(
            tkey, **{"from": rule.sources},
            guards=[[tkey, "assigned_to", self.aid], [okey, "attempts", stored]],
            set={"state": rule.to.value, "updated_at": now},
            companion={"key": self.agent_key, "set_from": AGENT_RULES["done"].sources,
                       "incr": {"rounds_completed": 1}, "clear_current": task.id,
                       "set": {"state": AGENT_RULES["done"].to.value, "last_active_at": now,
                               "last_heartbeat": now}},
            cmds=[["LREM", self.processing, 1, tr.Raw(raw)], ["LPUSH", self.inbox, tr.Raw(raw)],
                  ["HSET", okey, "id", task.id, "attempts", attempt + 1, "last_error", why],
                  ["SADD", self.k.tasks_with_opts, task.id],
                  *self.activity(line),
                  *self.task_log(task.id, [*log, f"↻ attempt {attempt} of {of} failed ({why}); "
                                                 f"running it again"]),
                  *self.notes_shown(notes_shown), *self.run_id(run), *extra],
            **(self.take_next() if take_next else {}))
        return change.event("task_retried", agent_id=self.aid, task_id=task.id,
                            new_state=rule.to.debug_name,
                            message=f"Task retried (attempt {attempt + 1} of {of}): {why}"[:300])

    def notice(self, line: str, event_type: str, message: str) -> Change:
        """An activity line and an event about this agent, changing no state (e.g. an AI
        CLI that refused the machine-readable flags now runs with plain output)."""
        change = self.guarded(cmds=self.activity(line))
        return change.event(event_type, with_old_state=False, agent_id=self.aid, message=message)
