"""arq 0.28: its job functions and adapter (runs in arq's own interpreter: arq needs
redis<6, which no other peer accepts).

Defaults: one asyncio process per ``arq`` worker, ``max_jobs`` 10, the queue polled every
0.5 s, results kept in Redis for 3600 s. Two ``arq`` processes make the 2-process budget.
Logging is set to WARNING through arq's ``--custom-log-dict`` (its CLI otherwise logs
every job at INFO), as every system here runs at warning level.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from benchmarks.adapters.base import (
    ASYNC_TASKS,
    SLEEP_SECONDS,
    AsyncAdapter,
    args_for,
    broker_url,
    script,
)
from benchmarks.probes import task_done, task_started

#: ``--custom-log-dict`` for the worker: arq's own logger at WARNING.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


async def noop(ctx: dict[str, Any], i: int) -> None:
    """Count and return."""
    task_done()


async def stamp(ctx: dict[str, Any], i: int) -> None:
    """Record the start (latency probe)."""
    task_started()


async def payload(ctx: dict[str, Any], i: int, data: str) -> None:
    """Count and return; ``data`` only travels."""
    task_done()


async def sleep(ctx: dict[str, Any], i: int) -> None:
    """An I/O-bound task: wait 5 ms, then count."""
    await asyncio.sleep(SLEEP_SECONDS)
    task_done()


class WorkerSettings:
    """arq's worker settings: the functions and the broker, everything else default."""

    functions: ClassVar[list[Any]] = [noop, stamp, payload, sleep]
    redis_settings = RedisSettings.from_dsn(broker_url())


class ConcurrentWorkerSettings:
    """For the I/O-bound comparison: as many jobs at once per process as the others get.

    Not a subclass: arq reads the settings class's own ``__dict__``, not inherited ones.
    """

    functions: ClassVar[list[Any]] = WorkerSettings.functions
    redis_settings = WorkerSettings.redis_settings
    max_jobs = ASYNC_TASKS


class ArqAdapter(AsyncAdapter):
    """arq through ``ArqRedis.enqueue_job``."""

    name = "arq"
    results = "stored in Redis (keep_result 3600 s), by default"
    batch = None
    pool = "2 x `arq` asyncio processes (max_jobs 10 each, queue polled every 0.5 s)"

    def __init__(self) -> None:
        super().__init__()
        self._pool: ArqRedis | None = None

    async def aconnect(self) -> None:
        """Create the connection pool once."""
        if self._pool is None:
            self._pool = await create_pool(RedisSettings.from_dsn(broker_url()))

    async def asend(self, task: str, i: int, data: str | None = None) -> None:
        """``await pool.enqueue_job(name, i)``."""
        assert self._pool is not None
        await self._pool.enqueue_job(task, *args_for(task, i, data))

    async def aclose(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """``processes`` processes of ``arq MODULE.WorkerSettings``."""
        settings = "ConcurrentWorkerSettings" if pool == "asyncio" else "WorkerSettings"
        command = [
            script("arq"),
            f"{__name__}.{settings}",
            "--custom-log-dict",
            f"{__name__}.LOG_CONFIG",
        ]
        return [command for _ in range(processes)]


ADAPTER = ArqAdapter()
