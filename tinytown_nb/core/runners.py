"""How one piece of work is run: by a command line (CLI agents) or a Python function.

The worker loop (:mod:`.worker`) takes a message, records the start, calls
``runner.run(work)`` and records the :class:`Outcome`. A runner knows nothing about Redis
state; it only turns work into a result or an error.

*CLI agents* run their command once per message, argv from ``shlex.split`` (never a shell
string; the task text never enters a command line). Named CLIs (``[agent_clis]`` presets
such as ``claude``, ``codex``, ``aider``) get the markdown prompt of :mod:`.prompt` on stdin
(``auggie``: ``--instruction-file <file>``; ``aider``: ``--message-file <file>``). Any other
command line ("command agent") gets the raw task text on stdin.

The command runs in its own process group through :class:`~.process_run.ProcessRun`: what
it prints (stdout and stderr, line by line as it comes; a partial line after half a second)
goes to ``emit`` — the worker pushes it to the task log within about a second — and to the
round log ``.tt/logs/<name>_round_<N>.log`` (stdout verbatim, stderr lines prefixed
``[stderr] ``, interleaved). ``claude`` and ``codex`` presets are asked for their
machine-readable stream at run time (:func:`~.cli_streams.stream_command`; the preset text
in ``tinytown.toml`` is unchanged): the task log then shows readable lines (assistant text,
one line per tool call, the result), never raw JSON, and the run's result, error and usage
come from the stream. A CLI version that refuses those flags
(:func:`~.cli_streams.rejected_flags`) is run again without them, and that agent's runner
keeps to plain output from then on (the outcome says so: ``Outcome.fallback``).

What an exit means:

* the task became terminal while the command ran (it called ``ttnb task complete``):
  that report wins (the worker's step is refused);
* a stream that reported an error (claude ``is_error``, a failed codex turn): failed, with
  the CLI's error text;
* exit 0: completed, the result is the stream's final result (claude) or last agent
  message (codex), else stdout (trimmed; the last 64 KiB if longer; ``Completed`` if empty);
* any other exit (or killed by a signal, or not startable): failed, the error is the exit
  status and the tail of stderr (stdout when stderr is empty);
* ``timeout`` (``Work.timeout``) or ``silence_timeout`` (no output for that long) expired:
  the group gets SIGTERM, then SIGKILL after ``KILL_GRACE`` s; failed with ``timed out
  after S s (attempt N)`` or ``no output for S s (attempt N)``.

The worker decides what a failure leads to (a retry, see :mod:`.worker.loop`). The command
runs in the agent's git worktree when it has one (``spawn(worktree=True)``), else in its
preset's ``workdir`` or the town root, with ``TINYTOWN_AGENT_ID``, ``TINYTOWN_AGENT_NAME``,
``TINYTOWN_TOWN_DIR``, ``TINYTOWN_RUN_ID`` and, for a task, ``TINYTOWN_TASK_ID`` set (and this
Python's ``bin`` directory on ``PATH``, so ``ttnb`` works). A task that waited for others
(``after=``) also gets ``TINYTOWN_TASK_INPUTS``: the path of a JSON file ``{"<dependency
id>": "<its result>", …}`` (in the order given, results whole), written before the run and
deleted after it.

*Function agents* call ``fn(task)`` or ``fn(task, ctx)`` (when the function takes a second
parameter; ``ctx.workdir`` is the directory to work in: the agent's worktree, else the town
root — the process's own working directory is never changed) in the worker's thread;
``async def`` functions run on the thread's own event loop; ``task.inputs`` holds the
results of the tasks it waited for (``{dependency id: result}``, in the order given).
``str()`` of the return value is the result (``None`` ⇒ ``Completed``); an exception
fails the task with ``TypeName: message``. What the function prints goes to the task log
(live, about once a second; only the last ``TASK_LOG_MAX`` = 1000 lines are kept). With a
time limit (``Work.timeout``) the task fails at its deadline: an ``async def`` is cancelled
there; a plain function runs in a helper thread, which Python cannot stop — it runs on,
its late return value is discarded (a line in the task log says so; the failure stands)
and the agent goes on with its next message meanwhile. ``ctx.usage(...)`` reports tokens
and cost (summed over the calls of one run).

Example::

    >>> runner = FunctionRunner(lambda task: task.description.upper())
    >>> agent, task = Agent.new("upper", "fn:<lambda>"), Task.new("Summarize this")
    >>> work = Work(Message.task_assign(task.id, sender=agent.id, to=agent.id), task, 1, agent)
    >>> runner.run(work).result
    'SUMMARIZE THIS'
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import os
import shlex
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .capture import captured
from .cli_streams import MAX_PARSE, PlainStream, rejected_flags, stream_command
from .config import TownConfig, resolve_cli_command
from .errors import ConfigError
from .models import Agent, Message, Task
from .paths import write_private
from .process_run import LINE_MAX, ProcessRun, RunResult
from .prompt import build_prompt
from .store import Store
from .usage import Usage

ERROR_TAIL = 4000  # characters of stderr kept as a task error
LOG_LINES = 500  # output lines a CLI run returns in its outcome when nobody takes them live
TASK_LOG_MAX = 1000  # lines kept per task log (a function's prints: the last ones)
KEEP_ROUND_LOGS = 50  # per-round log files kept per agent
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when a run is stopped
PARTIAL_FLUSH = 0.5  # seconds after which a partial output line is shown


@dataclass
class Work:
    """One message to act on: a ``task_assign`` (with its task) or a free-text message."""

    message: Message
    task: Task | None
    round: int
    agent: Agent
    backlog: list[Task] = field(default_factory=list)
    backlog_total: int = 0
    max_rounds: int | None = None
    notes: list[str] = field(default_factory=list)  # ``category|summary`` since the last prompt
    run_id: str | None = None  # recorded before the run starts; its command's environment has it
    timeout: float | None = None  # seconds this attempt may take (None: no limit)
    silence_timeout: float | None = None  # seconds without output that end a command's run
    attempt: int = 1  # which attempt of the task this is (1 unless retried)
    note: Callable[[str], None] | None = None  # appends a line to the task log at once (late)
    inputs: list[Task] = field(default_factory=list)  # the tasks it waited for, in the order given

    @property
    def text(self) -> str:
        """What to do: the task description, or the message text."""
        return self.task.description if self.task is not None else self.message.text


@dataclass
class Outcome:
    """What came of a run: ``ok`` with a result, or not with an error text."""

    ok: bool
    result: str
    log: list[str] = field(default_factory=list)
    cancelled: bool = False  # stopped by kill/shutdown before it finished: redo it later
    usage: Usage | None = None  # tokens and cost the run reported
    fallback: str | None = None  # the CLI refused the stream flags: why it now runs plain


def _tail(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"[… {len(text) - limit} characters cut]\n" + text[-limit:]


INPUTS_VAR = "TINYTOWN_TASK_INPUTS"  # names the JSON file of a task's inputs


def write_inputs(path: str | None, inputs: list[Task]) -> Path | None:
    """Write the inputs file of a run (``{dependency id: result}``, in order); None when
    there is nothing to write."""
    if path is None:
        return None
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, json.dumps({t.id: t.result or "" for t in inputs}, ensure_ascii=False))
    return target


# --------------------------------------------------------------------------- commands


def command_argv(config: TownConfig, cli: str, name: str = "", cwd: Path | None = None) -> list[str]:
    """argv of a CLI reference (preset name or command line); ConfigError when it cannot be
    parsed or its program is not installed (a relative program path is looked for in
    ``cwd``, default the preset's ``workdir`` or the town root).

    >>> command_argv(TownConfig.new("/tmp/t", "t"), "python3 my_bot.py")
    ['python3', 'my_bot.py']
    """
    command = resolve_cli_command(cli, config)
    who = f" of agent {name!r}" if name else ""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"Cannot parse the command{who} ({command!r}): {exc}. Fix its quoting.") from None
    if not argv:
        raise ConfigError(f"The command{who} is empty; give cli='a command' or fn=a_function.")
    spec = config.agent_clis.get(cli)
    if cwd is None:
        cwd = Path(config.root) / spec.workdir if spec and spec.workdir else Path(config.root)
    program = argv[0]
    found = (os.access(cwd / program, os.X_OK) if os.sep in program
             else shutil.which(program) is not None)
    if not found:
        raise ConfigError(f"Cannot run {cli!r}{who}: {program!r} is not installed (not on PATH). "
                          "Install it, or spawn with another cli=... or fn=... (start=False only "
                          "registers the agent).")
    return argv


def _resolved(argv: list[str], cwd: Path) -> list[str]:
    """argv with its program as an absolute path (found once, not on every run)."""
    program = argv[0]
    full = str(cwd / program) if os.sep in program else shutil.which(program)
    return [os.path.abspath(full) if full else program, *argv[1:]]


class CommandRunner:
    """Runs a command line per message (CLI agents and command agents)."""

    kind = "process"

    def __init__(self, store: Store, agent: Agent, *, own_process: bool = False,
                 workdir: Path | None = None, branch: str | None = None):
        self.store = store
        self.agent = agent
        cli = store.config.agent_clis.get(agent.cli)
        self.preset = cli is not None  # a named AI CLI gets the prompt
        self.cli_name = agent.cli
        self.env = dict(cli.env) if cli else {}
        # the agent's git worktree (on ``branch``) wins over the preset's workdir
        self.cwd = Path(workdir) if workdir is not None else (
            (store.root / cli.workdir) if cli and cli.workdir else store.root)
        self.branch = branch if workdir is not None else None
        self.argv = _resolved(command_argv(store.config, agent.cli, agent.name, self.cwd), self.cwd)
        # claude/codex presets: the argv that streams JSONL, and its parser
        self.stream_argv, self.parser = (stream_command(self.cli_name, self.argv) if self.preset
                                         else (self.argv, PlainStream))
        self.streaming = self.parser is not PlainStream
        store.paths.logs.mkdir(parents=True, exist_ok=True)
        self._run: ProcessRun | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._base: dict[str, str] | None = None
        self.own_process = own_process  # the worker process is ours: use os.environ

    def _invocation(self, work: Work, streaming: bool) -> tuple[list[str], str, Path | None]:
        """argv, stdin text and the prompt file (to delete afterwards) for one run."""
        if not self.preset:
            return list(self.argv), work.text, None
        prompt = build_prompt(town=self.store.name, agent=work.agent, message=work.message,
                              task=work.task, backlog=work.backlog,
                              backlog_total=work.backlog_total, round=work.round,
                              max_rounds=work.max_rounds, notes=work.notes, branch=self.branch,
                              inputs=work.inputs, inputs_file=self._inputs_path(work))
        if self.cli_name not in ("auggie", "aider"):
            return list(self.stream_argv if streaming else self.argv), prompt, None
        path = self.store.paths.prompt_file(self.agent.name)
        write_private(path, prompt)
        argv = list(self.argv)
        if self.cli_name == "aider":
            if argv[-1] == "--message":
                argv.pop()
            return argv + ["--message-file", str(path)], "", path
        return argv + ["--instruction-file", str(path)], "", path

    def _base_environment(self) -> dict[str, str]:
        env = {**self.env,
               "TINYTOWN_AGENT_ID": self.agent.id, "TINYTOWN_AGENT_NAME": self.agent.name,
               "TINYTOWN_TOWN_DIR": str(self.store.root), "TINYTOWN_TOWN_NAME": self.store.name}
        bindir = os.path.dirname(sys.executable)  # so `ttnb` resolves without an activated venv
        path = env.get("PATH", os.environ.get("PATH", ""))
        if bindir not in path.split(os.pathsep):
            env["PATH"] = bindir + os.pathsep + path
        return env

    def _environment(self, work: Work) -> dict[str, str] | None:
        """The command's environment; in a worker process of its own, ``os.environ`` itself
        (set up once), which spares encoding the whole environment for every run."""
        per_run = {"TINYTOWN_TASK_ID": work.task.id if work.task is not None else None,
                   procs.RUN_ID_VAR: work.run_id, INPUTS_VAR: self._inputs_path(work)}
        if self.own_process:
            if self._base is None:
                self._base = self._base_environment()
                os.environ.update(self._base)
            target: Any = os.environ
        else:
            target = {**os.environ, **self._base_environment()}
        for name, value in per_run.items():
            if value:
                target[name] = value
            else:
                target.pop(name, None)
        return None if self.own_process else target

    def _inputs_path(self, work: Work) -> str | None:
        """Where the run's inputs file is (written by :meth:`run`), or None without inputs."""
        if not work.inputs or work.task is None:
            return None
        return str(self.store.paths.inputs_file(work.task.id))

    def _log_path(self, round_: int) -> Path:
        """This round's log file, empty (the oldest one recycled: renaming and truncating
        it is far cheaper than a new file)."""
        paths = self.store.paths
        log_path = paths.round_log(self.agent.name, round_)
        if round_ > KEEP_ROUND_LOGS:
            try:
                os.replace(paths.round_log(self.agent.name, round_ - KEEP_ROUND_LOGS), log_path)
            except FileNotFoundError:
                pass
        try:
            os.truncate(log_path, 0)
        except FileNotFoundError:
            pass  # the run creates it
        return log_path

    def run(self, work: Work, emit: Callable[[str], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> Outcome:
        """Run the command once (again without the stream flags if the CLI refuses them);
        see the module docstring for what the exit means. Output lines go to ``emit`` as
        they come (else the last ``LOG_LINES`` are the outcome's log); ``on_start(pid)`` is
        called as soon as the command exists."""
        log_path = self._log_path(work.round)
        streaming = self.streaming
        inputs_file = write_inputs(self._inputs_path(work), work.inputs)
        try:
            outcome, rejected = self._run_once(work, emit, on_start, streaming, log_path)
            if rejected:
                self.streaming = False
                why = (outcome.result.strip().splitlines() or [""])[-1][:160]
                outcome, _ = self._run_once(work, emit, on_start, False, log_path)
                outcome.fallback = (f"{self.cli_name} refused the machine-readable output flags "
                                    f"({why}); this agent now runs it with plain output")
        finally:
            if inputs_file is not None:
                inputs_file.unlink(missing_ok=True)
        with self._lock:
            cancelled, self._cancelled = self._cancelled, False
        if cancelled:
            outcome.cancelled = True
        return outcome

    def _run_once(self, work: Work, emit: Callable[[str], None] | None,
                  on_start: Callable[[int], None] | None, streaming: bool,
                  log_path: Path) -> tuple[Outcome, bool]:
        """One run; the outcome, and whether the CLI refused the stream flags."""
        argv, stdin_text, prompt_file = self._invocation(work, streaming)
        parser = self.parser() if streaming else None
        tail: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        show = emit if emit is not None else tail.append

        def on_line(stream: str, text: str) -> None:
            if parser is not None and stream == "stdout":
                for line in parser.feed(text):
                    show(line)
            else:
                show(text)

        proc = ProcessRun(argv, cwd=self.cwd, env=self._environment(work), stdin=stdin_text,
                          log_path=log_path, on_line=on_line, timeout=work.timeout,
                          silence_timeout=work.silence_timeout, kill_grace=KILL_GRACE,
                          # JSONL lines reach the parser whole: no partial flush, no split
                          partial_flush=None if parser else PARTIAL_FLUSH,
                          line_max=MAX_PARSE if parser else LINE_MAX, on_start=on_start)
        with self._lock:
            self._run = proc
            if self._cancelled:
                proc.cancel()  # before it starts: it never does
        try:
            result = proc.wait()
        finally:
            with self._lock:
                self._run = None
            if prompt_file is not None:
                prompt_file.unlink(missing_ok=True)
        streamed = parser.finish() if parser is not None else None
        if streamed is not None and result.ended == "exit" and rejected_flags(
                result.returncode or 0, result.duration, streamed.saw_stream, result.stderr_tail):
            return Outcome(False, result.stderr_tail, list(tail)), True
        # a CLI that printed no line of the format (a wrapper, an odd version) is read as
        # plain output: its stdout is its result
        outcome = self._outcome(argv, result, streamed if streamed and streamed.saw_stream else None,
                                work.attempt)
        outcome.log = list(tail)
        outcome.usage = streamed.usage if streamed is not None else None
        return outcome, False

    @staticmethod
    def _outcome(argv: list[str], result: RunResult, streamed: Any, attempt: int) -> Outcome:
        """What a finished run means (see the module docstring)."""
        name = os.path.basename(argv[0])
        if result.ended == "not_started":
            return Outcome(False, f"Could not start {argv[0]!r}: {result.start_error}. "
                                  "Install it or spawn the agent with another cli.")
        if result.ended == "cancelled":
            return Outcome(False, "cancelled", cancelled=True)
        if result.ended == "timeout":
            return Outcome(False, f"{name} timed out after {result.limit:g} s (attempt {attempt}); "
                                  "it was stopped")
        if result.ended == "silence":
            return Outcome(False, f"{name}: no output for {result.limit:g} s (attempt {attempt}); "
                                  "it was stopped")
        out_text, err_text = result.stdout_tail, result.stderr_tail
        if streamed is not None and streamed.is_error:
            detail = streamed.error or f"{name} reported an error"
            return Outcome(False, detail if result.ok else f"{detail} ({result.status})")
        if result.ok:
            if streamed is not None:  # never raw JSON as a result
                return Outcome(True, streamed.result or "Completed")
            return Outcome(True, out_text.strip() or "Completed")
        detail = _tail(err_text or ("" if streamed is not None else out_text), ERROR_TAIL)
        return Outcome(False, f"{name} failed ({result.status})" + (f": {detail}" if detail else ""))

    @property
    def pid(self) -> int | None:
        """The running command's pid (also its process group), if one runs."""
        run = self._run
        return run.pid if run is not None else None

    def cancel(self) -> None:
        """Stop a running command (its whole process group): SIGTERM, then SIGKILL."""
        with self._lock:
            self._cancelled = True
            run = self._run
        if run is not None:
            run.cancel()

    def close(self) -> None:
        """Nothing to close (each run closes its own pipes and files)."""


# --------------------------------------------------------------------------- functions


class AgentContext:
    """What a function agent gets as its second argument: ``town``, ``agent``, ``task``,
    ``message``, ``workdir`` (its git worktree, else the town root), ``send``, ``inbox``,
    ``usage``.

    >>> def triage(task, ctx):
    ...     ctx.send("reviewer", f"Please review: {task.description}")
    ...     return "sent for review"
    """

    def __init__(self, town: Any, agent: Agent, work: Work, workdir: Path | None = None):
        self.town = town  # the Town facade (the whole API), handed down by whoever spawned
        self.agent = agent
        self.task = work.task
        self.message = work.message
        #: the directory to work in: the agent's git worktree, else the town root (None
        #: only for a runner made without a town); the process's cwd is never changed
        self.workdir = workdir
        self.reported: Usage | None = None  # what usage() was told during this run

    def usage(self, input_tokens: int = 0, output_tokens: int = 0, cost_usd: float | None = None,
              model: str | None = None, *, cache_creation_tokens: int = 0,
              cache_read_tokens: int = 0, turns: int | None = None) -> Usage:
        """Report tokens and cost this run used (e.g. of an LLM API the function called);
        calls add up, and the sum is recorded with the task's outcome. Bad values (negative
        tokens, NaN or negative cost) raise ConfigError at once. Returns the sum so far.

        >>> def summarize(task, ctx):
        ...     ctx.usage(input_tokens=1200, output_tokens=300, cost_usd=0.004, model="m")
        ...     return "summary"
        """
        report = Usage.validated(input_tokens, output_tokens, cache_creation_tokens,
                                 cache_read_tokens, cost_usd, turns, model)
        self.reported = report if self.reported is None else self.reported + report
        return self.reported

    def send(self, to: Any, text: str, *, kind: str = "task", urgent: bool = False) -> Message:
        """Send a message from this agent (``kind``: task, query, info or ack)."""
        return self.town.send(to, text, kind=kind, urgent=urgent, sender=self.agent.id)

    def inbox(self) -> list[Message]:
        """Messages waiting for this agent, without taking them."""
        return self.town.inbox(self.agent.id)

    def __repr__(self) -> str:
        return f"<AgentContext {self.agent.name} task={self.task.id if self.task else None}>"


def _wants_context(fn: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class FunctionRunner:
    """Calls a Python function (plain or ``async def``) per message, in the worker thread."""

    kind = "function"
    pid = None  # runs in this process: no command to track

    def __init__(self, fn: Callable[..., Any], town: Any = None, workdir: Path | None = None):
        if not callable(fn):
            raise ConfigError(f"fn must be a function, got {type(fn).__name__}.")
        self.fn = fn
        self.town = town
        self.workdir = workdir  # ``ctx.workdir``
        self.wants_context = _wants_context(fn)
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, work: Work, emit: Callable[[str], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> Outcome:
        """Call the function; its prints go to ``emit`` (and the outcome's log: the last
        ``TASK_LOG_MAX`` lines). With ``work.timeout`` the call is bounded (see the module
        docstring). (``on_start`` is unused: no command is started.)"""
        log: collections.deque[str] = collections.deque(maxlen=TASK_LOG_MAX)
        late = threading.Event()  # past the deadline: what it prints now goes to work.note

        def sink(line: str) -> None:
            if late.is_set():
                if work.note is not None:
                    work.note(line)
                return
            log.append(line)
            if emit is not None:
                emit(line)

        task = work.task if work.task is not None else Task.new(
            work.message.text, id=work.message.id)
        if work.inputs:
            task.with_inputs({t.id: t.result or "" for t in work.inputs})
        ctx = AgentContext(self.town, work.agent, work, self.workdir)
        args = (task, ctx) if self.wants_context else (task,)
        if work.timeout is not None and not _is_async(self.fn):
            return self._bounded(args, work, ctx, sink, late, log)
        with captured(sink):
            try:
                value = self.fn(*args)
                if inspect.isawaitable(value):
                    if self._loop is None:
                        self._loop = asyncio.new_event_loop()
                    if work.timeout is not None:
                        value = self._loop.run_until_complete(_within(value, work.timeout))
                    else:
                        value = self._loop.run_until_complete(value)
            except _Deadline:
                return Outcome(False, _timed_out(work), list(log))
            except BaseException as exc:  # noqa: BLE001 — any failure of user code fails the task
                if isinstance(exc, KeyboardInterrupt):
                    raise
                print("".join(traceback.format_exception(exc)).rstrip())
                return Outcome(False, f"{type(exc).__name__}: {exc}", list(log), usage=ctx.reported)
        return Outcome(True, "Completed" if value is None else str(value), list(log),
                       usage=ctx.reported)

    def _bounded(self, args: tuple[Any, ...], work: Work, ctx: AgentContext,
                 sink: Callable[[str], None], late: threading.Event,
                 log: collections.deque[str]) -> Outcome:
        """A plain function with a deadline: called in a helper thread; past the deadline
        the task fails and the helper is left to finish (its value discarded)."""
        lock = threading.Lock()
        box: dict[str, Any] = {}
        started = time.monotonic()

        def call() -> None:
            with captured(sink):
                try:
                    value = self.fn(*args)
                    if inspect.isawaitable(value):
                        value = asyncio.run(value)
                    got: dict[str, Any] = {"value": value}
                except BaseException as exc:  # noqa: BLE001 — reported like any failure
                    print("".join(traceback.format_exception(exc)).rstrip())
                    got = {"error": exc}
            with lock:
                if not late.is_set():
                    box.update(got)
                    return
            if work.note is not None:  # the task failed at its deadline: say what came late
                what = (f"raised {type(got['error']).__name__}: {got['error']}" if "error" in got
                        else f"returned {str(got['value'])[:200]!r}")
                work.note(f"⌛ late: the function {what} {time.monotonic() - started:.1f} s after "
                          f"it started; discarded (the task failed at its {work.timeout:g} s limit)")

        helper = threading.Thread(target=call, daemon=True,
                                  name=f"tt-call-{work.agent.name}-{work.message.id[:8]}")
        helper.start()
        helper.join(work.timeout)
        with lock:
            if not box:
                late.set()
                return Outcome(False, _timed_out(work), list(log))
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, KeyboardInterrupt):
                raise exc
            return Outcome(False, f"{type(exc).__name__}: {exc}", list(log), usage=ctx.reported)
        value = box["value"]
        return Outcome(True, "Completed" if value is None else str(value), list(log),
                       usage=ctx.reported)

    def cancel(self) -> None:
        """A running Python function cannot be interrupted; it finishes its task."""

    def close(self) -> None:
        """Close the thread's private event loop."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None


class _Deadline(Exception):
    """An ``async def`` agent function ran past its deadline (and was cancelled)."""


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))


async def _within(awaitable: Any, seconds: float) -> Any:
    """Await with a deadline: past it the awaitable is cancelled and :class:`_Deadline`
    raised (a TimeoutError raised *by* the function stays the function's own error)."""
    job = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({job}, timeout=seconds)
    if not done:
        job.cancel()
        try:
            await job
        except BaseException:  # noqa: BLE001 — its cancellation, or whatever it raised instead
            pass
        raise _Deadline
    return job.result()


def _timed_out(work: Work) -> str:
    return f"timed out after {work.timeout:g} s (attempt {work.attempt})"
