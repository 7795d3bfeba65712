"""The live town dashboard (:class:`TownView`) and the blocking progress watch (:func:`watch`).

``TownView`` is built from core ipywidgets only (no JavaScript of ours). One daemon thread
per view keeps it current while the kernel is idle: it blocks on ``XREAD`` of the town's
event stream (so changes made here show within half a second) and also looks every
``interval`` seconds (changes by the Rust ``tt`` emit no events). It refreshes at most
twice a second and only when what it read differs from last time; it only ever sets
widget traits — it never prints or displays — and reports failures in the status line.

Displayed, a view is a mimebundle holding the widget *and* ``text/html`` and ``text/plain``
snapshots, so a saved notebook still reads on GitHub, nbviewer, in nbval or after the
kernel died.

Example::

    >>> view = TownView(town)      # doctest: +SKIP
    >>> view                       # the live dashboard  # doctest: +SKIP
    >>> view.close()               # stop its thread     # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import heapq
import html
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import ipywidgets as W
import pandas as pd

from . import frames
from .core import Counts
from .core.errors import ConfigError, TinytownError, WaitTimeout
from .core.events import Event
from .core.keys import SUPERVISOR_ID
from .core.models import (AGENT_STATES, TASK_STATES, Agent, AgentState, TaskState, format_duration,
                          truncate_summary)
from .core.server import connect

__all__ = ["TownView", "Progress", "watch", "close_all", "GatePanel"]

_LIVE: "weakref.WeakSet[TownView]" = weakref.WeakSet()
_ALL = "(all)"
_BUSY_AGENT = {AgentState.WORKING.value, AgentState.DRAINING.value}
_OPEN_TASK = {TaskState.PENDING.value, TaskState.ASSIGNED.value, TaskState.RUNNING.value}
_IN_FLIGHT = {TaskState.ASSIGNED.value, TaskState.RUNNING.value}
# What the dashboard reads of every task (every change sets updated_at); shown rows are
# then read whole.
_TASK_FIELDS = ("state", "assigned_to", "updated_at")
_COLORS = {
    "starting": "#8e44ad", "idle": "#2e86c1", "working": "#d68910", "paused": "#7f8c8d",
    "draining": "#af601a", "stopped": "#566573", "error": "#c0392b", "cold": "#5d6d7e",
    "pending": "#7f8c8d", "assigned": "#2e86c1", "running": "#d68910",
    "completed": "#229954", "failed": "#c0392b", "cancelled": "#566573",
}
_CSS = ("<style>.ttnb-badge{display:inline-block;padding:1px 7px;margin:1px 3px 1px 0;"
        "border-radius:9px;color:#fff;font-size:12px}.ttnb-zero{opacity:.35}"
        ".ttnb table{font-size:12px}</style>")


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _hms(ts: Any) -> str:
    return ts.strftime("%H:%M:%S") if ts is not None and not pd.isna(ts) else ""


@dataclass
class Snapshot:
    """What one look at the town read, compared whole to decide whether to redraw: the
    agents, each task's state, assignee and update time, inbox counts, backlog length and
    the last events.

    >>> Snapshot.read(town).summary()   # doctest: +SKIP
    '2 agents (2 idle) · 5 tasks (5 completed) · backlog 0 · inbox 0'
    """

    agents: list[Agent] = field(default_factory=list)
    tasks: dict[str, dict[str, str]] = field(default_factory=dict)
    inbox: dict[str, int] = field(default_factory=dict)
    backlog: int = 0
    events: list[Event] = field(default_factory=list)

    @classmethod
    def read(cls, town, n_events: int = 8) -> "Snapshot":
        """One look at the town (6 round trips; at 10,000 tasks about 40 ms of client CPU)."""
        agents = town.agents()
        tasks = {h["id"]: h for h in town.hashes("task", fields=_TASK_FIELDS)}
        inbox = town.inbox_counts([a.id for a in agents] + [SUPERVISOR_ID])
        return cls(agents, tasks, inbox, town.backlog_size(),
                   town.history(n_events) if n_events > 0 else [])

    def task_states(self) -> list[str]:
        """Every task's state, parsed by the core's rule once per distinct raw value."""
        raw = [h.get("state") for h in self.tasks.values()]
        table = {v: TaskState.parse(v).value for v in set(raw)}
        return [table[v] for v in raw]

    def counts(self) -> Counts:
        """Agents and tasks by state, backlog and inbox, as the core counts them."""
        return Counts(Counter(a.state.value for a in self.agents), Counter(self.task_states()),
                      self.backlog, sum(self.inbox.values()))

    def summary(self) -> str:
        """One line: agents and tasks by state, backlog, waiting messages."""
        return self.counts().summary()


# --------------------------------------------------------------------------- HTML pieces


def _badges(title: str, counter: Counter, order) -> str:
    parts = []
    for s in order:
        n = counter.get(s.value, 0)
        cls = "ttnb-badge" + ("" if n else " ttnb-zero")
        parts.append(f'<span class="{cls}" style="background:{_COLORS.get(s.value, "#555")}">'
                     f"{s.value} {n}</span>")
    return f"<div><b>{title}</b> {''.join(parts)}</div>"


def _table(df: pd.DataFrame, empty: str) -> str:
    if df.empty:
        return f"<i>{_esc(empty)}</i>"
    return df.to_html(index=False, border=0, na_rep="", classes="ttnb-table")


def _render_counts(snap: Snapshot) -> str:
    c = snap.counts()
    return (_CSS + '<div class="ttnb">' + _badges("Agents", c.agents, AGENT_STATES)
            + _badges("Tasks", c.tasks, TASK_STATES)
            + f"<div>backlog <b>{snap.backlog}</b> · waiting messages "
              f"<b>{sum(snap.inbox.values())}</b></div></div>")


def _render_agents(snap: Snapshot, details: dict[str, dict[str, str]],
                   branches: dict[str, str] | None = None) -> str:
    rows = []
    for a in snap.agents:
        current = details.get(a.current_task or "", {})
        rows.append({
            "agent": a.display_label, "id": a.short_id, "state": a.state.value, "cli": a.cli,
            "inbox": snap.inbox.get(a.id, 0),
            "task": (f"{a.current_task[:4]} {truncate_summary(current.get('description', ''), 40)}"
                     if a.current_task else ""),
            "done": a.tasks_completed, "rounds": a.rounds_completed,
            "heartbeat": a.last_heartbeat.strftime("%H:%M:%S"),
            "worktree": (branches or {}).get(a.name, ""),
        })
    return _table(pd.DataFrame(rows), "No agents yet.")


def _select_tasks(snap: Snapshot, state: str, agent_id: str | None, rows: int) -> tuple[list[dict], int]:
    """The ``rows`` most recently updated tasks matching the filters, and how many match."""
    wanted = [h for h in snap.tasks.values()
              if (state == _ALL or TaskState.parse(h.get("state")).value == state)
              and (agent_id is None or h.get("assigned_to") == agent_id)]
    # `or ""`: a hand-written or older record may lack updated_at (the field reads as None)
    return heapq.nlargest(rows, wanted, key=lambda h: h.get("updated_at") or ""), len(wanted)


def _render_tasks(town, snap: Snapshot, state: str, agent_id: str | None, rows: int) -> str:
    picked, total = _select_tasks(snap, state, agent_id, rows)
    names = {a.id: a.name for a in snap.agents}
    shown = town.hashes("task", ids=[h["id"] for h in picked]) if picked else []
    df = frames.tasks_from_hashes(shown, names, sort=False)
    if df.empty:
        return "<i>No tasks match.</i>" if snap.tasks else "<i>No tasks yet.</i>"
    view = pd.DataFrame({
        "id": df["id"].str[:4], "state": df["state"].astype(str), "agent": df["agent"],
        "task": [truncate_summary(d, 60) for d in df["description"].fillna("")],
        "updated": [_hms(t) for t in df["updated_at"]],
        "took": [format_duration(None if pd.isna(d) else d) for d in df["duration"]],
        "result": [truncate_summary(r, 40) if isinstance(r, str) else "" for r in df["result"]],
    })
    note = f"<div><small>{len(df)} most recently updated of {total} matching</small></div>"
    return _table(view, "") + (note if total > len(df) else "")


def _render_events(snap: Snapshot) -> str:
    names = {a.id: a.name for a in snap.agents}
    rows = [{"time": _hms(e.timestamp), "event": e.type,
             "agent": names.get(e.agent_id or "", (e.agent_id or "")[:4]),
             "message": truncate_summary(e.message, 80)} for e in reversed(snap.events)]
    return _table(pd.DataFrame(rows), "No events yet.")


# --------------------------------------------------------------------------- the view


class TownView:
    """A live dashboard of one town: counts by state, agents, tasks (filterable), recent
    events, and controls to spawn, assign, send, kill, interrupt and resume.

    ``interval`` is the periodic look (seconds), ``min_gap`` the shortest time between
    two redraws, ``rows`` the number of tasks shown. ``close()`` stops the thread.

    >>> view = TownView(town)                               # doctest: +SKIP
    >>> view.tasks_state.value = "failed"                   # filter the task table  # doctest: +SKIP
    """

    def __init__(self, town, *, interval: float = 2.0, min_gap: float = 0.5, rows: int = 15,
                 start: bool = True):
        self.town = town
        self.interval, self.min_gap, self.rows = interval, min_gap, rows
        self.snapshot = Snapshot()
        self.refreshes = 0  # redraws done (for tests and curious users)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._build()
        self.refresh(force=True)
        _LIVE.add(self)
        if start:
            self.start()

    # ---- widgets
    def _build(self) -> None:
        town = self.town
        self.header = W.HTML(f"<b>Town {_esc(town.name)}</b> · <code>{_esc(town.url)}</code>")
        self.counts = W.HTML()
        self.agents_table = W.HTML()
        self.tasks_table = W.HTML()
        self.events_table = W.HTML()
        self.status = W.HTML("")
        small = W.Layout(width="180px")
        self.tasks_state = W.Dropdown(options=[_ALL, *(s.value for s in TASK_STATES)],
                                      value=_ALL, description="state", layout=small)
        self.tasks_agent = W.Dropdown(options=[_ALL], value=_ALL, description="agent", layout=small)
        self.target = W.Dropdown(options=[], description="agent", layout=W.Layout(width="220px"))
        self.spawn_name = W.Text(placeholder="new agent name", layout=W.Layout(width="160px"))
        self.spawn_cli = W.Text(placeholder=f"cli (default {town.config.default_cli})",
                                layout=W.Layout(width="180px"))
        self.task_text = W.Textarea(placeholder="Task for the selected agent",
                                    layout=W.Layout(width="420px", height="60px"))
        self.message_text = W.Text(placeholder="Message for the selected agent",
                                   layout=W.Layout(width="420px"))
        self.buttons: dict[str, W.Button] = {}
        for name, style in (("spawn", "success"), ("assign", "primary"), ("send", ""),
                            ("kill", "danger"), ("interrupt", "warning"), ("resume", "info")):
            button = W.Button(description=name, button_style=style, layout=W.Layout(width="90px"))
            button.on_click(lambda _b, n=name: self._act(n))
            self.buttons[name] = button
        self.tasks_state.observe(self._filter_changed, "value")
        self.tasks_agent.observe(self._filter_changed, "value")
        b = self.buttons
        controls = W.VBox([
            W.HBox([self.target, b["kill"], b["interrupt"], b["resume"]]),
            W.HBox([self.spawn_name, self.spawn_cli, b["spawn"]]),
            W.HBox([self.task_text, b["assign"]]),
            W.HBox([self.message_text, b["send"]]),
        ])
        self.controls = W.Accordion(children=[controls], titles=("Controls",))
        self.widget = W.VBox([
            self.header, self.counts, W.HTML("<b>Agents</b>"), self.agents_table,
            W.HBox([W.HTML("<b>Tasks</b>&nbsp;"), self.tasks_state, self.tasks_agent]),
            self.tasks_table, W.HTML("<b>Recent events</b>"), self.events_table,
            self.controls, self.status,
        ])

    # ---- drawing
    def refresh(self, force: bool = False) -> bool:
        """Read the town and redraw what changed; returns whether anything was redrawn.

        Runs in the watcher thread; call it yourself to redraw at once.
        """
        snap = Snapshot.read(self.town)
        with self._lock:
            if not force and snap == self.snapshot:
                return False
            self.snapshot = snap
            names = [a.name for a in snap.agents]
            self._set_options(self.tasks_agent, [_ALL, *names])
            self._set_options(self.target, names)
            self._set(self.counts, _render_counts(snap))
            current = [a.current_task for a in snap.agents if a.current_task]
            details = {h["id"]: h for h in self.town.hashes("task", ids=current)} if current else {}
            branches = {w.agent: w.branch for w in self.town.worktrees(status=False)}
            self._set(self.agents_table, _render_agents(snap, details, branches))
            self._set(self.tasks_table, self._tasks_html())
            self._set(self.events_table, _render_events(snap))
            self.refreshes += 1
            return True

    def _tasks_html(self) -> str:
        agent = self.tasks_agent.value
        aid = next((a.id for a in self.snapshot.agents if a.name == agent), None)
        return _render_tasks(self.town, self.snapshot, self.tasks_state.value,
                             aid if agent != _ALL else None, self.rows)

    def _filter_changed(self, _change: Any = None) -> None:
        try:
            with self._lock:
                self._set(self.tasks_table, self._tasks_html())
        except Exception as exc:  # noqa: BLE001 — a filter must never raise into the comm handler
            self._say(self._scrub(f"{type(exc).__name__}: {exc}"), error=True)

    @staticmethod
    def _set(widget: W.HTML, value: str) -> None:
        if widget.value != value:  # only changed content goes to the frontend
            widget.value = value

    @staticmethod
    def _set_options(dropdown: W.Dropdown, options: list[str]) -> None:
        if list(dropdown.options) == options:
            return
        keep = dropdown.value
        dropdown.options = options
        if keep in options:
            dropdown.value = keep

    def _say(self, text: str, error: bool = False) -> None:
        color = "#c0392b" if error else "#1e8449"
        self._set(self.status, f'<span style="color:{color}">{_esc(text)}</span>')

    # ---- controls (run in the kernel thread, when the kernel is idle)
    def _act(self, action: str) -> None:
        town, agent = self.town, self.target.value
        try:
            if action == "spawn":
                name = self.spawn_name.value.strip()
                a = town.spawn(name, self.spawn_cli.value.strip() or None)
                self.spawn_name.value = ""
                self._say(f"Spawned {a.name} ({a.short_id}).")
            elif not agent:
                raise ConfigError("Pick an agent first (spawn one if there are none).")
            elif action == "assign":
                task = town.assign(agent, self.task_text.value)
                self.task_text.value = ""
                self._say(f"Assigned task {task.short_id} to {agent}.")
            elif action == "send":
                town.send(agent, self.message_text.value)
                self.message_text.value = ""
                self._say(f"Sent a message to {agent}.")
            else:
                a = getattr(town, action)(agent)
                self._say(f"{a.name} is now {a.state.value}.")
        except TinytownError as exc:
            self._say(str(exc), error=True)
        except Exception as exc:  # a button must never raise into the kernel's comm handler
            self._say(self._scrub(f"{type(exc).__name__}: {exc}"), error=True)
        self._wake.set()

    def _scrub(self, text: str) -> str:
        password = self.town.config.redis_password()
        return text.replace(password, "****") if password else text

    # ---- the watcher thread
    def start(self) -> "TownView":
        """Start the watcher thread (done by the constructor unless ``start=False``)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"TownView-{self.town.name}",
                                            daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the watcher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the watcher thread (the widgets stay, frozen at their last state)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        _LIVE.discard(self)

    def _run(self) -> None:
        client = None
        stream = self.town.keys.events
        last_id = "$"
        dirty = False
        last_draw = next_look = 0.0
        while not self._stop.is_set():
            try:
                if client is None:
                    client = connect(self.town.config.redis_url(), blocking=True)
                    tip = client.xrevrange(stream, count=1)
                    last_id = tip[0][0] if tip else "0-0"
                now = time.monotonic()
                if self._wake.is_set():
                    self._wake.clear()
                    dirty = True
                due = max(last_draw + self.min_gap, now) if dirty else next_look
                block_ms = int(min(max(due - now, 0.0), 0.5) * 1000)
                if block_ms > 0:
                    got = client.xread({stream: last_id}, count=500, block=block_ms)
                    if got:
                        last_id = got[0][1][-1][0]
                        dirty = True
                if self._stop.is_set():
                    break
                now = time.monotonic()
                if now >= next_look:
                    dirty, next_look = True, now + self.interval
                if dirty and now >= last_draw + self.min_gap:
                    dirty, last_draw = False, now
                    self.refresh()
                    if "⚠" in self.status.value:
                        self._set(self.status, "")
            except Exception as exc:  # never print from this thread: report in the view
                self._set(self.status, '<span style="color:#c0392b">⚠ live update failed: '
                          f"{_esc(self._scrub(str(exc) or type(exc).__name__))} "
                          "(retrying every 2 s)</span>")
                if client is not None:
                    client.close()
                client = None
                self._stop.wait(2.0)
        if client is not None:
            client.close()

    # ---- display
    def text(self) -> str:
        """Plain-text snapshot: one summary line."""
        return f"TownView {self.town.name!r}: {self.snapshot.summary()}"

    def html(self) -> str:
        """HTML snapshot of the dashboard (no controls), readable without a kernel."""
        return (f'<div class="ttnb">{self.header.value}{self.counts.value}'
                f"<h4>Agents</h4>{self.agents_table.value}<h4>Tasks</h4>{self.tasks_table.value}"
                f"<h4>Recent events</h4>{self.events_table.value}</div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {}
        widget_bundle = getattr(self.widget, "_repr_mimebundle_", None)
        if callable(widget_bundle):  # None once the widget was closed
            bundle.update(widget_bundle() or {})
        bundle["text/html"] = self.html()
        bundle["text/plain"] = self.text()
        return bundle

    def __repr__(self) -> str:
        return f"<TownView {self.town.name!r} {'live' if self.running else 'stopped'}>"


def close_all() -> None:
    """Stop every live view's thread (the extension's unload and ``atexit`` call this).

    >>> close_all()
    """
    for view in list(_LIVE):
        view.close()


atexit.register(close_all)


# --------------------------------------------------------------------------- blocking watch


def _has_frontend() -> bool:
    """True inside a Jupyter kernel, where widgets can be shown."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _Bar(W.HBox):
    """The progress widget; its text form (saved as ``text/plain`` when displayed) is the
    label only, so a re-run notebook compares equal whatever the counts were."""

    def __repr__(self) -> str:
        return f"<progress {self.children[0].description}>"


class Progress:
    """A progress bar: IntProgress + HTML in a kernel with a frontend (``widget=None``
    decides), else text lines through ``out``, at most one a second and only on change.

    >>> bar = Progress("until done", widget=False)
    >>> bar.update(1, 2, "1/2 tasks done", final=True)
    until done: 1/2 tasks done
    """

    def __init__(self, label: str, widget: bool | None = None, out: Callable[[str], None] = print):
        self.label, self.out = label, out
        self.widget = _has_frontend() if widget is None else widget
        self._last_text, self._last_print = "", 0.0
        if self.widget:
            from IPython.display import display

            self.bar = W.IntProgress(min=0, max=1, value=0, description=label)
            self.note = W.HTML("")
            display(_Bar([self.bar, self.note]))

    def update(self, done: int, total: int, text: str, final: bool = False) -> None:
        """Show ``done`` of ``total`` with ``text``; ``final`` marks the end (green when complete)."""
        if self.widget:
            self.bar.max = max(total, 1)
            self.bar.value = min(done, self.bar.max)
            self.note.value = _esc(text)
            if final:
                self.bar.bar_style = "success" if done >= total else "warning"
            return
        now = time.monotonic()
        if final or (text != self._last_text and now - self._last_print >= 1.0):
            self.out(f"{self.label}: {text}")
            self._last_text, self._last_print = text, now


def watch(town, until: str = "done", timeout: float | None = 300.0, *,
          progress: Progress | None = None) -> pd.DataFrame:
    """Block until the town is ``done`` (no task pending, assigned or running) or ``idle``
    (no task assigned or running and no agent working or draining), showing a
    progress bar; returns the final :func:`frames.status_frame`.

    Wakes on the town's events (and every 2 s for changes that emit none). Raises
    :class:`WaitTimeout` after ``timeout`` seconds (None waits forever). ``progress``:
    your own :class:`Progress` (default: a widget bar in a kernel, text lines otherwise).

    >>> watch(town, "done", timeout=60)["tasks"]   # doctest: +SKIP
    """
    bar = progress or Progress(f"until {until}")
    last: list[Any] = [Counts()]

    def show(counts: Counts, final: bool = False, note: str = "") -> None:
        last[0] = counts
        bar.update(counts.finished_tasks, counts.total_tasks, counts.progress() + note, final=final)

    try:
        counts = town.wait_until(until, timeout=timeout, progress=show)
    except WaitTimeout:
        show(last[0], final=True, note=" (timed out)")
        raise
    show(counts, final=True)
    return frames.counts_to_frame(counts, town.name)


# --------------------------------------------------------------------------- workflows
# The "waiting for you" list (issue 12), kept apart from TownView so a view can embed it.


class GatePanel(W.VBox):
    """Gates waiting for a decision ("waiting for you"): each with its note box and
    Approve / Reject buttons (Approve is enabled once what the gate waits for is done;
    Reject needs a note, which goes to the agents whose work the gate judged).
    :meth:`refresh` reads them again; a decision refreshes the list.

    >>> GatePanel(town)          # doctest: +SKIP
    """

    def __init__(self, town: Any):
        super().__init__()
        self.town = town
        self.status = W.HTML()
        self.refresh()

    def refresh(self) -> None:
        """Read the open gates and rebuild the rows."""
        gates = self.town.gates(open=True)
        rows = [self._row(g) for g in gates]
        title = "<b>Waiting for you</b>" + ("" if gates else ": nothing")
        self.children = [W.HTML(title), *rows, self.status]

    def _row(self, gate: Any) -> W.HBox:
        what = "ready" if gate.ready else "waits for " + ", ".join(i[:4] for i in gate.open)
        label = W.HTML(f"<code>{_esc(gate.short_id)}</code> {_esc(truncate_summary(gate.task.description, 60))}"
                       f" <i style='color:#566573'>({_esc(what)})</i>")
        note = W.Text(placeholder="note (needed to reject)", layout=W.Layout(width="16em"))
        approve = W.Button(description="Approve", button_style="success", disabled=not gate.ready,
                           tooltip="complete the gate: the tasks waiting for it go on")
        reject = W.Button(description="Reject", button_style="danger",
                          tooltip="fail the gate: the tasks waiting for it are cancelled")
        approve.on_click(lambda _b: self.decide(gate.id, True, note.value))
        reject.on_click(lambda _b: self.decide(gate.id, False, note.value))
        return W.HBox([label, note, approve, reject])

    def decide(self, gate_id: str, approve: bool, note: str = "") -> None:
        """Approve or reject one gate (what the buttons do); a refusal shows in one line."""
        note = (note or "").strip()
        try:
            task = self.town.approve(gate_id, note or None) if approve else self.town.reject(gate_id, note)
        except TinytownError as exc:
            self.status.value = f"<span style='color:#c0392b'>{_esc(exc)}</span>"
            return
        self.status.value = f"Gate {_esc(task.short_id)} {'approved' if approve else 'rejected'}."
        self.refresh()
