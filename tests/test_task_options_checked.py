"""Task options are checked where they are given, and per-call opt-outs reach the worker.

* ``@app.task(...)`` refuses, at import time, a policy option its middleware could not
  apply (it failed in the worker, for every message), naming the task, the option, the
  value and what is accepted; ``apply_async`` refuses the same values for one call, and
  names the options only ``@app.task`` takes (they cannot travel in a message).
* ``apply_async(time_limit=UNBOUNDED)`` lifts the task's own limit in a real worker, with
  either serializer (JSON carried infinity as null: the task's own limit applied).
* Tasks whose expiry comes before their rate limit's next slot do not reserve slots that
  a fresh task would then wait behind.

Real worker processes run this module's app (``-A tests.test_task_options_checked``)
against a SQLite file, with the same celeriac source as this test process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import celeriac
from celeriac import Celeriac
from celeriac.errors import ConfigurationError, SoftTimeLimitExceeded
from celeriac.testing import wait_for
from tests.conftest import ROOT, WorkerProcesses

app = Celeriac("options-checked")

PACE = 2.0  # starts per second of `paced`


@app.task(name="checked.hard_limited", time_limit=1, soft_time_limit=30)
def hard_limited(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@app.task(name="checked.soft_limited", soft_time_limit=0.5, time_limit=30)
def soft_limited(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@app.task(name="checked.paced", rate_limit=f"{PACE:g}/s")
def paced(n: int) -> int:
    return n


@pytest.fixture
def broker_url(sqlite_url: str) -> str:
    """SQLite only: what is checked is the producer's and the middleware's, not a broker's."""
    return sqlite_url


@pytest.fixture
def checked_app(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    monkeypatch.setattr(app.conf, "broker_url", sqlite_url)
    yield app
    app.broker.close()


def _start(workers: WorkerProcesses, *args: str) -> None:
    # The worker runs the celeriac this test imported (a copy of older code, too).
    source = Path(celeriac.__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{source}:{ROOT}"}
    workers.start("-c", "1", *args, app="tests.test_task_options_checked", env=env)


# -- checked when the task is defined -------------------------------------------------


@pytest.fixture
def local() -> Celeriac:
    return Celeriac("checked-local", broker="memory://", limits={"smtp": "5/s"})


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"rate_limit": "10/x"}, r"rate_limit must be a rate written N/s.*got '10/x'"),
        ({"rate_limit": "0/s"}, r"rate_limit must be a rate .* over 0 .*got '0/s'"),
        ({"rate_limit": "-1/s"}, r"rate_limit must be .*got '-1/s'"),
        ({"rate_limit": 10}, r"rate_limit must be .*got 10$"),
        (
            {"limit": "smpt"},
            r"limit must be a name in this app's limits setting \(it has: 'smtp'\)",
        ),
        ({"rate_limit_key": "tenant"}, r"rate_limit_key must be a function"),
        ({"dedupe_mode": "queud"}, r"dedupe_mode must be 'queued' .* or 'running' .*got 'queud'"),
        ({"dedupe_ttl": "1h"}, r"dedupe_ttl must be a finite number of seconds, over 0"),
        # Built from an empty field: every send shared it, all but one were dropped.
        ({"dedupe_key": ""}, r"dedupe_key must be a non-empty key \(every send .*got ''$"),
        ({"debounce": 5, "debounce_key": ""}, r"debounce_key must be a non-empty key"),
        ({"debounce": -1}, r"debounce must be a finite number of seconds, at least 0, got -1"),
        ({"retry_backoff": -1}, r"retry_backoff must be a finite number of seconds.*got -1"),
        ({"retry_backoff_max": math.nan}, r"retry_backoff_max must be .*got nan"),
        ({"max_retries": -1}, r"max_retries must be a whole number of at least 0.*got -1"),
        ({"max_retries": 2.5}, r"max_retries must be a whole number"),
        ({"retry_jitter": "no"}, r"retry_jitter must be True or False"),
        ({"autoretry_for": (ValueError, "x")}, r"autoretry_for must be an exception class or"),
        ({"autoretry_for": int}, r"autoretry_for must be an exception class"),
    ],
)
def test_a_policy_option_no_worker_could_apply_is_refused_when_the_task_is_defined(
    local: Celeriac, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^task shop.job: {says}"):

        @local.task(name="shop.job", **options)
        def job() -> None: ...

    assert "shop.job" not in local.tasks


def test_good_policy_options_are_accepted(local: Celeriac) -> None:
    @local.task(
        name="shop.job",
        rate_limit="5/m",
        rate_limit_key=lambda *a, **k: "tenant",
        autoretry_for=OSError,
        max_retries=None,
        retry_backoff=0,
        retry_jitter=False,
        dedupe_mode="running",
        dedupe_ttl=60,
        debounce=0,
    )
    def job() -> None: ...

    @local.task(name="shop.mail", limit="smtp", autoretry_for=[KeyError, OSError])
    def mail() -> None: ...

    assert {"shop.job", "shop.mail"} <= local.tasks.keys()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"rate_limit": "1/minute"}, r"rate_limit must be a rate"),
        ({"limit": "smpt"}, r"limit must be a name in this app's limits setting"),
        ({"max_retries": -1}, r"max_retries must be a whole number"),
        ({"dedupe_key": "k", "dedupe_mode": "runing"}, r"dedupe_mode must be 'queued'"),
        ({"dedupe_key": ""}, r"dedupe_key must be a non-empty key"),
    ],
)
def test_the_same_values_are_refused_per_call_and_nothing_is_sent(
    local: Celeriac, options: dict[str, Any], says: str
) -> None:
    @local.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ConfigurationError, match=f"^task shop.job: {says}"):
        job.apply_async(**options)
    assert local.broker.stats() == []


@pytest.mark.parametrize(
    "queue",
    [
        "reports,nightly",
        "emails ",
        " emails",
        "a\nb",
        "tab\there",
        "nb\u00a0sp",
        "z\u200bw",
        "q" * 201,
    ],
)
def test_a_queue_no_worker_could_be_started_on_is_refused_where_it_is_given(
    local: Celeriac, queue: str
) -> None:
    # `-Q a,b` is split at commas and stripped: a task sent to "reports,nightly" or to
    # "emails " waited for ever in a queue no worker could be given.
    with pytest.raises(ConfigurationError, match=r"^task shop.job: queue must be a queue name"):

        @local.task(name="shop.job", queue=queue)
        def job() -> None: ...

    @local.task(name="shop.job")
    def job_() -> None: ...

    with pytest.raises(ValueError, match=r"^task shop.job: queue must be a queue name"):
        job_.apply_async(queue=queue)
    with pytest.raises(ConfigurationError, match=r"^setting task_default_queue must be a queue"):
        local.conf.task_default_queue = queue
    assert local.broker.stats() == []


def test_an_over_long_queue_name_is_shown_cut_in_the_error(local: Celeriac) -> None:
    @local.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(
        ValueError, match=r"at most 200 characters, got 'qqq.*\.\.\. \(10,002 characters\)$"
    ):
        job.apply_async(queue="q" * 10_000)
    job.apply_async(queue="q" * 200)  # the longest allowed
    job.apply_async(queue="rapports-été_2026.v2")  # any printable text but a comma
    assert sorted(s.queue for s in local.broker.stats()) == ["q" * 200, "rapports-été_2026.v2"]


@pytest.mark.parametrize("option", ["queue", "task_id"])
def test_an_empty_queue_or_task_id_is_refused_not_taken_as_not_given(
    local: Celeriac, option: str
) -> None:
    # task_id=f"{order.ref}" with an empty ref got a random id, so a second send of the same
    # order ran again; queue=os.environ.get("QUEUE", "") went to the default queue unsaid.
    @local.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=f"^task shop.job: {option} is an empty string; pass"):
        job.apply_async(**{option: ""})
    with pytest.raises(ValueError, match=f"{option} is an empty string"):
        local.send_task("shop.job", **{option: ""})
    with pytest.raises(ValueError, match=f"{option} is an empty string"):
        job.s().set(**{option: ""}).delay()
    with pytest.raises(TypeError, match=f"^task shop.job: {option} must be a str, got int 0"):
        job.apply_async(**{option: 0})  # 0 was taken as "not given" too
    assert local.broker.stats() == []
    job.apply_async(**{option: None})  # None is "not given"
    assert [s.ready for s in local.broker.stats()] == [1]


def test_a_task_id_of_only_white_space_is_refused(local: Celeriac) -> None:
    # f"{order.ref} " with an empty ref: sent and run, the task could not be revoked or
    # looked up from the command line, which refuses such an id.
    @local.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"^task shop.job: task_id is only white space \(' '\)"):
        job.apply_async(task_id=" ")
    with pytest.raises(ValueError, match="task_id is only white space"):
        local.send_task("shop.job", task_id="\t\n")
    assert local.broker.stats() == []
    job.apply_async(task_id="order 42")  # white space inside an id is fine
    assert [s.ready for s in local.broker.stats()] == [1]


@pytest.mark.parametrize(
    "options", [{"autoretry_for": (OSError,)}, {"rate_limit_key": lambda *a, **k: "tenant"}]
)
def test_an_option_only_the_decorator_takes_is_named_when_given_per_call(
    local: Celeriac, options: dict[str, Any]
) -> None:
    @local.task(name="shop.job")
    def job() -> None: ...

    (option,) = options
    with pytest.raises(TypeError, match=f"^task shop.job: {option} can only be set on @app.task"):
        job.apply_async(**options)  # was: "an argument is not JSON-serializable"
    assert local.broker.stats() == []


def test_a_start_time_already_here_is_sent_as_due_now(local: Celeriac) -> None:
    # countdown=0 was sent with an eta a millisecond ahead: on an idle Redis it waited in
    # the delayed set for the next promotion tick, up to ~100 ms.
    import datetime as dt

    @local.task(name="shop.job")
    def job() -> None: ...

    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    for options in ({"countdown": 0}, {"countdown": -3}, {"eta": past}, {"eta": 0.0}):
        message = job.message((), **options)
        assert message.eta is None, options
    assert job.message((), countdown=0, expires=60).expires is not None  # counted from now
    assert job.message((), countdown=0.5).eta is not None  # a real delay keeps its eta


def test_an_expiry_given_per_call_counts_from_now_as_the_readme_says(local: Celeriac) -> None:
    # It counted from the countdown: expires=5 with countdown=3 expired at +8 s (a task
    # sent to give up within 5 s ran at +6.5 s), and expires=2 with countdown=6 was taken
    # and ran at +6 s.
    import datetime as dt

    @local.task(name="shop.job", expires=300)
    def job() -> None: ...

    before = time.time()
    for expires in (5, dt.timedelta(seconds=5)):
        message = job.message((), countdown=3, expires=expires)
        assert message.expires is not None and message.eta is not None
        assert before + 5 - 0.001 <= message.expires <= time.time() + 5 + 0.001, expires
    later = job.message((), countdown=3)  # the task's own expiry: from its due time
    assert later.expires is not None and later.eta is not None
    assert later.expires >= later.eta + 300 - 0.002  # the eta rounded up, expires down
    with pytest.raises(ValueError, match=r"expires=2 comes before the task is due \(6s from"):
        job.apply_async(countdown=6, expires=2)
    when = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    with pytest.raises(ValueError, match=r"comes before the task is due"):
        job.apply_async(eta=when, expires=when - dt.timedelta(seconds=1))


def test_a_per_call_time_limit_may_be_a_timedelta(local: Celeriac) -> None:
    import datetime as dt

    @local.task(name="shop.job")
    def job() -> str:
        return "ran"

    message = job.message((), time_limit=dt.timedelta(minutes=2), soft_time_limit=math.inf)
    assert message.hard_limit == 120.0
    assert message.soft_limit is not None and message.soft_limit > 50 * 365 * 86400


def test_a_per_call_hard_limit_under_the_soft_limit_is_said_once_per_task(
    local: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # apply_async(time_limit=10) under the app's soft limit of 300 s was taken silently:
    # the task was killed with no SoftTimeLimitExceeded first, its cleanup never ran.
    @local.task(name="shop.per_call_limits")
    def job() -> str:
        return "ran"

    @local.task(name="shop.own_limits", soft_time_limit=20, time_limit=30)
    def other() -> str:
        return "ran"

    with caplog.at_level(logging.WARNING, logger="celeriac"):
        job.message((), time_limit=10)
        job.message((), time_limit=5)  # the same task: said once
        job.message((), soft_time_limit=1, time_limit=10)  # fine
        other.message((), soft_time_limit=15)  # under the task's own hard limit: fine
        other.message((), soft_time_limit=40)  # over it
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        "task shop.per_call_limits sent with time_limit=10: its soft time limit (300s) is "
        "not below its hard time limit (10s)"
    )
    assert "shop.own_limits sent with soft_time_limit=40: its soft time limit (40s)" in lines[1]


def test_an_expiry_beyond_the_year_9999_is_none_and_the_task_runs(local: Celeriac) -> None:
    # Both failed every send: "OverflowError: cannot convert float infinity to integer".
    from celeriac.worker.inline import run_queued

    @local.task(name="shop.job", expires=1e306)
    def job() -> str:
        return "ran"

    assert job.message(()).expires is None  # as UNBOUNDED: it never expires
    handles = [job.delay(), job.apply_async(expires=1e306), job.apply_async(expires=1e20)]
    assert run_queued(local) == 3
    assert [h.get(timeout=1) for h in handles] == ["ran"] * 3


@pytest.mark.parametrize("option", ["countdown", "expires"])
def test_a_unix_time_given_as_seconds_from_now_is_refused_with_the_fix(
    local: Celeriac, option: str
) -> None:
    # countdown=time.time() + 60 queued the task for 56 years; expires=time.time() + 60
    # made it never expire. Both are seconds from now (eta takes a Unix time).
    import datetime as dt

    @local.task(name="shop.job")
    def job() -> None: ...

    when = time.time() + 60
    with pytest.raises(ValueError, match=rf"^task shop.job: {option}=.* looks like a Unix time"):
        job.apply_async(**{option: when})
    assert local.broker.stats() == []
    far = 30 * 365 * 86_400  # a long delay in seconds is still taken as one
    assert job.message((), **{option: dt.datetime.fromtimestamp(when, dt.UTC)})
    assert job.message((), eta=when).eta is not None
    assert job.message((), countdown=far).eta is not None


# -- per-call "no limit" reaches the worker ---------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_per_call_unbounded_time_limit_lifts_the_tasks_own_in_a_real_worker(
    checked_app: Celeriac,
    workers: WorkerProcesses,
    monkeypatch: pytest.MonkeyPatch,
    serializer: str,
) -> None:
    monkeypatch.setattr(checked_app.conf, "task_serializer", serializer)
    _start(workers)
    # Each sleeps past its task's own limit (hard 1 s; soft 0.5 s), sent with no limit.
    hard = hard_limited.apply_async((2,), time_limit=math.inf)
    soft = soft_limited.apply_async((1.5,), soft_time_limit=math.inf)
    # Was, with JSON: "ran past its hard time limit (1s) and was killed", and
    # SoftTimeLimitExceeded: the opt-out arrived as null, the task's own limit.
    assert hard.get(timeout=30) == "finished", workers.log_text()
    assert soft.get(timeout=30) == "finished", workers.log_text()
    # A later step of a workflow is built in the worker, from the workflow's JSON.
    flow = hard_limited.si(0) | hard_limited.si(2).set(time_limit=math.inf)
    assert flow.apply_async().get(timeout=30) == "finished", workers.log_text()
    # The task's own limits still apply to a send that does not lift them.
    with pytest.raises(SoftTimeLimitExceeded):
        soft_limited.apply_async((1.5,)).get(timeout=30)


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_soft_limit_too_long_for_a_timer_never_fires_and_fails_nothing(
    checked_app: Celeriac, workers: WorkerProcesses, pool: str
) -> None:
    _start(workers, "-P", pool)
    # 317 years: past what setitimer and threading's waits take (about 292 years).
    r = soft_limited.apply_async((0,), soft_time_limit=1e10)
    # Was, in the process pool: FAILURE "OverflowError: timestamp out of range for
    # platform time_t", for every run; in the threads pool a traceback of the timer thread.
    assert r.get(timeout=30) == "finished", workers.log_text()
    assert "OverflowError" not in workers.log_text()


def test_a_workflow_step_option_its_middleware_cannot_apply_is_refused_at_set() -> None:
    # A later step is built in a worker: there the value stopped the workflow.
    with pytest.raises(ConfigurationError, match="rate_limit"):
        paced.s(1).set(rate_limit="10/x")


# -- rate limit slots and expiry ------------------------------------------------------


def test_tasks_that_expire_before_their_slot_do_not_push_a_fresh_task_back(
    checked_app: Celeriac, workers: WorkerProcesses
) -> None:
    _start(workers)
    backlog = 40  # at 2/s, 20 s of slots; each expires 2 s after it is sent
    sent = checked_app.send_many([paced.message((n,), expires=2) for n in range(backlog)])
    broker = checked_app.broker

    def handled_once() -> bool:  # each message ran, expired, or waits for its slot
        return all(s.ready == 0 and s.in_flight == 0 for s in broker.stats())

    assert wait_for(handled_once, timeout=30), workers.log_text()
    # How far ahead the limiter's next free slot lies now (this reserves one slot: the
    # one a fresh task sent now would get).
    ahead = broker.rate_reserve(f"rate:task:{paced.name}:slots", PACE)
    # Was ~20 s: all 40 reserved a slot, and all but the first few expired before theirs.
    # Now only those that can start in time reserve (and, per process, one more).
    assert ahead * PACE < backlog / 2, f"{ahead:.1f}s of slots are reserved ahead"
    assert wait_for(lambda: all(r.state in ("SUCCESS", "EXPIRED") for r in sent), timeout=30)
    states = [r.state for r in sent]
    assert states.count("EXPIRED") >= backlog // 2 and "SUCCESS" in states


def test_a_mistyped_option_is_named_with_the_option_it_is_closest_to() -> None:
    # "unknown option(s) prority" gave no hint, or listed 25 options beside it.
    local = Celeriac("typos", broker="memory://")

    @local.task
    def add(x: int, y: int) -> int:
        return x + y

    hint = r"unknown option\(s\) prority \(did you mean 'priority'\?\)"
    with pytest.raises(TypeError, match=hint):
        add.apply_async((1, 2), prority=9)
    with pytest.raises(ValueError, match=hint):
        add.s(1, 2).set(prority=9)
    with pytest.raises(ConfigurationError, match=r"\(did you mean 'max_retries'\?\)"):
        local.task(max_retrys=3)(lambda: None)
    with pytest.raises(TypeError, match=r"got unknown option\(s\) zzz$"):  # nothing close
        add.apply_async((1, 2), zzz=1)
    assert local.broker.stats() == []  # nothing was sent


def test_a_celery_send_or_task_option_says_what_to_write_instead() -> None:
    # routing_key=, retry=... were "unknown option(s)" with no way forward (or, for
    # exchange, a close spelling would have pointed at the wrong option).
    local = Celeriac("migrating", broker="memory://")

    @local.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"\(routing_key is Celery's: route with queue=\.\.\.\)$"):
        add.apply_async((1, 2), routing_key="reports")
    with pytest.raises(TypeError, match=r"retry is Celery's: a send is not retried: .*maybe_done"):
        add.apply_async((1, 2), retry=True)
    with pytest.raises(
        TypeError,
        match=r"\(exchange is Celery's: route with queue=\.\.\.; did you mean 'priority' for "
        r"'prority'\?\)$",
    ):
        add.apply_async((1, 2), exchange="x", prority=3)  # a typo beside it keeps its hint
    assert local.broker.stats() == []
    with pytest.raises(ConfigurationError, match=r"\(acks_late is Celery's: a message is always"):
        local.task(acks_late=True)(lambda: None)
    with pytest.raises(ConfigurationError, match=r"retry_kwargs is Celery's: pass max_retries"):
        local.task(retry_kwargs={"max_retries": 5})(lambda: None)
    with pytest.raises(ConfigurationError, match=r"Celery's retry_backoff=True is 1 second"):
        local.task(autoretry_for=(OSError,), retry_backoff=True)(lambda: None)


def test_a_task_id_over_a_thousand_characters_is_refused(local: Celeriac) -> None:
    # 5,000-character ids were sent; a worker running 1,000 of them could not list them
    # in its slot, and the leases it could not renew were taken back and run twice.
    @local.task(name="shop.job")
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"^task shop.job: task_id is 5,000 characters long"):
        job.apply_async(task_id="k" * 5_000)
    with pytest.raises(ValueError, match=r"over 1,000: derive a short one from a long key"):
        local.send_task("shop.job", task_id="k" * 1_001)
    assert local.broker.stats() == []
    job.apply_async(task_id="k" * 1_000)
    assert [s.ready for s in local.broker.stats()] == [1]
