"""The shared worker process: many CLI agents' workers in one process per host and town
(``spawn(shared=True)``, ``spawn_many``). Real processes, real kill -9s.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tinytown_nb.core import AgentExists, AgentState, ConfigError, TaskState
from tinytown_nb.core.worker import host

from conftest import eventually, script



pytestmark = pytest.mark.usefixtures("fast_heartbeat")



def worker_field(town, name: str, field: str) -> str | None:
    return town.redis.hget(town.keys.worker(town.agent(name).id), field)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_spawn_many_runs_every_agent_in_one_process_each_its_own_agent(town):
    names = [f"dev{i}" for i in range(6)]
    made = town.spawn_many(names, cli="cat")
    assert [a.name for a in made] == names and {a.state for a in made} == {AgentState.IDLE}
    pids = {worker_field(town, n, "pid") for n in names}
    assert len(pids) == 1  # one process
    pid = int(pids.pop())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--host" in cmdline and str(town.root).encode() in cmdline
    assert {worker_field(town, n, "shared") for n in names} == {"1"}
    assert len({worker_field(town, n, "token") for n in names}) == 6  # a token each
    tasks = [town.assign(n, f"hello from {n}") for n in names]
    assert [town.wait(task=t, timeout=10).result for t in tasks] == [f"hello from {n}" for n in names]
    for n in names:  # each agent logs to its own file; the process to its own
        assert "started for agent " + n in (town.root / ".tt" / "logs" / f"{n}.log").read_text()
    assert "started the worker of dev0" in host.log_path(town.store).read_text()
    # the agent records are tinytown's, unchanged: the Rust tt sees ordinary agents
    record = town.redis.hgetall(town.keys.agent(made[0].id))
    assert "shared" not in record and record["state"] == "idle"


def test_kill_restart_and_one_agents_hang_leave_the_others_working(town, tmp_path):
    hang = script(tmp_path, "hang", """
        import sys, time
        sys.stdin.read()
        time.sleep(60)
    """)
    town.spawn_many(["a", "b", "c"], cli="cat")
    town.spawn("slow", cli=hang, shared=True)
    pid = int(worker_field(town, "a", "pid"))
    assert int(worker_field(town, "slow", "pid")) == pid
    stuck = town.assign("slow", "never ends")
    eventually(lambda: town.task(stuck).state is TaskState.RUNNING, what="the hanging run")
    assert town.wait(task=town.assign("b", "b works"), timeout=10).result == "b works"
    town.kill("a")
    eventually(lambda: town.agent("a").state is AgentState.STOPPED, what="a stopped")
    assert alive(pid)  # the process goes on for the others
    assert town.wait(task=town.assign("c", "c works"), timeout=10).result == "c works"
    again = town.restart("a")
    assert again.state is AgentState.IDLE and worker_field(town, "a", "shared") == "1"
    assert int(worker_field(town, "a", "pid")) == pid  # back in the same process
    assert town.wait(task=town.assign("a", "a again"), timeout=10).result == "a again"
    town.kill("slow")  # its hung command is stopped; the task goes back, not lost
    eventually(lambda: town.task(stuck).state is TaskState.ASSIGNED, what="the hung task put back")
    # an agent whose record vanished under it ends alone
    town.redis.delete(town.keys.agent(town.agent("c").id))
    assert town.wait(task=town.assign("b", "b still"), timeout=10).result == "b still"


def test_kill9_of_the_shared_process_loses_nothing(town, tmp_path):
    slow = script(tmp_path, "slow", """
        import sys, time
        text = sys.stdin.read()
        time.sleep(0.4)
        print("done " + text)
    """)
    names = ["w0", "w1", "w2", "w3"]
    town.spawn_many(names, cli=slow)
    pid = int(worker_field(town, "w0", "pid"))
    tasks = [t.id for n in names for t in town.assign_many(n, [f"{n}-{j}" for j in range(3)])]
    eventually(lambda: sum(town.task(t).state is TaskState.RUNNING for t in tasks) >= 2,
               what="runs in progress")
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not alive(pid), what="the process to die")
    recovered = town.recover()
    assert {a.name for a in recovered} >= set(names)
    for n in names:
        assert town.agent(n).state is AgentState.STOPPED
        town.restart(n)
    assert int(worker_field(town, "w0", "pid")) != pid  # a new shared process
    done = [town.wait(task=t, timeout=30) for t in tasks]
    assert all(t.state is TaskState.COMPLETED for t in done)
    assert sorted(t.result for t in done) == sorted(f"done {n}-{j}" for n in names for j in range(3))


def test_shutdown_stops_the_shared_process_and_puts_work_back(town, tmp_path):
    hang = script(tmp_path, "hang", """
        import sys, time
        sys.stdin.read()
        time.sleep(60)
    """)
    town.spawn_many(["h0", "h1"], cli=hang)
    pid = int(worker_field(town, "h0", "pid"))
    task = town.assign("h0", "interrupted")
    eventually(lambda: town.task(task).state is TaskState.RUNNING, what="running")
    town.shutdown()
    assert not alive(pid)
    reopened = type(town).connect(town.root)
    try:
        assert reopened.task(task).state is TaskState.ASSIGNED
        assert {a.state for a in reopened.agents()} == {AgentState.STOPPED}
    finally:
        reopened.shutdown()


def test_an_idle_shared_process_exits_and_the_next_spawn_starts_another(town, monkeypatch):
    monkeypatch.setenv("TINYTOWN_HOST_IDLE_EXIT", "1")
    town.spawn("one", cli="cat", shared=True)
    first = int(worker_field(town, "one", "pid"))
    town.kill("one")
    eventually(lambda: not alive(first), timeout=10, what="the idle process to exit")
    assert not town.redis.exists(town.keys.host(host.hostname()))
    town.spawn("two", cli="cat", shared=True)
    second = int(worker_field(town, "two", "pid"))
    assert second != first and alive(second)
    assert town.wait(task=town.assign("two", "ok"), timeout=10).result == "ok"


def test_garbage_and_stale_orders_on_the_control_list_are_dropped(town):
    control = town.keys.host_control(host.hostname())
    town.redis.rpush(control, "not json", json.dumps(["start"]), b"\xff\xfe",
                     json.dumps({"op": "start", "agent": "nobody", "token": "stale"}))
    town.spawn("fine", cli="cat", shared=True)
    assert town.wait(task=town.assign("fine", "ok"), timeout=10).result == "ok"
    eventually(lambda: town.redis.llen(control) == 0, what="the orders taken")
    text = host.log_path(town.store).read_text()
    assert "ignored a control entry" in text and "stale" in text


def test_spawn_many_refusals_write_nothing(town):
    town.spawn("taken", cli="cat")
    before = sorted(town.redis.keys("*"))
    with pytest.raises(ConfigError, match="given twice"):
        town.spawn_many(["x", "x"], cli="cat")
    with pytest.raises(AgentExists, match="taken"):
        town.spawn_many(["y", "taken"], cli="cat")
    with pytest.raises(ConfigError, match="not found|not installed|No such|cannot run"):
        town.spawn_many(["z"], cli="no-such-program-xyz")
    with pytest.raises(ConfigError, match="shared=True is for CLI agents"):
        town.spawn("f", fn=lambda task: 1, shared=True)
    with pytest.raises(ConfigError, match="at least one"):
        town.spawn_many([], cli="cat")
    assert sorted(town.redis.keys("*")) == before


def test_the_faces_spawn_several_agents_at_once(town, tmp_path):
    from ipshell import loaded_shell
    from test_cli import ttnb

    code, out, err = ttnb(town.root, "spawn", "x", "y", "-c", "cat")
    assert code == 0, err
    assert out.count("Spawned") == 2
    code, out, err = ttnb(town.root, "spawn", "x", "z", "--foreground", "-c", "cat")
    assert code != 0 and "--foreground is for one agent" in err
    shell = loaded_shell(tmp_path / "ipython")
    ip = next(shell)
    try:
        ip.run_cell(f"%tt_init {town.root}")
        made = ip.run_cell("%tt_spawn p q --cli cat").result
        assert made.name.tolist() == ["p", "q"] and set(made.state.astype(str)) == {"idle"}
        again = ip.run_cell("%tt_spawn p q --cli cat").result  # the cell run again: the same agents
        assert again.id.tolist() == made.id.tolist()
        single = ip.run_cell("%tt_spawn r --cli cat --shared").result
        assert single.state is AgentState.IDLE
        pids = {worker_field(town, n, "pid") for n in ("x", "y", "p", "q", "r")}
        assert len(pids) == 1 and {worker_field(town, n, "shared") for n in ("x", "p", "r")} == {"1"}
    finally:
        shell.close()  # (shuts the town down: the magics connected it)
