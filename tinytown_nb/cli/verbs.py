"""The ``ttnb`` verbs: each declares its arguments just above it, calls one
:class:`~tinytown_nb.core.town.Town` method and prints the answer (the rules live in the
core). A verb is ``cmd_NAME(town, args)``; it returns None, or a foreground worker's exit
status. Listing verbs take ``--json`` for scripts.

Importing this module registers the verbs (in the order of ``ttnb -h``) with
:mod:`tinytown_nb.cli.parser`.

Example::

    $ ttnb -t my-town spawn dev -c claude
    $ ttnb -t my-town assign dev "Write the README" --tags docs
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..core.errors import ConfigError
from ..core.events import Event
from ..core.models import Agent, Task, TaskState, format_duration
from ..core.town import Town
from .env import ENV_AGENT_ID, ENV_AGENT_NAME, env_agent
from .output import (CATEGORY_LETTERS, PREVIEW, agent_labels, agent_line, cut, dump, dump_pages,
                     event_line, message_line, plain, show, task_details, task_line, usage_table,
                     usage_text, worktree_line)
from .parser import (PROG, BadUsage, arg, defaults, duration, group, one_of, positive_int, seconds,
                     verb)

__all__ = ["FOLLOW_INTERVAL"]  # the verbs are reached through the parser (args.func)

FOLLOW_INTERVAL = 0.5  # seconds between polls of `events -f`


@verb("init", "create a town (or connect to the existing one)")
@arg("-n", "--name", help="town name (default: git repo-branch or directory name)")
@arg("--url", help="use this Redis instead of a private server (redis://, rediss://, unix://)")
def cmd_init(town: None, args: argparse.Namespace) -> None:
    """Create a town in the town directory (or connect to the one already there).

    Example: ``ttnb -t my-town init -n demo``.
    """
    existed = (Path(args.town) / "tinytown.toml").exists()
    options = {"url": args.url} if args.url else {}
    made = Town.init(args.town, name=args.name, **options)
    try:
        what = "Connected to existing" if existed else "Initialized"
        print(f"{what} town {made.name!r} at {made.root}")
        print(f"  Redis: {made.url}")
    finally:
        made.disconnect()


@verb("spawn", "register an agent (or several) and start its worker")
@arg("names", nargs="+", metavar="name", help="agent name; several: spawn them all at once")
@arg("-c", "--cli", help="CLI preset (claude, codex, aider, ...) or a command line")
@arg("--role", help="role id (worker, reviewer, researcher, ...)")
@arg("--nickname", help="display name (default: a 1920s name)")
@arg("--parent", help="parent agent")
@arg("--backlog", action="store_true", help="let the worker claim backlog tasks when idle")
@arg("--max-rounds", type=positive_int, metavar="N", help="stop after N rounds")
@arg("--idle-timeout", type=seconds, metavar="S",
     help="stop after S idle seconds (0: never; default from tinytown.toml)")
@arg("--task-timeout", type=duration, metavar="D",
     help="longest one attempt of a task may run (90, 90s, 20m, 1h), unless the task says")
@arg("--silence-timeout", type=duration, metavar="D",
     help="stop a run that prints nothing for this long (hung, not working)")
@arg("--no-start", action="store_true", help="only register the agent; start no worker")
@arg("--foreground", action="store_true",
     help="run the worker in this terminal until it stops (Ctrl-C stops it)")
@arg("--worktree", action="store_true",
     help="its own git worktree .tt/worktrees/NAME on branch tt/NAME (town root in a git repo)")
@arg("--base", metavar="REV", help="with --worktree: the branch or commit it starts from (default HEAD)")
@arg("--shared", action=argparse.BooleanOptionalAction, default=None,
     help="run the worker in the town's shared worker process (default: yes with several "
          "names, no with one)")
def cmd_spawn(town: Town, args: argparse.Namespace) -> int | None:
    """Register an agent and start its worker (``--foreground``: run it here until it stops);
    several names spawn them all at once, in the town's shared worker process.

    Example: ``ttnb spawn dev -c claude --backlog``, ``ttnb spawn dev -c claude --worktree``,
    ``ttnb spawn dev1 dev2 dev3 -c claude``.
    """
    if args.foreground and args.no_start:
        raise ConfigError("Give --foreground (run the worker here) or --no-start (no worker), not both.")
    if len(args.names) > 1:
        for flag in ("foreground", "no_start", "nickname", "base"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag.replace('_', '-')} is for one agent; give one name.")
        made = town.spawn_many(args.names, args.cli, shared=args.shared is not False, role=args.role,
                               parent=args.parent, backlog=args.backlog, max_rounds=args.max_rounds,
                               idle_timeout=args.idle_timeout, worktree=args.worktree,
                               task_timeout=args.task_timeout, silence_timeout=args.silence_timeout)
        for agent in made:
            print(f"Spawned {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}, "
                  f"cli {agent.cli}", flush=True)
        return None
    if args.foreground and args.shared:
        raise ConfigError("Give --foreground (the worker runs here) or --shared, not both.")
    agent = town.spawn(args.names[0], args.cli, role=args.role, nickname=args.nickname,
                       parent=args.parent, backlog=args.backlog, max_rounds=args.max_rounds,
                       idle_timeout=args.idle_timeout, start=not (args.no_start or args.foreground),
                       worktree=args.worktree, base=args.base, task_timeout=args.task_timeout,
                       silence_timeout=args.silence_timeout, shared=bool(args.shared))
    print(f"Spawned {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}, cli {agent.cli}",
          flush=True)
    if args.foreground:
        return town.run_worker(agent, max_rounds=args.max_rounds, idle_timeout=args.idle_timeout,
                               backlog=args.backlog, task_timeout=args.task_timeout,
                               silence_timeout=args.silence_timeout)
    return None


@verb("list", "list agents", json=True)
def cmd_list(town: Town, args: argparse.Namespace) -> None:
    """List every agent: ``  <label> (<short>) - <State>``.

    Example: ``ttnb list --json``.
    """
    agents = town.agents()
    if args.json:
        return dump(agents)
    if not agents:
        print(f"No agents. Spawn one with `{PROG} spawn NAME`.")
        return
    for a in agents:
        print(agent_line(a))
    dead = sum(a.state.value in ("stopped", "error") for a in agents)
    if dead:
        print(f"{dead} stopped/error agent(s) can be removed with `{PROG} prune`.")


@verb("status", "town, agents, inboxes and task totals", json=True)
@arg("--tasks", action="store_true", help="also per-state counts and tasks by agent")
@arg("--deep", action="store_true",
     help="also rounds, uptime, recent activity and log tails per agent")
def cmd_status(town: Town, args: argparse.Namespace) -> None:
    """Town, agents with their inboxes and current task, task totals.

    Example: ``ttnb status --tasks``.
    """
    agents, c = town.agents(), town.counts()
    counts, backlog = c.tasks, c.backlog
    tasks = town.tasks() if args.tasks else []
    current = [a.current_task for a in agents if a.current_task]
    by_id = {t.id: t for t in map(Task.from_hash, town.hashes("task", ids=current)) if t}
    rows = []
    for a, (urgent, regular) in zip(agents, town.inboxes([a.id for a in agents])):
        inbox = {k: 0 for k in CATEGORY_LETTERS}
        for m in urgent + regular:
            inbox[m.category] = inbox.get(m.category, 0) + 1
        rows.append((a, inbox, by_id.get(a.current_task or "")))
    if args.json:
        out: dict[str, Any] = {
            "town": town.name, "root": str(town.root), "redis": town.url,
            "agents": [{**plain(a), "inbox": inbox, "task": plain(cur),
                        **({"activity": town.activity(a.id, 5), "logs": town.log_tails(a.id, 8)}
                           if args.deep else {})} for a, inbox, cur in rows],
            "tasks": counts, "backlog": backlog}
        if args.tasks:
            out["task_list"] = tasks
        return dump(out)
    labels = agent_labels(town)
    print(f"Town: {town.name}")
    print(f"Root: {town.root}")
    print(f"Redis: {town.url}")
    print(f"Agents: {len(agents)}")
    for a, inbox, cur in rows:
        box = "/".join(str(inbox[c]) for c in ("task", "query", "informational", "confirmation"))
        line = f"{agent_line(a)}  inbox T/Q/I/C {box}"
        print(line + (f"  working on {cur.short_id}: {cut(cur.description, 40)}" if cur else ""))
        if args.deep:
            _print_deep(town, a)
    in_flight = counts["assigned"] + counts["running"]
    print(f"Tasks: {counts['pending']} pending, {in_flight} in flight, {c.finished_tasks} done")
    if args.tasks:
        print("  " + ", ".join(f"{s}: {n}" for s, n in counts.items()) + f"; backlog: {backlog}")
        groups: dict[str, list[Task]] = {}
        for t in tasks:
            groups.setdefault(labels.get(t.assigned_to or "", "unassigned") if t.assigned_to
                              else "unassigned", []).append(t)
        for who, group in groups.items():
            print(f"{who}:")
            for t in group:
                print("  " + task_line(t, labels).strip())


def _print_deep(town: Town, a: Agent) -> None:
    """``status --deep`` for one agent: rounds, uptime, recent activity, log tails."""
    up = format_duration(datetime.now(timezone.utc) - a.created_at)
    print(f"      rounds {a.rounds_completed}, tasks completed {a.tasks_completed}, up {up}")
    for line in town.activity(a.id, 5):
        print(f"      | {line}")
    for name, lines in town.log_tails(a.id, 8).items():
        print(f"      {name}:")
        for line in lines:
            print(f"        {cut(line, 160)}")


def _waits(town: Town, task: Task) -> str:
    """`` (waits for 3f2a, 9c1e)`` for a task that waits, else ``""``."""
    deps = town.deps(task)
    open_ = deps[0].waiting_on if deps else ()
    return f" (waits for {', '.join(t[:4] for t in open_)})" if open_ else ""


def _run_options(func: Callable) -> Callable:
    """``--timeout``, ``--retries`` and ``--retry-delay`` of the verbs that create a task."""
    for declaration in reversed((
            arg("--timeout", type=duration, metavar="D",
                help="longest one attempt may run (90, 90s, 20m, 1h); then it is stopped"),
            arg("--retries", type=int, metavar="N",
                help="run a failed attempt again, at most N more times (0-100)"),
            arg("--retry-delay", type=duration, metavar="D", help="wait this long before a re-run"))):
        func = declaration(func)
    return func


def _options_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"timeout": args.timeout, "retries": args.retries, "retry_delay": args.retry_delay}


@verb("assign", "give an agent a new task")
@arg("agent")
@arg("description")
@arg("--tags", help="comma-separated tags")
@arg("--after", metavar="ID,ID", help="tasks it waits for: delivered once they are all completed")
@_run_options
def cmd_assign(town: Town, args: argparse.Namespace) -> None:
    """Create a task for an agent and queue its assignment (with --after: once those tasks
    are completed; it is cancelled if one of them fails; ``--timeout`` bounds each attempt,
    ``--retries N`` re-runs a failed one).

    Examples: ``ttnb assign dev "Write the README" --tags docs --timeout 20m --retries 1``,
    ``ttnb assign reviewer "Review the README" --after 3f2a``.
    """
    task = town.assign(args.agent, args.description, tags=args.tags or (), after=args.after,
                       **_options_of(args))
    agent = town.agent(task.assigned_to or args.agent)
    if task.state is TaskState.PENDING:
        print(f"Created task {task.short_id} ({task.id}) for {agent.display_label} ({agent.short_id})"
              + _waits(town, task))
    else:
        print(f"Assigned task {task.short_id} ({task.id}) to {agent.display_label} ({agent.short_id})")


@verb("gate", "make a gate: a task a person approves or rejects")
@arg("description")
@arg("--after", metavar="ID,ID", help="tasks it waits for before it can be decided")
@arg("--tags", help="comma-separated tags")
def cmd_gate(town: Town, args: argparse.Namespace) -> None:
    """Make a gate: no agent runs it; tasks made with --after GATE go on once it is approved.

    Example: ``ttnb gate "Is the draft good enough?" --after 3f2a``.
    """
    task = town.gate(args.description, after=args.after, tags=args.tags or ())
    print(f"Created gate {task.short_id} ({task.id}){_waits(town, task)}")


@verb("approve", "approve a gate: the tasks waiting for it go on")
@arg("gate", metavar="ID")
@arg("--note", help="a note (the gate's result)")
def cmd_approve(town: Town, args: argparse.Namespace) -> None:
    """Approve a gate (refused while it still waits for its own dependencies).

    Example: ``ttnb approve 3f2a --note "Ship it"``.
    """
    task = town.approve(args.gate, args.note)
    print(f"Gate {task.short_id} approved")


@verb("reject", "reject a gate: the tasks waiting for it are cancelled")
@arg("gate", metavar="ID")
@arg("--note", required=True, help="why; sent to the agents whose work the gate waited for")
def cmd_reject(town: Town, args: argparse.Namespace) -> None:
    """Reject a gate with a note.

    Example: ``ttnb reject 3f2a --note "Too long; cut it to one page"``.
    """
    task = town.reject(args.gate, args.note)
    print(f"Gate {task.short_id} rejected")


@verb("gates", "gates waiting for a decision", json=True)
@arg("--all", action="store_true", help="decided gates too")
def cmd_gates(town: Town, args: argparse.Namespace) -> None:
    """Gates waiting for a decision (ready ones can be approved now).

    Example: ``ttnb gates``.
    """
    gates = town.gates(open=not args.all)
    if args.json:
        return dump([{"task": g.task, "after": list(g.after), "waiting_on": list(g.open) if g.is_open else [],
                      "ready": g.ready, "decision": g.decision, "note": g.note,
                      "decided_at": g.decided_at} for g in gates])
    if not gates:
        print("No gates." if args.all else "No gate waits for a decision.")
    for g in gates:
        what = ("ready" if g.ready else f"waits for {', '.join(i[:4] for i in g.open)}") if g.is_open \
            else (g.decision or g.task.state.value)
        print(f"  {g.short_id}  {cut(g.task.description, 50)}  [{what}]")


@verb("send", "send a message to an agent (or supervisor)")
@arg("to")
@arg("message")
@arg("--from", dest="sender", metavar="AGENT",
     help=f"sender (default: ${ENV_AGENT_ID}, ${ENV_AGENT_NAME}, else supervisor)")
@one_of(arg("--query", dest="kind", action="store_const", const="query", help="a question"),
        arg("--info", dest="kind", action="store_const", const="info", help="an FYI"),
        arg("--ack", dest="kind", action="store_const", const="ack", help="a confirmation"))
@defaults(kind="task")
@arg("--urgent", action="store_true", help="read before the regular inbox")
def cmd_send(town: Town, args: argparse.Namespace) -> None:
    """Send a message; the sender is --from, else this agent (env), else the supervisor.

    Example: ``ttnb send supervisor "Done: README written" --info``.
    """
    sender = args.sender or env_agent()
    msg = town.send(args.to, args.message, kind=args.kind, urgent=args.urgent, sender=sender)
    labels = agent_labels(town)
    print(f"Sent {msg.type} message to {labels.get(msg.to, msg.to)} from "
          f"{labels.get(msg.sender, msg.sender)}" + (" (urgent)" if args.urgent else ""))


@verb("inbox", "peek at an agent's waiting messages", json=True)
@arg("agent", nargs="?")
@arg("-a", "--all", action="store_true", help="every agent and the supervisor")
def cmd_inbox(town: Town, args: argparse.Namespace) -> None:
    """Peek at waiting messages (nothing is taken).

    Examples: ``ttnb inbox dev``, ``ttnb inbox --all``.
    """
    if bool(args.agent) == bool(args.all):
        raise BadUsage("give an AGENT or --all (not both)")
    agents = ([town.agent(args.agent)] if args.agent
              else [*town.agents(), town.agent("supervisor")])
    boxes = [(a, town.inbox(a)) for a in agents]
    if args.json:
        if args.agent:
            return dump(boxes[0][1])
        return dump([{"agent_id": a.id, "name": a.name, "label": a.display_label,
                       "messages": msgs} for a, msgs in boxes])
    labels = agent_labels(town)
    for a, msgs in boxes:
        cats = {c: 0 for c in CATEGORY_LETTERS.values()}
        for m in msgs:
            cats[CATEGORY_LETTERS.get(m.category, "O")] += 1
        tally = "  ".join(f"[{c}] {n}" for c, n in cats.items() if n or c != "O")
        print(f"{a.display_label} ({a.short_id}): {len(msgs)} message(s)  {tally}")
        for m in msgs[:PREVIEW]:
            print(message_line(m, labels))
        if len(msgs) > PREVIEW:
            print(f"    … and {len(msgs) - PREVIEW} more")


group("task", "complete, fail, cancel, show, list, follow or cost tasks")


@verb("task complete", "mark a task completed")
@arg("task_id", metavar="ID")
@arg("--result", help="what was done")
def cmd_task_complete(town: Town, args: argparse.Namespace) -> None:
    """Mark a task completed.

    Example: ``ttnb task complete 3f2a --result "README written"``.
    """
    task = town.complete_task(args.task_id, args.result)
    print(f"Task {task.short_id} completed")


@verb("task fail", "mark a task failed")
@arg("task_id", metavar="ID")
@arg("--error", required=True, help="what went wrong")
def cmd_task_fail(town: Town, args: argparse.Namespace) -> None:
    """Mark a task failed with its error.

    Example: ``ttnb task fail 3f2a --error "tests do not pass"``.
    """
    task = town.fail_task(args.task_id, args.error)
    print(f"Task {task.short_id} failed")


@verb("task cancel", "cancel an unfinished task")
@arg("task_id", metavar="ID")
@arg("--reason", help="why")
def cmd_task_cancel(town: Town, args: argparse.Namespace) -> None:
    """Cancel an unfinished task.

    Example: ``ttnb task cancel 3f2a --reason "not needed"``.
    """
    task = town.cancel_task(args.task_id, args.reason)
    print(f"Task {task.short_id} cancelled")


@verb("task show", "show one task", json=True)
@arg("task_id", metavar="ID")
def cmd_taskshow(town: Town, args: argparse.Namespace) -> None:
    """Show one task.

    Example: ``ttnb task show 3f2a``.
    """
    task = town.task(args.task_id)
    if args.json:
        return dump(task)
    print("\n".join(task_details(task, agent_labels(town))))


@verb("task log", "what a task printed (-f: as it comes, until it ends)")
@arg("task_id", metavar="ID")
@arg("-f", "--follow", action="store_true", help="keep printing new lines until the task ends")
@arg("--timeout", type=duration, metavar="D", help="with -f: give up after this long (exit 1)")
def cmd_task_log(town: Town, args: argparse.Namespace) -> None:
    """Print a task's log (its last 1,000 lines); ``-f`` prints new lines as they come and
    returns when the task ends (Ctrl-C stops it).

    Example: ``ttnb task log 3f2a -f``.
    """
    if args.timeout is not None and not args.follow:
        raise BadUsage("--timeout only applies with -f")
    lines = town.follow(args.task_id, timeout=args.timeout) if args.follow else town.task_log(args.task_id)
    for line in lines:
        print(line, flush=args.follow)


@verb("task usage", "add tokens and cost a task used (they add up)")
@arg("task_id", metavar="ID")
@arg("--input-tokens", type=int, default=0, metavar="N", help="input (prompt) tokens")
@arg("--output-tokens", type=int, default=0, metavar="N", help="output (completion) tokens")
@arg("--cost-usd", type=float, metavar="X", help="cost in US dollars")
@arg("--model", help="the model used")
@arg("--cache-read-tokens", type=int, default=0, metavar="N", help="cached input tokens read")
@arg("--cache-creation-tokens", type=int, default=0, metavar="N", help="input tokens cached")
def cmd_task_usage(town: Town, args: argparse.Namespace) -> None:
    """Report tokens and cost for a task (a command agent does it for its own task:
    ``$TINYTOWN_TASK_ID``); reports add up.

    Example: ``ttnb task usage "$TINYTOWN_TASK_ID" --input-tokens 1200 --output-tokens 300 --cost-usd 0.02``.
    """
    total = town.record_usage(args.task_id, args.input_tokens, args.output_tokens, args.cost_usd,
                              args.model, cache_read_tokens=args.cache_read_tokens,
                              cache_creation_tokens=args.cache_creation_tokens)
    print(f"Task {town.task(args.task_id).short_id} usage: {usage_text(total)}")


@verb("task list", "list tasks", json=True)
@arg("--state", help="pending, assigned, running, completed, failed or cancelled")
@arg("--agent", help="only this agent's tasks")
@arg("--limit", type=positive_int, metavar="N", help="only the N most recently changed tasks")
def cmd_task_list(town: Town, args: argparse.Namespace) -> None:
    """List tasks (oldest first), optionally one state and/or one agent's; printed a page
    at a time as they are read, so a big town's listing starts at once.

    Example: ``ttnb task list --state running``, ``ttnb task list --limit 20``.
    """
    pages = town.task_pages(state=args.state, agent=args.agent, limit=args.limit)
    if args.json:
        return dump_pages(pages)
    labels = agent_labels(town)
    printed = False
    for tasks in pages:
        print("\n".join(task_line(t, labels) for t in tasks), flush=True)
        printed = True
    if not printed:
        print("No tasks.")


@verb("archive", "move finished tasks out of Redis into the town's archive", json=True)
@arg("--older-than", default="7d", metavar="AGE",
     help="tasks whose last change is older than AGE: 7d, 12h, 30m, 90s (default 7d)")
@arg("--states", default="completed,cancelled", metavar="A,B",
     help="finished states to archive (default completed,cancelled)")
@arg("--list", action="store_true", help="list the archived tasks instead")
def cmd_archive(town: Town, args: argparse.Namespace) -> None:
    """Move finished tasks older than an age to ``.tt/archive/`` (``--list``: show them).

    Example: ``ttnb archive --older-than 30d --states completed,cancelled,failed``.
    """
    if args.list:
        archived = town.archived()
        if args.json:
            return dump(archived)
        return show(archived, agent_labels(town), empty="No archived tasks.")
    moved = town.archive(older_than=args.older_than, states=args.states)
    if args.json:
        return dump({"archived": moved})
    print(f"Archived {moved} task(s) to {town.root / '.tt' / 'archive'}")


@verb("task current", "the task an agent is working on", json=True)
@arg("agent", nargs="?", help=f"default: ${ENV_AGENT_ID} or ${ENV_AGENT_NAME}")
def cmd_task_current(town: Town, args: argparse.Namespace) -> None:
    """The task an agent is working on (default: this agent, from the environment).

    Example: ``ttnb task current dev``.
    """
    agent = args.agent or env_agent()
    if agent is None:
        raise BadUsage(f"give an AGENT, or set {ENV_AGENT_ID} or {ENV_AGENT_NAME}")
    task = town.current_task(agent)
    if args.json:
        return dump(task)
    if task is None:
        print(f"No current task for {town.agent(agent).display_label}.")
    else:
        print("\n".join(task_details(task, agent_labels(town))))


group("dead", "messages workers set aside because the town cannot use them")


@verb("dead list", "list the dead letters", json=True)
def cmd_dead_list(town: Town, args: argparse.Namespace) -> None:
    """Messages (and tasks) set aside, oldest first: ``short  agent  source  reason``.

    Example: ``ttnb dead list``.
    """
    found = town.dead_letters()
    if args.json:
        return dump([{"id": d.id, "reason": d.reason, "agent_id": d.agent_id, "source": d.source,
                      "task_id": d.task_id, "at": d.at, "message": d.text} for d in found])
    if not found:
        print("No dead letters.")
    labels = agent_labels(town)
    for d in found:
        who = labels.get(d.agent_id or "", (d.agent_id or "?")[:8])
        print(f"  {d.short_id}  {who}  {d.source}  {cut(d.reason, 100)}")


@verb("dead requeue", "put a dead letter's message back in its agent's inbox")
@arg("dead_id", metavar="ID")
def cmd_dead_requeue(town: Town, args: argparse.Namespace) -> None:
    """Put a dead letter back (and re-open its quarantined task); fix its record first.

    Example: ``ttnb dead requeue 9c1e``.
    """
    d = town.requeue_dead_letter(args.dead_id)
    print(f"Put dead letter {d.short_id} back in the {d.source} of its agent")


@verb("dead drop", "delete a dead letter")
@arg("dead_id", metavar="ID")
def cmd_dead_drop(town: Town, args: argparse.Namespace) -> None:
    """Delete a dead letter for good.

    Example: ``ttnb dead drop 9c1e``.
    """
    d = town.drop_dead_letter(args.dead_id)
    print(f"Dropped dead letter {d.short_id}")


group("backlog", "the queue of unassigned tasks")


@verb("backlog add", "add a task to the backlog")
@arg("description")
@arg("--tags", help="comma-separated tags")
@arg("--after", metavar="ID,ID", help="join the backlog only once these tasks are completed")
@_run_options
def cmd_backlog_add(town: Town, args: argparse.Namespace) -> None:
    """Put a new unassigned task on the backlog (with --after: once those are completed; run
    options as ``assign``).

    Example: ``ttnb backlog add "Triage the open issues" --tags ops --timeout 10m``.
    """
    task = town.backlog_add(args.description, tags=args.tags or (), after=args.after,
                            **_options_of(args))
    deps = town.deps(task)
    open_ = deps[0].waiting_on if deps else ()
    if open_:
        print(f"Created task {task.short_id} ({task.id}); it joins the backlog once "
              f"{', '.join(t[:4] for t in open_)} are completed")
    else:
        print(f"Added task {task.short_id} ({task.id}) to the backlog")


@verb("backlog list", "list the backlog", json=True)
def cmd_backlog_list(town: Town, args: argparse.Namespace) -> None:
    """The backlog in queue order: ``short (uuid) - description [tags]``.

    Example: ``ttnb backlog list``.
    """
    tasks = town.backlog()
    if args.json:
        return dump(tasks)
    if not tasks:
        print("Backlog is empty.")
    for t in tasks:
        tags = f" [{', '.join(t.tags)}]" if t.tags else ""
        print(f"  {t.short_id} ({t.id}) - {cut(t.description, 60)}{tags}")


@verb("backlog claim", "assign one backlog task to an agent")
@arg("task_id", metavar="TASK")
@arg("agent")
def cmd_backlog_claim(town: Town, args: argparse.Namespace) -> None:
    """Assign one backlog task to an agent.

    Example: ``ttnb backlog claim 3f2a dev``.
    """
    task = town.backlog_claim(args.task_id, args.agent)
    print(f"Task {task.short_id} claimed by {agent_labels(town).get(task.assigned_to or '', args.agent)}")


@verb("backlog assign-all", "assign the whole backlog to an agent")
@arg("agent")
def cmd_backlog_assign_all(town: Town, args: argparse.Namespace) -> None:
    """Assign every backlog task, in order, to one agent.

    Example: ``ttnb backlog assign-all dev``.
    """
    tasks = town.backlog_assign_all(args.agent)
    print(f"Assigned {len(tasks)} backlog task(s) to {town.agent(args.agent).display_label}")
    show(tasks, agent_labels(town), empty="")


@verb("backlog remove", "remove (and delete) a backlog task")
@arg("task_id", metavar="TASK")
def cmd_backlog_remove(town: Town, args: argparse.Namespace) -> None:
    """Remove a task from the backlog and delete it.

    Example: ``ttnb backlog remove 3f2a``.
    """
    task = town.backlog_remove(args.task_id)
    print(f"Removed task {task.short_id} from the backlog")


def _agent_verb(method: str, done: str, help: str) -> Callable[[Town, argparse.Namespace], None]:
    """Register ``ttnb METHOD AGENT``: ``Town.METHOD(agent)``, then print its new state."""
    def run(town: Town, args: argparse.Namespace) -> None:
        agent = getattr(town, method)(args.agent)
        print(f"{done} {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}")
    run.__name__ = run.__qualname__ = f"cmd_{method}"
    run.__doc__ = f"{done} an agent (Town.{method}).\n\nExample: ``{PROG} {method} dev``."
    return verb(method, help)(arg("agent")(run))


def _kept_worktrees(town: Town, names: list[str]) -> None:
    """Say which of these agents' worktrees were kept with unsaved work (kill, stop, prune)."""
    theirs = [w.agent for w in town.worktrees(status=False) if w.agent in names]
    for w in (row for name in theirs for row in town.worktrees(name)):  # git: theirs only
        if w.unsaved:
            print(f"Kept worktree {w.branch}: {w.unsaved}. See it with `{PROG} diff {w.agent}`; "
                  f"`{PROG} merge {w.agent}` brings it back.")


@verb("kill", "stop an agent now")
@arg("agent")
def cmd_kill(town: Town, args: argparse.Namespace) -> None:
    """Stop an agent now (Town.kill); a worktree it leaves with unsaved work is named.

    Example: ``ttnb kill dev``.
    """
    agent = town.kill(args.agent)
    print(f"Killed {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}")
    _kept_worktrees(town, [agent.name])


cmd_interrupt = _agent_verb("interrupt", "Interrupted", "pause an agent after its current task")
cmd_resume = _agent_verb("resume", "Resumed", "un-pause an agent")
cmd_close = _agent_verb("close", "Closing", "let an agent finish its work, then stop")


@verb("restart", "bring a stopped agent back")
@arg("agent")
@arg("--rounds", "--max-rounds", dest="rounds", type=positive_int, metavar="N",
     help="stop after N rounds (default: the limit it had)")
@arg("--foreground", action="store_true",
     help="run the worker in this terminal until it stops (Ctrl-C stops it)")
def cmd_restart(town: Town, args: argparse.Namespace) -> int | None:
    """Bring a stopped agent back (``--rounds N``: a new round limit; ``--foreground``: run
    its worker here until it stops).

    Example: ``ttnb restart dev --rounds 5``.
    """
    agent = town.restart(args.agent, start=not args.foreground, max_rounds=args.rounds)
    print(f"Restarted {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}", flush=True)
    if args.foreground:
        return town.run_worker(agent, max_rounds=args.rounds)
    return None


@verb("stop", "kill every agent (Redis keeps running)")
@arg("--server", action="store_true", help="also stop the town's managed Redis server")
def cmd_stop(town: Town, args: argparse.Namespace) -> None:
    """Kill every running agent; with --server also stop the town's managed Redis.

    Example: ``ttnb stop --server``.
    """
    stopped = town.stop_all()
    print(f"Stopped {len(stopped)} agent(s)")
    show(stopped, empty="")
    _kept_worktrees(town, [a.name for a in stopped])
    if args.server:
        town.shutdown()
        print("Redis server stopped" if town.server else "Redis is not managed by this town; left running")


@verb("wait", "wait for an agent, a task or all work")
@arg("agent", nargs="?")
@arg("--task", metavar="ID", help="wait until this task finishes")
@arg("--all", action="store_true", help="wait until every task is finished")
@arg("--timeout", type=seconds, metavar="S", help="give up after S seconds (exit 1)")
def cmd_wait(town: Town, args: argparse.Namespace) -> None:
    """Block until an agent stops, a task finishes, or all work is done.

    Example: ``ttnb wait --all --timeout 600``.
    """
    if sum(map(bool, (args.agent, args.task, args.all))) != 1:
        raise BadUsage("give exactly one of AGENT, --task ID or --all")
    if args.all:  # the counts, not every task: a town may hold 100,000 of them
        counts = town.wait_until("done", timeout=args.timeout)
        states = ", ".join(f"{n} {s}" for s, n in counts.tasks.items() if n)
        print(f"All {counts.total_tasks} tasks finished" + (f": {states}" if states else "."))
        return
    result = town.wait(args.agent, task=args.task, timeout=args.timeout)
    show(result, agent_labels(town), empty="Done.")


@verb("prune", "delete stopped/error agents")
@arg("--all", action="store_true", help="delete every agent")
def cmd_prune(town: Town, args: argparse.Namespace) -> None:
    """Delete stopped/error agents (every agent with --all).

    Example: ``ttnb prune``.
    """
    gone = town.prune(all=args.all)
    print(f"Pruned {len(gone)} agent(s)")
    show(gone, empty="")
    _kept_worktrees(town, [a.name for a in gone])


@verb("worktrees", "the agents' git worktrees", json=True)
def cmd_worktrees(town: Town, args: argparse.Namespace) -> None:
    """List the agents' git worktrees: branch, base, commits ahead/behind, uncommitted files.

    Example: ``ttnb worktrees``.
    """
    rows = town.worktrees()
    if args.json:
        return dump(rows)
    if not rows:
        print(f"No worktrees. Spawn an agent with `{PROG} spawn NAME --worktree` for one.")
    for w in rows:
        print(worktree_line(w))
        if w.unsaved:
            print(f"      unsaved: {w.unsaved}")


@verb("diff", "an agent's work in its worktree against its base")
@arg("agent")
@arg("--stat", action="store_true", help="only the files changed and how much")
def cmd_diff(town: Town, args: argparse.Namespace) -> None:
    """Print the agent's commits and uncommitted changes against its base (coloured on a
    terminal).

    Example: ``ttnb diff dev --stat``.
    """
    d = town.diff(args.agent, stat=args.stat)
    if not d:
        print("No changes.")
    else:
        print(d.ansi() if sys.stdout.isatty() else d, end="")


@verb("merge", "merge an agent's branch into its base")
@arg("agent")
@arg("--into", metavar="BRANCH", help="the branch to merge into (default: its base)")
@arg("--squash", action="store_true", help="one commit instead of a merge commit")
@arg("-m", "--message", metavar="MSG", help="the commit message")
def cmd_merge(town: Town, args: argparse.Namespace) -> None:
    """Merge the agent's branch in the main checkout; a conflict is aborted (main unchanged)
    and exits 1 naming the files.

    Example: ``ttnb merge dev --squash -m "Add --verbose"``.
    """
    commit = town.merge(args.agent, into=args.into, squash=args.squash, message=args.message)
    w = town.worktrees(args.agent, status=False)[0]
    print(f"Merged {w.branch} into {args.into or w.base}: commit {commit[:12]}")


@verb("recover", "stop agents whose worker died")
@arg("--stale-after", type=seconds, default=120.0, metavar="S",
     help="heartbeat age that counts as dead (120)")
def cmd_recover(town: Town, args: argparse.Namespace) -> None:
    """Mark agents whose worker stopped heartbeating as stopped and requeue their work.

    Example: ``ttnb recover --stale-after 60``.
    """
    recovered = town.recover(stale_after=args.stale_after)
    if recovered:
        print(f"Recovered {len(recovered)} agent(s) with no heartbeat for {args.stale_after:g}s:")
    show(recovered, empty="No stale agents.")


@verb("reclaim", "take work back from dead agents", json=True)
@arg("--from", dest="from_agent", metavar="AGENT", help="only this dead agent")
@one_of(arg("--to", metavar="AGENT", help="move the work to this agent"),
        arg("--to-backlog", action="store_true", help="put the work on the backlog"),
        arg("--cancel", action="store_true", help="cancel orphaned tasks"),
        arg("--delete", action="store_true", help="delete orphaned tasks"))
@arg("--orphan-tasks", action="store_true",
     help="unfinished tasks of missing or dead agents instead of inboxes")
def cmd_reclaim(town: Town, args: argparse.Namespace) -> None:
    """Take work back from dead agents (their inboxes, or orphaned tasks).

    Example: ``ttnb reclaim --from dev --to qa``.
    """
    result = town.reclaim(from_agent=args.from_agent, to=args.to, to_backlog=args.to_backlog,
                          orphan_tasks=args.orphan_tasks, cancel=args.cancel, delete=args.delete)
    if args.json:
        return dump(result)
    show(result, agent_labels(town), empty="Nothing to reclaim.")


@verb("reset", "delete the town's data (dry run without --force)")
@arg("--force", action="store_true", help="really delete")
@arg("--agents-only", action="store_true", help="only agents and their mailboxes")
def cmd_reset(town: Town, args: argparse.Namespace) -> None:
    """Delete the town's data (agents only with --agents-only); a dry run without --force.

    Example: ``ttnb reset --force --agents-only``.
    """
    if not args.force:
        agents = town.agents()
        if args.agents_only:
            print(f"Would delete {len(agents)} agent(s) and their mailboxes; tasks stay.")
        else:
            print(f"Would delete every key of town {town.name!r}: {len(agents)} agent(s), "
                  f"{len(town.tasks())} task(s) ({len(town.backlog())} on the backlog), "
                  "mailboxes and events.")
        show(agents, empty="")
        print(f"Nothing deleted. Run `{PROG} reset --force"
              f"{' --agents-only' if args.agents_only else ''}` to delete.")
        return
    print(f"Deleted {town.reset(agents_only=args.agents_only)} key(s)")


def _print_events(events: list[Event], as_json: bool) -> None:
    for e in events:
        if as_json:
            dump(e, compact=True)
        else:
            print(event_line(e), flush=True)


@verb("events", "events from the start of the stream", json=True)
@arg("-c", "--count", type=positive_int, default=20, metavar="N", help="how many (20)")
@arg("--agent", help="one agent's stream")
@arg("-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C ends)")
def cmd_events(town: Town, args: argparse.Namespace) -> None:
    """The first COUNT events (town or one agent's stream); -f keeps printing new ones.

    Example: ``ttnb events -f``.
    """
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


@verb("history", "the most recent events", json=True)
@arg("-n", type=positive_int, default=30, metavar="N", help="how many (30)")
@arg("-a", "--agent", help="one agent's events")
def cmd_history(town: Town, args: argparse.Namespace) -> None:
    """The last N town events (or one agent's), oldest first.

    Example: ``ttnb history -n 10 -a dev``.
    """
    events = town.history(args.n, agent=args.agent)
    if args.json:
        return dump(events)
    if not events:
        print("No events.")
    _print_events(events, False)


@verb("cost", "tokens and dollars per agent, tag or task", json=True)
@arg("--by", choices=["agent", "tag", "task"], default="agent", help="group by (agent)")
def cmd_cost(town: Town, args: argparse.Namespace) -> None:
    """What the town's agents used, most expensive first, and the budget if one is set.

    Example: ``ttnb cost --by tag``.
    """
    rows, budget = town.usage(args.by), town.budget()
    if args.json:
        return dump({"by": args.by, "rows": rows, "total": town.usage_totals(), "budget": budget})
    if not rows:
        print("No usage recorded yet.")
    else:
        print("\n".join(usage_table(rows, args.by)))
    if budget.usd is not None:
        state = "REACHED: AI agents are paused" if budget.exceeded else f"${budget.left:.4f} left"
        print(f"Budget: ${budget.spent_usd:.4f} of ${budget.usd:g} ({state})")


@verb("budget", "show or set the town's cost budget")
@arg("usd", nargs="?", metavar="USD|off", help="the limit in US dollars, or off to clear it")
def cmd_budget(town: Town, args: argparse.Namespace) -> None:
    """Show the budget, set it (AI agents pause after their current run once the recorded
    cost reaches it), or clear it with ``off``.

    Examples: ``ttnb budget 5``, ``ttnb budget off``.
    """
    if args.usd is not None:
        town.set_budget(None if args.usd.strip().lower() in ("off", "none") else args.usd)
    budget = town.budget()
    if budget.usd is None:
        print(f"No budget (recorded cost ${budget.spent_usd:.4f}).")
    else:
        state = " — reached: AI agents are paused" if budget.exceeded else ""
        print(f"Budget ${budget.usd:g}: ${budget.spent_usd:.4f} recorded{state}")
