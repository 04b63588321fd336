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
import os
import signal
import threading
from collections.abc import Callable

import pytest

import redis
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker, admin
from celeriac.errors import BrokerConnectionError
from celeriac.testing import wait_for
from tests.redis.conftest import held_lease
from tests.redis_server import RedisServer, free_port

STILL_WAITING = "Still waiting"


@pytest.fixture(autouse=True)
def _quick_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "LISTEN_STEP", 0.05)
    monkeypatch.setattr(admin, "_outage_said_at", [-admin.OUTAGE_SAID_EVERY])  # none said yet


def test_many_waits_through_one_outage_say_it_once(caplog: pytest.LogCaptureFixture) -> None:
    # 500 waiters through a 2 s restart logged 500 "Still waiting" lines.
    from celeriac.brokers.redis import ops
    from celeriac.brokers.redis.keys import Keyspace
    from celeriac.errors import BrokerConnectionError as Outage

    outage = Outage("could not wait for the result of task t: Redis did not answer.")
    ctx = ops.Context(Keyspace("p"), cluster=False, known=set())
    for _ in range(20):  # each wait, as its plan is driven: register, subscribe, look
        plan = admin.wait_result(ctx, "t", 60.0)
        next(plan)
        plan.send(1)
        plan.send(None)
        plan.throw(outage)  # the outage meets it: it pauses, and would look again
        plan.close()
    said = [r for r in caplog.records if STILL_WAITING in r.getMessage()]
    assert len(said) == 1, said
    assert "other waits of this process say nothing more for 30 s" in said[0].getMessage()


def _waiting(server: RedisServer, broker: RedisBroker, task_id: str = "t") -> bool:
    """A waiter is registered and subscribed: its wait has begun, its reads come next."""
    channel = broker.keys.channel(task_id)
    with redis.Redis(port=server.port) as raw:
        return bool(raw.zcard(broker.keys.waiting)) and raw.pubsub_numsub(channel) == [(channel, 1)]


def _wait_in_thread(broker: RedisBroker, timeout: float) -> tuple[threading.Thread, list[object]]:
    """A started thread waiting for task t's result; its outcome (the result or the
    BrokerConnectionError) lands in the list."""
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(broker.wait_result("t", timeout))
        except BrokerConnectionError as exc:  # the assertions name it
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    return waiter, outcome


def _outage_seen(caplog: pytest.LogCaptureFixture) -> bool:
    return any(STILL_WAITING in record.getMessage() for record in caplog.records)


def test_a_sync_wait_outlasts_a_redis_restart(
    own_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac.broker")
    server = own_server()
    broker = RedisBroker(server.url)
    try:
        lease = held_lease(broker, "t")
        waiter, outcome = _wait_in_thread(broker, 60)
        wait_for(lambda: _waiting(server, broker), timeout=10)
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
            for _ in range(500):
                if _waiting(server, broker):
                    break
                await asyncio.sleep(0.02)
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
        waiter, outcome = _wait_in_thread(broker, 4.0)  # begun well within 4 s, even loaded
        wait_for(lambda: _waiting(server, broker), timeout=10)
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


def test_a_wait_on_a_frozen_redis_ends_at_its_deadline_not_the_socket_timeout(
    own_server: Callable[..., RedisServer],
) -> None:
    # A stopped Redis (SIGSTOP, a paused VM) answers nothing: each read of the result
    # key waited the whole socket timeout, so a web request's get(timeout=1) took 31 s
    # with the defaults (here it would take 600 s).
    server = own_server()
    broker = RedisBroker(f"{server.url}?socket_timeout=600")
    try:
        held_lease(broker, "t")
        waiter, outcome = _wait_in_thread(broker, 1.0)
        wait_for(lambda: _waiting(server, broker), timeout=10)
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            waiter.join(30)
            assert not waiter.is_alive(), "the wait outlasted its timeout by 30 s"
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert len(outcome) == 1 and isinstance(outcome[0], BrokerConnectionError), outcome
        assert "did not answer" in str(outcome[0])
        assert broker.send([Outgoing("u", "q", b"u")]) == [True]  # no reply left on a socket
    finally:
        broker.close()
