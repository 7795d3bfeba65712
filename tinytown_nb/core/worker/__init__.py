"""The worker behind every agent, as a package:

* :mod:`.steps` — the worker's atomic steps as pure builders (take, start, finish, …);
* :mod:`.loop` — the :class:`Worker` loop and its heartbeat thread;
* :mod:`.options` — the worker hash a launch writes and a worker reads back;
* :mod:`.host` — the shared worker process that runs many CLI agents' workers;
* :mod:`.launch` — starting and stopping workers (processes, threads, the shared
  process), spawn, spawn_many and restart, kill and prune (with the agent's worktree), the
  foreground worker and the ``python -m tinytown_nb.worker`` entry.

Example::

    >>> from tinytown_nb.core.worker import spawn
    >>> spawn(store, "echo", cli="cat").state   # a command agent: the task text on stdin
    <AgentState.IDLE: 'idle'>
"""

from .launch import (check_options, cli_name, has_function, kill, local_thread, main, prune, restart,
                     run_in_foreground,
                     runs_here, spawn, spawn_many, start_process_worker, start_shared_worker,
                     start_thread_worker, start_worker, stop_local_workers, stop_process_workers)
from .loop import Worker
from .options import worker_options
from .steps import Steps

__all__ = ["Steps", "Worker", "check_options", "cli_name", "has_function", "kill", "local_thread",
           "main", "prune", "restart",
           "run_in_foreground", "runs_here", "spawn", "spawn_many", "start_process_worker",
           "start_shared_worker",
           "start_thread_worker", "start_worker", "stop_local_workers", "stop_process_workers",
           "worker_options"]
