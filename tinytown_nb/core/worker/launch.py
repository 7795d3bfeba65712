"""Starting and stopping the workers behind agents, and the verbs that need a worker:
spawn, restart, kill and prune (which look after an agent's git worktree too), running a
worker in the foreground, and the ``python -m`` entry.

* a CLI agent's worker is a detached process (``python -m tinytown_nb.worker``) that
  outlives the caller and logs to ``.tt/logs/<name>.log``;
* a function agent's worker is a daemon thread of the calling process (its function is
  remembered here, so the agent can be restarted in this process).

Each launch writes ``tt:{town}:worker:{aid}`` (kind, options, a fresh token) first; the
worker then registers with that token, and every later write of an older worker of the
same agent is refused.

Example::

    >>> _ = (store.root / "my_bot.py").write_text("import sys; print(sys.stdin.read().title())")
    >>> spawn(store, "dev", cli="python3 my_bot.py").state                # runs in the town root
    <AgentState.IDLE: 'idle'>
    >>> spawn(store, "upper", fn=lambda t: t.description.upper(), town=town).state
    <AgentState.IDLE: 'idle'>
    >>> town.wait(task=town.assign("dev", "fix the login bug"), timeout=30).result
    'Fix The Login Bug'
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import agent_worktrees, agents, checks, lookup, procs, recovery, transitions as tr, waiting
from ..config import TownConfig, resolve_cli_name
from ..errors import AgentExists, ConfigError, InvalidState
from ..models import Agent, AgentState
from ..names import validate_agent_name
from ..paths import open_private
from ..runners import CommandRunner, FunctionRunner, command_argv
from ..store import Store
from ..transitions import AGENT_RULES
from ..wording import counted
from . import host
from .loop import Worker, log
from .options import file_logger, limits, prepare, worker_options

START_TIMEOUT = 30.0  # seconds a new worker has to register before spawn gives up

_threads: dict[tuple[str, str], tuple[threading.Thread, Worker]] = {}
_functions: dict[tuple[str, str], Callable[..., Any]] = {}
_lock = threading.Lock()


def _local_key(store: Store, aid: str) -> tuple[str, str]:
    return (f"{store.root}|{store.name}", aid)


# --------------------------------------------------------------------------- options


def check_options(cli: Any, fn: Any, max_rounds: Any, idle_timeout: Any, shared: Any = False) -> None:
    """Refuse worker options that cannot work, before anything is written."""
    if fn is not None and cli is not None:
        raise ConfigError("Give either cli=... (a command) or fn=... (a Python function), not both.")
    if fn is not None and shared:
        raise ConfigError("shared=True is for CLI agents; a function agent already runs in this "
                          "process (leave shared out).")
    if fn is not None and not callable(fn):
        raise ConfigError(f"fn must be a function, got {type(fn).__name__}.")
    checks.optional(checks.count, max_rounds, "max_rounds")
    checks.optional(checks.seconds, idle_timeout, "idle_timeout (0: never)")


def cli_name(config: TownConfig, cli: str | None = None, fn: Callable[..., Any] | None = None) -> str:
    """What a spawn records as an agent's ``cli``: a preset name (command lines of a preset
    resolve to it), the command line, or ``fn:<name>`` for a function agent.

    >>> cli_name(TownConfig.new("/tmp/t", "t"), fn=len)
    'fn:len'
    """
    if fn is not None:
        return f"fn:{getattr(fn, '__qualname__', type(fn).__name__)}"
    return resolve_cli_name(cli or config.default_cli, config)


# --------------------------------------------------------------------------- starting


def start_process_worker(store: Store, agent: Agent, *, max_rounds: int | None = None,
                         idle_timeout: float | None = None, backlog: bool = False,
                         task_timeout: float | None = None,
                         silence_timeout: float | None = None) -> subprocess.Popen:
    """Launch the detached worker process of a CLI agent (it outlives this process)."""
    procs.reap()
    token = prepare(store, agent.id, "process", max_rounds, idle_timeout, backlog,
                    **limits(task_timeout, silence_timeout))
    _fresh_logs(store, agent)
    argv = [sys.executable, "-m", "tinytown_nb.worker", "--town", str(store.root),
            "--agent", agent.id, "--token", token]
    # appended to (O_APPEND): a replaced worker never leaves a hole in it
    with open_private(store.paths.worker_log(agent.name), "ab") as out:
        proc = subprocess.Popen(argv, cwd=store.root, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return procs.track(proc)


def start_thread_worker(store: Store, agent: Agent, fn: Callable[..., Any] | None = None, *,
                        town: Any = None, max_rounds: int | None = None,
                        idle_timeout: float | None = None, backlog: bool = False,
                        task_timeout: float | None = None,
                        silence_timeout: float | None = None) -> threading.Thread:
    """Run a function agent in a daemon thread of this process; it logs to
    ``.tt/logs/<name>.log`` (never to the notebook's stderr). ``town`` is what the
    function's context offers as ``ctx.town`` (the Town facade).

    ``fn=None`` reuses the function the agent was last started with here. A worker this
    process still runs for the agent is superseded first (woken, and waited for briefly
    when it is not in the middle of a call), so it cannot keep a message the new one needs.
    """
    key = _local_key(store, agent.id)
    fn = fn or _functions.get(key)
    if fn is None:
        raise ConfigError(f"Agent {agent.name!r} is a function agent started in another process; "
                          "spawn it again here with fn=... .")
    runner = FunctionRunner(fn, town, workdir=agent_worktrees.workdir(store, agent.name) or store.root)
    name = getattr(fn, "__qualname__", type(fn).__name__)
    token = prepare(store, agent.id, "function", max_rounds, idle_timeout, backlog, function=name,
                    **limits(task_timeout, silence_timeout))
    worker = Worker(store, agent.id, runner, token=token, max_rounds=max_rounds,
                    idle_timeout=idle_timeout, backlog=backlog,
                    logger=file_logger(store, agent, token), task_timeout=task_timeout,
                    silence_timeout=silence_timeout)
    thread = threading.Thread(target=worker.run, daemon=True, name=f"tt-agent-{agent.name}")
    with _lock:
        old = _threads.get(key)
        _threads[key] = (thread, worker)
        _functions[key] = fn
    if old is not None and old[0].is_alive():
        old[1].supersede()  # its token is already replaced: it can only exit
        if old[1]._current is None and old[0] is not threading.current_thread():
            old[0].join(2.0)  # not running a call: it exits (returning a message) at once
    thread.start()
    return thread


def start_shared_worker(store: Store, agent: Agent, *, max_rounds: int | None = None,
                        idle_timeout: float | None = None, backlog: bool = False,
                        task_timeout: float | None = None,
                        silence_timeout: float | None = None, pipe: Any = None) -> str:
    """Order the worker of a CLI agent from this host's shared worker process (see
    :mod:`.host`; call :func:`host.ensure_host` after the order); returns its token. With
    ``pipe``, the order goes in it (many agents at once)."""
    token = prepare(store, agent.id, "process", max_rounds, idle_timeout, backlog, shared="1",
                    **limits(task_timeout, silence_timeout))
    _fresh_logs(store, agent)
    host.order_start(store, agent.id, token, pipe)
    return token


def _fresh_logs(store: Store, agent: Agent) -> None:
    """An agent's worker log truncated and its old round logs gone, for a new launch."""
    paths = store.paths
    paths.logs.mkdir(parents=True, exist_ok=True)
    for old in paths.round_logs(agent.name):
        old.unlink(missing_ok=True)
    open_private(paths.worker_log(agent.name), "wb").close()


def start_worker(store: Store, agent: Agent, fn: Callable[..., Any] | None = None, *,
                 town: Any = None, timeout: float = START_TIMEOUT, shared: bool = False,
                 **options: Any) -> Agent:
    """Start the worker of an agent in state ``starting``; return it once registered.
    ``shared``: a CLI agent's worker runs in this host's shared worker process."""
    return start_workers(store, [agent], fn, town=town, timeout=timeout, shared=shared,
                         **options)[0]


def start_workers(store: Store, started: list[Agent], fn: Callable[..., Any] | None = None, *,
                  town: Any = None, timeout: float = START_TIMEOUT, shared: bool = False,
                  **options: Any) -> list[Agent]:
    """Start the workers of agents in state ``starting`` (all function agents of ``fn``,
    or all CLI agents); return them once every one registered (or stopped)."""
    procs_of: dict[str, subprocess.Popen] = {}
    function = fn is not None or any(a.cli.startswith("fn:") for a in started)
    if function:
        for agent in started:
            start_thread_worker(store, agent, fn, town=town, **options)
    elif shared:
        pipe = store.redis.pipeline(transaction=False)
        for agent in started:
            start_shared_worker(store, agent, pipe=pipe, **options)
        pipe.execute()
    else:
        for agent in started:
            procs_of[agent.id] = start_process_worker(store, agent, **options)
    host_pid = host.ensure_host(store) if shared and not function else None
    restarted = False

    def failed(agent: Agent) -> InvalidState | None:
        """Why this agent's worker did not start, if it did not."""
        nonlocal host_pid, restarted
        proc = procs_of.get(agent.id)
        if proc is not None and proc.poll() is not None:
            path = store.paths.worker_log(agent.name)
            last = (path.read_text(errors="replace").strip().splitlines() or [""])[-1]
            agents.change(store, agent, "kill", message=f"Agent {agent.name}: worker failed to start")
            return InvalidState(f"The worker of agent {agent.name!r} exited at start (code "
                                f"{proc.returncode}): {last[:200]} — see {path}.")
        if host_pid is not None and not procs.alive(host_pid):
            if not restarted:  # (it may have left idle just as we ordered: orders wait for the next)
                restarted, host_pid = True, host.ensure_host(store)
                return None
            path = host.log_path(store)
            last = (path.read_text(errors="replace").strip().splitlines() or [""])[-1] \
                if path.exists() else ""
            agents.change(store, agent, "kill", message=f"Agent {agent.name}: worker failed to start")
            return InvalidState(f"The shared worker process exited at start: {last[:200]} — see {path}.")
        return None

    def check(_: Any) -> list[Agent] | None:
        current = [lookup.agent(store, a.id) for a in started]
        for agent in current:
            if agent.state == AgentState.STARTING:
                why = failed(agent)
                if why is not None:
                    raise why
                return None
            if agent.state == AgentState.STOPPED and shared:
                why = store.redis.hget(store.keys.worker(agent.id), "error")
                if why:  # the shared process could not start it (say why, as a process would)
                    raise InvalidState(f"The worker of agent {agent.name!r} could not start: {why}")
        return current

    what = started[0].name if len(started) == 1 else counted(len(started), "agent")
    return waiting.until(store, check, timeout=timeout,
                         describe=lambda: f"the worker of {what} to start")


def spawn(store: Store, name: str, cli: str | None = None, *, fn: Callable[..., Any] | None = None,
          town: Any = None, role: str | None = None, nickname: str | None = None,
          parent: Any = None, replace: bool = False, backlog: bool = False,
          max_rounds: int | None = None, idle_timeout: float | None = None,
          start: bool = True, worktree: bool = False, base: str | None = None,
          task_timeout: Any = None, silence_timeout: Any = None, shared: bool = False) -> Agent:
    """Register an agent and start its worker (see :meth:`Town.spawn`).

    In that order: check everything (nothing written yet), make or reuse the agent's
    worktree, register the agent, start its worker; when registering (or the worker's
    start) fails, the worktree and record this spawn made are taken back.
    """
    check_options(cli, fn, max_rounds, idle_timeout, shared)
    task_timeout = checks.optional(checks.duration, task_timeout, "task_timeout")
    silence_timeout = checks.optional(checks.duration, silence_timeout, "silence_timeout")
    agent, made = _register(store, name, cli, fn, role=role, nickname=nickname, parent=parent,
                            replace=replace, start=start, worktree=worktree, base=base)
    if not start:
        return agent
    try:
        return start_worker(store, agent, fn, town=town, max_rounds=max_rounds,
                            idle_timeout=idle_timeout, backlog=backlog, task_timeout=task_timeout,
                            silence_timeout=silence_timeout, shared=shared)
    except InvalidState:  # its worker exited at start (so nothing runs in the worktree)
        agent_worktrees.undo(store, made)
        raise


def _register(store: Store, name: str, cli: str | None, fn: Callable[..., Any] | None, *,
              role: str | None, nickname: str | None, parent: Any, replace: bool, start: bool,
              worktree: bool, base: str | None) -> tuple[Agent, Any]:
    """Check and register one agent (``starting``), with its worktree; returns it and what
    the worktree step made (to take back if its worker does not start)."""
    name = validate_agent_name(name)
    if nickname is not None:
        nickname = validate_agent_name(nickname)
    if base is not None and not worktree:
        raise ConfigError("base= names the commit a new worktree starts from; give it with "
                          "worktree=True (--worktree).")
    recorded_cli = cli_name(store.config, cli, fn)
    parent_id = lookup.agent(store, parent).id if parent is not None else None
    same, live = _same_name(store, name, replace)
    if start and fn is None:
        command_argv(store.config, recorded_cli, name)  # refuse a CLI that is not installed, early
    made = agent_worktrees.prepare(store, name, want=worktree, base=base)
    try:
        for agent in live:
            agents.kill(store, agent)
        reuse = max(same, key=lambda a: a.created_at) if same else None
        agent = agents.register(store, name, recorded_cli, role=role, nickname=nickname,
                                parent_id=parent_id, reuse=reuse)
    except BaseException:
        agent_worktrees.undo(store, made)
        raise
    return agent, made


def _same_name(store: Store, name: str, replace: bool) -> tuple[list[Agent], list[Agent]]:
    """The agents named ``name`` and the live ones among them; refused when one is live
    and not to be replaced. A live-looking agent whose worker process on this host is gone
    counts as dead (it is recovered first)."""
    same = agents.named(store, name)
    orphans = {a.id for a in recovery.recover_orphans(store, [a for a in same if not a.state.is_terminal])}
    same = [lookup.agent(store, a.id) if a.id in orphans else a for a in same]
    live = [a for a in same if not a.state.is_terminal]
    if live and not replace:
        raise AgentExists(f"Agent {name!r} is already {live[0].state.value} ({live[0].short_id}). "
                          "Use it, kill it first, or replace it (replace=True, or --replace).")
    return same, live


def spawn_many(store: Store, names: Iterable[str], cli: str | None = None, *,
               shared: bool = True, role: str | None = None, parent: Any = None,
               replace: bool = False, backlog: bool = False, max_rounds: int | None = None,
               idle_timeout: float | None = None, worktree: bool = False,
               task_timeout: Any = None, silence_timeout: Any = None) -> list[Agent]:
    """Register many CLI agents of one command and start their workers at once — by
    default all in this host's shared worker process (see :meth:`Town.spawn_many`).

    Every name is checked before anything is written (a bad or taken name refuses the
    whole call); if a later step fails, the agents this call registered are removed again.
    """
    names = [validate_agent_name(n) for n in names]
    if not names:
        raise ConfigError("spawn_many needs at least one agent name.")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"Agent name(s) given twice: {', '.join(twice)}; give each name once.")
    check_options(cli, None, max_rounds, idle_timeout, shared)
    task_timeout = checks.optional(checks.duration, task_timeout, "task_timeout")
    silence_timeout = checks.optional(checks.duration, silence_timeout, "silence_timeout")
    if parent is not None:
        lookup.agent(store, parent)
    for name in names:  # refusals before any write
        _same_name(store, name, replace)
    command_argv(store.config, cli_name(store.config, cli), names[0])
    made: list[tuple[Agent, Any]] = []
    try:
        for name in names:
            made.append(_register(store, name, cli, None, role=role, nickname=None, parent=parent,
                                  replace=replace, start=True, worktree=worktree, base=None))
        return start_workers(store, [a for a, _ in made], max_rounds=max_rounds,
                             idle_timeout=idle_timeout, backlog=backlog, task_timeout=task_timeout,
                             silence_timeout=silence_timeout, shared=shared)
    except BaseException:
        for agent, tree in made:  # take back what this call made
            try:
                agents.kill(store, agent)
                store.run(tr.prune_agent(store.keys, agent.id, agent.name, only_dead=False))
            except Exception:  # noqa: BLE001 — the first error is the one to report
                pass
            agent_worktrees.undo(store, tree)
        raise


def restart(store: Store, ref: Any, *, start: bool = True, max_rounds: int | None = None,
            town: Any = None) -> Agent:
    """Bring a stopped agent back with its last options (see :meth:`Town.restart`)."""
    checks.optional(checks.count, max_rounds, "max_rounds")
    a = lookup.agent(store, ref)
    if not a.state.is_terminal:  # a live-looking agent whose worker process is gone
        a = (recovery.recover_orphans(store, [a]) or [a])[0]
    options = worker_options(store, a.id)
    if max_rounds is not None:
        options["max_rounds"] = max_rounds
    if start and a.state in AGENT_RULES["restart"].allowed_from:  # check before writing
        if not a.cli.startswith("fn:"):
            command_argv(store.config, a.cli, a.name)
        elif not has_function(store, a.id):
            raise ConfigError(f"Agent {a.name!r} runs a Python function this process does "
                              "not know; spawn it again with fn=... (or restart it where it "
                              "was spawned).")
    # its worktree, if it has one, is reused (re-made from its branch if the folder is gone)
    agent_worktrees.prepare(store, a.name, want=False)
    a = agents.reset_for_restart(store, a)
    options.pop("kind", None)
    return start_worker(store, a, town=town, **options) if start else a


def kill(store: Store, ref: Any) -> Agent:
    """Stop an agent now (see :func:`agents.kill`). Its worktree stays for a restart; when it
    holds unsaved work, the agent's activity says so.

    >>> dev = spawn(store, "dev", cli="cat")
    >>> kill(store, "dev").state
    <AgentState.STOPPED: 'stopped'>
    """
    a = lookup.agent(store, ref)
    why = agent_worktrees.unsaved(store, a.name)
    note = f"🌳 Worktree {agent_worktrees.branch_for(a.name)} kept: {why}" if why else None
    return agents.kill(store, a, note=note)


def prune(store: Store, all: bool = False) -> list[Agent]:
    """Delete dead agents (see :func:`agents.prune`), then the worktrees of those that are
    clean and merged; a worktree with unsaved work is kept (``town.worktrees()`` lists it).

    >>> dev = spawn(store, "dev", cli="cat", start=False)
    >>> kill(store, "dev").state
    <AgentState.STOPPED: 'stopped'>
    >>> [a.name for a in prune(store)]
    ['dev']
    """
    gone = agents.prune(store, all)
    agent_worktrees.tidy(store, [a.name for a in gone])
    return gone


# --------------------------------------------------------------------------- this process


def local_thread(store: Store, aid: str) -> threading.Thread | None:
    """The live thread of this process that runs the agent's function, if any.

    >>> summarizer = spawn(store, "summarizer", fn=lambda task: task.description[:40], town=town)
    >>> local_thread(store, lookup.agent(store, "summarizer").id).name
    'tt-agent-summarizer'
    """
    entry = _threads.get(_local_key(store, aid))
    return entry[0] if entry and entry[0].is_alive() else None


def runs_here(store: Store, aid: str) -> bool:
    """True when a thread of this process runs the agent's function."""
    return local_thread(store, aid) is not None


def has_function(store: Store, aid: str) -> bool:
    """True when this process knows the function of a function agent (so it can restart it)."""
    return _local_key(store, aid) in _functions


def stop_local_workers(store: Store, timeout: float = 3.0) -> None:
    """Stop this process's function-agent threads of a town: their agents become
    ``stopped``. Waits up to ``timeout`` seconds for a function still running; after that
    its agent is stopped for it and its task put back in the inbox (done again on the next
    start: at-least-once), and the thread, left to finish the call, exits without a word."""
    prefix = _local_key(store, "")[0]
    with _lock:
        mine = [(k, t, w) for k, (t, w) in _threads.items() if k[0] == prefix]
    for _, _, worker in mine:
        worker.shutdown()
    deadline = time.monotonic() + timeout
    for key, thread, worker in mine:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            worker.abandon()
        with _lock:
            if _threads.get(key, (None,))[0] is thread:
                del _threads[key]


def _worker_pid(store: Store, aid: str) -> int | None:
    """The pid of a live local worker process of this agent (checked against its command
    line: the agent's own worker process, or the town's shared one)."""
    h = store.redis.hgetall(store.keys.worker(aid))
    pid = h.get("pid") or ""
    if h.get("kind") != "process" or h.get("host") != socket.gethostname() or not pid.isdigit():
        return None
    cmdline = procs.command_line(int(pid))
    if cmdline is None:
        return None if procs.has_proc() else int(pid)  # no /proc (macOS): trust the record
    if b"tinytown_nb.worker" not in cmdline:
        return None
    if aid.encode() not in cmdline and not (h.get("shared") == "1" and host.HOST_FLAG.encode() in cmdline):
        return None
    return int(pid)


def _town_workers(store: Store) -> list[int]:
    """Pids of this host's worker processes started for this town (by their command line:
    also those whose worker record is gone, e.g. pruned while still running)."""
    marker = b"\0--town\0" + os.fsencode(str(store.root)) + b"\0"
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        cmdline = procs.command_line(int(entry.name))
        if cmdline and b"tinytown_nb.worker" in cmdline and marker in cmdline + b"\0":
            found.append(int(entry.name))
    return found


def stop_process_workers(store: Store, timeout: float = 5.0) -> list[int]:
    """SIGTERM the town's worker processes on this host (a shared one included) and wait
    for them (they put their running work back and mark their agents ``stopped``);
    returns the pids signalled."""
    pids: dict[int, list[str]] = {}
    for key in store.scan("worker"):
        aid = key.rsplit(":", 1)[1]
        pid = _worker_pid(store, aid)
        if pid is not None:
            pids.setdefault(pid, []).append(aid)
    for pid in _town_workers(store):
        pids.setdefault(pid, [])
    for pid in list(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            del pids[pid]
    deadline = time.monotonic() + timeout + host.STOP_GRACE * any(len(a) > 1 for a in pids.values())
    for pid, aids in pids.items():
        while time.monotonic() < deadline and procs.alive(pid):
            time.sleep(0.05)
        if procs.alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            procs.reap()
            for aid in aids:
                recovery.stop_left_command(store, aid)  # its command is now an orphan
    procs.reap()
    return list(pids)


# =========================================================================== entry point


def run_in_foreground(store: Store, agent: Agent, *, max_rounds: int | None = None,
                      idle_timeout: float | None = None, backlog: bool = False,
                      task_timeout: float | None = None, silence_timeout: float | None = None) -> int:
    """Run a CLI agent's worker in this process until it stops (``ttnb spawn --foreground``,
    tt's ``--foreground``); its log goes to stdout. Ctrl-C stops it, putting running work
    back. Returns the exit status.

    The calling process stays as it was: its environment is not changed (the command gets
    the agent's variables in its own) and its signal handlers are put back after the run —
    a notebook kernel that runs a worker keeps its interrupt and is no agent afterwards."""
    token = prepare(store, agent.id, "process", max_rounds, idle_timeout, backlog,
                    **limits(task_timeout, silence_timeout))
    _log_to_stdout()
    return _serve(store, agent, token, own_process=False)


def _log_to_stdout() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    """``python -m tinytown_nb.worker --town DIR --agent ID`` — run a CLI agent's worker
    (``--host``: the town's shared worker process, see :mod:`.host`).

    Options not given on the command line come from the worker hash written by ``spawn``.
    SIGTERM puts the running work back and stops the agent.
    """
    parser = argparse.ArgumentParser(prog="python -m tinytown_nb.worker", description=main.__doc__)
    parser.add_argument("--town", default=os.environ.get("TINYTOWN_TOWN_DIR", "."))
    parser.add_argument("--agent", help="agent id or name")
    parser.add_argument(host.HOST_FLAG, action="store_true",
                        help="run the town's shared worker process of this host (agents "
                             "spawned with shared=True)")
    parser.add_argument("--token", help="launch token written by spawn (omit when starting by hand)")
    parser.add_argument("--max-rounds", type=int)
    parser.add_argument("--idle-timeout", type=float)
    parser.add_argument("--backlog", action="store_true", default=None)
    args = parser.parse_args(argv)
    _log_to_stdout()
    store = Store.open(TownConfig.load(Path(args.town).expanduser().resolve()))
    if args.host:
        return host.main(store)
    if not args.agent:
        parser.error("give --agent ID (or --host)")
    return _serve(store, lookup.agent(store, args.agent), args.token, own_process=True,
                  max_rounds=args.max_rounds, idle_timeout=args.idle_timeout, backlog=args.backlog)


def _serve(store: Store, agent: Agent, token: str | None, *, own_process: bool,
           max_rounds: int | None = None, idle_timeout: float | None = None,
           backlog: bool | None = None) -> int:
    """Run one CLI agent's worker in this thread until it stops; SIGTERM and Ctrl-C stop it
    cleanly. ``own_process``: this process exists for the worker (its environment becomes
    the command's, set up once, and its signal handlers stay)."""
    opts = worker_options(store, agent.id) if token else {}
    tree = agent_worktrees.record(store, agent.name)
    runner = CommandRunner(store, agent, own_process=own_process, workdir=tree.path if tree else None,
                           branch=tree.branch if tree else None)
    worker = Worker(store, agent.id, runner, token=token,
                    max_rounds=max_rounds if max_rounds is not None else opts.get("max_rounds"),
                    idle_timeout=idle_timeout if idle_timeout is not None else opts.get("idle_timeout"),
                    backlog=backlog if backlog is not None else opts.get("backlog", False),
                    task_timeout=opts.get("task_timeout"), silence_timeout=opts.get("silence_timeout"))

    def on_term(signum: int, frame: Any) -> None:  # work outside the signal context (locks)
        threading.Thread(target=worker.shutdown, daemon=True).start()

    handlers = {signal.SIGTERM: on_term, signal.SIGINT: on_term,  # Ctrl-C: the same clean stop
                signal.SIGHUP: signal.SIG_IGN}
    # signal handlers can be set only in the main thread (a worker run from another thread
    # is stopped by kill/stop, as a function agent is)
    in_main = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in handlers} if in_main else {}
    for sig in before:
        signal.signal(sig, handlers[sig])
    try:
        reason = worker.run()
    finally:
        if not own_process:
            for sig, handler in before.items():
                signal.signal(sig, handler)
    log.info("worker exiting: %s", reason)
    return 1 if reason.startswith("crashed") else 0
