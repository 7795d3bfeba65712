"""A git worktree per coding agent, end to end: towns whose root is a git repository made in
tmp_path (no network), real worker processes running small scripts that edit and commit,
a real server.

Refusals are checked to leave nothing behind: the worktree list, the branches, the
``.tt/worktrees`` folder, the town's keys and its event stream are compared before/after.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from conftest import eventually, git, kill_leftovers
from ipshell import loaded_shell
from tinytown_nb import frames
from tinytown_nb.cli import main as ttnb_main
from tinytown_nb.widgets import TownView
from tinytown_nb.core import (AgentExists, AgentNotFound, ConfigError, Diff, InvalidState, MergeConflict,
                              TaskState, Town, procs)

# An agent's command: the task text is "<file> <line>"; it writes the line into the file
# (in its working directory: its worktree), commits unless the text ends in "(draft)",
# and prints where it ran. With $SYNC_DIR set it first waits until $SYNC_PARTIES agents
# have started (failing when alone), which proves the agents ran at the same time.
EDIT = """\
import os, subprocess, sys, time
from pathlib import Path

text = sys.stdin.read().strip()
name = os.environ["TINYTOWN_AGENT_NAME"]
sync = os.environ.get("SYNC_DIR")
if sync:
    Path(sync, name).touch()
    deadline = time.monotonic() + 30
    while len(os.listdir(sync)) < int(os.environ["SYNC_PARTIES"]):
        if time.monotonic() > deadline:
            sys.exit(f"{name} ran alone: the other agent never started")
        time.sleep(0.02)
file, _, line = text.partition(" ")
Path(file).write_text(line + "\\n")
if not line.endswith("(draft)"):
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-q", "-m", f"{name}: {line}"], check=True)
print(os.getcwd())
"""

# A task that takes long: the first run leaves work in progress (uncommitted) and waits;
# a run that finds that work finishes it.
SLOW = """\
import os, sys, time
from pathlib import Path

sys.stdin.read()
progress = Path("progress.txt")
if progress.exists():
    print("resumed in " + os.getcwd())
    sys.exit(0)
progress.write_text("half done\\n")
time.sleep(120)
"""


pytestmark = pytest.mark.usefixtures("hermetic_git")


@pytest.fixture
def repo_town(tmp_path):
    """A town whose root is a git repository (main: app.py, shared.txt; the town's own
    files committed too, so the main checkout starts clean)."""
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "-c", "init.defaultBranch=main", "init", "-q")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    (root / "app.py").write_text("print('hello')\n")
    (root / "shared.txt").write_text("base\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    town = Town.init(root, name="wt")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "a tinytown town")
    yield town
    try:
        town.shutdown()
    finally:
        kill_leftovers(town.root)


@pytest.fixture
def edit(tmp_path) -> str:
    """The command line of an editing agent (its script lives outside the repository)."""
    script = tmp_path / "edit.py"
    script.write_text(EDIT)
    return f"{sys.executable} {script}"


def state(town: Town) -> dict:
    """What a refused spawn must not change: git's worktrees and branches, the worktrees
    folder, the town's keys and events."""
    root = town.root
    folder = root / ".tt" / "worktrees"
    return {
        "worktrees": git(root, "worktree", "list", "--porcelain"),
        "branches": git(root, "branch", "--list"),
        "config": git(root, "config", "--local", "--list"),
        "folder": sorted(p.name for p in folder.iterdir()) if folder.exists() else None,
        "keys": sorted(town.redis.keys(f"tt:{town.name}:*")),
        "events": town.redis.xlen(town.keys.events),
        "main": git(root, "status", "--porcelain") + git(root, "rev-parse", "HEAD"),
    }


def main_checkout(town: Town) -> tuple[str, str, str]:
    root = town.root
    return (git(root, "rev-parse", "HEAD"), git(root, "status", "--porcelain"),
            (root / "shared.txt").read_text())


def worker_pid(town: Town, agent: str) -> int:
    return int(town.redis.hget(town.keys.worker(town.agent(agent).id), "pid"))


# --------------------------------------------------------------------------- working in parallel


def test_two_agents_edit_the_same_file_in_parallel_and_merge(repo_town, edit, tmp_path, monkeypatch):
    town = repo_town
    sync = tmp_path / "sync"
    sync.mkdir()
    monkeypatch.setenv("SYNC_DIR", str(sync))   # inherited by the worker processes
    monkeypatch.setenv("SYNC_PARTIES", "2")
    before = main_checkout(town)
    alice = town.spawn("alice", cli=edit, worktree=True)
    bob = town.spawn("bob", cli=edit, worktree=True)
    paths = {w.agent: w.path for w in town.worktrees(status=False)}
    assert paths == {"alice": town.root / ".tt" / "worktrees" / "alice",
                     "bob": town.root / ".tt" / "worktrees" / "bob"}

    jobs = [town.assign(alice, "shared.txt alice was here"), town.assign(bob, "shared.txt bob was here")]
    done = town.wait(all=True, timeout=60)
    assert [t.state for t in done] == [TaskState.COMPLETED] * 2, [t.result for t in done]
    # each ran in its own worktree, at the same time (the sync barrier), and committed there
    assert [town.task(t).result for t in jobs] == [str(paths["alice"]), str(paths["bob"])]
    assert sorted(os.listdir(sync)) == ["alice", "bob"]
    assert (paths["alice"] / "shared.txt").read_text() == "alice was here\n"
    assert (paths["bob"] / "shared.txt").read_text() == "bob was here\n"
    assert git(town.root, "log", "-1", "--format=%s", "tt/alice").strip() == "alice: alice was here"
    assert main_checkout(town) == before  # the main checkout is untouched

    rows = {w.agent: w for w in town.worktrees()}
    assert [(w.branch, w.base, w.ahead, w.behind, w.changed, w.merged) for w in rows.values()] == [
        ("tt/alice", "main", 1, 0, (), False), ("tt/bob", "main", 1, 0, (), False)]
    assert "1 commit on tt/bob not merged into main" in rows["bob"].unsaved

    d = town.diff("alice")
    assert isinstance(d, Diff) and isinstance(d, str)
    assert "+alice was here" in d and "-base" in d and "bob" not in d
    assert '<span style="color:#1a7f37">+alice was here</span>' in d._repr_html_()
    assert "shared.txt | 2 +-" in town.diff("bob", stat=True)

    merged = town.merge("alice")
    assert git(town.root, "rev-parse", "HEAD").strip() == merged
    assert (town.root / "shared.txt").read_text() == "alice was here\n"
    after_first = main_checkout(town)
    assert after_first[1] == ""  # clean
    with pytest.raises(MergeConflict, match="tt/bob into main conflicts in shared.txt") as info:
        town.merge("bob")
    assert info.value.files == ["shared.txt"]
    assert main_checkout(town) == after_first  # aborted: main exactly as it was
    # bob's diff still shows only bob's work (from where his branch forked)
    assert "+bob was here" in town.diff("bob") and "alice" not in town.diff("bob")
    rows = {w.agent: w for w in town.worktrees()}
    assert (rows["alice"].merged, rows["alice"].unsaved, rows["alice"].behind) == (True, None, 1)
    assert rows["bob"].merged is False

    df = frames.worktrees_frame(town)
    assert df.agent.tolist() == ["alice", "bob"] and str(df.ahead.dtype) == "Int64"
    assert df.merged.tolist() == [True, False] and df.changed.tolist() == [[], []]


def test_function_agents_get_their_workdir(repo_town, town):
    def where(task, ctx):
        Path(ctx.workdir, "from_fn.txt").write_text(task.description)
        return str(ctx.workdir)

    repo_town.spawn("helper", fn=where, worktree=True)
    t = repo_town.assign("helper", "written in the worktree")
    assert repo_town.wait(task=t, timeout=30).result == str(repo_town.worktrees("helper")[0].path)
    assert repo_town.worktrees("helper")[0].changed == ("from_fn.txt",)
    assert not (repo_town.root / "from_fn.txt").exists()
    view = TownView(repo_town, start=False)  # the dashboard's agents table names the branch
    view.refresh(force=True)
    html = view.agents_grid.html()
    assert ">worktree</th>" in html and "tt/helper" in html
    view.close()
    # without a worktree: the town root (and no git needed)
    town.spawn("plain", fn=lambda task, ctx: str(ctx.workdir))
    assert town.wait(task=town.assign("plain", "where?"), timeout=30).result == str(town.root)
    assert town.worktrees() == [] and town.worktrees("plain") == []


# --------------------------------------------------------------------------- restarts


def test_restart_reuses_the_worktree_after_a_kill_9_mid_task(repo_town, tmp_path):
    town = repo_town
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    town.spawn("dev", cli=f"{sys.executable} {script}", worktree=True)
    first = town.worktrees("dev", status=False)[0]
    task = town.assign("dev", "a long job")
    eventually(lambda: (first.path / "progress.txt").exists()
               and town.task(task).state is TaskState.RUNNING, what="the first run to start")
    pid = worker_pid(town, "dev")
    os.kill(pid, signal.SIGKILL)   # the worker dies mid-task
    eventually(lambda: not procs.alive(pid), what="the worker's death")

    town.restart("dev")   # recovers the dead worker's agent, puts the task back, reuses the worktree
    assert town.wait(task=task, timeout=60).result == f"resumed in {first.path}"
    again = town.worktrees("dev", status=False)[0]
    assert (again.path, again.branch, again.created_at) == (first.path, first.branch, first.created_at)
    assert git(town.root, "worktree", "list").count(".tt/worktrees/dev") == 1

    # a plain kill and restart reuses it too, and a deleted directory is re-made from its branch
    (first.path / "progress.txt").unlink()
    git(first.path, "commit", "-q", "--allow-empty", "-m", "work of dev")
    town.kill("dev")
    shutil.rmtree(first.path)
    assert town.worktrees("dev")[0].exists is False
    town.restart("dev")
    row = town.worktrees("dev")[0]
    assert (row.exists, row.ahead, row.path) == (True, 1, first.path)


# --------------------------------------------------------------------------- refusals


def test_spawn_outside_a_git_repository_is_refused_and_leaves_nothing(town):
    keys = sorted(town.redis.keys("*"))
    with pytest.raises(ConfigError, match="not inside a git repository"):
        town.spawn("dev", cli="cat", worktree=True)
    assert sorted(town.redis.keys("*")) == keys
    assert not (town.root / ".tt" / "worktrees").exists()


def test_spawn_refusals_leave_nothing_behind(repo_town, edit):
    town = repo_town
    git(town.root, "worktree", "add", "-q", "-b", "tt/taken", str(town.root.parent / "elsewhere"))
    git(town.root, "branch", "tt/mine")           # a branch someone made by hand
    town.spawn("live", cli=edit, worktree=True)   # a live agent with its worktree
    cases = [
        (dict(name="dev", worktree=True, base="no-such-branch"), ConfigError, "Unknown base 'no-such-branch'"),
        (dict(name="taken", worktree=True), ConfigError, "tt/taken is already checked out at"),
        (dict(name="mine", worktree=True), ConfigError, "tt/mine already exists and was not made"),
        (dict(name="dev", base="main"), ConfigError, "give it with worktree=True"),
        (dict(name="live", worktree=True), AgentExists, "already idle"),
        (dict(name="live", worktree=True, base="HEAD~1", replace=True), ConfigError,
         "was made from 'main', not 'HEAD~1'"),
        (dict(name="ghost", cli="no-such-program", worktree=True), ConfigError, "not installed"),
    ]
    for kwargs, error, message in cases:
        before = state(town)
        with pytest.raises(error, match=message):
            town.spawn(**{"cli": edit, **kwargs})
        assert state(town) == before, kwargs
    assert town.agent("live").state.value == "idle"  # the refused replace left it running


def test_a_worker_that_cannot_start_in_its_worktree_takes_the_worktree_back(repo_town):
    town = repo_town
    local = town.root / "local.sh"  # in the main checkout only (never committed)
    local.write_text("#!/bin/sh\ncat\n")
    local.chmod(0o755)
    before = state(town)
    with pytest.raises(InvalidState, match="exited at start"):
        town.spawn("dev", cli="./local.sh", worktree=True)
    after = state(town)
    # no worktree, branch or worktree record; the agent record stays, stopped, as for any
    # worker that fails at start (its log says why)
    for key in ("worktrees", "branches", "config", "folder"):
        assert after[key] == before[key], key
    assert not town.redis.exists(town.keys.worktree("dev"))
    assert town.agent("dev").state.value == "stopped"


# --------------------------------------------------------------------------- lifecycle


def test_kill_and_prune_keep_unsaved_work_and_remove_worktree_refuses_it(repo_town, edit):
    town = repo_town
    town.spawn("drafter", cli=edit, worktree=True)
    town.spawn("idler", cli=edit, worktree=True)
    town.spawn("committer", cli=edit, worktree=True)
    town.assign("drafter", "notes.md an idea (draft)")
    town.assign("committer", "app.py print('bye')")
    town.wait(all=True, timeout=60)
    drafter = town.worktrees("drafter")[0]
    assert drafter.changed == ("notes.md",)

    with pytest.raises(InvalidState, match="kill it first"):
        town.remove_worktree("drafter")
    town.kill("drafter")
    assert "🌳 Worktree tt/drafter kept: 1 uncommitted change (notes.md)" in town.activity("drafter", 10)
    town.kill("idler")
    assert not any("🌳" in line for line in town.activity("idler", 10))  # nothing to keep
    town.kill("committer")

    pruned = sorted(a.name for a in town.prune())
    assert pruned == ["committer", "drafter", "idler"]
    kept = {w.agent: w for w in town.worktrees()}
    assert sorted(kept) == ["committer", "drafter"]  # idler's clean, merged worktree went
    assert "tt/idler" not in git(town.root, "branch", "--list")
    assert not (town.root / ".tt" / "worktrees" / "idler").exists()
    assert kept["drafter"].unsaved == "1 uncommitted change (notes.md)"
    assert kept["committer"].unsaved == "1 commit on tt/committer not merged into main"

    # a pruned agent's worktree is still reachable by its name
    assert "+an idea (draft)" in town.diff("drafter")
    with pytest.raises(ConfigError, match="Not removing .*1 uncommitted change"):
        town.remove_worktree("drafter")
    with pytest.raises(ConfigError, match="not merged into main"):
        town.remove_worktree("committer")
    town.merge("committer")
    town.remove_worktree("committer")   # merged: goes, with its branch
    gone = town.remove_worktree("drafter", force=True)
    assert gone.path == drafter.path and not drafter.path.exists()
    assert town.worktrees() == []
    assert git(town.root, "branch", "--list").split() == ["*", "main"]
    assert git(town.root, "worktree", "list").count("\n") == 1
    assert town.redis.keys(f"tt:{town.name}:worktree:*") == []
    with pytest.raises(AgentNotFound, match="No agent 'drafter' in this town. Nor a worktree"):
        town.diff("drafter")


def test_a_name_spawned_again_gets_its_kept_worktree_back(repo_town, edit):
    town = repo_town
    town.spawn("dev", cli=edit, worktree=True)
    town.wait(task=town.assign("dev", "notes.md halfway (draft)"), timeout=30)
    town.kill("dev")
    town.prune()
    town.spawn("dev", cli=edit)   # without worktree=True: an agent with a worktree keeps it
    t = town.assign("dev", "more.md finished")
    assert town.wait(task=t, timeout=30).result == str(town.root / ".tt" / "worktrees" / "dev")
    row = town.worktrees("dev")[0]
    assert (row.ahead, row.changed) == (1, ())  # its commit took the kept draft along
    assert git(row.path, "show", "--stat", "--format=", "HEAD").count("|") == 2


# --------------------------------------------------------------------------- faces


@pytest.fixture
def ip(tmp_path):
    yield from loaded_shell(tmp_path)


def test_magics_spawn_diff_merge_and_kill(repo_town, edit, ip, capsys):
    town = repo_town
    root = town.root
    ip.run_cell(f"%tt_init {root}")
    ip.run_cell(f'%tt_spawn dev --cli "{edit}" --worktree --base main')
    assert town.worktrees("dev")[0].base == "main"
    ip.run_cell("%%tt_assign dev --wait\nshared.txt from a magic")
    d = ip.run_cell("%tt_diff dev").result
    assert isinstance(d, Diff) and "+from a magic" in d
    assert "shared.txt | 2 +-" in ip.run_cell("%tt_diff dev --stat").result
    capsys.readouterr()
    ip.run_cell("%tt_merge dev --squash -m 'Squashed work of dev'")
    assert "Merged tt/dev into main" in capsys.readouterr().out
    assert git(root, "log", "-1", "--format=%s").strip() == "Squashed work of dev"
    with pytest.raises(ConfigError, match="no worktree"):
        ip.run_cell("%tt_diff supervisor")
    ip.run_cell("%tt_assign dev notes.md a draft (draft)")
    town.wait("dev", timeout=30)
    ip.run_cell("%tt_kill dev")
    assert "Kept worktree tt/dev: 1 uncommitted change (notes.md)" in capsys.readouterr().out
    frame = ip.run_cell("%tt_worktrees").result
    assert frame.agent.tolist() == ["dev"] and frame.merged.tolist() == [True]
    assert frame.changed.tolist() == [["notes.md"]]


def ttnb(town: Town, *args: str) -> tuple[int, str, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = ttnb_main(["-t", str(town.root), *args])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_cli_spawn_diff_merge_kill_and_prune(repo_town, edit):
    town = repo_town
    code, out, err = ttnb(town, "spawn", "dev", "-c", edit, "--worktree")
    assert code == 0, err
    code, out, err = ttnb(town, "spawn", "other", "-c", edit, "--worktree", "--base", "nope")
    assert code == 1 and "Unknown base 'nope'" in err and not town.redis.exists(town.keys.worktree("other"))
    town.wait(task=town.assign("dev", "shared.txt from the cli"), timeout=30)
    town.assign("dev", "notes.md a draft (draft)")
    town.wait("dev", timeout=30)
    code, out, _ = ttnb(town, "diff", "dev", "--stat")
    assert code == 0 and "shared.txt | 2 +-" in out and "notes.md" in out
    code, out, _ = ttnb(town, "worktrees")
    assert code == 0 and "tt/dev" in out and "1 ahead" in out
    code, out, _ = ttnb(town, "kill", "dev")
    assert code == 0 and "Kept worktree" in out and "1 uncommitted change (notes.md)" in out
    code, out, _ = ttnb(town, "merge", "dev", "-m", "From the cli")
    assert code == 0 and "Merged tt/dev into main" in out
    code, out, _ = ttnb(town, "prune")
    assert code == 0 and "Kept worktree" in out and "notes.md" in out
