"""``redis://``: the production broker — Lua state transitions, one round trip per task.

Data layout (all keys of a queue under its hash tag ``<prefix>:{<queue>}``):

* ``:ready:0`` .. ``:ready:9`` — one list per priority. An element is a 7-byte header
  (magic, priority, delivery count, id length), the compact id and the message body, so a
  waiting message is one list element plus one small index entry: about 175 bytes of Redis
  memory for a 106-byte message, measured over 10,000 (Celery ~1,030, Dramatiq ~394).
* ``:ids:0`` .. ``:ids:1020`` — the id index (small listpack hashes): an id is here from
  send until it is completed or dead-lettered, which makes send idempotent.
* ``:delayed`` — sorted set by due time; due entries are promoted inside every fetch.
* ``:held`` + ``:leases`` — what is out under a lease: token, consumer and entry, and the
  lease deadline on Redis's clock. Tokens come from ``:seq`` (monotonic: fencing tokens).
* ``:wake`` — a short list that idle fetchers BLPOP on; send and requeue push to it.
* ``:dead`` + ``:dead_at`` — dead letters with reason and raw bytes, and their order.
* ``:outbox`` — Cluster only, see below.

Outside any queue: ``<prefix>:queues`` (every queue name, for stats), ``<prefix>:{workers}``
(heartbeats: a sorted set of expiry times on Redis's clock, and descriptions), and per
task ``<prefix>:r:{<id>}`` (the result: ``F`` + bytes when final, ``P`` + bytes for
progress) with the pub/sub channel ``<prefix>:done:<id>``. The small store for policies
uses one key each: ``<prefix>:kv:<key>``, ``:join:``, ``:rate:``, ``:admit:``, ``:stream:``.

Order: strict priority, then list order — the order messages became ready (send order;
a delayed, requeued or reclaimed message joins the tail when it becomes due, at most one
fetch after its due time), then, between queues of equal priority, the order they are
named in.

Needs Redis 7.0 or newer (LMPOP); the first call checks it.

Results and Cluster. Readers know only a task id, so a result lives under the id's own
hash tag; the queue's scripts live under the queue's. On a standalone server a settling
script writes the result key and publishes the wake-up in the same atomic step as the
ack. In Redis Cluster (``?cluster=1``) those keys are in different slots, so the script
parks the result in the queue's ``:outbox`` hash — still atomic with the ack, so a commit
is never lost — and the client then copies it to the result key and deletes the parked
copy. If that client dies in between, the reaper (run by every worker) finishes the copy.
Cluster trade-offs: a result appears a moment after the commit; send's "already
finished" check reads result keys just before the script, so a send racing the commit of
the same id may queue it again (fetch reads the result keys of what it took and acks such
a copy without handing it out, unless the first copy is still running then: it runs
twice, as any at-least-once delivery may); and fetching from several queues peeks at each
queue's best priority, then takes from the best queue first, its lower priorities
included, before the next queue: strict between the queues' best messages, not across a
whole prefetched batch (with ``worker_prefetch_multiplier=1`` and one slot, strict).

Waiting for a result subscribes to the task's channel, then reads the result key: every
waiter of the channel is subscribed (the async face shares one pub/sub connection per
event loop, replaced when it drops), so all of them wake the moment the commit publishes.
Classic PUBLISH reaches subscribers on any Cluster node.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from celeriac.brokers.base import Broker
from celeriac.brokers.landing import Landing
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
from celeriac.brokers.redis import admin, ops, startup, store
from celeriac.brokers.redis.connection import RedisURL
from celeriac.brokers.redis.driver import SyncDriver
from celeriac.brokers.redis.keys import Keyspace
from celeriac.brokers.redis.steps import Plan
from celeriac.brokers.redis.wire import Wire, opener
from celeriac.errors import BrokerError

if TYPE_CHECKING:
    from celeriac.brokers.redis.async_driver import AsyncDriver
    from celeriac.brokers.redis.cluster_driver import ClusterDriver

T = TypeVar("T")


class _WorkerRow(msgspec.Struct):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    heartbeat_at: float
    extra: dict[str, Any]


class RedisBroker(Broker):
    """The Redis broker. ``Celeriac(broker="redis://localhost:6379/0")`` gives one.

    Nothing connects until the first call, which also checks the server once: an evicting
    ``maxmemory-policy`` is refused (:class:`~celeriac.errors.ConfigurationError`) and
    persistence being off is logged as a warning.

    Example:
        >>> broker = RedisBroker("redis://localhost:6379/0?prefix=myapp")
        >>> broker.keys.queue("emails").tag
        b'myapp:{emails}'
        >>> broker.close()
    """

    async_native = True

    def __init__(self, url: str) -> None:
        self.url = RedisURL.parse(url)
        self.keys = Keyspace(self.url.prefix)
        block = min(ops.MAX_BLOCK, self.url.socket_timeout / 2)
        self._ctx = ops.Context(self.keys, self.url.cluster, set(), max_block=block)
        self._sync = self._sync_driver()
        self._async_driver: AsyncDriver | None = None  # made by the first async call
        # Forked by a process that just checked this server: not again (startup.parent_passed).
        self._checked = startup.parent_passed(self.url.safe)
        if self._checked:
            self._ctx.block_tick = startup.inherited_tick(self.url.safe)
        # Cluster routes each call through redis-py, which cannot leave a reply unread.
        self.overlaps_calls = not self.url.cluster

    def _sync_driver(self) -> SyncDriver | ClusterDriver:
        """The sync face's driver: celeriac's own client on a standalone Redis (no
        redis-py: see wire.py), redis-py's Cluster client on a Cluster."""
        if self.url.cluster:
            from celeriac.brokers.redis.cluster_driver import ClusterDriver

            return ClusterDriver(self.url.cluster_client(), self.url.safe)
        wire = Wire(opener(self.url.redis_url, self.url.socket_timeout))
        return SyncDriver(wire, self.url.safe)

    @property
    def _async(self) -> AsyncDriver:
        """The async face's driver (redis.asyncio), made on first use: a process that
        never awaits does not load redis-py for it."""
        if self._async_driver is None:
            from celeriac.brokers.redis.async_clients import AsyncClients
            from celeriac.brokers.redis.async_driver import AsyncDriver

            self._async_driver = AsyncDriver(AsyncClients(self.url), self.url.safe)
        return self._async_driver

    def _run(self, plan: Plan[T], what: str) -> T:
        if not self._checked:
            self.check()
        return self._sync.run(plan, what)

    async def _arun(self, plan: Plan[T], what: str) -> T:
        if not self._checked:
            await self._async.run(
                startup.check_server(self._ctx, self.url.safe), "check the server"
            )
            startup.record_pass(self.url.safe, self._ctx)
            self._checked = True
        return await self._async.run(plan, what)

    def check(self) -> None:
        """Check the server now (see the class docstring) instead of at the first call.

        Raises:
            ConfigurationError: the server may evict keys.
            BrokerConnectionError: the server cannot be reached.
        """
        self._sync.run(startup.check_server(self._ctx, self.url.safe), "check the server")
        startup.record_pass(self.url.safe, self._ctx)
        self._checked = True

    def close(self) -> None:
        """Close this broker's idle connections (async ones of loops not running); one
        in use by another thread is left to the call using it, which goes on."""
        self._sync.close()
        if self._async_driver is not None:
            self._async_driver.clients.close()

    async def aclose(self) -> None:
        """Close the running event loop's idle connections (see
        :meth:`AsyncClients.aclose`); calls in flight in other tasks go on. The rest are
        closed when the loop ends."""
        if self._async_driver is not None:
            await self._async_driver.clients.aclose()

    # -- producing ----------------------------------------------------------------------

    def send(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store messages in one round trip; True for each new id."""
        one = ops.one_send(self._ctx, messages)
        if one is None or not self._checked:
            return self._run(ops.send(self._ctx, messages), "send messages")
        # One delay(): its one script call without the plan around it (the generator, its
        # driving loop), ~9 % of a delay()'s time (docs/benchmarks.md, "One delay(), no plan").
        try:
            reply = self._sync.call(one, "send messages")
        except BrokerError as exc:
            ops.say_maybe_queued(exc, 1)
            raise
        return [reply == 1]

    async def asend(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Async face of :meth:`send`, on redis.asyncio."""
        return await self._arun(ops.send(self._ctx, messages), "send messages")

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
        """Take up to ``limit`` due messages atomically, waiting up to ``timeout`` seconds."""
        plan = ops.fetch(
            self._ctx, queues, consumer, limit=limit, lease_seconds=lease_seconds, timeout=timeout
        )
        return self._run(plan, f"fetch from {', '.join(queues)}")

    def complete(self, lease: Lease, result: bytes | None, result_ttl: float) -> bool:
        """Ack a held message and store its final result in one fenced script."""
        return self._run(
            ops.complete(self._ctx, lease, result, result_ttl), f"complete task {lease.id}"
        )

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
        """Complete one message and take the next ones in one script call."""
        committed, more = self.complete_many(
            [(lease, result)],
            result_ttl,
            queues,
            consumer,
            limit=limit,
            lease_seconds=lease_seconds,
        )
        return committed[0], more

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
        """Complete several messages and take the next ones in one script call."""
        landing = self.complete_many_start(
            items, result_ttl, queues, consumer, limit=limit, lease_seconds=lease_seconds
        )
        return landing.result()

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
        """:meth:`complete_many`, its script sent now and its reply read by ``result()``
        (standalone Redis; on Cluster the call is made when the result is asked for)."""
        if not self._checked:
            self.check()
        plan = ops.complete_many(
            self._ctx,
            items,
            result_ttl,
            names=queues,
            consumer=consumer,
            limit=limit,
            lease_seconds=lease_seconds,
        )
        what = (
            f"complete task {items[0][0].id}" if len(items) == 1 else f"complete {len(items)} tasks"
        )
        return self._sync.start(plan, what)

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
        return self._run(
            ops.requeue(self._ctx, lease, delay, body, count_delivery, front=front),
            f"requeue task {lease.id}",
        )

    def dead_letter(self, lease: Lease, letter: DeadLetter, result: bytes | None) -> bool:
        """Move a held message to the dead-letter store (fenced)."""
        return self._run(
            admin.dead_letter(self._ctx, lease, letter, result), f"dead-letter task {lease.id}"
        )

    def lease_loss(self, lease: Lease) -> LeaseLoss:
        """Why a settling call with ``lease`` found it lost (see :func:`.admin.lease_loss`)."""
        try:
            return self._run(admin.lease_loss(self._ctx, lease), f"look up task {lease.id}")
        except BrokerError:  # only for a log line: it must not fail the settle after it
            return LeaseLoss.LAPSED

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        """Extend leases; return the ids no longer held."""
        return self._run(ops.renew(self._ctx, leases, lease_seconds), "renew leases")

    # -- workers ------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        """Record that ``worker`` is alive for ``ttl`` more seconds (Redis's clock)."""
        self.heartbeat_all([worker], ttl)

    def heartbeat_all(self, workers: Sequence[WorkerInfo], ttl: float) -> None:
        """Record several live workers in one round trip."""
        now = time.time()
        rows = [
            (
                w.id,
                msgspec.json.encode(
                    _WorkerRow(
                        w.id,
                        w.host,
                        w.pid,
                        list(w.queues),
                        w.concurrency,
                        w.started_at,
                        now,
                        dict(w.extra),
                    )
                ),
            )
            for w in workers
        ]
        self._run(ops.heartbeat_all(self._ctx, rows, ttl), "record heartbeats")

    def forget_worker(self, worker_id: str) -> None:
        """Drop a worker that stopped cleanly."""
        self._run(ops.forget_worker(self._ctx, worker_id), "forget a worker")

    def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired."""
        live, _ = self._run(ops.workers(self._ctx), "list workers")
        rows = [msgspec.json.decode(info, type=_WorkerRow) for info in live]
        return [
            WorkerInfo(
                r.id,
                r.host,
                r.pid,
                tuple(r.queues),
                r.concurrency,
                r.started_at,
                r.heartbeat_at,
                r.extra,
            )
            for r in rows
        ]

    def reap(self) -> int:
        """Release messages of dead workers and expired leases; return how many."""
        return self._run(ops.reap(self._ctx), "reap dead workers")

    # -- results ------------------------------------------------------------------------

    def store_result(self, task_id: str, result: bytes, ttl: float) -> None:
        """Store a non-final state unless a final one exists."""
        self._run(admin.store_result(self._ctx, task_id, result, ttl), "store a result")

    async def astore_result(self, task_id: str, result: bytes, ttl: float) -> None:
        """Async face of :meth:`store_result`."""
        await self._arun(admin.store_result(self._ctx, task_id, result, ttl), "store a result")

    def get_result(self, task_id: str) -> tuple[bytes, bool] | None:
        """The stored result and whether it is final."""
        return self._run(admin.get_result(self._ctx, task_id), "read a result")

    async def aget_result(self, task_id: str) -> tuple[bytes, bool] | None:
        """Async face of :meth:`get_result`."""
        return await self._arun(admin.get_result(self._ctx, task_id), "read a result")

    def get_results(self, task_ids: Sequence[str]) -> list[tuple[bytes, bool] | None]:
        """The stored result of each id, in one round trip (see :func:`.admin.get_results`)."""
        return self._run(admin.get_results(self._ctx, task_ids), _reading(task_ids))

    async def aget_results(self, task_ids: Sequence[str]) -> list[tuple[bytes, bool] | None]:
        """Async face of :meth:`get_results`."""
        return await self._arun(admin.get_results(self._ctx, task_ids), _reading(task_ids))

    def wait_result(self, task_id: str, timeout: float) -> bytes | None:
        """Block until a final result exists or ``timeout`` passes; woken by pub/sub."""
        return self._run(
            admin.wait_result(self._ctx, task_id, timeout), f"wait for the result of task {task_id}"
        )

    async def await_result(self, task_id: str, timeout: float) -> bytes | None:
        """Async face of :meth:`wait_result`."""
        return await self._arun(
            admin.wait_result(self._ctx, task_id, timeout), f"wait for the result of task {task_id}"
        )

    def forget_result(self, task_id: str) -> None:
        """Delete a stored result."""
        self._run(admin.forget_result(self._ctx, task_id), "delete a result")

    def forget_results(self, task_ids: Sequence[str]) -> None:
        """Delete many results in one round trip (see :func:`.admin.forget_results`)."""
        self._run(admin.forget_results(self._ctx, task_ids), _deleting(task_ids))

    def mark_revoked(self, task_ids: Sequence[str], result: bytes, ttl: float) -> list[bool]:
        """Mark tasks revoked where no final result exists (see :meth:`Broker.mark_revoked`)."""
        return self._run(admin.mark_revoked(self._ctx, task_ids, result, ttl), "mark tasks revoked")

    def held(self, task_ids: Sequence[str]) -> list[bool]:
        """Whether a consumer holds each id's message now (see :meth:`Broker.held`)."""
        return self._run(admin.held(self._ctx, task_ids), "look up the tasks workers hold")

    # -- the small store ------------------------------------------------------------------

    def kv_set(self, key: str, value: bytes, ttl: float, *, only_if_absent: bool = False) -> bool:
        """Set ``key`` for ``ttl`` seconds (only when unset, if asked); True when written."""
        return self._run(store.kv_set(self._ctx, key, value, ttl, only_if_absent), "set a key")

    def kv_get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of keys, None where unset or expired, in one round trip."""
        return self._run(store.kv_get(self._ctx, keys), "read keys")

    def kv_delete(self, key: str) -> None:
        """Unset a key."""
        self._run(store.kv_delete(self._ctx, key), "delete a key")

    def kv_delete_if(self, key: str, value: bytes) -> bool:
        """Unset a key only while it holds ``value``."""
        return self._run(store.kv_delete_if(self._ctx, key, value), "delete a key")

    def join_add(self, key: str, member: str, value: bytes, ttl: float) -> int:
        """Add a member once; return the number of distinct members."""
        return self._run(store.join_add(self._ctx, key, member, value, ttl), "add to a join")

    def join_values(self, key: str) -> dict[str, bytes]:
        """Every member of a join and its value."""
        return self._run(store.join_values(self._ctx, key), "read a join")

    def join_delete(self, key: str) -> None:
        """Drop a join, members and count."""
        self._run(store.join_delete(self._ctx, key), "delete a join")

    def rate_reserve(
        self, key: str, per_second: float, burst: int = 1, max_wait: float = math.inf
    ) -> float:
        """Reserve the next slot of a GCRA limiter on Redis's clock unless it is more than
        ``max_wait`` ahead (then nothing changes); seconds until it."""
        return self._run(
            store.rate_reserve(self._ctx, key, per_second, burst, max_wait),
            f"reserve a slot of the rate limit {key}",
        )

    def rate_admit(self, key: str, limit: int, period: float) -> float:
        """Admit a start if the sliding window has room; else the seconds until it will."""
        return self._run(store.rate_admit(self._ctx, key, limit, period), "admit a start")

    def stream_append(self, key: str, items: Sequence[bytes], maxlen: int) -> None:
        """Append to a bounded stream."""
        self._run(store.stream_append(self._ctx, key, items, maxlen), "append to a stream")

    def stream_read(self, key: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Items after a sequence number, oldest first."""
        return self._run(store.stream_read(self._ctx, key, after, limit), "read a stream")

    # -- administration -----------------------------------------------------------------

    def check_queue_names(self, names: Sequence[str]) -> None:
        """Refuse an empty name or one with a brace (it would break the Cluster hash tag).

        Example:
            >>> RedisBroker("redis://localhost:6379/0").check_queue_names(["emails"])
        """
        for name in names:
            self.keys.queue(name)

    def stats(self, ready_at: ReadyAt | None = None) -> list[QueueStats]:
        """Counts for every queue any process registered; ``ready_since`` only with
        ``ready_at``, which reads it from the messages at the ready lists' heads."""
        return self._run(admin.stats(self._ctx, ready_at), "read queue counts")

    def peek(self, queue: str, limit: int) -> list[Waiting]:
        """Messages waiting in ``queue``, ready ones first in fetch order (one script call,
        reading at most ``limit`` elements)."""
        return self._run(admin.peek(self._ctx, queue, limit), f"read queue {queue!r}")

    def notes(self) -> list[str]:
        """That the server is a read-only replica, when it is (see :func:`.admin.notes`)."""
        return self._run(admin.notes(self._ctx, self.url.safe), "read the server's role")

    def _purge_waiting(self, queue: str) -> int:
        """Delete ready and delayed messages of ``queue``."""
        return self._run(admin.purge(self._ctx, queue), f"purge queue {queue}")

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""
        return self._run(admin.dead_letters(self._ctx, limit), "list dead letters")

    def find_dead_letters(self, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters with these ids (one HMGET per queue)."""
        return self._run(admin.find_dead_letters(self._ctx, ids), "look up dead letters")

    def replay_dead_letters(
        self, ids: Sequence[str] | None = None, task: str | None = None, renew: Renew | None = None
    ) -> int:
        """Send chosen dead letters back to their queues with a fresh delivery count."""
        plan = admin.replay_dead_letters(self._ctx, ids, task, renew)
        return self._run(plan, "replay dead letters")

    def purge_dead_letters(self) -> int:
        """Delete every dead letter."""
        return self._run(admin.purge_dead_letters(self._ctx), "purge dead letters")


def _reading(task_ids: Sequence[str]) -> str:
    """What a read of several results was, for its error message."""
    return f"read the results of {_tasks(task_ids)}"


def _deleting(task_ids: Sequence[str]) -> str:
    """What a deletion of several results was, for its error message."""
    return f"delete the results of {_tasks(task_ids)}"


def _tasks(task_ids: Sequence[str]) -> str:
    shown = ", ".join(task_ids[:3]) + (", ..." if len(task_ids) > 3 else "")
    return f"{len(task_ids)} tasks ({shown})"
