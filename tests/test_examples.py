"""The docstring examples of tinytown_nb are tests: every module's examples run here.

Each docstring runs on its own, in a fresh scratch directory that is also the working
directory, with ``tests/fakes`` first on PATH (so ``cli="claude"`` or ``cli="codex"`` runs
the fake AI CLIs), HOME pointing into the scratch directory and a git identity set. Besides
the module's own names it finds:

* ``town``: a fresh empty town named ``demo`` with its own managed server, whose root is
  a git checkout on ``main`` with one commit (so agents can have worktrees), made only for
  docstrings that use ``town`` or ``store``; and ``store``, its :class:`Store`;
* ``repo``: a git checkout on ``main`` with one commit (``README.md``), made only for
  docstrings that use it;
* ``tmp``: the scratch directory (a ``Path``).

Afterwards every town the docstring made is stopped and every process it started (servers,
workers, commands) killed (quicker than a clean shutdown). ``# doctest: +SKIP`` is only for
what cannot run here: an example that blocks, a real AI CLI's cost, a browser, the reader's
own files.
"""

from __future__ import annotations

import builtins
import doctest
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import tinytown_nb
from tinytown_nb.core import Town
from tinytown_nb.core.worker import stop_local_workers

from conftest import kill_leftovers

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.IGNORE_EXCEPTION_DETAIL
FAKES = Path(__file__).parent / "fakes"
USES_TOWN = re.compile(r"\b(town|store)\b")
USES_REPO = re.compile(r"\brepo\b")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Ann Example", "GIT_AUTHOR_EMAIL": "ann@example.com",
                "GIT_COMMITTER_NAME": "Ann Example", "GIT_COMMITTER_EMAIL": "ann@example.com"}
FINDER = doctest.DocTestFinder()


def _examples(name: str) -> list[doctest.DocTest]:
    return sorted((t for t in FINDER.find(importlib.import_module(name)) if t.examples),
                  key=lambda t: t.name)


MODULES = [name for name in ["tinytown_nb", *(m.name for m in pkgutil.walk_packages(
    tinytown_nb.__path__, "tinytown_nb."))] if _examples(name)]


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A directory for the examples, with PATH, HOME and the Redis variables set for them."""
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("REDIS_URL", "TINYTOWN_REDIS_PASSWORD", "TINYTOWN_TOWN_DIR", "TINYTOWN_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in GIT_IDENTITY.items():  # HOME moved: no ~/.gitconfig
        monkeypatch.setenv(var, value)
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        kill_leftovers(tmp_path)


def _uses(test: doctest.DocTest, name: re.Pattern) -> bool:
    return any(name.search(e.source) for e in test.examples if not e.options.get(doctest.SKIP))


@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    """A git checkout on ``main`` with one commit, copied for each docstring that needs one."""
    repo = tmp_path_factory.mktemp("checkout") / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("# demo\n")
    env = {**os.environ, **GIT_IDENTITY}
    for args in (["init", "-q", "-b", "main"], ["add", "README.md"], ["commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo


def _stop(towns: list[Town], where: Path) -> None:
    """Stop what a docstring started: its towns' function agents, then every process
    (servers, workers, commands)."""
    for town in towns:
        stop_local_workers(town.store, timeout=1.0)
    kill_leftovers(where)
    for town in towns:
        town.disconnect()


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module, scratch, checkout, monkeypatch):
    # doctest echoes through sys.__displayhook__, which sets builtins._ — and IPython's
    # displayhook then stops setting `_` for later tests in this process (as for gettext)
    monkeypatch.setitem(builtins.__dict__, "_", None)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for i, test in enumerate(_examples(module)):
        where = scratch / f"{i:03d}"
        where.mkdir()
        monkeypatch.chdir(where)
        given: dict = {"tmp": where}
        made: list[Town] = []
        if _uses(test, USES_REPO):
            given["repo"] = Path(shutil.copytree(checkout, where / "repo")).resolve()
        if _uses(test, USES_TOWN):
            town = Town.init(shutil.copytree(checkout, where / "town"), name="demo")
            given |= {"town": town, "store": town.store}
            made.append(town)
        test.globs = {**given, **test.globs}  # the module's own names win
        try:
            runner.run(test, out=report.append, clear_globs=False)
        finally:
            _stop(made + [v for v in test.globs.values() if isinstance(v, Town) and v not in made],
                  where)
            test.globs.clear()
    if runner.failures:
        pytest.fail("".join(report), pytrace=False)
