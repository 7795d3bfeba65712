"""``python -m tinytown_nb.cli …`` runs ``ttnb`` (as ``python -m tinytown_nb`` does)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
