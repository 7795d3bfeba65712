"""process_run: real commands (``sys.executable -c ...``), real process groups, real signals.

Lines that must arrive while a command still runs are proven by handshakes: the command
waits for a marker file that only ``on_line`` creates, so a reader that saw output only at
exit would leave the command waiting (it then exits 1 after 10 s and the test fails).
"""

from __future__ import annotations

import math
import os
import signal
import stat
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import pytest

from tinytown_nb.core.errors import ConfigError
from tinytown_nb.core.process_run import (
    LINE_MAX, RESULT_MAX, ProcessRun, RunResult, parse_duration, run_command)

PY = sys.executable

pytestmark = pytest.mark.timeout(30)  # a hang is a failure, not a stuck suite

WAIT_FOR = """
import os, sys, time
def wait_for(path):
    for _ in range(1000):
        if os.path.exists(path):
            return
        time.sleep(0.01)
    sys.exit(1)
"""


def py(body: str, *args: str) -> list[str]:
    """argv running a Python snippet (with ``wait_for(path)`` defined)."""
    return [PY, "-c", WAIT_FOR + textwrap.dedent(body), *args]


def members(pgid: int) -> dict[int, str]:
    """pid -> state of every process of group ``pgid`` (read from /proc)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found[int(entry.name)] = fields[0]
    return found


def living(pgid: int) -> list[int]:
    """Members of the group that are not zombies (this machine's init may never reap an
    orphan, so a killed grandchild can stay a zombie)."""
    return [pid for pid, state in members(pgid).items() if state not in ("Z", "X")]


class Lines:
    """An on_line callback recording (stream, line) and creating marker files on cue."""

    def __init__(self, markers: dict[str, Path] | None = None):
        self.seen: list[tuple[str, str]] = []
        self.markers = markers or {}

    def __call__(self, stream: str, line: str) -> None:
        self.seen.append((stream, line))
        if line in self.markers:
            self.markers[line].touch()

    def of(self, stream: str) -> list[str]:
        return [line for s, line in self.seen if s == stream]


# --------------------------------------------------------------------------- live lines


def test_lines_arrive_while_the_command_runs(tmp_path):
    marker = tmp_path / "seen2"
    events: list[object] = []
    lines = Lines({"line 2": marker})
    argv = py(f"""
        for i in range(1, 5):
            print(f"line {{i}}", flush=True)
            time.sleep(0.3)
        wait_for({str(marker)!r})   # created by on_line when it saw "line 2"
        print("marker seen", flush=True)
    """)

    def on_line(stream, line):
        events.append(line)
        lines(stream, line)

    result = run_command(argv, on_line=on_line, on_start=lambda pid: events.append(("start", pid)))
    assert result.ended == "exit" and result.returncode == 0, result
    assert events[0] == ("start", result.pid)
    assert events[1:] == ["line 1", "line 2", "line 3", "line 4", "marker seen"]
    assert result.stdout_tail == "line 1\nline 2\nline 3\nline 4\nmarker seen\n"


def test_a_partial_line_is_flushed_and_its_continuation_is_a_new_line(tmp_path):
    marker = tmp_path / "partial"
    lines = Lines({"waiting": marker})
    argv = py(f"""
        sys.stdout.write("waiting"); sys.stdout.flush()
        wait_for({str(marker)!r})
        sys.stdout.write(" done\\n")
    """)
    result = run_command(argv, on_line=lines, partial_flush=0.2)
    assert result.returncode == 0
    assert lines.of("stdout") == ["waiting", " done"]
    assert result.stdout_tail == "waiting done\n"  # the output itself is untouched


def test_a_partial_line_then_only_its_newline_gives_no_empty_line(tmp_path):
    marker = tmp_path / "partial"
    lines = Lines({"50%": marker})
    argv = py(f"""
        sys.stdout.write("50%"); sys.stdout.flush()
        wait_for({str(marker)!r})
        sys.stdout.write("\\n\\nnext\\n")
    """)
    assert run_command(argv, on_line=lines, partial_flush=0.1).returncode == 0
    assert lines.of("stdout") == ["50%", "", "next"]  # the second newline is a real blank line


def test_last_line_without_newline_arrives_at_exit():
    lines = Lines()
    run_command([PY, "-c", "import sys; sys.stdout.write('a\\nno newline')"], on_line=lines,
                partial_flush=None)
    assert lines.of("stdout") == ["a", "no newline"]


def test_stdout_and_stderr_are_both_seen_and_interleaved_in_the_log(tmp_path):
    log = tmp_path / "round.log"
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    lines = Lines({"abc": m1, "oops": m2})
    argv = py(f"""
        sys.stdout.write("abc"); sys.stdout.flush()
        wait_for({str(m1)!r})
        sys.stderr.write("oops\\n"); sys.stderr.flush()
        wait_for({str(m2)!r})
        sys.stdout.write("def\\nlast\\n")
    """)
    result = run_command(argv, on_line=lines, log_path=log, partial_flush=0.1)
    assert result.returncode == 0
    assert lines.seen == [("stdout", "abc"), ("stderr", "oops"), ("stdout", "def"), ("stdout", "last")]
    # stdout verbatim; a stderr line that interrupts an unfinished stdout line starts a new one
    assert log.read_bytes() == b"abc\n[stderr] oops\ndef\nlast\n"
    assert result.stdout_tail == "abcdef\nlast\n" and result.stderr_tail == "oops\n"
    assert (result.stdout_bytes, result.stderr_bytes) == (12, 5)


def test_the_log_is_appended_to(tmp_path):
    log = tmp_path / "round.log"
    log.write_bytes(b"before\n")
    run_command([PY, "-c", "print('after')"], log_path=log)
    assert log.read_bytes() == b"before\nafter\n"


def test_invalid_utf8_is_replaced_never_raised(tmp_path):
    log = tmp_path / "round.log"
    lines = Lines()
    raw = b"ok \xff\xfe bad\n\xe2\x82\n"  # two invalid bytes; a cut-off euro sign
    result = run_command([PY, "-c", f"import sys; sys.stdout.buffer.write({raw!r})"],
                         on_line=lines, log_path=log)
    assert result.returncode == 0
    assert lines.of("stdout") == ["ok \ufffd\ufffd bad", "\ufffd"]
    assert result.stdout_tail == raw.decode("utf-8", "replace")
    assert log.read_bytes() == raw  # the log keeps the bytes


def test_carriage_returns_collapse_like_a_terminal():
    lines = Lines()
    run_command([PY, "-c", r"import sys; sys.stdout.write('10%\r50%\r100%\ndos line\r\n\rx\r\r\n')"],
                on_line=lines)
    assert lines.of("stdout") == ["100%", "dos line", "x"]


def test_a_long_line_is_split_on_character_boundaries():
    lines = Lines()
    text = "é" * 10_000 + "end"  # 20,003 bytes, 2-byte characters
    run_command([PY, "-c", f"print({text!r})"], on_line=lines)
    pieces = lines.of("stdout")
    assert len(pieces) == 3 and "".join(pieces) == text
    assert all(len(p.encode()) <= LINE_MAX for p in pieces) and "\ufffd" not in "".join(pieces)


def test_ten_megabytes_of_output_keep_only_a_tail_in_memory(tmp_path):
    log = tmp_path / "round.log"
    count = [0]

    def on_line(stream, line):
        count[0] += 1

    # 100-byte lines, 10 MB in all, numbered so the tail can be checked
    argv = [PY, "-c", "import sys\nw = sys.stdout.buffer.write\n"
            "for i in range(100_000): w(b'%09d ' % i + b'x' * 89 + b'\\n')"]
    tracemalloc.start()
    try:
        result = run_command(argv, on_line=on_line, log_path=log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    total = 100_000 * 100
    assert result.returncode == 0 and result.stdout_bytes == total and count[0] == 100_000
    assert log.stat().st_size == total
    assert result.stdout_tail.startswith(f"[… {total - RESULT_MAX} bytes cut]\n")
    assert result.stdout_tail.endswith("000099999 " + "x" * 89 + "\n")
    assert len(result.stdout_tail) < RESULT_MAX + 100
    assert peak < 2 * 1024 * 1024, f"peak traced memory {peak} bytes for 10 MB of output"


# --------------------------------------------------------------------------- stdin


def test_a_megabyte_of_stdin_to_a_command_that_never_reads_it(tmp_path):
    marker = tmp_path / "seen"
    lines = Lines({"up": marker})
    # it prints, then waits for on_line to see that: we must be reading, not stuck writing
    argv = py(f"""
        print("up", flush=True)
        wait_for({str(marker)!r})
    """)
    result = run_command(argv, stdin=b"x" * 1_000_000, on_line=lines)
    assert result.ended == "exit" and result.returncode == 0
    assert lines.of("stdout") == ["up"]


def test_stdin_to_a_command_that_reads_only_part_of_it(tmp_path):
    marker = tmp_path / "seen"
    lines = Lines({"read 20000": marker})
    # room for a few KiB in the pipe, then nobody reads: a blocking write would hang here
    argv = py(f"""
        got = 0
        while got < 20000:
            got += len(os.read(0, 20000 - got))
        print("read", got, flush=True)
        wait_for({str(marker)!r})
    """)
    result = run_command(argv, stdin=b"y" * 1_000_000, on_line=lines)
    assert result.ended == "exit" and result.returncode == 0


def test_stdin_through_cat(tmp_path):
    log = tmp_path / "round.log"
    data = b"".join(b"%07d\n" % i for i in range(150_000))  # 1.2 MB: both pipes fill up
    result = run_command(["cat"], stdin=data, log_path=log)
    assert result.returncode == 0 and result.stdout_bytes == len(data)
    assert log.read_bytes() == data


def test_str_stdin_is_utf8():
    result = run_command([PY, "-c", "import sys; print(sys.stdin.buffer.read().hex())"], stdin="é")
    assert result.stdout_tail == "c3a9\n"


# --------------------------------------------------------------------------- stopping


def test_timeout_stops_the_whole_group():
    result = run_command(["sleep", "60"], timeout=1)
    assert result.ended == "timeout" and result.returncode == -signal.SIGTERM
    assert result.limit == 1 and result.status == "timed out after 1s"
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)


def test_silence_timeout_after_one_line():
    lines = Lines()
    argv = [PY, "-c", "import time; print('hello', flush=True); time.sleep(60)"]
    result = run_command(argv, on_line=lines, silence_timeout=0.5, timeout=30)
    assert result.ended == "silence" and result.status == "no output for 0.5s"
    assert lines.of("stdout") == ["hello"]
    assert living(result.pid) == []


def test_a_command_ignoring_sigterm_is_killed():
    lines = Lines()
    argv = py("""
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring", flush=True)
        time.sleep(60)
    """)
    ready = threading.Event()
    run = ProcessRun(argv, on_line=lambda s, l: (lines(s, l), ready.set()), kill_grace=0.3)
    run.start()
    threading.Thread(target=lambda: ready.wait(10) and run.cancel()).start()
    result = run.wait()
    assert result.ended == "cancelled" and result.returncode == -signal.SIGKILL
    assert result.status == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)


def test_a_grandchild_ignoring_sigterm_is_killed_and_its_pipes_do_not_hang_us():
    lines = Lines()
    # the grandchild inherits stdout/stderr and ignores SIGTERM; the child dies of SIGTERM
    grandchild = ("import signal, time, os; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print(os.getpid(), flush=True); time.sleep(60)")
    argv = py(f"""
        import subprocess
        subprocess.Popen([sys.executable, "-c", {grandchild!r}])
        time.sleep(60)
    """)
    result = run_command(argv, on_line=lines, timeout=1, kill_grace=0.5)
    assert result.ended == "timeout" and result.returncode == -signal.SIGTERM
    gpid = int(lines.of("stdout")[0])
    assert gpid in members(result.pid) or not Path(f"/proc/{gpid}").exists()
    assert living(result.pid) == [], members(result.pid)


def test_cancel_from_another_thread(tmp_path):
    first = threading.Event()
    lines = Lines()
    argv = py("""
        for i in range(600):
            print(i, flush=True)
            time.sleep(0.1)
    """)
    run = ProcessRun(argv, on_line=lambda s, l: (lines(s, l), first.set()))
    canceller = threading.Thread(target=lambda: first.wait(10) and run.cancel())
    canceller.start()
    result = run.wait()
    canceller.join()
    assert result.ended == "cancelled" and result.returncode == -signal.SIGTERM
    assert 1 <= len(lines.of("stdout")) < 600
    assert living(result.pid) == []


def test_cancel_event_of_run_command():
    event = threading.Event()
    argv = [PY, "-c", "import time; print('go', flush=True); time.sleep(60)"]
    result = run_command(argv, on_line=lambda s, l: event.set(), cancel_event=event)
    assert result.ended == "cancelled" and result.returncode == -signal.SIGTERM


def test_cancel_before_start_never_starts_it(tmp_path):
    marker = tmp_path / "ran"
    run = ProcessRun([PY, "-c", f"open({str(marker)!r}, 'w')"])
    run.cancel()
    assert run.start() is None
    result = run.wait()
    assert (result.ended, result.pid, result.returncode) == ("cancelled", None, None)
    assert not marker.exists()


def test_a_normal_exit_does_not_wait_for_a_background_process_holding_the_pipes():
    lines = Lines()
    result = run_command(["sh", "-c", "sleep 60 & echo $!; echo done"], on_line=lines)
    background = int(lines.of("stdout")[0])
    try:
        assert result.ended == "exit" and result.returncode == 0
        assert lines.of("stdout")[1:] == ["done"]
    finally:
        os.kill(background, signal.SIGKILL)


def test_an_exception_in_on_line_kills_the_group_and_propagates():
    started: list[int] = []

    def on_line(stream, line):
        raise RuntimeError("display broke")

    argv = [PY, "-c", "import time; print('x', flush=True); time.sleep(60)"]
    with pytest.raises(RuntimeError, match="display broke"):
        run_command(argv, on_line=on_line, on_start=started.append)
    assert living(started[0]) == []


def test_no_descriptor_is_left_open(tmp_path):
    def open_fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    def boom(stream, line):
        raise ValueError("boom")

    run_command(["true"])  # whatever a first run opens for good (e.g. /dev/null)
    before = open_fds()
    run_command([PY, "-c", "print('x')"], stdin=b"in" * 100_000, log_path=tmp_path / "a.log")
    run_command(["sleep", "60"], timeout=0.2)
    run_command(["tinytown-no-such-program"], log_path=tmp_path / "b.log")
    with pytest.raises(ValueError):
        run_command([PY, "-c", "print('x')"], on_line=boom)
    cancelled = ProcessRun(["true"])
    cancelled.cancel()
    cancelled.wait()
    assert open_fds() == before


def test_without_pidfd_the_exit_is_still_seen(monkeypatch):
    """Where os.pidfd_open is missing or refused (not Linux, seccomp), exits are checked by
    short ticks instead."""
    def refused(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)
    lines = Lines()
    done = run_command([PY, "-c", "print('a'); import sys; sys.exit(4)"], on_line=lines)
    assert (done.ended, done.returncode, lines.of("stdout")) == ("exit", 4, ["a"])
    closed = run_command(["sh", "-c", "exec >&- 2>&-; sleep 0.3; exit 5"])
    assert (closed.ended, closed.returncode) == ("exit", 5)
    stopped = run_command(["sleep", "60"], timeout=0.3)
    assert stopped.ended == "timeout" and living(stopped.pid) == []


# --------------------------------------------------------------------------- exits


def test_exit_codes_and_signals():
    three = run_command([PY, "-c", "import sys; sys.stderr.write('bad\\n'); sys.exit(3)"])
    assert (three.ended, three.returncode, three.stderr_tail, three.status) == (
        "exit", 3, "bad\n", "exit code 3")
    assert not three.ok and run_command(["true"]).ok
    killed = run_command([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert (killed.ended, killed.returncode, killed.status) == ("exit", -9, "killed by SIGKILL")


def test_the_stderr_tail_is_bounded():
    result = run_command([PY, "-c", "import sys; sys.stderr.write('e' * 10000 + 'END')"])
    assert result.stderr_tail.startswith("[… 6003 bytes cut]\n")
    assert result.stderr_tail.endswith("eEND") and result.stderr_bytes == 10003


def test_cwd_and_env_are_used(tmp_path):
    result = run_command([PY, "-c", "import os; print(os.getcwd(), os.environ['TT_X'])"],
                         cwd=tmp_path, env={**os.environ, "TT_X": "42"})
    assert result.stdout_tail == f"{tmp_path} 42\n"


def test_commands_that_cannot_start_are_results(tmp_path):
    missing = run_command(["tinytown-no-such-program"])
    assert missing.ended == "not_started" and missing.pid is None and missing.returncode is None
    assert "tinytown-no-such-program" in missing.start_error and "No such file" in missing.start_error
    assert missing.status.startswith("could not start: ")

    script = tmp_path / "not_exec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    denied = run_command([str(script)])
    assert denied.ended == "not_started" and "Permission denied" in denied.start_error

    nowhere = run_command(["true"], cwd=tmp_path / "missing")
    assert nowhere.ended == "not_started" and "missing" in nowhere.start_error

    no_log = run_command(["true"], log_path=tmp_path / "no" / "dir" / "x.log")
    assert no_log.ended == "not_started" and "cannot open the log" in no_log.start_error


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "10", "10m", [5]])
def test_bad_timeouts_are_refused(bad):
    for name in ("timeout", "silence_timeout"):
        with pytest.raises(ConfigError) as info:
            ProcessRun(["true"], **{name: bad})
        assert str(info.value).startswith(f"{name} must be None or a number of seconds > 0")
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["echo hi", [], ["echo", 1]])
def test_bad_argv_is_refused(bad):
    with pytest.raises(ConfigError, match="argv must be a non-empty list of strings"):
        ProcessRun(bad)


def test_a_nul_byte_in_argv_is_a_config_error():
    with pytest.raises(ConfigError, match="Cannot run"):
        run_command(["echo", "a\0b"])


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), (90, 90), (1.5, 1.5), ("1.5", 1.5), (".5", 0.5), ("90s", 90), ("20m", 1200),
    ("1h", 3600), ("1.5h", 5400), ("1h30m", 5400), ("4m05s", 245), ("2d", 172800),
    ("1d 2h", 93600), (" 10m ", 600), ("1h0m1s", 3601),
])
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", " ", "0", "0s", "-5", "-5s", "nan", "inf", "NaN", math.nan, math.inf, -1, 0, True,
    "10x", "1e3", "30m1h", "1h1h", "h", "5 m", "1,5s", "ms", None,
])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError) as info:
        parse_duration(text)
    message = str(info.value)
    assert message.startswith("Bad duration ") and "1h30m" in message and "\n" not in message


def test_run_result_is_plain_data():
    assert RunResult("exit", 0).ok and not RunResult("timeout", -15, limit=2).ok
