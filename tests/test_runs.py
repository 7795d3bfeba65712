"""Runs you can watch and bound (issue 10): live output, timeouts, bounded retries — with
real worker processes, real commands, real kill -9s, a real server (no mocks).

Every command is a script the test writes into its tmp dir; the ``town`` fixture stops every
worker (and command) a test started. No timing asserts beyond "within a few seconds"
(generous bounds a hung run could never meet).
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tinytown_nb import frames
from tinytown_nb.widgets import TownView
from tinytown_nb.core import AgentState, ConfigError, TaskState, WaitTimeout
from tinytown_nb.core.events import decode_entry

from conftest import eventually, script
from test_cli import ttnb
from test_wire import check_task_hash



pytestmark = pytest.mark.usefixtures("fast_heartbeat")



def counting(tmp_path: Path, name: str, body: str) -> str:
    """A script that knows which run of it this is (``n``: 1, 2, ...), kept in a file."""
    counter = tmp_path / f"{name}.count"
    head = textwrap.dedent(f"""
        import pathlib, sys, time
        sys.stdin.read()
        counter = pathlib.Path({str(counter)!r})
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
    """)
    return script(tmp_path, name, head + textwrap.dedent(body))


def events(town, kind: str | None = None) -> list:
    found = [decode_entry(i, f) for i, f in town.redis.xrange(town.keys.events)]
    return [e for e in found if kind is None or e.type == kind]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def check_tasks(town) -> None:
    """Every task hash still fits tinytown's schema (what the Rust tt reads)."""
    for key in town.redis.scan_iter(match=town.keys.pattern("task")):
        check_task_hash(key, town.redis.hgetall(key))


# --------------------------------------------------------------------------- live output


def test_a_commands_lines_reach_the_task_log_while_it_runs(town, tmp_path):
    cmd = script(tmp_path, "ticker", """
        import sys, time
        sys.stdin.read()
        for i in range(10):
            print(f"tick {i}", flush=True)
            time.sleep(0.3)
        print("partial line with no newline", end="", flush=True)
        time.sleep(1.5)
        print(" - and its end")
        print("oops", file=sys.stderr)
    """)
    town.spawn("ticker", cli=cmd)
    task = town.assign("ticker", "tick")
    # at least two lines while the task is still running (the log is pushed live)
    running_lines = eventually(lambda: (lambda log, t: log if len(log) >= 2 and t.state is
                                        TaskState.RUNNING else None)(town.task_log(task), town.task(task)),
                               timeout=15, what="two live lines while running")
    assert running_lines[:2] == ["tick 0", "tick 1"]
    # a partial line is shown after a short pause, before its end arrives
    eventually(lambda: "partial line with no newline" in town.task_log(task), timeout=15,
               what="the partial line")
    assert town.task(task).state is TaskState.RUNNING
    done = town.wait(task=task, timeout=20)
    assert done.state is TaskState.COMPLETED
    log = town.task_log(task)
    assert log == [*(f"tick {i}" for i in range(10)), "partial line with no newline",
                   " - and its end", "oops"]
    # the round log keeps everything, stderr marked
    round_log = (town.root / ".tt" / "logs" / "ticker_round_1.log").read_text()
    assert "tick 9\npartial line with no newline - and its end\n[stderr] oops\n" in round_log


def test_follow_yields_every_line_and_ends_with_the_task(town, tmp_path):
    cmd = script(tmp_path, "slow", """
        import sys, time
        sys.stdin.read()
        for i in range(8):
            print(f"line {i}", flush=True)
            time.sleep(0.2)
    """)
    town.spawn("slow", cli=cmd)
    task = town.assign("slow", "go")
    got, ended = [], []

    def follow():  # from another thread: any process (here a thread) attached to the town
        got.extend(town.follow(task, timeout=30))
        ended.append(town.task(task).state)

    follower = threading.Thread(target=follow)
    follower.start()
    follower.join(30)
    assert not follower.is_alive()
    assert got == [f"line {i}" for i in range(8)]
    assert ended == [TaskState.COMPLETED]
    # following a finished task yields its log and returns at once
    assert list(town.follow(task.id)) == got
    with pytest.raises(WaitTimeout):
        list(town.follow(town.assign("slow", "again", timeout=30).id, timeout=0.3))


def test_follow_works_for_function_agents_and_from_ttnb(town):
    gate = threading.Event()

    def chatty(task):
        print("first")
        gate.wait(10)
        print("second")
        return "ok"

    town.spawn("chatty", fn=chatty)
    task = town.assign("chatty", "talk")
    eventually(lambda: town.task_log(task) == ["first"], timeout=10, what="the first print, live")
    gate.set()
    assert list(town.follow(task, timeout=20)) == ["first", "second"]
    code, out, err = ttnb(town.root, "task", "log", task.short_id, "-f", "--timeout", "10s")
    assert (code, out, err) == (0, "first\nsecond\n", "")
    code, out, _ = ttnb(town.root, "task", "log", task.short_id, sub=False)
    assert (code, out) == (0, "first\nsecond\n")
    code, _, err = ttnb(town.root, "task", "log", "ffffffff-ffff-4fff-bfff-ffffffffffff", sub=False)
    assert code == 1 and "ffffffff" in err


def test_follow_says_how_many_lines_the_trimmed_log_no_longer_holds(town, tmp_path):
    cmd = script(tmp_path, "flood", """
        import sys
        sys.stdin.read()
        for i in range(2500):
            print(f"n{i}")
    """)
    town.spawn("flood", cli=cmd)
    task = town.wait(task=town.assign("flood", "go"), timeout=20)
    lines = list(town.follow(task))
    assert lines[0].startswith("[… 1500 line(s) not shown") and lines[1:] == [f"n{i}" for i in range(1500, 2500)]


# --------------------------------------------------------------------------- timeouts


def test_a_timeout_stops_the_whole_group_and_the_agent_goes_on(town, tmp_path):
    child_pid = tmp_path / "child.pid"
    cmd = script(tmp_path, "hang", f"""
        import os, pathlib, subprocess, sys, time
        text = sys.stdin.read()
        if "quick" in text:
            print("quick one done")
            sys.exit(0)
        child = subprocess.Popen(["sleep", "60"])   # in its process group
        pathlib.Path({str(child_pid)!r}).write_text(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(60)
    """)
    town.spawn("hang", cli=cmd)
    started = time.monotonic()
    task = town.assign("hang", "hang forever", timeout=1)
    quick = town.assign("hang", "quick")
    done = town.wait(task=task, timeout=20)
    assert time.monotonic() - started < 10  # 1 s limit, 3 s kill grace at most
    assert done.state is TaskState.FAILED
    assert "timed out after 1 s (attempt 1)" in done.result and done.attempts == 1
    pids = [int(p) for p in child_pid.read_text().split()]
    eventually(lambda: not any(alive(p) for p in pids), timeout=5, what="the group gone")
    assert town.wait(task=quick, timeout=20).result == "quick one done"  # the agent went on
    assert town.agent("hang").state is AgentState.IDLE
    check_tasks(town)


def test_agent_limits_silence_timeout_and_restart_keeps_them(town, tmp_path):
    cmd = script(tmp_path, "quiet", """
        import sys, time
        text = sys.stdin.read()
        print("thinking...", flush=True)
        if "hang" in text:
            time.sleep(60)     # prints nothing more: hung
        for i in range(6):     # working: a line every 0.4 s, 2.4 s in all
            time.sleep(0.4)
            print(f"step {i}", flush=True)
    """)
    town.spawn("quiet", cli=cmd, silence_timeout="1s", task_timeout=30)
    hung = town.wait(task=town.assign("quiet", "hang"), timeout=20)
    assert hung.state is TaskState.FAILED
    assert "no output for 1 s (attempt 1)" in hung.result
    assert town.task_log(hung) == ["thinking..."]
    busy = town.wait(task=town.assign("quiet", "work"), timeout=20)
    assert busy.state is TaskState.COMPLETED  # longer than 1 s, but never silent for 1 s
    # a task's own timeout wins over the agent's
    short = town.wait(task=town.assign("quiet", "work", timeout=0.5), timeout=20)
    assert "timed out after 0.5 s" in short.result
    town.kill("quiet")
    town.restart("quiet")
    again = town.wait(task=town.assign("quiet", "hang"), timeout=20)
    assert "no output for 1 s" in again.result  # kept across the restart


def test_a_function_agents_timeout_discards_its_late_result(town):
    release = threading.Event()

    def slow(task):
        print("started")
        if task.description == "slow":
            release.wait(20)
            print("printed after the deadline")
        return f"result of {task.description}"

    town.spawn("fn", fn=slow, task_timeout=0.5)
    late = town.assign("fn", "slow")
    fast = town.assign("fn", "fast")
    failed = town.wait(task=late, timeout=10)
    assert failed.state is TaskState.FAILED and failed.result == "timed out after 0.5 s (attempt 1)"
    # the agent went on while the stuck call still runs
    assert town.wait(task=fast, timeout=10).result == "result of fast"
    release.set()
    eventually(lambda: any(line.startswith("⌛ late: the function returned 'result of slow'")
                           for line in town.task_log(late)), timeout=10, what="the late note")
    assert "printed after the deadline" in town.task_log(late)
    assert town.task(late).state is TaskState.FAILED  # never overwritten
    assert town.task(late).result == "timed out after 0.5 s (attempt 1)"


def test_an_async_function_is_cancelled_at_its_deadline(town):
    cancelled = threading.Event()

    async def sleepy(task):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    town.spawn("afn", fn=sleepy)
    done = town.wait(task=town.assign("afn", "nap", timeout=0.5), timeout=10)
    assert (done.state, done.result) == (TaskState.FAILED, "timed out after 0.5 s (attempt 1)")
    assert cancelled.is_set()


# --------------------------------------------------------------------------- retries


def test_fails_twice_then_succeeds_under_retries_2(town, tmp_path):
    cmd = counting(tmp_path, "flaky", """
        print(f"run {n}")
        sys.exit(0 if n >= 3 else 1)
    """)
    town.spawn("flaky", cli=cmd)
    task = town.assign("flaky", "try", retries=2, tags=["ops"])
    done = town.wait(task=task, timeout=30)
    assert (done.state, done.result, done.attempts) == (TaskState.COMPLETED, "run 3", 3)
    retried = events(town, "task_retried")
    assert [e.task_id for e in retried] == [task.id, task.id]
    assert "attempt 2 of 3" in retried[0].message and "exit code 1" in retried[0].message
    log = town.task_log(task)
    assert log[0] == "run 1" and log[-1] == "run 3" and sum("↻ attempt" in x for x in log) == 2
    df = frames.tasks_frame(town)
    assert df.loc[df.id == task.id, "attempts"].tolist() == [3]
    agent = town.agent("flaky")
    assert agent.rounds_completed == 3 and agent.tasks_completed == 1
    view = TownView(town, start=False)  # the dashboard's task table shows the attempts
    try:
        [row] = [r for r in view.tasks_grid.given if r.key == task.id]
        assert row.cells[1].text == "completed · try 3"
    finally:
        view.close()
    check_tasks(town)


def test_retries_1_on_an_always_failing_command_stops_at_2_attempts(town, tmp_path):
    cmd = counting(tmp_path, "broken", """
        print(f"run {n}", file=sys.stderr)
        sys.exit(2)
    """)
    town.spawn("broken", cli=cmd)
    task = town.assign("broken", "try", retries=1, retry_delay=0.3)
    done = town.wait(task=task, timeout=30)
    assert done.state is TaskState.FAILED and done.attempts == 2
    assert "exit code 2" in done.result and "run 2" in done.result
    town.wait("broken", timeout=10)
    time.sleep(1.0)  # nothing more happens: no third run
    assert (tmp_path / "broken.count").read_text() == "2"
    assert town.task(task).state is TaskState.FAILED and town.task(task).attempts == 2
    assert len(events(town, "task_retried")) == 1
    # the delay was honoured: the second run started at least retry_delay after the first failed
    kinds = [e for e in events(town) if e.task_id == task.id]
    retried_at = next(e.timestamp for e in kinds if e.type == "task_retried")
    assert (town.task(task).started_at - retried_at).total_seconds() >= 0.25  # a lower bound only


def test_no_retry_after_a_cancel_nor_after_ttnb_task_complete(town, tmp_path):
    started = tmp_path / "started"
    cmd = counting(tmp_path, "stubborn", f"""
        import os, pathlib, subprocess
        pathlib.Path({str(started)!r}).write_text(str(n))
        if n == 1:
            time.sleep(3)   # cancelled meanwhile
            sys.exit(1)
        subprocess.run(["ttnb", "task", "complete", os.environ["TINYTOWN_TASK_ID"],
                        "--result", "reported"], check=True)
        sys.exit(5)          # fails after its report: the report wins, no retry
    """)
    town.spawn("stubborn", cli=cmd)
    first = town.assign("stubborn", "one", retries=3)
    eventually(started.exists, timeout=10, what="the first run")
    town.cancel_task(first, "not needed")
    town.wait("stubborn", timeout=20)
    assert town.task(first).state is TaskState.CANCELLED and town.task(first).attempts == 1
    second = town.assign("stubborn", "two", retries=3)
    done = town.wait(task=second, timeout=20)
    town.wait("stubborn", timeout=20)
    assert (done.state, done.result, done.attempts) == (TaskState.COMPLETED, "reported", 1)
    assert (tmp_path / "stubborn.count").read_text() == "2"
    assert events(town, "task_retried") == []


def test_kill9_mid_attempt_then_recover_keeps_the_attempt_count(town, tmp_path):
    marker = tmp_path / "attempt2"
    cmd = counting(tmp_path, "crashy", f"""
        import pathlib
        if n == 1:
            sys.exit(1)                      # attempt 1 fails: retried
        if n == 2:
            pathlib.Path({str(marker)!r}).write_text("x")
            time.sleep(60)                   # attempt 2 hangs; its worker is killed -9
        print("finally")
    """)
    town.spawn("crashy", cli=cmd)
    task = town.assign("crashy", "work", retries=2)
    eventually(marker.exists, timeout=15, what="attempt 2 running")
    assert town.task(task).attempts == 2
    pid = int(town.redis.hget(town.keys.worker(town.agent("crashy").id), "pid"))
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not alive(pid), timeout=5, what="the worker's death")
    assert [a.name for a in town.recover()] == ["crashy"]
    back = town.task(task)
    assert back.state is TaskState.ASSIGNED and back.attempts == 2  # a crash is no failure
    town.restart("crashy")
    done = town.wait(task=task, timeout=20)
    assert (done.state, done.result, done.attempts) == (TaskState.COMPLETED, "finally", 2)
    assert len(events(town, "task_retried")) == 1
    check_tasks(town)


def test_a_function_agents_exception_is_retried(town):
    calls = Counter()

    def shaky(task):
        calls[task.id] += 1
        if calls[task.id] < 2:
            raise RuntimeError("transient")
        return "steady"

    town.spawn("shaky", fn=shaky)
    done = town.wait(task=town.assign("shaky", "go", retries=1), timeout=10)
    assert (done.state, done.result, done.attempts) == (TaskState.COMPLETED, "steady", 2)


# --------------------------------------------------------------------------- the wire and bad input


def test_run_options_live_beside_the_task_never_in_it(town):
    town.spawn("dev", cli="cat", start=False)
    task = town.assign("dev", "x", timeout="20m", retries=2, retry_delay="30s")
    h = town.redis.hgetall(town.keys.task(task.id))
    check_task_hash(town.keys.task(task.id), h)
    assert not {"timeout", "retries", "attempts"} & set(h)
    opts = town.redis.hgetall(town.keys.taskopts(task.id))
    assert opts == {"id": task.id, "timeout": "1200", "retries": "2", "retry_delay": "30"}
    plain = town.assign("dev", "no options")
    assert not town.redis.exists(town.keys.taskopts(plain.id))  # nothing written without them
    queued = town.backlog_add("later", timeout=90)
    assert town.redis.hget(town.keys.taskopts(queued.id), "timeout") == "90"
    assert town.task(task).attempts == 0  # not run yet


@pytest.mark.parametrize("kwargs, message", [
    ({"timeout": 0}, "timeout must be a duration > 0"),
    ({"timeout": -5}, "timeout must be a duration > 0"),
    ({"timeout": float("nan")}, "timeout must be a duration > 0"),
    ({"timeout": "soon"}, "timeout must be a duration > 0"),
    ({"timeout": [1]}, "timeout must be a duration > 0"),
    ({"retries": -1}, "retries must be a whole number from 0 to 100"),
    ({"retries": 1000}, "retries must be a whole number from 0 to 100"),
    ({"retries": "2"}, "retries must be a whole number from 0 to 100"),
    ({"retry_delay": "later"}, "retry_delay must be"),
    ({"retry_delay": -1}, "retry_delay must be"),
])
def test_bad_run_options_are_refused_and_nothing_is_written(town, kwargs, message):
    town.spawn("dev", cli="cat", start=False)
    before = sorted(town.redis.scan_iter(match="tt:test:*"))
    for call in (lambda: town.assign("dev", "x", **kwargs),
                 lambda: town.assign_many("dev", ["x", "y"], **kwargs),
                 lambda: town.backlog_add("x", **kwargs)):
        with pytest.raises(ConfigError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert sorted(town.redis.scan_iter(match="tt:test:*")) == before
    with pytest.raises(ConfigError):
        town.spawn("other", cli="cat", task_timeout=0)
    with pytest.raises(ConfigError):
        town.spawn("other", cli="cat", silence_timeout="nope")
    assert sorted(town.redis.scan_iter(match="tt:test:*")) == before


def test_ttnb_assign_and_spawn_take_durations(town, tmp_path):
    code, out, err = ttnb(town.root, "spawn", "dev", "-c", "sleep 30", "--task-timeout", "1s",
                          "--silence-timeout", "20m")
    assert code == 0, err
    assert town.redis.hget(town.keys.worker(town.agent("dev").id), "task_timeout") == "1"
    code, out, err = ttnb(town.root, "assign", "dev", "wait", "--retries", "1", "--retry-delay", "1")
    assert code == 0, err
    tid = out.split("(")[1].split(")")[0]
    done = town.wait(task=tid, timeout=30)
    assert done.attempts == 2 and "timed out after 1 s (attempt 2)" in done.result
    code, out, err = ttnb(town.root, "assign", "dev", "x", "--timeout", "1h", sub=False)
    assert code == 0 and town.redis.hget(town.keys.taskopts(out.split("(")[1].split(")")[0]),
                                         "timeout") == "3600"
    code, _, err = ttnb(town.root, "assign", "dev", "x", "--timeout", "0", sub=False)
    assert code == 2 and "not a duration" in err
    code, _, err = ttnb(town.root, "assign", "dev", "x", "--retries", "500", sub=False)
    assert code == 1 and "retries must be a whole number from 0 to 100" in err


def test_tt_log_follow_prints_lines_as_they_come(town, tmp_path, capsys):
    from ipshell import loaded_shell

    cmd = script(tmp_path, "three", """
        import sys, time
        sys.stdin.read()
        for i in range(3):
            print(f"part {i}", flush=True)
            time.sleep(0.3)
    """)
    town.spawn("three", cli=cmd)
    task = town.assign("three", "go")
    shell = loaded_shell(tmp_path / "ipython")
    ip = next(shell)
    try:
        ip.run_cell(f"%tt_init {town.root}")
        capsys.readouterr()
        assert ip.run_cell(f"%tt_log {task.short_id} --follow -o seen").result is None
        assert capsys.readouterr().out == "part 0\npart 1\npart 2\n"
        assert ip.user_ns["seen"] == ["part 0", "part 1", "part 2"]
        assert town.task(task).state is TaskState.COMPLETED
        assert ip.run_cell(f"%tt_log {task.short_id} -o again").result is None
        assert capsys.readouterr().out == "part 0\npart 1\npart 2\n"
        assert ip.user_ns["again"] == ["part 0", "part 1", "part 2"]
    finally:
        shell.close()
