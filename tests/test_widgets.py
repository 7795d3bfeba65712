"""The TownView dashboard and the blocking watch: widget state (trait values, no frontend
needed), live updates from events and from tools that emit none, the watcher thread's
lifecycle (close, unload, errors) and that it never prints."""

from __future__ import annotations

import threading
import time

import pytest

from tinytown_nb import frames
from tinytown_nb.core import Task, Town, WaitTimeout
from tinytown_nb.widgets import Progress, TownView, _LIVE, close_all, watch

from conftest import eventually
from ipshell import loaded_shell

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"




@pytest.fixture
def view(town):
    town.spawn("dev", start=False)
    town.spawn("ops", start=False)
    v = TownView(town, interval=0.3, min_gap=0.1)
    yield v
    v.close()


def test_initial_state_shows_counts_agents_tasks_events(town):
    town.spawn("dev", start=False)
    a, b = town.assign_many("dev", ["first <script>", "second"])
    town.complete_task(a.id, "done")
    v = TownView(town, start=False)
    assert not v.running
    assert "starting 1" in v.counts.value and "completed 1" in v.counts.value
    assert "assigned 1" in v.counts.value and "backlog <b>0</b>" in v.counts.value
    assert "dev" in v.agents_table.value
    assert a.short_id in v.tasks_table.value and b.short_id in v.tasks_table.value
    assert "&lt;script&gt;" in v.tasks_table.value and "<script>" not in v.tasks_table.value
    assert "task_completed" in v.events_table.value
    assert v.tasks_agent.options == ("(all)", "dev") and v.target.options == ("dev",)
    v.close()


def test_filters_redraw_the_task_table(view):
    town = view.town
    a, b = town.assign_many("dev", ["alpha", "beta"])
    c = town.assign("ops", "gamma")
    town.complete_task(a.id)
    view.refresh()
    view.tasks_state.value = "completed"
    assert a.short_id in view.tasks_table.value and b.short_id not in view.tasks_table.value
    view.tasks_state.value = "(all)"
    view.tasks_agent.value = "ops"
    assert c.short_id in view.tasks_table.value and a.short_id not in view.tasks_table.value
    view.tasks_state.value = "failed"
    assert "No tasks match" in view.tasks_table.value


def test_large_task_tables_show_the_most_recent_rows(town):
    town.spawn("dev", start=False)
    tasks = town.assign_many("dev", [f"job {i}" for i in range(40)])
    v = TownView(town, rows=5, start=False)
    assert tasks[-1].short_id in v.tasks_table.value and tasks[0].short_id not in v.tasks_table.value
    assert "5 most recently updated of 40 matching" in v.tasks_table.value
    v.close()


def test_live_update_from_events(view):
    task = view.town.assign("dev", "appears live")
    eventually(lambda: task.short_id in view.tasks_table.value)
    view.town.kill("ops")
    eventually(lambda: "stopped 1" in view.counts.value)


def test_live_update_from_a_tool_that_emits_no_events(view):
    town = view.town
    raw = Task.new("written by the Rust tt").to_hash()  # HSET only, as tt 0.10 does
    town.redis.hset(town.keys.task(raw["id"]), mapping=raw)
    eventually(lambda: raw["id"][:4] in view.tasks_table.value, timeout=3)


def test_a_working_function_agent_shows_its_current_task(town):
    release = threading.Event()

    def slow(task):
        release.wait(10)
        return "finished"

    town.spawn("busy", fn=slow)
    v = TownView(town, interval=0.3, min_gap=0.1)
    try:
        task = town.assign("busy", "a long job")
        eventually(lambda: "working 1" in v.counts.value and "running 1" in v.counts.value)
        eventually(lambda: f"{task.short_id} a long job" in v.agents_table.value)
        release.set()
        eventually(lambda: "completed 1" in v.counts.value and "finished" in v.tasks_table.value)
    finally:
        release.set()
        v.close()


def test_redraws_only_when_something_changed(view):
    town = view.town
    time.sleep(0.5)
    before = view.refreshes
    time.sleep(1.0)  # three periodic looks, nothing changed
    assert view.refreshes == before
    assert view.refresh() is False
    town.assign("dev", "a change")
    eventually(lambda: view.refreshes > before)


def test_close_stops_the_thread(view):
    thread = view._thread
    assert view.running and thread.daemon
    view.close()
    assert not view.running and not thread.is_alive()
    assert view not in _LIVE
    town = view.town
    count = view.refreshes
    town.assign("dev", "after close")
    time.sleep(0.5)
    assert view.refreshes == count  # frozen


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
        assert "bare record" in v.tasks_table.value and "normal one" in v.tasks_table.value
    finally:
        v.close()


def test_the_thread_never_prints_even_when_redis_goes_away(tmp_path, capfd):
    town = Town.init(tmp_path / "t", name="gone")
    try:
        town.spawn("dev", start=False)
        v = TownView(town, interval=0.2, min_gap=0.05)
        town.assign("dev", "one")
        eventually(lambda: "assigned 1" in v.counts.value)
        town.server.stop()
        eventually(lambda: "live update failed" in v.status.value, timeout=5)
        assert "****" not in v.status.value or town.config.redis_password()
        v.close()
        assert not v.running
    finally:
        town.disconnect()
        if town.server is not None:
            town.server.stop()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_mimebundle_has_widget_html_and_text(view):
    view.town.assign("dev", "shown in the snapshot")
    view.refresh()
    bundle = view._repr_mimebundle_()
    assert {"text/plain", "text/html", WIDGET_VIEW} <= set(bundle)
    assert bundle[WIDGET_VIEW]["model_id"] == view.widget.model_id
    assert "dev" in bundle["text/html"] and "shown in the snapshot" in bundle["text/html"]
    assert bundle["text/plain"] == ("TownView 'test': 2 agents (2 starting) · 1 tasks (1 assigned)"
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


def test_watch_text_progress_and_result(town):
    town.spawn("dev", start=False)
    lines: list[str] = []
    text_bar = Progress("until done", widget=False, out=lines.append)
    done = watch(town, "done", timeout=5, progress=text_bar)
    assert done.columns.equals(frames.status_columns())
    assert lines == ["until done: 0/0 tasks done, 0 agents busy"]
    task = town.assign("dev", "finish me")
    finisher = threading.Timer(0.3, town.complete_task, args=(task.id, "ok"))
    finisher.start()
    lines.clear()
    final = watch(town, "done", timeout=10, progress=Progress("until done", widget=False, out=lines.append))
    finisher.join()
    assert final.loc["test", ("tasks", "completed")] == 1
    assert lines[0] == "until done: 0/1 tasks done, 0 agents busy"
    assert lines[-1] == "until done: 1/1 tasks done, 0 agents busy"


def test_watch_widget_progress_and_timeout(town):
    town.spawn("dev", start=False)
    town.assign("dev", "never finished")
    bar = Progress("until idle", widget=True)
    with pytest.raises(WaitTimeout, match="idle"):
        watch(town, "idle", timeout=0.3, progress=bar)
    assert (bar.bar.value, bar.bar.max, bar.bar.bar_style) == (0, 1, "warning")
    assert "0/1 tasks done" in bar.note.value and "timed out" in bar.note.value
    town.complete_task(town.tasks()[0].id)
    bar = Progress("until idle", widget=True)
    watch(town, "idle", timeout=5, progress=bar)
    assert (bar.bar.value, bar.bar.max, bar.bar.bar_style) == (1, 1, "success")
