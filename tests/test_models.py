"""Unit tests for tinytown_nb.core.models: wire parity with tinytown (Rust) 0.10, no Redis."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tinytown_nb.core.models import (
    AGENT_STATES, EVENT_TYPES, NICKNAMES_1920S_BOYS, NICKNAMES_1920S_GIRLS, OPEN_TASK_STATES,
    TASK_STATES, TERMINAL_AGENT_STATES, Agent, AgentState, AgentType, Message, Priority, SpawnMode, Task, TaskState,
    ack_type_from_text, canonical_uuid, event_json, hash_ts, json_ts, nickname_from_id,
    parse_ts, spellings, truncate_summary, utcnow,
)

AID = "3f2a8c1e-9b7d-4e6f-a123-456789abcdef"
TID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
SUP = "00000000-0000-0000-0000-000000000001"
MID = "11111111-1111-4111-8111-111111111111"
TO = "22222222-2222-4222-8222-222222222222"
T0 = datetime(2026, 4, 18, 12, 34, 56, 123456, tzinfo=timezone.utc)

AGENT_REQUIRED = {
    "id", "name", "agent_type", "state", "cli", "created_at", "last_heartbeat",
    "tasks_completed", "rounds_completed", "last_active_at", "spawn_mode",
}
AGENT_OPTIONAL = {"current_task", "nickname", "role_id", "parent_agent_id"}
TASK_REQUIRED = {"id", "description", "state", "created_at", "updated_at", "tags"}
TASK_OPTIONAL = {"assigned_to", "started_at", "completed_at", "result", "parent_id"}


# ------------------------------------------------------------------ enums


def test_agent_state_wire_values_and_predicates():
    assert [s.value for s in AgentState] == [
        "cold", "starting", "idle", "working", "paused", "draining", "stopped", "error"]
    assert AGENT_STATES[0] is AgentState.STARTING and set(AGENT_STATES) == set(AgentState)
    assert {s for s in AgentState if s.is_terminal} == {
        AgentState.STOPPED, AgentState.ERROR, AgentState.COLD}
    assert set(TERMINAL_AGENT_STATES) == {s for s in AgentState if s.is_terminal}
    assert AgentState.IDLE.debug_name == "Idle"
    assert AgentState.parse("draining") is AgentState.DRAINING
    # issue 9: a state in another spelling (the event messages' "Idle") reads as itself
    assert AgentState.parse("Idle") is AgentState.IDLE and AgentState.parse("DRAINING") is AgentState.DRAINING
    for bad in ("bogus", "", None, b"weird"):
        assert AgentState.parse(bad) is AgentState.STARTING
    assert AgentState.parse(b"idle") is AgentState.IDLE


def test_task_state_parse_alias_and_default():
    assert [s.value for s in TASK_STATES] == [
        "pending", "assigned", "running", "completed", "failed", "cancelled"]
    assert TaskState.parse("in_flight") is TaskState.RUNNING
    assert TaskState.parse("completed") is TaskState.COMPLETED
    assert TaskState.parse("Running") is TaskState.RUNNING and TaskState.parse("IN_FLIGHT") is TaskState.RUNNING
    assert TaskState.parse("Bogus") is TaskState.PENDING
    assert TaskState.parse(None) is TaskState.PENDING
    assert {s for s in TaskState if s.is_terminal} == {
        TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}
    assert OPEN_TASK_STATES == (TaskState.PENDING, TaskState.ASSIGNED, TaskState.RUNNING)
    assert spellings([TaskState.RUNNING]) == ["running", "in_flight"]


def test_other_enums():
    assert [p.value for p in Priority] == ["low", "normal", "high", "urgent"]
    assert AgentType.parse("supervisor") is AgentType.SUPERVISOR
    assert AgentType.parse("robot") is AgentType.WORKER
    assert SpawnMode.FORKED_CONTEXT.value == "forkedcontext"
    assert SpawnMode.parse("forked_context") is SpawnMode.FRESH
    assert str(AgentState.IDLE) == "idle" and f"{TaskState.RUNNING}" == "running"


# ------------------------------------------------------------------ time


@pytest.mark.parametrize("raw,expected_us", [
    ("2026-04-18T12:34:56.123456789+00:00", 123456),   # Rust hash, 9 digits
    ("2026-04-18T12:34:56.123456789Z", 123456),        # Rust JSON
    ("2026-04-18T12:34:56.123Z", 123000),
    ("2026-04-18T12:34:56.123456+00:00", 123456),
    ("2026-04-18T12:34:56Z", 0),
    ("2026-04-18T12:34:56+00:00", 0),
    ("2026-04-18t12:34:56.1z", 100000),
    ("2026-04-18 12:34:56.999999999Z", 999999),
])
def test_parse_ts_rfc3339_forms(raw, expected_us):
    dt = parse_ts(raw)
    assert dt is not None and dt.tzinfo is timezone.utc
    assert (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second) == (2026, 4, 18, 12, 34, 56)
    assert dt.microsecond == expected_us


def test_parse_ts_offsets_and_garbage():
    assert parse_ts("2026-04-18T14:34:56+02:00") == datetime(2026, 4, 18, 12, 34, 56, tzinfo=timezone.utc)
    assert parse_ts("2026-04-18T07:04:56-05:30") == datetime(2026, 4, 18, 12, 34, 56, tzinfo=timezone.utc)
    for bad in ("", "now", "2026-04-18", "2026-04-18T12:34:56", "2026-13-01T00:00:00Z",
                "2026-04-18T12:34:56.Z", "2026-04-18T12:34:56+0000", None, 12, "x2026-04-18T12:34:56Z"):
        assert parse_ts(bad) is None, bad


def test_hash_and_json_ts_forms():
    assert hash_ts(T0) == "2026-04-18T12:34:56.123456+00:00"
    assert json_ts(T0) == "2026-04-18T12:34:56.123456Z"
    assert json_ts(T0.replace(microsecond=0)) == "2026-04-18T12:34:56Z"
    assert hash_ts(T0.replace(microsecond=120000)) == "2026-04-18T12:34:56.120+00:00"
    plus2 = T0.astimezone(timezone(timedelta(hours=2)))
    assert hash_ts(plus2) == "2026-04-18T12:34:56.123456+00:00"
    assert parse_ts(hash_ts(T0)) == T0 and parse_ts(json_ts(T0)) == T0
    assert utcnow().tzinfo is timezone.utc


def test_parse_ts_canonical_forms_match_the_general_rule():
    # the forms hash_ts/json_ts write take a fast path; it must agree with the general rule
    for us in (0, 120000, 123456, 999999):
        dt = T0.replace(microsecond=us)
        for text in (hash_ts(dt), json_ts(dt)):
            assert parse_ts(text) == dt and parse_ts(text).tzinfo is timezone.utc, text
            assert parse_ts(text.encode()) == dt  # bytes from a client that does not decode
    # canonical-looking text the fast reader refuses goes through the general rule
    assert parse_ts("2026-04-18T23:59:60+00:00") == datetime(2026, 4, 18, 23, 59, 59, 999999,
                                                             tzinfo=timezone.utc)  # leap second
    assert parse_ts("2026-02-30T00:00:00+00:00") is None
    assert parse_ts("2026-04-18T24:00:00Z") is None
    assert parse_ts("2026-04-18T12:34:56.1234+00:00").microsecond == 123400  # 4 digits: general


def test_task_from_hash_bytes_and_shared_tags():
    raw = {k.encode(): v.encode() for k, v in RUST_TASK_HASH.items()}
    assert Task.from_hash(raw) == Task.from_hash(RUST_TASK_HASH)
    first, second = Task.from_hash(RUST_TASK_HASH), Task.from_hash(RUST_TASK_HASH)
    first.tags.append("changed")  # each record owns its tags list
    assert second.tags == ["backend", "api"] and Task.from_hash(RUST_TASK_HASH).tags == ["backend", "api"]
    assert Task.from_hash({**RUST_TASK_HASH, "state": "Completed"}).state is TaskState.COMPLETED


# ------------------------------------------------------------------ nicknames / ids


def test_nickname_lists_and_rule():
    assert len(NICKNAMES_1920S_BOYS) == len(NICKNAMES_1920S_GIRLS) == 200
    assert NICKNAMES_1920S_BOYS[:3] == ("Robert", "John", "James")
    assert NICKNAMES_1920S_BOYS[-1] == "Forrest" and NICKNAMES_1920S_GIRLS[-1] == "Jeannette"
    assert NICKNAMES_1920S_GIRLS[:3] == ("Mary", "Dorothy", "Helen")
    assert nickname_from_id("00000000-0000-4000-8000-000000000000") == "Robert"
    assert nickname_from_id("00200000-0000-4000-8000-000000000000") == "Fred"      # 32
    assert nickname_from_id("00c80000-0000-4000-8000-000000000000") == "Mary"      # 200
    assert nickname_from_id("018f0000-0000-4000-8000-000000000000") == "Jeannette"  # 399
    assert nickname_from_id("01900000-0000-4000-8000-000000000000") == "Robert"    # 400 % 400
    # 0x3f2a = 16170; 16170 % 400 = 170 -> boys[170]
    assert nickname_from_id(AID) == NICKNAMES_1920S_BOYS[170] == "Matthew"
    # 0xffff = 65535 % 400 = 335 -> girls[135]
    assert nickname_from_id("ffff0000-0000-4000-8000-000000000000") == "Carrie"


def test_canonical_uuid():
    assert canonical_uuid(AID.upper()) == AID
    assert canonical_uuid(AID.replace("-", "")) == AID
    assert canonical_uuid("{" + AID + "}") == AID
    assert canonical_uuid("urn:uuid:" + AID) == AID
    for bad in ("", "nope", AID[:-1], AID + "0", None, "task-123"):
        assert canonical_uuid(bad) is None


# ------------------------------------------------------------------ agents

RUST_AGENT_HASH = {
    "id": AID,
    "name": "backend",
    "agent_type": "worker",
    "state": "working",
    "cli": "claude",
    "created_at": "2026-04-18T12:34:56.123456789+00:00",
    "last_heartbeat": "2026-04-18T12:40:00.500+00:00",
    "tasks_completed": "3",
    "rounds_completed": "7",
    "last_active_at": "2026-04-18T12:39:59.000000001+00:00",
    "spawn_mode": "forkedcontext",
    "current_task": TID,
    "nickname": "Fred",
    "role_id": "reviewer",
    "parent_agent_id": MID,
}


def test_agent_reads_rust_hash():
    a = Agent.from_hash(RUST_AGENT_HASH)
    assert a is not None
    assert (a.id, a.name, a.cli, a.nickname, a.role_id) == (AID, "backend", "claude", "Fred", "reviewer")
    assert a.agent_type is AgentType.WORKER and a.state is AgentState.WORKING
    assert a.spawn_mode is SpawnMode.FORKED_CONTEXT
    assert (a.tasks_completed, a.rounds_completed) == (3, 7)
    assert a.created_at == datetime(2026, 4, 18, 12, 34, 56, 123456, tzinfo=timezone.utc)
    assert a.last_heartbeat.microsecond == 500000
    assert a.last_active_at == datetime(2026, 4, 18, 12, 39, 59, tzinfo=timezone.utc)
    assert a.current_task == TID and a.parent_agent_id == MID
    assert a.absent_optionals() == []
    assert a.short_id == "3f2a"
    assert a.display_label == "Fred [reviewer]"


def test_agent_reads_bytes_hash():
    raw = {k.encode(): v.encode() for k, v in RUST_AGENT_HASH.items()}
    assert Agent.from_hash(raw) == Agent.from_hash(RUST_AGENT_HASH)


def test_agent_fallbacks_minimal_and_bad_fields():
    before = utcnow()
    a = Agent.from_hash({"id": AID, "state": "hibernating", "agent_type": "robot",
                         "spawn_mode": "cloned", "tasks_completed": "-1",
                         "rounds_completed": "x", "created_at": "yesterday",
                         "current_task": "not-a-uuid"})
    after = utcnow()
    assert a.state is AgentState.STARTING and a.agent_type is AgentType.WORKER
    assert a.spawn_mode is SpawnMode.FRESH
    assert (a.tasks_completed, a.rounds_completed) == (0, 0)
    assert a.name == "" and a.cli == ""
    assert before <= a.created_at <= after and before <= a.last_heartbeat <= after
    assert a.last_active_at == a.created_at
    assert a.current_task is None and a.nickname is None
    # 0.8 record: no last_active_at / spawn_mode -> last_active_at = created_at
    b = Agent.from_hash({k: v for k, v in RUST_AGENT_HASH.items()
                         if k not in ("last_active_at", "spawn_mode")})
    assert b.last_active_at == b.created_at and b.spawn_mode is SpawnMode.FRESH


def test_agent_missing_or_bad_id_is_unreadable():
    assert Agent.from_hash({}) is None
    assert Agent.from_hash({"name": "x"}) is None
    assert Agent.from_hash({"id": "bob"}) is None


def test_agent_to_hash_exact_fields():
    a = Agent.new("backend", "claude", id=AID)
    h = a.to_hash()
    assert set(h) == AGENT_REQUIRED | {"nickname"}
    assert list(h)[:11] == ["id", "name", "agent_type", "state", "cli", "created_at",
                            "last_heartbeat", "tasks_completed", "rounds_completed",
                            "last_active_at", "spawn_mode"]
    assert all(isinstance(v, str) for v in h.values())
    assert h["state"] == "starting" and h["agent_type"] == "worker" and h["spawn_mode"] == "fresh"
    assert h["tasks_completed"] == "0" and h["rounds_completed"] == "0"
    assert h["created_at"].endswith("+00:00") and h["created_at"] == h["last_active_at"]
    assert h["nickname"] == "Matthew"
    assert sorted(a.absent_optionals()) == sorted(AGENT_OPTIONAL - {"nickname"})
    assert set(h) | set(a.absent_optionals()) == AGENT_REQUIRED | AGENT_OPTIONAL


def test_agent_roundtrip_all_fields():
    a = Agent.from_hash(RUST_AGENT_HASH)
    h = a.to_hash()
    assert set(h) == AGENT_REQUIRED | AGENT_OPTIONAL
    assert h["spawn_mode"] == "forkedcontext"
    assert h["created_at"] == "2026-04-18T12:34:56.123456+00:00"
    assert h["last_heartbeat"] == "2026-04-18T12:40:00.500+00:00"
    assert Agent.from_hash(h) == a


def test_agent_new_defaults_and_options():
    a = Agent.new("w1", "codex", nickname="Zed", role_id="worker", parent_agent_id=MID.upper())
    assert a.state is AgentState.STARTING and a.agent_type is AgentType.WORKER
    assert a.created_at == a.last_heartbeat == a.last_active_at
    assert a.nickname == "Zed" and a.parent_agent_id == MID
    assert canonical_uuid(a.id) == a.id and a.id[14] == "4"  # uuid4
    assert Agent.new("w2", "claude", id=AID).nickname == "Matthew"
    with pytest.raises(ValueError):
        Agent.new("w", "c", id="nope")


@pytest.mark.parametrize("name,nick,role,label", [
    ("backend", "Fred", None, "Fred [backend]"),          # spec §4.2 example
    ("backend", "Fred", "reviewer", "Fred [reviewer]"),
    ("backend", None, None, "backend [backend]"),
    ("backend", None, "runner", "backend [runner]"),
    ("backend", "Fred", "default", "Fred [backend]"),     # explicit default role
])
def test_display_label(name, nick, role, label):
    a = Agent.new(name, "claude", id=AID, role_id=role)
    a.nickname = nick
    assert a.display_label == label
    assert a.display_name == (nick or name)
    assert a.effective_role == (role or "default")


# ------------------------------------------------------------------ tasks

RUST_TASK_HASH = {
    "id": TID,
    "description": "Implement login API\nwith tests",
    "state": "in_flight",
    "created_at": "2026-04-18T12:00:00.000000001+00:00",
    "updated_at": "2026-04-18T12:05:00.123456789+00:00",
    "tags": '["backend","api"]',
    "assigned_to": AID,
    "started_at": "2026-04-18T12:01:00+00:00",
    "completed_at": "2026-04-18T12:31:30.5+00:00",
    "result": "Done: see PR #4",
    "parent_id": MID,
}


def test_task_reads_rust_hash():
    t = Task.from_hash(RUST_TASK_HASH)
    assert t.id == TID and t.state is TaskState.RUNNING
    assert t.tags == ["backend", "api"] and t.assigned_to == AID and t.parent_id == MID
    assert t.created_at == datetime(2026, 4, 18, 12, tzinfo=timezone.utc)
    assert t.duration == timedelta(minutes=30, seconds=30, milliseconds=500)
    assert t.result == "Done: see PR #4" and t.short_id == "7c9e"
    assert t.summary() == "Implement login API" and t.summary(10) == "Impleme..."
    assert t.absent_optionals() == []


def test_task_minimal_and_bad_fields():
    t = Task.from_hash({"id": TID, "tags": "backend,api", "state": "weird", "assigned_to": "bob"})
    assert t.tags == [] and t.state is TaskState.PENDING and t.assigned_to is None
    assert t.description == "" and t.duration is None and t.result is None
    assert Task.from_hash({"id": TID, "tags": '["a", 1]'}).tags == []
    assert Task.from_hash({"id": TID, "tags": "{}"}).tags == []
    assert Task.from_hash({"id": TID}).tags == []
    assert Task.from_hash({"description": "x"}) is None
    assert Task.from_hash({}) is None


def test_task_to_hash_exact_fields():
    t = Task.new("Write docs", tags=["docs", "réadme"], id=TID)
    h = t.to_hash()
    assert set(h) == TASK_REQUIRED
    assert list(h) == ["id", "description", "state", "created_at", "updated_at", "tags"]
    assert h["state"] == "pending" and h["tags"] == '["docs","réadme"]'
    assert h["created_at"].endswith("+00:00")
    assert sorted(t.absent_optionals()) == sorted(TASK_OPTIONAL)
    assert Task.new("x").to_hash()["tags"] == "[]"
    t.state, t.assigned_to, t.started_at, t.result = TaskState.RUNNING, AID, T0, "ok"
    h = t.to_hash()
    assert set(h) == TASK_REQUIRED | {"assigned_to", "started_at", "result"}
    assert h["state"] == "running" and h["started_at"] == "2026-04-18T12:34:56.123456+00:00"
    assert sorted(t.absent_optionals()) == ["completed_at", "parent_id"]


def test_task_roundtrip():
    t = Task.from_hash(RUST_TASK_HASH)
    h = t.to_hash()
    assert set(h) == TASK_REQUIRED | TASK_OPTIONAL
    assert h["state"] == "running"
    assert Task.from_hash(h) == t


def test_tags_json_like_serde():
    t = Task.new("x", tags=['quo"te', "back\\slash", "tab\there", "ü"], id=TID)
    assert t.to_hash()["tags"] == '["quo\\"te","back\\\\slash","tab\\there","ü"]'


# ------------------------------------------------------------------ messages

EXPECTED_ASSIGN = (
    '{"id":"11111111-1111-4111-8111-111111111111",'
    '"from":"00000000-0000-0000-0000-000000000001",'
    '"to":"22222222-2222-4222-8222-222222222222",'
    '"type":"task_assign","task_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7",'
    '"priority":"normal","created_at":"2026-04-18T12:34:56.123456Z","correlation_id":null}'
)


def test_message_serializes_like_serde():
    m = Message.task_assign(TID, sender=SUP, to=TO, id=MID, created_at=T0)
    assert m.to_json() == EXPECTED_ASSIGN
    assert Message.from_json(EXPECTED_ASSIGN) == m


def test_message_confirmation_and_other_shapes():
    m = Message.confirmation("Rejected: Missing approval", sender=SUP, to=TO, id=MID, created_at=T0)
    assert m.to_json() == (
        '{"id":"11111111-1111-4111-8111-111111111111","from":"00000000-0000-0000-0000-000000000001",'
        '"to":"22222222-2222-4222-8222-222222222222","type":"confirmation",'
        '"ack_type":{"type":"rejected","reason":"Missing approval"},'
        '"priority":"normal","created_at":"2026-04-18T12:34:56.123456Z","correlation_id":null}')
    d = json.loads(Message.task_done(TID, "ok", sender=SUP, to=TO).to_json())
    assert list(d) == ["id", "from", "to", "type", "task_id", "result", "priority",
                       "created_at", "correlation_id"]
    d = json.loads(Message.custom("note", "hé", sender=SUP, to=TO, priority="urgent").to_json())
    assert list(d)[3:6] == ["type", "kind", "payload"] and d["priority"] == "urgent"
    assert "hé" in Message.custom("note", "hé", sender=SUP, to=TO).to_json()
    d = json.loads(Message.new("status_response", {"state": "idle"}, sender=SUP, to=TO).to_json())
    assert d["current_task"] is None and list(d)[3:6] == ["type", "state", "current_task"]
    d = json.loads(Message.new("ping", sender=SUP, to=TO).to_json())
    assert list(d) == ["id", "from", "to", "type", "priority", "created_at", "correlation_id"]


RUST_QUERY = (
    '{"id":"11111111-1111-4111-8111-111111111111","from":"3f2a8c1e-9b7d-4e6f-a123-456789abcdef",'
    '"to":"22222222-2222-4222-8222-222222222222","type":"query","question":"Is the API done?",'
    '"priority":"high","created_at":"2026-04-18T12:34:56.123456789Z","correlation_id":null}'
)


def test_message_reads_rust_json():
    m = Message.from_json(RUST_QUERY)
    assert (m.id, m.sender, m.to, m.type) == (MID, AID, TO, "query")
    assert m.body == {"question": "Is the API done?"} and m.priority is Priority.HIGH
    assert m.created_at == T0 and m.correlation_id is None
    assert m.category == "query" and m.actionable and m.text == "Is the API done?"
    # correlation_id absent vs null vs set; extra keys ignored; bytes accepted
    d = json.loads(RUST_QUERY)
    del d["correlation_id"]
    d["extra"] = {"x": 1}
    assert Message.from_json(json.dumps(d)).correlation_id is None
    d["correlation_id"] = TID
    assert Message.from_json(json.dumps(d).encode()).correlation_id == TID
    # ack object from Rust
    raw = RUST_QUERY.replace('"type":"query","question":"Is the API done?"',
                             '"type":"confirmation","ack_type":{"type":"thanks"}')
    c = Message.from_json(raw)
    assert c.body == {"ack_type": {"type": "thanks"}} and c.category == "confirmation"
    assert not c.actionable and c.text == "thanks"


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(type="telepathy"),
    lambda d: d.update(priority="critical"),
    lambda d: d.pop("question"),
    lambda d: d.update(question=5),
    lambda d: d.pop("priority"),
    lambda d: d.pop("created_at"),
    lambda d: d.update(created_at="yesterday"),
    lambda d: d.pop("from"),
    lambda d: d.update(to="bob"),
    lambda d: d.update(correlation_id="abc"),
    lambda d: d.pop("type"),
    lambda d: d.update(type="confirmation", ack_type={"type": "meh"}),
    lambda d: d.update(type="confirmation", ack_type={"type": "rejected"}),
])
def test_message_strict_parse(mutate):
    d = json.loads(RUST_QUERY)
    mutate(d)
    with pytest.raises(ValueError):
        Message.from_json(json.dumps(d))


def test_message_parse_garbage():
    for raw in ("", "not json", "[]", "null", "{}"):
        with pytest.raises(ValueError):
            Message.from_json(raw)


def test_message_new_validates():
    with pytest.raises(ValueError):
        Message.new("task", {"description": "x"}, sender="bob", to=TO)
    with pytest.raises(ValueError):
        Message.new("task", {}, sender=SUP, to=TO)
    with pytest.raises(ValueError):
        Message.new("nope", {}, sender=SUP, to=TO)
    with pytest.raises(ValueError):
        Message.task_text("x", sender=SUP, to=TO, priority="asap")


@pytest.mark.parametrize("text,ack", [
    ("received", {"type": "received"}),
    ("  Received, on it", {"type": "received"}),
    ("APPROVED!", {"type": "approved"}),
    ("Thanks a lot", {"type": "thanks"}),
    ("ok, thank you", {"type": "thanks"}),
    ("ok", {"type": "acknowledged"}),
    ("", {"type": "acknowledged"}),
    ("rejected: needs tests", {"type": "rejected", "reason": "needs tests"}),
    ("REJECTED:   Bad: style  ", {"type": "rejected", "reason": "Bad: style"}),
    ("rejected:", {"type": "rejected", "reason": "No reason provided"}),
    ("rejected:   ", {"type": "rejected", "reason": "No reason provided"}),
    ("rejected without colon", {"type": "acknowledged"}),
    ("approved? thanks", {"type": "approved"}),
])
def test_ack_text_mapping(text, ack):
    assert ack_type_from_text(text) == ack
    assert Message.confirmation(text, sender=SUP, to=TO).body == {"ack_type": ack}


@pytest.mark.parametrize("kind,payload,cat", [
    ("ack", "", "confirmation"),
    ("note", "Thank you!", "confirmation"),
    ("build", "tracking number", "confirmation"),       # 'track' contains 'ack'
    ("fyi", "deploy finished", "informational"),
    ("progress", "Status: 50%", "informational"),
    ("question", "what now?", "query"),
    ("QUERY", "", "query"),
    ("needs_attention", "{}", "task"),
    ("approved", "info", "confirmation"),                 # confirmation wins
])
def test_custom_categorization(kind, payload, cat):
    m = Message.custom(kind, payload, sender=SUP, to=TO)
    assert m.category == cat
    assert m.actionable == (cat in ("task", "query"))


def test_builtin_categories():
    mk = lambda t, b=None: Message.new(t, b or {}, sender=SUP, to=TO)  # noqa: E731
    assert mk("task", {"description": "d"}).category == "task"
    assert mk("task_assign", {"task_id": TID}).category == "task"
    assert mk("status_request").category == "query"
    assert mk("informational", {"summary": "s"}).category == "informational"
    assert mk("task_done", {"task_id": TID, "result": "r"}).category == "informational"
    assert mk("task_failed", {"task_id": TID, "error": "e"}).category == "informational"
    assert mk("status_response", {"state": "idle"}).category == "informational"
    assert mk("ping").category == "informational" and not mk("pong").actionable
    assert mk("shutdown").category == "other" and mk("shutdown").actionable


def test_summary_cut_and_text():
    long = "x" * 130
    m = Message.task_text(long + "\nsecond line", sender=SUP, to=TO)
    assert m.summary() == "x" * 117 + "..." and len(m.summary()) == 120
    assert m.summary(10) == "xxxxxxx..."
    assert Message.task_text("  short  \nmore", sender=SUP, to=TO).summary() == "short"
    assert Message.query("Why?", sender=SUP, to=TO).summary() == "question: Why?"
    assert Message.task_assign(TID, sender=SUP, to=TO).summary() == f"task assignment {TID}"
    assert Message.task_assign(TID, sender=SUP, to=TO).text == TID
    assert Message.custom("k", "p", sender=SUP, to=TO).summary() == "[k] p"
    rej = Message.confirmation("rejected: nope", sender=SUP, to=TO)
    assert rej.text == "rejected: nope" and rej.summary(60) == "rejected: nope"
    assert truncate_summary("exactly10!", 10) == "exactly10!"
    assert truncate_summary("exactly11!!", 10) == "exactly..."
    assert truncate_summary("", 5) == "" and truncate_summary("abcdef", 2) == "..."
    assert truncate_summary("line\r\nnext", 100) == "line"


# ------------------------------------------------------------------ events


def test_event_types():
    assert len(EVENT_TYPES) == 22 and len(set(EVENT_TYPES)) == 22
    assert "agent_interrupted" in EVENT_TYPES and "conductor_escalation" in EVENT_TYPES


def test_event_json_omits_none_and_orders_keys():
    s = event_json("agent_stopped", message="Agent closing (draining then stop)", agent_id=AID,
                   old_state=AgentState.IDLE, new_state="Draining", timestamp=T0)
    assert s == (
        '{"event_type":"agent_stopped","agent_id":"3f2a8c1e-9b7d-4e6f-a123-456789abcdef",'
        '"old_state":"Idle","new_state":"Draining","message":"Agent closing (draining then stop)",'
        '"timestamp":"2026-04-18T12:34:56.123456Z"}')
    s = event_json("task_delegated", message="m", parent_agent_id=MID, child_agent_id=AID,
                   task_id=TID, timestamp=T0)
    assert list(json.loads(s)) == ["event_type", "task_id", "message", "timestamp",
                                   "parent_agent_id", "child_agent_id"]
    d = json.loads(event_json("mission_event", message="hi"))
    assert set(d) == {"event_type", "message", "timestamp"} and d["timestamp"].endswith("Z")
    with pytest.raises(ValueError):
        event_json("agent_exploded", message="boom")


def test_task_from_columns_reads_as_from_hash():
    hashes = [RUST_TASK_HASH, {"id": TID.upper(), "state": "weird", "tags": "a,b", "assigned_to": "bob"},
              {"id": "not-an-id", "state": "completed"}, {"id": MID, "state": "Completed", "tags": '["x"]'},
              {"id": AID}]
    fields = sorted({f for h in hashes for f in h})
    cols = {f: [h.get(f) for h in hashes] for f in fields}
    got = Task.from_columns(cols)
    want = [Task.from_hash(h) for h in hashes]
    want = [t for t in want if t is not None]
    assert [t.id for t in got] == [t.id for t in want] and len(got) == 4
    for a, b in zip(got, want):  # (a missing time is "now": compare the rest)
        assert (a.description, a.state, a.tags, a.assigned_to, a.started_at, a.completed_at,
                a.result, a.parent_id) == (b.description, b.state, b.tags, b.assigned_to,
                                           b.started_at, b.completed_at, b.result, b.parent_id)
    assert got[0] == want[0]  # every field given: identical
    got[0].tags.append("mine")  # each record its own tags list
    assert Task.from_columns(cols)[0].tags == ["backend", "api"]
    raw = {f: [v.encode() if isinstance(v, str) else v for v in values] for f, values in cols.items()}
    assert Task.from_columns(raw)[0] == want[0]
    assert Task.from_columns({}) == []


def test_records_repr_as_one_line_not_a_field_dump():
    agent = Agent.new("backend", "claude")
    assert repr(agent) == f"<Agent backend ({agent.id[:4]}) starting>"
    task = Task.new("Fix login\nsee #4")
    task.state, task.result = TaskState.FAILED, "timed out after 60 s (attempt 1 of 1)\nmore"
    assert repr(task) == f"<Task {task.id[:4]} failed: Fix login — timed out after 60 s (attempt 1 of 1)>"
    assert "\n" not in repr(Task.new("x" * 10_000)) and len(repr(Task.new("x" * 10_000))) < 100
