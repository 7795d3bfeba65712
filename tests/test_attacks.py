"""Attacks on a running town (issue 9): bad records, poison messages, huge payloads,
outages, kill -9 at the worst moment, hostile names. Each test is one class of breakage;
the town must go on, say what was wrong in one line, and lose nothing."""

from __future__ import annotations

import math
import os
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from tinytown_nb import frames
from tinytown_nb.core import (AgentState, ConfigError, InvalidName, RedisError, TaskState,
                              TinytownError, Town, WaitTimeout)
from tinytown_nb.core.keys import SUPERVISOR_ID
from tinytown_nb.core.models import Message, Task
from tinytown_nb.core.server import ManagedServer

from conftest import TCP_PASSWORD, eventually

PY = shlex.quote(sys.executable)


def raw_client(town: Town) -> redis.Redis:
    """A client writing bytes as given (another program's writes)."""
    return redis.Redis.from_url(town.config.redis_url())


def assign_raw(town: Town, aid: str, tid: str) -> None:
    """Queue a task_assign for ``tid`` exactly as tt's assign does (no script)."""
    msg = Message.task_assign(tid, sender=SUPERVISOR_ID, to=aid)
    town.redis.rpush(town.keys.inbox(aid), msg.to_json())


def snapshot(town: Town) -> dict:
    r = raw_client(town)
    out = {}
    for key in r.scan_iter(match=b"tt:test:*", count=1000):
        kind = r.type(key)
        out[key] = (kind, r.dump(key))
    return out


# ------------------------------------------------------------------ 1. unusable task records


@pytest.mark.parametrize("state", [None, "Bogus"])
def test_a_task_record_without_a_known_state_is_set_aside_not_spun_on(town, state):
    done = town.spawn("w", fn=lambda task: f"did {task.description}")
    bad = str(uuid.uuid4())
    fields = {"id": bad, "description": "broken", "assigned_to": done.id}
    if state is not None:
        fields["state"] = state
    town.redis.hset(town.keys.task(bad), mapping=fields)
    assign_raw(town, done.id, bad)
    ok = town.assign("w", "after it")
    assert town.wait(task=ok, timeout=10).result == "did after it"  # the agent went on
    [dead] = town.dead_letters()
    assert bad[:8] in dead.reason and ("no state" in dead.reason or "'Bogus'" in dead.reason)
    assert town.task(bad).state is TaskState.FAILED and town.task(bad).result.startswith("Quarantined:")
    assert any(e.type == "dead_letter" for e in town.events(100))
    assert town.agent("w").state is AgentState.IDLE and not town.redis.llen(town.keys.processing(done.id))


def test_a_state_spelled_otherwise_is_the_same_state(town):
    w = town.spawn("w", fn=lambda task: "ran")
    tid = str(uuid.uuid4())
    town.redis.hset(town.keys.task(tid), mapping=Task(tid, "odd spelling", TaskState.ASSIGNED,
                                                      assigned_to=w.id).to_hash())
    town.redis.hset(town.keys.task(tid), "state", "In_Flight")  # read as running: a redo
    assign_raw(town, w.id, tid)
    assert town.wait(task=tid, timeout=10).result == "ran"
    # an agent in the event messages' spelling can be managed (the rule table means it)
    town.redis.hset(town.keys.agent(w.id), "state", "Idle")
    assert town.agent("w").state is AgentState.IDLE
    assert town.interrupt("w").state is AgentState.PAUSED
    town.redis.hset(town.keys.agent(w.id), "state", "Paused")
    assert town.resume("w").state is AgentState.IDLE
    town.redis.hset(town.keys.agent(w.id), "state", "WORKING")
    assert town.kill("w").state is AgentState.STOPPED


# ------------------------------------------------------------------ 2. huge payloads


def ping_worst(town: Town, stop: threading.Event, out: list) -> None:
    client = redis.Redis.from_url(town.config.redis_url())
    worst = 0.0
    while not stop.is_set():
        t0 = time.monotonic()
        client.ping()
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.005)
    out.append(worst)


def test_a_huge_description_is_refused_and_a_big_one_never_stalls_the_server(town, tmp_path):
    before = snapshot(town)
    with pytest.raises(ConfigError, match="the limit is 4 MiB"):
        town.spawn("w", cli="cat", start=False) and town.assign("w", "x" * (20 * 1024 * 1024))
    town.agent("w")
    after = snapshot(town)
    assert {k for k in after if b":task:" in k} == {k for k in before if b":task:" in k}
    # just under the limit, one line (the worst case for the start event's summary)
    stop, worst = threading.Event(), []
    pinger = threading.Thread(target=ping_worst, args=(town, stop, worst))
    pinger.start()
    try:
        w = town.spawn("big", fn=lambda task: len(task.description))
        task = town.assign("big", "y" * (4 * 1024 * 1024 - 100))
        assert town.wait(task=task, timeout=30).result == str(4 * 1024 * 1024 - 100)
        summary = next(e for e in town.events(50, agent=w) if e.type == "agent_state_changed"
                       and e.task_id == task.id).message
        assert summary.endswith("...") and len(summary) < 120
    finally:
        stop.set()
        pinger.join()
    assert worst[0] < 0.5, f"another client's PING took {worst[0]:.3f}s"
    with pytest.raises(ConfigError, match="the limit is 4 MiB"):
        town.send("big", "z" * (5 * 1024 * 1024))
    with pytest.raises(ConfigError, match="not valid Unicode"):
        town.assign("big", "lone \udc80 surrogate")


# ------------------------------------------------------------------ 3. poison messages


def test_poison_messages_are_set_aside_and_the_agent_goes_on(town, tmp_path):
    echo = tmp_path / "echo.py"
    echo.write_text("import sys\nprint(sys.stdin.read().strip())\n")
    w = town.spawn("w", cli=f"{PY} {echo}")
    r = raw_client(town)
    r.rpush(town.keys.inbox(w.id), b'{"id": "\xff\xfe broken', b"not json at all")
    string_task = str(uuid.uuid4())
    r.set(town.keys.task(string_task), "a string, not a hash")
    assign_raw(town, w.id, string_task)
    bad_text = str(uuid.uuid4())
    r.hset(town.keys.task(bad_text), mapping={b"id": bad_text.encode(), b"state": b"assigned",
                                              b"assigned_to": w.id.encode(),
                                              b"description": b"caf\xe9 au lait"})
    assign_raw(town, w.id, bad_text)
    good = town.assign("w", "still here")
    assert town.wait(task=good, timeout=20).result == "still here"
    reasons = [d.reason for d in town.dead_letters()]
    assert len(reasons) == 4, reasons
    assert any("not valid UTF-8" in x for x in reasons)
    assert any("not a tinytown message" in x for x in reasons)
    assert any("is a string, not a hash" in x for x in reasons)
    assert any("not UTF-8 (field 'description')" in x for x in reasons)
    assert town.agent("w").state is AgentState.IDLE
    assert town.reclaim() == [] or True  # reading what dead agents hold never raises
    # a dead letter keeps the bytes as they were; fixed, it can be put back and run
    dead = next(d for d in town.dead_letters() if d.task_id == bad_text)
    r.hset(town.keys.task(bad_text), "description", "cafe au lait")
    town.requeue_dead_letter(dead.id)
    assert town.wait(task=bad_text, timeout=20).result == "cafe au lait"
    assert len(town.dead_letters()) == 3
    town.drop_dead_letter(town.dead_letters()[0].id)
    assert len(town.dead_letters()) == 2
    assert set(frames.dead_letters_frame(town).columns) >= {"id", "reason", "agent", "message"}


def test_restart_does_not_redo_a_poison_message_forever(town, tmp_path):
    w = town.spawn("w", cli="cat", start=False)
    town.kill("w")
    raw_client(town).rpush(town.keys.processing(w.id), b"\xff poison in flight")
    town.redis.hset(town.keys.worker(w.id), mapping={"kind": "process"})
    again = town.restart("w")  # a started worker puts in-flight work back first
    assert again.state in (AgentState.IDLE, AgentState.WORKING)
    eventually(lambda: town.dead_letters(), what="the poison message set aside")
    assert town.wait("w", timeout=10).state is AgentState.IDLE


# ------------------------------------------------------------------ 4. bad bytes and readers


def test_one_bad_byte_never_breaks_a_reader(town, tmp_path):
    town.spawn("dev", cli="cat", start=False)
    r = raw_client(town)
    tid = str(uuid.uuid4())
    r.hset(town.keys.task(tid), mapping={b"id": tid.encode(), b"description": b"\xff\xfe oops",
                                         b"state": b"pending", b"created_at": b"\xff"})
    aid = str(uuid.uuid4())
    r.hset(town.keys.agent(aid), mapping={b"id": aid.encode(), b"name": b"na\xffme",
                                          b"state": b"idle"})
    r.xadd(town.keys.events, {b"event_type": b"task_failed", b"data": b'{"message": "\xff"}'})
    town.reconcile()
    assert any(t.id == tid for t in town.tasks())
    assert any(a.id == aid for a in town.agents())
    town.events(50), town.history(50), town.counts(), town.recover()
    for frame in (frames.tasks_frame, frames.agents_frame, frames.events_frame,
                  frames.status_frame, frames.inbox_frame):
        frame(town)
    out = subprocess.run([sys.executable, "-m", "tinytown_nb", "-t", str(town.root), "status"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr
    for verb in (["list"], ["task", "list"], ["events"], ["history"], ["inbox", "--all"]):
        out = subprocess.run([sys.executable, "-m", "tinytown_nb", "-t", str(town.root), *verb],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (verb, out.stderr)


# ------------------------------------------------------------------ 7. check before writing


def test_a_refused_change_writes_nothing(town):
    town.spawn("dev", cli="cat", start=False)
    town.redis.delete(town.keys.events)
    town.redis.set(town.keys.events, "a string where the stream goes")
    before = snapshot(town)
    with pytest.raises(ConfigError, match=r"Key tt:test:events holds a string .*redis-cli DEL"):
        town.assign("dev", "never written")
    assert snapshot(town) == before
    town.redis.delete(town.keys.events)
    dev = town.agent("dev")
    town.redis.set(town.keys.activity(dev.id), "wrong type")
    before = snapshot(town)
    with pytest.raises(ConfigError, match="holds a string"):
        town.kill("dev")
    assert snapshot(town) == before and town.agent("dev").state is AgentState.STARTING
    # wrong-typed keys read by listings: one line, never a redis-py traceback
    town.redis.delete(town.keys.activity(dev.id))
    town.redis.set(town.keys.inbox(dev.id), "wrong")
    with pytest.raises(TinytownError):
        town.inbox("dev")
    town.redis.set(town.keys.backlog, "wrong")
    with pytest.raises(TinytownError):
        town.backlog()


# ------------------------------------------------------------------ 9. hostile names


def test_a_traversal_name_written_by_another_program_touches_no_file(town, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    aid = str(uuid.uuid4())
    town.redis.hset(town.keys.agent(aid), mapping={
        "id": aid, "name": "../../../victim", "state": "stopped", "cli": "cat",
        "created_at": "2026-01-01T00:00:00+00:00"})
    town.reconcile()
    with pytest.raises(InvalidName):
        town.restart(aid)
    assert victim.read_text() == "keep me"
    with pytest.raises(InvalidName):  # refused, never a file outside the town
        town.log_tails(aid)
    town.recover(stale_after=1)
    assert victim.read_text() == "keep me" and not (tmp_path / "victim.log").exists()


# ------------------------------------------------------------------ 10-12. numbers and garbage


def test_nan_and_absurd_numbers_are_refused_at_the_boundary(town):
    town.spawn("w", fn=lambda task: "x")
    for call in (lambda: town.recover(stale_after=math.nan), lambda: town.wait(all=True, timeout=math.nan),
                 lambda: town.wait(all=True, timeout=math.inf), lambda: town.events(count=10**20),
                 lambda: town.activity("w", n="5"), lambda: town.history(0)):
        with pytest.raises(ConfigError):
            call()
    assert town.agent("w").state is AgentState.IDLE  # nothing was stopped by a NaN


def test_garbage_in_a_worker_hash_does_not_break_recover_or_shutdown(tmp_path):
    town = Town.init(tmp_path / "town", name="test")
    dev = town.spawn("dev", cli="cat", start=False)
    town.redis.hset(town.keys.agent(dev.id), "state", "working")
    town.redis.hset(town.keys.worker(dev.id), mapping={
        "pid": "99999999999999999999", "host": socket.gethostname(), "kind": "process",
        "max_rounds": "abc", "idle_timeout": "nan"})
    town.recover(stale_after=1000)
    town.redis.hset(town.keys.worker(dev.id), "pid", "abc")
    town.shutdown()
    assert not ManagedServer(town.root / ".tt").is_running()


def test_init_with_a_nul_byte_is_one_line(tmp_path):
    with pytest.raises(ConfigError):
        Town.init(str(tmp_path / "a\0b"))


# ------------------------------------------------------------------ 13. file modes


def test_every_town_keeps_its_files_private(tmp_path, password_server):
    url = f"redis://:{TCP_PASSWORD}@127.0.0.1:{password_server}/0"
    town = Town.init(tmp_path / "tcp", name="test", url=url)
    try:
        assert stat.S_IMODE((town.root / ".tt").stat().st_mode) == 0o700
        echo = tmp_path / "echo.py"
        echo.write_text("print('hello')\n")
        town.spawn("w", cli=f"{PY} {echo}")
        task = town.assign("w", "hi")
        town.wait(task=task, timeout=20)
        logs = list((town.root / ".tt" / "logs").iterdir())
        assert logs and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in logs), \
            {p.name: oct(p.stat().st_mode) for p in logs}
    finally:
        town.stop_all()
        town.reset()
        town.disconnect()


# ------------------------------------------------------------------ 5. kill -9 at the start of a run

OVERLAP_GUARD = """
import os, pathlib, signal, sys, time
d = pathlib.Path(sys.argv[1])
def alive(pid):
    try:
        os.kill(pid, 0)
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return state not in "ZX"
    except OSError:
        return False
others = [p for p in d.glob("run.*") if alive(int(p.suffix[1:]))]
if others:
    (d / "overlap").write_text(" ".join(p.name for p in others))
me = d / f"run.{os.getpid()}"
me.write_text(sys.stdin.read())
signal.signal(signal.SIGTERM, lambda *a: (me.unlink(), sys.exit(0)))
time.sleep(float(os.environ.get("GUARD_SLEEP", "60")))
print("finished")
"""


def test_a_worker_killed_as_its_command_starts_leaves_no_second_run(town, tmp_path):
    guard = tmp_path / "guard.py"
    guard.write_text(OVERLAP_GUARD)
    runs = tmp_path / "runs"
    runs.mkdir()
    for attempt in range(3):
        name = f"w{attempt}"
        town.spawn(name, cli=f"{PY} {guard} {runs}")
        task = town.assign(name, f"attempt {attempt}")
        first = eventually(lambda: sorted(runs.glob("run.*")), timeout=10, what="the command")
        started = time.monotonic()
        pid = int(town.redis.hget(town.keys.worker(town.agent(name).id), "pid"))
        os.kill(pid, 9)  # within a few ms of the command starting
        assert time.monotonic() - started < 0.2
        eventually(lambda: not Path(f"/proc/{pid}").exists() or
                   open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
                   what="the worker gone")
        [back] = [a for a in town.recover() if a.name == name]
        assert back.state is AgentState.STOPPED and town.task(task).state is TaskState.ASSIGNED
        first_pid = int(first[0].suffix[1:])
        assert not Path(f"/proc/{first_pid}").exists() or \
            open(f"/proc/{first_pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        town.kill(name)
        for leftover in runs.glob("run.*"):
            leftover.unlink()
    assert not (runs / "overlap").exists()


# ------------------------------------------------------------------ 6. a server outage


def test_agents_ride_out_a_15_second_outage(town, tmp_path):
    echo = tmp_path / "echo.py"
    echo.write_text("import sys\nprint('cmd:', sys.stdin.read().strip())\n")
    town.spawn("cmd", cli=f"{PY} {echo}")
    town.spawn("fn", fn=lambda task: f"fn: {task.description}")
    assert town.wait(task=town.assign("cmd", "before"), timeout=10).result == "cmd: before"
    time.sleep(1.2)  # past the AOF's once-a-second fsync
    server = ManagedServer(town.root / ".tt")
    os.kill(server.pid(), 9)
    time.sleep(15)
    server.start()  # the data comes back from the AOF; no agent is touched by hand
    for name in ("cmd", "fn"):
        task = town.assign(name, "after")
        assert town.wait(task=task, timeout=30).result == f"{name}: after"
    assert {a.name: a.state for a in town.agents()} == {"cmd": AgentState.IDLE, "fn": AgentState.IDLE}


def test_recover_stops_a_command_known_only_by_its_run_id(town):
    """The worker died before it could record its command's pid: the run id it recorded
    first is in the command's environment, and that is enough to stop it."""
    dev = town.spawn("dev", cli="cat", start=False)
    run = uuid.uuid4().hex
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True,
                              env={**os.environ, "TINYTOWN_RUN_ID": run})
    dead = subprocess.Popen(["true"])
    dead.wait()
    town.redis.hset(town.keys.agent(dev.id), "state", "working")
    town.redis.hset(town.keys.worker(dev.id), mapping={
        "pid": dead.pid, "host": socket.gethostname(), "kind": "process", "run": run, "token": "t"})
    [back] = town.recover()
    assert back.name == "dev" and back.state is AgentState.STOPPED
    assert orphan.wait(5) is not None  # stopped by recover
