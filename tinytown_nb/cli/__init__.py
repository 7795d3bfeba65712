"""``ttnb``: the everyday ``tt`` verbs on the command line, a thin face over the core.

Agent CLIs run it inside a task (``ttnb task complete ID --result …``, ``ttnb send
supervisor "done"``); people use it from a terminal. Every verb parses its arguments, calls
one :class:`~tinytown_nb.core.town.Town` method and prints the answer; the rules live in
the core. Listing verbs take ``--json`` for scripts.

Exit codes: 0 ok, 1 a tinytown error (one line ``ttnb: error: …`` on stderr), 2 bad usage,
130 interrupted (Ctrl-C).

The package, one job per module: :mod:`.parser` (the verb registry and
:func:`build_parser`), :mod:`.verbs` (the verbs, each with its arguments), :mod:`.output`
(what they print), :mod:`.env` (the environment variables ``ttnb`` reads); :func:`main`
runs one command line.

Example::

    $ ttnb -t my-town init -n demo
    $ ttnb -t my-town spawn dev -c claude
    $ ttnb -t my-town assign dev "Write the README" --tags docs
    $ ttnb -t my-town list
      Robert [dev] (3f2a) - Starting
"""

from __future__ import annotations

import os
import sys

import redis

from ..core.errors import TinytownError, from_redis
from ..core.town import Town
from . import verbs  # noqa: F401  (importing the verbs registers them with the parser)
from .parser import PROG, BadUsage, build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``ttnb`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    >>> main(["-t", "/no/such/town", "list"])   # prints "ttnb: error: …" on stderr
    1
    """
    from .verbs import cmd_init

    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    town = None
    try:
        if args.func is not cmd_init:
            town = Town.connect(args.town)
        status = args.func(town, args)  # None, or a foreground worker's exit status
        sys.stdout.flush()
        return status or 0
    except BadUsage as exc:
        args.parser.error(str(exc))  # exits 2
    except TinytownError as exc:
        return _fail(str(exc))
    except redis.RedisError as exc:  # Town translates lost connections; this catches the rest
        return _fail(str(from_redis(exc, town.url if town is not None else "the town's Redis")))
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # `ttnb events | head`: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        return _fail(" ".join(str(exc).split()))
    except KeyboardInterrupt:
        return 130
    finally:
        if town is not None:
            try:
                town.disconnect()
            except Exception:  # noqa: BLE001 - closing must never mask the real outcome
                pass
    return 2  # not reached: parser.error exits


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 1
