"""tinytown_nb: run and watch a team of AI agents from Jupyter, on tinytown's Redis format.

Example::

    >>> from tinytown_nb import Town
    >>> town = Town.init("my-town")          # doctest: +SKIP
    >>> town.spawn("dev", cli="claude")      # doctest: +SKIP

In a notebook: ``%load_ext tinytown_nb`` then ``%tt_init``.
"""

from .core import *  # noqa: F401,F403  (the public API lives in the core)
from .core import __all__ as _core_all

__version__ = "0.1.0"
__all__ = list(_core_all)
