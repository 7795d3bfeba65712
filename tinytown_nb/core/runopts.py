"""How one task is run: its time limits, how often a failed attempt is run again, and
which attempt is running.

A task's tinytown record keeps exactly tinytown's fields, so these live beside it, in the
hash ``keys.taskopts(tid)`` (see :mod:`.keys`). :class:`RunOptions` reads it tolerantly
(a field that does not parse is as if absent) and :meth:`RunOptions.validated` checks what a
caller gives, before anything is written.

Example::

    >>> opts = RunOptions.validated(timeout="20m", retries=2)
    >>> opts.timeout, opts.retries, opts.to_fields()
    (1200.0, 2, {'timeout': '1200', 'retries': '2'})
    >>> RunOptions.from_fields({"attempts": "3"}).attempt
    3
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import checks
from .errors import ConfigError
from .keys import Keys
from .models import Task
from .usage import usage_from_hash


@dataclass(frozen=True)
class RunOptions:
    """A task's run options and attempt count (defaults: no limit, no retry).

    ``attempts`` is the stored attempt number (0 when none is stored: the first attempt,
    or a task that has not run); :attr:`attempt` is the number of the attempt that runs.
    ``stored_attempts`` is the field as stored (the retry step is guarded by it).
    """

    timeout: float | None = None
    silence_timeout: float | None = None
    retries: int = 0
    retry_delay: float = 0.0
    attempts: int = 0
    stored_attempts: str = ""
    last_error: str | None = None

    @classmethod
    def validated(cls, *, timeout: Any = None, retries: Any = None, retry_delay: Any = None,
                  silence_timeout: Any = None) -> "RunOptions":
        """Options a caller gives (``None``: not given), each refused with one line when bad:
        ``timeout``/``silence_timeout`` a duration > 0 (seconds or ``90s``, ``20m``, ``1h``),
        ``retries`` a whole number 0–100, ``retry_delay`` seconds >= 0 (or a duration).

        >>> RunOptions.validated(retries=-1)
        Traceback (most recent call last):
        ConfigError: retries must be a whole number from 0 to 100, got -1.
        """
        delay = 0.0
        if isinstance(retry_delay, str):
            try:
                delay = float(checks.seconds(float(retry_delay), "retry_delay"))
            except ValueError:  # not a plain number: a duration such as 30s or 2m
                try:
                    delay = checks.parse_duration(retry_delay)
                except ConfigError:
                    raise ConfigError(f"retry_delay must be seconds >= 0 or a duration (30s, 2m), "
                                      f"got {retry_delay!r:.60}.") from None
        elif retry_delay is not None:
            delay = float(checks.seconds(retry_delay, "retry_delay"))
        return cls(timeout=checks.optional(checks.duration, timeout, "timeout"),
                   silence_timeout=checks.optional(checks.duration, silence_timeout, "silence_timeout"),
                   retries=checks.retries(retries) if retries is not None else 0,
                   retry_delay=delay)

    @classmethod
    def from_fields(cls, h: Mapping[Any, Any] | None) -> "RunOptions":
        """Read a ``taskopts`` hash (str or bytes keys and values); never raises.

        >>> RunOptions.from_fields({b"timeout": b"nan", b"retries": b"2"}).timeout is None
        True
        """
        text: dict[str, str] = {}
        for key, value in (h or {}).items():
            key = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if isinstance(key, str) and isinstance(value, str):
                text[key] = value

        def number(name: str, positive: bool = True) -> float | None:
            try:
                value = float(text[name])
            except (KeyError, ValueError):
                return None
            ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
            return value if ok else None

        def whole(name: str) -> int:
            try:
                return max(0, min(int(text.get(name, "0")), 1_000_000))
            except ValueError:
                return 0

        return cls(timeout=number("timeout"), silence_timeout=number("silence_timeout"),
                   retries=min(whole("retries"), checks.MAX_RETRIES),
                   retry_delay=number("retry_delay", positive=False) or 0.0,
                   attempts=whole("attempts"), stored_attempts=text.get("attempts", ""),
                   last_error=text.get("last_error"))

    def to_fields(self) -> dict[str, str]:
        """The options that differ from the defaults, as a ``taskopts`` hash holds them.

        >>> RunOptions(retry_delay=1.5).to_fields()
        {'retry_delay': '1.5'}
        """
        out = {}
        for name, value in (("timeout", self.timeout), ("silence_timeout", self.silence_timeout),
                            ("retries", self.retries or None),
                            ("retry_delay", self.retry_delay or None)):
            if value is not None:
                out[name] = f"{value:g}" if isinstance(value, float) else str(value)
        return out

    def cmds(self, keys: Keys, tid: str) -> list[list[Any]]:
        """The command writing these options for task ``tid`` (none when all are defaults).

        >>> RunOptions(retries=1).cmds(Keys("d"), "t1")[0]
        ['HSET', 'tt:d:taskopts:t1', 'id', 't1', 'retries', '1']
        """
        fields = self.to_fields()
        if not fields:
            return []
        return [["HSET", keys.taskopts(tid), "id", tid, *[x for kv in fields.items() for x in kv]],
                ["SADD", keys.tasks_with_opts, tid]]

    @property
    def attempt(self) -> int:
        """The number of the attempt that runs now (or ran last): 1 unless retried."""
        return self.attempts or 1

    @property
    def may_retry(self) -> bool:
        """Whether a failure of the current attempt is run again (``retries`` not used up)."""
        return self.attempt <= self.retries


def attempts(started: bool, h: Mapping[str, Any] | None) -> int:
    """A task's attempt count: the stored number, else 1 once it started, else 0.

    >>> attempts(True, None), attempts(False, None), attempts(True, {"attempts": "3"})
    (1, 0, 3)
    """
    stored = RunOptions.from_fields(h).attempts if h else 0
    return stored or (1 if started else 0)


def with_runs(task: Task, opts: Mapping[str, Any] | None, usage: Mapping[str, Any] | None) -> Task:
    """``task`` with its :attr:`~.models.Task.attempts` and :attr:`~.models.Task.usage`
    filled in from its ``taskopts`` and ``usage`` hashes (either may be empty or None).

    >>> with_runs(Task.new("x"), {"attempts": "2"}, {"reports": "1", "output_tokens": "5"}).attempts
    2
    """
    task.attempts = attempts(task.started_at is not None, opts)
    task.usage = usage_from_hash(usage)
    return task


def check_agent_limits(task_timeout: Any, silence_timeout: Any) -> None:
    """Refuse an agent's default limits (``spawn(task_timeout=..., silence_timeout=...)``)
    that cannot work, before anything is written.

    >>> check_agent_limits(0, None)
    Traceback (most recent call last):
    ConfigError: task_timeout must be a duration > 0 (90, 90s, 20m, 1h), got 0.
    """
    checks.optional(checks.duration, task_timeout, "task_timeout")
    checks.optional(checks.duration, silence_timeout, "silence_timeout")


__all__ = ["RunOptions", "attempts", "check_agent_limits", "with_runs"]
