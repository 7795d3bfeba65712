"""Counts and state indexes stay true: under racing writers, and after the Rust ``tt``
wrote records behind them (plain HSET/DEL, no script) and a reconcile ran.

The truth is a recount from the records themselves: every task and agent hash read and
filed by ``TaskState.parse``/``AgentState.parse``, exactly as the transition script and the
reconcile file them; every index must hold exactly those ids and ``town.counts()`` must
equal the recount.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter

import pytest

from tinytown_nb.core import (AgentState, ConfigError, InvalidState, Task, TaskNotFound, TaskState,
                              TinytownError, Town)
from tinytown_nb.core.models import Agent, hash_ts, utcnow

RACE_SECONDS = 3.0


def recount(town: Town) -> dict:
    """What the indexes should hold, from the records alone."""
    r, k = town.redis, town.keys
    tasks = {key.rsplit(":", 1)[1]: r.hgetall(key) for key in r.scan_iter(match=k.pattern("task"))}
    agents = {key.rsplit(":", 1)[1]: r.hgetall(key) for key in r.scan_iter(match=k.pattern("agent"))}
    tasks = {tid: h for tid, h in tasks.items() if h}  # (deleted between SCAN and HGETALL)
    by_agent: dict[str, set] = {}
    for tid, h in tasks.items():
        if h.get("assigned_to"):
            by_agent.setdefault(h["assigned_to"], set()).add(tid)
    return {
        "tasks": set(tasks),
        "task_state": {s.value: {t for t, h in tasks.items() if TaskState.parse(h.get("state")) == s}
                       for s in TaskState},
        "task_agent": by_agent,
        "owners": {t: h["assigned_to"] for t, h in tasks.items() if h.get("assigned_to")},
        "agents": set(agents),
        "agent_state": {s.value: {a for a, h in agents.items() if AgentState.parse(h.get("state")) == s}
                        for s in AgentState},
    }


def indexed(town: Town) -> dict:
    """What the indexes hold."""
    r, k = town.redis, town.keys
    prefix = k.tasks_of_agent("")
    return {
        "tasks": set(r.zrange(k.tasks_index, 0, -1)),
        "task_state": {s.value: set(r.zrange(k.tasks_in_state(s.value), 0, -1)) for s in TaskState},
        "task_agent": {key[len(prefix):]: set(r.zrange(key, 0, -1))
                       for key in r.scan_iter(match=prefix + "*")},
        "owners": r.hgetall(k.task_owners),
        "agents": set(r.smembers(k.agents_index)),
        "agent_state": {s.value: set(r.smembers(k.agents_in_state(s.value))) for s in AgentState},
    }


def assert_true_counts(town: Town) -> dict:
    truth, held = recount(town), indexed(town)
    for part in truth:
        assert held[part] == truth[part], part
    c = town.counts()
    assert c.tasks == {s: len(ids) for s, ids in truth["task_state"].items()}
    assert c.agents == {s: len(ids) for s, ids in truth["agent_state"].items()}
    return truth


# --------------------------------------------------------------------------- racing

OTHER_PROCESS = textwrap.dedent("""
    import random, sys, time
    from tinytown_nb.core import Town, TinytownError
    town = Town.connect(sys.argv[1])
    stop = time.monotonic() + float(sys.argv[2])
    rng = random.Random(7)
    while time.monotonic() < stop:
        made = town.assign_many(rng.choice(["hand0", "hand1", "fn0"]), [f"p{i}" for i in range(5)])
        for t in made[:3]:
            try:
                (town.complete_task if rng.random() < 0.7 else town.cancel_task)(t.id)
            except TinytownError:
                pass  # finished meanwhile by someone else
    town.disconnect()
""")


def test_counts_and_indexes_survive_racing_writers(town):
    for name in ("fn0", "fn1"):
        town.spawn(name, fn=lambda task: task.description.upper())
    for name in ("hand0", "hand1"):
        town.spawn(name, start=False)
    stop = threading.Event()
    errors: list[BaseException] = []
    rng = random.Random(1)

    def loop(step):
        def run():
            try:
                while not stop.is_set():
                    step()
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                errors.append(exc)
        return threading.Thread(target=run, daemon=True)

    def assign():
        town.assign_many(rng.choice(["fn0", "fn1", "hand0", "hand1"]), [f"t{i}" for i in range(10)])

    def finish_by_hand():
        for t in town.tasks(state="assigned", agent=rng.choice(["hand0", "hand1"]))[:10]:
            try:
                rng.choice([town.complete_task, town.complete_task, town.cancel_task])(t.id)
            except (InvalidState, TaskNotFound):
                pass  # another writer got there first

    def kill_and_restart():
        name = rng.choice(["fn1", "hand1"])
        try:
            town.kill(name)
            time.sleep(0.05)
            town.restart(name, start=name.startswith("fn"))
        except InvalidState:
            pass  # (restarted by the other branch meanwhile)
        time.sleep(0.1)

    def recover():
        town.recover(stale_after=60)
        time.sleep(0.05)

    def archive():
        town.archive(older_than=0.2, states=["completed", "cancelled"])
        time.sleep(0.2)

    threads = [loop(f) for f in (assign, assign, finish_by_hand, kill_and_restart, recover, archive)]
    other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, str(town.root), str(RACE_SECONDS)],
                             stderr=subprocess.PIPE, text=True)
    for t in threads:
        t.start()
    time.sleep(RACE_SECONDS)
    stop.set()
    for t in threads:
        t.join(30)
    assert other.wait(60) == 0, other.stderr.read()
    assert not errors, errors
    # quiesce: no worker thread may write after this point
    from tinytown_nb.core import worker
    worker.stop_local_workers(town.store, timeout=10)
    truth = assert_true_counts(town)
    # the race did what it was meant to: every kind of change happened
    assert len(truth["tasks"]) > 50 and truth["task_state"]["completed"] and truth["task_state"]["assigned"]
    assert truth["task_state"]["cancelled"] and town.archived()
    assert any(e.type == "agent_stopped" for e in town.history(1000))


# --------------------------------------------------------------------------- the Rust tt


def tt_task(state: str, assigned_to: str | None = None) -> dict[str, str]:
    """A task hash as ``tt assign``/``tt backlog add`` writes it."""
    t = Task.new("written by tt", id=str(uuid.uuid4()))
    t.state, t.assigned_to = TaskState(state), assigned_to
    return t.to_hash()


def test_reconcile_files_what_tt_wrote_behind_the_scripts(town):
    dev = town.spawn("dev", start=False)
    ours = town.assign_many("dev", [f"t{i}" for i in range(6)])
    town.complete_task(ours[0].id)
    assert_true_counts(town)
    r, k = town.redis, town.keys
    # `tt task complete` / `tt task cancel` of our open tasks: a plain HSET
    r.hset(k.task(ours[1].id), mapping={"state": "completed", "completed_at": hash_ts(utcnow())})
    r.hset(k.task(ours[2].id), mapping={"state": "Cancelled"})  # any case reads the same
    # `tt assign` and `tt backlog add`: new records
    made = tt_task("assigned", dev.id)
    r.hset(k.task(made["id"]), mapping=made)
    queued = tt_task("pending")
    r.hset(k.task(queued["id"]), mapping=queued)
    r.rpush(k.backlog, queued["id"])
    # `tt spawn` (a new agent) and `tt kill` (a state change)
    other = Agent.new("tt-made", "claude")
    r.hset(k.agent(other.id), mapping=other.to_hash())
    r.hset(k.agent(dev.id), "state", "stopped")
    with pytest.raises(AssertionError):
        assert_true_counts(town)  # the indexes cannot know yet
    assert town.reconcile() > 0
    truth = assert_true_counts(town)
    assert made["id"] in truth["task_state"]["assigned"] and other.id in truth["agent_state"]["starting"]
    assert [t.id for t in town.tasks(state="pending")] == [queued["id"]]

    # a deletion and a creation balance the counts, which a quick reconcile trusts: full finds them
    r.delete(k.task(ours[3].id))
    extra = tt_task("running", dev.id)
    r.hset(k.task(extra["id"]), mapping=extra)
    r.delete(k.agent(other.id))
    town.reconcile(full=True)
    truth = assert_true_counts(town)
    assert ours[3].id not in truth["tasks"] and extra["id"] in truth["task_state"]["running"]

    # an index another program overwrote with the wrong type is rebuilt
    r.delete(k.tasks_index)
    r.set(k.tasks_index, "junk")
    r.delete(k.tasks_in_state("assigned"))
    r.sadd(k.tasks_in_state("assigned"), "junk")
    town.reconcile()
    assert_true_counts(town)
    # and connecting again (as every ttnb command does) sees tt's next write at once
    r.hset(k.task(ours[4].id), "state", "failed")
    again = Town.connect(town.root)
    try:
        assert again.counts().tasks["failed"] == 1
        assert_true_counts(again)
    finally:
        again.disconnect()


def test_counts_after_archive_and_prune(town):
    town.spawn("dev", start=False)
    made = town.assign_many("dev", [f"t{i}" for i in range(30)])
    for t in made[:20]:
        town.complete_task(t.id)
    for t in made[20:25]:
        town.cancel_task(t.id)
    assert town.archive(older_than=0) == 25
    town.kill("dev")
    town.prune()
    truth = assert_true_counts(town)
    assert len(truth["tasks"]) == 5 and not truth["agents"]
    assert Counter(t.state.value for t in town.archived()) == {"completed": 20, "cancelled": 5}


def test_a_reconcile_is_skipped_within_the_given_time_of_the_last_one(town):
    town.spawn("dev", start=False)
    town.reconcile()
    raw = tt_task("pending")
    town.redis.hset(town.keys.task(raw["id"]), mapping=raw)  # as tt writes it: no index
    assert town.reconcile(unless_within=30) is None  # one ran just now: skipped
    assert town.counts().tasks["pending"] == 0
    assert town.reconcile(unless_within=0) > 0  # not within 0 s: runs
    assert town.counts().tasks["pending"] == 1
    with pytest.raises(ConfigError, match="unless_within"):
        town.reconcile(unless_within=float("nan"))
