"""``%tt_*`` magics: drive a town from notebook cells.

Load with ``%load_ext tinytown_nb``, then ``%tt_init`` (one default town per kernel; every
magic also takes ``--town DIR``). Each magic parses its arguments, calls the core and
returns a DataFrame, a record or the dashboard; ``-o NAME`` also stores the result in a
notebook variable. ``{var}`` on the line is expanded by IPython; ``%tt_spawn?`` shows usage.

Errors: what the argument parser can see (a missing or unknown option, a bad number, an
empty cell) raises ``UsageError``; everything the town rejects (an invalid name, an unknown
agent, a state that forbids the change) raises the core's one-line ``TinytownError``, which
also fails a headless notebook run.

Magics that take free text (``%tt_send``, ``%tt_assign``, ``%tt_backlog add``) read it
from the rest of the line after the options and names (as IPython hands it over: with
``{var}`` and ``$var`` expanded, as for every magic), so apostrophes need no quoting, it may
start with a dash (``-5 degrees``) and end with ``?`` (an input
transformer keeps IPython from taking that for a help request). Options go *before* the
text: one of the magic's options at its end is refused, unless the whole text is quoted.

``%tt_init`` returns the town, which displays as a summary (directory, Redis, agents and
tasks by state); ``%tt_wait`` and ``%tt_watch`` show a progress bar while they block.

The package, one job per module:

* :mod:`.arguments` — option tables and the free-text tokenizer;
* :mod:`.display` — how records and towns display, and the progress bar of a wait;
* :mod:`.commands` — the :class:`TinytownMagics` class with the magics;
* :mod:`.loading` — ``load_ipython_extension``/``unload_ipython_extension``, completion
  and the ``?``-ending line transformer.

Example::

    %load_ext tinytown_nb
    %tt_init demo-town
    %tt_spawn summarizer --fn summarize
    %%tt_assign summarizer --wait
    Summarize the README in three bullet points.
"""

from __future__ import annotations

from .commands import TinytownMagics
from .loading import load_ipython_extension, question_mark_magics, unload_ipython_extension
from .loading import _loaded  # noqa: F401  (the tests reach the loaded magics through it)

__all__ = ["TinytownMagics", "load_ipython_extension", "question_mark_magics",
           "unload_ipython_extension"]
