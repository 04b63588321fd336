"""A worker says what the broker's notes say once they become true while it runs: a Redis
set to evict keys (refused at start-up, but CONFIG SET can change it on a running server),
which then deletes queued tasks and results in silence.

Real worker processes on a redis-server of the test's own (its settings are changed).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

import redis
from celeriac.testing import wait_for
from celeriac.worker.broker_duties import BrokerDuties
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer

EVICTING = "now uses maxmemory-policy allkeys-lru: under memory pressure it deletes keys"


def test_a_worker_says_when_redis_starts_to_evict(
    private_redis: RedisServer, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An on-call run set allkeys-lru on a running Redis: 675 of 705 tasks were evicted, and
    # the workers, the exporter and status's running peers said nothing for minutes.
    monkeypatch.setattr(core.app.conf, "broker_url", private_redis.url)
    procs = WorkerProcesses(private_redis.url, ledger)
    client = redis.Redis(port=private_redis.port)
    try:
        assert core.app.broker.notes() == []
        proc = procs.start("-c", "1", env={"CELERIAC_WORKER_HEARTBEAT_SECONDS": "0.1"})
        procs.wait_children(proc, 1)
        client.config_set("maxmemory-policy", "allkeys-lru")
        (note,) = core.app.broker.notes()
        assert EVICTING in note and "CONFIG SET maxmemory-policy noeviction" in note
        # Read every 30 heartbeats: 3 s here, a minute at the default 2 s.
        assert wait_for(lambda: EVICTING in procs.log_text(), timeout=30), procs.log_text()
        assert procs.log_text().count(EVICTING) == 1  # said again only after ten minutes
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
        procs.kill_all()
        core.app.broker.close()


def test_a_note_still_true_is_said_again_only_after_ten_minutes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    duties: Any = BrokerDuties.__new__(BrokerDuties)
    duties.id, duties._notes_said = "w1", {}
    clock = [1000.0]
    monkeypatch.setattr("celeriac.worker.broker_duties.time.monotonic", lambda: clock[0])
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        duties._say_notes(["Redis evicts"])
        clock[0] += 599
        duties._say_notes(["Redis evicts", "Redis is a replica"])
        clock[0] += 2
        duties._say_notes(["Redis evicts"])
    assert [r.getMessage() for r in caplog.records] == [
        "worker w1: Redis evicts",
        "worker w1: Redis is a replica",
        "worker w1: Redis evicts",
    ]
