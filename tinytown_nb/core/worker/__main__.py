"""``python -m tinytown_nb.core.worker --town DIR --agent ID``: a CLI agent's worker."""

import sys

from .launch import main

if __name__ == "__main__":
    sys.exit(main())
