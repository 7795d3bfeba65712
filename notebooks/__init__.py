"""The tutorials (a package only so that pytest imports notebooks/conftest.py as
``notebooks.conftest`` and leaves the name ``conftest`` to tests/conftest.py)."""
