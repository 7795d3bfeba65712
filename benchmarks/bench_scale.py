#!/usr/bin/env python
"""What watching a town costs as it grows: issue 14's table at 1k / 10k (/ 100k) tasks.

For each size a town is built in a temporary directory (``Town.init``, a managed server):
5 worker-less agents, N tasks made with ``assign_many``, every one then marked completed
(one pipeline of HSETs, as a worker leaves them; inboxes emptied, as workers leave them;
``town.reconcile(full=True)`` files them where the code keeps state indexes). Then, each
the median of ``--repeat`` runs (wall seconds; in-process figures also show this process's
CPU seconds):

* ``town.wait(all=True)`` and ``town.wait_until("done")`` on the done town;
* the counts: ``town.counts()`` (where it does not exist: ``widgets.Snapshot.read`` and its
  counts, what the dashboard header read), ``frames.status_frame``;
* ``town.tasks()`` and ``frames.tasks_frame(town)`` beside the raw baseline measured in the
  same run: SCAN for the task keys + one pipelined HGETALL each + ``pd.DataFrame(list of
  dicts)`` (untyped strings);
* ``ttnb status`` and ``ttnb task list`` (subprocesses, output read to the end; ``task list``
  also the time to its first line), ``ttnb task complete`` on that town;
* ``town.events()``, ``town.history(30)``, ``frames.agents_frame``; one dashboard refresh
  with nothing changed (``TownView.refresh``); ``town.archive(older_than=0)`` of the whole
  town (once, last).

Then the start-up of ``ttnb`` on an empty town: ``python -c pass``, ``import redis``,
``import tinytown_nb.cli``, ``ttnb list`` and ``ttnb task complete`` (median of
``--starts`` runs; the package's bytecode is compiled first, as ``pip install`` does).

``--drain`` measures only whether old work slows new work: 4 function agents (no-op)
drain 5,000 new tasks in a fresh town and in a town holding 20,000 finished tasks (built as
above), best of ``--repeat``; aim: the old town within 0.9x of the fresh one's rate.

Aims ([PASS]/[MISS]): counts O(1) in tasks (``wait_until("done")``, the counts,
``status_frame`` and ``ttnb status`` at the largest size within 2x of their 1k figure),
``town.tasks()`` and ``tasks_frame`` within 1.0x of the raw baseline at the largest size,
``ttnb task complete`` <= 0.3 s. An operation the code does not have shows ``n/a``.

Run (``--full`` adds 100k; ``--save``/``--compare`` put two runs side by side)::

    .venv/bin/python benchmarks/bench_scale.py [--full] [--repeat 3] [--save after.json]
    OLD/.venv/bin/python benchmarks/bench_scale.py --repo OLD --save before.json
    .venv/bin/python benchmarks/bench_scale.py --full --compare before.json
"""

from __future__ import annotations

import argparse
import compileall
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000", help="task counts (default 1000,10000)")
    p.add_argument("--full", action="store_true", help="also 100,000 tasks")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median; default 3)")
    p.add_argument("--starts", type=int, default=15, help="runs per start-up figure (default 15)")
    p.add_argument("--repo", type=Path, default=HERE.parent,
                   help="the checkout whose tinytown_nb is measured (default: this one)")
    p.add_argument("--save", type=Path, help="write the figures to this JSON file")
    p.add_argument("--compare", type=Path, help="a --save file of another run, shown beside")
    p.add_argument("--drain", action="store_true",
                   help="only: does old work slow new work? 4 function agents drain 5,000 new "
                        "tasks in a fresh town and in one holding 20,000 finished tasks")
    return p.parse_args()


OPTS = parse_args()
sys.path.insert(0, str(OPTS.repo.resolve()))
sys.path.insert(1, str(HERE))

import pandas as pd  # noqa: E402
import redis  # noqa: E402

from _machine import describe  # noqa: E402
from tinytown_nb import frames  # noqa: E402
from tinytown_nb.core import Town  # noqa: E402
from tinytown_nb.core.models import hash_ts, utcnow  # noqa: E402

#: ttnb as its console script runs it, importing the measured checkout's package
TTNB = [sys.executable, "-c", "import sys; from tinytown_nb.cli import main; sys.exit(main())"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("TINYTOWN_")},
       "PYTHONPATH": str(OPTS.repo.resolve())}

#: (key, label) of every row, in the order printed
ROWS = [
    ("wait_all", "town.wait(all=True), all done"),
    ("wait_done", 'town.wait_until("done")'),
    ("counts", "counts: town.counts() / Snapshot.read"),
    ("status_frame", "frames.status_frame"),
    ("refresh", "TownView refresh, nothing changed"),
    ("raw", "raw: SCAN + HGETALL pipeline + DataFrame"),
    ("tasks", "town.tasks()"),
    ("tasks_frame", "frames.tasks_frame"),
    ("ttnb_status", "ttnb status"),
    ("ttnb_list_first", "ttnb task list: first line"),
    ("ttnb_list", "ttnb task list: all"),
    ("ttnb_complete", "ttnb task complete"),
    ("events", "town.events(20)"),
    ("history", "town.history(30)"),
    ("agents_frame", "frames.agents_frame"),
    ("archive", "town.archive(older_than=0), every task"),
]


# --------------------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float] | None:
    """(median wall s, median CPU s of this process) of ``fn()``; None when ``fn`` says
    the code has no such operation (returns NotImplemented)."""
    walls, cpus = [], []
    for _ in range(repeat):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        if fn() is NotImplemented:
            return None
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return statistics.median(walls), statistics.median(cpus)


def run_ttnb(root: Path, *args: str, first_line: bool = False) -> tuple[float, float, float]:
    """Run ``ttnb -t root args`` to the end: (wall s, wall s to the first line of output,
    CPU s of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen([*TTNB, "-t", str(root), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV, cwd=root)  # (cwd: no checkout on sys.path)
    assert p.stdout is not None
    p.stdout.readline()
    first = time.perf_counter() - t0
    for _ in iter(lambda: p.stdout.read(1 << 16), b""):
        pass
    err = p.stderr.read() if p.stderr else b""
    code = p.wait()
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"ttnb {' '.join(args)} exited {code}: {err.decode()[-300:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, first, cpu


def median_runs(runs: list[tuple[float, ...]]) -> list[float]:
    return [statistics.median(col) for col in zip(*runs)]


# --------------------------------------------------------------------------- the town


def build(root: Path, n: int) -> Town:
    """A done town of ``n`` tasks (see the module docstring)."""
    town = Town.init(root, name="scale")
    names = [f"agent-{i}" for i in range(5)]
    for name in names:
        town.spawn(name, start=False)
    ids: list[str] = []
    per = n // len(names)
    for name in names:
        for start in range(0, per, 5000):
            texts = [f"Task {j} for {name}: fix the thing" for j in range(start, min(per, start + 5000))]
            ids += [t.id for t in town.assign_many(name, texts, tags=["bench"])]
    now = utcnow()
    pipe = town.redis.pipeline(transaction=False)
    for i, tid in enumerate(ids):
        started = hash_ts(now.replace(microsecond=i % 1000))
        pipe.hset(town.keys.task(tid), mapping={
            "state": "completed", "started_at": started, "completed_at": hash_ts(now),
            "updated_at": hash_ts(now), "result": f"done {i}"})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    for a in town.agents():
        town.redis.delete(town.keys.inbox(a.id))
    if hasattr(town, "reconcile"):
        town.reconcile(full=True)
    return town


def raw_frame(town: Town) -> pd.DataFrame:
    """The baseline: what a user would write with redis-py and pandas alone."""
    r: redis.Redis = town.redis
    keys = list(r.scan_iter(match=f"tt:{town.name}:task:*", count=10_000))
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return pd.DataFrame(pipe.execute())


def counts(town: Town) -> Any:
    if hasattr(town, "counts"):
        return town.counts()
    from tinytown_nb.widgets import Snapshot  # what the dashboard header read before
    return Snapshot.read(town).counts()


def refresh_fn(town: Town) -> Callable[[], Any]:
    try:
        from tinytown_nb.widgets import TownView
        view = TownView(town, start=False)
        view.refresh(force=True)
    except Exception:  # noqa: BLE001 - a version without it, or another signature
        return lambda: NotImplemented
    return lambda: view.refresh()


def measure_size(n: int, repeat: int) -> dict[str, list[float] | None]:
    out: dict[str, list[float] | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        town = build(Path(tmp) / "town", n)
        print(f"  {n:,} tasks built in {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            def put(key: str, got: tuple[float, float] | None) -> None:
                out[key] = list(got) if got is not None else None
                shown = "n/a" if got is None else f"{got[0]:.3f} s (cpu {got[1]:.3f})"
                print(f"    {dict(ROWS)[key]:<44} {shown}", flush=True)

            put("wait_all", timed(lambda: town.wait(all=True, timeout=3600), repeat))
            put("wait_done", timed(lambda: town.wait_until("done", timeout=3600)
                                   if hasattr(town, "wait_until") else NotImplemented, repeat))
            put("counts", timed(lambda: counts(town), repeat))
            put("status_frame", timed(lambda: frames.status_frame(town), repeat))
            put("refresh", timed(refresh_fn(town), repeat))
            raw = timed(lambda: raw_frame(town), repeat)
            put("raw", raw)
            tasks = timed(lambda: town.tasks(), repeat)
            put("tasks", tasks)
            frame = timed(lambda: frames.tasks_frame(town), repeat)
            put("tasks_frame", frame)
            assert len(town.tasks()) == len(frames.tasks_frame(town)) == len(raw_frame(town)) == n
            status = median_runs([run_ttnb(town.root, "status") for _ in range(repeat)])
            put("ttnb_status", (status[0], status[2]))
            listing = median_runs([run_ttnb(town.root, "task", "list") for _ in range(repeat)])
            put("ttnb_list_first", (listing[1], listing[2]))
            put("ttnb_list", (listing[0], listing[2]))
            extra = town.assign_many("agent-0", [f"extra {i}" for i in range(repeat)])
            done = median_runs([run_ttnb(town.root, "task", "complete", t.id) for t in extra])
            put("ttnb_complete", (done[0], done[2]))
            put("events", timed(lambda: town.events(20), repeat))
            put("history", timed(lambda: town.history(30), repeat))
            put("agents_frame", timed(lambda: frames.agents_frame(town), repeat))
            if hasattr(town, "archive"):
                moved: list[int] = []
                put("archive", timed(lambda: moved.append(town.archive(older_than=0)), 1))
                assert moved == [n + repeat], moved
            else:
                put("archive", None)
        finally:
            town.shutdown()
    return out


def startup(starts: int) -> dict[str, list[float]]:
    """Start-up figures on an empty town (see the module docstring)."""
    compileall.compile_dir(str(OPTS.repo.resolve() / "tinytown_nb"), quiet=1)
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        town = Town.init(Path(tmp) / "empty", name="empty")
        try:
            def child(cmd: list[str]) -> tuple[float, float, float]:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=ENV, cwd=tmp)
                wall = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                return wall, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

            for key, code in [("python -c pass", "pass"), ("import redis", "import redis"),
                              ("import tinytown_nb.cli", "import tinytown_nb.cli")]:
                got = median_runs([child([sys.executable, "-c", code]) for _ in range(starts)])
                out[key] = [got[0], got[2]]
            got = median_runs([run_ttnb(town.root, "list") for _ in range(starts)])
            out["ttnb list (empty town)"] = [got[0], got[2]]
            town.spawn("dev", start=False)
            tasks = town.assign_many("dev", [f"t{i}" for i in range(starts)])
            got = median_runs([run_ttnb(town.root, "task", "complete", t.id) for t in tasks])
            out["ttnb task complete (small town)"] = [got[0], got[2]]
        finally:
            town.shutdown()
    return out


# --------------------------------------------------------------------------- report


def fmt(v: list[float] | None) -> str:
    return "n/a" if v is None else f"{v[0]:.3f}"


def table(results: dict[str, Any], other: dict[str, Any] | None) -> list[str]:
    sizes = sorted(results["sizes"], key=int)
    head = "| operation (wall s, median) |"
    rule = "|---|"
    for n in sizes:
        if other and n in other["sizes"]:
            head += f" {int(n):,} before | {int(n):,} after |"
            rule += "---|---|"
        else:
            head += f" {int(n):,} |"
            rule += "---|"
    lines = [head, rule]
    for key, label in ROWS:
        row = f"| {label} |"
        for n in sizes:
            if other and n in other["sizes"]:
                row += f" {fmt(other['sizes'][n].get(key))} |"
            row += f" {fmt(results['sizes'][n].get(key))} |"
        lines.append(row)
    lines += ["", "| start-up (empty town, wall s / CPU s) |" + (" before | after |" if other else " |"),
              "|---|---|" + ("---|" if other else "")]
    for key, v in results["startup"].items():
        was = other["startup"].get(key) if other else None
        cells = ([f"{was[0]:.3f} / {was[1]:.3f}" if was else "n/a"] if other else []) + [f"{v[0]:.3f} / {v[1]:.3f}"]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def aims(results: dict[str, Any]) -> list[tuple[str, bool]]:
    sizes = sorted(results["sizes"], key=int)
    small, big = results["sizes"][sizes[0]], results["sizes"][sizes[-1]]
    found: list[tuple[str, bool]] = []
    for key in ("wait_done", "counts", "status_frame", "ttnb_status"):
        if small.get(key) and big.get(key):
            ratio = big[key][0] / small[key][0]
            found.append((f"{dict(ROWS)[key]} O(1): {int(sizes[-1]):,} tasks / {int(sizes[0]):,} tasks "
                          f"= {ratio:.2f}x (aim <= 2x)", ratio <= 2.0))
    for key in ("tasks", "tasks_frame"):
        if big.get(key) and big.get("raw"):
            ratio = big[key][0] / big["raw"][0]
            found.append((f"{dict(ROWS)[key]} at {int(sizes[-1]):,} tasks: {ratio:.2f}x raw "
                          f"(aim <= 1.0x)", ratio <= 1.0))
    if big.get("wait_all") and big.get("tasks"):
        print(f"  [info] town.wait(all=True) returns every task, so it reads them all: "
              f"{big['wait_all'][0]:.3f} s at {int(sizes[-1]):,} tasks beside town.tasks() "
              f"{big['tasks'][0]:.3f} s (its O(1) form is wait_until(\"done\"))")
    done = results["startup"].get("ttnb task complete (small town)")
    if done:
        found.append((f"ttnb task complete starts and finishes in {done[0]:.3f} s (aim <= 0.3 s)",
                      done[0] <= 0.3))
    return found


def drain_rate(old: int, new: int = 5000, agents: int = 4) -> float:
    """Tasks per second at which ``agents`` no-op function agents drain ``new`` tasks in a
    town that already holds ``old`` finished ones."""
    town = build(Path(tempfile.mkdtemp()) / "town", old)
    try:
        names = [f"drain-{i}" for i in range(agents)]
        for name in names:
            town.spawn(name, fn=lambda task: "ok")
        start = time.perf_counter()
        for i, name in enumerate(names):
            town.assign_many(name, [f"New {j}" for j in range(i, new, agents)])
        if hasattr(town, "wait_until"):
            town.wait_until("done", timeout=600)
        else:  # an older checkout
            town.wait(all=True, timeout=600)
        return new / (time.perf_counter() - start)
    finally:
        town.shutdown()


def drain_main() -> int:
    probe = Town.init(Path(tempfile.mkdtemp()) / "probe", name="probe")
    try:
        print(describe(probe, pandas=pd.__version__))
    finally:
        probe.shutdown()
    fresh = max(drain_rate(0) for _ in range(OPTS.repeat))
    old = max(drain_rate(20_000) for _ in range(OPTS.repeat))
    ratio = old / fresh
    print(f"4 function agents draining 5,000 new tasks (tasks/s, best of {OPTS.repeat}):\n"
          f"  fresh town                      {fresh:8.0f}\n"
          f"  town with 20,000 finished tasks {old:8.0f}   {ratio:.2f}x")
    print(f"\nAims\n  [{'PASS' if ratio >= 0.9 else 'MISS'}] old work does not slow new work: "
          f"{ratio:.2f}x of the fresh town's rate (aim >= 0.9x)")
    return 0 if ratio >= 0.9 else 1


def main() -> int:
    if OPTS.drain:
        return drain_main()
    sizes = [int(s) for s in OPTS.sizes.split(",")] + ([100_000] if OPTS.full else [])
    results: dict[str, Any] = {"repo": str(OPTS.repo), "sizes": {}}
    probe = Town.init(Path(tempfile.mkdtemp()) / "probe", name="probe")
    try:
        print(describe(probe, pandas=pd.__version__))
    finally:
        probe.shutdown()
    commit = subprocess.run(["git", "-C", str(OPTS.repo), "log", "--oneline", "-1"],
                            capture_output=True, text=True).stdout.strip()
    results["commit"] = commit
    print(f"Code: {OPTS.repo} at {commit}; median of {OPTS.repeat}; load average "
          f"{os.getloadavg()[0]:.1f}")
    for n in sizes:
        results["sizes"][str(n)] = measure_size(n, OPTS.repeat)
    results["startup"] = startup(OPTS.starts)
    other = json.loads(OPTS.compare.read_text()) if OPTS.compare else None
    if other:
        print(f"\nBefore: {other['repo']} at {other.get('commit')}")
    print("\n" + "\n".join(table(results, other)))
    print("\nAims")
    checked = aims(results)
    for text, ok in checked:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    if OPTS.save:
        OPTS.save.write_text(json.dumps(results, indent=1))
    return 0 if all(ok for _, ok in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
