"""The same app as tests.apps.core, one release later: it has a task the old one lacks.

Workers started with ``-A tests.apps.core_v2`` play the upgraded half of a deploy.
"""

from __future__ import annotations

from tests.apps.core import app, record

__all__ = ["added_in_v2", "app"]


@app.task(name="tests.apps.core.added_in_v2")
def added_in_v2(x: int) -> int:
    """A task only the new code knows."""
    record("v2", "?", x)
    return x * 10
