"""Binder's environment, rebuilt the way repo2docker builds it: a fresh venv made only from
``binder/requirements.txt`` (which installs this checkout), ``binder/postBuild`` run once,
then every tutorial executed by nbclient through ``binder/start`` inside that venv.

Slow (a pip install into an empty venv: about a minute with a warm pip cache), but part of
the default run: a tutorial or Binder file that does not work there is a bug.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BINDER = REPO / "binder"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    return proc


def test_binder_files_are_what_repo2docker_expects():
    assert sorted(p.name for p in BINDER.iterdir()) == ["postBuild", "requirements.txt",
                                                        "runtime.txt", "start"]
    assert not (REPO / ".binder").exists(), "repo2docker refuses both binder/ and .binder/"
    for script in ("postBuild", "start"):
        path = BINDER / script
        assert os.access(path, os.X_OK), f"binder/{script} must be executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
    start = (BINDER / "start").read_text().rstrip()
    assert start.endswith('exec "$@"'), 'binder/start must end with exec "$@"'


def test_fresh_binder_venv_runs_every_tutorial(tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"))
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "-r", BINDER / "requirements.txt"],
         cwd=REPO, env=env)
    built = _run(["bash", BINDER / "postBuild"], cwd=REPO, env=env)
    assert "server binary" in built.stdout

    # The venv holds only what the Binder files asked for: JupyterLab and the package.
    check = _run([bin_dir / "python", "-c",
                  "import jupyterlab, tinytown_nb, sys; print(tinytown_nb.__file__)"], env=env)
    assert Path(check.stdout.strip()).is_relative_to(REPO)

    work = tmp_path / "notebooks"
    work.mkdir()
    for path in (REPO / "notebooks").iterdir():
        if path.suffix in (".ipynb", ".py", ".cfg"):
            shutil.copy(path, work / path.name)
    # Tutorial 08 puts the repository's fake AI CLIs first on PATH (../tests/fakes), as a
    # Binder checkout has them; the copy keeps that layout.
    shutil.copytree(REPO / "tests" / "fakes", tmp_path / "tests" / "fakes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tutorials = sorted(p.name for p in work.glob("[0-9][0-9]-*.ipynb"))
    assert len(tutorials) >= 7
    ran = _run([BINDER / "start", bin_dir / "python", work / "execute.py", "--check"],
               cwd=work, env=env)
    assert [line.split()[0] for line in ran.stdout.splitlines() if " ok " in line] == tutorials
    assert not list(work.glob("towns/*/.tt/redis.sock")), "a tutorial left its town's server running"
