"""A picture of a workflow: which task waits for which, coloured by state, as an SVG image.

Why SVG laid out here: the picture must render offline in JupyterLab, Notebook 7, a static
HTML export (nbconvert), on GitHub and after the kernel died. An ``image/svg+xml`` output
does all of that with nothing installed and no script run. The alternatives fail one of
these: Graphviz (the ``graphviz`` package) needs the ``dot`` binary, which a fresh machine
(and ``pip install``) does not have; mermaid needs its JavaScript — JupyterLab ≥ 4.1 bundles
it for Markdown, but an nbconvert HTML export loads it from a CDN; networkx draws through
matplotlib, a heavy dependency for a handful of boxes. A workflow here is a small DAG, so
a layered layout (longest-path layers, a few barycentre sweeps to untangle edges; the
Sugiyama scheme in its simplest form) is enough and deterministic: the same town gives the
same picture, so a saved notebook can be compared with a re-run.

Example::

    >>> from tinytown_nb.graph import workflow_graph
    >>> draft = town.backlog_add("Draft the release notes")
    >>> ok = town.gate("Approve the notes", after=[draft])
    >>> workflow_graph(town)              # displays the picture in a notebook
    <WorkflowGraph: 2 tasks, 1 dependency>
    >>> workflow_graph(town).save("flow.svg")
    PosixPath('flow.svg')
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.errors import ConfigError
from .core.models import Task, TaskState, truncate_summary
from .core.wording import counted

__all__ = ["WorkflowGraph", "workflow_graph", "layout", "MAX_NODES"]

MAX_NODES = 200  # more than this is not a picture one can read: use frames.deps_frame
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 176, 50, 56, 18, 12
SWEEPS = 4
#: fill, stroke by state (the dashboard's palette, lightened for a box)
COLORS: dict[str, tuple[str, str]] = {
    "pending": ("#eef0f1", "#7f8c8d"), "assigned": ("#e3eef8", "#2e86c1"),
    "running": ("#fbeedd", "#d68910"), "completed": ("#e2f3e8", "#229954"),
    "failed": ("#f8e1df", "#c0392b"), "cancelled": ("#e9ebec", "#566573"),
}


@dataclass(frozen=True)
class Node:
    """One box: a task (``kind``: agent, backlog, gate, or ``task`` for a dependency that
    waits for nothing itself)."""

    id: str
    text: str
    state: str
    kind: str
    who: str | None


def layout(nodes: Sequence[str], preds: Mapping[str, Sequence[str]]
           ) -> tuple[dict[str, tuple[int, int]], dict[tuple[str, str], list[tuple[int, int]]]]:
    """Column and row of each node, left to right, and the route of each edge that skips
    columns: a node's column is one more than its furthest predecessor's; an edge longer
    than one column gets a waypoint (a slot of its own) in each column it crosses, so it
    never runs through a box; rows start in ``nodes``' order, then barycentre sweeps.

    >>> pos, routes = layout(["a", "b", "c"], {"b": ["a"], "c": ["a", "b"]})
    >>> pos, routes
    ({'a': (0, 0), 'b': (1, 0), 'c': (2, 0)}, {('a', 'c'): [(1, 1)]})
    """
    known = set(nodes)
    col: dict[str, int] = {}

    def depth(n: str, seen: frozenset[str] = frozenset()) -> int:
        if n not in col:
            ps = [p for p in preds.get(n, ()) if p in known and p not in seen]
            col[n] = 1 + max((depth(p, seen | {n}) for p in ps), default=-1)
        return col[n]

    for n in nodes:
        depth(n)
    up: dict[object, list[object]] = {n: [] for n in nodes}  # predecessors, waypoints included
    down: dict[object, list[object]] = {n: [] for n in nodes}
    layers: list[list[object]] = [[] for _ in range(max(col.values(), default=-1) + 1)]
    for n in nodes:  # given order first (stable, deterministic)
        layers[col[n]].append(n)
    chains: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
    for n in nodes:
        for p in preds.get(n, ()):
            if p not in known:
                continue
            prev: object = p
            chain = [(p, n, c) for c in range(col[p] + 1, col[n])]
            for way in chain:
                layers[way[2]].append(way)
                up[way], down[way] = [prev], []
                down[prev].append(way)
                prev = way
            up[n].append(prev)
            down[prev].append(n)
            if chain:
                chains[(p, n)] = chain
    for sweep in range(SWEEPS):
        forward = sweep % 2 == 0
        order = range(1, len(layers)) if forward else range(len(layers) - 2, -1, -1)
        for i in order:
            rank = {n: r for r, n in enumerate(layers[i - 1 if forward else i + 1])}
            here = {n: r for r, n in enumerate(layers[i])}

            def key(n: object) -> float:
                near = [rank[m] for m in (up[n] if forward else down[n]) if m in rank]
                return sum(near) / len(near) if near else float(here[n])
            layers[i] = sorted(layers[i], key=key)
    spot = {n: (c, r) for c, layer in enumerate(layers) for r, n in enumerate(layer)}
    return ({n: spot[n] for n in nodes},
            {edge: [spot[w] for w in chain] for edge, chain in chains.items()})


class WorkflowGraph:
    """The picture of some tasks and what they wait for; displays as an SVG image (with a
    text fallback). Build it with :func:`workflow_graph`.

    >>> g = WorkflowGraph([Node("a" * 8, "Parse", "completed", "task", "dev")], {})
    >>> g.svg.startswith("<svg")
    True
    """

    def __init__(self, nodes: Sequence[Node], preds: Mapping[str, Sequence[str]],
                 waiting: Mapping[str, Iterable[str]] | None = None):
        self.nodes = list(nodes)
        self.preds = {k: list(v) for k, v in preds.items()}
        self.waiting = {k: set(v) for k, v in (waiting or {}).items()}
        self.positions, self.routes = layout([n.id for n in self.nodes], self.preds)

    @property
    def edges(self) -> list[tuple[str, str]]:
        """``(dependency, task)`` pairs drawn, in node order."""
        ids = {n.id for n in self.nodes}
        return [(p, n.id) for n in self.nodes for p in self.preds.get(n.id, ()) if p in ids]

    def _xy(self, nid: str | tuple[int, int], rows: list[int]) -> tuple[int, int]:
        c, r = self.positions[nid] if isinstance(nid, str) else nid
        tallest = max(rows)
        offset = (tallest - rows[c]) * (BOX_H + GAP_Y) // 2  # centre short columns
        return MARGIN + c * (BOX_W + GAP_X), MARGIN + offset + r * (BOX_H + GAP_Y)

    @property
    def svg(self) -> str:
        """The picture as an SVG document (text)."""
        if not self.nodes:
            return ('<svg xmlns="http://www.w3.org/2000/svg" width="260" height="30">'
                    '<text x="8" y="20" font-family="sans-serif" font-size="12" fill="#566573">'
                    'No task waits for another yet.</text></svg>')
        slots = [*self.positions.values(), *(w for way in self.routes.values() for w in way)]
        cols = max(c for c, _ in slots) + 1
        rows = [0] * cols
        for c, r in slots:
            rows[c] = max(rows[c], r + 1)
        width = 2 * MARGIN + cols * BOX_W + (cols - 1) * GAP_X
        height = 2 * MARGIN + max(rows) * BOX_H + (max(rows) - 1) * GAP_Y
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
               '<defs><marker id="tt-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
               'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#566573"/></marker></defs>']
        for dep, task in self.edges:
            x, y = self._xy(dep, rows)
            path = f"M{x + BOX_W},{y + BOX_H // 2}"
            x, y = x + BOX_W, y + BOX_H // 2
            for way in [*self.routes.get((dep, task), []), task]:  # through its waypoints
                wx, wy = self._xy(way, rows)
                wy += BOX_H // 2
                mid = (x + wx) // 2
                path += f" C{mid},{y} {mid},{wy} {wx},{wy}"
                if not isinstance(way, str):
                    path += f" L{wx + BOX_W},{wy}"
                x, y = wx + BOX_W, wy
            dash = ' stroke-dasharray="5,4"' if dep in self.waiting.get(task, ()) else ""
            out.append(f'<path d="{path}" fill="none" stroke="#566573" stroke-width="1.4"{dash} '
                       'marker-end="url(#tt-arrow)"/>')
        for n in self.nodes:
            x, y = self._xy(n.id, rows)
            fill, stroke = COLORS.get(n.state, COLORS["pending"])
            gate = n.kind == "gate"
            shape = (f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="{18 if gate else 6}" '
                     f'fill="{fill}" stroke="{stroke}" stroke-width="{2 if gate else 1.5}"'
                     + (' stroke-dasharray="6,3"' if gate else "") + "/>")
            who = "gate · a person decides" if gate else (n.who or n.kind)
            out += [f'<g><title>{_esc(n.id)} ({_esc(n.state)}): {_esc(n.text)}</title>', shape,
                    f'<text x="{x + 8}" y="{y + 16}" font-weight="bold" fill="{stroke}">'
                    f'{_esc(n.id[:4])} · {_esc(n.state)}</text>',
                    f'<text x="{x + 8}" y="{y + 31}" fill="#1b2631">{_esc(truncate_summary(n.text, 26))}</text>',
                    f'<text x="{x + 8}" y="{y + 44}" font-size="10" fill="#566573">'
                    f'{_esc(truncate_summary(who, 30))}</text></g>']
        out.append("</svg>")
        return "\n".join(out)

    def _repr_svg_(self) -> str:
        return self.svg

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"image/svg+xml": self.svg, "text/plain": repr(self)}

    def save(self, path: str | Path) -> Path:
        """Write the picture to an ``.svg`` file; returns its path."""
        target = Path(path)
        target.write_text(self.svg, encoding="utf-8")
        return target

    def __repr__(self) -> str:
        return (f"<WorkflowGraph: {counted(len(self.nodes), 'task')}, "
                f"{counted(len(self.edges), 'dependency', 'dependencies')}>")


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def workflow_graph(town: Any, tasks: Iterable[Any] | None = None) -> WorkflowGraph:
    """The picture of the town's workflows: every task that waits (or waited) for others,
    every gate, and what they wait for — or only ``tasks`` and what they wait for,
    transitively (one workflow: pass its last task). Boxes
    are coloured by state; a dashed arrow is a dependency still awaited, a dashed box a gate.

    >>> design, build = town.backlog_add("Design the API"), town.backlog_add("Build the API")
    >>> docs = town.backlog_add("Write the docs", after=[design])
    >>> ship = town.backlog_add("Ship it", after=[build, docs])
    >>> workflow_graph(town)
    <WorkflowGraph: 4 tasks, 3 dependencies>
    """
    deps = town.deps()
    if tasks is not None:  # those tasks and everything they wait for, transitively
        by_id = {d.task_id: d for d in deps}
        todo = [town.task(getattr(t, "task", t)).id for t in tasks]
        wanted: set[str] = set()
        while todo:
            tid = todo.pop()
            if tid not in wanted:
                wanted.add(tid)
                todo += list(by_id[tid].after) if tid in by_id else []
        deps = [d for d in deps if d.task_id in wanted]
    ids = list(dict.fromkeys([a for d in deps for a in d.after] + [d.task_id for d in deps]))
    if len(ids) > MAX_NODES:
        raise ConfigError(f"{len(ids)} tasks are too many for one picture (at most {MAX_NODES}); "
                          "pass tasks=[...] to draw some of them, or use frames.deps_frame(town).")
    records = {t.id: t for t in (Task.from_hash(h) for h in town.hashes("task", ids)) if t}
    by_task = {d.task_id: d for d in deps}
    names = {a.id: a.name for a in town.agents()}
    ordered = sorted((i for i in ids if i in records),
                     key=lambda i: (records[i].created_at, records[i].description))
    nodes = []
    for tid in ordered:
        t, d = records[tid], by_task.get(tid)
        agent = t.assigned_to or (d.agent_id if d else None)
        kind = d.kind if d else "task"
        nodes.append(Node(tid, t.description, t.state.value if isinstance(t.state, TaskState) else "pending",
                          kind, names.get(agent, agent[:8]) if agent else ("backlog" if kind == "backlog" else None)))
    return WorkflowGraph(nodes, {d.task_id: list(d.after) for d in deps},
                         {d.task_id: d.waiting_on for d in deps})
