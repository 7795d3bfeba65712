"""A two-minute tour from the terminal: ``python -m tinytown_nb.demo [DIR]``.

Creates a town (its own Redis under ``DIR/.tt``), spawns a Python-function agent and a
command agent, assigns work, waits for it and prints what happened. Nothing needs an AI
CLI or network access.

Example::

    $ python -m tinytown_nb.demo /tmp/demo-town
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from .core import Town


def shout(task) -> str:
    """A function agent: upper-cases its task text."""
    return task.description.upper()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinytown_nb.demo", description=__doc__.split("\n")[0])
    parser.add_argument("dir", nargs="?", help="town directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="tinytown-demo-")
    town = Town.init(root, name="demo")
    print(f"town {town.name!r} at {town.root} on {town.url}")
    try:
        town.spawn("shouter", fn=shout, replace=True)
        # A command agent: reads the task on stdin, its stdout becomes the result.
        town.spawn("counter", cli=f"{sys.executable} -c \"import sys; print(len(sys.stdin.read().split()), 'words')\"",
                   replace=True)
        tasks = [town.assign("shouter", "hello from tinytown_nb"),
                 town.assign("counter", "count the words in this sentence please")]
        for task in tasks:
            done = town.wait(task=task, timeout=30)
            print(f"  {done.short_id}  {done.state.value:<9}  {done.description!r} -> {done.result!r}")
        print("agents:")
        for agent in town.agents():
            print(f"  {agent.display_label} ({agent.short_id}) - {agent.state.debug_name}, "
                  f"{agent.tasks_completed} done")
        town.stop_all()
    finally:
        town.shutdown()
    print(f"done; the town's data stays in {town.root}/.tt (Town.connect({str(town.root)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
