#!/usr/bin/env python
"""Dashboard refresh cost at 1k / 10k (/ 100k with --full) tasks: what the TownView's thread
takes from the kernel, in CPU milliseconds of the calling thread (``time.thread_time``: the
most it can take through the GIL).

For each size a town (a managed server in a temporary directory) holds 5 agents and N
tasks, half of them completed with start and end times (written as a worker leaves them).
A ``TownView`` (``start=False``) is made, then each figure is the median of ``--repeat``:

* **nothing changed** — what the thread does when no event came for ``interval`` s: one
  ``XREAD`` that finds nothing, then the look at the counts (``TownView.look``);
* **one change** — one task assigned (not counted), then the thread's work for it: the
  ``XREAD`` that returns its event (plus the check for a gap) and ``TownView.apply``
  (refetch the records the event names, redraw what changed);
* ``town.counts()`` alone (one read of the counters the transition scripts keep, issue
  14.1), and both figures again with the counts answered without a read;
* for reference: a whole-town read (``refresh(force=True)``: on a gap or on request) and
  one timeline drawing (at most every ``timeline_gap`` s, and only when it changed).

Aims (issue 14.3, at 100k tasks): nothing changed ≤ 5 ms, one change ≤ 20 ms, judged on
the figures as measured.

Run::

    .venv/bin/python benchmarks/bench_dashboard.py            # 1k and 10k
    .venv/bin/python benchmarks/bench_dashboard.py --full     # and 100k (a few minutes)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinytown_nb.core import Town  # noqa: E402
from tinytown_nb.core.models import hash_ts, utcnow  # noqa: E402
from tinytown_nb.core.server import connect  # noqa: E402
from tinytown_nb.widgets import TownView  # noqa: E402
from _machine import describe  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def cpu_ms(fn: Callable[[], object], repeat: int, before: Callable[[], object] = lambda: None) -> float:
    """Median CPU milliseconds of this thread for ``fn()`` (``before()`` runs uncounted)."""
    runs = []
    for _ in range(repeat):
        before()
        gc.collect()
        c0 = time.thread_time()
        fn()
        runs.append((time.thread_time() - c0) * 1000)
    return statistics.median(runs)


def populate(town: Town, n: int) -> None:
    names = [f"agent-{i}" for i in range(5)]
    for name in names:
        town.spawn(name, start=False)
    per = n // len(names)
    tasks = []
    for name in names:
        for i in range(0, per, 10_000):
            tasks += town.assign_many(name, [f"Task {j} for {name}" for j in range(i, min(i + 10_000, per))])
    now = utcnow()
    pipe = town.redis.pipeline(transaction=False)
    for i, t in enumerate(tasks[::2]):  # half finished, as a worker leaves them (no events)
        start = now - timedelta(seconds=3600 - i * 3600 / len(tasks))
        pipe.hset(town.keys.task(t.id), mapping={
            "state": "completed", "started_at": hash_ts(start),
            "completed_at": hash_ts(start + timedelta(seconds=1 + i % 5)),
            "updated_at": hash_ts(start + timedelta(seconds=1 + i % 5)), "result": "ok"})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def one_size(n: int, repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        town = Town.init(Path(tmp) / "bench", name="bench")
        try:
            populate(town, n)
            t0 = time.thread_time()
            view = TownView(town, start=False)
            first = (time.thread_time() - t0) * 1000
            client = connect(town.config.redis_url(), blocking=True)
            last = [view.snapshot.last_id]

            def nothing() -> None:
                events, _, last[0] = view.read_events(client, last[0], None)
                assert not events
                assert view.look() is False

            def change() -> None:
                events, lost, last[0] = view.read_events(client, last[0], None)
                assert len(events) == 1 and not lost
                view.apply(events)

            out = {
                "nothing": cpu_ms(nothing, repeat),
                "change": cpu_ms(change, repeat, before=lambda: town.assign("agent-0", "one more")),
                "counts": cpu_ms(town.counts, repeat),
            }
            # the same two with the counts answered without a read: what is left is the
            # view's own work
            real = town.counts
            town.counts = lambda: view.snapshot.counts  # type: ignore[method-assign]
            out["nothing_o1"] = cpu_ms(nothing, repeat)
            out["change_o1"] = cpu_ms(change, repeat, before=lambda: town.assign("agent-0", "one more"))
            town.counts = real  # type: ignore[method-assign]
            out.update({
                "full": cpu_ms(lambda: view.refresh(force=True), max(1, repeat // 3)),
                "timeline": cpu_ms(lambda: (setattr(view, "_timeline_drawn", None), view.draw_timeline()),
                                   max(1, repeat // 3)),
                "first": first,
            })
            client.close()
            view.close()
            return out
        finally:
            town.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="also 100,000 tasks")
    parser.add_argument("--repeat", type=int, default=9, help="runs per figure (median)")
    opts = parser.parse_args()
    sizes = [1_000, 10_000] + ([100_000] if opts.full else [])
    with tempfile.TemporaryDirectory() as tmp:
        probe = Town.init(Path(tmp) / "probe", name="probe")
        print(describe(probe))
        probe.shutdown()
    print(f"CPU ms of the calling thread, median of {opts.repeat}\n")
    print(f"{'':>8} {'as measured':^29} {'counts not read':^24}")
    print(f"{'tasks':>8} {'nothing changed':>16} {'one change':>11} {'nothing':>10} {'one change':>11} "
          f"{'counts()':>10} {'full read':>10} {'timeline':>9} {'first view':>11}")
    results = {}
    for n in sizes:
        r = results[n] = one_size(n, opts.repeat)
        print(f"{n:>8,} {r['nothing']:>13.1f} ms {r['change']:>8.1f} ms {r['nothing_o1']:>7.1f} ms "
              f"{r['change_o1']:>8.1f} ms {r['counts']:>7.1f} ms {r['full']:>7.0f} ms "
              f"{r['timeline']:>6.0f} ms {r['first']:>8.0f} ms", flush=True)
    top = results[sizes[-1]]
    print(f"\naims (issue 14.3, at {sizes[-1]:,} tasks)")
    checks = [(f"nothing changed <= 5 ms: {top['nothing']:.1f} ms", top["nothing"] <= 5),
              (f"one change <= 20 ms: {top['change']:.1f} ms", top["change"] <= 20)]
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
