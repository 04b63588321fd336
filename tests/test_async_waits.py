"""Async result waits on the memory and SQLite brokers (``Broker.await_result``, which
``AsyncResult.aget`` and ``GroupResult.aget`` use) hold no thread of the loop's default
executor: that one belongs to the application's own ``asyncio.to_thread`` calls.

Each wait used to be a 0.25 s blocking step after another in a default-executor thread:
300 ``aget()``s held every one of those threads in turn and the application's
``to_thread`` calls queued behind them for 12.5 s; with the default executor busy, no
wait could see its commit. Now one loop's waits cost at most one thread (SQLite's
poller; memory wakes the loop from the commit itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.records import Outgoing
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.errors import BrokerError
from tests.apps import core
from tests.conftest import WorkerProcesses

DEADLINE = 10.0  # seconds before a wait that should succeed counts as a failure
WAITERS = 300
FOREVER = 3600.0  # a wait's timeout that no test sits out


@pytest.fixture(params=["memory", "sqlite"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """The brokers without a native async wait."""
    made: Broker = (
        MemoryBroker()
        if request.param == "memory"
        else SQLiteBroker(f"sqlite:///{tmp_path}/broker.db")
    )
    yield made
    made.close()


@pytest.fixture
def broker_url(sqlite_url: str) -> str:
    """SQLite only: Redis has a native async wait of its own."""
    return sqlite_url


def _held(broker: Broker, task_id: str) -> Any:
    broker.send([Outgoing(task_id, "q", b"{}")])
    (delivery,) = broker.fetch(["q"], "c1", limit=1, lease_seconds=60, timeout=0)
    return delivery.lease


def _run_with_one_default_thread(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``asyncio.run(main())`` with a default executor of one thread: whatever holds it
    holds up every ``asyncio.to_thread`` of the application."""

    async def wrapped() -> Any:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        return await main()

    return asyncio.run(wrapped())


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


def test_the_apps_to_thread_is_not_queued_behind_pending_waits(broker: Broker) -> None:
    lease = _held(broker, "t")

    async def main() -> list[bytes | None]:
        waits = [asyncio.create_task(broker.await_result("t", FOREVER)) for _ in range(WAITERS)]
        await asyncio.sleep(0.05)  # let them start waiting
        ran = threading.Event()
        await asyncio.wait_for(asyncio.to_thread(ran.set), DEADLINE)
        assert ran.is_set()
        assert not any(w.done() for w in waits)  # still waiting: nothing is committed
        assert await asyncio.to_thread(broker.complete, lease, b"final", 60)
        return list(await asyncio.wait_for(asyncio.gather(*waits), DEADLINE))

    assert _run_with_one_default_thread(main) == [b"final"] * WAITERS


def test_waits_and_async_faces_work_while_the_app_holds_every_default_thread(
    broker: Broker,
) -> None:
    lease = _held(broker, "t")

    async def main() -> list[bytes | None]:
        gate = threading.Event()
        holder = asyncio.create_task(asyncio.to_thread(gate.wait, DEADLINE * 2))
        try:
            waits = asyncio.gather(*[broker.await_result("t", FOREVER) for _ in range(WAITERS)])
            # The broker's own async calls run in its own threads, not the app's.
            assert await asyncio.wait_for(broker.aget_result("t"), DEADLINE) is None
            await asyncio.wait_for(broker.astore_result("t", b"started", 60), DEADLINE)
            committer = threading.Thread(target=broker.complete, args=(lease, b"final", 60))
            committer.start()
            got = list(await asyncio.wait_for(waits, DEADLINE))
            committer.join()
            assert not holder.done()  # all of it happened while the app held its thread
            return got
        finally:
            gate.set()
            await holder

    assert _run_with_one_default_thread(main) == [b"final"] * WAITERS


def test_waits_cost_at_most_one_thread_and_free_it_when_cancelled(broker: Broker) -> None:
    async def main() -> None:
        before = threading.active_count()
        waits = [
            asyncio.create_task(broker.await_result(f"never-{i % 7}", FOREVER))
            for i in range(WAITERS)
        ]
        await asyncio.sleep(0.3)  # every wait has started, and would have taken a thread
        assert threading.active_count() - before <= 1
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        assert all(w.cancelled() for w in waits)
        await _until(lambda: threading.active_count() <= before, "the waits' thread ends")

    asyncio.run(main())


def test_timed_out_waits_return_none_and_a_final_result_is_found_at_once(
    broker: Broker,
) -> None:
    broker.mark_revoked(["final"], b"revoked", 60)

    async def main() -> None:
        missing = [broker.await_result("never", 0.05) for _ in range(20)]
        assert await asyncio.gather(*missing) == [None] * 20
        assert await broker.await_result("final", 0) == b"revoked"
        assert await broker.await_result("final", FOREVER) == b"revoked"

    asyncio.run(main())


def test_waits_of_two_loops_in_two_threads_each_wake(broker: Broker) -> None:
    leases = {name: _held(broker, name) for name in ("a", "b")}
    got: dict[str, list[bytes | None]] = {}

    def loop_thread(name: str) -> None:
        async def main() -> list[bytes | None]:
            return list(
                await asyncio.gather(*[broker.await_result(name, DEADLINE) for _ in range(50)])
            )

        got[name] = asyncio.run(main())

    threads = [threading.Thread(target=loop_thread, args=(name,)) for name in leases]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    for name, lease in leases.items():
        assert broker.complete(lease, name.encode(), 60)
    for thread in threads:
        thread.join(DEADLINE * 2)
    assert got == {"a": [b"a"] * 50, "b": [b"b"] * 50}


def test_sqlite_error_reaches_every_waiter_and_the_next_wait_works(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    broker = SQLiteBroker(f"sqlite:///{path}")

    def rename(old: str, new: str) -> None:
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(f"ALTER TABLE {old} RENAME TO {new}")
            db.commit()

    async def main() -> None:
        waits = [asyncio.create_task(broker.await_result(f"t{i % 3}", FOREVER)) for i in range(9)]
        await asyncio.sleep(0.05)
        rename("results", "hidden")  # another process breaks the file under the waiters
        got = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), DEADLINE)
        assert all(isinstance(e, BrokerError) and "no such table" in str(e) for e in got), got
        rename("hidden", "results")
        broker.mark_revoked(["later"], b"revoked", 60)
        assert await asyncio.wait_for(broker.await_result("later", FOREVER), DEADLINE) == b"revoked"

    try:
        asyncio.run(main())
    finally:
        broker.close()


def test_memory_commit_after_the_waiting_loop_closed_still_commits() -> None:
    # A loop closed with a wait still pending never ran the wait's cleanup: waking it
    # (call_soon_threadsafe on a closed loop) must not fail the worker's commit.
    broker = MemoryBroker()
    lease = _held(broker, "t")
    loop = asyncio.new_event_loop()
    pending = loop.create_task(broker.await_result("t", FOREVER))
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    assert not pending.done()
    assert broker.complete(lease, b"final", 60)
    assert broker.get_result("t") == (b"final", True)


def test_sqlite_commits_by_a_worker_process_wake_every_waiter(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    sent = [core.add.delay(i, i) for i in range(WAITERS)]

    async def main() -> list[int]:
        waits = asyncio.gather(*[r.aget(timeout=DEADLINE * 2) for r in sent])
        await asyncio.sleep(0.05)  # let them start waiting before anything is committed
        workers.start(wait=False)
        return list(await waits)

    assert _run_with_one_default_thread(main) == [i + i for i in range(WAITERS)]
