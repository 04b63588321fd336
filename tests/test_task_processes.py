"""Processes a task starts (ffmpeg, a browser, a shell pipeline) end with its child when
the child is killed: at the task's hard time limit, in a cold shutdown, and when a child
whose supervisor died enforces the hard limit itself. Left running, they were reparented
to init and ran for ever.

Real worker processes on SQLite; the task (tests.apps.core.starts_helpers_and_hangs)
starts ``sh -c "sleep 600 & wait"`` in a session of its own and ignores its soft limit.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from celeriac import Celeriac
from celeriac.result import AsyncResult
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)]


def _gone(pid: int) -> bool:
    try:  # the container's init may not reap what it inherits
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _helpers(ledger: Ledger, result: AsyncResult) -> list[int]:
    def started() -> list[list[str]]:
        return [p for p in ledger.lines() if p[0] == "helpers" and p[1] == result.id]

    assert wait_for(lambda: bool(started()), timeout=20), ledger.lines()
    pids = [int(pid) for pid in started()[0][4].split(",")]
    assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    return pids


@pytest.fixture
def helpers_killed() -> Iterator[list[int]]:
    """The helper pids a test saw; those still alive at its end are killed (by pid)."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_the_hard_limit_kills_the_processes_the_task_started(
    core_app: Celeriac,
    workers: WorkerProcesses,
    ledger: Ledger,
    helpers_killed: list[int],
    pool: str,
) -> None:
    workers.start("-c", "1", "-P", pool)
    result = core.starts_helpers_and_hangs.delay()
    helpers_killed += _helpers(ledger, result)
    with pytest.raises(Exception, match="hard time limit"):
        result.get(timeout=20)
    assert wait_for(lambda: all(_gone(pid) for pid in helpers_killed), timeout=10)
    # The log says which processes went with the child, and the worker carries on.
    line = f"task {core.starts_helpers_and_hangs.name}[{result.id}] passed its hard time limit"
    text = workers.log_text()
    assert line in text
    assert f"the 2 processes its tasks started ({helpers_killed[0]} (sh)" in text
    assert core.add.delay(2, 3).get(timeout=20) == 5


def test_a_cold_shutdown_kills_the_processes_running_tasks_started(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, helpers_killed: list[int]
) -> None:
    proc = workers.start("-c", "1")
    result = core.starts_helpers_and_hangs.apply_async(time_limit=60)
    helpers_killed += _helpers(ledger, result)
    proc.send_signal(signal.SIGQUIT)
    assert proc.wait(timeout=20) == 0
    assert wait_for(lambda: all(_gone(pid) for pid in helpers_killed), timeout=10)
    assert "the 2 processes its tasks started" in workers.log_text()


def test_a_child_without_its_supervisor_kills_them_at_the_hard_limit(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, helpers_killed: list[int]
) -> None:
    proc = workers.start("-c", "1")
    # Long enough to kill the supervisor first: the child enforces the limit alone.
    result = core.starts_helpers_and_hangs.apply_async(time_limit=3)
    helpers_killed += _helpers(ledger, result)
    (child,) = workers.children(proc)
    os.kill(proc.pid, signal.SIGKILL)  # as the OOM killer would
    proc.wait(timeout=10)
    assert wait_for(lambda: _gone(child), timeout=20), workers.log_text()
    assert all(_gone(pid) for pid in helpers_killed)
    assert "killed the 2 processes its tasks started" in workers.log_text()


def test_the_hard_limit_spares_the_tracker_that_cleans_up_shared_memory(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # multiprocessing's resource tracker unlinks what a dead process left in /dev/shm;
    # killed with the child, it left the block there until a reboot.
    name = f"celeriac-test-{uuid.uuid4().hex[:12]}"
    block = Path("/dev/shm") / name
    try:
        workers.start("-c", "1")
        result = core.keeps_shared_memory.delay(name)
        assert wait_for(lambda: ledger.count("shared")[result.id] == 1, timeout=20)
        assert block.exists()
        with pytest.raises(Exception, match="hard time limit"):
            result.get(timeout=20)
        assert wait_for(lambda: not block.exists(), timeout=20), workers.log_text()
    finally:
        block.unlink(missing_ok=True)


def test_a_recycled_child_ends_what_its_tasks_left_running(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, helpers_killed: list[int]
) -> None:
    # A task that never waits for what it starts: once the child recycled, the process
    # was reparented to init, and such leftovers piled up with every recycle.
    workers.start("-c", "1", "--max-tasks-per-child", "1")
    result = core.leaves_a_helper.delay()
    helper = result.get(timeout=20)
    helpers_killed.append(helper)
    assert wait_for(lambda: _gone(helper), timeout=20), workers.log_text()
    # The child logs once its leftovers have ended: a moment after the helper is gone.
    said = f"its tasks left 1 process running: {helper} (sleep)"
    assert wait_for(lambda: said in workers.log_text(), timeout=10), workers.log_text()
    assert core.add.delay(2, 3).get(timeout=20) == 5


@pytest.mark.parametrize("pool", ["process", "asyncio"])
def test_a_copy_of_a_child_forked_by_its_task_does_not_go_on_consuming(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # The copy came back out of the task and ran its child's consume loop: a second
    # consumer under the child's name, unseen by the supervisor, that outlived the worker.
    workers.start("-c", "1", "-P", pool)
    result = core.forks_without_exit.delay()
    assert wait_for(lambda: len(ledger.count("forked")) == 1 and len(ledger.lines()) == 2)
    (copy,) = [int(p[4]) for p in ledger.lines() if p[0] == "forked" and p[4] != "0"]
    try:
        assert result.get(timeout=20) == copy  # the child's own outcome
        assert wait_for(lambda: _gone(copy), timeout=20), workers.log_text()
    finally:
        if not _gone(copy):  # not the worker's: kill_all does not see it
            os.kill(copy, signal.SIGKILL)
    assert f"and the copy, process {copy}, returned from the task" in workers.log_text()
    assert [core.add.delay(i, 1).get(timeout=20) for i in range(5)] == [1, 2, 3, 4, 5]


def test_a_task_killed_beside_one_past_its_hard_limit_is_not_counted_as_a_delivery(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # A threads child killed for one task's hard limit takes its other running tasks with
    # it: they go back, but counting them as deliveries dead-lettered (as a crash) a task
    # that only shared a child with hanging ones.
    # (A task allowed one delivery is dead-lettered instead: tests/test_shared_deaths.py.)
    workers.start("-c", "2", "-P", "threads", env={"CELERIAC_TASK_MAX_DELIVERIES": "2"})
    innocent = core.work.delay(2, "innocent")
    assert wait_for(lambda: ledger.count("start")[innocent.id] == 1, timeout=20)
    hanging = core.stuck.delay()  # hard limit 1 s, its soft limit (10 s) never comes
    with pytest.raises(Exception, match="hard time limit"):
        hanging.get(timeout=20)
    hanging_again = core.stuck.delay()  # a second kill beside it: counted, over the limit
    with pytest.raises(Exception, match="hard time limit"):
        hanging_again.get(timeout=20)
    assert innocent.get(timeout=30) == "innocent"  # run again each time, never counted
    assert ledger.count("end")[innocent.id] == 1
