"""The sync driver for Redis Cluster, on redis-py, which routes each command to the node
that serves its slot (and follows the Cluster through failovers and reshards).

Imported only for a ``cluster=1`` URL: a standalone Redis runs on driver.py, without
redis-py. Errors are translated as there (redis-py's adopted first).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, TypeVar

import redis.cluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, MovedError, NoScriptError, TryAgainError

from celeriac.brokers.landing import Landing, Ready
from celeriac.brokers.redis.driver import Listener, PlanDriver, command_args, eval_, evalsha
from celeriac.brokers.redis.redis_py import DRIVER_ERRORS
from celeriac.brokers.redis.steps import (
    Batch,
    Call,
    Command,
    OnEveryNode,
    Plan,
    Step,
)

T = TypeVar("T")

#: Seconds a Cluster command whose slot is on the move is tried again. While a reshard
#: migrates a queue's slot, Redis refuses that queue's scripts without running them (ASK,
#: then TRYAGAIN: their keys are split between two nodes), and redis-py gives up after
#: ~0.4 s ("TTL exhausted"): a producer's delay() and `celeriac status` failed for as
#: long as the migration of one busy slot lasted.
REDIRECT_PATIENCE = 10.0
REDIRECT_PAUSE = (0.05, 0.5)  # first and longest pause between tries


def redirected(exc: BaseException) -> bool:
    """Whether Cluster refused a command without running it because its slot is moving:
    redis-py's own tries ran out, or (a pipeline's reply) the bare redirection."""
    if isinstance(exc, TryAgainError | AskError | MovedError):
        return True
    return isinstance(exc, ClusterError) and "TTL exhausted" in str(exc)


def still_moving(exc: Exception, step: Call | Command) -> ClusterError:
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


def primaries(client: Any, step: OnEveryNode) -> list[Any]:
    """The Cluster primaries ``step`` runs on."""
    nodes = client.get_primaries()
    return nodes if step.nodes is None else [n for n in nodes if n.name in step.nodes]


class _PubSub:
    """redis-py's PubSub as a plan's Listener."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub  # redis-py's PubSub; its methods are untyped

    def subscribe(self, channel: bytes) -> None:
        self._pubsub.subscribe(channel)

    def message(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._pubsub.get_message(timeout=remaining)
            if message is not None and message.get("type") == "message":
                data: bytes = message["data"]
                return data
        return None

    def close(self) -> None:
        self._pubsub.close()


class ClusterDriver(PlanDriver):
    """Runs plans on a redis-py Cluster client."""

    failures = DRIVER_ERRORS

    def __init__(self, client: redis.cluster.RedisCluster, url: str) -> None:
        self.client = client
        self._io: Any = client  # the same client; redis-py's command methods are untyped
        self.url = url

    def close(self) -> None:
        """Close every node's idle connections; one in use by another thread (a command
        in flight, a ``get()`` waiting on its pub/sub connection) is left to that call.

        Not redis-py's close(), which disconnects connections in use too (a web app's
        requests in flight failed when it closed the broker at shutdown), and on a
        Cluster also dropped the default node: every call after it, in any thread, failed
        with AttributeError ("'NoneType' object has no attribute 'redis_connection'").
        """
        for node in self._io.get_nodes():  # a pool per node
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect(inuse_connections=False)

    def _listener(self) -> Listener:
        return _PubSub(self._io.pubsub(ignore_subscribe_messages=True))

    def start(self, plan: Plan[T], what: str) -> Landing[T]:
        """The plan, run when its result is asked for: redis-py routes each call and
        cannot leave a reply unread (``Broker.overlaps_calls`` is False on Cluster)."""
        return Ready(lambda: self.run(plan, what))

    def _do(self, step: Step) -> Any:
        if isinstance(step, Call | Command):
            return self._patiently(step)
        if isinstance(step, Batch):
            return self._batch(step.steps)
        raise TypeError(f"unknown step {step!r}")

    def _patiently(self, step: Call | Command) -> Any:
        """Run one step, tried again while its slot is on the move (see
        REDIRECT_PATIENCE): a refused command did not run, so trying again is safe."""
        deadline = time.monotonic() + REDIRECT_PATIENCE
        pause = REDIRECT_PAUSE[0]
        while True:
            try:
                return self._one(step)
            except ClusterError as exc:
                if not redirected(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise still_moving(exc, step) from exc
            time.sleep(pause)
            pause = min(pause * 2, REDIRECT_PAUSE[1])

    def _one(self, step: Call | Command) -> Any:
        client = self._io
        if isinstance(step, Call):
            try:
                return client.execute_command(*evalsha(step))
            except NoScriptError:  # not cached on this node yet, or SCRIPT FLUSH
                return client.execute_command(*eval_(step))
        return client.execute_command(*step.args)

    def _on_every_node(self, step: OnEveryNode) -> list[tuple[str, Any]]:
        client = self._io
        replies: list[tuple[str, Any]] = []
        for node in primaries(client, step):
            try:
                reply = client.execute_command(*step.command.args, target_nodes=node)
            except DRIVER_ERRORS as exc:
                reply = exc
            replies.append((node.name, reply))
        return replies

    def _batch(self, steps: Iterable[Call | Command]) -> list[Any]:
        steps = list(steps)
        if len(steps) == 1:
            return [self._do(steps[0])]
        pipe = self._io.pipeline(transaction=False)
        for step in steps:
            pipe.execute_command(*command_args(step))
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                step = steps[i]
                assert isinstance(step, Call)
                replies[i] = self._io.execute_command(*eval_(step))
            elif redirected(reply):  # refused, not run: on its own, patiently
                replies[i] = self._patiently(steps[i])
            elif isinstance(reply, Exception):
                raise reply
        return replies
