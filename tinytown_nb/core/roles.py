"""Which backlog tasks suit an agent: tinytown's role hints (spec §7.4).

Upstream derives the hint from the agent's *name*; here the agent's ``role_id`` is used
when it is set (and not ``default``), else its name. The first rule whose word occurs in
the lowercased hint picks the keywords; a task matches when a lowercased tag equals a
keyword or its description contains one. A hint matching no rule is *general*: every
task matches.

Example::

    >>> role_for("api-server")
    'backend'
    >>> task_matches("backend", Task.new("Add login API"))
    True
"""

from __future__ import annotations

from .models import DEFAULT_ROLE, Agent, Task

GENERAL = "general"

#: (role, words looked for in the hint, keywords looked for in tasks), first match wins.
ROLE_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("frontend", ("front", "ui", "web", "client"), ("frontend", "ui", "web", "client", "ux")),
    ("backend", ("back", "api", "server"), ("backend", "api", "server", "database", "data")),
    ("tester", ("test", "qa"), ("test", "qa", "validation", "regression")),
    ("reviewer", ("review", "audit"), ("review", "reviewer", "qa", "security", "audit", "validation")),
    ("docs", ("doc", "writer"), ("docs", "doc", "documentation", "spec", "readme")),
    ("devops", ("devops", "ops", "infra", "deploy"), ("devops", "ops", "infra", "deploy", "ci", "reliability")),
    ("security", ("security",), ("security", "sec", "vulnerability", "hardening", "audit")),
)
_KEYWORDS = {role: keywords for role, _, keywords in ROLE_RULES}


def role_hint(agent: Agent) -> str:
    """The text roles are derived from: ``role_id`` when set, else the name.

    >>> role_hint(Agent.new("w1", "claude", role_id="reviewer"))
    'reviewer'
    """
    if agent.role_id and agent.role_id != DEFAULT_ROLE:
        return agent.role_id
    return agent.name


def role_for(hint: str) -> str:
    """The role a hint maps to (``general`` when no rule matches).

    >>> role_for("builder")   # upstream quirk kept: "builder" contains "ui"
    'frontend'
    """
    low = hint.lower()
    for role, words, _ in ROLE_RULES:
        if any(w in low for w in words):
            return role
    return "security" if low == "sec" else GENERAL


def task_matches(role: str, task: Task) -> bool:
    """True when the task suits the role (any task suits ``general``).

    >>> task_matches("docs", Task.new("Update the README"))
    True
    """
    keywords = _KEYWORDS.get(role)
    if keywords is None:
        return True
    tags = {t.lower() for t in task.tags}
    text = task.description.lower()
    return any(k in tags or k in text for k in keywords)
