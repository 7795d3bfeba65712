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

    >>> town.recover(stale_after=60)                       # doctest: +SKIP
    [<Agent dev stopped>]
    >>> town.reclaim(from_agent="dev", to="reviewer")      # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from .errors import ConfigError
from .keys import SUPERVISOR_ID
from .models import Agent, Message, Task, TaskState, canonical_uuid, hash_ts, parse_ts, utcnow
from .transitions import AGENT_RULES, TASK_RULES, Change, states

if TYPE_CHECKING:
    from .town import Town

_OPEN = states(s for s in TaskState if not s.is_terminal) + ["in_flight"]
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


def process_identity(pid: int) -> str | None:
    """``"<pid>:<start time>"`` of a live process (Linux ``/proc``), which a later process
    reusing the pid cannot match; None when it is gone (or there is no ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else f"{pid}:{fields[19]}"  # field 22: start time


def stop_left_command(town: "Town", aid: str, worker: dict[str, str] | None = None,
                      grace: float = 3.0) -> bool:
    """Stop the command a dead worker of this host left running (a CLI run in its own
    process group outlives a ``kill -9`` of its worker), so recovered work is not done twice
    at once: SIGTERM to its group, SIGKILL after ``grace`` s. The worker records the
    command's identity in ``worker:{aid}`` while it runs; True if one was stopped.

    >>> stop_left_command(town, town.agent("dev").id)   # doctest: +SKIP
    True
    """
    h = worker if worker is not None else town.redis.hgetall(town.keys.worker(aid))
    ident = h.get("command", "")
    pid = ident.split(":")[0]
    if not pid.isdigit() or h.get("host") != socket.gethostname() or process_identity(int(pid)) != ident:
        return False  # none on record, another host's, or gone (a reused pid never matches)
    pgid = int(pid)
    deadline = time.monotonic() + grace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return True
        while time.monotonic() < deadline and process_identity(pgid) == ident:
            time.sleep(0.05)
        if process_identity(pgid) != ident:
            break
    return True


def requeue_spec(town: "Town", aid: str, raws: list[str], current: str | None) -> dict[str, Any]:
    """The ``requeue`` part of a transition: processing list → inbox front, running → assigned."""
    tasks = {current} if canonical_uuid(current) else set()
    for raw in raws:
        msg = _parse(raw)
        if msg is not None and msg.type == "task_assign" and canonical_uuid(msg.body["task_id"]):
            tasks.add(canonical_uuid(msg.body["task_id"]))
    k = town.keys
    return {"src": k.processing(aid), "dst": k.inbox(aid), "agent": aid,
            "tasks": [k.task(t) for t in sorted(tasks)], "now": hash_ts(utcnow())}


def recover(town: "Town", stale_after: float = 120.0) -> list[Agent]:
    """Mark agents whose worker died ``stopped`` (see the module docstring for the two
    rules); ours get their in-flight work put back.

    >>> [a.name for a in recover(town, stale_after=60)]   # doctest: +SKIP
    ['dev']
    """
    if not isinstance(stale_after, (int, float)) or stale_after <= 0:
        raise ConfigError(f"stale_after must be a positive number of seconds, got {stale_after!r}.")
    rule = AGENT_RULES["recover"]
    k = town.keys
    now = utcnow()
    candidates = [a for a in town.agents() if a.state in rule.allowed_from]
    # a worker process of this host that is gone (a dead kernel's function agents, a killed
    # worker) is known dead at once: no need to wait for its heartbeat to go stale
    orphans = town._recover_orphans(candidates)
    done = {a.id for a in orphans}
    candidates = [a for a in candidates if a.id not in done]
    pipe = town.redis.pipeline(transaction=False)
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
        log_age = None if ours else _log_age(town, agent.name)
        if (age if log_age is None else log_age) <= stale_after:
            continue
        why = f"no heartbeat for {age:.0f}s" if log_age is None else f"no log output for {log_age:.0f}s"
        line = f"🔄 Recovered (orphaned): {why}"
        spec: dict[str, Any] = {
            "require": True, "from": states(rule.allowed_from),
            "guards": [[k.agent(agent.id), "last_heartbeat", beat or ""]],
            "set": {"state": "stopped"}, "cmds": town._activity_cmds(agent.id, line)}
        if ours:  # our worker is gone for good: revoke it, put its work back
            spec.update({"del": ["current_task"], "requeue": requeue_spec(town, agent.id, raws, current),
                         "cmds": [["HDEL", k.worker(agent.id), "token"], *spec["cmds"]]})
        change = Change(k.agent(agent.id), town._agent_streams(agent.id), spec)
        change.event(rule.event, agent_id=agent.id, new_state="Stopped",
                     message=f"Agent {agent.name} recovered: {why}")
        try:
            town._script(change)
        except redis.ResponseError:
            continue  # it heartbeat or changed state since we looked: alive after all
        if ours:
            stop_left_command(town, agent.id, worker)
        recovered.append(town.agent(agent.id))
    return orphans + recovered


def _log_age(town: "Town", name: str) -> float | None:
    """Seconds since the agent's newest log file changed (upstream's liveness signal);
    None without a log file. An unreadable file counts as stale, as upstream."""
    logs = Path(town.root) / ".tt" / "logs"
    newest = None
    for path in [logs / f"{name}.log", *logs.glob(f"{glob.escape(name)}_round_*.log")]:
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        except OSError:
            mtime = 0.0
        newest = mtime if newest is None else max(newest, mtime)
    return None if newest is None else max(0.0, time.time() - newest)


# --------------------------------------------------------------------------- reclaim


def reclaim(town: "Town", *, from_agent: Any = None, to: Any = None, to_backlog: bool = False,
            orphan_tasks: bool = False, cancel: bool = False, delete: bool = False) -> list[Reclaimed]:
    """See :meth:`Town.reclaim`."""
    if sum(map(bool, (to is not None, to_backlog, cancel, delete))) > 1:
        raise ConfigError("Choose one destination: to=..., to_backlog=True, cancel=True or delete=True.")
    if (cancel or delete) and not orphan_tasks:
        raise ConfigError("cancel/delete apply to orphan tasks; pass orphan_tasks=True as well.")
    target = None
    if to is not None:
        target = town.agent(to)
        if target.state.is_terminal:
            raise ConfigError(f"Agent {target.name!r} is {target.state.value}; reclaim to a live "
                              "agent, or restart it first.")
    agents = {a.id: a for a in town.agents()}
    source_agent = None
    if from_agent is not None:
        source_agent = town.agent(from_agent)
        if not source_agent.state.is_terminal:
            raise ConfigError(f"Agent {source_agent.name!r} is {source_agent.state.value}, not "
                              "dead; kill or close it first (reclaim takes work from dead agents).")
    if orphan_tasks:
        return _reclaim_orphans(town, agents, source_agent, target, to_backlog, cancel, delete)
    dead = [source_agent] if source_agent else [a for a in agents.values() if a.state.is_terminal]
    found: list[Reclaimed] = []
    for agent in dead:
        for source in _SOURCES:
            key = getattr(town.keys, source)(agent.id)
            for raw in town.redis.lrange(key, 0, -1):
                found.append(_reclaim_message(town, agent, source, key, raw, target, to_backlog))
    return found


def _reclaim_message(town: "Town", agent: Agent, source: str, key: str, raw: str,
                     target: Agent | None, to_backlog: bool) -> Reclaimed:
    k = town.keys
    msg = _parse(raw)
    tid = canonical_uuid(msg.body["task_id"]) if msg and msg.type == "task_assign" else None
    item = dict(agent=agent.name, source=source, task_id=tid, message=msg)
    if target is None and not to_backlog:
        return Reclaimed(action="listed", **item)
    task = Task.from_hash(town.redis.hgetall(k.task(tid))) if tid else None
    ours = task is not None and not task.state.is_terminal and task.assigned_to == agent.id
    now = utcnow()
    if to_backlog:
        if ours:
            change = Change(k.task(tid), town._agent_streams(agent.id), {
                "require": True, "from": _OPEN, "guards": [[k.task(tid), "assigned_to", agent.id]],
                "in_list": {"key": key, "value": raw},
                "set": {"state": "pending", "updated_at": hash_ts(now)},
                "del": ["assigned_to", "started_at"], "cmds": [["RPUSH", k.backlog, tid]]})
        elif msg is not None and msg.type == "task":
            task = Task.new(msg.text)
            tid = item["task_id"] = task.id
            change = Change(k.task(tid), town._agent_streams(), {
                "absent": True, "in_list": {"key": key, "value": raw}, "set": task.to_hash(),
                "cmds": [["RPUSH", k.backlog, tid]]})
        else:
            return Reclaimed(action="kept", **item)
        change.event("task_delegated", task_id=tid, agent_id=agent.id, new_state="Pending",
                     message=f"Task reclaimed from {agent.name} to the backlog")
        return _apply(town, change, Reclaimed(action="backlogged", **item))
    assert target is not None
    moved = raw if msg is None else _readdressed(msg, target.id)
    dest = ["LPUSH", k.urgent(target.id), moved] if source == "urgent" else (
        ["LPUSH", k.inbox(target.id), moved] if source == "processing" else
        ["RPUSH", k.inbox(target.id), moved])
    if ours:
        change = Change(k.task(tid), town._agent_streams(agent.id, target.id), {
            "require": True, "from": _OPEN, "guards": [[k.task(tid), "assigned_to", agent.id]],
            "in_list": {"key": key, "value": raw},
            "set": {"state": "assigned", "assigned_to": target.id, "updated_at": hash_ts(now)},
            "cmds": [dest]})
        change.event("task_assigned", agent_id=target.id, task_id=tid, new_state="Assigned",
                     message=f"Task reclaimed from {agent.name} to {target.name}")
    else:
        change = Change(k.agent(target.id), [], {"require": True, "in_list": {"key": key, "value": raw},
                                                 "cmds": [dest]})
    return _apply(town, change, Reclaimed(action="moved", to=target.name, **item))


def _readdressed(msg: Message, to: str) -> str:
    msg = Message(id=msg.id, sender=msg.sender, to=to, type=msg.type, body=msg.body,
                  priority=msg.priority, created_at=msg.created_at, correlation_id=msg.correlation_id)
    return msg.to_json()


def _apply(town: "Town", change: Change, done: Reclaimed) -> Reclaimed:
    try:
        town._script(change)
    except redis.ResponseError:  # moved, finished or taken by someone else meanwhile
        return Reclaimed(agent=done.agent, source=done.source, action="kept",
                         task_id=done.task_id, message=done.message)
    return done


def _reclaim_orphans(town: "Town", agents: dict[str, Agent], source_agent: Agent | None,
                     target: Agent | None, to_backlog: bool, cancel: bool,
                     delete: bool) -> list[Reclaimed]:
    k = town.keys
    found = []
    for task in town.tasks():
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
                for raw in town.redis.lrange(getattr(k, s)(task.assigned_to), 0, -1)
                if (m := _parse(raw)) and m.type == "task_assign" and m.body["task_id"] == task.id]
        spec: dict[str, Any] = {"require": True, "from": _OPEN,
                                "guards": [[tkey, "assigned_to", task.assigned_to]], "cmds": drop}
        now = hash_ts(utcnow())
        streams = town._agent_streams(task.assigned_to if owner else None)
        if delete:
            spec["cmds"].append(["DEL", tkey])
            action, event = "deleted", None
        elif cancel:
            why = "assignee is in a terminal state" if owner else "assignee no longer exists"
            rule = TASK_RULES["cancel"]
            spec["set"] = {"state": rule.to.value, "result": f"Cancelled: {why}",
                           "completed_at": now, "updated_at": now}
            action, event = "cancelled", (rule.event, f"Task cancelled: {why}", "Cancelled")
        elif to_backlog:
            spec.update({"set": {"state": "pending", "updated_at": now},
                         "del": ["assigned_to", "started_at"]})
            spec["cmds"].append(["RPUSH", k.backlog, task.id])
            action, event = "backlogged", ("task_delegated", "Orphan task returned to the backlog",
                                           "Pending")
        else:
            assert target is not None
            msg = Message.task_assign(task.id, sender=SUPERVISOR_ID, to=target.id)
            spec["set"] = {"state": "assigned", "assigned_to": target.id, "updated_at": now}
            spec["cmds"].append(["RPUSH", k.inbox(target.id), msg.to_json()])
            streams = town._agent_streams(target.id)
            action, event = "moved", ("task_assigned", f"Orphan task reassigned to {target.name}",
                                      "Assigned")
        change = Change(tkey, streams, spec)
        if event:
            change.event(event[0], task_id=task.id, agent_id=target.id if target else None,
                         message=event[1], new_state=event[2])
        found.append(_apply(town, change, Reclaimed(action=action, to=target.name if target else None,
                                                    **item)))
    return found


def _parse(raw: str) -> Message | None:
    try:
        return Message.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None
