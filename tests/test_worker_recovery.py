"""Issue 3's worker-level acceptance: leases outlive slow tasks, and workers and producers
come back by themselves after Redis dies and restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celeriac import BrokerConnectionError, Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import start_redis

pytestmark = pytest.mark.slow

SHORT_LEASE = {"CELERIAC_WORKER_LEASE_SECONDS": "1", "CELERIAC_WORKER_HEARTBEAT_SECONDS": "0.5"}


def test_a_task_three_times_longer_than_its_lease_runs_once(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    core_app.conf.worker_lease_seconds = 1
    workers.start("-c", "1", env=SHORT_LEASE)
    workers.start("-c", "1", env=SHORT_LEASE)  # an idle rival, ready to take expired work
    result = core.work.delay(3.0, "slow")
    assert result.get(timeout=30) == "slow"
    time.sleep(1.5)  # longer than a lease: a wrongly expired copy would have started by now
    assert ledger.count("start")[result.id] == 1


def test_workers_and_producers_recover_from_a_redis_restart(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_redis(tmp_path / "redis", appendonly=True)
    url = f"{server.url}?prefix=restart"
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(core.app.conf, "broker_url", url)
    procs = WorkerProcesses(url, ledger)
    try:
        procs.start("-c", "2", env=SHORT_LEASE)
        assert core.add.delay(1, 1).get(timeout=20) == 2
        server.kill()
        with pytest.raises(BrokerConnectionError, match=r"127\.0\.0\.1"):
            core.add.delay(2, 2)
        time.sleep(2)  # the workers see the outage and back off
        server = start_redis(tmp_path / "redis", port=server.port, appendonly=True)
        results = [core.add.delay(i, i) for i in range(50)]
        assert [r.get(timeout=60) for r in results] == [2 * i for i in range(50)]
        assert wait_for(lambda: len(core.app.broker.workers()) >= 1, timeout=10)
    finally:
        procs.kill_all()
        core.app.broker.close()
        server.stop()
