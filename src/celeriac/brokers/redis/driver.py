"""Drivers: carry a plan's steps to Redis — one on redis-py, one on redis.asyncio.

They hold no broker logic, only I/O: EVALSHA with the EVAL fallback on NOSCRIPT, pipelines,
pub/sub, and translating driver errors into celeriac's (thrown into the plan at the step
that failed). The sync driver never touches an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, NoScriptError, TryAgainError

import redis
from celeriac.brokers.landing import Landing, Ready
from celeriac.brokers.redis.async_clients import AsyncClients
from celeriac.brokers.redis.connection import DRIVER_ERRORS, SyncClient, translate
from celeriac.brokers.redis.steps import (
    Arg,
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
from celeriac.brokers.redis.wire import RAW, Sent, Wire

T = TypeVar("T")

#: Seconds a Cluster command whose slot is on the move is tried again. While a reshard
#: migrates a queue's slot, Redis refuses that queue's scripts without running them (ASK,
#: then TRYAGAIN: their keys are split between two nodes), and redis-py gives up after
#: ~0.4 s ("TTL exhausted"): a producer's delay() and `celeriac status` failed for as
#: long as the migration of one busy slot lasted.
REDIRECT_PATIENCE = 10.0
_REDIRECT_PAUSE = (0.05, 0.5)  # first and longest pause between tries


def _redirected(exc: BaseException) -> bool:
    """Whether Cluster refused a command without running it because its slot is moving:
    redis-py's own tries ran out, or (a pipeline's reply) the bare redirection."""
    if isinstance(exc, TryAgainError | AskError | MovedError):
        return True
    return isinstance(exc, ClusterError) and "TTL exhausted" in str(exc)


def _still_moving(exc: Exception, step: Call | Command) -> ClusterError:
    """The error once REDIRECT_PATIENCE ran out, naming the slot (translate() words it)."""
    key = step.keys[0] if isinstance(step, Call) and step.keys else None
    if isinstance(step, Command) and len(step.args) > 1 and isinstance(step.args[1], bytes):
        key = step.args[1]
    where = f"slot {key_slot(key)} (key {key.decode(errors='replace')!r})" if key else "a slot"
    error = ClusterError(
        f"TTL exhausted: {where} kept being redirected (MOVED, ASK or TRYAGAIN) for "
        f"{REDIRECT_PATIENCE:g}s; the command did not run"
    )
    error.__cause__ = exc
    return error


def _evalsha(call: Call) -> tuple[Arg, ...]:
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


def _eval(call: Call) -> tuple[Arg, ...]:
    return ("EVAL", call.script.text, len(call.keys), *call.keys, *call.args)


def _command_args(step: Call | Command) -> tuple[Arg, ...]:
    return _evalsha(step) if isinstance(step, Call) else step.args


def _raw(step: Call | Command) -> bool:
    """Whether a step can skip redis-py's response callbacks (see wire.py)."""
    return isinstance(step, Call) or str(step.args[0]).upper() in RAW


def _node_failures(replies: list[tuple[str, Any]], what: str, url: str) -> list[tuple[str, Any]]:
    """An OnEveryNode reply with each node's driver error translated (see OnEveryNode)."""
    return [
        (name, translate(reply, what, url) if isinstance(reply, DRIVER_ERRORS) else reply)
        for name, reply in replies
    ]


def _primaries(client: Any, step: OnEveryNode) -> list[Any]:
    """The Cluster primaries ``step`` runs on."""
    nodes = client.get_primaries()
    return nodes if step.nodes is None else [n for n in nodes if n.name in step.nodes]


def _message_data(message: dict[str, Any] | None) -> bytes | None:
    if message is not None and message.get("type") == "message":
        data: bytes = message["data"]
        return data
    return None


class SyncDriver:
    """Runs plans on a redis-py client (standalone or Cluster)."""

    def __init__(self, client: SyncClient, url: str) -> None:
        self.client = client
        self._io: Any = client  # the same client; redis-py's command methods are untyped
        self.url = url
        # Standalone Redis: scripts and plain-reply commands skip redis-py's per-command
        # machinery (see wire.py). Cluster keeps redis-py, which routes by slot.
        self._wire = None if isinstance(client, redis.cluster.RedisCluster) else Wire(client)

    def close(self) -> None:
        """Close every idle connection; one in use by another thread (a command in
        flight, a ``get()`` waiting on its pub/sub connection) is left to that call."""
        if self._wire is not None:
            self._wire.close()  # idle ones only, as below
        # Not redis-py's close(), which disconnects connections in use too: the call using
        # one in another thread found its socket gone and raised TypeError ("argument
        # must be an int, or have a fileno() method"), a web app's requests in flight
        # failed when it closed the broker at shutdown. On a Cluster, close() also
        # dropped the default node: every call after it, in any thread, failed with
        # AttributeError ("'NoneType' object has no attribute 'redis_connection'").
        if isinstance(self.client, redis.Redis):
            self.client.connection_pool.disconnect(inuse_connections=False)
            return
        for node in self._io.get_nodes():  # Cluster: a pool per node
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect(inuse_connections=False)

    def run(self, plan: Plan[T], what: str) -> T:
        """Drive ``plan`` to its end; ``what`` names the operation in error messages."""
        return self._drive(plan, what, plan.__next__)

    def start(self, plan: Plan[T], what: str) -> Landing[T]:
        """Send ``plan``'s first step now, if it is a script on standalone Redis, and leave
        the rest (reading its reply, any later step) to :meth:`InFlight.result`: the
        caller works meanwhile while Redis runs the script. Otherwise the plan is run
        when its result is asked for.

        Example:
            >>> flight = driver.start(plan, "complete 32 tasks")  # doctest: +SKIP
            >>> run_the_tasks_still_in_hand()  # doctest: +SKIP
            >>> committed, fetched = flight.result()  # doctest: +SKIP
        """
        try:
            step = next(plan)
        except StopIteration as stop:  # asked nothing of Redis
            value: T = stop.value
            return Ready(lambda: value)
        sent = None
        if self._wire is not None and isinstance(step, Call):
            try:
                sent = self._wire.send(_evalsha(step))
            except DRIVER_ERRORS:
                sent = None  # made again, with the error, when the result is asked for
        return InFlight(self, plan, what, step, sent)

    def land(self, plan: Plan[T], what: str, step: Step, sent: Sent | None) -> T:
        """The rest of a plan that :meth:`start` began (see :class:`InFlight`)."""
        if sent is None:
            return self._drive(plan, what, lambda: step)

        def first() -> Step:
            assert isinstance(step, Call) and self._wire is not None
            try:
                try:
                    reply = sent.reply()
                except NoScriptError:  # not cached on this server yet, or SCRIPT FLUSH
                    reply = self._wire.call(_eval(step))
            except DRIVER_ERRORS as exc:
                return plan.throw(translate(exc, what, self.url))
            return plan.send(reply)

        return self._drive(plan, what, first)

    def _drive(self, plan: Plan[T], what: str, first: Callable[[], Step]) -> T:
        pubsub: Any = None  # redis-py's PubSub; its methods are untyped
        try:
            step = first()
            while True:
                try:
                    if isinstance(step, Subscribe):
                        pubsub = pubsub or self._io.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(step.channel)
                        reply: Any = None
                    elif isinstance(step, Listen):
                        assert pubsub is not None, "Listen before Subscribe"
                        reply = self._listen(pubsub, step.timeout)
                    elif isinstance(step, Pause):
                        time.sleep(step.seconds)
                        reply = None
                    elif isinstance(step, OnEveryNode):
                        reply = _node_failures(self._on_every_node(step), what, self.url)
                    else:
                        reply = self._do(step)
                except DRIVER_ERRORS as exc:
                    step = plan.throw(translate(exc, what, self.url))
                    continue
                step = plan.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            plan.close()
            if pubsub is not None:
                pubsub.close()

    def _do(self, step: Step) -> Any:
        if self._wire is not None and isinstance(step, Call | Command) and _raw(step):
            return self._do_raw(self._wire, step)
        if isinstance(step, Call | Command):
            return self._patiently(step) if self._wire is None else self._one(step)
        if isinstance(step, Batch):
            return self._batch(step.steps)
        raise TypeError(f"unknown step {step!r}")

    def _patiently(self, step: Call | Command) -> Any:
        """Run one step on Cluster, tried again while its slot is on the move (see
        REDIRECT_PATIENCE): a refused command did not run, so trying again is safe."""
        deadline = time.monotonic() + REDIRECT_PATIENCE
        pause = _REDIRECT_PAUSE[0]
        while True:
            try:
                return self._one(step)
            except ClusterError as exc:
                if not _redirected(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise _still_moving(exc, step) from exc
            time.sleep(pause)
            pause = min(pause * 2, _REDIRECT_PAUSE[1])

    def _one(self, step: Call | Command) -> Any:
        client = self._io
        if isinstance(step, Call):
            try:
                return client.execute_command(*_evalsha(step))
            except NoScriptError:  # not cached on this server yet, or SCRIPT FLUSH
                return client.execute_command(*_eval(step))
        return client.execute_command(*step.args)

    def _on_every_node(self, step: OnEveryNode) -> list[tuple[str, Any]]:
        client = self._io
        if not isinstance(self.client, redis.cluster.RedisCluster):
            return [(self.url, client.execute_command(*step.command.args))]
        replies: list[tuple[str, Any]] = []
        for node in _primaries(client, step):
            try:
                reply = client.execute_command(*step.command.args, target_nodes=node)
            except DRIVER_ERRORS as exc:
                reply = exc
            replies.append((node.name, reply))
        return replies

    @staticmethod
    def _do_raw(wire: Wire, step: Call | Command) -> Any:
        if isinstance(step, Command):
            return wire.call(step.args, step.timeout)
        try:
            return wire.call(_evalsha(step))
        except NoScriptError:  # not cached on this server yet, or SCRIPT FLUSH
            return wire.call(_eval(step))

    def _batch(self, steps: Iterable[Call | Command]) -> list[Any]:
        if self._wire is not None and not isinstance(steps, Sequence):
            return self._stream(self._wire, steps)
        steps = list(steps)
        if len(steps) == 1:
            return [self._do(steps[0])]
        replies: list[Any]
        if self._wire is not None and all(_raw(step) for step in steps):
            replies = self._wire.pipeline([_command_args(step) for step in steps])
        else:
            pipe = self._io.pipeline(transaction=False)
            for step in steps:
                pipe.execute_command(*_command_args(step))
            replies = pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                step = steps[i]
                assert isinstance(step, Call)
                replies[i] = self._io.execute_command(*_eval(step))
            elif _redirected(reply):  # refused, not run: on its own, patiently
                replies[i] = self._patiently(steps[i])
            elif isinstance(reply, Exception):
                raise reply
        return replies

    def _stream(self, wire: Wire, steps: Iterable[Call | Command]) -> list[Any]:
        """A lazy batch: each step is sent as soon as it is made (see Wire.pipeline)."""
        made: list[Call | Command] = []

        def wire_args() -> Iterator[tuple[Arg, ...]]:
            for step in steps:
                if not _raw(step):
                    raise TypeError(f"a lazy Batch takes scripts and raw commands only: {step!r}")
                made.append(step)
                yield _command_args(step)

        replies = wire.pipeline(wire_args())
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                step = made[i]
                assert isinstance(step, Call)
                replies[i] = wire.call(_eval(step))
            elif isinstance(reply, Exception):
                raise reply
        return replies

    @staticmethod
    def _listen(pubsub: Any, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            data = _message_data(pubsub.get_message(timeout=remaining))
            if data is not None:
                return data
        return None


class InFlight(Generic[T]):
    """A plan whose first script :meth:`SyncDriver.start` sent; :meth:`result` reads its
    reply and runs the rest of the plan, once.

    Its connection is its own until then: a plan left in flight keeps one connection
    busy (closed with the process if it never lands).
    """

    __slots__ = ("_driver", "_plan", "_sent", "_step", "_what")

    def __init__(
        self, driver: SyncDriver, plan: Plan[T], what: str, step: Step, sent: Sent | None
    ) -> None:
        self._driver, self._plan, self._what, self._step = driver, plan, what, step
        self._sent = sent

    def result(self) -> T:
        """The plan's result, as :meth:`SyncDriver.run` returns it (and raises its errors)."""
        return self._driver.land(self._plan, self._what, self._step, self._sent)


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
                        reply = _node_failures(replies, what, self.url)
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
        for node in _primaries(client, step):
            try:
                reply = await client.execute_command(*step.command.args, target_nodes=node)
            except DRIVER_ERRORS as exc:
                reply = exc
            replies.append((node.name, reply))
        return replies

    async def _patiently(self, client: Any, step: Call | Command) -> Any:
        """Async twin of :meth:`SyncDriver._patiently`."""
        deadline = time.monotonic() + REDIRECT_PATIENCE
        pause = _REDIRECT_PAUSE[0]
        while True:
            try:
                return await self._one(client, step)
            except ClusterError as exc:
                if not _redirected(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise _still_moving(exc, step) from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, _REDIRECT_PAUSE[1])

    @staticmethod
    async def _one(client: Any, step: Call | Command) -> Any:
        if isinstance(step, Call):
            try:
                return await client.execute_command(*_evalsha(step))
            except NoScriptError:
                return await client.execute_command(*_eval(step))
        return await client.execute_command(*step.args)

    async def _batch(self, client: Any, steps: Iterable[Call | Command]) -> list[Any]:
        steps = list(steps)
        if len(steps) == 1:
            return [await self._do(client, steps[0])]
        pipe = client.pipeline(transaction=False)
        for step in steps:
            pipe.execute_command(*_command_args(step))
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                step = steps[i]
                assert isinstance(step, Call)
                replies[i] = await client.execute_command(*_eval(step))
            elif _redirected(reply):  # refused, not run: on its own, patiently
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
