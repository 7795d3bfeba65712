"""The Town: one tinytown namespace on one Redis, and everything you do with it.

A town is a directory holding ``tinytown.toml`` (and ``.tt/`` with the managed server's
socket, data and logs) plus the ``tt:{town}:*`` keys in Redis. A town made here can be
driven by the Rust ``tt`` CLI and the other way round.

Example::

    >>> from tinytown_nb import Town
    >>> town = Town.init("demo-town")              # starts a private Redis under .tt/
    >>> dev = town.spawn("dev", cli="claude")
    >>> task = town.assign("dev", "Write the README")
    >>> town.tasks(state="assigned")[0].description
    'Write the README'
"""

from __future__ import annotations

import functools
import glob
import inspect
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from . import names as _names
from .config import TownConfig, default_town_name, resolve_cli_name
from .errors import (
    AgentExists,
    AgentNotFound,
    AmbiguousAgent,
    ConfigError,
    InvalidState,
    TaskNotFound,
    TinytownError,
    from_redis,
)
from .events import Event, read_events, recent_events
from .keys import SUPERVISOR_ID, Keys
from .models import (
    Agent,
    AgentState,
    AgentType,
    Message,
    SpawnMode,
    Task,
    TaskState,
    hash_ts,
    utcnow,
)
from .server import CentralServer, ManagedServer, connect, find_server_binary
from .transitions import AGENT_RULES, TASK_RULES, Change, Script, check_error, states
from . import recovery as _recovery
from . import waiting as _waiting

AgentRef = "str | Agent"
MESSAGE_KINDS = ("task", "query", "info", "ack")
ACTIVITY_MAX = 10  # upstream keeps the last 10 lines for an hour
ACTIVITY_TTL = 3600
STOP_TTL = 3600
SCAN_COUNT = 10_000  # keys per SCAN step: few round trips even with 100k keys
_STREAM_ID = re.compile(r"\d+(-\d+)?")
# Read-only bulk HGETALL for Town.hashes; wrong-typed keys give an empty entry, not an error.
# With ARGV (field names) it HMGETs those fields instead (a missing field comes back nil).
_HGETALL_MANY_LUA = """local out = {}
for i, k in ipairs(KEYS) do
  local ok, h
  if #ARGV > 0 then ok, h = pcall(redis.call, 'HMGET', k, unpack(ARGV))
  else ok, h = pcall(redis.call, 'HGETALL', k) end
  out[i] = ok and h or {}
end
return out"""


def _supervisor_record() -> Agent:
    """The well-known supervisor/conductor mailbox, shown as a (never stored) agent."""
    agent = Agent.new("supervisor", "", id=SUPERVISOR_ID, nickname="supervisor")
    agent.agent_type = AgentType.SUPERVISOR
    agent.state = AgentState.IDLE
    return agent


def _canonical_uuid(raw: str) -> str | None:
    try:
        return str(uuid.UUID(raw.strip()))
    except (ValueError, AttributeError):
        return None


def _one_line_redis_errors(cls: type) -> type:
    """Wrap every public method so a lost or refused connection raises one line
    (:class:`~.errors.RedisUnavailable`, still a redis-py ``ConnectionError``), not a traceback."""
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: "Town", *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if isinstance(exc, TinytownError):
                    raise
                raise from_redis(exc, self.url) from None
        return call

    for name, attr in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(attr):
            setattr(cls, name, wrap(attr))
    return cls


@_one_line_redis_errors
class Town:
    """A connected town. Make one with :meth:`init` or :meth:`connect`, not directly."""

    def __init__(self, config: TownConfig, client: redis.Redis, server: ManagedServer | None = None):
        self.config = config
        self.name: str = config.name
        self.root: Path = Path(config.root)
        self.keys = Keys(self.name)
        self.redis = client
        self.server = server
        self._script = Script(client)
        self._name_ids: dict[str, str] = {}  # canonical name → id, checked by the scripts
        self._read_script: Any = None  # registered on first Town.hashes()
        self._blocking: redis.Redis | None = None  # for XREAD BLOCK in wait(); made on first use

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def init(cls, path: str | Path = ".", name: str | None = None, **redis_options: Any) -> "Town":
        """Create a town in ``path`` (or connect to the one already there) and start Redis.

        ``redis_options`` are the ``[redis]`` settings (``url``, ``host``, ``port``,
        ``password``, ``tls_enabled``...). Without them the town gets its own server on
        ``.tt/redis.sock``. On an existing town they must match its settings (ConfigError).

        >>> town = Town.init("my-town", name="demo")   # doctest: +SKIP
        """
        root = Path(path).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root} is a file, not a directory. Give Town.init a directory "
                              "(it is created when missing).")
        if (root / "tinytown.toml").exists():
            TownConfig.load(root).check_same_redis(redis_options)
            town = cls.connect(root)
            if name is not None and name != town.name:
                raise ConfigError(
                    f"{root} already holds town {town.name!r}, not {name!r}. "
                    "Connect to it without a name, or init in another directory."
                )
            return town
        name = _names.validate_town_name(name) if name is not None else default_town_name(root)
        config = TownConfig.new(root, name, **redis_options)
        if config.uses_managed_server():
            find_server_binary()  # fail before writing anything when there is no server
        created = [p for p in (root, root / ".tt") if not p.exists()]
        try:
            for sub in ("", "agents", "logs", "tasks"):
                (root / ".tt" / sub).mkdir(parents=True, exist_ok=True)
            client, server = cls._open(config)
        except BaseException:
            for p in reversed(created):  # leave no half-made town behind
                shutil.rmtree(p, ignore_errors=True)
            raise
        config.save()
        cls._ignore_runtime_dir(root)
        return cls(config, client, server)

    @classmethod
    def connect(cls, path: str | Path = ".") -> "Town":
        """Attach to an existing town, made here or by the Rust ``tt``; starts its server if needed.

        >>> town = Town.connect("my-town")   # doctest: +SKIP
        """
        root = Path(path).expanduser().resolve()
        config = TownConfig.load(root)
        client, server = cls._open(config)
        return cls(config, client, server)

    @staticmethod
    def _open(config: TownConfig) -> tuple[redis.Redis, ManagedServer | None]:
        server = None
        if config.uses_managed_server():
            server = ManagedServer(Path(config.root) / ".tt")
            server.start()
        elif config.uses_central_server():  # shared by every central town: started, never stopped
            CentralServer(port=config.redis.port, bind=config.redis.bind,
                          password=config.redis_password()).start()
        return connect(config.redis_url(), hint=config.unreachable_hint()), server

    @staticmethod
    def _ignore_runtime_dir(root: Path) -> None:
        gitignore = root / ".gitignore"
        text = gitignore.read_text() if gitignore.exists() else ""
        if not any(line.strip() in (".tt", ".tt/") for line in text.splitlines()):
            gitignore.write_text(text + "\n# Tinytown runtime artifacts\n.tt\n")

    def disconnect(self) -> None:
        """Close this process's Redis connections (the server keeps running)."""
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None
        self.redis.close()

    def shutdown(self) -> None:
        """Stop this process's function agents and the town's managed Redis server (data
        stays in ``.tt/``). With a managed server the town's worker processes on this host
        are stopped first (they put running work back); remote Redis keeps running.

        >>> town.shutdown()   # doctest: +SKIP
        """
        from .worker import stop_local_workers, stop_process_workers  # noqa: PLC0415

        stop_local_workers(self)
        if self.server is not None and self.server.is_running():  # (a second shutdown: no-op)
            stop_process_workers(self)
        self.disconnect()
        if self.server is not None:
            self.server.stop()

    def _blocking_client(self) -> redis.Redis:
        """A client without read timeout for blocking reads (XREAD BLOCK)."""
        if self._blocking is None:
            self._blocking = connect(self.config.redis_url(), blocking=True)
        return self._blocking

    @property
    def url(self) -> str:
        """The Redis URL, password redacted."""
        return self.config.redacted_url()

    def __repr__(self) -> str:
        return f"<Town {self.name!r} at {self.root} on {self.url}>"

    # ------------------------------------------------------------------ reading records
    def _scan(self, kind: str) -> list[str]:
        return list(self.redis.scan_iter(match=self.keys.pattern(kind), count=SCAN_COUNT))

    def _hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """HGETALL many hashes in one round trip; wrong-typed keys are skipped, not fatal."""
        if not keys:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [h for h in pipe.execute(raise_on_error=False) if isinstance(h, dict) and h]

    def hashes(self, kind: str = "task", ids: Iterable[str] | None = None,
               fields: Sequence[str] | None = None) -> list[dict[str, str]]:
        """Raw ``agent`` or ``task`` hashes (all, or those ids, in that order), in one
        pipelined read; ``fields`` reads only those (``id`` always included, absent ⇒ None).

        For bulk readers that parse whole columns at once (``tinytown_nb.frames``, the
        dashboard): a read-only script reads 1000 keys per call, which costs the client
        about a third of the CPU of one HGETALL per key. Missing or wrong-typed keys are
        skipped.

        >>> len(town.hashes("task"))   # doctest: +SKIP
        10000
        >>> town.hashes("task", fields=["state"])[0]   # doctest: +SKIP
        {'id': '3f2a...', 'state': 'completed'}
        """
        if kind not in ("agent", "task"):
            raise ConfigError(f"Unknown record kind {kind!r}; use 'agent' or 'task'.")
        if ids is None:
            keys = self._scan(kind)
        else:
            key = self.keys.agent if kind == "agent" else self.keys.task
            keys = [key(i) for i in ids]
        if not keys:
            return []
        if self._read_script is None:
            self._read_script = self.redis.register_script(_HGETALL_MANY_LUA)
        names = ["id", *(f for f in fields if f != "id")] if fields is not None else []
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(keys), 1000):
            self._read_script(keys=keys[i:i + 1000], args=names, client=pipe)
        chunks = pipe.execute()
        if names:
            return [dict(zip(names, values)) for chunk in chunks for values in chunk
                    if values and values[0]]
        pairs = (iter(flat) for chunk in chunks for flat in chunk if flat)
        return [dict(zip(it, it)) for it in pairs]  # [f1, v1, f2, v2, ...] → {f1: v1, ...}

    def agents(self) -> list[Agent]:
        """All agents, oldest first.

        >>> [a.name for a in town.agents()]   # doctest: +SKIP
        ['dev', 'reviewer']
        """
        found = (Agent.from_hash(h) for h in self._hgetall_many(self._scan("agent")))
        return sorted((a for a in found if a is not None), key=lambda a: (a.created_at, a.name))

    def tasks(self, state: str | TaskState | None = None, agent: Any = None) -> list[Task]:
        """All tasks (oldest first), optionally only one state and/or one assignee.

        >>> town.tasks(state="completed", agent="dev")   # doctest: +SKIP
        """
        wanted = TaskState.parse_strict(state) if state is not None else None
        owner = self.agent(agent).id if agent is not None else None
        found = (Task.from_hash(h) for h in self._hgetall_many(self._scan("task")))
        return sorted(
            (t for t in found if t is not None
             and (wanted is None or t.state == wanted)
             and (owner is None or t.assigned_to == owner)),
            key=lambda t: t.created_at,
        )

    def task(self, task_id: str | Task) -> Task:
        """One task by UUID (or 4+ character prefix of it).

        >>> town.task("3f2a").state   # doctest: +SKIP
        <TaskState.COMPLETED: 'completed'>
        """
        tid = self._task_id(task_id)
        task = Task.from_hash(self.redis.hgetall(self.keys.task(tid)))
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def _task_id(self, ref: str | Task) -> str:
        """Canonical id of a task given its UUID, a Task, or a unique id prefix."""
        if isinstance(ref, Task):
            return ref.id
        raw = str(ref).strip().lower()
        full = _canonical_uuid(raw)
        if full:
            return full
        if len(raw) >= 4 and all(c in "0123456789abcdef-" for c in raw):
            prefix = self.keys.task("")
            hits = [k[len(prefix):] for k in self.redis.scan_iter(match=f"{prefix}{raw}*", count=SCAN_COUNT)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ConfigError(f"Task id {raw!r} is ambiguous ({len(hits)} tasks); give more characters.")
        raise TaskNotFound(ref)

    # ------------------------------------------------------------------ agent lookup
    def agent(self, ref: Any) -> Agent:
        """Resolve a name, nickname, label, 4-char short id, UUID, ``supervisor``/``conductor``.

        Matching is case-insensitive (spec §4.3); stopped agents match too.

        >>> town.agent("dev").state   # doctest: +SKIP
        <AgentState.IDLE: 'idle'>
        """
        if isinstance(ref, Agent):
            ref = ref.id
        raw = str(ref).strip()
        if not raw:
            raise AgentNotFound(ref, "Give an agent name, nickname or id.")
        if _names.is_reserved(raw):
            return _supervisor_record()
        full = _canonical_uuid(raw)
        if full:
            if full == SUPERVISOR_ID:
                return _supervisor_record()
            agent = Agent.from_hash(self.redis.hgetall(self.keys.agent(full)))
            if agent is None:
                raise AgentNotFound(raw)
            return agent
        # Fast path: names spawned here are indexed; an exact name needs no scan. Not for a
        # dead agent: the Rust `tt` spawns a second agent of a name without touching the
        # index, and the scan then reports the name as ambiguous, as `tt` does (spec 4.3)
        indexed = self.redis.hget(self.keys.names, raw)
        if indexed:
            agent = Agent.from_hash(self.redis.hgetall(self.keys.agent(indexed)))
            if agent is not None and agent.name == raw and not agent.state.is_terminal:
                return agent
        wanted = raw.lower()
        matches = [
            a for a in self.agents()
            if wanted in (a.name.lower(), a.display_name.lower(), a.display_label.lower(),
                          a.short_id.lower())
        ]
        if not matches:
            raise AgentNotFound(raw)
        if len(matches) > 1:
            exact = [a for a in matches if a.name == raw]
            if len(exact) == 1:  # a name spelled exactly beats a nickname that happens to match
                return exact[0]
            raise AmbiguousAgent(raw, [f"{a.display_label} ({a.short_id})" for a in matches])
        return matches[0]

    def _agent_id(self, ref: Any) -> str:
        """Agent id for a reference; names seen before skip the lookup (checked by the script)."""
        if isinstance(ref, Agent):
            return ref.id
        raw = str(ref).strip()
        cached = self._name_ids.get(raw)
        if cached:
            return cached
        agent = self.agent(raw)
        if agent.name == raw and agent.id != SUPERVISOR_ID:
            self._name_ids[raw] = agent.id
        return agent.id

    def _run(self, change: Change, *, rule=None, what: str = "agent", ref: str = "") -> Any:
        try:
            return self._script(change)
        except redis.ResponseError as exc:
            text = str(exc)
            if text.startswith("MISSING"):
                raise (TaskNotFound(ref) if what == "task" else AgentNotFound(ref)) from None
            raise check_error(exc, what=what, ref=ref, rule=rule) from None

    def _agent_streams(self, *agent_ids: str | None) -> list[str]:
        seen = dict.fromkeys(a for a in agent_ids if a)
        return [self.keys.events, *(self.keys.agent_events(a) for a in seen)]

    def _activity_cmds(self, aid: str, line: str) -> list[list[Any]]:
        key = self.keys.activity(aid)
        return [["LPUSH", key, line], ["LTRIM", key, 0, ACTIVITY_MAX - 1],
                ["EXPIRE", key, ACTIVITY_TTL]]

    # ------------------------------------------------------------------ agents
    def spawn(self, name: str, cli: str | None = None, *, fn: Callable[..., Any] | None = None,
              role: str | None = None, nickname: str | None = None, parent: Any = None,
              replace: bool = False, backlog: bool = False, max_rounds: int | None = None,
              idle_timeout: float | None = None, start: bool = True) -> Agent:
        """Register an agent and start its worker; returns it ``idle`` (``starting`` with
        ``start=False``). A dead agent of that name is reused; a live one is refused unless
        ``replace=True`` (which stops it first). One whose worker process on this host is
        gone (a function agent of a dead kernel) counts as dead: it is recovered first, so
        its unfinished work goes back to its inbox and runs again.

        * ``cli``: a preset (``claude``, ``codex``, ``aider``, … of ``[agent_clis]``; gets a
          prompt) or any command line (``"python my_bot.py"``; gets the task text on stdin),
          run by a detached worker process that outlives this one (log: ``.tt/logs/<name>.log``);
        * ``fn``: a Python function (or ``async def``) run in a daemon thread of this
          process: ``fn(task)`` or ``fn(task, ctx)``; its return value is the result.

        ``backlog=True``: when idle, the agent claims role-matching backlog tasks (by
        ``role``, else its name). ``max_rounds``: stop after that many messages (default: no
        limit). ``idle_timeout``: seconds idle before it stops (default the town's
        ``[agent] idle_timeout_secs``; 0 never).

        >>> town.spawn("reviewer", cli="codex", role="reviewer")   # doctest: +SKIP
        <Agent reviewer ...>
        >>> town.spawn("summarizer", fn=lambda task: task.description[:40])   # doctest: +SKIP
        """
        name = _names.validate_agent_name(name)
        if nickname is not None:
            nickname = _names.validate_agent_name(nickname)
        _check_worker_options(cli, fn, max_rounds, idle_timeout)
        cli_name = self.cli_name(cli, fn)
        parent_id = self.agent(parent).id if parent is not None else None
        same = [a for a in self.agents() if a.name == name]
        orphans = {a.id for a in self._recover_orphans([a for a in same if not a.state.is_terminal])}
        same = [self.agent(a.id) if a.id in orphans else a for a in same]
        live = [a for a in same if not a.state.is_terminal]
        if live and not replace:
            raise AgentExists(
                f"Agent {name!r} is already {live[0].state.value} ({live[0].short_id}). "
                "Use it, kill it first, or replace it (replace=True, or --replace)."
            )
        if start and fn is None:
            from .runners import command_argv  # noqa: PLC0415

            command_argv(self, cli_name, name)  # refuse a CLI that is not installed, early
        for agent in live:
            self.kill(agent)
        now = utcnow()
        if same:  # reuse the dead agent's id, inbox, history and counters
            agent = max(same, key=lambda a: a.created_at)
            # only the fields a spawn changes: counters and current_task written meanwhile by
            # a dying worker (its last task's completion) are kept, not overwritten
            fields = {"state": AgentState.STARTING.value, "cli": cli_name, "rounds_completed": "0",
                      "last_heartbeat": hash_ts(now), "last_active_at": hash_ts(now),
                      "spawn_mode": SpawnMode.FRESH.value}
            given = {"role_id": role, "nickname": nickname, "parent_agent_id": parent_id}
            fields.update({k: v for k, v in given.items() if v is not None})
            change = Change(self.keys.agent(agent.id), self._agent_streams(agent.id, parent_id),
                            {"require": True, "from": states(s for s in AgentState if s.is_terminal),
                             "set": fields})
            message = f"Agent {name} respawned"
        else:
            agent = Agent.new(name, cli_name, nickname=nickname, role_id=role, parent_agent_id=parent_id)
            change = Change(self.keys.agent(agent.id), self._agent_streams(agent.id, parent_id),
                            {"absent": True, "set": agent.to_hash()})
            message = f"Agent {name} spawned"
        change.spec.update(
            claim={"key": self.keys.names, "name": name, "id": agent.id, "prefix": self.keys.agent("")},
            cmds=[["DEL", self.keys.stop(agent.id)], *self._activity_cmds(agent.id, "🐣 Spawned")],
        )
        change.event("agent_spawned", with_old_state=False, agent_id=agent.id, message=message,
                     new_state="Starting", parent_agent_id=parent_id,
                     child_agent_id=agent.id if parent_id else None, timestamp=now)
        try:
            self._script(change)
        except redis.ResponseError as exc:
            if str(exc).startswith(("TAKEN", "STATE")):
                raise AgentExists(
                    f"Agent {name!r} was just spawned by someone else. Use it or pick another name."
                ) from None
            raise
        self._name_ids[name] = agent.id
        if same:
            agent = self.agent(agent.id)
        if not start:
            return agent
        return self._start_worker(agent, fn, max_rounds=max_rounds, idle_timeout=idle_timeout,
                                  backlog=backlog)

    def cli_name(self, cli: str | None = None, fn: Callable[..., Any] | None = None) -> str:
        """What :meth:`spawn` records as an agent's ``cli`` for these arguments: a preset
        name (command lines of a preset resolve to it), the command line, or ``fn:<name>``.

        >>> town.cli_name("claude --print --dangerously-skip-permissions"), town.cli_name(fn=len)   # doctest: +SKIP
        ('claude', 'fn:len')
        """
        if fn is not None:
            return f"fn:{getattr(fn, '__qualname__', type(fn).__name__)}"
        return resolve_cli_name(cli or self.config.default_cli, self.config)

    def _start_worker(self, agent: Agent, fn: Callable[..., Any] | None = None, *,
                      timeout: float = 30.0, **options: Any) -> Agent:
        """Start the worker of an agent in state ``starting``; return it once registered."""
        from . import worker as _worker  # noqa: PLC0415 — the worker layer imports the town

        proc = None
        if fn is not None or agent.cli.startswith("fn:"):
            _worker.start_thread_worker(self, agent, fn, **options)
        else:
            proc = _worker.start_process_worker(self, agent, **options)

        def check(_: Any) -> Agent | None:
            current = self.agent(agent.id)
            if current.state != AgentState.STARTING:
                return current
            if proc is not None and proc.poll() is not None:
                log = self.root / ".tt" / "logs" / f"{agent.name}.log"
                last = (log.read_text(errors="replace").strip().splitlines() or [""])[-1]
                self._agent_change("kill", agent, message=f"Agent {agent.name}: worker failed to start")
                raise InvalidState(f"The worker of agent {agent.name!r} exited at start (code "
                                   f"{proc.returncode}): {last[:200]} — see {log}.")
            return None

        return _waiting.until(self, check, timeout=timeout,
                              describe=lambda: f"the worker of agent {agent.name!r} to start")

    def _agent_change(self, action: str, ref: Any, *, extra_set: dict[str, str] | None = None,
                      cmds: list[list[Any]] | None = None, message: str = "",
                      delete: Sequence[str] = ()) -> Agent:
        """Apply one rule of :data:`AGENT_RULES` to an agent, atomically with its event."""
        rule = AGENT_RULES[action]
        # A record in hand is trusted only for its id and name: the script checks the state.
        agent = ref if isinstance(ref, Agent) else self.agent(ref)
        if agent.id == SUPERVISOR_ID:
            raise InvalidState("The supervisor is a mailbox, not a running agent; it cannot be "
                               f"{rule.verb}ed. Address a worker agent instead.")
        now = utcnow()
        fields = {"state": rule.to.value, "last_heartbeat": hash_ts(now)}
        fields.update(extra_set or {})
        change = Change(self.keys.agent(agent.id), self._agent_streams(agent.id, agent.parent_agent_id),
                        {"require": True, "from": states(rule.allowed_from), "set": fields,
                         "cmds": cmds or []})
        if delete:
            change.spec["del"] = list(delete)
        if rule.event:
            change.event(rule.event, agent_id=agent.id, new_state=rule.to.debug_name,
                         message=message or f"Agent {agent.name}: {action}", timestamp=now)
        self._run(change, rule=rule, what="agent", ref=agent.name)
        agent.state = rule.to
        return agent

    def kill(self, agent: Any) -> Agent:
        """Stop an agent now: state ``stopped`` plus the stop flag its worker obeys.

        >>> town.kill("dev").state   # doctest: +SKIP
        <AgentState.STOPPED: 'stopped'>
        """
        a = self.agent(agent)
        return self._agent_change(
            "kill", a, message=f"Agent {a.name} killed",
            cmds=[["SET", self.keys.stop(a.id), "1", "EX", STOP_TTL],
                  *self._activity_cmds(a.id, "🛑 Stop requested")])

    def stop_all(self) -> list[Agent]:
        """Kill every agent that is not already stopped (``tt stop``); Redis keeps running."""
        return [self.kill(a) for a in self.agents() if not a.state.is_terminal]

    def interrupt(self, agent: Any) -> Agent:
        """Pause an agent: it finishes the current task but starts nothing new until resumed."""
        a = self.agent(agent)
        return self._agent_change("interrupt", a, message=f"Agent {a.name} interrupted",
                                  cmds=self._activity_cmds(a.id, "⏸️ Interrupted"))

    def resume(self, agent: Any) -> Agent:
        """Un-pause an agent (``paused`` → ``idle``) and clear any stop request."""
        a = self.agent(agent)
        return self._agent_change("resume", a, message=f"Agent {a.name} resumed",
                                  cmds=[["DEL", self.keys.stop(a.id)],
                                        *self._activity_cmds(a.id, "▶️ Resumed")])

    def close(self, agent: Any) -> Agent:
        """Let an agent finish its current work, then stop (``draining`` + stop flag)."""
        a = self.agent(agent)
        return self._agent_change(
            "close", a, message="Agent closing (draining then stop)",
            cmds=[["SET", self.keys.stop(a.id), "1", "EX", STOP_TTL],
                  *self._activity_cmds(a.id, "🔻 Close requested")])

    def restart(self, agent: Any, *, start: bool = True, max_rounds: int | None = None) -> Agent:
        """Bring a stopped agent back with fresh round counters and a new worker (started
        with the options it had, ``max_rounds`` replacing its limit when given); returns it
        once the worker runs. Work it left unfinished is done again (at-least-once).
        ``start=False`` only resets the record (``starting``).

        >>> town.restart("dev").state   # doctest: +SKIP
        <AgentState.IDLE: 'idle'>
        """
        from . import worker as _worker  # noqa: PLC0415

        _check_worker_options(None, None, max_rounds, None)
        a = self.agent(agent)
        if not a.state.is_terminal:  # a live-looking agent whose worker process is gone
            a = (self._recover_orphans([a]) or [a])[0]
        options = _worker.worker_options(self, a.id)
        if max_rounds is not None:
            options["max_rounds"] = max_rounds
        if start and a.state in AGENT_RULES["restart"].allowed_from:  # check before writing
            if not a.cli.startswith("fn:"):
                from .runners import command_argv  # noqa: PLC0415

                command_argv(self, a.cli, a.name)
            elif not _worker.has_function(self, a.id):
                raise ConfigError(f"Agent {a.name!r} runs a Python function this process does "
                                  "not know; spawn it again with fn=... (or restart it where it "
                                  "was spawned).")
        a = self._agent_change("restart", a, message=f"Agent {a.name} restarted",
                               extra_set={"rounds_completed": "0",
                                          "last_active_at": hash_ts(utcnow())},
                               cmds=[["DEL", self.keys.stop(a.id)],
                                     *self._activity_cmds(a.id, "🔄 Restarted")])
        options.pop("kind", None)
        return self._start_worker(a, **options) if start else a

    def prune(self, all: bool = False) -> list[Agent]:
        """Delete stopped/error agents (every agent with ``all=True``) and their mailboxes.

        Their tasks stay; ``reclaim`` finds the ones left unfinished. Each agent is deleted
        atomically and only if still dead then (one restarted meanwhile is kept).

        >>> [a.name for a in town.prune()]   # doctest: +SKIP
        ['dev']
        """
        dead = (AgentState.STOPPED, AgentState.ERROR)
        doomed = [a for a in self.agents() if all or a.state in dead]
        k = self.keys
        # one script per agent: deleted only if still dead when it runs (one restarted since
        # the listing keeps its record and mailboxes)
        changes = [Change(k.agent(a.id), [], {
            "require": True, **({} if all else {"from": states(dead)}),
            "cmds": [["DEL", k.agent(a.id), k.inbox(a.id), k.urgent(a.id), k.activity(a.id),
                      k.stop(a.id), k.processing(a.id), k.worker(a.id), k.notes(a.id)],
                     ["HDEL", k.names, a.name]]}) for a in doomed]
        results = self._script.run_many(self.redis, changes) if changes else []
        pruned = [a for a, r in zip(doomed, results) if not isinstance(r, Exception)]
        for a in pruned:
            self._name_ids.pop(a.name, None)
        return pruned

    def reset(self, agents_only: bool = False) -> int:
        """Delete the whole town's data (or only agents and mailboxes); returns keys deleted.

        >>> town.reset()   # doctest: +SKIP
        42
        """
        kinds = ("agent", "inbox", "urgent", "stop", "activity", "processing", "worker", "notes")
        patterns = [self.keys.pattern(k) for k in kinds] if agents_only else [f"{self.keys.prefix}*"]
        doomed = [k for p in patterns for k in self.redis.scan_iter(match=p, count=SCAN_COUNT)]
        if agents_only:
            doomed.append(self.keys.names)
        deleted = 0
        for i in range(0, len(doomed), 1000):
            deleted += self.redis.delete(*doomed[i:i + 1000])
        self._name_ids.clear()
        return deleted

    def activity(self, agent: Any, n: int = 5) -> list[str]:
        """The agent's last activity lines, newest first."""
        return self.redis.lrange(self.keys.activity(self.agent(agent).id), 0, n - 1)

    def log_tails(self, agent: Any, n: int = 8) -> dict[str, list[str]]:
        """The last ``n`` lines of the agent's worker log (``.tt/logs/<name>.log``) and of
        its newest round log (what its CLI printed), by file name; files that do not exist
        are left out. Logs are local files: this shows the ones on this machine.

        >>> town.log_tails("dev", 3)   # doctest: +SKIP
        {'dev.log': ['… round 2: ok 3f2a in 4.10s', ...], 'dev_round_2.log': [...]}
        """
        name = self.agent(agent).name
        logs = self.root / ".tt" / "logs"
        rounds = sorted(logs.glob(f"{glob.escape(name)}_round_*.log"),
                        key=lambda p: int(p.stem.rsplit("_", 1)[1]) if p.stem.rsplit("_", 1)[1].isdigit() else -1)
        out = {}
        for path in [logs / f"{name}.log", *rounds[-1:]]:
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            out[path.name] = [ln for ln in lines if ln.strip()][-n:]
        return out

    # ------------------------------------------------------------------ workers
    def wait(self, agent: Any = None, *, task: Any = None, all: bool = False,
             timeout: float | None = None, progress: Callable[[], None] | None = None) -> Any:
        """Block until something is done; driven by the event stream, not polling.

        * ``wait("dev")``: until the agent is idle with nothing queued (or stopped) → Agent;
        * ``wait(task=t)``: until the task is completed, failed or cancelled → Task;
        * ``wait(all=True)``: until every task of the town is → list of Tasks.

        Raises :class:`WaitTimeout` (saying what it is still doing) after ``timeout`` s.
        ``progress()``, if given, is called each time a look finds it not done yet (at
        least every 2 s), e.g. to redraw a progress bar.

        >>> town.wait(task=town.assign("dev", "Fix #12"), timeout=600).result   # doctest: +SKIP
        """
        if sum(map(bool, (agent is not None, task is not None, all))) != 1:
            raise ConfigError("Say what to wait for: wait('dev'), wait(task=t) or wait(all=True).")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ConfigError(f"timeout must be seconds >= 0 or None, got {timeout!r}.")
        if task is not None:
            return _waiting.wait_task(self, self._task_id(task), timeout, progress)
        if all:
            return _waiting.wait_all(self, timeout, progress)
        return _waiting.wait_agent(self, self.agent(agent).id, timeout, progress)

    def recover(self, stale_after: float = 120.0, *, gone_only: bool = False) -> list[Agent]:
        """Mark agents whose worker died ``stopped`` and put their unfinished work back in
        their inbox (``tt recover``, without its false positives on long tasks: live workers
        heartbeat throughout): at once when it was a process of this host that is gone (a
        dead kernel's function agents, a killed worker), else after ``stale_after`` s
        without a heartbeat. ``gone_only=True``: only the first kind. Returns them.

        >>> [a.name for a in town.recover()]   # doctest: +SKIP
        ['dev']
        """
        if gone_only:
            return self._recover_orphans(self.agents())
        return _recovery.recover(self, stale_after)

    def _recover_orphans(self, agents: Sequence[Agent]) -> list[Agent]:
        """Recover (as :meth:`recover` does) those of ``agents`` whose registered worker ran
        in another process of this host that is gone — e.g. function agents of a dead kernel
        — at once, without waiting for their heartbeat to go stale. Returns them, stopped."""
        from .worker import _alive  # noqa: PLC0415 — the worker layer imports the town

        k, rule = self.keys, AGENT_RULES["recover"]
        # not ``starting``: its worker hash may still name the previous (dead) launch
        agents = [a for a in agents if a.state in rule.allowed_from and a.state != AgentState.STARTING]
        if not agents:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for a in agents:
            pipe.hmget(k.worker(a.id), "pid", "host")
            pipe.hget(k.agent(a.id), "current_task")
            pipe.lrange(k.processing(a.id), 0, -1)
        replies = pipe.execute()
        here, recovered = socket.gethostname(), []
        for i, agent in enumerate(agents):
            (pid, host), current, raws = replies[3 * i:3 * i + 3]
            if host != here or not (pid or "").isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            line = f"🔄 Recovered (orphaned): worker process {pid} is gone"
            change = Change(k.agent(agent.id), self._agent_streams(agent.id), {
                "require": True, "from": states(rule.allowed_from),
                "guards": [[k.worker(agent.id), "pid", pid], [k.worker(agent.id), "host", here]],
                "set": {"state": "stopped"}, "del": ["current_task"],
                "requeue": _recovery.requeue_spec(self, agent.id, raws, current),
                "cmds": [["HDEL", k.worker(agent.id), "token"], *self._activity_cmds(agent.id, line)]})
            change.event(rule.event, agent_id=agent.id, new_state="Stopped",
                         message=f"Agent {agent.name} recovered: worker process {pid} is gone")
            try:
                self._script(change)
            except redis.ResponseError:
                continue  # a new worker registered or it changed state since we looked
            _recovery.stop_left_command(self, agent.id)  # a killed worker's command, if any
            recovered.append(self.agent(agent.id))
        return recovered

    def reclaim(self, *, from_agent: Any = None, to: Any = None, to_backlog: bool = False,
                orphan_tasks: bool = False, cancel: bool = False,
                delete: bool = False) -> list[_recovery.Reclaimed]:
        """Take back what dead (stopped) agents hold (``tt reclaim``).

        Default: their urgent, inbox and processing messages are *listed* (nothing removed);
        ``to="agent"`` moves them there (tasks reassigned), ``to_backlog=True`` returns their
        tasks to the backlog as ``pending`` with no assignee. ``orphan_tasks=True`` works on
        unfinished tasks whose assignee is dead or gone instead, and also takes
        ``cancel=True`` or ``delete=True``.

        >>> town.reclaim(from_agent="dev", to_backlog=True)   # doctest: +SKIP
        """
        return _recovery.reclaim(self, from_agent=from_agent, to=to, to_backlog=to_backlog,
                                 orphan_tasks=orphan_tasks, cancel=cancel, delete=delete)

    def current_task(self, agent: Any) -> Task | None:
        """The task an agent is working on now, or None.

        >>> town.current_task("dev")   # doctest: +SKIP
        """
        a = self.agent(agent)
        if not a.current_task:
            return None
        try:
            return self.task(a.current_task)
        except TaskNotFound:
            return None

    def task_log(self, task_id: Any) -> list[str]:
        """Output captured while a task ran (the last 1,000 lines): a function agent's prints,
        a CLI's output tail.

        >>> town.task_log(task)[:2]   # doctest: +SKIP
        ['reading 3 files', 'done']
        """
        tid = self._task_id(task_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.keys.task(tid))
        pipe.lrange(self.keys.task_log(tid), 0, -1)
        exists, lines = pipe.execute()
        if not exists and not lines:  # free-text messages have a log but no task record
            raise TaskNotFound(task_id)
        return lines

    # ------------------------------------------------------------------ tasks
    def _assign_change(self, aid: str, task: Task, name_guard: str | None) -> Change:
        now = task.updated_at
        # Both ids are canonical already, so skip Message.new's re-validation: it was a third
        # of assign_many's Python time (benchmarks/bench_core.py).
        msg = Message(id=str(uuid.uuid4()), sender=SUPERVISOR_ID, to=aid, type="task_assign",
                      body={"task_id": task.id}, created_at=now)
        spec: dict[str, Any] = {"absent": True, "set": task.to_hash(),
                                "cmds": [["RPUSH", self.keys.inbox(aid), msg.to_json()]]}
        if name_guard is not None:
            spec["guards"] = [[self.keys.agent(aid), "name", name_guard]]
        change = Change(self.keys.task(task.id), self._agent_streams(aid), spec)
        return change.event("task_assigned", with_old_state=False, agent_id=aid, task_id=task.id,
                            new_state="Assigned", message=f"Task assigned: {task.summary(80)}",
                            timestamp=now)

    def _new_assigned_task(self, aid: str, description: str, tags: Iterable[str]) -> Task:
        task = Task.new(_check_description(description, "Say what the agent should do."),
                        tags=_clean_tags(tags))
        task.state, task.assigned_to = TaskState.ASSIGNED, aid
        return task

    def assign(self, agent: Any, description: str, *, tags: Iterable[str] = ()) -> Task:
        """Create a task for an agent and queue its ``task_assign`` message, atomically.

        Costs one round trip once the agent's name has been seen.

        >>> town.assign("dev", "Add a --verbose flag", tags=["cli"]).state   # doctest: +SKIP
        <TaskState.ASSIGNED: 'assigned'>
        """
        return self.assign_many(agent, [description], tags=tags)[0]

    def assign_many(self, agent: Any, descriptions: Iterable[str], *,
                    tags: Iterable[str] = ()) -> list[Task]:
        """Assign many tasks to one agent in one pipelined round trip.

        >>> tasks = town.assign_many("dev", [f"Fix bug #{i}" for i in range(100)])   # doctest: +SKIP
        """
        descriptions = list(descriptions)
        tags = _clean_tags(tags)  # not list(tags): "a, b" must not become one tag per letter
        for attempt in (1, 2):
            aid = self._agent_id(agent)
            guard = None
            if not isinstance(agent, Agent) and aid != SUPERVISOR_ID:
                guard = self._agent_name_for_guard(agent, aid)
            tasks = [self._new_assigned_task(aid, d, tags) for d in descriptions]
            changes = [self._assign_change(aid, t, guard) for t in tasks]
            results = self._script.run_many(self.redis, changes)
            stale = [r for r in results if isinstance(r, redis.ResponseError)]
            if not stale:
                return tasks
            if attempt == 1 and all(str(r).startswith("STALE") for r in stale):
                self._name_ids.clear()  # agent pruned or renamed since we looked: look again
                if len(stale) == len(results):
                    continue
            raise AgentNotFound(agent) if str(stale[0]).startswith("STALE") else stale[0]
        raise AgentNotFound(agent)

    def _agent_name_for_guard(self, ref: Any, aid: str) -> str | None:
        raw = str(ref).strip()
        return raw if self._name_ids.get(raw) == aid else None

    def _finish_change(self, action: str, task: Task, fields: dict[str, str], *,
                       message: str, count_done: bool = False,
                       extra: list[list[Any]] | None = None, _retry: bool = False) -> Task:
        rule = TASK_RULES[action]
        now = utcnow()
        fields = {"state": rule.to.value, "updated_at": hash_ts(now), **fields}
        spec: dict[str, Any] = {"require": True, "from": states(rule.allowed_from), "set": fields,
                                "guards": [[self.keys.task(task.id), "assigned_to", task.assigned_to or ""]],
                                "cmds": extra or []}
        if task.assigned_to:
            spec["companion"] = {"key": self.keys.agent(task.assigned_to), "clear_current": task.id}
            if count_done:
                spec["companion"]["incr"] = "tasks_completed"
        change = Change(self.keys.task(task.id), self._agent_streams(task.assigned_to), spec)
        if rule.event:
            change.event(rule.event, agent_id=task.assigned_to, task_id=task.id,
                         new_state=rule.to.debug_name, message=message, timestamp=now)
        try:
            self._run(change, rule=rule, what="task", ref=task.short_id)
        except redis.ResponseError as exc:  # STALE: claimed/reassigned since it was read
            if not str(exc).startswith("STALE"):
                raise
            if _retry:
                raise InvalidState(f"Task {task.short_id!r} kept changing while this ran; "
                                   "look at it again and retry.") from None
            return self._finish_change(action, self.task(task.id), fields, message=message,
                                       count_done=count_done, extra=extra, _retry=True)
        return self.task(task.id)

    def complete_task(self, task_id: Any, result: str | None = None) -> Task:
        """Mark a task completed with its result (``tt task complete``).

        >>> town.complete_task(task.id, "Merged in #12").state   # doctest: +SKIP
        <TaskState.COMPLETED: 'completed'>
        """
        task = self.task(task_id)
        now = hash_ts(utcnow())
        return self._finish_change("complete", task, {"result": result or "Completed", "completed_at": now},
                                   message=f"Task completed: {task.summary(80)}", count_done=True)

    def fail_task(self, task_id: Any, error: str) -> Task:
        """Mark a task failed; the error text becomes its result (as upstream stores it)."""
        task = self.task(task_id)
        now = hash_ts(utcnow())
        return self._finish_change("fail", task, {"result": error or "Failed", "completed_at": now},
                                   message=f"Task failed: {(error or '').strip()[:120]}")

    def cancel_task(self, task_id: Any, reason: str | None = None) -> Task:
        """Cancel an unfinished task (and take it out of the backlog if it is there)."""
        task = self.task(task_id)
        now = hash_ts(utcnow())
        text = f"Cancelled: {reason}" if reason else "Cancelled"
        return self._finish_change("cancel", task, {"result": text, "completed_at": now},
                                   message=f"Task cancelled: {task.summary(80)}",
                                   extra=[["LREM", self.keys.backlog, 0, task.id]])

    # ------------------------------------------------------------------ messages
    def send(self, to: Any, text: str, *, kind: str = "task", urgent: bool = False,
             sender: Any = None) -> Message:
        """Send a message: ``kind`` is ``task``, ``query``, ``info`` or ``ack``.

        Urgent messages go to the agent's urgent list, read before its inbox.

        >>> town.send("dev", "Please also update the docs", kind="info")   # doctest: +SKIP
        """
        if kind not in MESSAGE_KINDS:
            raise ConfigError(f"Message kind {kind!r} is unknown; use one of {', '.join(MESSAGE_KINDS)}.")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("Message text is empty. Say something to the agent.")
        to_id = self.agent(to).id
        from_id = self._sender_id(sender)
        build = {"task": Message.task_text, "query": Message.query,
                 "info": Message.informational, "ack": Message.confirmation}[kind]
        msg = build(text, sender=from_id, to=to_id)
        if urgent:
            self.redis.lpush(self.keys.urgent(to_id), msg.to_json())
        else:
            self.redis.rpush(self.keys.inbox(to_id), msg.to_json())
        return msg

    def _sender_id(self, sender: Any) -> str:
        if sender is None:
            return SUPERVISOR_ID
        if isinstance(sender, str) and _canonical_uuid(sender):
            return _canonical_uuid(sender)  # type: ignore[return-value]
        return self.agent(sender).id

    def inbox(self, agent: Any) -> list[Message]:
        """Messages waiting for an agent, urgent first, without taking them.

        >>> [m.text for m in town.inbox("dev")]   # doctest: +SKIP
        """
        urgent, regular = self.inboxes([self.agent(agent).id])[0]
        return urgent + regular

    def inboxes(self, agent_ids: Iterable[str]) -> list[tuple[list[Message], list[Message]]]:
        """``(urgent, regular)`` waiting messages of many agent ids, in one pipelined read.

        >>> [(len(u), len(r)) for u, r in town.inboxes([dev.id, SUPERVISOR_ID])]   # doctest: +SKIP
        [(0, 2), (0, 0)]
        """
        ids = list(agent_ids)
        pipe = self.redis.pipeline(transaction=False)
        for aid in ids:
            pipe.lrange(self.keys.urgent(aid), 0, -1)
            pipe.lrange(self.keys.inbox(aid), 0, -1)
        raw = pipe.execute() if ids else []
        return [(_parse_messages(raw[2 * i]), _parse_messages(raw[2 * i + 1])) for i in range(len(ids))]

    def inbox_counts(self, agent_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Waiting messages per agent id (urgent + regular); default every agent + the supervisor."""
        ids = list(agent_ids) if agent_ids is not None else [a.id for a in self.agents()] + [SUPERVISOR_ID]
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for aid in ids:
            pipe.llen(self.keys.urgent(aid))
            pipe.llen(self.keys.inbox(aid))
        counts = pipe.execute()
        return {aid: counts[2 * i] + counts[2 * i + 1] for i, aid in enumerate(ids)}

    def events(self, count: int = 20, *, agent: Any = None, after: str | None = None) -> list[Event]:
        """Events oldest first, from the start or strictly after the stream id ``after``.

        >>> [e.type for e in town.events()]   # doctest: +SKIP
        ['agent_spawned', 'task_assigned']
        """
        _check_count(count, "count")
        if after is not None and not (isinstance(after, str) and _STREAM_ID.fullmatch(after)):
            raise ConfigError(f"after must be an event id like '1719000000000-0' (Event.id), "
                              f"got {after!r}.")
        stream = self.keys.agent_events(self.agent(agent).id) if agent is not None else self.keys.events
        return read_events(self.redis, stream, count=count, after=after)

    def history(self, n: int = 30, *, agent: Any = None) -> list[Event]:
        """The last ``n`` town events, oldest first (``tt history``); ``agent`` filters by name.

        >>> [e.message for e in town.history(2, agent="dev")]   # doctest: +SKIP
        """
        _check_count(n, "n")
        if agent is None:
            return recent_events(self.redis, self.keys.events, count=n)
        return recent_events(self.redis, self.keys.agent_events(self.agent(agent).id), count=n)

    # ------------------------------------------------------------------ backlog
    def backlog_add(self, description: str, *, tags: Iterable[str] = ()) -> Task:
        """Put a new unassigned task on the backlog (FIFO).

        >>> town.backlog_add("Triage open issues", tags=["ops"])   # doctest: +SKIP
        """
        task = Task.new(_check_description(description, "Say what needs doing."),
                        tags=_clean_tags(tags))
        change = Change(self.keys.task(task.id), self._agent_streams(),
                        {"absent": True, "set": task.to_hash(),
                         "cmds": [["RPUSH", self.keys.backlog, task.id]]})
        change.event("task_delegated", with_old_state=False, task_id=task.id, new_state="Pending",
                     message=f"Task added to backlog: {task.summary(80)}", timestamp=task.created_at)
        self._script(change)
        return task

    def backlog(self) -> list[Task]:
        """Backlog tasks in queue order."""
        ids = self.redis.lrange(self.keys.backlog, 0, -1)
        by_id = {t.id: t for t in (Task.from_hash(h) for h in
                                   self._hgetall_many([self.keys.task(i) for i in ids])) if t}
        return [by_id[i] for i in ids if i in by_id]

    def backlog_claim(self, task_id: Any, agent: Any) -> Task:
        """Take one task off the backlog and assign it (the agent is resolved first, so a
        typo never loses the task — upstream bug §11.11)."""
        aid = self._agent_id(agent)
        tid = self._task_id(task_id)
        self._claim(tid, aid)
        return self.task(tid)

    def _claim_change(self, tid: str, aid: str) -> Change:
        rule = TASK_RULES["claim"]
        now = utcnow()
        msg = Message.task_assign(tid, sender=SUPERVISOR_ID, to=aid)
        change = Change(self.keys.task(tid), self._agent_streams(aid), {
            "require": True, "from": states(rule.allowed_from),
            "in_list": {"key": self.keys.backlog, "value": tid},
            "set": {"state": "assigned", "assigned_to": aid, "updated_at": hash_ts(now)},
            "cmds": [["RPUSH", self.keys.inbox(aid), msg.to_json()]]})
        return change.event("task_assigned", agent_id=aid, task_id=tid, new_state="Assigned",
                            message="Task claimed from backlog", timestamp=now)

    def _claim(self, tid: str, aid: str) -> None:
        try:
            self._script(self._claim_change(tid, aid))
        except redis.ResponseError as exc:
            if str(exc).startswith(("NOT_IN_LIST", "MISSING")):
                raise TaskNotFound(f"{tid} (not in the backlog)") from None
            raise check_error(exc, what="task", ref=tid[:4], rule=TASK_RULES["claim"]) from None

    def backlog_assign_all(self, agent: Any) -> list[Task]:
        """Assign every backlog task, in order, to one agent; one round trip for all."""
        aid = self._agent_id(agent)
        ids = self.redis.lrange(self.keys.backlog, 0, -1)
        results = self._script.run_many(self.redis, [self._claim_change(tid, aid) for tid in ids])
        claimed = [tid for tid, r in zip(ids, results) if not isinstance(r, Exception)]
        return [t for t in (Task.from_hash(h) for h in
                            self._hgetall_many([self.keys.task(i) for i in claimed])) if t]

    def backlog_remove(self, task_id: Any) -> Task:
        """Remove a task from the backlog and delete it; returns the deleted record."""
        task = self.task(task_id)
        # One script: LREM and DEL only when the id is queued, so a task that is not in the
        # backlog is never deleted and rewritten (which lost Rust's 9-digit timestamps).
        change = Change(self.keys.task(task.id), [], {
            "require": True, "in_list": {"key": self.keys.backlog, "value": task.id},
            "cmds": [["DEL", self.keys.task(task.id)]]})
        try:
            self._script(change)
        except redis.ResponseError as exc:
            if str(exc).startswith(("NOT_IN_LIST", "MISSING")):
                raise TaskNotFound(f"{task.id} (not in the backlog)") from None
            raise
        return task


def _check_worker_options(cli: Any, fn: Any, max_rounds: Any, idle_timeout: Any) -> None:
    if fn is not None and cli is not None:
        raise ConfigError("Give either cli=... (a command) or fn=... (a Python function), not both.")
    if fn is not None and not callable(fn):
        raise ConfigError(f"fn must be a function, got {type(fn).__name__}.")
    if max_rounds is not None and (isinstance(max_rounds, bool) or not isinstance(max_rounds, int)
                                   or max_rounds < 1):
        raise ConfigError(f"max_rounds must be a whole number >= 1 (or None), got {max_rounds!r}.")
    if idle_timeout is not None and (isinstance(idle_timeout, bool)
                                     or not isinstance(idle_timeout, (int, float)) or idle_timeout < 0):
        raise ConfigError(f"idle_timeout must be seconds >= 0 (0: never), got {idle_timeout!r}.")


def _check_count(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}.")


def _check_description(description: Any, advice: str) -> str:
    if not isinstance(description, str):
        raise ConfigError(f"A task description is text, not {type(description).__name__}. {advice}")
    if not description.strip():
        raise ConfigError(f"Task description is empty. {advice}")
    return description


def _clean_tags(tags: Iterable[str]) -> list[str]:
    """``"a, b"`` or ``["a", " b "]`` → ``["a", "b"]`` (blank ones dropped); a tag that is
    not a string is refused rather than dropped."""
    if isinstance(tags, str):
        tags = tags.split(",")
    try:
        tags = list(tags)
    except TypeError:
        raise ConfigError(f"Tags must be a list of strings or 'a, b', not {type(tags).__name__}.") from None
    odd = [t for t in tags if not isinstance(t, str)]
    if odd:
        raise ConfigError(f"Tags must be strings; got {odd[0]!r}. Pass tags=['a', 'b'] or 'a, b'.")
    return [t.strip() for t in tags if t.strip()]


def _parse_messages(raw: Iterable[str]) -> list[Message]:
    out = []
    for item in raw:
        try:
            out.append(Message.from_json(item))
        except (ValueError, KeyError, TypeError):
            continue  # upstream's peek skips what it cannot parse
    return out
