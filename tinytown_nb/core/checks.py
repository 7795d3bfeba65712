"""Checks of numbers given at the boundary (API, magics, ``ttnb``): one place, one wording.

Example::

    >>> count(5, "n")
    5
    >>> seconds(float("nan"), "timeout")
    Traceback (most recent call last):
    ConfigError: timeout must be a number of seconds >= 0, got nan.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError


def count(value: Any, what: str) -> int:
    """``value`` if it is a whole number >= 1 (not a bool), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}.")
    return value


def seconds(value: Any, what: str, *, positive: bool = False) -> float:
    """``value`` as seconds: a finite number >= 0 (> 0 with ``positive``), not a bool.

    >>> seconds(0, "idle_timeout"), seconds(2.5, "timeout", positive=True)
    (0, 2.5)
    """
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > 0 if positive else value >= 0))
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{what} must be a number of seconds {bound}, got {value!r}.")
    return value


def optional(check: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
    """``None`` stays None; anything else goes through ``check``.

    >>> optional(count, None, "max_rounds") is None
    True
    """
    return None if value is None else check(value, *args, **kwargs)
