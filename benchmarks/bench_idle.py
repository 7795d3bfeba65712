#!/usr/bin/env python
"""Idle benchmark: what N idle agents cost, and how fast an idle agent hears something.

One managed server (a town made with ``Town.init`` in a temporary directory, shut down at
the end); N command agents (command ``cat``) are spawned, then left idle. Two ways:
``process`` — ``spawn`` one at a time, a worker process each; ``shared`` — one
``spawn_many(..., shared=True)``: every worker in the town's shared worker process.

* **spawn** — wall seconds until all N are ``idle``;
* **idle CPU** — over ``--secs`` seconds of nothing to do: CPU of the worker processes and
  of the server, as a share of one core, and the commands the server ran per second
  (``INFO stats``; this script's own two INFO calls are taken off);
* **memory** — the worker processes' RSS summed, and their PSS (``/proc/PID/smaps_rollup``:
  shared pages divided among the processes sharing them — what they really add);
* **dispatch** — assign → ``started_at`` (written by the worker's take step), one task at a
  time to a random agent of the N, p50/p99 over ``--dispatch`` probes, beside the same in a
  town with one agent (the aim: p99 within 1.5× of it);
* **wake latency** — from an urgent message sent to an idle agent to its urgent list being
  empty (the worker took it), and from ``kill`` to the agent's worker being gone (its
  process exits; in the shared process, its threads end); p50/max over ``--probes``.

**Before/after in one sitting** (``--before DIR``: a checkout of an older commit with its
own ``.venv``): the same measurement runs in a subprocess of each tree, one after the other,
and both are printed with their ratio.

Run::

    .venv/bin/python benchmarks/bench_idle.py                  # --agents 20 --secs 30, both ways
    .venv/bin/python benchmarks/bench_idle.py --agents 100 --mode shared
    .venv/bin/python benchmarks/bench_idle.py --before /work/wt/base --agents 50 --mode process
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
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve()
# --src TREE (the measuring subprocess of a before/after run) imports that tree's package
_SRC = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(HERE.parents[1])
sys.path.insert(0, _SRC)
sys.path.insert(1, str(HERE.parent))
from tinytown_nb.core import Town  # noqa: E402
from _machine import describe  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_secs(pids: set[int]) -> float:
    """CPU seconds (user + system) the processes have used so far, from /proc."""
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / TICK
    return total


def memory_mib(pids: set[int]) -> tuple[float, float]:
    """(RSS, PSS) of the processes summed, in MiB."""
    rss = pss = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    kib = int(rest.split()[0]) / 1024
                    rss, pss = (rss + kib, pss) if name == "Rss" else (rss, pss + kib)
        except OSError:
            continue
    return rss, pss


def worker_pids(town: Town, names: list[str]) -> set[int]:
    pids = set()
    for name in names:
        pid = town.redis.hget(town.keys.worker(town.agent(name).id), "pid")
        if pid:
            pids.add(int(pid))
    return pids


def commands_processed(town: Town) -> int:
    return int(town.redis.info("stats")["total_commands_processed"])


def dispatch_ms(town: Town, names: list[str], n: int, seed: int = 7) -> list[float]:
    """ms from just before assign() to the task's started_at, one task at a time to a
    random idle agent (10 warm-up probes first)."""
    rng = random.Random(seed)
    out = []
    for i in range(n + 10):
        name = rng.choice(names)
        t0 = datetime.now(timezone.utc)
        task = town.wait(task=town.assign(name, f"probe {i}"), timeout=30)
        town.wait(name, timeout=30)  # idle again before the next probe
        if i >= 10:
            out.append((task.started_at - t0).total_seconds() * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def spawn_all(town: Town, names: list[str], mode: str) -> None:
    if mode == "shared":
        town.spawn_many(names, cli="cat")
    else:
        for name in names:
            town.spawn(name, cli="cat")


def gone(pid: int, threads: set[int] | None) -> bool:
    """The worker is gone: its process exited, or (shared) these threads ended."""
    try:
        if threads is None:
            return "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
        return not threads & {int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()}
    except OSError:
        return True


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        town = Town.init(Path(tmp) / "town", name="idle")
        try:
            names = [f"a{i}" for i in range(args.agents)]
            t0 = time.perf_counter()
            spawn_all(town, names, args.mode)
            spawn = time.perf_counter() - t0
            time.sleep(3)  # let every worker settle into its idle wait
            pids = worker_pids(town, names)
            server = {town.server.pid()} if town.server and town.server.pid() else set()
            cpu0, srv0, cmd0, t0 = cpu_secs(pids), cpu_secs(server), commands_processed(town), \
                time.perf_counter()
            time.sleep(args.secs)
            cpu1, srv1, cmd1, t1 = cpu_secs(pids), cpu_secs(server), commands_processed(town), \
                time.perf_counter()
            rss, pss = memory_mib(pids)
            dispatch = dispatch_ms(town, names, args.dispatch) if args.dispatch else [0.0]
            urgent = []
            for i in range(args.probes):
                agent = town.agent(names[i % len(names)])
                t = time.perf_counter()
                town.send(agent.name, f"urgent probe {i}", kind="info", urgent=True)
                while town.redis.llen(town.keys.urgent(agent.id)):
                    time.sleep(0.001)
                urgent.append((time.perf_counter() - t) * 1000)
                time.sleep(0.2)
            kills = []
            for name in names[:args.probes]:
                pid = int(town.redis.hget(town.keys.worker(town.agent(name).id), "pid"))
                threads = _agent_threads(pid, name) if args.mode == "shared" else None
                t = time.perf_counter()
                town.kill(name)
                while not gone(pid, threads):
                    time.sleep(0.002)
                kills.append((time.perf_counter() - t) * 1000)
            window = t1 - t0
            return {"describe": describe(town), "agents": args.agents, "processes": len(pids),
                    "spawn_s": spawn, "workers_core": (cpu1 - cpu0) / window,
                    "server_core": (srv1 - srv0) / window,
                    "commands_per_s": (cmd1 - cmd0 - 1) / window, "rss_mib": rss, "pss_mib": pss,
                    "dispatch_p50_ms": statistics.median(dispatch), "dispatch_p99_ms": pct(dispatch, 99),
                    "urgent_p50_ms": statistics.median(urgent), "urgent_max_ms": max(urgent),
                    "kill_p50_ms": statistics.median(kills), "kill_max_ms": max(kills)}
        finally:
            town.shutdown()


def _agent_threads(pid: int, name: str) -> set[int]:
    """The thread ids of one agent's worker in the shared process (named after the agent;
    Linux truncates thread names to 15 bytes, so the loop thread ``tt-agent-NAME``)."""
    want = f"tt-agent-{name}"[:15]
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == want:
                found.add(int(task.name))
        except OSError:
            continue
    return found


ROWS = [("spawn (s)", "spawn_s", "{:.2f}"), ("worker processes", "processes", "{:d}"),
        ("idle CPU, workers (cores)", "workers_core", "{:.4f}"),
        ("idle CPU, server (cores)", "server_core", "{:.4f}"),
        ("server commands/s while idle", "commands_per_s", "{:.1f}"),
        ("RSS of workers (MiB)", "rss_mib", "{:.0f}"), ("PSS of workers (MiB)", "pss_mib", "{:.0f}"),
        ("dispatch p50 (ms)", "dispatch_p50_ms", "{:.2f}"),
        ("dispatch p99 (ms)", "dispatch_p99_ms", "{:.2f}"),
        ("urgent message taken, p50 (ms)", "urgent_p50_ms", "{:.1f}"),
        ("urgent message taken, max (ms)", "urgent_max_ms", "{:.1f}"),
        ("kill → worker gone, p50 (ms)", "kill_p50_ms", "{:.1f}"),
        ("kill → worker gone, max (ms)", "kill_max_ms", "{:.1f}")]


def run_tree(tree: Path, args: argparse.Namespace, mode: str, agents: int | None = None) -> dict:
    python = tree / ".venv" / "bin" / "python"
    n = agents or args.agents
    out = subprocess.run([str(python if python.exists() else sys.executable), str(HERE), "--measure",
                          "--src", str(tree), "--agents", str(n), "--secs", str(args.secs),
                          "--probes", str(min(args.probes, n)), "--dispatch", str(args.dispatch),
                          "--mode", mode],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(columns: dict[str, dict]) -> None:
    print(f"{'':34}" + "".join(f"{name:>16}" for name in columns))
    for label, key, fmt in ROWS:
        print(f"{label:34}" + "".join(f"{fmt.format(c[key]):>16}" for c in columns.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--secs", type=float, default=30.0)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--dispatch", type=int, default=200, help="dispatch probes (0: none)")
    parser.add_argument("--mode", choices=["process", "shared", "both"], default="both")
    parser.add_argument("--before", type=Path, help="an older checkout (with .venv) to compare")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.probes = min(args.probes, args.agents)
    if args.measure:
        print(json.dumps(measure(args)))
        return
    here = HERE.parents[1]
    modes = ["process", "shared"] if args.mode == "both" else [args.mode]
    columns: dict[str, dict] = {}
    if args.before:
        columns["before"] = run_tree(args.before.resolve(), args, "process")
    for mode in modes:
        columns[f"{mode}, 1 agent"] = run_tree(here, args, mode, agents=1)
        columns[f"{mode}, {args.agents}"] = run_tree(here, args, mode)
    print(next(iter(columns.values()))["describe"])
    print(f"idle command agents (cat), {args.secs:.0f} s idle window, {args.dispatch} dispatch probes\n")
    table(columns)
    print()
    for mode in modes:
        one, many = columns[f"{mode}, 1 agent"], columns[f"{mode}, {args.agents}"]
        ratio = many["dispatch_p99_ms"] / one["dispatch_p99_ms"] if one["dispatch_p99_ms"] else float("nan")
        print(f"{mode}: dispatch p99 to one of {args.agents} = {ratio:.2f}× one agent's (aim ≤ 1.5); "
              f"idle CPU {many['workers_core']:.4f} core (aim ≤ 0.01 at 100); "
              f"RSS {many['rss_mib']:.0f} MiB (aim ≤ 1024 at 100); spawn {many['spawn_s']:.1f} s (aim ≤ 5 at 100)")


if __name__ == "__main__":
    main()
