"""The middleware stack under review: dedupe and debounce keys, workflows that meet them,
events, and revokes while the broker is away (each test is a bug a user hit before its
fix). The tasks live here, so worker processes can import this module as their app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from celeriac import Celeriac, Task, TaskRevoked
from celeriac.brokers.records import Outgoing
from celeriac.canvas import chain, chord, group
from celeriac.control import REVOKES, STREAM_LENGTH, Revocation, broadcast, revoke
from celeriac.middleware import MiddlewareStack, default_middleware
from celeriac.middleware.events import STREAM, Event
from celeriac.middleware.revocation import Revocation as RevocationMiddleware
from celeriac.testing import run_queued
from celeriac.worker.executor import Executor
from tests.apps.core import record
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer, start_redis

APP = "tests.test_review_middleware"
app = Celeriac("review-middleware")


@app.bound_task()
def sync(self: Task[Any, Any], account: int) -> str:
    record("run", self.request.id, "sync")
    return f"synced {account}"


@app.bound_task()
def notify(self: Task[Any, Any], account: int) -> str:
    record("run", self.request.id, "notify")
    return f"notified {account}"


@app.task(debounce=0.05)
def reindex(version: int) -> int:
    return version


@app.task(dedupe_key="nightly", dedupe_mode="running")
def nightly() -> str:
    return "done"


@app.task
def gather(values: list[Any]) -> list[Any]:
    return values


@app.task
def loud_failure(size: int) -> None:
    raise ValueError("x" * size)


@pytest.fixture
def mw_app(broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """This module's app on this test's broker, with middleware of its own (the revokes
    and events a previous test's broker left in them stay there)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    monkeypatch.setattr(app, "middleware", MiddlewareStack(default_middleware()))
    yield app
    app.broker.close()


def run(app: Celeriac) -> int:
    return run_queued(app, fail_fast=False, include_delayed=True)


# -- dedupe and debounce keys belong to their task ---------------------------------------


def test_two_tasks_given_the_same_dedupe_key_both_run(mw_app: Celeriac, ledger: Ledger) -> None:
    # Keys were shared by all tasks: notify was handed sync's id, never ran, and its caller
    # read "synced 42" as notify's result.
    first = sync.apply_async((42,), dedupe_key="account:42")
    second = notify.apply_async((42,), dedupe_key="account:42")
    again = sync.apply_async((42,), dedupe_key="account:42")
    assert second.id != first.id
    assert again.id == first.id  # within one task, dedupe still works
    run(mw_app)
    assert first.get(timeout=5) == "synced 42"
    assert second.get(timeout=5) == "notified 42"
    assert sorted(p[4] for p in ledger.lines()) == ["notify", "sync"]


def test_a_debounced_send_never_supersedes_another_tasks_send(mw_app: Celeriac) -> None:
    # The later notify used to supersede sync: sync ended REVOKED and never ran.
    first = sync.apply_async((7,), debounce=0.05, debounce_key="account:7")
    second = notify.apply_async((7,), debounce=0.05, debounce_key="account:7")
    run(mw_app)
    assert first.get(timeout=5) == "synced 7"
    assert second.get(timeout=5) == "notified 7"


def test_dedupe_and_debounce_options_of_the_task_apply_to_every_send(mw_app: Celeriac) -> None:
    # @app.task(debounce=...) and @app.task(dedupe_key=...) were accepted, then ignored.
    burst = [reindex.delay(v) for v in (1, 2, 3)]
    run(mw_app)
    assert [r.state for r in burst] == ["REVOKED", "REVOKED", "SUCCESS"]
    assert burst[-1].get(timeout=5) == 3
    first = nightly.delay()
    assert nightly.delay().id == first.id
    run(mw_app)
    assert first.get(timeout=5) == "done"
    assert nightly.delay().id != first.id  # running mode: freed once it finished


def test_a_key_an_older_producer_took_is_freed_as_before(mw_app: Celeriac) -> None:
    # A rolling deploy: an older producer stored the bare key and sent the message with it.
    # The worker frees the key the message names, so later sends are not deduped forever.
    old = sync.message((1,), dedupe_key="account:1")
    mw_app.broker.kv_set("dedupe:account:1", old.id.encode(), 3600, only_if_absent=True)
    mw_app.broker.send([Outgoing(old.id, old.queue, mw_app.codec.encode(old), 0, None)])
    run(mw_app)
    assert mw_app.broker.kv_get(["dedupe:account:1"]) == [None]
    assert mw_app.AsyncResult(old.id).get(timeout=5) == "synced 1"


# -- a workflow's task is never replaced by the task holding its dedupe key -------------


def test_a_chord_member_whose_dedupe_key_is_held_still_joins(mw_app: Celeriac) -> None:
    # The member was handed the other task's id and never ran: the chord waited forever.
    standalone = sync.apply_async((3,), dedupe_key="account:3")
    flow = chord([sync.s(3).set(dedupe_key="account:3"), sync.s(4)], gather.s()).apply_async()
    run(mw_app)
    assert standalone.get(timeout=5) == "synced 3"
    assert flow.get(timeout=5) == ["synced 3", "synced 4"]


def test_a_chain_step_and_a_group_member_whose_dedupe_key_is_held_still_run(
    mw_app: Celeriac,
) -> None:
    sync.apply_async((5,), dedupe_key="account:5")
    steps = chain(notify.si(5), sync.si(5).set(dedupe_key="account:5")).apply_async()
    members = group(sync.s(5).set(dedupe_key="account:5") for _ in range(2)).apply_async()
    lone = sync.s(5).set(dedupe_key="account:5").delay()
    run(mw_app)
    assert steps.get(timeout=5) == "synced 5"
    assert members.get(timeout=5) == ["synced 5", "synced 5"]
    assert lone.get(timeout=5) == "synced 5"


@pytest.mark.slow
def test_a_worker_continues_a_chain_whose_next_steps_key_is_held(
    mw_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The worker sends the second step; dedupe swapped in the standalone task's id, so the
    # chain's last id never ran and the chain's caller waited forever.
    standalone = sync.apply_async((9,), dedupe_key="account:9", countdown=60)  # keeps the key
    flow = chain(notify.si(9), sync.si(9).set(dedupe_key="account:9")).apply_async()
    workers.start("-c", "1", app=APP)
    assert flow.get(timeout=30) == "synced 9"
    assert ledger.count("run")[flow.id] == 1
    assert standalone.state == "PENDING"


# -- events --------------------------------------------------------------------------------


def _events(app: Celeriac) -> list[Event]:
    return [
        msgspec.json.decode(raw, type=Event) for _, raw in app.broker.stream_read(STREAM, 0, 100)
    ]


def test_an_events_error_text_is_bounded(mw_app: Celeriac) -> None:
    # The stream keeps 10,000 events: with the whole error in each, a task failing with a
    # 1 MB message made it hold 10 GB of broker memory.
    failed = loud_failure.delay(20_000)
    run(mw_app)
    assert failed.state == "FAILURE"
    mw_app.middleware.on_idle()
    (event,) = _events(mw_app)
    assert (event.type, event.id) == ("failed", failed.id)
    detail = len(event.detail)
    assert event.detail.startswith("xxx") and detail <= 1_000
    with pytest.raises(ValueError) as raised:
        failed.get(timeout=5)
    kept = len(str(raised.value))
    assert kept == 20_000  # the result keeps the whole error


def test_events_of_a_task_the_worker_does_not_know_are_written(
    mw_app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The buffer was flushed only through a known task's app: a worker that saw nothing
    # else never wrote these events (and with events off, kept them forever).
    monkeypatch.setattr(mw_app.conf, "task_unknown_max_age", 0.0)
    sent = mw_app.send_task("elsewhere.not_deployed", args=(1,))
    run(mw_app)
    mw_app.middleware.on_idle()
    assert [(e.type, e.id) for e in _events(mw_app)] == [("dead-lettered", sent.id)]


# -- revokes -------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def test_a_revoke_already_read_holds_while_the_broker_is_unreachable(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failed refresh raised out of the hook, which skipped the check: a task revoked
    # long ago ran because the latest read failed.
    monkeypatch.setattr(app.conf, "broker_url", private_redis.url)
    monkeypatch.setattr(app, "middleware", MiddlewareStack(default_middleware()))
    kept, doomed = sync.delay(1), sync.delay(2)
    producer = Celeriac("producer", broker=private_redis.url)  # another process's revoke
    producer.AsyncResult(doomed.id).revoke()
    producer.broker.close()
    executor = Executor(app, "w")
    fetched = app.broker.fetch(["default"], "w", limit=2, lease_seconds=30, timeout=0)
    first, second = sorted(fetched, key=lambda d: d.id != kept.id)
    job, skip = executor.prepare(first)
    assert skip is None
    assert executor.execute(job).state == "SUCCESS"  # and the revokes were read
    private_redis.stop()
    time.sleep(0.3)  # past the refresh interval: the next task reads revokes, and fails
    job, skip = executor.prepare(second)
    assert skip is None
    outcome = executor.execute(job)
    assert (job.delivery.id, outcome.state) == (doomed.id, "REVOKED")
    app.broker.close()


def test_a_worker_keeps_a_bounded_number_of_revokes(mw_app: Celeriac) -> None:
    # Every revoke ever read stayed in every worker process's memory.
    revocation = next(
        m for m in mw_app.middleware.middleware if isinstance(m, RevocationMiddleware)
    )
    for batch in range(3):
        revokes = [Revocation(f"gone-{batch}-{i}") for i in range(STREAM_LENGTH)]
        encoded = [msgspec.json.encode(r) for r in revokes]
        mw_app.broker.stream_append(REVOKES, encoded, STREAM_LENGTH)
        sync.delay(0)
        run(mw_app)
        time.sleep(0.3)  # past the refresh interval
    assert STREAM_LENGTH <= len(revocation._revoked) <= 2 * STREAM_LENGTH
    doomed = sync.delay(1)
    doomed.revoke()
    run(mw_app)
    with pytest.raises(TaskRevoked):
        doomed.get(timeout=5)


@pytest.mark.slow
def test_an_unreadable_revoke_entry_stops_neither_workers_nor_later_revokes(
    mw_app: Celeriac, workers: WorkerProcesses
) -> None:
    # One entry a worker could not decode (here an id that is not a string, which
    # revoke(app, 42) used to store) made every worker exit, at start-up too, for as long
    # as the stream held it: up to 10,000 revokes later.
    mw_app.broker.stream_append(REVOKES, [b'{"id": 42}'], STREAM_LENGTH)
    doomed = sync.delay(1)
    doomed.revoke()
    proc = workers.start("-c", "1", app=APP)
    assert notify.delay(2).get(timeout=30) == "notified 2"
    with pytest.raises(TaskRevoked):
        doomed.get(timeout=30)
    assert proc.poll() is None, workers.log_text()
    assert "cannot read" in workers.log_text()


def test_revoke_and_broadcast_refuse_what_workers_could_not_read(mw_app: Celeriac) -> None:
    with pytest.raises(TypeError, match="a task id is a non-empty string, got 42"):
        revoke(mw_app, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got 'ping', 5"):
        broadcast(mw_app, "ping", target=5)  # type: ignore[arg-type]
    assert mw_app.broker.stream_read(REVOKES, 0, 10) == []


def test_events_the_broker_refuses_are_dropped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A flush the broker refused (down, or a full Redis) raised into the worker's hook
    # runner: a full traceback at every flush, 132 in 15 s at maxmemory.
    from celeriac.brokers.records import Delivery, Lease
    from celeriac.middleware.base import Job, Outcome
    from celeriac.middleware.events import Events
    from tests.redis_server import free_port

    down = Celeriac("events-down", broker=f"redis://127.0.0.1:{free_port()}/0")
    events = Events()
    for i in range(3):
        job = Job(Delivery(Lease(f"t{i}", "q", "1"), b"", 1), "w", app=down)
        events.after_settle(job, Outcome("SUCCESS"), committed=True)
        events.on_idle()  # raises nothing
    said = [r.getMessage() for r in caplog.records if "events not written" in r.getMessage()]
    assert len(said) == 1 and "tasks are not affected" in said[0], said
    down.broker.close()
