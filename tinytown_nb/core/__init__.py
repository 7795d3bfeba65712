"""tinytown_nb's plain-Python core: no IPython, ipywidgets or pandas here.

Example::

    >>> from tinytown_nb.core import Town
    >>> town = Town.init("demo")   # doctest: +SKIP
"""

from .errors import (
    AgentExists,
    AgentNotFound,
    AmbiguousAgent,
    ConfigError,
    InvalidName,
    InvalidState,
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
from .keys import SUPERVISOR_ID
from .models import Agent, AgentState, Message, Task, TaskState
from .town import Town

__all__ = [
    "Agent", "AgentExists", "AgentNotFound", "AgentState", "AmbiguousAgent", "ConfigError",
    "InvalidName", "InvalidState", "Message", "NotInitialized", "RedisAuthFailed", "RedisError",
    "RedisNotInstalled", "RedisTooOld", "RedisUnavailable", "SUPERVISOR_ID", "Task", "TaskNotFound", "TaskState",
    "TinytownError", "Town", "WaitTimeout",
]
