"""Counts in words, the one place every face writes "1 agent" / "2 agents".

Example::

    >>> counted(1, "agent"), counted(3, "agent"), counted(1, "dependency", "dependencies")
    ('1 agent', '3 agents', '1 dependency')
"""

from __future__ import annotations


def counted(n: int, word: str, plural: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless n is 1 (``plural`` for irregular words).

    >>> counted(0, "task"), counted(2, "dependency", "dependencies")
    ('0 tasks', '2 dependencies')
    """
    return f"{n} {word if n == 1 else (plural or word + 's')}"
