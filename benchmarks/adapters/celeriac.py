"""celeriac: its tasks and adapter (runs in celeriac's own interpreter).

Full guarantees on, as shipped: fenced leases, results stored by the same broker call
that acks, task events on (``worker_send_task_events``), default middleware.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from benchmarks.adapters.base import (
    ASYNC_TASKS,
    SLEEP_SECONDS,
    Adapter,
    args_for,
    broker_url,
)
from benchmarks.probes import task_done, task_started
from celeriac import Celeriac

if TYPE_CHECKING:
    from celeriac.task import Task

app = Celeriac("bench", broker=broker_url())


@app.task
def noop(i: int) -> None:
    """Count and return."""
    task_done()


@app.task
def stamp(i: int) -> None:
    """Record the start (latency probe)."""
    task_started()


@app.task
def payload(i: int, data: str) -> None:
    """Count and return; ``data`` only travels."""
    task_done()


@app.task
async def sleep(i: int) -> None:
    """An I/O-bound task: wait 5 ms, then count."""
    import asyncio  # here: the process pool's idle memory is measured without it

    await asyncio.sleep(SLEEP_SECONDS)
    task_done()


@app.task
def collect(values: list[Any]) -> int:
    """A chord's body: how many results it got."""
    return len(values)


_TASKS: dict[str, Task[..., None]] = {
    "noop": noop,
    "stamp": stamp,
    "payload": payload,
    "sleep": sleep,
}


class CeleriacAdapter(Adapter):
    """celeriac through its public API: ``delay`` and ``publish_many``."""

    name = "celeriac"
    results = "stored in the broker (Redis key / SQLite row) by the call that acks"
    batch = "app.publish_many(messages): one broker round trip"
    pool = "supervisor + 2 child processes (-P process -c 2)"
    tasks = ("noop", "stamp", "payload", "sleep")

    def connect(self) -> None:
        """Connect the broker before a timed section."""
        app.broker  # noqa: B018 - the property connects on first use

    def send(self, task: str, i: int, data: str | None = None) -> None:
        """``task.delay(i)``."""
        _TASKS[task].delay(*args_for(task, i, data))

    def send_batch(self, task: str, count: int, data: str | None = None) -> None:
        """Build every message, then ``app.publish_many`` them in one round trip."""
        chosen = _TASKS[task]
        app.publish_many([chosen.message(args_for(task, i, data)) for i in range(count)])

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """``celeriac -A ... worker -c N``, or N asyncio workers (see below)."""
        base = [sys.executable, "-m", "celeriac", "-A", __name__, "worker", "-l", "warning"]
        if pool == "asyncio":
            # The asyncio pool runs every coroutine in one child per worker, so N workers
            # make N processes, each with ASYNC_TASKS tasks at once.
            command = [*base, "-P", "asyncio", "-c", str(ASYNC_TASKS)]
            return [command for _ in range(processes)]
        return [[*base, "-c", str(processes)]]


ADAPTER = CeleriacAdapter()


def send_group(count: int) -> None:
    """``group(noop.s(i) for i in range(count)).apply_async()``."""
    from celeriac.canvas import group

    group(noop.s(i) for i in range(count)).apply_async()


def run_chord(count: int, timeout: float) -> int:
    """Send ``chord(noop x count, collect)`` and wait for the body's result."""
    from celeriac.canvas import chord

    result = chord((noop.s(i) for i in range(count)), collect.s()).apply_async()
    return result.get(timeout=timeout)  # a chord's handle is its body's: collect's int


def canvas_available() -> bool:
    """Whether ``celeriac.canvas`` (group, chord) is importable in this build."""
    try:
        from celeriac.canvas import chord, group  # noqa: F401
    except ImportError:
        return False
    return True
