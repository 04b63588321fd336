"""The asyncio pool made to behave as the process and threads pools do, with real worker
processes on a real redis-server: a coroutine that blocks past its soft time limit, a
fetch in flight when a warm stop comes, and worker_max_tasks_per_child.

The worker processes import this module (``-A tests.test_aio_edges``) for its tasks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, SoftTimeLimitExceeded, Task, TimeLimitExceeded
from celeriac.control import revoke
from celeriac.middleware import Job, Middleware, Outcome, default_middleware
from celeriac.testing import wait_for
from tests.apps.core import record
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

APP = "tests.test_aio_edges"
#: Worker subprocesses import celeriac from the caller's PYTHONPATH first, when it sets one
#: (an old source tree, to check that these tests fail on the code they guard).
PYTHONPATH = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
ENV = {"PYTHONPATH": PYTHONPATH}


class RecordsSkippedHooks(Middleware):
    """Writes the thread that told the middleware of a task this worker does not run."""

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        if job.task is None:
            record("skipped", job.delivery.id, f"{outcome.state}:{threading.current_thread().name}")
        return outcome


class SlowToStart(Middleware):
    """Holds the start of slow_to_start's body in a hook, in a thread of the child's, as a
    slow broker read (a verdict's, a revoke's) does."""

    def before_execute(self, job: Job) -> Outcome | None:
        if job.task is not None and job.task.name.endswith("slow_to_start"):
            time.sleep(0.5)
        return None


app = Celeriac(
    "aio-edges", middleware=[*default_middleware(), RecordsSkippedHooks(), SlowToStart()]
)


@app.bound_task(soft_time_limit=0.2, time_limit=30)
async def blocks_then_returns(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    time.sleep(seconds)  # the point: a blocking call in an async def, past the soft limit
    return "returned"


@app.bound_task(soft_time_limit=0.2, time_limit=30)
async def blocks_then_raises(self: Task[Any, Any], seconds: float) -> None:
    record("start", self.request.id)
    time.sleep(seconds)
    raise ValueError("its own error, raised after its soft limit had passed")


@app.bound_task(
    soft_time_limit=0.2,
    time_limit=30,
    autoretry_for=(SoftTimeLimitExceeded,),
    max_retries=1,
    retry_backoff=0.01,
    retry_jitter=False,
)
async def blocks_and_retries(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    time.sleep(seconds)
    return "returned"


@app.bound_task(soft_time_limit=0.2, time_limit=30)
async def cleans_up_and_returns(self: Task[Any, Any]) -> str:
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:  # its soft limit: it may clean up and return
        return "cleaned up"
    return "slept"


@app.bound_task(soft_time_limit=20, time_limit=30)
async def blocks_the_loop(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    time.sleep(seconds)  # the point: it blocks the loop past the other task's hard limit
    return "returned"


@app.bound_task(soft_time_limit=1, time_limit=2)
async def waits_its_turn(self: Task[Any, Any]) -> str:
    record("start", self.request.id)
    await asyncio.sleep(10)
    return "slept"


@app.bound_task(soft_time_limit=20, time_limit=30)
async def blocks_then_awaits(self: Task[Any, Any], blocking: float, awaiting: float) -> str:
    first = not Ledger(Path(os.environ["CELERIAC_TEST_LEDGER"])).count("start")[self.request.id]
    record("start", self.request.id)
    if first:  # put back beside a task killed (uncounted), it runs on without blocking
        time.sleep(blocking)  # blocks the loop a while, then runs on (the loop free again)
    await asyncio.sleep(awaiting)
    return "returned"


@app.bound_task(soft_time_limit=2, time_limit=3)
async def ignores_its_soft_limit(self: Task[Any, Any]) -> str:
    record("start", self.request.id)
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:  # its soft limit, caught and ignored: its own fault
        await asyncio.sleep(10)
    return "slept"


@app.bound_task(soft_time_limit=1, time_limit=2)
def hangs_in_a_thread(self: Task[Any, Any]) -> str:
    record("start", self.request.id)
    time.sleep(10)  # a plain def: it runs in a thread, the loop does not hold it up
    return "slept"


@app.bound_task(soft_time_limit=1, time_limit=2)
def slow_to_start(self: Task[Any, Any]) -> str:
    record("start", self.request.id)
    return "ran"


@app.bound_task()
async def runs(self: Task[Any, Any]) -> int:
    record("start", self.request.id, self.request.delivery_count)
    return self.request.delivery_count


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """Redis only: what is tested is the asyncio child's own loop, the same on every
    broker."""
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


def _starts(ledger: Ledger) -> list[tuple[str, int]]:
    """(task id, pid) of each start in the ledger."""
    return [(p[1], int(p[2])) for p in ledger.lines() if p[0] == "start"]


@pytest.mark.parametrize("pool", ["asyncio", "threads", "process"])
def test_a_coroutine_that_blocks_past_its_soft_limit_fails_in_every_pool(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # -P asyncio could not cancel a coroutine that never awaited: it returned after its
    # limit and ended SUCCESS, where the process and threads pools fail it.
    proc = workers.start("-P", pool, "-c", "3", app=APP, env=ENV)
    if pool != "process":
        workers.wait_children(proc, 1)
    returns = blocks_then_returns.delay(0.5)
    raises = blocks_then_raises.delay(0.5)
    retries = blocks_and_retries.delay(0.5)
    with pytest.raises(SoftTimeLimitExceeded, match=r"ran past its soft time limit"):
        returns.get(timeout=30)
    # Its own error came after the limit: the limit stopped it first in the other pools.
    with pytest.raises(SoftTimeLimitExceeded, match=r"ran past its soft time limit"):
        raises.get(timeout=30)
    # autoretry_for=(SoftTimeLimitExceeded,) retries it, as in the other pools.
    with pytest.raises(SoftTimeLimitExceeded):
        retries.get(timeout=30)
    assert Counter(i for i, _ in _starts(ledger))[retries.id] == 2, workers.log_text()
    if pool == "asyncio":
        # A coroutine the limit did cancel, and that caught it to clean up, keeps its value
        # (as a task that catches SoftTimeLimitExceeded does in the other pools).
        assert cleans_up_and_returns.delay().get(timeout=30) == "cleaned up"


def test_a_message_fetched_after_a_warm_stop_goes_back_unstarted(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The idle child waits in a fetch; a SIGTERM lands, then the messages arrive and that
    # fetch (still in flight) takes them. The process and threads children give what
    # they have not started back to the queue; the asyncio child started them.
    proc = workers.start("-P", "asyncio", "-c", "4", app=APP, env=ENV)
    (child,) = workers.wait_children(proc, 1)
    # One task first: the child's loop runs (and this process's connection is warm, so
    # the messages below arrive within the fetch the child waits in when the stop lands).
    first = runs.delay()
    assert first.get(timeout=20) == 1, workers.log_text()
    time.sleep(0.05)  # back in its next fetch
    os.kill(child, signal.SIGTERM)
    sent = [runs.delay() for _ in range(4)]
    assert wait_for(lambda: child not in workers.children(proc), timeout=20)
    # The supervisor replaces the stopped child; its successor runs them.
    assert [r.get(timeout=30) for r in sent] == [1, 1, 1, 1], workers.log_text()
    starts = _starts(ledger)
    assert sorted(i for i, _ in starts) == sorted([first.id, *(r.id for r in sent)])  # once
    assert [pid for i, pid in starts if i != first.id and pid == child] == [], workers.log_text()


@pytest.mark.parametrize("pool", ["asyncio", "threads"])
def test_max_tasks_per_child_is_not_overshot(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # Queued before the child starts: its first fetch could take -c (4) of them, over the
    # limit of 2, and it ran all it took (asyncio); the other threads kept starting tasks
    # until one finished the second (threads).
    sent = [runs.delay() for _ in range(8)]
    proc = workers.start("-P", pool, "-c", "4", "--max-tasks-per-child", "2", app=APP, env=ENV)
    assert [r.get(timeout=30) for r in sent] == [1] * 8, workers.log_text()
    per_child = Counter(pid for _, pid in _starts(ledger))
    assert sorted(per_child.values()) == [2, 2, 2, 2], (per_child, workers.log_text())
    assert proc.poll() is None


def test_the_revoke_read_of_a_task_it_does_not_run_is_made_off_the_loop(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Made while reading the message, on the loop's thread: a slow broker stalled every
    # coroutine of the child for that read, and the hooks it tells (Canvas writes chord
    # counts) ran there too. "not registered; putting it back" was logged all the same.
    typo = edges_app.send_task("shop.not.deployed")
    revoke(edges_app, typo.id)
    later = edges_app.send_task("shop.deployed.tomorrow")  # put back, and said so
    workers.start("-P", "asyncio", "-c", "4", app=APP, env=ENV)
    assert wait_for(lambda: typo.state == "REVOKED", timeout=20), workers.log_text()
    said = f"shop.deployed.tomorrow[{later.id}] is not registered"
    assert wait_for(lambda: said in workers.log_text(), timeout=20), workers.log_text()
    assert wait_for(lambda: any(p[0] == "skipped" for p in ledger.lines()), timeout=10)
    ((_, task_id, _pid, _at, told),) = [p for p in ledger.lines() if p[0] == "skipped"]
    state, thread = told.split(":")
    assert (task_id, state) == (typo.id, "REVOKED")
    assert thread.startswith("celeriac-io"), thread  # was MainThread: the loop's
    assert workers.log_text().count("not registered") == 1


@pytest.mark.parametrize("victim", ["waits_its_turn", "slow_to_start"])
def test_a_hard_limit_passed_while_another_task_blocks_the_loop_kills_for_the_blocker(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, victim: str
) -> None:
    # Blamed on the task past its hard limit (which could not run, nor its soft limit
    # fire), the child was killed for it and the blocker put back as innocent: it blocked
    # the next child's loop too, while the first was settled there with its verdict, and
    # the child was killed again for that one; the blocker ran 4 to 7 times. A plain def
    # whose body never started (slow_to_start: its hooks' results wait on the loop) was
    # killed for itself at every delivery, and dead-lettered as a crash.
    held_up = (waits_its_turn if victim == "waits_its_turn" else slow_to_start).delay()
    blocker = blocks_the_loop.delay(6)  # queued together: one fetch takes both
    workers.start("-P", "asyncio", "-c", "3", app=APP, env=ENV)
    with pytest.raises(TimeLimitExceeded, match=r"blocked the event loop of its asyncio child"):
        blocker.get(timeout=60)
    # Put back, it ran again in the next child (where waits_its_turn's soft limit fired).
    if victim == "waits_its_turn":
        with pytest.raises(SoftTimeLimitExceeded):
            held_up.get(timeout=60)
    else:
        assert held_up.get(timeout=60) == "ran", workers.log_text()
    # (The victim may not have reached its first line in the first child.)
    assert Counter(i for i, _ in _starts(ledger))[blocker.id] == 1, workers.log_text()
    assert f"while task {blocks_the_loop.name}[{blocker.id}] blocked" in workers.log_text()


@pytest.mark.parametrize("victim", ["ignores_its_soft_limit", "hangs_in_a_thread"])
def test_a_task_past_its_hard_limit_by_its_own_doing_is_blamed_beside_a_blocker(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, victim: str
) -> None:
    # The blocker was blamed whenever a block mark was set: for a plain-def task hanging
    # in its thread (the loop never held it up), and, with a mark left after the loop ran
    # again, for an async task that ignored its soft limit after the block had ended.
    # The thread's task passes its hard limit (2 s) while the loop is blocked; the other
    # passes its (3 s) after the block ended (at 1.4 s), its soft limit (2 s) ignored.
    # The blocker is sent once the other task's body runs: a task still waiting on the
    # loop to start its body is held up by the blocker, not at fault (the blocker is).
    if victim == "hangs_in_a_thread":
        at_fault, blocking = hangs_in_a_thread.delay(), 2.5
    else:
        at_fault, blocking = ignores_its_soft_limit.delay(), 1.4
    workers.start("-P", "asyncio", "-c", "3", app=APP, env=ENV)
    assert wait_for(lambda: at_fault.id in dict(_starts(ledger)), timeout=20), workers.log_text()
    blocker = blocks_then_awaits.delay(blocking, 3)
    with pytest.raises(TimeLimitExceeded, match=r"ran past its hard time limit"):
        at_fault.get(timeout=60)
    assert blocker.get(timeout=60) == "returned", workers.log_text()  # put back, ran again
    assert "blocked the event loop;" not in workers.log_text()
