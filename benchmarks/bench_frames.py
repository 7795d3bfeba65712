#!/usr/bin/env python
"""Frames benchmark at 10,000 tasks, beside raw redis-py + pandas.

One managed server (a town made with ``Town.init`` in a temporary directory, shut down at
the end) holds 5 agents and N tasks (half completed with start/finish times, as a worker
leaves them). Printed, each as the median of ``--repeat`` runs:

* ``tasks_frame`` (typed: categoricals, UTC datetimes, durations, agent names) beside the
  raw baseline: SCAN + one pipelined HGETALL per key + ``pd.DataFrame(list_of_dicts)``
  (untyped strings). Aims: under 0.25 s and within 1.5x of raw.
* the record path for comparison: ``town.tasks()`` then a DataFrame of the objects.
* (the dashboard's refreshes are measured by ``bench_dashboard.py``).

Run::

    .venv/bin/python benchmarks/bench_frames.py            # --n 10000 --repeat 5
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

import pandas as pd
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinytown_nb import frames  # noqa: E402
from tinytown_nb.core import Town  # noqa: E402
from _machine import describe  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from tinytown_nb.core.models import hash_ts, utcnow  # noqa: E402


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float, object]:
    """(median wall seconds, median CPU seconds of this thread, last result)."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        gc.collect()
        w0, c0 = time.perf_counter(), time.thread_time()
        result = fn()
        cpus.append(time.thread_time() - c0)
        walls.append(time.perf_counter() - w0)
    return statistics.median(walls), statistics.median(cpus), result


def raw_frame(town: Town) -> pd.DataFrame:
    """The baseline: what a user would write with redis-py and pandas alone."""
    r: redis.Redis = town.redis
    keys = list(r.scan_iter(match=f"tt:{town.name}:task:*", count=1000))
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return pd.DataFrame(pipe.execute())


def records_frame(town: Town) -> pd.DataFrame:
    return pd.DataFrame([t.__dict__ for t in town.tasks()])


def populate(town: Town, n: int) -> None:
    names = [f"agent-{i}" for i in range(5)]
    for name in names:
        town.spawn(name, start=False)
    per = n // len(names)
    tasks = [t for name in names for t in town.assign_many(name, [f"Task {i} for {name}: fix {{x}}"
                                                                   for i in range(per)], tags=["bench"])]
    # Half of them finished, written as a worker leaves them (one pipeline, no events).
    now = utcnow()
    pipe = town.redis.pipeline(transaction=False)
    for i, t in enumerate(tasks[::2]):
        start = now - timedelta(seconds=60 + i % 300)
        pipe.hset(town.keys.task(t.id), mapping={
            "state": "completed", "started_at": hash_ts(start),
            "completed_at": hash_ts(start + timedelta(seconds=5 + i % 50)),
            "updated_at": hash_ts(start + timedelta(seconds=5 + i % 50)), "result": "ok"})
    pipe.execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="tasks (default 10000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    opts = parser.parse_args()
    print(f"pandas {pd.__version__}, {opts.n} tasks, median of {opts.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        town = Town.init(Path(tmp) / "bench", name="bench")
        try:
            print(describe(town))
            t0 = time.perf_counter()
            populate(town, opts.n)
            print(f"setup: {opts.n} tasks in {time.perf_counter() - t0:.2f} s\n")

            raw_w, raw_c, raw = measure(lambda: raw_frame(town), opts.repeat)
            typed_w, typed_c, typed = measure(lambda: frames.tasks_frame(town), opts.repeat)
            rec_w, rec_c, _ = measure(lambda: records_frame(town), opts.repeat)
            assert len(raw) == len(typed) == opts.n, (len(raw), len(typed))
            assert typed.duration.notna().sum() == opts.n // 2
            ratio = typed_w / raw_w
            print("tasks DataFrame                          wall      CPU")
            print(f"  raw: HGETALL pipeline + DataFrame   {raw_w * 1000:7.1f} ms {raw_c * 1000:7.1f} ms"
                  "  (untyped)")
            print(f"  frames.tasks_frame (typed)          {typed_w * 1000:7.1f} ms {typed_c * 1000:7.1f} ms  "
                  f"ratio {ratio:.2f}x raw")
            print(f"  town.tasks() + DataFrame (records)  {rec_w * 1000:7.1f} ms {rec_c * 1000:7.1f} ms  "
                  f"ratio {rec_w / raw_w:.2f}x raw")

            print("\n(dashboard refreshes: benchmarks/bench_dashboard.py)")

            print("\naims")
            checks = [
                (f"tasks_frame < 250 ms: {typed_w * 1000:.0f} ms", typed_w < 0.25),
                (f"tasks_frame within 1.5x raw: {ratio:.2f}x", ratio <= 1.5),
            ]
            for text, ok in checks:
                print(f"  [{'ok' if ok else 'MISSED'}] {text}")
            return 0 if all(ok for _, ok in checks) else 1
        finally:
            town.shutdown()


if __name__ == "__main__":
    sys.exit(main())
