"""An in-process IPython shell for magic tests (jupysql's TestingShell pattern).

``run_cell`` raises the cell's error instead of printing it; history is off (many shells
otherwise leak sqlite handles: "too many open files"); ``displayhook.flush`` is stubbed
(it can hang in gc).
"""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


class TestingShell(InteractiveShell):
    """An InteractiveShell whose ``run_cell`` raises the error of a failing cell."""

    def run_cell(self, *args, **kwargs):
        result = super().run_cell(*args, **kwargs)
        result.raise_error()
        return result

    def run_cell_quietly(self, cell: str):
        """Run a cell the way a notebook does (errors are shown, not raised)."""
        return InteractiveShell.run_cell(self, cell)


def testing_shell() -> TestingShell:
    """The process-wide testing shell, made on first use."""
    if TestingShell.initialized():
        return TestingShell.instance()
    config = Config()
    config.HistoryAccessor.enabled = False
    config.HistoryManager.enabled = False
    shell = TestingShell.instance(config=config)
    shell.displayhook.flush = lambda: None
    return shell


def loaded_shell(tmp_path):
    """Generator for a fixture: the shell with the extension loaded (a bare ``%tt_init``
    goes to ``tmp_path/default``, never the working directory); afterwards unloads it and
    shuts down every managed server the magics (then loaded) started."""
    from tinytown_nb.magics import _loaded

    shell = testing_shell()
    before = set(shell.user_ns)
    shell.config.TinytownMagics.default_dir = str(tmp_path / "default")
    shell.run_line_magic("load_ext", "tinytown_nb")
    try:
        yield shell
    finally:
        entry = _loaded.get(id(shell))
        towns = list(entry[0].towns.values()) if entry else []
        shell.run_line_magic("unload_ext", "tinytown_nb")
        for town in towns:
            town.shutdown()
        shell.config.pop("TinytownMagics", None)
        for name in set(shell.user_ns) - before:  # the next test starts with a clean namespace
            shell.user_ns.pop(name, None)
