"""The broker contract: what every broker (memory, SQLite, Redis, SQS) promises.

A broker stores opaque message bytes and result bytes; it never decodes a message. The
worker and the producer own the format (``celeriac.message``).

At-least-once, never lost, at most one committed result:

1. **Atomic fetch.** :meth:`Broker.fetch` takes messages and records who holds them in one
   atomic step, with a lease (a fencing ``token`` and a deadline on the broker's clock).
   There is no moment at which a taken message exists only in a worker's memory.
2. **Leases are renewed** by :meth:`Broker.renew` while a task runs. A message whose lease
   expired, or whose worker stopped heartbeating (:meth:`Broker.reap`), is handed out
   again, to anyone.
3. **Fencing.** Every settling call (:meth:`complete`, :meth:`requeue`,
   :meth:`dead_letter`) checks the token and returns False, changing nothing, when the
   caller's lease was lost: a late worker cannot commit a second result.
4. **Delivery counts.** Every hand-out increments :attr:`Delivery.deliveries`, crashes
   included. Brokers never drop a message for its count: the worker dead-letters one whose
   count passed the limit, so the reason is written once, in one place.
5. **Delayed work stays in the broker** until due (``eta``); a worker never holds a message
   that is not due.
6. **Idempotent enqueue.** :meth:`send` ignores an id that is queued, held, or has a final
   result stored.
7. **Strict priority.** Of the due messages in the queues asked for, higher ``priority``
   (0..9) always first. Within one priority, the order in which messages became due
   (a delayed, retried or reclaimed message joins the back when it comes due).
8. **Consumers are heartbeated.** The ``consumer`` a fetch names must be an id that some
   process heartbeats (:meth:`heartbeat`), or :meth:`reap` cannot tell that it died.
   Workers heartbeat their supervisor id and one id per child.

Every method may raise :class:`~celeriac.errors.BrokerConnectionError`; driver errors are
translated at this boundary. Each operation has a sync face and an ``a``-prefixed async
face; brokers without a native async driver run the sync one in a thread of a small pool
of their own, and share one poller per event loop among every async result wait.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from celeriac.brokers.landing import Landing, Ready
from celeriac.brokers.records import (
    DeadLetter,
    Delivery,
    Lease,
    LeaseLoss,
    Outgoing,
    QueueStats,
    ReadyAt,
    Renew,
    Waiting,
    WorkerInfo,
)
from celeriac.errors import BrokerError

_log = logging.getLogger("celeriac.brokers")
_P = ParamSpec("_P")
_T = TypeVar("_T")

# Seconds between reads of the waited ids by a broker that cannot tell when to read again.
_POLL_STEP = 0.02

#: The key (:meth:`Broker.kv_set`) naming the rate limits' current waiting lines
#: (:mod:`celeriac.middleware.rate_limit`); :meth:`Broker.purge` writes a new name.
RATE_LINES = "rate-lines"
#: Seconds it is kept: far longer than any line, whose tickets expire as they pass.
RATE_LINES_KEPT = 90 * 86400.0


class Broker(abc.ABC):
    """The contract every broker implements. See the module docstring for the guarantees."""

    #: True when only the process that created the broker can reach its data.
    in_process_only: bool = False
    #: True when the async faces talk to the server themselves (Redis), not through a
    #: pool of threads: a read they await that does not answer in time is the server's
    #: silence, not a busy pool.
    async_native: bool = False

    # -- producing --------------------------------------------------------------------

    @abc.abstractmethod
    def send(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store messages, in one round trip; True for each that was new.

        An id already queued, held or finished is left as it is (False). A priority
        outside 0..9 (the API refuses one; a message built by hand is not checked) is
        stored as the nearer end, 0 or 9, on every broker.
        """

    # -- consuming --------------------------------------------------------------------

    @abc.abstractmethod
    def fetch(
        self,
        queues: Sequence[str],
        consumer: str,
        *,
        limit: int,
        lease_seconds: float,
        timeout: float,
    ) -> list[Delivery]:
        """Take up to ``limit`` due messages under a lease held by ``consumer``.

        Order: the highest priority first; at equal priority the queue named first in
        ``queues``; within a queue, the order messages became due. Waits up to ``timeout``
        seconds for one to become due; returns [] if none did.
        """

    @abc.abstractmethod
    def complete(self, lease: Lease, result: bytes | None, result_ttl: float) -> bool:
        """Remove a held message and store its final result, atomically.

        Returns False (and changes nothing) when the lease was lost.
        """

    def complete_and_fetch(
        self,
        lease: Lease,
        result: bytes | None,
        result_ttl: float,
        queues: Sequence[str],
        consumer: str,
        *,
        limit: int,
        lease_seconds: float,
    ) -> tuple[bool, list[Delivery]]:
        """Complete one message and take the next ones without waiting.

        Brokers with a network round trip override this to do both in one call.
        """
        committed = self.complete(lease, result, result_ttl)
        more = self.fetch(queues, consumer, limit=limit, lease_seconds=lease_seconds, timeout=0)
        return committed, more

    def complete_many(
        self,
        items: Sequence[tuple[Lease, bytes | None]],
        result_ttl: float,
        queues: Sequence[str] = (),
        consumer: str = "",
        *,
        limit: int = 0,
        lease_seconds: float = 0.0,
    ) -> tuple[list[bool], list[Delivery]]:
        """Complete several messages, each fenced on its own lease with its own result, and
        (``limit`` > 0) take the next ones without waiting.

        One completion never depends on another: a lost lease reports False for that one
        only. Brokers with a network round trip override this to do everything in one
        call; by default it is :meth:`complete` for each, the last one together with the
        fetch (:meth:`complete_and_fetch`).

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> from celeriac.brokers.base import Outgoing
            >>> broker = MemoryBroker()
            >>> broker.send([Outgoing("a", "q", b"{}"), Outgoing("b", "q", b"{}")])
            [True, True]
            >>> taken = broker.fetch(["q"], "c1", limit=2, lease_seconds=30, timeout=0)
            >>> broker.complete_many([(d.lease, None) for d in taken], 60)
            ([True, True], [])
        """
        if not items:
            more = self.fetch(queues, consumer, limit=limit, lease_seconds=lease_seconds, timeout=0)
            return [], more if limit > 0 else []
        committed = [self.complete(lease, result, result_ttl) for lease, result in items[:-1]]
        lease, result = items[-1]
        if limit <= 0:
            return [*committed, self.complete(lease, result, result_ttl)], []
        last, more = self.complete_and_fetch(
            lease, result, result_ttl, queues, consumer, limit=limit, lease_seconds=lease_seconds
        )
        return [*committed, last], more

    #: Whether :meth:`complete_many_start` sends at once and lets the caller work while
    #: the broker answers; a worker pipelines its batches only then.
    overlaps_calls = False

    def complete_many_start(
        self,
        items: Sequence[tuple[Lease, bytes | None]],
        result_ttl: float,
        queues: Sequence[str] = (),
        consumer: str = "",
        *,
        limit: int = 0,
        lease_seconds: float = 0.0,
    ) -> Landing[tuple[list[bool], list[Delivery]]]:
        """:meth:`complete_many`, whose result is read later (see :mod:`.landing`).

        By default the call is made at once and its result (or error) kept; a broker that
        can overlap (:attr:`overlaps_calls`) sends it and returns.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> broker.send([Outgoing("a", "q", b"{}")])
            [True]
            >>> taken = broker.fetch(["q"], "c1", limit=1, lease_seconds=30, timeout=0)
            >>> landing = broker.complete_many_start([(taken[0].lease, None)], 60)
            >>> landing.result()
            ([True], [])
        """
        return Ready(
            lambda: self.complete_many(
                items,
                result_ttl,
                queues,
                consumer,
                limit=limit,
                lease_seconds=lease_seconds,
            )
        )

    @abc.abstractmethod
    def requeue(
        self,
        lease: Lease,
        *,
        delay: float = 0.0,
        body: bytes | None = None,
        count_delivery: bool = True,
        front: bool = False,
    ) -> bool:
        """Put a held message back, due after ``delay`` seconds.

        ``body`` replaces the stored bytes (a retry) and resets the delivery count.
        ``count_delivery=False`` takes back this hand-out's count (a graceful shutdown or a
        deferral is not a failed delivery); with a ``body`` too (a deferral that rewrote
        the message) the count is kept otherwise, so a task that crashes its worker still
        reaches the dead-letter queue, however often a rate limit puts it back.
        ``front=True`` (a message due now, given back unstarted: a prefetch a worker will
        not run) puts it back where it was, before the messages of its priority queued
        after it; else it joins the back. Returns False when the lease was lost.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> from celeriac.brokers.records import Outgoing
            >>> broker = MemoryBroker()
            >>> broker.send([Outgoing(i, "q", b"{}") for i in ("a", "b")])
            [True, True]
            >>> first = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)[0]
            >>> broker.requeue(first.lease, count_delivery=False, front=True)
            True
            >>> broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)[0].id
            'a'
        """

    @abc.abstractmethod
    def dead_letter(self, lease: Lease, letter: DeadLetter, result: bytes | None) -> bool:
        """Move a held message to the dead-letter store, storing ``result`` as final.

        Returns False when the lease was lost.
        """

    def lease_loss(self, lease: Lease) -> LeaseLoss:
        """Why a settling call with ``lease`` just returned False, for the worker's log.

        Only read after the fact, never part of the fenced call, so a broker that cannot
        tell (or cannot be reached now) says :attr:`LeaseLoss.LAPSED`; never raises.
        """
        return LeaseLoss.LAPSED

    @abc.abstractmethod
    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        """Extend leases; return the ids of those no longer held (taken by someone else)."""

    # -- workers ----------------------------------------------------------------------

    @abc.abstractmethod
    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        """Record that ``worker`` is alive for the next ``ttl`` seconds."""

    def heartbeat_all(self, workers: Sequence[WorkerInfo], ttl: float) -> None:
        """Heartbeat several workers (a supervisor and its children) in one round trip
        where the broker can: a supervisor on a slow link must not spend its children's
        heartbeat TTL on one round trip per child."""
        for worker in workers:
            self.heartbeat(worker, ttl)

    @abc.abstractmethod
    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker that stopped cleanly (its leases are already settled)."""

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired."""

    @abc.abstractmethod
    def reap(self) -> int:
        """Release the messages held by workers whose heartbeat expired, or whose lease ran
        out; return how many were released. Deterministic and safe to run from anywhere."""

    # -- results ----------------------------------------------------------------------

    @abc.abstractmethod
    def store_result(self, task_id: str, result: bytes, ttl: float) -> None:
        """Store a non-final state (STARTED, RETRY, progress) unless a final one exists."""

    @abc.abstractmethod
    def get_result(self, task_id: str) -> tuple[bytes, bool] | None:
        """The stored result bytes and whether they are final, or None."""

    def get_results(self, task_ids: Sequence[str]) -> list[tuple[bytes, bool] | None]:
        """What :meth:`get_result` says of each id, in order, in one round trip.

        A group's progress (``GroupResult.completed_count()``, ``ready()``, ``get()``...)
        reads every member: one round trip each made a group of 10,000 cost 10,000. Brokers
        with a network round trip override this; by default it is :meth:`get_result` for
        each id.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> broker.store_result("a", b"{}", 60)
            >>> broker.get_results(["a", "never-sent"])
            [(b'{}', False), None]
        """
        return [self.get_result(task_id) for task_id in task_ids]

    @abc.abstractmethod
    def wait_result(self, task_id: str, timeout: float) -> bytes | None:
        """Block until a final result exists (returned) or ``timeout`` passes (None).

        Wakes within tens of milliseconds of the commit; never a one-second poll.
        """

    @abc.abstractmethod
    def forget_result(self, task_id: str) -> None:
        """Delete a stored result."""

    def forget_results(self, task_ids: Sequence[str]) -> None:
        """Delete the stored results of many ids, in one round trip (an id with no result
        is skipped).

        ``GroupResult.forget()`` deletes every member's result: one round trip each made a
        group of 10,000 cost 10,000. Brokers with a network round trip override this; by
        default it is :meth:`forget_result` for each id.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> broker.store_result("a", b"{}", 60)
            >>> broker.forget_results(["a", "never-sent"])
            >>> broker.get_results(["a", "never-sent"])
            [None, None]
        """
        for task_id in task_ids:
            self.forget_result(task_id)

    @abc.abstractmethod
    def mark_revoked(self, task_ids: Sequence[str], result: bytes, ttl: float) -> list[bool]:
        """Store ``result`` (a REVOKED record) as the revoke mark of each id that has no
        final result, in one round trip; True for each id marked.

        A mark reads as final (:meth:`get_result` says final, :meth:`wait_result` returns
        it), so a revoked task reads REVOKED at once, and :meth:`store_result` leaves it.
        It is not final for everything else: a send of the id is still queued (a workflow
        step revoked before it was sent must still pass through the worker, which settles
        it REVOKED so that its chain or chord carries on), and a complete or dead letter
        replaces it (a task that started after its mark keeps the outcome it really had;
        a revoke marks no task a worker holds, see :meth:`held`).
        A final result already stored is never replaced, nor an existing mark.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> broker.mark_revoked(["a", "a"], b"{}", 60), broker.get_result("a")
            ([True, False], (b'{}', True))
        """

    @abc.abstractmethod
    def held(self, task_ids: Sequence[str]) -> list[bool]:
        """Whether a consumer holds each id's message under a lease now (running it, or
        taken to run it), in one round trip; False for an id queued, delayed, finished or
        unknown.

        A revoke reads it (:func:`celeriac.control.revoke_many`): a held task is not
        marked REVOKED, as its worker settles it, REVOKED if it has not started, else
        with the outcome it really had.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> broker.send([Outgoing(i, "q", b"{}") for i in ("a", "b")])
            [True, True]
            >>> [d.id for d in broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)]
            ['a']
            >>> broker.held(["a", "b", "c"])
            [True, False, False]
        """

    # -- the small store: state for policies (revokes, dedupe, joins, limits, beat) ----

    @abc.abstractmethod
    def kv_set(self, key: str, value: bytes, ttl: float, *, only_if_absent: bool = False) -> bool:
        """Set ``key`` for ``ttl`` seconds; with ``only_if_absent``, only when unset.

        Returns True when the value was written.
        """

    @abc.abstractmethod
    def kv_get(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (None where unset or expired), in one round trip."""

    @abc.abstractmethod
    def kv_delete(self, key: str) -> None:
        """Unset ``key``."""

    @abc.abstractmethod
    def kv_delete_if(self, key: str, value: bytes) -> bool:
        """Unset ``key`` only while it holds ``value``, atomically; True when it did.

        A holder frees its own key with it: read-then-delete could delete the key of a
        later holder that took it between the two calls (after the first one's TTL).
        """

    @abc.abstractmethod
    def join_add(self, key: str, member: str, value: bytes, ttl: float) -> int:
        """Record ``member`` (with ``value``) in the join ``key``; return how many distinct
        members it holds now. Adding a member twice counts it once and keeps the first
        value, so a redelivered chord member never completes a join twice or early.

        ``ttl`` is the life of the whole join, renewed by every add: members may arrive
        further apart in total than ``ttl``. A join with no add for ``ttl`` seconds is
        gone, members and count, and a later add starts a new one."""

    @abc.abstractmethod
    def join_values(self, key: str) -> dict[str, bytes]:
        """Every member of the join ``key`` and its value."""

    @abc.abstractmethod
    def join_delete(self, key: str) -> None:
        """Drop the join ``key``, members and count: the next add starts a new one."""

    @abc.abstractmethod
    def rate_reserve(
        self, key: str, per_second: float, burst: int = 1, max_wait: float = math.inf
    ) -> float:
        """Reserve the next free slot of the rate limiter ``key`` on the broker's clock.

        Slots are ``1 / per_second`` apart, with up to ``burst`` available at once
        (GCRA). Returns the seconds until the reserved slot (0: now). The reservation is
        final: the caller waits that long and then runs without asking again, so a backlog
        of limited tasks costs one call each, never a polling loop.

        ``max_wait``: when the next free slot is more than that many seconds ahead,
        nothing is reserved (the limiter is left as it was) and the wait it would have
        been is returned, so a result over ``max_wait`` means "not reserved". A task that
        expires before its slot passes its expiry here: reserved, the slot would be spent
        by a task that never runs, and every later task would wait one slot longer for it.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> broker.rate_reserve("r", per_second=0.1)  # one slot every 10 s; now is free
            0.0
            >>> 9 < broker.rate_reserve("r", per_second=0.1, max_wait=5) <= 10  # not taken
            True
            >>> 9 < broker.rate_reserve("r", per_second=0.1) <= 10  # the same slot, taken
            True
        """

    @abc.abstractmethod
    def rate_admit(self, key: str, limit: int, period: float) -> float:
        """Admit one start now if fewer than ``limit`` were admitted under ``key`` in the
        last ``period`` seconds (broker clock), and record it; return 0. Otherwise record
        nothing and return the seconds until a start would be admitted. Exact: no window of
        ``period`` seconds ever holds more than ``limit`` admissions. ``period`` is at most
        a day and a bit (a rate of N/d with its margin): a broker may forget admissions
        older than two days, or than ``period`` if it keeps it."""

    @abc.abstractmethod
    def stream_append(self, key: str, items: Sequence[bytes], maxlen: int) -> None:
        """Append to the bounded stream ``key``, keeping only the newest ``maxlen`` items."""

    @abc.abstractmethod
    def stream_read(self, key: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Items of stream ``key`` with a sequence number greater than ``after``, oldest
        first, as (sequence, item); sequence numbers only grow."""

    # -- administration ---------------------------------------------------------------

    @abc.abstractmethod
    def stats(self, ready_at: ReadyAt | None = None) -> list[QueueStats]:
        """Counts for every queue the broker knows of.

        Ready is what a fetch can take: due messages, and held ones whose lease ran out (a
        worker killed with -9); in flight is held under a lease that still runs.

        ``ready_since`` is when the longest-waiting ready message became ready: its send,
        its due time, or its lease's deadline. Memory and SQLite keep that time with each
        message. A Redis entry keeps none (it stays small), so for the messages at the
        heads of its ready lists Redis asks ``ready_at``, and gives None without it.
        ``ready_at`` reads the message's own send time and ETA: on Redis, a message given
        back to a ready list (its worker died, it was deferred) counts from its send, and
        a list whose first message does not say (pickled) leaves ``ready_since`` None
        unless another list or a due message dates the queue.
        """

    @abc.abstractmethod
    def peek(self, queue: str, limit: int) -> list[Waiting]:
        """Up to ``limit`` (at most :data:`~.records.PEEK_LIMIT`) of the messages waiting
        in ``queue``, moved and taken by no one, in the order the next fetches take them:
        the ready ones (highest priority first, then the oldest; a message whose lease
        ran out where its reclaim puts it, after the ready ones of its priority), then the
        delayed ones by due time. Reading stops at the message whose body passes
        :data:`~.records.PEEK_BYTES` in all. Messages held under a running lease are not
        listed. A queue no one used has none.
        """

    def purge(self, queue: str) -> int:
        """Delete ready and delayed messages of a queue (not held ones); return how many.

        The rate limits' waiting lines start afresh too (:data:`RATE_LINES`): the tasks
        deleted held places in them, and a fresh task would have queued up behind them,
        waiting for the whole purged backlog's turn.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> MemoryBroker().purge("default")
            0
        """
        count = self._purge_waiting(queue)
        try:
            self.kv_set(RATE_LINES, str(time.time_ns()).encode(), RATE_LINES_KEPT)
        except BrokerError as exc:  # the purge is done: say what was not, and go on
            _log.warning(
                "purged %d task(s) from queue %s, but could not start the rate limits' "
                "waiting lines afresh (%s): fresh rate-limited tasks may wait for the "
                "purged ones' turns; purge again once the broker accepts writes",
                count,
                queue,
                str(exc).rstrip("."),
            )
        return count

    @abc.abstractmethod
    def _purge_waiting(self, queue: str) -> int:
        """Delete ready and delayed messages of a queue (not held ones); return how many."""

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""

    def find_dead_letters(self, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters with these ids, in no particular order; missing ids are skipped.

        Brokers that can look letters up by id override this; the default reads them all.

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> MemoryBroker().find_dead_letters(["no-such-id"])
            []
        """
        wanted = set(ids)
        return [d for d in self.dead_letters(2**31 - 1) if d.id in wanted]

    @abc.abstractmethod
    def replay_dead_letters(
        self, ids: Sequence[str] | None = None, task: str | None = None, renew: Renew | None = None
    ) -> int:
        """Send dead letters back to their queues with a fresh delivery count.

        ``ids`` picks some, ``task`` picks those of one task name, neither picks all.
        ``renew`` (the app's :meth:`celeriac.codec.Codec.renewed`, bound to now) gives each
        letter's body as a fresh send and its priority; None from it, or no ``renew``, sends
        the body as it is at priority 0.
        """

    @abc.abstractmethod
    def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many."""

    def notes(self) -> list[str]:
        """What an operator reading :meth:`stats` should know about the server, one
        sentence each (``celeriac status`` prints them): e.g. that it is a read-only
        replica. Empty for a broker with nothing to say (the default).

        Example:
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> MemoryBroker().notes()
            []
        """
        return []

    def check_queue_names(self, names: Sequence[str]) -> None:  # noqa: B027 - optional
        """Refuse queue names this broker cannot use, before a worker starts on them.

        Raises:
            ConfigurationError: a name this broker cannot store (Redis: a brace).
        """

    def close(self) -> None:  # noqa: B027 - optional: brokers with no connections need nothing
        """Release connections. The broker may not be used afterwards."""

    async def aclose(self) -> None:  # noqa: B027 - optional, as close()
        """Release async connections (they belong to one event loop)."""

    # -- async faces --------------------------------------------------------------------
    # Without a native async driver, the sync call runs in the broker's own small pool
    # (:class:`AsyncSide`), never in the loop's default executor: that one is the app's
    # (its own ``asyncio.to_thread``), and ``asyncio.run()`` waits for it at shutdown.

    async def off_loop(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` in a thread of this broker's own pool, in this context:
        for a sync call from async code (a broker without an async driver; a send whose
        hooks call the sync face), off the event loop and out of its default executor.

        Example:
            >>> import asyncio
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> asyncio.run(broker.off_loop(broker.get_result, "never-sent")) is None
            True
        """
        from celeriac.brokers.async_waits import AsyncSide, in_pool

        return await in_pool(AsyncSide.of(self).pool, fn, *args, **kwargs)

    async def send_off_loop(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """:meth:`off_loop` for a send that must call the sync face (a dedupe send, a
        workflow's), in a pool of its own: on a frozen broker each waits for the socket
        timeout, and in the short calls' pool four of them held every ``asend`` and
        ``aget_result`` of the process behind them.

        Example:
            >>> import asyncio
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> asyncio.run(broker.send_off_loop(broker.get_result, "never-sent")) is None
            True
        """
        from celeriac.brokers.async_waits import AsyncSide, in_pool

        return await in_pool(AsyncSide.of(self).sends, fn, *args, **kwargs)

    async def asend(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Async face of :meth:`send`."""
        return await self.off_loop(self.send, messages)

    async def aget_result(self, task_id: str) -> tuple[bytes, bool] | None:
        """Async face of :meth:`get_result`."""
        return await self.off_loop(self.get_result, task_id)

    async def aget_results(self, task_ids: Sequence[str]) -> list[tuple[bytes, bool] | None]:
        """Async face of :meth:`get_results`."""
        return await self.off_loop(self.get_results, task_ids)

    def wait_results(
        self, task_ids: Sequence[str], timeout: float, wake: threading.Event
    ) -> dict[str, bytes]:
        """Block until one of ``task_ids`` has a final result, ``timeout`` passes or
        ``wake`` is set; return the final results found, by id (maybe none).

        One call serves every :meth:`await_result` of an event loop. By default it reads
        them all (:meth:`get_results`) every ``_POLL_STEP`` seconds; a broker that learns
        of commits cheaply overrides it to read only after one (SQLite).

        Example:
            >>> import threading
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> broker = MemoryBroker()
            >>> broker.mark_revoked(["a"], b"{}", 60)
            [True]
            >>> broker.wait_results(["a", "never-sent"], 1, threading.Event())
            {'a': b'{}'}
        """
        deadline = time.monotonic() + timeout
        while True:
            stored = self.get_results(task_ids)
            found = {i: s[0] for i, s in zip(task_ids, stored, strict=True) if s and s[1]}
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or wake.wait(min(remaining, _POLL_STEP)):
                return found

    async def await_result(self, task_id: str, timeout: float) -> bytes | None:
        """Async face of :meth:`wait_result`, cancellable.

        All the waits of one event loop on this broker share one poller task
        (:class:`ResultPoll`): it reads every id waited on at once, in one thread of its
        own (:meth:`wait_results`), and wakes each waiter whose result is final. A wait per
        default-executor thread (0.25 s steps) made 300 ``aget()`` calls queue the app's
        own ``asyncio.to_thread`` calls for 12 s. A cancelled wait leaves at once; the
        poller stops when no wait is left. Redis (a native async wait) and memory (the
        commit wakes the loop) override this.

        Example:
            >>> import asyncio
            >>> from celeriac.brokers.memory import MemoryBroker
            >>> asyncio.run(MemoryBroker().await_result("never-sent", 0.1)) is None
            True
        """
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        from celeriac.brokers.async_waits import AsyncSide

        poll = AsyncSide.of(self).poll(self, asyncio.get_running_loop())
        waiter = poll.add(task_id)
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            poll.discard(task_id, waiter)
        if waiter.done():
            return waiter.result()
        # A last look: the poller may not have read an id that was final all along
        # (``await_result(id, 0)`` of a finished task), or one committed just now.
        stored = await self.aget_result(task_id)
        return stored[0] if stored is not None and stored[1] else None

    async def astore_result(self, task_id: str, result: bytes, ttl: float) -> None:
        """Async face of :meth:`store_result`."""
        await self.off_loop(self.store_result, task_id, result, ttl)
