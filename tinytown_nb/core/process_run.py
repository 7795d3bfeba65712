"""Run one command in its own process group, read its output as it comes, bound it in time.

:class:`ProcessRun` starts ``argv`` (never a shell string) with ``start_new_session=True``
and runs one loop *in the calling thread* (no helper threads): a ``selectors`` loop over
stdout, stderr, the stdin pipe (fed in non-blocking chunks, so any size works and a command
that never reads its input never blocks us), a pidfd that wakes the loop when the command
exits, and a wake-up pipe for :meth:`~ProcessRun.cancel`. It blocks in ``select`` until the
nearest deadline; nothing polls except the bounded waits noted below.

* **Lines.** Every complete line of stdout or stderr goes to ``on_line(stream, text)``
  (``"stdout"``/``"stderr"``) as it arrives, decoded as UTF-8 with ``errors="replace"``. A
  partial line is handed over after ``partial_flush`` seconds without more output on its
  stream; its continuation starts a new line. Lines longer than ``line_max`` (default
  ``LINE_MAX``) bytes are split
  (never inside a UTF-8 character). ``\\r`` *collapses*, as on a terminal: only the text
  after a line's last ``\\r`` is a line (``\\r\\n`` is a plain line end), so progress bars
  give one line, not one per update.
* **Log.** With ``log_path`` (opened for appending) stdout is written verbatim as it
  arrives and stderr as lines prefixed with ``[stderr] ``, interleaved in arrival order (a
  newline is added first when stderr interrupts an unfinished stdout line). A command with
  no stderr leaves a log byte-identical to its stdout.
* **Time.** ``timeout`` bounds the whole run, ``silence_timeout`` the time without any
  output; on expiry or :meth:`~ProcessRun.cancel` the whole group gets SIGTERM, then SIGKILL
  after ``kill_grace`` seconds if any member is still alive (zombies count as dead: a
  container's init may never reap them). The loop checks for that every 50 ms while it
  stops, and stops reading once the group is dead, so pipes held by something that escaped
  the group cannot hang it.
* **Exit.** After a normal exit, output still arriving from processes the command left
  running is read for at most ``EXIT_DRAIN`` seconds; they are not killed.
* **Errors.** A command that cannot start (program missing, not executable, bad ``cwd``) is
  a :class:`RunResult` with ``ended="not_started"``. An exception raised by ``on_line`` or
  ``on_start`` (or a KeyboardInterrupt) SIGKILLs the group before it propagates.

Example::

    >>> run = ProcessRun(["python3", "-c", "print('hi')"], on_line=print, timeout=60)
    >>> pid = run.start()      # the pid (also the process group id)
    >>> run.wait()             # on_line prints "stdout hi"
    stdout hi
    RunResult(ended='exit', returncode=0, stdout_tail='hi\\n', ...)
    >>> run_command(["sleep", "60"], timeout=parse_duration("1s")).ended
    'timeout'
"""

from __future__ import annotations

import math
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .checks import parse_duration  # (re-exported: its home is checks)
from .errors import ConfigError
from .paths import open_private

RESULT_MAX = 64 * 1024  # bytes of stdout kept in RunResult.stdout_tail
ERROR_TAIL = 4000  # bytes of stderr kept in RunResult.stderr_tail
LINE_MAX = 8 * 1024  # bytes: a longer line reaches on_line in pieces
READ_SIZE = 64 * 1024  # bytes per read (and per stdin write)
EXIT_DRAIN = 1.0  # s: reading on after a normal exit, for output left in flight
REAP_WAIT = 1.0  # s: waiting for the group to vanish after SIGKILL
GROUP_TICK = 0.05  # s: how often a stopping loop checks whether the group is gone
EVENT_TICK = 0.1  # s: how often a threading.Event given as cancel_event is checked
EXIT_TICK = 0.05  # s: how often the exit is checked where no pidfd exists (not Linux)
SELECT_MAX = 3600.0  # s: longest single wait (select refuses enormous timeouts)

ENDINGS = ("exit", "timeout", "silence", "cancelled", "not_started")

OnLine = Callable[[str, str], Any]


@dataclass(frozen=True)
class RunResult:
    """How a run ended and what it printed (tails only; the log file has everything).

    ``ended``: ``exit`` (on its own), ``timeout``, ``silence``, ``cancelled`` or
    ``not_started`` (then ``start_error`` says why). ``returncode`` is negative for a signal
    (``-15``: SIGTERM) and ``None`` when no exit status was collected.

    >>> run_command(["false"]).status
    'exit code 1'
    """

    ended: str
    returncode: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration: float = 0.0
    pid: int | None = None
    start_error: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    limit: float | None = None  # the timeout / silence_timeout that stopped it
    log_error: str = ""  # why the log stopped being written (disk full, ...), if it did

    @property
    def ok(self) -> bool:
        """It exited on its own with status 0."""
        return self.ended == "exit" and self.returncode == 0

    @property
    def status(self) -> str:
        """A few words for an error message: ``exit code 2``, ``killed by SIGSEGV``,
        ``timed out after 600s``, ``no output for 300s``, ``cancelled``, ``could not start: …``."""
        if self.ended == "not_started":
            return f"could not start: {self.start_error}"
        if self.ended == "cancelled":
            return "cancelled"
        if self.ended == "timeout":
            return f"timed out after {self.limit:g}s"
        if self.ended == "silence":
            return f"no output for {self.limit:g}s"
        code = self.returncode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


# --------------------------------------------------------------------------- durations

def _seconds(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    """``value`` as seconds: None, or a finite number > 0 (>= 0 with allow_zero)."""
    if value is None:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        need = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be None or a number of seconds {need}, got {value!r}; "
                          "for text such as '10m' use parse_duration('10m').")
    return float(value)


# --------------------------------------------------------------------------- helpers


def _utf8_cut(data: bytes, n: int) -> int:
    """``n``, moved back (by at most 3 bytes) so that ``data[:n]`` ends on a whole UTF-8
    character."""
    for j in range(n - 1, max(n - 4, -1), -1):
        byte = data[j]
        if byte < 0x80:  # ASCII: nothing crosses the cut
            return n
        if byte >= 0xC0:  # a lead byte: does its character reach past the cut?
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return j if j + size > n and j > 0 else n
    return n  # only continuation bytes (invalid): cut where asked


def _collapse(line: bytes) -> bytes:
    """What a terminal would show of a line: the text after its last ``\\r``."""
    line = line.rstrip(b"\r")
    cr = line.rfind(b"\r")
    return line[cr + 1:] if cr >= 0 else line


def _tail_text(tail: bytes | bytearray, total: int, limit: int) -> str:
    """The last ``limit`` bytes as text, with a ``[… N bytes cut]`` note when cut."""
    text = bytes(tail[-limit:]).decode("utf-8", "replace")
    return f"[… {total - limit} bytes cut]\n" + text if total > limit else text


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is alive; zombies do not count (Linux reads
    ``/proc`` to tell; elsewhere a zombie counts as alive).

    >>> run = ProcessRun(["true"]); pid = run.start(); result = run.wait()
    >>> group_alive(pid)
    False
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a member we may not signal is still a member
    try:
        entries = os.scandir("/proc")
    except OSError:
        return True
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


class _Stream:
    """One output pipe: its partial line, its tail and its byte count."""

    def __init__(self, name: str, file: IO[bytes], tail_max: int):
        self.name = name
        self.file = file
        self.fd = file.fileno()
        self.pending = b""  # bytes of the line not ended yet
        self.last_data = 0.0
        self.continued = False  # a partial line was handed over; an empty rest is no line
        self.tail = bytearray()
        self.tail_max = tail_max
        self.total = 0
        self.open = True


# --------------------------------------------------------------------------- the run


class ProcessRun:
    """One command run: :meth:`start`, then :meth:`wait` (in the thread that reads the
    output); :meth:`cancel` from any thread, at any time.

    A class rather than one call so that the worker's monitor thread can cancel it at once
    (a wake-up pipe, not a polled flag) and the caller learns the pid before blocking.

    >>> prompt, log, emit = "Fix the failing test", tmp / "claude.log", lambda stream, line: None
    >>> run = ProcessRun(["claude", "-p"], stdin=prompt.encode(), log_path=log,
    ...                  on_line=emit, timeout=3600, silence_timeout=600)
    >>> pid = run.start(); result = run.wait()
    >>> result.ended, result.returncode
    ('exit', 0)
    """

    def __init__(self, argv: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None, stdin: bytes | str = b"",
                 log_path: str | os.PathLike[str] | None = None, on_line: OnLine | None = None,
                 timeout: float | None = None, silence_timeout: float | None = None,
                 cancel_event: threading.Event | None = None, kill_grace: float = 3.0,
                 partial_flush: float | None = 0.5,
                 on_start: Callable[[int], Any] | None = None, line_max: int = LINE_MAX):
        if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"argv must be a non-empty list of strings (no shell string), got {argv!r}.")
        if isinstance(stdin, str):
            stdin = stdin.encode("utf-8")
        if not isinstance(stdin, (bytes, bytearray, memoryview)):
            raise ConfigError(f"stdin must be bytes or str, got {type(stdin).__name__}.")
        self.argv = list(argv)
        self.cwd, self.env, self.log_path = cwd, env, log_path
        self.on_line, self.on_start, self.cancel_event = on_line, on_start, cancel_event
        self.timeout = _seconds("timeout", timeout)
        self.silence_timeout = _seconds("silence_timeout", silence_timeout)
        self.kill_grace = _seconds("kill_grace", kill_grace, allow_zero=True) or 0.0
        self.partial_flush = _seconds("partial_flush", partial_flush, allow_zero=True)
        if isinstance(line_max, bool) or not isinstance(line_max, int) or line_max < 16:
            raise ConfigError(f"line_max must be a whole number of bytes >= 16, got {line_max!r}.")
        self.line_max = line_max  # a JSONL reader raises it: its lines must arrive whole
        self._stdin = memoryview(bytes(stdin))
        self._stdin_at = 0
        self._lock = threading.Lock()
        self._cancel = False
        self._wake: tuple[int, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._sel: selectors.BaseSelector | None = None
        self._streams: list[_Stream] = []
        self._log: IO[bytes] | None = None
        self._log_bol = True  # the log ends at a line start
        self._log_dirty = False
        self._log_error = ""
        self._t0 = 0.0
        self._started = False
        self.result: RunResult | None = None

    @property
    def pid(self) -> int | None:
        """The command's pid (also its process group id) once started."""
        return self._proc.pid if self._proc is not None else None

    def cancel(self) -> None:
        """Stop the run: SIGTERM to the group, SIGKILL after ``kill_grace``; before
        :meth:`start`, the command never starts. Safe from any thread; returns at once."""
        with self._lock:
            self._cancel = True
            if self._wake is not None:
                try:
                    os.write(self._wake[1], b"\0")
                except OSError:  # full (a wake-up is pending anyway)
                    pass

    def start(self) -> int | None:
        """Start the command and call ``on_start(pid)``; the pid, or None when it did not
        start (then :attr:`result` says why). Calling it again does nothing."""
        if self._started:
            return self.pid
        self._started = True
        self._t0 = time.monotonic()
        with self._lock:
            if self._cancel:
                self.result = RunResult("cancelled")
                return None
            self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        try:
            if self.log_path is not None:
                try:
                    self._log = open_private(Path(self.log_path), "ab")  # closed in _close (0600)
                except OSError as exc:
                    self.result = RunResult("not_started", start_error=(
                        f"cannot open the log {str(self.log_path)!r}: {exc.strerror or exc}"))
                    self._close()
                    return None
            try:
                self._proc = subprocess.Popen(
                    self.argv, cwd=self.cwd, env=None if self.env is None else dict(self.env),
                    stdin=subprocess.PIPE if len(self._stdin) else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            except OSError as exc:
                where = exc.filename if exc.filename is not None else self.argv[0]
                self.result = RunResult("not_started", duration=time.monotonic() - self._t0,
                                        start_error=f"{str(where)!r}: {exc.strerror or exc}")
                self._close()
                return None
            except ValueError as exc:  # e.g. a NUL byte in argv or env
                self._close()
                raise ConfigError(f"Cannot run {self.argv[0]!r}: {exc}.") from None
            proc = self._proc
            assert proc.stdout is not None and proc.stderr is not None
            self._sel = sel = (selectors.PollSelector() if hasattr(selectors, "PollSelector")
                               else selectors.DefaultSelector())
            sel.register(self._wake[0], selectors.EVENT_READ, "wake")
            self._streams = [_Stream("stdout", proc.stdout, RESULT_MAX),
                             _Stream("stderr", proc.stderr, ERROR_TAIL)]
            for stream in self._streams:
                sel.register(stream.fd, selectors.EVENT_READ, stream)
            if proc.stdin is not None:
                os.set_blocking(proc.stdin.fileno(), False)
                self._write_stdin()  # a small input fits the empty pipe: written (and closed) now
                if not proc.stdin.closed:
                    sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "stdin")
            try:
                self._pidfd = os.pidfd_open(proc.pid)
                sel.register(self._pidfd, selectors.EVENT_READ, "exit")
            except (AttributeError, OSError):  # not Linux >= 5.3: check the exit every EXIT_TICK
                self._pidfd = None
            if self.on_start is not None:
                self.on_start(proc.pid)
        except BaseException:
            self._abort()
            raise
        return proc.pid

    def wait(self) -> RunResult:
        """Read the output until the run ends (starting it first if needed); the result."""
        if not self._started:
            self.start()
        if self.result is not None:
            return self.result
        try:
            ended, limit = self._loop()
            self._close()  # reads what is left, so on_line may still raise here
        except BaseException:
            self._abort()
            raise
        assert self._proc is not None
        out, err = self._streams
        self.result = RunResult(
            ended, self._proc.returncode, _tail_text(out.tail, out.total, RESULT_MAX),
            _tail_text(err.tail, err.total, ERROR_TAIL), time.monotonic() - self._t0,
            self._proc.pid, stdout_bytes=out.total, stderr_bytes=err.total, limit=limit,
            log_error=self._log_error)
        return self.result

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> tuple[str, float | None]:
        proc, sel = self._proc, self._sel
        assert proc is not None and sel is not None
        t0, timeout, silence = self._t0, self.timeout, self.silence_timeout
        reason: str | None = None
        limit: float | None = None
        kill_at = killed_at = exit_at = None
        last_out = t0
        next_group_check = 0.0
        while True:
            now = time.monotonic()
            if exit_at is None and self._pidfd is None:
                proc.poll()
            if exit_at is None and proc.returncode is not None:
                exit_at = now
                self._close_stdin()
            if exit_at is None and reason is None:
                if self._cancel or (self.cancel_event is not None and self.cancel_event.is_set()):
                    reason = "cancelled"
                elif timeout is not None and now - t0 >= timeout:
                    reason, limit = "timeout", timeout
                elif silence is not None and now - last_out >= silence:
                    reason, limit = "silence", silence
                if reason is not None:
                    self._signal(signal.SIGTERM)
                    self._close_stdin()
                    kill_at = now + self.kill_grace
            if kill_at is not None and killed_at is None and now >= kill_at:
                if group_alive(proc.pid):
                    self._signal(signal.SIGKILL)
                killed_at = now
            if self.partial_flush is not None:
                for stream in self._streams:
                    if stream.pending and now >= stream.last_data + self.partial_flush:
                        self._flush(stream)
            # ---- done?
            if exit_at is not None and reason is None:
                if not any(s.open for s in self._streams) or now >= exit_at + EXIT_DRAIN:
                    return "exit", None
            elif exit_at is not None:
                if now >= next_group_check:
                    if not group_alive(proc.pid):
                        return reason, limit  # type: ignore[return-value]
                    next_group_check = now + GROUP_TICK
                if killed_at is not None and now >= killed_at + REAP_WAIT:
                    return reason, limit  # type: ignore[return-value]
            elif killed_at is not None and now >= killed_at + REAP_WAIT:
                return reason, limit  # type: ignore[return-value]  # unkillable (D state)
            # ---- block until something happens or the nearest deadline
            deadlines = [s.last_data + self.partial_flush for s in self._streams
                         if s.pending and self.partial_flush is not None]
            if exit_at is None and reason is None:
                if timeout is not None:
                    deadlines.append(t0 + timeout)
                if silence is not None:
                    deadlines.append(last_out + silence)
                if self.cancel_event is not None:
                    deadlines.append(now + EVENT_TICK)
            if exit_at is None and self._pidfd is None:
                deadlines.append(now + EXIT_TICK)
            if exit_at is not None and reason is None:
                deadlines.append(exit_at + EXIT_DRAIN)
            if reason is not None:
                deadlines.append(kill_at if killed_at is None else killed_at + REAP_WAIT)
                if exit_at is not None:
                    deadlines.append(next_group_check)
            wait = min(max(min(deadlines) - now, 0.0), SELECT_MAX) if deadlines else SELECT_MAX
            self._flush_log()
            for key, _ in sel.select(wait):
                what = key.data
                if isinstance(what, _Stream):
                    if self._read(what):
                        last_out = time.monotonic()
                elif what == "stdin":
                    self._write_stdin()
                elif what == "exit":  # from now on the exit is known, or checked by ticks
                    proc.poll()
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    self._pidfd = None
                elif what == "wake":
                    try:
                        while os.read(key.fd, 512):
                            pass
                    except BlockingIOError:
                        pass

    def _read(self, stream: _Stream) -> bool:
        """One read from a ready pipe; False at its end (then it is closed)."""
        data = os.read(stream.fd, READ_SIZE)
        if not data:
            self._end(stream)
            return False
        self._feed(stream, data, time.monotonic())
        return True

    def _feed(self, stream: _Stream, data: bytes, now: float) -> None:
        stream.total += len(data)
        stream.last_data = now
        stream.tail += data
        if len(stream.tail) > 2 * stream.tail_max:
            del stream.tail[:-stream.tail_max]
        is_out = stream.name == "stdout"
        if is_out and self._log is not None:
            self._log_write(data)
            self._log_bol = data.endswith(b"\n")
        if self.on_line is None and (is_out or self._log is None):
            return  # nobody wants these lines: no need to split them
        *lines, rest = (stream.pending + data).split(b"\n")
        for line in lines:
            line = _collapse(line)
            if not (stream.continued and not line):
                self._emit(stream, line)
            stream.continued = False
        cr = rest.rstrip(b"\r").rfind(b"\r")  # a trailing \r may still become \r\n
        if cr >= 0:
            rest = rest[cr + 1:]
        while len(rest) > self.line_max:
            cut = _utf8_cut(rest, self.line_max)
            self._emit(stream, rest[:cut])
            rest = rest[cut:]
        stream.pending = rest

    def _emit(self, stream: _Stream, line: bytes) -> None:
        while len(line) > self.line_max:
            cut = _utf8_cut(line, self.line_max)
            self._emit(stream, line[:cut])
            line = line[cut:]
        if stream.name == "stderr" and self._log is not None:
            self._log_write((b"[stderr] " if self._log_bol else b"\n[stderr] ") + line + b"\n")
            self._log_bol = True
        if self.on_line is not None:
            self.on_line(stream.name, line.decode("utf-8", "replace"))

    def _flush(self, stream: _Stream) -> None:
        """Hand over the partial line (its continuation will start a new line)."""
        line = stream.pending.rstrip(b"\r")
        stream.pending = b""
        if line:
            self._emit(stream, line)
            stream.continued = True

    def _end(self, stream: _Stream) -> None:
        if self._sel is not None:
            self._sel.unregister(stream.fd)
        stream.open = False
        stream.file.close()
        self._flush(stream)

    def _write_stdin(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            self._stdin_at += os.write(proc.stdin.fileno(),
                                       self._stdin[self._stdin_at:self._stdin_at + READ_SIZE])
        except BlockingIOError:
            return
        except OSError:  # BrokenPipeError: it will not read (more of) its input — fine
            self._close_stdin()
            return
        if self._stdin_at >= len(self._stdin):
            self._close_stdin()  # EOF for the command

    def _close_stdin(self) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.closed:
            return
        if self._sel is not None:
            try:
                self._sel.unregister(proc.stdin.fileno())
            except KeyError:
                pass
        try:
            proc.stdin.close()
        except OSError:
            pass

    def _signal(self, sig: int) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------------ the log
    def _log_write(self, data: bytes) -> None:
        try:
            self._log.write(data)  # type: ignore[union-attr]
            self._log_dirty = True
        except OSError as exc:
            self._drop_log(exc)

    def _flush_log(self) -> None:
        if self._log is not None and self._log_dirty:
            try:
                self._log.flush()
                self._log_dirty = False
            except OSError as exc:
                self._drop_log(exc)

    def _drop_log(self, exc: OSError) -> None:
        """A log that cannot be written (disk full) must not stop the run."""
        self._log_error = f"cannot write {str(self.log_path)!r}: {exc.strerror or exc}"
        log, self._log = self._log, None
        try:
            log.close()  # type: ignore[union-attr]
        except OSError:
            pass

    # ------------------------------------------------------------------ the end
    def _close(self, drain: bool = True) -> None:
        """Read what is already in the pipes (``drain``), hand over partial lines, close
        every descriptor."""
        sel = self._sel
        if sel is not None and drain:
            for _ in range(64):  # bounded: a writer that escaped the group may never stop
                ready = [k.data for k, _ in sel.select(0) if isinstance(k.data, _Stream)]
                if not ready:
                    break
                for stream in ready:
                    self._read(stream)
        for stream in self._streams:
            if stream.open:
                if drain:
                    self._end(stream)
                else:
                    stream.open = False
                    stream.file.close()
        self._close_stdin()
        if sel is not None:
            sel.close()
            self._sel = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        with self._lock:
            wake, self._wake = self._wake, None
        for fd in wake or ():
            os.close(fd)
        if self._log is not None:
            self._flush_log()
            if self._log is not None:
                self._log.close()
                self._log = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass

    def _abort(self) -> None:
        """Leaving on an exception: kill the whole group, reap it, close everything."""
        proc = self._proc
        if proc is not None:
            self._signal(signal.SIGKILL)
            try:
                proc.wait(REAP_WAIT)
            except subprocess.TimeoutExpired:
                pass
        try:
            self._close(drain=False)
        except OSError:
            pass


def run_command(argv: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None, stdin: bytes | str = b"",
                log_path: str | os.PathLike[str] | None = None, on_line: OnLine | None = None,
                timeout: float | None = None, silence_timeout: float | None = None,
                cancel_event: threading.Event | None = None, kill_grace: float = 3.0,
                partial_flush: float | None = 0.5,
                on_start: Callable[[int], Any] | None = None) -> RunResult:
    """Run a command to its end in this thread (see :class:`ProcessRun`); ``cancel_event``
    is checked every ``EVENT_TICK`` s (``ProcessRun.cancel()`` acts at once).

    >>> r = run_command(["sh", "-c", "echo out; echo err >&2"], on_line=print)
    stdout out
    stderr err
    >>> r.ended, r.returncode, r.stdout_tail
    ('exit', 0, 'out\\n')
    """
    return ProcessRun(argv, cwd=cwd, env=env, stdin=stdin, log_path=log_path, on_line=on_line,
                      timeout=timeout, silence_timeout=silence_timeout, cancel_event=cancel_event,
                      kill_grace=kill_grace, partial_flush=partial_flush,
                      on_start=on_start).wait()


__all__ = ["ENDINGS", "ERROR_TAIL", "LINE_MAX", "RESULT_MAX", "ProcessRun", "RunResult",
           "group_alive", "parse_duration", "run_command"]
