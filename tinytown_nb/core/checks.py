"""Checks of numbers given at the boundary (API, magics, ``ttnb``): one place, one wording.

Example::

    >>> duration("20m", "timeout")
    1200.0
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


# --------------------------------------------------------------------------- durations

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(
    rf"(?:(?P<d>{_NUM})d)?\s*(?:(?P<h>{_NUM})h)?\s*(?:(?P<m>{_NUM})m)?\s*(?:(?P<s>{_NUM})s)?")
_UNIT = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_FORMS = ("give seconds (90, 1.5) or numbers with units d, h, m, s in that order "
          "(90s, 20m, 1.5h, 1h30m, 4m05s, 2d); it must be more than 0")


def parse_duration(text: str | int | float) -> float:
    """Seconds from ``90``, ``1.5``, ``90s``, ``20m``, ``1h30m``, ``4m05s``, ``2d``, ``1d 2h``
    (plain numbers are seconds; units d/h/m/s, largest first, each at most once); refuses
    anything else, and zero, NaN and infinity, with a one-line :class:`ConfigError`.

    >>> parse_duration("1h30m")
    5400.0
    >>> parse_duration("10x")   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ConfigError: Bad duration '10x': give seconds (90, 1.5) or numbers with units ...
    """
    value = _seconds_of(text)
    if value is None or not value > 0:
        raise ConfigError(f"Bad duration {text!r}: {_FORMS}.")
    return value


def _seconds_of(text: Any) -> float | None:
    """Seconds >= 0 from a number or a text in :func:`parse_duration`'s forms, else None."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    elif isinstance(text, str) and text.strip():
        raw = text.strip()
        if re.fullmatch(_NUM, raw):
            value = float(raw)
        else:
            match = _DURATION.fullmatch(raw)
            if match is None:
                return None
            value = sum(float(v) * _UNIT[k] for k, v in match.groupdict().items() if v)
    else:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def age(value: Any, what: str) -> float:
    """An age as seconds: a number of seconds >= 0, a ``timedelta``, or a text in
    :func:`parse_duration`'s forms (``"7d"``, ``"12h"``, ``"1h30m"``, ``"90s"``), zero
    included (``"0s"``: everything is older).

    >>> age("7d", "older_than"), age(timedelta(hours=1), "older_than"), age(0, "older_than")
    (604800.0, 3600.0, 0.0)
    >>> age("soon", "older_than")
    Traceback (most recent call last):
    ConfigError: older_than must be an age such as 7d, 12h, 1h30m, 90s or a number of seconds >= 0, got 'soon'.
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    found = _seconds_of(seconds)
    if found is None:
        raise ConfigError(f"{what} must be an age such as 7d, 12h, 1h30m, 90s or a number of "
                          f"seconds >= 0, got {value!r:.60}.")
    return found


def duration(value: Any, what: str) -> float:
    """``value`` as seconds > 0: a number, or a text :func:`parse_duration` reads (``90``,
    ``90s``, ``20m``, ``1h``); anything else (zero, negative, NaN, a bool, a list) is a
    one-line ConfigError naming ``what``.

    >>> duration(90, "timeout"), duration("1h", "timeout")
    (90.0, 3600.0)
    >>> duration(-1, "timeout")
    Traceback (most recent call last):
    ConfigError: timeout must be a duration > 0 (90, 90s, 20m, 1h), got -1.
    """
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ConfigError:
            pass
    elif not isinstance(value, bool) and isinstance(value, (int, float)) \
            and math.isfinite(value) and value > 0:
        return float(value)
    raise ConfigError(f"{what} must be a duration > 0 (90, 90s, 20m, 1h), got {value!r:.60}.")


MAX_RETRIES = 100  # more re-runs than this of one task is a loop, not a retry policy


def retries(value: Any, what: str = "retries") -> int:
    """``value`` if it is a whole number from 0 to :data:`MAX_RETRIES` (not a bool): how many
    times a failed attempt may be run again.

    >>> retries(2)
    2
    >>> retries(1000)
    Traceback (most recent call last):
    ConfigError: retries must be a whole number from 0 to 100, got 1000.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise ConfigError(f"{what} must be a whole number from 0 to {MAX_RETRIES}, got {value!r:.60}.")
    return value


def money(value: Any, what: str) -> float:
    """``value`` as US dollars: a finite number > 0 (not a bool), or a text of one.

    >>> money("5", "budget")
    5.0
    >>> money(float("nan"), "budget")
    Traceback (most recent call last):
    ConfigError: budget must be an amount of US dollars > 0 (e.g. 5 or 2.50), got nan.
    """
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip().lstrip("$"))
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) \
            or not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{what} must be an amount of US dollars > 0 (e.g. 5 or 2.50), "
                          f"got {value!r:.60}.")
    return float(number)
