"""Batching: short tasks taken and committed many per broker call.

One consumer's batching state, shared by every pool: how many messages to take per fetch,
which finished tasks' commits wait to go together, and the slot records of what was
prefetched. See :class:`Batch`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from celeriac.brokers.records import Delivery
from celeriac.middleware.base import Job, Outcome
from celeriac.worker.slot import Held

#: Seconds a task may take before the messages a batch holds behind it go back first: 32
#: held behind tasks just under this wait at most ~1.6 s.
HOLD_UP = 0.05


class Flight:
    """A batch's commit (and the next fetch) sent to the broker while the child runs the
    tasks it still holds; its reply is read by :meth:`land` (see
    :mod:`celeriac.brokers.landing`)."""

    __slots__ = ("again", "held", "land", "listed", "sent_at")

    def __init__(
        self,
        land: Callable[[], list[Delivery]],
        again: Callable[[], list[Delivery]],
        held: list[Held],
    ) -> None:
        self.land = land  # reads the reply: the committed are logged, the fetched returned
        self.again = again  # the same call made anew, if the reply never came
        self.held = held  # the records of the tasks it commits
        self.sent_at = time.monotonic()
        # Listed in the slot only while the call is made again: Redis commits before the
        # reply is read, so listed meanwhile, a lease renewal found them lost.
        self.listed = False


class Batch:
    """Finished tasks whose commits wait to go to the broker together, and how long tasks
    take: one consumer's batching state.

    Short tasks are taken and committed many per broker call: a no-op costs a fraction of
    a round trip, so one call per task would make the round trip the whole cost. A batch
    is sized so that it runs in about ``window`` seconds, from the recent run times of each
    task, so a commit (the result a caller waits for) is late by at most about that much;
    a task that is slow, or not yet timed, commits what waits before it starts and then
    goes alone. With ``most`` = 1 there is no batching at all.
    """

    def __init__(self, most: int, window: float, *, sends_ahead: bool = False) -> None:
        self.most = max(most, 1)
        self.window = window
        self.sends_ahead = sends_ahead  # may commit while tasks still run (may_send_ahead)
        self.finished: list[tuple[Job, Outcome]] = []
        self.held: list[Held] = []  # the finished tasks' leases, still held until committed
        self.since = 0.0  # monotonic time the oldest waiting commit was added
        self.average = math.inf  # recent run time of any task (seconds, moving average)
        self.by_task: dict[str, float] = {}  # the same per task name
        self._waiting: list[Held] = []  # slot records of the messages fetched last
        self.flight: Flight | None = None  # a commit sent, its reply not read yet

    def __bool__(self) -> bool:
        return bool(self.finished)

    def owes_commits(self) -> bool:
        """Whether finished tasks wait for their commit, or a commit is in flight."""
        return bool(self.finished) or self.flight is not None

    def size(self) -> int:
        """How many messages to take per fetch: enough to fill the window, at least 1."""
        if self.most == 1 or self.average == math.inf:
            return 1
        return max(1, min(self.most, int(self.window / max(self.average, 1e-6))))

    def timed(self, task: str, runtime: float) -> None:
        """Record a task's run time (exponential moving average, a fifth per run)."""
        self.average = runtime if self.average == math.inf else 0.8 * self.average + 0.2 * runtime
        known = self.by_task.get(task)
        self.by_task[task] = runtime if known is None else 0.8 * known + 0.2 * runtime

    def short(self, task: str) -> bool:
        """Whether ``task`` is known to be short: timed, and well inside the window."""
        known = self.by_task.get(task)
        return known is not None and known < self.window / 2

    def may_hold_up(self, task: str) -> bool:
        """Whether ``task`` may run long enough that the messages held behind it should go
        back first: not timed yet, or known to take ``HOLD_UP`` seconds or more.

        Not every task that is not short: giving back costs a broker call per message,
        and a batch behind a 5 ms task made a drain with 3 % of them ~10 % slower, for a
        wait of a few milliseconds per message held.

        Example:
            >>> batch = Batch(32, 0.005)
            >>> batch.timed("shop.add", 0.004)
            >>> batch.may_hold_up("shop.add"), batch.may_hold_up("shop.report")
            (False, True)
        """
        known = self.by_task.get(task)
        return known is None or known >= HOLD_UP

    def admits(self, task: str) -> bool:
        """Whether ``task`` may run before the waiting commits go: it is known to be short
        and the oldest commit has not waited a window yet."""
        if not self.finished:
            return True
        return self.short(task) and time.monotonic() - self.since < self.window

    def add(self, job: Job, outcome: Outcome) -> None:
        """Keep a finished task's commit for the next broker call."""
        if not self.finished:
            self.since = time.monotonic()
        self.finished.append((job, outcome))
        d = job.delivery
        task = job.message.task if job.message else ""
        self.held.append(Held(d.id, d.queue, d.lease.token, task, started=time.time()))

    def full(self) -> bool:
        """Whether the waiting commits must go now."""
        return len(self.finished) >= self.size() or time.monotonic() - self.since >= self.window

    def waiting(self, pending: list[Delivery]) -> list[Held]:
        """The slot records of prefetched messages, each made once per fetch.

        This runs per task. Between two fetches ``pending`` only loses messages from its
        front (a fetch adds to it; one sent ahead lands when it is empty, others are made
        anew here), so it is a tail of the list last made: that tail is returned, checked
        by the tokens at both of its ends (unique per hand-out), instead of a record looked
        up per message per task.
        """
        made, n = self._waiting, len(pending)
        if not n:
            return []
        if (
            n <= len(made)
            and made[-n].token == pending[0].lease.token
            and made[-1].token == pending[-1].lease.token
        ):
            return made[-n:]
        made = self._waiting = [Held(d.id, d.queue, d.lease.token) for d in pending]
        return made

    def take(self) -> list[tuple[Job, Outcome]]:
        """The waiting commits, and forget them."""
        finished, self.finished, self.held = self.finished, [], []
        return finished

    def send_ahead(
        self, land: Callable[[], list[Delivery]], again: Callable[[], list[Delivery]]
    ) -> None:
        """Record that the waiting commits were sent (``land`` reads the reply, ``again``
        makes the call anew): they are in flight, and the batch is empty again."""
        self.flight = Flight(land, again, self.held)
        self.finished, self.held = [], []

    def may_send_ahead(self, pending: int) -> bool:
        """Whether to send the waiting commits, and the next fetch, now: this consumer
        sends ahead, nothing is in flight, something waits to be committed, and no more
        than half a batch is left to run, which about covers Redis's work on the call and
        its round trip (32 no-ops take ~1 ms; Redis commits, stores a result and fetches
        anew for a task in ~16 µs of its CPU, ~1 ms a batch of 64)."""
        return (
            self.sends_ahead
            and self.flight is None
            and bool(self.finished)
            and 0 < pending <= self.size() // 2
        )
