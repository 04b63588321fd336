"""The app and its tasks, run in-process on the memory broker (the users' testing story)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from celeriac import (
    UNBOUNDED,
    Celeriac,
    ConfigurationError,
    PayloadTooLarge,
    Reject,
    ResultTimeout,
    Retry,
    SerializationError,
    Task,
    TaskExpired,
    TaskFailed,
)
from celeriac.message import decode_message
from celeriac.task import Arguments
from celeriac.testing import run_queued


@pytest.fixture
def app() -> Celeriac:
    return Celeriac("shop", broker="memory://")


def test_task_name_defaults_to_module_and_function(app: Celeriac) -> None:
    @app.task
    def send_welcome(user_id: int) -> str:
        return f"hi {user_id}"

    assert (
        send_welcome.name == "tests.test_app.test_task_name_defaults_to_module_and_function"
        ".<locals>.send_welcome"
    )
    named = app.task(name="shop.welcome")(lambda: None)
    assert app.get_task("shop.welcome") is named


def test_unknown_task_option_is_refused_when_defined(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option.*soft_timelimit"):

        @app.task(soft_timelimit=3)
        def f() -> None: ...


def test_delay_get_and_state(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(2, 3)
    assert r.state == "PENDING" and not r.ready()
    assert run_queued(app) == 1
    assert r.get(timeout=1) == 5
    assert (r.state, r.ready(), r.successful(), r.failed()) == ("SUCCESS", True, True, False)
    assert app.AsyncResult(r.id).get(timeout=1) == 5


def test_args_and_kwargs_of_a_send_are_a_list_and_a_dict_or_none(app: Celeriac) -> None:
    # apply_async(None, ...) crashed on len(None) (Celery's signatures pass args=None),
    # "hello" was sent as five arguments, and a dict ran the task with its keys.
    @app.task(name="shop.greet")
    def greet(s: str = "you") -> str:
        return f"hi {s}"

    handles = [
        greet.apply_async(None, {"s": "ann"}),
        greet.apply_async(args=None, kwargs=None),
        app.send_task("shop.greet", args=None, kwargs={"s": "bob"}),
        app.send_task("shop.greet", args=(n for n in ["cy"])),  # any ordered iterable
        asyncio.run(greet.aapply_async(None)),
    ]
    run_queued(app)
    assert [h.get(timeout=1) for h in handles] == ["hi ann", "hi you", "hi bob", "hi cy", "hi you"]
    refusals = [
        (
            lambda: greet.apply_async("hello"),
            "got str 'hello'; for one argument write args=('hello',)",
        ),
        (lambda: greet.apply_async({"s": 1}), "got dict {'s': 1}; keyword arguments go in kwargs="),
        (
            lambda: greet.apply_async(5),
            "args must be a list or tuple of its positional arguments, got int 5",
        ),
        (lambda: app.send_task("shop.greet", args={"a"}), "got set {'a'}"),
        (
            lambda: greet.apply_async((), ["s"]),
            "kwargs must be a dict of keyword arguments, got list",
        ),
    ]
    for send, said in refusals:
        with pytest.raises(TypeError, match=re.escape("cannot send task shop.greet: ")) as refused:
            send()
        assert said in str(refused.value)
    assert app.broker.stats() == [] or all(s.ready == 0 for s in app.broker.stats())


def test_bound_task_works_bare_as_task_does(app: Celeriac) -> None:
    # @app.bound_task without parentheses: "bound_task() takes 1 positional argument but
    # 2 were given", where a bare @app.task works.
    @app.bound_task
    def whoami(self: Task[Any, Any], x: int) -> str:
        return f"{self.name} {x}"

    handle = whoami.delay(1)
    run_queued(app)
    assert whoami.bind and handle.get(timeout=1) == f"{whoami.name} 1"


def test_a_second_function_under_a_taken_task_name_is_refused(app: Celeriac) -> None:
    # It replaced the first in silence: first.delay(1) ran second, with the arguments
    # checked against first's signature.
    @app.task(name="dup")
    def first(x: int) -> str:
        return "first"

    with pytest.raises(ConfigurationError) as refused:

        @app.task(name="dup")
        def second(x: int) -> str:
            return "second"

    said = str(refused.value)
    assert said.startswith("task dup: the name is taken by ")
    assert "first (" in said and "second (" in said and "test_app.py:" in said
    assert "Give one of them another name: @app.task(name=...)" in said
    assert app.tasks["dup"] is first

    def first(x: int) -> str:  # type: ignore[no-redef]  # the same, defined again (reload)
        return "first again"

    assert app.task(name="dup")(first).fn is first  # the code as it is now


def test_a_blocking_get_on_an_event_loop_warns(app: Celeriac) -> None:
    # get() in a coroutine (a FastAPI handler) blocked every request of the server until
    # the result came, with no word.
    import warnings

    from celeriac import group

    add = app.task(name="shop.add")(lambda x, y: x + y)
    one, both = add.delay(1, 1), group(add.s(1, 2), add.s(2, 2)).delay()

    async def handler() -> None:
        for pending in (one, both):
            with pytest.raises(ResultTimeout):
                pending.get(timeout=0.05)

    with pytest.warns(RuntimeWarning, match=r"get\(\) called on a running event loop") as said:
        asyncio.run(handler())
    assert len(said) == 2 and "use await ...aget() instead" in str(said[0].message)
    assert {w.filename for w in said} == {__file__}  # the caller's line, not celeriac's
    run_queued(app)

    async def finished() -> tuple[int, list[int]]:  # nothing blocks: an eager test's get()
        return one.get(timeout=1), both.get(timeout=1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert asyncio.run(finished()) == (2, [3, 4])
        assert one.get(timeout=1) == 2  # off the loop: nothing to say


def test_apply_async_options_reach_the_message(app: Celeriac) -> None:
    @app.task(queue="emails", priority=3, expires=300)
    def send(user_id: int) -> None: ...

    before = time.time()
    r = send.apply_async((1,), countdown=0.2, priority=8, task_id="fixed", headers={"a": 1})
    (delivery,) = app.broker.fetch(["emails"], "me", limit=1, lease_seconds=30, timeout=5)
    m = decode_message(delivery.body)
    assert (r.id, m.queue, m.priority, m.headers) == ("fixed", "emails", 8, {"a": 1})
    assert m.eta is not None and m.eta >= before + 0.2
    assert m.expires is not None and m.expires >= m.eta + 299  # expiry counts from the ETA
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    m2 = send.message((1,), eta=eta, queue="other")
    assert m2.queue == "other" and m2.eta == pytest.approx(eta.timestamp())
    with pytest.raises(ValueError, match=r"priority must be a whole number from 0 to 9"):
        send.apply_async((1,), priority=10)


def test_every_task_gets_an_expiry_unless_it_opts_out(app: Celeriac) -> None:
    @app.task
    def bounded() -> None: ...

    @app.task(expires=UNBOUNDED)
    def unbounded() -> None: ...

    m = bounded.message()
    assert m.expires == pytest.approx(m.sent_at + app.conf.task_expires)
    assert unbounded.message().expires is None


def test_same_task_id_twice_runs_once(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task
    def once(x: int) -> None:
        runs.append(x)

    once.apply_async((1,), task_id="same")
    once.apply_async((1,), task_id="same")
    run_queued(app)
    once.apply_async((1,), task_id="same")  # already finished: still ignored
    run_queued(app)
    assert runs == [1]


def test_failure_is_reraised_with_its_own_type_and_remote_traceback(app: Celeriac) -> None:
    @app.task
    def charge(order: int) -> None:
        raise ValueError(f"declined {order}")

    r = charge.delay(7)
    run_queued(app, fail_fast=False)
    with pytest.raises(ValueError, match="declined 7") as info:
        r.get(timeout=1)
    assert any("Remote traceback" in note and "charge" in note for note in info.value.__notes__)
    assert r.state == "FAILURE" and r.failed()
    assert isinstance(r.info, ValueError)


def test_a_handle_answers_to_celery_s_names(app: Celeriac) -> None:
    # res.status, res.result, res.traceback... were AttributeErrors for code moving over.
    @app.task(name="shop.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="shop.charge")
    def charge() -> None:
        raise ValueError("declined")

    done, failed, unknown = add.delay(1, 2), charge.delay(), app.AsyncResult("nope")
    before = time.time()
    run_queued(app, fail_fast=False)
    assert (done.status, done.result, done.traceback, done.task_id) == ("SUCCESS", 3, None, done.id)
    assert failed.status == "FAILURE" and isinstance(failed.result, ValueError)
    assert failed.traceback is not None and failed.traceback.endswith("ValueError: declined\n")
    assert done.date_done is not None and done.date_done.tzinfo is not None
    assert before - 1 <= done.date_done.timestamp() <= time.time() + 1
    assert app.AsyncResult(done.id).name == "shop.add"  # from the stored record
    assert add.AsyncResult(done.id).get(timeout=1) == 3  # Celery's add.AsyncResult(id)
    assert repr(add.AsyncResult("x1")) == "<AsyncResult shop.add[x1]>"
    assert (unknown.status, unknown.result, unknown.traceback, unknown.date_done) == (
        "PENDING",
        None,
        None,
        None,
    )
    assert unknown.name == ""


def test_a_failure_s_traceback_starts_at_the_task_not_in_the_worker(app: Celeriac) -> None:
    # It began with the executor's two frames (_call, invoke): noise above the frame that
    # matters, in every failed task's result, `celeriac result` and log line.
    @app.task
    def charge(order: int) -> None:
        app.send_task("shop.missing", queue="a,b")  # fails in celeriac, under the task

    r = charge.delay(7)
    run_queued(app, fail_fast=False)
    record = r._record()
    assert record is not None and record.error is not None
    text = record.error.traceback
    frames = [line for line in text.splitlines() if line.startswith('  File "')]
    assert frames[0].startswith(f'  File "{__file__}"') and frames[0].endswith(" in charge")
    assert "/celeriac/worker/executor.py" not in text
    # Frames after the task's are kept, celeriac's included: the failure is in there.
    assert "/celeriac/options.py" in frames[-1] and "queue must be a queue name" in text


def test_an_error_raised_in_celeriac_alone_keeps_its_frames() -> None:
    from celeriac.options import check_send_options
    from celeriac.worker.reading import error_info

    with pytest.raises(TypeError) as caught:
        check_send_options(
            "task t", task_id=1, queue=None, headers=None, soft_time_limit=None, time_limit=None
        )
    exc = caught.value
    assert exc.__traceback__ is not None
    exc.__traceback__ = exc.__traceback__.tb_next  # only celeriac's frame is left
    text = error_info(exc).traceback
    assert '/celeriac/options.py", line ' in text  # not dropped: there is nothing else


def test_exception_of_a_type_not_loaded_here_becomes_task_failed(app: Celeriac) -> None:
    from celeriac.brokers.records import Lease, Outgoing
    from celeriac.message import ErrorInfo, ResultRecord, encode_result

    app.broker.send([Outgoing("x", "q", b"{}")])
    (d,) = app.broker.fetch(["q"], "me", limit=1, lease_seconds=30, timeout=0)
    record = ResultRecord(
        state="FAILURE",
        task="t",
        error=ErrorInfo(type="somelib.errors.Boom", message="boom", traceback="tb"),
    )
    app.broker.complete(Lease(d.id, d.queue, d.lease.token), encode_result(record), 60)
    with pytest.raises(TaskFailed, match=r"somelib.errors.Boom: boom") as info:
        app.AsyncResult("x").get(timeout=1)
    assert info.value.remote_traceback == "tb"


def test_run_queued_reraises_the_task_exception(app: Celeriac) -> None:
    @app.task
    def broken() -> None:
        raise KeyError("missing")

    broken.delay()
    with pytest.raises(KeyError, match="missing"):
        run_queued(app)


def test_run_queued_runs_a_task_that_came_due_while_it_looked(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A retry with a short backoff could come due between run_queued's empty fetch and
    # its look at the queues' counts: ready by then, not delayed, so it was left unrun.
    @app.task
    def soon() -> str:
        return "ran"

    fetch = app.broker.fetch

    def fetch_then_stall(*args: Any, **kwargs: Any) -> Any:
        got = fetch(*args, **kwargs)
        if not got:
            time.sleep(0.1)  # a loaded machine: the countdown below runs out meanwhile
        return got

    monkeypatch.setattr(app.broker, "fetch", fetch_then_stall)
    r = soon.apply_async(countdown=0.05)
    assert run_queued(app, include_delayed=True) == 1
    assert r.get(timeout=0) == "ran"


def test_get_times_out_with_a_timeout_error(app: Celeriac) -> None:
    @app.task
    def never_run() -> None: ...

    r = never_run.delay()
    with pytest.raises(ResultTimeout, match=r"did not finish within 0.05s") as info:
        r.get(timeout=0.05)
    assert isinstance(info.value, TimeoutError)


def test_bound_task_sees_its_request(app: Celeriac) -> None:
    @app.bound_task()
    def whoami(self: Task[Any, Any], x: int) -> dict[str, Any]:
        return {
            "id": self.request.id,
            "retries": self.request.retries,
            "delivery_count": self.request.delivery_count,
            "x": x,
        }

    r = whoami.delay(5)
    run_queued(app)
    assert r.get(timeout=1) == {"id": r.id, "retries": 0, "delivery_count": 1, "x": 5}


def test_async_tasks_and_async_faces(app: Celeriac) -> None:
    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def scenario() -> int:
        r = await double.adelay(21)
        await asyncio.to_thread(run_queued, app)
        return await r.aget(timeout=1)

    assert asyncio.run(scenario()) == 42


def test_cancelled_agets_leave_later_agets_and_shutdown_free(app: Celeriac) -> None:
    # A web handler that gives up on aget() (a request timeout) must not keep a thread of
    # the default executor: after more give-ups than it has threads, aget() and adelay()
    # still work and asyncio.run() returns.
    @app.task
    def double(x: int) -> int:
        return 2 * x

    done = double.delay(21)
    run_queued(app)
    queued = [double.apply_async((i,), queue="nobody-consumes-this") for i in range(40)]

    async def scenario() -> int:
        for r in queued:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.aget(timeout=60), 0.05)
        await asyncio.wait_for(double.adelay(1), 15)
        return await asyncio.wait_for(done.aget(timeout=15), 15)

    got: list[int] = []
    runner = threading.Thread(target=lambda: got.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "asyncio.run() did not return"
    assert got == [42]


def test_keyword_arguments_from_newer_code_are_dropped_with_a_warning(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    def old(a: int) -> int:
        return a

    # A newer producer's code takes added_in_v2 (this process's old() would refuse it).
    r = app.send_task(old.name, kwargs={"a": 1, "added_in_v2": True})
    with caplog.at_level(logging.WARNING, logger="celeriac.worker"):
        run_queued(app)
    assert r.get(timeout=1) == 1
    assert "dropped keyword argument(s) added_in_v2" in caplog.text


def test_expired_task_is_not_run(app: Celeriac) -> None:
    runs: list[int] = []

    @app.task
    def late() -> None:
        runs.append(1)

    r = late.apply_async(expires=0.01)
    time.sleep(0.05)
    run_queued(app)
    assert runs == [] and r.state == "EXPIRED"
    with pytest.raises(TaskExpired):
        r.get(timeout=1)


def test_retry_and_reject(app: Celeriac) -> None:
    attempts: list[int] = []

    @app.bound_task()
    def flaky(self: Task[Any, Any]) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise Retry(delay=0)
        return self.request.retries

    @app.task
    def refuse() -> None:
        raise Reject("bad input")

    r, rej = flaky.delay(), refuse.delay()
    run_queued(app)
    assert r.get(timeout=1) == 2 and attempts == [0, 1, 2]
    (letter,) = app.broker.dead_letters()
    assert letter.id == rej.id and "bad input" in letter.reason
    assert rej.state == "FAILURE"


def test_progress_and_track_started(app: Celeriac) -> None:
    app.conf.task_track_started = True
    seen: list[str] = []

    @app.bound_task()
    def long(self: Task[Any, Any]) -> None:
        seen.append(app.AsyncResult(self.request.id).state)
        self.progress(3, 10)
        seen.append(str(app.AsyncResult(self.request.id).info))

    long.delay()
    run_queued(app)
    assert seen == ["STARTED", "{'done': 3, 'total': 10}"]


def test_ignore_result(app: Celeriac) -> None:
    @app.task(ignore_result=True)
    def fire_and_forget() -> int:
        return 1

    r = fire_and_forget.delay()
    run_queued(app)
    assert r.state == "PENDING"


def test_a_task_that_ignores_its_result_leaves_no_retry_or_started_state(
    app: Celeriac,
) -> None:
    # Its success stores nothing, so nothing replaced the RETRY state a retry stored (nor
    # a tracked STARTED): a welcome e-mail sent on its second try read RETRY, with the
    # first try's error, for a day (result_expires) after it had gone out.
    runs: list[int] = []

    @app.bound_task(ignore_result=True, autoretry_for=(OSError,), retry_backoff=0.01)
    def send_welcome(self: Task[Any, Any]) -> None:
        runs.append(self.request.retries)
        if self.request.retries == 0:
            raise OSError("smtp timeout")

    @app.task(ignore_result=True, track_started=True)
    def send_receipt() -> None:
        pass

    @app.task(ignore_result=True, autoretry_for=(OSError,), max_retries=1, retry_backoff=0.01)
    def always_down() -> None:
        raise OSError("smtp down")

    sent, receipt, failed = send_welcome.delay(), send_receipt.delay(), always_down.delay()
    run_queued(app, include_delayed=True, fail_fast=False)
    assert runs == [0, 1]
    for done in (sent, receipt):
        assert (done.state, done.info, app.broker.get_result(done.id)) == ("PENDING", None, None)
    with pytest.raises(OSError, match="smtp down"):  # a failure is still stored
        failed.get(timeout=1)


def test_ignore_result_and_track_started_per_call(app: Celeriac) -> None:
    # Accepted by apply_async, carried in the message, and then not read: the worker
    # looked at the task's own options only, so the call's choice did nothing.
    states: list[str] = []

    @app.bound_task()
    def add(self: Task[Any, Any], x: int, y: int) -> int:
        states.append(app.AsyncResult(self.request.id).state)
        return x + y

    quiet = add.apply_async((1, 2), ignore_result=True)
    tracked = add.apply_async((3, 4), track_started=True)
    plain = add.delay(5, 6)
    run_queued(app)
    assert states == ["PENDING", "STARTED", "PENDING"]
    assert (quiet.state, tracked.get(timeout=1), plain.get(timeout=1)) == ("PENDING", 7, 11)

    @app.task(ignore_result=True)
    def fire_and_forget() -> int:
        return 1

    kept = fire_and_forget.apply_async(ignore_result=False)  # the call overrides the task
    run_queued(app)
    assert kept.get(timeout=1) == 1
    with pytest.raises(ConfigurationError, match="track_started must be True or False"):
        add.apply_async((1, 2), track_started="yes")


def test_eager_mode_runs_at_once(app: Celeriac) -> None:
    app.conf.task_always_eager = True

    @app.task
    def square(x: int) -> int:
        return x * x

    assert square.delay(4).get(timeout=0) == 16


def test_payload_guard(app: Celeriac, caplog: pytest.LogCaptureFixture) -> None:
    @app.task
    def ingest(rows: list[int], note: str = "") -> None: ...

    with caplog.at_level(logging.WARNING):
        ingest.delay(list(range(5000)))
    assert "largest part is positional argument 0" in caplog.text
    with pytest.raises(PayloadTooLarge, match=r"argument 'note'.*pass its id"):
        ingest.delay([1], note="x" * 300_000)
    assert sum(s.ready for s in app.broker.stats()) == 1  # the refused one never reached it


def test_the_size_errors_name_the_part_that_is_large_even_when_it_is_no_argument(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # An over-long task id was reported as "the largest argument is positional argument 0
    # (1 bytes)", with advice to pass an id instead of the data.
    @app.task
    def ping(n: int) -> int:
        return n

    # (apply_async refuses an id over 1,000 characters before this: a built message.)
    built = ping.message((1,))
    built.id = "i" * 300_000
    with pytest.raises(PayloadTooLarge, match=r"largest part is the task id \(300,002 bytes\)"):
        app.publish(built)
    with pytest.raises(PayloadTooLarge, match=r"header 'trace' .*Keep the header 'trace' short"):
        ping.apply_async((1,), headers={"trace": "t" * 300_000})
    built.id = "j" * 20_000
    with caplog.at_level(logging.WARNING):
        sent = app.publish(built)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "largest part is the task id (20,002 bytes)" in warning
    assert "Keep the task id short" in warning and "pass its id" not in warning
    assert f"task {ping.name}[{'j' * 200}... (20,000 characters)]" in warning  # not the whole id
    assert sent.id == "j" * 20_000


def test_a_chain_too_large_to_send_says_it_is_the_chain_not_an_option(app: Celeriac) -> None:
    # "its largest part is option 'canvas' ... Keep the option 'canvas' short", of a chain
    # of 4,000 steps: an option the caller never set, and advice no one could follow.
    from celeriac import chain

    inc = app.task(name="shop.inc")(lambda n: n + 1)
    with pytest.raises(PayloadTooLarge) as refused:
        chain(*[inc.s() for _ in range(4_000)]).apply_async((0,))
    said = str(refused.value)
    assert "its largest part is the workflow steps it carries (" in said, said
    assert "split a long chain, run its later part from a task that sends it" in said
    assert "'canvas'" not in said


@pytest.mark.parametrize("eta", [math.nan, math.inf, -math.inf])
def test_a_built_message_with_an_eta_that_is_no_time_is_refused_clearly(
    app: Celeriac, eta: float
) -> None:
    # apply_async refuses such an eta; a message built by hand and given one reached the
    # broker, where Redis's send raised a bare "cannot convert float NaN to integer".
    @app.task
    def ping() -> None: ...

    message = ping.message(())
    message.eta = eta
    with pytest.raises(ValueError, match=r"\]: eta=.* is not a finite Unix time, so it was not"):
        app.publish(message)
    with pytest.raises(ValueError, match="not a finite Unix time"):
        app.publish_many([ping.message(()), message])
    assert sum(s.ready + s.delayed for s in app.broker.stats()) == 0  # nothing reached it


def test_unserializable_argument_fails_at_delay(app: Celeriac) -> None:
    @app.task
    def save(obj: Any) -> None: ...

    with pytest.raises(SerializationError, match=r"argument 0 .*object.*ids"):
        save.delay(object())


def test_arguments_that_do_not_fit_fail_at_the_caller_and_nothing_is_sent(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def tagged(self: Task[Any, Any], x: int, *, tag: str) -> str:
        return f"{tag}{x}"

    with pytest.raises(
        TypeError, match=r"cannot send task .*add: missing a required argument: 'y'"
    ):
        add.delay(1)
    with pytest.raises(
        TypeError, match=r"too many positional arguments; the function is add\(x, y\)$"
    ):
        add.apply_async((1, 2, 3))
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        add.delay(1, x=2)
    with pytest.raises(TypeError, match=r"'tag'; the function is tagged\(x, \*, tag\)$"):
        tagged.delay(1)  # the bound task's own first parameter is not the caller's
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        asyncio.run(add.adelay(1, 2, z=3))
    assert sum(s.ready for s in app.broker.stats()) == 0
    add.delay(1, y=2)
    tagged.delay(1, tag="#")
    run_queued(app)


# Every kind of signature, for the test below.
def _plain(x, y): ...  # type: ignore[no-untyped-def]
def _default(x, y=1): ...  # type: ignore[no-untyped-def]
def _star(x, *a): ...  # type: ignore[no-untyped-def]
def _kw_only(x, *, k): ...  # type: ignore[no-untyped-def]
def _kw_default(x, *, k=2): ...  # type: ignore[no-untyped-def]
def _pos_only_var_keywords(x, /, y, **kw): ...  # type: ignore[no-untyped-def]
def _var_keywords(x, y, **kw): ...  # type: ignore[no-untyped-def]
def _anything(*a, **kw): ...  # type: ignore[no-untyped-def]
def _pos_only(x, /, y): ...  # type: ignore[no-untyped-def]
def _nothing(): ...  # type: ignore[no-untyped-def]
def _everything(a, b=2, *c, d, e=5, **f): ...  # type: ignore[no-untyped-def]


SIGNATURES = [_plain, _default, _star, _kw_only, _kw_default, _pos_only_var_keywords]
SIGNATURES += [_var_keywords, _anything, _pos_only, _nothing, _everything]


def _accepts(check: Callable[[], object]) -> bool:
    try:
        check()
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("fn", SIGNATURES, ids=lambda fn: fn.__name__)
def test_the_quick_argument_check_agrees_with_python(fn: Callable[..., Any]) -> None:
    """Every shape of call: the counting check refuses exactly what a real call
    (``inspect.Signature.bind``) refuses."""
    names = ["x", "y", "k", "a", "b", "d", "e", "kw"]
    check, signature = Arguments(fn, bound=False), inspect.signature(fn)
    for n in range(5):
        for r in range(4):
            for combo in itertools.combinations(names, r):
                args, kwargs = tuple(range(n)), dict.fromkeys(combo, 1)
                python = _accepts(lambda: signature.bind(*args, **kwargs))  # noqa: B023 - now
                ours = _accepts(lambda: check.check("t", args, kwargs))  # noqa: B023 - now
                assert ours == python, (args, kwargs)


def test_send_task_by_name(app: Celeriac) -> None:
    @app.task(name="shop.tasks.send_welcome")
    def send_welcome(user_id: int) -> str:
        return f"sent {user_id}"

    r = app.send_task("shop.tasks.send_welcome", args=(42,))
    run_queued(app)
    assert r.get(timeout=1) == "sent 42"
    other = Celeriac("producer-only", broker="memory://")
    assert other.send_task("not.imported.here", args=(1,)).state == "PENDING"


def test_send_task_by_name_takes_callbacks_as_apply_async_does(app: Celeriac) -> None:
    # Celery's send_task(name, args, link=..., link_error=...) was "unknown option link".
    @app.task(name="shop.tasks.charge")
    def charge(order_id: int) -> int:
        if order_id < 0:
            raise ValueError(f"no order {order_id}")
        return order_id * 10

    ran: list[str] = []

    @app.task(name="shop.tasks.receipt")
    def receipt(total: int) -> None:
        ran.append(f"receipt for {total}")

    @app.task(name="shop.tasks.alert")
    def alert(failed: dict[str, Any]) -> None:
        ran.append(f"alerted for {failed['id']}")

    ok = app.send_task("shop.tasks.charge", args=(4,), link=receipt.s())
    bad = app.send_task("shop.tasks.charge", args=(-1,), link_error=[alert.s()])
    run_queued(app, fail_fast=False)
    assert ok.get(timeout=1) == 40
    with pytest.raises(ValueError, match="no order -1"):
        bad.get(timeout=1)
    assert sorted(ran) == sorted(["receipt for 40", f"alerted for {bad.id}"])


def test_memory_broker_refuses_worker_processes(app: Celeriac) -> None:
    from celeriac.worker import Worker

    with pytest.raises(ConfigurationError, match="inside one process"):
        Worker(app, ["default"], 1)


def test_the_version_constant_matches_pyproject() -> None:
    import tomllib
    from pathlib import Path

    import celeriac

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert celeriac.__version__ == pyproject["project"]["version"]
