"""The package version, as a constant: reading it from the installed metadata imports the
``email`` package (~0.2 MiB in every worker process) and fails in an uninstalled tree.
Keep it equal to ``version`` in pyproject.toml (tests/test_app.py checks)."""

__version__ = "0.1.0"
