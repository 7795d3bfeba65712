#!/usr/bin/env python
"""Core benchmark: message round trip and assignment throughput, tinytown_nb vs raw redis-py.

Everything runs against ONE managed server (a town made with ``Town.init`` in a temporary
directory, shut down at the end). Each tinytown_nb figure is printed beside raw redis-py
issuing the same Redis commands, with the ratio, and the aims are checked:

* an assignment costs one round trip (counted on the connection, plus the server's
  ``INFO commandstats`` delta);
* ``assign_many`` reaches at least half the rate of raw pipelined redis-py.

Run::

    .venv/bin/python benchmarks/bench_core.py            # --n 2000 --bulk 5000 --repeat 3
    .venv/bin/python benchmarks/bench_core.py --profile  # also cProfile assign / assign_many
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import redis
import redis.connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinytown_nb.core import Town  # noqa: E402
from _machine import describe  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from tinytown_nb.core.server import connect  # noqa: E402

SUPERVISOR = "00000000-0000-0000-0000-000000000001"
TEXT = "Summarise section {i} of the design document and list open questions"


# --------------------------------------------------------------------------- measuring


@contextmanager
def round_trips() -> Iterator[list[int]]:
    """Count requests written to any redis-py connection (one write = one round trip:
    a pipeline sends all its commands in one write and then reads every reply)."""
    count = [0]
    cls = redis.connection.AbstractConnection
    original = cls.send_packed_command

    def counting(self, command, check_health=True):
        count[0] += 1
        return original(self, command, check_health)

    cls.send_packed_command = counting
    try:
        yield count
    finally:
        cls.send_packed_command = original


def commandstats(r: redis.Redis) -> dict[str, int]:
    """Server-side command counts (commands run inside Lua scripts count too)."""
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def stats_delta(r: redis.Redis, fn: Callable[[], object]) -> dict[str, int]:
    before = commandstats(r)
    fn()
    after = commandstats(r)
    delta = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    delta["info"] = delta.get("info", 0) - 1  # the INFO that took the first snapshot
    return {k: n for k, n in sorted(delta.items()) if n > 0}


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] / 1000  # noqa: E731
    return pick(0.50), pick(0.99)


def timed_each(n: int, fn: Callable[[int], object]) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def rate(count: int, fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- raw redis-py


class Raw:
    """Hand-written redis-py doing what tinytown_nb does, with no library around it."""

    def __init__(self, url: str, town: str, aid: str):
        self.r = redis.Redis.from_url(url, decode_responses=True)
        p = f"tt:{town}:"
        self.p, self.aid = p, aid
        self.inbox, self.events, self.agent_events = f"{p}inbox:{aid}", f"{p}events", f"{p}events:agent:{aid}"

    def message(self, mtype: str, field: str, value: str) -> str:
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        return json.dumps({"id": str(uuid.uuid4()), "from": SUPERVISOR, "to": self.aid, "type": mtype,
                           field: value, "priority": "normal", "created_at": now,
                           "correlation_id": None}, separators=(",", ":"), ensure_ascii=False)

    def send(self, text: str) -> None:
        self.r.rpush(self.inbox, self.message("task", "description", text))

    def _assign_cmds(self, r, description: str) -> None:
        """HSET task, RPUSH task_assign, XADD town + agent streams (MAXLEN ~)."""
        tid = str(uuid.uuid4())
        now = datetime.now(timezone.utc)
        ts = now.isoformat()
        r.hset(f"{self.p}task:{tid}", mapping={
            "id": tid, "description": description, "state": "assigned", "created_at": ts,
            "updated_at": ts, "tags": "[]", "assigned_to": self.aid})
        r.rpush(self.inbox, self.message("task_assign", "task_id", tid))
        event = json.dumps({"event_type": "task_assigned", "agent_id": self.aid, "task_id": tid,
                            "new_state": "Assigned", "message": f"Task assigned: {description[:80]}",
                            "timestamp": ts.replace("+00:00", "Z")},
                           separators=(",", ":"), ensure_ascii=False)
        fields = {"event_type": "task_assigned", "data": event}
        r.xadd(self.events, fields, maxlen=1000, approximate=True)
        r.xadd(self.agent_events, fields, maxlen=100, approximate=True)

    def assign(self, description: str) -> None:
        """Four round trips, not atomic."""
        self._assign_cmds(self.r, description)

    def assign_multi(self, description: str) -> None:
        """The same four commands in one MULTI/EXEC: one round trip, atomic."""
        pipe = self.r.pipeline(transaction=True)
        self._assign_cmds(pipe, description)
        pipe.execute()

    def assign_many(self, descriptions: list[str]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for d in descriptions:
            self._assign_cmds(pipe, d)
        pipe.execute()


# --------------------------------------------------------------------------- benchmarks


def row(label: str, ours: str, raw: str, ratio: str) -> None:
    print(f"  {label:<34}{ours:>16}{raw:>16}{ratio:>10}")


def bench_roundtrip(town: Town, raw: Raw, rb: redis.Redis, name: str, aid: str,
                    n: int, repeat: int) -> None:
    inbox, processing = town.keys.inbox(aid), town.keys.processing(aid)

    def receive() -> None:  # exactly how a worker takes a message, and finishes it
        raw_msg = rb.blmove(inbox, processing, 0, "LEFT", "RIGHT")
        rb.lrem(processing, 1, raw_msg)

    ours = lambda i: (town.send(name, TEXT.format(i=i)), receive())  # noqa: E731
    by_id = lambda i: (town.send(aid, TEXT.format(i=i)), receive())  # noqa: E731
    plain = lambda i: (raw.send(TEXT.format(i=i)), receive())  # noqa: E731
    for fn in (ours, by_id, plain):
        timed_each(200, fn)  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "id": [], "raw": []}
    variants = (("ours", ours), ("id", by_id), ("raw", plain))
    for _ in range(repeat):
        samples: dict[str, list[int]] = {k: [] for k, _ in variants}
        gc.collect()
        for start in range(0, n, 100):  # blocks of 100 interleaved: drift hits all alike
            for key, fn in variants:
                samples[key] += timed_each(min(100, n - start), fn)
        for key, got in samples.items():
            runs[key].append(percentiles(got))
    med = {k: (statistics.median(p for p, _ in v), statistics.median(q for _, q in v))
           for k, v in runs.items()}
    keys_now = town.redis.dbsize()
    print(f"\nMessage round trip: send -> BLMOVE inbox->processing -> LREM "
          f"(n={n} x {repeat}, median of runs, {keys_now} keys in db)")
    row("", "tinytown_nb", "raw redis-py", "ratio")
    for label, key in (("send(name) p50 µs", "ours"), ("send(uuid) p50 µs", "id")):
        row(label, f"{med[key][0]:.1f}", f"{med['raw'][0]:.1f}", f"{med[key][0] / med['raw'][0]:.2f}x")
    for label, key in (("send(name) p99 µs", "ours"), ("send(uuid) p99 µs", "id")):
        row(label, f"{med[key][1]:.1f}", f"{med['raw'][1]:.1f}", f"{med[key][1] / med['raw'][1]:.2f}x")
    with round_trips() as rt:
        town.send(name, "count me")
    with round_trips() as rt_id:
        town.send(aid, "count me")
    receive(), receive()
    print(f"  round trips per send: by name {rt[0]}, by uuid {rt_id[0]} (raw: 1)")


def bench_send_large(town: Town, rb: redis.Redis, name: str, aid: str, n: int) -> None:
    """send() again once the assignment runs have filled the keyspace: a name lookup
    SCANs every key of the database (``tt:{town}:agent:*`` is a MATCH, not an index)."""
    inbox, processing = town.keys.inbox(aid), town.keys.processing(aid)
    rb.delete(inbox)

    def one(to: str) -> Callable[[int], None]:
        def go(i: int) -> None:
            town.send(to, TEXT.format(i=i))
            rb.lrem(processing, 1, rb.blmove(inbox, processing, 0, "LEFT", "RIGHT"))
        return go

    figures = []
    for to in (name, aid):
        timed_each(5, one(to))
        p50, p99 = percentiles(timed_each(n, one(to)))
        with round_trips() as rt:
            one(to)(0)
        figures.append(f"send({'name' if to == name else 'uuid'}) p50 {p50:,.0f} µs, "
                       f"p99 {p99:,.0f} µs, {rt[0] - 2} round trips")
    print(f"\nsend() on the grown town ({town.redis.dbsize()} keys, n={n}):")
    for line in figures:
        print(f"  {line}")


def bench_assign(town: Town, raw: Raw, name: str, n: int, bulk: int, repeat: int) -> bool:
    for i in range(200):  # warm-up: name cache hot, script loaded, connections open
        town.assign(name, TEXT.format(i=i))
        raw.assign(TEXT.format(i=i))
        raw.assign_multi(TEXT.format(i=i))
    town.assign_many(name, [TEXT.format(i=i) for i in range(200)])
    raw.assign_many([TEXT.format(i=i) for i in range(200)])

    texts = [TEXT.format(i=i) for i in range(max(n, bulk))]
    single = {"ours": [], "raw": [], "multi": []}
    many = {"ours": [], "raw": []}
    for _ in range(repeat):
        single["ours"].append(rate(n, lambda: [town.assign(name, t) for t in texts[:n]]))
        single["raw"].append(rate(n, lambda: [raw.assign(t) for t in texts[:n]]))
        single["multi"].append(rate(n, lambda: [raw.assign_multi(t) for t in texts[:n]]))
        many["ours"].append(rate(bulk, lambda: town.assign_many(name, texts[:bulk])))
        many["raw"].append(rate(bulk, lambda: raw.assign_many(texts[:bulk])))
        town.redis.delete(raw.inbox)  # keep the inbox list from growing without bound
    best = {k: max(v) for k, v in single.items()}
    best_many = {k: max(v) for k, v in many.items()}

    print(f"\nAssignments per second (best of {repeat}; single n={n}, bulk {bulk} per call)")
    row("", "tinytown_nb", "raw redis-py", "ratio")
    row("assign() vs 4 plain commands", f"{best['ours']:,.0f}", f"{best['raw']:,.0f}",
        f"{best['ours'] / best['raw']:.2f}x")
    row("assign() vs MULTI/EXEC (1 RT)", f"{best['ours']:,.0f}", f"{best['multi']:,.0f}",
        f"{best['ours'] / best['multi']:.2f}x")
    ratio_many = best_many["ours"] / best_many["raw"]
    row("assign_many() vs pipeline", f"{best_many['ours']:,.0f}", f"{best_many['raw']:,.0f}",
        f"{ratio_many:.2f}x")

    with round_trips() as rt:
        town.assign(name, "count me")
    with round_trips() as rt_many:
        town.assign_many(name, ["count me"] * 100)
    cmds = stats_delta(raw.r, lambda: town.assign(name, "count me"))
    print(f"  round trips: assign() {rt[0]}, assign_many(100 tasks) {rt_many[0]}")
    print(f"  server commands for one assign(): {', '.join(f'{k}={v}' for k, v in cmds.items())}")

    print("\nAims")
    ok_rt = rt[0] == 1
    ok_bulk = ratio_many >= 0.5
    print(f"  [{'PASS' if ok_rt else 'MISS'}] one assign() costs one round trip (measured {rt[0]})")
    print(f"  [{'PASS' if ok_bulk else 'MISS'}] assign_many() >= 0.5x raw pipelined redis-py "
          f"(measured {ratio_many:.2f}x)")
    return ok_rt and ok_bulk


def profile(town: Town, name: str, n: int, bulk: int) -> None:
    texts = [TEXT.format(i=i) for i in range(max(n, bulk))]
    for label, fn in (("assign() x %d" % n, lambda: [town.assign(name, t) for t in texts[:n]]),
                      ("assign_many(%d)" % bulk, lambda: town.assign_many(name, texts[:bulk]))):
        prof = cProfile.Profile()
        prof.runcall(fn)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print(f"\ncProfile: {label} (sorted by own time)")
        print("\n".join(out.getvalue().splitlines()[4:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="messages / single assigns per run (2000)")
    ap.add_argument("--bulk", type=int, default=5000, help="tasks per assign_many call (5000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (3)")
    ap.add_argument("--profile", action="store_true", help="cProfile assign and assign_many too")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ttbench") as tmp:
        town = Town.init(Path(tmp) / "t", name="bench")
        rb = None
        try:
            print(describe(town))
            aid = town.spawn("bench", cli="claude", start=False).id  # a record only: no worker takes the tasks
            raw = Raw(town.config.redis_url(), town.name, aid)
            rb = connect(town.config.redis_url(), blocking=True)
            bench_roundtrip(town, raw, rb, "bench", aid, args.n, args.repeat)
            ok = bench_assign(town, raw, "bench", args.n, args.bulk, args.repeat)
            bench_send_large(town, rb, "bench", aid, max(20, args.n // 20))
            if args.profile:
                profile(town, "bench", args.n, args.bulk)
        finally:
            if rb is not None:
                rb.close()
            town.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
