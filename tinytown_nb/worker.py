"""``python -m tinytown_nb.worker --town DIR --agent ID``: the worker process of a CLI agent.

Started (detached) by ``Town.spawn``; see :mod:`tinytown_nb.core.worker`.
"""

import sys

from tinytown_nb.core.worker.launch import main

if __name__ == "__main__":
    sys.exit(main())
