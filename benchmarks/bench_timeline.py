#!/usr/bin/env python
"""Which plotting library draws the task-stream timeline: cost at 10,000 tasks, and whether
the result shows offline everywhere a notebook is read.

The same data — ``--n`` tasks on 8 agents, each agent running its tasks one after another
for an hour, mostly completed, some failed or cancelled, the last ones running — drawn by:

* **matplotlib → PNG** (what ``tinytown_nb.timeline.png`` does: one ``PolyCollection``,
  bars closer than a pixel merged): CPU ms in Python, bytes sent to the browser;
* **matplotlib → SVG** (same figure);
* **Altair / Vega-Lite** (if installed): CPU ms to build the spec, its size, and the mime
  types of its display — drawn by JavaScript in the browser;
* **plotly** (if installed): CPU ms for ``px.timeline`` + ``to_html`` with plotly.js inline
  (the only way it shows offline), its size and — with ``--browser`` — how long Chromium
  takes to draw that page with the network cut off.

An image shows the same in JupyterLab, Notebook 7, VS Code, ``nbconvert --to html`` and on
GitHub with no JavaScript; a Vega-Lite or plotly figure needs its library in the page: from
a CDN (blank offline) or inlined (megabytes per figure). bqplot is a widget: a static export
shows it only with the widget state and the widget manager from a CDN.

Run::

    .venv/bin/python benchmarks/bench_timeline.py [--n 10000] [--browser]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinytown_nb import frames, timeline  # noqa: E402


def data(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    agents = [f"agent-{i}" for i in range(8)]
    start = pd.Timestamp("2026-12-01T10:00:00Z")
    clock = [0.0] * len(agents)
    rows = []
    for i in range(n):
        a = i % len(agents)
        took = float(rng.uniform(0.5, 2 * 3600 * len(agents) / n))
        begin = start + pd.Timedelta(seconds=clock[a])
        clock[a] += took + 0.05
        state = "running" if i >= n - len(agents) else rng.choice(
            ["completed", "failed", "cancelled"], p=[0.87, 0.1, 0.03])
        row = {"id": f"{i:08x}-0000-4000-8000-000000000000", "state": state,
               "assigned_to": f"{a:08x}-0000-4000-8000-000000000001",
               "started_at": begin.isoformat().replace("+00:00", "Z")}
        if state != "running":
            row["completed_at"] = (begin + pd.Timedelta(seconds=took)).isoformat().replace("+00:00", "Z")
        rows.append(row)
    names = {f"{i:08x}-0000-4000-8000-000000000001": a for i, a in enumerate(agents)}
    return frames.timeline_from_hashes(rows, names)


def cpu(fn, repeat: int) -> tuple[float, object]:
    runs, out = [], None
    for _ in range(repeat):
        c0 = time.thread_time()
        out = fn()
        runs.append((time.thread_time() - c0) * 1000)
    return statistics.median(runs), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="tasks (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--browser", action="store_true", help="time plotly's page in chromium")
    opts = parser.parse_args()
    df = data(opts.n)
    now = df["start"].max() + pd.Timedelta(seconds=5)
    print(f"{len(df)} tasks on {df.agent.nunique()} agents, CPU ms of this thread, median of {opts.repeat}\n")
    ms, png = cpu(lambda: timeline.png(df, now=now, width=8.0), opts.repeat)
    print(f"matplotlib PNG (tinytown_nb.timeline)   {ms:7.0f} ms  {len(png) / 1024:8.0f} KiB  image/png")

    def svg() -> bytes:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(8, 3))
        ax = fig.add_subplot()
        for (agent, state), part in df.groupby(["agent", "state"], observed=True):
            ax.broken_barh(list(zip(part.start.map(pd.Timestamp.timestamp),
                                    (part.end.fillna(now) - part.start).dt.total_seconds())),
                           (list(df.agent.unique()).index(agent) - 0.4, 0.8),
                           color=timeline.COLORS.get(state, timeline.INK))
        ax.autoscale()
        out = io.BytesIO()
        fig.savefig(out, format="svg")
        return out.getvalue()

    ms, out = cpu(svg, opts.repeat)
    print(f"matplotlib SVG (one bar per task)        {ms:7.0f} ms  {len(out) / 1024:8.0f} KiB  image/svg+xml")
    try:
        import altair as alt
    except ImportError:
        print("altair: not installed (pip install altair) — skipped")
    else:
        alt.data_transformers.disable_max_rows()
        shown = df.assign(start=df.start.astype(str), end=df.end.fillna(now).astype(str),
                          state=df.state.astype(str))[["agent", "state", "start", "end"]]

        def spec() -> str:
            chart = alt.Chart(shown).mark_bar().encode(x="start:T", x2="end:T", y="agent:N", color="state:N")
            return json.dumps(chart.to_dict())

        ms, out = cpu(spec, opts.repeat)
        chart = alt.Chart(shown.head(3)).mark_bar().encode(x="start:T", x2="end:T", y="agent:N")
        bundle = chart._repr_mimebundle_()
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        html = bundle.get("text/html", "")
        cdn = "cdn.jsdelivr.net" in html or "unpkg" in html
        print(f"Altair spec (drawn by vega in the page)  {ms:7.0f} ms  {len(out) / 1024:8.0f} KiB  "
              f"{', '.join(bundle)}{' (loads vega from a CDN: blank offline)' if cdn else ''}")
    try:
        import plotly.express as px
    except ImportError:
        print("plotly: not installed (pip install plotly) — skipped")
        return 0

    def page() -> str:
        fig = px.timeline(df.assign(end=df.end.fillna(now), state=df.state.astype(str)),
                          x_start="start", x_end="end", y="agent", color="state")
        return fig.to_html(include_plotlyjs=True, full_html=True)

    ms, out = cpu(page, 1)
    print(f"plotly, plotly.js inline (offline)        {ms:7.0f} ms  {len(out) / 1024:8.0f} KiB  text/html")
    if opts.browser:
        from playwright.sync_api import sync_playwright

        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
            path = Path(tmp) / "plotly.html"
            path.write_text(out)
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            tab = browser.new_page()
            tab.route("**/*", lambda r: r.abort() if not r.request.url.startswith("file:") else r.continue_())
            walls = []
            for _ in range(2):
                w0 = time.perf_counter()
                tab.goto(path.as_uri())
                tab.wait_for_selector(".main-svg", timeout=60_000)
                walls.append(time.perf_counter() - w0)
            browser.close()
        print(f"  chromium draws it offline in {min(walls):.2f} s (best of 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
