"""Workers doing real work: real worker processes, real scripts, real kill -9s.

Every script a CLI agent runs is written by the test into its tmp dir. The conftest
``town`` fixture stops every worker (and command) a test started.
"""

from __future__ import annotations

import asyncio
import os
import random
import shlex
import signal
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tinytown_nb.core import SUPERVISOR_ID, AgentState, ConfigError, TaskState, WaitTimeout
from tinytown_nb.core.events import decode_entry
from tinytown_nb.core.worker import local_thread

from conftest import eventually, script



pytestmark = pytest.mark.usefixtures("fast_heartbeat")





def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pid(town, name: str) -> int:
    return int(town.redis.hget(town.keys.worker(town.agent(name).id), "pid"))


def all_events(town) -> list:
    return [decode_entry(i, f) for i, f in town.redis.xrange(town.keys.events)]


def hang_once(tmp_path: Path, name: str = "hang_once") -> tuple[str, Path]:
    """A command that hangs on its first run and succeeds on the next ones."""
    marker = tmp_path / f"{name}.started"
    cmd = script(tmp_path, name, f"""
        import pathlib, sys, time
        text = sys.stdin.read()
        marker = pathlib.Path({str(marker)!r})
        if not marker.exists():
            marker.write_text("x")
            time.sleep(60)
        print("finished " + text)
    """)
    return cmd, marker


# --------------------------------------------------------------------------- CLI agents


def test_command_agents_succeed_fail_crash_and_report(town, tmp_path):
    ok = script(tmp_path, "ok", """
        import os, sys
        print(os.environ["TINYTOWN_AGENT_NAME"], "did:", sys.stdin.read().upper())
    """)
    bad = script(tmp_path, "bad", """
        import sys
        print("partial output")
        print("boom: the widget broke", file=sys.stderr)
        sys.exit(3)
    """)
    crash = script(tmp_path, "crash", "import os\nos._exit(7)\n")
    # reports through the real `ttnb` CLI, then exits non-zero: the report wins
    report = "sh -c " + shlex.quote(
        'ttnb task complete "$TINYTOWN_TASK_ID" --result "reported by agent" && exit 4')
    for name, cli in (("ok", ok), ("bad", bad), ("crash", crash), ("reporter", report)):
        assert town.spawn(name, cli=cli).state is AgentState.IDLE
    tasks = {name: town.assign(name, f"job for {name}") for name in ("ok", "bad", "crash", "reporter")}
    done = {name: town.wait(task=t, timeout=20) for name, t in tasks.items()}

    assert (done["ok"].state, done["ok"].result) == (TaskState.COMPLETED, "ok did: JOB FOR OK")
    assert done["bad"].state is TaskState.FAILED
    assert "exit code 3" in done["bad"].result and "boom: the widget broke" in done["bad"].result
    assert done["crash"].state is TaskState.FAILED and "exit code 7" in done["crash"].result
    assert (done["reporter"].state, done["reporter"].result) == (TaskState.COMPLETED, "reported by agent")

    for name in done:
        agent = town.wait(name, timeout=5)
        assert agent.state is AgentState.IDLE and agent.current_task is None
        assert agent.rounds_completed == 1
        assert agent.tasks_completed == (1 if name in ("ok", "reporter") else 0)
        assert town.redis.llen(town.keys.processing(agent.id)) == 0
    logs = town.root / ".tt" / "logs"
    assert "ok did: JOB FOR OK" in (logs / "ok_round_1.log").read_text()
    # the round log interleaves stderr (prefixed) with stdout, as it came
    assert (logs / "bad_round_1.log").read_text() == "partial output\n[stderr] boom: the widget broke\n"
    assert "boom: the widget broke" in town.task_log(done["bad"].id)
    kinds = Counter((e.type, e.task_id) for e in all_events(town))
    assert kinds[("task_completed", tasks["ok"].id)] == 1
    assert kinds[("task_failed", tasks["bad"].id)] == 1
    assert kinds[("task_completed", tasks["reporter"].id)] == 1  # the report only, not the exit


def test_preset_cli_gets_the_prompt_on_stdin_and_aider_a_message_file(town, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for cli in ("claude", "aider"):
        fake = bindir / cli
        fake.write_text(textwrap.dedent(f"""\
            #!{sys.executable}
            import pathlib, sys
            args = sys.argv[1:]
            text = pathlib.Path(args[args.index("--message-file") + 1]).read_text() \\
                if "--message-file" in args else sys.stdin.read()
            pathlib.Path({str(tmp_path)!r}, "{cli}.seen").write_text(" ".join(args) + "\\n" + text)
            print("{cli} says done")
        """))
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    town.spawn("dev", cli="claude")
    town.spawn("pair", cli="aider")
    t1 = town.assign("dev", "Write the changelog")
    t2 = town.assign("pair", "Fix the flaky test")
    assert town.wait(task=t1, timeout=10).result == "claude says done"
    assert town.wait(task=t2, timeout=10).result == "aider says done"
    seen = (tmp_path / "claude.seen").read_text()
    # the worker asks claude for its JSONL stream at run time (tinytown.toml is unchanged)
    assert seen.startswith("--print --output-format stream-json --verbose --dangerously-skip-permissions\n")
    assert "--output-format" not in (town.root / "tinytown.toml").read_text()
    assert "# Agent: dev" in seen and f"ttnb task complete {t1.id}" in seen
    assert "Write the changelog" in seen
    aider = (tmp_path / "aider.seen").read_text()
    assert "--message-file" in aider and "--message " not in aider and "Fix the flaky test" in aider
    assert not list((town.root / ".tt").glob("agent_*_prompt.md"))  # prompt files cleaned up


def test_ai_cli_prompt_shows_info_and_confirmations_once(town, tmp_path, monkeypatch):
    """spec §7.3: informational messages (batched) and confirmations (counted) that came
    since the last run are in the next prompt, and only in that one."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "claude"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import pathlib, sys
        runs = pathlib.Path({str(tmp_path)!r}, "runs")
        runs.mkdir(exist_ok=True)
        n = len(list(runs.iterdir()))
        (runs / str(n)).write_text(sys.stdin.read())
        print("done")
    """))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    town.spawn("dev", cli="claude")
    town.interrupt("dev")
    for i in range(10):
        town.send("dev", f"fyi {i}: the API moved to /v2", kind="info")
    town.send("dev", "got it", kind="ack")
    town.send("dev", "got it", kind="ack")
    first = town.assign("dev", "first task")
    town.resume("dev")
    assert town.wait(task=first, timeout=10).result == "done"
    town.wait("dev", timeout=10)
    second = town.assign("dev", "second task")
    assert town.wait(task=second, timeout=10).result == "done"
    prompt1, prompt2 = ((tmp_path / "runs" / n).read_text() for n in ("0", "1"))
    assert "## Informational (batched summary)" in prompt1
    assert "fyi 0: the API moved to /v2" in prompt1 and "fyi 7:" in prompt1
    assert "fyi 8:" not in prompt1 and "- …and 2 more" in prompt1
    assert "## Confirmations (auto-dismissed)" in prompt1 and " x2" in prompt1
    assert prompt1.index("first task") < prompt1.index("## Informational") < prompt1.index("## Available Commands")
    assert "Informational" not in prompt2 and "Confirmations" not in prompt2
    assert town.redis.llen(town.keys.notes(town.agent("dev").id)) == 0


def test_free_text_messages_run_without_a_task_and_info_is_consumed(town, tmp_path):
    echo = script(tmp_path, "echo", "import sys\nprint('echo:', sys.stdin.read())\n")
    dev = town.spawn("dev", cli=echo)
    town.send("dev", "ping the build")
    town.send("dev", "fyi: build is green", kind="info")
    agent = town.wait("dev", timeout=10)
    assert agent.rounds_completed == 1 and not town.tasks()
    activity = town.activity("dev", 10)
    assert any("✅ echo: ping the build" in line for line in activity)
    assert any("informational" in line for line in activity)
    assert town.redis.llen(town.keys.processing(dev.id)) == 0


def test_missing_cli_is_refused_before_anything_is_written(town):
    with pytest.raises(ConfigError, match="not installed"):
        town.spawn("dev", cli="no-such-program-xyz --flag")
    assert town.agents() == []
    assert town.spawn("dev", cli="no-such-program-xyz", start=False).state is AgentState.STARTING
    town.kill("dev")
    with pytest.raises(ConfigError, match="not installed"):
        town.restart("dev")
    assert town.agent("dev").state is AgentState.STOPPED  # nothing written
    assert town.restart("dev", start=False).state is AgentState.STARTING


# --------------------------------------------------------------------------- crashes


def kill9_mid_task(town, tmp_path):
    """A command agent 'dev' whose worker is killed -9 in the middle of its first task:
    (agent, task, the dead worker's pid)."""
    cmd, marker = hang_once(tmp_path)
    dev = town.spawn("dev", cli=cmd)
    task = town.assign("dev", "important work")
    eventually(lambda: marker.exists() and town.task(task).state is TaskState.RUNNING, what="running")
    pid = worker_pid(town, "dev")
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not alive(pid), what="worker death")
    return dev, task, pid


def test_kill9_mid_task_loses_nothing_recover_then_restart(town, tmp_path):
    dev, task, pid = kill9_mid_task(town, tmp_path)
    # a worker on another machine can only be judged by its heartbeat
    town.redis.hset(town.keys.worker(dev.id), "host", "another-machine")
    assert town.recover(stale_after=60) == []  # dead, but not for long enough yet
    time.sleep(1.2)
    assert [a.name for a in town.recover(stale_after=1)] == ["dev"]
    assert town.agent("dev").state is AgentState.STOPPED
    assert town.task(task).state is TaskState.ASSIGNED
    assert [m.body["task_id"] for m in town.inbox("dev")] == [task.id]
    assert town.redis.llen(town.keys.processing(dev.id)) == 0

    assert town.restart("dev").state in (AgentState.IDLE, AgentState.WORKING)  # may start at once
    done = town.wait(task=task, timeout=15)
    assert (done.state, done.result) == (TaskState.COMPLETED, "finished important work")
    assert worker_pid(town, "dev") != pid


def test_a_command_left_running_by_a_killed_worker_is_stopped_by_recover(town, tmp_path):
    """kill -9 of a worker leaves its command (own process group) running; recovering the
    agent must stop it, or the requeued task would run twice at once."""
    started = tmp_path / "pid"
    cmd = script(tmp_path, "long", f"""
        import os, pathlib, sys, time
        sys.stdin.read()
        pathlib.Path({str(started)!r}).write_text(str(os.getpid()))
        time.sleep(60)
    """)
    dev = town.spawn("dev", cli=cmd)
    town.assign("dev", "long work")
    eventually(lambda: started.exists() and town.redis.hget(town.keys.worker(dev.id), "command"),
               what="the command on record")
    command = int(started.read_text())
    os.kill(worker_pid(town, "dev"), signal.SIGKILL)
    time.sleep(1.2)
    assert alive(command)  # an orphan now
    assert [a.name for a in town.recover(stale_after=1)] == ["dev"]
    eventually(lambda: not alive(command), what="the orphaned command to stop")


def test_restart_stops_a_command_left_running_by_a_killed_worker(town, tmp_path):
    started = tmp_path / "pid"
    cmd = script(tmp_path, "long", f"""
        import os, pathlib, sys, time
        sys.stdin.read()
        p = pathlib.Path({str(started)!r})
        if p.exists():
            print("second run")
            sys.exit(0)
        p.write_text(str(os.getpid()))
        time.sleep(60)
    """)
    dev = town.spawn("dev", cli=cmd)
    task = town.assign("dev", "long work")
    eventually(lambda: started.exists() and town.redis.hget(town.keys.worker(dev.id), "command"),
               what="the command on record")
    command = int(started.read_text())
    os.kill(worker_pid(town, "dev"), signal.SIGKILL)
    town.kill("dev")  # record only, as after a crash nobody noticed
    assert alive(command)
    town.restart("dev")
    assert not alive(command)
    assert town.wait(task=task, timeout=15).result == "second run"


def test_recover_acts_at_once_on_a_worker_process_of_this_host_that_is_gone(town, tmp_path):
    dev, task, _ = kill9_mid_task(town, tmp_path)
    assert [a.name for a in town.recover(stale_after=600)] == ["dev"]  # no 10-minute wait
    assert town.task(task).state is TaskState.ASSIGNED
    assert [m.body["task_id"] for m in town.inbox("dev")] == [task.id]
    assert town.redis.llen(town.keys.processing(dev.id)) == 0


def test_restarted_worker_redoes_its_unfinished_work(town, tmp_path):
    cmd, marker = hang_once(tmp_path)
    dev = town.spawn("dev", cli=cmd)
    task = town.assign("dev", "redo me")
    eventually(lambda: marker.exists(), what="first run")
    os.kill(worker_pid(town, "dev"), signal.SIGKILL)
    town.kill("dev")  # record only: the message is still in the processing list
    assert town.redis.llen(town.keys.processing(dev.id)) == 1
    town.restart("dev")  # the new worker puts it back in front of its inbox and does it
    assert town.wait(task=task, timeout=15).result == "finished redo me"
    assert any("put back" in line for line in town.activity("dev", 10))


def test_200_tasks_over_4_workers_with_random_kill9(town):
    names = [f"w{i}" for i in range(4)]
    for name in names:
        town.spawn(name, cli="sh -c 'cat >/dev/null; sleep 0.04'")
    tasks = [t for name in names for t in town.assign_many(name, [f"{name} job {j}" for j in range(50)])]
    rng = random.Random(7)
    kills, deadline = 0, time.monotonic() + 45
    while True:
        states = Counter(t.state for t in town.tasks())
        if sum(n for s, n in states.items() if s.is_terminal) == len(tasks):
            break
        assert time.monotonic() < deadline, f"stuck: {states}"
        working = [a for a in town.agents() if a.state is AgentState.WORKING]
        if kills < 6 and working:
            victim = rng.choice(working)
            try:
                os.kill(worker_pid(town, victim.name), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        for agent in town.recover(stale_after=1.0):
            town.restart(agent)
    assert kills >= 3
    final = town.tasks()
    assert len(final) == 200 and all(t.state is TaskState.COMPLETED for t in final)
    completions = Counter(e.task_id for e in all_events(town) if e.type == "task_completed")
    assert set(completions) == {t.id for t in tasks} and set(completions.values()) == {1}
    assert sum(a.tasks_completed for a in town.agents()) == 200
    for a in town.agents():
        for key in (town.keys.inbox(a.id), town.keys.urgent(a.id), town.keys.processing(a.id)):
            assert town.redis.llen(key) == 0


def test_long_task_is_not_recovered_while_its_worker_lives(town, tmp_path):
    slow = script(tmp_path, "slow", "import sys, time\nsys.stdin.read()\ntime.sleep(2.5)\nprint('slow done')\n")
    town.spawn("dev", cli=slow)
    task = town.assign("dev", "take your time")
    eventually(lambda: town.task(task).state is TaskState.RUNNING, what="running")
    checks = []
    while town.task(task).state is TaskState.RUNNING:
        checks.append(town.recover(stale_after=1.5))
        time.sleep(0.25)
    assert len(checks) >= 5 and all(c == [] for c in checks)
    assert town.task(task).result == "slow done"


# --------------------------------------------------------------------------- stop, pause, close


def test_kill_mid_task_stops_the_command_and_puts_the_task_back(town, tmp_path):
    pidfile = tmp_path / "child.pid"
    cmd = script(tmp_path, "forever", f"""
        import os, pathlib, time
        pathlib.Path({str(pidfile)!r}).write_text(str(os.getpid()))
        time.sleep(60)
    """)
    dev = town.spawn("dev", cli=cmd)
    task = town.assign("dev", "never ends")
    eventually(lambda: pidfile.exists() and town.task(task).state is TaskState.RUNNING, what="run")
    wpid, child = worker_pid(town, "dev"), int(pidfile.read_text())
    town.kill("dev")
    eventually(lambda: not alive(wpid) and not alive(child), timeout=10, what="worker and child exit")
    assert town.agent("dev").state is AgentState.STOPPED
    assert town.task(task).state is TaskState.ASSIGNED
    assert [m.body["task_id"] for m in town.inbox("dev")] == [task.id]
    assert town.redis.llen(town.keys.processing(dev.id)) == 0
    assert not town.redis.exists(town.keys.stop(dev.id))


def test_close_finishes_the_current_task_then_stops(town):
    gate = threading.Event()
    dev = town.spawn("dev", fn=lambda task: gate.wait(10) and "finished")
    first, second = town.assign_many("dev", ["first", "second"])
    eventually(lambda: town.task(first).state is TaskState.RUNNING, what="running")
    assert town.close("dev").state is AgentState.DRAINING
    gate.set()
    assert town.wait("dev", timeout=10).state is AgentState.STOPPED
    assert town.task(first).result == "finished"
    assert town.task(second).state is TaskState.ASSIGNED  # left queued, not lost
    states = [e.data.get("new_state") for e in town.events(50, agent="dev")]
    assert "Draining" in states and states[-1] == "Stopped"
    eventually(lambda: local_thread(town.store, dev.id) is None, what="thread end")


def test_paused_agent_starts_nothing_new_until_resumed(town):
    town.spawn("dev", fn=lambda task: "ok")
    town.interrupt("dev")
    task = town.assign("dev", "wait for me")
    time.sleep(1.3)
    assert town.task(task).state is TaskState.ASSIGNED and len(town.inbox("dev")) == 1
    assert town.agent("dev").state is AgentState.PAUSED
    town.resume("dev")
    assert town.wait(task=task, timeout=5).state is TaskState.COMPLETED


def test_idle_timeout_drains_then_stops_and_the_process_exits(town):
    town.spawn("dev", cli="cat", idle_timeout=1)
    pid = worker_pid(town, "dev")
    assert town.wait(task=town.assign("dev", "one"), timeout=5).result == "one"
    eventually(lambda: town.agent("dev").state is AgentState.STOPPED, timeout=6, what="stop")
    eventually(lambda: not alive(pid), what="exit")
    states = [e.data.get("new_state") for e in town.events(50, agent="dev")]
    assert states[-2:] == ["Draining", "Stopped"]
    assert any("Idle timeout" in line for line in town.activity("dev", 10))


def test_kill_ends_a_function_agents_thread_and_max_rounds_stops(town):
    fn_agent = town.spawn("fn", fn=lambda task: 1)
    thread = local_thread(town.store, fn_agent.id)
    assert thread is not None and thread.is_alive()
    town.kill("fn")
    thread.join(3)
    assert not thread.is_alive() and town.agent("fn").state is AgentState.STOPPED

    town.spawn("two", fn=lambda task: "ok", max_rounds=2)
    a, b, c = town.assign_many("two", ["a", "b", "c"])
    assert town.wait("two", timeout=5).state is AgentState.STOPPED
    assert [town.task(t).state for t in (a, b, c)] == [TaskState.COMPLETED] * 2 + [TaskState.ASSIGNED]


def test_urgent_messages_first_oldest_first(town):
    seen = []
    town.spawn("dev", fn=lambda task: seen.append(task.description))
    town.interrupt("dev")
    town.assign_many("dev", ["normal 1", "normal 2"])
    town.send("dev", "urgent 1", urgent=True)
    town.send("dev", "urgent 2", urgent=True)
    town.resume("dev")
    town.wait("dev", timeout=5)
    assert seen == ["urgent 1", "urgent 2", "normal 1", "normal 2"]


def test_urgent_message_first_when_an_assignment_wakes_an_idle_worker(town):
    """The assignment ends the worker's blocking read on the inbox; the urgent message that
    came before it (which no blocking read watches) still runs first."""
    seen = []
    town.spawn("dev", fn=lambda task: seen.append(task.description))
    eventually(lambda: any(c.get("cmd") == "blmove" for c in town.redis.client_list()),
               what="the worker to block on its inbox")
    town.send("dev", "urgent", urgent=True)
    town.assign("dev", "normal")
    town.wait("dev", timeout=5)
    assert seen == ["urgent", "normal"]


def _evalsha_calls(town) -> int:
    """Script runs the server made: a script's first call in a process is a NOSCRIPT miss
    (a failed call) then a load and the run, which must not count as two."""
    stats = town.redis.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


def test_an_idle_worker_runs_nothing_and_wakes_at_once(town, monkeypatch):
    """Idle, a worker blocks on its inbox and its wake list and runs no step between beats;
    urgent mail, a pause and a kill wake it at once (the 60 s beat cannot be what woke it)."""
    monkeypatch.setenv("TINYTOWN_HEARTBEAT_SECS", "60")
    dev = town.spawn("dev", cli="cat")
    pid = worker_pid(town, "dev")
    blocked = lambda: {c.get("cmd") for c in town.redis.client_list()} >= {"blmove", "blpop"}  # noqa: E731
    eventually(blocked, what="the worker to block on its inbox and its wake list")

    def settled() -> bool:  # its start-up's own wake-ups handled: no script run for 0.5 s
        calls = _evalsha_calls(town)
        time.sleep(0.5)
        return _evalsha_calls(town) == calls
    eventually(settled, what="the worker's start-up to settle")
    before = _evalsha_calls(town)
    time.sleep(3.5)  # the worker that polled ran a take step every second
    # at most its first beat, which falls anywhere in 60 s: the beat and a dependency sweep
    assert _evalsha_calls(town) - before <= 2
    town.send("dev", "read me first", kind="info", urgent=True)
    eventually(lambda: town.redis.llen(town.keys.urgent(dev.id)) == 0, timeout=3,
               what="the urgent message to be taken")
    assert town.wait(task=town.assign("dev", "still works"), timeout=5).result == "still works"
    eventually(blocked, what="the worker to block again")
    town.kill("dev")
    eventually(lambda: not alive(pid), timeout=3, what="the killed worker to exit")


def test_a_stop_flag_set_as_tt_does_stops_an_idle_worker_at_its_next_beat(town):
    """The Rust ``tt kill`` only sets the stop flag: no wake; the idle worker's beat sees it."""
    dev = town.spawn("dev", cli="cat")
    pid = worker_pid(town, "dev")
    town.redis.set(town.keys.stop(dev.id), "1", ex=3600)
    eventually(lambda: not alive(pid), timeout=5, what="the worker to stop")
    assert town.agent("dev").state is AgentState.STOPPED


def test_start_events_name_the_task_the_same_way_on_every_path(town):
    """The start event, written by the take step in Lua, names the task as the rest of the
    package does: short id and the description's first line, cut at 80 characters."""
    gate = threading.Event()
    town.spawn("dev", fn=lambda task: gate.wait(5))
    long_line = "Résumé «quoted» \"text\" / " + "é" * 100
    first = town.assign("dev", "first\nsecond line")
    queued = town.assign("dev", long_line + "\nmore")
    gate.set()
    town.wait("dev", timeout=5)
    starts = {e.data.get("task_id"): e.data["message"] for e in town.events(50)
              if e.type == "agent_state_changed" and e.data.get("new_state") == "Working"}
    assert starts[first.id] == f"Working on task {first.id[:4]}: first"
    assert starts[queued.id] == f"Working on task {queued.id[:4]}: {town.task(queued.id).summary(80)}"
    assert starts[queued.id].endswith("é" * 48 + "...")


# --------------------------------------------------------------------------- function agents


def test_function_agents_sync_async_raising_and_printing(town, capfd):
    def shout(task):
        print("working on", task.description)
        print("to stderr", file=sys.stderr)
        return task.description.upper()

    async def later(task):
        await asyncio.sleep(0.01)
        return {"len": len(task.description), "loop": asyncio.get_running_loop() is not None}

    def broken(task):
        raise ValueError("no good")

    def chatty(task, ctx):
        ctx.send("shout", "from chatty")
        return f"{ctx.agent.name} sent it"

    for name, fn in (("shout", shout), ("later", later), ("broken", broken), ("chatty", chatty)):
        town.spawn(name, fn=fn)
    tasks = {name: town.assign(name, "hello") for name in ("shout", "later", "broken", "chatty")}
    print("main thread line")
    done = {name: town.wait(task=t, timeout=5) for name, t in tasks.items()}
    assert done["shout"].result == "HELLO"
    assert town.task_log(done["shout"].id) == ["working on hello", "to stderr"]
    assert done["later"].result == "{'len': 5, 'loop': True}"
    assert (done["broken"].state, done["broken"].result) == (TaskState.FAILED, "ValueError: no good")
    assert any("Traceback" in line for line in town.task_log(done["broken"].id))
    assert done["chatty"].result == "chatty sent it"
    town.wait("shout", timeout=5)
    assert any("✅ FROM CHATTY" in line for line in town.activity("shout", 10))
    out, err = capfd.readouterr()
    assert "main thread line" in out
    assert "working on" not in out + err and "to stderr" not in out + err and "Traceback" not in err


# --------------------------------------------------------------------------- backlog


def test_two_backlog_workers_claim_each_task_exactly_once(town):
    runs, lock = Counter(), threading.Lock()

    def work(task):
        time.sleep(0.02)
        with lock:
            runs[task.id] += 1
        return "ok"

    b1, b2 = town.spawn("b1", fn=work, backlog=True), town.spawn("b2", fn=work, backlog=True)
    ids = [town.backlog_add(f"backlog job {i}").id for i in range(50)]
    tasks = town.wait(all=True, timeout=20)
    assert all(t.state is TaskState.COMPLETED for t in tasks) and len(tasks) == 50
    assert set(runs) == set(ids) and set(runs.values()) == {1}
    by_agent = Counter(t.assigned_to for t in tasks)
    assert by_agent[b1.id] > 0 and by_agent[b2.id] > 0 and sum(by_agent.values()) == 50
    claims = Counter(e.task_id for e in all_events(town) if e.type == "task_assigned")
    assert set(claims.values()) == {1}
    assert town.backlog() == []


def test_backlog_agents_take_only_role_matching_tasks(town):
    town.spawn("docs-writer", fn=lambda task: "written", backlog=True)
    api = town.backlog_add("Build the login endpoint", tags=["backend"])
    readme = town.backlog_add("Update the README")
    assert town.wait(task=readme, timeout=5).state is TaskState.COMPLETED
    time.sleep(1.2)
    assert town.task(api).state is TaskState.PENDING and [t.id for t in town.backlog()] == [api.id]
    town.spawn("w2", fn=lambda task: "built", role="backend", backlog=True)  # role_id beats name
    assert town.wait(task=api, timeout=5).result == "built"


# --------------------------------------------------------------------------- reclaim, wait


def _dead_agent_with_work(town, name="dead"):
    dead = town.spawn(name, fn=lambda task: "never", start=False)
    town.kill(name)
    t1, t2 = town.assign_many(name, ["first", "second"])
    town.send(name, "urgent note", urgent=True)
    town.redis.lmove(town.keys.inbox(dead.id), town.keys.processing(dead.id), "LEFT", "RIGHT")
    town.redis.hset(town.keys.task(t1.id), "state", "running")  # as a worker that died mid-task
    return dead, t1, t2


def test_reclaim_lists_without_draining_then_moves_everything(town):
    dead, t1, t2 = _dead_agent_with_work(town)
    lists = [town.keys.processing(dead.id), town.keys.urgent(dead.id), town.keys.inbox(dead.id)]
    before = [town.redis.lrange(k, 0, -1) for k in lists]
    listed = town.reclaim()
    assert sorted((r.source, r.action) for r in listed) == [
        ("inbox", "listed"), ("processing", "listed"), ("urgent", "listed")]
    assert [town.redis.lrange(k, 0, -1) for k in lists] == before  # listing took nothing

    helper = town.spawn("helper", fn=lambda task: f"did {task.description}")
    moved = town.reclaim(from_agent="dead", to="helper")
    assert {r.action for r in moved} == {"moved"} and len(moved) == 3
    for t in (t1, t2):
        done = town.wait(task=t, timeout=5)
        assert (done.result, done.assigned_to) == (f"did {t.description}", helper.id)
    town.wait("helper", timeout=5)
    assert any("did urgent note" in line for line in town.activity("helper", 10))
    assert all(town.redis.llen(k) == 0 for k in lists)


def test_reclaim_to_backlog_resets_tasks_and_keeps_other_messages(town):
    dead, t1, t2 = _dead_agent_with_work(town)
    town.send("dead", "fyi only", kind="info")
    out = town.reclaim(from_agent="dead", to_backlog=True)
    assert Counter(r.action for r in out) == {"backlogged": 3, "kept": 1}
    for t in (t1, t2):
        got = town.task(t)
        assert (got.state, got.assigned_to, got.started_at) == (TaskState.PENDING, None, None)
    assert sorted(t.description for t in town.backlog()) == ["first", "second", "urgent note"]
    assert [m.text for m in town.inbox("dead")] == ["fyi only"]
    with pytest.raises(ConfigError, match="not dead"):
        town.reclaim(from_agent=town.spawn("alive", fn=lambda t: 1), to_backlog=True)


def test_reclaim_orphan_tasks_cancel_and_to_backlog(town):
    dead, t1, t2 = _dead_agent_with_work(town)
    assert {r.task_id for r in town.reclaim(orphan_tasks=True)} == {t1.id, t2.id}
    assert town.task(t1).state is TaskState.RUNNING  # listing changed nothing
    town.prune()  # the assignee is now gone entirely
    out = town.reclaim(orphan_tasks=True, to_backlog=True)
    assert {(r.task_id, r.action) for r in out} == {(t1.id, "backlogged"), (t2.id, "backlogged")}
    assert {t.id for t in town.backlog()} == {t1.id, t2.id}

    other, t3, _ = _dead_agent_with_work(town, "other")
    cancelled = {r.task_id: r.action for r in town.reclaim(orphan_tasks=True, cancel=True)}
    assert cancelled[t3.id] == "cancelled"
    assert town.task(t3).result == "Cancelled: assignee is in a terminal state"
    inbox_ids = [m.body.get("task_id") for m in town.inbox("other")]
    assert t3.id not in inbox_ids and town.redis.llen(town.keys.processing(other.id)) == 0


def test_wait_timeout_says_what_is_going_on(town):
    gate = threading.Event()
    town.spawn("dev", fn=lambda task: gate.wait(10) and "done")
    task = town.assign("dev", "slow one")
    looks = []
    with pytest.raises(WaitTimeout, match=r"still running \(dev\)"):
        town.wait(task=task, timeout=0.3, progress=lambda: looks.append(1))
    assert looks  # called for each look that found it not done (a progress display)
    with pytest.raises(WaitTimeout, match="it is working on task .* with 0 message\\(s\\) waiting and 1 in hand"):
        town.wait("dev", timeout=0.3)
    with pytest.raises(WaitTimeout, match="1 running"):
        town.wait(all=True, timeout=0.3)
    gate.set()
    assert town.wait(all=True, timeout=5)[0].result == "done"
    assert town.current_task("dev") is None


def test_a_shutdown_message_stops_the_worker_without_starting_the_next_task(town):
    from tinytown_nb.core import Message

    dev = town.spawn("dev", fn=lambda task: "ran")
    town.interrupt("dev")
    town.redis.rpush(town.keys.inbox(dev.id),
                     Message.new("shutdown", sender=SUPERVISOR_ID, to=dev.id).to_json())
    task = town.assign("dev", "after the shutdown")
    town.resume("dev")
    assert town.wait("dev", timeout=5).state is AgentState.STOPPED
    assert town.task(task).state is TaskState.ASSIGNED
    assert [m.body["task_id"] for m in town.inbox("dev")] == [task.id]
    starts = [e for e in all_events(town) if e.type == "agent_state_changed"
              and e.data.get("task_id") == task.id]
    assert starts == []  # not started and put back: never started


def test_wait_all_sees_a_deleted_task_soon(town):
    """Removing a backlog task emits no event; wait(all=True) must not need its 10 s rescan."""
    town.backlog_add("never done")
    threading.Timer(0.3, lambda: town.backlog_remove(town.backlog()[0].id)).start()
    started = time.monotonic()
    assert town.wait(all=True, timeout=8) == []
    assert time.monotonic() - started < 3


def test_bad_worker_arguments_are_refused_with_one_line(town):
    for kwargs, match in (
        ({"cli": "cat", "fn": len}, "either cli"),
        ({"fn": "not callable"}, "fn must be a function"),
        ({"cli": "cat", "max_rounds": 0}, "max_rounds"),
        ({"cli": "cat", "idle_timeout": -1}, "idle_timeout"),
        ({"cli": "sh -c 'unclosed"}, "Cannot parse"),
    ):
        with pytest.raises(ConfigError, match=match):
            town.spawn("dev", **kwargs)
    assert town.agents() == []
    for call, match in (
        (lambda: town.wait(), "Say what to wait for"),
        (lambda: town.wait(all=True, timeout=-1), "timeout"),
        (lambda: town.reclaim(to="x", to_backlog=True), "one destination"),
        (lambda: town.reclaim(cancel=True), "orphan_tasks"),
        (lambda: town.recover(stale_after=0), "stale_after"),
    ):
        with pytest.raises(ConfigError, match=match):
            call()


# --------------------------------------------------------------------------- review fixes


def test_a_replaced_or_restarted_worker_never_strands_a_message(town, tmp_path):
    town.spawn("f", fn=lambda t: "v1")
    time.sleep(0.3)  # the old worker is now blocked reading the inbox
    f = town.spawn("f", fn=lambda t: "v2", replace=True)
    assert town.wait(task=town.assign("f", "one"), timeout=5).result == "v2"
    time.sleep(0.3)
    town.kill("f")
    town.restart("f")
    assert town.wait(task=town.assign("f", "two"), timeout=5).result == "v2"
    # a CLI agent: the old process, still blocked in its read, may take the message first
    cat = town.spawn("cat", cli="cat")
    time.sleep(0.3)
    town.kill("cat")
    town.restart("cat")
    tasks = town.assign_many("cat", ["a", "b", "c"])
    assert [town.wait(task=t, timeout=8).result for t in tasks] == ["a", "b", "c"]
    for agent in (f, cat):
        assert town.redis.llen(town.keys.processing(agent.id)) == 0


def test_a_function_printing_10k_lines_keeps_the_last_1000(town):
    def chatty(task):
        for i in range(10_000):
            print("line", i)
        return "ok"

    town.spawn("f", fn=chatty)
    task = town.assign("f", "talk")
    assert town.wait(task=task, timeout=10).result == "ok"
    log = town.task_log(task)
    assert len(log) == 1000 and log[-1] == "line 9999"
    assert town.wait("f", timeout=5).state is AgentState.IDLE
    assert any(e.type == "task_completed" for e in town.events(20, agent="f"))
    # the script itself: a long push goes in chunks, other long commands are refused whole
    from tinytown_nb.core.transitions import Change

    key, record = (town.keys.pattern("x").replace("*", n) for n in ("long", "none"))
    town.store.run(Change(record, [], {"cmds": [["RPUSH", key, *range(9000)]]}))
    assert town.redis.llen(key) == 9000 and town.redis.lindex(key, -1) == "8999"
    with pytest.raises(Exception, match="TOO_LONG"):
        town.store.run(Change(record, [], {"cmds": [["DEL", key], ["SADD", key + "s", *range(9000)]]}))
    assert town.redis.llen(key) == 9000  # nothing written


def test_thread_workers_log_to_their_file_and_shutdown_puts_work_back(town, capfd):
    from tinytown_nb.core.worker import stop_local_workers

    gate = threading.Event()
    f = town.spawn("f", fn=lambda t: gate.wait(10) and "late")
    thread = local_thread(town.store, f.id)
    task = town.assign("f", "long")
    eventually(lambda: town.task(task).state is TaskState.RUNNING, what="running")
    t0 = time.monotonic()
    stop_local_workers(town.store, timeout=0.2)  # what town.shutdown() does first
    assert time.monotonic() - t0 < 1.5
    assert town.agent("f").state is AgentState.STOPPED
    assert town.task(task).state is TaskState.ASSIGNED and len(town.inbox("f")) == 1
    gate.set()  # the call ends after the fact: the thread exits without writing
    thread.join(5)
    assert not thread.is_alive() and town.task(task).state is TaskState.ASSIGNED
    # at-least-once: done again (the new worker may already be on it when restart returns)
    assert town.restart("f").state in (AgentState.IDLE, AgentState.WORKING)
    assert town.wait(task=task, timeout=5).result == "late"
    text = (town.root / ".tt" / "logs" / "f.log").read_text()
    assert "started for agent f" in text and "superseded" in text
    assert capfd.readouterr().err == ""
    # a worker that cannot register (agent stopped) says so instead of raising
    from tinytown_nb.core.runners import FunctionRunner
    from tinytown_nb.core.worker import Worker

    town.kill("f")
    assert "is stopped" in Worker(town.store, f.id, FunctionRunner(str, town)).run()


def test_shutdown_mid_call_is_quiet_and_leaves_the_agent_stopped(tmp_path, capfd):
    from tinytown_nb.core import Town

    town = Town.init(tmp_path / "q", name="q")
    gate = threading.Event()
    f = town.spawn("f", fn=lambda t: gate.wait(10) and "late")
    thread = local_thread(town.store, f.id)
    task = town.assign("f", "long")
    eventually(lambda: town.task(task).state is TaskState.RUNNING, what="running")
    town.shutdown()
    gate.set()
    thread.join(5)
    assert not thread.is_alive() and capfd.readouterr().err == ""
    again = Town.connect(tmp_path / "q")
    try:
        assert again.agent("f").state is AgentState.STOPPED
        assert again.task(task).state is TaskState.ASSIGNED and len(again.inbox("f")) == 1
    finally:
        again.shutdown()


def test_recover_applies_upstreams_rule_to_agents_without_our_worker(town):
    from tinytown_nb.core.models import hash_ts, utcnow
    from datetime import timedelta

    rust = town.spawn("rust", cli="cat", start=False)  # no worker hash: like `tt agent-loop`
    task = town.assign("rust", "long CLI round")
    k, old = town.keys, hash_ts(utcnow() - timedelta(seconds=30))
    town.redis.hset(k.agent(rust.id), mapping={"state": "working", "current_task": task.id,
                                               "last_heartbeat": old})
    town.redis.hset(k.task(task.id), "state", "running")
    logs = town.root / ".tt" / "logs"
    (logs / "rust.log").write_text("agent-loop\n")
    assert town.recover(stale_after=5) == []  # its log is fresh: alive
    os.utime(logs / "rust.log", (time.time() - 30,) * 2)
    (logs / "rust_round_3.log").write_text("the CLI is still writing\n")
    assert town.recover(stale_after=5) == []  # the running CLI's round log counts too
    os.utime(logs / "rust_round_3.log", (time.time() - 30,) * 2)
    assert [a.name for a in town.recover(stale_after=5)] == ["rust"]
    a = town.agent("rust")
    assert a.state is AgentState.STOPPED and a.current_task == task.id  # nothing else moved
    assert town.task(task).state is TaskState.RUNNING and len(town.inbox("rust")) == 1
    assert "no log output" in town.activity("rust", 1)[0]


def test_a_draining_agent_stops_even_if_its_stop_flag_expired(town):
    gate = threading.Event()
    f = town.spawn("f", fn=lambda t: gate.wait(10) and "done")
    task = town.assign("f", "long")
    eventually(lambda: town.task(task).state is TaskState.RUNNING, what="running")
    town.close("f")
    town.redis.delete(town.keys.stop(f.id))  # the flag's TTL ran out during the task
    gate.set()
    assert town.wait("f", timeout=5).state is AgentState.STOPPED
    assert town.task(task).result == "done"


def test_an_old_workers_late_stop_never_undoes_a_restart(town):
    """The kill's stop flag, seen by the old worker just before a restart, ends in a stop
    step that lands after the restart made the agent ``starting``: it is refused (the new
    worker, whose token is not written yet, must find its agent starting)."""
    from tinytown_nb.core import transitions as tr
    from tinytown_nb.core.worker import Steps
    from tinytown_nb.core.worker.options import prepare

    dev = town.spawn("dev", start=False)
    token = prepare(town.store, dev.id, "process", None, None, False)  # the old worker's launch
    old = Steps(town.keys, dev.id, token, town.store.mail_lists(dev.id))
    town.kill("dev")
    town.restart("dev", start=False)  # starting: a new worker is on its way
    with pytest.raises(tr.WrongState):
        town.store.run(old.stop("Round 1: 🛑 Stopped by request", "dev", clear_flag=True))
    assert town.agent("dev").state is AgentState.STARTING


def test_run_worker_in_this_process_leaves_its_environment_and_signals_as_they_were(town):
    """A notebook kernel (or any caller) that runs a CLI agent's worker in the foreground is
    no agent afterwards: a later `ttnb` it starts must not act as that agent, and its
    Ctrl-C handler must be its own again."""
    dev = town.spawn("dev", cli="printenv TINYTOWN_AGENT_NAME", start=False)
    task = town.assign("dev", "who am I?")
    env_before = dict(os.environ)
    sigint_before = signal.getsignal(signal.SIGINT)
    assert town.run_worker(dev, max_rounds=1) == 0
    assert town.task(task).result.strip() == "dev"      # the command had the agent's variables
    assert dict(os.environ) == env_before
    assert signal.getsignal(signal.SIGINT) is sigint_before
