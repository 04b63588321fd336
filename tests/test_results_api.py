"""The result API a caller uses: waiting inside a task is refused instead of deadlocking the
worker, a failure read with ``propagate=False`` is the failure (not None), and a timeout
says honestly what a missing result can mean.

Worker processes import this module (``-A tests.test_results_api``) for its tasks.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac, group
from celeriac.errors import GetInsideTask, ResultTimeout, TaskRevoked
from celeriac.testing import run_queued, wait_for
from tests.conftest import ROOT, Ledger, WorkerProcesses

app = Celeriac("results-api")

# Workers import the tree under test, whichever copy of celeriac is installed.
WORKER_ENV = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}


@app.task
def child(x: int) -> int:
    return x + 1


@app.task
def fails(text: str) -> None:
    raise ValueError(text)


@app.task(ignore_result=True)
def quiet(x: int) -> int:
    return x


class UpstreamError(Exception):
    """An error whose text is made from its args, as many libraries' are."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status

    def __str__(self) -> str:
        return f"upstream answered HTTP {self.status}"


@app.task
def calls_upstream(status: int) -> None:
    raise UpstreamError(status)


@app.task
def connects() -> None:
    raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


# A soft limit well under the caller's wait: before the fix the parent hung until it.
@app.task(soft_time_limit=20, time_limit=30)
def waits_for_child(x: int) -> int:
    return child.delay(x).get(timeout=60)


@app.task(soft_time_limit=20, time_limit=30)
async def awaits_child(x: int) -> int:
    sent = await child.adelay(x)
    return await sent.aget(timeout=60)


@app.task(soft_time_limit=20, time_limit=30)
def waits_for_group(n: int) -> list[int]:
    return group(child.s(i) for i in range(n)).apply_async().get(timeout=60)


@app.task(soft_time_limit=20, time_limit=30)
def iterates_group(n: int) -> int:
    return len(list(group(child.s(i) for i in range(n)).apply_async().iter_completed(60)))


@app.task
def waits_knowingly(x: int) -> int:
    return child.delay(x).get(timeout=60, disable_sync_subtasks=False)


@pytest.fixture
def api_app(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """This module's app on the test's broker (SQLite, then Redis)."""
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    yield app
    app.broker.close()


@pytest.fixture
def memory_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """This module's app on the in-memory broker, for in-process runs."""
    monkeypatch.setattr(app.conf, "broker_url", "memory://")
    yield app
    app.broker.close()


def _start(broker_url: str, tmp_path: Path, *args: str) -> WorkerProcesses:
    procs = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    procs.start(*args, app="tests.test_results_api", env=WORKER_ENV)
    return procs


# -- get() inside a running task -------------------------------------------------------------


@pytest.mark.slow
def test_get_inside_a_task_is_refused_instead_of_hanging_the_worker(
    broker_url: str, api_app: Celeriac, tmp_path: Path
) -> None:
    # With -c 1 the parent held the only process while waiting for a child that needed
    # it: both sat still until the parent's soft limit, with nothing in the log saying why.
    parent = waits_for_child.delay(1)
    procs = _start(broker_url, tmp_path, "-c", "1")
    try:
        with pytest.raises(GetInsideTask) as info:
            parent.get(timeout=60)
        assert parent.state == "FAILURE"
        assert wait_for(lambda: "GetInsideTask" in procs.log_text(), timeout=30)
    finally:
        procs.kill_all()
    text = str(info.value)
    assert f"task {waits_for_child.name}[{parent.id}] called get() on {child.name}[" in text
    assert "chain the steps" in text.lower()
    assert "disable_sync_subtasks=False" in text
    assert isinstance(info.value, RuntimeError)


@pytest.mark.slow
def test_aget_inside_an_async_task_is_refused_instead_of_filling_the_loop(
    broker_url: str, api_app: Celeriac, tmp_path: Path
) -> None:
    # -P asyncio -c 1: the one coroutine slot awaited a child that needed a free slot.
    parent = awaits_child.delay(1)
    procs = _start(broker_url, tmp_path, "-P", "asyncio", "-c", "1")
    try:
        with pytest.raises(GetInsideTask, match=r"called aget\(\) on .*child\["):
            parent.get(timeout=60)
    finally:
        procs.kill_all()


def test_group_waits_inside_a_task_are_refused_naming_the_group(memory_app: Celeriac) -> None:
    # run_queued runs one task at a time in this process: before, the wait could not end.
    for task in (waits_for_group, iterates_group):
        r = task.delay(2)
        run_queued(memory_app, fail_fast=False)
        with pytest.raises(GetInsideTask, match=r"on group \S+ \(2 members\)"):
            r.get(timeout=1)


def test_eager_mode_refuses_as_a_worker_would_and_the_escape_hatch_waits(
    memory_app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Eager mode runs the child before get() is reached, so the wait would succeed there
    # and deadlock in production: it refuses too, so the test catches it.
    monkeypatch.setattr(memory_app.conf, "task_always_eager", True)
    with pytest.raises(GetInsideTask):
        waits_for_child.delay(1)  # eager re-raises the task's failure in the caller
    assert waits_knowingly.delay(1).get(timeout=1) == 2


def test_outside_a_task_get_and_aget_wait_as_before(memory_app: Celeriac) -> None:
    r = child.delay(1)
    run_queued(memory_app)
    assert r.get(timeout=1) == 2
    assert asyncio.run(r.aget(timeout=1)) == 2


def test_celerys_polling_interval_is_taken_and_a_bad_one_refused(memory_app: Celeriac) -> None:
    # Celery's get(timeout=10, interval=0.1) was a TypeError: code moved over failed at once.
    r = child.delay(1)
    g = group([child.s(1), child.s(2)]).apply_async()
    run_queued(memory_app)
    assert r.get(timeout=1, interval=0.1) == 2
    assert asyncio.run(r.aget(timeout=1, interval=0)) == 2
    assert g.get(timeout=1, interval=0.5) == [2, 3]
    assert asyncio.run(g.aget(timeout=1, interval=1)) == [2, 3]
    for bad in ("0.5", -1, float("nan"), True):
        with pytest.raises(ValueError, match=r"interval=.*: Celery's polling interval, in sec"):
            r.get(timeout=1, interval=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"aget\(interval="):
            asyncio.run(g.aget(timeout=1, interval=bad))  # type: ignore[arg-type]


# -- propagate=False: the failure, not None ---------------------------------------------


def test_get_without_propagate_returns_the_failure_not_none(api_app: Celeriac) -> None:
    # The stored result of a failure is empty: get(propagate=False) returned None, the same
    # as a task that succeeded and returned None.
    failed = fails.delay("boom")
    revoked = child.delay(1)
    revoked.revoke()
    g = group([child.s(1), fails.s("member"), child.s(3)]).apply_async()
    run_queued(api_app, fail_fast=False)

    error = failed.get(timeout=10, propagate=False)
    assert isinstance(error, ValueError) and str(error) == "boom"
    assert isinstance(revoked.get(timeout=10, propagate=False), TaskRevoked)
    values = g.get(timeout=10, propagate=False)
    assert values[0] == 2 and values[2] == 4
    assert isinstance(values[1], ValueError) and str(values[1]) == "member"
    assert isinstance(asyncio.run(failed.aget(timeout=10, propagate=False)), ValueError)


# -- timeouts that say what a missing result can mean ------------------------------------


def test_a_timeout_after_the_result_expired_does_not_only_say_it_may_still_run(
    api_app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    forgotten = child.delay(2)
    run_queued(api_app)
    assert forgotten.get(timeout=10) == 3
    forgotten.forget()
    monkeypatch.setattr(api_app.conf, "result_expires", 1.0)
    expired = child.delay(1)
    run_queued(api_app)
    assert wait_for(lambda: expired.state == "PENDING", timeout=30)
    for gone in (expired, forgotten):
        with pytest.raises(ResultTimeout) as info:
            gone.get(timeout=0.05)
        text = str(info.value)
        assert "it finished and its result is gone" in text
        assert "result_expires=1s" in text and "forget()" in text


def test_a_timeout_on_a_task_that_ignores_its_result_says_so(api_app: Celeriac) -> None:
    r = quiet.delay(1)
    run_queued(api_app)
    with pytest.raises(ResultTimeout, match=r"tests.test_results_api.quiet ignores its result"):
        r.get(timeout=0.05)
    queued = group([quiet.s(1), child.s(1)]).apply_async()  # still queued: both causes
    with pytest.raises(ResultTimeout, match=r"they may still be queued.*\.quiet ignores its"):
        queued.get(timeout=0.05)


def test_a_group_with_a_task_that_ran_only_in_part_names_the_members_left(
    memory_app: Celeriac,
) -> None:
    g = group(child.s(i) for i in range(2)).apply_async()
    run_queued(memory_app, max_tasks=1)
    with pytest.raises(ResultTimeout, match=rf"group {g.id}: 1 of 2 members .*they may still be"):
        g.get(timeout=0.05)


# -- timeout=0: a look, not a wait ---------------------------------------------------------


def test_a_zero_timeout_returns_a_finished_result_and_refuses_an_unfinished_one(
    api_app: Celeriac,
) -> None:
    # aget's own deadline cancelled the broker's read before it looked once: a finished
    # task's aget(timeout=0) raised ResultTimeout "did not finish within 0s".
    done = child.delay(1)
    g = group(child.s(i) for i in range(3)).apply_async()
    run_queued(api_app)
    waiting = child.delay(9)
    assert done.get(timeout=0) == 2
    assert asyncio.run(done.aget(timeout=0)) == 2
    assert g.get(timeout=0) == [1, 2, 3]
    assert asyncio.run(g.aget(timeout=0)) == [1, 2, 3]
    with pytest.raises(ResultTimeout, match=r"within 0s"):
        waiting.get(timeout=0)
    with pytest.raises(ResultTimeout, match=r"within 0s"):
        asyncio.run(waiting.aget(timeout=0))


def test_a_nan_timeout_is_refused_not_waited_on_forever(api_app: Celeriac) -> None:
    # No comparison with NaN is true, so no deadline ever passed: get(timeout=nan) spun at
    # full CPU for ever (the CLI's --timeout refused NaN; the API did not), aget and a
    # group's aget raised "did not finish within nans" at once, a group's get hung too.
    nan = float("nan")
    done = child.delay(1)
    g = group(child.s(i) for i in range(2)).apply_async()
    run_queued(api_app)
    with pytest.raises(ValueError, match=r"aget\(timeout=nan\): the timeout is not a number"):
        asyncio.run(done.aget(timeout=nan))
    with pytest.raises(ValueError, match=r"aget\(timeout=nan\)"):
        asyncio.run(g.aget(timeout=nan))
    with pytest.raises(ValueError, match=r"iter_completed\(timeout=nan\)"):
        next(g.iter_completed(timeout=nan))
    with pytest.raises(ValueError, match=r"get\(timeout=nan\)"):
        g.get(timeout=nan)
    with pytest.raises(ValueError, match=r"get\(timeout=nan\)"):
        done.get(timeout=nan)
    with pytest.raises(ValueError, match=r"get\(timeout=nan\)"):
        child.delay(9).get(timeout=nan)  # never run: the wait that spun
    assert done.get(timeout=None) == 2  # None still waits without a limit


def test_a_failure_comes_back_with_its_own_args_not_its_text_in_their_place(
    api_app: Celeriac,
) -> None:
    # Rebuilt from its text alone, UpstreamError(503) came back as UpstreamError("upstream
    # answered HTTP 503"): its status that text, its message said twice; and an OSError
    # came back without its errno, so `if e.status == 503` and `e.errno == ECONNREFUSED`
    # were quietly false in the caller.
    upstream, refused, plain = calls_upstream.delay(503), connects.delay(), fails.delay("bad")
    run_queued(api_app, fail_fast=False)
    with pytest.raises(UpstreamError) as raised:
        upstream.get(timeout=10)
    assert (raised.value.status, str(raised.value)) == (503, "upstream answered HTTP 503")
    with pytest.raises(ConnectionRefusedError) as oserror:
        refused.get(timeout=10)
    refusal = oserror.value
    assert (refusal.errno, refusal.strerror) == (errno.ECONNREFUSED, "Connection refused")
    with pytest.raises(ValueError) as text_only:  # its args are its text: as before
        plain.get(timeout=10)
    assert text_only.value.args == ("bad",)
