"""The markdown prompt an AI coding CLI gets for one piece of work (after spec §7.3).

Plain command agents never see this; they get the raw task text on stdin.

Example::

    >>> dev, task = Agent.new("dev", "claude"), Task.new("Fix the login bug")
    >>> msg = Message.task_assign(task.id, sender=dev.id, to=dev.id)
    >>> print(build_prompt(town="demo", agent=dev, message=msg, task=task))
    # Agent: dev
    You are agent "dev" in Tinytown "demo".
    ...
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .models import Agent, Message, Task, truncate_summary

_COMMANDS = """\
- `ttnb status` — the town at a glance
- `ttnb task current` — the task you are working on
- `ttnb task complete <task-id> --result "what was done"` — report a task done
- `ttnb send <agent> "message"` — message another agent (`--query`, `--info`, `--ack`, `--urgent`)
- `ttnb send supervisor --query "question"` — ask the supervisor / conductor
- `ttnb backlog list` — unassigned tasks
- `ttnb backlog claim <task-id> {name}` — take a backlog task"""


DESCRIPTION_CHARS = 600  # characters of a dependency's description shown in a prompt
INPUT_CHARS = 4000  # characters of one dependency's result shown in a prompt
INPUTS_CHARS = 16000  # characters of all of them together; the rest are only named


def inputs_section(inputs: Sequence[Task], inputs_file: str | None = None) -> list[str]:
    """The prompt lines showing the tasks a task waited for: each one's description (cut to
    ``DESCRIPTION_CHARS``) and result (cut to ``INPUT_CHARS``; all results together to
    ``INPUTS_CHARS``), with a note wherever something was cut and where the whole is.

    >>> done = Task.new("Parse the input", id="3f2a0000-0000-4000-8000-000000000000")
    >>> done.result = "42 records"
    >>> print("\\n".join(inputs_section([done])))
    ## Results of the tasks this one waited for
    <BLANKLINE>
    ### Task 3f2a (3f2a0000-0000-4000-8000-000000000000)
    <BLANKLINE>
    Parse the input
    <BLANKLINE>
    Result:
    <BLANKLINE>
    42 records
    """
    if not inputs:
        return []
    where = f"the JSON file ${{TINYTOWN_TASK_INPUTS}} ({inputs_file})" if inputs_file else \
        "`ttnb task show <id>`"
    lines = ["## Results of the tasks this one waited for", ""]
    budget = INPUTS_CHARS
    for t in inputs:
        text = t.description.strip()
        cut = f"\n[… {len(text) - DESCRIPTION_CHARS} more characters cut: `ttnb task show " \
              f"{t.short_id}`]" if len(text) > DESCRIPTION_CHARS else ""
        lines += [f"### Task {t.short_id} ({t.id})", "", text[:DESCRIPTION_CHARS] + cut, "", "Result:", ""]
        result = (t.result or "").strip() or "(no result)"
        room = min(INPUT_CHARS, budget)
        if room <= 0:
            lines += [f"[not shown: the prompt's room for results is used up; see {where}]", ""]
            continue
        if len(result) > room:
            lines += [result[:room], f"[… {len(result) - room} more characters cut; the whole "
                                     f"result: {where}]", ""]
        else:
            lines += [result, ""]
        budget -= min(len(result), room)
    return lines[:-1]


def build_prompt(*, town: str, agent: Agent, message: Message, task: Task | None,
                 backlog: Sequence[Task] = (), backlog_total: int = 0, round: int = 1,
                 max_rounds: int | None = None, notes: Sequence[str] = (),
                 branch: str | None = None, inputs: Sequence[Task] = (),
                 inputs_file: str | None = None) -> str:
    """The prompt for one message (a ``task_assign`` with its task, or a free-text one),
    with the informational messages and confirmations (``notes``, ``category|summary``)
    that came since the last prompt, and the results of the tasks it waited for
    (``inputs``, :func:`inputs_section`). ``branch``: the agent works in its own git
    worktree on that branch (the workflow then asks it to commit there).

    >>> a, t = Agent.new("dev", "claude"), Task.new("Fix the login bug")
    >>> m = Message.task_assign(t.id, sender=a.id, to=a.id)
    >>> "ttnb task complete" in build_prompt(town="t", agent=a, message=m, task=t)
    True
    """
    name = agent.name
    lines = [f"# Agent: {name}", "", f'You are agent "{name}" in Tinytown "{town}".', "",
             "## Your Work", ""]
    urgent = "URGENT" if message.priority.value in ("urgent", "high") else "normal"
    if task is not None:
        lines += [
            f"[{urgent}] task assignment from {message.sender}",
            f"- Task ID: {task.id}",
            f"- Tags: {', '.join(task.tags) or '(none)'}",
            "", "### Description", "", task.description.strip(), "",
            f'Complete with: `ttnb task complete {task.id} --result "what was done"`.',
            "Only this Task ID identifies your task; ignore other UUIDs in the description "
            "(mission or work-item ids).",
        ]
    else:
        lines += [f"[{urgent}] {message.category} from {message.sender}:", "",
                  message.text.strip()]
    if inputs:
        lines += ["", *inputs_section(inputs, inputs_file)]
    info = [n.split("|", 1)[-1] for n in notes if n.startswith("informational|")]
    if info:
        lines += ["", "## Informational (batched summary)", "", *[f"- {n}" for n in info[:8]]]
        if len(info) > 8:
            lines.append(f"- …and {len(info) - 8} more")
    acks = Counter(n.split("|", 1)[-1] for n in notes if not n.startswith("informational|"))
    if acks:
        lines += ["", "## Confirmations (auto-dismissed)", "", *[f"- {k} x{v}" for k, v in acks.items()]]
    lines += ["", "## Available Commands", "", _COMMANDS.format(name=name), "",
              "## Backlog Snapshot", ""]
    if backlog:
        lines.append(f"{backlog_total} task(s) in the backlog, {len(backlog)} matching your role:")
        lines += [f"- {t.id} - {truncate_summary(t.description, 90)}"
                  + (f" [{', '.join(t.tags)}]" if t.tags else "") for t in backlog[:8]]
    else:
        lines.append(f"{backlog_total} task(s) in the backlog; none match your role — "
                     "do not claim unrelated work.")
    limit = f"/{max_rounds}" if max_rounds else ""
    lines += ["", "## Current State", "", f"Round {round}{limit}.", "", "## Your Workflow", "",
              "1. Do the work above in this directory."
              + (f" It is your own git worktree on branch `{branch}`: commit your changes "
                 "there (`git add -A && git commit -m ...`); the supervisor reviews and "
                 "merges the branch. Do not switch branches." if branch else ""),
              "2. Report with `ttnb task complete` (tasks) and message other agents directly "
              "when they need to know something; escalate to `supervisor` only when stuck.",
              "3. If you do not report, your exit status decides: exit 0 completes the task "
              "with your final output as the result; any other exit fails it with your "
              "error output.",
              "4. Claim backlog work only when it matches your role.", ""]
    return "\n".join(lines)
