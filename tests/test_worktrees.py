"""The git layer of "a worktree per coding agent", on real repositories made in tmp_path.

Every refusal is checked to leave nothing behind: the worktree list, the branches, the
branch config and every file under the repository (``.git`` included) are compared.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import git
from tinytown_nb.core import worktrees as wt
from tinytown_nb.core.errors import ConfigError, TinytownError
from tinytown_nb.core.worktrees import MergeConflict


pytestmark = pytest.mark.usefixtures("hermetic_git")


def commit_all(cwd: Path, message: str) -> str:
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message)
    return git(cwd, "rev-parse", "HEAD").strip()


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "-c", "init.defaultBranch=main", "init", "-q")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository whose path has a space, with one commit of app.py on main."""
    root = new_repo(tmp_path / "my repo")
    (root / "app.py").write_text("def greet():\n    return 'hello'\n\nX = 1\n")
    (root / "README.md").write_text("readme\n")
    commit_all(root, "init")
    return root


def wt_path(repo: Path, name: str) -> Path:
    return repo / ".tt" / "worktrees" / name


def snapshot(repo: Path) -> dict:
    files = {}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo).as_posix()
        # Objects, reflogs, packed-refs and the last message typed (COMMIT_EDITMSG) are
        # git's bookkeeping; refs are compared below.
        if rel.startswith((".git/objects", ".git/logs", ".git/packed-refs",
                           ".git/COMMIT_EDITMSG")):
            continue
        # The index is rewritten when git refreshes stat data; its path list is what counts.
        files[rel] = None if p.is_dir() or rel == ".git/index" else p.read_bytes()
    return {
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "branches": git(repo, "branch", "--list"),
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "files": files,
    }


def assert_unchanged(repo: Path, before: dict, what: object = "") -> None:
    after = snapshot(repo)
    old, new = before["files"], after["files"]
    changed = sorted(set(old) ^ set(new)) + sorted(k for k in set(old) & set(new)
                                                   if old[k] != new[k])
    assert changed == [], f"{what}: files differ: {changed}"
    assert after == before, what


def main_state(repo: Path) -> tuple[str, str, str]:
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"),
            (repo / "app.py").read_text())


# --------------------------------------------------------------------------- basics

def test_git_version_is_new_enough():
    assert wt.git_version() >= (2, 25, 0)


def test_a_missing_or_old_git_is_named(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ConfigError, match=r"git was not found on PATH; .* need git 2.25 or newer"):
        wt.repo_root(tmp_path)
    old = bin_dir / "git"  # a stand-in that only answers --version, as git 2.20 would
    old.write_text("#!/bin/sh\necho 'git version 2.20.1'\n")
    old.chmod(0o755)
    with pytest.raises(ConfigError, match=rf"{old} is 'git version 2.20.1'; .* 2.25 or newer"):
        wt.git_version()


def test_repo_root_finds_the_main_checkout(repo, tmp_path):
    info = wt.create(repo, wt_path(repo, "alice"), "tt/alice")
    (info.path / "src").mkdir()
    assert wt.repo_root(repo) == repo
    assert wt.repo_root(repo / "app.py") == repo
    assert wt.repo_root(info.path / "src") == repo  # from inside a linked worktree
    plain = tmp_path / "plain"
    plain.mkdir()
    assert wt.repo_root(plain) is None
    assert wt.repo_root(tmp_path / "missing") is None


def test_create_records_the_base_and_reuses_the_worktree(repo):
    head = git(repo, "rev-parse", "HEAD").strip()
    path = wt_path(repo, "alice")
    info = wt.create(repo, path, "tt/alice")
    assert (info.repo, info.path, info.branch) == (repo, path, "tt/alice")
    assert (info.base_commit, info.base_name, info.head, info.created) == (head, "main", head, True)
    assert git(path, "symbolic-ref", "--short", "HEAD").strip() == "tt/alice"
    assert (path / "app.py").read_text() == (repo / "app.py").read_text()
    assert wt.recorded_base(repo, "tt/alice") == (head, "main")
    # The nested worktree does not show in the main checkout (nor become a gitlink there).
    assert git(repo, "status", "--porcelain") == ""

    (repo / "later.txt").write_text("main moves on\n")
    commit_all(repo, "later")
    (path / "work.txt").write_text("agent work\n")
    again = wt.create(repo, path, "tt/alice")  # a restarted agent
    assert again.created is False
    assert (again.base_commit, again.base_name) == (head, "main")  # the recorded base
    assert (path / "work.txt").read_text() == "agent work\n"
    assert wt.create(repo, path, "tt/alice", base="main").created is False
    with pytest.raises(ConfigError, match=r"was made from 'main', not 'v9'"):
        wt.create(repo, path, "tt/alice", base="v9")


def test_create_from_a_named_base_and_from_a_detached_head(repo):
    first = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "tag", "v1")
    (repo / "app.py").write_text("changed\n")
    second = commit_all(repo, "second")

    info = wt.create(repo, wt_path(repo, "old"), "tt/old", base="v1")
    assert (info.base_commit, info.base_name, info.head) == (first, "v1", first)

    git(repo, "checkout", "-q", "--detach", "HEAD")
    info = wt.create(repo, wt_path(repo, "det"), "tt/det")
    assert (info.base_commit, info.base_name) == (second, second)


def test_create_reattaches_its_branch_when_the_directory_was_deleted(repo):
    path = wt_path(repo, "alice")
    info = wt.create(repo, path, "tt/alice")
    (path / "work.txt").write_text("committed work\n")
    tip = commit_all(path, "agent work")
    subprocess.run(["rm", "-rf", str(path)], check=True)

    again = wt.create(repo, path, "tt/alice")
    assert again.created is True
    assert (again.head, again.base_commit, again.base_name) == (tip, info.base_commit, "main")
    assert (path / "work.txt").read_text() == "committed work\n"


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("branch", ["tt/a b", "bad..name", "-x", "tt/x.lock", "HEAD", "a~1", ""])
def test_create_refuses_a_branch_name_git_refuses(repo, branch):
    before = snapshot(repo)
    with pytest.raises(ConfigError, match="(?i)branch name"):
        wt.create(repo, wt_path(repo, "bad"), branch)
    assert_unchanged(repo, before)


def test_create_refusals_leave_nothing_behind(repo, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match="not inside a git repository"):
        wt.create(plain, plain / "wt", "tt/a")
    assert list(plain.iterdir()) == []

    empty = new_repo(tmp_path / "empty")
    before = snapshot(empty)
    with pytest.raises(ConfigError, match="has no commits yet; make a first commit"):
        wt.create(empty, wt_path(empty, "a"), "tt/a")
    assert_unchanged(empty, before)

    wt.create(repo, wt_path(repo, "alice"), "tt/alice")
    git(repo, "branch", "feature")
    (repo / "taken.txt").write_text("a file\n")
    (repo / "taken-dir").mkdir()
    (repo / "taken-dir" / "f").write_text("x\n")
    before = snapshot(repo)
    cases = [
        (dict(path=wt_path(repo, "b"), branch="tt/b", base="nope"), r"Unknown base 'nope'"),
        (dict(path=wt_path(repo, "b"), branch="tt/alice"),
         r"tt/alice is already checked out at .*alice"),
        (dict(path=wt_path(repo, "b"), branch="main"), r"main is already checked out at"),
        (dict(path=wt_path(repo, "b"), branch="feature"),
         r"Branch feature already exists and was not made by tinytown_nb"),
        (dict(path=repo / "taken.txt", branch="tt/b"), r"taken.txt already exists"),
        (dict(path=repo / "taken-dir", branch="tt/b"), r"taken-dir already exists"),
        (dict(path=wt_path(repo, "alice"), branch="tt/b"),
         r"already a worktree of tt/alice, not tt/b"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            wt.create(repo, **kwargs)
        assert_unchanged(repo, before, kwargs)


def test_a_failure_after_git_made_the_worktree_is_undone(repo):
    # A failing post-checkout hook makes `git worktree add` fail after it made the
    # directory, the .git/worktrees entry and the branch: all three must go again.
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\necho 'hook says no' >&2\nexit 3\n")
    hook.chmod(0o755)
    before = snapshot(repo)
    with pytest.raises(ConfigError, match="worktree failed"):
        wt.create(repo, wt_path(repo, "alice"), "tt/alice")
    assert_unchanged(repo, before)
    assert not (repo / ".tt").exists()  # the parent directories git made are gone too
    assert not (repo / ".git" / "worktrees").exists() or not any(
        (repo / ".git" / "worktrees").iterdir())


# --------------------------------------------------------------------------- agents in parallel

@pytest.fixture
def two_agents(repo):
    """alice and bob each change line 2 of app.py on their own branch and commit."""
    a = wt.create(repo, wt_path(repo, "alice"), "tt/alice")
    b = wt.create(repo, wt_path(repo, "bob the [builder]"), "tt/bob")  # spaces, glob chars
    (a.path / "app.py").write_text("def greet():\n    return 'hello from alice'\n\nX = 1\n")
    (b.path / "app.py").write_text("def greet():\n    return 'hi, bob here'\n\nX = 1\n")
    commit_all(a.path, "alice: greeting")
    commit_all(b.path, "bob: greeting")
    return a, b


def test_two_agents_edit_the_same_file_without_touching_the_main_checkout(repo, two_agents):
    a, b = two_agents
    head = a.base_commit
    assert main_state(repo) == (head + "\n", "", "def greet():\n    return 'hello'\n\nX = 1\n")
    assert git(a.path, "log", "--format=%s", "main..tt/alice").splitlines() == ["alice: greeting"]
    assert git(b.path, "log", "--format=%s", "main..tt/bob").splitlines() == ["bob: greeting"]

    st = wt.status(a.path, "main")
    assert (st.branch, st.ahead, st.behind, st.changed, st.merged) == ("tt/alice", 1, 0, (), False)
    assert st.head == git(repo, "rev-parse", "tt/alice").strip()
    (repo / "more.txt").write_text("main moves on\n")
    commit_all(repo, "main moves on")
    st = wt.status(a.path, "main")
    assert (st.ahead, st.behind) == (1, 1)
    assert wt.status(a.path, a.base_commit).behind == 0


def test_diff_shows_one_agents_work_and_never_touches_its_index(repo, two_agents):
    a, _ = two_agents
    (a.path / "README.md").write_text("readme\nalice was here\n")  # uncommitted
    (a.path / "notes dir").mkdir()
    (a.path / "notes dir" / "todo.md").write_text("- untracked idea\n")
    (repo / "main-only.txt").write_text("on main after the fork\n")
    commit_all(repo, "main after fork")
    index = Path(git(a.path, "rev-parse", "--absolute-git-dir").strip()) / "index"
    index_before, status_before = index.read_bytes(), git(a.path, "status", "--porcelain")

    text = wt.diff(a.path, "main")
    assert "+    return 'hello from alice'" in text        # committed on the branch
    assert "+alice was here" in text                       # uncommitted
    assert "new file mode" in text and "+- untracked idea" in text  # untracked, as added
    assert "hi, bob" not in text and "main-only" not in text   # not bob's, not main's since
    assert index.read_bytes() == index_before
    assert git(a.path, "status", "--porcelain") == status_before
    assert "?? " in status_before and "A " not in status_before

    stat = wt.diff(a.path, "main", stat=True)
    assert "app.py" in stat and "README.md" in stat and "notes dir/todo.md" in stat
    assert "3 files changed" in stat
    assert wt.status(a.path, "main").changed == ("README.md", "notes dir/todo.md")


# --------------------------------------------------------------------------- merge

def test_first_merge_succeeds_second_conflicts_and_is_undone(repo, two_agents):
    a, b = two_agents
    (repo / "scratch.txt").write_text("an untracked file in the main checkout\n")
    before = git(repo, "rev-parse", "HEAD").strip()

    merged = wt.merge(repo, "tt/alice")
    assert git(repo, "rev-parse", "HEAD").strip() == merged != before
    parents = git(repo, "log", "-1", "--format=%P").split()
    assert parents == [before, git(repo, "rev-parse", "tt/alice").strip()]
    assert git(repo, "log", "-1", "--format=%s").strip() == "Merge branch 'tt/alice' into main"
    assert "alice" in (repo / "app.py").read_text()
    assert wt.status(a.path, "main").merged is True
    assert wt.has_unsaved_work(a.path, "main") is None

    state, before = main_state(repo), snapshot(repo)
    with pytest.raises(MergeConflict) as err:
        wt.merge(repo, "tt/bob")
    assert_unchanged(repo, before)
    assert err.value.files == ["app.py"] and isinstance(err.value, TinytownError)
    assert "app.py" in str(err.value) and "\n" not in str(err.value)
    assert main_state(repo) == state
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    assert (repo / "scratch.txt").read_text() == "an untracked file in the main checkout\n"
    assert wt.status(b.path, "main").merged is False


def test_squash_merge_makes_one_commit_and_counts_as_merged(repo, two_agents):
    a, b = two_agents
    (a.path / "second.txt").write_text("second commit\n")
    commit_all(a.path, "alice: second")
    before = git(repo, "rev-parse", "HEAD").strip()

    new = wt.merge(repo, "tt/alice", squash=True)
    assert git(repo, "log", "-1", "--format=%P", new).split() == [before]  # one parent
    body = git(repo, "log", "-1", "--format=%B", new)
    assert body.startswith("Squash-merge branch 'tt/alice' into main") and "alice: second" in body
    assert (repo / "second.txt").read_text() == "second commit\n"
    assert git(repo, "status", "--porcelain") == ""
    st = wt.status(a.path, "main")
    assert (st.ahead, st.merged) == (2, True)  # no ancestry, yet merged by merge()
    with pytest.raises(ConfigError, match="Nothing to merge"):
        wt.merge(repo, "tt/alice", squash=True)
    assert git(repo, "rev-parse", "HEAD").strip() == new

    state, before = main_state(repo), snapshot(repo)
    with pytest.raises(MergeConflict, match="app.py"):
        wt.merge(repo, "tt/bob", squash=True, message="bob's work")
    assert_unchanged(repo, before)
    assert main_state(repo) == state
    assert not (repo / ".git" / "SQUASH_MSG").exists()

    wt.remove(repo, a.path, "tt/alice")  # squash-merged: no force needed
    assert git(repo, "branch", "--list", "tt/alice") == ""
    assert git(repo, "rev-parse", "HEAD").strip() == new


def test_merge_refusals_leave_the_main_checkout_as_it_was(repo, two_agents):
    a, _ = two_agents
    (a.path / "new.txt").write_text("from alice\n")
    commit_all(a.path, "alice adds new.txt")

    (repo / "app.py").write_text("edited by a human\n")
    before = snapshot(repo)
    with pytest.raises(ConfigError, match=r"uncommitted changes \(app.py\); commit or stash"):
        wt.merge(repo, "tt/alice")
    assert_unchanged(repo, before)
    git(repo, "checkout", "--", "app.py")

    (repo / "new.txt").write_text("the human's own file\n")
    before = snapshot(repo)
    with pytest.raises(ConfigError, match=r"would overwrite untracked files .*\(new.txt\)"):
        wt.merge(repo, "tt/alice")
    assert_unchanged(repo, before)
    (repo / "new.txt").unlink()

    git(repo, "switch", "-q", "-c", "other")
    before = snapshot(repo)
    with pytest.raises(ConfigError,
                       match=r"is on branch other, not main. Run `git -C .* switch main`"):
        wt.merge(repo, "tt/alice")
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(ConfigError, match=r"is on a detached HEAD, not main"):
        wt.merge(repo, "tt/alice")
    git(repo, "switch", "-q", "other")
    assert_unchanged(repo, before)

    git(repo, "switch", "-q", "main")
    for kwargs, message in [
        (dict(branch="tt/nobody"), r"No branch tt/nobody"),
        (dict(branch="tt/alice", into="nope"), r"No branch 'nope' to merge into"),
        (dict(branch="main", into="main"), r"Cannot merge main into itself"),
        (dict(branch="other"), r"no recorded base"),
    ]:
        with pytest.raises(ConfigError, match=message):
            wt.merge(repo, **kwargs)

    detached = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "--detach")
    d = wt.create(repo, wt_path(repo, "det"), "tt/det")
    git(repo, "switch", "-q", "main")
    assert d.base_name == detached
    with pytest.raises(ConfigError, match=r"not a local branch .* pass into="):
        wt.merge(repo, "tt/det")


def test_a_hook_that_rejects_the_merge_commit_leaves_main_as_it_was(repo, two_agents):
    hook = repo / ".git" / "hooks" / "commit-msg"
    hook.write_text("#!/bin/sh\necho 'commit-msg: no merges today' >&2\nexit 1\n")
    hook.chmod(0o755)
    before = snapshot(repo)
    for squash in (False, True):
        with pytest.raises(ConfigError, match=r"failed and was undone: .*no merges today"):
            wt.merge(repo, "tt/alice", squash=squash)
        assert_unchanged(repo, before, f"squash={squash}")
        assert not (repo / ".git" / "SQUASH_MSG").exists()
    hook.unlink()
    assert wt.merge(repo, "tt/alice", squash=True)


# --------------------------------------------------------------------------- remove

def test_remove_refuses_unsaved_work_then_removes(repo):
    info = wt.create(repo, wt_path(repo, "alice"), "tt/alice")
    assert wt.has_unsaved_work(info.path, "main") is None

    (info.path / "untracked.txt").write_text("idea\n")
    before = snapshot(repo)
    with pytest.raises(ConfigError, match=r"1 uncommitted change \(untracked.txt\).*force=True"):
        wt.remove(repo, info.path, "tt/alice")
    assert_unchanged(repo, before)

    commit_all(info.path, "idea")
    assert wt.has_unsaved_work(info.path, "main") == "1 commit on tt/alice not merged into main"
    (info.path / "app.py").write_text("half done\n")
    assert wt.has_unsaved_work(info.path, "main") == (
        "1 uncommitted change (app.py); 1 commit on tt/alice not merged into main")
    git(info.path, "checkout", "--", "app.py")
    with pytest.raises(ConfigError, match=r"1 commit on tt/alice not merged into main"):
        wt.remove(repo, info.path, "tt/alice")
    with pytest.raises(ConfigError, match=r"is not a worktree of"):
        wt.remove(repo, repo / "README.md", "tt/alice")

    wt.merge(repo, "tt/alice")
    wt.remove(repo, info.path, "tt/alice")
    assert not info.path.exists()
    assert git(repo, "branch", "--list", "tt/alice") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert "alice" not in (repo / ".git" / "info" / "exclude").read_text()
    assert git(repo, "status", "--porcelain") == ""  # .tt/worktrees is empty now


def test_remove_with_force_discards_work_and_keeps_other_branches(repo):
    info = wt.create(repo, wt_path(repo, "alice"), "tt/alice")
    (info.path / "work.txt").write_text("unmerged\n")
    commit_all(info.path, "unmerged work")
    (info.path / "dirty.txt").write_text("uncommitted\n")
    wt.remove(repo, info.path, "tt/alice", force=True)
    assert not info.path.exists()
    assert git(repo, "branch", "--list", "tt/alice") == ""
    proc = subprocess.run(["git", "config", "--get-regexp", r"^branch\.tt/alice\."], cwd=repo,
                          capture_output=True, text=True)
    assert proc.stdout == ""  # the recorded base went with the branch

    # A worktree on a branch that create() did not make: removed, the branch is kept.
    git(repo, "branch", "theirs")
    git(repo, "worktree", "add", "-q", str(wt_path(repo, "theirs")), "theirs")
    wt.remove(repo, wt_path(repo, "theirs"), "theirs")
    assert not wt_path(repo, "theirs").exists()
    assert git(repo, "branch", "--list", "theirs").strip() == "theirs"


def test_remove_after_the_directory_was_deleted_checks_the_branch(repo):
    info = wt.create(repo, wt_path(repo, "alice"), "tt/alice")
    (info.path / "work.txt").write_text("unmerged\n")
    commit_all(info.path, "unmerged work")
    subprocess.run(["rm", "-rf", str(info.path)], check=True)
    assert wt.has_unsaved_work(info.path, "main") is None  # nothing on disk any more
    with pytest.raises(ConfigError, match=r"1 commit on tt/alice not merged into main"):
        wt.remove(repo, info.path, "tt/alice")
    wt.remove(repo, info.path, "tt/alice", force=True)
    assert git(repo, "branch", "--list", "tt/alice") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
