"""The threads and asyncio pools, with real worker processes."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from celeriac import Celeriac, SoftTimeLimitExceeded, TaskRevoked
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses

pytestmark = pytest.mark.slow


def peak_overlap(ledger: Ledger) -> int:
    """The most tasks that were running at the same moment."""
    moments = sorted(
        (float(p[3]), 1 if p[0] == "start" else -1)
        for p in ledger.lines()
        if p[0] in {"start", "end"}
    )
    peak = current = 0
    for _, step in moments:
        current += step
        peak = max(peak, current)
    return peak


def test_asyncio_pool_runs_500_coroutines_at_once(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    results = [core.nap.delay(1.0) for _ in range(500)]
    workers.start("-P", "asyncio", "-c", "500")
    assert all(r.get(timeout=60) == "rested" for r in results)
    assert peak_overlap(ledger) >= 450  # they slept together, not one after another
    starts = [float(p[3]) for p in ledger.lines() if p[0] == "start"]
    ends = [float(p[3]) for p in ledger.lines() if p[0] == "end"]
    print(f"500 x asyncio.sleep(1): first start to last end {max(ends) - min(starts):.2f}s")


def test_asyncio_pool_runs_sync_tasks_and_cancels_at_the_soft_limit(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    workers.start("-P", "asyncio", "-c", "20")
    slow = core.naps_too_long.delay()
    assert core.add.delay(2, 2).get(timeout=20) == 4  # a plain function, run in a thread
    assert core.async_double.delay(21).get(timeout=20) == 42
    with pytest.raises(SoftTimeLimitExceeded, match="soft time limit"):
        slow.get(timeout=20)
    assert [p[4] for p in ledger.lines() if p[0] == "cleanup"] == ["CancelledError"]


def test_asyncio_pool_dead_letters_a_task_that_kills_its_child(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Each crash must count as a delivery: the child shows the task started before it runs.
    workers.start("-P", "asyncio", "-c", "4")
    doomed = core.dies.delay()
    with pytest.raises(Exception, match="dead-lettered"):
        doomed.get(timeout=30)
    (letter,) = core_app.broker.dead_letters()
    assert letter.id == doomed.id
    assert ledger.count("run")[doomed.id] >= 2  # max_deliveries=2
    assert core.add.delay(1, 1).get(timeout=20) == 2  # and a fresh child serves on


def test_threads_pool_runs_tasks_concurrently_with_soft_limits(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    results = [core.work.delay(0.5, str(i)) for i in range(8)]
    workers.start("-P", "threads", "-c", "8")
    assert [r.get(timeout=30) for r in results] == [str(i) for i in range(8)]
    assert peak_overlap(ledger) >= 6
    spinner = core.spins_too_long.delay()
    assert spinner.get(timeout=20) == "cleaned up"
    assert [p[4] for p in ledger.lines() if p[0] == "cleanup"] == ["SoftTimeLimitExceeded"]
    # Raised in the thread as a class, yet it says what happened (when the sleep returns).
    sleeper = core.work.apply_async((1.0, "late"), soft_time_limit=0.3, time_limit=10)
    # The limit and the advice, as the process pool says them (it said no number here).
    with pytest.raises(SoftTimeLimitExceeded, match=r"soft time limit \(0.3s\); it may catch"):
        sleeper.get(timeout=20)


def test_threads_pool_hard_limit_stops_the_child_and_serves_on(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    workers.start("-P", "threads", "-c", "4")
    stuck = core.stuck.delay()
    with pytest.raises(Exception, match="hard time limit"):
        stuck.get(timeout=20)
    assert core.add.delay(1, 1).get(timeout=20) == 2


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_a_recycling_child_says_once_that_it_takes_nothing_until_its_tasks_end(
    core_app: Celeriac, workers: WorkerProcesses, pool: str
) -> None:
    # A line per thread, "recycling after its current task", while one long task held the
    # other threads idle; worker_max_tasks_per_child in threads said nothing at all.
    results = [core.work.delay(0.2, str(i)) for i in range(6)]
    workers.start("-P", pool, "-c", "3", env={"CELERIAC_WORKER_MAX_TASKS_PER_CHILD": "2"})
    assert [r.get(timeout=30) for r in results] == [str(i) for i in range(6)]
    log = workers.log_text()
    lines = re.findall(
        r"child (\d+) (?:ran|took) \d+ tasks \(worker_max_tasks_per_child\); "
        r"recycling: it takes no new task, and a new child takes its place once "
        r"the tasks it is running have ended",
        log,
    )
    assert lines, log
    assert len(lines) == len(set(lines)), log  # once per child


@pytest.mark.parametrize(
    ("pool", "concurrency"), [("process", 1), ("threads", 1), ("threads", 8), ("asyncio", 1)]
)
def test_rate_limit_deferrals_do_not_count_toward_max_tasks_per_child(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str, concurrency: int
) -> None:
    # A deferral (the task waits for its rate limit's slot) counted as a task run: a
    # rate-limited backlog recycled children that had run next to nothing, a fork each
    # (22 children for 71 tasks run), and `inspect stats` counted every deferral.
    results = [core.limited.delay(i) for i in range(30)]
    # -c 8: a consumer that found the limit's count used up recycled its child at once,
    # though the deliveries the others held were deferrals that would give it back.
    workers.start("-c", str(concurrency), "-P", pool, "--max-tasks-per-child", "5")
    assert sorted(r.get(timeout=60) for r in results) == list(range(30))
    runs_per_child = Counter(p[2] for p in ledger.lines() if p[0] == "start")
    assert sorted(runs_per_child.values()) == [5] * 6, workers.log_text()


def test_asyncio_pool_terminate_cancels_the_one_coroutine_not_its_child(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # revoke --terminate killed the asyncio child, and every coroutine beside the revoked
    # one ran again (19 others for one terminate).
    workers.start("-P", "asyncio", "-c", "4")
    doomed = core.nap.delay(30)
    others = [core.nap.delay(2) for _ in range(3)]
    started = [doomed, *others]
    assert wait_for(lambda: all(ledger.count("start")[r.id] for r in started), timeout=20)
    doomed.revoke(terminate=True)
    with pytest.raises(TaskRevoked):
        doomed.get(timeout=20)
    assert [r.get(timeout=20) for r in others] == ["rested"] * 3
    assert [ledger.count("start")[r.id] for r in started] == [1, 1, 1, 1]  # none ran again
    log = workers.log_text()
    assert f"task tests.apps.core.nap[{doomed.id}] was revoked with terminate; child" in log
    assert "cancelled its coroutine, and its 3 other running task(s) go on" in log
    assert "killed child" not in log


def test_asyncio_pool_terminate_kills_a_child_whose_coroutine_blocks_the_loop(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Blocking the loop, the coroutine cannot be cancelled: after the grace, the
    # supervisor kills the child as before.
    workers.start("-P", "asyncio", "-c", "2")
    doomed = core.blocks_the_loop.delay(60)
    assert wait_for(lambda: ledger.count("start")[doomed.id] == 1, timeout=20)
    doomed.revoke(terminate=True)
    with pytest.raises(TaskRevoked):
        doomed.get(timeout=30)
    assert "was revoked with terminate; killed child" in workers.log_text()
    assert core.add.delay(1, 2).get(timeout=20) == 3  # a fresh child took over
