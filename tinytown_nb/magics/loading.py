"""Loading and unloading the extension: the magics, agent-name completion, the display
formatters and the input transformer that lets ``%tt_send dev is it done?`` run.

Everything goes through public IPython APIs: ``register_magics``, ``set_hook``,
``display_formatter.formatters[mime].for_type``/``pop``, the ``input_transformers_cleanup``
list and the ``configurables`` list. IPython has no call to take a magic or a hook back:

* the magics are removed from ``ip.magics_manager.magics``, the documented dispatch table
  of the ``MagicsManager`` (only the entries still bound to our instance);
* the completer hooks are set once per shell and stay: after an unload they find no
  loaded extension and complete nothing, and a reload does not add them again.

Example::

    %load_ext tinytown_nb      # load_ipython_extension(get_ipython())
    %reload_ext tinytown_nb    # unload, then load: one set of magics, hooks, transformer
    %unload_ext tinytown_nb
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from .commands import TinytownMagics
from .display import FORMATTERS

__all__ = ["AGENT_MAGICS", "load_ipython_extension", "question_mark_magics",
           "unload_ipython_extension"]

#: Magics whose arguments include an agent name (tab completion offers the cached names).
AGENT_MAGICS = ("tt_spawn", "tt_assign", "tt_tasks", "tt_inbox", "tt_send", "tt_backlog",
                "tt_kill", "tt_interrupt", "tt_resume", "tt_close", "tt_restart", "tt_wait",
                "tt_events", "tt_history", "tt_diff", "tt_merge")

#: id(shell) → (its TinytownMagics, [(formatter, type, the formatter it replaced)]).
_loaded: dict[int, tuple[TinytownMagics, list[tuple[Any, type, Any]]]] = {}
#: Shells whose completer hooks are set (once: IPython cannot remove a hook).
_hooked: weakref.WeakSet = weakref.WeakSet()


def _complete_agents(shell: Any, event: Any) -> list[str]:
    """Agent names from the cache (no Redis call here); subcommands for %tt_backlog.
    Nothing while the extension is not loaded in ``shell``."""
    entry = _loaded.get(id(shell))
    if entry is None:
        return []
    names = list(entry[0].agent_names)
    words = event.line.split()
    if words and words[0].lstrip("%") == "tt_backlog" and len(words) <= 2 and not event.line.endswith(" "):
        return ["add", "list", "claim", "assign-all", "remove"]
    return names + (["supervisor"] if words and words[0].lstrip("%") == "tt_send" else [])


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
    """``%load_ext tinytown_nb``: register the magics, completers, the ``?``-ending line
    transformer, the record reprs and the Town summary; returns the magics.

    Example: ``load_ipython_extension(get_ipython()).town`` is None until ``%tt_init``.
    """
    if id(ip) in _loaded:
        return _loaded[id(ip)][0]
    magics = TinytownMagics(ip)
    ip.register_magics(magics)
    if ip not in _hooked:
        for name in AGENT_MAGICS:
            for key in (f"%{name}", f"%%{name}"):
                ip.set_hook("complete_command", _complete_agents, str_key=key)
        _hooked.add(ip)
    formats = []
    for mime, typ, fn in FORMATTERS:
        formatter = ip.display_formatter.formatters[mime]
        formats.append((formatter, typ, formatter.for_type(typ, fn)))
    if question_mark_magics not in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.append(question_mark_magics)
    _loaded[id(ip)] = (magics, formats)
    return magics


def unload_ipython_extension(ip: Any) -> None:
    """``%unload_ext tinytown_nb``: stop views and watchers, close connections, and take
    back the magics, formatters, transformer and ``%config`` entry (the completer hooks
    stay, inert). Example: ``unload_ipython_extension(get_ipython())``."""
    entry = _loaded.pop(id(ip), None)
    if entry is None:
        return
    magics, formats = entry
    magics.close()
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
