"""How one piece of work is run: by a command line (CLI agents) or a Python function.

The worker loop (:mod:`.worker`) takes a message, records the start, calls
``runner.run(work)`` and records the :class:`Outcome`. A runner knows nothing about Redis
state; it only turns work into a result or an error.

*CLI agents* run their command once per message, argv from ``shlex.split`` (never a shell
string; the task text never enters a command line). Named CLIs (``[agent_clis]`` presets
such as ``claude``, ``codex``, ``aider``) get the markdown prompt of :mod:`.prompt` on stdin
(``auggie``: ``--instruction-file <file>``; ``aider``: ``--message-file <file>``). Any other
command line ("command agent") gets the raw task text on stdin. What an exit means:

* the task became terminal while the command ran (it called ``ttnb task complete``):
  that report wins;
* exit 0: completed, the result is stdout (trimmed; the last 64 KiB if longer; ``Completed``
  if empty);
* any other exit (or killed by a signal, or not startable): failed, the error is the exit
  status and the tail of stderr (stdout when stderr is empty).

No retries: a failed task stays failed (reassign it to retry). The command runs in the
agent's git worktree when it has one (``spawn(worktree=True)``), else in its preset's
``workdir`` or the town root, with ``TINYTOWN_AGENT_ID``, ``TINYTOWN_AGENT_NAME``, ``TINYTOWN_TOWN_DIR`` and, for a
task, ``TINYTOWN_TASK_ID`` set (and this Python's ``bin`` directory on ``PATH``, so
``ttnb`` works); stdout goes to ``.tt/logs/<name>_round_<N>.log`` (stderr is
appended after it). A task that waited for others (``after=``) also gets
``TINYTOWN_TASK_INPUTS``: the path of a JSON file ``{"<dependency id>": "<its result>", …}``
(in the order given, results whole), written before the run and deleted after it.

*Function agents* call ``fn(task)`` or ``fn(task, ctx)`` (when the function takes a second
parameter; ``ctx.workdir`` is the directory to work in: the agent's worktree, else the
town root — the process's own working directory is never changed) in the worker's
thread; ``async def`` functions run on the thread's own event loop; ``task.inputs``
holds the results of the tasks it waited for (``{dependency id: result}``, in the order
given). ``str()`` of the return value is the result (``None`` ⇒ ``Completed``); an
exception fails the task with ``TypeName: message``. What the function prints goes to the task log
(live, about once a second; only the last ``TASK_LOG_MAX`` = 1000 lines are kept — a CLI
run's task log gets the last ``LOG_LINES`` = 500 lines of its output, the round log file has
all of it).

Example::

    >>> runner = FunctionRunner(lambda task: task.description.upper())
    >>> runner.run(work).result   # doctest: +SKIP
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
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .capture import captured
from .config import TownConfig, resolve_cli_command
from .errors import ConfigError
from .models import Agent, Message, Task
from .paths import open_private, write_private
from .prompt import build_prompt
from .store import Store

RESULT_MAX = 64 * 1024  # bytes of stdout kept as a task result
ERROR_TAIL = 4000  # characters of stderr kept as a task error
LOG_LINES = 500  # output lines of a CLI run copied into the task log
TASK_LOG_MAX = 1000  # lines kept per task log (a function's prints: the last ones)
KEEP_ROUND_LOGS = 50  # per-round log files kept per agent
PIPE_MAX = 32 * 1024  # stdin up to this size goes through a pipe, larger through a file
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when a run is cancelled


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


def _tail(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"[… {len(text) - limit} characters cut]\n" + text[-limit:]


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
    """Runs a command line per message (CLI agents and command agents).

    ``workdir``: the agent's git worktree (on ``branch``), which wins over the preset's
    ``workdir``; an AI CLI's prompt then asks it to commit its work there.
    """

    kind = "process"

    def __init__(self, store: Store, agent: Agent, *, own_process: bool = False,
                 workdir: Path | None = None, branch: str | None = None):
        self.store = store
        self.agent = agent
        cli = store.config.agent_clis.get(agent.cli)
        self.preset = cli is not None  # a named AI CLI gets the prompt
        self.cli_name = agent.cli
        self.env = dict(cli.env) if cli else {}
        self.cwd = Path(workdir) if workdir is not None else (
            (store.root / cli.workdir) if cli and cli.workdir else store.root)
        self.branch = branch if workdir is not None else None
        self.argv = _resolved(command_argv(store.config, agent.cli, agent.name, self.cwd), self.cwd)
        store.paths.logs.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._stderr: Any = None
        self._base: dict[str, str] | None = None
        self.own_process = own_process  # the worker process is ours: use os.environ

    def _invocation(self, work: Work) -> tuple[list[str], str, Path | None]:
        """argv, stdin text and the prompt file (to delete afterwards) for one run."""
        if not self.preset:
            return list(self.argv), work.text, None
        prompt = build_prompt(town=self.store.name, agent=work.agent, message=work.message,
                              task=work.task, backlog=work.backlog,
                              backlog_total=work.backlog_total, round=work.round,
                              max_rounds=work.max_rounds, notes=work.notes, branch=self.branch,
                              inputs=work.inputs, inputs_file=self._inputs_path(work))
        if self.cli_name not in ("auggie", "aider"):
            return list(self.argv), prompt, None
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

    def run(self, work: Work, emit: Callable[[str], None] | None = None,
            on_start: Callable[[int], None] | None = None) -> Outcome:
        """Run the command once; see the module docstring for what the exit means.
        ``on_start(pid)`` is called as soon as the command exists.

        (``emit`` is unused: a command's output is read when it exits.)
        """
        argv, stdin_text, prompt_file = self._invocation(work)
        inputs_file = write_inputs(self._inputs_path(work), work.inputs)
        paths = self.store.paths
        log_path = paths.round_log(self.agent.name, work.round)
        if work.round > KEEP_ROUND_LOGS:  # recycle the oldest log file: renaming and
            try:                          # truncating it is far cheaper than a new file
                os.replace(paths.round_log(self.agent.name, work.round - KEEP_ROUND_LOGS), log_path)
            except FileNotFoundError:
                pass
        # stdin and stderr are files (reused run after run), not pipes: no pump threads or
        # polling, no deadlock on big outputs, and a command that never reads stdin is fine
        data = stdin_text.encode("utf-8")
        stderr = self._scratch()
        stdin: Any = subprocess.PIPE  # fits the pipe buffer: written at once, never blocks
        if len(data) > PIPE_MAX:
            stdin = tempfile.TemporaryFile()
            stdin.write(data)
            stdin.seek(0)
        try:
            with open_private(log_path, "w+b") as out:
                try:
                    proc = subprocess.Popen(
                        argv, cwd=self.cwd, env=self._environment(work), stdin=stdin,
                        stdout=out, stderr=stderr, start_new_session=True)
                except OSError as exc:
                    return Outcome(False, f"Could not start {argv[0]!r}: {exc.strerror or exc}. "
                                          "Install it or spawn the agent with another cli.")
                if proc.stdin is not None:
                    try:
                        proc.stdin.write(data)
                        proc.stdin.close()
                    except BrokenPipeError:  # it exited without reading its input: fine
                        pass
                with self._lock:
                    self._proc = proc
                    if self._cancelled:
                        self._kill(proc)
                if on_start is not None:
                    on_start(proc.pid)
                try:
                    proc.wait()
                finally:
                    with self._lock:
                        self._proc = None
                out.seek(0)
                stdout = out.read()
                stderr.seek(0)
                err = stderr.read()
                err_text = err.decode("utf-8", "replace")
                if err_text:
                    out.write(b"\n--- stderr ---\n" + err)
        finally:
            if stdin is not subprocess.PIPE:
                stdin.close()
            if prompt_file is not None:
                prompt_file.unlink(missing_ok=True)
            if inputs_file is not None:
                inputs_file.unlink(missing_ok=True)
        with self._lock:
            cancelled, self._cancelled = self._cancelled, False
        out_text = stdout[-RESULT_MAX:].decode("utf-8", "replace")
        if len(stdout) > RESULT_MAX:
            out_text = f"[… {len(stdout) - RESULT_MAX} bytes cut]\n" + out_text
        log = (out_text + ("\n" + err_text if err_text else "")).splitlines()[-LOG_LINES:]
        if cancelled:
            return Outcome(False, "cancelled", log, cancelled=True)
        if proc.returncode == 0:
            return Outcome(True, out_text.strip() or "Completed", log)
        code = proc.returncode
        status = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in
                  signal.valid_signals() else f"exit code {code}")
        detail = _tail(err_text or out_text, ERROR_TAIL)
        return Outcome(False, f"{argv[0]} failed ({status})" + (f": {detail}" if detail else ""), log)

    def _scratch(self) -> Any:
        """The stderr scratch file (one per runner, reused), empty and rewound."""
        if self._stderr is None:
            self._stderr = tempfile.TemporaryFile()
        elif self._stderr.tell():
            self._stderr.seek(0)
            self._stderr.truncate()
        return self._stderr

    @property
    def pid(self) -> int | None:
        """The running command's pid (also its process group), if one runs."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def cancel(self) -> None:
        """Stop a running command (its whole process group): SIGTERM, then SIGKILL."""
        with self._lock:
            self._cancelled = True
            proc = self._proc
        if proc is not None:
            self._kill(proc)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        def stop() -> None:
            for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    return
                if grace is None:
                    return
                try:
                    proc.wait(grace)
                    return
                except subprocess.TimeoutExpired:
                    continue
        threading.Thread(target=stop, daemon=True, name="tt-kill").start()

    def close(self) -> None:
        """Close the scratch file."""
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


# --------------------------------------------------------------------------- functions


class AgentContext:
    """What a function agent gets as its second argument: ``town``, ``agent``, ``task``,
    ``message``, ``workdir`` (its git worktree, else the town root), ``send``, ``inbox``.

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
        ``TASK_LOG_MAX`` lines). (``on_start`` is unused: no command is started.)"""
        log: collections.deque[str] = collections.deque(maxlen=TASK_LOG_MAX)

        def sink(line: str) -> None:
            log.append(line)
            if emit is not None:
                emit(line)

        task = work.task if work.task is not None else Task.new(
            work.message.text, id=work.message.id)
        if work.inputs:
            task.with_inputs({t.id: t.result or "" for t in work.inputs})
        with captured(sink):
            try:
                args = (task, AgentContext(self.town, work.agent, work, self.workdir)) if self.wants_context else (task,)
                value = self.fn(*args)
                if inspect.isawaitable(value):
                    if self._loop is None:
                        self._loop = asyncio.new_event_loop()
                    value = self._loop.run_until_complete(value)
            except BaseException as exc:  # noqa: BLE001 — any failure of user code fails the task
                if isinstance(exc, KeyboardInterrupt):
                    raise
                print("".join(traceback.format_exception(exc)).rstrip())
                return Outcome(False, f"{type(exc).__name__}: {exc}", list(log))
        return Outcome(True, "Completed" if value is None else str(value), list(log))

    def cancel(self) -> None:
        """A running Python function cannot be interrupted; it finishes its task."""

    def close(self) -> None:
        """Close the thread's private event loop."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None
