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
import re
from datetime import timedelta
from typing import Any

from .errors import ConfigError


MAX_COUNT = 1_000_000  # how many of something a single call may ask for


def count(value: Any, what: str, maximum: int = MAX_COUNT) -> int:
    """``value`` if it is a whole number from 1 to ``maximum`` (not a bool), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ConfigError(f"{what} must be a whole number >= 1 (at most {maximum:,}), got {value!r}.")
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


# the grammar of process_run.parse_duration (d, h, m, s, largest first), plus weeks
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_AGE = re.compile(rf"(?:(?P<w>{_NUM})w)?\s*(?:(?P<d>{_NUM})d)?\s*(?:(?P<h>{_NUM})h)?\s*"
                  rf"(?:(?P<m>{_NUM})m)?\s*(?:(?P<s>{_NUM})s)?")
_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def age(value: Any, what: str) -> float:
    """An age as seconds: a number of seconds >= 0, a ``timedelta``, or text such as
    ``"7d"``, ``"12h"``, ``"1h30m"``, ``"90s"``, ``"2w"`` (a bare number is seconds).

    >>> age("7d", "older_than"), age(timedelta(hours=1), "older_than"), age(90, "older_than")
    (604800.0, 3600.0, 90)
    >>> age("soon", "older_than")
    Traceback (most recent call last):
    ConfigError: older_than must be an age such as 7d, 12h, 1h30m, 90s or a number of seconds >= 0, got 'soon'.
    """
    given = value
    if isinstance(value, timedelta):
        value = value.total_seconds()
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        units = _AGE.fullmatch(text)
        if re.fullmatch(_NUM, text):
            value = float(text)
        elif units:
            value = sum(float(v) * _UNITS[k] for k, v in units.groupdict().items() if v)
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and value >= 0)
    if not ok:
        raise ConfigError(f"{what} must be an age such as 7d, 12h, 1h30m, 90s or a number of "
                          f"seconds >= 0, got {given!r}.")
    return value


MAX_TEXT_BYTES = 4 * 1024 * 1024  # a description, result or message: at most 4 MiB of UTF-8


def text(value: Any, what: str, advice: str = "") -> str:
    """``value`` if it can be stored as a text: a non-empty string, valid UTF-8 (no lone
    surrogates), at most :data:`MAX_TEXT_BYTES` — so no single record can stall the server.

    >>> text("x" * (5 * 1024 * 1024), "A task description")
    Traceback (most recent call last):
    ConfigError: A task description is 5.0 MiB; the limit is 4 MiB. Put big inputs in a file and refer to it.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{what} is text, not {type(value).__name__}. {advice}".rstrip())
    if not value.strip():
        raise ConfigError(f"{what} is empty. {advice}".rstrip())
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{what} holds a character that is not valid Unicode "
                          f"({value[exc.start:exc.end]!r} at {exc.start}); remove it.") from None
    if size > MAX_TEXT_BYTES:
        raise ConfigError(f"{what} is {size / 2**20:.1f} MiB; the limit is "
                          f"{MAX_TEXT_BYTES // 2**20} MiB. Put big inputs in a file and refer to it.")
    return value


def clip_text(value: str, limit: int = MAX_TEXT_BYTES) -> str:
    """``value`` cut to its last ``limit`` bytes of UTF-8 (a note says how much went):
    for results, which are kept rather than refused.

    >>> clip_text("abcdef", 4)
    '[… 2 bytes cut]\\ncdef'
    """
    data = value.encode("utf-8", "replace")
    if len(data) <= limit:
        return value
    return f"[… {len(data) - limit} bytes cut]\n" + data[-limit:].decode("utf-8", "ignore")


def optional(check: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
    """``None`` stays None; anything else goes through ``check``.

    >>> optional(count, None, "max_rounds") is None
    True
    """
    return None if value is None else check(value, *args, **kwargs)
