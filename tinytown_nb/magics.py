"""``%tt_*`` magics: drive a town from notebook cells.

Load with ``%load_ext tinytown_nb``, then ``%tt_init`` (one default town per kernel; every
magic also takes ``--town DIR``). Each magic parses its arguments, calls the core and
returns a DataFrame, a record or the dashboard; ``-o NAME`` also stores the result in a
notebook variable. ``{var}`` on the line is expanded by IPython; ``%tt_spawn?`` shows usage.

Errors: what the argument parser can see (a missing or unknown option, a bad number, an
empty cell) raises ``UsageError``; everything the town rejects (an invalid name, an unknown
agent, a state that forbids the change) raises the core's one-line ``TinytownError``, which
also fails a headless notebook run.

Magics that take free text (``%tt_send``, ``%tt_assign``, ``%tt_backlog add``) read it
from the rest of the line after the options and names (as IPython hands it over: with
``{var}`` and ``$var`` expanded, as for every magic), so apostrophes need no quoting, it may
start with a dash (``-5 degrees``) and end with ``?`` (an input
transformer keeps IPython from taking that for a help request). Options go *before* the
text: one of the magic's options at its end is refused, unless the whole text is quoted.

``%tt_init`` returns the town, which displays as a summary (directory, Redis, agents and
tasks by state); ``%tt_wait`` and ``%tt_watch`` show a progress bar while they block.

Example::

    %load_ext tinytown_nb
    %tt_init demo-town
    %tt_spawn summarizer --fn summarize
    %%tt_assign summarizer --wait
    Summarize the README in three bullet points.
"""

from __future__ import annotations

import functools
import keyword
import re
import shlex
import time
from html import escape
from pathlib import Path
from typing import Any, Callable

import redis
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Float, Int, Unicode

from . import frames
from .core import SUPERVISOR_ID, Agent, AgentExists, ConfigError, Message, Task, Town
from .core.errors import TinytownError, WaitTimeout, from_redis
from .core.models import TaskState, format_duration

__all__ = ["TinytownMagics", "load_ipython_extension", "question_mark_magics",
           "unload_ipython_extension"]

_TOKEN = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|\S+)""")
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
#: Magics whose arguments include an agent name (tab completion offers the cached names).
AGENT_MAGICS = ("tt_spawn", "tt_assign", "tt_tasks", "tt_inbox", "tt_send", "tt_backlog",
                "tt_kill", "tt_interrupt", "tt_resume", "tt_close", "tt_restart", "tt_wait",
                "tt_events", "tt_history")


def _common(func: Callable) -> Callable:
    """``--town DIR`` and ``-o NAME``, shared by every magic."""
    func = argument("-o", "--out", metavar="NAME",
                    help="also store the result in this notebook variable")(func)
    return argument("--town", metavar="DIR",
                    help="use the town in DIR instead of the %%tt_init one")(func)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        try:
            return shlex.split(token)[0]
        except ValueError:
            return token
    return token


def _options(parser: Any) -> tuple[set[str], dict[str, str]]:
    """(every option string of the parser, {option string: metavar} of those taking a value)."""
    options: set[str] = set()
    takes_value: dict[str, str] = {}
    for action in parser._actions:
        for string in action.option_strings:
            options.add(string)
            if action.nargs != 0:
                takes_value[string] = action.metavar or action.dest.upper()
    return options, takes_value


def _is_option(token: str, options: set[str]) -> bool:
    """One of the parser's option strings, or ``--opt=value`` of one."""
    return token in options or (token.startswith("--") and token.split("=", 1)[0] in options)


def _split_text(line: str, parser: Any, n_names: int, *, check: bool = True) -> tuple[list[str], str]:
    """Split ``[options] NAME... TEXT`` into argv for the parser and the verbatim TEXT.

    Options may come before or between the names; the text starts at the first other
    token (or after ``--``). Once the names are read, a token starting with ``-`` is an
    option only if it is one of the parser's (so ``-5 degrees`` is text); before that it
    goes to the parser, which rejects an unknown one. A text that is one quoted string
    loses its quotes. With ``check``, an unquoted text (not after ``--``) that ends in one
    of the parser's options (and its value) raises :class:`UsageError`: options go first.
    """
    options, takes_value = _options(parser)
    argv: list[str] = []
    names, rest, want_value, explicit = 0, line, False, False
    while True:
        m = _TOKEN.match(rest)
        if not m:
            rest = ""
            break
        token = m.group(1)
        if want_value:
            argv.append(_unquote(token))
            want_value = False
        elif token == "--" and names == n_names:
            rest, explicit = rest[m.end():], True
            break
        elif token.startswith("-") and len(token) > 1 and (names < n_names or _is_option(token, options)):
            argv.append(token)
            want_value = token in takes_value
        elif names < n_names:
            argv.append(_unquote(token))
            names += 1
        else:
            break
        rest = rest[m.end():]
    text = rest.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        return argv, text[1:-1]
    if check and text and not explicit:
        _refuse_trailing_options(parser, line[:len(line) - len(rest)].strip(), text,
                                 options, takes_value)
    return argv, text


def _refuse_trailing_options(parser: Any, head: str, text: str, options: set[str],
                             takes_value: dict[str, str]) -> None:
    """Raise :class:`UsageError` if ``text`` ends in the parser's own options (each with its
    value when it takes one): written after the text they would silently become text."""
    words, moved = text.split(), []
    while len(words) > 1:  # the first word is never an option: it started the text
        if _is_option(words[-1], options):
            group = [words.pop()]
            if group[0] in takes_value:  # a value-taking option with nothing after it
                group.append(takes_value[group[0]])
        elif words[-2] in takes_value:
            group = words[-2:]
            del words[-2:]
        else:
            break
        moved[:0] = group
    if not moved:
        return
    magic, opts = f"%{parser.prog}", " ".join(moved)
    hint = f"Options go before the text: {magic} {opts} {head} {' '.join(words)}"
    quote = next((q for q in "\"'" if q not in text), None)
    if quote is not None:
        hint += (f" (to keep {opts!r} as text, quote the whole text: "
                 f"{magic} {head} {quote}{text}{quote})")
    raise UsageError(hint)


# --------------------------------------------------------------------------- rich reprs

#: Agent id → name, as last seen by a magic; lets a Task's repr name its assignee offline.
_NAME_OF: dict[str, str] = {}


def _record_rows(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, Agent):
        return [("agent", obj.display_label), ("id", obj.id), ("state", obj.state.value),
                ("cli", obj.cli), ("current task", obj.current_task or ""),
                ("tasks completed", obj.tasks_completed), ("rounds", obj.rounds_completed),
                ("created", obj.created_at.isoformat(timespec="seconds"))]
    if isinstance(obj, Task):
        return [("task", obj.summary(100)), ("id", obj.id), ("state", obj.state.value),
                ("assigned to", _NAME_OF.get(obj.assigned_to or "", obj.assigned_to or "")),
                ("tags", ", ".join(obj.tags)),
                ("result", obj.result or ""),
                ("duration", format_duration(obj.duration))]
    return [("message", obj.summary(100)), ("id", obj.id), ("type", obj.type),
            ("to", "supervisor" if obj.to == SUPERVISOR_ID else obj.to),
            ("priority", obj.priority.value)]


def _record_html(obj: Any) -> str:
    """A small two-column table for an Agent, Task or Message."""
    rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>"
                   f"{escape(str(v))}</td></tr>" for k, v in _record_rows(obj) if v != "")
    return f"<table>{rows}</table>"


def _record_text(obj: Any, p: Any, cycle: bool) -> None:
    """One line for an Agent, Task or Message (IPython's pretty-printer signature)."""
    if isinstance(obj, Agent):
        p.text(f"<Agent {obj.name} ({obj.short_id}) {obj.state.value}>")
    elif isinstance(obj, Task):
        why = ""
        if obj.state.value == "failed" and obj.result:  # what went wrong, not only that it did
            why = " — " + (obj.result.strip().splitlines() or [""])[0][:100]
        p.text(f"<Task {obj.short_id} {obj.state.value}: {obj.summary(60)}{why}>")
    else:
        p.text(f"<Message {obj.type} to {obj.to[:4]}: {obj.summary(60)}>")


def _counted(counts: Any) -> str:
    """``3 (2 completed, 1 running)`` from a state → count Series."""
    parts = ", ".join(f"{int(n)} {state}" for state, n in counts.items() if n)
    return f"{int(counts.sum())}" + (f" ({parts})" if parts else "")


def _town_rows(town: Town) -> list[tuple[str, str]]:
    """The summary a Town displays as: directory, Redis (password redacted), agents and
    tasks by state, backlog and inbox (from :func:`frames.status_frame`)."""
    rows = [("directory", str(town.root)), ("redis", town.url)]
    try:
        status = frames.status_frame(town).iloc[0]
    except Exception as exc:  # a display must not fail: say why there are no counts
        return rows + [("status", f"unavailable ({type(exc).__name__}: {exc})")]
    return rows + [("agents", _counted(status["agents"])), ("tasks", _counted(status["tasks"])),
                   ("waiting", f"backlog {int(status['backlog', 'tasks'])}, "
                               f"inbox {int(status['inbox', 'messages'])}")]


def _town_html(town: Town) -> str:
    rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>"
                   f"{escape(v)}</td></tr>" for k, v in _town_rows(town))
    return f"<table><caption style='text-align:left'>Town {escape(repr(town.name))}</caption>{rows}</table>"


def _town_text(town: Town, p: Any, cycle: bool) -> None:
    """A few lines for a Town shown on its own; its one-line repr inside a list or dict."""
    if cycle or len(getattr(p, "stack", ())) > 1:
        p.text(repr(town))
        return
    p.text(f"Town {town.name!r}")
    for key, value in _town_rows(town):
        p.break_()
        p.text(f"  {key + ':':<11}{value}")


# --------------------------------------------------------------------------- waiting

def _wait_with_progress(town: Town, agent: str | None, task: str | None, all_: bool,
                        timeout: float) -> Any:
    """``town.wait(...)`` showing the progress bar of :func:`widgets.watch` (a widget in a
    kernel, saved as its label only, so a headless run records the same output every time;
    text lines elsewhere), redrawn at most twice a second while it waits."""
    from .widgets import Progress

    if task:
        task = town.task(task).id  # resolved once: a prefix is looked up a single time
        label = f"until task {task[:4]} finishes"

        def look() -> tuple[int, int, str]:
            return 0, 1, f"task {task[:4]} is {town.task(task).state.value}"
    elif agent:
        found = town.agent(agent)
        agent, label = found.id, f"until {found.name} is idle"

        def look() -> tuple[int, int, str]:
            return 0, 1, f"{found.name} is {town.agent(agent).state.value}"
    else:
        label = "until all tasks finish"

        def look() -> tuple[int, int, str]:
            c = town.counts()
            return c.finished_tasks, c.total_tasks, f"{c.finished_tasks}/{c.total_tasks} tasks finished"

    bar, last = Progress(label), [0.0, (0, 1, "")]

    def progress() -> None:
        if time.monotonic() - last[0] >= 0.5:  # a busy town checks far more often than that
            last[:] = [time.monotonic(), look()]
            bar.update(*last[1])

    try:
        result = town.wait(agent, task=task, all=all_, timeout=timeout, progress=progress)
    except WaitTimeout:
        done, total, text = look()
        bar.update(done, total, f"{text} (timed out)", final=True)
        raise
    if task:
        bar.update(1, 1, f"task {task[:4]} {result.state.value}", final=True)
    elif agent:
        bar.update(1, 1, f"{result.name} is {result.state.value}", final=True)
    else:
        bar.update(len(result), len(result), f"{len(result)}/{len(result)} tasks finished", final=True)
    return result


# --------------------------------------------------------------------------- the magics


def _one_line_redis_errors(cls: type) -> type:
    """Make every magic raise the core's one-line error for a redis-py error that reached
    it untranslated (the Town translates its own), and a ConfigError naming the path for a
    file-system error, so a notebook shows one line and a headless run still fails."""
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)  # keeps .parser and the usage docstring (%tt_spawn?)
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
        self.agent_names: list[str] = []         # completion cache (never read in the completer)

    # ---- plumbing
    def _args(self, func: Callable, line: str, *, text_after: int | None = None,
              check_text: bool = True) -> Any:
        """Parse ``line`` with the magic's parser; with ``text_after=N`` the rest of the line
        after N names is the verbatim text (``args.text_``), see :func:`_split_text`."""
        parser = func.parser
        if text_after is None:
            try:
                argv = shlex.split(line)
            except ValueError as exc:
                raise UsageError(f"{exc} in: {line.strip()}") from None
            args = parser.parse_args(argv)
            args.text_ = None
        else:
            argv, text = _split_text(line, parser, text_after, check=check_text)
            args = parser.parse_args(argv)
            args.text_ = text
        out = getattr(args, "out", None)
        if out is not None and (not out.isidentifier() or keyword.iskeyword(out)):
            raise UsageError(f"-o {out!r} is not a Python variable name.")
        return args

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
        """Refresh the cached agent names used by tab completion (after each magic)."""
        if self.town is not None:
            try:
                agents = self.town.agents()
                self.agent_names = sorted(a.name for a in agents)
                _NAME_OF.update((a.id, a.name) for a in agents)
            except Exception:  # completion is a nicety; never fail a magic over it
                pass
        return self.agent_names

    def _say(self, text: str) -> None:
        if self.feedback > 0:
            print(text)

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
        from . import widgets

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
    @argument("dir", nargs="?", help="town directory (default: TinytownMagics.default_dir)")
    @argument("--name", help="town name (default: from the directory or git branch)")
    @argument("--url", help="Redis URL to use instead of a private managed server")
    @_common
    def tt_init(self, line: str = "") -> Town:
        """Create a town (or connect to the one in DIR) and make it this kernel's default.

        Re-running is safe: an existing town is connected to, not re-created.
        ``--town DIR`` is the same as DIR. The town displays as a summary (directory,
        Redis, agents and tasks by state). Example: ``%tt_init demo-town --name demo``.
        """
        args = self._args(self.tt_init, line)
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
    @argument("name", help="agent name (letters, digits, '-', '_', '.')")
    @argument("--cli", help="CLI preset (claude, codex, aider, ...) or command line")
    @argument("--fn", metavar="FUNC", help="a function defined in the notebook to run each task")
    @argument("--role", help="role id (reviewer, researcher, ...)")
    @argument("--nickname", help="display nickname")
    @argument("--parent", metavar="AGENT", help="parent agent")
    @argument("--backlog", action="store_true", help="let the agent claim backlog tasks when idle")
    @argument("--replace", action="store_true", help="stop a live agent of that name and replace it")
    @argument("--max-rounds", type=int, metavar="N", help="stop after N rounds")
    @argument("--idle-timeout", type=float, metavar="S", help="stop after S idle seconds")
    @argument("--no-start", action="store_true",
              help="only register the agent (state starting); start no worker")
    @_common
    def tt_spawn(self, line: str = "") -> Agent:
        """Spawn an agent backed by a CLI worker process or a notebook function.

        A dead agent of that name is reused. Re-running the cell is fine: a live agent
        with the same --cli is returned as it is, and a function agent this kernel runs
        is restarted with the (perhaps edited) function; any other live agent of that name
        is refused unless --replace.
        Examples: ``%tt_spawn dev --cli claude``, ``%tt_spawn summarizer --fn summarize``.
        """
        args = self._args(self.tt_spawn, line)
        if args.cli and args.fn:
            raise UsageError("Give --cli or --fn, not both.")
        town = self._town(args)
        kwargs: dict[str, Any] = {"role": args.role, "nickname": args.nickname,
                                  "parent": args.parent, "replace": args.replace}
        if args.fn:
            fn = self._user_value(args.fn, "--fn")
            if not callable(fn):
                raise UsageError(f"--fn {args.fn!r} is a {type(fn).__name__}, not a function.")
            kwargs["fn"] = fn
        for key in ("backlog", "max_rounds", "idle_timeout"):
            if getattr(args, key) not in (None, False):
                kwargs[key] = getattr(args, key)
        if args.no_start:
            kwargs["start"] = False
        try:
            agent = town.spawn(args.name, args.cli, **kwargs)
        except AgentExists as exc:
            agent = self._rerun_spawn(town, args, kwargs, exc)
        return self._done(args, town, agent)

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
        args = self._args(func, line)
        town = self._town(args)
        return self._done(args, town, getattr(town, action)(args.agent))

    @line_magic
    @magic_arguments()
    @argument("agent", nargs="?", help="agent name, nickname or short id")
    @argument("--all", action="store_true", help="kill every agent that is not stopped")
    @_common
    def tt_kill(self, line: str = "") -> Any:
        """Stop an agent now (state ``stopped`` and a stop flag its worker obeys).

        Example: ``%tt_kill dev``; ``%tt_kill --all`` stops every agent (``tt stop``).
        """
        args = self._args(self.tt_kill, line)
        if bool(args.agent) == bool(args.all):
            raise UsageError("Give one AGENT or --all.")
        town = self._town(args)
        if args.all:
            return self._done(args, town, frames.agents_to_frame(town.stop_all()))
        return self._done(args, town, town.kill(args.agent))

    @line_magic
    @magic_arguments()
    @argument("agent", help="agent name, nickname or short id")
    @_common
    def tt_interrupt(self, line: str = "") -> Agent:
        """Pause an agent: it finishes its current task and starts nothing new. ``%tt_interrupt dev``"""
        return self._agent_action(self.tt_interrupt, line, "interrupt")

    @line_magic
    @magic_arguments()
    @argument("agent", help="agent name, nickname or short id")
    @_common
    def tt_resume(self, line: str = "") -> Agent:
        """Resume a paused agent. ``%tt_resume dev``"""
        return self._agent_action(self.tt_resume, line, "resume")

    @line_magic
    @magic_arguments()
    @argument("agent", help="agent name, nickname or short id")
    @_common
    def tt_close(self, line: str = "") -> Agent:
        """Let an agent finish its current work, then stop (``draining``). ``%tt_close dev``"""
        return self._agent_action(self.tt_close, line, "close")

    @line_magic
    @magic_arguments()
    @argument("agent", help="agent name, nickname or short id")
    @_common
    def tt_restart(self, line: str = "") -> Agent:
        """Restart a stopped agent (new worker, fresh round counters). ``%tt_restart dev``"""
        return self._agent_action(self.tt_restart, line, "restart")

    @line_magic
    @magic_arguments()
    @argument("--all", action="store_true", help="delete every agent, not only stopped/error ones")
    @_common
    def tt_prune(self, line: str = "") -> Any:
        """Delete stopped and error agents (all with --all) and their mailboxes; returns them.

        Their tasks stay. Example: ``%tt_prune``.
        """
        args = self._args(self.tt_prune, line)
        town = self._town(args)
        return self._done(args, town, frames.agents_to_frame(town.prune(all=args.all)))

    @line_magic
    @magic_arguments()
    @argument("--stale-after", type=float, default=120.0, metavar="S",
              help="a heartbeat older than S seconds means dead (default 120)")
    @_common
    def tt_recover(self, line: str = "") -> Any:
        """Mark agents whose worker died stopped and requeue their work: at once when its
        process on this machine is gone (e.g. a dead kernel's function agents), else after
        --stale-after seconds without a heartbeat.

        Example: ``%tt_recover``, ``%tt_recover --stale-after 30``.
        """
        args = self._args(self.tt_recover, line)
        town = self._town(args)
        result = town.recover(args.stale_after)
        if isinstance(result, list) and all(isinstance(a, Agent) for a in result):
            result = frames.agents_to_frame(result)
        return self._done(args, town, result)

    @line_magic
    @magic_arguments()
    @argument("--force", action="store_true", help="really delete (without it: say what would go)")
    @argument("--agents-only", action="store_true", help="keep tasks and the backlog")
    @_common
    def tt_reset(self, line: str = "") -> Any:
        """Delete the town's data in Redis (agents, tasks, messages, events).

        Without --force only says what would be deleted. Example: ``%tt_reset --force``.
        """
        args = self._args(self.tt_reset, line)
        town = self._town(args)
        if not args.force:
            n_agents, n_tasks = len(town.agents()), len(town.hashes("task"))
            what = f"{n_agents} agents and their mailboxes"
            if not args.agents_only:
                what += f", {n_tasks} tasks, the backlog and the event history"
            self._say(f"%tt_reset would delete {what} of town {town.name!r}. "
                      "Re-run with --force to do it.")
            return None
        deleted = town.reset(agents_only=args.agents_only)
        self._say(f"Deleted {deleted} keys of town {town.name!r}.")
        return self._done(args, town, deleted)

    # ---- tasks
    @line_cell_magic
    @magic_arguments()
    @argument("agent", help="agent name, nickname or short id")
    @argument("text", nargs="*", help="line form: the task text (the rest of the line)")
    @argument("--tags", metavar="A,B", help="comma-separated tags")
    @argument("--wait", action="store_true", help="block until the task is finished")
    @argument("--timeout", type=float, metavar="S", help="seconds to wait (with --wait)")
    @argument("--render", action="store_true",
              help="fill {{var}} from notebook variables (single braces stay)")
    @_common
    def tt_assign(self, line: str = "", cell: str | None = None) -> Task:
        """Assign a task: the cell body (``%%tt_assign AGENT``) or the rest of the line
        (``%tt_assign AGENT text...``) is the task text, verbatim (less the cell's last
        newline).

        Example::

            %%tt_assign dev --tags docs --wait
            Write the README's install section.
        """
        if cell is None:
            args = self._args(self.tt_assign, line, text_after=1)
            text = args.text_
            if not text.strip():
                raise UsageError("No task text. Write it after the agent name, or use "
                                 "%%tt_assign AGENT with the text in the cell body.")
        else:
            args = self._args(self.tt_assign, line)
            if args.text:
                raise UsageError(f"Unexpected {' '.join(args.text)!r} after the agent name: "
                                 "in %%tt_assign the task text is the cell body.")
            text = cell[:-1] if cell.endswith("\n") else cell  # IPython adds the final newline
            if not text.strip():
                raise UsageError("The cell body is empty: write the task text below "
                                 "%%tt_assign AGENT.")
        if args.timeout is not None and not args.wait:
            raise UsageError("--timeout only applies with --wait.")
        if args.render:
            text = self._render(text)
        tags = [t for t in (args.tags or "").split(",") if t.strip()]
        town = self._town(args)
        task = town.assign(args.agent, text, tags=tags)
        if args.wait:
            timeout = args.timeout if args.timeout is not None else self.wait_timeout
            town.wait(task=task.id, timeout=timeout)
            task = town.task(task.id)
        return self._done(args, town, task)

    @line_magic
    @magic_arguments()
    @argument("--state", help="only tasks in this state (pending, assigned, running, ...)")
    @argument("--agent", help="only tasks assigned to this agent")
    @_common
    def tt_tasks(self, line: str = "") -> Any:
        """Tasks as a DataFrame, oldest first. Example: ``%tt_tasks --state completed``."""
        args = self._args(self.tt_tasks, line)
        town = self._town(args)
        return self._done(args, town, frames.tasks_frame(town, state=args.state, agent=args.agent))

    @line_magic
    @magic_arguments()
    @argument("action", choices=["add", "list", "claim", "assign-all", "remove"],
              help="add TEXT | list | claim TASK AGENT | assign-all AGENT | remove TASK")
    @argument("args", nargs="*", help="the action's arguments (the text, for add)")
    @argument("--tags", metavar="A,B", help="comma-separated tags (add)")
    @_common
    def tt_backlog(self, line: str = "") -> Any:
        """The town's backlog of unassigned tasks.

        Examples: ``%tt_backlog add --tags ops Triage the open issues``,
        ``%tt_backlog list``, ``%tt_backlog claim 3f2a dev``, ``%tt_backlog assign-all dev``.
        """
        args = self._args(self.tt_backlog, line, text_after=1, check_text=False)
        if args.action == "add":
            args = self._args(self.tt_backlog, line, text_after=1)  # refuses options after TEXT
            if not args.text_.strip():
                raise UsageError("No task text: %tt_backlog add [--tags A,B] TEXT")
        else:
            args = self._args(self.tt_backlog, line)
            if args.tags:
                raise UsageError("--tags only applies to %tt_backlog add.")
        town = self._town(args)
        need = {"list": 0, "claim": 2, "assign-all": 1, "remove": 1}
        if args.action != "add" and len(args.args) != need[args.action]:
            usage = {"list": "list", "claim": "claim TASK AGENT", "assign-all": "assign-all AGENT",
                     "remove": "remove TASK"}[args.action]
            raise UsageError(f"Usage: %tt_backlog {usage}")
        if args.action == "add":
            tags = [t for t in (args.tags or "").split(",") if t.strip()]
            result: Any = town.backlog_add(args.text_, tags=tags)
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
    @argument("agent", nargs="?", help="agent to wait for (until it is idle with nothing "
                                         "queued, or stopped)")
    @argument("--task", metavar="ID", help="wait until this task is finished")
    @argument("--all", action="store_true", help="wait until every task is finished")
    @argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    @_common
    def tt_wait(self, line: str = "") -> Any:
        """Block with a progress bar until an agent is idle (or stopped), a task finishes,
        or all tasks finish; returns the Agent, the Task or the list of tasks.

        Raises WaitTimeout after --timeout (default TinytownMagics.wait_timeout).
        Examples: ``%tt_wait --task 3f2a``, ``%tt_wait --all --timeout 60``.
        """
        args = self._args(self.tt_wait, line)
        if sum(map(bool, (args.agent, args.task, args.all))) != 1:
            raise UsageError("Give exactly one of AGENT, --task ID or --all.")
        timeout = args.timeout if args.timeout is not None else self.wait_timeout
        if timeout < 0:
            raise UsageError(f"--timeout must be seconds >= 0, got {timeout:g}.")
        town = self._town(args)
        result = _wait_with_progress(town, args.agent, args.task, args.all, timeout)
        return self._done(args, town, result)

    # ---- messages
    @line_magic
    @magic_arguments()
    @argument("to", help="recipient agent (or supervisor)")
    @argument("text", nargs="*", help="the message (the rest of the line, verbatim)")
    @argument("--urgent", action="store_true", help="to the urgent list, read first")
    @argument("--query", action="store_true", help="a question")
    @argument("--info", action="store_true", help="an informational note")
    @argument("--ack", action="store_true", help="an acknowledgement")
    @argument("--from", dest="sender", metavar="AGENT", help="sender (default: supervisor)")
    @_common
    def tt_send(self, line: str = "") -> Message:
        """Send a message to an agent. Options go before the text.

        Example: ``%tt_send --urgent dev Stop what you're doing and rebase``.
        """
        args = self._args(self.tt_send, line, text_after=1)
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
    @argument("agent", nargs="?", help="whose inbox")
    @argument("--all", action="store_true", help="every agent's inbox and the supervisor's")
    @_common
    def tt_inbox(self, line: str = "") -> Any:
        """Waiting messages (not taken) as a DataFrame. ``%tt_inbox dev`` or ``%tt_inbox --all``."""
        args = self._args(self.tt_inbox, line)
        if bool(args.agent) == bool(args.all):
            raise UsageError("Give one AGENT or --all.")
        town = self._town(args)
        return self._done(args, town, frames.inbox_frame(town, None if args.all else args.agent))

    # ---- looking
    @line_magic
    @magic_arguments()
    @_common
    def tt_agents(self, line: str = "") -> Any:
        """Agents as a DataFrame (state, waiting messages, counters). ``%tt_agents``"""
        args = self._args(self.tt_agents, line)
        town = self._town(args)
        return self._done(args, town, frames.agents_frame(town))

    @line_magic
    @magic_arguments()
    @_common
    def tt_status(self, line: str = "") -> Any:
        """Agents and tasks counted by state, backlog and waiting messages. ``%tt_status``"""
        args = self._args(self.tt_status, line)
        town = self._town(args)
        return self._done(args, town, frames.status_frame(town))

    @line_magic
    @magic_arguments()
    @argument("-n", type=int, default=20, help="how many events (default 20)")
    @argument("--after", metavar="ID", help="start after this stream id (default: the start)")
    @argument("--agent", help="only this agent's events")
    @_common
    def tt_events(self, line: str = "") -> Any:
        """Events from the start of the town's stream (or after --after), oldest first.

        Example: ``%tt_events -n 50``.
        """
        args = self._args(self.tt_events, line)
        town = self._town(args)
        return self._done(args, town, frames.events_frame(
            town, args.n, agent=args.agent, after=args.after or "0-0"))

    @line_magic
    @magic_arguments()
    @argument("-n", type=int, default=30, help="how many events (default 30)")
    @argument("--agent", help="only this agent's events")
    @_common
    def tt_history(self, line: str = "") -> Any:
        """The last N events, oldest first (``tt history``). ``%tt_history -n 10``"""
        args = self._args(self.tt_history, line)
        town = self._town(args)
        return self._done(args, town, frames.events_frame(town, args.n, agent=args.agent))

    @line_magic
    @magic_arguments()
    @argument("task", help="task id (full, or a unique prefix of 4+ characters)")
    @_common
    def tt_log(self, line: str = "") -> Any:
        """What a task printed while it ran (a function agent's prints, a CLI's output tail),
        as a list of lines. ``%tt_log 3f2a``"""
        args = self._args(self.tt_log, line)
        town = self._town(args)
        return self._done(args, town, town.task_log(args.task))

    @line_magic
    @magic_arguments()
    @argument("--until", choices=["done", "idle"], default="done",
              help="done: no task pending/assigned/running; idle: no task assigned/running, "
                   "no agent working/draining")
    @argument("--timeout", type=float, metavar="S", help="give up after S seconds")
    @_common
    def tt_watch(self, line: str = "") -> Any:
        """Block with a progress bar until the town is done (or idle); returns the final
        %tt_status frame, so a headless run records the end state.

        Example: ``%tt_watch --until idle --timeout 120``.
        """
        from .widgets import watch

        args = self._args(self.tt_watch, line)
        town = self._town(args)
        timeout = args.timeout if args.timeout is not None else self.wait_timeout
        return self._done(args, town, watch(town, args.until, timeout))

    @line_magic
    @magic_arguments()
    @_common
    def tt_view(self, line: str = "") -> Any:
        """The live dashboard (TownView) of the town. ``%tt_view``

        One live view per town: running it again (re-running its cell) stops the previous
        view's watcher; for several at once, make ``TownView(town)`` objects yourself.
        """
        from .widgets import TownView

        args = self._args(self.tt_view, line)
        town = self._town(args)
        for old in [v for v in self.views if v.town is town]:
            old.close()  # its output was most likely just replaced: no thread left behind
            self.views.remove(old)
        view = TownView(town)
        self.views.append(view)
        return self._done(args, town, view)


# --------------------------------------------------------------------------- extension

_loaded: dict[int, tuple[TinytownMagics, list[tuple[str, Any]], list[tuple[Any, type, Any]]]] = {}


def _complete_agents(shell: Any, event: Any) -> list[str]:
    """Agent names from the cache (no Redis call here); subcommands for %tt_backlog."""
    entry = _loaded.get(id(shell))
    if entry is None:
        return []
    names = list(entry[0].agent_names)
    words = event.line.split()
    if words and words[0].lstrip("%") == "tt_backlog" and len(words) <= 2 and not event.line.endswith(" "):
        return ["add", "list", "claim", "assign-all", "remove"]
    return names + (["supervisor"] if words and words[0].lstrip("%") == "tt_send" else [])


#: ``[TARGET =] %tt_NAME ARGS?``: a line magic whose text ends in ``?`` (not ``%tt_send?``).
_HELP_END = re.compile(r"(?P<indent>[ \t]*)(?P<target>[A-Za-z_][\w.]*[ \t]*=[ \t]*)?"
                       r"%(?P<name>tt_\w+)[ \t]+(?P<args>\S.*?\?)[ \t]*")


def _lines_in_tokens(lines: list[str]) -> set[int]:
    """Indices of the lines that continue a token begun on an earlier line (the inside
    and end of a triple-quoted string): they are text, not magics."""
    from IPython.core.inputtransformer2 import make_tokens_by_line

    inside: set[int] = set()
    for tokens in make_tokens_by_line(lines):
        for tok in tokens:
            if tok.end[0] > tok.start[0]:  # 1-based rows
                inside.update(range(tok.start[0], tok.end[0]))
    return inside


def question_mark_magics(lines: list[str]) -> list[str]:
    """Input transformer (``shell.input_transformers_cleanup``): a ``%tt_*`` line magic
    whose text ends in ``?`` runs, instead of IPython taking the line for a help request
    on its last word (``%tt_send dev ready?`` → ``Object `ready` not found.``).

    Rewrites ``[TARGET =] %tt_NAME ARGS?`` (ARGS not empty) to the call IPython makes for
    any other magic line; ``%tt_send?`` and ``%tt_send??`` still show help, and cell
    magics (``%%...``), other lines and lines inside a multi-line string are left alone.

    >>> question_mark_magics(["%tt_send dev ready?\\n"])
    ["get_ipython().run_line_magic('tt_send', 'dev ready?')\\n"]
    """
    if not lines or lines[0].startswith("%%"):
        return lines
    found = []
    for i, line in enumerate(lines):
        if "%tt_" in line and "?" in line:
            body = line.rstrip("\r\n")
            m = _HELP_END.fullmatch(body)
            if m and m.group("name") in TinytownMagics.magics["line"]:
                found.append((i, m, line[len(body):]))
    if not found:
        return lines
    inside = _lines_in_tokens(lines)
    out = list(lines)
    for i, m, end in found:
        if i not in inside:
            out[i] = (f"{m.group('indent')}{m.group('target') or ''}get_ipython()."
                      f"run_line_magic({m.group('name')!r}, {m.group('args')!r}){end}")
    return out


def load_ipython_extension(ip: Any) -> TinytownMagics:
    """``%load_ext tinytown_nb``: register the magics, completers, the ``?``-ending line
    transformer, the record reprs and the Town summary."""
    if id(ip) in _loaded:
        return _loaded[id(ip)][0]
    magics = TinytownMagics(ip)
    ip.register_magics(magics)
    hooks = []
    for name in AGENT_MAGICS:
        for key in (f"%{name}", f"%%{name}"):
            ip.set_hook("complete_command", _complete_agents, str_key=key)
            hooks.append((key, _complete_agents))
    formats = []
    for mime, fn in (("text/html", _record_html), ("text/plain", _record_text)):
        formatter = ip.display_formatter.formatters[mime]
        for typ in (Agent, Task, Message):
            formats.append((formatter, typ, formatter.for_type(typ, fn)))
    for mime, fn in (("text/html", _town_html), ("text/plain", _town_text)):
        formatter = ip.display_formatter.formatters[mime]
        formats.append((formatter, Town, formatter.for_type(Town, fn)))
    if question_mark_magics not in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.append(question_mark_magics)
    _loaded[id(ip)] = (magics, hooks, formats)
    return magics


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext tinytown_nb``: stop views and watchers, close connections, unregister."""
    entry = _loaded.pop(id(ip), None)
    if entry is None:
        return
    magics, hooks, formats = entry
    magics.close()
    while question_mark_magics in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.remove(question_mark_magics)
    dispatch = ip.strdispatchers.get("complete_command")
    for key, fn in hooks:
        chain = dispatch.strs.get(key) if dispatch is not None else None
        if chain is not None:
            chain.chain = [(p, f) for p, f in chain.chain if getattr(f, "__func__", f) is not fn]
            if not chain.chain:
                del dispatch.strs[key]
    for formatter, typ, old in formats:
        formatter.pop(typ, None)
        if old is not None:
            formatter.for_type(typ, old)
    for kind in ("line", "cell"):
        table = ip.magics_manager.magics[kind]
        for name in list(table):
            if name.startswith("tt_") and getattr(table[name], "__self__", None) is magics:
                del table[name]
    ip.configurables[:] = [c for c in ip.configurables if c is not magics]
