"""The sync driver: carries a plan's steps to a standalone Redis on celeriac's own client
(wire.py). Redis Cluster has its own (cluster_driver.py) and the async face its own
(async_driver.py), both on redis-py; this module imports nothing of redis-py.

Drivers hold no broker logic, only I/O: EVALSHA with the EVAL fallback on NOSCRIPT,
pipelines, pub/sub, and translating driver errors into celeriac's (thrown into the plan
at the step that failed). The sync driver never touches an event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from celeriac.brokers.landing import Landing, Ready
from celeriac.brokers.redis.connection import translate
from celeriac.brokers.redis.errors import NoScriptError, RedisError
from celeriac.brokers.redis.replies import shaped
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
from celeriac.brokers.redis.wire import Sent, Subscriber, Wire

T = TypeVar("T")


def evalsha(call: Call) -> tuple[Arg, ...]:
    """The EVALSHA command that runs ``call``."""
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


def eval_(call: Call) -> tuple[Arg, ...]:
    """The EVAL command that runs ``call`` (and caches its script on the server)."""
    return ("EVAL", call.script.text, len(call.keys), *call.keys, *call.args)


def command_args(step: Call | Command) -> tuple[Arg, ...]:
    """The command a script call or a plain command sends."""
    return evalsha(step) if isinstance(step, Call) else step.args


def node_failures(replies: list[tuple[str, Any]], what: str, url: str) -> list[tuple[str, Any]]:
    """An OnEveryNode reply with each node's driver error translated (see OnEveryNode)."""
    return [
        (name, translate(reply, what, url) if isinstance(reply, BaseException) else reply)
        for name, reply in replies
    ]


class Listener(Protocol):
    """Pub/sub as a plan's Subscribe and Listen steps use it."""

    def subscribe(self, channel: bytes) -> None:
        """Subscribe to ``channel`` now."""

    def message(self, timeout: float) -> bytes | None:
        """The next message's data, or None after ``timeout`` seconds."""

    def close(self) -> None:
        """End every subscription."""


class PlanDriver:
    """The loop both sync drivers share (standalone here, Cluster in cluster_driver.py):
    each step carried out, its reply sent into the plan, a driver error thrown into it."""

    url: str
    #: What the driver's client raises when Redis fails (translated for the plan).
    failures: tuple[type[BaseException], ...] = (RedisError,)

    def run(self, plan: Plan[T], what: str) -> T:
        """Drive ``plan`` to its end; ``what`` names the operation in error messages."""
        return self._drive(plan, what, plan.__next__)

    def call(self, call: Call, what: str) -> Any:
        """Run one script call on its own, as a plan of that one step would.

        Raises:
            BrokerError: as :func:`.connection.translate` tells the driver's error.
        """
        try:
            return self._do(call)
        except self.failures as exc:
            raise translate(exc, what, self.url) from exc

    def _listener(self) -> Listener:
        raise NotImplementedError

    def _on_every_node(self, step: OnEveryNode) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def _do(self, step: Step) -> Any:
        raise NotImplementedError

    def _drive(self, plan: Plan[T], what: str, first: Callable[[], Step]) -> T:
        listener: Listener | None = None
        try:
            step = first()
            while True:
                try:
                    if isinstance(step, Subscribe):
                        listener = listener or self._listener()
                        listener.subscribe(step.channel)
                        reply: Any = None
                    elif isinstance(step, Listen):
                        assert listener is not None, "Listen before Subscribe"
                        reply = listener.message(step.timeout)
                    elif isinstance(step, Pause):
                        time.sleep(step.seconds)
                        reply = None
                    elif isinstance(step, OnEveryNode):
                        reply = node_failures(self._on_every_node(step), what, self.url)
                    else:
                        reply = self._do(step)
                except self.failures as exc:
                    step = plan.throw(translate(exc, what, self.url))
                    continue
                step = plan.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            plan.close()
            if listener is not None:
                listener.close()


class SyncDriver(PlanDriver):
    """Runs plans on a standalone Redis, through one :class:`Wire`."""

    def __init__(self, wire: Wire, url: str) -> None:
        self._wire = wire
        self.url = url

    def close(self) -> None:
        """Close every idle connection; one in use by another thread (a command in
        flight, a ``get()`` waiting on its pub/sub connection) is left to that call."""
        self._wire.close()

    def start(self, plan: Plan[T], what: str) -> Landing[T]:
        """Send ``plan``'s first step now, if it is a script, and leave the rest (reading
        its reply, any later step) to :meth:`InFlight.result`: the caller works meanwhile
        while Redis runs the script. Otherwise the plan is run when its result is asked for.

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
        if isinstance(step, Call):
            try:
                sent = self._wire.send(evalsha(step))
            except RedisError:
                sent = None  # made again, with the error, when the result is asked for
        return InFlight(self, plan, what, step, sent)

    def land(self, plan: Plan[T], what: str, step: Step, sent: Sent | None) -> T:
        """The rest of a plan that :meth:`start` began (see :class:`InFlight`)."""
        if sent is None:
            return self._drive(plan, what, lambda: step)

        def first() -> Step:
            assert isinstance(step, Call)
            try:
                try:
                    reply = sent.reply()
                except NoScriptError:  # not cached on this server yet, or SCRIPT FLUSH
                    reply = self._wire.call(eval_(step))
            except RedisError as exc:
                return plan.throw(translate(exc, what, self.url))
            return plan.send(reply)

        return self._drive(plan, what, first)

    def _listener(self) -> Listener:
        return Subscriber(self._wire)

    def _on_every_node(self, step: OnEveryNode) -> list[tuple[str, Any]]:
        """One node: this server."""
        try:
            return [(self.url, self._do(step.command))]
        except RedisError as exc:
            return [(self.url, exc)]

    def _do(self, step: Step) -> Any:
        if isinstance(step, Command):
            return shaped(step.args, self._wire.call(step.args, step.timeout))
        if isinstance(step, Call):
            try:
                return self._wire.call(evalsha(step))
            except NoScriptError:  # not cached on this server yet, or SCRIPT FLUSH
                return self._wire.call(eval_(step))
        if isinstance(step, Batch):
            return self._batch(step.steps)
        raise TypeError(f"unknown step {step!r}")

    def _batch(self, steps: Iterable[Call | Command]) -> list[Any]:
        """Every step in one round trip; a lazy batch (a generator) is sent as it is made
        (see Wire.pipeline), so Redis works on the first steps while the rest are built."""
        made: list[Call | Command] = []

        def wire_args() -> Iterator[tuple[Arg, ...]]:
            for step in steps:
                made.append(step)
                yield command_args(step)

        replies = self._wire.pipeline(wire_args())
        for i, reply in enumerate(replies):
            step = made[i]
            if isinstance(reply, NoScriptError):
                assert isinstance(step, Call)
                replies[i] = self._wire.call(eval_(step))
            elif isinstance(reply, Exception):
                raise reply
            elif isinstance(step, Command):
                replies[i] = shaped(step.args, reply)
        return replies


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
