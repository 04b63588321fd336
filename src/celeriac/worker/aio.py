"""The asyncio pool: one child process runs up to N tasks at once on an event loop.

``async def`` tasks run as coroutines; plain functions run in threads with the same limits
as the threads pool. The child fetches only as many messages as it has free slots, so it
never holds work it cannot start. Broker calls run in threads: the sync broker faces are
the fast ones, and a slow call never blocks the loop.

Soft time limit: the coroutine is cancelled and the task fails with
``SoftTimeLimitExceeded`` (a task may catch ``asyncio.CancelledError`` to clean up). A
``TimeoutError`` the task raises itself (``asyncio.timeout``, a socket, an HTTP client) is
the task's own error, not its soft limit. Hard time limit: the supervisor stops the child;
its other running tasks are delivered again.

The slot (what this child holds, for its supervisor) is touched only by the loop's thread.
Writes are batched every ``_SLOT_FLUSH``, except two that cannot wait: after a fetch (the
supervisor must know what the child holds) and before a task's body runs (a task that
kills the child at once must count as a delivery, or it is never dead-lettered).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import Delivery
from celeriac.errors import SoftTimeLimitExceeded
from celeriac.message import ErrorInfo, peek_identity, storable_text
from celeriac.middleware.base import Job, Outcome
from celeriac.task import _current
from celeriac.worker.child import (
    EXIT_RECYCLE,
    Batch,
    Child,
    ChildSpec,
    current_rss,
    thread_soft_limit,
)
from celeriac.worker.executor import Executor, error_info, outcome_for
from celeriac.worker.slot import Held, Slot

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

_SLOT_FLUSH = 0.02  # seconds between slot writes: one write per batch, not per task


class AsyncioChild(Child):
    """Consumes with one event loop and ``concurrency`` task slots."""

    def __init__(self, app: Celeriac, spec: ChildSpec, slot: Slot) -> None:
        super().__init__(app, spec, slot)
        self._dirty = False  # the slot lags _held: the flusher writes it
        self._unwritten_start = False  # a task marked started that the slot does not show yet

    def run(self) -> int:
        """Run the event loop until told to stop or until it is time to recycle."""
        self._install_signals()
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
            if deliveries:
                # Here, not in the fetch's thread: one writer, and _held changes only on the
                # loop. Dying before this write is covered: the supervisor declares a dead
                # child's consumer id dead and the reaper releases what it held.
                for d in deliveries:
                    self._held[d.id] = [Held(d.id, d.queue, d.lease.token)]
                self._write_slot()
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
        return deliveries or []

    async def _process(self, executor: Executor, delivery: Delivery) -> None:
        job = Job(delivery, executor.worker_id, app=self.app)  # prepare's, once it returns
        try:
            job, outcome = executor.prepare(delivery)
            if outcome is None:
                outcome = await self._execute_async(executor, job)
            self.tasks_done += 1
            await asyncio.to_thread(
                self._reconnecting,
                functools.partial(executor.settle, job, outcome),
                give_up_after=self.fetch.lease_seconds,
            )
        except Exception as exc:  # noqa: BLE001 - a worker bug must not strand the message
            await asyncio.to_thread(self._after_internal_error, executor, job, exc)
        finally:
            self._held.pop(delivery.id, None)  # no longer renewed, whatever happened
            self._dirty = True

    def _after_internal_error(self, executor: Executor, job: Job, exc: Exception) -> None:
        """Settle a message whose handling failed in the worker itself, not in the task.

        Dead-lettered with the error: kept (``celeriac dlq``) and never looping, and its
        caller gets a FAILURE instead of waiting. If even that fails, it is put back
        counted as a delivery, so task_max_deliveries still ends it; if the broker refuses
        that too, its lease, no longer renewed, expires and it is delivered again, counted.
        """
        delivery = job.delivery
        name = job.message.task if job.message else peek_identity(delivery.body)[1]
        label = storable_text(f"{name or '?'}[{delivery.id}]")
        log.error(
            "task %s: the worker failed while handling it (%s); dead-lettering it",
            label,
            storable_text(f"{type(exc).__name__}: {exc}"),
            exc_info=exc,
        )
        info = error_info(exc)
        dead = Outcome(
            "DEAD",
            reason="the worker failed while handling it",
            error=ErrorInfo(
                type=info.type,
                message=storable_text(info.message),
                traceback=storable_text(info.traceback),
            ),
        )
        try:
            self._reconnecting(
                lambda: executor.settle(job, dead), give_up_after=self.fetch.lease_seconds
            )
            return
        except Exception as again:  # noqa: BLE001 - the fallback below must still run
            log.error(
                "task %s: could not dead-letter it either (%s); putting it back, counted as "
                "a delivery (dead-lettered after task_max_deliveries)",
                label,
                storable_text(f"{type(again).__name__}: {again}"),
            )
        try:
            self.app.broker.requeue(delivery.lease, count_delivery=True)
        except Exception as third:  # noqa: BLE001 - its lease expiry is the last resort
            log.error(
                "task %s: could not put it back (%s); it is delivered again when its lease "
                "expires (within %gs), counted as a delivery",
                label,
                storable_text(f"{type(third).__name__}: {third}"),
                self.fetch.lease_seconds,
            )

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
        self._dirty = self._unwritten_start = True  # written before the task's body runs
        middleware = self.app.middleware
        skipped = await asyncio.to_thread(middleware.before_execute, job)
        outcome = skipped or await self._call(executor, job, soft)
        outcome = await asyncio.to_thread(middleware.after_execute, job, outcome)
        # Done: a slow commit or settle hook must not pass for the task running past its
        # hard limit (the supervisor would kill the child and every task on its loop).
        self._held[delivery.id] = [
            Held(delivery.id, delivery.queue, delivery.lease.token, message.task, started)
        ]
        self._dirty = True
        return outcome

    async def _call(self, executor: Executor, job: Job, soft: float) -> Outcome:
        assert job.task is not None
        if self._unwritten_start:
            # The process pool's rule: "started" is in the slot before the task can kill
            # the child, so the supervisor counts the delivery and a task that always
            # crashes is dead-lettered. One write covers every start marked since the last.
            self._write_slot()
        token = _current.set(job.request)
        began = time.perf_counter()
        try:
            if job.task.is_async:
                value = await _with_soft_limit(executor.invoke(job), soft)
            else:
                value = await asyncio.to_thread(_call_with_soft_limit, executor, job, soft)
            outcome = Outcome("SUCCESS", value=value)
        except Exception as exc:  # noqa: BLE001 - a task's failure is data, not a crash
            outcome = outcome_for(exc)
        except (SystemExit, KeyboardInterrupt) as exc:
            # Only a task raises these here (a child ignores SIGINT). Left to propagate,
            # they would end the loop and every task running on it.
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
        self._dirty = self._unwritten_start = False
        held = [h for items in self._held.values() for h in items]
        held.sort(key=lambda h: h.started == 0)
        self.rss = current_rss()
        self.slot.write(held, self.rss, self.tasks_done, self.growth)


async def _with_soft_limit(coro: Coroutine[Any, Any, Any], soft: float) -> Any:
    """Await a task's coroutine, cancelled at ``soft`` seconds.

    Only the limit's own expiry is a soft limit: a ``TimeoutError`` the task raises is
    its own, and passes through as it is (so ``autoretry_for=(TimeoutError,)`` works).
    """
    if soft == math.inf:
        return await coro
    scope = asyncio.timeout(soft)
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if not scope.expired():
            raise
    raise SoftTimeLimitExceeded(f"cancelled at its soft time limit ({soft:g}s)")


def _call_with_soft_limit(executor: Executor, job: Job, soft: float) -> Any:
    """Run a plain function in this worker thread under the soft limit."""
    with thread_soft_limit(soft):
        return executor.invoke(job)
