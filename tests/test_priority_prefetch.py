"""Priorities with real workers: what a child already holds must not make a priority-9
task wait behind low-priority work longer than the settings say."""

from __future__ import annotations

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses

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
