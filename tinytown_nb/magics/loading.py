"""Loading and unloading the extension: the magics, agent-name completion, the display
formatters and the input transformer that lets ``%tt_send dev is it done?`` run.

Everything goes through public IPython APIs: ``register_magics``, the completer's
``custom_matchers`` list (a v2 matcher that offers agent names, task ids and options where
they are expected and suppresses Python names on a ``%tt_*`` line),
``display_formatter.formatters[mime].for_type``/``pop``, the ``input_transformers_cleanup``
list and the ``configurables`` list. IPython has no call to take a magic back: the magics
are removed from ``ip.magics_manager.magics``, the documented dispatch table of the
``MagicsManager`` (only the entries still bound to our instance).

Example::

    %load_ext tinytown_nb      # load_ipython_extension(get_ipython())
    %reload_ext tinytown_nb    # unload, then load: one set of magics, hooks, transformer
    %unload_ext tinytown_nb
"""

from __future__ import annotations

import re
from typing import Any

from .commands import TinytownMagics
from .display import FORMATTERS

__all__ = ["AGENT_MAGICS", "completions", "load_ipython_extension", "question_mark_magics",
           "unload_ipython_extension"]

#: What each magic's positional arguments are, in order, for completion: ``agent`` (agent
#: names), ``to`` (agent names and ``supervisor``), ``task`` (recent task ids), ``text``
#: (free text: nothing), ``new`` (a new name: nothing).
POSITIONALS: dict[str, tuple[str, ...]] = {
    "tt_spawn": ("new",), "tt_assign": ("agent", "text"), "tt_send": ("to", "text"),
    "tt_kill": ("agent",), "tt_interrupt": ("agent",), "tt_resume": ("agent",),
    "tt_close": ("agent",), "tt_restart": ("agent",), "tt_inbox": ("agent",),
    "tt_wait": ("agent",), "tt_log": ("task",), "tt_init": ("new",),
    "tt_diff": ("agent",), "tt_merge": ("agent",), "tt_approve": ("task", "text"),
    "tt_reject": ("task", "text"), "tt_gate": ("text",),
}
#: ``%tt_backlog``'s actions and what follows each.
BACKLOG = {"add": ("text",), "list": (), "claim": ("task", "agent"), "assign-all": ("agent",),
           "remove": ("task",)}
#: Options whose value completes: agent names, task ids or a fixed set.
OPTION_VALUES: dict[str, Any] = {
    "--agent": "agent", "--parent": "agent", "--from": "agent", "--task": "task",
    "--state": ("pending", "assigned", "running", "completed", "failed", "cancelled"),
    "--until": ("done", "idle"),
}
#: Magics whose arguments include an agent name (kept for callers of the old hook).
AGENT_MAGICS = tuple(sorted({m for m, kinds in POSITIONALS.items() if {"agent", "to"} & set(kinds)}
                            | {"tt_tasks", "tt_backlog", "tt_events", "tt_history"}))

#: id(shell) → (its TinytownMagics, [(formatter, type, the formatter it replaced)], its matcher).
_loaded: dict[int, tuple[TinytownMagics, list[tuple[Any, type, Any]], Any]] = {}


def completions(magics: TinytownMagics, text: str) -> list[str] | None:
    """What Tab offers at the end of ``text`` (a ``%tt_*`` line up to the cursor): the
    magic's options after a ``-``, agent names or task ids where one is expected, the
    values of ``--state``/``--until``, nothing in free text; None for any other line.
    Reads only the magics' caches (no Redis call).

    >>> m = TinytownMagics(); m.agent_names, m.task_ids = ["dev", "ops"], ["3f2a"]
    >>> completions(m, "%tt_assign d"), completions(m, "%tt_assign dev Fix th")
    (['dev'], [])
    >>> completions(m, "%tt_log "), completions(m, "%tt_tasks --state c"), completions(m, "x = 1")
    (['3f2a'], ['cancelled', 'completed'], None)
    """
    words = text.lstrip().split(" ")
    name = words[0].lstrip("%")
    table = TinytownMagics.magics["line"].get(name) or TinytownMagics.magics["cell"].get(name)
    if not name.startswith("tt_") or table is None or len(words) < 2:
        return None
    options: dict[str, str | None] = getattr(getattr(magics, name), "option_table", {})
    *done, current = words[1:]
    kinds = BACKLOG.get(done[0], ()) if name == "tt_backlog" and done else POSITIONALS.get(name, ())
    if name == "tt_backlog" and not done:
        kinds = ("action",)
    position, expect = 0, None
    skip = name == "tt_backlog" and bool(done)
    for word in done:
        if skip:
            skip = False
            continue
        if not word:
            continue
        if expect is not None:
            expect = None
        elif word in options and options[word] is not None:
            expect = word
        elif not word.startswith("-"):
            position += 1
    if expect is not None:
        kind = OPTION_VALUES.get(expect)
    elif current.startswith("-"):
        return sorted(o for o in options if o.startswith(current))
    else:
        kind = kinds[position] if position < len(kinds) else None
        if "text" in kinds[:position]:
            kind = None
    if kind == "action":
        pool: Any = list(BACKLOG)
    elif kind in ("agent", "to"):
        pool = list(magics.agent_names) + (["supervisor"] if kind == "to" else [])
    elif kind == "task":
        pool = list(magics.task_ids)
    elif isinstance(kind, tuple):
        pool = list(kind)
    else:
        pool = []
    return sorted(v for v in pool if v.lower().startswith(current.lower()))


def _matcher(shell: Any) -> Any:
    """The shell's completion matcher (IPython's v2 API): on a ``%tt_*`` line where it has
    something to offer, only that (no Python names or keywords: IPython suppresses the
    other matchers only for a matcher that found something)."""
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher(identifier="tinytown_nb", priority=10)
    def tinytown_matcher(context: Any) -> dict[str, Any]:
        entry = _loaded.get(id(shell))
        found = completions(entry[0], context.text_until_cursor) if entry else None
        if found is None:
            return {"completions": [], "suppress": False}
        return {"completions": [SimpleCompletion(t, type="tinytown") for t in found], "suppress": True}

    return tinytown_matcher


#: ``[TARGET =] %tt_NAME ARGS?``: a line magic whose text ends in ``?`` (not ``%tt_send?``).
_HELP_END = re.compile(r"(?P<indent>[ \t]*)(?P<target>[A-Za-z_][\w.]*[ \t]*=[ \t]*)?"
                       r"%(?P<name>tt_\w+)[ \t]+(?P<args>\S.*?\?)[ \t]*")


def _lines_in_tokens(lines: list[str]) -> set[int]:
    """Indices of the lines that continue a token begun on an earlier line (the inside
    and end of a triple-quoted string): they are text, not magics."""
    from IPython.core.inputtransformer2 import make_tokens_by_line

    inside: set[int] = set()
    for tokens in make_tokens_by_line(lines):
        for tok in tokens:
            if tok.end[0] > tok.start[0]:  # 1-based rows
                inside.update(range(tok.start[0], tok.end[0]))
    return inside


def question_mark_magics(lines: list[str]) -> list[str]:
    """Input transformer (``shell.input_transformers_cleanup``): a ``%tt_*`` line magic
    whose text ends in ``?`` runs, instead of IPython taking the line for a help request
    on its last word (``%tt_send dev ready?`` → ``Object `ready` not found.``).

    Rewrites ``[TARGET =] %tt_NAME ARGS?`` (ARGS not empty) to the call IPython makes for
    any other magic line; ``%tt_send?`` and ``%tt_send??`` still show help, and cell
    magics (``%%...``), other lines and lines inside a multi-line string are left alone.

    >>> question_mark_magics(["%tt_send dev ready?\\n"])
    ["get_ipython().run_line_magic('tt_send', 'dev ready?')\\n"]
    >>> question_mark_magics(["%tt_send?\\n", "x = 1  # %tt_send dev no?\\n"])
    ['%tt_send?\\n', 'x = 1  # %tt_send dev no?\\n']
    """
    if not lines or lines[0].startswith("%%"):
        return lines
    found = []
    for i, line in enumerate(lines):
        if "%tt_" in line and "?" in line:
            body = line.rstrip("\r\n")
            m = _HELP_END.fullmatch(body)
            if m and m.group("name") in TinytownMagics.magics["line"]:
                found.append((i, m, line[len(body):]))
    if not found:
        return lines
    inside = _lines_in_tokens(lines)
    out = list(lines)
    for i, m, end in found:
        if i not in inside:
            out[i] = (f"{m.group('indent')}{m.group('target') or ''}get_ipython()."
                      f"run_line_magic({m.group('name')!r}, {m.group('args')!r}){end}")
    return out


def load_ipython_extension(ip: Any) -> TinytownMagics:
    """``%load_ext tinytown_nb``: register the magics, the completion matcher, the ``?``-ending line
    transformer, the record reprs and the Town summary; returns the magics.

    Example: ``load_ipython_extension(get_ipython()).town`` is None until ``%tt_init``.
    """
    if id(ip) in _loaded:
        return _loaded[id(ip)][0]
    magics = TinytownMagics(ip)
    ip.register_magics(magics)
    matcher = _matcher(ip)
    ip.Completer.custom_matchers.append(matcher)
    formats = []
    for mime, typ, fn in FORMATTERS:
        formatter = ip.display_formatter.formatters[mime]
        formats.append((formatter, typ, formatter.for_type(typ, fn)))
    if question_mark_magics not in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.append(question_mark_magics)
    _loaded[id(ip)] = (magics, formats, matcher)
    return magics


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext tinytown_nb``: stop views and watchers, close connections, and take
    back the magics, completion matcher, formatters, transformer and ``%config`` entry. Example: ``unload_ipython_extension(get_ipython())``."""
    entry = _loaded.pop(id(ip), None)
    if entry is None:
        return
    magics, formats, matcher = entry
    magics.close()
    while matcher in ip.Completer.custom_matchers:
        ip.Completer.custom_matchers.remove(matcher)
    while question_mark_magics in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.remove(question_mark_magics)
    for formatter, typ, old in formats:
        formatter.pop(typ, None)
        if old is not None:
            formatter.for_type(typ, old)
    for kind, names in magics.magics.items():
        table = ip.magics_manager.magics.get(kind, {})
        for name in names:
            if getattr(table.get(name), "__self__", None) is magics:  # not one registered since
                del table[name]
    while magics in ip.configurables:
        ip.configurables.remove(magics)
