"""``ttnb``: the everyday ``tt`` verbs on the command line, a thin face over the core.

Agent CLIs run it inside a task (``ttnb task complete ID --result …``, ``ttnb send
supervisor "done"``); people use it from a terminal. Every verb parses its arguments, calls
one :class:`~tinytown_nb.core.town.Town` method and prints the answer; the rules live in
the core. Listing verbs take ``--json`` for scripts.

Exit codes: 0 ok, 1 a tinytown error (one line ``ttnb: error: …`` on stderr), 2 bad usage,
130 interrupted (Ctrl-C).

Example::

    $ ttnb -t my-town init -n demo
    $ ttnb -t my-town spawn dev -c claude
    $ ttnb -t my-town assign dev "Write the README" --tags docs
    $ ttnb -t my-town list
      Robert [dev] (3f2a) - Starting
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import redis

from .core.errors import ConfigError, TinytownError, from_redis
from .core.events import Event
from .core.keys import SUPERVISOR_ID
from .core.models import Agent, Message, Task, TaskState, canonical_uuid, format_duration
from .core.recovery import Reclaimed
from .core.town import Town

PROG = "ttnb"
ENV_TOWN_DIR = "TINYTOWN_TOWN_DIR"
ENV_AGENT_ID = "TINYTOWN_AGENT_ID"
ENV_AGENT_NAME = "TINYTOWN_AGENT_NAME"
FOLLOW_INTERVAL = 0.5  # seconds between polls of `events -f`
TASK_ICONS = {"pending": "⏳", "assigned": "📌", "running": "🔄",
              "completed": "✅", "failed": "❌", "cancelled": "🚫"}
CATEGORY_LETTERS = {"task": "T", "query": "Q", "informational": "I", "confirmation": "C",
                    "other": "O"}
PREVIEW = 10  # messages shown per inbox


class _Usage(Exception):
    """A usage problem found after parsing (exit 2 with the verb's usage line)."""


# ----------------------------------------------------------------------------- output


def _plain(obj: Any) -> Any:
    """A JSON-ready form of the core's records (Agent, Task, Message, Event, lists, dicts)."""
    if isinstance(obj, Agent):
        return {**dataclasses.asdict(obj), "short_id": obj.short_id, "label": obj.display_label}
    if isinstance(obj, Task):
        return {**dataclasses.asdict(obj), "short_id": obj.short_id}
    if isinstance(obj, Message):
        return {**obj.to_dict(), "category": obj.category, "text": obj.text}
    if isinstance(obj, Event):
        return {"id": obj.id, "type": obj.type, "data": obj.data}
    if isinstance(obj, Reclaimed):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _dump(obj: Any, *, compact: bool = False) -> None:
    text = json.dumps(_plain(obj), default=_json_default, ensure_ascii=False,
                      indent=None if compact else 2)
    print(text, flush=True)


def _agent_line(a: Agent) -> str:
    return f"  {a.display_label} ({a.short_id}) - {a.state.debug_name}"


def _labels(town: Town) -> dict[str, str]:
    """Agent id → ``label (short)`` for printing assignees and senders."""
    out = {a.id: f"{a.display_label} ({a.short_id})" for a in town.agents()}
    out[SUPERVISOR_ID] = "supervisor"
    return out


def _cut(text: str, n: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= n else line[: n - 1] + "…"


def _task_line(t: Task, labels: dict[str, str]) -> str:
    who = labels.get(t.assigned_to, t.assigned_to[:4]) if t.assigned_to else "unassigned"
    return f"  {TASK_ICONS.get(t.state.value, '•')} {t.short_id}  {_cut(t.description, 50)}  → {who}"


def _task_details(t: Task, labels: dict[str, str]) -> list[str]:
    who = labels.get(t.assigned_to, t.assigned_to) if t.assigned_to else "unassigned"
    rows = [("Task", t.id), ("State", f"{TASK_ICONS.get(t.state.value, '')} {t.state.debug_name}"),
            ("Assigned to", who), ("Tags", ", ".join(t.tags) or "-"),
            ("Created", t.created_at), ("Updated", t.updated_at),
            ("Started", t.started_at), ("Completed", t.completed_at)]
    lines = [f"{k + ':':<13}{_ts(v) if isinstance(v, datetime) else v}" for k, v in rows if v is not None]
    lines += ["Description:", *("  " + ln for ln in t.description.splitlines())]
    if t.result is not None:
        lines += ["Result:", *("  " + ln for ln in t.result.splitlines())]
    return lines


def _ts(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def _event_line(e: Event) -> str:
    return f"{_ts(e.timestamp)}  {e.type:<20} {e.message}"


def _message_line(m: Message, labels: dict[str, str]) -> str:
    letter = CATEGORY_LETTERS.get(m.category, "?")
    sender = labels.get(m.sender, m.sender[:4])
    return f"    [{letter}] from {sender}: {_cut(m.summary(), 100)}"


def _reclaimed_line(r: Reclaimed) -> str:
    what = f"task {r.task_id[:4]}" if r.task_id else (
        f"{r.message.type} message: {_cut(r.message.summary(), 60)}" if r.message else "unreadable message")
    return f"  {r.action:<10} {what} ({r.source} of {r.agent})" + (f" → {r.to}" if r.to else "")


def _show(result: Any, labels: dict[str, str] | None = None, empty: str = "Nothing to do.") -> None:
    """Print what a core method returned: an Agent, Task, Reclaimed item or a list of them."""
    if result is None or result == []:
        if empty:
            print(empty)
    elif isinstance(result, Agent):
        print(_agent_line(result))
    elif isinstance(result, Task):
        print(_task_line(result, labels or {}))
    elif isinstance(result, Reclaimed):
        print(_reclaimed_line(result))
    elif isinstance(result, (list, tuple)):
        for item in result:
            _show(item, labels, empty="")
    else:
        print(result)


# ----------------------------------------------------------------------------- identity


def _env_agent() -> str | None:
    """The agent this process runs as (spec §4.4): ``TINYTOWN_AGENT_ID`` (a valid UUID),
    else ``TINYTOWN_AGENT_NAME``, else None."""
    aid = canonical_uuid(os.environ.get(ENV_AGENT_ID, "").strip())
    return aid or (os.environ.get(ENV_AGENT_NAME, "").strip() or None)


# ----------------------------------------------------------------------------- verbs


def cmd_init(town: None, args: argparse.Namespace) -> None:
    """Create a town in the town directory (or connect to the one already there)."""
    existed = (Path(args.town) / "tinytown.toml").exists()
    options = {"url": args.url} if args.url else {}
    made = Town.init(args.town, name=args.name, **options)
    try:
        verb = "Connected to existing" if existed else "Initialized"
        print(f"{verb} town {made.name!r} at {made.root}")
        print(f"  Redis: {made.url}")
    finally:
        made.disconnect()


def cmd_spawn(town: Town, args: argparse.Namespace) -> int | None:
    """Register an agent and start its worker (``--foreground``: run it here until it stops)."""
    if args.foreground and args.no_start:
        raise ConfigError("Give --foreground (run the worker here) or --no-start (no worker), not both.")
    agent = town.spawn(args.name, args.cli, role=args.role, nickname=args.nickname,
                       parent=args.parent, backlog=args.backlog, max_rounds=args.max_rounds,
                       idle_timeout=args.idle_timeout, start=not (args.no_start or args.foreground))
    print(f"Spawned {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}, cli {agent.cli}",
          flush=True)
    if args.foreground:
        from .core.worker import run_in_foreground  # noqa: PLC0415 — only this verb needs it

        return run_in_foreground(town, agent, max_rounds=args.max_rounds,
                                 idle_timeout=args.idle_timeout, backlog=args.backlog)
    return None


def cmd_list(town: Town, args: argparse.Namespace) -> None:
    """List every agent: ``  <label> (<short>) - <State>``."""
    agents = town.agents()
    if args.json:
        return _dump(agents)
    if not agents:
        print(f"No agents. Spawn one with `{PROG} spawn NAME`.")
        return
    for a in agents:
        print(_agent_line(a))
    dead = sum(a.state.value in ("stopped", "error") for a in agents)
    if dead:
        print(f"{dead} stopped/error agent(s) can be removed with `{PROG} prune`.")


def cmd_status(town: Town, args: argparse.Namespace) -> None:
    """Town, agents with their inboxes and current task, task totals."""
    agents, tasks = town.agents(), town.tasks()
    by_id = {t.id: t for t in tasks}
    counts = {s.value: 0 for s in TaskState}
    for t in tasks:
        counts[t.state.value] += 1
    backlog = len(town.backlog())
    rows = []
    for a in agents:
        inbox = {c: 0 for c in CATEGORY_LETTERS}
        for m in town.inbox(a):
            inbox[m.category] = inbox.get(m.category, 0) + 1
        rows.append((a, inbox, by_id.get(a.current_task or "")))
    if args.json:
        out: dict[str, Any] = {
            "town": town.name, "root": str(town.root), "redis": town.url,
            "agents": [{**_plain(a), "inbox": inbox, "task": _plain(cur),
                        **({"activity": town.activity(a.id, 5), "logs": town.log_tails(a.id, 8)}
                           if args.deep else {})} for a, inbox, cur in rows],
            "tasks": counts, "backlog": backlog}
        if args.tasks:
            out["task_list"] = tasks
        return _dump(out)
    labels = _labels(town)
    print(f"Town: {town.name}")
    print(f"Root: {town.root}")
    print(f"Redis: {town.url}")
    print(f"Agents: {len(agents)}")
    for a, inbox, cur in rows:
        box = "/".join(str(inbox[c]) for c in ("task", "query", "informational", "confirmation"))
        line = f"{_agent_line(a)}  inbox T/Q/I/C {box}"
        print(line + (f"  working on {cur.short_id}: {_cut(cur.description, 40)}" if cur else ""))
        if args.deep:
            _print_deep(town, a)
    in_flight = counts["assigned"] + counts["running"]
    done = counts["completed"] + counts["failed"] + counts["cancelled"]
    print(f"Tasks: {counts['pending']} pending, {in_flight} in flight, {done} done")
    if args.tasks:
        print("  " + ", ".join(f"{s}: {n}" for s, n in counts.items()) + f"; backlog: {backlog}")
        groups: dict[str, list[Task]] = {}
        for t in tasks:
            groups.setdefault(labels.get(t.assigned_to or "", "unassigned") if t.assigned_to
                              else "unassigned", []).append(t)
        for who, group in groups.items():
            print(f"{who}:")
            for t in group:
                print("  " + _task_line(t, labels).strip())


def _print_deep(town: Town, a: Agent) -> None:
    """``status --deep`` for one agent: rounds, uptime, recent activity, log tails."""
    up = format_duration(datetime.now(timezone.utc) - a.created_at)
    print(f"      rounds {a.rounds_completed}, tasks completed {a.tasks_completed}, up {up}")
    for line in town.activity(a.id, 5):
        print(f"      | {line}")
    for name, lines in town.log_tails(a.id, 8).items():
        print(f"      {name}:")
        for line in lines:
            print(f"        {_cut(line, 160)}")


def cmd_assign(town: Town, args: argparse.Namespace) -> None:
    """Create a task for an agent and queue its assignment."""
    task = town.assign(args.agent, args.description, tags=args.tags or ())
    agent = town.agent(task.assigned_to)
    print(f"Assigned task {task.short_id} ({task.id}) to {agent.display_label} ({agent.short_id})")


def cmd_send(town: Town, args: argparse.Namespace) -> None:
    """Send a message; the sender is --from, else this agent (env), else the supervisor."""
    sender = args.sender or _env_agent()
    msg = town.send(args.to, args.message, kind=args.kind, urgent=args.urgent, sender=sender)
    labels = _labels(town)
    print(f"Sent {msg.type} message to {labels.get(msg.to, msg.to)} from "
          f"{labels.get(msg.sender, msg.sender)}" + (" (urgent)" if args.urgent else ""))


def cmd_inbox(town: Town, args: argparse.Namespace) -> None:
    """Peek at waiting messages (nothing is taken)."""
    if bool(args.agent) == bool(args.all):
        raise _Usage("give an AGENT or --all (not both)")
    agents = ([town.agent(args.agent)] if args.agent
              else [*town.agents(), town.agent("supervisor")])
    boxes = [(a, town.inbox(a)) for a in agents]
    if args.json:
        if args.agent:
            return _dump(boxes[0][1])
        return _dump([{"agent_id": a.id, "name": a.name, "label": a.display_label,
                       "messages": msgs} for a, msgs in boxes])
    labels = _labels(town)
    for a, msgs in boxes:
        cats = {c: 0 for c in CATEGORY_LETTERS.values()}
        for m in msgs:
            cats[CATEGORY_LETTERS.get(m.category, "O")] += 1
        tally = "  ".join(f"[{c}] {n}" for c, n in cats.items() if n or c != "O")
        print(f"{a.display_label} ({a.short_id}): {len(msgs)} message(s)  {tally}")
        for m in msgs[:PREVIEW]:
            print(_message_line(m, labels))
        if len(msgs) > PREVIEW:
            print(f"    … and {len(msgs) - PREVIEW} more")


def cmd_task_complete(town: Town, args: argparse.Namespace) -> None:
    """Mark a task completed."""
    task = town.complete_task(args.task_id, args.result)
    print(f"Task {task.short_id} completed")


def cmd_task_fail(town: Town, args: argparse.Namespace) -> None:
    """Mark a task failed with its error."""
    task = town.fail_task(args.task_id, args.error)
    print(f"Task {task.short_id} failed")


def cmd_task_cancel(town: Town, args: argparse.Namespace) -> None:
    """Cancel an unfinished task."""
    task = town.cancel_task(args.task_id, args.reason)
    print(f"Task {task.short_id} cancelled")


def cmd_task_show(town: Town, args: argparse.Namespace) -> None:
    """Show one task."""
    task = town.task(args.task_id)
    if args.json:
        return _dump(task)
    print("\n".join(_task_details(task, _labels(town))))


def cmd_task_list(town: Town, args: argparse.Namespace) -> None:
    """List tasks, optionally one state and/or one agent's."""
    tasks = town.tasks(state=args.state, agent=args.agent)
    if args.json:
        return _dump(tasks)
    labels = _labels(town)
    _show(tasks, labels, empty="No tasks.")


def cmd_task_current(town: Town, args: argparse.Namespace) -> None:
    """The task an agent is working on (default: this agent, from the environment)."""
    agent = args.agent or _env_agent()
    if agent is None:
        raise _Usage(f"give an AGENT, or set {ENV_AGENT_ID} or {ENV_AGENT_NAME}")
    task = town.current_task(agent)
    if args.json:
        return _dump(task)
    if task is None:
        print(f"No current task for {town.agent(agent).display_label}.")
    else:
        print("\n".join(_task_details(task, _labels(town))))


def cmd_backlog_add(town: Town, args: argparse.Namespace) -> None:
    """Put a new unassigned task on the backlog."""
    task = town.backlog_add(args.description, tags=args.tags or ())
    print(f"Added task {task.short_id} ({task.id}) to the backlog")


def cmd_backlog_list(town: Town, args: argparse.Namespace) -> None:
    """The backlog in queue order: ``short (uuid) - description [tags]``."""
    tasks = town.backlog()
    if args.json:
        return _dump(tasks)
    if not tasks:
        print("Backlog is empty.")
    for t in tasks:
        tags = f" [{', '.join(t.tags)}]" if t.tags else ""
        print(f"  {t.short_id} ({t.id}) - {_cut(t.description, 60)}{tags}")


def cmd_backlog_claim(town: Town, args: argparse.Namespace) -> None:
    """Assign one backlog task to an agent."""
    task = town.backlog_claim(args.task_id, args.agent)
    print(f"Task {task.short_id} claimed by {_labels(town).get(task.assigned_to or '', args.agent)}")


def cmd_backlog_assign_all(town: Town, args: argparse.Namespace) -> None:
    """Assign every backlog task, in order, to one agent."""
    tasks = town.backlog_assign_all(args.agent)
    print(f"Assigned {len(tasks)} backlog task(s) to {town.agent(args.agent).display_label}")
    _show(tasks, _labels(town), empty="")


def cmd_backlog_remove(town: Town, args: argparse.Namespace) -> None:
    """Remove a task from the backlog and delete it."""
    task = town.backlog_remove(args.task_id)
    print(f"Removed task {task.short_id} from the backlog")


def _agent_verb(method: str, done: str) -> Callable[[Town, argparse.Namespace], None]:
    def run(town: Town, args: argparse.Namespace) -> None:
        agent = getattr(town, method)(args.agent)
        print(f"{done} {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}")
    run.__doc__ = f"{done} an agent (Town.{method})."
    return run


cmd_kill = _agent_verb("kill", "Killed")
cmd_interrupt = _agent_verb("interrupt", "Interrupted")
cmd_resume = _agent_verb("resume", "Resumed")
cmd_close = _agent_verb("close", "Closing")


def cmd_restart(town: Town, args: argparse.Namespace) -> int | None:
    """Bring a stopped agent back (``--rounds N``: a new round limit; ``--foreground``: run
    its worker here until it stops)."""
    agent = town.restart(args.agent, start=not args.foreground, max_rounds=args.rounds)
    print(f"Restarted {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}", flush=True)
    if args.foreground:
        from .core.worker import run_in_foreground, worker_options  # noqa: PLC0415

        options = worker_options(town, agent.id)
        return run_in_foreground(town, agent, max_rounds=args.rounds or options["max_rounds"],
                                 idle_timeout=options["idle_timeout"], backlog=options["backlog"])
    return None


def cmd_stop(town: Town, args: argparse.Namespace) -> None:
    """Kill every running agent; with --server also stop the town's managed Redis."""
    stopped = town.stop_all()
    print(f"Stopped {len(stopped)} agent(s)")
    _show(stopped, empty="")
    if args.server:
        town.shutdown()
        print("Redis server stopped" if town.server else "Redis is not managed by this town; left running")


def cmd_wait(town: Town, args: argparse.Namespace) -> None:
    """Block until an agent stops, a task finishes, or all work is done."""
    if sum(map(bool, (args.agent, args.task, args.all))) != 1:
        raise _Usage("give exactly one of AGENT, --task ID or --all")
    result = town.wait(args.agent, task=args.task, all=args.all, timeout=args.timeout)
    _show(result, _labels(town), empty="Done.")


def cmd_prune(town: Town, args: argparse.Namespace) -> None:
    """Delete stopped/error agents (every agent with --all)."""
    gone = town.prune(all=args.all)
    print(f"Pruned {len(gone)} agent(s)")
    _show(gone, empty="")


def cmd_recover(town: Town, args: argparse.Namespace) -> None:
    """Mark agents whose worker stopped heartbeating as stopped and requeue their work."""
    recovered = town.recover(stale_after=args.stale_after)
    if recovered:
        print(f"Recovered {len(recovered)} agent(s) with no heartbeat for {args.stale_after:g}s:")
    _show(recovered, empty="No stale agents.")


def cmd_reclaim(town: Town, args: argparse.Namespace) -> None:
    """Take work back from dead agents (their inboxes, or orphaned tasks)."""
    result = town.reclaim(from_agent=args.from_agent, to=args.to, to_backlog=args.to_backlog,
                          orphan_tasks=args.orphan_tasks, cancel=args.cancel, delete=args.delete)
    if args.json:
        return _dump(result)
    _show(result, _labels(town), empty="Nothing to reclaim.")


def cmd_reset(town: Town, args: argparse.Namespace) -> None:
    """Delete the town's data (agents only with --agents-only); a dry run without --force."""
    if not args.force:
        agents = town.agents()
        if args.agents_only:
            print(f"Would delete {len(agents)} agent(s) and their mailboxes; tasks stay.")
        else:
            print(f"Would delete every key of town {town.name!r}: {len(agents)} agent(s), "
                  f"{len(town.tasks())} task(s) ({len(town.backlog())} on the backlog), "
                  "mailboxes and events.")
        _show(agents, empty="")
        print(f"Nothing deleted. Run `{PROG} reset --force"
              f"{' --agents-only' if args.agents_only else ''}` to delete.")
        return
    print(f"Deleted {town.reset(agents_only=args.agents_only)} key(s)")


def _print_events(events: list[Event], as_json: bool) -> None:
    for e in events:
        if as_json:
            _dump(e, compact=True)
        else:
            print(_event_line(e), flush=True)


def cmd_events(town: Town, args: argparse.Namespace) -> None:
    """The first COUNT events (town or one agent's stream); -f keeps printing new ones."""
    batch = town.events(args.count, agent=args.agent)
    _print_events(batch, args.json)
    if not args.follow:
        if not batch and not args.json:
            print("No events.")
        return
    last = batch[-1].id if batch else None
    while True:
        time.sleep(FOLLOW_INTERVAL)
        while True:  # `after` is exclusive, so the last event is never printed twice (§11.13)
            batch = town.events(1000, agent=args.agent, after=last)
            if not batch:
                break
            _print_events(batch, args.json)
            last = batch[-1].id


def cmd_history(town: Town, args: argparse.Namespace) -> None:
    """The last N town events (or one agent's), oldest first."""
    events = town.history(args.n, agent=args.agent)
    if args.json:
        return _dump(events)
    if not events:
        print("No events.")
    _print_events(events, False)


# ----------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``ttnb`` argument parser (every verb sets ``func`` and ``parser``).

    >>> build_parser().parse_args(["send", "dev", "hi", "--query"]).kind
    'query'
    """
    town_help = f"town directory (default: ${ENV_TOWN_DIR}, else the current directory)"
    parser = argparse.ArgumentParser(
        prog=PROG, description="Drive a tinytown town from the command line (tt-compatible).",
        epilog=f"Exit codes: 0 ok, 1 error, 2 bad usage, 130 interrupted. Run `{PROG} VERB -h` for a verb.")
    parser.add_argument("-t", "--town", default=os.environ.get(ENV_TOWN_DIR) or ".",
                        metavar="DIR", help=town_help)
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {_version()}")
    # -t also works after the verb (`ttnb list -t DIR`), like tt's global flags.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-t", "--town", default=argparse.SUPPRESS, metavar="DIR", help=town_help)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for scripts")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(group: Any, name: str, func: Callable, helptext: str, *, json: bool = False):
        p = group.add_parser(name, help=helptext, description=func.__doc__ or helptext,
                             parents=[common, json_flag] if json else [common])
        p.set_defaults(func=func, parser=p)
        return p

    p = verb(verbs, "init", cmd_init, "create a town (or connect to the existing one)")
    p.add_argument("-n", "--name", help="town name (default: git repo-branch or directory name)")
    p.add_argument("--url", help="use this Redis instead of a private server (redis://, rediss://, unix://)")

    p = verb(verbs, "spawn", cmd_spawn, "register an agent and start its worker")
    p.add_argument("name")
    p.add_argument("-c", "--cli", help="CLI preset (claude, codex, aider, ...) or a command line")
    p.add_argument("--role", help="role id (worker, reviewer, researcher, ...)")
    p.add_argument("--nickname", help="display name (default: a 1920s name)")
    p.add_argument("--parent", help="parent agent")
    p.add_argument("--backlog", action="store_true", help="let the worker claim backlog tasks when idle")
    p.add_argument("--max-rounds", type=_positive_int, metavar="N", help="stop after N rounds")
    p.add_argument("--idle-timeout", type=_seconds, metavar="S",
                   help="stop after S idle seconds (0: never; default from tinytown.toml)")
    p.add_argument("--no-start", action="store_true", help="only register the agent; start no worker")
    p.add_argument("--foreground", action="store_true",
                   help="run the worker in this terminal until it stops (Ctrl-C stops it)")

    verb(verbs, "list", cmd_list, "list agents", json=True)
    p = verb(verbs, "status", cmd_status, "town, agents, inboxes and task totals", json=True)
    p.add_argument("--tasks", action="store_true", help="also per-state counts and tasks by agent")
    p.add_argument("--deep", action="store_true",
                   help="also rounds, uptime, recent activity and log tails per agent")

    p = verb(verbs, "assign", cmd_assign, "give an agent a new task")
    p.add_argument("agent")
    p.add_argument("description")
    p.add_argument("--tags", help="comma-separated tags")

    p = verb(verbs, "send", cmd_send, "send a message to an agent (or supervisor)")
    p.add_argument("to")
    p.add_argument("message")
    p.add_argument("--from", dest="sender", metavar="AGENT",
                   help=f"sender (default: ${ENV_AGENT_ID}, ${ENV_AGENT_NAME}, else supervisor)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--query", dest="kind", action="store_const", const="query", help="a question")
    kind.add_argument("--info", dest="kind", action="store_const", const="info", help="an FYI")
    kind.add_argument("--ack", dest="kind", action="store_const", const="ack", help="a confirmation")
    p.set_defaults(kind="task")
    p.add_argument("--urgent", action="store_true", help="read before the regular inbox")

    p = verb(verbs, "inbox", cmd_inbox, "peek at an agent's waiting messages", json=True)
    p.add_argument("agent", nargs="?")
    p.add_argument("-a", "--all", action="store_true", help="every agent and the supervisor")

    task = verb(verbs, "task", None, "complete, fail, cancel, show or list tasks")  # type: ignore[arg-type]
    tverbs = task.add_subparsers(dest="task_verb", metavar="ACTION", required=True)
    p = verb(tverbs, "complete", cmd_task_complete, "mark a task completed")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--result", help="what was done")
    p = verb(tverbs, "fail", cmd_task_fail, "mark a task failed")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--error", required=True, help="what went wrong")
    p = verb(tverbs, "cancel", cmd_task_cancel, "cancel an unfinished task")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("--reason", help="why")
    p = verb(tverbs, "show", cmd_task_show, "show one task", json=True)
    p.add_argument("task_id", metavar="ID")
    p = verb(tverbs, "list", cmd_task_list, "list tasks", json=True)
    p.add_argument("--state", help="pending, assigned, running, completed, failed or cancelled")
    p.add_argument("--agent", help="only this agent's tasks")
    p = verb(tverbs, "current", cmd_task_current, "the task an agent is working on", json=True)
    p.add_argument("agent", nargs="?", help=f"default: ${ENV_AGENT_ID} or ${ENV_AGENT_NAME}")

    backlog = verb(verbs, "backlog", None, "the queue of unassigned tasks")  # type: ignore[arg-type]
    bverbs = backlog.add_subparsers(dest="backlog_verb", metavar="ACTION", required=True)
    p = verb(bverbs, "add", cmd_backlog_add, "add a task to the backlog")
    p.add_argument("description")
    p.add_argument("--tags", help="comma-separated tags")
    verb(bverbs, "list", cmd_backlog_list, "list the backlog", json=True)
    p = verb(bverbs, "claim", cmd_backlog_claim, "assign one backlog task to an agent")
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("agent")
    p = verb(bverbs, "assign-all", cmd_backlog_assign_all, "assign the whole backlog to an agent")
    p.add_argument("agent")
    p = verb(bverbs, "remove", cmd_backlog_remove, "remove (and delete) a backlog task")
    p.add_argument("task_id", metavar="TASK")

    for name, func, helptext in (
            ("kill", cmd_kill, "stop an agent now"),
            ("interrupt", cmd_interrupt, "pause an agent after its current task"),
            ("resume", cmd_resume, "un-pause an agent"),
            ("close", cmd_close, "let an agent finish its work, then stop")):
        verb(verbs, name, func, helptext).add_argument("agent")
    p = verb(verbs, "restart", cmd_restart, "bring a stopped agent back")
    p.add_argument("agent")
    p.add_argument("--rounds", "--max-rounds", dest="rounds", type=_positive_int, metavar="N",
                   help="stop after N rounds (default: the limit it had)")
    p.add_argument("--foreground", action="store_true",
                   help="run the worker in this terminal until it stops (Ctrl-C stops it)")
    p = verb(verbs, "stop", cmd_stop, "kill every agent (Redis keeps running)")
    p.add_argument("--server", action="store_true", help="also stop the town's managed Redis server")

    p = verb(verbs, "wait", cmd_wait, "wait for an agent, a task or all work")
    p.add_argument("agent", nargs="?")
    p.add_argument("--task", metavar="ID", help="wait until this task finishes")
    p.add_argument("--all", action="store_true", help="wait until every task is finished")
    p.add_argument("--timeout", type=_seconds, metavar="S", help="give up after S seconds (exit 1)")

    p = verb(verbs, "prune", cmd_prune, "delete stopped/error agents")
    p.add_argument("--all", action="store_true", help="delete every agent")
    p = verb(verbs, "recover", cmd_recover, "stop agents whose worker died")
    p.add_argument("--stale-after", type=_seconds, default=120.0, metavar="S",
                   help="heartbeat age that counts as dead (120)")
    p = verb(verbs, "reclaim", cmd_reclaim, "take work back from dead agents", json=True)
    p.add_argument("--from", dest="from_agent", metavar="AGENT", help="only this dead agent")
    dest = p.add_mutually_exclusive_group()
    dest.add_argument("--to", metavar="AGENT", help="move the work to this agent")
    dest.add_argument("--to-backlog", action="store_true", help="put the work on the backlog")
    dest.add_argument("--cancel", action="store_true", help="cancel orphaned tasks")
    dest.add_argument("--delete", action="store_true", help="delete orphaned tasks")
    p.add_argument("--orphan-tasks", action="store_true",
                   help="unfinished tasks of missing or dead agents instead of inboxes")
    p = verb(verbs, "reset", cmd_reset, "delete the town's data (dry run without --force)")
    p.add_argument("--force", action="store_true", help="really delete")
    p.add_argument("--agents-only", action="store_true", help="only agents and their mailboxes")

    p = verb(verbs, "events", cmd_events, "events from the start of the stream", json=True)
    p.add_argument("-c", "--count", type=_positive_int, default=20, metavar="N", help="how many (20)")
    p.add_argument("--agent", help="one agent's stream")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C ends)")
    p = verb(verbs, "history", cmd_history, "the most recent events", json=True)
    p.add_argument("-n", type=_positive_int, default=30, metavar="N", help="how many (30)")
    p.add_argument("-a", "--agent", help="one agent's events")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run ``ttnb`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    >>> main(["-t", "my-town", "list"])   # doctest: +SKIP
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    town = None
    try:
        if args.func is not cmd_init:
            town = Town.connect(args.town)
        status = args.func(town, args)  # None, or a foreground worker's exit status
        sys.stdout.flush()
        return status or 0
    except _Usage as exc:
        args.parser.error(str(exc))  # exits 2
    except TinytownError as exc:
        return _fail(str(exc))
    except redis.RedisError as exc:  # Town translates lost connections; this catches the rest
        return _fail(str(from_redis(exc, town.url if town is not None else "the town's Redis")))
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # `ttnb events | head`: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        return _fail(" ".join(str(exc).split()))
    except KeyboardInterrupt:
        return 130
    finally:
        if town is not None:
            try:
                town.disconnect()
            except Exception:  # noqa: BLE001 - closing must never mask the real outcome
                pass
    return 2  # not reached: parser.error exits


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
