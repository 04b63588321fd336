"""Each event loop's own redis.asyncio client (a client cannot cross loops), and closing
one without failing the calls other tasks of the loop have in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import redis.asyncio
import redis.asyncio.cluster

from celeriac.brokers.redis.connection import RedisURL
from celeriac.brokers.redis.redis_py import AsyncClient
from celeriac.brokers.redis.subscriptions import Subscriptions

CLUSTER_IN_FLIGHT = 90  # below redis-py's 100 connections per node: pub/sub takes one


class LoopClient(msgspec.Struct, eq=False):
    """What one event loop talks to Redis with (nothing of it can cross loops)."""

    client: AsyncClient
    subscriptions: Subscriptions  # its result waiters' one pub/sub connection
    # Cluster: a bound on its commands in flight. redis-py's Cluster client raises
    # MaxConnectionsError past 100 connections to a node instead of waiting for one.
    in_flight: asyncio.Semaphore


class AsyncClients:
    """One redis.asyncio client per event loop (a client cannot cross loops).

    A client is closed when its loop shuts down (``asyncio.run`` finalizes the async
    generator that keeps it), or by :meth:`aclose`; so no connection outlives its loop.
    Everything a loop uses (:class:`LoopClient`) is dropped with its client: it all refers
    to the loop, and kept anywhere else (the driver once kept the subscriptions) it kept
    every finished loop alive, ~40 kB per ``asyncio.run(result.aget())``.
    """

    def __init__(self, url: RedisURL) -> None:
        self._url = url
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[LoopClient, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()  # loops of other threads come and go meanwhile

    async def get(self) -> LoopClient:
        """The running loop's client, created on first use."""
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is not None:
            return found[0]
        self._forget_closed_loops()
        client = self._url.async_client()
        made = LoopClient(client, Subscriptions(client), asyncio.Semaphore(CLUSTER_IN_FLIGHT))
        keeper = self._keep(client)
        await keeper.__anext__()  # registers it with the loop's async-generator shutdown
        with self._guard:
            self._by_loop[loop] = (made, keeper)
        return made

    async def _keep(self, client: AsyncClient) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._guard:
                self._by_loop.pop(asyncio.get_running_loop(), None)
            await client.aclose()

    async def aclose(self) -> None:
        """Close the running loop's idle connections; one in use by another task of the
        loop (a command in flight, the result waiters' pub/sub connection) is left to the
        call using it, which goes on, as :meth:`close` does for threads. Whatever is still
        open is closed when the loop shuts down.

        Not the client's ``aclose()``, which disconnects connections in use too: an
        ``adelay()`` or ``aget()`` awaiting in another task failed with "did not answer"
        when a web app's shutdown hook closed the broker. On a Cluster, each node's idle
        connections are closed.
        """
        found = self._by_loop.get(asyncio.get_running_loop())
        if found is not None:
            await _close_idle(found[0].client)

    def close(self) -> None:
        """Close the clients of loops that are neither running nor closed (best effort).

        A running loop's client is closed when that loop shuts down.
        """
        self._forget_closed_loops()
        with self._guard:
            kept = list(self._by_loop.items())
        for loop, (_, keeper) in kept:
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(keeper.aclose())

    def _forget_closed_loops(self) -> None:
        """Drop what loops closed without shutting down (a bare ``loop.close()``) left.

        Their connections cannot be closed through a closed loop, but once dropped they
        are closed when collected (with a ResourceWarning). Kept here, they stayed open
        for good: the client refers to its loop, so the weak mapping never let go.
        """
        with self._guard:
            for loop in [loop for loop in list(self._by_loop) if loop.is_closed()]:
                self._by_loop.pop(loop, None)


async def _close_idle(client: AsyncClient) -> None:
    """Close the connections of ``client`` that no call uses; the others are left to theirs.

    Each is taken out of its pool before the first await. redis-py's own
    ``disconnect(inuse_connections=False)`` and ``disconnect_free_connections()`` close
    the idle ones they listed in tasks that run later, by when another task may have
    taken one for its command, which then failed ("Connection reset by peer"): about one
    run in three of four tasks sending and waiting on a Cluster while aclose() ran.
    """
    try:
        idle = _take_idle(client)
    except AttributeError:  # a redis-py whose pools keep them elsewhere: its own way
        if isinstance(client, redis.asyncio.Redis):
            await client.connection_pool.disconnect(inuse_connections=False)
        else:
            for node in client.get_nodes():
                await node.disconnect_free_connections()
        return
    for connection in idle:
        with contextlib.suppress(Exception):  # closing: a socket already dead is closed
            await connection.disconnect()


def _take_idle(client: AsyncClient) -> list[Any]:
    """Take the idle connections out of ``client``'s pools (redis-py 5 to 8.1 keep them in
    these private lists); AttributeError from a redis-py that does not, raised before any
    pool is changed (a connection taken and then left unclosed would be lost)."""
    if isinstance(client, redis.asyncio.Redis):
        free = client.connection_pool._available_connections
        idle = list(free)
        free.clear()  # the pool counts the connections in use only: nothing else to undo
        return idle
    nodes = [(node, list(node._free), node._connections) for node in client.get_nodes()]
    idle = []
    for node, taken, connections in nodes:
        node._free.clear()
        # Its limit (max_connections) counts this list: once closed, they leave it.
        node._connections = [c for c in connections if c not in taken]
        idle.extend(taken)
    return idle
