"""Follow-ups on the broker's small store, each against real components.

* A rate-limited task that expires before the next free slot reserves nothing, in any
  process: a backlog of such tasks in one worker no longer pushes back a task sent by
  another producer (each worker process spent one slot per backlog before).
* ``SQLiteStore.kv_get`` reads any number of keys (one ``IN (...)`` list of them all failed
  past SQLite's bound-variable limit).
* ``GroupResult.forget()`` deletes every member's result in one round trip, counted with
  Redis's ``INFO commandstats`` (on Cluster, socket reads per node).

Real worker processes run this module's app (``-A tests.test_store_followups``) with the
same celeriac source as this test process. No test measures time: slots are read as
distances from the limiter itself.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import celeriac
import redis
from celeriac import Celeriac
from celeriac.brokers.redis import RedisBroker
from celeriac.brokers.redis.scripts import SCRIPTS
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.group_result import GroupResult
from celeriac.result import AsyncResult
from celeriac.testing import wait_for
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisClusterNodes, RedisServer, start_redis

# Workers import the celeriac this test imported (an old tree's, when PYTHONPATH says so).
WORKER_PATH = os.pathsep.join([str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)])
INTERVAL = 60.0  # seconds between slots of `paced` (1/m)
MEMBERS = 300  # a group's size for the command counts

app = Celeriac("store-followups")


@app.task(name="followups.paced", rate_limit="1/m")
def paced(n: int) -> int:
    """A task limited to one start a minute."""
    return n


# -- 1. rate-limit slots are not spent by tasks that will expire --------------------------


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite file, or the session's private redis-server under a fresh prefix."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def producer(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """This module's app in the test process: a producer apart from the worker."""
    monkeypatch.setattr(app.conf, "broker_url", url)
    yield app
    app.broker.close()


@pytest.mark.slow
def test_an_expiring_backlog_in_one_worker_does_not_push_back_another_producers_task(
    url: str, producer: Celeriac, tmp_path: Path
) -> None:
    broker = producer.broker
    key = f"rate:task:{paced.name}:slots"
    # This producer takes the slot free now: the limiter's next one is a minute away.
    assert broker.rate_reserve(key, 1 / INTERVAL) == 0
    procs = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    try:
        # Two worker processes: each child has its own middleware and its own memory of
        # the latest slot it was given.
        procs.start("-c", "2", app="tests.test_store_followups", env={"PYTHONPATH": WORKER_PATH})
        # A backlog that expires half a slot from now: none of it can start in time.
        sent = producer.send_many([paced.message((n,), expires=INTERVAL / 2) for n in range(20)])
        assert wait_for(lambda: all(r.state == "EXPIRED" for r in sent), timeout=60), (
            procs.log_text()
        )
    finally:
        procs.kill_all()
    # The slot another producer's task gets now. Was two or three minutes away: each
    # worker child reserved one slot (a minute each) for a task that then expired unrun,
    # before it learnt that later ones could not start in time.
    ahead = broker.rate_reserve(key, 1 / INTERVAL)
    assert 0 < ahead <= INTERVAL + 1, f"the next slot is {ahead:.0f}s ahead, not the next one"


def test_the_reserve_script_called_with_two_arguments_has_no_maximum(
    redis_server: RedisServer,
) -> None:
    """A caller that sends no max_wait (two arguments, as before) still reserves."""
    client = redis.Redis(port=redis_server.port)
    key = f"t{uuid.uuid4().hex[:12]}:rate:old"
    try:
        script = SCRIPTS.rate_reserve.text.decode()
        interval_us = int(INTERVAL * 1_000_000)
        assert client.eval(script, 1, key, interval_us, 1) == 0
        second = int(client.eval(script, 1, key, interval_us, 1))
        third = int(client.eval(script, 1, key, interval_us, 1))
        assert 0 < second <= interval_us < third <= 2 * interval_us
    finally:
        client.delete(key)
        client.close()


# -- 2. kv_get of more keys than SQLite binds in one statement -----------------------------


@pytest.mark.parametrize("limit", [None, 999], ids=["this-sqlite", "sqlite-before-3.32"])
def test_sqlite_kv_get_reads_more_keys_than_one_statement_can_bind(
    tmp_path: Path, limit: int | None
) -> None:
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/broker.db")
    try:
        db = broker._db()
        if limit is not None:  # the default bound of SQLite before 3.32
            db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        bound = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        keys = [f"k{i}" for i in range(bound + 1)]
        for i in (0, bound // 2, bound):
            assert broker.kv_set(keys[i], f"v{i}".encode(), 60)
        # Was BrokerError "too many SQL variables": one IN list of every key.
        values = broker.kv_get([*keys, keys[0]])
        assert len(values) == len(keys) + 1
        assert {i: v for i, v in enumerate(values) if v is not None} == {
            0: b"v0",
            bound // 2: f"v{bound // 2}".encode(),
            bound: f"v{bound}".encode(),
            bound + 1: b"v0",
        }
    finally:
        broker.close()


# -- 3. GroupResult.forget: one round trip for every member ---------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server: its command counts are this test's alone."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def _stored_group(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> GroupResult:
    """A saved group of MEMBERS, each with a stored result (a nested group and a chain's
    earlier steps included), and the broker's connection made."""
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    inner = GroupResult("g:in", [AsyncResult(f"g:in:{i}", app) for i in range(2)], app)
    chained: AsyncResult[Any] = AsyncResult("g:c", app)
    chained._workflow = ("g:c:s0",)
    members: list[AsyncResult[Any] | GroupResult] = [
        AsyncResult(f"g:{i}", app) for i in range(MEMBERS - 2)
    ]
    g = GroupResult("g", [*members, inner, chained], app)
    for task_id in _ids(g):
        app.broker.store_result(task_id, b'{"state":"STARTED"}', 600)
    g.save()
    inner.save()
    assert app.broker.get_results(_ids(g)) == [(b'{"state":"STARTED"}', False)] * len(_ids(g))
    return g


def _ids(g: GroupResult) -> list[str]:
    return [f"g:{i}" for i in range(MEMBERS - 2)] + ["g:in:0", "g:in:1", "g:c:s0", "g:c"]


def _commands_of(server: RedisServer, run: Callable[[], None]) -> dict[str, int]:
    """The commands Redis ran for ``run`` (the counting's own left out)."""
    client = redis.Redis(port=server.port)
    try:
        client.config_resetstat()
        run()
        stats = client.info("commandstats")
    finally:
        client.close()
    skip = {"cmdstat_config|resetstat", "cmdstat_info", "cmdstat_hello"}
    return {k[len("cmdstat_") :]: v["calls"] for k, v in stats.items() if k not in skip}


def test_forgetting_a_group_deletes_every_result_in_one_command_on_redis(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        g = _stored_group(f"{own_redis.url}?prefix=gf", monkeypatch)
        commands = _commands_of(own_redis, g.forget)
        # Was one DEL per member (302 here), then one per saved membership. Now one DEL of
        # every result, and one DEL per saved membership (the group's and the nested one's).
        assert commands == {"del": 3}, commands
        assert app.broker.get_results(_ids(g)) == [None] * len(_ids(g))
        assert GroupResult.restore(app, "g") is None
        assert GroupResult.restore(app, "g:in") is None
    finally:
        app.broker.close()


def _socket_reads(cluster: RedisClusterNodes) -> int:
    total = 0
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            total += int(client.info("stats")["total_reads_processed"])
        finally:
            client.close()
    return total


def test_forgetting_a_group_on_cluster_is_a_pipeline_not_a_round_trip_per_member(
    redis_cluster: RedisClusterNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        g = _stored_group(f"{redis_cluster.url}&prefix=gf{uuid.uuid4().hex[:8]}", monkeypatch)
        assert isinstance(app.broker, RedisBroker)
        before = _socket_reads(redis_cluster)
        g.forget()
        # The counting's own connections cost a few reads per node; a DEL per member
        # would be MEMBERS socket reads.
        reads = _socket_reads(redis_cluster) - before
        assert reads <= MEMBERS // 5, f"{reads} socket reads to forget {MEMBERS} members"
        assert app.broker.get_results(_ids(g)) == [None] * len(_ids(g))
        assert GroupResult.restore(app, "g") is None
    finally:
        app.broker.close()
