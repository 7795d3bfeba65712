"""The Town: one tinytown namespace on one Redis, and everything you do with it.

A town is a directory holding ``tinytown.toml`` (and ``.tt/`` with the managed server's
socket, data and logs) plus the ``tt:{town}:*`` keys in Redis. A town made here can be
driven by the Rust ``tt`` CLI and the other way round.

This class is the index of the API: each verb delegates to the module that owns its rule
(:mod:`.lookup`, :mod:`.agents`, :mod:`.tasks`, :mod:`.mail`, :mod:`.status`,
:mod:`.waiting`, :mod:`.recovery`, :mod:`.worker`, :mod:`.agent_worktrees`,
:mod:`.workflows`), all working on one :class:`~.store.Store`.

Example::

    >>> from tinytown_nb import Town
    >>> town = Town.init("demo-town")              # starts a private Redis under .tt/
    >>> dev = town.spawn("dev", cli="claude")
    >>> task = town.assign("dev", "Write the README")
    >>> town.wait(task=task, timeout=600).state
    <TaskState.COMPLETED: 'completed'>
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from . import (agent_worktrees, agents, archive, checks, costs, deadletters, lookup, mail, recovery,
               runs, status, tasks, waiting, workflows)
from .agent_worktrees import AgentWorktree, Diff
from .config import TownConfig, default_town_name
from .deadletters import DeadLetter
from .errors import ConfigError, one_line_errors
from .events import Event
from .keys import Keys
from .models import Agent, Message, Task, TaskState
from .names import validate_town_name
from .paths import TownPaths, town_root
from .runopts import RunOptions
from .server import ManagedServer, find_server_binary
from .status import Counts
from .workflows import Deps, Gate
from .store import Store
from .usage import Usage

# The worker package (processes, threads, runners) is imported by the verbs that use it:
# `ttnb task complete`, which agents run inside every task, never loads it.


@one_line_errors(lambda town: town.url)
class Town:
    """A connected town. Make one with :meth:`init` or :meth:`connect`, not directly."""

    def __init__(self, store: Store):
        self.store = store
        self.config: TownConfig = store.config
        self.name: str = store.name
        self.root: Path = store.root
        self.keys: Keys = store.keys
        self.redis: redis.Redis = store.redis
        self.server: ManagedServer | None = store.server

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def init(cls, path: str | Path = ".", name: str | None = None, **redis_options: Any) -> "Town":
        """Create a town in ``path`` (or connect to the one already there) and start Redis.

        ``redis_options`` are the ``[redis]`` settings (``url``, ``host``, ``port``,
        ``password``, ``tls_enabled``...). Without them the town gets its own server on
        ``.tt/redis.sock``. On an existing town they must match its settings (ConfigError).

        >>> town = Town.init("my-town", name="demo")
        >>> town.name
        'demo'
        """
        root = town_root(path)
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root} is a file, not a directory. Give Town.init a directory "
                              "(it is created when missing).")
        if (root / "tinytown.toml").exists():
            TownConfig.load(root).check_same_redis(redis_options)
            town = cls.connect(root)
            if name is not None and name != town.name:
                raise ConfigError(f"{root} already holds town {town.name!r}, not {name!r}. "
                                  "Connect to it without a name, or init in another directory.")
            return town
        name = validate_town_name(name) if name is not None else default_town_name(root)
        config = TownConfig.new(root, name, **redis_options)
        if config.uses_managed_server():
            find_server_binary()  # fail before writing anything when there is no server
        paths = TownPaths(root)
        created = [p for p in (root, paths.tt) if not p.exists()]
        try:
            paths.make()
            store = Store.open(config)
        except BaseException:
            for p in reversed(created):  # leave no half-made town behind
                shutil.rmtree(p, ignore_errors=True)
            raise
        config.save()
        _ignore_runtime_dir(root)
        return cls(store)

    @classmethod
    def connect(cls, path: str | Path = ".") -> "Town":
        """Attach to an existing town, made here or by the Rust ``tt``; starts its server if needed.

        >>> again = Town.connect(town.root)   # e.g. from another notebook
        >>> again.name
        'demo'
        """
        store = Store.open(TownConfig.load(town_root(path)))
        store.paths.secure()  # .tt/ is 0700 for every town, managed or not
        status.reconcile(store)  # file what a program keeping no index (the Rust tt) wrote
        return cls(store)

    def disconnect(self) -> None:
        """Close this process's Redis connections (the server keeps running)."""
        self.store.close()

    def shutdown(self) -> None:
        """Stop this process's function agents and the town's managed Redis server (data
        stays in ``.tt/``). With a managed server the town's worker processes on this host
        are stopped first (they put running work back); remote Redis keeps running.

        >>> town.shutdown()
        >>> town.server.is_running()
        False
        """
        from . import worker
        worker.stop_local_workers(self.store)
        if self.server is not None and self.server.is_running():  # (a second shutdown: no-op)
            worker.stop_process_workers(self.store)
        self.disconnect()
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str:
        """The Redis URL, password redacted."""
        return self.store.url

    def __repr__(self) -> str:
        return f"<Town {self.name!r} at {self.root} on {self.url}>"

    # ------------------------------------------------------------------ reading
    def hashes(self, kind: str = "task", ids: Iterable[str] | None = None,
               fields: Sequence[str] | None = None) -> list[dict[str, str]]:
        """Raw ``agent`` or ``task`` hashes (all, or those ids, in that order) in one
        pipelined read; ``fields`` reads only those (``id`` always included, absent ⇒ None).
        For bulk readers that parse whole columns at once (frames, the dashboard).

        >>> task = town.complete_task(town.backlog_add("Triage open issues"), "3 closed")
        >>> town.hashes("task", fields=["state"])[0]
        {'id': '...', 'state': 'completed'}
        """
        return self.store.hashes(kind, ids, fields)

    def agents(self) -> list[Agent]:
        """All agents, oldest first.

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> reviewer = town.spawn("reviewer", fn=lambda task: "looks good")
        >>> [a.name for a in town.agents()]
        ['dev', 'reviewer']
        """
        return lookup.all_agents(self.store)

    def agent(self, ref: Any) -> Agent:
        """Resolve a name, nickname, label, 4-char short id, UUID, ``supervisor``/``conductor``
        (case-insensitive, spec §4.3; stopped agents match too).

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> town.agent("dev").state
        <AgentState.IDLE: 'idle'>
        """
        return lookup.agent(self.store, ref)

    def tasks(self, state: str | TaskState | None = None, agent: Any = None) -> list[Task]:
        """All tasks (oldest first), optionally only one state and/or one assignee.

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=10).state
        <TaskState.COMPLETED: 'completed'>
        >>> [t.description for t in town.tasks(state="completed", agent="dev")]
        ['Fix #12']
        """
        return tasks.list_tasks(self.store, state, agent)

    def task_ids(self, state: str | TaskState | None = None, agent: Any = None) -> list[str] | None:
        """Ids of the tasks in one state and/or of one assignee, most recently changed
        last, from the state indexes (no record read); None without a filter (every task:
        read them with :meth:`hashes`).

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> tasks = town.assign_many("dev", ["Fix #1", "Fix #2", "Fix #3"])
        >>> len(town.task_ids(state="assigned"))
        3
        """
        return tasks.task_ids(self.store, state, agent)

    def task_columns(self, fields: Sequence[str], state: str | TaskState | None = None,
                     agent: Any = None) -> dict[str, list[Any]]:
        """Fields of every task (or of one state and/or one assignee) as columns,
        ``{field: [value, …]}`` (``id`` always read, absent ⇒ None), read through the state
        indexes with the server assembling the columns: the bulk read DataFrames are built
        from (at 100,000 tasks a tenth of the client CPU of an HGETALL per task).

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> tasks = town.assign_many("dev", ["Fix #1", "Fix #2"])
        >>> town.task_columns(["state"], state="assigned")
        {'id': ['...', '...'], 'state': ['assigned', 'assigned']}
        """
        return tasks.task_columns(self.store, fields, state, agent)

    def task_pages(self, state: str | TaskState | None = None, agent: Any = None, *,
                   limit: int | None = None, page: int | None = None) -> Iterator[list[Task]]:
        """:meth:`tasks` in pages of ``page`` tasks (default 1000; oldest first), each read when it is
        asked for: a long listing starts at once. ``limit``: only the ``limit`` most
        recently changed tasks (only those are read).

        >>> done = [town.complete_task(town.backlog_add(f"Fix #{i}")) for i in range(3)]
        >>> for tasks in town.task_pages(state="completed", page=2): print(len(tasks))
        2
        1
        """
        checks.optional(checks.count, limit, "limit")
        checks.optional(checks.count, page, "page")
        return tasks.task_pages(self.store, state, agent, limit=limit, page=page)

    def task(self, task_id: str | Task) -> Task:
        """One task by UUID (or 4+ character prefix of it).

        >>> task = town.complete_task(town.backlog_add("Triage open issues"))
        >>> town.task(task.id[:4]).state
        <TaskState.COMPLETED: 'completed'>
        """
        return lookup.task(self.store, task_id)

    def current_task(self, agent: Any) -> Task | None:
        """The task an agent is working on now, or None."""
        return tasks.current_task(self.store, agent)

    def task_log(self, task_id: Any) -> list[str]:
        """What a task printed (the last 1,000 lines), also while it runs — pushed within
        about a second: a function agent's prints, a command's output, an AI CLI's
        readable stream (never raw JSON). The round log file keeps everything.

        >>> def fix(task):
        ...     print("reading 3 files")
        ...     print("done")
        >>> dev = town.spawn("dev", fn=fix)
        >>> task = town.wait(task=town.assign("dev", "Fix #12"), timeout=10)
        >>> town.task_log(task)[:2]
        ['reading 3 files', 'done']
        """
        return tasks.task_log(self.store, task_id)

    def follow(self, task_id: Any, timeout: float | None = None) -> Iterator[str]:
        """Yield each line of a task's log as it comes, until the task ends (every agent
        kind; from any process attached to the town). Raises WaitTimeout after ``timeout`` s.

        >>> def fix(task):
        ...     print("reading 3 files")
        ...     print("done")
        >>> dev = town.spawn("dev", fn=fix)
        >>> task = town.assign("dev", "Fix #12")
        >>> for line in town.follow(task, timeout=600):
        ...     print(line)
        reading 3 files
        done
        """
        return runs.follow(self.store, task_id, timeout)

    def counts(self) -> Counts:
        """Agents and tasks by state, backlog size and waiting messages, from one look.

        >>> task = town.complete_task(town.backlog_add("Triage open issues"))
        >>> town.counts().tasks["completed"]
        1
        """
        return status.counts(self.store)

    def backlog_size(self) -> int:
        """How many tasks wait in the backlog."""
        return status.backlog_size(self.store)

    def activity(self, agent: Any, n: int = 5) -> list[str]:
        """The agent's last activity lines, newest first."""
        return agents.activity(self.store, agent, checks.count(n, "n"))

    def log_tails(self, agent: Any, n: int = 8) -> dict[str, list[str]]:
        """The last ``n`` lines of the agent's worker log (``.tt/logs/<name>.log``) and of
        its newest round log (what its CLI printed), by file name; files of this machine.

        >>> dev = town.spawn("dev", cli="claude")
        >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=600).state
        <TaskState.COMPLETED: 'completed'>
        >>> sorted(town.log_tails("dev", 3))
        ['dev.log', 'dev_round_1.log']
        """
        return agents.log_tails(self.store, agent, checks.count(n, "n"))

    def events(self, count: int = 20, *, agent: Any = None, after: str | None = None) -> list[Event]:
        """Events oldest first, from the start or strictly after the stream id ``after``.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> task = town.assign("dev", "Fix #12")
        >>> [e.type for e in town.events()]
        ['agent_spawned', 'task_assigned']
        """
        checks.count(count, "count")
        stream = self.keys.agent_events(self.agent(agent).id) if agent is not None else self.keys.events
        return self.store.read_events(stream, count=count, after=after)

    def history(self, n: int = 30, *, agent: Any = None) -> list[Event]:
        """The last ``n`` town events, oldest first (``tt history``); ``agent`` filters.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> task = town.assign("dev", "Fix #12")
        >>> [e.message for e in town.history(2, agent="dev")]
        ['Agent dev spawned', 'Task assigned: Fix #12']
        """
        checks.count(n, "n")
        stream = self.keys.agent_events(self.agent(agent).id) if agent is not None else self.keys.events
        return self.store.recent_events(stream, count=n)

    # ------------------------------------------------------------------ agents
    def spawn(self, name: str, cli: str | None = None, *, fn: Callable[..., Any] | None = None,
              role: str | None = None, nickname: str | None = None, parent: Any = None,
              replace: bool = False, backlog: bool = False, max_rounds: int | None = None,
              idle_timeout: float | None = None, start: bool = True, worktree: bool = False,
              base: str | None = None, task_timeout: float | str | None = None,
              silence_timeout: float | str | None = None, shared: bool = False) -> Agent:
        """Register an agent and start its worker; returns it ``idle`` (``starting`` with
        ``start=False``). A dead agent of that name is reused; a live one is refused unless
        ``replace=True`` (which stops it first). One whose worker process on this host is
        gone (a function agent of a dead kernel) counts as dead: it is recovered first, so
        its unfinished work goes back to its inbox and runs again.

        * ``cli``: a preset (``claude``, ``codex``, ``aider``, … of ``[agent_clis]``; gets a
          prompt) or any command line (``"python my_bot.py"``; gets the task text on stdin),
          run by a detached worker process that outlives this one (log: ``.tt/logs/<name>.log``);
        * ``fn``: a Python function (or ``async def``) run in a daemon thread of this
          process: ``fn(task)`` or ``fn(task, ctx)``; its return value is the result.

        ``backlog=True``: when idle, the agent claims role-matching backlog tasks (by
        ``role``, else its name). ``max_rounds``: stop after that many messages (default: no
        limit). ``idle_timeout``: seconds idle before it stops (default the town's
        ``[agent] idle_timeout_secs``; 0 never). ``task_timeout``: the longest one attempt
        of a task (or a message) may run, unless the task says otherwise; ``silence_timeout``:
        a command run that prints nothing for that long is stopped (hung, not working).
        Both take seconds or ``90s``, ``20m``, ``1h``, and are kept across restarts.

        ``worktree=True`` (the town root must be in a git repository): the agent gets its own
        checkout ``.tt/worktrees/<name>`` on a new branch ``tt/<name>`` from ``base``
        (default: the current HEAD), so coding agents working at once never trample each
        other's files; its commands run there, a function agent gets it as ``ctx.workdir``.
        An agent that has a worktree keeps it: a restart or a later spawn of the name reuses
        it. A refusal (not a git repository, unknown base, branch taken) leaves nothing
        behind. See :meth:`worktrees`, :meth:`diff`, :meth:`merge`, :meth:`remove_worktree`.

        ``task_timeout`` / ``silence_timeout``: the agent's limits for one attempt (a task's
        own ``timeout`` wins), kept across restarts.

        ``shared=True`` (CLI agents): the worker runs in this host's shared worker process
        of the town, beside other agents' workers, instead of a process of its own (~36 MB
        and a Python start-up each); kept across restarts. See :meth:`spawn_many`.

        >>> town.spawn("reviewer", cli="codex", role="reviewer", task_timeout="30m").state
        <AgentState.IDLE: 'idle'>
        >>> town.spawn("summarizer", fn=lambda task: task.description[:40]).cli
        'fn:<lambda>'
        >>> town.spawn("dev", cli="claude", worktree=True, base="main").name
        'dev'
        >>> town.worktrees("dev")[0].branch
        'tt/dev'
        """
        from . import worker
        return worker.spawn(self.store, name, cli, fn=fn, town=self, role=role, nickname=nickname,
                            parent=parent, replace=replace, backlog=backlog, max_rounds=max_rounds,
                            idle_timeout=idle_timeout, start=start, worktree=worktree, base=base,
                            task_timeout=task_timeout, silence_timeout=silence_timeout,
                            shared=shared)

    def spawn_many(self, names: Iterable[str], cli: str | None = None, *, shared: bool = True,
                   role: str | None = None, parent: Any = None, replace: bool = False,
                   backlog: bool = False, max_rounds: int | None = None,
                   idle_timeout: float | None = None, worktree: bool = False,
                   task_timeout: float | str | None = None,
                   silence_timeout: float | str | None = None) -> list[Agent]:
        """Spawn many CLI agents of one command at once; returns them ``idle``, in the order
        named. By default (``shared=True``) their workers all run in this host's shared
        worker process: each agent keeps its own record, inbox, heartbeat, token and its
        command's own process group (kill, recover and the Rust ``tt`` see ordinary agents),
        and one agent's crash does not stop the others. ``shared=False`` starts a process per
        agent, all at once. Every name is checked before anything is written; the other
        options are :meth:`spawn`'s.

        >>> [(a.name, a.state.value) for a in town.spawn_many([f"dev{i}" for i in range(3)], cli="claude")]
        [('dev0', 'idle'), ('dev1', 'idle'), ('dev2', 'idle')]
        """
        from . import worker
        return worker.spawn_many(self.store, names, cli, shared=shared, role=role, parent=parent,
                                 replace=replace, backlog=backlog, max_rounds=max_rounds,
                                 idle_timeout=idle_timeout, worktree=worktree,
                                 task_timeout=task_timeout, silence_timeout=silence_timeout)

    def cli_name(self, cli: str | None = None, fn: Callable[..., Any] | None = None) -> str:
        """What :meth:`spawn` records as an agent's ``cli`` for these arguments: a preset
        name (command lines of a preset resolve to it), the command line, or ``fn:<name>``.

        >>> town.cli_name("claude --print --dangerously-skip-permissions"), town.cli_name(fn=len)
        ('claude', 'fn:len')
        """
        from . import worker
        return worker.cli_name(self.config, cli, fn)

    def kill(self, agent: Any) -> Agent:
        """Stop an agent now: state ``stopped`` plus the stop flag its worker obeys. Its
        worktree stays (a restart reuses it); unsaved work there is noted in its activity.

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> town.kill("dev").state
        <AgentState.STOPPED: 'stopped'>
        """
        from . import worker
        return worker.kill(self.store, agent)

    def stop_all(self) -> list[Agent]:
        """Kill every agent that is not already stopped (``tt stop``); Redis keeps running."""
        from . import worker
        return [worker.kill(self.store, a) for a in self.agents() if not a.state.is_terminal]

    def interrupt(self, agent: Any) -> Agent:
        """Pause an agent: it finishes the current task but starts nothing new until resumed."""
        return agents.interrupt(self.store, agent)

    def resume(self, agent: Any) -> Agent:
        """Un-pause an agent (``paused`` → ``idle``) and clear any stop request."""
        return agents.resume(self.store, agent)

    def close(self, agent: Any) -> Agent:
        """Let an agent finish its current work, then stop (``draining`` + stop flag)."""
        return agents.close(self.store, agent)

    def restart(self, agent: Any, *, start: bool = True, max_rounds: int | None = None) -> Agent:
        """Bring a stopped agent back with fresh round counters and a new worker (started
        with the options it had, ``max_rounds`` replacing its limit when given); returns it
        once the worker runs. Work it left unfinished is done again (at-least-once).
        ``start=False`` only resets the record (``starting``).

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> town.kill("dev").state
        <AgentState.STOPPED: 'stopped'>
        >>> town.restart("dev").state
        <AgentState.IDLE: 'idle'>
        """
        from . import worker
        return worker.restart(self.store, agent, start=start, max_rounds=max_rounds, town=self)

    def runs_here(self, agent: Any) -> bool:
        """True when this process runs the agent's function (a function agent spawned here).

        >>> summarizer = town.spawn("summarizer", fn=lambda task: task.description[:40])
        >>> town.runs_here("summarizer")
        True
        """
        from . import worker
        return worker.runs_here(self.store, self.agent(agent).id)

    def run_worker(self, agent: Any, *, max_rounds: int | None = None,
                   idle_timeout: float | None = None, backlog: bool | None = None,
                   task_timeout: float | str | None = None,
                   silence_timeout: float | str | None = None) -> int:
        """Run a CLI agent's worker in this process until it stops (``ttnb spawn
        --foreground``); options not given are the ones it was last started with. Returns
        the exit status.

        >>> dev = town.spawn("dev", cli="cat", start=False)
        >>> task = town.assign("dev", "Fix #12")
        >>> town.run_worker(dev, max_rounds=1)   # its log goes to the process's stdout
        0
        """
        from . import worker
        a = self.agent(agent)
        worker.check_options(None, None, max_rounds, idle_timeout)
        task_timeout = checks.optional(checks.duration, task_timeout, "task_timeout")
        silence_timeout = checks.optional(checks.duration, silence_timeout, "silence_timeout")
        last = worker.worker_options(self.store, a.id)
        return worker.run_in_foreground(
            self.store, a, max_rounds=max_rounds if max_rounds is not None else last["max_rounds"],
            idle_timeout=idle_timeout if idle_timeout is not None else last["idle_timeout"],
            backlog=backlog if backlog is not None else last["backlog"],
            task_timeout=task_timeout if task_timeout is not None else last["task_timeout"],
            silence_timeout=silence_timeout if silence_timeout is not None else last["silence_timeout"])

    def prune(self, all: bool = False) -> list[Agent]:
        """Delete stopped/error agents (every agent with ``all=True``) and their mailboxes.
        Their tasks stay; ``reclaim`` finds the ones left unfinished. Their worktrees go
        when clean and merged; one with unsaved work stays, listed by :meth:`worktrees`.

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> town.kill("dev").state
        <AgentState.STOPPED: 'stopped'>
        >>> [a.name for a in town.prune()]
        ['dev']
        """
        from . import worker
        return worker.prune(self.store, all)

    # ------------------------------------------------------------------ worktrees
    def worktrees(self, agent: Any = None, *, status: bool = True) -> list[AgentWorktree]:
        """The agents' git worktrees (or ``agent``'s: [] when it has none), oldest first:
        agent, path, branch, base, commits ``ahead``/``behind`` the base, uncommitted
        ``changed`` files, ``merged``, and ``unsaved`` (why removing it would lose work, or
        None). ``status=False`` reads only the records (no git call). A pruned agent's kept
        worktree is listed too.

        >>> alice = town.spawn("alice", fn=lambda task: "done", worktree=True)
        >>> bob = town.spawn("bob", fn=lambda task, ctx: (ctx.workdir / "notes.md").write_text("todo"),
        ...                  worktree=True)
        >>> town.wait(task=town.assign("bob", "Take notes"), timeout=10).state
        <TaskState.COMPLETED: 'completed'>
        >>> [(w.agent, w.ahead, w.changed) for w in town.worktrees()]
        [('alice', 0, ()), ('bob', 0, ('notes.md',))]
        """
        return agent_worktrees.listing(self.store, agent, status=status)

    def diff(self, agent: Any, stat: bool = False) -> Diff:
        """The agent's work against its base, from where its branch forked: its commits and
        its uncommitted changes (untracked files as added). A ``str`` that a notebook shows
        coloured; ``stat=True`` gives ``git diff --stat``.

        >>> dev = town.spawn("dev", fn=lambda task, ctx: (ctx.workdir / "notes.md").write_text("todo\\n"),
        ...                  worktree=True)
        >>> town.wait(task=town.assign("dev", "Take notes"), timeout=10).state
        <TaskState.COMPLETED: 'completed'>
        >>> print(town.diff("dev", stat=True))
         notes.md | 1 +
         1 file changed, 1 insertion(+)
        """
        return agent_worktrees.diff(self.store, agent, stat)

    def merge(self, agent: Any, into: str | None = None, squash: bool = False,
              message: str | None = None) -> str:
        """Merge the agent's branch (its commits, not uncommitted work) into ``into``
        (default: its base) in the main checkout, which must be on that branch and have no
        uncommitted changes to tracked files; returns the new commit. On a conflict the
        merge is aborted, the main checkout left exactly as it was, and
        :class:`MergeConflict` names the files. ``squash=True`` makes one commit.

        >>> dev = town.spawn("dev", cli="sh -c 'cat > notes.md; git add notes.md; git commit -qm notes'",
        ...                  worktree=True)
        >>> town.wait(task=town.assign("dev", "Add --verbose"), timeout=30).state
        <TaskState.COMPLETED: 'completed'>
        >>> town.merge("dev", squash=True, message="Add --verbose")   # the new commit on main
        '...'
        """
        return agent_worktrees.merge(self.store, agent, into, squash, message)

    def remove_worktree(self, agent: Any, force: bool = False) -> AgentWorktree:
        """Remove the agent's worktree, its branch and its record; returns what was removed.
        Refused while the agent is live (kill it first) and, unless ``force=True`` (which
        discards the work), while it has uncommitted changes or unmerged commits.

        >>> dev = town.spawn("dev", fn=lambda task: "done", worktree=True)
        >>> town.kill("dev").state
        <AgentState.STOPPED: 'stopped'>
        >>> town.remove_worktree("dev").branch
        'tt/dev'
        """
        return agent_worktrees.remove(self.store, agent, force)

    def reset(self, agents_only: bool = False) -> int:
        """Delete the whole town's data (or only agents and mailboxes); returns keys deleted.

        >>> task = town.backlog_add("Triage open issues")
        >>> deleted = town.reset()
        >>> town.tasks()
        []
        """
        return agents.reset(self.store, agents_only)

    # ------------------------------------------------------------------ waiting and recovery
    def wait(self, agent: Any = None, *, task: Any = None, all: bool = False,
             timeout: float | None = None, progress: Callable[[], None] | None = None) -> Any:
        """Block until something is done; driven by the event stream, not polling.

        * ``wait("dev")``: until the agent is idle with nothing queued (or stopped) → Agent;
        * ``wait(task=t)``: until the task is completed, failed or cancelled → Task;
        * ``wait(all=True)``: until every task of the town is → list of Tasks.

        Raises :class:`WaitTimeout` (saying what it is still doing) after ``timeout`` s.
        ``progress()``, if given, is called each time a look finds it not done yet (at
        least every 2 s), e.g. to redraw a progress bar.

        >>> dev = town.spawn("dev", fn=lambda task: f"Fixed: {task.description}")
        >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=600).result
        'Fixed: Fix #12'
        """
        if sum(map(bool, (agent is not None, task is not None, all))) != 1:
            raise ConfigError("Say what to wait for: wait('dev'), wait(task=t) or wait(all=True).")
        checks.optional(checks.seconds, timeout, "timeout")
        if task is not None:
            return waiting.wait_task(self.store, lookup.task_id(self.store, task), timeout, progress)
        if all:
            return waiting.wait_all(self.store, timeout, progress)
        return waiting.wait_agent(self.store, self.agent(agent).id, timeout, progress)

    def wait_until(self, condition: str = "done", *, timeout: float | None = None,
                   progress: Callable[[Counts], None] | None = None) -> Counts:
        """Block until the town is ``done`` (no task pending, assigned or running) or
        ``idle`` (also no agent working); returns the counts then. ``progress(counts)`` is
        called with each look that found it not yet so.

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> tasks = town.assign_many("dev", [f"Fix #{i}" for i in range(12)])
        >>> town.wait_until("done", timeout=60).tasks["completed"]
        12
        """
        checks.optional(checks.seconds, timeout, "timeout")
        return waiting.wait_condition(self.store, condition, timeout, progress)

    def recover(self, stale_after: float = 120.0, *, gone_only: bool = False) -> list[Agent]:
        """Mark agents whose worker died ``stopped`` and put their unfinished work back in
        their inbox (``tt recover``, without its false positives on long tasks: live workers
        heartbeat throughout): at once when it was a process of this host that is gone (a
        dead kernel's function agents, a killed worker), else after ``stale_after`` s
        without a heartbeat. ``gone_only=True``: only the first kind. Returns them.
        Also passes on tasks a program knowing nothing of dependencies finished
        (:meth:`sweep`).

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> [a.name for a in town.recover()]   # every worker is alive
        []
        """
        if gone_only:
            return recovery.recover_orphans(self.store, self.agents(), runs_here=self._runs_here)
        checks.seconds(stale_after, "stale_after", positive=True)
        status.reconcile(self.store)
        workflows.sweep(self.store)  # tasks another program finished: their waiting tasks go on
        recovered = recovery.recover(self.store, stale_after, runs_here=self._runs_here)
        archive.run_policy(self.store)  # [tinytown_nb] archive_after, at most every 10 minutes
        return recovered

    def _runs_here(self, aid: str) -> bool:
        from . import worker
        return worker.runs_here(self.store, aid)

    def reconcile(self, *, full: bool = False, unless_within: float | None = None) -> int | None:
        """File in the state indexes (which the counts and filtered task lists read) what a
        program keeping no index wrote — the Rust ``tt``: its agents, our open tasks it
        finished, every task when their number differs (``full=True``: everything, and
        entries whose record is gone). ``connect`` and ``recover`` run it; returns the
        records filed. ``unless_within=S``: skipped (None) when the town was reconciled
        (by any process) in the last ``S`` seconds — what the dashboard's periodic look
        uses.

        >>> dev = town.spawn("dev", cli="claude", start=False)
        >>> task = town.backlog_add("Triage open issues")
        >>> town.reconcile(full=True)   # the agent and the task
        2
        """
        if unless_within is not None and not full:
            checks.seconds(unless_within, "unless_within")
            return status.reconcile_if_due(self.store, unless_within)
        return status.reconcile(self.store, full=full)

    def recent_tasks(self, limit: int = 15, state: str | TaskState | None = None,
                     agent: Any = None) -> list[Task]:
        """The ``limit`` most recently changed tasks, newest first (optionally one state
        and/or assignee); reads only those records.

        >>> task = town.fail_task(town.backlog_add("Deploy"), "no credentials")
        >>> [t.description for t in town.recent_tasks(5, state="failed")]
        ['Deploy']
        """
        return tasks.recent(self.store, checks.count(limit, "limit"), state, agent)

    # ------------------------------------------------------------------ retention
    def archive(self, older_than: Any = archive.DEFAULT_AGE,
                states: Any = archive.DEFAULT_STATES) -> int:
        """Move finished tasks whose last change is older than ``older_than`` (seconds, a
        ``timedelta`` or text like ``"7d"``, ``"12h"``; default 7 days) out of Redis into
        the town's archive (``.tt/archive/tasks-YYYY-MM.jsonl``), with their output logs;
        returns how many moved. Counts and indexes stay right; a task that changes
        meanwhile stays. ``[tinytown_nb] archive_after = "7d"`` in ``tinytown.toml`` does
        it automatically (from :meth:`recover` and waits, at most every 10 minutes).

        >>> task = town.complete_task(town.backlog_add("Triage open issues"))
        >>> town.archive(older_than="30d", states=["completed", "cancelled", "failed"])
        0
        >>> town.archive(older_than=0)   # every finished task, however recent
        1
        """
        return archive.archive(self.store, older_than, states)

    def archived(self, state: str | TaskState | None = None) -> list[Task]:
        """The archived tasks (oldest first), optionally only one state.

        >>> task = town.complete_task(town.backlog_add("Triage open issues"))
        >>> town.archive(older_than=0)
        1
        >>> len(town.archived("completed"))
        1
        """
        return archive.archived(self.store, state)

    def archived_hashes(self) -> list[dict[str, Any]]:
        """The archived task hashes as stored, with ``archived_at``, in archive order (for
        bulk readers such as ``frames.archive_frame``).

        >>> task = town.complete_task(town.backlog_add("Triage open issues"))
        >>> town.archive(older_than=0)
        1
        >>> town.archived_hashes()[0]["archived_at"]
        '20...T...+00:00'
        """
        return archive.archived_hashes(self.store)

    def reclaim(self, *, from_agent: Any = None, to: Any = None, to_backlog: bool = False,
                orphan_tasks: bool = False, cancel: bool = False,
                delete: bool = False) -> list[recovery.Reclaimed]:
        """Take back what dead (stopped) agents hold (``tt reclaim``).

        Default: their urgent, inbox and processing messages are *listed* (nothing removed);
        ``to="agent"`` moves them there (tasks reassigned), ``to_backlog=True`` returns their
        tasks to the backlog as ``pending`` with no assignee. ``orphan_tasks=True`` works on
        unfinished tasks whose assignee is dead or gone instead, and also takes
        ``cancel=True`` or ``delete=True``.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> task = town.assign("dev", "Fix #12")
        >>> town.kill("dev").state
        <AgentState.STOPPED: 'stopped'>
        >>> [(r.source, r.action) for r in town.reclaim(from_agent="dev", to_backlog=True)]
        [('inbox', 'backlogged')]
        >>> town.task(task).state
        <TaskState.PENDING: 'pending'>
        """
        return recovery.reclaim(self.store, from_agent=from_agent, to=to, to_backlog=to_backlog,
                                orphan_tasks=orphan_tasks, cancel=cancel, delete=delete)

    def dead_letters(self) -> list[DeadLetter]:
        """Messages (and tasks) workers set aside because the town cannot use them, with
        the reason; oldest first.

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> town.redis.rpush(town.keys.inbox(dev.id), "not json")   # what no worker can use
        1
        >>> town.wait("dev", timeout=10).state                      # set aside; dev goes on
        <AgentState.IDLE: 'idle'>
        >>> [d.reason for d in town.dead_letters()]
        ["not a tinytown message (message is not valid JSON: ...): 'not json'"]
        """
        return deadletters.dead_letters(self.store)

    def requeue_dead_letter(self, dead_letter_id: Any) -> DeadLetter:
        """Put a dead letter's message back in its agent's inbox (and re-open the task it
        quarantined) — after fixing what made it unusable.

        >>> dev = town.spawn("dev", fn=lambda task: "done")
        >>> town.redis.rpush(town.keys.inbox(dev.id), "not json")
        1
        >>> town.wait("dev", timeout=10).state
        <AgentState.IDLE: 'idle'>
        >>> dead = town.dead_letters()[0]
        >>> town.requeue_dead_letter(dead.id).id == dead.id   # (once what was wrong is fixed)
        True
        """
        return deadletters.requeue(self.store, dead_letter_id)

    def drop_dead_letter(self, dead_letter_id: Any) -> DeadLetter:
        """Delete a dead letter for good; returns it."""
        return deadletters.drop(self.store, dead_letter_id)

    # ------------------------------------------------------------------ tasks
    def assign(self, agent: Any, description: str, *, tags: Iterable[str] = (),
               after: Any = None, timeout: float | str | None = None, retries: int | None = None,
               retry_delay: float | str | None = None) -> Task:
        """Create a task for an agent and queue its ``task_assign`` message, atomically.
        Costs one round trip once the agent's name has been seen.

        ``after``: tasks (or ids, 4+ character prefixes) it waits for. It is created
        ``pending`` and delivered (``assigned`` + its message) in the step that completes
        the last of them — at once when they are all completed already; cancelled when one
        fails (see :mod:`.workflows`). Its worker gets their results (``task.inputs``).

        ``timeout`` bounds one attempt (seconds, or ``90s``, ``20m``, ``1h``; default the
        agent's ``task_timeout``): the run is stopped and the task fails with ``timed out
        after S s (attempt N)``. ``retries=N`` runs a failed attempt (error, exception,
        timeout) again on the same agent, at most N more times, ``retry_delay`` seconds
        later — never after a cancel or a report through ``ttnb task complete``.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> reviewer = town.spawn("reviewer", cli="codex", start=False)
        >>> flag = town.assign("dev", "Add a --verbose flag", tags=["cli"], timeout="20m", retries=1)
        >>> town.assign("reviewer", "Review the flag", after=[flag]).state
        <TaskState.PENDING: 'pending'>
        """
        opts = RunOptions.validated(timeout=timeout, retries=retries, retry_delay=retry_delay)
        return workflows.assign(self.store, agent, [description], after=after, tags=tags, opts=opts)[0]

    def assign_many(self, agent: Any, descriptions: Iterable[str], *,
                    tags: Iterable[str] = (), after: Any = None, timeout: float | str | None = None,
                    retries: int | None = None, retry_delay: float | str | None = None) -> list[Task]:
        """Assign many tasks to one agent in one pipelined round trip (options as
        :meth:`assign`, for each; each waits for all of ``after``).

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> tasks = town.assign_many("dev", [f"Fix bug #{i}" for i in range(100)])
        >>> len(town.inbox("dev"))
        100
        """
        opts = RunOptions.validated(timeout=timeout, retries=retries, retry_delay=retry_delay)
        return workflows.assign(self.store, agent, descriptions, after=after, tags=tags, opts=opts)

    def depend(self, task: Any, after: Any) -> Deps:
        """Make a task that still waits (or an open gate) wait for more tasks too; refused
        (nothing changed) when it was released already or when that would make a cycle.

        >>> tests, docs = town.backlog_add("Write the tests"), town.backlog_add("Write the docs")
        >>> merge = town.backlog_add("Merge the branch", after=[tests])
        >>> town.depend(merge, after=[docs]).waiting_on == (tests.id, docs.id)
        True
        """
        return workflows.depend(self.store, task, after)

    def deps(self, task: Any = None) -> list[Deps]:
        """What tasks wait (or waited) for: every task made with ``after=`` and every gate,
        oldest first — or only ``task``'s (an empty list when it waits for nothing).

        >>> tests = town.backlog_add("Write the tests")
        >>> merge = town.backlog_add("Merge the branch", after=[tests])
        >>> [d.waiting_on == (tests.id,) for d in town.deps()]
        [True]
        """
        return workflows.deps(self.store, task)

    def waiting_on(self, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """What each of these tasks (full ids) still waits for, for those that wait:
        ``{task id: ids of its dependencies not completed yet}`` (one read; what the
        dashboard shows in its task rows).

        >>> draft = town.backlog_add("Draft the notes")
        >>> review = town.backlog_add("Review the notes", after=[draft])
        >>> town.waiting_on([review.id, draft.id])   # {review: (draft,)}
        {'...': ('...',)}
        """
        return workflows.waiting_on(self.store, ids)

    def sweep(self) -> int:
        """Release (or cancel) the tasks waiting for tasks that a program knowing nothing of
        dependencies (the Rust ``tt``) finished; returns how many it passed on. ``recover``,
        the waits and idle workers run it on their own.

        >>> town.sweep()   # nothing was finished behind our back
        0
        """
        return workflows.sweep(self.store)

    # ------------------------------------------------------------------ gates
    def gate(self, description: str, *, after: Any = None, tags: Iterable[str] = ()) -> Task:
        """A gate: a task no agent runs. It waits for ``after``, then for a person to
        :meth:`approve` or :meth:`reject` it; tasks made with ``after=[gate]`` go on
        only once it is approved.

        >>> design = town.backlog_add("Design the API")
        >>> ok = town.gate("Approve the design", after=[design])
        >>> [g.ready for g in town.gates()]   # it waits for the design first
        [False]
        """
        return workflows.gate(self.store, description, after=after, tags=tags)

    def approve(self, gate: Any, note: str | None = None) -> Task:
        """Approve a gate (``completed``, result: the note or ``Approved``): the tasks waiting
        for it go on. Refused while it still waits for its own dependencies.

        >>> ok = town.gate("Approve the design")
        >>> town.approve(ok, "Looks good").state
        <TaskState.COMPLETED: 'completed'>
        """
        return workflows.approve(self.store, gate, note)

    def reject(self, gate: Any, note: str) -> Task:
        """Reject a gate with a note: it fails, the tasks waiting for it are cancelled, and
        the note goes as an informational message to the agents whose work it waited for.

        >>> ok = town.gate("Approve the design")
        >>> town.reject(ok, "Split the module first").state
        <TaskState.FAILED: 'failed'>
        """
        return workflows.reject(self.store, gate, note)

    def gates(self, open: bool = True) -> list[Gate]:
        """Gates, oldest first: those waiting for a decision (``open=True``; ``g.ready`` when
        their dependencies are done) or every gate.

        >>> ok = town.gate("Approve the design")
        >>> [g.short_id for g in town.gates() if g.ready] == [ok.short_id]
        True
        """
        return workflows.gates(self.store, open)

    def complete_task(self, task_id: Any, result: str | None = None) -> Task:
        """Mark a task completed with its result (``tt task complete``).

        >>> task = town.backlog_add("Merge the branch")
        >>> town.complete_task(task.id, "Merged in #12").state
        <TaskState.COMPLETED: 'completed'>
        """
        return tasks.complete(self.store, task_id, result)

    def fail_task(self, task_id: Any, error: str) -> Task:
        """Mark a task failed; the error text becomes its result (as upstream stores it)."""
        return tasks.fail(self.store, task_id, error)

    def cancel_task(self, task_id: Any, reason: str | None = None) -> Task:
        """Cancel an unfinished task (and take it out of the backlog if it is there)."""
        return tasks.cancel(self.store, task_id, reason)

    def retry_task(self, task_id: Any) -> Task:
        """Run a failed or cancelled task again: back to ``assigned`` for the agent it was
        assigned to, with a new ``task_assign`` message (same task id), atomically.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> task = town.fail_task(town.assign("dev", "Fix #12"), "tests failed")
        >>> town.retry_task(task.id[:4]).state
        <TaskState.ASSIGNED: 'assigned'>
        """
        return tasks.retry(self.store, task_id)

    # ------------------------------------------------------------------ backlog
    def backlog_add(self, description: str, *, tags: Iterable[str] = (), after: Any = None,
                    timeout: float | str | None = None, retries: int | None = None,
                    retry_delay: float | str | None = None) -> Task:
        """Put a new unassigned task on the backlog (FIFO); run options as :meth:`assign`.
        With ``after``, it joins the end of the backlog once those tasks are all completed
        (so no agent claims it early).

        >>> town.backlog_add("Triage open issues", tags=["ops"], timeout="10m").state
        <TaskState.PENDING: 'pending'>
        """
        opts = RunOptions.validated(timeout=timeout, retries=retries, retry_delay=retry_delay)
        return workflows.backlog_add(self.store, description, after=after, tags=tags, opts=opts)

    def backlog(self) -> list[Task]:
        """Backlog tasks in queue order."""
        return tasks.backlog(self.store)

    def backlog_claim(self, task_id: Any, agent: Any) -> Task:
        """Take one task off the backlog and assign it (the agent is resolved first, so a
        typo never loses the task — upstream bug §11.11)."""
        return tasks.backlog_claim(self.store, task_id, agent)

    def backlog_assign_all(self, agent: Any) -> list[Task]:
        """Assign every backlog task, in order, to one agent; one round trip for all."""
        return tasks.backlog_assign_all(self.store, agent)

    def backlog_remove(self, task_id: Any) -> Task:
        """Remove a task from the backlog and delete it; returns the deleted record."""
        return tasks.backlog_remove(self.store, task_id)

    # ------------------------------------------------------------------ usage and cost
    def record_usage(self, task_id: Any, input_tokens: int = 0, output_tokens: int = 0,
                     cost_usd: float | None = None, model: str | None = None, *,
                     cache_creation_tokens: int = 0, cache_read_tokens: int = 0,
                     turns: int | None = None) -> Usage:
        """Add a usage report to a task (``ttnb task usage``; reports add up); returns the
        task's sums. Negative tokens, a NaN or negative cost, or an unknown task are
        refused with one line, and nothing is written.

        >>> task = town.backlog_add("Triage open issues")
        >>> town.record_usage(task, input_tokens=1200, output_tokens=300, cost_usd=0.02).cost_usd
        0.02
        """
        report = Usage.validated(input_tokens, output_tokens, cache_creation_tokens,
                                 cache_read_tokens, cost_usd, turns, model)
        return costs.record(self.store, task_id, report)

    def usage(self, by: str = "agent") -> list[costs.UsageRow]:
        """Usage summed per ``agent``, ``tag`` or ``task``, most expensive first
        (``frames.usage_frame`` makes a DataFrame of it).

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> usage = town.record_usage(town.assign("dev", "Fix #12"), cost_usd=0.42)
        >>> [(r.label, r.usage.cost_usd) for r in town.usage("agent")]
        [('dev', 0.42)]
        """
        return costs.rows(self.store, by)

    def usage_totals(self) -> Usage:
        """The town's recorded tokens and cost (one read; zeros when none).

        >>> usage = town.record_usage(town.backlog_add("Fix #12"), cost_usd=0.42)
        >>> usage = town.record_usage(town.backlog_add("Fix #13"), cost_usd=0.07)
        >>> town.usage_totals().cost_usd
        0.49
        """
        return costs.totals(self.store)

    def agent_usage(self, agent_ids: Iterable[str] | None = None) -> dict[str, Usage]:
        """Recorded tokens and cost per agent id (every agent by default; agents that
        reported nothing are left out), one round trip.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> usage = town.record_usage(town.assign("dev", "Fix #12"), cost_usd=0.42)
        >>> town.agent_usage()[town.agent("dev").id].cost_usd
        0.42
        """
        ids = list(agent_ids) if agent_ids is not None else [a.id for a in self.agents()]
        return costs.agent_totals(self.store, ids)

    def set_budget(self, usd: float | str | None) -> costs.Budget:
        """Set the town's cost budget in US dollars (``None`` clears it). When the recorded
        cost reaches it, every AI agent is paused after its current run and a
        ``budget_exceeded`` event is recorded; raise the budget and ``resume`` them to go on.

        >>> town.set_budget(usd=5).usd
        5.0
        """
        return costs.set_budget(self.store, usd)

    def budget(self) -> costs.Budget:
        """The town's budget (``usd``: None without one), its recorded cost and whether it
        was reached.

        >>> town.budget().exceeded
        False
        """
        return costs.budget(self.store)

    # ------------------------------------------------------------------ messages
    def send(self, to: Any, text: str, *, kind: str = "task", urgent: bool = False,
             sender: Any = None) -> Message:
        """Send a message: ``kind`` is ``task``, ``query``, ``info`` or ``ack``. Urgent
        messages go to the agent's urgent list, read before its inbox.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> town.send("dev", "Please also update the docs", kind="info").type
        'informational'
        """
        return mail.send(self.store, to, text, kind=kind, urgent=urgent, sender=sender)

    def inbox(self, agent: Any) -> list[Message]:
        """Messages waiting for an agent, in the order it will read them (urgent first,
        oldest first), without taking them.

        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> msg = town.send("dev", "Please also update the docs", kind="info")
        >>> [m.text for m in town.inbox("dev")]
        ['Please also update the docs']
        """
        return mail.inbox(self.store, agent)

    def inboxes(self, agent_ids: Iterable[str]) -> list[tuple[list[Message], list[Message]]]:
        """``(urgent, regular)`` waiting messages of many agent ids, each in reading order,
        in one pipelined read.

        >>> from tinytown_nb import SUPERVISOR_ID
        >>> dev = town.spawn("dev", cli="claude", start=False)   # registered, no worker yet
        >>> tasks = town.assign_many("dev", ["Fix #1", "Fix #2"])
        >>> [(len(u), len(r)) for u, r in town.inboxes([dev.id, SUPERVISOR_ID])]
        [(0, 2), (0, 0)]
        """
        return mail.inboxes(self.store, agent_ids)

    def inbox_counts(self, agent_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Waiting messages per agent id (urgent + regular); default every agent + the supervisor."""
        return mail.inbox_counts(self.store, list(agent_ids) if agent_ids is not None else None)


def _ignore_runtime_dir(root: Path) -> None:
    """Add ``.tt`` to the town's ``.gitignore`` as ``tt init`` does (spec §6.1)."""
    gitignore = root / ".gitignore"
    text = gitignore.read_text() if gitignore.exists() else ""
    if not any(line.strip() in (".tt", ".tt/") for line in text.splitlines()):
        gitignore.write_text(text + "\n# Tinytown runtime artifacts\n.tt\n")
