"""The TownView dashboard and the blocking watch: widget state (trait values, no frontend
needed), refreshes driven by the event stream (only what events name is read again; a
gap or a request reads everything; a heartbeat redraws nothing), the grid tables (sort,
select), the task panel (log, Retry, Cancel), the timeline, the watcher thread's lifecycle
(close, unload, errors, a town shut down) and that it never prints; progress and summaries."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tinytown_nb import frames
from tinytown_nb.core import Counts, Task, Town, WaitTimeout
from tinytown_nb.widgets import (Cell, Progress, Snapshot, Summary, TownView, _LIVE, assign_warning,
                                 close_all, watch)

from conftest import eventually
from ipshell import loaded_shell

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def texts(grid) -> list[list[str]]:
    """What a grid shows, row by row (in its current order)."""
    return [[c.text for c in r.cells] for r in grid.rows]


def column(grid, key: str) -> list[str]:
    i = [c.key for c in grid.cols].index(key)
    return [r.cells[i].text for r in grid.rows]


@pytest.fixture
def view(town):
    town.spawn("dev", start=False)
    town.spawn("ops", start=False)
    v = TownView(town, interval=0.3, min_gap=0.1, timeline_gap=0.2)
    yield v
    v.close()


def test_initial_state_shows_counts_agents_tasks_events(town):
    town.spawn("dev", start=False)
    a, b = town.assign_many("dev", ["first <script>", "second"])
    time.sleep(0.01)  # a later change than the assignments, to the millisecond
    town.complete_task(a.id, "done")
    v = TownView(town, start=False)
    assert not v.running and v.full_reads == 1
    assert "starting 1" in v.counts.value and "completed 1" in v.counts.value
    assert "assigned 1" in v.counts.value and "backlog <b>0</b>" in v.counts.value
    assert column(v.agents_grid, "agent") == [town.agent("dev").display_label]
    assert column(v.tasks_grid, "id") == [a.short_id, b.short_id]  # most recently updated first
    html = v.tasks_grid.html()
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "task_completed" in column(v.events_grid, "event")
    assert v.tasks_agent.options == ("(all)", "dev")
    assert v.target.options == ("dev",) and v.target.value == "dev"  # the first agent, not blank
    v.close()


def test_zero_badges_are_outlined_not_faded(town):
    v = TownView(town, start=False)
    assert 'class="ttnb-badge ttnb-zero"' in v.counts.value and "opacity" not in v.counts.value
    v.close()


def test_filters_redraw_the_task_table(view):
    town = view.town
    a, b = town.assign_many("dev", ["alpha", "beta"])
    c = town.assign("ops", "gamma")
    town.complete_task(a.id)
    view.refresh()
    view.tasks_state.value = "completed"
    assert column(view.tasks_grid, "id") == [a.short_id]
    view.tasks_state.value = "(all)"
    view.tasks_agent.value = "ops"
    assert column(view.tasks_grid, "id") == [c.short_id]
    view.tasks_state.value = "failed"
    assert view.tasks_grid.rows == [] and "No tasks yet." in view.tasks_grid.note.value


def test_large_task_tables_show_the_most_recent_rows(town):
    town.spawn("dev", start=False)
    town.assign_many("dev", [f"job {i}" for i in range(35)])
    time.sleep(0.01)  # (changes are ordered to the millisecond)
    last = town.assign_many("dev", [f"late job {i}" for i in range(5)])
    v = TownView(town, rows=5, start=False)
    ids = column(v.tasks_grid, "id")
    assert sorted(ids) == sorted(t.short_id for t in last)
    assert "5 most recently updated of 40 matching" in v.tasks_grid.note.value
    v.close()


def test_a_header_click_sorts_and_a_row_click_selects(view):
    town = view.town
    quick, slow = town.assign_many("dev", ["bbb quick", "aaa slow"])
    town.complete_task(quick.id, "ok")
    view.refresh()
    task_header = view.tasks_grid.header[[c.key for c in view.tasks_grid.cols].index("task")]
    task_header.click()
    assert column(view.tasks_grid, "task") == ["aaa slow", "bbb quick"]
    assert task_header.description == "task ▲"
    task_header.click()
    assert column(view.tasks_grid, "task") == ["bbb quick", "aaa slow"]
    took = view.tasks_grid.header[[c.key for c in view.tasks_grid.cols].index("took")]
    took.click()
    took.click()  # neither task has a duration: blanks compare, last either way
    assert sorted(column(view.tasks_grid, "task")) == ["aaa slow", "bbb quick"]
    task_header.click()
    task_header.click()
    task_header.click()  # a third click: back to the given order (most recent first)
    assert column(view.tasks_grid, "task") == ["bbb quick", "aaa slow"]
    task_header.click()
    task_header.click()
    view.tasks_grid.pool[1][3].click()  # the second row's "task" cell
    assert view.selected == slow.id and view.task_panel.layout.display == "flex"
    assert "aaa slow" in view.task_info.value
    assert "ttnb-sel" in view.tasks_grid.pool[1][0]._dom_classes
    view.agents_grid.pool[1][0].click()  # a click on an agent's row makes it the target
    assert view.target.value == "ops"


def test_cells_keep_the_full_value_on_hover(view):
    long = "word " * 80
    view.town.assign("dev", long)
    view.refresh()
    cell = view.tasks_grid.rows[0].cells[3]
    assert cell.title == long and len(cell.text) < len(long)
    assert view.tasks_grid.pool[0][3].tooltip == long


def test_live_update_reads_only_what_events_name(view):
    task = view.town.assign("dev", "appears live")
    eventually(lambda: task.short_id in column(view.tasks_grid, "id"))
    view.town.kill("ops")
    eventually(lambda: "stopped 1" in view.counts.value)
    eventually(lambda: "stopped" in column(view.agents_grid, "state"))
    assert view.full_reads == 1  # every change came from the stream, record by record


def test_a_heartbeat_alone_never_redraws(view):
    town = view.town
    time.sleep(0.5)
    before = view.refreshes
    dev = town.agent("dev")
    for i in range(5):  # what a worker's heartbeat writes: no event, nothing shown changes
        town.redis.hset(town.keys.agent(dev.id), "last_heartbeat", f"2026-12-01T10:00:0{i}Z")
        time.sleep(0.2)
    time.sleep(0.5)  # a few periodic looks at the counts
    assert view.refreshes == before and view.full_reads == 1
    town.assign("dev", "a change")
    eventually(lambda: view.refreshes > before)


def test_a_gap_in_the_stream_reads_everything_again(view):
    town = view.town
    town.redis.xtrim(town.keys.events, maxlen=0)  # as if the capped stream had moved on
    lost = town.assign("ops", "after the trim")
    eventually(lambda: view.full_reads == 2, what="a full re-read")
    assert lost.short_id in column(view.tasks_grid, "id")


def test_refresh_on_request_reads_everything(view):
    before = view.full_reads
    view.refresh(force=True)
    assert view.full_reads == before + 1


def test_live_update_from_a_tool_that_emits_no_events(town):
    town.spawn("dev", start=False)
    view = TownView(town, interval=0.2, min_gap=0.1, reconcile_every=0.5)
    try:
        raw = Task.new("written by the Rust tt").to_hash()  # HSET only, as tt 0.10 does
        town.redis.hset(town.keys.task(raw["id"]), mapping=raw)
        eventually(lambda: raw["id"][:4] in column(view.tasks_grid, "id"), timeout=5)
        assert "pending 1" in view.counts.value and view.full_reads == 1
    finally:
        view.close()


def test_a_working_function_agent_shows_its_current_task_and_live_log(town):
    release = threading.Event()

    def slow(task):
        print("started")
        while not release.wait(0.3):  # the worker pushes output lines about once a second
            print("still going")
        print("finishing")
        return "finished"

    town.spawn("busy", fn=slow)
    v = TownView(town, interval=0.3, min_gap=0.1)
    try:
        task = town.assign("busy", "a long job")
        eventually(lambda: "working 1" in v.counts.value and "running 1" in v.counts.value)
        eventually(lambda: f"{task.short_id} a long job" in column(v.agents_grid, "task"))
        v.select_task(task.id)
        eventually(lambda: "started" in v.task_info.value)       # the log, while it runs
        assert v.buttons["retry"].disabled and not v.buttons["cancel"].disabled
        release.set()
        eventually(lambda: "completed 1" in v.counts.value and "finished" in column(v.tasks_grid, "result"))
        eventually(lambda: "finishing" in v.task_info.value and "<b>result</b>" in v.task_info.value)
    finally:
        release.set()
        v.close()


def test_retry_and_cancel_buttons(view):
    town = view.town
    task = town.assign("dev", "flaky")
    town.fail_task(task.id, "exit code 1")
    view.refresh()
    view.select_task(task.id)
    assert not view.buttons["retry"].disabled and view.buttons["cancel"].disabled
    view.buttons["retry"].click()
    assert town.task(task.id).state.value == "assigned" and "is now assigned" in view.status.value
    view.buttons["cancel"].click()
    assert town.task(task.id).state.value == "cancelled"
    view.buttons["cancel"].click()  # not allowed now: reported, not raised
    assert "#c0392b" in view.status.value and "Cannot cancel task" in view.status.value
    view.buttons["close task"].click()
    assert view.selected is None and view.task_panel.layout.display == "none"


def test_the_timeline_draws_and_follows_changes(view):
    town = view.town
    eventually(lambda: view.timeline_image.value, what="the first timeline")
    first = bytes(view.timeline_image.value)
    assert first.startswith(b"\x89PNG")
    assert view.draw_timeline() is False  # nothing changed: not drawn again
    task = town.assign("dev", "ran")
    town.redis.hset(town.keys.task(task.id), mapping={"started_at": "2026-12-01T10:00:00Z"})
    town.complete_task(task.id, "ok")
    eventually(lambda: task.id in view.snapshot.spans)
    eventually(lambda: bytes(view.timeline_image.value) != first, what="a redrawn timeline")
    assert "data:image/png;base64," in view.html()


def test_the_agent_drop_down_selects_a_newly_spawned_agent(view):
    assert view.target.value == "dev"
    view.town.spawn("newcomer", start=False)
    eventually(lambda: view.target.value == "newcomer")


def test_assigning_to_a_paused_agent_warns(view):
    view.town.interrupt("ops")
    view.refresh()
    view.target.value = "ops"
    view.task_text.value = "waits"
    view.buttons["assign"].click()
    assert "Assigned task" in view.status.value and "ops is paused" in view.status.value


def test_assign_warning_texts(town):
    dev = town.spawn("dev", start=False)
    assert assign_warning(dev) == ""
    assert "dev is stopped, so nothing runs the task" in assign_warning(town.kill("dev"))


def test_snapshot_apply_keeps_what_events_do_not_name(town):
    town.spawn("dev", start=False)
    a, b = town.assign_many("dev", ["a", "b"])
    snap = Snapshot.read(town)
    kept = next(t for t in snap.tasks if t.id == b.id)
    town.complete_task(a.id, "ok")
    new = town.events(10, after=snap.last_id)
    snap.apply(town, new)
    assert [t.description for t in snap.tasks] == ["a", kept.description]
    assert snap.tasks[1] is kept  # not read again
    assert snap.counts.tasks["completed"] == 1 and snap.last_id == new[-1].id


def test_close_stops_the_thread(view):
    thread = view._thread
    assert view.running and thread.daemon
    view.close()
    assert not view.running and not thread.is_alive()
    assert view not in _LIVE
    count = view.refreshes
    view.town.assign("dev", "after close")
    time.sleep(0.5)
    assert view.refreshes == count  # frozen


def test_close_draws_the_last_state_first(town):
    town.spawn("dev", start=False)
    v = TownView(town, start=False)  # no thread: only close() can take the change in
    late = town.assign("dev", "assigned just before close")
    v.close()
    assert late.short_id in column(v.tasks_grid, "id") and "assigned 1" in v.counts.value
    assert "task_assigned" in column(v.events_grid, "event")


def test_close_all_stops_every_view(town):
    views = [TownView(town, interval=0.2) for _ in range(2)]
    close_all()
    assert not any(v.running for v in views)


def test_unloading_the_extension_stops_views(tmp_path):
    shells = loaded_shell(tmp_path)
    ip = next(shells)
    town = ip.run_cell(f"%tt_init {tmp_path / 'town'}").result
    try:
        from_magic = ip.run_cell("%tt_view").result
        direct = TownView(town)
        assert from_magic.running and direct.running
        ip.run_line_magic("unload_ext", "tinytown_nb")
        assert not from_magic.running and not direct.running
        ip.run_line_magic("load_ext", "tinytown_nb")
    finally:
        next(shells, None)
        town.shutdown()


def test_a_filter_change_with_redis_gone_says_so_in_the_view(tmp_path, capfd):
    town = Town.init(tmp_path / "t", name="gone")
    try:
        town.spawn("dev", start=False)
        town.assign("dev", "one")
        v = TownView(town, start=False)
        town.server.stop()
        v.tasks_state.value = "assigned"  # the frontend's change: must not raise into the comm
        assert "#c0392b" in v.status.value and "Redis" in v.status.value
        v.close()
    finally:
        town.disconnect()
        if town.server is not None:
            town.server.stop()
    assert capfd.readouterr().err == ""


def test_a_task_record_without_updated_at_is_shown(town):
    """Reads are tolerant (spec 1.2): a hand-written task lacking updated_at is listed."""
    town.spawn("dev", start=False)
    town.assign("dev", "normal one")
    bare = "0b1e2c3d-0000-4000-8000-000000000001"
    town.redis.hset(town.keys.task(bare), mapping={
        "id": bare, "description": "bare record", "state": "pending",
        "created_at": "2026-12-01T10:00:00Z"})
    v = TownView(town, start=False)
    try:
        assert set(column(v.tasks_grid, "task")) == {"bare record", "normal one"}
    finally:
        v.close()


def test_after_shutdown_the_view_says_so_once_and_stops(tmp_path, capfd):
    town = Town.init(tmp_path / "t", name="gone")
    try:
        town.spawn("dev", start=False)
        v = TownView(town, interval=0.2, min_gap=0.05)
        town.assign("dev", "one")
        eventually(lambda: "assigned 1" in v.counts.value)
        town.shutdown()
        eventually(lambda: not v.running, timeout=10, what="the thread to stop by itself")
        assert "Town gone is shut down: this view stopped updating" in v.status.value
        assert "assigned 1" in v.counts.value  # the last state stays
        assert v not in _LIVE
    finally:
        town.shutdown()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_the_thread_retries_quietly_while_redis_is_away(tmp_path, capfd):
    town = Town.init(tmp_path / "t", name="gone")
    try:
        town.spawn("dev", start=False)
        v = TownView(town, interval=0.2, min_gap=0.05)
        server, town.server = town.server, None  # as for a remote Redis: it cannot tell a
        server.stop()                            # shutdown from an outage, so it retries
        eventually(lambda: "live update failed" in v.status.value, timeout=5)
        assert v.running and "retrying in" in v.status.value and "\n" not in v.status.value
        v.close()
        assert not v.running
    finally:
        town.disconnect()
        server.stop()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_mimebundle_has_widget_html_and_text(view):
    view.town.assign("dev", "shown in the snapshot")
    view.refresh()
    bundle = view._repr_mimebundle_()
    assert {"text/plain", "text/html", WIDGET_VIEW} <= set(bundle)
    assert bundle[WIDGET_VIEW]["model_id"] == view.widget.model_id
    assert "dev" in bundle["text/html"] and "shown in the snapshot" in bundle["text/html"]
    assert "<style>" in bundle["text/html"] and "var(--jp-ui-font-color1" in bundle["text/html"]
    assert bundle["text/plain"] == ("TownView 'test': 2 agents (2 starting) · 1 task (1 assigned)"
                                    " · backlog 0 · inbox 1")
    view.widget.close()  # a dead widget still leaves the static snapshot
    bundle = view._repr_mimebundle_()
    assert WIDGET_VIEW not in bundle and "shown in the snapshot" in bundle["text/html"]


def test_control_buttons(view):
    town = view.town
    view.target.value = "dev"
    view.buttons["interrupt"].click()
    assert town.agent("dev").state.value == "paused" and "paused" in view.status.value
    view.buttons["resume"].click()
    assert town.agent("dev").state.value == "idle"
    view.buttons["interrupt"].click()
    view.buttons["interrupt"].click()  # not allowed twice: reported, not raised
    assert "#c0392b" in view.status.value
    view.buttons["resume"].click()
    view.task_text.value = "from the dashboard"
    view.buttons["assign"].click()
    assert [t.description for t in town.tasks()] == ["from the dashboard"]
    assert view.task_text.value == ""
    view.buttons["assign"].click()  # empty text: the core refuses, the view says so
    assert "empty" in view.status.value and len(town.tasks()) == 1
    view.message_text.value = "hello"
    view.buttons["send"].click()
    assert [m.text for m in town.inbox("dev")][-1] == "hello"
    view.spawn_name.value = "a:b"
    view.buttons["spawn"].click()
    assert "contains &#x27;:&#x27;" in view.status.value and "a:b" not in view.target.options
    view.buttons["kill"].click()
    assert town.agent("dev").state.value == "stopped"
    eventually(lambda: "stopped 1" in view.counts.value)


# --------------------------------------------------------------------------- gates (issue 12)


def dump(town) -> dict[bytes, bytes]:
    """Every key of the town, byte for byte (to show that nothing changed)."""
    raw = town.store.raw
    return {k: raw.dump(k) for k in sorted(raw.scan_iter(match=f"tt:{town.name}:*".encode()))}


def state_cell(view, task):
    """The task table's state cell of one task (its text and hover); an empty cell while
    the task is not in the table."""
    i = [c.key for c in view.tasks_grid.cols].index("state")
    return next((r.cells[i] for r in view.tasks_grid.rows if r.key == task.id), Cell(""))


def test_gates_wait_for_you_in_the_view_and_its_buttons_decide_them(view):
    town = view.town
    panel = view.gates_panel
    assert panel.layout.display == "none" and "Waiting for you" not in view.html()
    draft = town.assign("dev", "draft the notes")
    ok = town.gate("Ship <the> notes?", after=[draft])
    publish = town.assign("ops", "publish", after=[ok])
    hold = town.gate("Print them on a mug?")
    mug = town.assign("ops", "order the mug", after=[hold])
    # made outside the view: the thread brings them in from the event stream
    eventually(lambda: set(panel.rows) == {ok.id, hold.id}, what="the gates in the view")
    assert panel.layout.display == "flex" and view.full_reads == 1
    first = panel.rows[ok.id]
    assert ok.short_id in first.label.value and "Ship &lt;the&gt; notes?" in first.label.value
    assert f"(waits for {draft.short_id})" in first.label.value and first.approve.disabled
    assert "(ready)" in panel.rows[hold.id].label.value and not panel.rows[hold.id].approve.disabled
    html = view.html()
    assert "Waiting for you" in html and "Ship &lt;the&gt; notes?" in html and "<the>" not in html
    # ... and the task table tells what waits for what from what waits in the backlog
    eventually(lambda: state_cell(view, publish).text == f"waits {ok.short_id}")
    assert state_cell(view, publish).title == f"pending: waits for {ok.id}"
    eventually(lambda: state_cell(view, hold).text == "needs you")

    town.complete_task(draft, "v1")
    eventually(lambda: not first.approve.disabled, what="the gate to be ready")
    assert panel.rows[ok.id] is first and "(ready)" in first.label.value
    first.approve.click()
    assert town.task(ok).state.value == "completed" and town.task(publish).state.value == "assigned"
    assert f"Gate {ok.short_id} approved" in view.status.value
    assert list(panel.rows) == [hold.id]  # at once, not at the next redraw

    second = panel.rows[hold.id]
    before = dump(town)
    second.reject.click()  # no note: the core refuses, in one line, and nothing changes
    assert "#c0392b" in view.status.value and "Say why the gate is rejected" in view.status.value
    assert "\n" not in view.status.value and dump(town) == before
    assert "Say why" in panel.status.value  # under the buttons too, where the click was
    assert list(panel.rows) == [hold.id]

    second.note.value = "  nobody drinks coffee here  "
    town.assign("dev", "a change while you type")  # the view redraws on it ...
    eventually(lambda: "a change while you type" in column(view.tasks_grid, "task"))
    view.refresh(force=True)  # ... and on a full read
    assert panel.rows[hold.id] is second and second.note.value == "  nobody drinks coffee here  "
    assert second.box in panel.children
    second.reject.click()
    assert town.task(hold).result == "Rejected: nobody drinks coffee here"
    assert town.task(mug).state.value == "cancelled"
    assert f"Gate {hold.short_id} rejected" in view.status.value
    assert panel.rows == {} and panel.layout.display == "none" and "Waiting for you" not in view.html()


def test_a_task_waiting_for_others_is_told_apart_from_backlog_tasks(view):
    town = view.town
    a, b = town.assign_many("dev", ["a", "b"])
    both = town.assign("ops", "after a and b", after=[a, b])
    loose = town.backlog_add("in the backlog")
    view.refresh()
    assert state_cell(view, both).text == f"waits {a.short_id} +1"
    assert state_cell(view, both).title == f"pending: waits for {a.id}, {b.id}"
    assert state_cell(view, loose).text == "pending" and state_cell(view, a).text == "assigned"
    header = view.tasks_grid.header[[c.key for c in view.tasks_grid.cols].index("state")]
    header.click()  # sorted by the state all the same: the two pending tasks first
    assert {r.key for r in view.tasks_grid.rows[:2]} == {both.id, loose.id}
    view.tasks_state.value = "completed"  # no pending row: nothing read, nothing kept
    assert view.snapshot.waits == {}
    view.tasks_state.value = "pending"  # a filter reads the rows, and what they wait for, again
    assert state_cell(view, both).text == f"waits {a.short_id} +1"
    town.complete_task(a)  # (the event names a only)
    eventually(lambda: state_cell(view, both).text == f"waits {b.short_id}")
    town.complete_task(b)
    eventually(lambda: [r.key for r in view.tasks_grid.rows] == [loose.id])


# --------------------------------------------------------------------------- progress and watch


def test_progress_shows_elapsed_rate_and_eta():
    ticks = iter([0.0, 10.0, 10.0, 20.0, 20.0, 30.0, 30.0])
    lines: list[str] = []
    bar = Progress("until all tasks finish", widget=False, out=lines.append, clock=ticks.__next__)
    bar.update(2, 10, "2/10 tasks finished")
    bar.update(4, 10, "4/10 tasks finished")
    bar.update(10, 10, "10/10 tasks finished", final=True)
    assert lines == [
        "until all tasks finish: 2/10 tasks finished · 20% · 00:10 elapsed",
        "until all tasks finish: 4/10 tasks finished · 40% · 00:20 elapsed · 0.10 tasks/s · ETA 01:00",
        "until all tasks finish: 10/10 tasks finished · 100% · 00:30 elapsed · 0.27 tasks/s",
    ]


def test_progress_widget_keeps_the_full_label():
    bar = Progress("until every task of a long-named town finishes", widget=True)
    bar.update(1, 4, "1/4 tasks done")
    assert bar.title.value == "<b>until every task of a long-named town finishes</b>"
    assert "1/4 tasks done · 25% · " in bar.note.value and "elapsed" in bar.note.value
    assert (bar.bar.value, bar.bar.max) == (1, 4)


def test_summary_is_one_line_or_one_small_table():
    s = Summary("demo", "done", Counts(tasks={"completed": 4000}, agents={"idle": 3}), 12.25)
    assert repr(s) == "<demo done after 12.2s: 4000 tasks (4000 completed) · 3 agents (3 idle)>"
    html = s._repr_html_()
    assert html.count("<tr>") == 2 and len(html) < 700 and "4000 tasks (4000 completed)" in html  # a header, one row


def test_watch_text_progress_and_result(town):
    town.spawn("dev", start=False)
    lines: list[str] = []
    text_bar = Progress("until done", widget=False, out=lines.append)
    done = watch(town, "done", timeout=5, progress=text_bar)
    assert isinstance(done, Summary) and done.frame().columns.equals(frames.status_columns())
    assert lines[0].startswith("until done: 0/0 tasks done, 0 agents busy · 100% · ")
    task = town.assign("dev", "finish me")
    finisher = threading.Timer(0.3, town.complete_task, args=(task.id, "ok"))
    finisher.start()
    lines.clear()
    final = watch(town, "done", timeout=10, progress=Progress("until done", widget=False, out=lines.append))
    finisher.join()
    assert final.counts.tasks["completed"] == 1 and final.elapsed > 0
    assert lines[0].startswith("until done: 0/1 task done, 0 agents busy · 0% · ")
    assert lines[-1].startswith("until done: 1/1 task done, 0 agents busy · 100% · ")


def test_watch_widget_progress_and_timeout(town):
    town.spawn("dev", start=False)
    town.assign("dev", "never finished")
    bar = Progress("until idle", widget=True)
    with pytest.raises(WaitTimeout, match="idle"):
        watch(town, "idle", timeout=0.3, progress=bar)
    assert (bar.bar.value, bar.bar.max, bar.bar.bar_style) == (0, 1, "warning")
    assert "0/1 task done" in bar.note.value and "timed out" in bar.note.value
    town.complete_task(town.tasks()[0].id)
    bar = Progress("until idle", widget=True)
    watch(town, "idle", timeout=5, progress=bar)
    assert (bar.bar.value, bar.bar.max, bar.bar.bar_style) == (1, 1, "success")


# --------------------------------------------------------------------------- exports


def test_the_dashboard_tutorial_exports_to_html_offline():
    """``jupyter nbconvert --to html`` of the committed tutorial shows the dashboard: the
    notebook carries no widget state (with it, nbconvert writes widget placeholders that
    load from a CDN, blank offline) and the view's display carries its HTML snapshot."""
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "03-dashboard.ipynb"
    assert "widgets" not in json.loads(notebook.read_text())["metadata"]
    page = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--stdout", str(notebook)],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    assert page.count('<div class="ttnb">') >= 2  # the view's snapshot and view.html()
    assert "Town dashboard" in page and "Snapshot of" in page
    for name in ("writer", "critic", "counter"):
        assert name in page
    assert "data:image/png;base64," in page  # the timeline, inline
    assert "application/vnd.jupyter.widget-view+json" not in page
    assert "html-manager" not in page and "unpkg.com" not in page  # no widget loader from a CDN


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "notebooks")
                                        .glob("[0-9][0-9]-*.ipynb")))
def test_each_tutorial_stops_a_previous_town_before_removing_it(name, tmp_path, monkeypatch):
    """Re-running a tutorial after a kernel restart: the town its last run left running (its
    server, a worker process) is shut down before its directory is removed."""
    import os
    import signal

    import nbformat

    from conftest import kill_leftovers
    from tinytown_nb.core import procs

    notebook = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / name, as_version=4)
    setup = next(c.source for c in notebook.cells if c.cell_type == "code" and "shutil.rmtree" in c.source)
    folder = setup.split('shutil.rmtree("', 1)[1].split('"', 1)[0]
    monkeypatch.chdir(tmp_path)
    old = Town.init(folder, name="left-running")
    old.spawn("worker", cli=f"{sys.executable} -c 'print(1)'")
    server, pid = old.server, old.server.pid()
    worker = old.agent("worker")
    assert pid and worker.state.value == "idle"
    try:
        plain = "\n".join(line for line in setup.splitlines()
                          if not line.lstrip().startswith("%") and "Town.init" not in line
                          and "town.spawn" not in line)
        exec(compile(plain, name, "exec"), {})
        assert not (tmp_path / folder).exists()
        assert not procs.alive(pid), "the old town's server still runs without its directory"
        assert kill_leftovers(tmp_path / folder) == [], "its worker still runs"
    finally:
        kill_leftovers(tmp_path / folder)
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)
