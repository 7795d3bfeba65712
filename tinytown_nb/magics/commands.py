"""The ``TinytownMagics`` class: the ``%tt_*`` magics, each a thin face over one
:class:`~tinytown_nb.core.town.Town` call.

Each magic parses its line (:mod:`.arguments`), calls the core and returns a DataFrame, a
record or the dashboard; ``-o NAME`` also stores the result in a notebook variable.
Settings are traitlets: ``%config TinytownMagics.wait_timeout = 60``.

Example::

    %tt_init demo-town
    %tt_spawn summarizer --fn summarize
    %%tt_assign summarizer --wait
    Summarize the README in three bullet points.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path
from typing import Any, Callable

import redis
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import magic_arguments
from traitlets import Float, Int, Unicode

from .. import frames
from ..core import Agent, AgentExists, ConfigError, Message, Task, Town, parse_duration
from ..core.errors import TinytownError, from_redis
from ..core.wording import counted
from .arguments import arg, common, parse_line
from .display import NAME_OF, wait_with_progress

__all__ = ["TinytownMagics"]

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)


def _duration(text: str) -> float:
    """An argument type: ``90``, ``90s``, ``20m``, ``1h`` → seconds (a bad one: UsageError)."""
    try:
        return parse_duration(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration > 0 (90, 90s, 20m, 1h)") from None


def _run_options(func: Callable) -> Callable:
    """``--timeout``, ``--retries`` and ``--retry-delay`` of the magics that create a task."""
    func = arg("--retry-delay", type=_duration, metavar="D",
               help="wait this long before a re-run (90, 90s, 20m)")(func)
    func = arg("--retries", type=int, metavar="N",
               help="run a failed attempt again, at most N more times (0-100)")(func)
    return arg("--timeout", type=_duration, metavar="D",
               help="longest one attempt may run (90, 90s, 20m, 1h); then it is stopped")(func)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _one_line_redis_errors(cls: type) -> type:
    """Make every magic raise the core's one-line error for a redis-py error that reached
    it untranslated (the Town translates its own), and a ConfigError naming the path for a
    file-system error, so a notebook shows one line and a headless run still fails."""
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)  # keeps .parser, .option_table and the usage docstring
        def magic(self: "TinytownMagics", *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except redis.RedisError as exc:
                if isinstance(exc, TinytownError):
                    raise
                url = self.town.url if self.town is not None else "the town's Redis"
                raise from_redis(exc, url) from None
            except OSError as exc:  # a path that cannot be made or read: say which, in one line
                if exc.filename is None:
                    raise
                raise ConfigError(f"{exc.strerror or type(exc).__name__}: {exc.filename}. "
                                  "Check the path and its permissions.") from None
        return magic

    for name in {meth for table in cls.magics.values() for meth in table.values()}:
        setattr(cls, name, wrap(getattr(cls, name)))
    return cls


@_one_line_redis_errors
@magics_class
class TinytownMagics(Magics):
    """The ``%tt_*`` magics; settings are ``%config TinytownMagics.<name> = value``."""

    default_dir = Unicode(".", help="Directory %tt_init uses when given none.").tag(config=True)
    wait_timeout = Float(300.0, help="Seconds %tt_wait, %tt_watch and %%tt_assign --wait wait "
                                     "unless given --timeout.").tag(config=True)
    feedback = Int(1, help="0: silent; 1: print a line for actions that return nothing "
                           "(e.g. %tt_reset).").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell, **kwargs)
        if shell is not None and self not in shell.configurables:  # IPython < 9 does not add it
            shell.configurables.append(self)
        self.town: Town | None = None            # the default town, set by %tt_init
        self.towns: dict[Path, Town] = {}        # every town opened, by root
        self.views: list[Any] = []               # TownViews made by %tt_view
        self.agent_names: list[str] = []         # completion caches (no Redis call in the completer)
        self.task_ids: list[str] = []            # short ids of the most recent tasks

    # ---- plumbing
    def _town(self, args: Any) -> Town:
        if getattr(args, "town", None):
            root = _resolve(args.town)
            if root not in self.towns:
                self.towns[root] = Town.connect(root)
            return self.towns[root]
        if self.town is None:
            raise ConfigError("No town yet in this kernel. Run %tt_init [DIR] first, "
                              "or pass --town DIR.")
        return self.town

    def _done(self, args: Any, town: Town, result: Any) -> Any:
        if getattr(args, "out", None):
            self.shell.user_ns[args.out] = result
        if town is self.town:
            self.remember_names()
        return result

    def remember_names(self) -> list[str]:
        """Refresh the cached agent names and recent task ids used by tab completion
        (after each magic)."""
        if self.town is not None:
            try:
                agents = self.town.agents()
                self.agent_names = sorted(a.name for a in agents)
                NAME_OF.update((a.id, a.name) for a in agents)
                self.task_ids = [t.short_id for t in self.town.recent_tasks(30)]
            except Exception:  # completion is a nicety; never fail a magic over it
                pass
        return self.agent_names

    def _say(self, text: str) -> None:
        if self.feedback > 0:
            print(text)

    @staticmethod
    def _warn_if_idle_for_good(town: Town, task: Task) -> None:
        """Say so (on stderr) when the task went to a paused or stopped agent."""
        from ..widgets import assign_warning

        note = assign_warning(town.agent(task.assigned_to)) if task.assigned_to else ""
        if note:
            print(note, file=sys.stderr)

    def _user_value(self, name: str, what: str) -> Any:
        head, *attrs = name.split(".")
        if head not in self.shell.user_ns:
            raise UsageError(f"{what} {name!r}: no such name in the notebook; define it first.")
        value = self.shell.user_ns[head]
        for attr in attrs:
            try:
                value = getattr(value, attr)
            except AttributeError:
                raise UsageError(f"{what} {name!r}: {head} has no attribute {attr!r}.") from None
        return value

    def _render(self, text: str) -> str:
        """Fill ``{{ expr }}`` from the notebook's variables; single braces stay as they are."""
        def fill(m: re.Match) -> str:
            expr = m.group(1).strip()
            if not expr:
                raise UsageError("Empty {{ }} in the task text: put a variable name inside.")
            try:
                return str(eval(expr, self.shell.user_ns))  # the user's own notebook expression
            except NameError as exc:
                raise UsageError(f"--render: {{{{{expr}}}}} uses a name the notebook does not "
                                 f"define ({exc}).") from None
            except Exception as exc:
                raise UsageError(f"--render: {{{{{expr}}}}} failed: {type(exc).__name__}: {exc}") from None
        return _TEMPLATE.sub(fill, text)

    def close(self) -> None:
        """Stop every view and watcher this magic set started and close its connections."""
        from .. import widgets

        for view in self.views:
            view.close()
        self.views.clear()
        widgets.close_all()
        for town in self.towns.values():
            town.disconnect()
        self.towns.clear()
        self.town = None

    # ---- town
    @line_magic
    @magic_arguments()
    @arg("dir", nargs="?", help="town directory (default: TinytownMagics.default_dir)")
    @arg("--name", help="town name (default: from the directory or git branch)")
    @arg("--url", help="Redis URL to use instead of a private managed server")
    @common
    def tt_init(self, line: str = "") -> Town:
        """Create a town (or connect to the one in DIR) and make it this kernel's default.

        Re-running is safe: an existing town is connected to, not re-created.
        ``--town DIR`` is the same as DIR. The town displays as a summary (directory,
        Redis, agents and tasks by state). Example: ``%tt_init demo-town --name demo``.
        """
        args = parse_line(self.tt_init, line)
        if args.dir and args.town and _resolve(args.dir) != _resolve(args.town):
            raise UsageError(f"Give the town directory once: {args.dir!r} or --town {args.town!r}.")
        root = _resolve(args.dir or args.town or self.default_dir)
        known = self.towns.get(root)
        if known is not None and args.url is None and args.name in (None, known.name):
            town = known
        else:
            options = {"url": args.url} if args.url else {}
            town = Town.init(root, name=args.name, **options)
            if known is not None:
                known.disconnect()
            self.towns[root] = town
        self.town = town
        gone = town.recover(gone_only=True)  # e.g. function agents of a kernel that died
        if gone:
            print(f"Recovered {', '.join(a.name for a in gone)}: its worker (a kernel or process "
                  "that is gone) stopped; unfinished work is back in its inbox. Re-run its "
                  "%tt_spawn (or %tt_restart) to start it again.")
        return self._done(args, town, town)

    # ---- agents
    @line_magic
    @magic_arguments()
    @arg("names", nargs="+", metavar="name",
         help="agent name (letters, digits, '-', '_', '.'); several: spawn them all at once")
    @arg("--cli", help="CLI preset (claude, codex, aider, ...) or command line")
    @arg("--fn", metavar="FUNC", help="a function defined in the notebook to run each task")
    @arg("--role", help="role id (reviewer, researcher, ...)")
    @arg("--nickname", help="display nickname")
    @arg("--parent", metavar="AGENT", help="parent agent")
    @arg("--backlog", action="store_true", help="let the agent claim backlog tasks when idle")
    @arg("--replace", action="store_true", help="stop a live agent of that name and replace it")
    @arg("--max-rounds", type=int, metavar="N", help="stop after N rounds")
    @arg("--idle-timeout", type=float, metavar="S", help="stop after S idle seconds")
    @arg("--task-timeout", type=_duration, metavar="D",
         help="longest one attempt of a task may run (90, 90s, 20m, 1h) unless the task says")
    @arg("--silence-timeout", type=_duration, metavar="D",
         help="stop a run that prints nothing for this long (hung, not working)")
    @arg("--no-start", action="store_true",
              help="only register the agent (state starting); start no worker")
    @arg("--worktree", action="store_true",
         help="its own git worktree .tt/worktrees/NAME on branch tt/NAME (town root in a git repo)")
    @arg("--base", metavar="REV", help="with --worktree: the branch or commit it starts from (default HEAD)")
    @arg("--shared", action=argparse.BooleanOptionalAction, default=None,
         help="run the worker in the town's shared worker process (default: yes with several "
              "names, no with one)")
    @common
    def tt_spawn(self, line: str = "") -> Any:
        """Spawn an agent backed by a CLI worker process or a notebook function.

        A dead agent of that name is reused. Re-running the cell is fine: a live agent
        with the same --cli is returned as it is, and a function agent this kernel runs
        is restarted with the (perhaps edited) function; any other live agent of that name
        is refused unless --replace.
        Several names spawn CLI agents all at once, in the town's shared worker process
        (``--no-shared``: a process each) and return them as a DataFrame.
        Examples: ``%tt_spawn dev --cli claude``, ``%tt_spawn summarizer --fn summarize``,
        ``%tt_spawn dev --cli claude --worktree --base main`` (see %tt_diff, %tt_merge),
        ``%tt_spawn dev1 dev2 dev3 --cli claude``.
        """
        args = parse_line(self.tt_spawn, line)
        if args.cli and args.fn:
            raise UsageError("Give --cli or --fn, not both.")
        if len(args.names) > 1:
            return self._spawn_many(args)
        args.name = args.names[0]
        town = self._town(args)
        kwargs: dict[str, Any] = {"role": args.role, "nickname": args.nickname,
                                  "parent": args.parent, "replace": args.replace}
        if args.fn:
            fn = self._user_value(args.fn, "--fn")
            if not callable(fn):
                raise UsageError(f"--fn {args.fn!r} is a {type(fn).__name__}, not a function.")
            kwargs["fn"] = fn
        for key in ("backlog", "max_rounds", "idle_timeout", "worktree", "base", "task_timeout",
                    "silence_timeout", "shared"):
            if getattr(args, key) not in (None, False):
                kwargs[key] = getattr(args, key)
        if args.no_start:
            kwargs["start"] = False
        try:
            agent = town.spawn(args.name, args.cli, **kwargs)
        except AgentExists as exc:
            agent = self._rerun_spawn(town, args, kwargs, exc)
        return self._done(args, town, agent)

    def _spawn_many(self, args: Any) -> Any:
        """``%tt_spawn a b c --cli X``: :meth:`Town.spawn_many`; run again, the same live
        agents are returned as they are."""
        for flag in ("fn", "nickname", "base", "no_start"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')} is for one agent; give one name.")
        town = self._town(args)
        try:
            made = town.spawn_many(args.names, args.cli, shared=args.shared is not False,
                                   role=args.role, parent=args.parent, replace=args.replace,
                                   backlog=args.backlog, max_rounds=args.max_rounds,
                                   idle_timeout=args.idle_timeout, worktree=args.worktree,
                                   task_timeout=args.task_timeout,
                                   silence_timeout=args.silence_timeout)
        except AgentExists:  # the same cell run again: the same live agents, as they are
            made = [town.agent(n) for n in args.names]
            want = town.cli_name(args.cli)
            if any(a.state.is_terminal or a.cli != want for a in made):
                raise
        return self._done(args, town, frames.agents_to_frame(made))

    @staticmethod
    def _rerun_spawn(town: Town, args: Any, kwargs: dict[str, Any], exc: AgentExists) -> Agent:
        """A spawn cell run again (Run All twice, an edited function): the same live agent,
        or its function restarted here; anything else re-raises AgentExists."""
        live = town.agent(args.name)
        parent = town.agent(args.parent).id if args.parent else None
        asked = (town.cli_name(args.cli, kwargs.get("fn")), args.role, args.nickname, parent)
        if asked != (live.cli, live.role_id, live.nickname if args.nickname else None,
                     live.parent_agent_id):
            raise exc  # not the same cell run again: other options
        if "fn" not in kwargs:
            return live
        if town.runs_here(live.id):  # ours: restart it with the (perhaps edited) function
            return town.spawn(args.name, **{**kwargs, "replace": True})
        raise exc

    def _agent_action(self, func: Callable, line: str, action: str) -> Agent:
        args = parse_line(func, line)
        town = self._town(args)
        return self._done(args, town, getattr(town, action)(args.agent))

    @line_magic
    @magic_arguments()
    @arg("agent", nargs="?", help="agent name, nickname or short id")
    @arg("--all", action="store_true", help="kill every agent that is not stopped")
    @common
    def tt_kill(self, line: str = "") -> Any:
        """Stop an agent now (state ``stopped`` and a stop flag its worker obeys).

        Example: ``%tt_kill dev``; ``%tt_kill --all`` stops every agent (``tt stop``).
        """
        args = parse_line(self.tt_kill, line)
        if bool(args.agent) == bool(args.all):
            raise UsageError("Give one AGENT or --all.")
        town = self._town(args)
        if args.all:
            stopped = town.stop_all()
            self._kept_worktrees(town, [a.name for a in stopped])
            return self._done(args, town, frames.agents_to_frame(stopped))
        agent = town.kill(args.agent)
        self._kept_worktrees(town, [agent.name])
        return self._done(args, town, agent)

    @staticmethod
    def _kept_worktrees(town: Town, names: list[str]) -> None:
        """Say which of these agents' worktrees were kept with unsaved work (kill, prune)."""
        theirs = [r.agent for r in town.worktrees(status=False) if r.agent in names]
        for w in (row for name in theirs for row in town.worktrees(name)):  # git: theirs only
            if w.unsaved:
                print(f"Kept worktree {w.branch}: {w.unsaved}. See it with %tt_diff {w.agent}; "
                      f"%tt_merge {w.agent} brings it back.")

    @line_magic
    @magic_arguments()
    @arg("agent", help="agent name, nickname or short id")
    @common
    def tt_interrupt(self, line: str = "") -> Agent:
        """Pause an agent: it finishes its current task and starts nothing new. ``%tt_interrupt dev``"""
        return self._agent_action(self.tt_interrupt, line, "interrupt")

    @line_magic
    @magic_arguments()
    @arg("agent", help="agent name, nickname or short id")
    @common
    def tt_resume(self, line: str = "") -> Agent:
        """Resume a paused agent. ``%tt_resume dev``"""
        return self._agent_action(self.tt_resume, line, "resume")

    @line_magic
    @magic_arguments()
    @arg("agent", help="agent name, nickname or short id")
    @common
    def tt_close(self, line: str = "") -> Agent:
        """Let an agent finish its current work, then stop (``draining``). ``%tt_close dev``"""
        return self._agent_action(self.tt_close, line, "close")

    @line_magic
    @magic_arguments()
    @arg("agent", help="agent name, nickname or short id")
    @common
    def tt_restart(self, line: str = "") -> Agent:
        """Restart a stopped agent (new worker, fresh round counters). ``%tt_restart dev``"""
        return self._agent_action(self.tt_restart, line, "restart")

    @line_magic
    @magic_arguments()
    @arg("--all", action="store_true", help="delete every agent, not only stopped/error ones")
    @common
    def tt_prune(self, line: str = "") -> Any:
        """Delete stopped and error agents (all with --all) and their mailboxes; returns them.

        Their tasks stay; their worktrees go when clean and merged (others are kept, and
        said so). Example: ``%tt_prune``.
        """
        args = parse_line(self.tt_prune, line)
        town = self._town(args)
        pruned = town.prune(all=args.all)
        self._kept_worktrees(town, [a.name for a in pruned])
        return self._done(args, town, frames.agents_to_frame(pruned))

    @line_magic
    @magic_arguments()
    @arg("--stale-after", type=float, default=120.0, metavar="S",
              help="a heartbeat older than S seconds means dead (default 120)")
    @common
    def tt_recover(self, line: str = "") -> Any:
        """Mark agents whose worker died stopped and requeue their work: at once when its
        process on this machine is gone (e.g. a dead kernel's function agents), else after
        --stale-after seconds without a heartbeat.

        Example: ``%tt_recover``, ``%tt_recover --stale-after 30``.
        """
        args = parse_line(self.tt_recover, line)
        town = self._town(args)
        result = town.recover(args.stale_after)
        if isinstance(result, list) and all(isinstance(a, Agent) for a in result):
            result = frames.agents_to_frame(result)
        return self._done(args, town, result)

    @line_magic
    @magic_arguments()
    @arg("--older-than", default="7d", metavar="AGE",
         help="tasks whose last change is older than AGE: 7d, 12h, 30m, 90s (default 7d)")
    @arg("--states", default="completed,cancelled", metavar="A,B",
         help="finished states to archive (default completed,cancelled)")
    @arg("--list", action="store_true", help="only show the archive as a DataFrame")
    @common
    def tt_archive(self, line: str = "") -> Any:
        """Move finished tasks out of Redis into the town's archive (``.tt/archive/``);
        returns how many moved. ``--list`` returns the archive as a DataFrame instead.

        Example: ``%tt_archive --older-than 30d``, ``%tt_archive --list``.
        """
        args = parse_line(self.tt_archive, line)
        town = self._town(args)
        if args.list:
            return self._done(args, town, frames.archive_frame(town))
        moved = town.archive(older_than=args.older_than, states=args.states)
        self._say(f"Archived {moved} task(s) of town {town.name!r}.")
        return self._done(args, town, moved)

    @line_magic
    @magic_arguments()
    @arg("--force", action="store_true", help="really delete (without it: say what would go)")
    @arg("--agents-only", action="store_true", help="keep tasks and the backlog")
    @common
    def tt_reset(self, line: str = "") -> Any:
        """Delete the town's data in Redis (agents, tasks, messages, events).

        Without --force only says what would be deleted. Example: ``%tt_reset --force``.
        """
        args = parse_line(self.tt_reset, line)
        town = self._town(args)
        if not args.force:
            counts = town.counts()    # the state indexes: O(1) in a town of 100,000 tasks
            what = f"{counted(counts.total_agents, 'agent')} and their mailboxes"
            if not args.agents_only:
                what += f", {counted(counts.total_tasks, 'task')}, the backlog and the event history"
            self._say(f"%tt_reset would delete {what} of town {town.name!r}. "
                      "Re-run with --force to do it.")
            return None
        deleted = town.reset(agents_only=args.agents_only)
        self._say(f"Deleted {deleted} keys of town {town.name!r}.")
        return self._done(args, town, deleted)

    # ---- worktrees
    @line_magic
    @magic_arguments()
    @common
    def tt_worktrees(self, line: str = "") -> Any:
        """The agents' git worktrees as a DataFrame (branch, base, commits ahead/behind,
        uncommitted files, merged, unsaved work). ``%tt_worktrees``"""
        args = parse_line(self.tt_worktrees, line)
        town = self._town(args)
        return self._done(args, town, frames.worktrees_frame(town))

    @line_magic
    @magic_arguments()
    @arg("agent", help="agent name, nickname or short id")
    @arg("--stat", action="store_true", help="only the files changed and how much")
    @common
    def tt_diff(self, line: str = "") -> Any:
        """The agent's work in its worktree against its base (commits and uncommitted
        changes), coloured. Example: ``%tt_diff dev``, ``%tt_diff dev --stat``.
        """
        args = parse_line(self.tt_diff, line)
        town = self._town(args)
        return self._done(args, town, town.diff(args.agent, stat=args.stat))

    @line_magic
    @magic_arguments()
    @arg("agent", help="agent name, nickname or short id")
    @arg("--into", metavar="BRANCH", help="the branch to merge into (default: its base)")
    @arg("--squash", action="store_true", help="one commit instead of a merge commit")
    @arg("-m", "--message", metavar="MSG", help="the commit message")
    @common
    def tt_merge(self, line: str = "") -> None:
        """Merge the agent's branch into its base in the main checkout (which must be on that
        branch, with no uncommitted changes). A conflict is aborted, leaving the main
        checkout as it was, and raises MergeConflict naming the files; ``-o`` stores the
        new commit. Example: ``%tt_merge dev --squash -m "Add --verbose"``.
        """
        args = parse_line(self.tt_merge, line)
        town = self._town(args)
        commit = town.merge(args.agent, into=args.into, squash=args.squash, message=args.message)
        w = town.worktrees(args.agent, status=False)[0]
        print(f"Merged {w.branch} into {args.into or w.base}: commit {commit[:12]}")
        self._done(args, town, commit)

    # ---- tasks
    @line_cell_magic
    @magic_arguments()
    @arg("agent", help="agent name, nickname or short id")
    @arg("text", nargs="*", help="line form: the task text (the rest of the line)")
    @arg("--tags", metavar="A,B", help="comma-separated tags")
    @arg("--after", metavar="ID,ID", help="tasks (ids or 4+ character prefixes) it waits for")
    @arg("--wait", action="store_true", help="block until the task is finished")
    @arg("--wait-timeout", type=float, metavar="S",
         help="with --wait: give up waiting after S seconds (default TinytownMagics.wait_timeout, "
              "or as long as the task's attempts may take)")
    @_run_options
    @arg("--render", action="store_true",
              help="fill {{var}} from notebook variables (single braces stay)")
    @common
    def tt_assign(self, line: str = "", cell: str | None = None) -> Task:
        """Assign a task: the cell body (``%%tt_assign AGENT``) or the rest of the line
        (``%tt_assign AGENT text...``) is the task text, verbatim (less the cell's last
        newline). With ``--after 3f2a,9c1e`` it waits (pending) until those tasks are
        completed, then goes to the agent with their results. ``--timeout D`` bounds each
        attempt (``90``, ``90s``, ``20m``, ``1h``), ``--retries N`` runs a failed attempt again
        (``--retry-delay D`` later).

        Example::

            %%tt_assign reviewer --after 3f2a,9c1e --tags review --timeout 20m --retries 1
            Review both drafts and pick one.
        """
        if cell is None:
            args = parse_line(self.tt_assign, line, text_after=1)
            text = args.text_
            if not text.strip():
                raise UsageError("No task text. Write it after the agent name, or use "
                                 "%%tt_assign AGENT with the text in the cell body.")
        else:
            args = parse_line(self.tt_assign, line)
            if args.text:
                raise UsageError(f"Unexpected {' '.join(args.text)!r} after the agent name: "
                                 "in %%tt_assign the task text is the cell body.")
            text = cell[:-1] if cell.endswith("\n") else cell  # IPython adds the final newline
            if not text.strip():
                raise UsageError("The cell body is empty: write the task text below "
                                 "%%tt_assign AGENT.")
        if args.wait_timeout is not None and not args.wait:
            raise UsageError("--wait-timeout only applies with --wait.")
        if args.render:
            text = self._render(text)
        town = self._town(args)
        task = town.assign(args.agent, text, tags=args.tags or (), after=args.after, timeout=args.timeout,
                           retries=args.retries, retry_delay=args.retry_delay)
        self._warn_if_idle_for_good(town, task)
        if args.wait:
            timeout = args.wait_timeout
            if timeout is None:  # at least as long as the task's attempts may take
                bound = ((args.timeout + (args.retry_delay or 0)) * ((args.retries or 0) + 1) + 30
                         if args.timeout else 0)
                timeout = max(self.wait_timeout, bound)
            town.wait(task=task.id, timeout=timeout)
            task = town.task(task.id)
        return self._done(args, town, task)

    # ---- workflows
    @line_cell_magic
    @magic_arguments()
    @arg("text", nargs="*", help="line form: what the person decides (the rest of the line)")
    @arg("--after", metavar="ID,ID", help="tasks (ids or 4+ character prefixes) it waits for")
    @arg("--tags", metavar="A,B", help="comma-separated tags")
    @common
    def tt_gate(self, line: str = "", cell: str | None = None) -> Task:
        """Make a gate: a task no agent runs. It waits for --after, then for you:
        ``%tt_approve ID [note]`` lets the tasks waiting for it go on, ``%tt_reject ID note``
        cancels them and sends the note to the agents whose work it waited for.

        Example: ``%tt_gate --after 3f2a -o ok Is the draft good enough to publish?``
        """
        if cell is None:
            args = parse_line(self.tt_gate, line, text_after=0)
            text = args.text_
        else:
            args = parse_line(self.tt_gate, line)
            if args.text:
                raise UsageError("In %%tt_gate the text is the cell body; put only options on the line.")
            text = cell[:-1] if cell.endswith("\n") else cell
        if not text.strip():
            raise UsageError("Say what is to be decided: %tt_gate [--after IDS] TEXT")
        town = self._town(args)
        return self._done(args, town, town.gate(text, after=args.after, tags=args.tags or ()))

    @line_magic
    @magic_arguments()
    @arg("gate", help="the gate's id (or a 4+ character prefix)")
    @arg("note", nargs="*", help="an optional note (the rest of the line)")
    @common
    def tt_approve(self, line: str = "") -> Task:
        """Approve a gate: it is completed and the tasks waiting for it go on.
        ``%tt_approve 3f2a Looks good``"""
        args = parse_line(self.tt_approve, line, text_after=1)
        town = self._town(args)
        return self._done(args, town, town.approve(args.gate, args.text_ or None))

    @line_magic
    @magic_arguments()
    @arg("gate", help="the gate's id (or a 4+ character prefix)")
    @arg("note", nargs="*", help="why (the rest of the line); sent to the agents whose work it judged")
    @common
    def tt_reject(self, line: str = "") -> Task:
        """Reject a gate with a note: it fails, the tasks waiting for it are cancelled, and
        the note goes to the agents whose work it waited for. ``%tt_reject 3f2a Too long; cut it``"""
        args = parse_line(self.tt_reject, line, text_after=1)
        if not args.text_.strip():
            raise UsageError("Say why: %tt_reject GATE NOTE (the note goes to the agents).")
        town = self._town(args)
        return self._done(args, town, town.reject(args.gate, args.text_))

    @line_magic
    @magic_arguments()
    @arg("--all", action="store_true", help="every gate, decided ones too")
    @common
    def tt_gates(self, line: str = "") -> Any:
        """Gates waiting for your decision (``ready`` once what they wait for is done), as
        a DataFrame; ``--all`` includes decided ones. ``%tt_gates``"""
        args = parse_line(self.tt_gates, line)
        town = self._town(args)
        return self._done(args, town, frames.gates_frame(town, open=not args.all))

    @line_magic
    @magic_arguments()
    @arg("--graph", action="store_true", help="a picture of the workflow instead of a DataFrame")
    @common
    def tt_deps(self, line: str = "") -> Any:
        """What tasks wait for: one row per dependency (``frames.deps_frame``), or with
        ``--graph`` a picture of the workflow (an SVG image). ``%tt_deps --graph``"""
        from ..graph import workflow_graph

        args = parse_line(self.tt_deps, line)
        town = self._town(args)
        return self._done(args, town, workflow_graph(town) if args.graph else frames.deps_frame(town))

    @line_magic
    @magic_arguments()
    @arg("--state", help="only tasks in this state (pending, assigned, running, ...)")
    @arg("--agent", help="only tasks assigned to this agent")
    @common
    def tt_tasks(self, line: str = "") -> Any:
        """Tasks as a DataFrame, oldest first. Example: ``%tt_tasks --state completed``."""
        args = parse_line(self.tt_tasks, line)
        town = self._town(args)
        return self._done(args, town, frames.tasks_frame(town, state=args.state, agent=args.agent))

    @line_magic
    @magic_arguments()
    @arg("action", choices=["add", "list", "claim", "assign-all", "remove"],
              help="add TEXT | list | claim TASK AGENT | assign-all AGENT | remove TASK")
    @arg("args", nargs="*", help="the action's arguments (the text, for add)")
    @arg("--tags", metavar="A,B", help="comma-separated tags (add)")
    @arg("--after", metavar="ID,ID", help="add: join the backlog once these tasks are completed")
    @_run_options
    @common
    def tt_backlog(self, line: str = "") -> Any:
        """The town's backlog of unassigned tasks.

        Examples: ``%tt_backlog add --tags ops Triage the open issues``,
        ``%tt_backlog list``, ``%tt_backlog claim 3f2a dev``, ``%tt_backlog assign-all dev``.
        """
        args = parse_line(self.tt_backlog, line, text_after=1, check_text=False)
        if args.action == "add":
            args = parse_line(self.tt_backlog, line, text_after=1)  # refuses options after TEXT
            if not args.text_.strip():
                raise UsageError("No task text: %tt_backlog add [--tags A,B] TEXT")
        else:
            args = parse_line(self.tt_backlog, line)
            given = [o for o, v in (("--tags", args.tags), ("--after", args.after),
                                    ("--timeout", args.timeout), ("--retries", args.retries),
                                    ("--retry-delay", args.retry_delay)) if v is not None]
            if given:
                raise UsageError(f"{given[0]} only applies to %tt_backlog add.")
        town = self._town(args)
        need = {"list": 0, "claim": 2, "assign-all": 1, "remove": 1}
        if args.action != "add" and len(args.args) != need[args.action]:
            usage = {"list": "list", "claim": "claim TASK AGENT", "assign-all": "assign-all AGENT",
                     "remove": "remove TASK"}[args.action]
            raise UsageError(f"Usage: %tt_backlog {usage}")
        if args.action == "add":
            result: Any = town.backlog_add(args.text_, tags=args.tags or (), after=args.after,
                                           timeout=args.timeout, retries=args.retries,
                                           retry_delay=args.retry_delay)
        elif args.action == "list":
            result = frames.backlog_frame(town)
        elif args.action == "claim":
            result = town.backlog_claim(*args.args)
        elif args.action == "assign-all":
            result = frames.tasks_to_frame(town.backlog_assign_all(args.args[0]),
                                           {a.id: a.name for a in town.agents()})
        else:
            result = town.backlog_remove(args.args[0])
        return self._done(args, town, result)

    @line_magic
    @magic_arguments()
    @arg("agent", nargs="?", help="agent to wait for (until it is idle with nothing "
                                         "queued, or stopped)")
    @arg("--task", metavar="ID", help="wait until this task is finished")
    @arg("--all", action="store_true", help="wait until every task is finished")
    @arg("--timeout", type=float, metavar="S", help="give up after S seconds")
    @common
    def tt_wait(self, line: str = "") -> Any:
        """Block with a progress bar until an agent is idle (or stopped), a task finishes,
        or all tasks finish; returns the Agent, the Task or the list of tasks.

        With --all the result is a one-line summary (counts by state, elapsed), not every
        task. Raises WaitTimeout after --timeout (default TinytownMagics.wait_timeout).
        Examples: ``%tt_wait --task 3f2a``, ``%tt_wait --all --timeout 60``.
        """
        args = parse_line(self.tt_wait, line)
        if sum(map(bool, (args.agent, args.task, args.all))) != 1:
            raise UsageError("Give exactly one of AGENT, --task ID or --all.")
        timeout = args.timeout if args.timeout is not None else self.wait_timeout
        if timeout < 0:
            raise UsageError(f"--timeout must be seconds >= 0, got {timeout:g}.")
        town = self._town(args)
        result = wait_with_progress(town, args.agent, args.task, args.all, timeout)
        return self._done(args, town, result)

    # ---- messages
    @line_magic
    @magic_arguments()
    @arg("to", help="recipient agent (or supervisor)")
    @arg("text", nargs="*", help="the message (the rest of the line, verbatim)")
    @arg("--urgent", action="store_true", help="to the urgent list, read first")
    @arg("--query", action="store_true", help="a question")
    @arg("--info", action="store_true", help="an informational note")
    @arg("--ack", action="store_true", help="an acknowledgement")
    @arg("--from", dest="sender", metavar="AGENT", help="sender (default: supervisor)")
    @common
    def tt_send(self, line: str = "") -> Message:
        """Send a message to an agent. Options go before the text.

        Example: ``%tt_send --urgent dev Stop what you're doing and rebase``.
        """
        args = parse_line(self.tt_send, line, text_after=1)
        kinds = [k for k in ("query", "info", "ack") if getattr(args, k)]
        if len(kinds) > 1:
            raise UsageError("Give at most one of --query, --info, --ack.")
        if not args.text_.strip():
            raise UsageError("No message text: %tt_send [--urgent] AGENT TEXT")
        town = self._town(args)
        msg = town.send(args.to, args.text_, kind=kinds[0] if kinds else "task",
                        urgent=args.urgent, sender=args.sender)
        return self._done(args, town, msg)

    @line_magic
    @magic_arguments()
    @arg("agent", nargs="?", help="whose inbox")
    @arg("--all", action="store_true", help="every agent's inbox and the supervisor's")
    @common
    def tt_inbox(self, line: str = "") -> Any:
        """Waiting messages (not taken) as a DataFrame. ``%tt_inbox dev`` or ``%tt_inbox --all``."""
        args = parse_line(self.tt_inbox, line)
        if bool(args.agent) == bool(args.all):
            raise UsageError("Give one AGENT or --all.")
        town = self._town(args)
        return self._done(args, town, frames.inbox_frame(town, None if args.all else args.agent))

    # ---- looking
    @line_magic
    @magic_arguments()
    @common
    def tt_agents(self, line: str = "") -> Any:
        """Agents as a DataFrame (state, waiting messages, counters). ``%tt_agents``"""
        args = parse_line(self.tt_agents, line)
        town = self._town(args)
        return self._done(args, town, frames.agents_frame(town))

    @line_magic
    @magic_arguments()
    @common
    def tt_status(self, line: str = "") -> Any:
        """Agents and tasks counted by state, backlog and waiting messages. ``%tt_status``"""
        args = parse_line(self.tt_status, line)
        town = self._town(args)
        return self._done(args, town, frames.status_frame(town))

    @line_magic
    @magic_arguments()
    @arg("-n", type=int, default=20, help="how many events (default 20)")
    @arg("--after", metavar="ID", help="start after this stream id (default: the start)")
    @arg("--agent", help="only this agent's events")
    @common
    def tt_events(self, line: str = "") -> Any:
        """Events from the start of the town's stream (or after --after), oldest first.

        Example: ``%tt_events -n 50``.
        """
        args = parse_line(self.tt_events, line)
        town = self._town(args)
        return self._done(args, town, frames.events_frame(
            town, args.n, agent=args.agent, after=args.after or "0-0"))

    @line_magic
    @magic_arguments()
    @arg("-n", type=int, default=30, help="how many events (default 30)")
    @arg("--agent", help="only this agent's events")
    @common
    def tt_history(self, line: str = "") -> Any:
        """The last N events, oldest first (``tt history``). ``%tt_history -n 10``"""
        args = parse_line(self.tt_history, line)
        town = self._town(args)
        return self._done(args, town, frames.events_frame(town, args.n, agent=args.agent))

    @line_magic
    @magic_arguments()
    @arg("action", nargs="?", choices=["list", "requeue", "drop"], default="list",
         help="list (default), requeue ID (put it back in its agent's inbox) or drop ID")
    @arg("id", nargs="?", help="the dead letter's id (or a unique prefix of 4+ characters)")
    @common
    def tt_dead(self, line: str = "") -> Any:
        """Messages workers set aside because the town cannot use them (dead letters), with
        the reason; put one back after fixing its record, or drop it.
        ``%tt_dead`` · ``%tt_dead requeue 9c1e`` · ``%tt_dead drop 9c1e``"""
        args = parse_line(self.tt_dead, line)
        town = self._town(args)
        if args.action != "list":
            if not args.id:
                raise UsageError(f"%tt_dead {args.action} needs the dead letter's id: "
                                 f"%tt_dead {args.action} ID")
            done = (town.requeue_dead_letter if args.action == "requeue" else town.drop_dead_letter)(args.id)
            self._say(f"{'Put back' if args.action == 'requeue' else 'Dropped'} dead letter {done.short_id}.")
        return self._done(args, town, frames.dead_letters_frame(town))

    @line_magic
    @magic_arguments()
    @arg("task", help="task id (full, or a unique prefix of 4+ characters)")
    @arg("-f", "--follow", action="store_true",
         help="print new lines as they come, until the task ends (or you interrupt)")
    @arg("--timeout", type=_duration, metavar="D", help="with --follow: stop following after D")
    @common
    def tt_log(self, line: str = "") -> None:
        """Print what a task printed (a function agent's prints, a command's output, an AI
        CLI's readable stream) — also while it runs; ``--follow`` prints the lines as they
        come and returns when the task ends (or on interrupt); ``-o NAME`` also stores the
        lines as a list. ``%tt_log 3f2a``, ``%tt_log 3f2a --follow``"""
        args = parse_line(self.tt_log, line)
        if args.timeout is not None and not args.follow:
            raise UsageError("--timeout only applies with --follow.")
        town = self._town(args)
        if not args.follow:
            lines = self._done(args, town, town.task_log(args.task))
            print("\n".join(lines) if lines else f"(task {args.task} printed nothing)")
            return None
        seen: list[str] = []
        try:
            for text in town.follow(args.task, timeout=args.timeout):
                print(text, flush=True)
                seen.append(text)
        except KeyboardInterrupt:
            print("(stopped following; the task goes on)")
        self._done(args, town, seen)
        return None

    # ---- cost
    @line_magic
    @magic_arguments()
    @arg("--by", choices=["agent", "tag", "task"], default="agent", help="group by (agent)")
    @common
    def tt_cost(self, line: str = "") -> Any:
        """Tokens and dollars per agent, tag or task, most expensive first (a DataFrame).

        Example: ``%tt_cost --by tag -o costs``.
        """
        args = parse_line(self.tt_cost, line)
        town = self._town(args)
        return self._done(args, town, frames.usage_frame(town, by=args.by))

    @line_magic
    @magic_arguments()
    @arg("usd", nargs="?", metavar="USD|off", help="the limit in US dollars, or off to clear it")
    @common
    def tt_budget(self, line: str = "") -> Any:
        """Show or set the town's cost budget: when the recorded cost reaches it, every AI
        agent is paused after its current run (raise it and ``%tt_resume`` to go on).

        Examples: ``%tt_budget 5``, ``%tt_budget off``, ``%tt_budget``.
        """
        args = parse_line(self.tt_budget, line)
        town = self._town(args)
        if args.usd is not None:
            off = args.usd.strip().lower() in ("off", "none")
            town.set_budget(None if off else args.usd)
        return self._done(args, town, town.budget())

    @line_magic
    @magic_arguments()
    @arg("--until", choices=["done", "idle"], default="done",
              help="done: no task pending/assigned/running; idle: no task assigned/running, "
                   "no agent working/draining")
    @arg("--timeout", type=float, metavar="S", help="give up after S seconds")
    @common
    def tt_watch(self, line: str = "") -> Any:
        """Block with a progress bar (done/total, elapsed, rate, ETA) until the town is done
        (or idle); returns a one-line summary of the end state (counts by state, elapsed;
        ``.frame()`` is the %tt_status frame), so a headless run records it.

        Example: ``%tt_watch --until idle --timeout 120``.
        """
        from ..widgets import watch

        args = parse_line(self.tt_watch, line)
        town = self._town(args)
        timeout = args.timeout if args.timeout is not None else self.wait_timeout
        return self._done(args, town, watch(town, args.until, timeout))

    @line_magic
    @magic_arguments()
    @arg("--last", metavar="SPAN", help="only tasks running or ended in the last SPAN (10m, 2h, 90s)")
    @common
    def tt_timeline(self, line: str = "") -> Any:
        """The task stream: one lane per agent, a bar per task from start to end coloured
        by outcome (a picture; ``-o NAME`` stores it, its ``.frame`` is the data).

        Examples: ``%tt_timeline``, ``%tt_timeline --last 10m -o tl`` then ``tl.frame``.
        """
        from .. import timeline

        args = parse_line(self.tt_timeline, line)
        town = self._town(args)
        try:
            frame = frames.timeline_frame(town, last=args.last)
        except ConfigError as exc:
            raise UsageError(f"--last {args.last!r}: use a time span such as 10m, 2h or 90s.") from exc
        lanes = [a.name for a in town.agents()]
        title = f"Town {town.name}" + (f", last {args.last}" if args.last else "")
        return self._done(args, town, timeline.Timeline(frame, lanes=lanes, title=title))

    @line_magic
    @magic_arguments()
    @common
    def tt_view(self, line: str = "") -> Any:
        """The live dashboard (TownView) of the town. ``%tt_view``

        One live view per town: running it again (re-running its cell) stops the previous
        view's watcher; for several at once, make ``TownView(town)`` objects yourself.
        """
        from ..widgets import TownView

        args = parse_line(self.tt_view, line)
        town = self._town(args)
        for old in [v for v in self.views if v.town is town]:
            old.close()  # its output was most likely just replaced: no thread left behind
            self.views.remove(old)
        view = TownView(town)
        self.views.append(view)
        return self._done(args, town, view)
