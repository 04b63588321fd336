"""Turns: a task that must run alone waits for the others, and holds back the rest; and
who must run alone: a message past its limit whose last death it shared."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from celeriac.worker.death_notes import death_key, death_note
from celeriac.worker.executor import Executor
from celeriac.worker.turns import LoopTurns, Turns


def _nothing() -> None:
    pass


def test_a_thread_to_run_alone_waits_for_the_running_and_holds_back_new_ones() -> None:
    turns, seen, waits = Turns(), list[str](), list[str]()
    first_running, release_first = threading.Event(), threading.Event()

    def side(name: str, hold: threading.Event | None = None) -> None:
        with turns.take(alone=False, before_wait=lambda: waits.append(name)):
            seen.append(f"{name} starts beside {turns.running - 1}")
            if hold is not None:
                first_running.set()
                hold.wait(5)
            seen.append(f"{name} ends")

    def alone() -> None:
        with turns.take(alone=True, before_wait=lambda: waits.append("alone")):
            seen.append(f"alone starts beside {turns.running}")
            time.sleep(0.1)  # a later task must not start meanwhile
            seen.append("alone ends")

    first = threading.Thread(target=side, args=("first", release_first))
    first.start()
    assert first_running.wait(5)
    lone = threading.Thread(target=alone)
    lone.start()
    assert wait_for(lambda: waits, timeout=5)  # the alone task waits for the first to end
    later = threading.Thread(target=side, args=("later",))
    later.start()
    assert wait_for(lambda: len(waits) == 2, timeout=5)  # the later one waits behind it
    release_first.set()
    for thread in (first, lone, later):
        thread.join(5)
    assert waits == ["alone", "later"]
    assert seen == [
        "first starts beside 0",
        "first ends",
        "alone starts beside 0",
        "alone ends",
        "later starts beside 0",
        "later ends",
    ]


def test_a_failed_wait_for_a_turn_holds_no_one_back() -> None:
    # The consumer's commit before it waits can fail (the broker is gone for good): the
    # turn it never took must not keep the others waiting for it.
    turns = Turns()
    running = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with turns.take(alone=False, before_wait=_nothing):
            running.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert running.wait(5)

    def broken_commit() -> None:
        raise ConnectionError("the broker went away")

    with pytest.raises(ConnectionError), turns.take(alone=True, before_wait=broken_commit):
        pass
    with turns.take(alone=False, before_wait=_nothing):  # not held back by it
        assert turns.running == 2
    release.set()
    holder.join(5)
    with turns.take(alone=True, before_wait=_nothing):
        assert turns.alone_running


def test_tasks_on_a_loop_take_turns_the_same_way() -> None:
    async def scenario() -> list[str]:
        turns, seen = LoopTurns(), list[str]()

        async def side(name: str, seconds: float) -> None:
            async with turns.take(alone=False):
                seen.append(f"{name} starts beside {turns.running - 1}")
                await asyncio.sleep(seconds)
                seen.append(f"{name} ends")

        async def alone() -> None:
            async with turns.take(alone=True, before_wait=lambda: seen.append("alone waits")):
                seen.append(f"alone starts beside {turns.running}")
                await asyncio.sleep(0.05)
                seen.append("alone ends")

        first = asyncio.create_task(side("first", 0.1))
        second = asyncio.create_task(side("second", 0.05))
        await asyncio.sleep(0.01)
        lone = asyncio.create_task(alone())
        await asyncio.sleep(0.01)
        later = asyncio.create_task(side("later", 0))
        await asyncio.gather(first, second, lone, later)
        return seen

    assert asyncio.run(scenario()) == [
        "first starts beside 0",
        "second starts beside 1",
        "alone waits",
        "second ends",
        "first ends",
        "alone starts beside 0",
        "alone ends",
        "later starts beside 0",
        "later ends",
    ]


def test_a_task_cancelled_while_it_waits_to_run_alone_holds_no_one_back() -> None:
    async def scenario() -> int:
        turns, release = LoopTurns(), asyncio.Event()

        async def hold() -> None:  # a long task, running until the end of the scenario
            async with turns.take(alone=False):
                await release.wait()

        async def alone() -> None:
            async with turns.take(alone=True):
                raise AssertionError("never starts: cancelled while it waits")

        started = asyncio.Event()

        async def held_back() -> None:  # waits behind the alone one
            async with turns.take(alone=False):
                started.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        lone = asyncio.create_task(alone())
        await asyncio.sleep(0.01)
        behind = asyncio.create_task(held_back())
        await asyncio.sleep(0.01)
        assert not started.is_set()
        lone.cancel()
        await asyncio.gather(lone, return_exceptions=True)
        await asyncio.wait_for(started.wait(), 2)  # freed at once, not when the holder ends
        running = turns.running
        release.set()
        await asyncio.gather(holder, behind)
        return running

    assert asyncio.run(scenario()) == 2  # side by side with the holder


@pytest.mark.parametrize(
    ("limit", "deliveries", "others", "runs_alone"),
    [(2, 2, 3, True), (2, 2, 0, False), (2, 1, 0, False), (1, 1, 0, False), (2, 3, 3, False)],
    ids=["last-after-a-shared-death", "last-after-its-own", "first", "limit-1", "over"],
)
def test_the_last_delivery_after_a_shared_death_runs_alone(
    limit: int, deliveries: int, others: int, runs_alone: bool
) -> None:
    # Every task of a child that died was counted, though at most one killed it: with a
    # poison task in a threads child, the innocent ones beside it were dead-lettered too.
    app = Celeriac("turns", broker="memory://")
    app.conf.task_max_deliveries = limit

    @app.task
    def resize(image_id: int) -> int:
        return image_id

    sent = resize.delay(7)
    for _ in range(deliveries - 1):  # each a child's death, counted
        (d,) = app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
        app.broker.requeue(d.lease)
    app.broker.kv_set(death_key(sent.id), death_note("killed by SIGSEGV", others), 60)
    (delivery,) = app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
    assert delivery.deliveries == deliveries
    job, outcome = Executor(app, "w").prepare(delivery)
    assert job.alone is runs_alone
    if deliveries <= limit:
        assert outcome is None  # it runs
    else:  # the limit stands: dead-lettered, saying how its child died, and beside whom
        assert outcome is not None and outcome.state == "DEAD"
        assert outcome.reason.endswith(
            "; the last time, its worker child died (killed by SIGSEGV, beside 3 other tasks)"
        )
