"""How the magics' results display: records as small tables, a Town as its summary, and
the progress bar of a blocking wait.

:data:`FORMATTERS` lists the IPython display formatters the extension registers (an
Agent, Task or Message as a two-column HTML table — their text is the models' one-line
repr; a Town as a few lines: directory, Redis, agents and tasks by state). :func:`wait_with_progress` is
``Town.wait`` with the bar of :func:`tinytown_nb.widgets.watch`.

Example::

    for mime, typ, fn in FORMATTERS:
        ip.display_formatter.formatters[mime].for_type(typ, fn)
"""

from __future__ import annotations

import time
from html import escape
from typing import Any, Callable

from .. import frames
from ..core import SUPERVISOR_ID, Agent, Message, Task, Town
from ..core.errors import WaitTimeout
from ..core.models import TaskState, format_duration

__all__ = ["FORMATTERS", "NAME_OF", "counted", "record_html", "town_html",
           "town_text", "wait_with_progress"]

#: Agent id → name, as last seen by a magic; lets a Task's repr name its assignee offline.
NAME_OF: dict[str, str] = {}


def _record_rows(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, Agent):
        return [("agent", obj.display_label), ("id", obj.id), ("state", obj.state.value),
                ("cli", obj.cli), ("current task", obj.current_task or ""),
                ("tasks completed", obj.tasks_completed), ("rounds", obj.rounds_completed),
                ("created", obj.created_at.isoformat(timespec="seconds"))]
    if isinstance(obj, Task):
        return [("task", obj.summary(100)), ("id", obj.id), ("state", obj.state.value),
                ("assigned to", NAME_OF.get(obj.assigned_to or "", obj.assigned_to or "")),
                ("tags", ", ".join(obj.tags)),
                ("result", obj.result or ""),
                ("duration", format_duration(obj.duration)),
                ("attempts", obj.attempts if obj.attempts > 1 else ""),
                ("cost", f"${obj.usage.cost_usd:.4f}" if obj.usage and obj.usage.cost_usd is not None else ""),
                ("tokens", f"{obj.usage.input_tokens:,} in / {obj.usage.output_tokens:,} out"
                 if obj.usage else "")]
    return [("message", obj.summary(100)), ("id", obj.id), ("type", obj.type),
            ("to", "supervisor" if obj.to == SUPERVISOR_ID else obj.to),
            ("priority", obj.priority.value)]


def record_html(obj: Any) -> str:
    """A small two-column table for an Agent, Task or Message (empty rows left out).

    >>> html = record_html(Task.new("Write <b>docs</b>"))
    >>> html.startswith("<table><tr><th style='text-align:left'>task</th>"), "&lt;b&gt;" in html
    (True, True)
    """
    rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>"
                   f"{escape(str(v))}</td></tr>" for k, v in _record_rows(obj) if v != "")
    return f"<table>{rows}</table>"


def counted(counts: Any) -> str:
    """``3 (2 completed, 1 running)`` from a state → count Series (zeros left out).

    >>> import pandas as pd
    >>> counted(pd.Series({"completed": 2, "failed": 0, "running": 1}))
    '3 (2 completed, 1 running)'
    """
    parts = ", ".join(f"{int(n)} {state}" for state, n in counts.items() if n)
    return f"{int(counts.sum())}" + (f" ({parts})" if parts else "")


def _town_rows(town: Town) -> list[tuple[str, str]]:
    """The summary a Town displays as: directory, Redis (password redacted), agents and
    tasks by state, backlog and inbox (from :func:`frames.status_frame`)."""
    rows = [("directory", str(town.root)), ("redis", town.url)]
    try:
        status = frames.status_frame(town).iloc[0]
    except Exception as exc:  # a display must not fail: say why there are no counts
        return rows + [("status", f"unavailable ({type(exc).__name__}: {exc})")]
    return rows + [("agents", counted(status["agents"])), ("tasks", counted(status["tasks"])),
                   ("waiting", f"backlog {int(status['backlog', 'tasks'])}, "
                               f"inbox {int(status['inbox', 'messages'])}")]


def town_html(town: Town) -> str:
    """The Town summary as an HTML table captioned with its name. ``town_html(town)``"""
    rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>"
                   f"{escape(v)}</td></tr>" for k, v in _town_rows(town))
    return f"<table><caption style='text-align:left'>Town {escape(repr(town.name))}</caption>{rows}</table>"


def town_text(town: Town, p: Any, cycle: bool) -> None:
    """A few lines for a Town shown on its own; its one-line repr inside a list or dict.

    Example: ``IPython.lib.pretty.pretty(town)`` once the extension registered it.
    """
    if cycle or len(getattr(p, "stack", ())) > 1:
        p.text(repr(town))
        return
    p.text(f"Town {town.name!r}")
    for key, value in _town_rows(town):
        p.break_()
        p.text(f"  {key + ':':<11}{value}")


#: ``(mime type, class, function)`` for each display formatter the extension registers.
FORMATTERS: tuple[tuple[str, type, Callable], ...] = (
    *(("text/html", typ, record_html) for typ in (Agent, Task, Message)),
    ("text/html", Town, town_html),
    ("text/plain", Town, town_text),
)


def wait_with_progress(town: Town, agent: str | None, task: str | None, all_: bool,
                       timeout: float) -> Any:
    """``town.wait(...)`` showing the progress bar of :func:`widgets.watch` (a widget in a
    kernel, saved as its label only, so a headless run records the same output every time;
    text lines elsewhere), redrawn at most twice a second while it waits.

    With ``all_`` it returns a :class:`~tinytown_nb.widgets.Summary` (counts by state,
    elapsed), not every task.

    Example: ``wait_with_progress(town, "dev", None, False, 60)`` returns the idle Agent.
    """
    from ..widgets import Progress, Summary

    if task:
        task = town.task(task).id  # resolved once: a prefix is looked up a single time
        label = f"until task {task[:4]} finishes"

        def look() -> tuple[int, int, str]:
            return 0, 1, f"task {task[:4]} is {town.task(task).state.value}"
    elif agent:
        found = town.agent(agent)
        agent, label = found.id, f"until {found.name} is idle"

        def look() -> tuple[int, int, str]:
            return 0, 1, f"{found.name} is {town.agent(agent).state.value}"
    else:
        label = "until all tasks finish"

        def look() -> tuple[int, int, str]:
            c = town.counts()
            return c.finished_tasks, c.total_tasks, f"{c.finished_tasks}/{c.total_tasks} tasks finished"

    bar, last, start = Progress(label), [0.0, (0, 1, "")], time.monotonic()

    def progress() -> None:
        if time.monotonic() - last[0] >= 0.5:  # a busy town checks far more often than that
            last[:] = [time.monotonic(), look()]
            bar.update(*last[1])

    try:
        result = town.wait(agent, task=task, all=all_, timeout=timeout, progress=progress)
    except WaitTimeout:
        done, total, text = look()
        bar.update(done, total, f"{text} (timed out)", final=True)
        raise
    if task:
        bar.update(1, 1, f"task {task[:4]} {result.state.value}", final=True)
    elif agent:
        bar.update(1, 1, f"{result.name} is {result.state.value}", final=True)
    else:
        counts = town.counts()
        done = counts.finished_tasks
        bar.update(done, counts.total_tasks, f"{done}/{counts.total_tasks} tasks finished", final=True)
        return Summary(town.name, "all tasks finished", counts, time.monotonic() - start)
    return result
