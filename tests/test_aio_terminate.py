"""``revoke --terminate`` in the asyncio pool, with real worker processes: the one
coroutine is cancelled (see celeriac.worker.aio_terminate), whatever its limits and
wherever the revoke finds it.

The worker processes import this module (``-A tests.test_aio_terminate``) for its tasks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import AsyncResult, Celeriac, Task, TaskRevoked
from celeriac.control import revoke
from celeriac.middleware import default_middleware
from celeriac.middleware.base import Job, Middleware, Outcome
from celeriac.testing import wait_for
from tests.apps.core import record
from tests.conftest import Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

APP = "tests.test_aio_terminate"


class SlowStartHook(Middleware):
    """A before_execute hook that takes a second for the tasks whose name says "hooked"
    (a tracing or permission hook calling a slow service)."""

    def before_execute(self, job: Job) -> Outcome | None:
        if job.message is not None and "hooked" in job.message.task:
            record("hook", job.delivery.id)
            time.sleep(1.0)
        return None


class SlowSettleOfRevoked(Middleware):
    """An after_settle hook that takes 0.7 s for a REVOKED task whose name says "slowly"
    (events or a dedupe release on a slow broker): longer than the supervisor's read of
    the revokes (every 0.5 s)."""

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        slowly = job.message is not None and "slowly" in job.message.task
        if slowly and outcome.state == "REVOKED":
            time.sleep(0.7)


app = Celeriac(
    "aio-terminate", middleware=[*default_middleware(), SlowStartHook(), SlowSettleOfRevoked()]
)


@app.bound_task()
async def nap(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    await asyncio.sleep(seconds)
    return "rested"


@app.bound_task()
async def hooked(self: Task[Any, Any]) -> str:
    record("start", self.request.id)  # no await: a cancel request could never land here
    return "ran"


@app.bound_task()
async def naps_and_settles_slowly(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    await asyncio.sleep(seconds)
    return "rested"


@app.bound_task()
def hooked_and_settles_slowly(self: Task[Any, Any]) -> str:
    record("start", self.request.id)  # a plain def: its body runs in a thread
    return "ran"


@app.bound_task(soft_time_limit=math.inf, time_limit=math.inf)
async def cleans_up_unlimited(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await asyncio.sleep(1.0)  # its cleanup awaits: longer than the supervisor's poll
        raise
    return "done"


@app.bound_task()
async def takes_the_cancel(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        return "swallowed"
    return "done"


@pytest.fixture
def aio_app(broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """This module's app on this test's broker (the one `workers` use)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    yield app
    app.broker.close()


@pytest.fixture
def workers(broker_url: str, ledger: Ledger, aio_app: Celeriac) -> Iterator[WorkerProcesses]:
    """Worker processes running this module's tasks; all killed by PID at the end."""
    procs = WorkerProcesses(broker_url, ledger)
    yield procs
    procs.kill_all()


@pytest.mark.parametrize("beside", [False, True])
def test_a_task_revoked_with_terminate_in_its_hooks_never_runs(
    aio_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, beside: bool
) -> None:
    # Beside a running body, the child read the revoke while the task was in its hooks,
    # cancelled it as its body began, and the body, which never awaited, ran in full: the
    # cancel landed in a worker hook and the task was dead-lettered. Alone, the child read
    # nothing while no body ran, and the task ran and succeeded.
    workers.start("-P", "asyncio", "-c", "4", app=APP)
    anchor = nap.delay(8) if beside else None
    if anchor is not None:
        assert wait_for(lambda: ledger.count("start")[anchor.id] == 1, timeout=20)
    doomed = hooked.delay()
    assert wait_for(lambda: ledger.count("hook")[doomed.id] == 1, timeout=20)
    assert revoke(aio_app, doomed.id, terminate=True)  # a worker holds it
    with pytest.raises(TaskRevoked, match=r"was revoked"):
        doomed.get(timeout=20)
    assert ledger.count("start")[doomed.id] == 0
    assert "killed child" not in workers.log_text()


@pytest.mark.parametrize("in_hooks", [False, True])
def test_a_task_the_child_stopped_does_not_get_its_child_killed_while_it_settles(
    aio_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, in_hooks: bool
) -> None:
    # The child settled the terminated task REVOKED itself; while its settle went on (or,
    # for a plain def stopped in its hooks, once its body's deadlines were in the slot)
    # the supervisor read the revoke and killed the child: its neighbours ran twice.
    workers.start("-P", "asyncio", "-c", "4", app=APP)
    others = [nap.delay(3) for _ in range(2)]
    assert wait_for(lambda: all(ledger.count("start")[r.id] for r in others), timeout=20)
    if in_hooks:
        doomed = hooked_and_settles_slowly.delay()
        assert wait_for(lambda: ledger.count("hook")[doomed.id] == 1, timeout=20)
        revoke(aio_app, doomed.id, terminate=True)
        with pytest.raises(TaskRevoked):
            doomed.get(timeout=20)
        assert ledger.count("start")[doomed.id] == 0
    else:
        _terminate(aio_app, ledger, naps_and_settles_slowly.delay(30))
    assert [r.get(timeout=20) for r in others] == ["rested"] * 2
    assert [ledger.count("start")[r.id] for r in others] == [1, 1]
    assert "killed child" not in workers.log_text()


def test_a_terminate_spares_the_neighbours_of_a_task_with_no_time_limits(
    aio_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # With neither limit, the slot said the task was not on the loop, so the supervisor
    # gave the child no grace and killed it while the task's cleanup awaited: the log said
    # its neighbours went on, and each ran again.
    workers.start("-P", "asyncio", "-c", "4", app=APP)
    doomed = cleans_up_unlimited.delay(30)
    others = [nap.delay(3) for _ in range(3)]
    started = [doomed, *others]
    assert wait_for(lambda: all(ledger.count("start")[r.id] for r in started), timeout=20)
    _terminate(aio_app, ledger, doomed)
    assert [r.get(timeout=20) for r in others] == ["rested"] * 3
    assert [ledger.count("start")[r.id] for r in started] == [1, 1, 1, 1]
    assert "killed child" not in workers.log_text()


def test_a_coroutine_that_takes_the_cancel_and_returns_still_reads_revoked(
    aio_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Stopped by the terminate, it ended SUCCESS with the value its handler returned,
    # while the log said it was cancelled; the kill in the other pools makes it REVOKED.
    workers.start("-P", "asyncio", "-c", "2", app=APP)
    _terminate(aio_app, ledger, takes_the_cancel.delay(30))


def _terminate(app: Celeriac, ledger: Ledger, running: AsyncResult[Any]) -> None:
    """Revoke ``running`` with terminate once it has started, and see it end REVOKED."""
    assert wait_for(lambda: ledger.count("start")[running.id] == 1, timeout=20)
    revoke(app, running.id, terminate=True)
    with pytest.raises(TaskRevoked):
        running.get(timeout=20)
