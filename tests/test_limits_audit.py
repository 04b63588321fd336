"""Rate limits and dedupe under conditions a deployment meets: a broker that stops
answering while a worker holds tasks, and backlogs far over their limit.

Each test runs real components: the broker under test (a private redis-server, a SQLite
file) and, where it says so, worker processes importing this module as their app.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from celeriac import Celeriac, Task
from celeriac.brokers.records import Delivery
from celeriac.worker.executor import Executor
from tests.redis_server import RedisServer

app = Celeriac("limits-audit")
ran: list[str] = []


@app.bound_task(rate_limit="1/m")
def once_a_minute(self: Task[Any, Any], n: int) -> int:
    ran.append(self.request.id)
    return n


@app.bound_task(debounce=0.05)
def reindex(self: Task[Any, Any], version: int) -> int:
    ran.append(self.request.id)
    return version


def _fetch(app: Celeriac, count: int) -> list[Delivery]:
    fetched: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(fetched) < count and time.monotonic() < deadline:
        fetched += app.broker.fetch(["default"], "w", limit=count, lease_seconds=30, timeout=0.2)
    assert len(fetched) == count
    return fetched


# -- the broker stops answering while a worker holds tasks -------------------------------


def test_a_rate_limited_task_is_not_run_unlimited_while_the_broker_is_unreachable(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limiter's failed call raised out of the hook, which the stack logs and skips:
    # every task a child held during a failover ran at once, with no limit at all.
    monkeypatch.setattr(app.conf, "broker_url", private_redis.url)
    ran.clear()
    first, second = once_a_minute.delay(1), once_a_minute.delay(2)
    executor = Executor(app, "w")
    try:
        held = {d.id: d for d in _fetch(app, 2)}
        job, skip = executor.prepare(held[first.id])
        assert skip is None and executor.execute(job).state == "SUCCESS"
        private_redis.stop()
        job, skip = executor.prepare(held[second.id])
        assert skip is None
        outcome = executor.execute(job)
        assert outcome.state == "DEFERRED"  # was SUCCESS: the second start in a minute
        assert "rate limit" in outcome.reason
        assert ran == [first.id]
    finally:
        app.broker.close()


def test_a_superseded_debounced_send_does_not_run_while_the_broker_is_unreachable(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.conf, "broker_url", private_redis.url)
    ran.clear()
    superseded = reindex.delay(1)
    reindex.delay(2)
    executor = Executor(app, "w")
    try:
        held = {d.id: d for d in _fetch(app, 2)}
        private_redis.stop()
        job, skip = executor.prepare(held[superseded.id])
        assert skip is None
        outcome = executor.execute(job)
        assert outcome.state == "DEFERRED"  # was SUCCESS: the burst ran twice
        assert ran == []
    finally:
        app.broker.close()
