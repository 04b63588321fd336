"""The async driver: carries a plan's steps to Redis on redis.asyncio (standalone and
Cluster), one client per event loop. Imported by the async face only (``adelay``,
``aget``, the asyncio pool): a process that never awaits does not load redis-py for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, TypeVar

import redis.asyncio.cluster
from redis.exceptions import ClusterError, NoScriptError

from celeriac.brokers.redis import cluster_driver
from celeriac.brokers.redis.async_clients import AsyncClients
from celeriac.brokers.redis.cluster_driver import primaries, redirected, still_moving
from celeriac.brokers.redis.connection import translate
from celeriac.brokers.redis.driver import command_args, eval_, evalsha, node_failures
from celeriac.brokers.redis.redis_py import DRIVER_ERRORS
from celeriac.brokers.redis.steps import (
    Batch,
    Call,
    Command,
    Listen,
    OnEveryNode,
    Pause,
    Plan,
    Step,
    Subscribe,
)
from celeriac.brokers.redis.subscriptions import Subscriptions

T = TypeVar("T")


class AsyncDriver:
    """Runs plans on redis.asyncio, with one client per event loop."""

    def __init__(self, clients: AsyncClients, url: str) -> None:
        self.clients = clients
        self.url = url

    async def run(self, plan: Plan[T], what: str) -> T:
        """Async twin of :meth:`SyncDriver.run`."""
        joined: list[tuple[Subscriptions, bytes | str, asyncio.Queue[bytes]]] = []
        task = asyncio.current_task()
        try:
            loop_client = await self.clients.get()
            client: Any = loop_client.client  # redis.asyncio's methods are untyped
            step = next(plan)
            while True:
                cancels = task.cancelling() if task is not None else 0
                try:
                    if isinstance(step, Subscribe):
                        subs = loop_client.subscriptions  # one pub/sub connection per loop
                        joined.append((subs, step.channel, await subs.join(step.channel)))
                        reply: Any = None
                    elif isinstance(step, Listen):
                        assert joined, "Listen before Subscribe"
                        reply = await _next_wake([queue for _, _, queue in joined], step.timeout)
                    elif isinstance(step, Pause):
                        await asyncio.sleep(step.seconds)
                        reply = None
                    elif isinstance(step, OnEveryNode):
                        replies = await self._on_every_node(client, step)
                        reply = node_failures(replies, what, self.url)
                    elif isinstance(client, redis.asyncio.cluster.RedisCluster):
                        async with loop_client.in_flight:
                            reply = await self._do(client, step)
                    else:  # the client's blocking pool bounds what is in flight
                        reply = await self._do(client, step)
                except DRIVER_ERRORS as exc:
                    _raise_lost_cancel(task, cancels)
                    step = plan.throw(translate(exc, what, self.url))
                    continue
                _raise_lost_cancel(task, cancels)
                step = plan.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            plan.close()
            cancels = task.cancelling() if task is not None else 0
            for subs, channel, queue in joined:
                await subs.leave(channel, queue)
            # Leaving sends UNSUBSCRIBE, through the same asyncio.wait_for: a cancel that
            # came just then was lost, about one in 20 of those timed within a wait, and
            # the caller ran on as if never cancelled (the rest of an asyncio.timeout()
            # block ran past its deadline, unreported).
            _raise_lost_cancel(task, cancels)

    async def _do(self, client: Any, step: Step) -> Any:
        if isinstance(step, Call | Command):
            if isinstance(client, redis.asyncio.cluster.RedisCluster):
                return await self._patiently(client, step)
            return await self._one(client, step)
        if isinstance(step, Batch):
            return await self._batch(client, step.steps)
        raise TypeError(f"unknown step {step!r}")

    async def _on_every_node(self, client: Any, step: OnEveryNode) -> list[tuple[str, Any]]:
        if not isinstance(client, redis.asyncio.cluster.RedisCluster):
            return [(self.url, await client.execute_command(*step.command.args))]
        await client.initialize()  # a new client knows no node yet (a no-op after)
        replies: list[tuple[str, Any]] = []
        for node in primaries(client, step):
            try:
                reply = await client.execute_command(*step.command.args, target_nodes=node)
            except DRIVER_ERRORS as exc:
                reply = exc
            replies.append((node.name, reply))
        return replies

    async def _patiently(self, client: Any, step: Call | Command) -> Any:
        """Async twin of :meth:`SyncDriver._patiently`."""
        deadline = time.monotonic() + cluster_driver.REDIRECT_PATIENCE
        pause = cluster_driver.REDIRECT_PAUSE[0]
        while True:
            try:
                return await self._one(client, step)
            except ClusterError as exc:
                if not redirected(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise still_moving(exc, step) from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, cluster_driver.REDIRECT_PAUSE[1])

    @staticmethod
    async def _one(client: Any, step: Call | Command) -> Any:
        if isinstance(step, Call):
            try:
                return await client.execute_command(*evalsha(step))
            except NoScriptError:
                return await client.execute_command(*eval_(step))
        return await client.execute_command(*step.args)

    async def _batch(self, client: Any, steps: Iterable[Call | Command]) -> list[Any]:
        steps = list(steps)
        if len(steps) == 1:
            return [await self._do(client, steps[0])]
        pipe = client.pipeline(transaction=False)
        for step in steps:
            pipe.execute_command(*command_args(step))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                step = steps[i]
                assert isinstance(step, Call)
                replies[i] = await client.execute_command(*eval_(step))
            elif redirected(reply):  # refused, not run: on its own, patiently
                replies[i] = await self._do(client, steps[i])
            elif isinstance(reply, Exception):
                raise reply
        return replies


def _raise_lost_cancel(task: asyncio.Task[Any] | None, cancels: int) -> None:
    """Raise the cancellation a step received and lost.

    On Python 3.11, ``asyncio.wait_for`` returns its inner result when a cancellation
    arrives just as that result does (fixed in 3.12), and redis.asyncio sends every
    command through it: a step returned as if never cancelled. An ``aget()`` under
    ``asyncio.wait_for(..., 1)`` or a request's time-out then waited on to its own
    timeout (60 s here), about once in 20 early cancels. The cancel is still counted on
    the task (``Task.cancelling()``), so a step ending with more than it began with lost
    one; raising it again lets ``wait_for``/``asyncio.timeout`` end the wait as asked.
    """
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError


async def _next_wake(queues: list[asyncio.Queue[bytes]], timeout: float) -> bytes | None:
    """The first wake-up on any of ``queues`` within ``timeout`` seconds, else None."""
    for queue in queues:
        if not queue.empty():
            return queue.get_nowait()
    getters = [asyncio.ensure_future(queue.get()) for queue in queues]
    try:
        done, _ = await asyncio.wait(getters, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for getter in getters:
            getter.cancel()
    return next(iter(done)).result() if done else None
