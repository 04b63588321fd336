"""One pub/sub connection per event loop, shared by every result waiter in it.

A subscription of its own per ``aget()`` cost a connection each: about a hundred
concurrent waiters in one process emptied redis-py's connection pool, and the rest failed
with "Too many connections". Here the first waiter on a channel subscribes, the last one
to leave unsubscribes, and one reader task hands each wake-up to every waiter of its
channel. A wake-up lost while the connection is re-established costs nothing but time:
every waiter reads its result key again after each quiet ``Listen`` step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio.cluster

log = logging.getLogger("celeriac.broker")


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
        self._waiters: dict[bytes, set[asyncio.Queue[bytes]]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    async def join(self, channel: bytes | str) -> asyncio.Queue[bytes]:
        """Listen on ``channel``; wake-ups arrive on the returned queue until :meth:`leave`."""
        key = channel.encode() if isinstance(channel, str) else channel
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        async with self._lock:
            if self._pubsub is None:
                if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
                    # Its slot map is read on its first command; a subscribe as the first
                    # (an aget() first thing in a loop) found it empty.
                    await self.client.initialize()
                self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            waiters = self._waiters.get(key)
            if waiters is None:
                await self._pubsub.subscribe(key)  # raises before we count the waiter
                waiters = self._waiters[key] = set()
            waiters.add(queue)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_task(self._read())
        return queue

    async def leave(self, channel: bytes | str, queue: asyncio.Queue[bytes]) -> None:
        """Stop listening; the last waiter of a channel unsubscribes it."""
        key = channel.encode() if isinstance(channel, str) else channel
        async with self._lock:
            waiters = self._waiters.get(key)
            if waiters is None:
                return
            waiters.discard(queue)
            if not waiters:
                del self._waiters[key]
                if self._pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        await self._pubsub.unsubscribe(key)

    async def _read(self) -> None:
        """Hand each message to the waiters of its channel; close when none are left."""
        try:
            while True:
                async with self._lock:
                    if not self._waiters:
                        break
                    pubsub = self._pubsub
                try:
                    message = await pubsub.get_message(timeout=0.5)
                except (redis.RedisError, OSError) as exc:
                    # redis-py reconnects and re-subscribes on the next read; the waiters
                    # poll their keys meanwhile.
                    log.debug("result wake-ups: pub/sub read failed (%s); retrying", exc)
                    await asyncio.sleep(0.2)
                    continue
                if message is None or message.get("type") != "message":
                    continue
                for queue in self._waiters.get(message["channel"], ()):
                    queue.put_nowait(message["data"])
        finally:
            async with self._lock:
                idle = not self._waiters
                pubsub, self._pubsub = (self._pubsub, None) if idle else (None, self._pubsub)
            if pubsub is not None:
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()
