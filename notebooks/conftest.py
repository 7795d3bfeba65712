"""pytest --nbval runs the tutorials here; this only makes sure no town server or worker
outlives the run when a tutorial fails before its last cell (which shuts its town down)."""

from __future__ import annotations

import pytest

from .execute import stop_towns


@pytest.fixture(scope="session", autouse=True)
def _no_town_left_running():
    yield
    stop_towns()
