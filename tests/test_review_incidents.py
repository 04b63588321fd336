"""Production incidents, staged on loopback: a Redis that reached ``maxmemory`` with
``noeviction``, a Redis whose password changed or that restarted empty, a SQLite broker
whose file turned read-only, and a queue of many waiting tasks.

The worker processes import this module (``-A tests.test_review_incidents``) for its tasks.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import redis
from celeriac import Celeriac
from celeriac.brokers.records import Outgoing, WorkerInfo
from celeriac.brokers.redis import RedisBroker, ops
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.errors import BrokerError
from celeriac.testing import wait_for
from tests.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.slow

app = Celeriac("review-incidents")


@app.task
def echo(value: int) -> int:
    return value


@pytest.fixture
def private_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to fill up, restart or lock; this module's
    app points at it."""
    server = start_redis(extra=("--maxmemory-policy", "noeviction"))
    monkeypatch.setattr(app.conf, "broker_url", server.url)
    yield server
    app.broker.close()
    server.stop()


def fill_up(raw: redis.Redis) -> None:
    """Make Redis full: ``maxmemory`` below what it already uses (noeviction refuses
    writes that may grow memory from now on)."""
    used = int(raw.info("memory")["used_memory"])
    raw.config_set("maxmemory", used // 2)


def test_a_full_redis_keeps_renewing_leases_and_heartbeats(private_redis: RedisServer) -> None:
    """A full Redis refused heartbeats and lease renewals (their first write is a ZADD)
    but ran fetch and the reaper (their first write is a pop): a live worker was declared
    dead, its running task handed to a second worker, and its commit refused."""
    broker = app.broker
    raw = redis.Redis(port=private_redis.port)
    try:
        echo.delay(1)
        now = time.time()
        worker = WorkerInfo("w1", "host", 1, ("default",), 1, now, now, {})
        broker.heartbeat(worker, 2)
        [held] = broker.fetch(["default"], "w1", limit=1, lease_seconds=2, timeout=1)
        fill_up(raw)
        deadline = time.monotonic() + 4  # twice the lease and the heartbeat's ttl
        while time.monotonic() < deadline:
            broker.heartbeat(worker, 2)
            assert broker.renew([held.lease], 2) == []
            broker.reap()
            time.sleep(0.3)
        assert [w.id for w in broker.workers()] == ["w1"]
        assert broker.fetch(["default"], "w2", limit=1, lease_seconds=2, timeout=0.1) == []
        assert broker.complete(held.lease, b"1", 60)
    finally:
        raw.config_set("maxmemory", 0)
        raw.close()


def test_a_full_redis_still_hands_out_delayed_tasks_that_came_due(
    private_redis: RedisServer,
) -> None:
    """Fetch moved a due delayed task (a retry, a countdown) with RPUSH first: a full Redis
    refused that first write, so every fetch of the queue failed until memory was freed,
    and no task could be taken to drain it."""
    broker = app.broker
    raw = redis.Redis(port=private_redis.port)
    try:
        echo.apply_async((1,), countdown=0.2)
        time.sleep(0.3)
        fill_up(raw)
        [taken] = broker.fetch(["default"], "w1", limit=1, lease_seconds=30, timeout=1)
        assert taken.body and broker.complete(taken.lease, None, 60)
    finally:
        raw.config_set("maxmemory", 0)
        raw.close()


def test_a_redis_restarted_empty_shows_the_queues_sent_to_after_it(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived producer registered its queue once per process: after a Redis restart
    without persistence, ``celeriac status`` said "no queues yet" while its new tasks
    waited (and ``dlq list`` and other workers' reapers skipped that queue)."""
    monkeypatch.setattr(ops, "REREGISTER", 0.2)
    echo.delay(1)
    private_redis.stop()
    restarted = start_redis(port=private_redis.port, extra=("--maxmemory-policy", "noeviction"))
    try:
        time.sleep(0.3)  # REREGISTER passes: this process registers its queues again
        assert wait_for(_sends, timeout=10)
        fresh = RedisBroker(restarted.url)
        try:
            assert [(s.queue, s.ready) for s in fresh.stats()] == [("default", 1)]
        finally:
            fresh.close()
    finally:
        app.broker.close()
        restarted.stop()


def _sends() -> bool:
    """Send once; False while the broker does not answer yet (it is restarting)."""
    try:
        echo.delay(2)
    except BrokerError:
        return False
    return True


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs of this test's own (skipped where mounting is not allowed)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_under_the_sqlite_broker_says_what_to_do(small_disk: Path) -> None:
    """A full disk said only "database or disk is full", and purging, the first thing one
    tries, fails the same way: the error names the folder and that space must be freed."""
    broker = SQLiteBroker(f"sqlite:///{small_disk}/broker.db")
    try:
        with pytest.raises(BrokerError) as failure:
            for n in range(10_000):
                broker.send([Outgoing(id=f"t{n}", queue="default", body=b"x" * 4000)])
        message = str(failure.value)
        assert "full" in message
        assert f"Free space on the disk holding {small_disk}" in message
        assert "nothing was written" in message
        with pytest.raises(BrokerError, match="Free space on the disk"):
            broker.purge("default")
    finally:
        broker.close()


def test_a_read_only_sqlite_broker_says_what_to_do(tmp_path: Path) -> None:
    """An immutable broker file (a read-only remount does the same; root ignores chmod)
    said only "attempt to write a readonly database"."""
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/broker.db")
    broker.send([Outgoing(id="t1", queue="default", body=b"{}")])
    files = [tmp_path / "broker.db", tmp_path / "broker.db-wal"]
    locked = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True, check=False)
    if locked.returncode != 0:
        broker.close()
        pytest.skip(f"cannot make the broker file immutable: {locked.stderr.decode().strip()}")
    try:
        with pytest.raises(BrokerError) as failure:
            broker.send([Outgoing(id="t2", queue="default", body=b"{}")])
        message = str(failure.value)
        assert "cannot be written" in message
        assert "nothing was written" in message
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=False)
        broker.close()


def test_a_worker_started_while_redis_is_full_drains_the_queue(
    private_redis: RedisServer,
) -> None:
    """A worker started (or restarted) while Redis was full could not fetch: registering
    its queues is an SADD, which a full Redis refuses, so nothing ever drained the queue
    that filled it."""
    raw = redis.Redis(port=private_redis.port)
    try:
        app.send_many([echo.message((n,)) for n in range(200)])
        fill_up(raw)
        fresh = RedisBroker(private_redis.url)  # a new worker process: nothing registered
        try:
            now = time.time()
            fresh.heartbeat(WorkerInfo("w1", "host", 1, ("default",), 1, now, now, {}), 10)
            taken = fresh.fetch(["default"], "w1", limit=10, lease_seconds=10, timeout=1)
            assert len(taken) == 10
            assert all(fresh.complete(d.lease, b"1", 60) for d in taken)
        finally:
            fresh.close()
    finally:
        raw.config_set("maxmemory", 0)
        raw.close()
