"""Typed DataFrames of a real town: columns and dtypes (empty or not) and their contents."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from tinytown_nb import frames
from tinytown_nb.core import AgentNotFound, ConfigError, Task
from tinytown_nb.core.models import AGENT_STATES, TASK_STATES, hash_ts

FRAMES = {
    frames.agents_frame: frames.AGENT_COLUMNS,
    frames.tasks_frame: frames.TASK_COLUMNS,
    frames.backlog_frame: frames.TASK_COLUMNS,
    frames.inbox_frame: frames.INBOX_COLUMNS,
    frames.events_frame: frames.EVENT_COLUMNS,
}


def dtypes_match(df: pd.DataFrame, schema: dict) -> None:
    assert list(df.columns) == list(schema)
    for name, dtype in schema.items():
        assert df[name].dtype == pd.Series([], dtype=dtype).dtype, name


def rust_task(town, description: str, **fields) -> str:
    """Write a task hash the way another tool (the Rust ``tt``) does: HSET, no event."""
    task = Task.new(description)
    h = task.to_hash()
    h.update({k: v for k, v in fields.items() if v is not None})
    town.redis.hset(town.keys.task(h["id"].lower()), mapping=h)
    return h["id"]


@pytest.mark.parametrize("make", list(FRAMES), ids=lambda f: f.__name__)
def test_empty_town_gives_empty_frames_with_the_right_dtypes(town, make):
    df = make(town)
    assert len(df) == 0
    dtypes_match(df, FRAMES[make])


def test_state_columns_hold_every_state_in_lifecycle_order(town):
    agents, tasks = frames.agents_frame(town), frames.tasks_frame(town)
    assert agents.state.cat.categories.tolist() == [s.value for s in AGENT_STATES]
    assert tasks.state.cat.categories.tolist() == [s.value for s in TASK_STATES]
    assert agents.state.cat.ordered and tasks.state.cat.ordered
    # value_counts lists zeros for every state, so a bar chart has all the bars
    assert tasks.state.value_counts().to_dict() == {s.value: 0 for s in TASK_STATES}


def test_status_frame_of_an_empty_town_is_one_row_of_zeros(town):
    df = frames.status_frame(town)
    assert df.index.tolist() == ["test"]
    assert df.columns.tolist() == frames.status_columns().tolist()
    assert (df.dtypes == "Int64").all()
    assert df.iloc[0].sum() == 0


def test_agents_frame_contents(town):
    dev = town.spawn("dev", role="worker", nickname="Devi", start=False)
    town.spawn("rev", parent="dev", start=False)
    town.assign("dev", "one")
    town.send("dev", "ping?", kind="query", urgent=True)
    town.kill("rev")
    df = frames.agents_frame(town)
    dtypes_match(df, frames.AGENT_COLUMNS)
    assert df.name.tolist() == ["dev", "rev"]  # oldest first
    row = df.set_index("name").loc["dev"]
    assert (row.nickname, row.role, row.state, row.inbox, row.id) == ("Devi", "worker", "starting", 2, dev.id)
    rev = df.set_index("name").loc["rev"]
    assert (rev.state, rev.parent, rev.inbox, rev.role) == ("stopped", "dev", 0, "default")
    assert df.created_at.dt.tz is not None and str(df.created_at.dt.tz) == "UTC"


def test_tasks_frame_names_agents_and_times_durations(town):
    dev = town.spawn("dev", start=False)
    t1, t2 = town.assign_many("dev", ["Fix {the} bug\nwith details", "Second"], tags=["a", "b"])
    done = town.complete_task(t1.id, "merged")
    start = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    ran = rust_task(town, "ran for 90 s", state="completed", assigned_to=dev.id,
                    started_at=hash_ts(start), completed_at=hash_ts(start + timedelta(seconds=90)),
                    result="ok")
    df = frames.tasks_frame(town)
    dtypes_match(df, frames.TASK_COLUMNS)
    by_id = df.set_index("id")
    assert by_id.loc[t1.id, "description"] == "Fix {the} bug\nwith details"
    assert by_id.loc[t1.id, "state"] == "completed" and by_id.loc[t1.id, "result"] == "merged"
    assert by_id.loc[t1.id, "completed_at"] == pd.Timestamp(done.completed_at)
    assert by_id.loc[t2.id, "agent"] == "dev" and by_id.loc[t2.id, "agent_id"] == dev.id
    assert by_id.loc[t2.id, "tags"] == ["a", "b"]
    assert pd.isna(by_id.loc[t2.id, "duration"]) and pd.isna(by_id.loc[t2.id, "result"])
    assert by_id.loc[ran, "duration"] == pd.Timedelta(seconds=90)
    assert by_id.loc[ran, "started_at"] == pd.Timestamp(start)
    # tags lists are per row, not shared between rows with the same tags
    df.loc[df.id == t1.id, "tags"].iloc[0].append("x")
    assert by_id.loc[t2.id, "tags"] == ["a", "b"]


def test_tasks_frame_reads_odd_records_like_the_core(town):
    dev = town.spawn("dev", start=False)
    upper = str(uuid.uuid4()).upper()
    rust_task(town, "upper-case id and Z times", id=upper, state="in_flight",
              created_at="2026-04-18T12:34:56.123456789Z", tags="not json", assigned_to=dev.id.upper())
    rust_task(town, "unknown state", state="bogus", tags='["ok", 3]')
    town.redis.hset(town.keys.task(str(uuid.uuid4())), mapping={"id": "not-a-uuid", "description": "x"})
    gone = str(uuid.uuid4())
    rust_task(town, "assignee deleted", state="assigned", assigned_to=gone)
    df = frames.tasks_frame(town).set_index("description")
    assert len(df) == 3  # the record without a valid id is skipped, as tt list_tasks does
    odd = df.loc["upper-case id and Z times"]
    assert odd.id == upper.lower() and odd.state == "running" and odd.tags == []
    assert odd.agent == "dev"
    assert odd.created_at == pd.Timestamp("2026-04-18T12:34:56.123456Z")
    assert df.loc["unknown state"].state == "pending" and df.loc["unknown state"].tags == []
    assert pd.isna(df.loc["assignee deleted"].agent) and df.loc["assignee deleted"].agent_id == gone
    # the same rules as the record parser
    assert sorted(df.state.astype(str)) == sorted(t.state.value for t in town.tasks())


def test_tasks_frame_filters(town):
    town.spawn("dev", start=False)
    town.spawn("ops", start=False)
    a, b = town.assign_many("dev", ["a", "b"])
    town.assign("ops", "c")
    town.complete_task(a.id)
    assert frames.tasks_frame(town, state="completed").id.tolist() == [a.id]
    assert frames.tasks_frame(town, state="ASSIGNED", agent="dev").id.tolist() == [b.id]
    assert len(frames.tasks_frame(town, agent="ops")) == 1
    empty = frames.tasks_frame(town, state="failed")
    assert len(empty) == 0
    dtypes_match(empty, frames.TASK_COLUMNS)
    with pytest.raises(ConfigError, match="Unknown task state"):
        frames.tasks_frame(town, state="done")
    with pytest.raises(AgentNotFound):
        frames.tasks_frame(town, agent="nobody")


def test_backlog_frame_keeps_queue_order(town):
    ids = [town.backlog_add(f"job {i}", tags=["ops"]).id for i in range(3)]
    town.redis.lrem(town.keys.backlog, 1, ids[0])
    town.redis.rpush(town.keys.backlog, ids[0])  # first one moved to the back
    df = frames.backlog_frame(town)
    assert df.id.tolist() == [ids[1], ids[2], ids[0]]
    assert (df.state == "pending").all() and df.agent.isna().all()


def test_inbox_frame_urgent_first_and_all_mailboxes(town):
    town.spawn("dev", start=False)
    town.spawn("ops", start=False)
    town.send("dev", "normal one")
    town.send("dev", "urgent one", urgent=True, kind="info")
    town.send("supervisor", "report", sender="ops", kind="info")
    dev = frames.inbox_frame(town, "dev")
    dtypes_match(dev, frames.INBOX_COLUMNS)
    assert dev.text.tolist() == ["urgent one", "normal one"]
    assert dev.position.tolist() == [0, 1] and dev.urgent.tolist() == [True, False]
    assert dev.type.tolist() == ["informational", "task"] and dev.sender.tolist() == ["supervisor"] * 2
    everyone = frames.inbox_frame(town)
    assert everyone.agent.tolist() == ["dev", "dev", "supervisor"]
    assert everyone.sender.iloc[-1] == "ops"
    assert len(frames.inbox_frame(town, "ops")) == 0
    with pytest.raises(AgentNotFound):
        frames.inbox_frame(town, "nobody")


def test_events_frame_latest_after_and_per_agent(town):
    town.spawn("dev", start=False)
    town.spawn("ops", start=False)
    for i in range(5):
        town.assign("dev", f"task {i}")
    df = frames.events_frame(town, 3)
    dtypes_match(df, frames.EVENT_COLUMNS)
    assert df.message.tolist() == [f"Task assigned: task {i}" for i in (2, 3, 4)]
    assert (df.agent == "dev").all() and df.time.is_monotonic_increasing
    start = frames.events_frame(town, 2, after="0-0")
    assert start.type.tolist() == ["agent_spawned", "agent_spawned"]
    assert start.agent.tolist() == ["dev", "ops"]
    nxt = frames.events_frame(town, 50, after=start.id.iloc[-1])
    assert len(nxt) == 5
    assert frames.events_frame(town, 50, agent="ops").type.tolist() == ["agent_spawned"]


def test_status_frame_counts_every_state(town):
    town.spawn("dev", start=False)
    town.spawn("ops", start=False)
    town.kill("ops")
    a, _ = town.assign_many("dev", ["a", "b"])
    town.complete_task(a.id)
    town.backlog_add("later")
    town.send("ops", "hi")
    df = frames.status_frame(town)
    row = df.loc["test"]
    assert row["agents"].to_dict() == {"starting": 1, "idle": 0, "working": 0, "paused": 0,
                                       "draining": 0, "stopped": 1, "error": 0, "cold": 0}
    assert row["tasks"].to_dict() == {"pending": 1, "assigned": 1, "running": 0, "completed": 1,
                                      "failed": 0, "cancelled": 0}
    assert row["backlog", "tasks"] == 1
    assert row["inbox", "messages"] == 3  # two task_assign messages for dev, one text for ops


def test_converters_from_records():
    t = Task.new("x", tags=["a"])
    df = frames.tasks_to_frame([t])
    assert df.id.tolist() == [t.id] and df.state.tolist() == ["pending"]
    assert frames.tasks_from_hashes([]).empty
    assert frames.agents_to_frame([]).empty
    assert list(frames.events_to_frame([]).columns) == list(frames.EVENT_COLUMNS)


def test_town_hashes_bulk_read(town):
    dev = town.spawn("dev", start=False)
    tasks = town.assign_many("dev", ["a", "b", "c"])
    assert {h["id"] for h in town.hashes("task")} == {t.id for t in tasks}
    assert [h["name"] for h in town.hashes("agent")] == ["dev"]
    some = town.hashes("task", ids=[tasks[0].id, "0000dead-0000-0000-0000-000000000000", tasks[2].id])
    assert [h["id"] for h in some] == [tasks[0].id, tasks[2].id]  # missing ids skipped
    town.redis.rpush(town.keys.task("not-a-hash"), "x")  # a wrong-typed key is skipped, not fatal
    assert len(town.hashes("task")) == 3 and len(frames.tasks_frame(town)) == 3
    assert town.hashes("agent", ids=[]) == []
    slim = town.hashes("task", ids=[tasks[1].id], fields=["state", "started_at"])
    assert slim == [{"id": tasks[1].id, "state": "assigned", "started_at": None}]
    with pytest.raises(ConfigError, match="use 'agent' or 'task'"):
        town.hashes("inbox")
    one = frames.tasks_from_hashes(town.hashes("task", ids=[tasks[1].id]), {dev.id: "dev"})
    assert one.agent.tolist() == ["dev"]
