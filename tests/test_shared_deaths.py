"""A poison task in a child that runs several tasks: the others are not dead-lettered.

Every task of a child that dies is counted as a delivery. In a threads or asyncio child a
task that kills the process took the tasks beside it along at each death, and after
``task_max_deliveries`` deaths they were dead-lettered with it. Now one delivery over the
limit after a shared death runs alone (celeriac.worker.death_notes, celeriac.worker.turns):
the innocent tasks finish, and the poison task is dead-lettered for a death of its own.
Real worker processes, on a real SQLite file and a real redis-server.
"""

from __future__ import annotations

import re

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_the_tasks_beside_a_poison_task_finish_and_it_alone_is_dead_lettered(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    innocent = [core.work.delay(1.0, f"innocent-{i}") for i in range(3)]
    poison = core.dies_after.delay(0.3)  # dies while the other three run beside it
    workers.start("-P", pool, "-c", "4", env={"CELERIAC_TASK_MAX_DELIVERIES": "2"})
    labels = [r.get(timeout=60) for r in innocent]
    assert labels == ["innocent-0", "innocent-1", "innocent-2"], workers.log_text()
    assert wait_for(core_app.broker.dead_letters, timeout=30), workers.log_text()
    (letter,) = core_app.broker.dead_letters()
    assert letter.id == poison.id and letter.deliveries == 4, letter
    # Its last death was its own: it ran alone, and no other task was counted for it.
    assert letter.reason.endswith("its worker child died (exit code 3)"), letter.reason
    deaths = re.findall(
        r"worker child \d+ died \(exit code 3\) while running: ([^;]*)", workers.log_text()
    )
    assert len(deaths) == 3, workers.log_text()  # twice beside the others, then alone
    assert deaths[-1] == f"{core.dies_after.name}[{poison.id}]", deaths
    said = (
        f"task {core.dies_after.name}[{poison.id}]: its worker child died (exit code 3) while "
        "it ran beside 3 other task(s), and it has reached its limit of 2 deliveries; it runs "
        "once more, alone"
    )
    assert said in workers.log_text(), workers.log_text()
    # Each innocent task ran to its end once: after the deaths it shared, alone.
    assert ledger.count("end") == {r.id: 1 for r in innocent}


def test_a_short_task_that_kills_its_process_child_is_not_held_against_the_batch(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    # A process child runs one task at a time, but lists the finished short tasks whose
    # batched commit is still to come as started: they were counted at its death, and
    # with task_max_deliveries=1 dead-lettered at their next delivery.
    before = [core.dies_if.delay(False, i) for i in range(10)]  # timed short: batched
    poison = core.dies_if.delay(True, -1)
    after = [core.dies_if.delay(False, i) for i in range(10, 15)]
    # A window of a second: the batch is committed when it is full, not when 5 ms passed
    # (on a slow machine, before the poison task ran, and no death was shared).
    env = {"CELERIAC_TASK_MAX_DELIVERIES": "1", "CELERIAC_WORKER_BATCH_WINDOW": "1"}
    workers.start("-c", "1", env=env)
    assert [r.get(timeout=60) for r in before + after] == list(range(15)), workers.log_text()
    assert wait_for(core_app.broker.dead_letters, timeout=30), workers.log_text()
    (letter,) = core_app.broker.dead_letters()
    assert letter.id == poison.id, letter
    assert letter.reason.endswith("its worker child died (exit code 3)"), letter.reason
