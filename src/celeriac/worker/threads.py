"""The threads pool's child: ``concurrency`` consumer threads in one process, each running
:meth:`Child._consume` with an executor of its own and the threads' soft limit
(:func:`~celeriac.worker.soft_limits.thread_soft_limit`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

from celeriac.worker.child import EXIT_RECYCLE, Child, ChildSpec
from celeriac.worker.executor import Executor
from celeriac.worker.soft_limits import thread_soft_limit
from celeriac.worker.turns import Turns

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.records import Delivery
    from celeriac.middleware.base import Job, Outcome
    from celeriac.worker.batch import Batch
    from celeriac.worker.slot import Slot

log = logging.getLogger("celeriac.worker")


class ThreadsChild(Child):
    """The threads pool's child: ``concurrency`` consumer threads in one process."""

    def __init__(self, app: Celeriac, spec: ChildSpec, slot: Slot) -> None:
        super().__init__(app, spec, slot)
        self._ended = 0  # consumer threads that have ended
        self._wake_w = -1  # the write end of the main thread's wake-up pipe
        self._crashed = False  # a consumer thread crashed: the child exits with code 1
        self._turns = Turns()
        self._alone_turn: dict[Hashable, bool] = {}  # consumers whose task ran alone

    def run(self) -> int:
        """Start the consumer threads and wait for them to finish.

        The main thread sleeps on a pipe that a consumer thread writes as it ends and
        ``signal.set_wakeup_fd`` writes when a signal comes: no poll wakes an idle child,
        a recycle goes on at once, and a stop signal is handled whichever thread the kernel
        gave it to. A join (as before) is interrupted only by a signal delivered to the
        main thread, the one where Python runs handlers; a SIGTERM taken by a consumer
        thread (starting a task's soft-limit timer checks for signals) left the child
        taking tasks through a warm shutdown for ever, its supervisor waiting for it.
        """
        self._install_signals()
        wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # set_wakeup_fd's requirement
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        threads = [
            threading.Thread(
                target=self._thread_main, args=(i,), daemon=True, name=f"celeriac-consumer-{i}"
            )
            for i in range(self.spec.concurrency)
        ]
        for thread in threads:
            thread.start()
        while self._ended < len(threads):
            try:
                woke = os.read(wake_r, 512)  # a thread ended, or a signal came: its handler
            except OSError:  # runs here
                woke = b""
            if not woke:
                # A task closed the pipe (os.closerange): its consumer thread ends this
                # child as that task ends (see .broken); until then, handlers run here.
                time.sleep(0.1)
        for thread in threads:
            thread.join()  # each is past its last task
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(self._wake_w)
        # Not EXIT_RECYCLE after a crash: the supervisor reads code 0 with a task in hand
        # as the task's own os._exit(0), and said so of celeriac's (or a hook's) failure.
        return 1 if self._crashed else EXIT_RECYCLE

    def _run(
        self, executor: Executor, key: Hashable, job: Job, pending: list[Delivery], batch: Batch
    ) -> Outcome:
        """Run the job's task in its turn: side by side with the other consumers' tasks,
        or alone (see :mod:`celeriac.worker.turns`)."""

        def before_wait() -> None:
            # Commit what this consumer finished, so nothing of it waits beside a task
            # running alone; list the message as held but not in hand: its lease is
            # renewed meanwhile, and a death then (of a task running alone) does not count
            # it.
            self._commit(executor, key, batch, None, pending)
            assert isinstance(key, int)  # a consumer's index
            self.slot.let_go(key)
            self._publish(key, [job.delivery, *pending], None, batch)

        turns = self._turns
        turns.begin(job.alone, before_wait)  # not `with turns.take`: this runs per task
        if job.alone:  # ended by _handle, after its commit: see there
            self._alone_turn[key] = True
            return self._execute(executor, key, job, pending, batch)
        try:
            return self._execute(executor, key, job, pending, batch)
        finally:
            turns.end(alone=False)

    def _handle(
        self,
        executor: Executor,
        key: Hashable,
        delivery: Delivery,
        pending: list[Delivery],
        batch: Batch,
    ) -> list[Delivery]:
        """Handle one delivery; a task that ran alone keeps its turn until its commit is
        done: listed as started until then, it was counted again if another consumer's
        task, started meanwhile, killed the child."""
        try:
            return super()._handle(executor, key, delivery, pending, batch)
        finally:
            if self._alone_turn.pop(key, False):
                self._turns.end(alone=True)

    def _thread_main(self, index: int) -> None:
        executor = Executor(
            self.app, self.spec.worker_id, soft_limit=thread_soft_limit, contain_exits=True
        )
        try:
            self._consume(executor, key=index)
        except BaseException:  # a thread that ends must never go unnoticed
            # A task's own BaseException (SystemExit...) is its failure (the executor), so
            # this is celeriac's own failure: stop the whole child, so that a fresh one
            # serves at full concurrency and what this thread held goes back at once.
            log.exception(
                "consumer thread %d crashed; the child stops so it can be replaced", index
            )
            self.stopping = self._crashed = True
        finally:
            with self._lock:
                self._ended += 1
            # A full pipe already holds bytes that wake the main thread.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")
