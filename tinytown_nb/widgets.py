"""The live town dashboard (:class:`TownView`) and the blocking progress watch (:func:`watch`).

``TownView`` is built from core ipywidgets only (no JavaScript of ours), styled by one
stylesheet (:data:`STYLE`) that follows JupyterLab's light and dark themes. Its tables are
grids of buttons: columns of fixed track sizes (headers stay over their cells and widths
never jump), long values cut with an ellipsis and shown whole on hover, a header click
sorts, a row click selects (a task opens its result and live log, an agent becomes the
target of the controls). The task-stream timeline (:mod:`tinytown_nb.timeline`) sits below.

One daemon thread per view keeps it current from the town's event stream: it blocks on
``XREAD`` and, for each batch of new events, refetches only the agents and tasks they name
(:meth:`Snapshot.apply`) and keeps everything else. It reads the whole town again only
when events were lost (the stream is capped and trimmed past the last one it saw) or on
request (``refresh(force=True)``). When no event comes for ``interval`` seconds it looks
at the counts alone, for changes made by tools that emit no events (the Rust ``tt``); a
heartbeat changes nothing it shows, so it never redraws. It redraws at most every
``min_gap`` seconds and only what changed; it only ever sets widget traits — it never
prints — and reports failures in the status line. When the town is shut down it says so
once and stops.

Displayed, a view is a display (with an id) holding the widget *and* ``text/html`` and
``text/plain`` snapshots, so a saved notebook, an offline ``nbconvert --to html`` export,
GitHub and nbviewer show the dashboard without a kernel; the snapshot is refreshed when
the view stops (``close()``, the town shut down), so the saved state is the last one.

Example::

    >>> view = TownView(town)
    >>> view                       # the live dashboard (in a notebook)
    <TownView 'demo' live>
    >>> view.close()               # stop its thread
"""

from __future__ import annotations

import atexit
import html
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import ipywidgets as W
import pandas as pd

from . import frames, timeline
from .core import Counts, Gate
from .core.errors import ConfigError, TinytownError, WaitTimeout
from .core.events import Event, decode_entry
from .core.keys import SUPERVISOR_ID
from .core.models import (AGENT_STATES, TASK_STATES, Agent, AgentState, Task, TaskState,
                          format_duration, spellings, truncate_summary)
from .core.server import connect

__all__ = ["TownView", "Snapshot", "Progress", "Summary", "watch", "close_all", "STYLE", "GatePanel"]

_LIVE: "weakref.WeakSet[TownView]" = weakref.WeakSet()
_ALL = "(all)"
_RUNNING = set(spellings([TaskState.RUNNING]))
#: Badge colours by state: each carries white text at a contrast of at least 4.5:1.
_COLORS = {
    "starting": "#7d3c98", "idle": "#1f618d", "working": "#9c5700", "paused": "#5f6a6a",
    "draining": "#8a4b12", "stopped": "#4d5656", "error": "#a93226", "cold": "#566573",
    "pending": "#5f6a6a", "assigned": "#1f618d", "running": "#9c5700",
    "completed": "#1d6f42", "failed": "#a93226", "cancelled": "#4d5656",
}

#: The one stylesheet of the view and its snapshot. Colours come from JupyterLab's theme
#: variables (with light fallbacks for other frontends), so the dark theme reads too.
STYLE = """<style>
.ttnb{color:var(--jp-ui-font-color1,#1f1f1f);font-size:var(--jp-ui-font-size1,13px);max-width:100%;overflow:hidden}
.ttnb .ttnb-h{font-weight:600;margin:8px 0 2px 0}
.ttnb-badge{display:inline-block;padding:1px 7px;margin:1px 3px 1px 0;border-radius:9px;color:#fff;font-size:12px;border:1px solid transparent;font-variant-numeric:tabular-nums}
.ttnb-badge.ttnb-zero{background:transparent!important;color:var(--jp-ui-font-color2,#555);border-color:var(--jp-border-color1,#bdbdbd)}
.ttnb-grid{width:100%;border-top:1px solid var(--jp-border-color1,#bdbdbd);border-bottom:1px solid var(--jp-border-color2,#e0e0e0)}
.ttnb-grid .jupyter-button.ttnb-cell,.ttnb-grid .jupyter-button.ttnb-head{height:24px;line-height:24px;margin:0;padding:0 6px;border-radius:0;width:auto;min-width:0;text-align:left;background:transparent;box-shadow:none;color:var(--jp-ui-font-color1,#1f1f1f);font-size:var(--jp-ui-font-size1,13px);font-variant-numeric:tabular-nums;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.ttnb-grid .jupyter-button.ttnb-head{font-weight:600;border-bottom:1px solid var(--jp-border-color1,#bdbdbd)}
.ttnb-grid .jupyter-button.ttnb-cell:hover,.ttnb-grid .jupyter-button.ttnb-head:hover{box-shadow:none;background:var(--jp-layout-color3,#e0e0e0)}
.ttnb-grid .jupyter-button.ttnb-odd{background:var(--jp-layout-color2,#f3f3f3)}
.ttnb-grid .jupyter-button.ttnb-sel{background:var(--jp-brand-color3,#bbdefb);color:var(--jp-ui-font-color0,#000)}
.ttnb-grid .jupyter-button.ttnb-num{text-align:right}
.ttnb-grid .jupyter-button.ttnb-hide{display:none}
.ttnb-grid .jupyter-button.ttnb-nohover{cursor:default}
.ttnb-dot::before,.ttnb-grid .jupyter-button.ttnb-dot::before{content:"\\25CF\\00a0";color:var(--ttnb-dot)}
.ttnb-empty{color:var(--jp-ui-font-color2,#555);font-style:italic;padding:2px 6px}
.ttnb-note{color:var(--jp-ui-font-color2,#555);font-size:12px;padding:2px 6px}
.ttnb-panel{border:1px solid var(--jp-border-color1,#bdbdbd);padding:4px 8px;margin:4px 0}
.ttnb-panel pre{max-height:16em;overflow:auto;margin:4px 0;padding:4px;background:var(--jp-layout-color2,#f3f3f3);color:var(--jp-ui-font-color1,#1f1f1f);white-space:pre-wrap;word-break:break-word}
.ttnb img.ttnb-timeline,.ttnb-view img{max-width:100%;height:auto}
.ttnb table.ttnb-table{table-layout:fixed;width:100%;border-collapse:collapse;font-size:var(--jp-ui-font-size1,13px);font-variant-numeric:tabular-nums}
.ttnb table.ttnb-table th,.ttnb table.ttnb-table td{text-align:left;padding:2px 6px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;color:var(--jp-ui-font-color1,#1f1f1f)}
.ttnb table.ttnb-table th{border-bottom:1px solid var(--jp-border-color1,#bdbdbd)}
.ttnb table.ttnb-table tr:nth-child(even) td{background:var(--jp-layout-color2,#f3f3f3)}
.ttnb table.ttnb-table .ttnb-num{text-align:right}
</style>"""
for _state, _color in _COLORS.items():
    STYLE = STYLE.replace("</style>", f".ttnb-st-{_state}{{--ttnb-dot:{_color}}}</style>")


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _hms(ts: Any) -> str:
    return ts.strftime("%H:%M:%S") if ts is not None and not pd.isna(ts) else ""


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Col:
    """A table column: its key, header, CSS grid track (``64px``, ``minmax(0,2fr)``) and
    whether it holds numbers (right-aligned)."""

    key: str
    title: str
    track: str
    num: bool = False


@dataclass
class Cell:
    """What one cell shows, its full value (on hover), its sort key and extra CSS class."""

    text: str
    title: str | None = None
    sort: Any = None
    cls: str = ""


@dataclass
class Row:
    """One table row: ``key`` is what a click on it selects (a task id, an agent name)."""

    key: str
    cells: list[Cell]


class Grid:
    """A table of core widgets: a ``GridBox`` of buttons, the header's sort by a click and
    the rows' select by a click. Cells are pooled (a redraw sets texts, never rebuilds)
    and share one layout, so a 15-row table costs a few hundred small trait messages at
    most, and only for what changed.

    >>> g = Grid([Col("n", "n", "40px", num=True)], empty="none")
    >>> g.show([Row("a", [Cell("2", sort=2)]), Row("b", [Cell("10", sort=10)])])
    >>> g.sort("n"); [r.key for r in g.rows]
    ['a', 'b']
    >>> g.sort("n"); [r.key for r in g.rows]
    ['b', 'a']
    """

    def __init__(self, cols: Sequence[Col], *, empty: str,
                 on_select: Callable[[str], None] | None = None):
        self.cols = list(cols)
        self.empty = empty
        self.on_select = on_select
        self.rows: list[Row] = []
        self.given: list[Row] = []
        self.sort_key: str | None = None
        self.descending = False
        self.selected: str | None = None
        self._picked: Task | None = None  # the open task as last read
        self._note = ""
        self._layout = W.Layout(width="auto", min_width="0")
        self.header = [self._button(c.title, ("ttnb-head", "ttnb-num" if c.num else ""))
                       for c in self.cols]
        for col, button in zip(self.cols, self.header):
            button.on_click(lambda _b, k=col.key: self.sort(k))
        self.pool: list[list[W.Button]] = []
        self.grid = W.GridBox(self.header, layout=W.Layout(
            grid_template_columns=" ".join(c.track for c in self.cols), grid_gap="0px",
            width="100%", overflow="hidden"))
        self.grid.add_class("ttnb-grid")
        self.note = W.HTML("")
        self.widget = W.VBox([self.grid, self.note], layout=W.Layout(width="100%"))

    def _button(self, text: str, classes: Sequence[str]) -> W.Button:
        b = W.Button(description=text, tooltip=text, layout=self._layout)
        b._dom_classes = tuple(c for c in classes if c)
        return b

    def show(self, rows: list[Row], note: str = "") -> None:
        """Show ``rows`` (in the order given, unless the user sorted by a column)."""
        self.given = rows
        self._draw(note)

    def sort(self, key: str) -> None:
        """Sort by column ``key``; again reverses; a third time returns to the given order."""
        if self.sort_key != key:
            self.sort_key, self.descending = key, False
        elif not self.descending:
            self.descending = True
        else:
            self.sort_key = None
        self._draw(self._note)

    def select(self, key: str | None) -> None:
        """Mark the row with this key (None: none)."""
        self.selected = key
        self._draw(self._note)

    def _ordered(self) -> list[Row]:
        if self.sort_key is None:
            return list(self.given)
        i = [c.key for c in self.cols].index(self.sort_key)

        def key(row: Row) -> tuple:
            v = row.cells[i].sort if row.cells[i].sort is not None else row.cells[i].text
            return (True, "") if v is None or v == "" else (False, v)  # blanks last either way
        rows = sorted(self.given, key=key, reverse=self.descending)
        if self.descending:  # keep blanks last
            rows = [r for r in rows if key(r)[0] is False] + [r for r in rows if key(r)[0]]
        return rows

    def _draw(self, note: str) -> None:
        self._note = note
        self.rows = rows = self._ordered()
        for col, button in zip(self.cols, self.header):
            mark = "" if self.sort_key != col.key else (" ▼" if self.descending else " ▲")
            _set(button, "description", col.title + mark)
        while len(self.pool) < len(rows):
            i = len(self.pool)
            cells = [self._button("", ()) for _ in self.cols]
            for button in cells:
                button.on_click(lambda _b, i=i: self._clicked(i))
            self.pool.append(cells)
            self.grid.children = (*self.grid.children, *cells)
        for i, cells in enumerate(self.pool):
            row = rows[i] if i < len(rows) else None
            for col, button, cell in zip(self.cols, cells, row.cells if row else [None] * len(cells)):
                classes = ["ttnb-cell"]
                if row is None:
                    classes.append("ttnb-hide")
                else:
                    classes += ["ttnb-odd" if i % 2 else "", "ttnb-num" if col.num else "",
                                *cell.cls.split(), "ttnb-sel" if row.key == self.selected else "",
                                "" if self.on_select else "ttnb-nohover"]
                    # never "": a button view keeps its old text when given an empty one
                    _set(button, "description", cell.text or "\u00a0")
                    _set(button, "tooltip", cell.title if cell.title is not None else cell.text)
                _set(button, "_dom_classes", tuple(c for c in classes if c))
        empty = "" if rows else f'<div class="ttnb-empty">{_esc(self.empty)}</div>'
        _set(self.note, "value", empty + (f'<div class="ttnb-note">{_esc(note)}</div>' if note else ""))

    def _clicked(self, i: int) -> None:
        if self.on_select is not None and i < len(self.rows):
            self.on_select(self.rows[i].key)

    def html(self) -> str:
        """The same table as static HTML (for snapshots)."""
        if not self.rows:
            return f'<div class="ttnb-empty">{_esc(self.empty)}</div>'
        cols = "".join(f'<col style="width:{c.track}">' if c.track.endswith("px") else "<col>"
                       for c in self.cols)
        head = "".join(f'<th class="{"ttnb-num" if c.num else ""}">{_esc(c.title)}</th>'
                       for c in self.cols)
        body = "".join(
            "<tr>" + "".join(f'<td class="{" ".join(x for x in ("ttnb-num" if c.num else "", cell.cls) if x)}" '
                             f'title="{_esc(cell.title if cell.title is not None else cell.text)}">'
                             f"{_esc(cell.text)}</td>" for c, cell in zip(self.cols, row.cells)) + "</tr>"
            for row in self.rows)
        note = f'<div class="ttnb-note">{_esc(self._note)}</div>' if self._note else ""
        return (f'<table class="ttnb-table"><colgroup>{cols}</colgroup><thead><tr>{head}</tr>'
                f"</thead><tbody>{body}</tbody></table>{note}")


def _set(widget: W.Widget, name: str, value: Any) -> None:
    """Set a trait only when it differs: only changes go to the frontend."""
    if getattr(widget, name) != value:
        setattr(widget, name, value)


# --------------------------------------------------------------------------- the model


@dataclass
class Snapshot:
    """What the view knows of the town: the counts, every agent and its waiting messages,
    the task rows it shows (the most recently updated that match its filters) and what
    each pending one still waits for (``waits``), the gates waiting for a decision, the
    last events, and the timeline fields of every task that ran; ``last_id`` is the newest
    event taken into account.

    :meth:`read` reads it all; :meth:`apply` brings it up to date from new events,
    reading only the records they name.

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> tasks = town.assign_many("dev", [f"Fix #{i}" for i in range(5)])
    >>> town.wait("dev", timeout=10).state
    <AgentState.IDLE: 'idle'>
    >>> Snapshot.read(town).summary()
    '1 agent (1 idle) · 5 tasks (5 completed) · backlog 0 · inbox 0'
    """

    counts: Counts = field(default_factory=Counts)
    agents: list[Agent] = field(default_factory=list)
    inbox: dict[str, int] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    spans: dict[str, dict[str, str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # agent name -> its worktree's branch
    last_id: str = "0-0"
    rows: int = 15
    state: str | None = None
    agent_id: str | None = None
    n_events: int = 8
    cost: "CostLook | None" = None  # recorded usage and the budget (header, agents table)
    gates: list[Gate] = field(default_factory=list)  # open gates, oldest first
    waits: dict[str, tuple[str, ...]] = field(default_factory=dict)  # shown task id -> open deps

    @classmethod
    def read(cls, town, *, rows: int = 15, state: str | None = None, agent_id: str | None = None,
             n_events: int = 8, spans: bool = True) -> "Snapshot":
        """Read everything (the timeline's fields of every task too, unless ``spans=False``)."""
        tip = town.history(1)
        snap = cls(rows=rows, state=state, agent_id=agent_id, n_events=n_events,
                   last_id=tip[0].id if tip else "0-0")  # taken first: later events apply again
        snap.reread(town, events=True)
        if spans:
            snap.spans = {h["id"]: h for h in town.hashes("task", fields=frames.TIMELINE_FIELDS)
                          if h.get("started_at")}
        return snap

    def reread(self, town, *, events: bool = False) -> None:
        """Read the counts, agents, inboxes and task rows again (and the last events); the
        timeline's fields stay."""
        self.agents = town.agents()
        self.inbox = town.inbox_counts([a.id for a in self.agents] + [SUPERVISOR_ID])
        self.counts = town.counts()
        self.tasks = town.recent_tasks(self.rows, self.state, self.agent_id)
        self.read_waits(town)
        self.gates = town.gates(open=True)
        self.branches = {w.agent: w.branch for w in town.worktrees(status=False)}
        self.cost = CostLook.read(town, self.agents)
        if events:
            self.events = town.history(self.n_events) if self.n_events else []
        self._describe(town)

    def apply(self, town, events: Sequence[Event]) -> bool:
        """Take new events into account: refetch the agents and tasks they name (and the
        shown open tasks of an agent that stopped: a requeue names only the agent), the
        counts and those agents' inboxes — and, when they name tasks, what the shown
        pending tasks wait for (a dependency's completion names only the dependency) and,
        when they may change them, the open gates; keep the rest. Returns whether the
        timeline changed."""
        if not events:
            return False
        self.last_id = events[-1].id
        self.events = (self.events + list(events))[-self.n_events:] if self.n_events else []
        aids = {a for e in events for a in (e.agent_id, e.data.get("child_agent_id")) if a}
        tids = {e.task_id for e in events if e.task_id}
        # a recovered (or crashed) agent's running tasks go back to assigned in the same step,
        # and that event names only the agent: read its open rows again
        ended = {e.agent_id for e in events if e.type in ("agent_stopped", "agent_failed")}
        tids |= {t.id for t in self.tasks if t.assigned_to in ended and not t.state.is_terminal}
        self.counts = town.counts()
        if aids:
            fresh = {a.id: a for a in map(Agent.from_hash, town.hashes("agent", ids=sorted(aids))) if a}
            known = {a.id for a in self.agents}
            self.agents = [fresh.get(a.id, a) for a in self.agents if a.id in fresh or a.id not in aids]
            self.agents += sorted((a for i, a in fresh.items() if i not in known), key=lambda a: a.created_at)
            self.inbox.update(town.inbox_counts(sorted(aids)))
            self.branches = {w.agent: w.branch for w in town.worktrees(status=False)}
        changed = False
        if tids:
            got = [(h, Task.from_hash(h)) for h in town.hashes("task", ids=sorted(tids))]
            fresh_tasks = {t.id: t for _, t in got if t}
            for h, t in got:
                if t is None:
                    continue
                if t.started_at is not None:
                    span = {k: h.get(k) for k in ("id", *frames.TIMELINE_FIELDS)}
                    changed |= self.spans.get(t.id) != span
                    self.spans[t.id] = span
                elif self.spans.pop(t.id, None) is not None:
                    changed = True
            for gone in tids - fresh_tasks.keys():
                changed |= self.spans.pop(gone, None) is not None
            self._merge_rows(town, tids, fresh_tasks)
            self.read_waits(town)
            # the open gates cost a read of every gate ever made: read them again only for a
            # new wait (a gate made, dependencies added) or a task that is a shown gate or
            # one that a shown gate waits for
            shown = {g.id for g in self.gates} | {d for g in self.gates for d in g.open}
            if tids & shown or any(e.type == "task_waiting" for e in events):
                self.gates = town.gates(open=True)
        if aids or tids:  # a run's usage is recorded in the step that ends it
            self.cost = CostLook.read(town, self.agents)
        self._describe(town)
        return changed

    def read_waits(self, town) -> None:
        """Read what each shown pending task still waits for (no read when none is pending)."""
        pending = [t.id for t in self.tasks if t.state is TaskState.PENDING]
        self.waits = town.waiting_on(pending) if pending else {}

    def _matches(self, t: Task) -> bool:
        return ((self.state is None or t.state.value == self.state)
                and (self.agent_id is None or t.assigned_to == self.agent_id))

    def _merge_rows(self, town, tids: set[str], fresh: dict[str, Task]) -> None:
        left = [t for t in self.tasks if t.id in tids and not (t.id in fresh and self._matches(fresh[t.id]))]
        rows = [t for t in self.tasks if t.id not in tids] + [t for t in fresh.values() if self._matches(t)]
        rows.sort(key=lambda t: t.updated_at, reverse=True)
        self.tasks = rows[:self.rows]
        matching = self.matching()
        if left and len(self.tasks) < self.rows and (matching is None or matching > len(self.tasks)):
            self.tasks = town.recent_tasks(self.rows, self.state, self.agent_id)  # refill the table

    def _describe(self, town) -> None:
        """Descriptions of the agents' current tasks (for the agents table)."""
        known = {t.id: t.description for t in self.tasks}
        want = {a.current_task for a in self.agents if a.current_task}
        missing = sorted(want - known.keys() - self.descriptions.keys())
        if missing:
            known.update((h["id"], h.get("description") or "")
                         for h in town.hashes("task", ids=missing, fields=["description"]))
        self.descriptions = {tid: known.get(tid, self.descriptions.get(tid, "")) for tid in want}

    def matching(self) -> int | None:
        """How many tasks match the filters (None when the counts cannot say: an agent filter)."""
        if self.agent_id is not None:
            return None
        return self.counts.total_tasks if self.state is None else self.counts.tasks.get(self.state, 0)

    def summary(self) -> str:
        """One line: agents and tasks by state, backlog, waiting messages."""
        return self.counts.summary()


# --------------------------------------------------------------------------- cost (issue 11)


@dataclass(frozen=True)
class CostLook:
    """The town's recorded usage and budget, and each agent's, for the header and the
    agents table (compared whole, like the rest of a snapshot)."""

    total: Any = None  # core Usage
    budget: Any = None  # core Budget
    agents: tuple = ()  # (agent id, Usage) pairs

    @classmethod
    def read(cls, town, agents: list[Agent]) -> "CostLook":
        per_agent = town.agent_usage([a.id for a in agents])
        return cls(town.usage_totals(), town.budget(), tuple(sorted(per_agent.items())))

    def html(self) -> str:
        """One header line: cost, tokens, and the budget (red once it is reached)."""
        u, b = self.total, self.budget
        if u is None or (not u.input_tokens and not u.output_tokens and not u.cost_usd
                         and (b is None or b.usd is None)):
            return ""
        cost = f"${u.cost_usd:.4f}" if u.cost_usd is not None else "$–"
        line = f"cost <b>{cost}</b> · tokens <b>{u.input_tokens:,}</b> in / <b>{u.output_tokens:,}</b> out"
        if b is not None and b.usd is not None:
            state = ('<b style="color:#c0392b">budget reached: AI agents paused</b>' if b.exceeded
                     else f"${b.left:.4f} left")
            line += f" · budget ${b.usd:g} ({state})"
        return f"<div>{line}</div>"

    def agent_cost(self, aid: str) -> float | None:
        """One agent's recorded cost in dollars (None: nothing reported)."""
        u = dict(self.agents).get(aid)
        return u.cost_usd if u is not None else None


def _cost_cell(usd: float | None) -> Cell:
    return Cell(f"${usd:.4f}" if usd is not None else "", sort=usd)


# --------------------------------------------------------------------------- rendering


def _badges(title: str, counts: dict[str, int], order) -> str:
    parts = []
    for s in order:
        n = counts.get(s.value, 0)
        cls = "ttnb-badge" + ("" if n else " ttnb-zero")
        parts.append(f'<span class="{cls}" style="background:{_COLORS.get(s.value, "#555")}">'
                     f"{s.value} {n}</span>")
    return f"<div><b>{title}</b> {''.join(parts)}</div>"


def _render_counts(snap: Snapshot) -> str:
    c = snap.counts
    return (_badges("Agents", c.agents, AGENT_STATES) + _badges("Tasks", c.tasks, TASK_STATES)
            + f"<div>backlog <b>{c.backlog}</b> · waiting messages <b>{c.inbox}</b></div>"
            + (snap.cost.html() if snap.cost else ""))


AGENT_COLS = [Col("agent", "agent", "minmax(0,1.3fr)"), Col("id", "id", "52px"),
              Col("state", "state", "96px"), Col("cli", "cli", "minmax(0,1.4fr)"),
              Col("inbox", "inbox", "60px", num=True), Col("task", "task", "minmax(0,2.2fr)"),
              Col("worktree", "worktree", "minmax(0,1fr)"),
              Col("done", "done", "52px", num=True), Col("rounds", "rounds", "68px", num=True),
              Col("cost", "cost", "76px", num=True)]


def _render_agents(snap: Snapshot) -> list[Row]:
    """The agents table: one row per agent (a click makes it the controls' target)."""
    rows = []
    order = {s.value: i for i, s in enumerate(AGENT_STATES)}
    for a in snap.agents:
        task = ""
        if a.current_task:
            task = f"{a.current_task[:4]} {truncate_summary(snap.descriptions.get(a.current_task, ''), 200)}"
        rows.append(Row(a.name, [
            Cell(a.display_label), Cell(a.short_id, a.id),
            Cell(a.state.value, sort=order[a.state.value], cls=f"ttnb-dot ttnb-st-{a.state.value}"),
            Cell(a.cli), Cell(str(snap.inbox.get(a.id, 0)), sort=snap.inbox.get(a.id, 0)),
            Cell(task, snap.descriptions.get(a.current_task or "", task) if task else ""),
            Cell(snap.branches.get(a.name, "")),
            Cell(str(a.tasks_completed), sort=a.tasks_completed),
            Cell(str(a.rounds_completed), sort=a.rounds_completed),
            _cost_cell(snap.cost.agent_cost(a.id) if snap.cost else None),
        ]))
    return rows


TASK_COLS = [Col("id", "id", "52px"), Col("state", "state", "104px"),
             Col("agent", "agent", "minmax(0,1fr)"), Col("task", "task", "minmax(0,3fr)"),
             Col("updated", "updated", "76px"), Col("took", "took", "64px", num=True),
             Col("result", "result", "minmax(0,2fr)"), Col("cost", "cost", "76px", num=True)]


def _state_cell(t: Task, snap: Snapshot, order: dict[str, int], ready: set[str]) -> Cell:
    """A task's state; a pending task that waits for others says for which (``waits 3f2a``,
    all of them on hover) and a gate ready for a decision ``needs you``, so neither reads
    as a backlog task. Sorted by the state all the same."""
    text, title = t.state.value + (f" · try {t.attempts}" if t.attempts > 1 else ""), None
    waits = snap.waits.get(t.id) if t.state is TaskState.PENDING else None
    if waits:
        text = f"waits {waits[0][:4]}" + (f" +{len(waits) - 1}" if len(waits) > 1 else "")
        title = "pending: waits for " + ", ".join(waits)
    elif t.id in ready and t.state is TaskState.PENDING:
        text, title = "needs you", "a gate: approve or reject it under Waiting for you"
    return Cell(text, title, sort=order[t.state.value], cls=f"ttnb-dot ttnb-st-{t.state.value}")


def _render_tasks(snap: Snapshot) -> tuple[list[Row], str]:
    """The task rows (a click selects the task) and the note under them."""
    names = {a.id: a.name for a in snap.agents}
    order = {s.value: i for i, s in enumerate(TASK_STATES)}
    ready = {g.id for g in snap.gates if g.ready}
    rows = []
    for t in snap.tasks:
        first = (t.result or "").strip().splitlines()
        took = t.duration
        rows.append(Row(t.id, [
            Cell(t.short_id, t.id),
            _state_cell(t, snap, order, ready),
            Cell(names.get(t.assigned_to or "", (t.assigned_to or "")[:8])),
            Cell(t.summary(200), t.description),
            Cell(t.updated_at.strftime("%H:%M:%S"), t.updated_at.isoformat(timespec="seconds"),
                 sort=t.updated_at),
            Cell(format_duration(took), sort=took.total_seconds() if took is not None else None),
            Cell(first[0][:200] if first else "", t.result or ""),
            _cost_cell(t.usage.cost_usd if t.usage else None),
        ]))
    total = snap.matching()
    note = ""
    if len(rows) and (total is None or total > len(rows)):
        note = (f"{len(rows)} most recently updated of {total} matching" if total is not None
                else f"the {len(rows)} most recently updated")
    return rows, note


EVENT_COLS = [Col("time", "time", "76px"), Col("event", "event", "minmax(0,1.3fr)"),
              Col("agent", "agent", "minmax(0,1fr)"), Col("message", "message", "minmax(0,4fr)")]


def _render_events(snap: Snapshot) -> list[Row]:
    names = {a.id: a.name for a in snap.agents}
    return [Row(e.task_id or "", [
        Cell(_hms(e.timestamp), sort=e.id), Cell(e.type),
        Cell(names.get(e.agent_id or "", (e.agent_id or "")[:4])), Cell(e.message),
    ]) for e in reversed(snap.events)]


def _task_panel(task: Task, names: dict[str, str], log: list[str]) -> str:
    who = names.get(task.assigned_to or "", (task.assigned_to or "nobody")[:8])
    took = f" in {format_duration(task.duration)}" if task.duration is not None else ""
    result = (f"<div><b>result</b></div><pre>{_esc(task.result)}</pre>" if task.result else "")
    lines = log[-200:]
    more = f" (last {len(lines)} of {len(log)} lines)" if len(log) > len(lines) else ""
    shown = (f"<pre>{_esc(chr(10).join(lines))}</pre>" if lines
             else '<div class="ttnb-empty">nothing printed yet</div>')
    return (f'<div><b>Task {task.short_id}</b> · <span class="ttnb-dot ttnb-st-{task.state.value}">'
            f"{task.state.value}</span>{took} · {_esc(who)} · <code>{task.id}</code></div>"
            f"<div>{_esc(task.description)}</div>{result}<div><b>log</b>{more}</div>{shown}")


# --------------------------------------------------------------------------- the view


class TownView:
    """A live dashboard of one town: counts by state, the gates waiting for you (a
    :class:`GatePanel`: a note box, Approve and Reject), agents, tasks (filterable,
    sortable, a click opens one with its result, live log, Retry and Cancel; a task waiting
    for others says for which), the task-stream timeline, recent events, and controls to
    spawn, assign, send, kill, interrupt and resume.

    ``interval``: seconds without events after which it looks at the counts;
    ``reconcile_every``: seconds between two reconciles (which file what a tool keeping no
    index, such as the Rust ``tt``, wrote, so the counts show it; skipped when another
    process reconciled the town within that time; None: never); ``min_gap``:
    shortest time between two redraws; ``rows``: tasks shown; ``timeline``: draw the task
    stream (at most every ``timeline_gap`` seconds, and never more than a tenth of a core:
    a drawing that took 0.5 s waits 5 s for the next). ``close()`` stops the thread.

    >>> failed = town.fail_task(town.backlog_add("Deploy"), "no credentials")
    >>> view = TownView(town)
    >>> view.tasks_state.value = "failed"                   # filter the task table
    >>> view.select_task(view.snapshot.tasks[0].id)         # open one
    >>> view.close()
    """

    def __init__(self, town, *, interval: float = 2.0, min_gap: float = 0.5, rows: int = 15,
                 timeline: bool = True, timeline_gap: float = 2.0,
                 reconcile_every: float | None = 30.0, start: bool = True):
        self.town = town
        self.interval, self.min_gap, self.rows = interval, min_gap, rows
        self.reconcile_every = reconcile_every
        self.timeline_gap = self.timeline_wait = timeline_gap
        self.show_timeline = timeline
        self.snapshot = Snapshot(rows=rows)
        self.refreshes = 0      # redraws done (for tests and curious users)
        self.full_reads = 0     # whole-town reads: the first, gaps, refresh(force=True)
        self.selected: str | None = None
        self._picked: Task | None = None  # the open task as last read
        self.stopped_reason = ""
        self.last_error: Exception | None = None  # the watcher's last failure, if any
        self._log: list[str] = []
        self._timeline_drawn: int | None = None  # the spans version last drawn
        self._spans_version = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: list[Any] = []
        self._build()
        self.refresh(force=True)
        _LIVE.add(self)
        if start:
            self.start()

    # ---- widgets
    def _build(self) -> None:
        town = self.town
        self.style = W.HTML(STYLE)
        self.header = W.HTML(f"<b>Town {_esc(town.name)}</b> · <code>{_esc(town.url)}</code>")
        self.counts = W.HTML()
        self.gates_panel = GatePanel(town, [], on_decided=self._gate_decided,
                                     say=lambda text, error: self._say(self._scrub(text), error=error))
        self.gates_panel.layout.display = "none"  # shown while some gate waits for a decision
        self.agents_grid = Grid(AGENT_COLS, empty="No agents yet.", on_select=self._pick_agent)
        self.tasks_grid = Grid(TASK_COLS, empty="No tasks yet.", on_select=self.select_task)
        self.events_grid = Grid(EVENT_COLS, empty="No events yet.",
                                on_select=lambda tid: self.select_task(tid) if tid else None)
        self.timeline_image = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))
        self.status = W.HTML("")
        small = W.Layout(width="200px")
        self.tasks_state = W.Dropdown(options=[_ALL, *(s.value for s in TASK_STATES)],
                                      value=_ALL, description="state", layout=small)
        self.tasks_agent = W.Dropdown(options=[_ALL], value=_ALL, description="agent", layout=small)
        for dd in (self.tasks_state, self.tasks_agent):
            dd.style.description_width = "40px"
        self.target = W.Dropdown(options=[], description="agent", layout=W.Layout(width="220px"))
        self.target.style.description_width = "40px"
        self.spawn_name = W.Text(placeholder="new agent name", layout=W.Layout(width="160px"))
        self.spawn_cli = W.Text(placeholder=f"cli (default {town.config.default_cli})",
                                layout=W.Layout(width="200px"))
        self.task_text = W.Textarea(placeholder="Task for the selected agent",
                                    layout=W.Layout(width="420px", max_width="70%", height="60px"))
        self.message_text = W.Text(placeholder="Message for the selected agent",
                                   layout=W.Layout(width="420px", max_width="70%"))
        self.buttons: dict[str, W.Button] = {}
        for name, style in (("spawn", "success"), ("assign", "primary"), ("send", ""),
                            ("kill", "danger"), ("interrupt", "warning"), ("resume", "info"),
                            ("retry", "primary"), ("cancel", "danger"), ("close task", "")):
            button = W.Button(description=name, button_style=style, layout=W.Layout(width="90px"))
            button.on_click(lambda _b, n=name: self._act(n))
            self.buttons[name] = button
        self.tasks_state.observe(self._filter_changed, "value")
        self.tasks_agent.observe(self._filter_changed, "value")
        b = self.buttons
        self.task_info = W.HTML("")
        self.task_panel = W.VBox([self.task_info, W.HBox([b["retry"], b["cancel"], b["close task"]])],
                                 layout=W.Layout(display="none"))
        self.task_panel.add_class("ttnb-panel")
        controls = W.VBox([
            W.HBox([self.target, b["kill"], b["interrupt"], b["resume"]]),
            W.HBox([self.spawn_name, self.spawn_cli, b["spawn"]]),
            W.HBox([self.task_text, b["assign"]]),
            W.HBox([self.message_text, b["send"]]),
        ])
        self.controls = W.Accordion(children=[controls], titles=("Controls",))
        self.timeline_box = W.VBox([W.HTML('<div class="ttnb-h">Timeline</div>'), self.timeline_image],
                                   layout=W.Layout(display="flex" if self.show_timeline else "none"))
        self.widget = W.VBox([
            self.style, self.header, self.counts, self.gates_panel,
            W.HTML('<div class="ttnb-h">Agents</div>'), self.agents_grid.widget,
            W.HBox([W.HTML('<div class="ttnb-h">Tasks</div>&nbsp;'), self.tasks_state, self.tasks_agent]),
            self.tasks_grid.widget, self.task_panel, self.timeline_box,
            W.HTML('<div class="ttnb-h">Recent events</div>'), self.events_grid.widget,
            self.controls, self.status,
        ], layout=W.Layout(width="100%", overflow="hidden"))
        self.widget.add_class("ttnb")
        self.widget.add_class("ttnb-view")

    # ---- reading and drawing
    def refresh(self, force: bool = False) -> bool:
        """Redraw now: with ``force`` after reading the whole town again (a reconcile first,
        so records written by the Rust ``tt`` show), else after reading the counts, agents
        and task rows. Returns whether anything shown changed."""
        with self._lock:
            if force:
                self.town.reconcile()  # file first what a tool keeping no index wrote (Rust tt)
                self.snapshot = Snapshot.read(self.town, **self._filters(), spans=self.show_timeline)
                self.full_reads += 1
                self._spans_version += 1
            else:
                self.snapshot.reread(self.town)
            return self._draw()

    def _filters(self) -> dict[str, Any]:
        agent = self.tasks_agent.value
        aid = next((a.id for a in self.snapshot.agents if a.name == agent), None)
        if agent != _ALL and aid is None:  # a name the view has not seen: ask the town
            aid = self.town.agent(agent).id
        return {"rows": self.rows, "state": None if self.tasks_state.value == _ALL else self.tasks_state.value,
                "agent_id": aid if agent != _ALL else None}

    def apply(self, events: list[Event]) -> bool:
        """Take new events into account (:meth:`Snapshot.apply`) and redraw what changed;
        returns whether anything shown changed."""
        with self._lock:
            if self.snapshot.apply(self.town, events):
                self._spans_version += 1
            if self.selected and any(e.task_id == self.selected for e in events):
                self._read_log()
            return self._draw()

    def _draw(self) -> bool:
        """Render the snapshot into the widgets; True if any of them changed."""
        snap = self.snapshot
        before = self._fingerprint()
        names = [a.name for a in snap.agents]
        self._set_options(self.tasks_agent, [_ALL, *names])
        self._set_targets(names)
        _set(self.counts, "value", _render_counts(snap))
        self.gates_panel.show(snap.gates)
        _set(self.gates_panel.layout, "display", "flex" if snap.gates else "none")
        self.agents_grid.show(_render_agents(snap))
        rows, note = _render_tasks(snap)
        self.tasks_grid.show(rows, note)
        self.events_grid.show(_render_events(snap))
        self._draw_panel()
        changed = self._fingerprint() != before
        if changed:
            self.refreshes += 1
        return changed

    def _fingerprint(self) -> tuple:
        return (self.counts.value, [(g.id, g.open) for g in self.gates_panel.gates],
                [[c.text for c in r.cells] for r in self.agents_grid.given],
                [[c.text for c in r.cells] for r in self.tasks_grid.given],
                [[c.text for c in r.cells] for r in self.events_grid.given], self.task_info.value)

    def draw_timeline(self, now: Any = None) -> bool:
        """Draw the timeline if what it shows changed (running bars grow with time)."""
        if not self.show_timeline:
            return False
        with self._lock:
            spans = list(self.snapshot.spans.values())
            names = {a.id: a.name for a in self.snapshot.agents}
            lanes = [a.name for a in self.snapshot.agents]
            version = self._spans_version
        running = any(h.get("state") in _RUNNING for h in spans)
        if self._timeline_drawn == version and not running:
            return False
        started = time.thread_time()
        frame = frames.timeline_from_hashes(spans, names)
        png = timeline.png(frame, lanes=lanes, now=now, width=8.0)
        # a big town's picture costs more to draw: wait ten times its cost before the
        # next one, so the timeline never takes more than a tenth of a core
        self.timeline_wait = max(self.timeline_gap, 10 * (time.thread_time() - started))
        self._timeline_drawn = version
        _set(self.timeline_image, "value", png)
        return True

    def read_events(self, client: Any, after: str, block_ms: int | None = None) -> tuple[list[Event], bool, str]:
        """One ``XREAD`` of the town's stream after the id ``after`` (blocking up to
        ``block_ms``): the new events, whether some were lost before them (the capped
        stream was trimmed past ``after``) and the id to read after next time."""
        stream = self.town.keys.events
        got = client.xread({stream: after}, count=1000, block=block_ms)
        if not got:
            return [], False, after
        entries = got[0][1]
        lost = False
        if after != "0-0":
            first = client.xrange(stream, "-", "+", count=1)
            lost = bool(first) and _stream_id(first[0][0]) > _stream_id(after)
        return [decode_entry(i, f) for i, f in entries], lost, entries[-1][0]

    def look(self) -> bool:
        """The look taken when no event came for ``interval`` seconds: the counts alone
        (a heartbeat changes none); the agents and task rows are read again only when the
        counts changed without an event (a tool that emits none, such as the Rust ``tt``)."""
        with self._lock:
            if self.town.counts() == self.snapshot.counts:
                return False
            return self.refresh()

    @staticmethod
    def _set_options(dropdown: W.Dropdown, options: list[str]) -> None:
        if list(dropdown.options) == options:
            return
        keep = dropdown.value
        dropdown.options = options
        if keep in options:
            dropdown.value = keep

    def _set_targets(self, names: list[str]) -> None:
        """The controls' agent: the first one at first, then each newly spawned one."""
        old = list(self.target.options)
        if old == names:
            return
        keep = self.target.value
        new = [n for n in names if n not in old]
        self.target.options = names
        if old and new:
            self.target.value = new[-1]
        elif keep in names:
            self.target.value = keep
        elif names:
            self.target.value = names[0]

    def _pick_agent(self, name: str) -> None:
        if name in self.target.options:
            self.target.value = name
        self.agents_grid.select(name)

    def _filter_changed(self, _change: Any = None) -> None:
        try:
            with self._lock:
                f = self._filters()
                self.snapshot.state, self.snapshot.agent_id = f["state"], f["agent_id"]
                self.snapshot.tasks = self.town.recent_tasks(self.rows, f["state"], f["agent_id"])
                self.snapshot.read_waits(self.town)
                self._draw()
        except Exception as exc:  # noqa: BLE001 — a filter must never raise into the comm handler
            self._say(self._scrub(f"{type(exc).__name__}: {exc}"), error=True)

    def _say(self, text: str, error: bool = False, warn: bool = False) -> None:
        color = "#c0392b" if error else ("#9c5700" if warn else "#1e8449")
        _set(self.status, "value", f'<span style="color:{color}">{_esc(text)}</span>')

    # ---- the selected task
    def select_task(self, task_id: str | None) -> None:
        """Open a task in the panel under the table (its result and live log, Retry and
        Cancel), or close the panel with None."""
        with self._lock:
            try:
                self._picked = self.town.task(task_id) if task_id else None  # fresh, not the row
            except TinytownError as exc:  # (a click must never raise into the comm handler)
                self._say(str(exc), error=True)
                return
            self.selected = task_id
            self._log = []
            self.tasks_grid.select(task_id)
            if task_id:
                self._read_log()
            self._draw_panel()

    def _read_log(self) -> None:
        try:
            self._log = self.town.task_log(self.selected)
        except TinytownError:
            self._log = []

    def _selected_task(self) -> Task | None:
        """The open task: its table row when that is newer than what was read on opening."""
        if not self.selected:
            return None
        row = next((t for t in self.snapshot.tasks if t.id == self.selected), None)
        if row is not None and (self._picked is None or row.updated_at >= self._picked.updated_at):
            self._picked = row
        return self._picked

    def _draw_panel(self) -> None:
        task = self._selected_task()
        if task is None:
            _set(self.task_panel.layout, "display", "none")
            _set(self.task_info, "value", "")
            return
        names = {a.id: a.name for a in self.snapshot.agents}
        _set(self.task_info, "value", _task_panel(task, names, self._log))
        _set(self.buttons["retry"], "disabled", task.state not in (TaskState.FAILED, TaskState.CANCELLED))
        _set(self.buttons["cancel"], "disabled", task.state.is_terminal)
        _set(self.task_panel.layout, "display", "flex")

    def _follow_log(self) -> None:
        """Re-read the open task's log while it runs (the thread calls this ≤ 2 Hz)."""
        with self._lock:
            task = self._selected_task()
            if task is None or task.state.is_terminal:
                return
            before = (self._log, task)
            try:
                self._picked = self.town.task(task.id)
            except TinytownError:
                self._picked = None
            self._read_log()
            if (self._log, self._picked) != before:
                self._draw_panel()

    # ---- controls (run in the kernel thread, when the kernel is idle)
    def _act(self, action: str) -> None:
        town, agent = self.town, self.target.value
        try:
            if action in ("retry", "cancel", "close task"):
                self._task_action(action)
            elif action == "spawn":
                name = self.spawn_name.value.strip()
                a = town.spawn(name, self.spawn_cli.value.strip() or None)
                self.spawn_name.value = ""
                self._say(f"Spawned {a.name} ({a.short_id}).")
            elif not agent:
                raise ConfigError("Pick an agent first (spawn one if there are none).")
            elif action == "assign":
                task = town.assign(agent, self.task_text.value)
                self.task_text.value = ""
                note = assign_warning(town.agent(task.assigned_to))
                self._say(f"Assigned task {task.short_id} to {agent}." + (f" {note}" if note else ""),
                          warn=bool(note))
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

    def _task_action(self, action: str) -> None:
        if action == "close task" or not self.selected:
            self.select_task(None)
            return
        task = self.town.retry_task(self.selected) if action == "retry" else self.town.cancel_task(self.selected)
        self._say(f"Task {task.short_id} is now {task.state.value}.")
        with self._lock:
            self.snapshot.tasks = [task if t.id == task.id else t for t in self.snapshot.tasks]
            self._picked = task
            self._draw_panel()

    def _gate_decided(self, _task: Task) -> None:
        """After a click on Approve or Reject: the gates now, the rest from the thread."""
        with self._lock:
            self.snapshot.gates = self.town.gates(open=True)
            self._draw()
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
        """Stop the watcher thread (the widgets stay, frozen at their last state: the town's
        state now, events not yet drawn included) and refresh the saved snapshot of every
        display of this view."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self in _LIVE and not self.stopped_reason:
            try:
                self.catch_up()
            except Exception:  # noqa: BLE001 — the town may be gone; keep what is shown
                pass
        _LIVE.discard(self)
        self._update_displays()

    def catch_up(self) -> bool:
        """Take every event the view has not drawn yet into account now (the thread waits
        up to ``min_gap`` between redraws); a full read if some were lost. Returns whether
        anything shown changed."""
        with self._lock:
            events = self.town.events(1000, after=self.snapshot.last_id)
            oldest = self.town.events(1, after="0-0") if events else []
            lost = (self.snapshot.last_id != "0-0" and bool(oldest)
                    and _stream_id(oldest[0].id) > _stream_id(self.snapshot.last_id))
            if lost or len(events) == 1000:
                return self.refresh(force=True)
            return self.apply(events) if events else False

    def _town_stopped(self) -> bool:
        server = getattr(self.town, "server", None)
        return server is not None and not server.is_running()

    def _run(self) -> None:
        client = None
        read_id = self.snapshot.last_id
        pending: list[Event] = []
        gap = light = False
        last_draw = last_look = last_log = last_timeline = 0.0
        last_reconcile = time.monotonic()
        backoff, failed = 2.0, False
        while not self._stop.is_set():
            try:
                if client is None:
                    client = connect(self.town.config.redis_url(), blocking=True)
                    gap = gap or failed  # back after an error: anything may have been missed
                now = time.monotonic()
                if self._wake.is_set():
                    self._wake.clear()
                    light = True
                dirty = bool(pending) or gap or light
                due = [last_look + self.interval, now + 1.0]
                if dirty:
                    due.append(last_draw + self.min_gap)
                if self.selected:
                    due.append(last_log + self.min_gap)
                if self.show_timeline:
                    due.append(last_timeline + self.timeline_wait)
                block_ms = max(1, int((min(due) - now) * 1000))
                events, lost, read_id = self.read_events(client, read_id, block_ms)
                if events:
                    gap = gap or lost
                    pending += events
                    last_look = time.monotonic()
                if self._stop.is_set():
                    break
                now = time.monotonic()
                if (pending or gap or light) and now >= last_draw + self.min_gap:
                    if gap:
                        self.refresh(force=True)
                        read_id = max(read_id, self.snapshot.last_id, key=_stream_id)
                    else:
                        if pending:
                            self.apply(pending)
                        if light:
                            self.refresh()
                    pending, gap, light, last_draw = [], False, False, now
                elif not pending and now >= last_look + self.interval:
                    last_look = now
                    if self.reconcile_every is not None and now >= last_reconcile + self.reconcile_every:
                        last_reconcile = now
                        # what the Rust tt wrote (no events, no counts); skipped when
                        # another view, wait or connect reconciled the town just before
                        self.town.reconcile(unless_within=self.reconcile_every)
                    self.look()
                if self.selected and now >= last_log + self.min_gap:
                    last_log = now
                    self._follow_log()
                if self.show_timeline and now >= last_timeline + self.timeline_wait:
                    if self.draw_timeline():
                        last_timeline = now
                if failed:
                    _set(self.status, "value", "")
                backoff, failed = 2.0, False
            except Exception as exc:  # never print from this thread: report in the view
                self.last_error = exc
                if client is not None:
                    client.close()
                client = None
                if self._town_stopped():
                    self.stopped_reason = f"town {self.town.name!r} is shut down"
                    _set(self.status, "value", '<span style="color:#9c5700">Town '
                         f"{_esc(self.town.name)} is shut down: this view stopped updating "
                         "(it shows the last state). Run %tt_init and %tt_view to watch it again.</span>")
                    break
                _set(self.status, "value", '<span style="color:#c0392b">⚠ live update failed: '
                     f"{_esc(self._scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))}"
                     f" — retrying in {backoff:g} s</span>")
                failed = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        if client is not None:
            client.close()
        if not self._stop.is_set():  # ended by itself (town shut down): save the last state
            _LIVE.discard(self)
            self._update_displays()

    # ---- display
    def text(self) -> str:
        """Plain-text snapshot: one summary line."""
        return f"TownView {self.town.name!r}: {self.snapshot.summary()}"

    def html(self) -> str:
        """HTML snapshot of the dashboard (no controls), readable without a kernel."""
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        state = "live" if self.running else "stopped"
        img = ""
        if self.show_timeline and self.timeline_image.value:
            img = ('<div class="ttnb-h">Timeline</div>'
                   + timeline.img_tag(bytes(self.timeline_image.value), "task-stream timeline"))
        gates = self.gates_panel.html()
        if gates:
            gates = f'<div class="ttnb-h">Waiting for you</div>{gates}'
        return (f'{STYLE}<div class="ttnb">{self.header.value}'
                f'<div class="ttnb-note">Snapshot of {when} (the view was {state}); run the '
                f"notebook to see it live.</div>{self.counts.value}{gates}"
                f'<div class="ttnb-h">Agents</div>{self.agents_grid.html()}'
                f'<div class="ttnb-h">Tasks</div>{self.tasks_grid.html()}{img}'
                f'<div class="ttnb-h">Recent events</div>{self.events_grid.html()}'
                f'<div>{self.status.value}</div></div>')

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {}
        widget_bundle = getattr(self.widget, "_repr_mimebundle_", None)
        if callable(widget_bundle):  # None once the widget was closed
            bundle.update(widget_bundle() or {})
        bundle["text/html"] = self.html()
        bundle["text/plain"] = self.text()
        return bundle

    def _ipython_display_(self) -> None:
        """Shown in a notebook: a display with an id, so its snapshot can be refreshed."""
        from IPython.display import display

        handle = display(self._repr_mimebundle_(), raw=True, display_id=True)
        if handle is not None:
            self._handles.append(handle)

    def _update_displays(self) -> None:
        """Replace each display's snapshot with the current one (when the view stops)."""
        if not self._handles or not _has_frontend():
            return
        try:
            with self._lock:
                if self.show_timeline:
                    self.draw_timeline()
                bundle = self._repr_mimebundle_()
            for handle in self._handles:
                handle.update(bundle, raw=True)
        except Exception:  # a closing view must not fail (the kernel may be going away)
            pass

    def __repr__(self) -> str:
        return f"<TownView {self.town.name!r} {'live' if self.running else 'stopped'}>"


def assign_warning(agent: Agent) -> str:
    """What to say when a task was assigned to an agent that will not start it: stopped
    (or failed, cold) or paused; '' otherwise.

    >>> a = Agent.new("dev", "claude"); a.state = AgentState.PAUSED
    >>> assign_warning(a)
    'Note: dev is paused, so the task waits until it is resumed (%tt_resume dev).'
    """
    if agent.state == AgentState.PAUSED:
        return (f"Note: {agent.name} is paused, so the task waits until it is resumed "
                f"(%tt_resume {agent.name}).")
    if agent.state.is_terminal:
        return (f"Note: {agent.name} is {agent.state.value}, so nothing runs the task until "
                f"it is restarted (%tt_restart {agent.name}).")
    return ""


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


def _clock(seconds: float | None) -> str:
    """``01:05`` or ``1:02:03`` (tqdm's style); ``?`` when unknown.

    >>> _clock(65), _clock(3723), _clock(None)
    ('01:05', '1:02:03', '?')
    """
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class _Bar(W.HBox):
    """The progress widget; its text form (saved as ``text/plain`` when displayed) is the
    label only, so a re-run notebook compares equal whatever the counts and times were."""

    def __repr__(self) -> str:
        return f"<progress {self.label}>"

    label = ""


class Progress:
    """A progress bar with tqdm's fields: the full label, done/total, percent, elapsed
    time, rate and ETA — an ipywidgets bar in a kernel with a frontend (``widget=None``
    decides), else text lines through ``out`` (at most one a second, only on change).

    >>> bar = Progress("until done", widget=False, clock=lambda: 0.0)
    >>> bar.update(1, 2, "1/2 tasks done", final=True)
    until done: 1/2 tasks done · 50% · 00:00 elapsed
    """

    def __init__(self, label: str, widget: bool | None = None, out: Callable[[str], None] = print,
                 unit: str = "tasks", clock: Callable[[], float] = time.monotonic):
        self.label, self.out, self.unit, self.clock = label, out, unit, clock
        self.widget = _has_frontend() if widget is None else widget
        self.started = clock()
        self._first_done: int | None = None
        self._last_text, self._last_print = "", float("-inf")
        if self.widget:
            from IPython.display import display

            self.title = W.HTML(f"<b>{_esc(label)}</b>", layout=W.Layout(flex="0 0 auto"))
            self.bar = W.IntProgress(min=0, max=1, value=0, layout=W.Layout(flex="1 1 auto", width="auto"))
            self.note = W.HTML("", layout=W.Layout(flex="0 1 auto"))
            box = _Bar([self.title, self.bar, self.note], layout=W.Layout(width="100%"))
            box.label = label
            display(box)

    def fields(self, done: int, total: int) -> str:
        """``3/7 · 43% · 00:12 elapsed · 0.25 tasks/s · ETA 00:16`` (rate and ETA once
        something finished during the wait).

        >>> p = Progress("x", widget=False, clock=iter([0.0, 10.0, 20.0]).__next__)
        >>> p.fields(2, 10), p.fields(4, 10)
        ('2/10 · 20% · 00:10 elapsed', '4/10 · 40% · 00:20 elapsed · 0.10 tasks/s · ETA 01:00')
        """
        elapsed = self.clock() - self.started
        if self._first_done is None:
            self._first_done = done
        parts = [f"{done}/{total}", f"{100 * done // total if total else 100}%",
                 f"{_clock(elapsed)} elapsed"]
        gained = done - self._first_done
        if gained > 0 and elapsed > 0:
            rate = gained / elapsed
            parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s")
            if total > done:
                parts.append(f"ETA {_clock((total - done) / rate)}")
        return " · ".join(parts)

    def update(self, done: int, total: int, text: str, final: bool = False) -> None:
        """Show ``done`` of ``total`` with ``text`` (and the time fields); ``final`` marks
        the end (green when complete, orange otherwise)."""
        line = f"{text} · {self.fields(done, total).split(' · ', 1)[1]}"
        if self.widget:
            self.bar.max = max(total, 1)
            self.bar.value = min(done, self.bar.max)
            self.note.value = _esc(line)
            if final:
                self.bar.bar_style = "success" if done >= total else "warning"
            return
        now = self.clock()
        if final or (text != self._last_text and now - self._last_print >= 1.0):
            self.out(f"{self.label}: {line}")
            self._last_text, self._last_print = text, now


@dataclass
class Summary:
    """What a wait ended on: the town's counts and how long it took — displayed as one
    line (text) or one small table (HTML), never as every task.

    >>> Summary("demo", "done", Counts(tasks={"completed": 3}, agents={"idle": 1}), 2.5)
    <demo done after 2.5s: 3 tasks (3 completed) · 1 agent (1 idle)>
    """

    town: str
    condition: str
    counts: Counts
    elapsed: float
    timed_out: bool = False

    def frame(self) -> pd.DataFrame:
        """The counts as the one-row :func:`frames.status_frame`."""
        return frames.counts_to_frame(self.counts, self.town)

    def __repr__(self) -> str:
        how = "timed out" if self.timed_out else self.condition
        return (f"<{self.town} {how} after {self.elapsed:.1f}s: "
                f"{self.counts.described('tasks')} · {self.counts.described('agents')}>")

    def _repr_html_(self) -> str:
        c = self.counts
        how = "timed out" if self.timed_out else self.condition
        cells = [("town", self.town), ("ended", f"{how} after {self.elapsed:.1f}s"),
                 ("tasks", c.described("tasks")), ("agents", c.described("agents")),
                 ("backlog", str(c.backlog)), ("inbox", str(c.inbox))]
        head = "".join(f"<th style='text-align:left'>{k}</th>" for k, _ in cells)
        row = "".join(f"<td style='text-align:left'>{_esc(v)}</td>" for _, v in cells)
        return f"<table><thead><tr>{head}</tr></thead><tbody><tr>{row}</tr></tbody></table>"


def watch(town, until: str = "done", timeout: float | None = 300.0, *,
          progress: Progress | None = None) -> Summary:
    """Block until the town is ``done`` (no task pending, assigned or running) or ``idle``
    (no task assigned or running and no agent working or draining), showing a progress
    bar (done/total, elapsed, rate, ETA); returns a :class:`Summary` (counts, elapsed).

    Wakes on the town's events. Raises :class:`WaitTimeout` after ``timeout`` seconds
    (None waits forever). ``progress``: your own :class:`Progress` (default: a widget bar
    in a kernel, text lines otherwise).

    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> tasks = town.assign_many("dev", [f"Fix #{i}" for i in range(3)])
    >>> watch(town, "done", timeout=60).counts.tasks["completed"]   # a bar in a notebook
    until done: ...3/3 tasks done...
    3
    """
    bar = progress or Progress(f"until {until}")
    start = time.monotonic()
    last: list[Any] = [Counts()]

    def show(counts: Counts, final: bool = False, note: str = "") -> None:
        last[0] = counts
        bar.update(counts.finished_tasks, counts.total_tasks, counts.progress() + note,
                   final=final)

    try:
        counts = town.wait_until(until, timeout=timeout, progress=show)
    except WaitTimeout:
        show(last[0], final=True, note=" (timed out)")
        raise
    show(counts, final=True)
    return Summary(town.name, until, counts, time.monotonic() - start)


# --------------------------------------------------------------------------- workflows
# The "waiting for you" list (issue 12): TownView embeds one; it also works on its own.


@dataclass
class _GateRow:
    """One gate's widgets, kept while the gate is open (so is what was typed in its note)."""

    label: W.HTML
    note: W.Text
    approve: W.Button
    reject: W.Button
    box: W.HBox


def _gate_what(gate: Gate) -> str:
    return "ready" if gate.ready else "waits for " + ", ".join(i[:4] for i in gate.open)


class GatePanel(W.VBox):
    """Gates waiting for a decision ("waiting for you"): each with its note box and
    Approve / Reject buttons (Approve is enabled once what the gate waits for is done;
    Reject needs a note, which goes to the agents whose work the gate judged; a refusal
    is said in one line).

    :meth:`show` draws a list of gates, updating the rows in place: a gate's note box,
    and what was typed in it, stays across redraws (a :class:`TownView` redraws on every
    batch of events). :meth:`refresh` reads the open gates and shows them. What a click
    did, or why it was refused, shows in the panel's status line (under the buttons) and
    goes to ``say(text, error)`` too (a view's status line); ``on_decided(task)`` runs
    after a decision (default: :meth:`refresh`).

    >>> ok = town.gate("Approve the release")
    >>> panel = GatePanel(town)          # display it in a notebook
    >>> [g.task.description for g in panel.gates]
    ['Approve the release']
    >>> panel.decide(ok.id, True, "Ship it").state
    <TaskState.COMPLETED: 'completed'>
    >>> panel.gates
    []
    """

    def __init__(self, town: Any, gates: Sequence[Gate] | None = None, *,
                 say: Callable[[str, bool], None] | None = None,
                 on_decided: Callable[[Task], None] | None = None):
        super().__init__(layout=W.Layout(width="100%"))
        self.town = town
        self.gates: list[Gate] = []
        self.rows: dict[str, _GateRow] = {}  # gate id -> its widgets, while it is open
        self.title = W.HTML()
        self.status = W.HTML()
        self.also_say = say
        self.on_decided = on_decided or (lambda _task: self.refresh())
        if gates is None:
            self.refresh()
        else:
            self.show(gates)

    def refresh(self) -> None:
        """Read the open gates and show them."""
        self.show(self.town.gates(open=True))

    def show(self, gates: Sequence[Gate]) -> None:
        """Show these gates (oldest first): rows of gates still shown are updated in place,
        their note boxes untouched; rows of the others go."""
        self.gates = list(gates)
        for gate in self.gates:
            row = self.rows.get(gate.id) or self._row(gate.id)
            what = _gate_what(gate)
            _set(row.label, "value",
                 f'<span title="{_esc(gate.task.description)}"><code>{_esc(gate.short_id)}</code> '
                 f"{_esc(truncate_summary(gate.task.description, 80))}</span> "
                 f'<span style="color:var(--jp-ui-font-color2,#555)">({_esc(what)})</span>')
            _set(row.approve, "disabled", not gate.ready)
            _set(row.approve, "tooltip", "complete the gate: the tasks waiting for it go on"
                 if gate.ready else f"not yet: the gate {what}")
        shown = {g.id for g in self.gates}
        gone = [self.rows.pop(gid) for gid in [gid for gid in self.rows if gid not in shown]]
        title = '<div class="ttnb-h"><b>Waiting for you</b>' + ("" if self.gates else ": nothing") + "</div>"
        _set(self.title, "value", title)
        children = (self.title, *(self.rows[g.id].box for g in self.gates), self.status)
        _set(self, "children", children)
        for row in gone:  # decided (or gone): its widgets are not shown any more
            for widget in (row.box, row.label, row.note, row.approve, row.reject):
                widget.close()

    def _row(self, gate_id: str) -> _GateRow:
        label = W.HTML(layout=W.Layout(flex="1 1 auto", min_width="0", overflow="hidden"))
        note = W.Text(placeholder="note (needed to reject)",
                      layout=W.Layout(width="16em", flex="0 0 auto"))
        approve = W.Button(description="Approve", button_style="success",
                           layout=W.Layout(width="90px", flex="0 0 auto"))
        reject = W.Button(description="Reject", button_style="danger",
                          layout=W.Layout(width="90px", flex="0 0 auto"),
                          tooltip="fail the gate (say why in the note): its waiting tasks are cancelled")
        approve.on_click(lambda _b: self.decide(gate_id, True, note.value))
        reject.on_click(lambda _b: self.decide(gate_id, False, note.value))
        box = W.HBox([label, note, approve, reject], layout=W.Layout(width="100%", align_items="center"))
        box.add_class("ttnb-gate")
        row = self.rows[gate_id] = _GateRow(label, note, approve, reject, box)
        return row

    def decide(self, gate_id: str, approve: bool, note: str = "") -> Task | None:
        """Approve or reject one gate (what the buttons do); returns the decided gate's
        task, or None when refused (said in one line, nothing changed)."""
        note = (note or "").strip()
        try:
            task = self.town.approve(gate_id, note or None) if approve else self.town.reject(gate_id, note)
        except TinytownError as exc:
            self.say(str(exc), True)
            return None
        except Exception as exc:  # a button must never raise into the kernel's comm handler
            text = f"{type(exc).__name__}: {exc}"
            password = self.town.config.redis_password()
            self.say(text.replace(password, "****") if password else text, True)
            return None
        what = ("approved: the tasks waiting for it go on" if approve
                else "rejected: the tasks waiting for it are cancelled")
        self.say(f"Gate {task.short_id} {what}.", False)
        self.on_decided(task)
        return task

    def say(self, text: str, error: bool = False) -> None:
        """Say one line in the panel's status line (and to ``say``, when given)."""
        color = "#c0392b" if error else "#1e8449"
        _set(self.status, "value", f'<span style="color:{color}">{_esc(text)}</span>')
        if self.also_say is not None:
            self.also_say(text, error)

    def html(self) -> str:
        """The gates shown, as a static table (for snapshots); '' when there are none."""
        if not self.gates:
            return ""
        body = "".join(f'<tr><td>{_esc(g.short_id)}</td><td title="{_esc(g.task.description)}">'
                       f"{_esc(truncate_summary(g.task.description, 200))}</td>"
                       f"<td>{_esc(_gate_what(g))}</td></tr>" for g in self.gates)
        return ('<table class="ttnb-table"><colgroup><col style="width:52px"><col>'
                '<col style="width:160px"></colgroup><thead><tr><th>id</th><th>gate</th>'
                f"<th>state</th></tr></thead><tbody>{body}</tbody></table>")
