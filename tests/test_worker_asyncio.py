"""The asyncio pool's child, run in this process on the memory broker: its event loop, its
slot and its error paths, with nothing mocked but a worker bug where one is needed."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from typing import Any

import msgspec
import pytest

from celeriac import Celeriac, SoftTimeLimitExceeded, Task
from celeriac.errors import TaskFailed
from celeriac.middleware import Middleware, default_middleware
from celeriac.middleware.base import Job, Outcome
from celeriac.worker.aio import AsyncioChild
from celeriac.worker.child import ChildSpec
from celeriac.worker.executor import Executor, FetchSpec
from celeriac.worker.slot import Held, Slot


class RecordingSlot(Slot):
    """A slot that remembers which threads wrote it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[int] = set()

    def write(self, *args: Any, **kwargs: Any) -> None:  # Slot.write's arguments, passed on
        self.writers.add(threading.get_ident())
        super().write(*args, **kwargs)


@pytest.fixture
def app() -> Celeriac:
    return Celeriac("aio-tests", broker="memory://")


def consume(app: Celeriac, tasks: int, slot: Slot | None = None) -> AsyncioChild:
    """Run an asyncio child's loop in this thread until it has finished ``tasks`` tasks."""
    app.conf.worker_max_tasks_per_child = tasks  # it stops by itself, as when recycling
    spec = ChildSpec("w", ("default",), 0, "asyncio", 8, "w/0.1")
    child = AsyncioChild(app, spec, slot or Slot())
    asyncio.run(asyncio.wait_for(child._main(), 30))
    return child


def test_a_tasks_own_timeout_error_is_its_own_not_its_soft_limit(app: Celeriac) -> None:
    retries: list[int] = []

    @app.bound_task(autoretry_for=(TimeoutError,), max_retries=1, retry_backoff=0.01)
    async def calls_upstream(self: Task[Any, Any]) -> None:
        retries.append(self.request.retries)
        async with asyncio.timeout(0):  # the task's own deadline, e.g. an HTTP client's
            await asyncio.sleep(1)

    @app.task
    def reads_socket() -> None:
        raise socket.timeout("recv timed out")  # noqa: UP041 - as a socket raises it

    @app.task(soft_time_limit=0.05)
    async def too_slow() -> None:
        await asyncio.sleep(5)

    upstream, sock, slow = calls_upstream.delay(), reads_socket.delay(), too_slow.delay()
    consume(app, tasks=4)
    assert retries == [0, 1]  # autoretry_for=(TimeoutError,) retried it
    with pytest.raises(TimeoutError) as own:
        upstream.get(timeout=1)
    assert not isinstance(own.value, SoftTimeLimitExceeded)
    with pytest.raises(TimeoutError, match="recv timed out"):
        sock.get(timeout=1)
    with pytest.raises(SoftTimeLimitExceeded, match="soft time limit"):
        slow.get(timeout=1)


def test_a_tasks_sys_exit_fails_the_task_not_the_loop(app: Celeriac) -> None:
    @app.task
    async def exits() -> None:
        sys.exit(3)

    @app.task
    def interrupts() -> None:
        raise KeyboardInterrupt

    exited, interrupted = exits.delay(), interrupts.delay()
    consume(app, tasks=2)
    with pytest.raises(TaskFailed, match="SystemExit"):
        exited.get(timeout=1)
    with pytest.raises(TaskFailed, match="KeyboardInterrupt"):
        interrupted.get(timeout=1)


def test_a_task_is_shown_started_in_the_slot_before_it_runs(app: Celeriac) -> None:
    # A task that kills its child at once is counted as a delivery only if the supervisor
    # can read "started" in the slot: otherwise it is never dead-lettered.
    slot = Slot()
    seen: dict[str, float] = {}

    def started(task_id: str) -> float:
        (mine,) = [h for h in slot.read().held if h.id == task_id]
        return mine.started

    @app.bound_task()
    async def looks(self: Task[Any, Any]) -> None:
        seen[self.request.id] = started(self.request.id)

    @app.bound_task()
    def looks_from_a_thread(self: Task[Any, Any]) -> None:
        seen[self.request.id] = started(self.request.id)

    sent = [looks.delay().id for _ in range(10)] + [
        looks_from_a_thread.delay().id for _ in range(10)
    ]
    consume(app, tasks=20, slot=slot)
    assert sorted(seen) == sorted(sent)
    assert all(seen.values()), seen


def test_the_slot_is_written_only_from_the_loop_thread(app: Celeriac) -> None:
    # The fetch runs in a thread; had it written the slot (and _held) there, it raced the
    # loop's writes: torn records, "dict changed size", a stale view renewed.
    @app.task
    async def noop() -> None:
        await asyncio.sleep(0)

    for _ in range(50):
        noop.delay()
    slot = RecordingSlot()
    child = consume(app, tasks=50, slot=slot)
    assert slot.writers == {threading.get_ident()}
    assert child._held == {}
    assert slot.read().held == []


def _settle_failing(times: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the first ``times`` settles raise as a worker bug would; return their states."""
    real, calls = Executor.settle, list[str]()

    def settle(
        self: Executor, job: Job, outcome: Outcome, fetch: FetchSpec | None = None
    ) -> list[Any]:
        calls.append(outcome.state)
        if len(calls) <= times:
            raise RuntimeError("a worker bug \udcff")  # a lone surrogate: unencodable
        return real(self, job, outcome, fetch)

    monkeypatch.setattr(Executor, "settle", settle)
    return calls


def test_an_error_escaping_the_worker_dead_letters_the_message(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 2)
    calls = _settle_failing(1, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        child = consume(app, tasks=1)
    assert calls == ["SUCCESS", "DEAD"]
    assert child._held == {}
    (letter,) = app.broker.dead_letters()
    assert letter.id == result.id
    assert "RuntimeError: a worker bug" in letter.error
    with pytest.raises(RuntimeError, match="dead-lettered"):
        result.get(timeout=1)
    assert [(s.in_flight, s.ready) for s in app.broker.stats()] == [(0, 0)]
    # Logged with the task's name and id, and what happens to it.
    assert f"add[{result.id}]: the worker failed while handling it" in caplog.text
    assert "dead-lettering it" in caplog.text


def test_a_hooks_system_exit_dead_letters_its_message_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # SystemExit out of a hook went through asyncio's Task.__step out of the event loop:
    # the child ended, cancelling every task it was running, and its message waited out
    # its lease. Now it is the worker's failure for that message alone, as any error.
    class Exits(Middleware):
        def before_execute(self, job: Job) -> Outcome | None:
            if job.message is not None and job.message.args == [0]:
                raise SystemExit(3)
            return None

    app = Celeriac("aio-tests", broker="memory://", middleware=[Exits(), *default_middleware()])

    @app.task
    async def nap(n: int) -> int:
        await asyncio.sleep(0.05)
        return n

    results = [nap.delay(n) for n in (1, 0, 2)]
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        consume(app, tasks=3)
    assert [results[0].get(timeout=1), results[2].get(timeout=1)] == [1, 2]
    (letter,) = app.broker.dead_letters()
    assert letter.id == results[1].id
    assert "SystemExit: 3" in letter.error
    assert [(s.in_flight, s.ready) for s in app.broker.stats()] == [(0, 0)]
    assert f"nap[{results[1].id}]: the worker failed while handling it" in caplog.text


def test_a_failing_consume_loop_lets_its_running_tasks_finish(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    async def nap(n: int) -> int:
        await asyncio.sleep(0.2)
        return n

    results = [nap.delay(n) for n in range(3)]
    real, fetches = AsyncioChild._fetch_up_to, list[int]()

    def fetch_up_to(self: AsyncioChild, free: int) -> list[Any]:
        fetches.append(free)
        if len(fetches) > 1:  # a worker bug, with the first fetch's tasks running
            raise RuntimeError("a worker bug")
        return real(self, free)

    monkeypatch.setattr(AsyncioChild, "_fetch_up_to", fetch_up_to)
    spec = ChildSpec("w", ("default",), 0, "asyncio", 8, "w/0.1")
    child = AsyncioChild(app, spec, Slot())
    with (
        caplog.at_level(logging.ERROR, logger="celeriac.worker"),
        pytest.raises(RuntimeError, match="a worker bug"),
    ):
        asyncio.run(asyncio.wait_for(child._main(), 30))
    # Cancelled by asyncio.run before; their messages waited out their leases.
    assert [r.get(timeout=1) for r in results] == [0, 1, 2]
    assert [(s.in_flight, s.ready) for s in app.broker.stats()] == [(0, 0)]
    assert "its consume loop failed; it finishes its 3 running task(s)" in caplog.text


def test_a_message_that_cannot_be_dead_lettered_goes_back_counted(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deliveries: list[int] = []

    @app.bound_task()
    def add(self: Task[Any, Any], x: int, y: int) -> int:
        deliveries.append(self.request.delivery_count)
        return x + y

    result = add.delay(1, 2)
    calls = _settle_failing(2, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        child = consume(app, tasks=2)
    assert calls == ["SUCCESS", "DEAD", "SUCCESS"]
    assert deliveries == [1, 2]  # counted: task_max_deliveries still ends a loop
    assert result.get(timeout=1) == 3
    assert child._held == {}
    assert not app.broker.dead_letters()
    assert "putting it back, counted as a delivery" in caplog.text


def test_a_slot_holds_ten_thousand_tasks_and_never_fails_a_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def held(n: int, name: str) -> list[Held]:
        return [Held(f"{i:036d}", "default", f"{i:032x}", name, 1.0, 2.0) for i in range(n)]

    slot = Slot()
    ten_thousand = held(10_000, "proj.tasks." + "x" * 60)  # -P asyncio -c 10000
    slot.write(ten_thousand, rss=1, done=2, growth={"t": [1, 2]})
    view = slot.read()
    assert view.held == ten_thousand and view.done == 2 and view.growth == {"t": [1, 2]}
    # Far more than fits: the head of the list (running tasks first), as much as fits.
    small = Slot(size=1 << 20)
    too_many = held(20_000, "proj.tasks." + "x" * 400)  # 10 MB
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        small.write(too_many, rss=1, done=3)
        small.write(too_many, rss=1, done=4)
    view = small.read()
    assert view.done == 4
    assert view.held == too_many[: len(view.held)]
    assert len(msgspec.msgpack.encode(view.held)) > 0.95 * (1 << 20)  # nearly full
    assert caplog.text.count("its slot fits") == 1  # once per spell, not per write
