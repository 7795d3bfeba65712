"""One error hierarchy for every face of tinytown_nb.

Every message is one line that says what was wrong and what to do. The notebook faces
show only that line (``_render_traceback_``) yet still fail a headless run.

Example::

    >>> raise AgentNotFound("bob")
    Traceback (most recent call last):
    AgentNotFound: No agent 'bob' in this town. List agents with town.agents(), %tt_agents or `ttnb list`.
"""

from __future__ import annotations

import re

import redis

from .urls import redact_url


class TinytownError(Exception):
    """Base class: an expected failure with a one-line, actionable message."""

    def __str__(self) -> str:  # keep messages to one line whatever the arguments held
        return " ".join(super().__str__().split("\n"))

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a traceback; returning lines still sends
        # an ``error`` message, so nbval and nbclient fail the cell.
        return [f"\x1b[31m{type(self).__name__}\x1b[0m: {self}"]


class ConfigError(TinytownError):
    """A configuration, name or argument problem (upstream's ``Error::Config``)."""


class InvalidName(ConfigError):
    """A town or agent name that is empty, reserved, too long or breaks keys or paths."""


class NotInitialized(TinytownError):
    """No ``tinytown.toml`` where a town was expected."""

    def __init__(self, path: object):
        super().__init__(
            f"Town not initialized at {path}. Run Town.init({str(path)!r}) or `ttnb init` first."
        )
        self.path = path


class RedisError(TinytownError):
    """Redis could not be found, started, reached or used."""


class RedisNotInstalled(RedisError):
    """No Redis-compatible server binary could be found."""


class RedisTooOld(RedisError):
    """The Redis server is older than 7.0."""


class RedisAuthFailed(RedisError):
    """The server refused the password (WRONGPASS / NOAUTH)."""


class RedisUnavailable(RedisError, redis.exceptions.ConnectionError):
    """Redis stopped answering (server down, socket gone, network, timeout).

    Also a redis-py ``ConnectionError``, so code that reconnects on one still does.
    """


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*):[^@\s]*@")


def from_redis(exc: BaseException, url: str) -> TinytownError:
    """The one-line package error for a redis-py error (``url`` is shown redacted).

    >>> print(from_redis(redis.ConnectionError("Connection refused"), "redis://:pw@h:6379"))
    Redis at redis://:****@h:6379 is unreachable (Connection refused). Is its server running? ...
    """
    if isinstance(exc, TinytownError):
        return exc
    shown = redact_url(url)
    detail = _USERINFO.sub(r"\1:****@", " ".join(str(exc).split())).rstrip(". ") or type(exc).__name__
    if isinstance(exc, redis.AuthenticationError) or detail.startswith(("WRONGPASS", "NOAUTH")):
        return RedisAuthFailed(
            f"Redis at {shown} refused the password ({detail}). Check the password "
            "(REDIS_URL, TINYTOWN_REDIS_PASSWORD or [redis] password in tinytown.toml).")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        what = "did not answer in time" if isinstance(exc, redis.TimeoutError) else "is unreachable"
        return RedisUnavailable(
            f"Redis at {shown} {what} ({detail}). Is its server running? Town.connect(DIR), "
            "%tt_init or any `ttnb` command restarts a town's own server; then retry.")
    return RedisError(f"Redis at {shown} refused a command ({detail}). Check the server "
                      "(version 7.0+, memory, permissions), then retry.")


class AgentNotFound(TinytownError):
    """No agent matches a reference."""

    def __init__(self, ref: object, hint: str = ""):
        msg = f"No agent {str(ref)!r} in this town."
        msg += " " + (hint or "List agents with town.agents(), %tt_agents or `ttnb list`.")
        super().__init__(msg)
        self.ref = ref


class AmbiguousAgent(ConfigError):
    """An agent reference matches more than one agent."""

    def __init__(self, ref: str, candidates: list[str]):
        super().__init__(
            f"Agent reference {ref!r} is ambiguous: {', '.join(candidates)}. "
            "Use the full name or the 4-character id."
        )
        self.ref = ref
        self.candidates = candidates


class AgentExists(ConfigError):
    """A live agent already has the name asked for."""


class TaskNotFound(TinytownError):
    """No task with the given id."""

    def __init__(self, ref: object):
        super().__init__(
            f"No task {str(ref)!r} in this town. List tasks with town.tasks() or `ttnb task list`."
        )
        self.ref = ref


class InvalidState(TinytownError):
    """A transition that the current state does not allow (e.g. resume a running agent)."""


class WaitTimeout(TinytownError):
    """``town.wait(...)`` ran out of time before its condition held."""
