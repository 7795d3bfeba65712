#!/usr/bin/env python
"""Idle benchmark: what N idle agents cost, and how fast an idle agent hears something.

One managed server (a town made with ``Town.init`` in a temporary directory, shut down at
the end); N command agents (command ``cat``) are spawned, then left idle:

* **spawn** — wall seconds for ``spawn`` of all N (until every one is ``idle``);
* **idle CPU** — over ``--secs`` seconds of nothing to do: CPU of the worker processes and
  of the server, as a share of one core, and the commands the server ran per second
  (``INFO stats``; this script's own two INFO calls are taken off);
* **memory** — the worker processes' RSS summed, and their PSS (``/proc/PID/smaps_rollup``:
  shared pages divided among the processes sharing them — what they really add);
* **wake latency** — from an urgent message sent to an idle agent to its urgent list being
  empty (the worker took it), and from ``kill`` to the worker process being gone; p50/max
  over ``--probes`` probes.

**Before/after in one sitting** (``--before DIR``: a checkout of an older commit with its
own ``.venv``): the same measurement runs in a subprocess of each tree, one after the other,
and both are printed with their ratio.

Run::

    .venv/bin/python benchmarks/bench_idle.py                  # --agents 20 --secs 30
    .venv/bin/python benchmarks/bench_idle.py --before /work/wt/base --agents 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        town = Town.init(Path(tmp) / "town", name="idle")
        try:
            names = [f"a{i}" for i in range(args.agents)]
            t0 = time.perf_counter()
            for name in names:
                town.spawn(name, cli="cat")
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
                t = time.perf_counter()
                town.kill(name)
                while Path(f"/proc/{pid}").exists() and \
                        "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
                    time.sleep(0.002)
                kills.append((time.perf_counter() - t) * 1000)
            window = t1 - t0
            return {"describe": describe(town), "agents": args.agents, "processes": len(pids),
                    "spawn_s": spawn, "workers_core": (cpu1 - cpu0) / window,
                    "server_core": (srv1 - srv0) / window,
                    "commands_per_s": (cmd1 - cmd0 - 1) / window, "rss_mib": rss, "pss_mib": pss,
                    "urgent_p50_ms": statistics.median(urgent), "urgent_max_ms": max(urgent),
                    "kill_p50_ms": statistics.median(kills), "kill_max_ms": max(kills)}
        finally:
            town.shutdown()


ROWS = [("spawn (s)", "spawn_s", "{:.2f}"), ("worker processes", "processes", "{:d}"),
        ("idle CPU, workers (cores)", "workers_core", "{:.4f}"),
        ("idle CPU, server (cores)", "server_core", "{:.4f}"),
        ("server commands/s while idle", "commands_per_s", "{:.1f}"),
        ("RSS of workers (MiB)", "rss_mib", "{:.0f}"), ("PSS of workers (MiB)", "pss_mib", "{:.0f}"),
        ("urgent message taken, p50 (ms)", "urgent_p50_ms", "{:.1f}"),
        ("urgent message taken, max (ms)", "urgent_max_ms", "{:.1f}"),
        ("kill → worker gone, p50 (ms)", "kill_p50_ms", "{:.1f}"),
        ("kill → worker gone, max (ms)", "kill_max_ms", "{:.1f}")]


def run_tree(tree: Path, args: argparse.Namespace) -> dict:
    python = tree / ".venv" / "bin" / "python"
    out = subprocess.run([str(python if python.exists() else sys.executable), str(HERE), "--measure",
                          "--src", str(tree), "--agents", str(args.agents), "--secs", str(args.secs),
                          "--probes", str(args.probes)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--secs", type=float, default=30.0)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--before", type=Path, help="an older checkout (with .venv) to compare")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.probes = min(args.probes, args.agents)
    if args.measure:
        print(json.dumps(measure(args)))
        return
    if args.before:
        before, after = run_tree(args.before.resolve(), args), run_tree(HERE.parents[1], args)
        print(after["describe"])
        print(f"{args.agents} idle command agents, {args.secs:.0f} s idle window\n")
        print(f"{'':34} {'before':>10} {'after':>10} {'after/before':>13}")
        for label, key, fmt in ROWS:
            b, a = before[key], after[key]
            ratio = f"{a / b:.2f}" if b else "-"
            print(f"{label:34} {fmt.format(b):>10} {fmt.format(a):>10} {ratio:>13}")
        return
    result = measure(args)
    print(result["describe"])
    print(f"{args.agents} idle command agents, {args.secs:.0f} s idle window\n")
    for label, key, fmt in ROWS:
        print(f"{label:34} {fmt.format(result[key]):>10}")


if __name__ == "__main__":
    main()
