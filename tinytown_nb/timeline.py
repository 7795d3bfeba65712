"""The task-stream timeline, as dask draws its task stream: one lane per agent, one bar
per task from its start to its end, coloured by outcome (running bars reach "now").

Drawn with matplotlib's object API (no pyplot, no global state, safe in a thread) into a
PNG: a picture renders the same in JupyterLab, Notebook 7, VS Code, a static
``nbconvert --to html`` export and on GitHub, with no JavaScript and no network, and at
10,000 tasks it costs ~0.1 s to draw and ~20 KB to send (``benchmarks/bench_timeline.py``
compares Altair and plotly). The bars of each drawing are one ``PolyCollection``.

Example::

    >>> from tinytown_nb import frames, timeline
    >>> dev = town.spawn("dev", fn=lambda task: "done")
    >>> tasks = town.assign_many("dev", [f"Fix #{i}" for i in range(12)])
    >>> counts = town.wait_until("done", timeout=60)
    >>> timeline.Timeline(frames.timeline_frame(town, last="10m"))
    <Timeline: 12 tasks on 1 agent>
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .core.wording import counted

__all__ = ["COLORS", "Timeline", "png"]

#: Bar colour by task state (outcome); the same hues as the dashboard's badges.
COLORS = {"running": "#b9770e", "completed": "#1e8449", "failed": "#b03a2e",
          "cancelled": "#707b7c"}
#: Axis text and lines: a mid grey that reads on a light and on a dark notebook theme
#: (the picture's background is transparent).
INK = "#808080"
_DPI = 100


def png(frame: pd.DataFrame, *, lanes: Sequence[str] = (), now: Any = None,
        width: float = 9.0, title: str | None = None) -> bytes:
    """The timeline of ``frame`` (:func:`tinytown_nb.frames.timeline_frame`) as PNG bytes.

    ``lanes``: agent names to show even without bars, in this order (others follow, in
    order of first start); ``now``: where running bars end (default: the current time);
    ``width`` in inches at 100 dpi.

    >>> from tinytown_nb import frames
    >>> png(frames.timeline_frame(town))[:4]   # (no task ran yet: an empty picture)
    b'\\x89PNG'
    """
    names = frame["agent"].fillna("?")
    agents = list(dict.fromkeys([*lanes, *names.unique()]))
    height = min(0.9 + 0.26 * max(len(agents), 1), 8.0)
    fig = Figure(figsize=(width, height), dpi=_DPI)
    # fixed margins (a tight_layout would draw everything twice): room for the lane names
    # on the left and the legend on the right
    label = max((len(a) for a in agents), default=4)
    left, right = min(0.12 + 0.075 * label, width * 0.35) / width, 1 - 1.15 / width
    fig.subplots_adjust(left=left, right=right, bottom=0.62 / height, top=1 - (0.35 if title else 0.1) / height)
    ax = fig.add_subplot()
    now_ts = pd.Timestamp(now) if now is not None else pd.Timestamp.now(tz="UTC")
    if len(frame):
        start = date2num(frame["start"].dt.tz_convert(None).to_numpy())
        end = date2num(frame["end"].fillna(now_ts).dt.tz_convert(None).to_numpy())
        lane = pd.Categorical(names, categories=agents).codes.astype(int)
        states = pd.Categorical(frame["state"])
        colour = np.array([list(COLORS).index(c) if c in COLORS else len(COLORS)
                           for c in states.categories], int)
        state = colour[states.codes]
        lo_x, hi_x = start.min(), end.max()
        pixel = max(hi_x - lo_x, 1 / 86400) / (width * (right - left) * _DPI)
        start, end, lane, state = _merge(start, np.maximum(end, start + pixel), lane, state, pixel)
        verts = np.stack([np.column_stack(p) for p in ((start, lane - 0.4), (start, lane + 0.4),
                                                       (end, lane + 0.4), (end, lane - 0.4))], 1)
        palette = np.array([to_rgba(c) for c in [*COLORS.values(), INK]])
        ax.add_collection(PolyCollection(verts, facecolors=palette[state], linewidths=0,
                                         antialiased=False))
        margin = (hi_x - lo_x) * 0.01 + pixel
        ax.set_xlim(lo_x - margin, hi_x + margin)
    else:
        ax.set_xlim(date2num(now_ts.tz_convert(None) - pd.Timedelta(minutes=1)),
                    date2num(now_ts.tz_convert(None)))
        ax.text(0.5, 0.5, "no task has run yet", transform=ax.transAxes, ha="center",
                va="center", color=INK)
    ax.set_ylim(len(agents) - 0.5 if agents else 0.5, -0.5)
    ax.set_yticks(range(len(agents)), agents)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.tick_params(colors=INK, labelsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("bottom", "left"):
        ax.spines[side].set_color(INK)
    ax.set_xlabel("time (UTC)", color=INK, fontsize=9)
    present = set(frame["state"].astype(str).unique()) if len(frame) else set()
    shown = [s for s in COLORS if s in present]
    if shown:
        ax.legend(handles=[Patch(color=COLORS[s], label=s) for s in shown], loc="upper left",
                  bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9, labelcolor=INK)
    if title:
        ax.set_title(title, color=INK, fontsize=10, loc="left")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=_DPI, transparent=True)
    return out.getvalue()


def _merge(start: np.ndarray, end: np.ndarray, lane: np.ndarray, state: np.ndarray,
           gap: float) -> tuple[np.ndarray, ...]:
    """Bars of one lane and state that overlap or lie less than ``gap`` apart become one
    bar: the picture is the same (they would share pixels) and the cost of drawing
    follows the picture's width, not the number of tasks.

    >>> [a.tolist() for a in _merge(np.array([0., 1., 5.]), np.array([1.5, 2., 6.]),
    ...                             np.array([0, 0, 0]), np.array([1, 1, 1]), 0.5)]
    [[0.0, 5.0], [2.0, 6.0], [0, 0], [1, 1]]
    """
    order = np.lexsort((start, state, lane))
    start, end, lane, state = start[order], end[order], lane[order], state[order]
    group = lane * (state.max() + 1) + state
    # the furthest end so far within each group (groups are contiguous; shifting each one
    # above the last keeps a running maximum from crossing into the next)
    shift = group * (end.max() - start.min() + 2 * gap + 1)
    reach = np.maximum.accumulate(end + shift) - shift
    new = np.ones(len(start), bool)
    new[1:] = (group[1:] != group[:-1]) | (start[1:] > reach[:-1] + gap)
    first = np.flatnonzero(new)
    return (start[first], np.maximum.reduceat(end, first), lane[first], state[first])


def img_tag(data: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG inline (for HTML snapshots that must work offline).

    >>> img_tag(b"x", "timeline")
    '<img class="ttnb-timeline" alt="timeline" src="data:image/png;base64,eA=="/>'
    """
    return (f'<img class="ttnb-timeline" alt="{alt}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}"/>')


class Timeline:
    """A drawn timeline: displays as the picture (``image/png``) with a one-line text form;
    ``frame`` holds its data.

    >>> from tinytown_nb import frames
    >>> Timeline(frames.timeline_frame(town)).frame.columns[:3].tolist()
    ['id', 'agent', 'state']
    """

    def __init__(self, frame: pd.DataFrame, *, lanes: Sequence[str] = (), title: str | None = None):
        self.frame = frame
        self.lanes = list(lanes)
        self.title = title
        self.png = png(frame, lanes=self.lanes, title=title)

    def summary(self) -> str:
        """``12 tasks on 3 agents`` (running ones counted too)."""
        n_agents = self.frame["agent"].nunique()
        return f"{counted(len(self.frame), 'task')} on {counted(n_agents, 'agent')}"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"image/png": self.png, "text/plain": repr(self)}

    def __repr__(self) -> str:
        return f"<Timeline: {self.summary()}>"
