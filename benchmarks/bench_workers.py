#!/usr/bin/env python
"""Worker benchmark: dispatch latency and throughput of agents, beside rq.

Everything runs against ONE managed server (a town made with ``Town.init`` in a temporary
directory, shut down at the end):

* **dispatch latency** — from just before ``town.assign()`` to the task's ``started_at``
  (written by the worker in the step that marks it ``running``), one task at a time to an
  idle agent: a function agent (thread) and a process agent whose command is ``cat``;
  rq's enqueue → ``job.started_at`` with one SimpleWorker is printed for context;
* **throughput** — N no-op tasks (default 2,000) spread over 4 process agents (command
  ``true``: the task text is offered on stdin and ignored; ``cat`` echoes it back as the
  result), from the first ``assign_many`` to the last task recorded, beside rq with 4
  ``SimpleWorker`` processes running a no-op Python function (``enqueue_many`` → the
  last job in the finished registry). 4 function agents are shown too.

* **live-log latency** — from a ``print`` in a running task to the line being readable in
  ``town.task_log`` (another process would see it the same way), for a command agent (a
  script printing a timestamped line every 0.05–0.35 s) and a function agent doing the same;
  p50/p99 over ``--lines`` lines. The reader polls every 5 ms (its resolution).

Every process agent runs its command once per task (fork/exec per task), while rq's
SimpleWorker calls a Python function in-process; the comparison is deliberately the one a
user sees ("how fast does a queue of tiny jobs drain").

**Before/after in one sitting** (``--before DIR``: a checkout of an older commit with its
own ``.venv``): this script runs the same measurements alternately in subprocesses of both
trees (``--measure --src TREE``, each its own town and server), ``--repeat`` rounds
interleaved so load drift hits both alike, and prints both with their ratio: dispatch p50
(median of rounds), no-op throughput (best of rounds), live-log latency (one run each).
Aims: throughput and dispatch within 5 % of before, live-log p99 <= 1 s.

Run::

    .venv/bin/python benchmarks/bench_workers.py             # --n 2000 --latency 300
    .venv/bin/python benchmarks/bench_workers.py --before /tmp/old-checkout --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import redis

HERE = Path(__file__).resolve()
# --src TREE (the measuring subprocess of a before/after run) imports that tree's package
_SRC = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(HERE.parents[1])
sys.path.insert(0, _SRC)
sys.path.insert(1, str(HERE.parent))
from tinytown_nb.core import Town  # noqa: E402
from _machine import describe  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

AIM_FN_P50_MS, AIM_PROC_P50_MS, AIM_THROUGHPUT_RATIO = 5.0, 20.0, 2.0
AIM_SAME = 0.05  # before/after: throughput and dispatch within 5 %
AIM_LIVE_P99_S = 1.0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def dispatch_latency(town: Town, agent: str, n: int) -> list[float]:
    """ms from just before assign() to started_at, one task at a time to an idle agent."""
    out = []
    for i in range(n + 10):
        t0 = datetime.now(timezone.utc)
        task = town.assign(agent, f"latency probe {i}")
        done = town.wait(task=task, timeout=30)
        town.wait(agent, timeout=30)  # idle again before the next probe
        if i >= 10:  # warm-up
            out.append((done.started_at - t0).total_seconds() * 1000)
    return out


def cpu_ms(pids: list[int]) -> tuple[float, float]:
    """(own, reaped children) CPU milliseconds of processes, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    own = kids = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own += (int(f[11]) + int(f[12])) * 1000 / tick
        kids += (int(f[13]) + int(f[14])) * 1000 / tick
    return own, kids


def town_throughput(town: Town, agents: list[str], n: int) -> tuple[float, dict[str, float]]:
    """Tasks per second, and CPU ms per task of: workers, their commands, server, this process."""
    per = n // len(agents)
    pids = [int(town.redis.hget(town.keys.worker(town.agent(a).id), "pid")) for a in agents]
    server = [town.server.pid()] if town.server and town.server.pid() else []
    before = (cpu_ms(pids), cpu_ms(server)[0], time.process_time())
    t0 = time.perf_counter()
    for name in agents:
        town.assign_many(name, [f"no-op task {name}-{j}" for j in range(per)])
    tasks = town.wait(all=True, timeout=600)
    elapsed = time.perf_counter() - t0
    after = (cpu_ms(pids), cpu_ms(server)[0], time.process_time())
    assert len(tasks) >= per * len(agents) and all(t.state.value == "completed" for t in tasks), \
        "not every task completed"
    done = per * len(agents)
    cpu = {"workers": after[0][0] - before[0][0], "commands": after[0][1] - before[0][1],
           "server": after[1] - before[1], "bench": (after[2] - before[2]) * 1000}
    if len(set(pids)) == 1 and pids[0] == os.getpid():  # function agents: workers are us
        cpu["workers"], cpu["bench"], cpu["commands"] = cpu["bench"], 0.0, 0.0
    return done / elapsed, {k: v / done for k, v in cpu.items()}


# --------------------------------------------------------------------------- live log

PRINTER = textwrap.dedent("""\
    import random, sys, time
    sys.stdin.read()
    rng = random.Random(7)
    for i in range(int(sys.argv[1])):
        time.sleep(rng.uniform(0.05, 0.35))
        print(f"{i} {time.time():.6f}", flush=True)
""")


def _printer_fn(lines: int):
    def printer(task):
        rng = random.Random(7)
        for i in range(lines):
            time.sleep(rng.uniform(0.05, 0.35))
            print(f"{i} {time.time():.6f}", flush=True)
    return printer


def live_log_latency(town: Town, agent: str, lines: int) -> list[float]:
    """Seconds from each print to the line being readable in ``task_log`` (polled every 5 ms)."""
    task = town.assign(agent, "print timestamped lines")
    seen: dict[int, float] = {}
    while len(seen) < lines:
        now = time.time()
        for line in town.task_log(task.id):
            i, _, stamp = line.partition(" ")
            if i.isdigit() and int(i) not in seen:
                seen[int(i)] = now - float(stamp)
        if len(seen) < lines and town.task(task.id).state.value in ("failed", "cancelled"):
            raise RuntimeError(f"the printer failed: {town.task(task.id).result}")
        time.sleep(0.005)
    town.wait(task=task, timeout=60)
    return [seen[i] for i in sorted(seen)]


# --------------------------------------------------------------------------- before/after


def measure(args: argparse.Namespace) -> dict:
    """One tree's figures (``--measure``): dispatch, no-op throughput, live-log latency."""
    os.environ.setdefault("TINYTOWN_HEARTBEAT_SECS", "5")
    out: dict = {"src": _SRC}
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        town = Town.init(Path(tmp) / "town", name="bench")
        try:
            printer = Path(tmp) / "printer.py"
            printer.write_text(PRINTER)
            town.spawn("fn", fn=lambda task: None, idle_timeout=0)
            town.spawn("cat", cli="cat", idle_timeout=0)
            out["dispatch_fn"] = dispatch_latency(town, "fn", args.latency)
            out["dispatch_cat"] = dispatch_latency(town, "cat", args.latency)
            w = args.workers
            for i in range(w):
                town.spawn(f"true{i}", cli="true", idle_timeout=0)
                town.spawn(f"f{i}", fn=lambda task: None, idle_timeout=0)
            out["throughput_true"] = town_throughput(town, [f"true{i}" for i in range(w)], args.n)[0]
            out["throughput_fn"] = town_throughput(town, [f"f{i}" for i in range(w)], args.n)[0]
            if args.lines:
                town.spawn("printer", cli=f"{sys.executable} {printer} {args.lines}", idle_timeout=0)
                town.spawn("fprinter", fn=_printer_fn(args.lines), idle_timeout=0)
                out["live_cmd"] = live_log_latency(town, "printer", args.lines)
                out["live_fn"] = live_log_latency(town, "fprinter", args.lines)
        finally:
            town.shutdown()
    return out


def _run_tree(tree: Path, args: argparse.Namespace, lines: int) -> dict:
    python = tree / ".venv" / "bin" / "python"
    cmd = [str(python), str(HERE), "--measure", "--src", str(tree), "--n", str(args.n),
           "--latency", str(args.latency), "--workers", str(args.workers), "--lines", str(lines)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> int:
    """Before/after in one sitting (see the module docstring)."""
    trees = {"before": Path(args.before).resolve(), "after": HERE.parents[1]}
    rounds: dict[str, list[dict]] = {k: [] for k in trees}
    for r in range(args.repeat):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]
        for label in order:  # the live log is measured once per tree (it takes ~40 s)
            rounds[label].append(_run_tree(trees[label], args, args.lines if r == 0 else 0))
            print(f"  round {r + 1} {label}: done", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        town = Town.init(Path(tmp) / "town", name="bench")
        try:
            print(describe(town))
        finally:
            town.shutdown()
    for label, tree in trees.items():
        head = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True).stdout.strip()
        print(f"{label:>7}: {tree} ({head[:70]})")

    def med(label: str, key: str, q: float) -> float:
        return statistics.median(pct(run[key], q) for run in rounds[label])  # ms

    def best(label: str, key: str) -> float:
        return max(run[key] for run in rounds[label])

    print(f"\nBefore/after, {args.repeat} interleaved rounds ({args.n} no-op tasks over "
          f"{args.workers} agents; {args.latency} dispatch probes)")
    print(f"  {'':<34}{'before':>10}{'after':>10}{'after/before':>14}")
    rows = [("dispatch p50, function agent (ms)", med("before", "dispatch_fn", 50), med("after", "dispatch_fn", 50)),
            ("dispatch p50, process agent (ms)", med("before", "dispatch_cat", 50), med("after", "dispatch_cat", 50)),
            ("dispatch p99, function agent (ms)", med("before", "dispatch_fn", 99), med("after", "dispatch_fn", 99)),
            ("dispatch p99, process agent (ms)", med("before", "dispatch_cat", 99), med("after", "dispatch_cat", 99)),
            ("throughput, 4 process agents /s", best("before", "throughput_true"), best("after", "throughput_true")),
            ("throughput, 4 function agents /s", best("before", "throughput_fn"), best("after", "throughput_fn"))]
    for name, b, a in rows:
        print(f"  {name:<34}{b:>10.2f}{a:>10.2f}{a / b:>13.2f}x")
    live = {label: rounds[label][0] for label in trees}
    print(f"\nLive-log latency, print -> readable in task_log (s, {args.lines} lines each)")
    print(f"  {'':<34}{'p50':>10}{'p99':>10}{'max':>10}")
    for label in trees:
        for kind, key in (("command agent", "live_cmd"), ("function agent", "live_fn")):
            v = live[label][key]
            print(f"  {label + ', ' + kind:<34}{pct(v, 50):>10.3f}{pct(v, 99):>10.3f}{max(v):>10.3f}")
    tp = best("after", "throughput_true") / best("before", "throughput_true")
    tf = best("after", "throughput_fn") / best("before", "throughput_fn")
    dp = med("after", "dispatch_cat", 50) / med("before", "dispatch_cat", 50)
    df = med("after", "dispatch_fn", 50) / med("before", "dispatch_fn", 50)
    live99 = max(pct(live["after"]["live_cmd"], 99), pct(live["after"]["live_fn"], 99))
    aims = [(tp >= 1 - AIM_SAME, f"process-agent throughput within 5 % of before (after/before {tp:.3f})"),
            (tf >= 1 - AIM_SAME, f"function-agent throughput within 5 % of before (after/before {tf:.3f})"),
            (dp <= 1 + AIM_SAME, f"process-agent dispatch p50 within 5 % of before (after/before {dp:.3f})"),
            (df <= 1 + AIM_SAME, f"function-agent dispatch p50 within 5 % of before (after/before {df:.3f})"),
            (live99 <= AIM_LIVE_P99_S, f"live-log p99 <= {AIM_LIVE_P99_S:g} s after (measured {live99:.3f} s)")]
    print("\nAims")
    for ok, text in aims:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    return 0 if all(ok for ok, _ in aims) else 1


# --------------------------------------------------------------------------- rq

RQ_JOBS = "def noop(text):\n    return None\n"
RQ_WORKER = textwrap.dedent("""\
    import sys
    from redis import Redis
    from rq import Queue, SimpleWorker
    r = Redis.from_url(sys.argv[1])
    SimpleWorker([Queue("bench", connection=r)], connection=r, name=sys.argv[2]).work(
        logging_level="WARNING")
""")


class RQ:
    """rq SimpleWorker processes on the town's server; the job is a no-op function."""

    def __init__(self, url: str, tmp: Path):
        from rq import Queue  # noqa: PLC0415

        (tmp / "rq_jobs.py").write_text(RQ_JOBS)
        (tmp / "rq_worker.py").write_text(RQ_WORKER)
        sys.path.insert(0, str(tmp))
        self.url, self.tmp = url, tmp
        self.r = redis.Redis.from_url(url)
        self.q = Queue("bench", connection=self.r)
        self.procs: list[subprocess.Popen] = []

    def start(self, workers: int) -> None:
        from rq import Worker  # noqa: PLC0415

        env = {**os.environ, "PYTHONPATH": str(self.tmp)}
        for i in range(workers):
            self.procs.append(subprocess.Popen(
                [sys.executable, str(self.tmp / "rq_worker.py"), self.url, f"bench-{os.getpid()}-{i}"],
                env=env, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while len(Worker.all(connection=self.r)) < workers:
            assert time.monotonic() < deadline, "rq workers did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)
        self.procs.clear()

    def latency(self, n: int) -> list[float]:
        import rq_jobs  # noqa: PLC0415

        out = []
        for i in range(n + 10):
            t0 = datetime.now(timezone.utc)
            job = self.q.enqueue(rq_jobs.noop, f"probe {i}")
            while job.get_status(refresh=True).value != "finished":
                time.sleep(0.0005)
            if i >= 10:
                job.refresh()
                out.append((job.started_at.replace(tzinfo=timezone.utc) - t0).total_seconds() * 1000)
        return out

    def throughput(self, n: int, server: list[int]) -> tuple[float, dict[str, float]]:
        import rq_jobs  # noqa: PLC0415
        from rq.registry import FinishedJobRegistry  # noqa: PLC0415

        finished = FinishedJobRegistry(queue=self.q)
        before_count = finished.count
        datas = [self.q.prepare_data(rq_jobs.noop, args=(f"no-op task {j}",)) for j in range(n)]
        pids = [p.pid for p in self.procs]
        before = (cpu_ms(pids)[0], cpu_ms(server)[0], time.process_time())
        t0 = time.perf_counter()
        self.q.enqueue_many(datas)
        while finished.count - before_count < n:
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        after = (cpu_ms(pids)[0], cpu_ms(server)[0], time.process_time())
        cpu = {"workers": after[0] - before[0], "commands": 0.0, "server": after[1] - before[1],
               "bench": (after[2] - before[2]) * 1000}
        return n / elapsed, {k: v / n for k, v in cpu.items()}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="tasks per throughput run (2000)")
    ap.add_argument("--latency", type=int, default=300, help="probes per latency figure (300)")
    ap.add_argument("--workers", type=int, default=4, help="workers per throughput run (4)")
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs per figure, best kept (3)")
    ap.add_argument("--lines", type=int, default=60, help="lines per live-log latency figure (60)")
    ap.add_argument("--before", metavar="DIR",
                    help="also measure this older checkout (with its own .venv), interleaved")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    if args.before:
        return compare(args)
    os.environ.setdefault("TINYTOWN_HEARTBEAT_SECS", "5")
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        town = Town.init(Path(tmp) / "town", name="bench")
        rq_ = RQ(town.config.redis_url(), Path(tmp))
        try:
            import rq  # noqa: PLC0415  (bench extra)
            print(describe(town, rq=rq.__version__))
            w = args.workers
            town.spawn("fn", fn=lambda task: None, idle_timeout=0)
            town.spawn("cat", cli="cat", idle_timeout=0)
            lat = {"function agent": dispatch_latency(town, "fn", args.latency),
                   "process agent (cat)": dispatch_latency(town, "cat", args.latency)}
            rq_.start(1)
            lat["rq SimpleWorker"] = rq_.latency(args.latency)
            rq_.stop()
            print(f"\nDispatch latency, assign -> running (ms, {args.latency} probes, idle agent)")
            print(f"  {'':<24}{'p50':>8}{'p99':>8}")
            for label, values in lat.items():
                print(f"  {label:<24}{pct(values, 50):>8.2f}{pct(values, 99):>8.2f}")

            names = {kind: [f"{kind}{i}" for i in range(w)] for kind in ("true", "cat", "f")}
            for i in range(w):
                town.spawn(f"true{i}", cli="true", idle_timeout=0)
                town.spawn(f"cat{i}", cli="cat", idle_timeout=0)
                town.spawn(f"f{i}", fn=lambda task: None, idle_timeout=0)
            rates = {f"{w} process agents (true)": [], f"{w} process agents (cat)": [],
                     f"{w} function agents": []}
            rq_rates = []
            rq_.start(w)
            cpu: dict[str, dict[str, float]] = {}
            for _ in range(args.repeat):  # interleaved, so load drift hits every variant alike
                for label, kind in zip(rates, ("true", "cat", "f")):
                    rate, use = town_throughput(town, names[kind], args.n)
                    rates[label].append(rate)
                    if rate >= max(rates[label]):
                        cpu[label] = use
                rate, use = rq_.throughput(args.n, [town.server.pid()] if town.server else [])
                rq_rates.append(rate)
                if rate >= max(rq_rates):
                    cpu[f"rq {w} SimpleWorkers"] = use
            rq_.stop()
            rates = {label: max(r) for label, r in rates.items()}
            rq_rate = max(rq_rates)
            print(f"\nThroughput, {args.n} no-op tasks over {w} workers (tasks/s, best of "
                  f"{args.repeat}; ratio = ours / rq)")
            for label, rate in rates.items():
                print(f"  {label:<28}{rate:>10.0f}{rate / rq_rate:>9.2f}x")
            print(f"  {f'rq {w} SimpleWorkers':<28}{rq_rate:>10.0f}{1:>9.2f}x")
            print("\nCPU ms per task in the best run (workers / their commands / server / this process;"
                  " rq: its polling loop)")
            for label, use in cpu.items():
                print(f"  {label:<28}" + " / ".join(f"{use[k]:.2f}" for k in
                                                    ("workers", "commands", "server", "bench")))

            if args.lines:
                printer = Path(tmp) / "printer.py"
                printer.write_text(PRINTER)
                town.spawn("printer", cli=f"{sys.executable} {printer} {args.lines}", idle_timeout=0)
                town.spawn("fprinter", fn=_printer_fn(args.lines), idle_timeout=0)
                live = {"command agent": live_log_latency(town, "printer", args.lines),
                        "function agent": live_log_latency(town, "fprinter", args.lines)}
                print(f"\nLive-log latency, print -> readable in task_log (s, {args.lines} lines)")
                for label, values in live.items():
                    print(f"  {label:<24}p50 {pct(values, 50):.3f}  p99 {pct(values, 99):.3f}")
            fn50, proc50 = pct(lat["function agent"], 50), pct(lat["process agent (cat)"], 50)
            ratio = rates[f"{w} process agents (true)"] / rq_rate
            aims = [(fn50 < AIM_FN_P50_MS, f"function agent p50 dispatch < {AIM_FN_P50_MS:g} ms (measured {fn50:.2f})"),
                    (proc50 < AIM_PROC_P50_MS, f"process agent p50 dispatch < {AIM_PROC_P50_MS:g} ms (measured {proc50:.2f})"),
                    (ratio >= AIM_THROUGHPUT_RATIO, f"process-agent throughput >= {AIM_THROUGHPUT_RATIO:g}x rq "
                                                    f"(measured {ratio:.2f}x)")]
            print("\nAims")
            for ok, text in aims:
                print(f"  [{'PASS' if ok else 'MISS'}] {text}")
            return 0 if all(ok for ok, _ in aims) else 1
        finally:
            rq_.stop()
            town.shutdown()


if __name__ == "__main__":
    sys.exit(main())
