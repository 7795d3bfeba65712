"""Shared fixtures: every test talks to a real server started by the package itself."""

from __future__ import annotations

import pytest

from tinytown_nb.core import Town


@pytest.fixture
def town(tmp_path):
    """A fresh town with its own managed server (unix socket under .tt/), stopped afterwards."""
    t = Town.init(tmp_path / "town", name="test")
    yield t
    t.shutdown()
