"""A middleware's on_child_start and on_child_stop: per-process resources in a worker
(Celery's ``worker_process_init`` / ``worker_process_shutdown``).

The worker processes import this module (``-A tests.test_child_hooks``) for its app.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from celeriac import Celeriac, Middleware, Task
from celeriac.middleware import default_middleware
from celeriac.middleware.base import ChildStartFailed, MiddlewareStack
from celeriac.testing import wait_for
from tests.apps.core import record
from tests.conftest import ROOT, Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

APP = "tests.test_child_hooks"
#: Worker subprocesses import celeriac from the caller's PYTHONPATH first, when it sets one
#: (an old source tree, to check that these tests fail on the code they guard).
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)}

#: What a child's on_child_start opened: None until it ran in this process.
pool: str | None = None
#: The event loop an asyncio child's on_loop_start ran in: None until it ran.
session_loop: asyncio.AbstractEventLoop | None = None


class DatabasePool(Middleware):
    """Opens a "pool" per child; refuses to while the file CELERIAC_TEST_REFUSE names exists
    (a database that is down), and hangs while CELERIAC_TEST_HANG's does (one that never
    answers)."""

    def on_child_start(self, app: Celeriac) -> None:
        global pool
        refuse = os.environ.get("CELERIAC_TEST_REFUSE", "")
        if refuse and Path(refuse).exists():
            raise ConnectionRefusedError("database at 10.0.0.5:5432 refused the connection")
        hang = os.environ.get("CELERIAC_TEST_HANG", "")
        while hang and Path(hang).exists():  # a connect with no timeout, to a silent host
            time.sleep(0.05)
        pool = f"pool-{os.getpid()}"
        record("child-start", "-")

    def on_child_stop(self, app: Celeriac) -> None:
        record("child-stop", "-", pool)

    async def on_loop_start(self, app: Celeriac) -> None:
        global session_loop
        refuse = os.environ.get("CELERIAC_TEST_REFUSE_LOOP", "")
        if refuse and Path(refuse).exists():
            raise ConnectionRefusedError("api at 10.0.0.6:443 refused the connection")
        session_loop = asyncio.get_running_loop()  # an aiohttp session, made in its loop
        record("loop-start", "-")

    async def on_loop_stop(self, app: Celeriac) -> None:
        record("loop-stop", "-")


app = Celeriac("child-hooks", middleware=[*default_middleware(), DatabasePool()])


@app.task
def uses_pool() -> list[object]:
    """The child's pid and the pool its on_child_start opened."""
    return [os.getpid(), pool]


@app.bound_task()
def where(self: Task[Any, Any]) -> list[object]:
    """Celery's request fields: is_eager and hostname."""
    return [self.request.is_eager, self.request.hostname]


@app.task
async def uses_session() -> list[object]:
    """The child's pid, and whether its on_loop_start ran in the loop this task runs in."""
    return [os.getpid(), session_loop is asyncio.get_running_loop()]


@pytest.fixture
def hooks_app(
    sqlite_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """This module's app on this test's SQLite broker."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(app.conf, "broker_url", sqlite_url)
    yield app
    app.broker.close()


@pytest.fixture
def hook_workers(sqlite_url: str, ledger: Ledger, hooks_app: Celeriac) -> Iterator[WorkerProcesses]:
    """Real workers of this module's app; all killed by PID when the test ends."""
    procs = WorkerProcesses(sqlite_url, ledger)
    yield procs
    procs.kill_all()


def _pids(ledger: Ledger, phase: str) -> Counter[int]:
    return Counter(int(p[2]) for p in ledger.lines() if p[0] == phase)


@pytest.mark.parametrize(
    "pool_args",
    [
        ("-P", "process", "-c", "2", "--max-tasks-per-child", "2"),
        ("-P", "threads", "-c", "2"),
        ("-P", "asyncio", "-c", "2"),
    ],
    ids=["process", "threads", "asyncio"],
)
def test_each_child_opens_its_own_and_closes_it_when_it_stops(
    hooks_app: Celeriac, hook_workers: WorkerProcesses, ledger: Ledger, pool_args: tuple[str, ...]
) -> None:
    sent = [uses_pool.delay() for _ in range(6)]
    asked = where.delay()
    proc = hook_workers.start(*pool_args, app=APP, env=ENV)
    ran = [r.get(timeout=30) for r in sent]
    assert asked.get(timeout=30) == [False, socket.gethostname()]  # in a worker
    # Every task ran in a child whose hook had opened that child's own pool.
    assert all(got_pool == f"pool-{pid}" for pid, got_pool in ran), ran
    started = _pids(ledger, "child-start")
    assert set(started.values()) == {1}, started  # once per child
    assert {pid for pid, _ in ran} <= set(started)
    assert hook_workers.stop(proc) == 0
    # Each child that stopped of its own accord (recycled, the warm shutdown) closed it.
    stopped = _pids(ledger, "child-stop")
    assert stopped == started, (started, stopped, hook_workers.log_text())
    assert _pids(ledger, "loop-start") == _pids(ledger, "loop-stop")
    assert set(_pids(ledger, "loop-start")) == (started.keys() if "asyncio" in pool_args else set())


def test_an_asyncio_child_opens_in_its_loop_what_its_tasks_await_on(
    hooks_app: Celeriac, hook_workers: WorkerProcesses, ledger: Ledger
) -> None:
    sent = [uses_session.delay() for _ in range(4)]
    args = ("-P", "asyncio", "-c", "2", "--max-tasks-per-child", "2")
    proc = hook_workers.start(*args, app=APP, env=ENV)
    ran = [r.get(timeout=30) for r in sent]
    assert [same_loop for _, same_loop in ran] == [True] * 4, hook_workers.log_text()
    assert hook_workers.stop(proc) == 0
    phases = [(p[0], int(p[2])) for p in ledger.lines()]
    for pid in {pid for pid, _ in ran}:  # nested: the child's hooks around the loop's
        mine = [phase for phase, at in phases if at == pid]
        assert mine == ["child-start", "loop-start", "loop-stop", "child-stop"], phases


class Refusal(NamedTuple):
    """A start hook that raises while a file exists, and what the worker then says."""

    variable: str  # the environment variable naming the file
    pool_args: tuple[str, ...]
    task: Task[[], list[object]]
    said: str
    child_stopped: bool  # whether the child's on_child_stop runs


REFUSALS = {
    "on_child_start": Refusal(
        "CELERIAC_TEST_REFUSE",
        ("-c", "1"),
        uses_pool,
        "DatabasePool.on_child_start raised ConnectionRefusedError: database at "
        "10.0.0.5:5432 refused the connection. It took no task",
        False,  # a child whose own start failed runs no stop hook
    ),
    "on_loop_start": Refusal(
        "CELERIAC_TEST_REFUSE_LOOP",
        ("-P", "asyncio", "-c", "1"),
        uses_session,
        "DatabasePool.on_loop_start raised ConnectionRefusedError: api at 10.0.0.6:443 "
        "refused the connection. It took no task",
        True,  # its on_child_start had run: its on_child_stop runs too
    ),
}


@pytest.mark.parametrize("hook", sorted(REFUSALS))
def test_a_child_whose_hook_raises_takes_no_task_and_the_next_one_runs_it(
    hooks_app: Celeriac, hook_workers: WorkerProcesses, ledger: Ledger, tmp_path: Path, hook: str
) -> None:
    refusal = REFUSALS[hook]
    refuse = tmp_path / "service-down"
    refuse.touch()
    result = refusal.task.delay()
    hook_workers.start(*refusal.pool_args, app=APP, env={**ENV, refusal.variable: str(refuse)})
    assert wait_for(lambda: "did not start" in hook_workers.log_text(), timeout=20)
    log = hook_workers.log_text()
    assert refusal.said in log, log
    assert not result.ready()
    queue = next(q for q in hooks_app.broker.stats() if q.queue == "default")
    assert (queue.ready, queue.in_flight, queue.dead) == (1, 0, 0)  # waiting, not taken
    assert bool(_pids(ledger, "child-stop")) is refusal.child_stopped
    refuse.unlink()  # the service is back: the next child starts and runs the task
    pid, got = result.get(timeout=30)
    assert got in (f"pool-{pid}", True)
    log = hook_workers.log_text()
    assert "crashed" not in log  # a refusal, not a crash
    assert "(exit code 78: a middleware's on_child_start raised, as the child logged)" in log


def test_a_child_whose_hook_never_returns_is_killed_and_replaced(
    hooks_app: Celeriac, hook_workers: WorkerProcesses, tmp_path: Path
) -> None:
    hang = tmp_path / "database-silent"
    hang.touch()
    result = uses_pool.delay()
    env = {**ENV, "CELERIAC_TEST_HANG": str(hang), "CELERIAC_WORKER_LEASE_SECONDS": "1"}
    hook_workers.start("-c", "1", app=APP, env=env)
    assert wait_for(lambda: "has not begun to consume" in hook_workers.log_text(), timeout=30)
    assert "still in a middleware's on_child_start" in hook_workers.log_text()
    assert not result.ready()
    hang.unlink()
    pid, got_pool = result.get(timeout=30)
    assert got_pool == f"pool-{pid}"


class Recorder(Middleware):
    """Says in ``said`` each hook it ran; raises in on_child_start when told to."""

    def __init__(self, name: str, said: list[str], fail: bool = False) -> None:
        self.name, self.said, self.fail = name, said, fail

    def on_child_start(self, app: Celeriac) -> None:
        if self.fail:
            raise OSError(f"{self.name} cannot start")
        self.said.append(f"start {self.name}")

    def on_child_stop(self, app: Celeriac) -> None:
        self.said.append(f"stop {self.name}")


class StopsOnly(Middleware):
    """Has an on_child_stop and no on_child_start (a buffer it flushes)."""

    def __init__(self, said: list[str]) -> None:
        self.said = said

    def on_child_stop(self, app: Celeriac) -> None:
        self.said.append("stop flush")


def test_hooks_nest_and_a_failed_start_stops_only_what_started_before_it() -> None:
    said: list[str] = []
    stack = MiddlewareStack(
        [Recorder("a", said), StopsOnly(said), Recorder("b", said), Recorder("c", said)]
    )
    stack.child_started(app)
    stack.child_stopping(app)
    assert said == ["start a", "start b", "start c", "stop c", "stop b", "stop flush", "stop a"]

    said.clear()
    failing = MiddlewareStack(
        [Recorder("a", said), StopsOnly(said), Recorder("b", said, fail=True), Recorder("c", said)]
    )
    with pytest.raises(
        ChildStartFailed, match=r"Recorder\.on_child_start raised OSError: b cannot"
    ):
        failing.child_started(app)
    assert said == ["start a", "stop flush", "stop a"]  # c never started; b did not


def test_a_stop_hook_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    said: list[str] = []

    class Broken(Middleware):
        def on_child_stop(self, app: Celeriac) -> None:
            raise RuntimeError("flush failed")

    MiddlewareStack([Recorder("a", said), Broken()]).child_stopping(app)
    assert said == ["stop a"]
    assert f"Broken.on_child_stop failed in worker child {os.getpid()}" in caplog.text


class LoopRecorder(Middleware):
    """Says in ``said`` each loop hook it ran; raises in on_loop_start when told to."""

    def __init__(self, name: str, said: list[str], fail: bool = False) -> None:
        self.name, self.said, self.fail = name, said, fail

    async def on_loop_start(self, app: Celeriac) -> None:
        if self.fail:
            raise OSError(f"{self.name} cannot start")
        self.said.append(f"loop start {self.name}")

    async def on_loop_stop(self, app: Celeriac) -> None:
        self.said.append(f"loop stop {self.name}")


def test_loop_hooks_nest_as_the_child_hooks_do() -> None:
    said: list[str] = []
    stack = MiddlewareStack([LoopRecorder("a", said), LoopRecorder("b", said)])
    asyncio.run(stack.loop_started(app))
    asyncio.run(stack.loop_stopping(app))
    assert said == ["loop start a", "loop start b", "loop stop b", "loop stop a"]

    said.clear()
    failing = MiddlewareStack(
        [LoopRecorder("a", said), LoopRecorder("b", said, fail=True), LoopRecorder("c", said)]
    )
    with pytest.raises(ChildStartFailed, match=r"LoopRecorder\.on_loop_start raised OSError"):
        asyncio.run(failing.loop_started(app))
    assert said == ["loop start a", "loop stop a"]


def test_a_task_run_in_the_callers_process_knows_it(hooks_app: Celeriac) -> None:
    from celeriac.testing import run_queued

    hooks_app.conf.broker_url = "memory://"
    asked = where.delay()
    run_queued(hooks_app)
    assert asked.get(timeout=1) == [True, socket.gethostname()]  # Celery's is_eager
