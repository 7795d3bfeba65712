"""One error hierarchy for every face of tinytown_nb.

Every message is one line that says what was wrong and what to do. The notebook faces
show only that line (``_render_traceback_``) yet still fail a headless run.

Example::

    >>> raise AgentNotFound("bob")
    Traceback (most recent call last):
    AgentNotFound: No agent 'bob' in this town. List agents with town.agents(), %tt_agents or `ttnb list`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import redis

from .urls import redact, redact_url


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


def from_redis(exc: BaseException, url: str) -> TinytownError:
    """The one-line package error for a redis-py error (``url`` is shown redacted).

    >>> print(from_redis(redis.ConnectionError("Connection refused"), "redis://:pw@h:6379"))
    Redis at redis://:****@h:6379 is unreachable (Connection refused). Is its server running? Town.connect(DIR), %tt_init or any `ttnb` command restarts a town's own server; then retry.
    """
    if isinstance(exc, TinytownError):
        return exc
    shown = redact_url(url)
    detail = redact(str(exc)).rstrip(". ") or type(exc).__name__
    if isinstance(exc, redis.AuthenticationError) or detail.startswith(("WRONGPASS", "NOAUTH")):
        return RedisAuthFailed(
            f"Redis at {shown} refused the password ({detail}). Check the password "
            "(REDIS_URL, TINYTOWN_REDIS_PASSWORD or [redis] password in tinytown.toml).")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        what = "did not answer in time" if isinstance(exc, redis.TimeoutError) else "is unreachable"
        return RedisUnavailable(
            f"Redis at {shown} {what} ({detail}). Is its server running? Town.connect(DIR), "
            "%tt_init or any `ttnb` command restarts a town's own server; then retry.")
    if detail.startswith("BUSY"):
        return RedisError(f"Redis at {shown} is busy running a long script ({detail[:120]}). "
                          "Wait a few seconds and retry; if it lasts, SCRIPT KILL it (redis-cli).")
    return RedisError(f"Redis at {shown} refused a command ({detail}). Check the server "
                      "(version 7.0+, memory, permissions), then retry.")


def is_transient(exc: BaseException) -> bool:
    """True for a Redis error that waiting cures: the server unreachable, slow, loading, or
    busy with a long script.

    >>> is_transient(redis.ResponseError("BUSY Redis is busy running a script."))
    True
    """
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(("BUSY", "LOADING"))


def one_line(exc: BaseException, url: str) -> BaseException:
    """The error a person should see for ``exc``: a redis-py error becomes its one-line
    package error (:func:`from_redis`), a file-system error naming a path a ConfigError
    naming it; anything else is returned unchanged.

    >>> print(one_line(FileNotFoundError(2, "No such file or directory", "/x/tinytown.toml"), ""))
    No such file or directory: /x/tinytown.toml. Check the path and its permissions.
    """
    if isinstance(exc, TinytownError):
        return exc
    if isinstance(exc, redis.RedisError):
        return from_redis(exc, url)
    if isinstance(exc, OSError) and exc.filename is not None:
        return ConfigError(f"{exc.strerror or type(exc).__name__}: {exc.filename}. "
                           "Check the path and its permissions.")
    return exc


def one_line_errors(url_of: Callable[[Any], str], names: Iterable[str] | None = None
                    ) -> Callable[[type], type]:
    """Class decorator: the public methods (or ``names``) raise :func:`one_line` errors, so
    every face shows one line instead of a redis-py or OS traceback. ``url_of(self)`` gives
    the Redis URL to name (shown redacted).

    >>> @one_line_errors(lambda self: "redis://h:6379")
    ... class Shop:
    ...     def buy(self):
    ...         raise redis.ConnectionError("refused")
    >>> Shop().buy()
    Traceback (most recent call last):
    tinytown_nb.core.errors.RedisUnavailable: Redis at redis://h:6379 is unreachable (refused). ...
    """
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(method):
            @functools.wraps(method)
            def gen(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    yield from method(self, *args, **kwargs)
                except (redis.RedisError, OSError) as exc:
                    shown = one_line(exc, url_of(self))
                    if shown is exc:
                        raise
                    raise shown from None
            return gen

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (redis.RedisError, OSError) as exc:
                shown = one_line(exc, url_of(self))
                if shown is exc:
                    raise
                raise shown from None
        return call

    def decorate(cls: type) -> type:
        chosen = names if names is not None else [
            n for n, attr in vars(cls).items() if not n.startswith("_") and inspect.isfunction(attr)]
        for name in chosen:
            setattr(cls, name, wrap(getattr(cls, name)))
        return cls
    return decorate


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


class MergeConflict(TinytownError):
    """A merge that conflicted; it was aborted and the main checkout is as it was.

    ``files`` lists every conflicting path (relative to the repository root).

    >>> print(MergeConflict("tt/bob", "main", ["app.py"]))   # doctest: +ELLIPSIS
    Merging tt/bob into main conflicts in app.py; it was aborted and the main checkout is unchanged. ...
    """

    SHOWN = 5  # file names shown before "and N more"

    def __init__(self, branch: str, into: str, files: list[str]):
        shown = ", ".join(files[:self.SHOWN])
        if len(files) > self.SHOWN:
            shown += f" and {len(files) - self.SHOWN} more"
        super().__init__(
            f"Merging {branch} into {into} conflicts in {shown}; it was aborted and "
            f"the main checkout is unchanged. Merge {into} into {branch} in its worktree, "
            "resolve and commit there, then merge again.")
        self.branch, self.into, self.files = branch, into, list(files)
