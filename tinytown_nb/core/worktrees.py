"""Git worktrees for coding agents: one checkout and one branch per agent.

Two coding agents in one checkout overwrite each other's files and commits. Here each
gets its own ``git worktree`` (e.g. ``<town root>/.tt/worktrees/<name>``) on its own branch
(``tt/<name>``) from a base (default: the current HEAD); :func:`merge` brings a branch
back into the main checkout, :func:`remove` drops it once nothing would be lost.

Why plain ``git`` (argv lists, never a shell string) and not GitPython or pygit2: git is
on every machine that has a repository, while pygit2 (libgit2) has no ``merge --abort``,
no worktree-aware status and its own idea of hooks and config, and GitPython shells out
to git anyway. Worktrees, merges and their abort are exactly what git itself does best,
with the user's hooks, attributes and config honoured. Needs git 2.25 or newer.

What is recorded, in the repository's config (``git branch -D`` deletes it with the
branch; the caller may also store the returned base itself):

* ``branch.<branch>.tinytownbase = "<commit> <name>"`` — the base the branch was made
  from, so a restarted agent gets the same base back and :func:`merge` knows where to go;
* ``branch.<branch>.tinytownmerged = "<commit>"`` — the branch tip :func:`merge` last
  brought in, so a squash-merged branch counts as merged.

Every refusal is one :class:`~tinytown_nb.core.errors.ConfigError` line; a conflicting
merge raises :class:`~tinytown_nb.core.errors.MergeConflict` (also importable from here)
after putting the main checkout back as it was.

Example (``repo``: a git checkout on ``main``)::

    >>> info = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> info.base_name, info.created
    ('main', True)
    >>> _ = (info.path / "README.md").write_text("# demo, by alice\\n")
    >>> _ = subprocess.run(["git", "commit", "-qam", "Sign the README"], cwd=info.path)
    >>> status(info.path, info.base_name).ahead        # after alice's first commit
    1
    >>> merge(repo, "tt/alice")                        # into main, in the main checkout
    '...'
    >>> remove(repo, info.path, "tt/alice")
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, MergeConflict

__all__ = ["MergeConflict", "WorktreeInfo", "WorktreeStatus", "create", "diff", "git_version",
           "has_unsaved_work", "merge", "recorded_base", "remove", "repo_root", "status"]

MIN_GIT = (2, 25)

# Variables that point git at another repository or index; a caller running inside a git
# hook has them set, and they would make every call below act on the wrong repository.
_LOCAL_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
              "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE",
              "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX")
_BASE_KEY = "tinytownbase"
_MERGED_KEY = "tinytownmerged"
_SHOWN = 5  # file names shown in a one-line message before "and N more"


@dataclass(frozen=True)
class WorktreeInfo:
    """What :func:`create` made or found: store ``base_commit``/``base_name`` with the agent."""

    repo: Path          # the main working tree
    path: Path          # the agent's worktree
    branch: str         # its branch, e.g. 'tt/alice'
    base_commit: str    # the commit the branch was made from
    base_name: str      # the base as named ('main', 'v1.2', a commit id when HEAD was detached)
    head: str           # the worktree's HEAD commit now
    created: bool       # False when an existing worktree was reused


@dataclass(frozen=True)
class WorktreeStatus:
    """Where a worktree stands against its base (see :func:`status`)."""

    path: Path
    branch: str | None        # None when the worktree's HEAD is detached
    head: str
    base: str                 # the base as passed
    ahead: int                # commits on HEAD that the base lacks
    behind: int               # commits on the base that HEAD lacks
    changed: tuple[str, ...]  # uncommitted paths, untracked ones included
    merged: bool              # every commit of HEAD is in the base (or was merged by merge())

    @property
    def dirty(self) -> bool:
        """True when the worktree has uncommitted changes (untracked files included)."""
        return bool(self.changed)


# --------------------------------------------------------------------------- running git

def git_version() -> tuple[int, int, int]:
    """The version of the ``git`` on PATH; ConfigError when missing or older than 2.25.

    >>> git_version() >= (2, 25, 0)
    True
    """
    return _git()[1]


def _git() -> tuple[str, tuple[int, int, int]]:
    exe = shutil.which("git")
    if exe is None:
        raise ConfigError("git was not found on PATH; agent worktrees need git "
                          f"{MIN_GIT[0]}.{MIN_GIT[1]} or newer. Install git and retry.")
    cached = _VERSIONS.get(exe)
    if cached is None:
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigError(f"{exe} could not be run ({exc}); agent worktrees need git "
                              f"{MIN_GIT[0]}.{MIN_GIT[1]} or newer.") from None
        m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
        if m is None:
            raise ConfigError(f"{exe} --version said {out!r}, not a git version; agent "
                              f"worktrees need git {MIN_GIT[0]}.{MIN_GIT[1]} or newer.")
        cached = (int(m[1]), int(m[2]), int(m[3] or 0))
        if cached[:2] < MIN_GIT:
            raise ConfigError(f"{exe} is {out!r}; agent worktrees need git "
                              f"{MIN_GIT[0]}.{MIN_GIT[1]} or newer. Install a newer git.")
        _VERSIONS[exe] = cached
    return exe, cached


_VERSIONS: dict[str, tuple[int, int, int]] = {}


def _run(args: list[str], cwd: Path, *, check: bool = True, input: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe, _ = _git()
    full_env = {k: v for k, v in os.environ.items() if k not in _LOCAL_ENV}
    # English messages (we read a few), no prompt or editor that could hang a kernel.
    full_env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_EDITOR=":",
                    GIT_MERGE_AUTOEDIT="no", **(env or {}))
    proc = subprocess.run(
        [exe, "-c", "core.quotepath=off", *args], cwd=cwd, env=full_env, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, text=True, encoding="utf-8", errors="surrogateescape")
    if check and proc.returncode != 0:
        raise ConfigError(f"git {args[0]} failed in {cwd}: {_last_line(proc)}")
    return proc


def _last_line(proc: subprocess.CompletedProcess) -> str:
    """git's reason for a failure, on one line: its first fatal/error line, else all of
    stderr (a hook's own words come before git's "Not committing merge")."""
    def meaningful(text: str) -> list[str]:
        lines = (ln.strip() for ln in text.splitlines())
        return [ln for ln in lines if ln and not ln.startswith("hint:")]
    lines = meaningful(proc.stderr) or meaningful(proc.stdout)
    for ln in lines:
        if ln.startswith(("fatal:", "error:")):
            return ln
    text = " ".join(lines) or f"exit status {proc.returncode}"
    return text if len(text) <= 300 else text[:297] + "..."


def _ok(args: list[str], cwd: Path) -> bool:
    return _run(args, cwd, check=False).returncode == 0


def _out(args: list[str], cwd: Path) -> str:
    return _run(args, cwd).stdout.strip()


def _names(files: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(files[:_SHOWN])
    return shown + (f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else "")


# --------------------------------------------------------------------------- repository facts

@dataclass(frozen=True)
class _Entry:
    path: Path
    head: str | None
    branch: str | None   # short name, None when detached or bare
    bare: bool
    locked: str | None   # the lock reason ('' when none given), None when not locked


def _worktrees(root: Path) -> list[_Entry]:
    # -z (git 2.36+) keeps unusual paths verbatim; older git never quotes them.
    z = _git()[1] >= (2, 36, 0)
    out = _run(["worktree", "list", "--porcelain", *(["-z"] if z else [])], root).stdout
    records = out.split("\0\0") if z else out.split("\n\n")
    entries = []
    for rec in records:
        fields: dict[str, str] = {}
        for line in rec.split("\0" if z else "\n"):
            key, _, value = line.partition(" ")
            if key:
                fields[key] = value
        if "worktree" not in fields:
            continue
        ref = fields.get("branch", "")
        entries.append(_Entry(
            path=_real(fields["worktree"]), head=fields.get("HEAD"),
            branch=ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None,
            bare="bare" in fields, locked=fields.get("locked")))
    return entries


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def repo_root(path: str | os.PathLike) -> Path | None:
    """The main working tree of the repository containing ``path``; None outside one.

    From inside a linked worktree this is still the main checkout. A bare repository has
    no main working tree (None too).

    >>> alice = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> repo_root(alice.path) == repo
    True
    """
    p = _real(path)
    if p.is_file():
        p = p.parent
    if not p.is_dir():
        return None
    proc = _run(["worktree", "list", "--porcelain"], p, check=False)
    if proc.returncode != 0:
        line = _last_line(proc)
        if "not a git repository" in line:
            return None
        if "dubious ownership" in proc.stderr:
            raise ConfigError(f"git refuses the repository at {p}: it is owned by another "
                              "user. Mark it safe with `git config --global --add "
                              f"safe.directory '{p}'` if you trust it.")
        raise ConfigError(f"git could not read the repository at {p}: {line}")
    entries = _worktrees(p)
    return None if not entries or entries[0].bare else entries[0].path


def _require_root(repo: str | os.PathLike) -> Path:
    root = repo_root(repo)
    if root is None:
        raise ConfigError(f"{repo} is not inside a git repository with a working tree. "
                          "Run `git init` there (and make a first commit), or pick the "
                          "repository's directory.")
    return root


def _check_branch_name(root: Path, branch: object) -> str:
    if not isinstance(branch, str) or not branch:
        raise ConfigError(f"Branch name must be a non-empty string, got {branch!r}.")
    if (branch.startswith("-") or branch == "HEAD"
            or not _ok(["check-ref-format", f"refs/heads/{branch}"], root)):
        raise ConfigError(f"git refuses {branch!r} as a branch name (see `git help "
                          "check-ref-format`). Use letters, digits, '-', '_', '.' and '/'.")
    return branch


def _branch_tip(root: Path, branch: str) -> str | None:
    proc = _run(["rev-parse", "-q", "--verify", f"refs/heads/{branch}^{{commit}}"], root,
                check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _resolve(cwd: Path, rev: str, what: str = "base") -> str:
    """The commit ``rev`` names, or ConfigError (no commits yet / unknown revision)."""
    if not isinstance(rev, str) or not rev or rev.startswith("-") or "\n" in rev:
        raise ConfigError(f"{what} must be a branch, tag or commit name, got {rev!r}.")
    proc = _run(["rev-parse", "-q", "--verify", f"{rev}^{{commit}}"], cwd, check=False)
    if proc.returncode == 0:
        return proc.stdout.strip()
    if not _ok(["rev-parse", "-q", "--verify", "HEAD"], cwd) and not _out(
            ["for-each-ref", "--count=1", "--format=%(refname)"], cwd):
        raise ConfigError(f"The repository at {cwd} has no commits yet; make a first "
                          "commit (git commit), then try again.")
    raise ConfigError(f"Unknown {what} {rev!r} in {cwd}: no branch, tag or commit has that "
                      "name. Check `git branch -a` or pass another base.")


def _is_local_branch(root: Path, name: str) -> bool:
    return (not name.startswith("-")
            and _ok(["show-ref", "-q", "--verify", f"refs/heads/{name}"], root))


def _config_get(root: Path, branch: str, key: str) -> str | None:
    proc = _run(["config", "--get", f"branch.{branch}.{key}"], root, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _config_set(root: Path, branch: str, key: str, value: str) -> None:
    # git does not wait for another writer's config.lock; a concurrent create() or
    # branch deletion holds it for milliseconds, so retry briefly.
    for _ in range(40):
        proc = _run(["config", f"branch.{branch}.{key}", value], root, check=False)
        if proc.returncode == 0 or "could not lock config file" not in proc.stderr:
            break
        time.sleep(0.05)
    if proc.returncode != 0:
        raise ConfigError(f"git config failed in {root}: {_last_line(proc)}")


def recorded_base(repo: str | os.PathLike, branch: str) -> tuple[str, str] | None:
    """``(base_commit, base_name)`` recorded by :func:`create` for ``branch``, else None.

    >>> alice = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> recorded_base(repo, "tt/alice")
    ('...', 'main')
    """
    value = _config_get(_require_root(repo), branch, _BASE_KEY)
    if value is None:
        return None
    commit, _, name = value.partition(" ")
    return commit, name or commit


def _changed(cwd: Path) -> tuple[str, ...]:
    out = _run(["status", "--porcelain=v1", "-z", "--untracked-files=all"], cwd).stdout
    items, paths = out.split("\0"), []
    i = 0
    while i < len(items):
        item = items[i]
        if item:
            paths.append(item[3:])
            if item[0] in "RC":  # a rename/copy is followed by its source path
                i += 1
        i += 1
    return tuple(paths)


def _merged(cwd: Path, branch: str | None, head: str, base_commit: str) -> bool:
    if _ok(["merge-base", "--is-ancestor", head, base_commit], cwd):
        return True
    # A squash merge leaves no ancestry; merge() recorded the tip it brought in.
    done = _config_get(cwd, branch, _MERGED_KEY) if branch else None
    return bool(done) and _ok(["merge-base", "--is-ancestor", head, done], cwd)


def _require_worktree(path: str | os.PathLike) -> Path:
    p = _real(path)
    if not p.is_dir():
        raise ConfigError(f"No worktree at {p}: the directory does not exist.")
    proc = _run(["rev-parse", "--show-toplevel"], p, check=False)
    if proc.returncode != 0 or _real(proc.stdout.strip()) != p:
        raise ConfigError(f"{p} is not the top of a git worktree. Pass the path that "
                          "create() returned.")
    return p


# --------------------------------------------------------------------------- create

def create(repo: str | os.PathLike, path: str | os.PathLike, branch: str,
           base: str | None = None) -> WorktreeInfo:
    """A worktree at ``path`` on a new branch ``branch`` from ``base`` (default: HEAD).

    Reuses the worktree when ``path`` already is one of ``branch`` made here (a restarted
    agent), and re-attaches ``branch`` when only its directory was deleted; the recorded
    base is returned then (passing a different ``base`` name is refused). Refuses, leaving
    nothing behind: no repository, no commits, unknown base, bad branch name, branch
    checked out elsewhere or not made by create(), ``path`` taken by something else.
    A worktree inside the main checkout is added to ``.git/info/exclude`` (unless already
    ignored) so it never shows there nor gets committed as an embedded repository. Relative
    paths are taken from the current directory.

    >>> create(repo, repo / ".tt/worktrees/alice", "tt/alice").branch
    'tt/alice'
    """
    root = _require_root(repo)
    branch = _check_branch_name(root, branch)
    where = _real(path)
    if any(ch in str(where) for ch in "\n\r\0"):
        raise ConfigError(f"Worktree path {str(where)!r} contains a line break; pick "
                          "another directory.")
    entries = _worktrees(root)
    here = next((e for e in entries if e.path == where), None)
    elsewhere = next((e for e in entries if e.branch == branch and e.path != where), None)
    recorded = _config_get(root, branch, _BASE_KEY)

    if here is not None and where.exists():
        if here.branch != branch:
            raise ConfigError(
                f"{where} is already a worktree of {here.branch or 'a detached HEAD'}, not "
                f"{branch}. Remove it (worktrees.remove) or pick another path.")
        if recorded is None:
            raise ConfigError(f"The worktree {where} on {branch} was not made by "
                              "tinytown_nb (no recorded base). Remove it with `git worktree "
                              "remove` or pick another branch.")
        base_commit, base_name = _check_same_base(branch, recorded, base)
        return WorktreeInfo(root, where, branch, base_commit, base_name,
                            _out(["rev-parse", "HEAD"], where), created=False)
    if elsewhere is not None:
        raise ConfigError(f"Branch {branch} is already checked out at {elsewhere.path}. "
                          "Pick another branch name, or remove that worktree first.")
    if where.exists() or where.is_symlink():
        raise ConfigError(f"{where} already exists and is not a worktree of {branch}. "
                          "Move it away or pick another path.")

    tip = _branch_tip(root, branch)
    if tip is not None:
        if recorded is None:
            raise ConfigError(f"Branch {branch} already exists and was not made by "
                              "tinytown_nb. Pick another name, or delete it (git branch -D "
                              f"{branch}) if it is not needed.")
        base_commit, base_name = _check_same_base(branch, recorded, base)
    else:
        start = _real(repo) if _real(repo).is_dir() else root
        base_commit = _resolve(start, base or "HEAD")
        if base is not None:
            base_name = base
        else:  # the branch HEAD is on; a commit id when HEAD is detached
            proc = _run(["symbolic-ref", "-q", "--short", "HEAD"], start, check=False)
            base_name = proc.stdout.strip() or base_commit

    if here is not None:  # registered, but its directory was deleted
        _run(["worktree", "prune"], root)
    # Remember what exists now, so a failure below removes exactly what this call made.
    made_from = where  # the topmost directory this call makes
    while not made_from.parent.exists():
        made_from = made_from.parent
    ignored_before = _ok(["check-ignore", "-q", "--no-index", str(where) + "/"], root) \
        if where.is_relative_to(root) else True
    try:
        args = ["worktree", "add"]
        args += [str(where), branch] if tip else ["--no-track", "-b", branch, str(where),
                                                  base_commit]
        _run(args, root)
        if tip is None:
            _config_set(root, branch, _BASE_KEY, f"{base_commit} {base_name}")
        if not ignored_before:
            _exclude(root, where, add=True)
    except BaseException:
        _undo_create(root, where, branch, tip is None, made_from, ignored_before)
        raise
    return WorktreeInfo(root, where, branch, base_commit, base_name,
                        _out(["rev-parse", "HEAD"], where), created=True)


def _check_same_base(branch: str, recorded: str, base: str | None) -> tuple[str, str]:
    commit, _, name = recorded.partition(" ")
    name = name or commit
    if base is not None and base not in (name, commit):
        raise ConfigError(f"Branch {branch} was made from {name!r}, not {base!r}. Pass "
                          f"base={name!r} (or None) to reuse it, or remove it first.")
    return commit, name


def _undo_create(root: Path, where: Path, branch: str, new_branch: bool, made_from: Path,
                 ignored_before: bool) -> None:
    # Best effort: every step runs even when one fails, and none raises over the original.
    if any(e.path == where for e in _safe(lambda: _worktrees(root), [])):
        _safe(lambda: _run(["worktree", "remove", "--force", "--force", str(where)], root,
                           check=False))
    if where.exists():  # create() refuses an existing path, so this directory is ours
        shutil.rmtree(where, ignore_errors=True)
    _safe(lambda: _run(["worktree", "prune"], root, check=False))
    if new_branch and _branch_tip(root, branch):
        _safe(lambda: _run(["branch", "-D", branch], root, check=False))
    d = where.parent  # parent directories git made for the worktree, if left empty
    while d.is_relative_to(made_from):
        try:
            d.rmdir()
        except OSError:
            break
        d = d.parent
    if not ignored_before:
        _safe(lambda: _exclude(root, where, add=False))


def _safe(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def _exclude(root: Path, where: Path, *, add: bool) -> None:
    # A worktree nested in the main checkout would otherwise show there as untracked, and
    # `git add -A` would commit it as an embedded repository (a gitlink).
    rel = re.sub(r"([\\*?\[])", r"\\\1", where.relative_to(root).as_posix())
    pattern = f"/{rel}/"  # anchored, glob characters escaped: exactly this directory
    exclude = Path(_out(["rev-parse", "--git-common-dir"], root))
    exclude = (exclude if exclude.is_absolute() else root / exclude) / "info" / "exclude"
    text = exclude.read_text() if exclude.exists() else ""
    lines = text.splitlines()
    if add and pattern not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text(text + ("\n" if text and not text.endswith("\n") else "")
                           + pattern + "\n")
    elif not add and pattern in lines:
        exclude.write_text("".join(ln + "\n" for ln in lines if ln != pattern))


# --------------------------------------------------------------------------- status / diff

def status(path: str | os.PathLike, base: str) -> WorktreeStatus:
    """Branch, HEAD, ahead/behind ``base``, uncommitted paths and merged-ness of a worktree.

    ``base`` is any revision: the base's name (``info.base_name``) compares with that
    branch as it is now, ``info.base_commit`` with the fork point.

    >>> alice = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> _ = (alice.path / "README.md").write_text("# demo, by alice\\n")
    >>> _ = subprocess.run(["git", "commit", "-qam", "Sign the README"], cwd=alice.path)
    >>> _ = (alice.path / "notes.md").write_text("todo\\n")
    >>> st = status(alice.path, "main")
    >>> st.ahead, st.changed, st.merged
    (1, ('notes.md',), False)
    """
    where = _require_worktree(path)
    head = _resolve(where, "HEAD", "HEAD")
    base_commit = _resolve(where, base)
    behind, ahead = map(int, _out(
        ["rev-list", "--left-right", "--count", f"{base_commit}...{head}"], where).split())
    proc = _run(["symbolic-ref", "-q", "--short", "HEAD"], where, check=False)
    branch = proc.stdout.strip() or None
    return WorktreeStatus(where, branch, head, base, ahead, behind, _changed(where),
                          _merged(where, branch, head, base_commit))


def diff(path: str | os.PathLike, base: str, stat: bool = False) -> str:
    """The worktree's commits and uncommitted work (untracked files as added) vs ``base``.

    Compares the working tree with the merge base of HEAD and ``base``, so commits made on
    the base since the fork do not show. The agent's own index is never touched: untracked
    files are marked intent-to-add in a temporary copy of it.

    >>> alice = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> _ = (alice.path / "README.md").write_text("# demo, by alice\\n")
    >>> _ = (alice.path / "notes.md").write_text("todo\\n")
    >>> print(diff(alice.path, "main", stat=True))
     README.md | 2 +-
     notes.md  | 1 +
     2 files changed, 2 insertions(+), 1 deletion(-)
    """
    where = _require_worktree(path)
    head = _resolve(where, "HEAD", "HEAD")
    proc = _run(["merge-base", head, _resolve(where, base)], where, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"{where} and {base!r} share no history; pass the base the "
                          "worktree was made from.")
    fork = proc.stdout.strip()
    index = Path(_out(["rev-parse", "--git-path", "index"], where))
    index = index if index.is_absolute() else where / index
    with tempfile.TemporaryDirectory(prefix="tt-diff-") as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        if index.exists():
            shutil.copyfile(index, env["GIT_INDEX_FILE"])
        else:
            _run(["read-tree", head], where, env=env)
        _run(["add", "--intent-to-add", "--all"], where, env=env)
        args = ["diff", "--no-ext-diff", "--no-color", *(["--stat"] if stat else []), fork, "--"]
        return _run(args, where, env=env).stdout


def has_unsaved_work(path: str | os.PathLike, base: str | None) -> str | None:
    """Why the worktree at ``path`` must be kept (uncommitted work, unmerged commits), or None.

    None too when ``path`` no longer exists. With ``base=None`` only uncommitted work counts.

    >>> alice = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> _ = (alice.path / "README.md").write_text("# demo, by alice\\n")
    >>> _ = subprocess.run(["git", "commit", "-qam", "Sign the README"], cwd=alice.path)
    >>> _ = (alice.path / "notes.md").write_text("todo\\n")
    >>> has_unsaved_work(alice.path, "main")
    '1 uncommitted change (notes.md); 1 commit on tt/alice not merged into main'
    """
    if not _real(path).is_dir():
        return None
    where = _require_worktree(path)
    reasons = []
    changed = _changed(where)
    if changed:
        n = len(changed)
        reasons.append(f"{n} uncommitted change{'s' * (n != 1)} ({_names(changed)})")
    if base is not None:
        head = _resolve(where, "HEAD", "HEAD")
        proc = _run(["symbolic-ref", "-q", "--short", "HEAD"], where, check=False)
        branch = proc.stdout.strip() or None
        reason = _unmerged(where, branch, head, base)
        if reason:
            reasons.append(reason)
    return "; ".join(reasons) or None


def _unmerged(cwd: Path, branch: str | None, tip: str, base: str) -> str | None:
    base_commit = _resolve(cwd, base)
    if _merged(cwd, branch, tip, base_commit):
        return None
    n = int(_out(["rev-list", "--count", f"{base_commit}..{tip}"], cwd))
    on = branch or f"detached HEAD {tip[:12]}"
    return f"{n} commit{'s' * (n != 1)} on {on} not merged into {base}"


# --------------------------------------------------------------------------- merge

def merge(repo: str | os.PathLike, branch: str, into: str | None = None,
          squash: bool = False, message: str | None = None) -> str:
    """Merge ``branch`` into ``into`` in the main checkout; returns the new commit.

    ``into`` defaults to the branch's recorded base. It must be the branch checked out in
    the main checkout: this never switches branches for you (that would change the files
    under your editor), it says what to run instead. Always makes a new commit (``--no-ff``,
    or one squashed commit). Refuses uncommitted changes to tracked files there, and
    untracked files the merge would overwrite. On a conflict the merge is aborted, the main
    checkout is left exactly as it was, and :class:`MergeConflict` names the files.

    >>> alice = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> _ = (alice.path / "README.md").write_text("# demo, by alice\\n")
    >>> _ = subprocess.run(["git", "commit", "-qam", "Sign the README"], cwd=alice.path)
    >>> merge(repo, "tt/alice", squash=True, message="Alice: README")
    '...'
    """
    root = _require_root(repo)
    tip = _branch_tip(root, _check_branch_name(root, branch))
    if tip is None:
        raise ConfigError(f"No branch {branch} in {root}. List branches with `git branch`.")
    if into is None:
        recorded = recorded_base(root, branch)
        if recorded is None:
            raise ConfigError(f"Branch {branch} has no recorded base (not made by "
                              "create()); pass into='<branch>' to say where to merge it.")
        into = recorded[1]
        if not _is_local_branch(root, into):
            raise ConfigError(f"{branch} was made from {into!r}, which is not a local branch "
                              "(a detached HEAD, tag or commit); pass into='<branch>'.")
    elif not _is_local_branch(root, into):
        raise ConfigError(f"No branch {into!r} to merge into in {root}. Pass an existing "
                          "local branch.")
    if into == branch:
        raise ConfigError(f"Cannot merge {branch} into itself; pass another into=.")

    proc = _run(["symbolic-ref", "-q", "--short", "HEAD"], root, check=False)
    current = proc.stdout.strip()
    if current != into:
        on, alt = (f"branch {current}", f" (or pass into={current!r})") if current else \
            ("a detached HEAD", "")
        raise ConfigError(f"The main checkout {root} is on {on}, not {into}. Run `git -C "
                          f"'{root}' switch {into}` first{alt}, then merge again.")
    for marker, what in (("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick"),
                         ("REVERT_HEAD", "a revert"), ("rebase-merge", "a rebase"),
                         ("rebase-apply", "a rebase or am")):
        if Path(root, _out(["rev-parse", "--git-path", marker], root)).exists():
            raise ConfigError(f"The main checkout {root} is in the middle of {what}; finish "
                              "or abort it first, then merge again.")
    dirty = _run(["status", "--porcelain=v1", "-z", "--untracked-files=no"], root).stdout
    if dirty.strip("\0"):
        files = [item[3:] for item in dirty.split("\0") if len(item) > 3]
        raise ConfigError(f"The main checkout {root} has uncommitted changes ({_names(files)});"
                          " commit or stash them, then merge again.")
    before = _out(["rev-parse", "HEAD"], root)
    orig = _run(["rev-parse", "-q", "--verify", "ORIG_HEAD"], root, check=False).stdout.strip()
    if _ok(["merge-base", "--is-ancestor", tip, before], root):
        raise ConfigError(f"Nothing to merge: {into} already has every commit of {branch}.")

    if squash:
        proc = _run(["merge", "--squash", tip], root, check=False)
    else:
        msg = message or f"Merge branch '{branch}' into {into}"
        proc = _run(["merge", "--no-ff", "--no-edit", "-m", msg, tip], root, check=False)
    if proc.returncode != 0:
        conflicts = _run(["diff", "--name-only", "-z", "--diff-filter=U"], root,
                         check=False).stdout.split("\0")
        conflicts = sorted({f for f in conflicts if f})
        _restore(root, before, orig)
        if conflicts:
            raise MergeConflict(branch, into, conflicts)
        would = _overwritten(proc.stderr)
        if would:
            raise ConfigError(f"Merging {branch} would overwrite untracked files in the main "
                              f"checkout ({_names(would)}); move or remove them, then merge "
                              "again.")
        raise ConfigError(f"Merging {branch} into {into} failed and was undone: "
                          f"{_last_line(proc)}")
    if squash:
        if _ok(["diff", "--cached", "--quiet"], root):
            _restore(root, before, orig)
            raise ConfigError(f"Nothing to merge: {into} already has every change of {branch}.")
        squash_msg = Path(root, _out(["rev-parse", "--git-path", "SQUASH_MSG"], root))
        body = squash_msg.read_text(errors="replace") if squash_msg.exists() else ""
        text = message or f"Squash-merge branch '{branch}' into {into}\n\n{body}"
        proc = _run(["commit", "-q", "-F", "-"], root, check=False, input=text)
        if proc.returncode != 0:
            _restore(root, before, orig)
            raise ConfigError(f"Committing the squash-merge of {branch} failed and was "
                              f"undone: {_last_line(proc)}")
    # Only a squash merge needs this record; the merge itself is done whatever happens here.
    _safe(lambda: _config_set(root, branch, _MERGED_KEY, tip))
    return _out(["rev-parse", "HEAD"], root)


def _restore(root: Path, before: str, orig: str) -> None:
    """Put the main checkout back as it was before a failed merge (it was clean then)."""
    if _ok(["rev-parse", "-q", "--verify", "MERGE_HEAD"], root):
        _run(["merge", "--abort"], root, check=False)
    # `reset --merge` also undoes a squash (no MERGE_HEAD) and removes SQUASH_MSG; files
    # the merge did not touch, untracked ones included, stay as they are.
    _run(["reset", "-q", "--merge", before], root, check=False)
    # merge and reset both moved ORIG_HEAD; keep `git reset ORIG_HEAD` undoing the
    # user's own last operation, not this failed attempt.
    _run(["update-ref", "ORIG_HEAD", orig] if orig else ["update-ref", "-d", "ORIG_HEAD"],
         root, check=False)


def _overwritten(stderr: str) -> list[str]:
    files, inside = [], False
    for line in stderr.splitlines():
        if "untracked working tree files would be" in line:
            inside = True
        elif inside and line.startswith(("\t", "  ")):
            files.append(line.strip())
        elif inside:
            inside = False
    return files


# --------------------------------------------------------------------------- remove

def remove(repo: str | os.PathLike, path: str | os.PathLike, branch: str,
           force: bool = False) -> None:
    """Remove the worktree at ``path`` and, when made by create(), its ``branch``.

    Refuses (unless ``force=True``) while the worktree has uncommitted changes (untracked
    files included) or the branch has commits not merged into its recorded base. A branch
    not made by create() is kept unless forced. Stale worktree entries are pruned.

    >>> alice = create(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> remove(repo, repo / ".tt/worktrees/alice", "tt/alice")
    >>> alice.path.exists()
    False
    """
    root = _require_root(repo)
    branch = _check_branch_name(root, branch)
    where = _real(path)
    entry = next((e for e in _worktrees(root) if e.path == where), None)
    if entry is None and where.exists():
        raise ConfigError(f"{where} is not a worktree of {root}; nothing removed.")
    if entry is not None and entry.path == root:
        raise ConfigError(f"{where} is the main checkout; it cannot be removed.")
    tip = _branch_tip(root, branch)
    recorded = recorded_base(root, branch) if tip else None
    if not force:
        if entry is not None and entry.branch != branch:
            raise ConfigError(f"{where} is on {entry.branch or 'a detached HEAD'}, not "
                              f"{branch}; nothing removed. Pass force=True to remove it anyway.")
        if entry is not None and entry.locked is not None:
            raise ConfigError(f"{where} is locked ({entry.locked or 'no reason given'}); "
                              "unlock it (git worktree unlock) or pass force=True.")
        reasons = []
        if where.is_dir():
            why = has_unsaved_work(where, recorded[1] if recorded else None)
            if why:
                reasons.append(why)
        elif tip and recorded:  # the directory is gone but the branch may hold work
            why = _unmerged(root, branch, tip, recorded[1])
            if why:
                reasons.append(why)
        if reasons:
            raise ConfigError(f"Not removing {where}: {'; '.join(reasons)}. Merge or commit "
                              "it first, or pass force=True to discard it.")
    if entry is not None:
        args = ["worktree", "remove", *(["--force", "--force"] if force else []), str(where)]
        _run(args, root)
    _run(["worktree", "prune"], root)
    checked_out = any(e.branch == branch for e in _worktrees(root))
    if tip and (recorded or force) and not checked_out:
        _run(["branch", "-D", branch], root)
    if where.is_relative_to(root):
        _exclude(root, where, add=False)
