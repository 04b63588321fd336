"""What every system's adapter provides, and the loops that sync and asyncio adapters share.

An adapter module (``benchmarks/adapters/<system>.py``) defines the system's tasks (the
workers import the same module) and an ``ADAPTER`` object, an instance of a subclass of
:class:`Adapter` or :class:`AsyncAdapter`. The tasks:

- ``noop(i)``: counts itself (:func:`benchmarks.common.task_done`) and returns None;
- ``stamp(i)``: records its start time (latency probes);
- ``payload(i, data)``: like ``noop``, with a string argument of a given size;
- ``sleep(i)``: ``await asyncio.sleep(0.005)`` then counts (asyncio systems only).

The broker URL comes from ``BENCH_BROKER_URL`` in the environment, read when the module is
imported, so the producer and the workers see the same one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.probes import now

if TYPE_CHECKING:
    import asyncio

#: The I/O wait of the ``sleep`` task, in seconds.
SLEEP_SECONDS = 0.005

#: Tasks at once in each asyncio worker process (taskiq's default; the others are set to it).
ASYNC_TASKS = 100


def broker_url() -> str:
    """The broker URL the benchmark runner chose for this run."""
    return os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")


def script(name: str) -> str:
    """A console script installed beside this interpreter (``celery``, ``rq``...)."""
    return str(Path(sys.executable).with_name(name))


class Adapter:
    """One system, seen by the driver. Subclasses set the attributes and ``send``.

    Attributes:
        name: the system's name in tables.
        results: where results are stored with the system's defaults (shown in the output).
        batch: the batch-send API used, or None when the system has none.
        pool: the worker pool and process layout used for the 2-process budget.
        tasks: the task names this adapter defines (``sleep`` only where it is async).
    """

    name = ""
    results = ""
    batch: str | None = None
    pool = ""
    tasks: Sequence[str] = ("noop", "stamp", "payload")
    stop_grace = 10.0  # seconds between SIGTERM and SIGKILL when a measurement ends

    def connect(self) -> None:
        """Open connections before a timed section (a first call pays the connect)."""

    def send(self, task: str, i: int, data: str | None = None) -> None:
        """Send one task, one call."""
        raise NotImplementedError

    def send_batch(self, task: str, count: int, data: str | None = None) -> None:
        """Send ``count`` tasks through the system's batch API."""
        raise NotImplementedError(f"{self.name} has no batch send")

    def enqueue(
        self, count: int, *, batch: bool, task: str = "noop", data: str | None = None
    ) -> float:
        """Send ``count`` tasks, one call each or as a batch; return the seconds it took."""
        self.connect()
        started = now()
        if batch:
            self.send_batch(task, count, data)
        else:
            for i in range(count):
                self.send(task, i, data)
        return now() - started

    def latency(
        self, count: int, wait_started: Callable[[], float], budget: float = 3600.0
    ) -> list[float]:
        """Send ``count`` probes one at a time; each waits for the previous one to start.

        Stops early after ``budget`` seconds (a system that polls every 0.5 s would
        otherwise take minutes), so callers see how many probes were taken.

        Returns:
            Enqueue-to-start latencies in seconds: from just before the send call to the
            probe's first line.
        """
        self.connect()
        latencies: list[float] = []
        deadline = now() + budget
        for i in range(count):
            if latencies and now() > deadline:
                break
            sent = now()
            self.send("stamp", i)
            latencies.append(wait_started() - sent)
        return latencies

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """The commands that start ``processes`` worker processes in ``pool``.

        ``pool`` is ``"default"`` (the system's own default pool) or ``"asyncio"``
        (asyncio workers running ``ASYNC_TASKS`` tasks at once in each process).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class AsyncAdapter(Adapter):
    """An adapter whose producer API is asyncio: each timed loop runs in one coroutine."""

    tasks: Sequence[str] = ("noop", "stamp", "payload", "sleep")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """This adapter's event loop, kept for its whole life (connections belong to it)."""
        if self._loop is None:
            # Imported here: every system's task module imports this one, and a worker's
            # idle memory would include asyncio whether its system uses it or not.
            import asyncio

            self._loop = asyncio.new_event_loop()
        return self._loop

    async def aconnect(self) -> None:
        """Open connections."""

    async def asend(self, task: str, i: int, data: str | None = None) -> None:
        """Send one task, one awaited call."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections."""

    def connect(self) -> None:
        """Open connections in the adapter's loop."""
        self.loop.run_until_complete(self.aconnect())

    def send(self, task: str, i: int, data: str | None = None) -> None:
        """Send one task from sync code (used outside timed loops)."""
        self.loop.run_until_complete(self.asend(task, i, data))

    def enqueue(
        self, count: int, *, batch: bool, task: str = "noop", data: str | None = None
    ) -> float:
        """Send ``count`` tasks, awaiting each send in one coroutine; return the seconds."""
        if batch:
            raise NotImplementedError(f"{self.name} has no batch send")
        self.connect()

        async def loop() -> float:
            started = now()
            for i in range(count):
                await self.asend(task, i, data)
            return now() - started

        return self.loop.run_until_complete(loop())

    def latency(
        self, count: int, wait_started: Callable[[], float], budget: float = 3600.0
    ) -> list[float]:
        """As :meth:`Adapter.latency`, with every send awaited in one coroutine.

        ``wait_started`` blocks the loop while it waits, which is harmless: nothing else
        runs in the producer's loop.
        """
        self.connect()
        deadline = now() + budget

        async def loop() -> list[float]:
            latencies: list[float] = []
            for i in range(count):
                if latencies and now() > deadline:
                    break
                sent = now()
                await self.asend("stamp", i)
                latencies.append(wait_started() - sent)
            return latencies

        return self.loop.run_until_complete(loop())

    def close(self) -> None:
        """Release connections and close the loop."""
        if self._loop is not None:
            self._loop.run_until_complete(self.aclose())
            self._loop.close()
            self._loop = None


def args_for(task: str, i: int, data: str | None) -> tuple[Any, ...]:
    """The positional arguments of ``task``: ``(i,)``, or ``(i, data)`` for ``payload``."""
    return (i, data) if task == "payload" else (i,)
