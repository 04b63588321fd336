"""Reading a group's results: one broker round trip for all its members, not one each.

Command counts come from a private redis-server's ``INFO commandstats`` (and, on Cluster,
``total_reads_processed``: a pipeline is read in a few socket reads, one GET per round trip
in one each); no test measures time. What each read means is checked on the in-memory
broker, nested groups and failures included.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import celeriac
import redis
from celeriac import Celeriac
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.redis import RedisBroker
from celeriac.canvas import group
from celeriac.errors import ResultTimeout
from celeriac.group_result import GroupResult
from celeriac.result import AsyncResult
from celeriac.testing import run_queued, wait_for
from tests.conformance.test_messages import out
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisClusterNodes, RedisServer, start_redis

# Workers import the celeriac this test imported (an old tree's, when PYTHONPATH says so).
WORKER_PATH = os.pathsep.join([str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)])
MEMBERS = 300  # a group's size for the command counts: one MGET holds them all

# Tasks of this file, run by a worker started with ``-A tests.test_group_reads``.
app = Celeriac("group-reads")


@app.task(name="group_reads.double")
def double(x: int) -> int:
    """Twice ``x``."""
    return 2 * x


@app.task(name="group_reads.boom")
def boom(message: str) -> None:
    """Fails with ``message``."""
    raise ValueError(message)


@app.task(name="group_reads.nap")
def nap(seconds: float, value: int) -> int:
    """Sleeps, then returns ``value``: members that finish while a waiter waits."""
    time.sleep(seconds)
    return value


@app.task(name="group_reads.upstream")
def upstream() -> None:
    """Fails the way a task does when a result it waited for did not come in time."""
    raise ResultTimeout("the upstream report did not finish within 5s")


# -- one round trip on Redis, for a group finished by a real worker -------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server: its command counts are this test's alone."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def finished_group(
    own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GroupResult]:
    """A group of MEMBERS, every one run by a real worker, then the worker stopped."""
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    url = f"{own_redis.url}?prefix=gr"
    monkeypatch.setattr(app.conf, "broker_url", url)
    procs = WorkerProcesses(url, ledger)
    try:
        g = group(double.s(i) for i in range(MEMBERS)).apply_async()
        worker = procs.start(
            "-c", "2", app="tests.test_group_reads", env={"PYTHONPATH": WORKER_PATH}
        )
        assert wait_for(lambda: _finished_count(own_redis, g) == MEMBERS, timeout=60), (
            procs.log_text()
        )
        assert procs.stop(worker) == 0, procs.log_text()
        yield g
    finally:
        procs.kill_all()
        app.broker.close()


def _finished_count(server: RedisServer, g: GroupResult) -> int:
    """Final results stored for the group, read with a client of the test's own."""
    client = redis.Redis(port=server.port)
    try:
        stored = client.mget([f"gr:r:{{{m.id}}}" for m in g.results])
    finally:
        client.close()
    return sum(1 for s in stored if s is not None and s[:1] == b"F")


def _commands_of(server: RedisServer, read: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """What ``read`` returned, and the commands Redis ran for it (connection set-up and
    the counting itself left out)."""
    client = redis.Redis(port=server.port)
    try:
        client.config_resetstat()
        value = read()
        stats = client.info("commandstats")
    finally:
        client.close()
    skip = {"cmdstat_config|resetstat", "cmdstat_info", "cmdstat_hello"}
    return value, {k[len("cmdstat_") :]: v["calls"] for k, v in stats.items() if k not in skip}


@pytest.mark.slow
def test_every_read_of_a_finished_group_is_one_command_on_redis(
    own_redis: RedisServer, finished_group: GroupResult
) -> None:
    """Each read cost a GET per member (and get() a subscribe, a GET and two writes per
    member): 300 commands or 1,200 for one answer. Now one MGET, in one round trip."""
    g = finished_group
    values = [2 * i for i in range(MEMBERS)]
    reads: dict[str, Callable[[], Any]] = {
        "completed_count()": g.completed_count,
        "ready()": g.ready,
        "successful()": g.successful,
        "failed()": g.failed,
        "state": lambda: g.state,
        "get()": lambda: g.get(timeout=30),
        "aget()": lambda: asyncio.run(g.aget(timeout=30)),
        "iter_completed()": lambda: len(list(g.iter_completed(timeout=30))),
    }
    expected = [MEMBERS, True, True, False, "SUCCESS", values, values, MEMBERS]
    for (name, read), want in zip(reads.items(), expected, strict=True):
        value, commands = _commands_of(own_redis, read)
        assert value == want, name
        assert commands == {"mget": 1}, f"{name} ran {commands}"


@pytest.mark.slow
def test_get_waits_for_members_finishing_one_by_one(
    own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real worker with one slot finishes the members in turn while get() waits: each
    commit wakes the wait, and the values come back in member order."""
    ledger = Ledger(tmp_path / "ledger.txt")
    url = f"{own_redis.url}?prefix=gw"
    monkeypatch.setattr(app.conf, "broker_url", url)
    procs = WorkerProcesses(url, ledger)
    try:
        procs.start("-c", "1", app="tests.test_group_reads", env={"PYTHONPATH": WORKER_PATH})
        g = group(nap.s(0.02, i) for i in range(60)).apply_async()
        assert g.get(timeout=60) == list(range(60))
        h = group(nap.s(0.02, i) for i in range(30)).apply_async()
        assert asyncio.run(h.aget(timeout=60)) == list(range(30))
    finally:
        procs.kill_all()
        app.broker.close()


# -- Redis Cluster: each result key in its own slot, still one round trip per node --------


def _store_finished(broker: RedisBroker, ids: list[str]) -> None:
    """Final results for ``ids``, stored the way a worker stores them (fetch, complete)."""
    broker.send([out(i, queue="gr", body=b"{}") for i in ids])
    taken = broker.fetch(["gr"], "c1", limit=len(ids), lease_seconds=60, timeout=0)
    committed, _ = broker.complete_many([(d.lease, b'{"state":"SUCCESS"}') for d in taken], 600)
    assert len(taken) == len(ids) and all(committed)


def _socket_reads(cluster: RedisClusterNodes) -> int:
    total = 0
    for node in cluster.nodes:
        client = redis.Redis(port=node.port)
        try:
            total += int(client.info("stats")["total_reads_processed"])
        finally:
            client.close()
    return total


def test_a_group_read_on_cluster_is_a_pipeline_not_a_round_trip_per_member(
    redis_cluster: RedisClusterNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{redis_cluster.url}&prefix=gr{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(app.conf, "broker_url", url)
    try:
        broker = app.broker
        assert isinstance(broker, RedisBroker)
        g = GroupResult("g", [AsyncResult(f"g:{i}", app) for i in range(MEMBERS)], app)
        _store_finished(broker, [m.id for m in g.results[:-1]])
        assert g.completed_count() == MEMBERS - 1  # connects, and warms redis-py's slot map
        before = _socket_reads(redis_cluster)
        assert g.completed_count() == MEMBERS - 1
        assert not g.ready()
        # Two reads of the group, plus the counting's own connections (a few reads per
        # node): a GET per member would be 2 * MEMBERS socket reads.
        reads = _socket_reads(redis_cluster) - before
        assert reads <= MEMBERS // 5, f"{reads} socket reads for 2 reads of {MEMBERS} members"
        # The async face too (its connections are made for its event loop: not counted).
        text = str(asyncio.run(g._atimed_out(1.0)))
        assert text.startswith(
            f"group g: 1 of {MEMBERS} members did not finish within 1s (g:{MEMBERS - 1})"
        ), text
    finally:
        app.broker.close()


# -- what each read means: nested groups, failures, order -----------------------------------


@pytest.fixture
def memory_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """This file's app on a fresh in-memory broker."""
    monkeypatch.setattr(app.conf, "broker_url", "memory://")
    app.use_broker(MemoryBroker())
    yield app
    app.broker.close()


def _never(tag: str) -> AsyncResult[Any]:
    """A member that never finishes: its task was never sent."""
    return AsyncResult(f"never-{tag}-{uuid.uuid4().hex[:6]}", app, "never.sent")


def test_nested_groups_are_read_with_the_rest_and_counted_once(memory_app: Celeriac) -> None:
    first, fails, third = double.delay(1), boom.delay("bad input"), double.delay(3)
    run_queued(memory_app, fail_fast=False)
    inner_done = GroupResult("inner-done", [third, first], memory_app)
    inner_waiting = GroupResult("inner-waiting", [third, _never("a")], memory_app)
    g = GroupResult("outer", [first, inner_done, inner_waiting, fails, first], memory_app)
    assert g.completed_count() == 3  # succeeded: not the failed one, nor the nested group
    # with an unfinished member
    assert not g.ready() and g.failed() and not g.successful()
    assert g.state == "PENDING"
    done = GroupResult("done", [first, inner_done, fails], memory_app)
    assert done.ready() and done.failed() and done.state == "FAILURE"
    assert done.summary().meta == {"done": 3, "total": 3}
    ok = GroupResult("ok", [first, inner_done], memory_app)
    assert ok.ready() and ok.successful() and not ok.failed() and ok.state == "SUCCESS"
    assert ok.get(timeout=5) == [2, [6, 2]]
    assert asyncio.run(ok.aget(timeout=5)) == [2, [6, 2]]
    values = done.get(timeout=5, propagate=False)
    assert values[:2] == [2, [6, 2]] and isinstance(values[2], ValueError)
    with pytest.raises(ValueError, match="bad input"):
        done.get(timeout=5)
    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(done.aget(timeout=5))


def test_get_raises_a_failure_once_every_member_before_it_finished(
    memory_app: Celeriac,
) -> None:
    """Not after the whole group: the member after the failure never finishes, and no
    timeout is given, so waiting for it would hang (until pytest's own timeout)."""
    fails = boom.delay("first failure")
    run_queued(memory_app, fail_fast=False)
    g = GroupResult("g", [double.delay(1), fails, _never("b")], memory_app)
    run_queued(memory_app)
    with pytest.raises(ValueError, match="first failure"):
        g.get()
    with pytest.raises(ValueError, match="first failure"):
        asyncio.run(g.aget())


def test_a_member_that_failed_with_result_timeout_is_not_reported_as_the_groups_timeout(
    memory_app: Celeriac,
) -> None:
    """A member's own error was caught as if the group had timed out: 'group g: 0 of 2
    members did not finish within 30s', for a group whose members had all finished."""
    g = GroupResult("g", [double.delay(1), upstream.delay()], memory_app)
    run_queued(memory_app, fail_fast=False)
    assert g.ready()
    with pytest.raises(ResultTimeout, match="the upstream report did not finish"):
        g.get(timeout=30)
    with pytest.raises(ResultTimeout, match="the upstream report did not finish"):
        asyncio.run(g.aget(timeout=30))


def test_a_group_timeout_still_names_the_group_and_its_unfinished_members(
    memory_app: Celeriac,
) -> None:
    never = _never("c")
    g = GroupResult(
        "g", [double.delay(1), never, GroupResult("in", [never], memory_app)], memory_app
    )
    run_queued(memory_app)
    waits: list[Callable[[], object]] = [
        lambda: g.get(timeout=0.2),
        lambda: asyncio.run(g.aget(timeout=0.2)),
    ]
    for raise_it in waits:
        with pytest.raises(ResultTimeout) as raised:
            raise_it()
        text = str(raised.value)
        assert text.startswith(
            f"group g: 2 of 3 members did not finish within 0.2s ({never.id}, in)"
        ), text
        # The memory broker: no worker takes its tasks, run_queued does (not `status`).
        assert "they may still be queued, on the memory:// broker, which lives in" in text
        assert "celeriac.testing.run_queued(app) runs them" in text, text
