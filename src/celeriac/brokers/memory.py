"""``memory://``: an in-process broker for tests and eager mode.

It keeps the whole contract of :mod:`celeriac.brokers.base` (leases, fencing, delayed
messages, priorities, dead letters) so code tested against it behaves the same on Redis.
Only threads of the process that created it can reach it: a worker process cannot.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from celeriac.brokers.base import Broker
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
    clamped_priority,
    peek_bounds,
    queue_stats,
    replayed,
    within_bytes,
)

if TYPE_CHECKING:
    import asyncio

    #: An async result waiter: its event loop and the future the final result is set on.
    _AsyncWait = tuple[asyncio.AbstractEventLoop, asyncio.Future[bytes]]


@dataclass(slots=True)
class _Entry:
    id: str
    queue: str
    body: bytes
    priority: int
    due: float
    seq: int
    deliveries: int = 0
    token: str | None = None  # set while held
    holder: str | None = None
    lease_deadline: float = 0.0


def _peek_order(entry: _Entry) -> tuple[int, bool, float, int]:
    """The order the next fetches take ready entries: highest priority first, then the
    oldest; an entry whose lease ran out after the ready ones of its priority (its reclaim
    makes it due now), by deadline."""
    lapsed = entry.token is not None
    return -entry.priority, lapsed, entry.lease_deadline if lapsed else entry.due, entry.seq


def _settle(waiter: asyncio.Future[bytes], result: bytes) -> None:
    if not waiter.done():  # its wait may have timed out or been cancelled meanwhile
        waiter.set_result(result)


class MemoryBroker(Broker):
    """The in-process broker. ``Celeriac(broker="memory://")`` gives one.

    Example:
        >>> from celeriac.brokers.base import Outgoing
        >>> b = MemoryBroker()
        >>> b.send([Outgoing(id="t1", queue="default", body=b"{}")])
        [True]
        >>> [d.id for d in b.fetch(["default"], "me", limit=1, lease_seconds=30, timeout=0)]
        ['t1']
    """

    in_process_only = True

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._seq = itertools.count()
        self._entries: dict[str, _Entry] = {}
        self._ready: dict[str, list[tuple[int, float, int, str]]] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._queues: set[str] = set()
        self._reclaimed_at = 0.0
        self._results: dict[str, tuple[bytes, bool, float]] = {}
        self._marks: set[str] = set()  # ids whose stored final result is a revoke mark
        self._dead: dict[str, DeadLetter] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._worker_expiry: dict[str, float] = {}
        self._kv: dict[str, tuple[bytes, float]] = {}
        self._joins: dict[str, tuple[dict[str, bytes], float]] = {}
        self._limiters: dict[str, float] = {}  # theoretical arrival time of the next slot
        self._admitted: dict[str, list[float]] = {}  # newest admissions, oldest first
        self._streams: dict[str, tuple[int, list[tuple[int, bytes]]]] = {}
        # Async result waiters by id: a final result wakes their loop itself, no thread.
        self._async_waits: dict[str, list[_AsyncWait]] = {}

    # -- producing ----------------------------------------------------------------------

    def send(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store messages; True for each new id."""
        now = time.time()
        created: list[bool] = []
        with self._lock:
            for out in messages:
                if out.id in self._entries or self._is_final(out.id, now):
                    created.append(False)
                    continue
                due = max(out.eta or now, now) if out.eta else now
                priority = clamped_priority(out.priority)
                entry = _Entry(out.id, out.queue, out.body, priority, due, next(self._seq))
                self._entries[out.id] = entry
                self._queues.add(out.queue)
                self._place(entry, now)
                created.append(True)
            self._lock.notify_all()
        return created

    def _place(self, entry: _Entry, now: float) -> None:
        if entry.due > now:
            heapq.heappush(self._delayed, (entry.due, entry.seq, entry.id))
        else:
            key = (-entry.priority, entry.due, entry.seq, entry.id)
            heapq.heappush(self._ready.setdefault(entry.queue, []), key)

    def _is_final(self, task_id: str, now: float) -> bool:
        """A final result, not a revoke mark, is stored: the task finished."""
        return self._has_final(task_id, now) and task_id not in self._marks

    def _has_final(self, task_id: str, now: float) -> bool:
        stored = self._results.get(task_id)
        return stored is not None and stored[1] and stored[2] > now

    def _store_final(self, task_id: str, result: bytes, ttl: float) -> None:
        self._results[task_id] = (result, True, time.time() + ttl)
        self._marks.discard(task_id)
        self._wake_async(task_id, result)

    def _wake_async(self, task_id: str, result: bytes) -> None:
        """Hand a final result to the async waiters on ``task_id`` (under the lock)."""
        for loop, waiter in self._async_waits.pop(task_id, ()):
            # RuntimeError: the waiter's loop was closed without ending the wait.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, waiter, result)

    # -- consuming ----------------------------------------------------------------------

    def fetch(
        self,
        queues: Sequence[str],
        consumer: str,
        *,
        limit: int,
        lease_seconds: float,
        timeout: float,
    ) -> list[Delivery]:
        """Take up to ``limit`` due messages, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                taken = self._take(queues, consumer, limit, lease_seconds)
                remaining = deadline - time.monotonic()
                if taken or remaining <= 0:
                    return taken
                next_due = self._delayed[0][0] - time.time() if self._delayed else remaining
                self._lock.wait(min(remaining, max(next_due, 0.001), 0.5))

    def _take(
        self, queues: Sequence[str], consumer: str, limit: int, lease_seconds: float
    ) -> list[Delivery]:
        now = time.time()
        if now - self._reclaimed_at > 0.25:  # a full scan: not on every fetch
            self._reclaim_expired(now)
        self._promote(now)
        taken: list[Delivery] = []
        while len(taken) < limit:
            best: list[tuple[int, float, int, str]] | None = None
            for queue in queues:
                heap = self._ready.get(queue)
                while heap and not self._is_live(heap[0]):
                    heapq.heappop(heap)
                # Priority first; at equal priority the queue named first, as on Redis.
                if heap and (best is None or heap[0][0] < best[0][0]):
                    best = heap
            if best is None:
                break
            entry = self._entries[heapq.heappop(best)[3]]
            entry.deliveries += 1
            entry.token = uuid.uuid4().hex
            entry.holder = consumer
            entry.lease_deadline = now + lease_seconds
            lease = Lease(entry.id, entry.queue, entry.token)
            taken.append(Delivery(lease, entry.body, entry.deliveries, entry.priority))
        return taken

    def _is_live(self, key: tuple[int, float, int, str]) -> bool:
        entry = self._entries.get(key[3])
        return entry is not None and entry.token is None and entry.seq == key[2]

    def _promote(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, task_id = heapq.heappop(self._delayed)
            entry = self._entries.get(task_id)
            if entry is not None and entry.token is None and entry.seq == seq:
                heapq.heappush(
                    self._ready.setdefault(entry.queue, []),
                    (-entry.priority, entry.due, entry.seq, entry.id),
                )

    def _reclaim_expired(self, now: float) -> int:
        self._reclaimed_at = now
        dead_workers = {w for w, exp in self._worker_expiry.items() if exp <= now}
        released = 0
        for entry in self._entries.values():
            if entry.token is not None and (
                entry.lease_deadline <= now or entry.holder in dead_workers
            ):
                self._release(entry, now, delay=0.0)
                released += 1
        for worker_id in dead_workers:
            self._workers.pop(worker_id, None)
            self._worker_expiry.pop(worker_id, None)
        return released

    def _release(self, entry: _Entry, now: float, delay: float, *, front: bool = False) -> None:
        entry.token = entry.holder = None
        if not (front and delay <= 0):  # else its due time and sequence as sent: its place
            entry.due = now + delay
            entry.seq = next(self._seq)
        self._place(entry, now)

    def _held(self, lease: Lease) -> _Entry | None:
        entry = self._entries.get(lease.id)
        if entry is None or entry.token != lease.token:
            return None
        return entry

    def complete(self, lease: Lease, result: bytes | None, result_ttl: float) -> bool:
        """Remove a held message and store its final result (fenced)."""
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            del self._entries[lease.id]
            if result is not None:
                self._store_final(lease.id, result, result_ttl)
            self._lock.notify_all()
            return True

    def requeue(
        self,
        lease: Lease,
        *,
        delay: float = 0.0,
        body: bytes | None = None,
        count_delivery: bool = True,
        front: bool = False,
    ) -> bool:
        """Put a held message back, due after ``delay`` seconds (fenced); ``front``: where
        it was (see :meth:`Broker.requeue`)."""
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            if body is not None:
                entry.body = body
            if body is not None and count_delivery:
                entry.deliveries = 0  # a retry starts counting again
            elif not count_delivery:
                entry.deliveries = max(entry.deliveries - 1, 0)
            self._release(entry, time.time(), delay, front=front)
            self._lock.notify_all()
            return True

    def dead_letter(self, lease: Lease, letter: DeadLetter, result: bytes | None) -> bool:
        """Move a held message to the dead-letter store (fenced)."""
        with self._lock:
            entry = self._held(lease)
            if entry is None:
                return False
            del self._entries[lease.id]
            self._dead.pop(letter.id, None)
            self._dead[letter.id] = letter
            if result is not None:
                self._store_final(lease.id, result, 86_400 * 7)
            self._lock.notify_all()
            return True

    def lease_loss(self, lease: Lease) -> LeaseLoss:
        """Why a settling call with ``lease`` found it lost."""
        with self._lock:
            entry = self._entries.get(lease.id)
            if entry is not None:
                return LeaseLoss.REQUEUED if entry.token is None else LeaseLoss.TAKEN
            return LeaseLoss.FINISHED if self._is_final(lease.id, time.time()) else LeaseLoss.GONE

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        """Extend held leases; return the ids that were lost."""
        lost: list[str] = []
        with self._lock:
            now = time.time()
            for lease in leases:
                entry = self._held(lease)
                if entry is None:
                    lost.append(lease.id)
                else:
                    entry.lease_deadline = now + lease_seconds
        return lost

    # -- workers ------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        """Record a live worker."""
        with self._lock:
            now = time.time()
            self._workers[worker.id] = msgspec.structs.replace(worker, heartbeat_at=now)
            self._worker_expiry[worker.id] = now + ttl

    def forget_worker(self, worker_id: str) -> None:
        """Drop a worker that stopped cleanly."""
        with self._lock:
            self._workers.pop(worker_id, None)
            self._worker_expiry.pop(worker_id, None)

    def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired."""
        with self._lock:
            now = time.time()
            return [w for w in self._workers.values() if self._worker_expiry[w.id] > now]

    def reap(self) -> int:
        """Release messages of dead workers and of expired leases."""
        with self._lock:
            released = self._reclaim_expired(time.time())
            if released:
                self._lock.notify_all()
            return released

    # -- results ------------------------------------------------------------------------

    def store_result(self, task_id: str, result: bytes, ttl: float) -> None:
        """Store a non-final state unless a final one exists."""
        with self._lock:
            if not self._has_final(task_id, time.time()):  # nor a revoke mark
                self._results[task_id] = (result, False, time.time() + ttl)

    def get_result(self, task_id: str) -> tuple[bytes, bool] | None:
        """The stored result and whether it is final."""
        with self._lock:
            stored = self._results.get(task_id)
            if stored is None or stored[2] <= time.time():
                return None
            return stored[0], stored[1]

    def get_results(self, task_ids: Sequence[str]) -> list[tuple[bytes, bool] | None]:
        """What :meth:`get_result` says of each id, read together under one lock."""
        with self._lock:
            now = time.time()
            found = [self._results.get(task_id) for task_id in task_ids]
        return [None if s is None or s[2] <= now else (s[0], s[1]) for s in found]

    def wait_result(self, task_id: str, timeout: float) -> bytes | None:
        """Block until a final result exists or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                stored = self._results.get(task_id)
                if stored is not None and stored[1] and stored[2] > time.time():
                    return stored[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def _final_result(self, task_id: str) -> bytes | None:
        stored = self._results.get(task_id)
        return stored[0] if stored is not None and stored[1] and stored[2] > time.time() else None

    async def await_result(self, task_id: str, timeout: float) -> bytes | None:
        """Async face of :meth:`wait_result`: the commit wakes the waiting loop itself
        (``call_soon_threadsafe``), so a wait holds no thread at all.

        Example:
            >>> import asyncio
            >>> asyncio.run(MemoryBroker().await_result("never-sent", 0.01)) is None
            True
        """
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes] = loop.create_future()
        with self._lock:
            found = self._final_result(task_id)
            if found is not None:
                return found
            self._async_waits.setdefault(task_id, []).append((loop, waiter))
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            with self._lock:
                waits = self._async_waits.get(task_id, [])
                with contextlib.suppress(ValueError):  # already popped by the commit
                    waits.remove((loop, waiter))
                if not waits:
                    self._async_waits.pop(task_id, None)
        if waiter.done():
            return waiter.result()
        with self._lock:  # a commit whose wake-up had not run yet when the time was up
            return self._final_result(task_id)

    def forget_result(self, task_id: str) -> None:
        """Delete a stored result."""
        with self._lock:
            self._results.pop(task_id, None)
            self._marks.discard(task_id)

    def forget_results(self, task_ids: Sequence[str]) -> None:
        """Delete the stored results of many ids, under one lock."""
        with self._lock:
            for task_id in task_ids:
                self._results.pop(task_id, None)
                self._marks.discard(task_id)

    def mark_revoked(self, task_ids: Sequence[str], result: bytes, ttl: float) -> list[bool]:
        """Store a revoke mark for each id without a final result (or a mark)."""
        marked: list[bool] = []
        with self._lock:
            now = time.time()
            for task_id in task_ids:
                fresh = not self._has_final(task_id, now)
                if fresh:
                    self._results[task_id] = (result, True, now + ttl)
                    self._marks.add(task_id)
                    self._wake_async(task_id, result)
                marked.append(fresh)
            self._lock.notify_all()
        return marked

    def held(self, task_ids: Sequence[str]) -> list[bool]:
        """Whether a consumer holds each id's message now."""
        with self._lock:
            entries = [self._entries.get(task_id) for task_id in task_ids]
            return [entry is not None and entry.token is not None for entry in entries]

    # -- the small store ----------------------------------------------------------------

    def kv_set(self, key: str, value: bytes, ttl: float, *, only_if_absent: bool = False) -> bool:
        """Set a key for ``ttl`` seconds (only when unset, if asked)."""
        with self._lock:
            now = time.time()
            held = self._kv.get(key)
            if only_if_absent and held is not None and held[1] > now:
                return False
            self._kv[key] = (value, now + ttl)
            return True

    def kv_get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of keys, None where unset or expired."""
        with self._lock:
            now = time.time()
            found = [self._kv.get(k) for k in keys]
            return [v[0] if v is not None and v[1] > now else None for v in found]

    def kv_delete(self, key: str) -> None:
        """Unset a key."""
        with self._lock:
            self._kv.pop(key, None)

    def kv_delete_if(self, key: str, value: bytes) -> bool:
        """Unset a key only while it holds ``value``."""
        with self._lock:
            held = self._kv.get(key)
            if held is None or held[0] != value or held[1] <= time.time():
                return False
            del self._kv[key]
            return True

    def join_add(self, key: str, member: str, value: bytes, ttl: float) -> int:
        """Add a member once; return the number of distinct members.

        The whole join lives ``ttl`` seconds from its latest add; an add after that starts
        a new join, as on Redis.
        """
        with self._lock:
            now = time.time()
            members, expires = self._joins.get(key, ({}, 0.0))
            if expires <= now:
                members = {}
            members.setdefault(member, value)
            self._joins[key] = (members, now + ttl)
            return len(members)

    def join_values(self, key: str) -> dict[str, bytes]:
        """Every member of a join and its value."""
        with self._lock:
            members, expires = self._joins.get(key, ({}, 0.0))
            return dict(members) if expires > time.time() else {}

    def join_delete(self, key: str) -> None:
        """Drop a join, members and count."""
        with self._lock:
            self._joins.pop(key, None)

    def rate_reserve(
        self, key: str, per_second: float, burst: int = 1, max_wait: float = math.inf
    ) -> float:
        """Reserve the next free slot, unless it is more than ``max_wait`` ahead (then
        nothing changes); return the seconds until it."""
        with self._lock:
            now = time.time()
            interval = 1.0 / per_second
            tat = max(self._limiters.get(key, now), now)
            slot = max(now, tat - (burst - 1) * interval)
            if slot - now <= max_wait:
                self._limiters[key] = tat + interval
            return slot - now

    def rate_admit(self, key: str, limit: int, period: float) -> float:
        """Admit a start if the window has room; else the seconds until it will."""
        with self._lock:
            now = time.time()
            log = self._admitted.setdefault(key, [])
            if len(log) >= limit and log[-limit] > now - period:
                return log[-limit] + period - now
            log.append(now)
            del log[:-limit]
            return 0.0

    def stream_append(self, key: str, items: Sequence[bytes], maxlen: int) -> None:
        """Append to a bounded stream."""
        with self._lock:
            seq, entries = self._streams.get(key, (0, []))
            for item in items:
                seq += 1
                entries.append((seq, item))
            self._streams[key] = (seq, entries[-maxlen:])
            self._lock.notify_all()

    def stream_read(self, key: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Items after a sequence number, oldest first."""
        with self._lock:
            _, entries = self._streams.get(key, (0, []))
            return [e for e in entries if e[0] > after][:limit]

    # -- administration -----------------------------------------------------------------

    def stats(self, ready_at: ReadyAt | None = None) -> list[QueueStats]:
        """Counts per queue, and since when its longest-waiting ready message has been
        ready (kept with each message: ``ready_at`` is not needed)."""
        with self._lock:
            now = time.time()
            counts: dict[str, list[int]] = {q: [0, 0, 0, 0] for q in self._queues}
            since: dict[str, float] = {}
            for entry in self._entries.values():
                row = counts.setdefault(entry.queue, [0, 0, 0, 0])
                if entry.token is not None and entry.lease_deadline > now:
                    row[2] += 1
                    continue
                if entry.token is not None:  # its lease ran out: a fetch takes it
                    ready = entry.lease_deadline
                elif entry.due > now:
                    row[1] += 1
                    continue
                else:
                    ready = entry.due
                row[0] += 1
                since[entry.queue] = min(since.get(entry.queue, ready), ready)
            for letter in self._dead.values():
                counts.setdefault(letter.queue, [0, 0, 0, 0])[3] += 1
            return [queue_stats(q, row, since.get(q)) for q, row in sorted(counts.items())]

    def peek(self, queue: str, limit: int) -> list[Waiting]:
        """Waiting messages of ``queue`` in the order the next fetches take them (see
        :meth:`Broker.peek`)."""
        with self._lock:
            now = time.time()
            mine = [e for e in self._entries.values() if e.queue == queue]
            ready = sorted(
                (e for e in mine if (e.lease_deadline if e.token else e.due) <= now),
                key=_peek_order,
            )
            later = sorted(
                (e for e in mine if e.token is None and e.due > now), key=lambda e: (e.due, e.seq)
            )
            return within_bytes(
                [
                    Waiting(e.id, e.body, e.priority, e.deliveries, e.due if e.due > now else None)
                    for e in (ready + later)[: peek_bounds(limit)]
                ]
            )

    def _purge_waiting(self, queue: str) -> int:
        """Delete ready and delayed messages of ``queue``."""
        with self._lock:
            doomed = [e.id for e in self._entries.values() if e.queue == queue and e.token is None]
            for task_id in doomed:
                del self._entries[task_id]
            return len(doomed)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Newest dead letters first."""
        with self._lock:
            return list(reversed(self._dead.values()))[:limit]

    def replay_dead_letters(
        self, ids: Sequence[str] | None = None, task: str | None = None, renew: Renew | None = None
    ) -> int:
        """Send chosen dead letters back to their queues."""
        with self._lock:
            chosen = [
                letter
                for letter in self._dead.values()
                if (ids is None or letter.id in ids) and (task is None or letter.task == task)
            ]
            for letter in chosen:
                del self._dead[letter.id]
                self._results.pop(letter.id, None)
                self._marks.discard(letter.id)
        outgoing = []
        for x in chosen:
            body, priority = replayed(x.body, renew)
            outgoing.append(Outgoing(id=x.id, queue=x.queue, body=body, priority=priority))
        self.send(outgoing)
        return len(chosen)

    def purge_dead_letters(self) -> int:
        """Delete every dead letter."""
        with self._lock:
            count = len(self._dead)
            self._dead.clear()
            return count
