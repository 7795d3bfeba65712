"""Getting work back from dead agents: ``recover`` and ``reclaim`` (spec §9.2–9.3).

*recover* finds agents whose worker died and marks them ``stopped``. A worker process of
this host that is gone (a dead kernel's function agents, a killed worker) is recovered at
once; otherwise two rules, by who runs the agent:

* agents with a ``worker:{aid}`` hash run (or ran) one of *our* workers, which heartbeat
  every few seconds even in the middle of a long task (so a long task is never mistaken
  for a dead worker, upstream §11.9): stale = no heartbeat for ``stale_after`` seconds;
  their in-flight work (processing list) goes back to the front of their inbox, their
  ``running`` tasks back to ``assigned``, and a command the dead worker left running on
  this host is stopped (:func:`stop_left_command`);
* any other agent (a Rust ``tt agent-loop``, which does not heartbeat during a CLI run;
  or one registered with ``start=False``) gets upstream's rule (§9.3): stale when its
  newest log file — ``.tt/logs/<name>.log``, or (our addition, fewer false alarms) a
  ``<name>_round_<N>.log`` the running CLI writes to — is older than ``stale_after``,
  or, with no log file, when its heartbeat is. Like upstream, only its state changes
  (``stopped`` + activity + event): its inbox, current task and tasks are left alone
  (``reclaim`` moves them).

*reclaim* moves what dead agents still hold — urgent list, inbox and processing list — to
another agent or to the backlog, or lists it. Unlike upstream (§11.10) listing never
removes anything, a task sent back to the backlog is reset to ``pending`` with no
assignee, and every move is one atomic step that only happens if the message is still
where it was seen.

Example::

    >>> dev = town.spawn("dev", cli="claude")
    >>> reviewer = town.spawn("reviewer", cli="claude", start=False)
    >>> os.kill(int(store.redis.hget(store.keys.worker(dev.id), "pid")), 9)   # kill -9 dev's worker
    >>> task = town.assign("dev", "Fix #12"); time.sleep(0.5)
    >>> [(a.name, a.state.value) for a in town.recover(stale_after=60)]   # a process of this host: at once
    [('dev', 'stopped')]
    >>> [(r.source, r.action, r.to) for r in town.reclaim(from_agent="dev", to="reviewer")]
    [('inbox', 'moved', 'reviewer')]
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Sequence

from . import lookup, procs, transitions as tr
from .errors import ConfigError, InvalidName
from .keys import SUPERVISOR_ID
from .models import Agent, Message, Task, canonical_uuid, hash_ts, parse_ts, utcnow
from .store import Store
from .tasks import list_tasks

_SOURCES = ("processing", "urgent", "inbox")


@dataclass(frozen=True)
class Reclaimed:
    """One item found (and maybe moved) by :meth:`Town.reclaim`.

    ``action`` is ``listed``, ``moved``, ``backlogged``, ``kept`` (left where it was: not a
    task, or unreadable, when sending to the backlog), ``cancelled`` or ``deleted``;
    ``source`` is ``urgent``, ``inbox``, ``processing`` or ``task`` (orphan-task mode).
    """

    agent: str
    source: str
    action: str
    task_id: str | None = None
    message: Message | None = None
    to: str | None = None


def stop_left_command(store: Store, aid: str, worker: dict[str, str] | None = None,
                      grace: float = 3.0) -> bool:
    """Stop the command a dead worker of this host left running (a CLI run in its own
    process group outlives a ``kill -9`` of its worker), so recovered work is not done twice
    at once. The worker records the command's identity in ``worker:{aid}`` while it runs;
    True if one was stopped.

    >>> dev = town.spawn("dev", cli="sleep 60")
    >>> task = town.assign("dev", "Take your time")
    >>> while not store.redis.hget(store.keys.worker(dev.id), "command"): time.sleep(0.05)
    >>> os.kill(int(store.redis.hget(store.keys.worker(dev.id), "pid")), 9)   # `sleep 60` runs on
    >>> stop_left_command(store, lookup.agent(store, "dev").id)
    True
    """
    h = worker if worker is not None else store.redis.hgetall(store.keys.worker(aid))
    if h.get("host") != socket.gethostname():
        return False  # none on record, or another host's
    stopped = procs.stop_group(h.get("command", ""), grace)
    # the id of the run, written before the run could start, is in its command's
    # environment: found even when the worker died before recording the command's pid
    if h.get("run") and procs.has_proc():
        stopped = procs.stop_tagged(procs.RUN_ID_VAR, h["run"], grace) or stopped
    return stopped


def worker_gone(worker: dict[str, str], aid: str,
                runs_here: Callable[[str], bool] | None = None) -> bool:
    """True when a worker hash names a worker of this host that no longer runs: a process
    that is gone, or — with ``runs_here`` (does this process still run the agent's
    thread?) — a function agent's thread of this very process that ended."""
    pid = worker.get("pid") or ""
    if worker.get("host") != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return runs_here is not None and worker.get("kind") == "function" and not runs_here(aid)
    return not procs.alive(int(pid))


def recover_orphans(store: Store, agents: Sequence[Agent],
                    runs_here: Callable[[str], bool] | None = None) -> list[Agent]:
    """Recover (as :func:`recover` does) those of ``agents`` whose registered worker of
    this host is gone — function agents of a dead kernel, a killed worker process, a
    thread of this process that ended (see :func:`worker_gone`) — at once, without waiting
    for their heartbeat to go stale. Returns them, stopped."""
    k, rule = store.keys, tr.AGENT_RULES["recover"]
    # not ``starting``: its worker hash may still name the previous (dead) launch
    agents = [a for a in agents if a.state in rule.allowed_from and a.state.value != "starting"]
    if not agents:
        return []
    pipe = store.redis.pipeline(transaction=False)
    for a in agents:
        pipe.hgetall(k.worker(a.id))
        pipe.hget(k.agent(a.id), "current_task")
        pipe.lrange(k.processing(a.id), 0, -1)
    replies = pipe.execute()
    recovered = []
    for i, agent in enumerate(agents):
        worker, current, raws = replies[3 * i:3 * i + 3]
        if not worker_gone(worker, agent.id, runs_here):
            continue
        pid = worker["pid"]
        step = tr.recover_agent(k, agent.id, agent.name, why=f"worker process {pid} is gone",
                                guards=[[k.worker(agent.id), "pid", pid],
                                        [k.worker(agent.id), "host", worker["host"]]],
                                ours=True, raws=raws, current=current)
        try:
            store.run(step)
        except tr.Refused:
            continue  # a new worker registered or it changed state since we looked
        stop_left_command(store, agent.id)  # a killed worker's command, if any
        recovered.append(lookup.agent(store, agent.id))
    return recovered


def recover(store: Store, stale_after: float = 120.0,
            runs_here: Callable[[str], bool] | None = None) -> list[Agent]:
    """Mark agents whose worker died ``stopped`` (see the module docstring for the two
    rules); ours get their in-flight work put back.

    >>> dev = town.spawn("dev", cli="claude")
    >>> os.kill(int(store.redis.hget(store.keys.worker(dev.id), "pid")), 9); time.sleep(0.5)
    >>> [a.name for a in recover(store, stale_after=60)]
    ['dev']
    """
    if isinstance(stale_after, bool) or not isinstance(stale_after, (int, float)) or stale_after <= 0:
        raise ConfigError(f"stale_after must be a positive number of seconds, got {stale_after!r}.")
    rule = tr.AGENT_RULES["recover"]
    k = store.keys
    now = utcnow()
    candidates = [a for a in lookup.all_agents(store) if a.state in rule.allowed_from]
    # a worker process of this host that is gone (a dead kernel's function agents, a killed
    # worker) is known dead at once: no need to wait for its heartbeat to go stale
    orphans = recover_orphans(store, candidates, runs_here)
    done = {a.id for a in orphans}
    candidates = [a for a in candidates if a.id not in done]
    pipe = store.redis.pipeline(transaction=False)
    for a in candidates:
        pipe.hmget(k.agent(a.id), "last_heartbeat", "current_task")
        pipe.lrange(k.processing(a.id), 0, -1)
        pipe.hgetall(k.worker(a.id))
    replies = pipe.execute() if candidates else []
    recovered = []
    for i, agent in enumerate(candidates):
        (beat, current), raws, worker = replies[3 * i: 3 * i + 3]
        ours = bool(worker)
        seen = parse_ts(beat)
        age = (now - seen).total_seconds() if seen else float("inf")
        log_age = None if ours else _log_age(store, agent.name)
        if (age if log_age is None else log_age) <= stale_after:
            continue
        why = f"no heartbeat for {age:.0f}s" if log_age is None else f"no log output for {log_age:.0f}s"
        step = tr.recover_agent(k, agent.id, agent.name, why=why, ours=ours, raws=raws,
                                current=current, guards=[[k.agent(agent.id), "last_heartbeat", beat or ""]])
        try:
            store.run(step)
        except tr.Refused:
            continue  # it heartbeat or changed state since we looked: alive after all
        if ours:
            stop_left_command(store, agent.id, worker)
        recovered.append(lookup.agent(store, agent.id))
    return orphans + recovered


def _log_age(store: Store, name: str) -> float | None:
    """Seconds since the agent's newest log file changed (upstream's liveness signal);
    None without a log file. An unreadable file counts as stale, as upstream."""
    newest = None
    try:
        paths = [store.paths.worker_log(name), *store.paths.round_logs(name)]
    except InvalidName:  # a name no file of ours can have (written by another program)
        return None
    for path in paths:
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        except OSError:
            mtime = 0.0
        newest = mtime if newest is None else max(newest, mtime)
    return None if newest is None else max(0.0, time.time() - newest)


# --------------------------------------------------------------------------- reclaim


def reclaim(store: Store, *, from_agent: Any = None, to: Any = None, to_backlog: bool = False,
            orphan_tasks: bool = False, cancel: bool = False, delete: bool = False) -> list[Reclaimed]:
    """See :meth:`Town.reclaim`."""
    if sum(map(bool, (to is not None, to_backlog, cancel, delete))) > 1:
        raise ConfigError("Choose one destination: to=..., to_backlog=True, cancel=True or delete=True.")
    if (cancel or delete) and not orphan_tasks:
        raise ConfigError("cancel/delete apply to orphan tasks; pass orphan_tasks=True as well.")
    target = None
    if to is not None:
        target = lookup.agent(store, to)
        if target.state.is_terminal:
            raise ConfigError(f"Agent {target.name!r} is {target.state.value}; reclaim to a live "
                              "agent, or restart it first.")
    agents = {a.id: a for a in lookup.all_agents(store)}
    source_agent = None
    if from_agent is not None:
        source_agent = lookup.agent(store, from_agent)
        if not source_agent.state.is_terminal:
            raise ConfigError(f"Agent {source_agent.name!r} is {source_agent.state.value}, not "
                              "dead; kill or close it first (reclaim takes work from dead agents).")
    if orphan_tasks:
        return _reclaim_orphans(store, agents, source_agent, target, to_backlog, cancel, delete)
    dead = [source_agent] if source_agent else [a for a in agents.values() if a.state.is_terminal]
    found: list[Reclaimed] = []
    for agent in dead:
        for source in _SOURCES:
            key = getattr(store.keys, source)(agent.id)
            for raw in store.redis.lrange(key, 0, -1):
                found.append(_reclaim_message(store, agent, source, key, raw, target, to_backlog))
    return found


def _reclaim_message(store: Store, agent: Agent, source: str, key: str, raw: str,
                     target: Agent | None, to_backlog: bool) -> Reclaimed:
    k = store.keys
    msg = tr.parse_message(raw)
    tid = canonical_uuid(msg.body["task_id"]) if msg and msg.type == "task_assign" else None
    item = dict(agent=agent.name, source=source, task_id=tid, message=msg)
    if target is None and not to_backlog:
        return Reclaimed(action="listed", **item)
    task = Task.from_hash(store.redis.hgetall(k.task(tid))) if tid else None
    ours = task is not None and not task.state.is_terminal and task.assigned_to == agent.id
    if to_backlog:
        if ours:
            step = tr.task_to_backlog(k, tid, agent.id, take_from=(key, raw),
                                      message=f"Task reclaimed from {agent.name} to the backlog")
        elif msg is not None and msg.type == "task":
            task = Task.new(msg.text)
            tid = item["task_id"] = task.id
            step = tr.backlog_add(k, task)
            step.spec["in_list"] = {"key": key, "value": raw}
            step.event("task_delegated", task_id=tid, agent_id=agent.id, new_state="Pending",
                       message=f"Task reclaimed from {agent.name} to the backlog")
        else:
            return Reclaimed(action="kept", **item)
        return _apply(store, step, Reclaimed(action="backlogged", **item))
    assert target is not None
    moved = raw if msg is None else _readdressed(msg, target.id)
    dest = ["LPUSH", k.urgent(target.id), moved] if source == "urgent" else (
        ["LPUSH", k.inbox(target.id), moved] if source == "processing" else
        ["RPUSH", k.inbox(target.id), moved])
    wake = tr.wake(k, target.id) if source == "urgent" else []  # the inbox wakes it anyway
    if ours:
        rule = tr.TASK_RULES["reassign"]
        step = tr.Change(k.task(tid), tr.streams(k, agent.id, target.id), {
            "require": True, "from": rule.sources, "guards": [[k.task(tid), "assigned_to", agent.id]],
            "in_list": {"key": key, "value": raw},
            "set": {"state": rule.to.value, "assigned_to": target.id, "updated_at": hash_ts(utcnow())},
            "cmds": [dest, *wake]})
        step.event(rule.event, agent_id=target.id, task_id=tid, new_state="Assigned",
                   message=f"Task reclaimed from {agent.name} to {target.name}")
    else:
        step = tr.Change(k.agent(target.id), [], {"require": True, "in_list": {"key": key, "value": raw},
                                                  "cmds": [dest, *wake]})
    return _apply(store, step, Reclaimed(action="moved", to=target.name, **item))


def _readdressed(msg: Message, to: str) -> str:
    msg = Message(id=msg.id, sender=msg.sender, to=to, type=msg.type, body=msg.body,
                  priority=msg.priority, created_at=msg.created_at, correlation_id=msg.correlation_id)
    return msg.to_json()


def _apply(store: Store, step: tr.Change, done: Reclaimed) -> Reclaimed:
    try:
        store.run(step)
    except tr.Refused:  # moved, finished or taken by someone else meanwhile
        return Reclaimed(agent=done.agent, source=done.source, action="kept",
                         task_id=done.task_id, message=done.message)
    return done


def _reclaim_orphans(store: Store, agents: dict[str, Agent], source_agent: Agent | None,
                     target: Agent | None, to_backlog: bool, cancel: bool,
                     delete: bool) -> list[Reclaimed]:
    k = store.keys
    found = []
    for task in list_tasks(store):
        owner = agents.get(task.assigned_to or "")
        if task.state.is_terminal or not task.assigned_to or (owner and not owner.state.is_terminal):
            continue
        if source_agent is not None and task.assigned_to != source_agent.id:
            continue
        name = owner.name if owner else task.assigned_to[:8]
        item = dict(agent=name, source="task", task_id=task.id)
        if not (target or to_backlog or cancel or delete):
            found.append(Reclaimed(action="listed", **item))
            continue
        tkey = k.task(task.id)
        # the task's messages still held by the dead agent go with it (never run twice)
        drop = [["LREM", getattr(k, s)(task.assigned_to), 0, raw] for s in _SOURCES
                for raw in store.redis.lrange(getattr(k, s)(task.assigned_to), 0, -1)
                if (m := tr.parse_message(raw)) and m.type == "task_assign" and m.body["task_id"] == task.id]
        spec: dict[str, Any] = {"require": True, "from": tr.TASK_RULES["cancel"].sources,
                                "guards": [[tkey, "assigned_to", task.assigned_to]], "cmds": drop}
        now = hash_ts(utcnow())
        streams = tr.streams(k, task.assigned_to if owner else None)
        if delete:
            spec["cmds"].append(["DEL", tkey])
            action, event = "deleted", None
        elif cancel:
            why = "assignee is in a terminal state" if owner else "assignee no longer exists"
            rule = tr.TASK_RULES["cancel"]
            spec["set"] = {"state": rule.to.value, "result": f"Cancelled: {why}",
                           "completed_at": now, "updated_at": now}
            action, event = "cancelled", (rule.event, f"Task cancelled: {why}", "Cancelled")
        elif to_backlog:
            rule = tr.TASK_RULES["to_backlog"]
            spec.update({"set": {"state": rule.to.value, "updated_at": now},
                         "del": ["assigned_to", "started_at"]})
            spec["cmds"].append(["RPUSH", k.backlog, task.id])
            action, event = "backlogged", (rule.event, "Orphan task returned to the backlog", "Pending")
        else:
            assert target is not None
            rule = tr.TASK_RULES["reassign"]
            msg = Message.task_assign(task.id, sender=SUPERVISOR_ID, to=target.id)
            spec["set"] = {"state": rule.to.value, "assigned_to": target.id, "updated_at": now}
            spec["cmds"].append(["RPUSH", k.inbox(target.id), msg.to_json()])
            streams = tr.streams(k, target.id)
            action, event = "moved", (rule.event, f"Orphan task reassigned to {target.name}", "Assigned")
        step = tr.Change(tkey, streams, spec)
        if event:
            step.event(event[0], task_id=task.id, agent_id=target.id if target else None,
                       message=event[1], new_state=event[2])
        found.append(_apply(store, step, Reclaimed(action=action, to=target.name if target else None,
                                                   **item)))
    return found
