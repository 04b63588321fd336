"""A worker child: a full consumer in its own process.

It fetches from the broker itself, runs one task at a time in its main thread (so the soft
time limit can be a signal that interrupts blocking calls), settles each message and, when
it has nothing else in hand, fetches the next one in the same broker call. It reports what
it holds through its :class:`~celeriac.worker.slot.Slot`; the supervisor renews those
leases, enforces hard limits and cleans up after it if it dies.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from celeriac.brokers.base import Delivery
from celeriac.errors import BrokerError, SoftTimeLimitExceeded
from celeriac.worker.executor import Executor, FetchSpec
from celeriac.worker.slot import Held, Slot

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

EXIT_RECYCLE = 0  # the child chose to stop (shutdown or recycling); start a fresh one
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What a child needs to know, fixed at fork time."""

    worker_id: str
    queues: tuple[str, ...]
    index: int


def current_rss() -> int:
    """This process's resident memory in bytes (read from /proc: cheap enough per task)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class Child:
    """The consume loop of one child process."""

    def __init__(self, app: Celeriac, spec: ChildSpec, slot: Slot) -> None:
        self.app = app
        self.spec = spec
        self.slot = slot
        self.executor = Executor(app, spec.worker_id)
        self.stopping = False
        self.in_task = False
        self.tasks_done = 0
        self.growth: dict[str, list[int]] = {}  # task name -> [runs, RSS growth in bytes]
        conf = app.conf
        self.fetch = FetchSpec(
            spec.queues,
            spec.worker_id,
            max(conf.worker_prefetch_multiplier, 1),
            conf.worker_lease_seconds,
        )

    def run(self) -> int:
        """Consume until told to stop or until it is time to recycle; return an exit code."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides on Ctrl-C
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_soft_limit)
        pending: list[Delivery] = []
        while not self.stopping:
            if not pending:
                self.app.middleware.on_idle()
                self._publish(pending, None)
                pending = self._reconnecting(self._fetch, give_up_when_stopping=True) or []
                continue
            delivery = pending.pop(0)
            more = self._handle(delivery, pending)
            pending.extend(more)
            if self._should_recycle():
                break
        self._give_back(pending)
        return EXIT_RECYCLE

    def _handle(self, delivery: Delivery, pending: list[Delivery]) -> list[Delivery]:
        job, outcome = self.executor.prepare(delivery)
        if outcome is None:
            task = job.task
            assert task is not None and job.message is not None
            soft, hard = self._limits(job.message.soft_limit, job.message.hard_limit, task)
            started = time.time()
            hard_at = started + hard if hard != math.inf else 0.0
            self._publish(
                pending,
                Held(
                    delivery.id,
                    delivery.queue,
                    delivery.lease.token,
                    job.message.task,
                    started,
                    hard_at,
                ),
            )
            self.in_task = True
            rss_before = current_rss()
            if soft != math.inf:
                signal.setitimer(signal.ITIMER_REAL, soft)
            try:
                outcome = self.executor.execute(job)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self.in_task = False
            stats = self.growth.setdefault(task.name, [0, 0])
            stats[0] += 1
            stats[1] += current_rss() - rss_before
        self.tasks_done += 1
        # Fetch in the same broker call only when nothing else is in hand: a child never
        # hoards work that an idle sibling could start.
        fetch = self.fetch if not pending and not self.stopping else None
        settled = self._reconnecting(
            lambda: self.executor.settle(job, outcome, fetch),
            give_up_after=self.fetch.lease_seconds,
        )
        return settled or []

    def _fetch(self) -> list[Delivery]:
        return self.app.broker.fetch(
            self.spec.queues,
            self.spec.worker_id,
            limit=self.fetch.limit,
            lease_seconds=self.fetch.lease_seconds,
            timeout=0.5,
        )

    def _reconnecting(
        self,
        action: Callable[[], list[Delivery]],
        *,
        give_up_when_stopping: bool = False,
        give_up_after: float = math.inf,
    ) -> list[Delivery] | None:
        """Run a broker call, retrying with capped backoff while the broker is unreachable.

        Never crash-loops on an outage: the child waits and resumes by itself. A settle
        that cannot reach the broker before its lease would expire is abandoned; the
        message is then delivered again (at-least-once), never lost.
        """
        delay, started = 0.1, time.monotonic()
        while True:
            try:
                return action()
            except BrokerError as exc:
                waited = time.monotonic() - started
                if (give_up_when_stopping and self.stopping) or waited > give_up_after:
                    log.error(
                        "child %d gave up on the broker after %.0fs: %s", os.getpid(), waited, exc
                    )
                    return None
                log.warning(
                    "child %d: broker unavailable (%s); retrying in %.1fs", os.getpid(), exc, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _limits(self, soft: float | None, hard: float | None, task: object) -> tuple[float, float]:
        from celeriac.task import Task

        assert isinstance(task, Task)
        conf, opts = self.app.conf, task.options
        soft = soft if soft is not None else opts.soft_time_limit
        hard = hard if hard is not None else opts.time_limit
        soft = conf.task_soft_time_limit if soft is None else soft
        hard = conf.task_time_limit if hard is None else hard
        return float(soft), float(hard)

    def _publish(self, pending: list[Delivery], running: Held | None) -> None:
        held = [Held(d.id, d.queue, d.lease.token) for d in pending]
        if running is not None:
            held.insert(0, running)
        self.slot.write(held, current_rss(), self.tasks_done, self.growth)

    def _should_recycle(self) -> bool:
        conf = self.app.conf
        if conf.worker_max_tasks_per_child and self.tasks_done >= conf.worker_max_tasks_per_child:
            log.info(
                "child %d ran %d tasks (worker_max_tasks_per_child); recycling",
                os.getpid(),
                self.tasks_done,
            )
            return True
        limit = conf.worker_max_memory_per_child
        if limit and current_rss() > limit * 1024 * 1024:
            log.warning(
                "child %d uses %d MiB, over worker_max_memory_per_child=%d; recycling "
                "after its current task",
                os.getpid(),
                current_rss() >> 20,
                limit,
            )
            return True
        return False

    def _give_back(self, pending: list[Delivery]) -> None:
        # Fetched but never started: straight back to the queue, not counted as a delivery.
        for delivery in pending:
            self.app.broker.requeue(delivery.lease, count_delivery=False)
        self.slot.write([], current_rss(), self.tasks_done, self.growth)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _on_soft_limit(self, signum: int, frame: FrameType | None) -> None:
        if self.in_task:
            raise SoftTimeLimitExceeded("the task ran past its soft time limit")


def child_main(app: Celeriac, spec: ChildSpec, slot: Slot) -> None:
    """Entry point of a forked child; never returns."""
    code = 1
    try:
        code = Child(app, spec, slot).run()
    except Exception:
        log.exception("worker child %d crashed; the supervisor will start another", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)
