"""Canvas at its edges: chords whose members finish far apart, chunks of typed tasks.

These run in the test process (run_queued) on each broker's own store: the in-memory
broker, SQLite and the session's private redis-server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from celeriac import Celeriac, Task
from celeriac.brokers.memory import MemoryBroker
from celeriac.canvas import chain, chord
from celeriac.errors import BrokerConnectionError, ChordError, ResultTimeout
from celeriac.middleware import MiddlewareStack, default_middleware
from celeriac.middleware import canvas as canvas_middleware
from celeriac.middleware.events import STREAM, Event
from celeriac.testing import run_queued
from celeriac.worker.executor import Executor
from tests.apps import canvas as tasks
from tests.apps.canvas import add, async_typed, boom, collect, identity, tsum, typed
from tests.conftest import Ledger
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "sqlite", "redis"])
def app(
    request: pytest.FixtureRequest, tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.canvas's app on a fresh broker of each kind, writing to this test's ledger
    (Redis: the session's private server, isolated by a key prefix)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    if request.param == "memory":
        monkeypatch.setattr(tasks.app.conf, "broker_url", "memory://")
        tasks.app.use_broker(MemoryBroker())
    elif request.param == "sqlite":
        monkeypatch.setattr(tasks.app.conf, "broker_url", f"sqlite:///{tmp_path}/broker.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"
        monkeypatch.setattr(tasks.app.conf, "broker_url", url)
    yield tasks.app
    tasks.app.broker.close()


def test_a_chord_whose_members_finish_further_apart_than_result_expires_still_calls_back(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The join lived result_expires after its latest member: with result_expires=3600 and
    # one member an hour slower than the rest, the join was gone when it finished, it
    # started a new one that never reached the header's size, and the body never ran.
    monkeypatch.setattr(app.conf, "result_expires", 0.3)
    r = chord([identity.s("fast"), identity.s("slow").set(countdown=0.5)], collect.s()).delay()
    assert run_queued(app) == 1  # the fast member; the slow one is not due yet
    time.sleep(0.6)  # longer than result_expires: what an hour is to result_expires=3600
    assert run_queued(app, include_delayed=True) == 2  # the slow member, then the body
    assert ledger.count("callback") == Counter({r.id: 1})


@pytest.mark.parametrize("task", [typed, async_typed], ids=["sync", "async"])
def test_chunks_convert_each_argument_list_as_map_does(app: Celeriac, task: Task[Any, Any]) -> None:
    # A chunk called the task with each argument list as JSON carried it: a bytes
    # parameter got its base64 text, a date its ISO text; starmap converted them.
    calls = [(dt.date(2026, 12, 25), b"\x00\x01"), (dt.date(2027, 1, 1), b"\xff")]
    one_by_one = task.starmap(calls).apply_async()
    chunked = task.chunks(calls, 2).apply_async()
    run_queued(app)
    assert one_by_one.get(timeout=5) == ["date b'\\x00\\x01'", "date b'\\xff'"]
    assert chunked.get(timeout=5) == [one_by_one.get(timeout=5)]


def test_a_dead_lettered_member_whose_chord_the_broker_could_not_reach_at_once_still_fails_it(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A member dead-lettered before it ran (too many deliveries) fails its chord after the
    # dead letter is committed. A broker error at that moment was logged as "it will run
    # again in 1s", but it never ran again: the chord waited for ever on that member.
    monkeypatch.setattr(app, "middleware", MiddlewareStack(default_middleware()))
    monkeypatch.setattr(app.conf, "task_max_deliveries", 1)
    r = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    (delivery,) = app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
    app.broker.requeue(delivery.lease)  # a crash: the second delivery is one too many
    broker = app.broker
    real_join_add = broker.join_add
    failures = iter([BrokerConnectionError("the broker went away")])

    def flaky_join_add(key: str, member: str, value: bytes, ttl: float) -> int:
        if member == "0":  # the dead letter's join fails once, then the broker is back
            for exc in failures:
                raise exc
        return real_join_add(key, member, value, ttl)

    monkeypatch.setattr(broker, "join_add", flaky_join_add)
    run_queued(app, fail_fast=False)
    with pytest.raises(ChordError, match=re.escape(f"chord member 0 ({add.name}[{r.id}:h:0])")):
        r.get(timeout=5)
    assert not ledger.count("callback")
    assert "will run again" not in caplog.text


class WorkerKilled(BaseException):
    """The worker process dying at a given line, in a test that runs it in-process."""


def test_a_dead_lettered_member_fails_its_chord_before_the_letter_is_committed(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The chord was told after the dead letter's commit: a worker killed between the two
    # left the letter committed, nothing to deliver again, and the chord waiting for ever.
    # Told first, a kill before the commit leaves the message to come back: dead-lettered
    # again, the chord told again, and nothing runs twice.
    monkeypatch.setattr(app, "middleware", MiddlewareStack(default_middleware()))
    monkeypatch.setattr(app.conf, "task_max_deliveries", 1)
    r = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    broker = app.broker
    (first,) = broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
    broker.requeue(first.lease)  # a crash: the second delivery is one too many
    fetched = broker.fetch(["default"], "w", limit=2, lease_seconds=30, timeout=0)
    (second,) = [d for d in fetched if d.id == first.id]
    for other in fetched:
        if other is not second:
            broker.requeue(other.lease, count_delivery=False)
    assert run_queued(app) == 1  # the other member: the chord waits only for this one now
    executor = Executor(app, "w")
    job, outcome = executor.prepare(second)
    assert outcome is not None and outcome.state == "DEAD"

    def killed(*args: object) -> bool:
        raise WorkerKilled

    real_dead_letter = broker.dead_letter
    monkeypatch.setattr(broker, "dead_letter", killed)
    with pytest.raises(WorkerKilled):
        executor.settle(job, outcome)
    assert run_queued(app, fail_fast=False) == 1  # the chord's body, sent as failed
    with pytest.raises(ChordError, match=re.escape(f"chord member 0 ({add.name}[{r.id}:h:0])")):
        r.get(timeout=1)
    monkeypatch.setattr(broker, "dead_letter", real_dead_letter)
    broker.requeue(second.lease)  # the killed worker's lease ran out: delivered again
    assert run_queued(app, fail_fast=False) == 1  # dead-lettered; the chord's body not again
    assert [letter.id for letter in broker.dead_letters()] == [second.id]
    with pytest.raises(ChordError, match=re.escape(f"chord member 0 ({add.name}[{r.id}:h:0])")):
        r.get(timeout=1)
    assert not ledger.count("callback")


def test_a_dead_lettered_member_whose_chord_cannot_be_told_says_how_to_recover(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The broker stays away while the dead letter's workflow is failed: the log says what
    # waits, and that replaying the dead letter moves the workflow on. Which it does.
    monkeypatch.setattr(app, "middleware", MiddlewareStack(default_middleware()))
    monkeypatch.setattr(app.conf, "task_max_deliveries", 1)
    monkeypatch.setattr(canvas_middleware, "_PAUSES", (0.0,))
    r = chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async()
    (delivery,) = app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
    app.broker.requeue(delivery.lease)  # a crash: the second delivery is one too many
    real_join_add = app.broker.join_add

    def unreachable(key: str, member: str, value: bytes, ttl: float) -> int:
        if member == delivery.id.rpartition(":")[2]:  # the dead letter's index
            raise BrokerConnectionError("the broker went away")
        return real_join_add(key, member, value, ttl)

    monkeypatch.setattr(app.broker, "join_add", unreachable)
    run_queued(app, fail_fast=False)
    said = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert (
        f"task {add.name}[{delivery.id}] was dead-lettered, and its workflow could not be told "
        "(the broker went away): what waits for it (the rest of its chain, its chord's body) "
        f"will wait for ever. Once the broker answers, `celeriac dlq replay {delivery.id}` "
        "sends it again, and its workflow moves on when it ends"
    ) in said
    assert "will run again" not in caplog.text
    monkeypatch.setattr(app.broker, "join_add", real_join_add)  # the broker is back
    assert app.replay_dead_letters([delivery.id], None) == 1
    run_queued(app)
    assert r.get(timeout=5) == 2 + 4


def test_steps_a_failure_kept_from_running_are_logged_as_not_run(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # Each unrun step was logged at ERROR as "task parse[...] failed: ConnectionError:
    # ..." with the first step's error: a failure per step, of tasks that never ran.
    caplog.set_level(logging.INFO, logger="celeriac")
    r = chain(boom.s("fetch"), add.s(1), chord([add.s(2), add.s(3)], tsum.s())).apply_async()
    run_queued(app, fail_fast=False)
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # the step that failed, and only it
    assert errors[0].startswith(f"task {boom.name}[{r.id}:s0] failed in "), errors
    first = f"{boom.name}[{r.id}:s0] failed earlier in this workflow"
    warned = {rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING}
    assert {
        f"task {add.name}[{r.id}:s1] not run: {first}: builtins.ValueError: boom fetch",
        f"task {add.name}[{r.id}:s2:h:0] not run: {first}: builtins.ValueError: boom fetch",
        f"task {add.name}[{r.id}:s2:h:1] not run: {first}: builtins.ValueError: boom fetch",
    } <= warned
    body = f"task {tsum.name}[{r.id}] not run: {first}: celeriac.errors.ChordError: "
    assert [line for line in warned if line.startswith(body)], warned
    # Their events said "failed" too: a monitor counted 5 failures for one.
    app.middleware.on_idle()
    events = [
        msgspec.json.decode(item, type=Event) for _, item in app.broker.stream_read(STREAM, 0, 100)
    ]
    kinds = Counter((e.type, e.id) for e in events)
    assert kinds[("failed", f"{r.id}:s0")] == 1
    assert sum(n for (kind, _), n in kinds.items() if kind == "failed") == 1, kinds
    assert kinds[("not-run", f"{r.id}:s1")] == 1 and kinds[("not-run", r.id)] == 1
    (s1,) = [e for e in events if e.id == f"{r.id}:s1"]
    assert s1.detail.startswith(first), s1.detail


def test_a_chord_that_times_out_names_the_members_it_still_waits_for(app: Celeriac) -> None:
    # Its body is not sent until every member finished: the timeout said only that the body
    # "may still be queued or running", and not which member to look for.
    r = chord([identity.s(1), identity.s(2).set(queue="gpu")], collect.s()).apply_async()
    run_queued(app, queues=["default"])  # no worker serves "gpu"
    waiting = (
        "it waits for the 2 tasks before it in its workflow, and 1 of them has not "
        f"finished ({r.id}:h:1)"
    )
    with pytest.raises(ResultTimeout, match=re.escape(waiting)):
        r.get(timeout=0.1)
    with pytest.raises(ResultTimeout, match=re.escape(waiting)):
        asyncio.run(r.aget(timeout=0.1))
    run_queued(app, queues=["gpu", "default"])
    assert r.get(timeout=5) == [1, 2]


def test_a_large_chord_s_timeout_reads_a_bounded_part_of_its_header(app: Celeriac) -> None:
    # A caller polling get(timeout=...) must not read 10,000 members' results each time.
    r = chord([identity.s(i) for i in range(1_200)], collect.s()).apply_async()
    with pytest.raises(ResultTimeout) as raised:
        r.get(timeout=0.05)
    assert (
        "it waits for the 1,200 tasks before it in its workflow, and 1,000 of the first "
        f"1,000 have not finished ({r.id}:h:0, {r.id}:h:1, {r.id}:h:2, ...)"
    ) in str(raised.value)


@pytest.mark.parametrize("task", [typed, async_typed], ids=["sync", "async"])
def test_a_failed_chunk_says_which_call_raised_and_which_ran(
    app: Celeriac, task: Task[Any, Any]
) -> None:
    # The chunk failed as a whole with the call's error, naming neither the call nor that
    # the calls before it had run (and had their effects).
    calls = [(dt.date(2026, 12, 25), b"a"), ("not a date", b"b"), (dt.date(2027, 1, 1), b"c")]
    r = task.chunks(calls, 3).apply_async()
    run_queued(app, fail_fast=False)
    with pytest.raises(TypeError) as raised:
        r.get(timeout=5)
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert (
        "celeriac: raised by call 1 (counting from 0) of the 3 in this chunk: the 1 before "
        "it ran, the 1 after it did not"
    ) in notes, notes
