"""What ``ttnb`` prints: one-line forms of the core's records, task details, and JSON.

Lines follow ``tt``'s layout (``  <label> (<short>) - <State>`` for an agent, an icon and
the short id for a task); ``--json`` output is :func:`plain` of the records.

>>> task = Task.new("Write the README", id="3f2a1b7c-0000-4000-8000-000000000000")
>>> task_line(task, {})
'  ⏳ 3f2a  Write the README  → unassigned'
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

from ..core.events import Event
from ..core.keys import SUPERVISOR_ID
from ..core.models import Agent, Message, Task
from ..core import AgentWorktree, Budget, Reclaimed, Usage, UsageRow
from ..core.town import Town

__all__ = ["CATEGORY_LETTERS", "PREVIEW", "TASK_ICONS", "agent_labels", "agent_line", "cut",
           "dump", "dump_pages", "event_line", "message_line", "plain", "reclaimed_line", "show",
           "task_details", "task_line", "ts", "usage_table", "usage_text", "worktree_line"]

TASK_ICONS = {"pending": "⏳", "assigned": "📌", "running": "🔄",
              "completed": "✅", "failed": "❌", "cancelled": "🚫"}
CATEGORY_LETTERS = {"task": "T", "query": "Q", "informational": "I", "confirmation": "C",
                    "other": "O"}
PREVIEW = 10  # messages shown per inbox


def plain(obj: Any) -> Any:
    """A JSON-ready form of the core's records (Agent, Task, Message, Event, lists, dicts).

    >>> plain([Event("1-0", "agent_spawned", {"name": "dev"})])
    [{'id': '1-0', 'type': 'agent_spawned', 'data': {'name': 'dev'}}]
    """
    if isinstance(obj, Agent):
        return {**dataclasses.asdict(obj), "short_id": obj.short_id, "label": obj.display_label}
    if isinstance(obj, Task):
        return {**dataclasses.asdict(obj), "short_id": obj.short_id}
    if isinstance(obj, Message):
        return {**obj.to_dict(), "category": obj.category, "text": obj.text}
    if isinstance(obj, Event):
        return {"id": obj.id, "type": obj.type, "data": obj.data}
    if isinstance(obj, Budget):
        return {"usd": obj.usd, "spent_usd": obj.spent_usd, "exceeded": obj.exceeded,
                "exceeded_at": obj.exceeded_at}
    if isinstance(obj, (Reclaimed, AgentWorktree, UsageRow, Usage)):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def dump(obj: Any, *, compact: bool = False) -> None:
    """Print ``obj`` as JSON (indented, or one line with ``compact``).

    >>> dump({"backlog": 0, "root": Path("/tmp/t")}, compact=True)
    {"backlog": 0, "root": "/tmp/t"}
    """
    text = json.dumps(plain(obj), default=_json_default, ensure_ascii=False,
                      indent=None if compact else 2)
    print(text, flush=True)


def dump_pages(pages: Iterable[list[Any]]) -> None:
    """Print the items of ``pages`` as one indented JSON list, a page at a time, exactly
    as :func:`dump` prints the whole list.

    >>> dump_pages([[{"a": 1}], [{"a": 2}]])
    [
      {
        "a": 1
      },
      {
        "a": 2
      }
    ]
    """
    first = True
    for items in pages:
        for item in items:
            text = json.dumps(plain(item), default=_json_default, ensure_ascii=False, indent=2)
            # (split on "\n" only: JSON escapes newlines, but not U+2028, which splitlines cuts)
            print(("[\n" if first else ",\n") + "\n".join("  " + line for line in text.split("\n")),
                  end="")
            first = False
        sys.stdout.flush()
    print("[]" if first else "\n]", flush=True)


def agent_line(a: Agent) -> str:
    """``  <label> (<short>) - <State>``, as ``tt list`` prints an agent.

    >>> agent_line(Agent.new("dev", "claude", nickname="Robert",
    ...                      id="3f2a1b7c-0000-4000-8000-000000000000"))
    '  Robert [dev] (3f2a) - Starting'
    """
    return f"  {a.display_label} ({a.short_id}) - {a.state.debug_name}"


def agent_labels(town: Town) -> dict[str, str]:
    """Agent id → ``label (short)`` for printing assignees and senders (and the supervisor).

    Example: ``agent_labels(town)[agent.id]`` is ``'Robert [dev] (3f2a)'``.
    """
    out = {a.id: f"{a.display_label} ({a.short_id})" for a in town.agents()}
    out[SUPERVISOR_ID] = "supervisor"
    return out


def cut(text: str, n: int) -> str:
    """``text`` on one line, at most ``n`` characters.

    >>> cut("Write the\\nREADME now", 12)
    'Write the R…'
    """
    line = " ".join(text.split())
    return line if len(line) <= n else line[: n - 1] + "…"


def task_line(t: Task, labels: dict[str, str]) -> str:
    """Icon, short id, description and assignee (its label from ``labels``); see the module
    example."""
    who = labels.get(t.assigned_to, t.assigned_to[:4]) if t.assigned_to else "unassigned"
    return f"  {TASK_ICONS.get(t.state.value, '•')} {t.short_id}  {cut(t.description, 50)}  → {who}"


def task_details(t: Task, labels: dict[str, str]) -> list[str]:
    """The lines of ``ttnb task show``: fields, then the description and result.

    >>> task = Task.new("Write it", id="3f2a1b7c-0000-4000-8000-000000000000")
    >>> task_details(task, {})[:2]
    ['Task:        3f2a1b7c-0000-4000-8000-000000000000', 'State:       ⏳ Pending']
    """
    who = labels.get(t.assigned_to, t.assigned_to) if t.assigned_to else "unassigned"
    rows = [("Task", t.id), ("State", f"{TASK_ICONS.get(t.state.value, '')} {t.state.debug_name}"),
            ("Assigned to", who), ("Tags", ", ".join(t.tags) or "-"),
            ("Created", t.created_at), ("Updated", t.updated_at),
            ("Started", t.started_at), ("Completed", t.completed_at),
            ("Attempts", t.attempts or None), ("Usage", usage_text(t.usage) if t.usage else None)]
    lines = [f"{k + ':':<13}{ts(v) if isinstance(v, datetime) else v}" for k, v in rows if v is not None]
    lines += ["Description:", *("  " + ln for ln in t.description.splitlines())]
    if t.result is not None:
        lines += ["Result:", *("  " + ln for ln in t.result.splitlines())]
    return lines


def usage_text(u: Usage) -> str:
    """Tokens and cost on one line.

    >>> usage_text(Usage(input_tokens=1200, output_tokens=340, cost_usd=0.0123, model="m"))
    '1,200 in / 340 out tokens, $0.0123 (m)'
    """
    cost = f", ${u.cost_usd:.4f}" if u.cost_usd is not None else ""
    return f"{u.input_tokens:,} in / {u.output_tokens:,} out tokens{cost}" + (f" ({u.model})" if u.model else "")


def usage_table(rows: list[UsageRow], by: str) -> list[str]:
    """The lines of ``ttnb cost``: one row per agent, tag or task, then the total.

    >>> usage_table([UsageRow("a1", "dev", Usage(10, 5, cost_usd=0.5), 2)], "agent")[1]
    'dev                           2         10          5     0.5000'
    """
    head = f"{by:<24}{'tasks':>7}{'in':>11}{'out':>11}{'cost $':>11}"
    lines = [head]
    total = Usage()
    for r in rows:
        total = total + r.usage
        cost = f"{r.usage.cost_usd:.4f}" if r.usage.cost_usd is not None else "-"
        lines.append(f"{cut(r.label, 24):<24}{r.tasks:>7}{r.usage.input_tokens:>11,}"
                     f"{r.usage.output_tokens:>11,}{cost:>11}")
    if len(rows) > 1:
        cost = f"{total.cost_usd:.4f}" if total.cost_usd is not None else "-"
        lines.append(f"{'total':<24}{'':>7}{total.input_tokens:>11,}{total.output_tokens:>11,}{cost:>11}")
    return lines


def ts(dt: datetime | None) -> str:
    """A timestamp to the second, ``-`` for none.

    >>> ts(datetime(2025, 1, 2, 3, 4, 5)), ts(None)
    ('2025-01-02 03:04:05', '-')
    """
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def event_line(e: Event) -> str:
    """Time, type and message of an event.

    >>> event_line(Event("1-0", "agent_spawned", {"message": "dev spawned"}))
    '-  agent_spawned        dev spawned'
    """
    return f"{ts(e.timestamp)}  {e.type:<20} {e.message}"


def message_line(m: Message, labels: dict[str, str]) -> str:
    """``    [T] from <sender>: <text>``, the category letter first.

    Example: ``message_line(msg, agent_labels(town))`` is ``'    [Q] from supervisor: ready?'``.
    """
    letter = CATEGORY_LETTERS.get(m.category, "?")
    sender = labels.get(m.sender, m.sender[:4])
    return f"    [{letter}] from {sender}: {cut(m.summary(), 100)}"


def reclaimed_line(r: Reclaimed) -> str:
    """What ``ttnb reclaim`` did with one task or message, and where it went.

    >>> reclaimed_line(Reclaimed("dev", "inbox", "moved", task_id="3f2a1b7c", to="qa"))
    '  moved      task 3f2a (inbox of dev) → qa'
    """
    what = f"task {r.task_id[:4]}" if r.task_id else (
        f"{r.message.type} message: {cut(r.message.summary(), 60)}" if r.message else "unreadable message")
    return f"  {r.action:<10} {what} ({r.source} of {r.agent})" + (f" → {r.to}" if r.to else "")


def worktree_line(w: AgentWorktree) -> str:
    """``  <agent>  <branch> from <base>: <n> ahead, <n> behind, <n> uncommitted  <path>``.

    >>> w = AgentWorktree("dev", Path("/t/.tt/worktrees/dev"), "tt/dev", "main", "9fc", Path("/t"),
    ...                   None, ahead=2, behind=0, changed=("a.py",), merged=False)
    >>> worktree_line(w)
    '  dev  tt/dev from main: 2 ahead, 0 behind, 1 uncommitted  /t/.tt/worktrees/dev'
    """
    where = ("(directory gone)" if not w.exists else
             f"{w.ahead} ahead, {w.behind} behind, {len(w.changed)} uncommitted"
             if w.ahead is not None else "(cannot compare)")
    return f"  {w.agent}  {w.branch} from {w.base}: {where}  {w.path}"


def show(result: Any, labels: dict[str, str] | None = None, empty: str = "Nothing to do.") -> None:
    """Print what a core method returned: an Agent, Task, Reclaimed item or a list of them
    (``empty`` for nothing).

    >>> show([], empty="No tasks.")
    No tasks.
    """
    if result is None or result == []:
        if empty:
            print(empty)
    elif isinstance(result, Agent):
        print(agent_line(result))
    elif isinstance(result, Task):
        print(task_line(result, labels or {}))
    elif isinstance(result, Reclaimed):
        print(reclaimed_line(result))
    elif isinstance(result, (list, tuple)):
        for item in result:
            show(item, labels, empty="")
    else:
        print(result)
