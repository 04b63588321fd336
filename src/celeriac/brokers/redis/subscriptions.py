"""One pub/sub connection per event loop, shared by every result waiter in it.

A subscription of its own per ``aget()`` cost a connection each: about a hundred
concurrent waiters in one process emptied redis-py's connection pool, and the rest failed
with "Too many connections". Here the first waiter on a channel subscribes, the last one
to leave unsubscribes, and one reader task hands each wake-up to every waiter of its
channel.

A connection that drops (a Redis restart, a network blip, CLIENT KILL) is replaced by a
new one subscribed to every channel still waited on; redis-py's asyncio pub/sub does not
recover by itself (each read raised "Connection closed by server" again, so wake-ups
stopped for good and every later ``aget()`` in the loop failed). A wake-up published
while no connection was subscribed is gone, so once the new one is subscribed every
waiter is woken to read its result key again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio.cluster

log = logging.getLogger("celeriac.broker")

# A Cluster none of whose nodes answers raises RedisClusterException, which is no RedisError.
_UNREACHABLE = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)
_READ_STEP = 0.5  # seconds per read, so the reader notices when no waiter is left
_RECONNECT_PAUSE_MAX = 2.0  # seconds between attempts (0.1 s, doubled each time, up to this)
_RECHECK = b""  # a wake-up that says only "read your result key again"


class Subscriptions:
    """The channels this loop's waiters listen on, over one pub/sub connection.

    Example:
        >>> async def wait(subs: Subscriptions) -> bytes | None:  # doctest: +SKIP
        ...     queue = await subs.join(b"celeriac:done:{q}:id")
        ...     try:
        ...         return await asyncio.wait_for(queue.get(), 1.0)
        ...     finally:
        ...         await subs.leave(b"celeriac:done:{q}:id", queue)
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._pubsub: Any = None  # redis-py's PubSub; its methods are untyped
        self._retired: list[Any] = []  # replaced connections, closed by the reader
        self._waiters: dict[bytes, set[asyncio.Queue[bytes]]] = {}
        self._lock = asyncio.Lock()
        # While any channel is waited on, a reader runs and owns the connection: it alone
        # reads, replaces a dropped connection and closes it when the last waiter leaves.
        self._reader: asyncio.Task[None] | None = None

    async def join(self, channel: bytes | str) -> asyncio.Queue[bytes]:
        """Listen on ``channel``; wake-ups arrive on the returned queue until :meth:`leave`.

        Raises:
            redis.RedisError: Redis cannot be reached (nothing is left subscribed).
            redis.exceptions.RedisClusterException: no node of a Cluster can be.
        """
        key = channel.encode() if isinstance(channel, str) else channel
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        async with self._lock:
            waiters = self._waiters.get(key)
            if waiters is None:
                await self._subscribe(key)  # raises before we count the waiter
                waiters = self._waiters[key] = set()
            waiters.add(queue)
            if self._reader is None or self._reader.done():  # done: cancelled, or a bug
                self._reader = asyncio.get_running_loop().create_task(self._read())
        return queue

    async def leave(self, channel: bytes | str, queue: asyncio.Queue[bytes]) -> None:
        """Stop listening; the last waiter of a channel unsubscribes it."""
        key = channel.encode() if isinstance(channel, str) else channel
        waiters = self._waiters.get(key)
        if waiters is None:
            return
        # Counted out before any await: a task cancelled again while it leaves must not
        # stay a waiter forever (its channel subscribed, the reader never stopping).
        waiters.discard(queue)
        if waiters:
            return
        del self._waiters[key]
        async with self._lock:
            if self._pubsub is not None and key not in self._waiters:  # nobody came back
                with contextlib.suppress(*_UNREACHABLE):
                    await self._pubsub.unsubscribe(key)

    async def _subscribe(self, key: bytes) -> None:
        """Add ``key`` to the connection, or connect with it (the lock is held)."""
        if self._pubsub is not None:
            try:
                await self._pubsub.subscribe(key)
                return
            except _UNREACHABLE:
                # Dropped since the reader last looked: a new connection (below), which
                # the reader will use; it closes this one.
                self._retired.append(self._pubsub)
                self._pubsub = None
        self._pubsub = await self._connect([*self._waiters, key])
        self._wake_all()  # the old connection may have lost their wake-ups

    async def _connect(self, channels: Sequence[bytes]) -> Any:
        """A new pub/sub connection subscribed to ``channels``."""
        if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
            # Its slot map is read on its first command; a subscribe as the first (an
            # aget() first thing in a loop) found it empty.
            await self.client.initialize()
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*channels)
        except BaseException:
            await _close(pubsub)
            raise
        return pubsub

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for queue in waiters:
                queue.put_nowait(_RECHECK)

    async def _read(self) -> None:
        """Hand each message to the waiters of its channel; stop when none are left."""
        failures = 0
        while (pubsub := await self._connection()) is not False:
            if pubsub is None:  # Redis is still away: the waiters poll meanwhile
                await asyncio.sleep(min(0.1 * 2**failures, _RECONNECT_PAUSE_MAX))
                failures = min(failures + 1, 8)
                continue
            failures = 0
            try:
                message = await pubsub.get_message(timeout=_READ_STEP)
            except _UNREACHABLE as exc:
                log.debug("result wake-ups: pub/sub read failed (%s); reconnecting", exc)
                async with self._lock:
                    if self._pubsub is pubsub:  # not replaced by a join meanwhile
                        self._retired.append(pubsub)
                        self._pubsub = None
                continue
            if message is not None and message.get("type") == "message":
                for queue in self._waiters.get(message["channel"], ()):
                    queue.put_nowait(message["data"])

    async def _connection(self) -> Any:
        """The connection to read from: None while Redis cannot be reached, False when no
        waiter is left (the reader stops). Closes replaced connections."""
        async with self._lock:
            retired, self._retired = self._retired, []
            if not self._waiters:
                # Decided under the lock, so a join that comes next starts a new reader
                # and connection instead of relying on this one.
                retired.append(self._pubsub)
                self._pubsub = self._reader = None
                current: Any = False
            else:
                if self._pubsub is None:
                    try:
                        self._pubsub = await self._connect(list(self._waiters))
                    except _UNREACHABLE as exc:
                        log.debug("result wake-ups: cannot reconnect (%s); retrying", exc)
                    else:
                        log.debug("result wake-ups: pub/sub connection re-established")
                        self._wake_all()
                current = self._pubsub
        for old in retired:
            await _close(old)
        return current


async def _close(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(*_UNREACHABLE):
            await pubsub.aclose()
