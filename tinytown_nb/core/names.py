"""Name rules for towns and agents: the one place every face validates names.

Example::

    >>> validate_agent_name("reviewer-2")
    'reviewer-2'
    >>> validate_agent_name("a:b")
    Traceback (most recent call last):
    InvalidName: Agent name 'a:b' contains ':' ...
"""

from __future__ import annotations

import re

from .errors import InvalidName

RESERVED = ("supervisor", "conductor")
MAX_NAME_LENGTH = 64

# Characters that break Redis key patterns (``:``, glob characters) or file paths (``/``).
_FORBIDDEN = {":": "':'", "*": "'*'", "?": "'?'", "[": "'['", "]": "']'", "/": "'/'", "\\": "'\\'"}


def _check(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise InvalidName(f"{kind} name must be a string, got {type(name).__name__}.")
    if not name or not name.strip():
        raise InvalidName(f"{kind} name is empty. Give a short name such as 'worker-1'.")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(
            f"{kind} name {name[:20]!r}... is {len(name)} characters long; "
            f"use at most {MAX_NAME_LENGTH}."
        )
    for ch in name:
        if ch in _FORBIDDEN:
            raise InvalidName(
                f"{kind} name {name!r} contains {_FORBIDDEN[ch]}, which breaks Redis keys or "
                "file paths. Use letters, digits, '-', '_' or '.'."
            )
        if ch.isspace() or not ch.isprintable():
            raise InvalidName(
                f"{kind} name {name!r} contains whitespace or a control character. "
                "Use letters, digits, '-', '_' or '.'."
            )
    if name in (".", ".."):
        raise InvalidName(f"{kind} name {name!r} is not allowed. Use letters or digits.")
    return name


def is_reserved(name: str) -> bool:
    """True for ``supervisor``/``conductor`` (trimmed, any case), upstream's reserved names."""
    return name.strip().lower() in RESERVED


def validate_agent_name(name: object) -> str:
    """Return ``name`` if it can name an agent, else raise :class:`InvalidName`."""
    if isinstance(name, str) and is_reserved(name):
        raise InvalidName(
            f"{name.strip()!r} is reserved for the well-known supervisor/conductor mailbox. "
            "Pick another agent name."
        )
    return _check("Agent", name)


def validate_town_name(name: object) -> str:
    """Return ``name`` if it can name a town (a Redis namespace), else raise InvalidName."""
    return _check("Town", name)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_town_name(raw: str) -> str:
    """Turn a directory or branch name into a valid town name (used for the default name).

    >>> sanitize_town_name("my repo-feature/x")
    'my-repo-feature-x'
    """
    cleaned = _SAFE.sub("-", raw).strip("-.")[:MAX_NAME_LENGTH]
    return cleaned or "tinytown"
