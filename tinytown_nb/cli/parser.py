"""The ``ttnb`` parser, built from verbs that declare their arguments beside their code.

A verb is a function ``cmd_NAME(town, args)`` registered with :func:`verb`, its arguments
declared by :class:`arg` lines above it (read top to bottom, like ``add_argument``
calls), :class:`one_of` for mutually exclusive options and :class:`defaults`;
:func:`group` registers a verb that only holds subverbs (``ttnb task complete``).
:func:`build_parser` turns the registry into the argparse parser, in registration order.

Example::

    @verb("kill", "stop an agent now")
    @arg("agent")
    def cmd_kill(town, args):
        \"\"\"Stop an agent now. Example: ``ttnb kill dev``.\"\"\"
"""

from __future__ import annotations

import argparse
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

from ..core import ConfigError, parse_duration
from .env import ENV_TOWN_DIR

__all__ = ["PROG", "VERBS", "BadUsage", "Verb", "arg", "build_parser", "defaults", "group",
           "one_of", "positive_int", "seconds", "verb"]

PROG = "ttnb"


class BadUsage(Exception):
    """A usage problem found after parsing (exit 2 with the verb's usage line).

    Example: ``raise BadUsage("give an AGENT or --all (not both)")``.
    """


class _Declaration:
    """Something a verb's parser is given (an argument, a group of them, defaults); as a
    decorator it puts itself first in the function's list, so the lines read top down."""

    def __call__(self, func: Callable) -> Callable:
        func.__dict__.setdefault("cli_args", []).insert(0, self)
        return func

    def add_to(self, parser: Any) -> None:
        raise NotImplementedError


class arg(_Declaration):
    """One argument of the verb below: ``parser.add_argument(*flags, **kwargs)``.

    >>> p = argparse.ArgumentParser()
    >>> arg("--tags", help="comma-separated tags").add_to(p)
    >>> p.parse_args(["--tags", "a,b"]).tags
    'a,b'
    """

    def __init__(self, *flags: str, **kwargs: Any):
        self.flags, self.kwargs = flags, kwargs

    def add_to(self, parser: Any) -> None:
        parser.add_argument(*self.flags, **self.kwargs)


class one_of(_Declaration):
    """Mutually exclusive options of the verb below.

    >>> p = argparse.ArgumentParser(prog="x")
    >>> one_of(arg("--to"), arg("--cancel", action="store_true")).add_to(p)
    >>> p.parse_args(["--cancel"]).cancel
    True
    """

    def __init__(self, *args: arg):
        self.args = args

    def add_to(self, parser: Any) -> None:
        group = parser.add_mutually_exclusive_group()
        for each in self.args:
            each.add_to(group)


class defaults(_Declaration):
    """Default values of the verb below (``parser.set_defaults(**kwargs)``).

    >>> p = argparse.ArgumentParser()
    >>> defaults(kind="task").add_to(p)
    >>> p.parse_args([]).kind
    'task'
    """

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs

    def add_to(self, parser: Any) -> None:
        parser.set_defaults(**self.kwargs)


@dataclass(frozen=True)
class Verb:
    """One registered verb: its words (``("task", "complete")``), its one-line help, its
    function (None for a group of subverbs), whether it takes ``--json``, its arguments.

    Example: ``Verb(("list",), "list agents", cmd_list, True, ())``.
    """

    words: tuple[str, ...]
    help: str
    func: Callable | None
    json: bool
    args: tuple[_Declaration, ...]

    @property
    def description(self) -> str:
        """The first paragraph of the function's docstring (else the help), for ``-h``.

        >>> def cmd_x(town, args):
        ...     '''Do x.
        ...
        ...     Example: ``ttnb x``.'''
        >>> Verb(("x",), "do x", cmd_x, False, ()).description
        'Do x.'
        """
        doc = self.func.__doc__ if self.func is not None else None
        return inspect.cleandoc(doc).split("\n\n")[0] if doc else self.help


#: Every verb in registration order (the order of ``ttnb -h``).
VERBS: list[Verb] = []


def verb(words: str, help: str, *, json: bool = False) -> Callable[[Callable], Callable]:
    """Register the function below as ``ttnb WORDS`` (``"task complete"`` for a subverb of
    a :func:`group`); ``json`` adds ``--json``. Put it above the function's :class:`arg` lines.

    Example: ``@verb("list", "list agents", json=True)`` above ``def cmd_list(town, args)``.
    """
    def register(func: Callable) -> Callable:
        VERBS.append(Verb(tuple(words.split()), help, func, json, tuple(func.__dict__.get("cli_args", ()))))
        return func
    return register


def group(name: str, help: str) -> None:
    """Register ``ttnb NAME ACTION``: a verb whose subverbs are registered next.

    Example: ``group("task", "complete, fail, cancel, show or list tasks")``.
    """
    VERBS.append(Verb((name,), help, None, False, ()))


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more.

    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '0' must be 1 or more
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more.

    >>> seconds("1.5")
    1.5
    >>> seconds("soon")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'soon' is not a number of seconds
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more seconds")
    return value


def duration(text: str) -> float:
    """An argparse type: a duration > 0 — seconds, or with units (``90``, ``90s``, ``20m``,
    ``1h``, ``1h30m``).

    >>> duration("20m")
    1200.0
    >>> duration("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '0' is not a duration > 0 (90, 90s, 20m, 1h)
    """
    try:
        return parse_duration(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration > 0 (90, 90s, 20m, 1h)") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``ttnb`` argument parser: one subparser per registered verb (each sets ``func``
    and ``parser``), subverbs under their group. The verbs register when
    :mod:`tinytown_nb.cli.verbs` is imported (the package does it).

    >>> build_parser().parse_args(["send", "dev", "hi", "--query"]).kind
    'query'
    """
    town_help = f"town directory (default: ${ENV_TOWN_DIR}, else the current directory)"
    parser = argparse.ArgumentParser(
        prog=PROG, description="Drive a tinytown town from the command line (tt-compatible).",
        epilog=f"Exit codes: 0 ok, 1 error, 2 bad usage, 130 interrupted. Run `{PROG} VERB -h` for a verb.")
    parser.add_argument("-t", "--town", default=os.environ.get(ENV_TOWN_DIR) or ".",
                        metavar="DIR", help=town_help)
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {_version()}")
    # -t also works after the verb (`ttnb list -t DIR`), like tt's global flags.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-t", "--town", default=argparse.SUPPRESS, metavar="DIR", help=town_help)
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for scripts")
    under = {(): parser.add_subparsers(dest="verb", metavar="VERB", required=True)}
    for v in VERBS:
        p = under[v.words[:-1]].add_parser(v.words[-1], help=v.help, description=v.description,
                                           parents=[common, json_flag] if v.json else [common])
        p.set_defaults(func=v.func, parser=p)
        for declaration in v.args:
            declaration.add_to(p)
        if v.func is None:
            under[v.words] = p.add_subparsers(dest=f"{v.words[-1]}_verb", metavar="ACTION",
                                              required=True)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__
