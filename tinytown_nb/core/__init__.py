"""tinytown_nb's plain-Python core: no IPython, ipywidgets or pandas here.

Example::

    >>> from tinytown_nb.core import Town
    >>> town = Town.init("demo")
    >>> town.name
    'demo'
"""

from .errors import (
    AgentExists,
    AgentNotFound,
    AmbiguousAgent,
    ConfigError,
    InvalidName,
    InvalidState,
    MergeConflict,
    NotInitialized,
    RedisAuthFailed,
    RedisError,
    RedisNotInstalled,
    RedisTooOld,
    RedisUnavailable,
    TaskNotFound,
    TinytownError,
    WaitTimeout,
)
from .agent_worktrees import AgentWorktree, Diff
from .deadletters import DeadLetter
from .checks import parse_duration
from .costs import Budget, UsageRow
from .events import Event
from .keys import SUPERVISOR_ID
from .models import Agent, AgentState, Message, Task, TaskState
from .recovery import Reclaimed
from .status import Counts
from .town import Town
from .workflows import Deps, Gate
from .usage import Usage

__all__ = [
    "Agent", "AgentExists", "AgentNotFound", "AgentState", "AgentWorktree", "AmbiguousAgent",
    "ConfigError", "Counts", "DeadLetter", "Deps", "Diff", "Event", "Gate", "InvalidName",
    "InvalidState", "MergeConflict", "Message", "NotInitialized", "Reclaimed",
    "RedisAuthFailed", "RedisError", "RedisNotInstalled", "RedisTooOld", "RedisUnavailable",
    "SUPERVISOR_ID", "Task", "TaskNotFound", "TaskState", "TinytownError", "Town", "WaitTimeout",
    "Budget", "Usage", "UsageRow", "parse_duration",
]
