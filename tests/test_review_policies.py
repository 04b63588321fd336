"""Policies under review: dedupe, debounce, retries with expiry, rate-limit mistakes,
revokes, and result waits (each test is a bug a user hit before its fix)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from celeriac import UNBOUNDED, Celeriac, Retry, Task
from celeriac.brokers.async_waits import AsyncSide
from celeriac.brokers.base import Outgoing
from celeriac.canvas import group
from celeriac.errors import (
    ConfigurationError,
    PayloadTooLarge,
    ResultTimeout,
    TaskExpired,
    TaskFailed,
)
from celeriac.message import Message
from celeriac.middleware import Job, Middleware, Outcome
from celeriac.testing import run_queued
from celeriac.worker.executor import Executor


@pytest.fixture
def app() -> Celeriac:
    return Celeriac("review-policies", broker="memory://")


def _spend_the_minute(app: Celeriac, task: Task[Any, Any]) -> None:
    """Use up a 1/m limit, so the next start of ``task`` is deferred."""
    task.delay(0)
    run_queued(app)


# -- dedupe ------------------------------------------------------------------------------


def test_an_expired_task_frees_its_dedupe_key(app: Celeriac) -> None:
    @app.task
    def sync(n: int) -> int:
        return n

    first = sync.apply_async((1,), dedupe_key="sync:42", expires=0.01)
    time.sleep(0.05)
    run_queued(app)
    assert first.state == "EXPIRED"
    again = sync.apply_async((2,), dedupe_key="sync:42")
    assert again.id != first.id  # was: the expired task's handle, for the whole TTL
    run_queued(app)
    assert again.get(timeout=1) == 2


def test_a_revoked_task_frees_its_dedupe_key(app: Celeriac) -> None:
    @app.task
    def sync(n: int) -> int:
        return n

    first = sync.apply_async((1,), dedupe_key="sync:42")
    first.revoke()
    run_queued(app)
    assert first.state == "REVOKED"
    again = sync.apply_async((2,), dedupe_key="sync:42")
    assert again.id != first.id
    run_queued(app)
    assert again.get(timeout=1) == 2


def test_running_mode_dedupe_holds_its_key_through_a_retry(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task(max_retries=3)
    def refresh() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise Retry(delay=30)
        return "fresh"

    first = refresh.apply_async(dedupe_key="refresh", dedupe_mode="running")
    run_queued(app)
    assert first.state == "RETRY"
    again = refresh.apply_async(dedupe_key="refresh", dedupe_mode="running")
    assert again.id == first.id  # not finished: no second task while it waits to retry


def test_queued_mode_dedupe_holds_its_key_while_a_retry_waits(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task(max_retries=3)
    def sync(n: int) -> int:
        runs.append(n)
        if len(runs) == 1:
            raise Retry(delay=30)
        return n

    first = sync.apply_async((1,), dedupe_key="sync:42")
    run_queued(app)  # started (the key freed), then back in the queue for its retry
    assert first.state == "RETRY"
    again = sync.apply_async((2,), dedupe_key="sync:42")
    assert again.id == first.id  # was: a second task, run beside the retry
    run_queued(app)
    assert runs == [1]


def test_running_mode_dedupe_holds_its_key_while_a_rate_limit_defers_it(app: Celeriac) -> None:
    @app.task(rate_limit="1/m")
    def push(n: int) -> int:
        return n

    _spend_the_minute(app, push)
    first = push.apply_async((1,), dedupe_key="push", dedupe_mode="running")
    run_queued(app)  # taken, deferred to the next minute
    assert first.state == "PENDING"
    again = push.apply_async((2,), dedupe_key="push", dedupe_mode="running")
    assert again.id == first.id


def test_queued_mode_dedupe_holds_its_key_while_a_rate_limit_defers_it(app: Celeriac) -> None:
    @app.task(rate_limit="1/m")
    def sync(n: int) -> int:
        return n

    _spend_the_minute(app, sync)
    ids = set()
    for n in range(3):
        ids.add(sync.apply_async((n,), dedupe_key="sync:42").id)
        run_queued(app)  # a worker takes it and the limit puts it back, still unrun
    assert len(ids) == 1  # was: one more queued duplicate per deferral
    (stats,) = app.broker.stats()
    assert stats.delayed == 1


def test_a_lost_lease_does_not_free_a_running_mode_key(app: Celeriac) -> None:
    @app.task
    def refresh() -> str:
        return "fresh"

    sent = refresh.apply_async(dedupe_key="refresh", dedupe_mode="running")
    (stale,) = app.broker.fetch(["default"], "w1", limit=1, lease_seconds=0.01, timeout=0)
    time.sleep(0.05)
    app.broker.reap()  # w1's lease expired: the message goes back, w2 takes it
    (owned,) = app.broker.fetch(["default"], "w2", limit=1, lease_seconds=30, timeout=0)
    assert owned.id == sent.id
    executor = Executor(app, "w1")
    _, outcome = executor.process(stale)  # runs, but cannot commit: w2 owns it
    assert outcome.state == "SUCCESS"
    again = refresh.apply_async(dedupe_key="refresh", dedupe_mode="running")
    assert again.id == sent.id  # w2 still runs it: the key stays held
    app.broker.requeue(owned.lease, count_delivery=False)


def test_debounce_survives_a_backlog_longer_than_a_minute(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []

    @app.task
    def reindex(version: int) -> None:
        ran.append(version)

    for version in range(4):
        reindex.apply_async((version,), debounce=0.5, debounce_key="account:1")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)  # the workers were busy 2 min
    run_queued(app, include_delayed=True)
    assert ran == [3]  # was: [0, 1, 2, 3], the debounce mark had lapsed after 61 s


def test_a_refused_send_leaves_no_dedupe_key_or_debounce_mark(app: Celeriac) -> None:
    """A send refused after the hooks ran (too large here) must not stand for a task."""
    ran: list[str] = []

    @app.task
    def sync(blob: str) -> None:
        ran.append(blob[:5])

    app.conf.task_payload_warn_bytes = app.conf.task_payload_max_bytes = 1_000
    with pytest.raises(PayloadTooLarge):
        sync.apply_async(("x" * 5_000,), dedupe_key="sync:1")
    sent = sync.apply_async(("small",), dedupe_key="sync:1")  # was: the refused send's id
    sync.apply_async(("first",), debounce=0.01, debounce_key="sync:2")
    with pytest.raises(PayloadTooLarge):
        sync.apply_async(("y" * 5_000,), debounce=0.01, debounce_key="sync:2")
    with pytest.raises(PayloadTooLarge):
        app.send_many([sync.message(("z" * 5_000,), {}, dedupe_key="sync:3")])
    run_queued(app, include_delayed=True)
    assert sorted(ran) == ["first", "small"]  # was: "first" superseded by the refused send
    assert sent.state == "SUCCESS"
    assert app.broker.kv_get(["dedupe:sync:3"]) == [None]


def test_a_cancelled_async_send_undoes_its_send_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """An async send cancelled before the broker took the message (asyncio.wait_for, a
    request whose client went away) lets the send hooks undo what they wrote, as a failed
    send does: only Exception was caught, and a hook's reservation stood for nothing."""
    reserved: list[str] = []

    class Reserves(Middleware):
        def before_send(self, app: Celeriac, message: Message) -> str | None:
            reserved.append(message.id)
            return None

        def send_failed(self, app: Celeriac, message: Message) -> None:
            reserved.remove(message.id)

    app = Celeriac("cancelled-send", broker="memory://", middleware=[Reserves()])

    async def stalled_send(messages: object) -> list[bool]:
        await asyncio.Event().wait()  # the broker never answers: the cancel ends the send
        raise AssertionError("unreachable")

    async def cancelled_send() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(app.task_named("shop.add").adelay(1, 2), 0.05)

    monkeypatch.setattr(app.broker, "asend", stalled_send)
    asyncio.run(cancelled_send())
    assert reserved == []


def test_a_cancelled_async_send_with_a_dedupe_key_or_debounce_is_whole_or_nothing(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a send runs in a thread (its hook calls the broker's sync face), which a
    cancel leaves to finish: the task is queued and holds its key, or neither. Before,
    the key named a task never queued: every later send with the key got its handle and
    ran nothing for dedupe_ttl, and a debounce mark superseded the burst's earlier sends."""
    ran: list[str] = []

    @app.task
    def sync(what: str) -> None:
        ran.append(what)

    async def stalled_send(messages: object) -> list[bool]:
        await asyncio.Event().wait()  # the broker's async face never answers
        raise AssertionError("unreachable")

    answer = threading.Event()
    send = app.broker.send

    def slow_send(messages: Any) -> list[bool]:  # its sync face answers once cancelled
        answer.wait(10)
        return send(messages)

    async def cancelled_sends() -> None:
        for call in (
            lambda: sync.aapply_async(("cut",), dedupe_key="sync:1"),
            lambda: sync.aapply_async(("cut late",), debounce=0.01, debounce_key="sync:2"),
        ):
            answer.clear()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call(), 0.05)
            answer.set()

    sync.apply_async(("first",), debounce=0.01, debounce_key="sync:2")
    with monkeypatch.context() as patched:
        patched.setattr(app.broker, "asend", stalled_send)
        patched.setattr(app.broker, "send", slow_send)
        asyncio.run(cancelled_sends())
        # The sends' threads (the broker's own, which asyncio.run does not wait for) end.
        AsyncSide.of(app.broker).sends.shutdown(wait=True)
    sent = sync.apply_async(("small",), dedupe_key="sync:1")
    run_queued(app, include_delayed=True)
    # One task per key ran: the cancelled one if it was queued, else the later one.
    assert len({"cut", "small"} & set(ran)) == 1, ran  # was: none (the key held, unsent)
    assert len({"first", "cut late"} & set(ran)) == 1, ran  # was: none (superseded)
    assert sent.state == "SUCCESS"


# -- retries -----------------------------------------------------------------------------


def test_a_retry_due_after_the_expiry_fails_with_the_tasks_own_error(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task(
        autoretry_for=(ConnectionError,),
        max_retries=5,
        retry_backoff=3600,
        retry_jitter=False,
    )
    def charge() -> None:
        runs.append(1)
        raise ConnectionError("payment service down")

    r = charge.apply_async(expires=60)
    run_queued(app, include_delayed=True, fail_fast=False)
    assert runs == [1] and r.state == "FAILURE"  # was: a retry an hour out, then EXPIRED
    with pytest.raises(ConnectionError, match="payment service down") as info:
        r.get(timeout=1)
    assert "next would be due after its expiry" in "".join(info.value.__notes__)
    (stats,) = app.broker.stats()
    assert stats.delayed == 0


def test_an_explicit_retry_after_the_expiry_fails_too(app: Celeriac) -> None:
    @app.bound_task(max_retries=5)
    def poll(self: Task[Any, Any]) -> None:
        raise self.retry(exc=TimeoutError("not ready"), countdown=120)

    r = poll.apply_async(expires=30)
    run_queued(app, fail_fast=False)
    with pytest.raises(TimeoutError, match="not ready"):
        r.get(timeout=1)


def test_a_bare_retry_at_max_retries_fails_with_a_clear_error(app: Celeriac) -> None:
    @app.task(max_retries=2)
    def poll() -> None:
        raise Retry(delay=0)

    r = poll.delay()
    with pytest.raises(TaskFailed, match=r"gave up after 2 retries; .* raise self.retry\(exc="):
        run_queued(app, include_delayed=True)  # was: celeriac.errors.Retry: retry in 0s
    with pytest.raises(TaskFailed, match=rf"task .*poll\[{r.id}\] gave up after 2 retries"):
        r.get(timeout=1)


def test_dead_letter_after_a_retry_past_the_expiry_says_why(app: Celeriac) -> None:
    @app.task(
        autoretry_for=(OSError,),
        retry_backoff=3600,
        retry_jitter=False,
        dead_letter_after_retries=True,
    )
    def copy() -> None:
        raise OSError("disk gone")

    copy.apply_async(expires=60)
    run_queued(app, fail_fast=False)
    (letter,) = app.broker.dead_letters()
    assert letter.reason == "failed after 0 retries: the next would be due after its expiry"


def test_a_retry_that_expired_in_a_backlog_says_the_task_ran_and_failed(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(autoretry_for=(ConnectionError,), retry_backoff=1, retry_jitter=False)
    def charge() -> None:
        raise ConnectionError("payment service down")

    r = charge.apply_async(expires=60)
    run_queued(app, fail_fast=False)  # fails; its retry is due long before the expiry
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)  # the workers were busy 2 min
    run_queued(app, include_delayed=True, fail_fast=False)
    assert r.state == "EXPIRED"
    with pytest.raises(
        TaskExpired,
        match=r"expired .*s before a worker started retry 1; its earlier runs failed \(first "
        r"error: builtins.ConnectionError: payment service down\)",
    ):  # was: "expired before a worker started it", as if it never ran
        r.get(timeout=1)


def test_retry_options_given_per_call_apply(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task(autoretry_for=(ConnectionError,), retry_backoff=0.001, retry_jitter=False)
    def call() -> None:
        runs.append(1)
        raise ConnectionError("down")

    r = call.apply_async(max_retries=0)  # accepted, and was ignored: 4 runs
    run_queued(app, include_delayed=True, fail_fast=False)
    assert len(runs) == 1 and r.state == "FAILURE"


@pytest.mark.parametrize(
    ("countdown", "error", "says"),
    [
        (float("inf"), ValueError, "retry countdown=inf is not a finite number of seconds"),
        (float("nan"), ValueError, "retry countdown=nan is not a finite number of seconds"),
        (1e12, ValueError, "retry countdown=1000000000000.0 puts the retry after the year 9999"),
        ("30", TypeError, "retry countdown must be a number of seconds, got str '30'"),
    ],
)
def test_a_retry_countdown_no_broker_can_wait_fails_the_task_naming_it(
    app: Celeriac, countdown: Any, error: type[Exception], says: str
) -> None:
    @app.bound_task(name="shop.poll", max_retries=5)
    def poll(self: Task[Any, Any]) -> None:
        raise self.retry(exc=TimeoutError("not ready"), countdown=countdown)

    r = poll.apply_async(expires=UNBOUNDED)  # no expiry to end the wait
    run_queued(app, fail_fast=False)
    # Was: inf and 1e12 left it in the delayed store for ever, its state RETRY; NaN was
    # retried at once; a str failed it with "Unknown format code 'g' for object of type 'str'".
    assert r.state == "FAILURE"
    with pytest.raises(error, match=f"task shop.poll: {re.escape(says)}"):
        r.get(timeout=1)
    (stats,) = app.broker.stats()
    assert stats.delayed == 0


def test_a_retry_countdown_may_be_a_timedelta_as_for_apply_async(app: Celeriac) -> None:
    runs: list[int] = []

    @app.bound_task(name="shop.wait", max_retries=1)
    def wait(self: Task[Any, Any]) -> None:
        runs.append(self.request.retries)
        if not self.request.retries:
            raise self.retry(countdown=dt.timedelta(milliseconds=50))

    r = wait.delay()
    run_queued(app, fail_fast=False, include_delayed=True)  # timedelta failed the task
    assert r.state == "SUCCESS" and runs == [0, 1]


# -- rate limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "says", "worker_limits"),
    [
        # The producer's limits had it; this worker's do not (a deploy renaming a limit).
        (
            {"limit": "smpt"},
            r"its limit 'smpt' is not in this worker's limits setting \(it has: smtp\)",
            {"smtp": "1/m"},
        ),
        (
            {"rate_limit": "1/m", "rate_limit_key": lambda *a, **k: k["tenant"]},
            "its rate_limit_key raised KeyError",
            None,
        ),
    ],
)
def test_a_rate_limit_that_cannot_apply_fails_the_task_instead_of_running_it_unlimited(
    options: dict[str, Any], says: str, worker_limits: dict[str, str] | None
) -> None:
    app = Celeriac("review-limits", broker="memory://", limits={"smtp": "1/m", "smpt": "1/m"})
    ran: list[int] = []

    @app.task(**options)
    def send(n: int) -> None:
        ran.append(n)

    if worker_limits is not None:
        app.conf.limits = worker_limits

    results = [send.delay(n) for n in range(3)]
    run_queued(app, fail_fast=False)
    assert ran == []  # was: all three ran, with no limit at all
    for r in results:
        with pytest.raises(
            ConfigurationError, match=rf"task .*send\[{r.id}\] was not run: .*{says}"
        ):
            r.get(timeout=1)


def test_a_rate_limit_given_per_call_applies(app: Celeriac) -> None:
    ran: list[int] = []

    @app.task
    def push(n: int) -> None:
        ran.append(n)

    for n in range(3):
        push.apply_async((n,), rate_limit="1/m")  # accepted, and was ignored
    run_queued(app)
    assert ran == [0]
    (stats,) = app.broker.stats()
    assert stats.delayed == 2


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"rate_limit": "1/m"}, "rate limit 1/m of task {name}"),
        ({"limit": "smtp"}, "rate limit 'smtp' (1/m)"),
        (
            {"rate_limit": "1/m", "rate_limit_key": lambda n: f"tenant-{n % 2}"},
            "rate limit 1/m of task {name} (rate_limit_key 'tenant-0')",
        ),
    ],
)
def test_a_deferral_names_the_limit_as_the_task_gives_it(
    options: dict[str, Any], says: str
) -> None:
    # The reason (in events, logs and the stored outcome) read "rate limit rate:task:x",
    # the broker's key, which the operator never wrote.
    app = Celeriac("review-limit-names", broker="memory://", limits={"smtp": "1/m"})

    @app.task(**options)
    def notify(n: int) -> None:
        del n

    notify.delay(0), notify.delay(2)
    executor = Executor(app, "w")
    outcomes = []
    for delivery in app.broker.fetch(["default"], "w", limit=2, lease_seconds=30, timeout=0):
        job, skip = executor.prepare(delivery)
        assert skip is None
        outcomes.append(executor.execute(job))
    assert [o.state for o in outcomes] == ["SUCCESS", "DEFERRED"]
    assert outcomes[1].reason == says.format(name=notify.name)


# -- revokes -----------------------------------------------------------------------------


def test_a_revoke_applies_at_once_in_the_revoking_process(app: Celeriac) -> None:
    ran: list[int] = []

    @app.task
    def charge(n: int) -> None:
        ran.append(n)

    charge.delay(0)
    run_queued(app)  # the revocation middleware has just read the revokes
    r = charge.delay(1)
    r.revoke()
    run_queued(app)  # was: within a quarter second of that read, the revoked task ran
    assert ran == [0] and r.state == "REVOKED"


# -- waiting for results -----------------------------------------------------------------


def test_aget_honours_its_timeout_when_the_thread_pool_is_busy(app: Celeriac) -> None:
    # Many waiters share the loop's default thread pool, in which memory and SQLite waits
    # run: 200 waiters took 9 s to report a 1 s timeout. Here the pool's one thread is
    # taken until the wait returns; the outer bound is only there to fail, not hang.
    release = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(pool)
        busy = loop.run_in_executor(None, release.wait)
        try:
            waiting = app.AsyncResult("never-sent").aget(timeout=0.05)
            with pytest.raises(ResultTimeout, match=r"never-sent\] did not finish within 0.05s"):
                await asyncio.wait_for(waiting, 30)
        finally:
            release.set()
            await busy

    asyncio.run(main())


def test_a_group_timeout_names_the_group_and_the_timeout_asked_for(app: Celeriac) -> None:
    @app.task
    def double(x: int) -> int:
        return 2 * x

    g = group(double.s(i) for i in range(3)).apply_async()
    run_queued(app, max_tasks=1)
    with pytest.raises(ResultTimeout) as info:
        g.get(timeout=0.1)
    text = str(info.value)
    assert text.startswith(f"group {g.id}: 2 of 3 members did not finish within 0.1s")
    assert sum(f"{g.id}:{i}" in text for i in range(3)) == 2  # the members still waited for

    async def wait() -> None:
        await g.aget(timeout=0.1)

    with pytest.raises(ResultTimeout, match=rf"group {g.id}: 2 of 3 members .* within 0.1s"):
        asyncio.run(wait())


def test_the_worker_log_says_expired_and_revoked_once(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    def report(n: int) -> None:
        raise AssertionError("an expired or revoked task must not run")

    late = report.apply_async((1,), expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    gone = report.apply_async((2,))
    gone.revoke()
    with caplog.at_level("INFO", logger="celeriac.worker"):
        run_queued(app)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("celeriac.worker")]
    # was: "task ...report[<id>] expired: expired 5.0s before a worker started it"
    said = rf"report\[{late.id}\] expired \d+(\.\d)?s before a worker"  # 5.0s, now 5s
    assert any(re.search(said, s) for s in lines), lines
    assert any(f"report[{gone.id}] revoked before it started" in s for s in lines), lines
    assert not any("expired: expired" in s or "revoked: revoked" in s for s in lines), lines


def test_a_retry_countdown_that_is_a_unix_time_fails_the_task_saying_so(app: Celeriac) -> None:
    # A Retry-After date turned into a timestamp by hand: the retry waited 56 years as RETRY.
    @app.bound_task()
    def fetch(self: Task[Any, Any]) -> None:
        raise self.retry(countdown=time.time() + 30)

    r = fetch.delay()
    run_queued(app, fail_fast=False)
    assert r.state == "FAILURE"
    with pytest.raises(ValueError, match=r"retry countdown=.* looks like a Unix time .* pass "):
        r.get(timeout=1)


def test_a_retry_survives_pickling_and_copying() -> None:
    # It came back from pickle as Retry("retry in 5s"), refused by its own delay check.
    import copy
    import pickle

    retry = Retry(5, ValueError("smtp down"))
    for again in (pickle.loads(pickle.dumps(retry)), copy.copy(retry)):
        assert isinstance(again, Retry) and again.delay == 5 and str(again) == "retry in 5s"
        assert isinstance(again.exc, ValueError) and str(again.exc) == "smtp down"
    assert pickle.loads(pickle.dumps(Retry())).delay is None


# -- dead letters ------------------------------------------------------------------------


def test_before_dead_letter_hears_of_every_letter_and_cannot_stop_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hook runs before the commit, also for letters decided before a task could run
    (an unknown task, bytes that are no message), which no other hook sees; a hook that
    raises is logged, naming itself and the task, and the letter is committed anyway."""
    heard: dict[str | None, int] = {}

    class Hears(Middleware):
        def before_dead_letter(self, job: Job, outcome: Outcome) -> None:
            name = job.message.task if job.message else None
            heard[name] = len(app.broker.dead_letters())  # how many were committed before
            raise RuntimeError("the alerting service is down")

    app = Celeriac("dead-letter-hook", broker="memory://", middleware=[Hears()])
    app.conf.task_unknown_max_age = 0
    gone = app.send_task("shop.gone")
    run_queued(app, fail_fast=False)
    app.broker.send([Outgoing("garbled", "default", b"\xff not a message")])
    run_queued(app, fail_fast=False)
    assert heard == {"shop.gone": 0, None: 1}  # each before its own commit
    assert len(app.broker.dead_letters()) == 2  # the hook's error stopped neither
    assert [r.getMessage() for r in caplog.records if "before_dead_letter" in r.getMessage()] == [
        f"Hears.before_dead_letter failed for task shop.gone[{gone.id}]; carrying on",
        "Hears.before_dead_letter failed for task ?[garbled]; carrying on",
    ]
