"""The asyncio pool at its edges, with real worker processes on SQLite and a real
redis-server: a task that blocks the event loop, plain functions next to coroutines at
high concurrency, background tasks a task leaves behind, and shutdowns with many tasks in
flight.

The worker processes import this module (``-A tests.test_asyncio_edges``) for its tasks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, Task, TimeLimitExceeded
from celeriac.testing import wait_for
from tests.apps.core import record
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

APP = "tests.test_asyncio_edges"
#: Worker subprocesses import celeriac from the caller's PYTHONPATH first, when it sets one
#: (an old source tree, to check that these tests fail on the code they guard).
PYTHONPATH = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
ENV = {"PYTHONPATH": PYTHONPATH}

app = Celeriac("asyncio-edges")


@app.bound_task(soft_time_limit=10, time_limit=30)  # blocks under its soft limit
async def blocks_the_loop(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    time.sleep(seconds)  # the point: a blocking call in an async def
    record("end", self.request.id)
    return "blocked"


@app.bound_task(soft_time_limit=0.5, time_limit=3)
async def spins(self: Task[Any, Any]) -> None:
    record("start", self.request.id)
    while True:  # never awaits: no cancellation can reach it
        pass


@app.bound_task(soft_time_limit=0.5, time_limit=3)
async def ignores_its_soft_limit(self: Task[Any, Any]) -> None:
    record("start", self.request.id)
    while True:
        try:
            await asyncio.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - the point: it swallows the cancel
            record("swallowed", self.request.id, type(exc).__name__)


@app.bound_task()
async def naps(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    await asyncio.sleep(seconds)
    record("end", self.request.id)
    return "rested"


@app.bound_task()
def sleeps(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    time.sleep(seconds)
    record("end", self.request.id)
    return "slept"


@app.bound_task(time_limit=4)
async def quick(self: Task[Any, Any]) -> str:
    record("run", self.request.id)
    await asyncio.sleep(0)
    return "quick"


_background: set[asyncio.Task[None]] = set()


async def _background_work(parent: str, seconds: float) -> None:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        record("bg-cancelled", parent)
        raise
    record("bg-done", parent)


@app.bound_task()
async def leaves_work_behind(self: Task[Any, Any], seconds: float) -> str:
    record("run", self.request.id)
    work = asyncio.create_task(_background_work(self.request.id, seconds))
    _background.add(work)  # as asyncio's documentation says: keep a reference
    work.add_done_callback(_background.discard)
    return "returned"


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """Redis only: what is tested is the asyncio child's own loop and pools, the same on
    every broker (the suite's time goes to running each twice)."""
    return f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def edges_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """This module's app on this test's broker (the one `workers` use)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    yield app
    app.broker.close()


def test_a_task_that_blocks_the_loop_is_named_in_the_log(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    proc = workers.start("-P", "asyncio", "-c", "10", app=APP, env=ENV)
    workers.wait_children(proc, 1)
    nappers = [naps.delay(0.5) for _ in range(3)]
    assert wait_for(lambda: len(ledger.count("start")) == 3, timeout=20)
    blocker = blocks_the_loop.delay(4)
    assert blocker.get(timeout=30) == "blocked"
    assert all(r.get(timeout=30) == "rested" for r in nappers)
    label = f"task tests.test_asyncio_edges.blocks_the_loop[{blocker.id}]"
    # Named as it blocks, with where it is, and again when the loop runs again.
    assert wait_for(lambda: "the event loop runs again" in workers.log_text(), timeout=20)
    text = workers.log_text()
    assert f"{label} has blocked the event loop" in text, text
    assert "in blocks_the_loop\n    time.sleep(seconds)" in text, text
    assert "runs again after" in text and f"blocked by {label}" in text, text


def test_plain_function_tasks_never_hold_up_the_coroutines_settles(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # 64 plain-function tasks filled the thread pool that celeriac's own calls (hooks,
    # settles, fetches) shared: a coroutine that had nothing left but its after_execute
    # hook waited for them, past its hard limit, and the supervisor killed the child.
    proc = workers.start("-P", "asyncio", "-c", "70", app=APP, env=ENV)
    workers.wait_children(proc, 1)
    sleepers = [sleeps.delay(8) for _ in range(64)]
    assert wait_for(lambda: len(ledger.count("start")) == 64, timeout=30), workers.log_text()
    fast = quick.delay()  # time_limit=4
    assert fast.get(timeout=30) == "quick", workers.log_text()
    assert ledger.count("end")[sleepers[0].id] == 0  # the sleepers were still asleep
    assert all(r.get(timeout=60) == "slept" for r in sleepers)
    assert "hard time limit" not in workers.log_text(), workers.log_text()
    assert sum(ledger.count("start").values()) == 64  # none was killed and run again


def test_work_a_task_leaves_running_gets_a_grace_when_the_child_recycles(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # asyncio.run cancelled a task's background work silently as the child recycled.
    proc = workers.start("-P", "asyncio", "-c", "4", "--max-tasks-per-child", "1", app=APP, env=ENV)
    (first,) = workers.wait_children(proc, 1)
    short = leaves_work_behind.delay(1.0)
    assert short.get(timeout=20) == "returned"
    assert wait_for(lambda: ledger.count("bg-done")[short.id] == 1, timeout=20), ledger.lines()
    assert ledger.count("bg-cancelled")[short.id] == 0
    assert wait_for(lambda: first not in workers.children(proc), timeout=20)
    text = workers.log_text()
    assert (
        f"started with create_task by tests.test_asyncio_edges.leaves_work_behind[{short.id}]"
        in text
    ), text
    # Work that outlasts the grace is cancelled (its cleanup runs) and named.
    workers.wait_children(proc, 1)  # the recycled child's successor
    long = leaves_work_behind.delay(600.0)
    assert long.get(timeout=20) == "returned"
    assert wait_for(lambda: ledger.count("bg-cancelled")[long.id] == 1, timeout=30)
    assert wait_for(
        lambda: (
            f"cancelled 1 asyncio task(s) started by {long.task_name}[{long.id}]"
            in workers.log_text()
        ),
        timeout=20,
    ), workers.log_text()


@pytest.mark.parametrize("task", ["spins", "ignores_its_soft_limit"])
def test_a_task_no_cancel_can_stop_is_stopped_at_its_hard_limit(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, task: str
) -> None:
    proc = workers.start("-P", "asyncio", "-c", "10", app=APP, env=ENV)
    workers.wait_children(proc, 1)
    nappers = [naps.delay(2.0) for _ in range(3)]
    assert wait_for(lambda: len(ledger.count("start")) == 3, timeout=20)
    stuck = edges_app.send_task(f"tests.test_asyncio_edges.{task}")
    with pytest.raises(TimeLimitExceeded, match=r"hard time limit \(3s\)"):
        stuck.get(timeout=30)
    # The child's other tasks were delivered again and ran to their end.
    assert all(r.get(timeout=30) == "rested" for r in nappers), workers.log_text()
    if task == "ignores_its_soft_limit":
        assert [p[4] for p in ledger.lines() if p[0] == "swallowed"] == ["CancelledError"]
    else:
        assert f"{task}[{stuck.id}] has blocked the event loop" in workers.log_text()


@pytest.mark.parametrize("cold", [False, True])
def test_five_hundred_tasks_in_flight_survive_a_shutdown(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, cold: bool
) -> None:
    proc = workers.start("-P", "asyncio", "-c", "500", app=APP, env=ENV)
    workers.wait_children(proc, 1)
    results = [naps.delay(4.0) for _ in range(500)]
    assert wait_for(lambda: len(ledger.count("start")) == 500, timeout=60), workers.log_text()
    # SIGQUIT is cold at once (a second SIGTERM sent right away may merge with the first).
    proc.send_signal(signal.SIGQUIT if cold else signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, workers.log_text()
    ended = ledger.count("end")
    if cold:
        assert len(ended) < 500  # killed mid-sleep (all but those that ended first)
        workers.start("-P", "asyncio", "-c", "500", app=APP, env=ENV)
    else:
        assert sorted(ended) == sorted(r.id for r in results)  # warm: each ran to its end
    assert all(r.get(timeout=60) == "rested" for r in results), workers.log_text()
    assert set(ledger.count("end").values()) == {1}  # none ran to its end twice
    # Each killed task ran again, once; none that had ended did.
    starts = ledger.count("start")
    assert {r.id: starts[r.id] for r in results} == {
        r.id: 1 if r.id in ended else 2 for r in results
    }
