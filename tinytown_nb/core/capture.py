"""Capture what a function agent prints, without touching anyone else's output.

A function agent runs in a daemon thread of the kernel. If it printed straight to
``sys.stdout``, its lines would land in whatever notebook cell happens to be running. So
:func:`install` replaces ``sys.stdout``/``sys.stderr`` once with a proxy that sends writes
from a *capturing* thread to that thread's sink and everything else to the stream it
replaced; every other attribute is the original stream's. Threads that the agent function
starts itself are not captured (their output goes to the original stream).

Example::

    >>> lines = []
    >>> with captured(lines.append):
    ...     print("hello")          # goes to `lines`, not to the screen
    >>> lines
    ['hello']
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_sinks: dict[int, "_LineSink"] = {}  # thread ident -> where its output goes
_lock = threading.Lock()


class _LineSink:
    """Buffers partial lines; hands complete ones to ``emit``."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit = emit
        self.partial = ""

    def write(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.emit(line)

    def close(self) -> None:
        if self.partial:
            self.emit(self.partial)
            self.partial = ""


class ThreadRouter:
    """A stand-in for ``sys.stdout``/``sys.stderr`` that routes by thread."""

    def __init__(self, original: TextIO):
        self._original = original

    def write(self, text: str) -> int:
        sink = _sinks.get(threading.get_ident())
        if sink is None:
            return self._original.write(text)
        sink.write(str(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if threading.get_ident() not in _sinks:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ... of the original
        return getattr(self._original, name)


def install() -> None:
    """Put the routers in place (again, if something replaced ``sys.stdout`` since).

    Safe to call often: a stream that is already a router is left alone.
    """
    with _lock:
        if not isinstance(sys.stdout, ThreadRouter):
            sys.stdout = ThreadRouter(sys.stdout)  # type: ignore[assignment]
        if not isinstance(sys.stderr, ThreadRouter):
            sys.stderr = ThreadRouter(sys.stderr)  # type: ignore[assignment]


@contextmanager
def captured(emit: Callable[[str], None]) -> Iterator[None]:
    """Send this thread's stdout and stderr lines to ``emit`` while the block runs.

    >>> log = []
    >>> with captured(log.append):
    ...     print("working"); print("warning: slow", file=sys.stderr)
    >>> log
    ['working', 'warning: slow']
    """
    install()
    ident = threading.get_ident()
    sink = _LineSink(emit)
    previous = _sinks.get(ident)
    _sinks[ident] = sink
    try:
        yield
    finally:
        sink.close()
        if previous is None:
            _sinks.pop(ident, None)
        else:
            _sinks[ident] = previous
