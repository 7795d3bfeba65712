"""tinytown's records as plain Python: agents, tasks, messages, events (spec §1-§4).

Pure data: no Redis, no IPython. Everything written here is byte-compatible with what
the Rust ``tt`` 0.10 writes, and everything it writes reads back here:

* agent/task **hashes** carry ``+00:00`` timestamps (:func:`hash_ts`), lowercase enums,
  counters as decimal strings, task ``tags`` as compact JSON;
* message/event **JSON** carries ``Z`` timestamps (:func:`json_ts`), compact serde key
  order, ``correlation_id`` null.

Example::

    >>> a = Agent.new("backend", "claude", nickname="Fred")
    >>> a.display_label
    'Fred [backend]'
    >>> Agent.from_hash(a.to_hash()) == a
    True
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError
from .usage import Usage

__all__ = [
    "AGENT_STATES", "TASK_STATES", "EVENT_TYPES", "OWN_EVENT_TYPES", "MESSAGE_TYPES",
    "CONFIRMATION_TYPES",
    "MESSAGE_CATEGORIES", "DEFAULT_ROLE", "OPEN_TASK_STATES", "TERMINAL_AGENT_STATES",
    "spellings", "task_problem",
    "AgentState", "TaskState", "Priority", "AgentType", "SpawnMode",
    "Agent", "Task", "Message",
    "TASK_HASH_FIELDS", "utcnow", "hash_ts", "json_ts", "parse_ts", "nickname_from_id", "canonical_uuid",
    "ack_type_from_text", "truncate_summary", "event_json",
]


def _s(v: Any) -> Any:
    """Decode bytes (a Redis client without ``decode_responses``) to str."""
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v


# --------------------------------------------------------------------------- enums


class AgentState(str, Enum):
    """Agent lifecycle state; wire value lowercase (spec §1.3, §7.5).

    Example: ``AgentState.parse("idle").debug_name == "Idle"``.
    """

    COLD = "cold"
    STARTING = "starting"
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPED = "stopped"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, s: Any) -> "AgentState":
        """Read a hash value: the wire string in any case (``Idle``, the spelling of event
        messages, is ``idle``), anything else ⇒ ``STARTING`` as Rust reads it.

        Example: ``AgentState.parse("bogus") is AgentState.STARTING``.
        """
        s = _s(s)
        if isinstance(s, cls):
            return s
        try:
            return cls(s.lower() if isinstance(s, str) else s)
        except ValueError:
            return cls.STARTING

    @property
    def is_terminal(self) -> bool:
        """stopped | error | cold. Example: ``AgentState.COLD.is_terminal`` is True."""
        return self in (AgentState.STOPPED, AgentState.ERROR, AgentState.COLD)

    @property
    def debug_name(self) -> str:
        """Rust Debug/Display name used in ``tt list`` and event states, e.g. ``"Idle"``."""
        return self.value.capitalize()


#: Lifecycle order for display/sorting: the states a worker passes through while its
#: process runs (starting → idle ⇄ working, paused, draining), then the terminal ones
#: (stopped, error, and cold — the scale-to-zero state 0.10 never writes).
AGENT_STATES: tuple[AgentState, ...] = (
    AgentState.STARTING, AgentState.IDLE, AgentState.WORKING, AgentState.PAUSED,
    AgentState.DRAINING, AgentState.STOPPED, AgentState.ERROR, AgentState.COLD,
)


class TaskState(str, Enum):
    """Task state; wire value lowercase, ``in_flight`` read as ``running`` (spec §1.3).

    Example: ``TaskState.parse("in_flight") is TaskState.RUNNING``.
    """

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, s: Any) -> "TaskState":
        """The wire string in any case, or the alias ``in_flight``; anything else ⇒
        ``PENDING`` as Rust reads it. The transition script reads states the same way."""
        s = _s(s)
        if isinstance(s, cls):
            return s
        if isinstance(s, str):
            s = s.lower()
        if s in TASK_STATE_ALIASES:
            return TASK_STATE_ALIASES[s]
        try:
            return cls(s)
        except ValueError:
            return cls.PENDING

    @classmethod
    def parse_strict(cls, s: Any) -> "TaskState":
        """A state typed by a user: exact name (any case) or ``in_flight``, else ConfigError.

        Example: ``TaskState.parse_strict("Completed") is TaskState.COMPLETED``.
        """
        if isinstance(s, cls):
            return s
        text = str(s).strip().lower()
        if text in TASK_STATE_ALIASES:
            return TASK_STATE_ALIASES[text]
        try:
            return cls(text)
        except ValueError:
            raise ConfigError(
                f"Unknown task state {s!r}; use one of {', '.join(t.value for t in cls)}."
            ) from None

    @property
    def is_terminal(self) -> bool:
        """completed | failed | cancelled. Example: ``TaskState.FAILED.is_terminal``."""
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)

    @property
    def debug_name(self) -> str:
        """Rust Debug name, e.g. ``"Running"``."""
        return self.value.capitalize()


#: Task lifecycle order (spec §7.6).
TASK_STATES: tuple[TaskState, ...] = tuple(TaskState)
#: Unfinished tasks: pending, assigned, running.
OPEN_TASK_STATES: tuple[TaskState, ...] = tuple(s for s in TaskState if not s.is_terminal)
#: Agents whose worker is gone for good: stopped, error, cold.
TERMINAL_AGENT_STATES: tuple[AgentState, ...] = tuple(s for s in AgentState if s.is_terminal)
#: Other spellings tinytown reads as a state (spec §1.3: ``in_flight`` is ``running``).
TASK_STATE_ALIASES: dict[str, TaskState] = {"in_flight": TaskState.RUNNING}


def task_problem(h: Mapping[str, Any]) -> str | None:
    """Why a task hash does not fit tinytown's schema well enough to be run (worded to
    follow "the task record …"), or None. A worker sets such a task aside (dead letter)
    instead of retrying it forever.

    >>> task_problem({"id": "3f2a0000-0000-4000-8000-000000000000", "state": "Bogus"})
    "has the unknown state 'Bogus'"
    >>> task_problem({"id": "3f2a0000-0000-4000-8000-000000000000", "state": "In_Flight"}) is None
    True
    """
    if canonical_uuid(h.get("id")) is None:
        return "has no valid id"
    raw = h.get("state")
    if raw is None:
        return "has no state"
    text = str(raw).lower()
    if text not in TASK_STATE_ALIASES and text not in {s.value for s in TaskState}:
        return f"has the unknown state {raw!r}"
    if h.get("assigned_to") is not None and canonical_uuid(h.get("assigned_to")) is None:
        return f"is assigned to {h.get('assigned_to')!r}, which is not an agent id"
    return None


def spellings(states: Iterable[Any]) -> list[str]:
    """Every wire spelling that reads as one of ``states``: their values plus the aliases
    of those states — what a script must accept as "in one of these states".

    >>> spellings([TaskState.ASSIGNED, TaskState.RUNNING])
    ['assigned', 'running', 'in_flight']
    """
    values = [getattr(s, "value", s) for s in states]
    return values + [alias for alias, s in TASK_STATE_ALIASES.items() if s.value in values]


class Priority(str, Enum):
    """Message priority; high/urgent go to the inbox front (spec §2.3).

    Example: ``Priority("urgent").value == "urgent"``.
    """

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"

    def __str__(self) -> str:
        return self.value



class AgentType(str, Enum):
    """``worker`` (default) or ``supervisor``. Example: ``AgentType.parse("x")`` ⇒ WORKER."""

    SUPERVISOR = "supervisor"
    WORKER = "worker"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, s: Any) -> "AgentType":
        """Exact wire string, else ``WORKER``."""
        try:
            return cls(_s(s))
        except ValueError:
            return cls.WORKER


class SpawnMode(str, Enum):
    """How a session was created; note ``forkedcontext`` has no separator.

    Example: ``SpawnMode.FORKED_CONTEXT.value == "forkedcontext"``.
    """

    FRESH = "fresh"
    FORKED_CONTEXT = "forkedcontext"
    RESUMED = "resumed"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, s: Any) -> "SpawnMode":
        """Exact wire string, else ``FRESH``."""
        try:
            return cls(_s(s))
        except ValueError:
            return cls.FRESH


# --------------------------------------------------------------------------- time

_TS_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def utcnow() -> datetime:
    """Timezone-aware current UTC time. Example: ``utcnow().tzinfo is timezone.utc``."""
    return datetime.now(timezone.utc)


def _rfc3339(dt: datetime, suffix: str) -> str:
    if dt.tzinfo is None:  # naive datetimes are taken to be UTC
        dt = dt.replace(tzinfo=timezone.utc)
    dt = dt.astimezone(timezone.utc)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    us = dt.microsecond
    # chrono's AutoSi: no fraction, 3 digits or 6 digits (9 never needed for µs).
    frac = "" if us == 0 else (f".{us // 1000:03d}" if us % 1000 == 0 else f".{us:06d}")
    return f"{base}{frac}{suffix}"


def hash_ts(dt: datetime) -> str:
    """Hash-field timestamp like chrono ``to_rfc3339()``.

    Example: ``hash_ts(datetime(2026, 4, 18, 12, 0, 0, 123456, timezone.utc))``
    ⇒ ``'2026-04-18T12:00:00.123456+00:00'``.
    """
    return _rfc3339(dt, "+00:00")


def json_ts(dt: datetime) -> str:
    """JSON timestamp like chrono's serde form (``Z``).

    Example: ``json_ts(datetime(2026, 4, 18, tzinfo=timezone.utc))`` ⇒ ``'2026-04-18T00:00:00Z'``.
    """
    return _rfc3339(dt, "Z")


# The forms this package and ``tt`` write (hash_ts/json_ts: 0, 3 or 6 fraction digits, UTC):
# read by datetime.fromisoformat, ~20x faster than the general rule below, same result.
_CANONICAL_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                           r"(?:\.[0-9]{3}|\.[0-9]{6})?(?:\+00:00|Z)\Z")
_fromisoformat = datetime.fromisoformat


def parse_ts(s: Any) -> datetime | None:
    """Parse any RFC 3339 timestamp to aware UTC; fraction truncated to µs; bad ⇒ None.

    Example: ``parse_ts("2026-04-18T12:34:56.123456789Z").microsecond == 123456``.
    """
    if type(s) is str and _CANONICAL_TS.match(s):
        try:  # Python 3.10's fromisoformat reads +00:00 but not Z
            return _fromisoformat(s if s[-1] != "Z" else s[:-1] + "+00:00")
        except ValueError:
            pass  # a leap second, February 30th...: the general rule decides
    s = _s(s)
    if not isinstance(s, str):
        return None
    m = _TS_RE.fullmatch(s.strip())
    if not m:
        return None
    y, mo, d, h, mi, sec, frac, z, sign, oh, om = m.groups()
    us = int((frac or "0")[:6].ljust(6, "0"))
    second = int(sec)
    if second == 60:  # leap second: chrono folds it into :59
        second, us = 59, 999999
    try:
        if z:
            tz = timezone.utc
        else:
            off = timedelta(hours=int(oh), minutes=int(om))
            if off >= timedelta(hours=24):
                return None
            tz = timezone(-off if sign == "-" else off)
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), second, us, tzinfo=tz)
        return dt.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------- ids


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def canonical_uuid(s: Any) -> str | None:
    """Lowercase hyphenated form of anything ``Uuid::parse_str`` accepts, else None.

    Example: ``canonical_uuid("{3F2A0000-0000-0000-0000-000000000000}")``
    ⇒ ``'3f2a0000-0000-0000-0000-000000000000'``.
    """
    s = _s(s)
    if isinstance(s, str) and len(s) == 36 and _CANONICAL_UUID.match(s):
        return s  # already canonical, the common case: no parsing
    if isinstance(s, uuid.UUID):
        return str(s)
    if not isinstance(s, str):
        return None
    t = s
    if t[:9].lower() == "urn:uuid:":
        t = t[9:]
    if len(t) == 38 and t[0] == "{" and t[-1] == "}":
        t = t[1:-1]
    if not (len(t) == 32 and "-" not in t) and not (
        len(t) == 36 and all(t[i] == "-" for i in (8, 13, 18, 23)) and t.count("-") == 4
    ):
        return None
    if not all(c in "0123456789abcdefABCDEF-" for c in t):
        return None
    try:
        return str(uuid.UUID(t))
    except ValueError:
        return None


def _req_uuid(s: Any, what: str) -> str:
    u = canonical_uuid(s)
    if u is None:
        raise ValueError(f"{what} must be a UUID, got {s!r}")
    return u


def _parse_u64(s: Any) -> int:
    s = _s(s)
    if isinstance(s, str) and re.fullmatch(r"\+?[0-9]+", s):
        n = int(s)
        if n < 2**64:
            return n
    return 0


# --------------------------------------------------------------------------- nicknames

# Verbatim from redis-field-engineering/tinytown src/agent.rs (NICKNAMES_1920S_*).
_BOYS = (
    "Robert John James William Charles George Joseph Richard Edward Donald "
    "Thomas Frank Harold Paul Raymond Walter Jack Henry Kenneth Arthur "
    "Albert David Harry Eugene Ralph Howard Carl Willie Louis Clarence "
    "Earl Roy Fred Joe Francis Lawrence Herbert Leonard Ernest Alfred "
    "Anthony Stanley Norman Gerald Daniel Samuel Bernard Billy Melvin Marvin "
    "Warren Michael Leroy Russell Leo Andrew Edwin Elmer Peter Floyd "
    "Lloyd Ray Frederick Theodore Clifford Vernon Herman Clyde Chester Philip "
    "Alvin Lester Wayne Vincent Gordon Leon Lewis Charlie Glenn Calvin "
    "Martin Milton Lee Jesse Dale Cecil Bill Harvey Roger Victor "
    "Benjamin Ronald Wallace Sam Allen Arnold Willard Gilbert Edgar Oscar "
    "Gene Jerry Douglas Johnnie Claude Don Eddie Roland Everett Maurice "
    "Curtis Marion Virgil Wilbur Manuel Stephen Jerome Homer Leslie Glen "
    "Jessie Hubert Jose Jimmie Sidney Morris Hugh Max Bobby Bob "
    "Nicholas Luther Bruce Junior Wesley Alexander Rudolph Franklin Tom Irving "
    "Horace Willis Patrick Steve Johnny Dean Julius Keith Oliver Earnest "
    "Ben Jim Tony Edmund Lyle Guy Salvatore Orville Delbert Billie "
    "Phillip Clayton Otis Archie Alex Angelo Mike Jacob Clifton Bennie "
    "Matthew Duane Clinton Dennis Wilbert Dan Jay Marshall Leland Merle "
    "Ira Nathaniel Ivan Ervin Jimmy Irvin Alton Lowell Larry Dewey "
    "Emil Antonio Wilfred Elbert Juan Alan Allan Lonnie Nelson Forrest"
)
_GIRLS = (
    "Mary Dorothy Helen Betty Margaret Ruth Virginia Doris Mildred Frances "
    "Elizabeth Evelyn Anna Alice Marie Jean Shirley Barbara Irene Marjorie "
    "Lois Florence Martha Rose Lillian Louise Catherine Ruby Patricia Eleanor "
    "Gladys Annie Josephine Thelma Edna Norma Pauline Lucille Gloria Edith "
    "Ethel Phyllis Grace Hazel June Bernice Marion Dolores Rita Lorraine "
    "Ann Esther Beatrice Juanita Geraldine Clara Jane Sarah Emma Joan "
    "Joyce Nancy Katherine Gertrude Elsie Julia Wilma Agnes Marian Bertha "
    "Eva Willie Audrey Theresa Vivian Wanda Laura Charlotte Ida Elaine "
    "Marilyn Anne Maxine Kathryn Kathleen Viola Pearl Vera Bessie Beverly "
    "Myrtle Alma Violet Nellie Ella Lillie Jessie Jeanne Eileen Ellen "
    "Lucy Minnie Sylvia Donna Rosemary Leona Stella Margie Mattie Genevieve "
    "Mabel Janet Bonnie Geneva Carol Georgia Carolyn Velma Lena Mae "
    "Maria Jennie Christine Peggy Arlene Marguerite Opal Sara Loretta Harriet "
    "Rosa Muriel Eunice Jeanette Blanche Carrie Emily Billie Beulah Dora "
    "Roberta Naomi Hilda Jacqueline Anita Alberta Inez Delores Fannie Hattie "
    "Lula Verna Cora Constance Madeline Miriam Ada Claire Mamie Lola "
    "Rosie Erma Rachel Mable Flora Daisy Sally Marcella Bette Olga "
    "Caroline Laverne Sophie Nora Rebecca Estelle Irma Susie Eula Winifred "
    "Eloise Janice Maggie Antoinette Imogene Nina Rosalie Lorene Olive Sadie "
    "Regina Victoria Henrietta Della Bettie Lila Faye Fern Johnnie Jeannette"
)
NICKNAMES_1920S_BOYS: tuple[str, ...] = tuple(_BOYS.split())
NICKNAMES_1920S_GIRLS: tuple[str, ...] = tuple(_GIRLS.split())
assert len(NICKNAMES_1920S_BOYS) == len(NICKNAMES_1920S_GIRLS) == 200


def nickname_from_id(agent_id: str | uuid.UUID) -> str:
    """Deterministic 1920s nickname: ``(b[0]*256 + b[1]) % 400`` into boys+girls (§4.2).

    Example: ``nickname_from_id("00200000-0000-4000-8000-000000000000") == "Fred"``.
    """
    u = agent_id if isinstance(agent_id, uuid.UUID) else uuid.UUID(_req_uuid(agent_id, "agent id"))
    b = u.bytes
    i = (b[0] * 256 + b[1]) % 400
    return NICKNAMES_1920S_BOYS[i] if i < 200 else NICKNAMES_1920S_GIRLS[i - 200]


# --------------------------------------------------------------------------- agent

DEFAULT_ROLE = "default"

_AGENT_OPTIONAL = ("current_task", "nickname", "role_id", "parent_agent_id")


@dataclass(repr=False)
class Agent:
    """One agent record, stored as hash ``tt:{town}:agent:{id}`` (spec §2.1).

    Example::

        >>> a = Agent.new("backend", "claude")
        >>> a.state, a.to_hash()["spawn_mode"]
        (<AgentState.STARTING: 'starting'>, 'fresh')
    """

    id: str
    name: str
    agent_type: AgentType = AgentType.WORKER
    state: AgentState = AgentState.STARTING
    cli: str = ""
    created_at: datetime = field(default_factory=utcnow)
    last_heartbeat: datetime = field(default_factory=utcnow)
    tasks_completed: int = 0
    rounds_completed: int = 0
    last_active_at: datetime = None  # type: ignore[assignment]  # None ⇒ created_at
    spawn_mode: SpawnMode = SpawnMode.FRESH
    current_task: str | None = None
    nickname: str | None = None
    role_id: str | None = None
    parent_agent_id: str | None = None

    def __post_init__(self) -> None:
        if self.last_active_at is None:
            self.last_active_at = self.created_at

    @classmethod
    def new(
        cls, name: str, cli: str, *, nickname: str | None = None, role_id: str | None = None,
        parent_agent_id: str | None = None, id: str | None = None,
        agent_type: AgentType = AgentType.WORKER, spawn_mode: SpawnMode = SpawnMode.FRESH,
    ) -> "Agent":
        """A fresh record as ``Town::spawn_agent`` makes it (§4.1): uuid4, ``starting``.

        Example: ``Agent.new("w1", "claude").nickname`` is a 1920s name.
        """
        aid = _req_uuid(id, "agent id") if id is not None else str(uuid.uuid4())
        now = utcnow()
        return cls(
            id=aid, name=name, agent_type=agent_type, state=AgentState.STARTING, cli=cli,
            created_at=now, last_heartbeat=now, last_active_at=now, spawn_mode=spawn_mode,
            nickname=nickname if nickname is not None else nickname_from_id(aid),
            role_id=role_id,
            parent_agent_id=(
                _req_uuid(parent_agent_id, "parent_agent_id") if parent_agent_id else None),
        )

    @classmethod
    def from_hash(cls, h: Mapping[Any, Any]) -> "Agent | None":
        """Read an HGETALL result with Rust's fallbacks; None if ``id`` missing/invalid.

        Example: ``Agent.from_hash({"id": aid})`` gives a ``starting`` worker, counters 0.
        """
        h = {_s(k): _s(v) for k, v in (h or {}).items()}
        aid = canonical_uuid(h.get("id"))
        if aid is None:
            return None
        now = utcnow()
        created = parse_ts(h.get("created_at")) or now
        return cls(
            id=aid,
            name=h.get("name", ""),
            agent_type=AgentType.parse(h.get("agent_type")),
            state=AgentState.parse(h.get("state")),
            cli=h.get("cli", ""),
            created_at=created,
            last_heartbeat=parse_ts(h.get("last_heartbeat")) or now,
            tasks_completed=_parse_u64(h.get("tasks_completed")),
            rounds_completed=_parse_u64(h.get("rounds_completed")),
            last_active_at=parse_ts(h.get("last_active_at")) or created,
            spawn_mode=SpawnMode.parse(h.get("spawn_mode")),
            current_task=canonical_uuid(h.get("current_task")),
            nickname=h.get("nickname"),
            role_id=h.get("role_id"),
            parent_agent_id=canonical_uuid(h.get("parent_agent_id")),
        )

    def to_hash(self) -> dict[str, str]:
        """Fields for ``HSET``, in Rust's order: the 11 always-written + set optionals.

        Pair with :meth:`absent_optionals` for the ``HDEL``. Example:
        ``Agent.new("w", "claude").to_hash()["tasks_completed"] == "0"``.
        """
        h = {
            "id": self.id,
            "name": self.name,
            "agent_type": AgentType(self.agent_type).value,
            "state": AgentState(self.state).value,
            "cli": self.cli,
            "created_at": hash_ts(self.created_at),
            "last_heartbeat": hash_ts(self.last_heartbeat),
            "tasks_completed": str(int(self.tasks_completed)),
            "rounds_completed": str(int(self.rounds_completed)),
            "last_active_at": hash_ts(self.last_active_at),
            "spawn_mode": SpawnMode(self.spawn_mode).value,
        }
        for k in _AGENT_OPTIONAL:
            v = getattr(self, k)
            if v is not None:
                h[k] = str(v)
        return h

    def absent_optionals(self) -> list[str]:
        """Optional fields that are None (to ``HDEL``). Example: ``['current_task', ...]``."""
        return [k for k in _AGENT_OPTIONAL if getattr(self, k) is None]

    @property
    def short_id(self) -> str:
        """First 4 characters of the id, e.g. ``'3f2a'``."""
        return self.id[:4]

    def __repr__(self) -> str:
        """``<Agent backend (3f2a) idle>``: name, short id, state (every field: ``vars(agent)``)."""
        return f"<Agent {self.name} ({self.short_id}) {self.state.value}>"

    @property
    def display_name(self) -> str:
        """Nickname if set, else the canonical name."""
        return self.nickname if self.nickname is not None else self.name

    @property
    def effective_role(self) -> str:
        """``role_id`` or ``'default'``."""
        return self.role_id if self.role_id is not None else DEFAULT_ROLE

    @property
    def display_label(self) -> str:
        """``"{display_name} [{role}]"``; bracket holds the *name* when role is default.

        Example: name ``backend``, nickname ``Fred``, no role ⇒ ``'Fred [backend]'``.
        """
        role = self.effective_role
        return f"{self.display_name} [{self.name if role == DEFAULT_ROLE else role}]"


# --------------------------------------------------------------------------- task

_TASK_OPTIONAL = ("assigned_to", "started_at", "completed_at", "result", "parent_id")
#: Every field of a task hash, in Rust's order (what :meth:`Task.from_hash` reads).
TASK_HASH_FIELDS: tuple[str, ...] = ("id", "description", "state", "created_at", "updated_at",
                                     "tags", *_TASK_OPTIONAL)


def _compact_json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


_TASK_STATE_OF = {s.value: s for s in TaskState}  # the usual spellings, without parsing
_TAGS_SEEN: dict[str, tuple[str, ...]] = {}  # tags fields already read (most tasks share a few)


def _tags(raw: Any) -> list[str]:
    """A task's ``tags`` field: a JSON list of strings; anything else ⇒ ``[]``. A new list
    each call (records are mutable); each distinct field is decoded once.

    >>> _tags('["a","b"]'), _tags("a,b"), _tags(None)
    (['a', 'b'], [], [])
    """
    if raw is None:
        return []
    seen = _TAGS_SEEN.get(raw) if isinstance(raw, str) else None
    if seen is not None:
        return list(seen)
    try:
        tags = json.loads(raw)
    except (ValueError, TypeError):
        tags = []
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        tags = []
    if isinstance(raw, str) and len(raw) <= 200 and len(_TAGS_SEEN) < 1000:
        _TAGS_SEEN[raw] = tuple(tags)
    return tags


@dataclass(repr=False)
class Task:
    """One task record, stored as hash ``tt:{town}:task:{id}`` (spec §2.2).

    Example::

        >>> t = Task.new("Add login API", tags=["backend", "api"])
        >>> t.to_hash()["tags"]
        '["backend","api"]'
    """

    id: str
    description: str
    state: TaskState = TaskState.PENDING
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    tags: list[str] = field(default_factory=list)
    assigned_to: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: str | None = None
    parent_id: str | None = None
    #: Not tinytown fields (never in the task hash): read beside it by the core's readers.
    #: ``attempts``: the attempt running or last run (1 for the first; 0 before any run);
    #: ``usage``: what its runs reported (tokens, cost), None when nothing was reported.
    attempts: int = 0
    usage: Usage | None = None

    @classmethod
    def new(
        cls, description: str, *, tags: Iterable[str] = (), parent_id: str | None = None,
        id: str | None = None,
    ) -> "Task":
        """A ``pending`` task with a uuid4 id. Example: ``Task.new("Write docs").state``."""
        now = utcnow()
        return cls(
            id=_req_uuid(id, "task id") if id is not None else str(uuid.uuid4()),
            description=description, state=TaskState.PENDING, created_at=now, updated_at=now,
            tags=[str(t) for t in tags],
            parent_id=_req_uuid(parent_id, "parent_id") if parent_id else None,
        )

    @classmethod
    def from_hash(cls, h: Mapping[Any, Any]) -> "Task | None":
        """Read an HGETALL result; None if ``id`` missing/invalid; bad ``tags`` ⇒ ``[]``.

        Example: ``Task.from_hash({"id": tid, "state": "in_flight"}).state`` ⇒ RUNNING.
        """
        h = h or {}
        kinds = {*map(type, h), *map(type, h.values())}
        if bytes in kinds or bytearray in kinds:  # from a client that does not decode
            h = {_s(k): _s(v) for k, v in h.items()}
        tid = canonical_uuid(h.get("id"))
        if tid is None:
            return None
        created, updated = parse_ts(h.get("created_at")), parse_ts(h.get("updated_at"))
        if created is None or updated is None:
            now = utcnow()
            created, updated = created or now, updated or now
        state = _TASK_STATE_OF.get(h.get("state"))  # type: ignore[arg-type]
        return cls(
            id=tid,
            description=h.get("description") or "",  # (None: a field read but absent)
            state=state if state is not None else TaskState.parse(h.get("state")),
            created_at=created,
            updated_at=updated,
            tags=_tags(h.get("tags")),
            assigned_to=canonical_uuid(h.get("assigned_to")),
            started_at=parse_ts(h.get("started_at")),
            completed_at=parse_ts(h.get("completed_at")),
            result=h.get("result"),
            parent_id=canonical_uuid(h.get("parent_id")),
        )

    @classmethod
    def from_columns(cls, cols: Mapping[str, Sequence[Any]]) -> "list[Task]":
        """Many records from their fields as columns (``{field: [value, …]}``, an absent
        field None, as ``Store.columns`` reads them), by the rules of :meth:`from_hash`,
        each run once per distinct value where values repeat (states, tags, assignees);
        records without a valid ``id`` are left out.

        Example: ``Task.from_columns({"id": [tid], "state": ["in_flight"]})[0].state`` ⇒ RUNNING.
        """
        n = len(cols.get("id", ()))

        def col(field: str) -> Sequence[Any]:
            values = cols.get(field)
            if values is None:
                return [None] * n
            kinds = set(map(type, values))
            if bytes in kinds or bytearray in kinds:  # a client that does not decode
                return [_s(v) for v in values]
            return values

        def each_distinct(values: Sequence[Any], fn: Any) -> list[Any]:
            table = {v: fn(v) for v in set(values)}
            return [table[v] for v in values]

        now = utcnow()
        times = {f: [parse_ts(v) for v in col(f)] for f in ("created_at", "updated_at", "started_at", "completed_at")}
        rows = zip([canonical_uuid(v) for v in col("id")], col("description"),
                   each_distinct(col("state"), TaskState.parse), times["created_at"], times["updated_at"],
                   each_distinct(col("tags"), lambda v: tuple(_tags(v))),
                   each_distinct(col("assigned_to"), canonical_uuid), times["started_at"],
                   times["completed_at"], col("result"), each_distinct(col("parent_id"), canonical_uuid))
        # (positional: the fields in their declared order, a third faster than keywords)
        return [cls(tid, text or "", state, created or now, updated or now, list(tags), owner, started,
                    completed, result, parent)
                for tid, text, state, created, updated, tags, owner, started, completed, result, parent in rows
                if tid is not None]

    def to_hash(self) -> dict[str, str]:
        """Fields for ``HSET`` in Rust's order (6 always-written + set optionals).

        Example: ``Task.new("x").to_hash()["tags"] == "[]"``.
        """
        h = {
            "id": self.id,
            "description": self.description,
            "state": TaskState(self.state).value,
            "created_at": hash_ts(self.created_at),
            "updated_at": hash_ts(self.updated_at),
            "tags": _compact_json(list(self.tags)),
        }
        for k in _TASK_OPTIONAL:
            v = getattr(self, k)
            if v is not None:
                h[k] = hash_ts(v) if isinstance(v, datetime) else str(v)
        return h

    def absent_optionals(self) -> list[str]:
        """Optional fields that are None (to ``HDEL``)."""
        return [k for k in _TASK_OPTIONAL if getattr(self, k) is None]

    @property
    def short_id(self) -> str:
        """First 4 characters of the id."""
        return self.id[:4]

    def summary(self, max_len: int = 80) -> str:
        """Description's first line, cut like the Rust prompt (§7.3).

        Example: ``Task.new("Fix login\\nsee #4").summary() == "Fix login"``.
        """
        return truncate_summary(self.description, max_len)

    def __repr__(self) -> str:
        """``<Task 3f2a failed: Fix login — timed out after 60 s>``: short id, state, first
        line, and why a failed task failed (every field: ``vars(task)``)."""
        why = ""
        if self.state.value == "failed" and self.result:  # what went wrong, not only that it did
            why = " — " + (self.result.strip().splitlines() or [""])[0][:100]
        return f"<Task {self.short_id} {self.state.value}: {self.summary(60)}{why}>"

    @property
    def inputs(self) -> dict[str, str]:
        """The results of the tasks this one waited for (``after=``), ``{dependency id:
        result}`` in the order given — filled in by the worker of a function agent; empty
        otherwise. Not a field of the stored record.

        >>> Task.new("Merge").with_inputs({"3f2a": "parsed"}).inputs
        {'3f2a': 'parsed'}
        """
        return dict(self.__dict__.get("_inputs") or {})

    def with_inputs(self, inputs: Mapping[str, str]) -> "Task":
        """This task with its :attr:`inputs` set (returned for chaining)."""
        self.__dict__["_inputs"] = dict(inputs)
        return self

    @property
    def duration(self) -> timedelta | None:
        """``completed_at - started_at`` when both are set, else None."""
        if self.started_at is None or self.completed_at is None:
            return None
        return self.completed_at - self.started_at


# --------------------------------------------------------------------------- messages

#: Variant fields of each ``MessageType``, in Rust field order (spec §3.1).
MESSAGE_TYPES: dict[str, tuple[str, ...]] = {
    "task": ("description",),
    "query": ("question",),
    "informational": ("summary",),
    "confirmation": ("ack_type",),
    "task_assign": ("task_id",),
    "task_done": ("task_id", "result"),
    "task_failed": ("task_id", "error"),
    "status_request": (),
    "status_response": ("state", "current_task"),
    "ping": (),
    "pong": (),
    "shutdown": (),
    "custom": ("kind", "payload"),
}
_NULLABLE = {("status_response", "current_task")}
CONFIRMATION_TYPES: tuple[str, ...] = ("received", "acknowledged", "thanks", "approved", "rejected")
MESSAGE_CATEGORIES: tuple[str, ...] = ("task", "query", "informational", "confirmation", "other")
_CATEGORY = {
    "task": "task", "task_assign": "task",
    "query": "query", "status_request": "query",
    "informational": "informational", "task_done": "informational",
    "task_failed": "informational", "status_response": "informational",
    "ping": "informational", "pong": "informational",
    "confirmation": "confirmation", "shutdown": "other",
}


def ack_type_from_text(text: str) -> dict[str, str]:
    """Map ``tt send --ack`` text to a ConfirmationType object (spec §3.1).

    Example: ``ack_type_from_text("Rejected: no tests")`` ⇒
    ``{'type': 'rejected', 'reason': 'no tests'}``; ``"ok"`` ⇒ ``{'type': 'acknowledged'}``.
    """
    trimmed = text.strip()
    lower = trimmed.lower()
    if lower.startswith("rejected:"):
        reason = trimmed.split(":", 1)[1].strip() or "No reason provided"
        return {"type": "rejected", "reason": reason}
    if lower.startswith("received"):
        return {"type": "received"}
    if lower.startswith("approved"):
        return {"type": "approved"}
    if "thanks" in lower or "thank you" in lower:
        return {"type": "thanks"}
    return {"type": "acknowledged"}


def truncate_summary(text: str, max_chars: int) -> str:
    """First line, trimmed, cut to ``max_chars-3`` characters + ``...`` (spec §7.3).

    Example: ``truncate_summary("abcdefgh\\nrest", 6)`` ⇒ ``'abc...'``.
    """
    first = text.split("\n", 1)[0]
    if first.endswith("\r"):
        first = first[:-1]
    first = first.strip()
    if len(first) <= max_chars:
        return first
    return first[: max(max_chars - 3, 0)] + "..."


def _check_ack(ack: Any) -> dict[str, str]:
    if not isinstance(ack, dict) or ack.get("type") not in CONFIRMATION_TYPES:
        raise ValueError(f"ack_type must be an object with type in {CONFIRMATION_TYPES}, "
                         f"got {ack!r}")
    if ack["type"] == "rejected":
        if not isinstance(ack.get("reason"), str):
            raise ValueError("rejected ack_type needs a string 'reason'")
        return {"type": "rejected", "reason": ack["reason"]}
    return {"type": ack["type"]}


def _check_body(mtype: str, body: Mapping[str, Any]) -> dict[str, Any]:
    if mtype not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {mtype!r}; expected one of {list(MESSAGE_TYPES)}")
    out: dict[str, Any] = {}
    for f in MESSAGE_TYPES[mtype]:
        v = body.get(f)
        if f == "ack_type":
            out[f] = _check_ack(v)
        elif (mtype, f) in _NULLABLE and v is None:
            out[f] = None
        elif isinstance(v, str):
            out[f] = v
        else:
            if f not in body:
                raise ValueError(f"message type {mtype!r} needs field {f!r}")
            raise ValueError(f"field {f!r} of {mtype!r} must be a string, got {v!r}")
    return out


@dataclass(repr=False)
class Message:
    """An inbox message; JSON shape of ``src/message.rs`` (spec §3.1).

    ``type`` is the snake_case variant, ``body`` its fields (``ack_type`` stays a nested
    object). Example::

        >>> from tinytown_nb.core import SUPERVISOR_ID
        >>> tid, aid = str(uuid.uuid4()), str(uuid.uuid4())   # a task's and an agent's id
        >>> m = Message.task_assign(tid, sender=SUPERVISOR_ID, to=aid)
        >>> Message.from_json(m.to_json()) == m
        True
    """

    id: str
    sender: str
    to: str
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    created_at: datetime = field(default_factory=utcnow)
    correlation_id: str | None = None

    # ---- construction
    @classmethod
    def new(
        cls, type: str, body: Mapping[str, Any] | None = None, *, sender: str, to: str,
        priority: Priority | str = Priority.NORMAL, correlation_id: str | None = None,
        id: str | None = None, created_at: datetime | None = None,
    ) -> "Message":
        """Validated message with a fresh uuid4 id and ``created_at=now``.

        Example: ``Message.new("ping", sender=a, to=b).to_json()``.
        """
        return cls(
            id=_req_uuid(id, "id") if id is not None else str(uuid.uuid4()),
            sender=_req_uuid(sender, "sender"), to=_req_uuid(to, "to"), type=type,
            body=_check_body(type, body or {}), priority=Priority(priority),
            created_at=created_at or utcnow(),
            correlation_id=_req_uuid(correlation_id, "correlation_id") if correlation_id else None,
        )

    @classmethod
    def task_text(cls, description: str, **kw: Any) -> "Message":
        """``tt send X "…"`` (type ``task``). Example: ``Message.task_text("Fix CI", sender=a, to=b)``."""
        return cls.new("task", {"description": description}, **kw)

    @classmethod
    def query(cls, question: str, **kw: Any) -> "Message":
        """``tt send --query``. Example: ``Message.query("ETA?", sender=a, to=b)``."""
        return cls.new("query", {"question": question}, **kw)

    @classmethod
    def informational(cls, summary: str, **kw: Any) -> "Message":
        """``tt send --info``. Example: ``Message.informational("build green", sender=a, to=b)``."""
        return cls.new("informational", {"summary": summary}, **kw)

    @classmethod
    def confirmation(cls, ack_text: str, **kw: Any) -> "Message":
        """``tt send --ack`` with text mapped by :func:`ack_type_from_text`.

        Example: ``Message.confirmation("thanks!", sender=a, to=b).text == "thanks"``.
        """
        return cls.new("confirmation", {"ack_type": ack_type_from_text(ack_text)}, **kw)

    @classmethod
    def task_assign(cls, task_id: str, **kw: Any) -> "Message":
        """Assignment, sent after the task hash is written.

        Example: ``Message.task_assign(tid, sender=SUPERVISOR_ID, to=aid)``.
        """
        return cls.new("task_assign", {"task_id": str(task_id)}, **kw)

    @classmethod
    def task_done(cls, task_id: str, result: str, **kw: Any) -> "Message":
        """Completion notice (library only in Rust)."""
        return cls.new("task_done", {"task_id": str(task_id), "result": result}, **kw)

    @classmethod
    def task_failed(cls, task_id: str, error: str, **kw: Any) -> "Message":
        """Failure notice (library only in Rust)."""
        return cls.new("task_failed", {"task_id": str(task_id), "error": error}, **kw)

    @classmethod
    def custom(cls, kind: str, payload: str, **kw: Any) -> "Message":
        """Custom message, categorized by keywords. Example: ``Message.custom("fyi", "{}", ...)``."""
        return cls.new("custom", {"kind": kind, "payload": payload}, **kw)

    # ---- wire
    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped dict in serde key order (``from`` not ``sender``)."""
        d: dict[str, Any] = {"id": self.id, "from": self.sender, "to": self.to, "type": self.type}
        for f in MESSAGE_TYPES[self.type]:
            d[f] = self.body.get(f)
        d["priority"] = Priority(self.priority).value
        d["created_at"] = json_ts(self.created_at)
        d["correlation_id"] = self.correlation_id
        return d

    def to_json(self) -> str:
        """Compact JSON exactly as ``serde_json::to_string(&Message)``.

        Example: ``'{"id":"…","from":"…","to":"…","type":"task_assign","task_id":"…",``
        ``"priority":"normal","created_at":"…Z","correlation_id":null}'``.
        """
        return _compact_json(self.to_dict())

    @classmethod
    def from_json(cls, s: str | bytes) -> "Message":
        """Parse like serde: ``ValueError`` on missing/ill-typed required fields, unknown
        ``type`` or ``priority``, bad UUIDs or timestamps; extra keys ignored.

        Example: ``Message.from_json(raw).type == "task_assign"``.
        """
        try:
            d = json.loads(_s(s))
        except (TypeError, ValueError) as e:
            raise ValueError(f"message is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("message JSON must be an object")
        for k in ("id", "from", "to", "type", "priority", "created_at"):
            if k not in d:
                raise ValueError(f"message is missing field {k!r}")
        mtype = d["type"]
        if not isinstance(mtype, str) or mtype not in MESSAGE_TYPES:
            raise ValueError(f"unknown message type {mtype!r}")
        body = _check_body(mtype, d)
        try:
            prio = Priority(d["priority"])
        except ValueError:
            raise ValueError(f"unknown priority {d['priority']!r}") from None
        created = parse_ts(d["created_at"]) if isinstance(d["created_at"], str) else None
        if created is None:
            raise ValueError(f"bad created_at {d['created_at']!r}")
        corr = d.get("correlation_id")
        return cls(
            id=_req_uuid(d["id"], "id"), sender=_req_uuid(d["from"], "from"),
            to=_req_uuid(d["to"], "to"), type=mtype, body=body, priority=prio,
            created_at=created,
            correlation_id=None if corr is None else _req_uuid(corr, "correlation_id"),
        )

    # ---- meaning
    @property
    def category(self) -> str:
        """Worker category (spec §3.1): task, query, informational, confirmation or other.

        Example: ``Message.custom("fyi", "x", ...).category == "informational"``.
        """
        if self.type != "custom":
            return _CATEGORY[self.type]
        token = f"{self.body['kind'].lower()} {self.body['payload'].lower()}"
        if any(w in token for w in ("ack", "thanks", "thank you", "received", "approved")):
            return "confirmation"
        if any(w in token for w in ("info", "fyi", "status", "update")):
            return "informational"
        if "query" in token or "question" in token:
            return "query"
        return "task"

    @property
    def actionable(self) -> bool:
        """True for task, query and other (shutdown) — what the worker puts in a round."""
        return self.category in ("task", "query", "other")

    @property
    def text(self) -> str:
        """The human text: description, question, summary, ack kind (``rejected: why``),
        task id, result/error, custom payload; fixed words for field-less types."""
        b, t = self.body, self.type
        if t == "confirmation":
            ack = b["ack_type"]
            return f"rejected: {ack['reason']}" if ack["type"] == "rejected" else ack["type"]
        key = {"task": "description", "query": "question", "informational": "summary",
               "task_assign": "task_id", "task_done": "result", "task_failed": "error",
               "status_response": "state", "custom": "payload"}.get(t)
        if key:
            return b[key]
        return {"status_request": "status requested", "shutdown": "shutdown requested"}.get(t, t)

    def _rust_summary(self) -> str:
        # src/main.rs summarize_message
        b, t = self.body, self.type
        if t == "task_assign":
            return f"task assignment {b['task_id']}"
        if t == "query":
            return f"question: {b['question']}"
        if t == "task_done":
            return f"task {b['task_id']} done: {b['result']}"
        if t == "task_failed":
            return f"task {b['task_id']} failed: {b['error']}"
        if t == "status_response":
            ct = b.get("current_task")
            return f"status {b['state']} ({ct})" if ct is not None else f"status {b['state']}"
        if t == "custom":
            return f"[{b['kind']}] {b['payload']}"
        return self.text

    def summary(self, max_len: int = 120) -> str:
        """One-line summary as the Rust worker prompt shows it (``summarize_message`` +
        §7.3 cut). Example: ``Message.query("Why?", ...).summary()`` ⇒ ``'question: Why?'``."""
        return truncate_summary(self._rust_summary(), max_len)

    def __repr__(self) -> str:
        """``<Message task to 3f2a: Fix login>``: type, recipient's short id, summary."""
        return f"<Message {self.type} to {self.to[:4]}: {self.summary(60)}>"


# --------------------------------------------------------------------------- events

EVENT_TYPES: tuple[str, ...] = (
    "agent_state_changed", "agent_spawned", "agent_stopped", "task_assigned",
    "task_completed", "task_failed", "mission_state_changed", "mission_work_promoted",
    "mission_work_assigned", "mission_work_completed", "mission_work_blocked",
    "mission_help_needed", "mission_watch_triggered", "mission_event", "task_delegated",
    "agent_interrupted", "agent_resumed", "agent_completed", "agent_failed",
    "reviewer_handoff", "reviewer_approval", "conductor_escalation",
)


#: Event types of tinytown_nb's own (upstream's are :data:`EVENT_TYPES`): a message or task
#: set aside as unusable, a failed attempt run again, the cost budget reached, an AI CLI that
#: refused the machine-readable flags run with plain output instead, a task (or gate) made
#: to wait for other tasks, finished tasks moved to the town's archive.
OWN_EVENT_TYPES: tuple[str, ...] = ("dead_letter", "task_retried", "budget_exceeded", "cli_fallback",
                                    "task_waiting", "tasks_archived")


def event_json(
    event_type: str, *, message: str, agent_id: str | None = None, task_id: str | None = None,
    old_state: Any = None, new_state: Any = None, parent_agent_id: str | None = None,
    child_agent_id: str | None = None, timestamp: datetime | None = None,
    mission_id: str | None = None, scope: str | None = None, spawn_mode: Any = None,
) -> str:
    """The ``data`` field of a town event (spec §3.4); None keys are omitted.

    States may be :class:`AgentState` (written as Debug names) or strings. Example::

        >>> aid = str(uuid.uuid4())
        >>> event_json("agent_resumed", message="Agent resumed", agent_id=aid,
        ...            old_state=AgentState.PAUSED, new_state=AgentState.IDLE)
        '{"event_type":"agent_resumed","agent_id":"...","old_state":"Paused","new_state":"Idle",...}'
    """
    if event_type not in EVENT_TYPES and event_type not in OWN_EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")

    def st(v: Any) -> Any:
        return v.debug_name if isinstance(v, (AgentState, TaskState)) else v

    d: dict[str, Any] = {"event_type": event_type}
    for k, v in (("agent_id", agent_id), ("task_id", task_id), ("mission_id", mission_id),
                 ("old_state", st(old_state)), ("new_state", st(new_state))):
        if v is not None:
            d[k] = str(v)
    d["message"] = message
    d["timestamp"] = json_ts(timestamp or utcnow())
    for k, v in (("parent_agent_id", parent_agent_id), ("child_agent_id", child_agent_id),
                 ("scope", scope)):
        if v is not None:
            d[k] = str(v)
    if spawn_mode is not None:
        d["spawn_mode"] = SpawnMode(spawn_mode).value
    return _compact_json(d)


def format_duration(td: timedelta | float | None) -> str:
    """Short human duration: ``0.42s``, ``12.3s``, ``4m05s``, ``1h02m``; '' for None/NaN.

    Example: ``format_duration(timedelta(seconds=245))`` → ``'4m05s'``.
    """
    if td is None:
        return ""
    seconds = td.total_seconds() if hasattr(td, "total_seconds") else float(td)
    if seconds != seconds:  # NaN / NaT
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
