"""Tasks the canvas tests run, in the test process and in real worker processes.

Executions are appended to the ledger named by $CELERIAC_TEST_LEDGER (outside the broker),
so tests count them exactly. $CELERIAC_TEST_ACK_DELAY (seconds) makes every task wait
after its workflow was continued and before it commits: the window in which a killed
worker leaves a task that continued but must run again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from typing import Any

from celeriac import Celeriac, Reject, Task
from celeriac.middleware import Job, Middleware, Outcome, default_middleware
from tests.apps.core import record


class AckDelay(Middleware):
    """Sleeps between continuing a workflow and committing the task, when asked to."""

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        delay = float(os.environ.get("CELERIAC_TEST_ACK_DELAY", "0"))
        if delay:
            time.sleep(delay)
        return outcome


# AckDelay first: after_* hooks run in reverse, so it runs after Canvas continued.
app = Celeriac("canvas-tests", middleware=[AckDelay(), *default_middleware()])


@app.bound_task()
def add(self: Task[Any, Any], x: int, y: int) -> int:
    record("run", self.request.id, "add")
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.bound_task()
def tsum(self: Task[Any, Any], values: list[Any]) -> int:
    record("callback", self.request.id, len(values))
    return sum(values)


@app.bound_task()
def collect(self: Task[Any, Any], values: list[Any]) -> list[Any]:
    record("callback", self.request.id, len(values))
    return values


@app.task
def identity(value: Any) -> Any:
    return value


@app.bound_task()
def square(self: Task[Any, Any], x: int, pause: float = 0.0) -> int:
    record("run", self.request.id, x)
    time.sleep(pause)
    return x * x


@app.bound_task()
def boom(self: Task[Any, Any], *args: Any) -> None:
    record("run", self.request.id, "boom")
    raise ValueError("boom " + " ".join(map(str, args)))


@app.bound_task()
def flaky(self: Task[Any, Any], x: int) -> int:
    """Asks to be retried on its first attempt."""
    record("run", self.request.id, self.request.retries)
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return x


@app.task
def rejects() -> None:
    raise Reject("not for us")


@app.bound_task()
def errback(self: Task[Any, Any], error: dict[str, str]) -> dict[str, str]:
    record("errback", self.request.id, error["id"])
    return error


@app.bound_task(ignore_result=True)
def quiet_errback(self: Task[Any, Any], error: dict[str, str]) -> None:
    """An errback that stores no result of its own (ignore_result)."""
    record("errback", self.request.id, error["id"])


@app.task
def unstorable() -> object:
    return object()  # not JSON


@app.task
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@app.bound_task()
def reports_progress(self: Task[Any, Any], path: str) -> str:
    """Report progress, then wait until the test removes the file at ``path``."""
    self.progress(3, 10)
    deadline = time.monotonic() + 20
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


@app.task
def typed(when: dt.date, payload: bytes) -> str:
    """What arrived, by type: JSON carries a date and bytes as text, the worker converts."""
    return f"{type(when).__name__} {payload!r}"


@app.task
async def async_typed(when: dt.date, payload: bytes) -> str:
    """:func:`typed`, as a coroutine."""
    return f"{type(when).__name__} {payload!r}"
