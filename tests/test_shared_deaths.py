"""A poison task in a child that runs several tasks: the others are not dead-lettered.

Every task of a child that dies is counted as a delivery. In a threads or asyncio child a
task that kills the process took the tasks beside it along at each death, and after
``task_max_deliveries`` deaths they were dead-lettered with it. Now a last allowed delivery
that follows a shared death runs alone (celeriac.worker.death_notes, celeriac.worker.turns):
the innocent tasks finish, and the poison task is dead-lettered for a death of its own.
Real worker processes, on a real SQLite file and a real redis-server.
"""

from __future__ import annotations

import re

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from celeriac.worker.death_notes import death_key, death_note
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
    assert letter.id == poison.id and letter.deliveries == 3, letter
    # Its last death was its own: it ran alone, and no other task was counted for it.
    assert letter.reason.endswith("its worker child died (exit code 3)"), letter.reason
    deaths = re.findall(
        r"worker child \d+ died \(exit code 3\) while running: ([^;]*)", workers.log_text()
    )
    assert len(deaths) == 2, workers.log_text()  # beside the others, then alone
    assert deaths[-1] == f"{core.dies_after.name}[{poison.id}]", deaths
    said = (
        f"task {core.dies_after.name}[{poison.id}]: its worker child died (exit code 3) the "
        "last time, while it ran beside 3 other task(s), and this is its last delivery of 2; "
        "it runs alone now"
    )
    assert said in workers.log_text(), workers.log_text()
    # Each innocent task ran to its end once: after the deaths it shared, alone.
    assert ledger.count("end") == {r.id: 1 for r in innocent}


def test_a_process_child_commits_its_batch_before_a_task_that_must_run_alone(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # A process child lists the finished short tasks of its batch, their commit still to
    # come, as started: a task that killed the child beside them had them all counted and
    # run again (and, past their limit, dead-lettered). A task whose last allowed delivery
    # follows a shared death (noted here as a supervisor notes one) runs alone: the batch
    # is committed first, and its death is its own.
    innocent = [core.dies_if.apply_async((False, i), priority=9) for i in range(10)]
    poison = core.dies_if.apply_async((True, -1), priority=0)  # after them in a fetch
    broker = core_app.broker
    for d in broker.fetch(["default"], "earlier-worker", limit=11, lease_seconds=30, timeout=0):
        broker.requeue(d.lease, count_delivery=d.id == poison.id)  # its first death
    broker.kv_set(death_key(poison.id), death_note("exit code 3", 10), 3600)
    # A window of a second: the batch is committed when it is full or before a task that
    # must run alone, not when 5 ms passed (on a slow machine, before the poison task).
    env = {"CELERIAC_TASK_MAX_DELIVERIES": "2", "CELERIAC_WORKER_BATCH_WINDOW": "1"}
    workers.start("-c", "1", env=env)
    assert [r.get(timeout=60) for r in innocent] == list(range(10)), workers.log_text()
    assert wait_for(core_app.broker.dead_letters, timeout=30), workers.log_text()
    (letter,) = core_app.broker.dead_letters()
    assert letter.id == poison.id, letter
    assert letter.reason.endswith("its worker child died (exit code 3)"), letter.reason
    # Each innocent task ran once: committed before the poison task ran alone.
    assert ledger.count("run") == {r.id: 1 for r in [*innocent, poison]}, workers.log_text()


def test_a_task_that_ran_alone_is_committed_at_once_not_held_in_the_batch(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Its commit, held in the batch like any short task's, was counted again when the next
    # task of the same fetch killed the child: at its last delivery, a task that had just
    # run alone and succeeded was dead-lettered.
    warm = [core.dies_if.apply_async((False, i), priority=9) for i in range(3)]
    alone = core.dies_if.apply_async((False, 100), priority=5)
    broker = core_app.broker
    (d,) = broker.fetch(["default"], "earlier-worker", limit=1, lease_seconds=30, timeout=0)
    assert d.id == warm[0].id
    broker.requeue(d.lease, count_delivery=False)
    for d in broker.fetch(["default"], "earlier-worker", limit=4, lease_seconds=30, timeout=0):
        broker.requeue(d.lease, count_delivery=d.id == alone.id)  # its first death
    broker.kv_set(death_key(alone.id), death_note("exit code 3", 5), 3600)
    poison = core.dies_if.apply_async((True, -1), priority=0)  # fetched with it, after it
    env = {"CELERIAC_TASK_MAX_DELIVERIES": "2", "CELERIAC_WORKER_BATCH_WINDOW": "1"}
    workers.start("-c", "1", env=env)
    assert [r.get(timeout=60) for r in [*warm, alone]] == [0, 1, 2, 100], workers.log_text()
    assert wait_for(core_app.broker.dead_letters, timeout=30), workers.log_text()
    assert [letter.id for letter in core_app.broker.dead_letters()] == [poison.id]
    assert ledger.count("run")[alone.id] == 1, workers.log_text()


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_a_task_allowed_one_delivery_killed_beside_another_is_not_run_again(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # The tasks killed beside the one a hard limit stopped go back uncounted (they did
    # nothing wrong): a max_deliveries=1 task among them ran again in full, twice in all,
    # though "never twice" is what the limit promises.
    once = core.delivered_once.delay(30)  # still running when its neighbour is stopped
    workers.start("-P", pool, "-c", "2")
    assert wait_for(lambda: ledger.count("start")[once.id] == 1, timeout=30), workers.log_text()
    stopped = core.stuck.delay()  # its hard limit (1 s) kills the child, and `once` with it
    assert wait_for(core_app.broker.dead_letters, timeout=30), workers.log_text()
    (letter,) = core_app.broker.dead_letters()
    assert letter.id == once.id, letter
    assert "the task's max_deliveries=1" in letter.reason, letter.reason
    assert f"killed with its child, stopped for {core.stuck.name}[{stopped.id}]" in (letter.reason)
    assert ledger.count("start")[once.id] == 1  # ran once, never again
    # The kill's line names the task it ended beside the one it was for.
    assert f"; with it {core.delivered_once.name}[{once.id}], put back" in workers.log_text()
