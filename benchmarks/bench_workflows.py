#!/usr/bin/env python
"""Workflow benchmark: how soon a task that waits runs once its last dependency completes.

Everything runs against ONE managed server (a town made with ``Town.init`` in a temporary
directory, shut down at the end). **Release latency** = the dependent's ``started_at``
(written by its worker in the step that marks it ``running``) minus its last dependency's
``completed_at`` (written in the step that records the completion — the same atomic step
that releases the dependent), one workflow at a time:

* ``fn → fn (other agent)``: the dependency runs on function agent A, the dependent on
  idle function agent B (B wakes from its blocking read of its inbox);
* ``fn → fn (same agent)``: both on A: the step that finishes the dependency takes the
  released task and starts it in the same round trip;
* ``by hand → fn``: ``town.complete_task`` (``ttnb task complete``) completes the
  dependency, the dependent runs on B;
* ``fn → process``: the dependent runs on a process agent whose command is ``cat``
  (started_at is written before the command starts, as for any task).

Also timed: making a waiting task (``assign(..., after=[x])``) beside a plain
``assign()``; the one step that releases 1,000 tasks waiting for one gate (fan-out) and
the step that releases one task waiting for 1,000 (fan-in, measured as above).

Run::

    .venv/bin/python benchmarks/bench_workflows.py            # --n 300
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinytown_nb.core import Town  # noqa: E402
from _machine import describe  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

AIM_FN_P50_MS = 5.0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def release_latency(town: Town, dep_agent: str, next_agent: str, n: int, *, by_hand: bool = False) -> list[float]:
    """ms from the dependency's completed_at to the dependent's started_at, n times."""
    out = []
    for i in range(n + 10):
        if by_hand:
            dep = town.assign(dep_agent, f"dependency {i}")
        else:  # held by a gate, so that the dependent waits for it for sure
            hold = town.gate(f"hold {i}")
            dep = town.assign(dep_agent, f"dependency {i}", after=[hold])
        nxt = town.assign(next_agent, f"dependent {i}", after=[dep])
        if by_hand:
            town.complete_task(dep, "done by hand")
        else:
            town.approve(hold)
        done = town.wait(task=nxt, timeout=30)
        town.wait(next_agent, timeout=30)  # idle again before the next probe
        if i >= 10:  # warm-up
            out.append((done.started_at - town.task(dep).completed_at).total_seconds() * 1000)
    return out


def creation(town: Town, n: int) -> tuple[float, float]:
    """µs per assign(): plain, and waiting for one open task (no worker runs them)."""
    town.spawn("idle", cli="cat", start=False)
    blocker = town.assign("idle", "blocker")
    town.assign_many("idle", ["warm-up"] * 50)
    t0 = time.perf_counter()
    for i in range(n):
        town.assign("idle", f"plain {i}")
    plain = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for i in range(n):
        town.assign("idle", f"waiting {i}", after=[blocker])
    waiting = (time.perf_counter() - t0) / n * 1e6
    return plain, waiting


def fan(town: Town) -> tuple[float, float, float]:
    """ms of the step releasing 1,000 tasks (approve of the gate they wait for), ms of
    creating the task waiting for 1,000, and its release latency in ms."""
    town.spawn("sink", cli="cat", start=False)
    gate = town.gate("go")
    parts = town.assign_many("sink", [f"part {i}" for i in range(1000)], after=[gate])
    t0 = time.perf_counter()
    town.approve(gate)
    fan_out = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    last = town.assign("B", "sum", after=parts)
    make = (time.perf_counter() - t0) * 1000
    for p in parts[:-1]:
        town.complete_task(p, "1")
    town.complete_task(parts[-1], "1")
    done = town.wait(task=last, timeout=30)
    return fan_out, make, (done.started_at - town.task(parts[-1]).completed_at).total_seconds() * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="workflows per latency figure (300)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TINYTOWN_HEARTBEAT_SECS", "5")
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        town = Town.init(Path(tmp) / "town", name="bench")
        try:
            print(describe(town))
            town.spawn("A", fn=lambda task: "a", idle_timeout=0)
            town.spawn("B", fn=lambda task: "b", idle_timeout=0)
            town.spawn("P", cli="cat", idle_timeout=0)
            town.spawn("hand", cli="cat", start=False)
            rows = [("fn -> fn (other agent)", release_latency(town, "A", "B", args.n)),
                    ("fn -> fn (same agent)", release_latency(town, "A", "A", args.n)),
                    ("by hand -> fn", release_latency(town, "hand", "B", args.n, by_hand=True)),
                    ("fn -> process (cat)", release_latency(town, "A", "P", args.n))]
            print(f"\nRelease latency: last dependency completed -> dependent running "
                  f"(n={args.n} each, ms)")
            print(f"  {'':28}{'p50':>8}{'p99':>8}{'max':>8}")
            for name, values in rows:
                print(f"  {name:28}{pct(values, 50):8.2f}{pct(values, 99):8.2f}{max(values):8.2f}")
            plain, waiting = creation(town, 500)
            print(f"\nCreating a task (n=500, µs each): plain assign() {plain:.0f}, "
                  f"assign(after=[one open task]) {waiting:.0f} ({waiting / plain:.2f}x)")
            fan_out, make, fan_in = fan(town)
            print(f"1,000 tasks released by one approve(): {fan_out:.1f} ms for the step; "
                  f"a task waiting for 1,000 made in {make:.1f} ms, running {fan_in:.2f} ms "
                  "after the last one completed")
            p50 = max(pct(rows[0][1], 50), pct(rows[1][1], 50))
            verdict = "PASS" if p50 <= AIM_FN_P50_MS else "MISS"
            print(f"\nAims\n  [{verdict}] function agents: release p50 <= {AIM_FN_P50_MS:g} ms "
                  f"(measured {p50:.2f} ms, the slower of the two)")
            return 0 if verdict == "PASS" else 1
        finally:
            town.shutdown()


if __name__ == "__main__":
    sys.exit(main())
