"""Shared part of the fake ``claude`` and ``codex`` executables (tests put tests/fakes first
on PATH; no real AI CLI is needed, and nothing goes over the network).

Both read the prompt on stdin, as the worker feeds AI CLIs, and obey directives written
anywhere in it (so a test steers them through a real task description):

    FAKE-RESULT: text      the final answer (default: "Done: <first prompt line>")
    FAKE-COST: 0.42        total_cost_usd (claude only; codex reports no cost)
    FAKE-TOKENS: 1200/340  input/output tokens reported
    FAKE-ERROR[: text]     the run fails: claude is_error result, codex turn.failed; exit 1
    FAKE-MALFORMED         a garbage (non-JSON) line in the middle of the output
    FAKE-SLEEP: 2.5        wait that long before the final report
    FAKE-LINES: 5          that many assistant lines, 0.2 s apart
    FAKE-REJECT-FLAGS      refuse the machine-readable flags (usage error on stderr, exit 2)
    FAKE-EXIT: 3           exit with this status whatever happened
    FAKE-COMPLETE          run `ttnb task complete $TINYTOWN_TASK_ID --result <result>`
                           itself, as a real agent would (ttnb must be on PATH)

``FAKE_CLI_DELAY`` (environment, seconds, default 0.02) is the pause between other lines.

Example::

    $ echo 'FAKE-RESULT: 42' | tests/fakes/claude --print --output-format stream-json --verbose
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

LINES_GAP = 0.2  # seconds between FAKE-LINES lines


@dataclass
class Script:
    """What the prompt's directives asked for."""

    result: str
    cost: float = 0.0123
    tokens: tuple[int, int] = (1200, 340)
    error: str | None = None
    malformed: bool = False
    sleep: float = 0.0
    lines: int = 0
    reject_flags: bool = False
    exit: int | None = None
    complete: bool = False


def _value(prompt: str, name: str) -> str | None:
    match = re.search(rf"FAKE-{name}:[ \t]*(.*)", prompt)
    return match.group(1).strip() if match else None


def _flag(prompt: str, name: str) -> bool:
    return re.search(rf"FAKE-{name}\b", prompt) is not None


def parse(prompt: str) -> Script:
    """The directives of a prompt (see the module docstring)."""
    first = next((line.strip() for line in prompt.splitlines() if line.strip()), "nothing")
    script = Script(result=_value(prompt, "RESULT") or f"Done: {first[:80]}")
    if (cost := _value(prompt, "COST")) is not None:
        script.cost = float(cost)
    if (tokens := _value(prompt, "TOKENS")) is not None:
        given, _, made = tokens.partition("/")
        script.tokens = (int(given), int(made or 0))
    if _flag(prompt, "ERROR"):
        script.error = _value(prompt, "ERROR") or "the fake CLI was told to fail (FAKE-ERROR)"
    script.malformed = _flag(prompt, "MALFORMED")
    script.sleep = float(_value(prompt, "SLEEP") or 0)
    script.lines = int(_value(prompt, "LINES") or 0)
    script.reject_flags = _flag(prompt, "REJECT-FLAGS")
    if (code := _value(prompt, "EXIT")) is not None:
        script.exit = int(code)
    script.complete = _flag(prompt, "COMPLETE")
    return script


def read_prompt() -> Script:
    return parse(sys.stdin.read())


def pause() -> None:
    time.sleep(float(os.environ.get("FAKE_CLI_DELAY", "0.02")))


def out(line: object, *, gap: bool = True) -> None:
    """Print one line (a dict as one JSON line) at once, then wait a little."""
    print(json.dumps(line, separators=(",", ":"), ensure_ascii=False) if isinstance(line, dict)
          else line, flush=True)
    if gap:
        pause()


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value``."""
    for i, word in enumerate(args):
        if word == name and i + 1 < len(args):
            return args[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def new_id() -> str:
    return str(uuid.uuid4())


def complete_task(result: str) -> tuple[int, str]:
    """Run ``ttnb task complete`` for this task, as an agent would; (exit status, output)."""
    task_id = os.environ.get("TINYTOWN_TASK_ID")
    if not task_id:
        return 1, "FAKE-COMPLETE: TINYTOWN_TASK_ID is not set"
    try:
        done = subprocess.run(["ttnb", "task", "complete", task_id, "--result", result],
                              capture_output=True, text=True, timeout=60)
    except OSError as exc:
        return 127, f"ttnb: {exc}"
    return done.returncode, (done.stdout + done.stderr).strip()


def progress_lines(script: Script) -> list[str]:
    return [f"Working on it: step {i} of {script.lines}" for i in range(1, script.lines + 1)]
