"""A task module that imports nothing heavy itself, for what a worker alone loads
(tests/test_start_imports.py)."""

from __future__ import annotations

import sys

from celeriac import Celeriac

app = Celeriac("lean-tests")

#: Modules a worker that never awaits and signs nothing has no use for.
HEAVY = ("asyncio", "ssl", "_hashlib", "hmac", "redis", "psutil", "concurrent.futures")


@app.task
def loaded_heavy() -> list[str]:
    """Which of HEAVY the process running this task has loaded."""
    return [name for name in HEAVY if name in sys.modules]
