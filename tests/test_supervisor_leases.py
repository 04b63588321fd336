"""The supervisor's lease renewal, in-process: it renews what its children's slots list,
and warns of a lost lease only when a child still holds it."""

from __future__ import annotations

import logging
import time
import types

import pytest

from celeriac import Celeriac
from celeriac.brokers.records import Lease, Outgoing
from celeriac.errors import BrokerError
from celeriac.worker import outage, supervisor
from celeriac.worker.slot import Held
from celeriac.worker.supervisor import Worker
from tests.redis_server import RedisServer, start_redis


@pytest.fixture
def worker(sqlite_url: str) -> Worker:
    return Worker(Celeriac("leases", broker=sqlite_url), ["q"], concurrency=1)


def _hold(worker: Worker, lease_seconds: float) -> Held:
    broker = worker.app.broker
    broker.send([Outgoing("t1", "q", b"body")])
    (d,) = broker.fetch(["q"], "child", limit=1, lease_seconds=lease_seconds, timeout=0)
    held = Held(d.lease.id, d.lease.queue, d.lease.token, "t", started=time.time())
    child = worker._children[0]
    child.pid = 1  # a live child in this place: its slot is read
    child.slot.write([held], rss=1)
    child.last_view = child.slot.read()
    return held


def test_a_lease_committed_since_the_slot_was_read_is_not_called_lost(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    held = _hold(worker, lease_seconds=30)
    # The child commits between the supervisor's read of its slot and the renewal.
    assert worker.app.broker.complete(Lease(held.id, held.queue, held.token), b"done", 60)
    worker._children[0].slot.write([], rss=1)
    worker._renew_leases()
    assert "lost the lease" not in caplog.text


def test_a_lease_a_child_still_holds_and_lost_is_called_lost(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    held = _hold(worker, lease_seconds=0.05)
    # The lease runs out and another worker takes the message (fetch waits for that).
    (again,) = worker.app.broker.fetch(["q"], "other", limit=1, lease_seconds=30, timeout=5)
    assert again.id == held.id
    with caplog.at_level(logging.WARNING):
        worker._renew_leases()
        assert "lost the lease" not in caplog.text  # maybe committed, its slot not written
        worker._renew_leases()
    assert f"lost the lease of {held.id}: its lease lapsed and the broker handed" in caplog.text


def test_a_lease_redis_lost_in_a_restart_is_not_said_to_be_run_elsewhere(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis restarted without persistence while a child ran the task: the warning said
    # "another worker may run them", though no copy of the message was left anywhere.
    worker = Worker(Celeriac("leases", broker=private_redis.url), ["q"], concurrency=1)
    try:
        held = _hold(worker, lease_seconds=30)
        private_redis.stop()
        restarted = start_redis(private_redis.folder, port=private_redis.port)
        try:
            with caplog.at_level(logging.WARNING):
                worker._renew_leases()
                worker._renew_leases()
        finally:
            restarted.stop()
    finally:
        worker.app.broker.close()
    assert f"lost the lease of {held.id}: the broker no longer holds this message" in caplog.text
    assert "Redis restarted without persistence" in caplog.text
    assert "another worker may run" not in caplog.text


def test_a_lease_committed_before_the_child_rewrote_its_slot_is_not_called_lost(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    # A child commits a batch, and lists it in its slot until its next write: the slot
    # still names the task when the renewal finds it gone. That read as "lost the lease
    # ...; another worker may run them" (~1 run in 6 under load on SQLite).
    held = _hold(worker, lease_seconds=30)
    assert worker.app.broker.complete(Lease(held.id, held.queue, held.token), b"done", 60)
    with caplog.at_level(logging.WARNING):
        worker._renew_leases()  # the slot still lists it
        worker._children[0].slot.write([], rss=1)
        worker._children[0].last_view = worker._children[0].slot.read()
        worker._renew_leases()
    assert "lost the lease" not in caplog.text


def test_what_a_dead_child_held_is_not_renewed_after_it_went_back(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    # The dead child's slot kept listing what was put back until a new child took the
    # place: renewal renewed it, found it gone, and called it lost.
    held = _hold(worker, lease_seconds=30)
    worker._stop_requests = 1  # stopping: no child is started in its place
    with caplog.at_level(logging.WARNING):
        worker._after_exit(worker._children[0], -9)
        assert worker.app.broker.stats()[0].ready == 1  # put back
        worker._tick()
        worker._renew_leases()
        worker._renew_leases()
    assert worker._children[0].last_view.held == []
    assert "lost the lease" not in caplog.text, held


def test_an_outage_is_measured_from_the_start_of_the_call_that_hung(
    worker: Worker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broker that hangs (Redis frozen, a lost network) fails a socket timeout after the
    # call began: measured from the failure, a 31 s outage read "answers again after 2s".
    clock = [1000.0]
    fake = types.SimpleNamespace(time=time.time, monotonic=lambda: clock[0], sleep=time.sleep)
    monkeypatch.setattr(supervisor, "time", fake)
    monkeypatch.setattr(outage, "time", fake)

    def duties(now: float) -> None:
        if clock[0] < 1031:
            clock[0] += 31  # the call hangs for a socket timeout, then fails
            raise BrokerError("Timeout reading from socket")
        clock[0] += 0.5

    monkeypatch.setattr(worker, "_broker_duties", duties)
    with caplog.at_level(logging.INFO, logger="celeriac.worker"):
        worker._tick()
        clock[0] += 1.2  # past the retry's time
        worker._tick()
    assert "cannot reach the broker: a call waited 31s (Timeout" in caplog.text
    assert "the broker answers again after 33s" in caplog.text
