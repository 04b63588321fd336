"""Taskiq 0.13 with taskiq-redis 1.2: its tasks and adapter (runs in the peers' interpreter).

Defaults: ``RedisStreamBroker`` (the broker taskiq-redis recommends, with acks),
``taskiq worker --workers 2`` (its default), 100 async tasks at once per process, no
result backend (taskiq's default is a dummy one that stores nothing).
"""

from __future__ import annotations

import asyncio

from taskiq_redis import RedisStreamBroker

from benchmarks.adapters.base import (
    ASYNC_TASKS,
    SLEEP_SECONDS,
    AsyncAdapter,
    args_for,
    broker_url,
    script,
)
from benchmarks.probes import task_done, task_started

broker = RedisStreamBroker(url=broker_url())


@broker.task
async def noop(i: int) -> None:
    """Count and return."""
    task_done()


@broker.task
async def stamp(i: int) -> None:
    """Record the start (latency probe)."""
    task_started()


@broker.task
async def payload(i: int, data: str) -> None:
    """Count and return; ``data`` only travels."""
    task_done()


@broker.task
async def sleep(i: int) -> None:
    """An I/O-bound task: wait 5 ms, then count."""
    await asyncio.sleep(SLEEP_SECONDS)
    task_done()


_TASKS = {"noop": noop, "stamp": stamp, "payload": payload, "sleep": sleep}


class TaskiqAdapter(AsyncAdapter):
    """Taskiq through ``await task.kiq(i)``."""

    name = "taskiq"
    results = "not stored (taskiq's default result backend is a no-op)"
    batch = None
    pool = "main + 2 asyncio worker processes (--workers 2, 100 tasks at once each)"
    # taskiq 0.13's stream listener keeps polling after SIGTERM and the process never
    # exits by itself, so it is killed soon after the measurement instead of waiting.
    stop_grace = 2.0

    def __init__(self) -> None:
        super().__init__()
        self._started = False

    async def aconnect(self) -> None:
        """``await broker.startup()`` once."""
        if not self._started:
            await broker.startup()
            self._started = True

    async def asend(self, task: str, i: int, data: str | None = None) -> None:
        """``await task.kiq(i)``."""
        await _TASKS[task].kiq(*args_for(task, i, data))

    async def aclose(self) -> None:
        """``await broker.shutdown()``."""
        if self._started:
            await broker.shutdown()
            self._started = False

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """``taskiq worker MODULE:broker --workers N --log-level WARNING``."""
        return [
            [
                script("taskiq"),
                "worker",
                f"{__name__}:broker",
                "--workers",
                str(processes),
                "--log-level",
                "WARNING",
                "--max-async-tasks",
                str(ASYNC_TASKS),
            ]
        ]


ADAPTER = TaskiqAdapter()
