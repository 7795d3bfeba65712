"""A town's storage, as every operation above it uses it: the Redis client, the town's key
names and file paths, the transition script, bulk reads, event reads and the order in
which an agent reads its mail.

The :class:`Store` holds no rules: those live in :mod:`.transitions` (what may change) and
the operations modules (what to change). It is what ``Town`` used to lend out through
its private methods.

Example::

    >>> store = Store.open(TownConfig.load(town.root))
    >>> town.backlog_add("Triage open issues").state
    <TaskState.PENDING: 'pending'>
    >>> store.hashes("task", fields=["state"])[:1]
    [{'id': '...', 'state': 'pending'}]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from .config import TownConfig
from .errors import ConfigError
from .events import Event, decode_entry
from .keys import Keys
from .paths import TownPaths
from .server import CentralServer, ManagedServer, connect
from .transitions import Change, Script

SCAN_COUNT = 10_000  # keys per SCAN step: few round trips even with 100k keys
BULK = 1000  # keys per call of the bulk-read script
SORT_CHUNK = 1000  # records per SORT_RO call of an index read (~8 ms of server time at 11 fields)
_STREAM_ID = re.compile(r"\d+(-\d+)?")

#: The order an agent reads its mail: the urgent list oldest first (it is filled with
#: LPUSH, so from the right), then the inbox from the left. The worker's take step and
#: every listing (``inbox()``, ``inbox_frame``) follow this one rule.
#: Hash kinds :meth:`Store.hashes` reads in bulk (each with an ``id`` field).
HASH_KINDS = ("agent", "task", "taskopts", "usage")
MAIL_ORDER = (("urgent", "RIGHT"), ("inbox", "LEFT"))

# Read-only bulk HGETALL; wrong-typed keys give an empty entry, not an error. With ARGV
# (field names) it HMGETs those fields instead (a missing field comes back nil).
_HGETALL_MANY_LUA = """local out = {}
for i, k in ipairs(KEYS) do
  local ok, h
  if #ARGV > 0 then ok, h = pcall(redis.call, 'HMGET', k, unpack(ARGV))
  else ok, h = pcall(redis.call, 'HGETALL', k) end
  out[i] = ok and h or {}
end
return out"""


class Store:
    """One town's Redis client, keys, paths and transition script.

    Make one with :meth:`open` (starts the town's managed server when it has one).
    """

    def __init__(self, config: TownConfig, client: redis.Redis, server: ManagedServer | None = None):
        self.config = config
        self.name: str = config.name
        self.root: Path = Path(config.root)
        self.keys = Keys(self.name)
        self.paths = TownPaths(self.root)
        self.redis = client
        self.server = server
        self.script = Script(client, self.keys.prefix)
        #: canonical agent name → id for names seen here; writes that rely on it carry a
        #: guard on the agent's name, so a stale entry is caught by the script
        self.name_ids: dict[str, str] = {}
        self._scripts: dict[str, Any] = {}  # read-only helper scripts, registered on first use
        self._blocking: redis.Redis | None = None
        self._raw: redis.Redis | None = None

    @classmethod
    def open(cls, config: TownConfig) -> "Store":
        """Connect to the town's Redis, starting its server first when the town has its own
        (or uses the Rust ``tt``'s central server, which is started but never stopped).

        >>> Store.open(TownConfig.load(town.root)).url
        'unix:///.../town/.tt/redis.sock'
        """
        server = None
        if config.uses_managed_server():
            server = ManagedServer(Path(config.root) / ".tt")
            server.start()
        elif config.uses_central_server():
            CentralServer(port=config.redis.port, bind=config.redis.bind,
                          password=config.redis_password()).start()
        client = connect(config.redis_url(), hint=config.unreachable_hint())
        return cls(config, client, server)

    @property
    def url(self) -> str:
        """The Redis URL, password redacted."""
        return self.config.redacted_url()

    def lua(self, name: str, source: str) -> Any:
        """A helper script (registered once per store), called as ``f(keys=..., args=...)``."""
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(source)
        return self._scripts[name]

    @property
    def raw(self) -> redis.Redis:
        """A client whose replies are the bytes as stored (no decoding): for a worker that
        takes messages, which must be moved byte for byte even when another program wrote
        bytes that are not UTF-8. Made on first use."""
        if self._raw is None:
            self._raw = connect(self.config.redis_url(), decode=False)
        return self._raw

    def blocking(self) -> redis.Redis:
        """A second client with no read timeout, for blocking reads (XREAD BLOCK, BLMOVE);
        made on first use."""
        if self._blocking is None:
            self._blocking = connect(self.config.redis_url(), blocking=True)
        return self._blocking

    def new_blocking(self, decode: bool = True) -> redis.Redis:
        """A blocking client of its own (for a thread that blocks independently)."""
        return connect(self.config.redis_url(), blocking=True, decode=decode)

    def close(self) -> None:
        """Close this process's connections (the server keeps running)."""
        for client in (self._blocking, self._raw):
            if client is not None:
                client.close()
        self._blocking = self._raw = None
        self.redis.close()

    # ------------------------------------------------------------------ changes
    def run(self, change: Change, *, raw: bool = False) -> Any:
        """Apply one change (one round trip); a refusal raises its ``Refused`` type.
        ``raw=True``: the reply as stored bytes (see :attr:`raw`)."""
        return self.script(change, client=self.raw if raw else None)

    def run_many(self, changes: Sequence[Change]) -> list[Any]:
        """Apply many changes in one pipelined round trip; refusals are returned, not raised."""
        return self.script.run_many(self.redis, changes) if changes else []

    # ------------------------------------------------------------------ bulk reads
    def scan(self, kind: str) -> list[str]:
        """Every key of one kind (``agent``, ``task``, ``worker`` …) of this town."""
        return list(self.redis.scan_iter(match=self.keys.pattern(kind), count=SCAN_COUNT))

    def hgetall_many(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """HGETALL many hashes in one round trip; missing and wrong-typed keys are skipped."""
        if not keys:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [h for h in pipe.execute(raise_on_error=False) if isinstance(h, dict) and h]

    def hashes(self, kind: str = "task", ids: Iterable[str] | None = None,
               fields: Sequence[str] | None = None) -> list[dict[str, str]]:
        """Raw ``agent`` or ``task`` hashes — or a task's ``taskopts`` or ``usage`` (their
        ``id`` is the task's) — all, or those ids, in that order, in one pipelined read;
        ``fields`` reads only those (``id`` always included, absent ⇒ None).

        A read-only script reads 1000 keys per call, which costs the client about a third
        of the CPU of one HGETALL per key. Missing or wrong-typed keys are skipped.
        """
        names = ["id", *(f for f in fields if f != "id")] if fields is not None else []
        chunks = self._bulk_read(kind, ids, names)
        if names:
            return [dict(zip(names, values)) for chunk in chunks for values in chunk
                    if values and values[0]]
        pairs = (iter(flat) for chunk in chunks for flat in chunk if flat)
        return [dict(zip(it, it)) for it in pairs]  # [f1, v1, f2, v2, ...] → {f1: v1, ...}

    def hashes_by_id(self, kind: str, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Raw hashes of those ``agent`` or ``task`` ids, keyed by the id each was read
        under (whatever its ``id`` field says); missing and wrong-typed keys left out.

        >>> t = town.backlog_add("Triage open issues")
        >>> store.hashes_by_id("task", [t.id])[t.id]["state"]
        'pending'
        """
        flat = (f for chunk in self._bulk_read(kind, ids, []) for f in chunk)
        return {i: dict(zip(it, it)) for i, f in zip(ids, flat) if f for it in [iter(f)]}

    def columns(self, kind: str = "task", ids: Iterable[str] | None = None,
                fields: Sequence[str] = (), *, index: str | None = None) -> dict[str, list[Any]]:
        """Fields of many ``agent`` or ``task`` records as columns, ``{field: [value, …]}``:
        one entry per record found, None for an absent field, ``id`` always read.

        * ``index`` None: all records of ``kind`` or those ``ids`` (in that order), read
          like :meth:`hashes`;
        * ``index``: a state index (a sorted set of task ids or a set of agent ids): its records,
          assembled by the server (``SORT_RO … BY nosort GET``, :data:`SORT_CHUNK` per call:
          a tenth of the client CPU of one HMGET per record), in the index's order, then
          those of ``ids`` (default: the index's members, read first) it did not yield — one
          that moved while the chunks ran, or one the index does not hold.

        >>> town.cancel_task(town.backlog_add("Old idea")).state
        <TaskState.CANCELLED: 'cancelled'>
        >>> town.backlog_add("Triage open issues").state
        <TaskState.PENDING: 'pending'>
        >>> store.columns("task", fields=["state"], index=store.keys.tasks_index)
        {'id': ['...', '...'], 'state': ['cancelled', 'pending']}
        """
        names = ["id", *(f for f in fields if f != "id")]
        if index is not None:
            return self._index_columns(kind, index, names, ids)
        rows = [values for chunk in self._bulk_read(kind, ids, names) for values in chunk
                if values and values[0]]
        return _transpose(names, rows)

    def _index_columns(self, kind: str, index: str, names: list[str],
                       ids: Iterable[str] | None) -> dict[str, list[Any]]:
        """The records an index holds, as columns (see :meth:`columns`)."""
        if ids is None:  # (the task state indexes are sorted sets, the others sets)
            ids = self.redis.zrange(index, 0, -1) if kind == "task" else list(self.redis.smembers(index))
        ids = list(ids)
        prefix = getattr(self.keys, kind)("")
        gets = [part for name in names for part in ("GET", f"{prefix}*->{name}")]
        width = len(names) + 1  # the member itself ("GET #"), then the fields
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(ids) + SORT_CHUNK, SORT_CHUNK):  # one more: it may have grown
            pipe.execute_command("SORT_RO", index, "BY", "nosort", "LIMIT", start, SORT_CHUNK,
                                 "GET", "#", *gets)
        members: list[str] = []
        cols: list[list[Any]] = [[] for _ in names]
        for flat in pipe.execute():  # [member, f1, f2, …, member, f1, …]: sliced in C
            members += flat[0::width]
            for j, col in enumerate(cols, 1):
                col += flat[j::width]
        seen = set(members)
        missed = [i for i in ids if i not in seen]
        if len(seen) != len(members) or None in cols[0] or missed:
            # rare: a record moved while the chunks ran (offsets shift: read twice or not at
            # all), one the index does not hold, or one that is gone
            found = dict(zip(members, zip(*cols)))  # the last read wins
            if missed:
                read = (values for chunk in self._bulk_read(kind, missed, names) for values in chunk)
                found.update(zip(missed, read))
            return _transpose(names, [row for row in found.values() if row and row[0]])
        return dict(zip(names, cols))

    def _bulk_read(self, kind: str, ids: Iterable[str] | None, fields: list[str]) -> list[list[Any]]:
        """The bulk-read script's replies, :data:`BULK` keys per call, one round trip."""
        if kind not in HASH_KINDS:
            raise ConfigError(f"Unknown record kind {kind!r}; use 'agent' or 'task' (or a task's "
                              "'taskopts' or 'usage').")
        key = getattr(self.keys, kind)
        if ids is None:  # a task's taskopts/usage: only the tasks the id sets name
            keys = self.scan(kind) if kind in ("agent", "task") else [key(i) for i in self.with_records(kind)]
        else:
            keys = [key(i) for i in ids]
        if not keys:
            return []
        read = self.lua("hgetall_many", _HGETALL_MANY_LUA)
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(keys), BULK):
            read(keys=keys[i:i + BULK], args=fields, client=pipe)
        return pipe.execute()

    def with_records(self, kind: str) -> set[str]:
        """The ids of the tasks that have a ``taskopts`` or ``usage`` hash (one SMEMBERS).

        >>> t = town.backlog_add("Triage open issues")
        >>> town.record_usage(t, input_tokens=1200, cost_usd=0.01).cost_usd
        0.01
        >>> store.with_records("usage") == {t.id}
        True
        """
        index = {"taskopts": self.keys.tasks_with_opts, "usage": self.keys.tasks_with_usage}[kind]
        return set(self.redis.smembers(index))

    # ------------------------------------------------------------------ mail
    def mail_lists(self, aid: str) -> list[list[str]]:
        """``[[key, side], …]``: where the agent's next message is taken from, in order
        (:data:`MAIL_ORDER`), as the worker's take step wants it."""
        return [[getattr(self.keys, kind)(aid), side] for kind, side in MAIL_ORDER]

    def read_mail(self, agent_ids: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        """``(urgent, regular)`` raw waiting messages of each agent, each list in the order
        the agent will read it (:data:`MAIL_ORDER`); one pipelined round trip."""
        if not agent_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for aid in agent_ids:
            for kind, _ in MAIL_ORDER:
                pipe.lrange(getattr(self.keys, kind)(aid), 0, -1)
        raw = pipe.execute()
        out = []
        for i in range(len(agent_ids)):
            lists = []
            for j, (_, side) in enumerate(MAIL_ORDER):
                items = raw[len(MAIL_ORDER) * i + j]
                lists.append(items[::-1] if side == "RIGHT" else items)
            out.append((lists[0], lists[1]))
        return out

    def mail_counts(self, agent_ids: Sequence[str]) -> dict[str, int]:
        """Waiting messages per agent id (urgent + regular), one round trip."""
        if not agent_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for aid in agent_ids:
            for kind, _ in MAIL_ORDER:
                pipe.llen(getattr(self.keys, kind)(aid))
        counts = pipe.execute()
        n = len(MAIL_ORDER)
        return {aid: sum(counts[n * i:n * i + n]) for i, aid in enumerate(agent_ids)}

    # ------------------------------------------------------------------ events
    def read_events(self, stream: str, *, count: int = 20, after: str | None = None) -> list[Event]:
        """Oldest-first events of a stream, from the start or strictly after the id ``after``."""
        if after is not None and not (isinstance(after, str) and _STREAM_ID.fullmatch(after)):
            raise ConfigError(f"after must be an event id like '1719000000000-0' (Event.id), "
                              f"got {after!r}.")
        start = f"({after}" if after else "-"
        return [decode_entry(i, f) for i, f in self.redis.xrange(stream, start, "+", count=count)]

    def recent_events(self, stream: str, *, count: int = 30) -> list[Event]:
        """The last ``count`` events of a stream, oldest first (``tt history``)."""
        return [decode_entry(i, f) for i, f in reversed(self.redis.xrevrange(stream, "+", "-", count=count))]

    def last_event_id(self) -> str:
        """The id of the town's newest event (``0-0`` when there is none)."""
        latest = self.redis.xrevrange(self.keys.events, "+", "-", count=1)
        return latest[0][0] if latest else "0-0"


def _transpose(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Rows of values (in ``names`` order) → ``{name: column}``."""
    if not rows:
        return {name: [] for name in names}
    return {name: list(values) for name, values in zip(names, zip(*rows))}
