"""Redis key names of one town: tinytown's schema (spec §2) plus tinytown_nb's own keys.

Keys tinytown does not have live under new prefixes; nothing new ever goes under
``tt:{town}:agent:*`` or ``tt:{town}:task:*`` (the Rust listing would abort on them).

Example::

    >>> k = Keys("demo")
    >>> k.inbox("3f2a...")
    'tt:demo:inbox:3f2a...'
"""

from __future__ import annotations

from dataclasses import dataclass

SUPERVISOR_ID = "00000000-0000-0000-0000-000000000001"


@dataclass(frozen=True)
class Keys:
    town: str

    @property
    def prefix(self) -> str:
        return f"tt:{self.town}:"

    # --- tinytown's keys (wire-compatible) ---------------------------------------
    def agent(self, aid: str) -> str:
        return f"tt:{self.town}:agent:{aid}"

    def task(self, tid: str) -> str:
        return f"tt:{self.town}:task:{tid}"

    def inbox(self, aid: str) -> str:
        return f"tt:{self.town}:inbox:{aid}"

    def urgent(self, aid: str) -> str:
        return f"tt:{self.town}:urgent:{aid}"

    def activity(self, aid: str) -> str:
        return f"tt:{self.town}:activity:{aid}"

    def stop(self, aid: str) -> str:
        return f"tt:{self.town}:stop:{aid}"

    @property
    def backlog(self) -> str:
        return f"tt:{self.town}:backlog"

    @property
    def events(self) -> str:
        return f"tt:{self.town}:events"

    def agent_events(self, aid: str) -> str:
        return f"tt:{self.town}:events:agent:{aid}"

    def pattern(self, kind: str) -> str:
        """SCAN pattern for one kind, e.g. ``pattern("agent")`` → ``tt:demo:agent:*``."""
        return f"tt:{self.town}:{kind}:*"

    # --- tinytown_nb's own keys (new prefixes) ------------------------------------
    def processing(self, aid: str) -> str:
        """Messages a worker has taken from its inbox and not yet finished (LMOVE target)."""
        return f"tt:{self.town}:processing:{aid}"

    def notes(self, aid: str) -> str:
        """LIST of ``category|summary`` lines: informational messages and confirmations an
        AI CLI agent has not been shown yet (its next prompt shows them, then they go)."""
        return f"tt:{self.town}:notes:{aid}"

    def worker(self, aid: str) -> str:
        """HASH describing the process or thread running an agent: pid, host, kind, launch
        options, the launch ``token`` guarding its writes, and ``command`` (``pid:start``
        of a CLI run in progress, so a dead worker's orphan can be stopped)."""
        return f"tt:{self.town}:worker:{aid}"

    def host(self, hostname: str) -> str:
        """HASH of the shared worker process of this town on one host (``pid``, ``host``,
        ``started_at``): many CLI agents' workers in one process (``spawn(shared=True)``)."""
        return f"tt:{self.town}:host:{hostname}"

    def host_control(self, hostname: str) -> str:
        """LIST of orders (JSON ``{"op": "start", "agent": id, "token": t}``) for the shared
        worker process on one host; it pops them (``BLPOP``)."""
        return f"tt:{self.town}:hostctl:{hostname}"

    def wake(self, aid: str) -> str:
        """LIST whose one entry wakes an idle worker now (a kill, pause, resume, urgent mail:
        :func:`~.transitions.wake`); the worker's heartbeat thread waits on it (BLPOP)."""
        return f"tt:{self.town}:wake:{aid}"

    @property
    def names(self) -> str:
        """HASH canonical agent name → agent id, so spawn can refuse duplicates atomically."""
        return f"tt:{self.town}:names"

    def worktree(self, name: str) -> str:
        """HASH of an agent's git worktree (``spawn(worktree=True)``): ``agent``, ``path``,
        ``branch``, ``base`` (the base as named), ``base_commit``, ``repo`` (the main
        checkout) and ``created_at``. Keyed by the agent's *name*, not its id: the worktree
        outlives the agent record (prune keeps unsaved work) and comes back when the name
        is spawned again. The Rust ``tt`` never reads it."""
        return f"tt:{self.town}:worktree:{name}"

    def task_log(self, tid: str) -> str:
        """LIST of the last output lines of a task (or free-text message) while and after it
        ran: a function's prints, a command's output, an AI CLI's readable stream."""
        return f"tt:{self.town}:tasklog:{tid}"

    def task_log_count(self, tid: str) -> str:
        """STRING: how many lines were ever appended to :meth:`task_log` (the list keeps only
        the last ones), so a follower knows which lines it has not seen yet."""
        return f"tt:{self.town}:tasklog-n:{tid}"

    # --- runs: time limits, retries and attempts of a task (issue 10) ---------------
    def taskopts(self, tid: str) -> str:
        """HASH of how a task is run, beside its tinytown record (which keeps exactly
        tinytown's fields): ``id``, ``timeout`` and ``silence_timeout`` (seconds, per
        attempt), ``retries`` (failed attempts run again at most this often),
        ``retry_delay`` (seconds before a re-run), ``attempts`` (the number of the attempt
        running or last run; absent = 1 once started) and ``last_error`` (why the last
        attempt failed). Written by assign/backlog_add when options are given, and by the
        worker's retry step."""
        return f"tt:{self.town}:taskopts:{tid}"

    # --- usage and cost (issue 11) ------------------------------------------------
    def usage(self, tid: str) -> str:
        """HASH of what a task's runs reported, summed: ``id``, ``agent_id`` (who ran it
        last), ``reports`` (how many reports), ``input_tokens``, ``output_tokens``,
        ``cache_creation_tokens``, ``cache_read_tokens``, ``turns`` (integers),
        ``cost_usd`` (absent when no report gave one), ``model`` (the last named)."""
        return f"tt:{self.town}:usage:{tid}"

    @property
    def usage_total(self) -> str:
        """HASH: the same sums over the whole town (written with each task's)."""
        return f"tt:{self.town}:usage-total"

    def usage_agent(self, aid: str) -> str:
        """HASH: the same sums over the runs of one agent."""
        return f"tt:{self.town}:usage-agent:{aid}"

    @property
    def budget(self) -> str:
        """HASH of the town's cost budget: ``usd`` (the limit) and ``exceeded_at`` (set when
        the recorded cost reached it and the AI agents were paused; cleared by a new budget)."""
        return f"tt:{self.town}:budget"

    # --- state indexes: kept by every transition (transition.lua), rebuilt by a reconcile
    @property
    def reconciled(self) -> str:
        """STRING set by each reconcile to expire an hour later: its remaining TTL tells
        how long ago the town was reconciled (``status.reconcile_if_due``)."""
        return f"tt:{self.town}:index:reconciled"

    @property
    def tasks_index(self) -> str:
        """ZSET of every task id, score = ms of its last change (most recent last)."""
        return f"tt:{self.town}:index:tasks"

    def tasks_in_state(self, state: str) -> str:
        """ZSET of the ids of tasks in one state (score = ms of the last change)."""
        return f"tt:{self.town}:index:task-state:{state}"

    def tasks_of_agent(self, aid: str) -> str:
        """ZSET of the ids of tasks assigned to one agent (score = ms of the last change)."""
        return f"tt:{self.town}:index:task-agent:{aid}"

    @property
    def task_owners(self) -> str:
        """HASH task id → the agent id it is filed under in :meth:`tasks_of_agent`."""
        return f"tt:{self.town}:index:task-owner"

    @property
    def agents_index(self) -> str:
        """SET of every agent id (agents are listed from it, not by scanning the keyspace)."""
        return f"tt:{self.town}:index:agents"

    def agents_in_state(self, state: str) -> str:
        """SET of the ids of agents in one state."""
        return f"tt:{self.town}:index:agent-state:{state}"

    # --- workflows: tasks that wait for other tasks, gates (core/workflows.py). Kept by
    # transition.lua: a task that waits is a plain ``pending`` task (no assignee, not in
    # the backlog) plus these keys; the script that records the completion of its last
    # open dependency releases it.
    def deps(self, tid: str) -> str:
        """HASH of a task that waits (or waited) for others: ``after`` (JSON list of its
        dependency ids, in the order given), ``kind`` (``agent``: delivered to an agent;
        ``backlog``: joins the backlog; ``gate``: waits for a person), ``agent`` and
        ``from`` (who gets its ``task_assign`` message, and from whom), ``msg_id`` (that
        message's id), ``created_at``, ``released_at`` (when it was delivered)."""
        return f"tt:{self.town}:deps:task:{tid}"

    def deps_open(self, tid: str) -> str:
        """SET of the ids of the task's dependencies not completed yet (empty: released)."""
        return f"tt:{self.town}:deps:on:{tid}"

    def dependents(self, tid: str) -> str:
        """SET of the ids of the tasks that wait for this one (kept after they are released)."""
        return f"tt:{self.town}:deps:dependents:{tid}"

    @property
    def deps_watched(self) -> str:
        """SET of the ids of tasks some waiting task still waits for: what the sweep looks
        at (a task finished by a program that knows nothing of dependencies, the Rust ``tt``)."""
        return f"tt:{self.town}:deps:watched"

    @property
    def deps_index(self) -> str:
        """ZSET of the ids of every task with a :meth:`deps` record (score = ms created, µs as a fraction)."""
        return f"tt:{self.town}:deps:all"

    def gate(self, tid: str) -> str:
        """HASH of a gate (a task no agent runs; a person approves or rejects it):
        ``created_at``, and once decided ``decision`` (approved/rejected), ``note``,
        ``decided_at``."""
        return f"tt:{self.town}:gate:{tid}"

    @property
    def gates(self) -> str:
        """ZSET of gate ids (score = ms created, µs as a fraction)."""
        return f"tt:{self.town}:gates"

    # --- which tasks have run options / usage (written with those records, not by
    # transition.lua): bulk readers fetch only these instead of probing every task
    @property
    def tasks_with_opts(self) -> str:
        """SET of the ids of tasks that have a :meth:`taskopts` hash."""
        return f"tt:{self.town}:index:taskopts"

    @property
    def tasks_with_usage(self) -> str:
        """SET of the ids of tasks that have a :meth:`usage` hash."""
        return f"tt:{self.town}:index:usage"

    # --- retention
    @property
    def archive_lease(self) -> str:
        """STRING with a TTL: set (``SET NX PX``) by the process that runs the town's
        automatic archive policy (``[tinytown_nb] archive_after``), so it runs at most once
        per period however many processes look."""
        return f"tt:{self.town}:archive:lease"

    # --- dead letters: records the town cannot use, set aside by a worker
    @property
    def dead_letters(self) -> str:
        """ZSET of dead-letter ids, score = ms when set aside."""
        return f"tt:{self.town}:deadletters"

    def dead_letter(self, did: str) -> str:
        """HASH of one dead letter: ``raw`` (the message, byte for byte), ``reason``,
        ``agent_id``, ``source`` (urgent/inbox/processing), ``task_id``, ``at``."""
        return f"tt:{self.town}:deadletter:{did}"
