"""What brokers take and hand out: messages to store, leases and deliveries, queue counts,
dead letters, live workers, and why a lease was lost.

The records of the broker contract (:mod:`celeriac.brokers.base`), kept apart from it so
each module stays small; producers, workers and the command line use them without the
contract's machinery.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import msgspec

# Outgoing, Lease and Delivery are made once per message sent or taken: immutable structs
# built in C (a frozen dataclass's __init__ costs ~8,000 instructions, 10% of a batch
# send per message), outside the cyclic GC since they cannot hold a cycle.


#: Rewrites a dead letter's body for replay: (new body, priority), or None to keep it.
Renew = Callable[[bytes], "tuple[bytes, int] | None"]


def replayed(body: bytes, renew: Renew | None) -> tuple[bytes, int]:
    """The body and priority a dead letter is replayed with: renewed when ``renew`` can,
    else as it is, at priority 0.

    Example:
        >>> replayed(b"junk", None), replayed(b"junk", lambda body: None)
        ((b'junk', 0), (b'junk', 0))
    """
    return (renew(body) if renew else None) or (body, 0)


def clamped_priority(priority: int) -> int:
    """The priority every broker stores: 0..9, the nearer end for one outside (the API
    refuses such a priority; a message built by hand is not checked).

    Example:
        >>> clamped_priority(-1), clamped_priority(4), clamped_priority(12)
        (0, 4, 9)
    """
    return min(max(priority, 0), 9)


#: How ids a broker makes up begin: bytes pushed into a Redis list by hand have no id of
#: their own, so fetch holds them under ``"\x00raw-<n>"`` (brokers/redis/keys.py).
MADE_UP_ID = "\x00raw-"


class Outgoing(msgspec.Struct, frozen=True, gc=False):
    """A message ready to store: its routing facts and its encoded bytes."""

    id: str
    queue: str
    body: bytes
    priority: int = 0
    eta: float | None = None  # absolute Unix time; None: due now


class Lease(msgspec.Struct, frozen=True, gc=False):
    """Proof that a consumer holds a message: the fencing token from the fetch."""

    id: str
    queue: str
    token: str


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """A message handed to a consumer under a lease."""

    lease: Lease
    body: bytes
    deliveries: int  # hand-outs so far, this one included
    priority: int = 0

    @property
    def id(self) -> str:
        """The task id."""
        return self.lease.id

    @property
    def queue(self) -> str:
        """The queue the message came from."""
        return self.lease.queue


#: Reads, from a message's bytes, when it became ready to run (Unix seconds: when it was
#: sent, or its ETA when that is later), or None when the bytes do not say.
ReadyAt = Callable[[bytes], "float | None"]


class QueueStats(msgspec.Struct, frozen=True):
    """Counts for one queue, as ``celeriac status`` shows them, and since when the task
    that has waited longest to start has been ready (Unix seconds; None when no task is
    ready, or when the broker cannot tell: see :meth:`Broker.stats`).

    Example:
        >>> QueueStats("emails", 3, 0, 1, 0, ready_since=1000.0).waited(1012.5)
        12.5
        >>> QueueStats("emails", 0, 0, 0, 0).waited(1012.5)
        0.0
        >>> QueueStats("emails", 3, 0, 0, 0).waited(1012.5) is None  # ready, since unknown
        True
    """

    queue: str
    ready: int
    delayed: int
    in_flight: int
    dead: int
    ready_since: float | None = None

    def waited(self, now: float) -> float | None:
        """How long, at ``now``, the longest-waiting ready task has waited to start: 0.0
        when none is ready, None when tasks are ready but since when is unknown, and never
        below 0 (a producer's clock ahead of this one's)."""
        if self.ready_since is not None:
            return max(now - self.ready_since, 0.0)
        return None if self.ready else 0.0


#: Most messages one :meth:`Broker.peek` reads.
PEEK_LIMIT = 10_000
#: Most bytes of bodies one :meth:`Broker.peek` reads (it stops at the message that passes
#: it): a queue of 200 KB bodies held a Redis busy, and every client waiting, for 17 s.
PEEK_BYTES = 16 * 1024 * 1024


class Waiting(msgspec.Struct, frozen=True):
    """A message waiting in its queue, as :meth:`Broker.peek` reads it without taking it.

    ``due`` is the time a delayed message comes due (it may have passed: the next fetch
    moves it), None for one that is ready, or held under a lease that ran out. ``id`` is
    "" for bytes pushed into a Redis list by hand (not an entry), which a fetch gives an
    id and dead-letters.
    """

    id: str
    body: bytes
    priority: int
    deliveries: int
    due: float | None = None


def peek_bounds(limit: int) -> int:
    """``limit`` kept within 0..PEEK_LIMIT (a negative LIMIT is "no limit" to SQLite).

    Example:
        >>> peek_bounds(-1), peek_bounds(20), peek_bounds(10**9)
        (0, 20, 10000)
    """
    return max(0, min(limit, PEEK_LIMIT))


def within_bytes(waiting: list[Waiting]) -> list[Waiting]:
    """The first of ``waiting`` whose bodies stay within PEEK_BYTES, the one that passes
    it included (one is always kept), as every broker's peek cuts them.

    Example:
        >>> big = Waiting("a", b"x" * PEEK_BYTES, 0, 0)
        >>> [w.id for w in within_bytes([big, Waiting("b", b"", 0, 0)])]
        ['a']
    """
    total = 0
    for index, w in enumerate(waiting):
        if index and total >= PEEK_BYTES:
            return waiting[:index]
        total += len(w.body)
    return waiting


def queue_stats(queue: str, counts: list[int], ready_since: float | None) -> QueueStats:
    """A queue's stats from its counts in field order (ready, delayed, in flight, dead).

    Example:
        >>> queue_stats("emails", [3, 0, 1, 0], None).in_flight
        1
    """
    ready, delayed, in_flight, dead = counts
    return QueueStats(queue, ready, delayed, in_flight, dead, ready_since)


class DeadLetter(msgspec.Struct, frozen=True):
    """A message that will not be run again unless replayed, and why."""

    id: str
    queue: str
    task: str
    reason: str
    body: bytes
    deliveries: int
    error: str
    dead_at: float


class LeaseLoss(enum.Enum):
    """Why a settling call found its lease lost (:meth:`Broker.lease_loss`), in the words
    of the worker's log line: what became of the message, and what that means."""

    LAPSED = (
        "its lease lapsed and the broker handed the message out again (to its queue or to "
        "another worker); whichever worker settles it decides its outcome"
    )
    TAKEN = (
        "another worker took it after this worker's lease lapsed (the task outran its "
        "lease while renewals failed, or this worker was frozen); that worker's outcome "
        "stands"
    )
    REQUEUED = "the message is back in its queue and no worker holds it; it will run again"
    FINISHED = (
        "another worker took it after this worker's lease lapsed and finished it; that "
        "worker's outcome stands"
    )
    GONE = (
        "the broker no longer holds it: another worker finished it after this worker's "
        "lease lapsed, or it was purged, or the broker lost it. If no result is stored, "
        "send the task again"
    )
    VANISHED = (
        "the broker no longer holds this message and never handed it out again: it lost "
        "its data (Redis restarted without persistence, was flushed, or failed over to a "
        "replica that had not received it) or its keys were deleted. Its result was not "
        "stored and it will not run again unless it is sent again"
    )


class WorkerInfo(msgspec.Struct, frozen=True):
    """A live worker as its heartbeat describes it."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: float
    heartbeat_at: float = 0.0
    extra: dict[str, object] = msgspec.field(default_factory=dict)
