"""A warm shutdown gives back what a child prefetched at once, while its task runs on."""

from __future__ import annotations

import signal

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_warm_shutdown_gives_back_prefetched_messages_while_the_task_runs(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # With worker_prefetch_multiplier 9, the child's first fetch takes the slow task and
    # the 8 behind it. At SIGTERM those 8 went back only once the slow task ended: behind
    # a 5-minute task, 5 minutes that idle workers could have used. The slow task watches
    # the queue (through the app's broker, as a task calling .delay() does) and ends as
    # soon as it sees them back, or after 20 s.
    slow = core.waits_for_ready.delay(8, 20.0)
    adds = [core.add.delay(i, i) for i in range(8)]
    proc = workers.start("-c", "1", "-P", pool, env={"CELERIAC_WORKER_PREFETCH_MULTIPLIER": "9"})
    assert wait_for(lambda: ledger.count("start")[slow.id] == 1, timeout=30), workers.log_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, workers.log_text()

    saw = [int(parts[4]) for parts in ledger.lines() if parts[0] == "saw"]
    assert saw == [8], workers.log_text()  # back in the queue before the slow task ended
    assert slow.get(timeout=10) == 8  # the running task finished and committed
    assert not ledger.count("run"), workers.log_text()  # none of them started here
    assert "gives back 8 prefetched message(s) at once" in workers.log_text()

    # Nothing lost, nothing run twice: another worker runs each of them once.
    workers.start("-c", "1", "-P", pool)
    assert [r.get(timeout=30) for r in adds] == [2 * i for i in range(8)]
    assert ledger.count("run") == {r.id: 1 for r in adds}
    assert ledger.count("start")[slow.id] == 1


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_prefetched_messages_given_back_keep_their_place_in_the_queue(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # Given back to the back of their queue, a warm shutdown's prefetch (up to a batch of
    # 64 per child, at every deploy) waited behind every message sent since.
    slow = core.waits_for_ready.delay(12, 20.0)
    early = [core.add.delay(i, 0) for i in range(8)]
    proc = workers.start("-c", "1", "-P", pool, env={"CELERIAC_WORKER_PREFETCH_MULTIPLIER": "9"})
    assert wait_for(lambda: ledger.count("start")[slow.id] == 1, timeout=30), workers.log_text()
    late = [core.add.delay(100 + i, 0) for i in range(4)]  # sent after the prefetch
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, workers.log_text()
    assert slow.get(timeout=10) == 12, workers.log_text()  # all back before it ended

    workers.start("-c", "1", "-P", pool)
    for r in early + late:
        r.get(timeout=30)
    order = [parts[1] for parts in ledger.lines() if parts[0] == "run"]
    assert order == [r.id for r in early + late], workers.log_text()
