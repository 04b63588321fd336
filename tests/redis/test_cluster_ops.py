"""Redis Cluster in operation: a queue's slot migrated by a reshard while clients use it.

Each test moves slots of a private Cluster (never the session's shared one), stopped by
PID at the end of the module.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator

import pytest
from redis.cluster import key_slot

import redis
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker, cluster_driver
from celeriac.errors import BrokerConnectionError
from tests.redis_server import RedisClusterNodes, RedisServer, free_port, start_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    """A private 3-master Cluster whose slots these tests move."""
    nodes = start_cluster()
    yield nodes
    nodes.stop()


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own (so its slot too, most likely)."""
    return f"q{uuid.uuid4().hex[:10]}"


def _to_stop(nodes: RedisClusterNodes, tag: str) -> tuple[RedisServer, str]:
    """A node to stop, and a key prefix (tag + suffix) whose keys outside any queue (the
    queue registry, result waiters, worker heartbeats) all live on the other nodes: those
    keys have one slot each, and on a stopped node they failed every send to a new queue
    and every heartbeat (about one run in three, as the prefix was random)."""
    down = next(  # not the URL's seed node: a client starts from it
        n for n in nodes.nodes[1:] if nodes.owner(key_slot(b"workers")) != n.port
    )
    prefix = next(
        p
        for p in (f"{tag}{n}" for n in range(1000))
        if all(
            nodes.owner(key_slot(f"{p}:{name}".encode())) != down.port
            for name in ("queues", "waiting")
        )
    )
    return down, prefix


def _elsewhere(cluster: RedisClusterNodes, slot: int) -> int:
    owner = cluster.owner(slot)
    return next(n.port for n in cluster.nodes if n.port != owner)


def test_producers_wait_out_a_reshard_of_their_queues_slot(
    cluster: RedisClusterNodes, queue: str
) -> None:
    # While a reshard migrates a queue's slot, Redis refuses the queue's scripts without
    # running them (ASK, then TRYAGAIN) and redis-py gives up after ~0.4 s: a delay(),
    # asend() and `celeriac status` failed with "refused the command: TTL exhausted."
    broker = RedisBroker(f"{cluster.url}&prefix=mv{uuid.uuid4().hex[:6]}")
    try:
        broker.send([Outgoing("before", queue, b"b")])
        slot = key_slot(queue.encode())
        finish = cluster.begin_move(slot, _elsewhere(cluster, slot))
        # The keys move 2 s after the sends begin, well past redis-py's own patience.
        mover = threading.Timer(2.0, finish)
        mover.start()
        try:
            assert broker.send([Outgoing("during", queue, b"d")]) == [True]
            assert asyncio.run(broker.asend([Outgoing("async", queue, b"a")])) == [True]
            assert [s.ready for s in broker.stats() if s.queue == queue] == [3]
        finally:
            mover.join()
        taken = broker.fetch([queue], "w", limit=5, lease_seconds=30, timeout=0)
        assert [d.id for d in taken] == ["before", "during", "async"]
    finally:
        broker.close()


def test_a_migration_left_half_done_is_named_with_its_slot_and_the_fix(
    cluster: RedisClusterNodes, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_driver, "REDIRECT_PATIENCE", 0.5)
    broker = RedisBroker(f"{cluster.url}&prefix=mv{uuid.uuid4().hex[:6]}")
    slot = key_slot(queue.encode())
    broker.send([Outgoing("before", queue, b"b")])
    finish = cluster.begin_move(slot, _elsewhere(cluster, slot))  # a reshard that died
    finished = False
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            broker.send([Outgoing("stuck", queue, b"s")])
        said = str(caught.value)
        assert f"slot {slot} " in said
        assert "did not run" in said
        assert "redis-cli --cluster fix" in said
        assert not caught.value.maybe_done
        finish()  # what `redis-cli --cluster fix` does
        finished = True
        assert broker.send([Outgoing("after", queue, b"a")]) == [True]
        assert [s.ready for s in broker.stats() if s.queue == queue] == [2]  # not "stuck"
    finally:
        if not finished:
            finish()
        broker.close()


def test_a_process_started_while_a_node_is_down_uses_the_queues_of_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The start-up check asked every primary and failed on the first that was down, so a
    # process started meanwhile could not send even to queues the other nodes serve.
    nodes = start_cluster()
    try:
        for node in nodes.nodes:  # serve what is covered (Redis's default stops it all)
            with redis.Redis(port=node.port) as client:
                client.config_set("cluster-require-full-coverage", "no")
        down, prefix = _to_stop(nodes, "dn")
        # A queue, and task ids (their result keys), in slots the live nodes serve.
        served = [n for n in map(str, range(50)) if nodes.owner(key_slot(n.encode())) != down.port]
        alive, a, b = served[:3]
        down.kill()
        url = f"{nodes.url}&prefix={prefix}"
        broker = RedisBroker(url)
        try:
            assert broker.send([Outgoing(a, alive, b"a")]) == [True]
            assert f"127.0.0.1:{down.port} does not answer" in caplog.text
        finally:
            broker.close()
        fresh = RedisBroker(url)  # the async face runs the same check
        assert asyncio.run(fresh.asend([Outgoing(b, alive, b"b")])) == [True]
        taken = fresh.fetch([alive], "w", limit=5, lease_seconds=30, timeout=0)
        assert [d.id for d in taken] == [a, b]
        fresh.close()
    finally:
        nodes.stop()


def test_a_fetch_hands_out_its_messages_while_their_result_keys_node_is_down() -> None:
    # On Cluster a fetch reads the result keys of what it took (their slots are the task
    # ids', all over the cluster) to drop copies of finished tasks. With one of those
    # nodes down the read failed and the whole fetch raised with the messages taken: held
    # until their leases ran out, each redelivery counted, and after task_max_deliveries
    # healthy tasks were dead-lettered for a node that has none of their queue's keys.
    nodes = start_cluster()
    try:
        for node in nodes.nodes:
            with redis.Redis(port=node.port) as client:
                client.config_set("cluster-require-full-coverage", "no")
        down, prefix = _to_stop(nodes, "rk")
        broker = RedisBroker(f"{nodes.url}&prefix={prefix}")
        try:
            names = [f"q{n}" for n in range(100)]
            queue = next(q for q in names if nodes.owner(key_slot(q.encode())) != down.port)
            ids = [f"t{n}" for n in range(200)]
            there = [i for i in ids if nodes.owner(key_slot(broker.keys.result(i))) == down.port]
            elsewhere = [i for i in ids if i not in there]
            task_ids = [there[0], elsewhere[0]]
            assert broker.send([Outgoing(i, queue, b"x") for i in task_ids]) == [True, True]
            down.kill()
            taken = broker.fetch([queue], "w", limit=5, lease_seconds=30, timeout=0)
            assert sorted(d.id for d in taken) == sorted(task_ids)
            assert all(d.deliveries == 1 for d in taken)
        finally:
            broker.close()
    finally:
        nodes.stop()


def test_a_process_starts_from_the_seed_nodes_while_the_urls_own_node_is_down(
    cluster: RedisClusterNodes, queue: str
) -> None:
    # A Cluster client read its slot map from the URL's one node: with that node down a
    # worker could not start (it waited, retrying) although the others served every slot.
    down = f"redis://127.0.0.1:{free_port()}?cluster=1&prefix=sd{uuid.uuid4().hex[:6]}"
    seeds = ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
    broker = RedisBroker(f"{down}&nodes={seeds}")
    try:
        assert broker.send([Outgoing("a", queue, b"x")]) == [True]
        assert asyncio.run(broker.asend([Outgoing("b", queue, b"y")])) == [True]
        taken = broker.fetch([queue], "w", limit=5, lease_seconds=30, timeout=0)
        assert [d.id for d in taken] == ["a", "b"]
    finally:
        broker.close()
    with pytest.raises(BrokerConnectionError, match=r"list others with nodes=host2:7000"):
        RedisBroker(down).send([Outgoing("c", queue, b"z")])  # the client reads the slots
