"""Execute the tutorials with nbclient, in the Python that runs this script.

``python notebooks/execute.py`` re-runs every ``notebooks/NN-*.ipynb`` in place and saves it
with its outputs (what is committed, and what ``pytest --nbval`` compares against);
``--check`` runs them without saving (CI's Binder test). Each notebook runs with its own
folder as the working directory, so its town lands in ``notebooks/towns/NN``.

Example::

    $ .venv/bin/python notebooks/execute.py 01-quickstart.ipynb
    01-quickstart.ipynb  ok  4.1 s
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def stop_towns(towns: Path = HERE / "towns") -> list[str]:
    """Shut down every town under ``towns`` whose managed server still runs (its worker
    processes first); a tutorial that failed midway leaves nothing running.

    >>> stop_towns()   # doctest: +SKIP
    ['05']
    """
    from tinytown_nb.core import Town
    from tinytown_nb.core.server import ManagedServer

    stopped = []
    for tt in sorted(towns.glob("*/.tt")):
        if ManagedServer(tt).is_running():
            try:
                Town.connect(tt.parent).shutdown()
            except Exception:
                ManagedServer(tt).stop()
            stopped.append(tt.parent.name)
    return stopped


def tutorials(folder: Path = HERE) -> list[Path]:
    """The numbered tutorials in ``folder``, in order."""
    return sorted(p for p in folder.glob("[0-9][0-9]-*.ipynb"))


def execute(path: Path, *, save: bool = True, timeout: int = 120) -> float:
    """Run one notebook top to bottom in a fresh ``python3`` kernel of this Python; an error
    in any cell raises ``CellExecutionError``. Returns the seconds it took.

    >>> execute(Path("notebooks/01-quickstart.ipynb"), save=False)   # doctest: +SKIP
    4.1
    """
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    # No widget state in the saved notebook: with it, nbconvert's HTML export shows each
    # widget as a placeholder that loads from a CDN (blank offline) instead of the HTML
    # snapshot every widget display of ours carries.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:  # a failed tutorial must not leave its town's server running
        stop_towns(path.parent / "towns")
    took = time.monotonic() - start
    nb.metadata.pop("widgets", None)
    if save:
        nbformat.write(nb, path)
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebooks/NN-*.ipynb)")
    parser.add_argument("--check", action="store_true", help="run without saving the outputs")
    args = parser.parse_args(argv)
    paths = [p if p.exists() else HERE / p for p in args.notebooks] or tutorials()
    for path in paths:
        took = execute(path.resolve(), save=not args.check)
        print(f"{path.name}  ok  {took:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
