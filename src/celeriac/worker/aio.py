"""The asyncio pool: one child process runs up to N tasks at once on an event loop.

``async def`` tasks run as coroutines; plain functions run in threads with the same limits
as the threads pool. The child fetches only as many messages as it has free slots, so it
never holds work it cannot start. Broker calls run in threads: the sync broker faces are
the fast ones, and a slow call never blocks the loop.

Soft time limit: the coroutine is cancelled and the task fails with
``SoftTimeLimitExceeded`` (a task may catch ``asyncio.CancelledError`` to clean up). Hard
time limit: the supervisor stops the child; its other running tasks are delivered again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celeriac.brokers.base import Delivery
from celeriac.errors import SoftTimeLimitExceeded
from celeriac.middleware.base import Job, Outcome
from celeriac.task import _current
from celeriac.worker.child import EXIT_RECYCLE, Batch, Child, current_rss, thread_soft_limit
from celeriac.worker.executor import Executor, error_info, outcome_for
from celeriac.worker.slot import Held

_SLOT_FLUSH = 0.02  # seconds between slot writes: one write per batch, not per task


class AsyncioChild(Child):
    """Consumes with one event loop and ``concurrency`` task slots."""

    def run(self) -> int:
        """Run the event loop until told to stop or until it is time to recycle."""
        self._install_signals()
        self._dirty = False
        asyncio.run(self._main())
        return EXIT_RECYCLE

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=min(64, self.spec.concurrency)))
        executor = Executor(self.app, self.spec.worker_id)
        running: set[asyncio.Task[None]] = set()
        flusher = asyncio.create_task(self._flush_slot())
        while not self.stopping:
            free = self.spec.concurrency - len(running)
            if free == 0:
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not running:
                await asyncio.to_thread(self.app.middleware.on_idle)
            deliveries = await asyncio.to_thread(self._fetch_up_to, free)
            for delivery in deliveries:
                task = asyncio.create_task(self._process(executor, delivery))
                running.add(task)
                task.add_done_callback(running.discard)
            if self._should_recycle():
                self.stopping = True
        if running:
            await asyncio.wait(running)
        flusher.cancel()
        self._write_slot()

    def _fetch_up_to(self, free: int) -> list[Delivery]:
        deliveries = self._reconnecting(
            lambda: self.app.broker.fetch(
                self.spec.queues,
                self.fetch.consumer,
                limit=free,
                lease_seconds=self.fetch.lease_seconds,
                timeout=0.2,
            ),
            give_up_when_stopping=True,
        )
        for d in deliveries or []:
            self._held[d.id] = [Held(d.id, d.queue, d.lease.token)]
        self._write_slot()  # at once: the supervisor must know what this child holds
        return deliveries or []

    async def _process(self, executor: Executor, delivery: Delivery) -> None:
        job, outcome = executor.prepare(delivery)
        if outcome is None:
            outcome = await self._execute_async(executor, job)
        self.tasks_done += 1
        await asyncio.to_thread(
            self._reconnecting,
            lambda: executor.settle(job, outcome),
            give_up_after=self.fetch.lease_seconds,
        )
        self._held.pop(delivery.id, None)
        self._dirty = True

    async def _execute_async(self, executor: Executor, job: Job) -> Outcome:
        task, message, delivery = job.task, job.message, job.delivery
        assert task is not None and message is not None
        soft, hard = self.limits(job)
        started = time.time()
        self._held[delivery.id] = [
            Held(
                delivery.id,
                delivery.queue,
                delivery.lease.token,
                message.task,
                started,
                started + hard if hard != math.inf else 0.0,
            )
        ]
        self._dirty = True
        middleware = self.app.middleware
        skipped = await asyncio.to_thread(middleware.before_execute, job)
        outcome = skipped or await self._call(executor, job, soft)
        return await asyncio.to_thread(middleware.after_execute, job, outcome)

    async def _call(self, executor: Executor, job: Job, soft: float) -> Outcome:
        assert job.task is not None
        token = _current.set(job.request)
        began = time.perf_counter()
        try:
            if job.task.is_async:
                limit = None if soft == math.inf else soft
                value = await asyncio.wait_for(executor.invoke(job), limit)
            else:
                value = await asyncio.to_thread(_call_with_soft_limit, executor, job, soft)
            outcome = Outcome("SUCCESS", value=value)
        except TimeoutError:
            exc = SoftTimeLimitExceeded(f"cancelled at its soft time limit ({soft:g}s)")
            outcome = Outcome("FAILURE", error=error_info(exc), exception=exc)
        except Exception as exc:  # noqa: BLE001 - a task's failure is data, not a crash
            outcome = outcome_for(exc)
        finally:
            _current.reset(token)
        outcome.runtime = time.perf_counter() - began
        return outcome

    def _publish(
        self,
        key: Hashable,
        pending: list[Delivery],
        running: Held | None,
        batch: Batch | None = None,
    ) -> None:
        self._held.pop(key, None)
        self._dirty = True

    async def _flush_slot(self) -> None:
        while True:
            await asyncio.sleep(_SLOT_FLUSH)
            if self._dirty:
                self._write_slot()

    def _write_slot(self) -> None:
        self._dirty = False
        held = [h for items in self._held.values() for h in items]
        held.sort(key=lambda h: h.started == 0)
        self.rss = current_rss()
        self.slot.write(held, self.rss, self.tasks_done, self.growth)


def _call_with_soft_limit(executor: Executor, job: Job, soft: float) -> Any:
    """Run a plain function in this worker thread under the soft limit."""
    with thread_soft_limit(soft):
        return executor.invoke(job)
