"""Priorities with real workers: what a child already holds must not make a priority-9
task wait behind low-priority work longer than the settings say."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import redis
from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

# A wide window, so that `add` counts as short on a loaded machine and a child takes
# batches of many messages: the case under test.
_BATCHING = {"CELERIAC_WORKER_BATCH_WINDOW": "0.05"}


def _starts(ledger: Ledger) -> list[str]:
    return [parts[4] for parts in ledger.lines() if parts[0] == "start"]


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_batch_taken_for_short_tasks_does_not_hold_slow_ones_before_priority_9(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # A child that has timed `add` as short takes batches of many messages. When such a
    # batch also brings slow tasks (the backlog's next messages), those slow tasks must
    # not all run before a priority-9 task sent meanwhile: the batch was sized for short
    # tasks. They held it up by a batch of slow tasks (31 of them at the defaults), and no
    # idle sibling or other worker could take them.
    workers.start("-c", "1", "-P", pool, env=_BATCHING)
    warm = [core.add.delay(i, i) for i in range(100)]
    for r in warm:
        r.get(timeout=30)
    # One broker call, so that the idle child's next fetch takes them together.
    shorts = [core.add.message((i, 0)) for i in range(5)]
    slows = [core.work.message((1.0, f"slow-{i}")) for i in range(6)]
    core_app.send_many(shorts + slows)
    assert wait_for(lambda: "slow-0" in _starts(ledger), timeout=30), workers.log_text()
    urgent = core.work.apply_async((0, "urgent"), priority=9)
    urgent.get(timeout=60)
    order = _starts(ledger)
    assert order[order.index("slow-0") + 1] == "urgent", order


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_child_that_recycles_by_count_takes_nothing_it_will_not_run(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # The commit of a child's last task fetched the next message, which the recycling
    # child then gave back to the back of its queue: with --max-tasks-per-child 1, every
    # other message went behind the whole backlog, again and again.
    results = [core.work.delay(0, f"t-{i}") for i in range(8)]
    workers.start("-c", "1", "-P", pool, "--max-tasks-per-child", "1")
    for r in results:
        r.get(timeout=60)
    assert _starts(ledger) == [f"t-{i}" for i in range(8)]


def test_a_child_that_recycles_by_memory_takes_nothing_it_will_not_run(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The same when a task leaves the child over worker_max_memory_per_child: the commit
    # fetched the next message, and the recycling child gave it back behind the backlog.
    first = core.leak.delay(150)
    results = [core.work.delay(0, f"t-{i}") for i in range(4)]
    workers.start("-c", "1", "--max-memory-per-child", "120")
    first.get(timeout=60)
    for r in results:
        r.get(timeout=60)
    assert _starts(ledger) == [f"t-{i}" for i in range(4)]
    assert "over worker_max_memory_per_child=120; recycling" in workers.log_text()


def test_an_asyncio_child_over_its_ceiling_starts_no_more_tasks(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    # The asyncio child fetched and started its next task, then saw that the one before
    # had taken it over worker_max_memory_per_child: each child ran one task past its
    # ceiling (measured at -c 4 under a 300 MiB ceiling: 433 MiB).
    results = [core.leak.delay(150) for _ in range(4)]
    workers.start("-c", "1", "-P", "asyncio", "--max-memory-per-child", "120")
    # leak returns how many blocks its child holds: 1 when each child ran one of them.
    assert [r.get(timeout=60) for r in results] == [1, 1, 1, 1], workers.log_text()


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_usually_short_task_that_runs_long_frees_the_batch_behind_it(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # A task known to be short may still be slow once (a call waiting on a network
    # timeout). Behind one 4 s call of a usually-instant task, the 10 results of the
    # tasks that had run before it waited 4 s for their commit, and the 33 messages its
    # batch held waited for it too, while the sibling idled.
    workers.start("-c", "2", "-P", pool, env=_BATCHING)
    for _ in range(3):  # timed as short: the children take batches of it
        for r in [core.work.delay(0, "warm") for _ in range(200)]:
            r.get(timeout=30)
    before = [core.work.message((0, f"before-{i}")) for i in range(10)]
    slow = core.work.message((30.0, "slow"))
    after = [core.work.message((0, f"after-{i}")) for i in range(33)]
    core_app.send_many([*before, slow, *after])  # one call: one child's next batch
    for m in before + after:
        core_app.AsyncResult(m.id).get(timeout=25)
    ended = [p[4] for p in ledger.lines() if p[0] == "end"]
    assert "slow" not in ended, workers.log_text()  # all of them done while it still ran


def test_higher_priorities_under_a_rate_limit_start_before_a_backlog_of_priority_0(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Each task over its limit reserved the next free slot, first come, first served: a
    # backlog reserved every slot before later tasks of higher priority arrived, which
    # then started after all of it (a priority-9 task: 28 s behind 273 tasks at 10/s).
    backlog = core_app.send_many([core.limited.message((n,)) for n in range(200)])
    workers.start("-c", "2")
    assert wait_for(lambda: len(_started_limited(ledger)) >= 5, timeout=30), workers.log_text()
    middle = core_app.send_many([core.limited.message((1000 + n,), priority=5) for n in range(60)])
    urgent = core.limited.apply_async((-1,), priority=9)
    for r in [urgent, *middle, *backlog]:
        r.get(timeout=60)
    order = _started_limited(ledger)
    assert sorted(order) == sorted(str(n) for n in [-1, *range(200), *range(1000, 1060)])
    # 20/s: the slots taken a second or two ahead go first (~40), then the urgent task,
    # then the priority-5 tasks, then the rest of the backlog. Each waited for the whole
    # backlog before: at 187-200 and from 189-200 to 252-259 of 261.
    assert order.index("-1") < 80, order
    last_middle = max(i for i, n in enumerate(order) if int(n) >= 1000)
    assert last_middle < 150, order


def _started_limited(ledger: Ledger) -> list[str]:
    return [p[4] for p in ledger.lines() if p[0] == "start"]


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_task_that_ends_while_its_batch_is_freed_is_not_killed_at_its_hard_limit(
    private_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: str
) -> None:
    # The task ended while the watch committed what its batch held; it waited for the
    # watch, still listed as running under its hard limit, and a Redis that stalled the
    # watch's commit past that limit got the finished task killed: FAILURE stored, and
    # the batch's tasks run again.
    url = private_redis.url
    monkeypatch.setattr(core.app.conf, "broker_url", url)
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    procs = WorkerProcesses(url, ledger)
    try:
        procs.start("-c", "2", "-P", pool, env=_BATCHING)
        for _ in range(3):  # timed as short: the children take batches of it
            for r in [core.work.delay(0, "warm") for _ in range(200)]:
                r.get(timeout=30)
        before = [core.work.message((0, f"before-{i}")) for i in range(10)]
        slow = core.work.message((1.0, "slow"), soft_time_limit=2, time_limit=2.5)
        after = [core.work.message((0, f"after-{i}")) for i in range(33)]
        core.app.send_many([*before, slow, *after])
        assert wait_for(lambda: "slow" in _starts(ledger), timeout=30), procs.log_text()
        # Redis stalls the watch's commit (due 0.25 s into the task) past the hard limit.
        redis.Redis(port=private_redis.port).execute_command("CLIENT", "PAUSE", 4000)
        assert core.app.AsyncResult(slow.id).get(timeout=30) == "slow", procs.log_text()
        for m in before + after:
            core.app.AsyncResult(m.id).get(timeout=30)
    finally:
        procs.kill_all()
        core.app.broker.close()
    runs = ledger.count("start")
    assert all(runs[m.id] == 1 for m in [*before, slow, *after]), procs.log_text()
    assert "hard time limit" not in procs.log_text()


def test_a_lower_priority_under_a_rate_limit_waits_for_a_higher_line(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # A task whose priority's line was empty took the next free slot however far: a
    # trickle of priority-0 tasks went ahead of a waiting priority-1 backlog (in a
    # review, 19 of 20 priority-0 tasks started before a priority-9 backlog had).
    backlog = core_app.send_many([core.limited.message((n,), priority=1) for n in range(80)])
    workers.start("-c", "2")
    assert wait_for(lambda: len(_started_limited(ledger)) >= 5, timeout=30), workers.log_text()
    trickle = []
    for n in range(8):
        trickle.append(core.limited.apply_async((1000 + n,), priority=0))
        time.sleep(0.2)
    for r in [*backlog, *trickle]:
        r.get(timeout=60)
    order = [int(n) for n in _started_limited(ledger)]
    last_backlog = max(i for i, n in enumerate(order) if n < 1000)
    first_trickle = min(i for i, n in enumerate(order) if n >= 1000)
    assert last_backlog < first_trickle, order
