"""A shared worker process: one Python process per host and town that runs the workers of
many CLI agents, one :class:`~.loop.Worker` (two threads) each.

A process per agent costs ~36 MB and a Python start-up (~0.3 s); a hundred agents are
3.6 GB. In a shared process an agent keeps everything that makes it an agent — its record,
inbox, heartbeat, launch token and its command's own process group — so recovery, kill
and the wire format are unchanged; only the ``pid`` in its worker hash is the shared one.
One agent's crash (an exception in its loop) stops that agent alone; a hang holds only
its own threads.

How an agent gets there (:func:`start_shared_worker`, used by ``spawn(shared=True)`` and
``spawn_many``): its worker hash is written with a fresh token (``shared`` = 1, kept for
``restart``), a *start* order goes on this host's control list
``tt:{town}:hostctl:{hostname}``, then a host is made sure of (:func:`ensure_host`: the one
named by ``tt:{town}:host:{hostname}`` if it lives, else a new detached
``python -m tinytown_nb.worker --town DIR --host``). The host pops orders (``BLPOP``) and
starts a worker thread per order; each agent logs to its own ``.tt/logs/<name>.log``, the
host to ``.tt/logs/workers@<hostname>.log``.

A host with no agent left exits after ``IDLE_EXIT`` seconds. It gives up its record first
and then looks at the control list once more, while a spawner pushes its order first and
then looks for a host — so an order is never left with no host to take it. SIGTERM (what
``town.shutdown()`` sends) stops every agent it runs, putting their work back.

Example::

    >>> from tinytown_nb.core.worker import start_shared_worker
    >>> dev = town.spawn("dev", cli="claude", start=False)
    >>> token = start_shared_worker(store, dev)    # its start order
    >>> pid = ensure_host(store)                   # a shared worker process takes it
    >>> town.wait("dev", timeout=30).state
    <AgentState.IDLE: 'idle'>
    >>> Host(store).run()                          # the process side (blocks)  # doctest: +SKIP
    0
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from .. import agent_worktrees, agents, lookup, procs
from ..errors import TinytownError, is_transient
from ..models import hash_ts, utcnow
from ..paths import open_private
from ..runners import CommandRunner
from ..store import Store
from .loop import Worker
from .options import file_logger, worker_options

log = logging.getLogger("tinytown_nb.host")

# seconds a host with no agent waits for one before it exits (env: for tests and tuning)
IDLE_EXIT = float(os.environ.get("TINYTOWN_HOST_IDLE_EXIT") or 60.0)
POLL = 5.0  # longest control-list read: how often a host looks at its threads
STOP_GRACE = 5.0  # on SIGTERM, how long the agents' workers get to stop cleanly

HOST_FLAG = "--host"


def hostname() -> str:
    return socket.gethostname()


def log_path(store: Store) -> Path:
    """``.tt/logs/workers@<hostname>.log`` (``@`` is never in an agent name)."""
    return store.paths.logs / f"workers@{re.sub(r'[^A-Za-z0-9._-]', '_', hostname())}.log"


# =========================================================================== launching


def host_pid(store: Store) -> int | None:
    """The pid of this host's live shared worker process of the town, or None."""
    pid = store.redis.hget(store.keys.host(hostname()), "pid") or ""
    if not pid.isdigit() or not _is_host(store, int(pid)):
        return None
    return int(pid)


def _is_host(store: Store, pid: int) -> bool:
    """``pid`` is alive and is a shared worker process of this town (by its command line)."""
    if not procs.alive(pid):
        return False
    cmdline = procs.command_line(pid)
    if cmdline is None:
        return not procs.has_proc()  # no /proc (macOS): trust the record
    marker = b"\0--town\0" + os.fsencode(str(store.root)) + b"\0"
    return b"tinytown_nb.worker" in cmdline and HOST_FLAG.encode() in cmdline and marker in cmdline + b"\0"


def ensure_host(store: Store) -> int:
    """The pid of this host's shared worker process of the town, started if none runs.

    >>> pid = ensure_host(store)
    >>> procs.alive(pid)
    True
    """
    pid = host_pid(store)
    if pid is not None:
        return pid
    procs.reap()
    path = log_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "tinytown_nb.worker", "--town", str(store.root), HOST_FLAG]
    with open_private(path, "ab") as out:
        proc = subprocess.Popen(argv, cwd=store.root, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    procs.track(proc)
    return proc.pid


def order_start(store: Store, aid: str, token: str, pipe: Any = None) -> None:
    """Put a *start* order for the agent's worker (its launch ``token``) on this host's
    control list (in ``pipe`` when given)."""
    order = json.dumps({"op": "start", "agent": aid, "token": token})
    (pipe or store.redis).rpush(store.keys.host_control(hostname()), order)


# =========================================================================== the process


class Host:
    """The shared worker process: takes *start* orders and runs a worker thread per agent
    until SIGTERM (or ``IDLE_EXIT`` seconds with no agent)."""

    def __init__(self, store: Store):
        self.store = store
        self.k = store.keys
        self.control = self.k.host_control(hostname())
        self.record = self.k.host(hostname())
        self.stop = threading.Event()
        self.blocking = store.new_blocking()
        self.workers: dict[str, tuple[threading.Thread, Worker]] = {}
        self._lock = threading.Lock()

    # ---- life
    def run(self) -> int:
        """Take orders until stopped; returns the exit status."""
        self._claim()
        idle_since = time.monotonic()
        while not self.stop.is_set():
            order = self._next_order()
            self._reap()
            if order is not None:
                self._start(order)
            if self.workers:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= IDLE_EXIT and self._leave():
                log.info("no agent for %.0f s: exiting", IDLE_EXIT)
                return 0
        self._stop_all()
        self._leave(force=True)
        return 0

    def shutdown(self) -> None:
        """Stop taking orders and stop every agent (from another thread)."""
        self.stop.set()
        self.blocking.connection_pool.disconnect()

    def _claim(self) -> None:
        self.store.redis.hset(self.record, mapping={"pid": os.getpid(), "host": hostname(),
                                                    "started_at": hash_ts(utcnow())})
        log.info("shared worker process %d started for town %s", os.getpid(), self.store.name)

    def _leave(self, force: bool = False) -> bool:
        """Give up the host record (if still ours); unless ``force``, then take back the
        record when an order came meanwhile (False: keep running)."""
        try:
            if self.store.redis.hget(self.record, "pid") == str(os.getpid()):
                self.store.redis.delete(self.record)
            if force or not self.store.redis.llen(self.control):
                return True
            self._claim()
        except redis.RedisError:
            return force
        return False

    def _next_order(self) -> dict[str, Any] | None:
        try:
            got = self.blocking.blpop([self.control], timeout=POLL)
        except redis.RedisError as exc:
            if not self.stop.is_set():
                if not is_transient(exc):
                    log.warning("control list unreadable: %s", exc)
                self.stop.wait(1.0)
            return None
        if not got:
            return None
        try:
            order = json.loads(got[1])
            if not isinstance(order, dict) or order.get("op") != "start":
                raise ValueError("not a start order")
            return order
        except ValueError as exc:
            log.warning("ignored a control entry (%s): %.200r", exc, got[1])
            return None

    # ---- agents
    def _start(self, order: dict[str, Any]) -> None:
        """Start the worker thread an order names (an order whose token is no longer the
        agent's — restarted since, or killed — is dropped)."""
        aid, token = str(order.get("agent") or ""), str(order.get("token") or "")
        try:
            if self.store.redis.hget(self.k.worker(aid), "token") != token:
                log.info("order for %s is stale (relaunched since): dropped", aid[:8])
                return
            agent = lookup.agent(self.store, aid)
            options = worker_options(self.store, aid)
            tree = agent_worktrees.record(self.store, agent.name)
            runner = CommandRunner(self.store, agent, workdir=tree.path if tree else None,
                                   branch=tree.branch if tree else None)
            worker = Worker(self.store, aid, runner, token=token, max_rounds=options["max_rounds"],
                            idle_timeout=options["idle_timeout"], backlog=options["backlog"],
                            task_timeout=options["task_timeout"],
                            silence_timeout=options["silence_timeout"],
                            logger=file_logger(self.store, agent, token))
        except (TinytownError, redis.RedisError, OSError, ValueError) as exc:
            log.warning("could not start the worker of %s: %s", aid[:8], exc)
            self._refuse(aid, token, exc)
            return
        thread = threading.Thread(target=self._run_worker, args=(worker,), daemon=True,
                                  name=f"tt-agent-{agent.name}")
        with self._lock:
            old = self.workers.get(aid)
            self.workers[aid] = (thread, worker)
        if old is not None and old[0].is_alive():
            old[1].supersede()  # its token is already replaced: it can only exit
        thread.start()
        log.info("started the worker of %s (%s)", agent.name, aid[:8])

    def _run_worker(self, worker: Worker) -> None:
        reason = worker.run()
        log.info("worker of %s ended: %s", worker.name, reason)

    def _refuse(self, aid: str, token: str, exc: Exception) -> None:
        """A worker that cannot start: its agent stopped with the reason (as a worker
        process that exits at start; its worker hash's ``error`` says why, for the spawner),
        only if no newer launch took it over."""
        try:
            if self.store.redis.hget(self.k.worker(aid), "token") == token:
                self.store.redis.hset(self.k.worker(aid), "error", str(exc)[:300])
                agents.change(self.store, aid, "kill",
                              message=f"worker failed to start: {exc}"[:300])
        except (TinytownError, redis.RedisError):
            pass

    def _reap(self) -> None:
        with self._lock:
            for aid, (thread, _) in list(self.workers.items()):
                if not thread.is_alive():
                    del self.workers[aid]

    def _stop_all(self) -> None:
        """SIGTERM: every worker stops (running commands cancelled, work put back)."""
        with self._lock:
            running = list(self.workers.values())
        for _, worker in running:
            worker.shutdown()
        deadline = time.monotonic() + STOP_GRACE
        for thread, worker in running:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                worker.abandon()


def main(store: Store) -> int:
    """``python -m tinytown_nb.worker --town DIR --host``: run the shared worker process."""
    host = Host(store)

    def on_term(signum: int, frame: Any) -> None:  # work outside the signal context (locks)
        threading.Thread(target=host.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return host.run()
