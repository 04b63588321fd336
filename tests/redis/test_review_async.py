"""The Redis broker's async face: result wake-ups over the shared pub/sub connection, its
reconnects, event loops that end (or are closed without ending), Cluster waiters, and what
a refused connection or a Cluster that went away is reported as.

Wake-ups are told apart from the waiters' fallback (reading the result key again after
each quiet ``LISTEN_STEP``) by stretching that step past every deadline here: a waiter
that finishes in time was woken by a wake-up.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.cluster import key_slot

import redis
from celeriac import Celeriac
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker, admin
from celeriac.errors import BrokerConnectionError
from celeriac.testing import wait_for
from tests.conftest import Ledger, WorkerProcesses
from tests.redis.conftest import held_lease
from tests.redis_server import (
    RedisClusterNodes,
    RedisServer,
    free_port,
    start_cluster,
    start_redis,
)

WAKE_DEADLINE = 20.0  # seconds a woken waiter may take on a busy machine
WAIT = 60.0  # a waiter's own timeout: longer than WAKE_DEADLINE, so only a wake-up counts


@pytest.fixture(autouse=True)
def _no_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "LISTEN_STEP", 3600.0)


def _commit(broker: RedisBroker, lease: object, result: bytes) -> None:
    assert broker.complete_many([(lease, result)], 60) == ([True], [])  # type: ignore[list-item]


async def _subscribed(raw: redis.Redis, channel: bytes, count: int = 1) -> None:
    """Wait until Redis counts ``count`` subscribers of ``channel``."""
    for _ in range(int(WAKE_DEADLINE / 0.02)):
        if raw.pubsub_numsub(channel) == [(channel, count)]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{channel!r} never had {count} subscriber(s)")


def test_a_dropped_pubsub_connection_is_replaced_and_its_waiters_woken(
    own_server: Callable[..., RedisServer],
) -> None:
    # redis-py's asyncio pub/sub does not reconnect by itself: after CLIENT KILL (or a
    # network blip) every read raised "Connection closed by server" again, the waiting
    # aget() was never woken, and every later aget() in the loop failed with
    # BrokerConnectionError although Redis was up.
    server = own_server()
    broker = RedisBroker(server.url)
    raw = redis.Redis(port=server.port)
    try:
        first, later = held_lease(broker, "first"), held_lease(broker, "later")

        async def scenario() -> tuple[bytes | None, bytes | None]:
            waiting = asyncio.create_task(broker.await_result("first", WAIT))
            await _subscribed(raw, broker.keys.channel("first"))
            assert raw.client_kill_filter(_type="pubsub") == 1
            await _subscribed(raw, broker.keys.channel("first"))  # on a new connection
            _commit(broker, first, b"one")
            woke = await asyncio.wait_for(waiting, WAKE_DEADLINE)
            again = asyncio.create_task(broker.await_result("later", WAIT))
            await _subscribed(raw, broker.keys.channel("later"))
            _commit(broker, later, b"two")
            return woke, await asyncio.wait_for(again, WAKE_DEADLINE)

        assert asyncio.run(scenario()) == (b"one", b"two")
    finally:
        raw.close()
        broker.close()


def test_a_waiter_is_woken_after_redis_restarts(
    own_server: Callable[..., RedisServer],
) -> None:
    server = own_server()
    broker = RedisBroker(server.url)
    raw = redis.Redis(port=server.port)
    try:
        lease = held_lease(broker, "t")

        async def scenario() -> bytes | None:
            waiting = asyncio.create_task(broker.await_result("t", WAIT))
            await _subscribed(raw, broker.keys.channel("t"))
            server.stop()  # AOF on: the lease and the waiter's registration survive
            own_server(port=server.port)
            await _subscribed(raw, broker.keys.channel("t"))  # resubscribed by itself
            _commit(broker, lease, b"done")
            return await asyncio.wait_for(waiting, WAKE_DEADLINE)

        assert asyncio.run(scenario()) == b"done"
    finally:
        raw.close()
        broker.close()


def test_a_waiter_cancelled_again_while_it_leaves_is_forgotten(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # A second cancel while the first one's clean-up waited for the shared lock (another
    # waiter was subscribing) left the waiter counted forever: its channel subscribed and
    # the loop's reader running as long as the loop.
    async def scenario() -> None:
        channel = broker.keys.channel("x")
        waiting = asyncio.create_task(broker.await_result("x", WAIT))
        await _subscribed(raw, channel)
        subscriptions = (await broker._async.clients.get()).subscriptions
        async with subscriptions._lock:  # as a join in progress holds it
            waiting.cancel()
            await asyncio.sleep(0.05)
            waiting.cancel()
            await asyncio.sleep(0.05)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await _subscribed(raw, channel, count=0)
        for _ in range(int(WAKE_DEADLINE / 0.02)):
            if subscriptions._reader is None:
                break
            await asyncio.sleep(0.02)
        assert subscriptions._reader is None and not subscriptions._waiters

    asyncio.run(scenario())


def test_finished_event_loops_are_let_go(broker: RedisBroker) -> None:
    # The loop's shared subscriptions were kept in a weak mapping by loop that never let
    # go (they refer to the loop): each asyncio.run(result.aget()) kept ~40 kB for good.
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def wait_once() -> bytes | None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await broker.await_result(uuid.uuid4().hex, 0.01)

    for _ in range(3):
        assert asyncio.run(wait_once()) is None
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # what a bare loop.close() leaves
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_loops_closed_without_shutting_down_leave_no_connection_open(
    own_server: Callable[..., RedisServer],
) -> None:
    # One loop per thread, ended by loop.close() alone (no shutdown_asyncgens): their
    # connections stayed open for good, even after broker.close().
    server = own_server()
    broker = RedisBroker(server.url)
    raw = redis.Redis(port=server.port)

    def clients() -> int:
        return len(raw.client_list()) - 1  # not this one

    def in_a_thread() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(broker.await_result("never", 0.05))
        finally:
            loop.close()

    try:
        for _ in range(5):
            thread = threading.Thread(target=in_a_thread)
            thread.start()
            thread.join()
        broker.close()

        def all_closed() -> bool:
            gc.collect()
            return clients() == 0

        assert wait_for(all_closed, timeout=WAKE_DEADLINE), f"{clients()} connections left"
    finally:
        raw.close()
        broker.close()


@pytest.mark.parametrize(
    ("credentials", "database", "said"),
    [
        (":wrong@", "0", "refused this client's credentials"),
        ("", "0", "requires a password and the broker URL gives none"),
        (":s3cret@", "99", "has no such database"),
    ],
)
def test_a_unix_socket_refusal_is_named_by_both_faces(
    tmp_path: Path, credentials: str, database: str, said: str
) -> None:
    # redis.asyncio wraps what a server said while connecting over a Unix socket in a
    # ConnectionError: the async face reported a wrong password or database as "did not
    # answer ... Check that redis-server is running".
    server = start_redis(tmp_path / "redis", unixsocket=True)
    try:
        with redis.Redis(port=server.port) as admin_client:
            admin_client.config_set("requirepass", "s3cret")
        broker = RedisBroker(f"unix://{credentials}{server.unixsocket}?db={database}")
        try:
            with pytest.raises(BrokerConnectionError) as sync_error:
                broker.send([Outgoing("a", "q", b"a")])
            with pytest.raises(BrokerConnectionError) as async_error:
                asyncio.run(broker.await_result("a", 1))
        finally:
            broker.close()
        for error in (sync_error.value, async_error.value):
            assert said in str(error) and "Check that redis-server is running" not in str(error)
            assert "wrong" not in str(error)  # the password is hidden
    finally:
        server.stop()


def _ids_on_every_master(cluster: RedisClusterNodes) -> list[str]:
    """A task id whose result key lives on each master."""
    client = redis.Redis(port=cluster.nodes[0].port)
    try:  # [start, end, [host, port, id], replicas...] per range of slots
        rows = client.execute_command("CLUSTER", "SLOTS")
        ranges = [(int(row[0]), int(row[1]), int(row[2][1])) for row in rows]
    finally:
        client.close()
    found: dict[int, str] = {}  # master port -> task id
    n = 0
    while len(found) < len({port for _, _, port in ranges}):
        task_id = f"id{n}"
        slot = key_slot(f"{{{task_id}}}".encode())
        found.setdefault(next(port for lo, hi, port in ranges if lo <= slot <= hi), task_id)
        n += 1
    return list(found.values())


@pytest.mark.parametrize("drop", [False, True], ids=["connected", "pubsub-dropped"])
def test_cluster_waiters_on_every_master_wake(
    cluster_broker: RedisBroker, redis_cluster: RedisClusterNodes, drop: bool
) -> None:
    ids = _ids_on_every_master(redis_cluster)
    leases = [held_lease(cluster_broker, task_id) for task_id in ids]
    channels = [cluster_broker.keys.channel(task_id) for task_id in ids]
    nodes = [redis.Redis(port=node.port) for node in redis_cluster.nodes]

    async def all_subscribed() -> None:
        for channel in channels:  # PUBSUB NUMSUB counts the subscribers of one node
            for _ in range(int(WAKE_DEADLINE / 0.02)):
                if sum(node.pubsub_numsub(channel)[0][1] for node in nodes) == 1:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"{channel!r} has no subscriber")

    async def scenario() -> list[bytes | None]:
        waiting = [
            asyncio.create_task(cluster_broker.await_result(task_id, WAIT)) for task_id in ids
        ]
        await all_subscribed()
        if drop:  # CLIENT KILL frees a client at once: NUMSUB drops before it is back
            assert sum(node.client_kill_filter(_type="pubsub") for node in nodes) >= 1
            await all_subscribed()
        for task_id, lease in zip(ids, leases, strict=True):
            _commit(cluster_broker, lease, task_id.encode())
        return list(await asyncio.wait_for(asyncio.gather(*waiting), WAKE_DEADLINE))

    try:
        assert asyncio.run(scenario()) == [task_id.encode() for task_id in ids]
    finally:
        for node in nodes:
            node.close()


# -- a Cluster that is not there --------------------------------------------------------


def test_an_unreachable_cluster_is_a_broker_connection_error() -> None:
    # redis-py reads a Cluster's slot map when its sync client is made, and raised
    # RedisClusterException (no RedisError, so never translated) from RedisBroker().
    url = f"redis://:s3cret@127.0.0.1:{free_port()}?cluster=1"
    with pytest.raises(BrokerConnectionError) as caught:
        RedisBroker(url)
    message = str(caught.value)
    assert "s3cret" not in message and ":***@127.0.0.1" in message
    assert "Redis Cluster" in message and "reachable" in message


def _restart(cluster: RedisClusterNodes) -> list[RedisServer]:
    """Start every (killed) node again where it was, from its nodes.conf."""
    options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    return [start_redis(node.folder, port=node.port, extra=options) for node in cluster.nodes]


def test_a_worker_on_cluster_outlives_an_outage_and_producers_get_a_clear_error(
    tmp_path: Path,
) -> None:
    # Every call on a Cluster that went away raised RedisClusterException: producers got
    # no BrokerConnectionError, and worker processes died instead of reconnecting.
    cluster = start_cluster(tmp_path / "cluster")
    restarted: list[RedisServer] = []
    url = f"{cluster.url}&prefix=outage"
    workers = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    app = Celeriac("p", url)
    try:
        proc = workers.start("-c", "1")
        assert app.send_task("tests.apps.core.add", args=(1, 2)).get(timeout=30) == 3
        for node in cluster.nodes:
            node.kill()
        with pytest.raises(BrokerConnectionError, match="Redis Cluster"):
            app.send_task("tests.apps.core.add", args=(0, 0))
        with pytest.raises(BrokerConnectionError, match="Redis Cluster"):
            asyncio.run(app.broker.asend([Outgoing("a", "q", b"a")]))
        with pytest.raises(BrokerConnectionError, match="Redis Cluster"):
            asyncio.run(app.broker.await_result("a", 5))
        assert wait_for(lambda: "broker unavailable" in workers.log_text(), timeout=30)
        assert proc.poll() is None, workers.log_text()
        restarted = _restart(cluster)

        def sent() -> bool:
            try:
                app.send_task("tests.apps.core.add", args=(2, 3), task_id="after")
            except BrokerConnectionError:  # the nodes are still agreeing on the slots
                return False
            return True

        assert wait_for(sent, timeout=30, interval=0.2)
        assert app.AsyncResult("after").get(timeout=60) == 5, workers.log_text()
        assert workers.stop(proc) == 0
        log = workers.log_text()
        # Said once per outage (and every 30 s), not at every poll (it was every 0.5 s).
        assert log.count("could not read remote-control messages") <= 2, log
    finally:
        app.broker.close()
        workers.kill_all()
        for node in restarted:
            node.stop()
        cluster.stop()


def test_blocking_sends_from_async_code_stay_off_the_loop_and_its_executor(
    tmp_path: Path,
) -> None:
    # A workflow sent from a coroutine had no async face: called on the loop, a frozen
    # Redis stalled every request for its socket timeout and wait_for could not fire. A
    # dedupe send went to asyncio.to_thread: sends waiting on the frozen Redis held the
    # app's own to_thread calls.
    import os
    import signal

    from celeriac.canvas import group

    server = start_redis(tmp_path / "r")
    # A socket timeout far beyond the waits here: only "waited for it, or not" is judged.
    app = Celeriac("shop", broker=f"{server.url}?socket_timeout=20")
    add = app.task(name="shop.add")(lambda x, y: x + y)
    add.delay(0, 0)  # connected, start-up checks done
    ticks: list[float] = []

    async def scene() -> tuple[float, float]:
        async def tick() -> None:
            while True:
                ticks.append(loop.time())
                await asyncio.sleep(0.05)

        loop = asyncio.get_running_loop()
        ticker = loop.create_task(tick())
        began = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(group(add.s(1, 1), add.s(2, 2)).aapply_async(), 0.3)
        gave_up = loop.time() - began
        sends = [loop.create_task(add.aapply_async((i, i), dedupe_key=f"k{i}")) for i in range(12)]
        await asyncio.sleep(0.1)
        began = loop.time()
        assert await asyncio.to_thread(lambda: 42) == 42  # the app's own executor is free
        own = loop.time() - began
        ticker.cancel()
        for send in sends:
            send.cancel()
        return gave_up, own

    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        gave_up, own = asyncio.run(scene())
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        app.broker.close()
        server.stop()
    assert gave_up < 10, gave_up  # at its own timeout, not at the socket's (20 s)
    assert own < 10, own
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 10, max(gaps)  # the loop went on meanwhile


def test_aget_on_a_frozen_redis_says_the_broker_did_not_answer(tmp_path: Path) -> None:
    # get() said the broker did not answer; aget() said the task "may still be queued or
    # running", sending an operator to the workers.
    import os
    import signal

    from celeriac.errors import ResultTimeout

    server = start_redis(tmp_path / "r")
    app = Celeriac("shop", broker=f"{server.url}?socket_timeout=20")
    handle = app.AsyncResult("t-frozen")

    async def wait() -> None:
        await handle.aget(timeout=1)

    with pytest.raises(ResultTimeout):
        asyncio.run(wait())  # a live Redis: the task's own slowness
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            asyncio.run(wait())
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        app.broker.close()
        server.stop()
    assert "could not read the result of task ?[t-frozen]: the broker did not answer" in str(
        caught.value
    )
