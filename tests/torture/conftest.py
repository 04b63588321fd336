"""Fixtures of the torture suite: a broker per scenario, the ledger, workers, the oracle.

Markers (registered here, not in pyproject.toml): ``torture`` on every scenario, and
``slow`` as on every test that runs real worker processes. ``scripts/torture --long`` runs
the same scenarios with the issue's full counts (``TORTURE_SCALE=long``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from celeriac import Celeriac
from tests.redis_server import RedisServer
from tests.torture import app as torture_app
from tests.torture.harness import LedgerFile, Oracle, Producer, Timing, Workers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "torture: a torture scenario (issue 9); scripts/torture --long runs it big"
    )


@dataclass
class Rig:
    """Everything a scenario needs, pointed at one broker."""

    url: str
    app: Celeriac
    ledger: LedgerFile
    timing: Timing
    producer: Producer
    workers: Workers
    oracle: Oracle
    folder: Path


def make_rig(url: str, folder: Path, timing: Timing | None = None) -> Rig:
    """A rig on ``url``; the caller stops its workers (``rig.workers.kill_all()``)."""
    timing = timing or Timing()
    ledger = LedgerFile(folder / "ledger.jsonl")
    app = torture_app.app
    app.conf.broker_url = url
    app.conf.update(
        worker_lease_seconds=timing.lease,
        worker_heartbeat_seconds=timing.heartbeat,
        task_max_deliveries=timing.max_deliveries,
    )
    return Rig(
        url,
        app,
        ledger,
        timing,
        Producer(app, ledger),
        Workers(url, ledger, timing),
        Oracle(app, ledger, timing),
        folder,
    )


RigFactory = Callable[..., Rig]


def redis_url(server: RedisServer) -> str:
    """The server's URL under a key prefix of this test's own."""
    return f"{server.url}?prefix=tt{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each broker: a fresh SQLite file, or the session's redis-server under a new prefix."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    return redis_url(request.getfixturevalue("redis_server"))


@pytest.fixture
def redis_only(redis_server: RedisServer) -> str:
    """The session's redis-server under a prefix of this test's own."""
    return redis_url(redis_server)


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[RigFactory]:
    """Make rigs for this test; every worker they started is killed by PID at the end."""
    made: list[Rig] = []
    saved = torture_app.app.conf.as_dict()

    def make(url: str, timing: Timing | None = None) -> Rig:
        folder = tmp_path / f"rig{len(made)}"
        folder.mkdir()
        made.append(make_rig(url, folder, timing))
        return made[-1]

    yield make
    for rig in made:
        rig.workers.kill_all()
    torture_app.app.broker.close()
    torture_app.app.conf.update(**saved)


@pytest.fixture
def rig(backend: str, rig_factory: RigFactory) -> Rig:
    """A rig on each broker (parametrized: sqlite, redis)."""
    return rig_factory(backend)


@pytest.fixture
def redis_rig(redis_only: str, rig_factory: RigFactory) -> Rig:
    """A rig on the session's redis-server."""
    return rig_factory(redis_only)
