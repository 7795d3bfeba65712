"""What an agent's runs used: tokens, turns, dollars and model, as one small record.

:class:`Usage` is what a run reports (an AI CLI's stream, ``ctx.usage(...)`` of a function
agent, ``ttnb task usage``) and what a task, an agent or the town sums to.
:func:`usage_cmds` are the Redis writes that add one report to the sums (``keys.usage``,
``keys.usage_agent``, ``keys.usage_total``); a worker puts them in the step that records
the run's outcome, so the cost is there exactly when the outcome is.

Example::

    >>> Usage(input_tokens=10, cost_usd=0.5) + Usage(output_tokens=3, model="m")
    Usage(input_tokens=10, output_tokens=3, cache_creation_tokens=0, cache_read_tokens=0, cost_usd=0.5, turns=None, model='m')
    >>> usage_cmds(Keys("d"), "t1", "a1", Usage(input_tokens=5))[0]
    ['HSET', 'tt:d:usage:t1', 'id', 't1', 'agent_id', 'a1']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError
from .keys import Keys

TOKEN_MAX = 2**63 - 1  # a token count must fit a Redis integer
#: The integer sums of a usage hash (``turns`` only when reported).
COUNT_FIELDS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens")


@dataclass(frozen=True)
class Usage:
    """Tokens and cost one CLI run reported (``None``: not reported).

    ``a + b`` accumulates: tokens and turns add up, a cost known on either side counts,
    the model is ``b``'s when it has one.

    >>> Usage(input_tokens=10, cost_usd=0.5) + Usage(output_tokens=3, model="m")
    Usage(input_tokens=10, output_tokens=3, cache_creation_tokens=0, cache_read_tokens=0, cost_usd=0.5, turns=None, model='m')
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float | None = None
    turns: int | None = None
    model: str | None = None

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_tokens=self.cache_creation_tokens + other.cache_creation_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cost_usd=add_known(self.cost_usd, other.cost_usd),
            turns=add_known(self.turns, other.turns),
            model=other.model if other.model is not None else self.model,
        )

    @property
    def total_tokens(self) -> int:
        """Input + output tokens (cache reads and writes are part of neither here).

        >>> Usage(input_tokens=10, output_tokens=3).total_tokens
        13
        """
        return self.input_tokens + self.output_tokens

    def to_fields(self) -> dict[str, str]:
        """A flat ``str -> str`` dict (e.g. for a Redis hash); ``None`` is ``""``.

        >>> Usage(input_tokens=7, cost_usd=0.25).to_fields()["cost_usd"]
        '0.25'
        """
        return {f.name: "" if (v := getattr(self, f.name)) is None else str(v) for f in fields(self)}

    @classmethod
    def from_fields(cls, data: Mapping[Any, Any]) -> Usage:
        """Read :meth:`to_fields` back; a missing or bad value is 0 (tokens) or ``None``.

        Never raises: keys and values may be ``str`` or ``bytes``, anything else is ignored.

        >>> Usage.from_fields({"input_tokens": "12", "output_tokens": "x", "cost_usd": "nan"})
        Usage(input_tokens=12, output_tokens=0, cache_creation_tokens=0, cache_read_tokens=0, cost_usd=None, turns=None, model=None)
        """
        text = {}
        try:
            for key, value in data.items():
                if isinstance(key, bytes):
                    key = key.decode("utf-8", "replace")
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                if isinstance(key, str) and isinstance(value, str):
                    text[key] = value.strip()
        except Exception:  # a mapping that fails to iterate is read as empty
            text = {}

        def count(name: str) -> int | None:
            try:
                return token_count(int(text[name]))
            except (KeyError, ValueError):
                return None

        def cost() -> float | None:
            try:
                return cost_value(float(text["cost_usd"]))
            except (KeyError, ValueError):
                return None

        return cls(
            input_tokens=count("input_tokens") or 0,
            output_tokens=count("output_tokens") or 0,
            cache_creation_tokens=count("cache_creation_tokens") or 0,
            cache_read_tokens=count("cache_read_tokens") or 0,
            cost_usd=cost(),
            turns=count("turns"),
            model=text.get("model") or None,
        )

    @classmethod
    def validated(cls, input_tokens: Any = 0, output_tokens: Any = 0,
                  cache_creation_tokens: Any = 0, cache_read_tokens: Any = 0,
                  cost_usd: Any = None, turns: Any = None, model: Any = None) -> Usage:
        """A :class:`Usage` from caller-given values, refusing bad ones with a ``ConfigError``.

        >>> Usage.validated(input_tokens=-1)
        Traceback (most recent call last):
        ConfigError: Usage input_tokens must be a whole number of 0 or more, not -1. Give a non-negative int.
        """
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens),
                            ("cache_creation_tokens", cache_creation_tokens),
                            ("cache_read_tokens", cache_read_tokens), ("turns", turns)):
            if name == "turns" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or token_count(value) is None:
                raise ConfigError(f"Usage {name} must be a whole number of 0 or more, not "
                                  f"{value!r:.60}. Give a non-negative int"
                                  f"{' or None' if name == 'turns' else ''}.")
        if cost_usd is not None and cost_value(cost_usd) is None:
            raise ConfigError(f"Usage cost_usd must be a finite number of 0 or more, not "
                              f"{cost_usd!r:.60}. Give US dollars as a float, or None if unknown.")
        if model is not None and not isinstance(model, str):
            raise ConfigError(f"Usage model must be a string, not {type(model).__name__}. "
                              "Give the model name, or None.")
        return cls(input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens,
                   None if cost_usd is None else float(cost_usd), turns, model or None)


def add_known(a: Any, b: Any) -> Any:
    """``a + b`` where None means unknown: known on one side counts, unknown on both stays None."""
    if a is None:
        return b
    return a if b is None else a + b


def token_count(value: Any) -> int | None:
    """``value`` as a token count, or ``None`` when it is not a whole number in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    return value if 0 <= value <= TOKEN_MAX else None


def cost_value(value: Any) -> float | None:
    """``value`` as US dollars, or ``None`` when it is not a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value) if abs(value) < 1e300 else math.inf
    return value if math.isfinite(value) and value >= 0 else None


def usage_cmds(keys: Keys, tid: str | None, aid: str | None, usage: Usage) -> list[list[Any]]:
    """Commands adding one report to the task's usage hash (none for ``tid=None``: a
    free-text message), the agent's and the town's: integer fields with HINCRBY, the cost
    with HINCRBYFLOAT only when known, the model as the last one named.

    >>> [c[0] for c in usage_cmds(Keys("d"), "t1", None, Usage(output_tokens=2, cost_usd=0.1))]
    ['HSET', 'SADD', 'HINCRBY', 'HINCRBY', 'HINCRBYFLOAT', 'HINCRBY', 'HINCRBY', 'HINCRBYFLOAT']
    """
    task_key = keys.usage(tid) if tid else None
    cmds: list[list[Any]] = []
    if task_key:
        cmds += [["HSET", task_key, "id", tid, *(["agent_id", aid] if aid else [])],
                 ["SADD", keys.tasks_with_usage, tid]]
    counts = [(f, getattr(usage, f)) for f in COUNT_FIELDS if getattr(usage, f)]
    if usage.turns:
        counts.append(("turns", usage.turns))
    for key in (*([task_key] if task_key else []), *([keys.usage_agent(aid)] if aid else []),
                keys.usage_total):
        cmds.append(["HINCRBY", key, "reports", 1])
        cmds += [["HINCRBY", key, f, n] for f, n in counts]
        if usage.cost_usd is not None:
            cmds.append(["HINCRBYFLOAT", key, "cost_usd", repr(float(usage.cost_usd))])
    if usage.model and task_key:
        cmds.append(["HSET", task_key, "model", usage.model])
    return cmds


def usage_from_hash(h: Mapping[Any, Any] | None) -> Usage | None:
    """The :class:`Usage` a usage hash sums, or None when nothing was reported.

    >>> usage_from_hash({"reports": "2", "input_tokens": "30", "cost_usd": "0.5"}).input_tokens
    30
    >>> usage_from_hash({}) is None
    True
    """
    if not h or not any(k in h for k in ("reports", b"reports")):
        return None
    return Usage.from_fields(h)
