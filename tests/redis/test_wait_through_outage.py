"""A result wait that Redis drops out of: waited out until the wait's own deadline.

A waiter's read of the result key that met a restarting Redis ("Connection closed by
server", connection refused) ended ``get()`` / ``aget()`` at once with
BrokerConnectionError, although the wait had most of its timeout left and Redis was back a
second later; the workers of the same deploy reconnect by themselves. The waiters here read
the key every 50 ms (``LISTEN_STEP``), so each meets the outage with a read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import pytest

import redis
from celeriac.brokers.redis import RedisBroker, admin
from celeriac.errors import BrokerConnectionError
from celeriac.testing import wait_for
from tests.redis.conftest import held_lease
from tests.redis_server import RedisServer, free_port

STILL_WAITING = "Still waiting"


@pytest.fixture(autouse=True)
def _quick_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "LISTEN_STEP", 0.05)


def _registered(server: RedisServer, broker: RedisBroker) -> bool:
    """A waiter is registered, so it has begun its wait (its reads come next)."""
    with redis.Redis(port=server.port) as raw:
        return bool(raw.zcard(broker.keys.waiting))


def _outage_seen(caplog: pytest.LogCaptureFixture) -> bool:
    return any(STILL_WAITING in record.getMessage() for record in caplog.records)


def test_a_sync_wait_outlasts_a_redis_restart(
    own_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac.broker")
    server = own_server()
    broker = RedisBroker(server.url)
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(broker.wait_result("t", 60))
        except BrokerConnectionError as exc:  # the assertion below names it
            outcome.append(exc)

    try:
        lease = held_lease(broker, "t")
        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_for(lambda: _registered(server, broker), timeout=10)
        server.stop()
        wait_for(lambda: outcome or _outage_seen(caplog), timeout=20)
        assert not outcome, f"the wait ended during the outage: {outcome}"
        own_server(port=server.port)
        assert broker.complete_many([(lease, b"done")], 60) == ([True], [])  # type: ignore[list-item]
        waiter.join(20)
        assert outcome == [b"done"]
    finally:
        broker.close()


def test_an_async_wait_outlasts_a_redis_restart(
    own_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac.broker")
    server = own_server()
    broker = RedisBroker(server.url)
    try:
        lease = held_lease(broker, "t")

        async def scenario() -> bytes | None:
            waiting = asyncio.create_task(broker.await_result("t", 60))
            await asyncio.sleep(0.2)  # subscribed and reading
            server.stop()
            for _ in range(1000):
                if waiting.done() or _outage_seen(caplog):
                    break
                await asyncio.sleep(0.02)
            assert not waiting.done(), f"the wait ended during the outage: {waiting}"
            own_server(port=server.port)
            assert broker.complete_many([(lease, b"done")], 60) == ([True], [])  # type: ignore[list-item]
            return await asyncio.wait_for(waiting, 20)

        assert asyncio.run(scenario()) == b"done"
    finally:
        broker.close()


def test_redis_still_away_at_the_deadline_is_an_error_not_a_time_out(
    own_server: Callable[..., RedisServer],
) -> None:
    # Returning None would read as "the task did not finish in time" (TimeoutError from
    # get()), when nobody could tell.
    server = own_server()
    broker = RedisBroker(server.url)
    try:
        held_lease(broker, "t")
        outcome: list[object] = []

        def wait() -> None:
            try:
                outcome.append(broker.wait_result("t", 2.0))
            except BrokerConnectionError as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_for(lambda: _registered(server, broker), timeout=10)
        server.stop()
        waiter.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], BrokerConnectionError), outcome
        assert "could not wait for the result of task t" in str(outcome[0])
    finally:
        broker.close()


def test_a_wait_on_a_redis_that_is_not_there_fails_at_once() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(BrokerConnectionError, match="did not answer"):
            broker.wait_result("t", 3600)
    finally:
        broker.close()
