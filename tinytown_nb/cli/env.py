"""The environment ``ttnb`` reads: the town directory and, inside a task, which agent runs it.

A worker sets ``TINYTOWN_AGENT_ID`` and ``TINYTOWN_AGENT_NAME`` for the command it runs,
so ``ttnb send supervisor "done"`` there is sent by that agent (spec §4.4).

>>> env_agent({"TINYTOWN_AGENT_ID": "not-a-uuid", "TINYTOWN_AGENT_NAME": "dev"})
'dev'
"""

from __future__ import annotations

import os
from typing import Mapping

from ..core.models import canonical_uuid

__all__ = ["ENV_AGENT_ID", "ENV_AGENT_NAME", "ENV_TOWN_DIR", "env_agent"]

ENV_TOWN_DIR = "TINYTOWN_TOWN_DIR"
ENV_AGENT_ID = "TINYTOWN_AGENT_ID"
ENV_AGENT_NAME = "TINYTOWN_AGENT_NAME"


def env_agent(environ: Mapping[str, str] = os.environ) -> str | None:
    """The agent this process runs as: ``TINYTOWN_AGENT_ID`` (a valid UUID), else
    ``TINYTOWN_AGENT_NAME``, else None.

    >>> env_agent({"TINYTOWN_AGENT_ID": "3F2A1B7C-0000-4000-8000-000000000000"})
    '3f2a1b7c-0000-4000-8000-000000000000'
    >>> env_agent({}) is None
    True
    """
    aid = canonical_uuid(environ.get(ENV_AGENT_ID, "").strip())
    return aid or (environ.get(ENV_AGENT_NAME, "").strip() or None)
