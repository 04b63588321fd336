"""The tasks `benchmarks/soak.py` runs in a real worker: small, retried, failing, periodic.

The broker comes from CELERIAC_BROKER_URL (the soak script sets it).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celeriac import Celeriac, Task

app = Celeriac("soak")
app.conf.result_expires = float(os.environ.get("SOAK_RESULT_EXPIRES", "60"))


@app.task
def tiny(x: int) -> int:
    """The steady stream."""
    return x + 1


@app.task
async def tiny_async(x: int) -> int:
    """The stream, for the asyncio pool."""
    await asyncio.sleep(0)
    return x + 1


@app.bound_task(max_retries=2, retry_backoff=0.05, retry_backoff_max=0.2)
def flaky(self: Task[Any, Any], x: int) -> int:
    """Fails its first run: one retry each."""
    if self.request.retries < 1:
        raise self.retry(exc=ValueError("first try fails"), countdown=0.05)
    return x


@app.task
def boom(x: int) -> None:
    """Always fails."""
    raise RuntimeError(f"boom {x}")


@app.task(dedupe_ttl=5)
def deduped(x: int) -> int:
    """Sent with a dedupe key of its own: the key must be freed."""
    return x


@app.task(rate_limit="50/s")
def limited(x: int) -> int:
    """Rate limited: limiter keys and admissions."""
    return x


@app.periodic(every=1)
@app.task
def tick() -> str:
    """The periodic tick (worker --beat)."""
    return "tick"
