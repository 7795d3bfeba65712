"""The ``ttnb`` command line, run for real: subprocesses of ``python -m tinytown_nb`` and the
installed ``ttnb`` script against a real managed server.

Most tests share one town (module-scoped) to stay fast; tests that delete things get their
own (the ``town`` fixture of conftest). Every verb runs at least once as a subprocess; the
bad-input matrices and follow-up checks call :func:`tinytown_nb.cli.main` in-process (same
code, same exit codes, ~50x faster). Agents made with ``start=False`` have no worker, so what
is queued for them stays put; a few tests start real workers running ``cat``/``sleep``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import kill_leftovers
from tinytown_nb.cli import main
from tinytown_nb.core import SUPERVISOR_ID, Town
from tinytown_nb.core.server import ManagedServer

TTNB = Path(sys.executable).parent / "ttnb"
UUID_IN_PARENS = re.compile(r"\(([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\)")


def ttnb(root, *args, env=None, script=False, sub=True) -> tuple[int, str, str]:
    """Run ``ttnb [-t root] args``: (exit code, stdout, stderr).

    ``sub=True`` runs ``python -m tinytown_nb`` (or the ``ttnb`` script) in a subprocess with
    a clean environment (no TINYTOWN_* inherited, ``env`` added); ``sub=False`` calls
    :func:`main` in this process.
    """
    argv = [*(["-t", str(root)] if root is not None else []), *map(str, args)]
    if not sub:
        assert env is None and not script
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
        return code, out.getvalue(), err.getvalue()
    cmd = [str(TTNB)] if script else [sys.executable, "-m", "tinytown_nb"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TINYTOWN_")}
    clean.update(env or {})
    p = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=clean, timeout=60)
    return p.returncode, p.stdout, p.stderr


def ok(root, *args, **kw) -> str:
    """Run a command that must succeed (subprocess unless ``sub=False``); its stdout."""
    code, out, err = ttnb(root, *args, **kw)
    assert code == 0, f"ttnb {' '.join(map(str, args))} → {code}: {err}"
    assert "Traceback" not in err
    return out


def fails(root, *args, code=1, **kw) -> str:
    """Run a command that must fail; exit 1 ⇒ exactly one `ttnb: error:` line on stderr."""
    got, out, err = ttnb(root, *args, **kw)
    assert got == code, f"ttnb {' '.join(map(str, args))} → {got}: {out}{err}"
    assert "Traceback" not in err
    if code == 1:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ttnb: error: "), err
    if code == 2:
        assert "usage: ttnb" in err
    return err


def iok(root, *args) -> str:
    return ok(root, *args, sub=False)


def ifails(root, *args, code=1) -> str:
    return fails(root, *args, code=code, sub=False)


def new_id(out: str) -> str:
    return UUID_IN_PARENS.search(out).group(1)


def as_json(root, *args, sub=False, **kw):
    return json.loads(ok(root, *args, "--json", sub=sub, **kw))


@pytest.fixture(scope="module")
def ctown(tmp_path_factory):
    """One town for the module, with worker-less agents ``dev`` and ``helper``."""
    t = Town.init(tmp_path_factory.mktemp("cli") / "town", name="clitest")
    t.spawn("dev", cli="cat", start=False)
    t.spawn("helper", cli="cat", start=False, role="reviewer")
    yield t
    try:
        t.stop_all()
        t.shutdown()
    finally:
        kill_leftovers(t.root)


@pytest.fixture
def root(ctown):
    return ctown.root


# ----------------------------------------------------------------------------- basics


def test_help_version_and_usage_errors(root):
    assert "assign" in ok(None, "--help")
    assert ok(None, "-V").startswith("ttnb ")
    assert "the following arguments are required: name" in fails(root, "spawn", code=2)
    assert "give an AGENT or --all" in fails(root, "inbox", code=2)  # found after parsing


@pytest.mark.parametrize("argv", [
    [], ["spawn"], ["assign", "dev"], ["send", "dev"], ["task"], ["task", "fail", "x"],
    ["backlog"], ["backlog", "claim", "x"], ["send", "a", "b", "--query", "--info"],
    ["spawn", "x", "--max-rounds", "0"], ["spawn", "x", "--idle-timeout", "soon"],
    ["events", "-c", "many"], ["history", "-n", "0"], ["reclaim", "--to", "dev", "--to-backlog"],
    ["wait", "--timeout", "-1"], ["bogus"], ["kill"], ["task", "show"],
    ["inbox"], ["inbox", "dev", "--all"], ["wait"], ["wait", "dev", "--all"], ["task", "current"],
])
def test_missing_or_bad_arguments_exit_2(root, argv):
    ifails(root, *argv, code=2)


def test_not_initialized_is_one_line(tmp_path):
    assert "not initialized" in fails(tmp_path, "list").lower()


@pytest.mark.parametrize("argv", [
    ["assign", "ghost", "do it"], ["send", "ghost", "hi"], ["inbox", "ghost"], ["kill", "ghost"],
    ["interrupt", "ghost"], ["resume", "ghost"], ["close", "ghost"], ["restart", "ghost"],
    ["task", "list", "--agent", "ghost"], ["task", "current", "ghost"], ["wait", "ghost"],
    ["backlog", "assign-all", "ghost"], ["events", "--agent", "ghost"], ["history", "-a", "ghost"],
    ["spawn", "kid", "--parent", "ghost", "--no-start"], ["send", "dev", "hi", "--from", "ghost"],
])
def test_unknown_agent_exits_1_with_one_line(root, argv):
    assert ifails(root, *argv).startswith("ttnb: error: No agent 'ghost'")


def test_unknown_agent_in_a_subprocess(root):
    assert "No agent 'ghost' in this town" in fails(root, "assign", "ghost", "do it")
    assert "No agent 'ghost'" in fails(root, "kill", "ghost", script=True)


def test_console_script_env_town_dir_and_flag_after_verb(root, tmp_path):
    assert TTNB.exists(), "the ttnb console script is not installed in this venv"
    out = ok(None, "list", script=True, env={"TINYTOWN_TOWN_DIR": str(root)})
    assert re.search(r"^  \S+ \[dev\] \([0-9a-f]{4}\) - Starting$", out, re.M), out
    # -t after the verb, and -t wins over the environment
    assert "[dev]" in ok(None, "list", "-t", root, env={"TINYTOWN_TOWN_DIR": str(tmp_path / "nowhere")})


# ----------------------------------------------------------------------------- town


def test_init_reconnect_and_stop_server(tmp_path):
    where = tmp_path / "fresh"
    try:
        out = ok(where, "init", "-n", "fresh")
        assert "Initialized town 'fresh'" in out and "unix://" in out
        assert "No agents" in ok(where, "list")
        assert "Connected to existing town 'fresh'" in iok(where, "init")
        assert "already holds town 'fresh'" in ifails(where, "init", "-n", "other")
        assert "Redis server stopped" in ok(where, "stop", "--server")
        assert not ManagedServer(where / ".tt").is_running()
        assert "bad/name" in ifails(tmp_path / "bad", "init", "-n", "bad/name")
        assert not (tmp_path / "bad" / "tinytown.toml").exists()
    finally:
        ManagedServer(where / ".tt").stop()
        kill_leftovers(where)


def test_init_with_url_uses_that_redis(ctown, tmp_path):
    url = ctown.config.redis_url()
    assert url in ok(tmp_path / "side", "init", "-n", "side", "--url", url)
    assert "No agents" in iok(tmp_path / "side", "list")
    assert "left running" in iok(tmp_path / "side", "stop", "--server")
    assert ctown.redis.ping()


def test_status(ctown, root):
    out = ok(root, "status")
    assert "Town: clitest" in out and f"Redis: {ctown.url}" in out
    assert re.search(r"\[dev\] \([0-9a-f]{4}\) - Starting  inbox T/Q/I/C \d+/\d+/\d+/\d+", out)
    assert re.search(r"Tasks: \d+ pending, \d+ in flight, \d+ done", out)
    assert "backlog:" in iok(root, "status", "--tasks")
    data = as_json(root, "status", "--tasks", sub=True)
    assert data["town"] == "clitest" and {"dev", "helper"} <= {a["name"] for a in data["agents"]}
    assert set(data["tasks"]) == {"pending", "assigned", "running", "completed", "failed", "cancelled"}
    assert isinstance(data["backlog"], int) and isinstance(data["task_list"], list)


# ----------------------------------------------------------------------------- agents


def test_spawn_and_list(ctown, root):
    out = ok(root, "spawn", "sam", "-c", "cat", "--role", "worker", "--nickname", "Sammy", "--no-start",
             "--max-rounds", "3", "--idle-timeout", "5", "--backlog", "--parent", "dev")
    assert out.startswith("Spawned Sammy [worker] (") and "- Starting, cli cat" in out
    assert "  Sammy [worker] (" in ok(root, "list")
    agents = {a["name"]: a for a in as_json(root, "list", sub=True)}
    assert agents["sam"]["parent_agent_id"] == ctown.agent("dev").id
    assert agents["sam"]["label"] == "Sammy [worker]" and agents["sam"]["state"] == "starting"
    assert "already starting" in ifails(root, "spawn", "sam", "--no-start")
    assert "not installed" in ifails(root, "spawn", "nope", "-c", "no-such-program-xyz")
    ifails(root, "spawn", "bad/name", "--no-start")
    assert not any(a.name in ("nope", "bad/name") for a in ctown.agents())


def test_agent_lifecycle_verbs(ctown, root):
    ctown.spawn("life", cli="cat", start=False)
    assert re.search(r"Interrupted \S+ \[life\] \(\w{4}\) - Paused", ok(root, "interrupt", "life"))
    assert "life" in fails(root, "interrupt", "life")  # already paused: InvalidState, one line
    assert ok(root, "resume", "life").rstrip().endswith("- Idle")
    assert ok(root, "close", "life").rstrip().endswith("- Draining")
    assert ok(root, "kill", "life").rstrip().endswith("- Stopped")
    assert "Stopped" in ok(root, "wait", "life", "--timeout", "5")  # a stopped agent is done
    assert "Restarted" in ok(root, "restart", "life")  # starts a real worker (cat)
    assert ctown.agent("life").state.value in ("starting", "idle")
    assert iok(root, "kill", "life").rstrip().endswith("- Stopped")


def test_real_worker_runs_a_task(ctown, root):
    assert re.search(r"- Idle, cli cat$", ok(root, "spawn", "w1", "-c", "cat", "--idle-timeout", "30"), re.M)
    tid = new_id(iok(root, "assign", "w1", "echo me please"))
    assert "✅" in ok(root, "wait", "--task", tid, "--timeout", "30")
    task = as_json(root, "task", "show", tid)
    assert task["state"] == "completed" and "echo me please" in task["result"]
    iok(root, "kill", "w1")


def test_restart_foreground_with_rounds_runs_here_then_exits(ctown, root):
    ok(root, "spawn", "fg", "-c", "cat", "--no-start")
    iok(root, "kill", "fg")  # restart is for stopped agents
    tid = new_id(iok(root, "assign", "fg", "done in the foreground"))
    out = ok(root, "restart", "fg", "--foreground", "--rounds", "1")  # returns: 1 round, then stop
    assert "Restarted" in out and "Max rounds (1) reached" in out  # the worker's log, here
    assert as_json(root, "task", "show", tid)["result"] == "done in the foreground"
    assert ctown.agent("fg").state.value == "stopped"
    fails(root, "restart", "fg", "--rounds", "0", code=2)


def test_spawn_foreground_until_ctrl_c(ctown, root, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYTOWN_")}
    proc = subprocess.Popen([sys.executable, "-m", "tinytown_nb", "-t", str(root), "spawn", "fg2",
                             "-c", "cat", "--foreground"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while not any(a.name == "fg2" and a.state.value == "idle" for a in ctown.agents()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        tid = new_id(iok(root, "assign", "fg2", "hello"))
        assert "✅" in ok(root, "wait", "--task", tid, "--timeout", "20")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in out and "Worker shut down" in out
    assert ctown.agent("fg2").state.value == "stopped"
    fails(root, "spawn", "fg3", "-c", "cat", "--foreground", "--no-start")


def test_status_deep_shows_activity_and_logs(ctown, root):
    ok(root, "spawn", "deep", "-c", "cat")
    tid = new_id(iok(root, "assign", "deep", "look deeper"))
    ok(root, "wait", "--task", tid, "--timeout", "30")
    out = iok(root, "status", "--deep")
    block = out[out.index("[deep] ("):]
    assert re.search(r"rounds 1, tasks completed 1, up \S+", block)
    assert "| Round 1: ✅ completed" in block
    assert "deep.log:" in block and "worker" in block and "deep_round_1.log:" in block
    assert "look deeper" in block  # what cat printed in round 1
    agent = next(a for a in as_json(root, "status", "--deep")["agents"] if a["name"] == "deep")
    assert agent["activity"] and set(agent["logs"]) == {"deep.log", "deep_round_1.log"}
    iok(root, "kill", "deep")


def test_task_current(ctown, root):
    ctown.spawn("cur", cli="cat", start=False)
    assert "No current task for" in ok(root, "task", "current", "cur")
    assert "No current task for" in ok(root, "task", "current", env={"TINYTOWN_AGENT_NAME": "cur"})
    assert iok(root, "task", "current", "cur", "--json").strip() == "null"
    ctown.spawn("slow", cli="sleep 30")
    tid = ctown.assign("slow", "nap").id
    deadline = time.monotonic() + 15
    while ctown.agent("slow").current_task != tid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tid in iok(root, "task", "current", "slow")
    env = {"TINYTOWN_AGENT_ID": ctown.agent("slow").id, "TINYTOWN_AGENT_NAME": "cur"}
    assert as_json(root, "task", "current", env=env, sub=True)["id"] == tid  # the id wins
    assert "Timed out" in ifails(root, "wait", "slow", "--timeout", "0.3")
    ctown.kill("slow")


# ----------------------------------------------------------------------------- tasks


def test_assign_complete_show_list(ctown, root):
    out = ok(root, "assign", "dev", "Write the docs", "--tags", "docs, cli")
    tid = new_id(out)
    assert f"Assigned task {tid[:4]} ({tid}) to " in out
    shown = as_json(root, "task", "show", tid, sub=True)
    assert shown["state"] == "assigned" and shown["tags"] == ["docs", "cli"]
    assert shown["assigned_to"] == ctown.agent("dev").id
    assert f"Task {tid[:4]} completed" in ok(root, "task", "complete", tid[:8], "--result", "All done")
    text = ok(root, "task", "show", tid)
    assert "✅ Completed" in text and "All done" in text and "Write the docs" in text
    assert tid in [t["id"] for t in as_json(root, "task", "list", "--state", "completed", sub=True)]
    assert tid not in [t["id"] for t in as_json(root, "task", "list", "--state", "assigned")]
    listed = ok(root, "task", "list", "--agent", "dev")
    assert re.search(rf"✅ {tid[:4]}  Write the docs  → \S+ \[dev\]", listed)
    ifails(root, "task", "complete", tid)  # already completed: refused (upstream re-completes, §11.21)
    assert "Unknown task state" in ifails(root, "task", "list", "--state", "bogus")
    assert "No task" in fails(root, "task", "show", "ffffffff")
    assert "empty" in ifails(root, "assign", "dev", "   ")
    assert "Timed out" in fails(root, "wait", "dev", "--timeout", "0.3")  # no worker: never idle
    assert "✅" in iok(root, "wait", "--task", tid)


def test_task_list_in_pages_and_limit(town, monkeypatch):
    from tinytown_nb.core import tasks as tasks_mod
    monkeypatch.setattr(tasks_mod, "PAGE", 3)  # in-process runs print several pages
    town.spawn("dev", start=False)
    made = town.assign_many("dev", [f"Job {i}" for i in range(8)])
    time.sleep(0.01)  # the index orders by the millisecond of the last change
    town.complete_task(made[5].id)
    root = town.root
    lines = iok(root, "task", "list").splitlines()
    assert [ln.split()[2:4] for ln in lines] == [["Job", str(i)] for i in range(8)]  # oldest first
    assert [t["id"] for t in as_json(root, "task", "list")] == [t.id for t in made]
    assert [t["id"] for t in as_json(root, "task", "list", sub=True)] == [t.id for t in made]
    newest = iok(root, "task", "list", "--limit", "1")
    assert newest.splitlines() == [ln for ln in lines if "Job 5" in ln]
    assert len(iok(root, "task", "list", "--limit", "4").splitlines()) == 4
    assert "No tasks." in iok(root, "task", "list", "--state", "failed")
    assert as_json(root, "task", "list", "--state", "failed") == []
    assert "must be 1 or more" in ifails(root, "task", "list", "--limit", "0", code=2)


def test_archive_verb(town):
    town.spawn("dev", start=False)
    done, live = town.assign_many("dev", ["Old work", "Still open"])
    town.complete_task(done.id, "ok")
    root = town.root
    assert "Archived 0 task(s)" in ok(root, "archive")  # default: older than 7 days
    assert "No archived tasks." in iok(root, "archive", "--list")
    assert as_json(root, "archive", "--older-than", "0s") == {"archived": 1}
    assert re.search(rf"✅ {done.id[:4]}  Old work  → \S+ \[dev\]", ok(root, "archive", "--list"))
    assert [t["id"] for t in as_json(root, "archive", "--list")] == [done.id]
    assert [t["id"] for t in as_json(root, "task", "list")] == [live.id]
    err = fails(root, "archive", "--older-than", "soon")
    assert "older_than must be an age" in err and err.count("\n") == 1
    assert "Only finished tasks" in ifails(root, "archive", "--states", "running")


def test_task_fail_and_cancel(ctown, root):
    t1, t2 = (ctown.assign("dev", d).id for d in ("Might break", "Not needed"))
    assert "failed" in ok(root, "task", "fail", t1, "--error", "boom")
    assert "cancelled" in ok(root, "task", "cancel", t2, "--reason", "dup")
    assert ctown.task(t1).state.value == "failed" and ctown.task(t1).result == "boom"
    assert ctown.task(t2).state.value == "cancelled"
    ifails(root, "task", "cancel", t2)
    ctown.assign("dev", "Stays open")  # dev has no worker
    assert "Timed out" in fails(root, "wait", "--all", "--timeout", "0.2")


# ----------------------------------------------------------------------------- messages


def test_send_sender_identity_and_kinds(ctown, root):
    box = ctown.spawn("box", cli="cat", start=False)
    dev, helper = ctown.agent("dev"), ctown.agent("helper")
    assert "from supervisor" in ok(root, "send", "box", "plain")
    ok(root, "send", "box", "by name", env={"TINYTOWN_AGENT_NAME": "dev"})
    ok(root, "send", "box", "by id", env={"TINYTOWN_AGENT_ID": helper.id, "TINYTOWN_AGENT_NAME": "dev"})
    ok(root, "send", "box", "bad id", env={"TINYTOWN_AGENT_ID": "not-a-uuid", "TINYTOWN_AGENT_NAME": "dev"})
    ok(root, "send", "box", "explicit", "--from", "helper", env={"TINYTOWN_AGENT_NAME": "dev"})
    fails(root, "send", "box", "ghostly", env={"TINYTOWN_AGENT_NAME": "ghost"})
    for flag, text in (("--query", "why?"), ("--info", "fyi"), ("--ack", "thanks"), ("--urgent", "now!")):
        iok(root, "send", "box", text, flag)
    inbox = as_json(root, "inbox", "box", sub=True)
    assert [(m["text"], m["type"], m["from"]) for m in inbox] == [
        ("now!", "task", SUPERVISOR_ID),  # urgent first
        ("plain", "task", SUPERVISOR_ID), ("by name", "task", dev.id), ("by id", "task", helper.id),
        ("bad id", "task", dev.id), ("explicit", "task", helper.id),
        ("why?", "query", SUPERVISOR_ID), ("fyi", "informational", SUPERVISOR_ID),
        ("thanks", "confirmation", SUPERVISOR_ID)]
    text = ok(root, "inbox", "box")
    assert text.startswith(f"{box.display_label} ({box.short_id}): 9 message(s)  [T] 6  [Q] 1  [I] 1  [C] 1")
    assert "[Q] from supervisor: question: why?" in text
    assert "[T] from supervisor: now!" in text.splitlines()[1]
    iok(root, "send", "supervisor", "report in")
    everyone = {b["name"]: b["messages"] for b in as_json(root, "inbox", "--all")}
    assert "report in" in [m["text"] for m in everyone["supervisor"]] and len(everyone["box"]) == 9
    assert "supervisor" in ok(root, "inbox", "-a")
    assert "empty" in ifails(root, "send", "box", "  ")


# ----------------------------------------------------------------------------- backlog


def test_backlog_verbs(ctown, root):
    tid = new_id(ok(root, "backlog", "add", "Triage issues", "--tags", "ops,urgent"))
    assert f"  {tid[:4]} ({tid}) - Triage issues [ops, urgent]" in ok(root, "backlog", "list")
    assert as_json(root, "backlog", "list", sub=True)[-1]["tags"] == ["ops", "urgent"]
    ifails(root, "backlog", "claim", tid, "ghost")
    assert tid in [t.id for t in ctown.backlog()]  # not lost (upstream §11.11)
    assert "claimed by" in ok(root, "backlog", "claim", tid[:8], "dev")
    assert ctown.task(tid).assigned_to == ctown.agent("dev").id and tid not in [t.id for t in ctown.backlog()]
    assert "Cannot claim" in ifails(root, "backlog", "claim", tid, "dev")  # already assigned
    a, b = (ctown.backlog_add(d).id for d in ("one", "two"))
    waiting = len(ctown.backlog())
    assert f"Assigned {waiting} backlog task(s)" in ok(root, "backlog", "assign-all", "helper")
    assert {ctown.task(a).assigned_to, ctown.task(b).assigned_to} == {ctown.agent("helper").id}
    assert "Backlog is empty" in iok(root, "backlog", "list")
    gone = ctown.backlog_add("temporary").id
    assert "Removed" in ok(root, "backlog", "remove", gone)
    ifails(root, "task", "show", gone)
    assert "not in the backlog" in ifails(root, "backlog", "remove", tid)
    assert ctown.task(tid).state.value == "assigned"  # a failed remove leaves the task alone


# ----------------------------------------------------------------------------- events


def test_events_and_history(ctown, root):
    lines = ok(root, "events", "-c", "2", "--json").splitlines()
    assert [json.loads(x)["id"] for x in lines] == [e.id for e in ctown.events(2)]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  agent_spawned +Agent dev spawned",
                    iok(root, "events", "-c", "1"))
    last3 = as_json(root, "history", "-n", "3", sub=True)
    assert [e["id"] for e in last3] == [e.id for e in ctown.history(3)]
    assert ok(root, "history", "-n", "2").count("\n") == 2
    dev = ctown.agent("dev").id
    mine = as_json(root, "history", "-a", "dev")
    assert mine and all(dev in (e["data"].get("agent_id"), e["data"].get("parent_agent_id")) for e in mine)
    assert iok(root, "events", "--agent", "dev", "-c", "1").count("\n") == 1


def test_events_follow_never_repeats(ctown, root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYTOWN_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytown_nb", "-t", str(root), "events", "-f", "-c", "100000", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C works
    try:
        time.sleep(1.0)
        new = [ctown.backlog_add(f"follow {i}").id for i in range(2)]
        time.sleep(1.6)  # three polls after the new events
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert len(ids) == len(set(ids)), "an event was printed twice"
    assert ids == [e.id for e in ctown.events(100000)][:len(ids)]
    printed = [json.loads(line)["data"].get("task_id") for line in out.splitlines()]
    assert all(printed.count(t) == 1 for t in new)


def test_server_dying_under_a_command_is_one_line(town):
    town.backlog_add("something to print")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYTOWN_")}
    proc = subprocess.Popen([sys.executable, "-m", "tinytown_nb", "-t", str(town.root), "events", "-f"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "something to print" in proc.stdout.readline()  # connected and following
        town.server.stop()
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        Town.connect(town.root).disconnect()  # the server back, for the fixture's shutdown
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"ttnb: error: Redis at {town.url} is unreachable"), err


# ----------------------------------------------------------------------------- cleanup verbs


def test_stop_prune(town):
    for name in ("a", "b"):
        town.spawn(name, cli="cat", start=False)
    assert "Stopped 2 agent(s)" in ok(town.root, "stop")
    assert "Stopped 0 agent(s)" in iok(town.root, "stop")
    assert iok(town.root, "list").count("- Stopped") == 2
    assert "Pruned 2 agent(s)" in ok(town.root, "prune")
    assert "No agents" in iok(town.root, "list")
    town.spawn("c", cli="cat", start=False)
    assert "Pruned 0" in iok(town.root, "prune")
    assert "Pruned 1" in ok(town.root, "prune", "--all")


def test_reset_needs_force(town):
    town.spawn("a", cli="cat", start=False)
    tid = town.backlog_add("keep me").id
    out = ok(town.root, "reset")
    assert "Nothing deleted" in out and "1 agent(s), 1 task(s)" in out
    assert "Nothing deleted" in iok(town.root, "reset", "--agents-only")
    assert [a.name for a in town.agents()] == ["a"] and town.task(tid)
    assert "Deleted" in ok(town.root, "reset", "--force", "--agents-only")
    assert town.agents() == [] and town.task(tid)
    assert "Deleted" in iok(town.root, "reset", "--force")
    assert "No tasks" in iok(town.root, "task", "list")


def test_recover_and_reclaim(town):
    town.spawn("gone", cli="cat", start=False)
    town.spawn("other", cli="cat", start=False)
    assert "No stale agents" in ok(town.root, "recover")
    time.sleep(0.05)
    out = iok(town.root, "recover", "--stale-after", "0.01")  # worker-less agents never heartbeat
    assert "Recovered 2 agent(s)" in out and "[gone]" in out
    tid = town.assign("gone", "unfinished").id
    assert f"listed     task {tid[:4]} (inbox of gone)" in ok(town.root, "reclaim")
    assert as_json(town.root, "reclaim", "--from", "gone")[0]["action"] == "listed"
    assert "Nothing to reclaim" in iok(town.root, "reclaim", "--from", "other")
    assert "backlogged" in ok(town.root, "reclaim", "--from", "gone", "--to-backlog")
    assert tid in [t.id for t in town.backlog()]
    orphan = town.assign("gone", "orphaned").id
    assert "orphan" in ifails(town.root, "reclaim", "--cancel")
    assert "cancelled" in ok(town.root, "reclaim", "--orphan-tasks", "--cancel")
    assert town.task(orphan).state.value == "cancelled"
    ifails(town.root, "reclaim", "--from", "ghost")
