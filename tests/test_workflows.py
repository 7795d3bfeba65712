"""Workflows for real: tasks that wait for other tasks (``after=``) and gates, run by real
workers (function threads, command processes), against a real server; refusals compared
with a snapshot of every key of the town; a kill -9 in the middle of a diamond."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from tinytown_nb import frames
from tinytown_nb.cli import main
from tinytown_nb.core import (ConfigError, InvalidState, SUPERVISOR_ID, TaskNotFound, TaskState,
                              transitions as tr, workflows)
from tinytown_nb.core.events import decode_entry
from tinytown_nb.core.prompt import INPUT_CHARS, INPUTS_CHARS, build_prompt, inputs_section
from tinytown_nb.core.models import Agent, Message, Task
from tinytown_nb.graph import workflow_graph

from conftest import eventually, script
from ipshell import loaded_shell

S = TaskState


pytestmark = pytest.mark.usefixtures("fast_heartbeat")


def all_events(town) -> list:
    return [decode_entry(i, f) for i, f in town.redis.xrange(town.keys.events)]


def per_task(town, event_type: str, new_state: str | None = None) -> Counter:
    """How many events of a type each task got."""
    return Counter(e.task_id for e in all_events(town)
                   if e.type == event_type and (new_state is None or e.data.get("new_state") == new_state))


def snapshot(town) -> dict[bytes, bytes]:
    """Every key of the town, dumped byte for byte."""
    raw = town.store.raw
    keys = sorted(raw.scan_iter(match=f"tt:{town.name}:*".encode(), count=1000))
    return {k: raw.dump(k) for k in keys}



def idle(town) -> None:
    town.spawn("dev", cli="cat", start=False)  # no worker: what is delivered stays in the inbox


def inbox_tasks(town, agent: str) -> list[str]:
    return [m.body["task_id"] for m in town.inbox(agent) if m.type == "task_assign"]


# --------------------------------------------------------------------------- running


def test_diamond_runs_in_order_and_results_flow_into_the_last_task(town):
    go = threading.Event()

    def work(task):
        if task.description == "a":
            assert go.wait(10)
        if task.description == "d":
            return " + ".join(f"{tid[:4]}={res}" for tid, res in task.inputs.items())
        return task.description.upper()

    town.spawn("w1", fn=work)
    town.spawn("w2", fn=work)
    a = town.assign("w1", "a")
    b = town.assign("w1", "b", after=[a])
    c = town.assign("w2", "c", after=[a.id[:6]])  # a prefix is a reference too
    d = town.assign("w2", "d", after=[b, c])
    assert [t.state for t in (b, c, d)] == [S.PENDING] * 3
    assert [t.assigned_to for t in (b, c, d)] == [None] * 3  # nobody's yet: the Rust tt sees pending
    assert town.deps(d)[0].waiting_on == (b.id, c.id)
    go.set()
    done = town.wait(task=d, timeout=15)
    assert done.state is S.COMPLETED
    assert done.result == f"{b.short_id}=B + {c.short_id}=C"  # in the order given
    a, b, c = (town.task(t) for t in (a, b, c))
    assert a.completed_at <= min(b.started_at, c.started_at)
    assert max(b.completed_at, c.completed_at) <= done.started_at
    assert (b.assigned_to, c.assigned_to, done.assigned_to) == (town.agent("w1").id, town.agent("w2").id,
                                                                town.agent("w2").id)
    delivered = per_task(town, "task_assigned")
    assert [delivered[t.id] for t in (a, b, c, done)] == [1, 1, 1, 1]
    assert town.deps(d)[0].released_at is not None and town.deps(d)[0].waiting_on == ()
    counted = town.counts()  # the script filed every task it changed in the state indexes
    town.reconcile(full=True)
    assert town.counts() == counted and counted.tasks["completed"] == 4


def test_a_failure_cancels_every_task_waiting_for_it_transitively(town):
    def work(task):
        if task.description.startswith("parse"):
            raise ValueError("bad input")
        return "ok"

    town.spawn("w", fn=work)
    idle(town)
    gate = town.gate("hold")  # keeps parse from running until the graph is built
    parse = town.assign("w", "parse the input\nin detail", after=[gate])
    b = town.assign("dev", "b", after=[parse])
    c = town.assign("dev", "c", after=[b])
    other = town.assign("dev", "other")
    d = town.assign("dev", "d", after=[c, other])
    unrelated = town.assign("dev", "unrelated", after=[other])
    town.approve(gate)
    assert town.wait(task=parse, timeout=10).state is S.FAILED
    why = f"Cancelled: dependency {parse.short_id} (parse the input) failed"
    for t in (b, c, d):
        t = town.task(t)
        assert (t.state, t.result) == (S.CANCELLED, why)
    assert town.task(unrelated).state is S.PENDING  # still waits for `other`
    assert town.task(other).state is S.ASSIGNED
    cancelled = per_task(town, "task_failed", "Cancelled")
    assert cancelled == Counter({b.id: 1, c.id: 1, d.id: 1})  # one event per task
    assert inbox_tasks(town, "dev") == [other.id]  # nothing cancelled was delivered


def test_cancelling_or_deleting_a_dependency_cascades_too(town):
    idle(town)
    a = town.assign("dev", "first")
    b = town.assign("dev", "second", after=[a])
    town.cancel_task(a, "not needed")
    assert town.task(b).result == f"Cancelled: dependency {a.short_id} (first) was cancelled"
    queued = town.backlog_add("queued work")
    later = town.assign("dev", "later", after=[queued])
    town.backlog_remove(queued)  # deletes the task
    assert (town.task(later).state, town.task(later).result) == (
        S.CANCELLED, f"Cancelled: dependency {queued.short_id} (queued work) was deleted")
    waiting = town.assign("dev", "waits", after=[town.assign("dev", "x")])
    after_it = town.assign("dev", "after the waiting one", after=[waiting])
    town.cancel_task(waiting)  # a waiting task cancelled by hand: its own dependents go too
    assert town.task(after_it).state is S.CANCELLED


def test_a_task_made_after_its_dependencies_completed_is_delivered_at_once(town):
    idle(town)
    a = town.assign("dev", "a")
    town.complete_task(a, "fine")
    b = town.assign("dev", "b", after=[a])
    assert b.state is S.ASSIGNED and b.assigned_to == town.agent("dev").id
    assert inbox_tasks(town, "dev") == [a.id, b.id]
    town.spawn("w", fn=lambda task: f"saw {task.inputs}")
    c = town.assign("w", "c", after=[a, b])  # b is not completed: c waits for it
    d = town.assign("w", "d", after=[a])
    assert town.wait(task=d, timeout=10).result == f"saw {{'{a.id}': 'fine'}}"
    assert town.task(c).state is S.PENDING
    town.complete_task(b, "done too")
    assert town.wait(task=c, timeout=10).state is S.COMPLETED


def test_backlog_task_with_after_joins_the_backlog_when_released(town):
    idle(town)
    a = town.assign("dev", "a")
    t = town.backlog_add("triage", after=[a], tags=["ops"])
    assert town.backlog() == [] and town.task(t).state is S.PENDING
    town.complete_task(a)
    assert [x.id for x in town.backlog()] == [t.id]
    assert town.backlog_claim(t, "dev").state is S.ASSIGNED


# --------------------------------------------------------------------------- gates


def test_a_gate_is_approved_through_the_api_and_its_dependents_go_on(town):
    idle(town)
    town.spawn("pub", cli="cat", start=False)
    draft = town.assign("dev", "draft the notes")
    ok = town.gate("Good enough to publish?", after=[draft])
    publish = town.assign("pub", "publish", after=[ok])
    assert ok.state is S.PENDING and ok.assigned_to is None
    [g] = town.gates()
    assert (g.id, g.ready, g.open) == (ok.id, False, (draft.id,))
    with pytest.raises(InvalidState, match="still waits for 1 of its dependencies"):
        town.approve(ok)
    town.complete_task(draft, "the notes")
    assert town.gates()[0].ready
    done = town.approve(ok, "Ship it")
    assert (done.state, done.result) == (S.COMPLETED, "Ship it")
    assert town.task(publish).state is S.ASSIGNED and inbox_tasks(town, "pub") == [publish.id]
    assert town.gates() == []
    [decided] = town.gates(open=False)
    assert (decided.decision, decided.note) == ("approved", "Ship it")
    with pytest.raises(InvalidState, match="already completed"):
        town.approve(ok)
    with pytest.raises(ConfigError, match="not a gate"):
        town.approve(draft)


def test_a_rejected_gate_cancels_its_dependents_and_tells_the_authors(town):
    idle(town)
    town.spawn("pub", cli="cat", start=False)
    draft = town.assign("dev", "draft the notes")
    town.complete_task(draft, "v1")
    ok = town.gate("Good enough?", after=[draft])
    publish = town.assign("pub", "publish", after=[ok])
    with pytest.raises(ConfigError, match="Say why"):
        town.reject(ok, "  ")
    done = town.reject(ok, "Too long: cut it to one page")
    assert (done.state, done.result) == (S.FAILED, "Rejected: Too long: cut it to one page")
    assert town.task(publish).result == f"Cancelled: dependency {ok.short_id} (Good enough?) was rejected"
    notes = [m for m in town.inbox("dev") if m.type == "informational"]
    assert len(notes) == 1 and "Too long: cut it to one page" in notes[0].text
    assert notes[0].sender == SUPERVISOR_ID
    assert town.gates(open=False)[0].decision == "rejected"


# --------------------------------------------------------------------------- refusals


def test_unknown_self_cyclic_and_failed_dependencies_are_refused_with_nothing_written(town):
    idle(town)
    gate = town.gate("decide")
    t2 = town.assign("dev", "two", after=[gate])
    t3 = town.assign("dev", "three", after=[t2])
    failed = town.assign("dev", "broken")
    town.fail_task(failed, "no")
    before = snapshot(town)
    with pytest.raises(TaskNotFound):
        town.assign("dev", "x", after=["00000000-0000-4000-8000-00000000abcd"])
    with pytest.raises(TaskNotFound):
        town.assign("dev", "x", after=["zz-not-an-id"])
    with pytest.raises(InvalidState, match="already failed"):
        town.assign("dev", "x", after=[t2, failed])
    with pytest.raises(InvalidState, match="already failed"):
        town.gate("x", after=[failed])
    with pytest.raises(ConfigError, match="cannot wait for itself"):
        town.depend(gate, after=[gate])
    with pytest.raises(ConfigError, match="cycle"):
        town.depend(gate, after=[t2])
    with pytest.raises(ConfigError, match="cycle"):
        town.depend(gate, after=[t3])  # through t2
    with pytest.raises(InvalidState, match="does not wait"):
        town.depend(failed, after=[t2])
    # the script checks again: itself, and a dependency that failed after Python looked
    with pytest.raises(tr.DependencyRefused) as why:
        town.store.run(tr.add_dependencies(town.keys, gate.id, [gate.id]))
    assert why.value.code == "DEP_SELF"
    with pytest.raises(tr.DependencyRefused) as why:
        town.store.run(tr.wait_task(town.keys, Task.new("late"), "agent", [failed.id],
                                    agent_id=town.agent("dev").id))
    assert (why.value.code, why.value.task_id, why.value.detail) == ("DEP_DONE", failed.id, "failed")
    assert snapshot(town) == before
    # and a dependency added the right way works
    extra = town.assign("dev", "extra")
    assert town.depend(gate, after=[extra]).waiting_on == (extra.id,)


def test_a_wrong_typed_key_refuses_the_completion_and_writes_nothing(town):
    idle(town)
    town.spawn("other", cli="cat", start=False)
    a = town.assign("dev", "a")
    town.assign("other", "b", after=[a])
    town.redis.set(town.keys.inbox(town.agent("other").id), "not a list")  # another program's
    before = snapshot(town)
    with pytest.raises(ConfigError, match=r"holds a string where tinytown keeps a list, so nothing was changed"):
        town.complete_task(a, "done")
    assert snapshot(town) == before
    town.redis.delete(town.keys.inbox(town.agent("other").id))
    assert town.complete_task(a, "done").state is S.COMPLETED
    assert len(inbox_tasks(town, "other")) == 1


def test_a_wait_for_every_task_says_when_a_gate_waits_for_a_decision(town):
    town.gate("decide")
    with pytest.raises(Exception, match=r"1 gate\(s\) wait for a decision"):
        town.wait(all=True, timeout=0.2)


def test_the_gate_panel_buttons_approve_and_reject(town):
    from tinytown_nb.widgets import GatePanel

    idle(town)
    first, second = town.gate("first?"), town.gate("second?")
    later = town.assign("dev", "after the first", after=[first])
    panel = GatePanel(town)  # on its own: it reads the gates and has its own status line
    assert set(panel.rows) == {first.id, second.id} and panel.status in panel.children  # (same ms: any order)
    row = panel.rows[first.id]
    assert first.short_id in row.label.value and not row.approve.disabled
    row.approve.click()
    assert town.task(first.id).state is S.COMPLETED and town.task(later).state is S.ASSIGNED
    assert list(panel.rows) == [second.id] and "approved" in panel.status.value
    row = panel.rows[second.id]
    row.reject.click()  # no note: refused, said in one line
    assert "Say why" in panel.status.value and town.task(second.id).state is S.PENDING
    row.note.value = "not now"
    row.reject.click()
    assert town.task(second.id).result == "Rejected: not now"
    assert "nothing" in panel.title.value and panel.rows == {}


def test_1000_task_fan_out_and_fan_in(town):
    start = town.gate("start")
    town.spawn("w1", fn=lambda task: task.description.split()[-1])
    town.spawn("w2", fn=lambda task: task.description.split()[-1])
    parts = town.assign_many("w1", [f"part {i}" for i in range(500)], after=[start]) + \
        town.assign_many("w2", [f"part {i}" for i in range(500, 1000)], after=[start])
    seen = {}

    def total(task):
        seen.update(task.inputs)
        return str(sum(int(r) for r in task.inputs.values()))

    town.spawn("sum", fn=total)
    fan_in = town.assign("sum", "add them up", after=parts)
    assert fan_in.state is S.PENDING and len(town.deps(fan_in)[0].waiting_on) == 1000
    town.approve(start)  # releases 1000 tasks in one step
    done = town.wait(task=fan_in, timeout=120)
    assert (done.state, done.result) == (S.COMPLETED, str(sum(range(1000))))
    assert list(seen) == [p.id for p in parts]  # inputs in the order given
    assert per_task(town, "task_assigned")[fan_in.id] == 1


# --------------------------------------------------------------------------- crash safety


def test_kill9_in_the_middle_of_a_diamond_then_recover_and_restart(town, tmp_path):
    """A command agent whose worker is killed -9 while B runs: after recover() and a
    restart every task ends exactly once and none is delivered twice; D's command reads
    B's and C's results from the TINYTOWN_TASK_INPUTS file."""
    marker = tmp_path / "b.started"
    cmd = script(tmp_path, "step", f"""
        import json, os, pathlib, sys, time
        text = sys.stdin.read().strip()
        marker = pathlib.Path({str(marker)!r})
        if text == "B" and not marker.exists():
            marker.write_text("x")
            time.sleep(60)
        inputs = os.environ.get("TINYTOWN_TASK_INPUTS")
        print(text + (" <- " + json.dumps(json.load(open(inputs))) if text == "D" else ""))
    """)
    town.spawn("dev", cli=cmd)
    hold = town.gate("hold")
    a = town.assign("dev", "A", after=[hold])
    b = town.assign("dev", "B", after=[a])
    c = town.assign("dev", "C", after=[a])
    d = town.assign("dev", "D", after=[b, c])
    town.approve(hold)
    eventually(lambda: marker.exists() and town.task(b).state is S.RUNNING, what="B running")
    pid = int(town.redis.hget(town.keys.worker(town.agent("dev").id), "pid"))
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
               what="the worker's death")
    assert [x.name for x in town.recover(stale_after=600)] == ["dev"]
    assert town.task(b).state is S.ASSIGNED and town.task(d).state is S.PENDING
    town.restart("dev")
    done = town.wait(task=d, timeout=30)
    assert done.state is S.COMPLETED
    assert done.result == "D <- " + json.dumps({b.id: "B", c.id: "C"})
    for t in (a, b, c, d):
        assert town.task(t).state is S.COMPLETED
    assert [per_task(town, "task_assigned")[t.id] for t in (a, b, c, d)] == [1, 1, 1, 1]
    assert [per_task(town, "task_completed")[t.id] for t in (a, b, c, d)] == [1, 1, 1, 1]
    assert town.inbox("dev") == [] and town.redis.llen(town.keys.processing(town.agent("dev").id)) == 0
    assert not any((town.root / ".tt" / "inputs").glob("*.json"))  # inputs files go after the run


# --------------------------------------------------------------------------- the sweep


def test_the_sweep_releases_what_a_program_knowing_nothing_of_dependencies_completed(town, monkeypatch):
    idle(town)
    a = town.assign("dev", "a")
    b = town.assign("dev", "b", after=[a])
    # the Rust tt completes a task with plain HSETs, no script of ours
    town.redis.hset(town.keys.task(a.id), mapping={"state": "completed", "result": "by tt"})
    assert town.task(b).state is S.PENDING
    assert town.sweep() == 1
    assert town.task(b).state is S.ASSIGNED and inbox_tasks(town, "dev") == [a.id, b.id]
    assert town.sweep() == 0  # nothing watched any more
    town.redis.sadd(town.keys.deps_watched, a.id)  # watched, with nothing left waiting for it
    assert town.sweep() == 1 and town.sweep() == 0
    c = town.assign("dev", "c", after=[b])
    town.redis.hset(town.keys.task(b.id), "state", "failed")
    town.recover()  # recover sweeps too
    assert town.task(c).state is S.CANCELLED
    # an idle worker sweeps on its own
    monkeypatch.setattr(workflows, "SWEEP_SECS", 0.1)
    town.spawn("w", fn=lambda task: "ran")
    e = town.assign("dev", "e")
    f = town.assign("w", "f", after=[e])
    town.redis.hset(town.keys.task(e.id), "state", "completed")
    assert town.wait(task=f, timeout=10).result == "ran"


# --------------------------------------------------------------------------- results in prompts


def test_a_cli_prompt_shows_each_dependency_and_cuts_long_results():
    deps = []
    for i, size in enumerate((10, INPUT_CHARS + 500, INPUT_CHARS, INPUT_CHARS, INPUT_CHARS, 7)):
        t = Task.new(f"step {i}\nmore", id=f"{i:08x}-0000-4000-8000-000000000000")
        t.result = "x" * size
        deps.append(t)
    lines = inputs_section(deps, "/t/.tt/inputs/t.json")
    text = "\n".join(lines)
    assert lines[0] == "## Results of the tasks this one waited for"
    assert f"### Task 0000 ({deps[0].id})\n\nstep 0\nmore\n\nResult:\n\n{'x' * 10}\n" in text
    assert "[… 500 more characters cut; the whole result: the JSON file ${TINYTOWN_TASK_INPUTS}" in text
    assert text.count("[not shown: the prompt's room") == 1  # INPUTS_CHARS used up
    assert "[… 10 more characters cut" in text  # the fifth got what room was left
    assert sum(len(line) for line in lines if set(line) == {"x"}) == INPUTS_CHARS
    long = Task.new("d" * 700)
    assert "[… 100 more characters cut: `ttnb task show" in "\n".join(inputs_section([long]))
    agent = Agent.new("dev", "claude")
    task = Task.new("merge")
    msg = Message.task_assign(task.id, sender=SUPERVISOR_ID, to=agent.id)
    prompt = build_prompt(town="t", agent=agent, message=msg, task=task, inputs=deps[:1])
    assert "## Results of the tasks this one waited for" in prompt
    assert "## Results" not in build_prompt(town="t", agent=agent, message=msg, task=task)


# --------------------------------------------------------------------------- faces


def test_frames_show_dependencies_waiting_tasks_and_gates(town):
    idle(town)
    a = town.assign("dev", "a")
    g = town.gate("ok?", after=[a])
    b = town.assign("dev", "b", after=[a, g])
    deps = frames.deps_frame(town)
    assert list(deps.columns) == list(frames.DEPS_COLUMNS)
    assert deps[["task_id", "depends_on", "waiting"]].values.tolist() == [
        [g.id, a.id, True], [b.id, a.id, True], [b.id, g.id, True]]
    assert deps.kind.tolist() == ["gate", "agent", "agent"]
    assert deps.agent.fillna("-").tolist() == ["-", "dev", "dev"]
    tasks = frames.tasks_frame(town).set_index("id")
    assert tasks.loc[b.id, "waiting_on"] == [a.id, g.id] and tasks.loc[a.id, "waiting_on"] == []
    assert frames.waiting_frame(town).id.tolist() == [g.id, b.id]
    assert frames.backlog_frame(town).empty  # waiting tasks are not backlog tasks
    town.complete_task(a)
    gates = frames.gates_frame(town)
    assert gates[["id", "ready"]].values.tolist() == [[g.id, True]]
    town.approve(g)
    after = frames.deps_frame(town)
    assert not after.waiting.any() and frames.waiting_frame(town).empty
    assert after.dependency_state.tolist() == ["completed"] * 3
    empty = frames.gates_frame(town)
    assert empty.empty and list(empty.columns) == list(frames.GATE_COLUMNS)


def test_waiting_on_names_only_what_still_waits_for_something(town):
    idle(town)
    a, b = town.assign_many("dev", ["a", "b"])
    g = town.gate("ok?", after=[a])
    c = town.assign("dev", "c", after=[b, g, a])
    plain = town.backlog_add("plain")
    ids = [a.id, b.id, g.id, c.id, plain.id]
    assert town.waiting_on(ids) == {g.id: (a.id,), c.id: (b.id, g.id, a.id)}
    assert workflows.waiting_on(town.store, ids) == town.waiting_on(ids)
    town.complete_task(a)
    assert town.waiting_on(ids) == {c.id: (b.id, g.id)}  # the gate is ready: waits for a person only
    town.complete_task(b)
    town.approve(g)
    assert town.waiting_on(ids) == {} and town.task(c).state is S.ASSIGNED
    assert town.waiting_on([]) == {}  # not every task (deps_of's None)


def test_gates_and_deps_list_oldest_first_also_within_one_millisecond(town):
    """Gates made one after the other, most within the same millisecond, are listed (and
    their deps records) in the order they were made, as documented."""
    first = town.backlog_add("first")
    made = [town.gate(f"gate {i}", after=[first] if i % 2 else None) for i in range(30)]
    assert [g.id for g in town.gates()] == [g.id for g in made]
    assert [d.task_id for d in town.deps()] == [g.id for g in made]


def test_the_workflow_picture_is_a_deterministic_svg(town):
    idle(town)
    a = town.assign("dev", "Parse <input> & more")
    b = town.assign("dev", "b", after=[a])
    c = town.assign("dev", "c", after=[a])
    g = town.gate("Review", after=[b, c])
    pic = workflow_graph(town)
    svg = pic._repr_mimebundle_()["image/svg+xml"]
    root = ET.fromstring(svg)  # well-formed (the description was escaped)
    assert root.tag.endswith("svg")
    assert all(t.short_id in svg for t in (a, b, c, g))
    assert "Parse &lt;input&gt; &amp; more" in svg
    assert repr(pic) == "<WorkflowGraph: 4 tasks, 4 dependencies>"
    assert pic.positions[a.id][0] == 0 and pic.positions[g.id][0] == 2
    assert svg.count('stroke-dasharray="5,4"') == 4  # every dependency still awaited
    assert workflow_graph(town).svg == svg
    town.complete_task(a)
    assert workflow_graph(town).svg.count('stroke-dasharray="5,4"') == 2
    assert len(workflow_graph(town, tasks=[b]).nodes) == 2
    assert len(workflow_graph(town, tasks=[g]).nodes) == 4  # and what it waits for, transitively


@pytest.fixture
def ip(tmp_path):
    yield from loaded_shell(tmp_path)


def test_magics_assign_after_gate_approve_reject(ip, tmp_path):
    ip.run_cell(f"%tt_init {tmp_path / 'town'} --name wf -o town")
    ip.run_cell("%tt_spawn dev --no-start")
    town = ip.user_ns["town"]
    ip.run_cell("%tt_assign dev -o a write the draft")
    a = ip.user_ns["a"]
    ip.run_cell(f"%%tt_assign dev --after {a.short_id} -o b\nreview the draft\n")
    b = ip.user_ns["b"]
    assert b.state is S.PENDING and town.deps(b)[0].after == (a.id,)
    ip.run_cell(f"%tt_gate --after {a.id},{b.short_id} -o g Is it good?")
    g = ip.user_ns["g"]
    assert g.description == "Is it good?" and town.deps(g)[0].after == (a.id, b.id)
    assert ip.run_cell("%tt_gates").result.id.tolist() == [g.id]
    assert ip.run_cell("%tt_deps").result.depends_on.tolist() == [a.id, a.id, b.id]
    assert "svg" in ip.run_cell("%tt_deps --graph").result._repr_mimebundle_()["image/svg+xml"][:5]
    with pytest.raises(InvalidState, match="still waits"):
        ip.run_cell(f"%tt_approve {g.short_id}")
    town.complete_task(a)
    town.complete_task(b)
    assert ip.run_cell(f"%tt_approve {g.short_id} looks good").result.result == "looks good"
    g2 = town.gate("again")
    with pytest.raises(Exception, match="Say why"):
        ip.run_cell(f"%tt_reject {g2.short_id}")
    assert ip.run_cell(f"%tt_reject {g2.short_id} not now, sorry").result.result == "Rejected: not now, sorry"
    ip.run_cell(f"%tt_backlog add --after {a.short_id} -o q later work")
    assert [t.id for t in town.backlog()] == [ip.user_ns["q"].id]  # a is completed: at once


def test_ttnb_assign_after_gate_approve_reject(town):
    idle(town)

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["-t", str(town.root), *args])
            except SystemExit as exc:
                code = exc.code
        return code, out.getvalue(), err.getvalue()

    a = town.assign("dev", "draft")
    code, out, _ = run("assign", "dev", "review", "--after", a.short_id)
    assert code == 0 and f"(waits for {a.short_id})" in out
    review = town.tasks(state="pending")[0]
    code, out, _ = run("gate", "publish?", "--after", review.id)
    assert code == 0 and out.startswith("Created gate")
    gate = town.gates()[0]
    code, out, _ = run("gates", "--json")
    assert json.loads(out)[0]["task"]["id"] == gate.id and json.loads(out)[0]["ready"] is False
    code, _, err = run("approve", gate.short_id)
    assert code == 1 and err.startswith("ttnb: error: Gate") and len(err.strip().splitlines()) == 1
    code, _, _ = run("reject", gate.short_id)
    assert code == 2  # --note is required
    code, out, _ = run("reject", gate.short_id, "--note", "not yet")
    assert code == 0 and town.task(gate.id).state is S.FAILED
    code, _, err = run("assign", "dev", "x", "--after", gate.short_id)
    assert code == 1 and "already failed" in err
    code, out, _ = run("backlog", "add", "later", "--after", a.short_id)
    assert code == 0 and "joins the backlog once" in out
