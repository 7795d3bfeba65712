"""Wire compatibility with the Rust ``tt`` 0.10 through a real town (spec §2.1-§2.3, §3.1,
§3.4): records written byte-for-byte as Rust writes them are read, resolved and completed
by the Town; what the Town writes has exactly the fields and spellings Rust reads."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tinytown_nb.core import (
    SUPERVISOR_ID, AgentExists, AgentState, AmbiguousAgent, TaskNotFound, TaskState,
)
from tinytown_nb.core.models import EVENT_TYPES, parse_ts

AID = "3f2a8c1e-9b7d-4e6f-a123-456789abcdef"
OLD = "0c0ffee0-1111-4222-8333-444444444444"  # an agent written by tt 0.8
TID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
T0 = "2026-04-18T12:34:56.123456789+00:00"
T1 = "2026-04-18T12:40:00.500+00:00"  # chrono AutoSi: 0, 3, 6 or 9 digits

RUST_AGENT = {  # Agent::save in 0.10: 11 fields always, optionals only when set
    "id": AID, "name": "backend", "agent_type": "worker", "state": "working", "cli": "claude",
    "created_at": T0, "last_heartbeat": T1, "tasks_completed": "3", "rounds_completed": "5",
    "last_active_at": T1, "spawn_mode": "fresh", "nickname": "Fred", "current_task": TID,
}
RUST_AGENT_08 = {  # 0.8 never writes last_active_at, spawn_mode, nickname, role_id
    "id": OLD, "name": "legacy", "agent_type": "worker", "state": "stopped", "cli": "auggie",
    "created_at": T0, "last_heartbeat": T0, "tasks_completed": "0", "rounds_completed": "0",
}
RUST_TASK = {
    "id": TID, "description": "Add the login API", "state": "in_flight", "created_at": T0,
    "updated_at": T1, "tags": '["backend","api"]', "assigned_to": AID, "started_at": T1,
}


def rust_message(mtype: str, to: str, **body) -> str:
    """Message JSON exactly as serde_json writes it (compact, 9-digit ``Z`` timestamp)."""
    fields = "".join(f',"{k}":{json.dumps(v, separators=(",", ":"))}' for k, v in body.items())
    return (f'{{"id":"{uuid.uuid4()}","from":"{SUPERVISOR_ID}","to":"{to}","type":"{mtype}"'
            f'{fields},"priority":"normal","created_at":"2026-04-18T12:00:00.123456789Z",'
            '"correlation_id":null}')


# ------------------------------------------------------------------ what a Rust reader needs

AGENT_REQUIRED = {"id", "name", "agent_type", "state", "cli", "created_at", "last_heartbeat",
                  "tasks_completed", "rounds_completed", "last_active_at", "spawn_mode"}
AGENT_OPTIONAL = {"current_task", "nickname", "role_id", "parent_agent_id"}
TASK_REQUIRED = {"id", "description", "state", "created_at", "updated_at", "tags"}
TASK_OPTIONAL = {"assigned_to", "started_at", "completed_at", "result", "parent_id"}
HASH_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?\+00:00")
JSON_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MESSAGE_ORDER = ["id", "from", "to", "type", "<body>", "priority", "created_at", "correlation_id"]
EVENT_ORDER = ["event_type", "agent_id", "task_id", "mission_id", "old_state", "new_state",
               "message", "timestamp", "parent_agent_id", "child_agent_id", "scope", "spawn_mode"]
STATE_NAMES = {"Cold", "Starting", "Idle", "Working", "Paused", "Draining", "Stopped", "Error",
               "Pending", "Assigned", "Running", "Completed", "Failed", "Cancelled"}


def check_agent_hash(key: str, h: dict) -> None:
    """Every field the Rust reader parses is there, spelled as it expects (no fallbacks)."""
    assert AGENT_REQUIRED <= set(h) <= AGENT_REQUIRED | AGENT_OPTIONAL, set(h) ^ AGENT_REQUIRED
    assert key.endswith(":agent:" + h["id"]) and UUID.fullmatch(h["id"])
    assert h["agent_type"] in ("worker", "supervisor")
    assert h["state"] in ("cold", "starting", "idle", "working", "paused", "draining",
                          "stopped", "error")
    assert h["spawn_mode"] in ("fresh", "forkedcontext", "resumed")
    for f in ("created_at", "last_heartbeat", "last_active_at"):
        assert HASH_TS.fullmatch(h[f]), (f, h[f])
    assert h["tasks_completed"].isdigit() and h["rounds_completed"].isdigit()
    for f in ("current_task", "parent_agent_id"):
        assert f not in h or UUID.fullmatch(h[f])


def check_task_hash(key: str, h: dict) -> None:
    assert TASK_REQUIRED <= set(h) <= TASK_REQUIRED | TASK_OPTIONAL, set(h) ^ TASK_REQUIRED
    assert key.endswith(":task:" + h["id"]) and UUID.fullmatch(h["id"])
    assert h["state"] in ("pending", "assigned", "running", "completed", "failed", "cancelled")
    for f in ("created_at", "updated_at", "started_at", "completed_at"):
        assert f not in h or HASH_TS.fullmatch(h[f]), (f, h[f])
    tags = json.loads(h["tags"])
    assert isinstance(tags, list) and h["tags"] == json.dumps(tags, separators=(",", ":"),
                                                             ensure_ascii=False)
    for f in ("assigned_to", "parent_id"):
        assert f not in h or UUID.fullmatch(h[f])


def check_message(raw: str) -> dict:
    d = json.loads(raw)
    assert raw == json.dumps(d, separators=(",", ":"), ensure_ascii=False)  # serde's compact form
    body = {"task": ["description"], "query": ["question"], "informational": ["summary"],
            "confirmation": ["ack_type"], "task_assign": ["task_id"]}[d["type"]]
    expected = [k for part in MESSAGE_ORDER for k in (body if part == "<body>" else [part])]
    assert list(d) == expected
    assert d["priority"] in ("low", "normal", "high", "urgent") and d["correlation_id"] is None
    assert JSON_TS.fullmatch(d["created_at"]) and all(UUID.fullmatch(d[k]) for k in ("id", "from", "to"))
    return d


def check_event(fields: dict) -> dict:
    assert set(fields) == {"event_type", "data"} and fields["event_type"] in EVENT_TYPES
    d = json.loads(fields["data"])
    assert d["event_type"] == fields["event_type"]
    assert list(d) == [k for k in EVENT_ORDER if k in d]  # Rust field order, None keys omitted
    assert None not in d.values() and JSON_TS.fullmatch(d["timestamp"])
    for k in ("old_state", "new_state"):
        assert k not in d or d[k] in STATE_NAMES
    return d


def check_whole_town(town) -> None:
    """Every key the Town wrote is one Rust reads correctly or one under a new prefix."""
    r = town.redis
    known = ("agent:", "task:", "inbox:", "urgent:", "activity:", "stop:", "events:agent:",
             "processing:", "worker:", "tasklog:", "index:", "deadletter",
             "tasklog-n:", "taskopts:", "usage:", "usage-agent:",  # runs and cost (issues 10, 11)
             "wake:", "host:", "hostctl:", "archive:")  # idle workers woken, the shared worker
    # process, the archive policy's lease (issue 14)
    for key in r.scan_iter(match="tt:test:*"):
        rest = key[len("tt:test:"):]
        assert rest in ("backlog", "events", "names", "usage-total", "budget") or rest.startswith(known), key
        if rest.startswith("agent:"):
            assert r.type(key) == "hash"
            check_agent_hash(key, r.hgetall(key))
        elif rest.startswith("task:"):
            assert r.type(key) == "hash"
            check_task_hash(key, r.hgetall(key))
        elif rest.startswith(("inbox:", "urgent:")):
            for raw in r.lrange(key, 0, -1):
                check_message(raw)
        elif rest == "events" or rest.startswith("events:agent:"):
            for _, fields in r.xrange(key):
                check_event(fields)
        elif rest == "backlog":
            assert all(UUID.fullmatch(t) for t in r.lrange(key, 0, -1))
        elif rest.startswith("stop:"):
            assert r.get(key) == "1" and 0 < r.ttl(key) <= 3600
        elif rest.startswith("activity:"):
            assert r.llen(key) <= 10 and 0 < r.ttl(key) <= 3600


# ------------------------------------------------------------------ Rust writes, Town reads


@pytest.fixture
def rust_town(town):
    """A town holding records written exactly as tt 0.10 (and 0.8) write them."""
    r = town.redis
    r.hset(town.keys.agent(AID), mapping=RUST_AGENT)
    r.hset(town.keys.agent(OLD), mapping=RUST_AGENT_08)
    r.hset(town.keys.task(TID), mapping=RUST_TASK)
    town.reconcile()  # what connect does: file records a program keeping no index wrote
    return town


def test_reads_rust_agents(rust_town):
    town = rust_town
    by_name = {a.name: a for a in town.agents()}
    fred, legacy = by_name["backend"], by_name["legacy"]
    assert (fred.state, fred.tasks_completed, fred.rounds_completed, fred.current_task) == (
        AgentState.WORKING, 3, 5, TID)
    assert fred.created_at.microsecond == 123456 and fred.last_active_at.microsecond == 500000
    assert fred.display_label == "Fred [backend]" and legacy.display_label == "legacy [legacy]"
    assert legacy.last_active_at == legacy.created_at and legacy.nickname is None
    for ref in ("Fred", "fred [backend]", "backend", "3f2a", AID.upper(), AID.replace("-", ""),
                f"urn:uuid:{AID}"):
        assert town.agent(ref).id == AID, ref
    assert town.agent("legacy [legacy]").state is AgentState.STOPPED


def test_reads_and_completes_rust_task(rust_town):
    town, r = rust_town, rust_town.redis
    [task] = town.tasks(state="running")  # in_flight is read as running
    assert (task.id, task.tags, task.assigned_to) == (TID, ["backend", "api"], AID)
    assert [t.id for t in town.tasks(agent="Fred")] == [TID]
    town.complete_task("7c9e", "Shipped")
    h = r.hgetall(town.keys.task(TID))
    assert set(h) == set(RUST_TASK) | {"completed_at", "result"}
    assert {k: h[k] for k in RUST_TASK if k not in ("state", "updated_at")} == {
        k: v for k, v in RUST_TASK.items() if k not in ("state", "updated_at")}  # untouched
    assert (h["state"], h["result"]) == ("completed", "Shipped")
    assert HASH_TS.fullmatch(h["completed_at"]) and h["updated_at"] != T1
    a = r.hgetall(town.keys.agent(AID))
    expected = {k: v for k, v in RUST_AGENT.items() if k != "current_task"}
    assert a == {**expected, "tasks_completed": "4"}  # only the counter and the pointer moved
    check_task_hash(town.keys.task(TID), h)
    check_agent_hash(town.keys.agent(AID), a)


def test_rust_duplicate_live_names(rust_town):
    town = rust_town
    twin = dict(RUST_AGENT, id=str(uuid.uuid4()), nickname="Mary")
    town.redis.hset(town.keys.agent(twin["id"]), mapping=twin)  # tt allows duplicate names
    err = pytest.raises(AmbiguousAgent, town.agent, "backend").value
    assert sorted(err.candidates) == sorted(["Fred [backend] (3f2a)",
                                             f"Mary [backend] ({twin['id'][:4]})"])
    assert town.agent("Mary").id == twin["id"]
    with pytest.raises(AgentExists, match="already working"):
        town.spawn("backend", start=False)


def test_tt_respawn_of_a_name_we_indexed_is_ambiguous_not_the_dead_one(town):
    """`tt spawn dev` after our dev stopped makes a second dev (tt has no uniqueness check)
    and leaves our name index alone: the name must not quietly mean the dead agent."""
    ours = town.spawn("dev", start=False)
    town.kill("dev")
    twin = dict(RUST_AGENT, id=str(uuid.uuid4()), name="dev", nickname="Mary", state="idle")
    town.redis.hset(town.keys.agent(twin["id"]), mapping=twin)
    err = pytest.raises(AmbiguousAgent, town.agent, "dev").value
    assert sorted(err.candidates) == sorted([f"{ours.display_label} ({ours.short_id})",
                                             f"Mary [dev] ({twin['id'][:4]})"])
    assert town.agent("Mary").id == twin["id"] and town.agent(ours.short_id).id == ours.id


def test_respawn_of_rust_stopped_agent_reuses_its_id(rust_town):
    town = rust_town
    again = town.spawn("legacy", cli="codex", start=False)
    assert again.id == OLD
    h = town.redis.hgetall(town.keys.agent(OLD))
    check_agent_hash(town.keys.agent(OLD), h)
    assert (h["state"], h["cli"]) == ("starting", "codex")
    assert parse_ts(h["created_at"]) == parse_ts(T0)  # a full rewrite, as Rust's save does


def test_reads_rust_messages(town):
    dev = town.spawn("dev", start=False)
    r, inbox = town.redis, town.keys.inbox(dev.id)
    r.rpush(inbox, rust_message("task_assign", dev.id, task_id=TID))
    no_corr = json.loads(rust_message("query", dev.id, question="ETA?"))
    del no_corr["correlation_id"]
    no_corr["extra"] = "ignored"
    r.rpush(inbox, json.dumps(no_corr, separators=(",", ":")))
    r.rpush(inbox, rust_message("confirmation", dev.id,
                                ack_type={"type": "rejected", "reason": "flaky"}))
    r.rpush(inbox, rust_message("status_response", dev.id, state="idle", current_task=None))
    r.rpush(inbox, rust_message("custom", dev.id, kind="fyi", payload="{}"))
    r.lpush(town.keys.urgent(dev.id), rust_message("task", dev.id, description="now!"))
    got = town.inbox("dev")
    assert [m.type for m in got] == ["task", "task_assign", "query", "confirmation",
                                     "status_response", "custom"]
    assert got[1].body == {"task_id": TID} and got[1].created_at.microsecond == 123456
    assert got[2].correlation_id is None and got[3].text == "rejected: flaky"
    assert got[4].body["current_task"] is None and got[5].category == "informational"
    assert town.inbox_counts()[dev.id] == 6


def test_claims_rust_backlog_task(town):
    dev = town.spawn("dev", start=False)
    queued = dict(RUST_TASK, state="pending", tags="[]")
    del queued["assigned_to"], queued["started_at"]
    town.redis.hset(town.keys.task(TID), mapping=queued)
    town.redis.rpush(town.keys.backlog, TID)
    assert [t.id for t in town.backlog()] == [TID]
    town.backlog_claim(TID, "dev")
    h = town.redis.hgetall(town.keys.task(TID))
    assert (h["state"], h["assigned_to"], h["created_at"]) == ("assigned", dev.id, T0)
    assert [m.body["task_id"] for m in town.inbox("dev")] == [TID]
    assert not town.redis.exists(town.keys.backlog)
    check_whole_town(town)


def test_backlog_remove_of_unqueued_rust_task_changes_nothing(rust_town):
    town = rust_town
    before = town.redis.hgetall(town.keys.task(TID))
    with pytest.raises(TaskNotFound, match="not in the backlog"):
        town.backlog_remove(TID)
    assert town.redis.hgetall(town.keys.task(TID)) == before  # 9-digit timestamps kept


def test_rust_oddities_are_tolerated(town):
    r = town.redis
    odd = str(uuid.uuid4())
    r.hset(town.keys.agent(odd), mapping={"id": odd, "name": "odd", "state": "bogus",
                                          "created_at": "2026-04-18T12:00:00Z"})
    r.hset(town.keys.task(odd), mapping={"id": odd, "description": "odd", "tags": "not json"})
    r.hset(town.keys.task(str(uuid.uuid4())), mapping={"description": "no id: skipped"})
    town.reconcile()  # as connect does for records written by a program keeping no index
    [agent] = town.agents()
    assert (agent.state, agent.tasks_completed, agent.created_at.hour) == (AgentState.STARTING, 0, 12)
    [task] = town.tasks()
    assert (task.state, task.tags) == (TaskState.PENDING, [])


# ------------------------------------------------------------------ Town writes, Rust reads


def test_spawned_agent_hash_exact(town):
    boss = town.spawn("boss", start=False)
    dev = town.spawn("dev", cli="codex", role="reviewer", parent="boss", start=False)
    h = town.redis.hgetall(town.keys.agent(boss.id))
    assert set(h) == AGENT_REQUIRED | {"nickname"}
    assert {k: h[k] for k in ("name", "agent_type", "state", "cli", "tasks_completed",
                              "rounds_completed", "spawn_mode")} == {
        "name": "boss", "agent_type": "worker", "state": "starting", "cli": "claude",
        "tasks_completed": "0", "rounds_completed": "0", "spawn_mode": "fresh"}
    assert h["created_at"] == h["last_heartbeat"] == h["last_active_at"]
    d = town.redis.hgetall(town.keys.agent(dev.id))
    assert set(d) == AGENT_REQUIRED | {"nickname", "role_id", "parent_agent_id"}
    assert (d["role_id"], d["parent_agent_id"], d["cli"]) == ("reviewer", boss.id, "codex")
    [(_, spawn)] = [(t, f) for t, f in ((f["event_type"], f) for _, f in
                    town.redis.xrange(town.keys.events)) if t == "agent_spawned"][1:]
    data = check_event(spawn)
    assert (data["parent_agent_id"], data["child_agent_id"]) == (boss.id, dev.id)
    assert town.redis.xlen(town.keys.agent_events(boss.id)) == 2  # its child's spawn too
    check_whole_town(town)


def test_task_hashes_exact(town):
    dev = town.spawn("dev", start=False)
    task = town.assign("dev", "Ünïcode & \"quotes\"", tags=["backend", "api"])
    h = town.redis.hgetall(town.keys.task(task.id))
    assert set(h) == TASK_REQUIRED | {"assigned_to"}
    assert (h["state"], h["tags"], h["assigned_to"], h["description"]) == (
        "assigned", '["backend","api"]', dev.id, "Ünïcode & \"quotes\"")
    town.complete_task(task.id, "ok")
    h = town.redis.hgetall(town.keys.task(task.id))
    assert set(h) == TASK_REQUIRED | {"assigned_to", "completed_at", "result"}
    queued = town.backlog_add("later")
    h = town.redis.hgetall(town.keys.task(queued.id))
    assert set(h) == TASK_REQUIRED and (h["state"], h["tags"]) == ("pending", "[]")
    assert town.redis.lrange(town.keys.backlog, 0, -1) == [queued.id]
    check_whole_town(town)


def test_inbox_json_exact(town):
    dev = town.spawn("dev", start=False)
    task = town.assign("dev", "x")
    for kind in ("task", "query", "info", "ack"):
        town.send("dev", f"{kind} ✓", kind=kind)
    town.send("dev", "hurry", urgent=True)
    raws = town.redis.lrange(town.keys.inbox(dev.id), 0, -1)
    msgs = [check_message(raw) for raw in raws]
    assert [m["type"] for m in msgs] == ["task_assign", "task", "query", "informational",
                                         "confirmation"]
    assert msgs[0]["task_id"] == task.id and msgs[0]["from"] == SUPERVISOR_ID
    assert msgs[4]["ack_type"] == {"type": "acknowledged"} and "✓" in raws[1]  # UTF-8 unescaped
    [urgent] = town.redis.lrange(town.keys.urgent(dev.id), 0, -1)
    assert check_message(urgent)["priority"] == "normal"  # as tt send --urgent writes it


def test_no_stray_keys_after_a_full_workflow(town):
    dev = town.spawn("dev", role="worker", start=False)
    town.spawn("qa", start=False)
    a, b, c = town.assign_many("dev", ["a", "b", "c"])
    town.redis.hset(town.keys.agent(dev.id), "current_task", a.id)
    town.complete_task(a.id, "done")
    town.fail_task(b.id, "boom")
    town.cancel_task(c.id)
    q = town.backlog_add("queued", tags=["ops"])
    town.backlog_add("left")
    town.backlog_claim(q.id, "qa")
    town.send("supervisor", "report", kind="info")
    town.interrupt("dev")
    town.resume("dev")
    town.close("qa")
    town.kill("qa")
    town.restart("qa", start=False)
    town.kill("dev")
    town.spawn("dev", start=False)
    check_whole_town(town)
    agent_keys = list(town.redis.scan_iter(match="tt:test:agent:*"))
    task_keys = list(town.redis.scan_iter(match="tt:test:task:*"))
    assert len(agent_keys) == 2 and len(task_keys) == 5
    # What Rust's list_agents/list_tasks do: KEYS then HGETALL each, no WRONGTYPE anywhere.
    for key in agent_keys + task_keys:
        assert town.redis.hgetall(key)["id"] == key.rsplit(":", 1)[1]


def test_the_script_writes_the_servers_time_as_chrono_does(town):
    """The start of a task is stamped with the server's time by the script (so it orders
    with the step that released it): the same text Python's hash_ts writes."""
    from datetime import datetime, timezone

    from tinytown_nb.core.models import hash_ts
    from tinytown_nb.core.transitions import lua_source

    src = lua_source("transition.lua")
    iso_of = src[src.index("local function iso_of"):src.index("local function iso_now")]
    for stamp in ("1970-01-01T00:00:00", "2000-02-29T23:59:59.5", "2024-02-29T12:00:00.123",
                  "2026-12-31T23:59:59.999999", "2100-03-01T00:00:00.000001", "2038-01-19T03:14:08"):
        when = datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc)
        secs = int(when.timestamp() // 1)
        got = town.redis.eval(iso_of + "\nreturn iso_of(tonumber(ARGV[1]), tonumber(ARGV[2]), '+00:00')",
                              0, secs, when.microsecond)
        assert got == hash_ts(when), stamp
