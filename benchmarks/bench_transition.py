#!/usr/bin/env python
"""Server cost of one transition-script run, by kind: assign, take (+start), complete.

A function agent (its worker is a thread of this process) gets ``--n`` tasks one at a
time. Every run of the transition script made by this process (the caller's assign and
the worker's steps) is wrapped: ``INFO commandstats`` is read on a side connection just
before and just after it, under one lock, so each run's delta is the EVALSHA's server
time (``usec``) and the commands the script ran inside it (``redis.call``s). Blocking
reads of other threads (BLMOVE, BLPOP) are left out of the counts. Also printed: the wall
time of each call as the client sees it, the size of the spec, the commands of a typical
run and, per kind, the runs grouped by their number of commands (a take that started a
task vs one that found nothing).

``--src DIR`` measures another checkout (imported first; the agent is a thread, so no
worker process of this tree is involved): run it with each tree, alternately.

Run::

    .venv/bin/python benchmarks/bench_transition.py [--n 300] [--src OTHER_TREE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
_SRC = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(HERE.parents[1])
sys.path.insert(0, _SRC)
import redis  # noqa: E402
import redis.commands.core as rcore  # noqa: E402
from tinytown_nb.core import Town  # noqa: E402

OUTSIDE = {"info", "blmove", "blpop", "brpoplpush", "evalsha", "eval", "script|load", "script|exists"}


def commandstats(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec), from INFO commandstats."""
    out = {}
    for name, v in r.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = (int(v["calls"]), int(v["usec"]))
    return out


def kind_of(keys: list, args: list) -> str:
    """What a script run is, from its record key and spec."""
    try:
        spec = json.loads(args[0])
    except (ValueError, TypeError, IndexError):
        return "other"
    state = (spec.get("set") or {}).get("state")
    if "peek" in spec:
        return "heartbeat"
    if spec.get("absent") and str(keys[0]).split(":")[-2] == "task":
        return "assign"
    if state == "completed":
        return "complete"
    if "take" in spec and "no_keys" in spec:
        return "take"
    return "other:" + ",".join(sorted(spec))


class _Many:
    """Stands in for a redis-py Script whose call runs a one-change pipeline."""

    def __init__(self, run):
        self.run = run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300, help="tasks (300)")
    p.add_argument("--src", default=None, help="measure this checkout instead (its package)")
    p.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                   help="CONFIG SET on the town's server first (e.g. zset-max-listpack-entries=0)")
    args = p.parse_args()
    lock = threading.Lock()
    samples: dict[str, list[dict]] = {}
    state = {"on": False}
    side: list[redis.Redis] = []
    base_call = rcore.Script.__call__

    def real_call(self, keys=(), args=(), client=None):
        return self.run() if isinstance(self, _Many) else base_call(self, keys=keys, args=args, client=client)

    def wrapped(self, keys=(), args=(), client=None):
        if not state["on"]:
            return real_call(self, keys=keys, args=args, client=client)
        with lock:
            a = commandstats(side[0])
            t0 = time.perf_counter()
            out = real_call(self, keys=keys, args=args, client=client)
            wall = (time.perf_counter() - t0) * 1e6
            b = commandstats(side[0])
        inner = {k: v[0] - a.get(k, (0, 0))[0] for k, v in b.items()
                 if k not in OUTSIDE and v[0] != a.get(k, (0, 0))[0]}
        usec = b["evalsha"][1] - a.get("evalsha", (0, 0))[1]
        samples.setdefault(kind_of(list(keys), list(args)), []).append(
            {"usec": usec, "calls": sum(inner.values()), "inner": inner, "wall": wall,
             "argv_bytes": len(args[0]) if args else 0})
        return out

    rcore.Script.__call__ = wrapped
    from tinytown_nb.core import transitions as tr  # noqa: PLC0415
    real_many = getattr(tr.Script, "run_many", None)

    def wrapped_many(self, client, changes):  # a single assign goes through here (a pipeline)
        if not state["on"] or len(changes) != 1:
            return real_many(self, client, changes)
        c = changes[0]
        return wrapped(_Many(lambda: real_many(self, client, changes)),
                       keys=[c.key, *c.streams], args=[json.dumps(c.spec)])

    if real_many is not None:
        tr.Script.run_many = wrapped_many
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        town = Town.init(Path(tmp) / "town", name="bench")
        try:
            side.append(redis.Redis.from_url(town.url))
            for name, value in (a.split("=", 1) for a in args.config):
                side[0].config_set(name, value)
            town.spawn("fn", fn=lambda task: None, idle_timeout=0)
            for i in range(20):  # warm-up
                town.wait(task=town.assign("fn", f"warm {i}"), timeout=30)
            time.sleep(2.5)  # the heartbeat thread goes quiet after a run
            state["on"] = True
            for i in range(args.n):
                task = town.assign("fn", f"probe {i}")
                deadline = time.monotonic() + 10
                while not samples.get("complete") or len(samples["complete"]) <= i:
                    assert time.monotonic() < deadline, "the task did not complete"
                    time.sleep(0.001)
            state["on"] = False
        finally:
            town.shutdown()
    print(f"tree: {_SRC}")
    print(f"{'kind':<10}{'runs':>6}{'server µs p50':>15}{'mean':>8}{'redis.calls':>13}"
          f"{'wall µs p50':>13}{'ARGV1 bytes':>13}")
    for kind, rows in sorted(samples.items()):
        calls = statistics.median(r["calls"] for r in rows)
        print(f"{kind:<10}{len(rows):>6}{statistics.median(r['usec'] for r in rows):>15.0f}"
              f"{statistics.mean(r['usec'] for r in rows):>8.0f}{calls:>13.0f}"
              f"{statistics.median(r['wall'] for r in rows):>13.0f}"
              f"{statistics.median(r['argv_bytes'] for r in rows):>13.0f}")
    for kind, rows in sorted(samples.items()):
        typical = sorted(rows, key=lambda r: r["calls"])[len(rows) // 2]["inner"]
        print(f"  {kind}: " + " ".join(f"{k}={v}" for k, v in sorted(typical.items())))
        groups: dict[int, list[int]] = {}
        for r in rows:
            groups.setdefault(r["calls"], []).append(r["usec"])
        print("    by redis.calls (runs, server µs p50): " + ", ".join(
            f"{c}: {len(u)}, {statistics.median(u):.0f}" for c, u in sorted(groups.items())))


if __name__ == "__main__":
    main()
