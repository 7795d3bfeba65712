"""Agents' git worktrees in a town: each coding agent's own checkout, seen and brought back.

``spawn(..., worktree=True)`` gives an agent the checkout ``<town root>/.tt/worktrees/<name>``
on the branch ``tt/<name>`` (made by :mod:`.worktrees`, plain git). Its commands run there;
a function agent gets it as ``ctx.workdir``. The town remembers it in the HASH
``tt:{town}:worktree:{name}`` (:meth:`~.keys.Keys.worktree`), keyed by the agent's *name*:
the worktree outlives the agent record, and a name spawned again gets it back.

The rules, in one place:

* an agent with a worktree works in it: a restart or a second spawn of the name reuses it
  (and re-makes its directory if it was deleted); :func:`remove` ends that;
* ``kill`` keeps the worktree (``restart`` reuses it) and, when it holds unsaved work
  (uncommitted changes, commits not merged into its base), says so in the agent's activity;
* ``prune`` removes the worktree of a pruned agent when it is clean and merged, and keeps
  it otherwise (still listed by :func:`listing`, whose ``unsaved`` says why);
* :func:`remove` refuses unsaved work unless forced, and a worktree a live agent works in.

Example (an agent whose command commits the task's text as ``notes.md``; the town's root
is a git checkout)::

    >>> dev = town.spawn("dev", cli="sh -c 'cat > notes.md; git add notes.md; git commit -qm notes'",
    ...                  worktree=True)
    >>> town.wait(task=town.assign("dev", "Use pathlib"), timeout=30).state
    <TaskState.COMPLETED: 'completed'>
    >>> listing(store)[0].branch
    'tt/dev'
    >>> print(diff(store, "dev", stat=True))
     notes.md | 1 +
     1 file changed, 1 insertion(+)
    >>> merge(store, "dev")   # the merge commit
    '...'
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from . import agents, lookup, worktrees
from .errors import AgentNotFound, ConfigError, InvalidState
from .models import Agent, hash_ts, parse_ts, utcnow
from .store import Store

__all__ = ["BRANCH_PREFIX", "AgentWorktree", "Diff", "Prepared", "branch_for", "diff", "listing",
           "merge", "prepare", "record", "remove", "tidy", "undo", "unsaved", "with_status",
           "workdir"]

BRANCH_PREFIX = "tt/"
_SHOWN = 5  # file names shown in a one-line reason before "and N more"


def branch_for(name: str) -> str:
    """The branch of an agent's worktree.

    >>> branch_for("dev")
    'tt/dev'
    """
    return BRANCH_PREFIX + name


@dataclass(frozen=True)
class AgentWorktree:
    """One agent's worktree, as :meth:`Town.worktrees` lists it.

    ``ahead``/``behind`` count commits against the base as it is now; ``changed`` lists
    uncommitted paths (untracked ones included); ``unsaved`` says why removing it would
    lose work (None: clean and merged). Those are None/empty when not read
    (``status=False``).
    """

    agent: str
    path: Path
    branch: str
    base: str                       # the base as named: 'main', a tag, a commit id
    base_commit: str                # the commit the branch was made from
    repo: Path                      # the main checkout
    created_at: datetime | None
    exists: bool = True             # its directory is there
    ahead: int | None = None
    behind: int | None = None
    changed: tuple[str, ...] = ()
    merged: bool | None = None
    unsaved: str | None = None

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> "AgentWorktree | None":
        """The record of a worktree HASH; None when it is not one."""
        if not all(h.get(k) for k in ("agent", "path", "branch", "base", "repo")):
            return None
        path = Path(h["path"])
        return cls(agent=h["agent"], path=path, branch=h["branch"], base=h["base"],
                   base_commit=h.get("base_commit", ""), repo=Path(h["repo"]),
                   created_at=parse_ts(h.get("created_at")), exists=path.is_dir())

    @property
    def dirty(self) -> bool:
        """True when it has uncommitted changes (untracked files included)."""
        return bool(self.changed)


class Diff(str):
    """A diff (plain text: it *is* the ``str``) that a notebook shows coloured.

    >>> d = Diff("--- a/x\\n+++ b/x\\n@@ -1 +1 @@\\n-old\\n+new\\n", agent="dev")
    >>> d.splitlines()[-1], '<span style="color:#1a7f37">+new</span>' in d._repr_html_()
    ('+new', True)
    """

    agent: str
    stat: bool

    def __new__(cls, text: str = "", *, agent: str = "", stat: bool = False) -> "Diff":
        self = super().__new__(cls, text)
        self.agent, self.stat = agent, stat
        return self

    def _kinds(self) -> list[tuple[str, str]]:
        """(kind, line) per line: header, hunk, add, del or '' (context, stat lines)."""
        out = []
        for line in self.splitlines():
            if self.stat:
                kind = ""
            elif line.startswith(("diff --git", "index ", "--- ", "+++ ", "new file", "deleted file",
                                  "old mode", "new mode", "similarity", "rename ", "Binary")):
                kind = "header"
            elif line.startswith("@@"):
                kind = "hunk"
            elif line.startswith("+"):
                kind = "add"
            elif line.startswith("-"):
                kind = "del"
            else:
                kind = ""
            out.append((kind, line))
        return out

    def _repr_html_(self) -> str:
        if not self:
            return "<pre><i>No changes.</i></pre>"
        colors = {"add": "#1a7f37", "del": "#cf222e", "hunk": "#0969da"}
        rows = []
        for kind, line in self._kinds():
            text = html.escape(line)
            if self.stat:  # colour the +/- bar of "path | 3 ++-"
                text = re.sub(r"(\| +\d+ )(\+*)(-*)$", lambda m: (
                    f'{m[1]}<span style="color:{colors["add"]}">{m[2]}</span>'
                    f'<span style="color:{colors["del"]}">{m[3]}</span>'), text)
            if kind == "header":
                text = f"<b>{text}</b>"
            elif kind:
                text = f'<span style="color:{colors[kind]}">{text}</span>'
            rows.append(text)
        return '<pre style="line-height:1.3">' + "\n".join(rows) + "</pre>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self).rstrip("\n") if self else "No changes.")

    def ansi(self) -> str:
        """The diff with terminal colours (for a terminal that shows them)."""
        codes = {"header": "1", "hunk": "36", "add": "32", "del": "31"}
        return "".join((f"\x1b[{codes[k]}m{line}\x1b[0m" if k else line) + "\n"
                       for k, line in self._kinds())


# --------------------------------------------------------------------------- records


def record(store: Store, name: str) -> AgentWorktree | None:
    """The worktree record of the agent named ``name`` (no git call), or None."""
    return AgentWorktree.from_hash(store.redis.hgetall(store.keys.worktree(name)))


def workdir(store: Store, name: str) -> Path | None:
    """The directory the agent named ``name`` works in when it has a worktree, else None."""
    found = record(store, name)
    return found.path if found is not None else None


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` made, so :func:`undo` removes exactly that."""

    name: str
    info: worktrees.WorktreeInfo
    made_record: bool


def prepare(store: Store, name: str, *, want: bool, base: str | None = None) -> Prepared | None:
    """Make (or reuse) the agent's worktree and its record before its worker starts.

    None when the agent has no worktree and ``want`` is false. A recorded worktree is
    always reused (re-made from its branch when its directory was deleted). Refusals — the
    town root not in a git repository, an unknown base, the branch checked out elsewhere
    or not made here, a base other than the recorded one — leave nothing behind.

    >>> prepare(store, "dev", want=True).info.branch
    'tt/dev'
    """
    old = record(store, name)
    if old is None and not want:
        return None
    if old is not None:
        repo, path, branch = old.repo, old.path, old.branch
    else:
        repo = worktrees.repo_root(store.root)
        if repo is None:
            raise ConfigError(f"The town root {store.root} is not inside a git repository, so "
                              "its agents cannot get worktrees. Run `git init` there and make a "
                              "first commit, or spawn without worktree=True.")
        path, branch = store.paths.worktree(name), branch_for(name)
    info = worktrees.create(repo, path, branch, base)
    made = Prepared(name, info, made_record=old is None)
    try:
        store.redis.hset(store.keys.worktree(name), mapping={
            "agent": name, "path": str(info.path), "branch": info.branch,
            "base": info.base_name, "base_commit": info.base_commit, "repo": str(info.repo),
            "created_at": (hash_ts(old.created_at) if old is not None and old.created_at
                           else hash_ts(utcnow()))})
    except BaseException:
        undo(store, made)
        raise
    return made


def undo(store: Store, made: Prepared | None) -> None:
    """Take back what :func:`prepare` made when a later step of the spawn failed: its
    record, and its worktree and branch unless they hold work (a re-attached branch with
    commits of its own stays). Never raises: the spawn's own error is what counts."""
    if made is None:
        return
    info = made.info
    if info.created:
        try:  # not forced: git keeps anything that is not merged into the base
            worktrees.remove(info.repo, info.path, info.branch)
            info.path.parent.rmdir()  # .tt/worktrees, when this left it empty
        except Exception:
            pass
    if made.made_record:
        try:
            store.redis.delete(store.keys.worktree(made.name))
        except Exception:
            pass


def _name(store: Store, ref: Any) -> str:
    """The agent name a reference means: an exact name with a worktree record (its agent
    may be pruned), else whatever :func:`lookup.agent` resolves."""
    if isinstance(ref, Agent):
        return ref.name
    if isinstance(ref, str) and store.redis.exists(store.keys.worktree(ref)):
        return ref
    try:
        return lookup.agent(store, ref).name
    except AgentNotFound:
        raise AgentNotFound(ref, "Nor a worktree of that name: town.worktrees() lists them.") from None


def _require(store: Store, ref: Any) -> AgentWorktree:
    name = _name(store, ref)
    found = record(store, name)
    if found is None:
        raise ConfigError(f"Agent {name!r} has no worktree. Spawn it with worktree=True "
                          "(--worktree) to give it one; town.worktrees() lists them.")
    return found


# --------------------------------------------------------------------------- seeing


def _files(paths: tuple[str, ...]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def with_status(w: AgentWorktree) -> AgentWorktree:
    """``w`` with ahead/behind, changed files, merged and ``unsaved`` read from git."""
    if not w.path.is_dir():
        return replace(w, exists=False, unsaved=(
            f"its directory is gone, its branch {w.branch} is kept (restart or spawn the agent "
            "to re-make it, or remove_worktree() to drop it)"))
    try:
        st = worktrees.status(w.path, w.base)
    except ConfigError as exc:  # e.g. its base branch was deleted: keep it, say why
        return replace(w, exists=True, unsaved=f"cannot compare it with its base: {exc}")
    reasons = []
    if st.changed:
        n = len(st.changed)
        reasons.append(f"{n} uncommitted change{'s' * (n != 1)} ({_files(st.changed)})")
    if not st.merged:
        on = st.branch or f"a detached HEAD ({st.head[:12]})"
        reasons.append(f"{st.ahead} commit{'s' * (st.ahead != 1)} on {on} not merged into {w.base}")
    return replace(w, exists=True, ahead=st.ahead, behind=st.behind, changed=st.changed,
                   merged=st.merged, unsaved="; ".join(reasons) or None)


def listing(store: Store, agent: Any = None, *, status: bool = True) -> list[AgentWorktree]:
    """Every worktree of the town (or the one of ``agent``: [] when it has none), oldest
    first; ``status=False`` reads only the records (no git call).

    >>> alice = town.spawn("alice", cli="claude", worktree=True, start=False)
    >>> (listing(store)[0].path / "notes.md").write_text("todo\\n")
    5
    >>> [(w.agent, w.ahead, w.changed) for w in listing(store)]
    [('alice', 0, ('notes.md',))]
    """
    if agent is not None:
        found = record(store, _name(store, agent))
        rows = [found] if found is not None else []
    else:
        hashes = store.hgetall_many(store.scan("worktree"))
        rows = [w for w in map(AgentWorktree.from_hash, hashes) if w is not None]
        rows.sort(key=lambda w: (w.created_at is None, w.created_at or datetime.min, w.agent))
    return [with_status(w) for w in rows] if status else rows


def diff(store: Store, ref: Any, stat: bool = False) -> Diff:
    """The agent's work against its base: its commits and its uncommitted changes
    (untracked files as added), from the point it forked, so only its own work shows."""
    w = _require(store, ref)
    return Diff(worktrees.diff(w.path, w.base, stat=stat), agent=w.agent, stat=stat)


def unsaved(store: Store, name: str) -> str | None:
    """Why the agent's worktree must be kept (unsaved work), or None (none, or clean)."""
    found = record(store, name)
    return with_status(found).unsaved if found is not None else None


# --------------------------------------------------------------------------- bringing back


def merge(store: Store, ref: Any, into: str | None = None, squash: bool = False,
          message: str | None = None) -> str:
    """Merge the agent's branch into ``into`` (default its base) in the main checkout;
    returns the new commit. Only committed work is merged. See :func:`worktrees.merge` for
    the refusals; a conflict raises :class:`~.errors.MergeConflict` with main unchanged."""
    w = _require(store, ref)
    return worktrees.merge(w.repo, w.branch, into=into, squash=squash, message=message)


def remove(store: Store, ref: Any, force: bool = False) -> AgentWorktree:
    """Remove the agent's worktree, its branch and its record; returns what was removed.
    Refused while an agent of that name is live, and (unless ``force``) while it holds
    uncommitted changes or commits not merged into its base."""
    w = _require(store, ref)
    live = [a for a in agents.named(store, w.agent) if not a.state.is_terminal]
    if live:
        raise InvalidState(f"Agent {w.agent!r} is {live[0].state.value} and works in {w.path}; "
                           f"kill it first (town.kill({w.agent!r})), then remove its worktree.")
    worktrees.remove(w.repo, w.path, w.branch, force=force)
    store.redis.delete(store.keys.worktree(w.agent))
    return w


def tidy(store: Store, names: list[str]) -> list[AgentWorktree]:
    """After a prune: remove the worktrees of these (now gone) agents that are clean and
    merged; return the ones kept, with ``unsaved`` saying why."""
    found = [w for w in (record(store, n) for n in sorted(set(names))) if w is not None]
    if not found:
        return []
    remaining = {a.name for a in lookup.all_agents(store)}
    kept = []
    for w in (with_status(w) for w in found if w.agent not in remaining):
        if w.unsaved is None:
            try:
                worktrees.remove(w.repo, w.path, w.branch)
                store.redis.delete(store.keys.worktree(w.agent))
                continue
            except ConfigError as exc:
                w = replace(w, unsaved=str(exc))
        kept.append(w)
    return kept
