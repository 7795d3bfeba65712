"""tinytown_nb: run and watch a team of AI agents from Jupyter, on tinytown's Redis format.

Example::

    >>> from tinytown_nb import Town
    >>> town = Town.init("my-town")
    >>> town.spawn("dev", cli="claude").state
    <AgentState.IDLE: 'idle'>

In a notebook: ``%load_ext tinytown_nb`` then ``%tt_init``.
"""

import logging as _logging

from .core import *  # noqa: F401,F403  (the public API lives in the core)
from .core import __all__ as _core_all

# a library logs nowhere unless the application says so (no "last resort" stderr output)
_logging.getLogger("tinytown_nb").addHandler(_logging.NullHandler())

__version__ = "0.1.0"
__all__ = list(_core_all)


def load_ipython_extension(ip):
    """``%load_ext tinytown_nb``: the ``%tt_*`` magics (IPython is imported only now)."""
    from .magics import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip):
    """``%unload_ext tinytown_nb``: stop every dashboard thread and close connections."""
    from .magics import unload_ipython_extension as unload

    unload(ip)
