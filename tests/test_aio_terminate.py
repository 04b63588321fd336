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


app = Celeriac("aio-terminate", middleware=[*default_middleware(), SlowStartHook()])


@app.bound_task()
async def nap(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    await asyncio.sleep(seconds)
    return "rested"


@app.bound_task()
async def hooked(self: Task[Any, Any]) -> str:
    record("start", self.request.id)  # no await: a cancel request could never land here
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
