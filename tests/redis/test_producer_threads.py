"""A producer app shared by the threads of a threaded web server, on Redis."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from celeriac import Celeriac
from celeriac.errors import ResultTimeout
from tests.redis_server import RedisClusterNodes, RedisServer


@pytest.fixture(params=["standalone", "cluster"])
def redis_url(request: pytest.FixtureRequest, prefix: str) -> str:
    """A broker URL under this test's prefix, on a standalone server or on the Cluster."""
    if request.param == "cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("redis_cluster")
        return f"{cluster.url}&prefix={prefix}"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix={prefix}"


def test_closing_the_broker_while_threads_send_and_wait_fails_none_of_their_calls(
    redis_url: str,
) -> None:
    # close() disconnected redis-py's connections in use too: a get() waiting on its
    # pub/sub connection in another thread (or a command in flight) found its socket
    # gone and raised TypeError "argument must be an int, or have a fileno() method",
    # out of celeriac, naming neither Redis nor the task. Only idle connections are
    # closed now; one in use is finished with by its thread, which goes on.
    app = Celeriac("web", broker=redis_url)

    @app.task
    def notify(n: int) -> int:
        return n

    stop = threading.Event()
    errors: list[str] = []
    waits = 0

    def request_thread() -> None:
        nonlocal waits
        while not stop.is_set():
            try:
                result = notify.delay(1)
                try:
                    result.get(timeout=0.05)  # no worker: it waits, and times out
                except ResultTimeout:
                    waits += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=request_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):
            time.sleep(0.03)
            app.broker.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        app.broker.close()
    assert errors == []
    assert waits > 0


def test_aclose_while_other_coroutines_send_and_wait_fails_none_of_their_calls(
    redis_url: str,
) -> None:
    # aclose() closed the loop's redis.asyncio client, connections in use included: an
    # adelay() or aget() awaiting in another task of the same loop (a web app's request
    # while its shutdown hook ran `await app.broker.aclose()`) failed with a connection
    # error. As close() does for threads, it now closes idle connections only, and a call
    # in flight goes on.
    app = Celeriac("web", broker=redis_url)

    @app.task
    def notify(n: int) -> int:
        return n

    errors: list[str] = []
    waits = 0

    async def request(stop: asyncio.Event) -> None:
        nonlocal waits
        while not stop.is_set():
            try:
                result = await notify.adelay(1)
                try:
                    await result.aget(timeout=0.05)  # no worker: it waits, and times out
                except ResultTimeout:
                    waits += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")

    async def main() -> None:
        stop = asyncio.Event()
        requests = [asyncio.create_task(request(stop)) for _ in range(4)]
        try:
            for _ in range(20):
                await asyncio.sleep(0.03)
                await app.broker.aclose()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*requests), 30)
            await app.broker.aclose()

    asyncio.run(main())
    app.broker.close()
    assert errors == []
    assert waits > 0
