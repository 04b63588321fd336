"""What a worker child takes in hand, when it stops taking, and what it gives back unstarted.

A mixin of :class:`~celeriac.worker.child.Child` (and so of every pool's child), kept apart
so each module stays small: the size of the next fetch, the count of deliveries
``worker_max_tasks_per_child`` still leaves the child, the decision to recycle (that many
tasks run, or ``worker_max_memory_per_child`` passed), and the messages the child gives
back to their queue without running them (a batch's surplus before a task not known to be
short, what it still holds when it stops). The consume loop itself is in
:mod:`celeriac.worker.child`; what a warm shutdown's hand-back takes, in
:mod:`celeriac.worker.handback`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from celeriac.brokers.records import Delivery
from celeriac.control import mark_given_back
from celeriac.errors import BrokerError
from celeriac.middleware.base import Outcome
from celeriac.worker.batch import Batch
from celeriac.worker.executor import FetchSpec
from celeriac.worker.handback import Prefetched
from celeriac.worker.memory import Ceiling
from celeriac.worker.slot import Held

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.child import ChildSpec

log = logging.getLogger("celeriac.worker")

# Seconds a consumer that may take no more waits before it looks again, while another
# consumer of its child still handles a delivery (see Intake._may_take).
ALLOWANCE_WAIT = 0.02
# Outcomes that put the message back unrun, to run later (a rate limit's slot, an unknown
# task waiting for a worker that has it, bytes re-sent under their own id): no task done.
_PUT_BACK = frozenset({"DEFERRED", "MOVED"})


class Intake:
    """How much a child takes, when it recycles, and what it gives back unstarted."""

    app: Celeriac
    spec: ChildSpec
    fetch: FetchSpec
    stopping: bool
    tasks_done: int
    rss: int
    _taken: int
    _recycling_said: bool  # the recycle line is logged once per child, not per thread
    _lock: threading.Lock
    _prefetched: Prefetched
    _publish: Callable[[Hashable, list[Delivery], Held | None], None]

    def _fetch_spec(self, batch: Batch) -> FetchSpec | None:
        """What the next fetch takes: a batch, or the prefetch, but no more than
        ``worker_max_tasks_per_child`` leaves this child to take (what it took beyond that
        went back to the back of its queue); None when that is nothing."""
        size = max(batch.size(), self.fetch.limit)
        left = self._left_to_take()
        if left is not None:
            size = min(size, left)
        if size == self.fetch.limit:
            return self.fetch
        if not size:
            return None
        return FetchSpec(self.fetch.queues, self.fetch.consumer, size, self.fetch.lease_seconds)

    def _left_to_take(self) -> int | None:
        """How many more deliveries ``worker_max_tasks_per_child`` lets this child take;
        None when there is no such limit.

        Deliveries are counted when taken, not when their tasks end: counting ends, the
        other threads (or an asyncio child's free slots) kept taking tasks until one
        finished the last the limit allowed, up to ``-c`` - 1 past it (``-c``: asyncio).
        """
        most = self.app.conf.worker_max_tasks_per_child
        return max(most - self._taken, 0) if most else None

    def _may_take(self, key: Hashable, pending: list[Delivery]) -> bool:
        """Count one more delivery taken in hand; False when the limit allows no more
        (:meth:`_left_to_take`): recycling (``stopping``), or not yet, while another
        consumer of the child still handles a delivery, which, put back unrun, gives its
        count back: this consumer then gives back ``pending`` and waits a moment, holding
        nothing. A threads child that stopped at once recycled having run 1 of 5 tasks,
        when the others' deliveries were rate-limit deferrals."""
        with self._lock:  # one lock per task taken: this runs per task
            if self._left_to_take() != 0:
                self._taken += 1
                return True
            waits = self._taken > self.tasks_done
            if not waits:
                self.stopping = True
                self._say_recycling(
                    logging.INFO,
                    f"took {self._taken} tasks (worker_max_tasks_per_child)",
                )
        if waits:
            self._give_back(key, self._prefetched.split(pending, 0))
            time.sleep(ALLOWANCE_WAIT)
        return False

    def _others_in_hand(self) -> bool:
        """Whether other consumers of this child hold deliveries not yet counted either
        way (a task done, or given back to the count: see :meth:`_count`)."""
        with self._lock:
            return self._taken > self.tasks_done

    def _count(self, outcome: Outcome) -> None:
        """Count a delivery handled: one more task done, or, for a message put back unrun,
        its delivery handed back to what ``worker_max_tasks_per_child`` lets it take.

        Deferrals counted as tasks: a rate-limited backlog recycled children that had run
        next to nothing (22 children for 71 tasks run at 10/s, -c 2 and a limit of 20),
        each fork a pause in the backlog, and ``inspect stats`` counted every deferral.
        """
        with self._lock:
            if outcome.state in _PUT_BACK:
                self._taken -= 1
            else:
                self.tasks_done += 1

    def _should_recycle(self) -> bool:
        if not self.tasks_done:
            # Only between tasks: a child that starts over its memory limit (the app's
            # imports) would otherwise be replaced after every empty fetch, a fork loop.
            return False
        conf = self.app.conf
        if conf.worker_max_tasks_per_child and self.tasks_done >= conf.worker_max_tasks_per_child:
            self._say_recycling(
                logging.INFO, f"ran {self.tasks_done} tasks (worker_max_tasks_per_child)"
            )
            return True
        ceiling = self.spec.ceiling or Ceiling.of_setting(conf.worker_max_memory_per_child)
        if ceiling.mib and self.rss > ceiling.mib << 20:
            # Rounded down, 60.4 MiB read "uses 60 MiB, over ... 60".
            used = f"{self.rss / (1 << 20):.1f}".removesuffix(".0")
            self._say_recycling(logging.WARNING, f"uses {used} MiB, over {ceiling.words}")
            return True
        return False

    def _say_recycling(self, level: int, why: str) -> None:
        """Say once per child that it recycles, and what that means for the tasks waiting:
        a threads or asyncio child takes no new task until every one it runs has ended (a
        line per thread said "after its current task", while one long task held 3 idle
        threads of 4 for minutes)."""
        if self._recycling_said:  # two threads at once may both say it: rare, harmless
            return
        self._recycling_said = True
        log.log(
            level,
            "child %d %s; recycling: it takes no new task, and a new child takes its place "
            "once the tasks it is running have ended",
            os.getpid(),
            why,
        )

    def _give_back_surplus(self, pending: list[Delivery]) -> None:
        """Give back what a batch brought beyond ``worker_prefetch_multiplier``, before a
        task not known to be short runs.

        A batch is sized for short tasks, but the messages behind them may be slow ones (a
        backlog's next task, one not yet timed): held by this child, they all ran before a
        priority-9 task sent meanwhile (a batch of 64 one-minute tasks: an hour), and
        no idle sibling could start them. Given back, they go back where they were in
        their queue, uncounted, as at a warm shutdown; the slot is written by the caller
        next.
        """
        surplus = self._prefetched.split(pending, self.fetch.limit - 1)
        log.debug(
            "child %d gives back %d prefetched message(s) before a task not known to be "
            "short: a batch is taken for short tasks only",
            os.getpid(),
            len(surplus),
        )
        self._requeue_unstarted(surplus)

    def _give_back(self, key: Hashable, pending: list[Delivery]) -> None:
        self._requeue_unstarted(pending)
        self._publish(key, [], None)

    def _requeue_unstarted(self, pending: list[Delivery]) -> None:
        # Fetched but never started: straight back to where they were in their queue, not
        # counted as a delivery. At its back, a warm shutdown's prefetch (up to a batch of
        # 64 per child) waited behind the whole backlog. Last first: each goes to the head.
        with contextlib.suppress(BrokerError):  # the requeues below say what failed
            mark_given_back(self.app, [d.id for d in pending])  # revoked while held
        for n, delivery in enumerate(reversed(pending)):
            try:
                self.app.broker.requeue(delivery.lease, count_delivery=False, front=True)
            except BrokerError as exc:
                # The rest would fail alike, each a socket timeout on a broker that hangs.
                log.warning(
                    "child %d could not give back %d prefetched message(s) (%s): %s. They "
                    "are delivered again once their leases expire (worker_lease_seconds, "
                    "%gs); they have not run.",
                    os.getpid(),
                    len(pending) - n,
                    str(exc).rstrip("."),
                    ", ".join(d.id for d in pending[: len(pending) - n]),
                    self.fetch.lease_seconds,
                )
                break
