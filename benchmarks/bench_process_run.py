#!/usr/bin/env python
"""process_run benchmark: how late a line reaches ``on_line``, and what a run costs.

* **line latency** — a child prints ``time.time()`` with ``print(..., flush=True)``, one
  line every ``--gap`` ms (so each line is its own read, not a batch), ``--lines`` lines;
  ``on_line`` subtracts the stamp from its own ``time.time()``. Beside it, the same child
  read by the plainest possible reader (``for line in proc.stdout`` on a pipe) — the floor.
* **per-run overhead** — ``run_command(["/bin/true"])`` vs ``subprocess.run(["/bin/true"])``
  (no pipes) and ``subprocess.run(..., capture_output=True)`` (two pipes, like ours), runs
  interleaved in blocks of 10 so load drift hits all alike; median and p90 per run.

No server is needed. Run::

    .venv/bin/python benchmarks/bench_process_run.py   # --lines 200 --repeat 3 --runs 300
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinytown_nb.core.process_run import run_command  # noqa: E402

CHILD = """
import sys, time
for _ in range({n}):
    print(repr(time.time()), flush=True)
    time.sleep({gap})
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def latency_run_command(n: int, gap: float) -> list[float]:
    lags: list[float] = []

    def on_line(stream: str, line: str) -> None:
        lags.append(time.time() - float(line))

    result = run_command([sys.executable, "-c", CHILD.format(n=n, gap=gap)], on_line=on_line)
    assert result.ok and len(lags) == n, result
    return lags


def latency_readline(n: int, gap: float) -> list[float]:
    lags = []
    with subprocess.Popen([sys.executable, "-c", CHILD.format(n=n, gap=gap)],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lags.append(time.time() - float(line))
    return lags


def overhead(runs: int) -> dict[str, list[float]]:
    variants = {
        "subprocess.run(true)": lambda: subprocess.run(["/bin/true"], check=True),
        "subprocess.run(true, capture_output)": lambda: subprocess.run(
            ["/bin/true"], check=True, capture_output=True),
        "run_command(true)": lambda: run_command(["/bin/true"]),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, fn in variants.items():  # warm-up
        fn()
    for _ in range(max(1, runs // 10)):
        for name, fn in variants.items():
            for _ in range(10):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=200, help="lines per latency run")
    ap.add_argument("--gap", type=float, default=5.0, help="ms between the child's lines")
    ap.add_argument("--repeat", type=int, default=3, help="latency runs per reader")
    ap.add_argument("--runs", type=int, default=300, help="runs per variant for the overhead")
    args = ap.parse_args()
    print(f"Machine: {platform.machine()} {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}; Python {platform.python_version()}")

    gap = args.gap / 1000
    runs: dict[str, list[list[float]]] = {"run_command on_line": [], "readline loop (floor)": []}
    for _ in range(args.repeat):  # alternated, so load drift hits both alike
        runs["run_command on_line"].append(latency_run_command(args.lines, gap))
        runs["readline loop (floor)"].append(latency_readline(args.lines, gap))
    print(f"\nLine latency, print(flush=True) in the child -> callback ({args.lines} lines, "
          f"one every {args.gap:g} ms; median over {args.repeat} runs of each run's figure)")
    print(f"  {'':34}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}")
    for name, lag_runs in runs.items():
        p50, p99, top = (statistics.median(f(lags) for lags in lag_runs) * 1e6
                         for f in (lambda v: pct(v, .5), lambda v: pct(v, .99), max))
        print(f"  {name:34}{p50:10.0f}{p99:10.0f}{top:10.0f}")

    times = overhead(args.runs)
    print(f"\nPer-run cost of /bin/true ({len(times['run_command(true)'])} runs each, interleaved)")
    print(f"  {'':40}{'median ms':>10}{'p90 ms':>10}{'ratio':>8}")
    ref = statistics.median(times["run_command(true)"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:40}{med * 1e3:10.3f}{pct(values, .9) * 1e3:10.3f}{ref / med:7.2f}x")
    print("  (ratio: run_command's median / this row's median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
