"""Issue 5's policies that run in-process: retries with jitter, unknown tasks, events."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from typing import Any

import msgspec
import pytest

from celeriac import BrokerConnectionError, Celeriac, Reject, Retry, Task
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.records import Lease, Outgoing
from celeriac.errors import TaskExpired
from celeriac.middleware.events import STREAM
from celeriac.middleware.expiry import expired_key
from celeriac.retry import RetryPolicy
from celeriac.testing import run_queued
from celeriac.worker.aio import AsyncioChild
from celeriac.worker.child import ChildSpec
from celeriac.worker.slot import Slot


@pytest.fixture
def app() -> Celeriac:
    return Celeriac("policies", broker="memory://")


def test_full_jitter_stays_within_the_exponential_cap() -> None:
    policy = RetryPolicy(base=2, cap=600)
    for attempt in range(10):
        ceiling = min(600, 2 * 2**attempt)
        delays = [policy.delay(attempt) for _ in range(1000)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9 and min(delays) < ceiling * 0.1  # really spread


def test_autoretry_backs_off_then_fails(app: Celeriac) -> None:
    attempts: list[int] = []

    @app.bound_task(
        autoretry_for=(ConnectionError,), max_retries=3, retry_backoff=0.01, retry_backoff_max=0.02
    )
    def call_service(self: Task[Any, Any]) -> None:
        attempts.append(self.request.retries)
        raise ConnectionError("service down")

    r = call_service.delay()
    run_queued(app, include_delayed=True, fail_fast=False)
    assert attempts == [0, 1, 2, 3]
    with pytest.raises(ConnectionError, match="service down"):
        r.get(timeout=1)


def test_self_retry_called_without_raise_retries_as_in_celery(app: Celeriac) -> None:
    # Celery's retry() raises, so `self.retry(exc=exc)` alone is common Celery code: here
    # it returned the Retry, the task went on, and ended SUCCESS with "done" unretried.
    attempts: list[int] = []

    @app.bound_task(max_retries=2)
    def fetch(self: Task[Any, Any]) -> str:
        attempts.append(self.request.retries)
        try:
            raise ConnectionError("service down")
        except ConnectionError as exc:
            self.retry(exc=exc, countdown=0)
        return "done"

    r = fetch.delay()
    run_queued(app, include_delayed=True, fail_fast=False)
    assert attempts == [0, 1, 2]
    with pytest.raises(ConnectionError, match="service down"):
        r.get(timeout=1)


def test_retry_state_shows_the_attempt(app: Celeriac) -> None:
    @app.task
    def later() -> None:
        raise Retry(delay=30)

    r = later.delay()
    run_queued(app)
    assert r.state == "RETRY"
    stored = app.broker.get_result(r.id)
    assert stored is not None and b'"retries":1' in stored[0]
    (stats,) = app.broker.stats()
    assert stats.delayed == 1  # waiting in the broker, not in a worker


def test_other_exceptions_are_not_retried(app: Celeriac) -> None:
    @app.task(autoretry_for=(ConnectionError,))
    def wrong() -> None:
        raise ValueError("bad input")

    r = wrong.delay()
    run_queued(app, fail_fast=False)
    assert r.state == "FAILURE"


def test_dead_letter_after_retries_keeps_the_error(app: Celeriac) -> None:
    @app.task(
        autoretry_for=(OSError,), max_retries=1, retry_backoff=0.01, dead_letter_after_retries=True
    )
    def flaky() -> None:
        raise OSError("disk gone")

    r = flaky.delay()
    run_queued(app, include_delayed=True, fail_fast=False)
    (letter,) = app.broker.dead_letters()
    assert letter.reason == "failed after 1 retries" and letter.error.endswith("disk gone")
    with pytest.raises(OSError, match="dead-lettered: failed after 1 retries: disk gone"):
        r.get(timeout=1)


def test_a_replayed_dead_letter_gets_its_retries_and_time_to_live_back(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task(
        autoretry_for=(OSError,), max_retries=1, retry_backoff=0.01, dead_letter_after_retries=True
    )
    def flaky() -> str:
        runs.append(1)
        if len(runs) < 4:  # first life: 2 runs; after the replay: fails once more, then works
            raise OSError("disk gone")
        return "done"

    r = flaky.apply_async(expires=1.5, priority=7)
    run_queued(app, include_delayed=True, fail_fast=False)
    assert len(runs) == 2 and len(app.broker.dead_letters()) == 1
    time.sleep(1.6)  # past its expiry: replayed as it was stored, it would expire at once
    assert app.replay_dead_letters(task=flaky.name) == 1
    (replayed,) = app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
    assert replayed.priority == 7
    app.broker.requeue(replayed.lease, count_delivery=False)
    run_queued(app, include_delayed=True, fail_fast=False)
    assert r.get(timeout=1) == "done" and len(runs) == 4  # a retry of its own again


def test_unknown_task_is_dead_lettered_after_its_max_age(app: Celeriac) -> None:
    app.conf.task_unknown_max_age = 0.05
    app.conf.task_unknown_retry_delay = 0.2  # the default, 10 s, was most of this suite's wait
    r = app.send_task("not.deployed.anywhere")
    run_queued(app)
    assert r.state == "PENDING" and not app.broker.dead_letters()  # first: put back
    time.sleep(0.3)
    run_queued(app, include_delayed=True)
    (letter,) = app.broker.dead_letters()
    assert letter.reason.startswith("unknown task")


def test_an_unknown_task_known_under_another_module_path_says_so(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # The producer imported qs.tasks, the worker ran -A tasks in qs/: "Deploy the code
    # that defines it", with the function registered as tasks.send_welcome; and "putting
    # it back for 10s (dead-lettered after 5s)" contradicted itself.
    app.conf.task_unknown_max_age = 5
    app.task(name="tasks.send_welcome")(lambda user: user)
    app.task(name="shop.charge")(lambda order: order)
    app.task(name="billing.tasks.send_welcome")(lambda user: user)  # another module's: not it
    app.send_task("qs.tasks.send_welcome", args=[1])
    app.send_task("shop.chrage", args=[1])
    run_queued(app, fail_fast=False)
    assert (
        "This worker has 'tasks.send_welcome': a task's name is its module's import path, so "
        "the producer and the worker must import the module the same way (-A qs.tasks)."
    ) in caplog.text
    assert "Did you mean 'shop.charge'?" in caplog.text
    assert (
        "putting it back for 10s so a worker that knows it can take it (dead-lettered at a "
        "delivery past task_unknown_max_age=5s from its send)"
    ) in caplog.text


def test_a_task_that_expired_after_a_delivery_died_is_not_said_never_to_have_started(
    app: Celeriac,
) -> None:
    # Its child died mid-run (OOM), and it expired meanwhile: "expired 1.1s before a
    # worker started it", of a task whose side effects had happened.
    @app.task
    def charge(order: int) -> int:
        return order

    died, waited = charge.apply_async((1,), expires=0.2), charge.apply_async((2,), expires=0.2)
    for taken in app.broker.fetch(["default"], "w", limit=2, lease_seconds=30, timeout=0):
        app.broker.requeue(taken.lease, count_delivery=taken.id == died.id)  # a crash
    time.sleep(0.3)
    run_queued(app)
    with pytest.raises(TaskExpired, match="before a worker could run it again: an earlier "):
        died.get(timeout=1)
    with pytest.raises(TaskExpired, match="before a worker started it"):
        waited.get(timeout=1)  # put back unstarted (prefetched): it never ran


def test_an_expired_task_no_worker_knows_expires_not_put_back(app: Celeriac) -> None:
    # Put back every task_unknown_retry_delay, then dead-lettered after task_unknown_max_age
    # (a periodic tick of a mistyped task: one more each tick), where a worker that knew
    # the task would have expired it.
    app.conf.task_unknown_retry_delay = 0.2
    gone = app.send_task("shop.not.deployed", expires=0.05)
    kept = app.send_task("shop.not.deployed.yet", expires=60)
    time.sleep(0.1)
    run_queued(app)
    assert gone.state == "EXPIRED" and kept.state == "PENDING"
    (stats,) = app.broker.stats()
    assert (stats.ready, stats.delayed, stats.dead) == (0, 1, 0)
    assert len(app.broker.join_values(expired_key(stats.queue))) == 1  # status: expired today
    with pytest.raises(TaskExpired, match=r"expired .* before a worker started it") as said:
        gone.get(timeout=1)
    # Said what is known: this worker lacks the task, so others may have passed it over.
    assert "; this worker does not know the task, so workers of another version may have " in (
        str(said.value)
    )


def test_a_skipped_unknown_task_is_told_to_the_middleware_once_on_the_asyncio_pool() -> None:
    # With the revoke read left for later (the asyncio pool), an expired unknown task was
    # told EXPIRED while read, on the loop's thread, then REVOKED when the read found a
    # mark: a chain read "expired earlier" of a step settled REVOKED.
    from celeriac.control import revoke
    from celeriac.middleware import Job, Middleware, Outcome, default_middleware
    from celeriac.worker.executor import Executor

    told: list[tuple[str, str]] = []

    class Told(Middleware):
        def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
            told.append((job.delivery.id, outcome.state))
            return outcome

    app = Celeriac("told-once", broker="memory://", middleware=[*default_middleware(), Told()])
    both = app.send_task("shop.not.deployed", expires=0.01)
    expired_only = app.send_task("shop.not.deployed", expires=0.01)
    revoke(app, both.id)
    time.sleep(0.05)
    executor = Executor(app, "w")
    executor.revoke_reads_later = True
    fetched = app.broker.fetch(["default"], "w", limit=2, lease_seconds=30, timeout=0)
    settled = {}
    for delivery in fetched:
        before = len(told)
        job, outcome = executor.prepare(delivery)
        assert outcome is not None and len(told) == before  # nothing told while read
        settled[delivery.id] = executor.unless_revoked(job, outcome).state
    assert settled == {both.id: "REVOKED", expired_only.id: "EXPIRED"}
    assert sorted(told) == sorted([(both.id, "REVOKED"), (expired_only.id, "EXPIRED")])


def test_a_revoked_task_no_worker_knows_is_dropped_not_put_back(app: Celeriac) -> None:
    # A typo sent anyway, then revoked: it was put back every task_unknown_retry_delay
    # for an hour, REVOKED in its result but "not registered" in every log line.
    from celeriac.control import revoke

    app.conf.task_unknown_retry_delay = 0.2
    typo = app.send_task("shop.fsat")
    kept = app.send_task("shop.not.deployed.yet")
    revoke(app, typo.id)
    run_queued(app)
    assert typo.state == "REVOKED" and kept.state == "PENDING"
    (stats,) = app.broker.stats()
    assert (stats.ready, stats.delayed, stats.dead) == (0, 1, 0)  # only the other, put back


def test_a_revoked_chord_member_no_worker_knows_ends_its_chord(app: Celeriac) -> None:
    # Settled REVOKED straight from reading it, the member told no one: the chord's body
    # stayed PENDING with its queue empty, and its errback never fired.
    from celeriac.canvas import chord, signature
    from celeriac.control import revoke

    errors: list[str] = []

    @app.task(name="known.step")
    def step() -> int:
        return 1

    @app.task(name="known.total")
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="known.errback")
    def errback(error: dict[str, Any]) -> None:
        errors.append(error["type"])

    app.conf.task_unknown_retry_delay = 0.2
    handle = (
        chord(
            [signature("known.step", app=app), signature("other.service.step", app=app)],
            signature("known.total", app=app),
        )
        .link_error(signature("known.errback", app=app))
        .apply_async()
    )
    revoke(app, f"{handle.id}:h:1")
    run_queued(app, fail_fast=False)
    assert handle.state == "FAILURE" and errors == ["celeriac.errors.ChordError"]
    assert [(s.ready, s.delayed, s.dead) for s in app.broker.stats()] == [(0, 0, 0)]


def test_an_unknown_task_with_a_stored_state_that_is_no_revoke_is_put_back(
    app: Celeriac,
) -> None:
    from celeriac.message import ResultRecord, encode_result

    app.conf.task_unknown_retry_delay = 0.2
    r = app.send_task("not.deployed.yet")
    app.broker.store_result(r.id, encode_result(ResultRecord(state="RETRY", task=r.name)), 60)
    run_queued(app)
    assert r.state == "RETRY" and [s.delayed for s in app.broker.stats()] == [1]


def test_events_are_written_in_batches(app: Celeriac) -> None:
    @app.task
    def ok() -> int:
        return 1

    ids = [ok.delay().id for _ in range(3)]
    run_queued(app)
    app.conf.worker_send_started_events = True
    more = ok.delay().id
    run_queued(app)
    events = [msgspec.json.decode(raw) for _, raw in app.broker.stream_read(STREAM, 0, 100)]
    kinds = [(e["type"], e["id"]) for e in events]
    for task_id in ids:
        assert [k for k, i in kinds if i == task_id] == ["succeeded"]  # one event per task
    assert [k for k, i in kinds if i == more] == ["received", "started", "succeeded"]


def test_dedupe_returns_the_first_task(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task
    def sync_account(account_id: int) -> None:
        runs.append(account_id)

    handles = [
        sync_account.apply_async((42,), dedupe_key="sync:42", dedupe_ttl=60) for _ in range(100)
    ]
    assert len({h.id for h in handles}) == 1
    run_queued(app)
    assert runs == [42]
    again = sync_account.apply_async((42,), dedupe_key="sync:42", dedupe_ttl=60)
    assert again.id != handles[0].id  # the first one ran: the key is free again


def test_dedupe_running_mode_holds_the_key_until_done(app: Celeriac) -> None:
    seen: list[str] = []

    @app.bound_task()
    def refresh(self: Task[Any, Any]) -> None:
        second = refresh.apply_async(dedupe_key="k", dedupe_mode="running")
        seen.append("same" if second.id == self.request.id else "new")

    refresh.apply_async(dedupe_key="k", dedupe_mode="running")
    run_queued(app)
    assert seen == ["same"]


def test_debounce_runs_once_with_the_last_arguments(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task
    def reindex(version: int) -> None:
        runs.append(version)

    handles = [reindex.apply_async((v,), debounce=0.2, debounce_key="index") for v in range(50)]
    run_queued(app, include_delayed=True)
    assert runs == [49]
    assert handles[-1].state == "SUCCESS"
    assert {h.state for h in handles[:-1]} == {"REVOKED"}


def test_unknown_call_option_is_refused(app: Celeriac) -> None:
    @app.task
    def f() -> None: ...

    with pytest.raises(TypeError, match=r"unknown option.*dedupe_kye"):
        f.apply_async(dedupe_kye="x")


def test_rate_reservations_are_spaced(app: Celeriac) -> None:
    waits = [app.broker.rate_reserve("r", per_second=10) for _ in range(5)]
    assert waits[0] == 0
    assert [round(w, 1) for w in waits] == [0.0, 0.1, 0.2, 0.3, 0.4]


def _stalled_admissions(app: Celeriac, stalls: list[float]) -> list[float]:
    """Make the broker's rate_admit pause after each real call, one pause per call from
    ``stalls`` (then none), as a slow commit or a paused process would; the calls' times."""
    real = app.broker.rate_admit
    calls: list[float] = []

    def admit(key: str, limit: int, period: float) -> float:
        wait = real(key, limit, period)
        calls.append(time.monotonic())
        if len(calls) <= len(stalls):
            time.sleep(stalls[len(calls) - 1])
        return wait

    app.broker.rate_admit = admit  # type: ignore[method-assign]
    return calls


def test_an_admission_that_took_longer_than_the_guard_is_asked_again(app: Celeriac) -> None:
    ran: list[int] = []

    @app.task(rate_limit="100/s")  # guard: 1% + 5 ms = 15 ms
    def limited(i: int) -> None:
        ran.append(i)

    calls = _stalled_admissions(app, [0.05])
    limited.delay(1)
    run_queued(app)
    assert ran == [1]
    assert len(calls) == 2  # the stalled admission was spent, a fresh one taken


def test_a_broker_slow_on_every_admission_still_runs_the_task(app: Celeriac) -> None:
    ran: list[int] = []

    @app.task(rate_limit="100/s")
    def limited(i: int) -> None:
        ran.append(i)

    calls = _stalled_admissions(app, [0.05] * 10)
    limited.delay(1)
    run_queued(app)
    assert ran == [1]
    assert len(calls) == 3  # asked at most three times, never livelocked


def test_an_oversized_result_is_stored_as_a_clear_failure(app: Celeriac) -> None:
    from celeriac import PayloadTooLarge

    app.conf.task_result_max_bytes = 1000

    @app.task
    def report() -> str:
        return "x" * 5000

    r = report.delay()
    run_queued(app, fail_fast=False)
    with pytest.raises(PayloadTooLarge, match=r"returned 5,\d{3} bytes, over task_result_max"):
        r.get(timeout=1)


def test_an_oversized_error_is_stored_as_what_the_task_raised_cut(app: Celeriac) -> None:
    # An exception quoting a whole response, over the limit, was stored as "report
    # returned 50,000 bytes", a PayloadTooLarge, as if the task had returned a value.
    app.conf.task_result_max_bytes = 20_000

    @app.task
    def report() -> str:
        raise ValueError("bad response: " + "x" * 50_000)

    r = report.delay()
    run_queued(app, fail_fast=False)
    with pytest.raises(
        ValueError, match=r"^bad response: x+ \[\.\.\. cut: the error's result"
    ) as e:
        r.get(timeout=1)
    assert "over task_result_max_bytes" in str(e.value)
    assert len(app.broker.get_result(r.id)[0]) <= 20_000  # type: ignore[index]


def test_an_oversized_error_of_a_retry_is_stored_cut_in_its_retry_state(app: Celeriac) -> None:
    # The RETRY state kept the error whole: a response of 50 MB quoted in it sat in Redis
    # for result_expires, beside each retry, whatever task_result_max_bytes said.
    app.conf.task_result_max_bytes = 20_000

    @app.task(autoretry_for=(ValueError,), max_retries=3, retry_backoff=3600)
    def report() -> str:
        raise ValueError("bad response: " + "x" * 50_000)

    r = report.delay()
    run_queued(app, fail_fast=False)
    assert r.state == "RETRY"
    stored = app.broker.get_result(r.id)
    assert stored is not None and len(stored[0]) <= 20_000
    assert "cut: the error's result" in stored[0].decode()


def test_arguments_that_do_not_fit_are_put_back_for_another_version(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # Run, "process() missing 1 required positional argument: 'order'" (an older producer,
    # from before a rename) and "takes 1 positional argument but 2 were given" (a newer
    # one) failed the task for good, saying nothing of a deploy, and autoretry_for retried
    # it. Now put back, as an unknown task is, for a worker of the version that sent it.
    from celeriac import ArgumentsRefused

    app.conf.task_unknown_retry_delay = 0.2
    app.conf.task_unknown_max_age = 0.3

    @app.task(autoretry_for=(Exception,), max_retries=3)
    def process(order: int) -> int:
        return order

    @app.task
    def buggy(order: int) -> int:
        return len(order)  # type: ignore[arg-type]  # its own TypeError

    def with_db(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, db="shop", **kwargs)

        return wrapper

    @app.task
    @with_db
    def wrapped(order: int, db: str) -> int:
        return len(order)  # type: ignore[arg-type]  # its own TypeError, the wrapper's args

    renamed = app.send_task(process.name, kwargs={"order_id": 5})
    added = app.send_task(process.name, args=[5, "express"])
    own = buggy.delay(5)
    own_wrapped = app.send_task(wrapped.name, args=[5])
    run_queued(app, fail_fast=False)
    assert renamed.state == added.state == "PENDING"
    assert [s.delayed for s in app.broker.stats()] == [2]  # put back, not run, not retried
    assert f"process[{added.id}] cannot take the arguments it was sent (too many" in caplog.text
    assert "sent by code of another version? Putting it back for 0.2s" in caplog.text
    time.sleep(0.35)
    run_queued(app, include_delayed=True, fail_fast=False)
    reasons = {x.id: x.reason for x in app.broker.dead_letters()}
    assert reasons[renamed.id].startswith("arguments that do not fit: missing a required argument")
    assert reasons[added.id].startswith("arguments that do not fit: too many positional")
    assert "no worker that could take them took it within task_unknown_max_age" in reasons[added.id]
    for handle in (own, own_wrapped):
        with pytest.raises(TypeError, match=r"has no len\(\)") as raised:
            handle.get(timeout=1)
        assert not isinstance(raised.value, ArgumentsRefused)


def test_a_chunk_or_a_decorated_task_given_too_many_arguments_is_put_back(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # A newer producer's chunks of charge(order, amount, currency), or its audit(order,
    # reason) under functools.wraps, failed for good on an older worker ("takes 2
    # positional arguments but 3 were given"): the check skipped chunks and decorated
    # functions, where a plain call was put back for a worker of the version that sent it.
    app.conf.task_unknown_retry_delay = 60

    @app.task
    def charge(order: int, amount: int) -> int:
        return amount

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return wrapper

    @app.task
    @logged
    def audit(order: int) -> int:
        return order

    newer = charge.chunks([(1, 10), (2, 20, "USD"), (3, 30)], 2).apply_async()
    older = charge.chunks([(4, 40)], 1).apply_async()
    added = app.send_task(audit.name, args=[5, "fraud"])
    fits = audit.delay(6)
    run_queued(app, fail_fast=False)
    assert older.get(timeout=1) == [[40]] and fits.get(timeout=1) == 6
    assert [r.state for r in newer.results] == ["PENDING", "SUCCESS"]  # (1, 10) and (2, ...)
    assert added.state == "PENDING"
    assert [s.delayed for s in app.broker.stats()] == [2]  # put back, not failed
    assert "call 1 of the chunk: too many positional arguments" in caplog.text
    assert f"audit[{added.id}] cannot take the arguments it was sent (too many" in caplog.text


def test_a_commit_whose_reply_was_lost_is_not_said_to_be_another_worker_s(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # The commit landed, its reply was lost, and the call made again found the lease
    # settled: "another worker took it after this worker's lease lapsed and finished it",
    # with no other worker at all.
    from celeriac.worker.executor import OWN_COMMIT, Executor

    @app.task
    def ship(order: int) -> int:
        return order

    ship.delay(1), ship.delay(2)
    mine, other = Executor(app, "w-mine"), Executor(app, "w-other")
    first, second = app.broker.fetch(["default"], "w", limit=2, lease_seconds=30, timeout=0)
    job, _ = mine.prepare(first)
    outcome = mine.execute(job)
    mine.settle(job, outcome)
    mine.settle(job, outcome)  # as made again after a lost reply
    assert OWN_COMMIT in caplog.text and "another worker" not in caplog.text
    caplog.clear()
    job, _ = other.prepare(second)
    outcome = other.execute(job)
    other.settle(job, outcome)
    mine.settle(job, outcome)  # another worker's commit stands: said so
    assert "another worker took it after this worker's lease lapsed and finished" in caplog.text


def test_two_lost_leases_of_one_message_name_it_once(app: Celeriac) -> None:
    # "lost the lease of a1, a1": taken back and handed out again, both leases lost.
    from celeriac.brokers.records import Lease
    from celeriac.worker.broker_duties import lost_by_reason

    leases = [Lease("a1", "default", "t1"), Lease("a1", "default", "t2")]
    (ids,) = lost_by_reason(app.broker, leases).values()
    assert ids == "a1"


def test_strict_kwargs_fails_instead_of_dropping(app: Celeriac) -> None:
    app.conf.task_strict_kwargs = True

    @app.task
    def old(a: int) -> int:
        return a

    # A newer producer's code takes added_in_v2 (this process's old() would refuse it).
    r = app.send_task(old.name, kwargs={"a": 1, "added_in_v2": True})
    run_queued(app, fail_fast=False)
    with pytest.raises(TypeError, match=r"does not accept keyword argument.*added_in_v2"):
        r.get(timeout=1)


def test_dead_letter_shows_the_first_and_the_last_error(app: Celeriac) -> None:
    attempts: list[int] = []

    @app.bound_task(
        autoretry_for=(OSError,), max_retries=1, retry_backoff=0.01, dead_letter_after_retries=True
    )
    def flaky(self: Task[Any, Any]) -> None:
        attempts.append(1)
        raise OSError("disk gone" if len(attempts) == 1 else "disk still gone")

    flaky.delay()
    run_queued(app, include_delayed=True, fail_fast=False)
    (letter,) = app.broker.dead_letters()
    assert letter.error == (
        "first error: builtins.OSError: disk gone | last error: builtins.OSError: disk still gone"
    )


def test_results_and_errors_that_cannot_be_encoded_settle_as_failures(app: Celeriac) -> None:
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")  # as os.listdir gives it

    runs: list[int] = []

    @app.task(autoretry_for=(OSError,), max_retries=1, retry_backoff=0.01)
    def missing() -> None:
        runs.append(1)
        raise FileNotFoundError(f"missing {name}")

    @app.task
    def listed() -> str:
        return name

    @app.task
    def rejected() -> None:
        raise Reject(f"cannot read {name}")

    failed, unencodable, dead = missing.delay(), listed.delay(), rejected.delay()
    run_queued(app, fail_fast=False, include_delayed=True)  # used to raise from settle
    with pytest.raises(FileNotFoundError, match=r"missing report-\\udcff\.csv"):
        failed.get(timeout=1)
    assert len(runs) == 2  # the retry was sent too, its message carrying the first error
    with pytest.raises(Exception, match=r"returned a str, which is not JSON-serializable"):
        unencodable.get(timeout=1)
    with pytest.raises(Exception, match=r"dead-lettered: rejected by the task: cannot read"):
        dead.get(timeout=1)
    (letter,) = app.broker.dead_letters()
    assert letter.reason == "rejected by the task: cannot read report-\\udcff.csv"


def test_a_retry_keeps_its_message_under_the_size_limit_whatever_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first error's text rode in the retried message whole: an error quoting a 1 MB
    # response body made the retry a 1 MB message, over task_payload_max_bytes (256 KiB),
    # which the producer would have refused, and the worker warned of "another producer".
    from celeriac.middleware import Job, Middleware, default_middleware

    sizes: list[int] = []

    class Sizes(Middleware):
        def before_execute(self, job: Job) -> None:
            sizes.append(len(job.delivery.body))

    local = Celeriac("sizes", broker="memory://", middleware=[*default_middleware(), Sizes()])

    @local.task(autoretry_for=(OSError,), max_retries=1, retry_backoff=0.01)
    def fetch_page() -> None:
        raise OSError("bad response: " + "x" * 1_000_000)

    fetch_page.delay()
    run_queued(local, include_delayed=True, fail_fast=False)
    assert len(sizes) == 2 and max(sizes) < local.conf.task_payload_warn_bytes, sizes
    assert "over task_payload_max_bytes" not in caplog.text


class _RequeueFailsOnce(MemoryBroker):
    """A broker that cannot be reached for the first retry's requeue, as in a blip."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def requeue(self, lease: Lease, **kwargs: Any) -> bool:  # MemoryBroker's, passed on
        if not self.refused:
            self.refused += 1
            raise BrokerConnectionError("Redis at redis://h:6379/0 did not answer")
        return super().requeue(lease, **kwargs)


def test_a_broker_blip_while_a_retry_is_queued_does_not_spend_a_retry() -> None:
    # The worker tries a settle again while the broker is unreachable. The retry was
    # counted into the delivered message at each try: one blip made the runs 0, 2, 3
    # and the task "gave up after 3 retries" having been retried twice.
    local = Celeriac("blip", broker="memory://")
    broker = _RequeueFailsOnce()
    local.use_broker(broker)
    seen: list[int] = []

    @local.bound_task(
        autoretry_for=(OSError,), max_retries=3, retry_backoff=0.01, retry_backoff_max=0.01
    )
    def flaky(self: Task[Any, Any]) -> None:
        seen.append(self.request.retries)
        raise OSError("service down")

    r = flaky.delay()
    child = AsyncioChild(local, ChildSpec("w", ("default",), 0, "asyncio", 1, "w/0.1"), Slot())

    async def stop_when_done() -> None:
        while not r.ready():
            await asyncio.sleep(0.01)
        child.stopping = True

    async def consume() -> None:
        await asyncio.gather(child._main(), stop_when_done())

    asyncio.run(asyncio.wait_for(consume(), 30))
    assert broker.refused == 1
    assert seen == [0, 1, 2, 3]
    with pytest.raises(OSError, match="service down") as failed:
        r.get(timeout=1)
    assert "gave up after 3 retries" in str(failed.value.__notes__)


def test_a_retry_s_log_line_says_why_and_the_last_failure_that_it_gave_up(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # "will retry in 0.2s (attempt 1)" said nothing of the cause, and the final "failed:
    # ConnectionError" read as a first failure: the operator had to open the result.
    @app.task(
        autoretry_for=(ConnectionError,), max_retries=2, retry_backoff=0.01, retry_backoff_max=0.01
    )
    def flaky(n: int) -> None:
        raise ConnectionError(f"upstream {n} refused\nlater line")

    @app.bound_task(max_retries=2)
    def manual(self: Task[Any, Any]) -> None:
        if self.request.retries == 0:
            raise self.retry(countdown=0.01)  # no cause: none to say
        raise self.retry(exc=ValueError("still bad"), countdown=0.01)

    flaky.delay(5)
    manual.delay()
    with caplog.at_level("INFO", logger="celeriac.worker"):
        run_queued(app, fail_fast=False, include_delayed=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "celeriac.worker"]
    flaky_lines = [line for line in lines if ".flaky[" in line]
    cause = "builtins.ConnectionError: upstream 5 refused\\nlater line"  # escaped: one line
    for line, n in zip(flaky_lines[:2], (1, 2), strict=True):  # full jitter: 0 to 0.01 s
        said = line.split("] ", 1)[1]
        assert re.fullmatch(rf"will retry in (0|0\.0\d*)s \(attempt {n}\): .*", said), lines
        assert said.endswith(cause), lines
    assert flaky_lines[2].endswith(f"s (gave up after 2 retries): {cause}"), lines
    manual_lines = [line.split("] ", 1)[1] for line in lines if ".manual[" in line]
    assert manual_lines[0] == "will retry in 0.01s (attempt 1)", lines  # "0.0s" before
    assert manual_lines[1] == "will retry in 0.01s (attempt 2): builtins.ValueError: still bad"
    assert "gave up after 2 retries" in manual_lines[2]


def test_a_verdict_s_log_line_names_the_task_and_its_error_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A verdict's FAILURE (a hard time limit) carries its text as reason and as error: the
    # line said it twice when it showed the reason too. And texts written to be read on
    # their own start with the task's label, which the line had already given.
    from celeriac.brokers.records import Delivery
    from celeriac.message import ErrorInfo, Message
    from celeriac.middleware.base import Job, Outcome
    from celeriac.worker.outcome_log import log_outcome

    said = "task t[1] ran past its hard time limit (1s) and was killed"
    error = ErrorInfo(type="celeriac.errors.TimeLimitExceeded", message=said)
    job = Job(
        Delivery(Lease("1", "default", "tok"), b"{}", 1), "w", message=Message(id="1", task="t")
    )
    other = Job(
        Delivery(Lease("2", "default", "tok"), b"{}", 1), "w", message=Message(id="2", task="t")
    )
    with caplog.at_level("INFO", logger="celeriac.worker"):
        log_outcome(job, Outcome("FAILURE", error=error, reason=said))
        log_outcome(job, Outcome("REVOKED", reason="task t[1] was revoked and stopped"))
        log_outcome(other, Outcome("REVOKED", reason="task t[1] was revoked and stopped"))
    assert caplog.messages[-3:] == [
        "task t[1] failed: celeriac.errors.TimeLimitExceeded: ran past its hard time limit "
        "(1s) and was killed",
        "task t[1] was revoked and stopped",
        "task t[2] revoked: task t[1] was revoked and stopped",  # another task's: kept whole
    ]


def test_a_retry_runs_with_the_arguments_as_sent_not_as_the_task_left_them(
    app: Celeriac,
) -> None:
    # The function gets the message's own lists and dicts, and the retry was encoded from
    # them: a task that worked its list off (pop) before failing was retried with what it
    # left, and the items it had taken were never done.
    seen: list[tuple[list[int], dict[str, Any]]] = []

    @app.bound_task(autoretry_for=(OSError,), max_retries=2, retry_backoff=0.01)
    def send_batch(self: Task[Any, Any], ids: list[int], opts: dict[str, Any]) -> None:
        seen.append((list(ids), dict(opts)))
        ids.pop()
        opts["cursor"] = 1
        if self.request.retries < 2:
            raise OSError("smtp timeout")

    send_batch.delay([1, 2, 3], {"mode": "full"})
    run_queued(app, include_delayed=True)
    assert seen == [([1, 2, 3], {"mode": "full"})] * 3


def test_a_retry_given_text_for_its_exception_fails_the_task_not_retries_for_ever() -> None:
    # self.retry(exc=str(e)): the text could be neither stored as the retry's error nor
    # raised when the retries ran out (the give-up hook failed and was skipped), so the
    # task was retried for ever past max_retries, its state never RETRY.
    local = Celeriac("text-cause", broker="memory://")
    runs: list[int] = []

    @local.bound_task(max_retries=2)
    def call_api(self: Task[Any, Any]) -> None:
        runs.append(self.request.retries)
        raise self.retry(exc="HTTP 503", countdown=0.01)  # type: ignore[arg-type]

    r = call_api.delay()
    child = AsyncioChild(local, ChildSpec("w", ("default",), 0, "asyncio", 1, "w/0.1"), Slot())

    async def stop_when_done_or_looping() -> None:
        while not r.ready() and len(runs) <= 3:
            await asyncio.sleep(0.01)
        child.stopping = True

    async def consume() -> None:
        await asyncio.gather(child._main(), stop_when_done_or_looping())

    asyncio.run(asyncio.wait_for(consume(), 30))
    assert runs == [0]
    with pytest.raises(TypeError, match=r"call_api: retry exc must be the exception .*'HTTP 503'"):
        r.get(timeout=1)


def test_a_call_option_the_retries_cannot_use_falls_back_to_the_tasks_own(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # apply_async checks its options, but a message is data: "max_retries": "3" from
    # another producer made the Retries hook raise at every run, and a failing hook is
    # skipped, so raise self.retry() went on for ever past the task's max_retries.
    runs: list[int] = []

    @app.bound_task(max_retries=2)
    def poll(self: Task[Any, Any]) -> None:
        runs.append(self.request.retries)
        raise self.retry(exc=TimeoutError("not ready"), countdown=0)

    sent = {"id": "p1", "task": poll.name, "options": {"max_retries": "3"}, "sent_at": time.time()}
    app.broker.send([Outgoing("p1", "default", msgspec.json.encode(sent))])
    run_queued(app, include_delayed=True, fail_fast=False, max_tasks=10)
    assert runs == [0, 1, 2]
    with pytest.raises(TimeoutError, match="not ready"):
        app.AsyncResult("p1").get(timeout=1)
    assert "its message's max_retries='3' is not a whole number" in caplog.text


def test_a_retrys_own_max_retries_wins_over_the_tasks_and_self_max_retries_reads_it(
    app: Celeriac,
) -> None:
    # Celery's raise self.retry(exc=e, countdown=1, max_retries=5) was a TypeError in the
    # task: it failed at its first retry, and self.max_retries an AttributeError.
    runs: list[tuple[int, int | None]] = []

    @app.bound_task(max_retries=5)
    def poll(self: Task[Any, Any], limit: int) -> None:
        runs.append((self.request.retries, self.max_retries))
        raise self.retry(exc=TimeoutError("not ready"), countdown=0, max_retries=limit)

    @app.task
    def plain() -> None: ...

    fewer, none = poll.delay(1), poll.delay(0)
    run_queued(app, include_delayed=True, fail_fast=False, max_tasks=20)
    assert sorted(runs) == [(0, 5), (0, 5), (1, 5)]  # one retry; none; the task's 5 unused
    for result in (fewer, none):
        with pytest.raises(TimeoutError, match="not ready"):
            result.get(timeout=1)
    assert plain.max_retries == 3  # the default, as the retry policy counts it
    with pytest.raises(ValueError, match="max_retries must be a whole number of at least 0"):
        poll.retry(max_retries=-1)
