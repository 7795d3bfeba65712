"""Kill storm: command agents work through many tasks while their worker processes are
killed with SIGKILL at random moments, recovered and restarted. At the end every task must
be completed, recorded terminal exactly once (one terminal event), and no message left in
any inbox or processing list. Prints the figures (tasks, kills, lost, duplicated).

    .venv/bin/python benchmarks/killstorm.py [--agents 6] [--tasks 2000] [--kills 60]

Exit status 0 when nothing was lost or duplicated.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe

from tinytown_nb import Town
from tinytown_nb.core import TaskState


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="tt-killstorm-")) / "town"
    town = Town.init(root, name="storm")
    print(describe(town))
    work = root.parent / "work.py"  # a short command: reads the task, sleeps a little, answers
    work.write_text("import sys, time, random\ntext = sys.stdin.read()\n"
                    "time.sleep(random.uniform(0.0, 0.05))\nprint('done', text.strip())\n")
    cmd = f"{shlex.quote(sys.executable)} {work}"
    names = [f"w{i}" for i in range(args.agents)]
    for name in names:
        town.spawn(name, cli=cmd)
    per_agent = args.tasks // args.agents
    tasks = [t for name in names for t in town.assign_many(name, [f"{name} task {i}" for i in range(per_agent)])]
    started = time.monotonic()
    kills = 0
    while kills < args.kills:
        time.sleep(rng.uniform(0.05, 0.4))
        name = rng.choice(names)
        pid = town.redis.hget(town.keys.worker(town.agent(name).id), "pid")
        if not (pid and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            continue
        kills += 1
        time.sleep(rng.uniform(0.0, 0.1))
        for agent in town.recover():
            town.restart(agent.name)
        if town.counts().open_tasks == 0:
            break
    for agent in town.recover():
        town.restart(agent.name)
    final = town.wait(all=True, timeout=600)
    elapsed = time.monotonic() - started
    by_id = {t.id: t for t in final}
    lost = [t.id for t in tasks if by_id.get(t.id) is None or by_id[t.id].state is not TaskState.COMPLETED]
    # every completion recorded bumps its agent's tasks_completed in the same atomic step:
    # a task recorded terminal twice would show as more completions than completed tasks
    recorded = sum(a.tasks_completed for a in town.agents())
    duplicated = recorded - (len(tasks) - len(lost))
    leftover = sum(town.redis.llen(key) for kind in ("inbox", "urgent", "processing")
                   for key in town.redis.scan_iter(match=town.keys.pattern(kind)))
    print(f"{len(tasks)} tasks, {args.agents} command agents, {kills} worker kills (SIGKILL) "
          f"with recover + restart, {elapsed:.1f} s")
    print(f"lost (not completed): {len(lost)}; completions recorded twice: {duplicated}; "
          f"messages left in inboxes or processing lists: {leftover}")
    town.shutdown()
    return 0 if not lost and duplicated == 0 and not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
