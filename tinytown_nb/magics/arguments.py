"""Arguments of the ``%tt_*`` magics: each magic's option table, and the one tokenizer for
magics that take free text.

A magic declares each argument once, with :class:`arg` (IPython's ``@argument``, which
also enters an option in the magic's *option table* ``{option string: value name, or None
for a flag}``). :func:`parse_line` then reads a line with the parser IPython built from
those declarations (``func.parser``).

Why not IPython's ``parse_argstring``: it splits with ``arg_split(posix=False)``, which
keeps the quotes in a quoted value (``--cli "python w.py"`` would reach the parser as
``"python``) and fails on a lone apostrophe with a ValueError; the magics split with
:func:`shlex.split` (POSIX rules, quotes removed) and turn a bad quote into a UsageError.

Free text (``%tt_send``, ``%tt_assign``, ``%tt_backlog add``) is the rest of the line
after the options and names, verbatim: it may start with ``-`` and contain apostrophes;
an option of the magic written after the text is refused (it would silently become
text), unless the whole text is quoted or follows ``--``:

>>> options = {"--urgent": None, "--from": "AGENT"}
>>> split_text("--urgent dev -5 degrees, isn't it?", options, 1, magic="tt_send")
(['--urgent', 'dev'], "-5 degrees, isn't it?")
>>> split_text("dev -- rebase --urgent", options, 1, magic="tt_send")
(['dev'], 'rebase --urgent')
"""

from __future__ import annotations

import argparse
import keyword
import re
import shlex
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, real_name

__all__ = ["OptionTable", "arg", "common", "parse_line", "split_text"]

#: ``{option string: the name of its value (``S``, ``AGENT``), or None for a flag}``.
OptionTable = dict[str, "str | None"]

_TOKEN = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|\S+)""")
#: argparse actions that take no value.
_FLAG_ACTIONS = {"store_true", "store_false", "store_const", "append_const", "count",
                 "help", "version"}


def option_table(flags: tuple[str, ...], kwargs: dict[str, Any]) -> OptionTable:
    """The table entries of one ``add_argument(*flags, **kwargs)``: each option string
    with the name argparse shows for its value (``metavar``, else the upper-case dest).

    >>> option_table(("-o", "--out"), {"metavar": "NAME"})
    {'-o': 'NAME', '--out': 'NAME'}
    >>> option_table(("--max-rounds",), {"type": int})
    {'--max-rounds': 'MAX_ROUNDS'}
    >>> option_table(("--urgent",), {"action": "store_true"})
    {'--urgent': None}
    >>> option_table(("agent",), {})
    {}
    """
    options = [f for f in flags if f.startswith("-")]
    if not options:
        return {}  # a positional argument
    if kwargs.get("action") in _FLAG_ACTIONS or kwargs.get("nargs") == 0:
        return dict.fromkeys(options)
    dest = kwargs.get("dest") or next((f for f in options if f.startswith("--")), options[0])
    name = kwargs.get("metavar") or dest.lstrip("-").replace("-", "_").upper()
    return dict.fromkeys(options, name)


class arg(argument):
    """IPython's ``@argument(*flags, **kwargs)``, which also enters the option in the
    magic's option table (``func.option_table``) for :func:`split_text`.

    >>> @arg("--from", dest="sender", metavar="AGENT")
    ... @arg("--urgent", action="store_true")
    ... def tt_demo(self, line): ...
    >>> tt_demo.option_table
    {'--urgent': None, '--from': 'AGENT'}
    """

    def __init__(self, *flags: str, **kwargs: Any):
        super().__init__(*flags, **kwargs)
        self.table = option_table(flags, kwargs)

    def __call__(self, func: Callable) -> Callable:
        func = super().__call__(func)
        func.option_table = {**getattr(func, "option_table", {}), **self.table}
        return func


def common(func: Callable) -> Callable:
    """``--town DIR`` and ``-o NAME``, shared by every magic (put it below the others).

    >>> sorted(common(lambda self, line: None).option_table)
    ['--out', '--town', '-o']
    """
    func = arg("-o", "--out", metavar="NAME",
               help="also store the result in this notebook variable")(func)
    return arg("--town", metavar="DIR",
               help="use the town in DIR instead of the %%tt_init one")(func)


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        try:
            return shlex.split(token)[0]
        except ValueError:
            return token
    return token


def _is_option(token: str, options: OptionTable) -> bool:
    """One of the table's option strings, or ``--opt=value`` of one."""
    return token in options or (token.startswith("--") and token.split("=", 1)[0] in options)


def split_text(line: str, options: OptionTable, n_names: int, *, magic: str,
               check: bool = True) -> tuple[list[str], str]:
    """Split ``[options] NAME... TEXT`` into argv for the parser and the verbatim TEXT.

    Options may come before or between the names; the text starts at the first other
    token (or after ``--``). Once the names are read, a token starting with ``-`` is an
    option only if it is in ``options`` (so ``-5 degrees`` is text); before that it goes
    to the parser, which rejects an unknown one. A text that is one quoted string loses
    its quotes. With ``check``, an unquoted text (not after ``--``) that ends in one of
    the options (and its value) raises :class:`UsageError` naming ``%magic``: options go
    first.

    >>> options = {"--urgent": None, "--from": "AGENT", "-o": "NAME"}
    >>> split_text("--from=ann -o m dev it's done?", options, 1, magic="tt_send")
    (['--from=ann', '-o', 'm', 'dev'], "it's done?")
    >>> split_text('dev "please rebase --urgent"', options, 1, magic="tt_send")
    (['dev'], 'please rebase --urgent')
    >>> split_text("dev use --force", options, 1, magic="tt_send")   # not its option
    (['dev'], 'use --force')
    >>> split_text("dev please rebase --urgent", options, 1, magic="tt_send")
    Traceback (most recent call last):
    ...
    IPython.core.error.UsageError: Options go before the text: %tt_send --urgent dev please rebase (to keep '--urgent' as text, quote the whole text: %tt_send dev "please rebase --urgent")
    """
    argv: list[str] = []
    names, rest, want_value, explicit = 0, line, False, False
    while True:
        m = _TOKEN.match(rest)
        if not m:
            rest = ""
            break
        token = m.group(1)
        if want_value:
            argv.append(_unquote(token))
            want_value = False
        elif token == "--" and names == n_names:
            rest, explicit = rest[m.end():], True
            break
        elif token.startswith("-") and len(token) > 1 and (names < n_names or _is_option(token, options)):
            argv.append(token)
            want_value = options.get(token) is not None
        elif names < n_names:
            argv.append(_unquote(token))
            names += 1
        else:
            break
        rest = rest[m.end():]
    text = rest.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" and text.count(text[0]) == 2:
        return argv, text[1:-1]
    if check and text and not explicit:
        _refuse_trailing_options(magic, line[:len(line) - len(rest)].strip(), text, options)
    return argv, text


def _refuse_trailing_options(magic: str, head: str, text: str, options: OptionTable) -> None:
    """Raise :class:`UsageError` if ``text`` ends in the table's options (each with its
    value when it takes one): written after the text they would silently become text."""
    words, moved = text.split(), []
    while len(words) > 1:  # the first word is never an option: it started the text
        if _is_option(words[-1], options):
            group = [words.pop()]
            if options.get(group[0]) is not None:  # a value-taking option with nothing after it
                group.append(options[group[0]])
        elif options.get(words[-2]) is not None:
            group = words[-2:]
            del words[-2:]
        else:
            break
        moved[:0] = group
    if not moved:
        return
    opts = " ".join(moved)
    hint = f"Options go before the text: %{magic} {opts} {head} {' '.join(words)}"
    quote = next((q for q in "\"'" if q not in text), None)
    if quote is not None:
        hint += (f" (to keep {opts!r} as text, quote the whole text: "
                 f"%{magic} {head} {quote}{text}{quote})")
    raise UsageError(hint)


def parse_line(func: Callable, line: str, *, text_after: int | None = None,
               check_text: bool = True) -> argparse.Namespace:
    """Parse ``line`` with the magic's parser (``func.parser``, from ``@magic_arguments``).

    With ``text_after=N`` the rest of the line after N names is the verbatim text
    (``args.text_``, see :func:`split_text`), else the line is split like a shell would
    (``args.text_`` is None). ``-o NAME`` must be a Python variable name.

    >>> from IPython.core.magic_arguments import magic_arguments
    >>> @magic_arguments()
    ... @arg("to")
    ... @arg("text", nargs="*")
    ... @common
    ... def tt_demo(self, line): ...
    >>> args = parse_line(tt_demo, "-o m dev it's -5", text_after=1)
    >>> args.to, args.out, args.text_
    ('dev', 'm', "it's -5")
    >>> parse_line(tt_demo, "--town 'my town' dev").town
    'my town'
    """
    parser = func.parser
    if text_after is None:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"{exc} in: {line.strip()}") from None
        args = parser.parse_args(argv)
        args.text_ = None
    else:
        argv, text = split_text(line, func.option_table, text_after, magic=real_name(func),
                                check=check_text)
        args = parser.parse_args(argv)
        args.text_ = text
    out = getattr(args, "out", None)
    if out is not None and (not out.isidentifier() or keyword.iskeyword(out)):
        raise UsageError(f"-o {out!r} is not a Python variable name.")
    return args
