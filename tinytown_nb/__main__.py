"""``python -m tinytown_nb …`` runs the ``ttnb`` command line (see :mod:`tinytown_nb.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
