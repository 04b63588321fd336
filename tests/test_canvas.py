"""Issue 6: canvas — signatures, chain, group, chord, nesting, links, map and chunks.

These run in the test process on the in-memory broker (run_queued). Real worker processes
are in test_canvas_workers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from celeriac import Celeriac
from celeriac.brokers.memory import MemoryBroker
from celeriac.canvas import Canvas, Signature, chain, chord, from_dict, group, signature
from celeriac.cli import cli
from celeriac.errors import (
    BrokerConnectionError,
    BrokerError,
    ChordError,
    ConfigurationError,
    PayloadTooLarge,
    SerializationError,
)
from celeriac.group_result import GroupResult
from celeriac.middleware import MiddlewareStack, default_middleware
from celeriac.middleware import canvas as canvas_middleware
from celeriac.middleware.base import HARD_DEADLINE, Outcome
from celeriac.middleware.flow import join_key
from celeriac.result import AsyncResult, group_key
from celeriac.testing import run_queued, wait_for
from celeriac.worker.executor import Executor
from tests.apps import canvas as tasks
from tests.apps.canvas import (
    add,
    async_double,
    boom,
    collect,
    errback,
    flaky,
    identity,
    mul,
    rejects,
    reports_progress,
    tsum,
)
from tests.conftest import ROOT, Ledger

ETL = ROOT / "examples" / "etl"


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, ledger: Ledger) -> Iterator[Celeriac]:
    """tests.apps.canvas's app on a fresh in-memory broker, writing to this test's ledger."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(tasks.app.conf, "broker_url", "memory://")
    tasks.app.use_broker(MemoryBroker())
    yield tasks.app
    tasks.app.broker.close()


def run(app: Celeriac) -> int:
    """Run everything queued; task failures are expected in some tests."""
    return run_queued(app, fail_fast=False)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# -- signatures ------------------------------------------------------------------------


def test_signature_partial_arguments_options_and_plain_data(app: Celeriac) -> None:
    sig = mul.s(2).set(queue="math", countdown=5, priority=7)
    assert sig(3) == 6  # runs here, partial arguments completed
    node = sig.to_dict()
    assert node == {
        "kind": "task",
        "task": mul.name,
        "args": [2],
        "options": {"queue": "math", "countdown": 5, "priority": 7},
    }
    assert json.loads(json.dumps(node)) == node  # plain JSON data
    assert from_dict(node, app).to_dict() == node
    flow = add.s(1, 1) | add.s(2) | mul.si(3, 4).link(identity.s())
    assert from_dict(flow.to_dict(), app).to_dict() == flow.to_dict()

    r = add.s(2).set(priority=7).delay(40)
    (delivery,) = app.broker.fetch(["default"], "t", limit=1, lease_seconds=5, timeout=0)
    assert delivery.priority == 7 and delivery.id == r.id
    app.broker.requeue(delivery.lease, count_delivery=False)
    run(app)
    assert r.get(timeout=1) == 42


def test_set_refuses_an_unknown_option(app: Celeriac) -> None:
    with pytest.raises(ValueError, match="colour"):
        add.s(1, 2).set(colour="red")
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        (add.s(1, 2) | add.s(3)).set(priority=10)


def test_a_workflow_with_a_step_that_can_never_run_is_refused_before_sending(
    app: Celeriac,
) -> None:
    refused = {
        "step 2 of the chain: .*too many positional": add.s(1, 2) | add.s(3, 4),
        "member 2 of the group: .*missing a required argument: 'y'": group(add.s(1, 2), add.s(1)),
        "the chord's body: .*too many positional": chord([add.s(1, 1)], tsum.s(0)),
        "a link error callback: .*too many": add.s(1, 2).link_error(errback.s("extra")),
        "step 1 of the chain: .*missing a required argument: 'x'": mul.si() | identity.s(),
    }
    for message, flow in refused.items():
        with pytest.raises(TypeError, match=message):
            flow.apply_async()
    assert sum(s.ready for s in app.broker.stats()) == 0  # nothing of any of them was sent
    fine = [
        add.s(1, 2) | add.s(3) | mul.si(2, 5),  # each result prepended, unless immutable
        chord([add.s(1, 1), add.s(2, 2)], tsum.s()),  # the body gets the list of results
        add.s(1, 2).link(identity.s()),
        signature("not.registered.here", args=(1, 2, 3), app=app),  # not checked
    ]
    for flow in fine:
        flow.apply_async()
    assert add.s(2).apply_async((1,)).id  # partial arguments completed at send


def test_an_argument_that_is_not_json_is_named_where_it_sits_in_the_workflow(app: Celeriac) -> None:
    # The first message carries the rest of the workflow, so encoding it named the first
    # task (whose arguments were fine) and "an argument": add's, never mul's or 'y'.
    bad = object()
    refused: list[tuple[str, Canvas]] = [
        (
            "step 2 of the chain: cannot send task {}: positional argument 0",
            add.s(1, 2) | mul.s(bad),
        ),
        ("the chord's body: cannot send task {}: argument 'y'", chord([add.s(1, 1)], mul.s(y=bad))),
        ("a link callback: cannot send task {}: argument 'y'", add.s(1, 2).link(mul.si(2, y=bad))),
        (
            "member 2 of the group: cannot send task {}: positional argument 0",
            group(add.s(1, 2), mul.s(bad)),
        ),
    ]
    for message, flow in refused:
        with pytest.raises(SerializationError, match=re.escape(message.format(mul.name))):
            flow.apply_async()
    assert sum(s.ready for s in app.broker.stats()) == 0  # nothing of any of them was sent


def test_a_signature_known_by_name_routes_to_its_queue(app: Celeriac) -> None:
    remote = signature("billing.charge", app=app, queue="billing")
    r = (add.s(1, 2) | remote).apply_async()
    run_queued(app, queues=["default"])
    stats = {s.queue: s.ready for s in app.broker.stats()}
    assert stats["billing"] == 1  # sent on to the queue a worker with that code consumes
    (delivery,) = app.broker.fetch(["billing"], "t", limit=1, lease_seconds=5, timeout=0)
    assert delivery.id == r.id


# -- chain -----------------------------------------------------------------------------


def test_chain_passes_each_result_on(app: Celeriac, ledger: Ledger) -> None:
    r = (add.s(1, 2) | add.s(10) | mul.s(2)).apply_async()
    assert isinstance(r, AsyncResult)
    assert run(app) == 3
    assert r.get(timeout=1) == 26
    # Steps have ids derived from the chain's: <id>:s0, <id>:s1, and the last is <id>.
    assert app.AsyncResult(f"{r.id}:s0").get(timeout=1) == 3
    assert app.AsyncResult(f"{r.id}:s1").get(timeout=1) == 13
    assert list(ledger.count("run")) == [f"{r.id}:s0", f"{r.id}:s1"]


def test_immutable_signature_ignores_the_previous_result(app: Celeriac) -> None:
    r = chain(add.s(1, 2), add.si(10, 10), add.s(1)).apply_async()
    run(app)
    assert r.get(timeout=1) == 21


def test_a_failed_step_stops_the_chain_and_runs_link_error_once(
    app: Celeriac, ledger: Ledger
) -> None:
    flow = chain(add.s(1, 2), boom.s(), add.s(100), mul.s(2)).link_error(errback.s())
    r = flow.apply_async()
    run(app)
    with pytest.raises(ValueError, match="boom 3") as raised:
        r.get(timeout=1)
    assert any(f"{r.id}:s1" in note for note in raised.value.__notes__)  # names the step
    assert ledger.count("run") == Counter({f"{r.id}:s0": 1, f"{r.id}:s1": 1})  # later: not run
    assert app.AsyncResult(f"{r.id}:s2").state == "FAILURE"
    errbacks = ledger.count("errback")
    assert len(errbacks) == 1 and sum(errbacks.values()) == 1
    (errback_id,) = errbacks
    error = app.AsyncResult(errback_id).get(timeout=1)
    assert error == {
        "id": f"{r.id}:s1",
        "task": boom.name,
        "type": "builtins.ValueError",
        "message": "boom 3",
    }


def test_a_group_errback_that_ignores_its_result_runs_once(app: Celeriac, ledger: Ledger) -> None:
    """The failed member sends the errback at once; the member completing the join sends
    it again under the same id. With ignore_result the errback left no result, so the
    broker took the second send as new and it ran twice."""
    late = add.s(2, 2).set(queue="later")
    r = group(boom.s(1), late).link_error(tasks.quiet_errback.s()).apply_async()
    run_queued(app, [app.conf.task_default_queue], fail_fast=False)  # boom, then the errback
    assert ledger.count("errback") == Counter({f"{r.id}:e0": 1})
    run(app)  # the late member completes the join
    assert ledger.count("errback") == Counter({f"{r.id}:e0": 1})
    assert ledger.count("run") == Counter({f"{r.id}:0": 1, f"{r.id}:1": 1})


def test_a_retried_step_continues_the_chain_once_it_succeeds(app: Celeriac, ledger: Ledger) -> None:
    r = (flaky.s(5) | add.s(1)).apply_async()
    run_queued(app, include_delayed=True)
    assert r.get(timeout=1) == 6
    assert ledger.count("run") == Counter({f"{r.id}:s0": 2, r.id: 1})


def test_link_on_a_signature_gets_the_result(app: Celeriac) -> None:
    r = add.s(2, 3).link(mul.s(10)).apply_async()
    run(app)
    assert r.get(timeout=1) == 5
    assert app.AsyncResult(f"{r.id}:l0").get(timeout=1) == 50


# -- group -----------------------------------------------------------------------------


def test_a_callback_that_is_no_signature_is_refused_where_it_is_given(app: Celeriac) -> None:
    # Taken, it failed at send with "'str' object has no attribute 'to_dict'".
    with pytest.raises(TypeError, match=r"link\(\) takes a signature, .* got 'oops' \(str\)"):
        add.s(1, 1).link("oops")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"link_error\(\) takes a signature, .*\(builtin_"):
        chain(add.s(1, 1), identity.s()).link_error(print)  # type: ignore[arg-type]


def test_an_empty_group_says_it_is_empty(app: Celeriac) -> None:
    # It said "group() knows no app: build its signatures from tasks".
    with pytest.raises(ValueError, match=r"group\(\) has no members, .* \(if ids: group"):
        group(add.s(i, i) for i in []).apply_async()


def test_completed_count_counts_the_members_that_succeeded_as_celery_s(app: Celeriac) -> None:
    # It counted every finished member: after revoking 10 of 12, code ported from Celery
    # that reports "N succeeded" read 12.
    g = group([add.s(1, 1), boom.s(), add.s(2, 2), group([add.s(3, 3), boom.s()])])
    handle = g.apply_async()
    assert isinstance(handle, GroupResult)
    handle.results[2].revoke()
    run_queued(app, fail_fast=False)
    assert handle.ready() and handle.completed_count() == 1


def test_group_results_get_aget_and_completed_count(app: Celeriac) -> None:
    g = group(add.s(i, i) for i in range(5)).apply_async()
    assert isinstance(g, GroupResult) and len(g) == 5
    assert g.completed_count() == 0 and not g.ready()
    run_queued(app, max_tasks=2)
    assert g.completed_count() == 2
    run(app)
    assert g.ready() and g.successful() and not g.failed()
    assert g.get(timeout=1) == [0, 2, 4, 6, 8]
    assert asyncio.run(g.aget(timeout=1)) == [0, 2, 4, 6, 8]
    restored = GroupResult.restore(app, g.id)
    assert restored is not None and restored.get(timeout=1) == [0, 2, 4, 6, 8]


def test_group_iterates_in_completion_order(app: Celeriac) -> None:
    # Priorities make the members finish in the order 2, 0, 1.
    g = group(add.s(0, 0).set(priority=5), add.s(1, 1), add.s(2, 2).set(priority=9)).delay()
    members = iter(g)
    finished = []
    for _ in range(3):
        run_queued(app, max_tasks=1)
        finished.append(next(members).id)
    assert finished == [f"{g.id}:2", f"{g.id}:0", f"{g.id}:1"]


def test_group_link_gets_the_list_of_results(app: Celeriac) -> None:
    g = group(add.s(1, 1), add.s(2, 2)).link(tsum.s()).apply_async()
    run(app)
    assert g.get(timeout=1) == [2, 4]
    assert app.AsyncResult(f"{g.id}:l0").get(timeout=1) == 6


class CountingBroker:
    """Counts every call made to the broker it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def test_a_group_of_20000_is_sent_in_a_constant_number_of_round_trips(app: Celeriac) -> None:
    counting = CountingBroker(app.broker)
    app.use_broker(counting)  # type: ignore[arg-type]
    calls = {}
    for size in (10, 20_000):
        counting.calls.clear()
        g = group(add.s(i, i) for i in range(size)).apply_async()
        calls[size] = dict(counting.calls)
        assert len(g) == size
    assert calls[20_000]["send"] == 1
    assert calls[20_000] == calls[10], "round trips grew with the group's size"
    assert sum(s.ready for s in counting.inner.stats()) == 20_010
    counting.calls.clear()
    chord([add.s(i, i) for i in range(20_000)], tsum.s()).apply_async()
    assert counting.calls["send"] == 1


def test_map_starmap_and_chunks(app: Celeriac) -> None:
    mapped = async_double.map([1, 2, 3]).apply_async()
    starred = add.starmap([(1, 2), (3, 4)]).apply_async()
    chunked = add.chunks(((i, i) for i in range(10)), 4).apply_async()
    async_chunks = async_double.chunks(([i] for i in range(5)), 2).apply_async()
    assert len(chunked) == 3  # 10 calls in 3 messages
    run(app)
    assert mapped.get(timeout=1) == [2, 4, 6]
    assert starred.get(timeout=1) == [3, 7]
    assert chunked.get(timeout=1) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    assert async_chunks.get(timeout=1) == [[0, 2], [4, 6], [8]]


# -- chord -----------------------------------------------------------------------------


def test_a_chord_of_10000_completes_once_with_results_in_member_order(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELERIAC_TEST_LEDGER")  # 10,000 ledger lines would only cost time
    # Members finish in an order other than their own: higher priority first.
    header = [identity.s(i).set(priority=i % 10) for i in range(10_000)]
    r = chord(header, collect.s()).apply_async()
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    # Naming the queue spares run_queued a broker.stats() call per task.
    assert run_queued(app, queues=["default"]) == 10_001
    assert r.get(timeout=1) == list(range(10_000))
    assert ledger.count("callback") == Counter({r.id: 1})
    assert app.broker.join_values(join_key(f"{r.id}:h")) == {}  # dropped once the body went


@pytest.mark.parametrize("crashing", ["first", "last"])
def test_a_member_that_continues_twice_fires_the_callback_once(
    app: Celeriac, ledger: Ledger, crashing: str
) -> None:
    """A member continues the workflow, then its worker dies before the commit: the member
    is delivered again and continues again. The callback must still run exactly once."""
    r = chord([add.s(i, i) for i in range(3)], tsum.s()).apply_async()
    if crashing == "last":
        run_queued(app, max_tasks=2)
    executor = Executor(app, "doomed")
    (delivery,) = app.broker.fetch(["default"], "doomed", limit=1, lease_seconds=30, timeout=0)
    job, skip = executor.prepare(delivery)
    assert skip is None
    executor.execute(job)  # continued (joined; the last one also sent the callback) ...
    app.broker.requeue(delivery.lease)  # ... and died before settling
    run(app)
    assert r.get(timeout=1) == 0 + 2 + 4
    assert ledger.count("run")[delivery.id] == 2
    assert ledger.count("callback") == Counter({r.id: 1})


def test_a_failing_member_stops_the_chord_and_is_named(app: Celeriac, ledger: Ledger) -> None:
    r = chord([add.s(1, 1), boom.s("member"), add.s(2, 2)], tsum.s()).apply_async()
    run(app)
    assert not ledger.count("callback"), "the callback ran"
    with pytest.raises(ChordError) as raised:
        r.get(timeout=1)
    message = str(raised.value)
    assert f"chord member 1 ({boom.name}[{r.id}:h:1])" in message
    assert "ValueError: boom member" in message
    assert r.state == "FAILURE"


def test_on_error_continue_passes_errors_in_the_list(app: Celeriac, ledger: Ledger) -> None:
    r = chord([add.s(1, 1), boom.s("x"), add.s(2, 2)], collect.s(), on_error="continue").delay()
    run(app)
    first, error, last = r.get(timeout=1)
    assert (first, last) == (2, 4)
    assert error == {
        "id": f"{r.id}:h:1",
        "task": boom.name,
        "type": "builtins.ValueError",
        "message": "boom x",
    }
    assert ledger.count("callback") == Counter({r.id: 1})


def test_a_member_whose_result_is_not_json_is_named_in_the_join(app: Celeriac) -> None:
    # The join recorded such a result as an error of task "?" with id "?": the chord
    # failed with "chord member 1 (?[?]) failed", and the on_error="continue" list held it.
    stopped = chord([add.s(1, 1), tasks.unstorable.s()], tsum.s()).apply_async()
    kept = chord([add.s(1, 1), tasks.unstorable.s()], collect.s(), on_error="continue").delay()
    run(app)
    named = f"chord member 1 ({tasks.unstorable.name}[{stopped.id}:h:1]) failed"
    with pytest.raises(ChordError, match=re.escape(named)):
        stopped.get(timeout=1)
    _, error = kept.get(timeout=1)
    assert (error["id"], error["task"]) == (f"{kept.id}:h:1", tasks.unstorable.name)
    assert "not JSON-serializable" in error["message"]


def test_a_chord_sent_again_under_its_id_after_forget_joins_afresh(app: Celeriac) -> None:
    # The finished join was kept: the second run's body ran when its first member ended,
    # with the first run's values, and the second run's own results were dropped.
    first = chord([identity.s(1), identity.s(2)], collect.s()).set(task_id="report-1").delay()
    run(app)
    assert first.get(timeout=1) == [1, 2]
    first.forget()
    again = chord([identity.s(10), identity.s(20)], collect.s()).set(task_id="report-1").delay()
    run(app)
    assert again.get(timeout=1) == [10, 20]
    assert app.broker.join_values(join_key("report-1:h")) == {}  # dropped once the body went


@pytest.mark.parametrize(
    "build",
    [
        lambda: group([add.s(1, 1).set(task_id="x"), add.s(2, 2).set(task_id="x")]),
        lambda: chord([add.s(1, 1).set(task_id="x"), add.s(2, 2).set(task_id="x")], collect.s()),
        lambda: chain(add.s(1, 1).set(task_id="x"), add.s(2).set(task_id="x"), identity.s()),
        lambda: chord([add.s(1, 1).set(task_id="x")], collect.s().set(task_id="x")),
        lambda: chord([add.s(1, 1)], collect.s()).set(task_id="x") | add.s(1).set(task_id="x"),
    ],
    ids=["group", "chord header", "chain", "chord body and member", "chain and chord"],
)
def test_two_tasks_of_one_workflow_under_one_id_are_refused(
    app: Celeriac, build: Callable[[], Signature]
) -> None:
    # The second send of an id is a no-op: the group gave the first member's result for
    # both, and the chord's body or the chain's next step was never sent (stuck for ever).
    with pytest.raises(ValueError, match=r"task id 'x' is given to two tasks of this workflow"):
        build().apply_async()
    assert app.broker.stats() == [] or [s.ready for s in app.broker.stats()] == [0]


def test_a_new_chord_whose_members_have_ids_of_earlier_tasks_is_refused(app: Celeriac) -> None:
    # Members under business keys, sent again in a new chord once one had failed: none ran
    # again, and the new chord's body was never sent, with nothing queued or running.
    first = chord([add.s(i, i).set(task_id=f"resize-{i}") for i in range(3)], collect.s())
    assert first.apply_async().id
    run(app)
    again = chord([add.s(i, i).set(task_id=f"resize-{i}") for i in range(3)], collect.s())
    with pytest.raises(ValueError, match=r"3 task id\(s\) of this workflow belong to tasks sent"):
        again.apply_async()
    assert [s.ready for s in app.broker.stats()] == [0]  # nothing sent
    # One id forgotten: still refused, naming the two left.
    AsyncResult("resize-1", app).forget()
    with pytest.raises(ValueError, match=r"2 task id\(s\) .* \('resize-0', 'resize-2'; "):
        again.apply_async()
    # The same chord sent again under its own id is left as it is, as any send of an id.
    named = chord([add.s(i, 10).set(task_id=f"crop-{i}") for i in range(2)], collect.s())
    handle = named.set(task_id="album-7").apply_async()
    run(app)
    assert named.set(task_id="album-7").apply_async().id == handle.id == "album-7"
    run(app)
    assert handle.get(timeout=1) == [10, 11]
    # Its saved membership expired before its result (result_expires, kept from the
    # send): still sent before, left as it is.
    app.broker.kv_delete(group_key("album-7"))
    assert named.set(task_id="album-7").apply_async().get(timeout=1) == [10, 11]
    # A plain group waits on nothing: a batch overlapping the last sends the rest.
    group(add.s(i, 1).set(task_id=f"charge-{i}") for i in (1, 2)).apply_async()
    run(app)
    batch = group(add.s(i, 1).set(task_id=f"charge-{i}") for i in (2, 3)).apply_async()
    run(app)
    assert batch.get(timeout=1) == [3, 4]
    # A group with a callback waits on its members: refused as a chord is.
    linked = group(add.s(i, 1).set(task_id=f"charge-{i}") for i in (3, 4)).link(collect.s())
    with pytest.raises(ValueError, match=r"1 task id\(s\) .*\('charge-3'; "):
        linked.apply_async()
    # A chain sent again (no group in it) stays a no-op.
    steps = chain(add.s(1, 1).set(task_id="step-a"), add.s(1).set(task_id="step-b"))
    first = steps.apply_async()
    run(app)
    assert steps.apply_async().id == first.id and first.get(timeout=1) == 3
    # And with fresh ids, the members run again.
    fresh = chord([add.s(i, i).set(task_id=f"resize-{i}-b") for i in range(3)], collect.s())
    handle = fresh.apply_async()
    run(app)
    assert handle.get(timeout=1) == [0, 2, 4]


def test_a_step_whose_result_is_not_json_is_named_by_the_next_step_s_error(app: Celeriac) -> None:
    # It read "cannot send task <next>: positional argument 0 (object) is not
    # JSON-serializable ... Pass simple values": an argument the next step was never given.
    r = chain(tasks.unstorable.s(), identity.s()).apply_async()
    run(app)
    with pytest.raises(SerializationError) as raised:
        r.get(timeout=1)
    assert str(raised.value).startswith(
        f"cannot pass the result of {tasks.unstorable.name}[{r.id}:s0] on to {identity.name}: "
        "a value of type object is not JSON-serializable"
    )
    # The step not run names the step at fault; it read "not run: <itself> failed earlier".
    origin = f"{tasks.unstorable.name}[{r.id}:s0] returned a result that could not be passed on"
    assert f"not run: {origin} earlier in this workflow" in str(r.traceback)
    big = chain(identity.s("x" * 2000), identity.s()).link_error(errback.s()).apply_async()
    app.conf.task_payload_max_bytes = 1500
    run(app)
    with pytest.raises(PayloadTooLarge):
        big.get(timeout=1)
    assert f"not run: {identity.name}[{big.id}:s0] returned a result" in str(big.traceback)
    error = AsyncResult(f"{big.id}:e0", app).get(timeout=1)
    assert (error["id"], error["type"]) == (f"{big.id}:s0", "celeriac.errors.PayloadTooLarge")


def test_celery_s_chord_header_then_body_spelling_sends_it(app: Celeriac) -> None:
    # chord(header)(body), the form most Celery code uses, raised "missing 1 required
    # positional argument: 'body'".
    r = chord(identity.s(i) for i in range(3))(collect.s(), queue="reports")
    assert [(s.queue, s.ready) for s in app.broker.stats()] == [("reports", 3)]  # sent
    run(app)
    assert r.get(timeout=1) == [0, 1, 2]
    with pytest.raises(TypeError, match=r"has a body already; send it with \.apply_async\(\)"):
        chord([identity.s(1)], collect.s())(collect.s())
    with pytest.raises(TypeError, match=r"has no body, the task that gets the header's results"):
        chord([identity.s(1)]).apply_async()
    assert [(s.queue, s.ready) for s in app.broker.stats()] == [("reports", 0)]  # nor these


def test_celery_s_calls_of_a_chain_or_group_send_them(app: Celeriac) -> None:
    # chain(a, b)() and group(...)() raised "'Chain' object is not callable".
    r = chain(add.s(1), add.s(3))(5)  # as .delay(5): partial arguments for the first step
    g = group(identity.s(1), identity.s(2))()
    run(app)
    assert r.get(timeout=1) == 9 and g.get(timeout=1) == [1, 2]


def test_apply_async_takes_celery_s_link_and_link_error(app: Celeriac, ledger: Ledger) -> None:
    # add.apply_async((1, 2), link=tsum.s()) was "got unknown option(s) link".
    linked = add.apply_async((1, 2), link=[add.s(10), add.s(20)], priority=5)
    failed = boom.apply_async((7,), link_error=errback.s(), task_id="boom-7")
    run(app)
    assert linked.get(timeout=1) == 3
    added = [parts[1] for parts in ledger.lines() if parts[0] == "run" and parts[4] == "add"]
    assert len(added) == 3 and added[0] == linked.id  # 1 + 2, then each link with its 3
    assert ledger.count("errback") == Counter({"boom-7:e0": 1})  # the errback of boom-7, once
    assert failed.state == "FAILURE"
    with pytest.raises(TypeError, match=r"link must be a signature \(task.s\(...\)\) or a list"):
        add.apply_async((1, 2), link="tsum")
    with pytest.raises(TypeError, match="missing a required argument: 'y'"):
        add.apply_async((1,), link=add.s(10))  # checked as without a link


def test_an_empty_chord_calls_its_body_with_an_empty_list(app: Celeriac) -> None:
    r = chord([], collect.s()).apply_async()
    run(app)
    assert r.get(timeout=1) == []


def test_a_result_too_big_to_pass_on_fails_the_next_task_saying_why(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.conf, "task_payload_max_bytes", 2_000)
    r = chord([identity.s("x" * 500) for _ in range(10)], collect.s().link_error(errback.s()))
    result = r.apply_async()
    run(app)
    with pytest.raises(PayloadTooLarge, match="over task_payload_max_bytes"):
        result.get(timeout=1)
    assert not ledger.count("callback")
    assert sum(ledger.count("errback").values()) == 1


@pytest.mark.parametrize(("failures", "runs"), [(1, 1), (5, 2)], ids=["brief", "lasting"])
def test_a_broker_error_while_continuing_is_tried_again_before_the_task_runs_again(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, failures: int, runs: int
) -> None:
    # The step is not committed until its next step is sent. A broker error was answered
    # by running the whole step again a second later; the send is now tried again in place
    # a few times first (a Redis restart, or a Redis full for a moment), and only when the
    # broker stays away (the first try and each of the 4 pauses fail) does the step run again.
    monkeypatch.setattr(canvas_middleware, "_PAUSES", (0.01,) * 4)
    r = (add.s(1, 2) | add.s(3)).apply_async()
    broker = app.broker
    real_send = broker.send
    errors = iter([BrokerConnectionError("the broker went away")] * failures)

    def flaky_send(messages: Any) -> list[bool]:
        for exc in errors:  # the first continuations fail, then the broker is back
            raise exc
        return real_send(messages)

    monkeypatch.setattr(broker, "send", flaky_send)
    run_queued(app, include_delayed=True)
    assert r.get(timeout=1) == 6
    assert ledger.count("run")[f"{r.id}:s0"] == runs


@pytest.mark.parametrize(("limit_in", "tries"), [(None, 5), (0.5, 1)], ids=["no-limit", "near"])
def test_continuing_is_tried_again_only_within_the_tasks_hard_limit(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch, limit_in: float | None, tries: int
) -> None:
    # The hard limit still holds while a step continues: a try that outlasts it gets the
    # child killed and the step, which succeeded, settled as a time-out. Near the limit,
    # the step is put back at the first error (runs again), as before.
    monkeypatch.setattr(canvas_middleware, "_PAUSES", (0.01,) * 4)
    (add.s(1, 2) | add.s(3)).apply_async()
    executor = Executor(app, "w")
    (delivery,) = app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
    job, skip = executor.prepare(delivery)
    assert skip is None
    if limit_in is not None:
        job.context[HARD_DEADLINE] = time.time() + limit_in
    sends: list[object] = []

    def refused(messages: object) -> list[bool]:
        sends.append(messages)
        raise BrokerError("Redis is full")

    monkeypatch.setattr(app.broker, "send", refused)
    assert app.middleware.after_execute(job, Outcome("SUCCESS", value=3)).state == "RETRY"
    assert len(sends) == tries


def test_a_rejected_member_fails_the_chord(app: Celeriac, ledger: Ledger) -> None:
    r = chord([add.s(1, 1), rejects.s()], tsum.s()).apply_async()
    run(app)
    with pytest.raises(ChordError, match="rejected by the task"):
        r.get(timeout=1)
    assert not ledger.count("callback")


@pytest.mark.parametrize("first_job", [False, True], ids=["after-other-tasks", "first-job"])
def test_a_member_dead_lettered_before_running_fails_the_chord(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, first_job: bool
) -> None:
    if first_job:
        # The dead letter is the first job this worker's middleware sees (a child forked
        # after a crash): it must still know the app that fails the workflow.
        monkeypatch.setattr(app, "middleware", MiddlewareStack(default_middleware()))
    monkeypatch.setattr(app.conf, "task_max_deliveries", 1)
    members = [add.s(1, 1)] if first_job else [add.s(1, 1), add.s(2, 2)]
    r = chord(members, tsum.s()).apply_async()
    (delivery,) = app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)
    app.broker.requeue(delivery.lease)  # a crash: the second delivery is one too many
    run(app)
    with pytest.raises(ChordError, match="started once without finishing"):
        r.get(timeout=1)
    assert not ledger.count("callback")


def test_a_member_no_worker_knows_fails_the_chord_when_dead_lettered(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "middleware", MiddlewareStack(default_middleware()))  # fresh
    monkeypatch.setattr(app.conf, "task_unknown_max_age", 0.0)
    r = chord([signature("elsewhere.not_deployed", args=(1,), app=app)], tsum.s()).apply_async()
    run(app)
    with pytest.raises(ChordError, match="unknown task"):
        r.get(timeout=1)
    assert not ledger.count("callback")


def test_a_workflow_needs_the_canvas_middleware(app: Celeriac) -> None:
    bare = Celeriac("bare", broker="memory://", middleware=[])

    @bare.task
    def one() -> int:
        return 1

    assert one.s().delay() is not None  # a lone task needs nothing
    with pytest.raises(ConfigurationError, match="no Canvas middleware"):
        (one.s() | one.si()).delay()


# -- nesting ---------------------------------------------------------------------------

SHAPES: dict[str, tuple[Callable[[], Canvas], Any]] = {
    "chains in a group": (
        lambda: group(add.s(1, 1) | mul.s(10), add.s(2, 2) | mul.s(100)),
        [20, 400],
    ),
    "a group in a chain passes its list on": (
        lambda: chain(add.s(1, 1), group(add.s(1), mul.s(3)), tsum.s(), mul.s(10)),
        (3 + 6) * 10,
    ),
    "a chain ending in a group": (
        lambda: add.s(1, 1) | group(add.s(1), add.s(2)),
        [3, 4],
    ),
    "a chord in a chain": (
        lambda: chain(add.s(1, 2), chord([add.s(1), mul.s(2)], tsum.s()), add.s(100)),
        (4 + 6) + 100,
    ),
    "a chord whose header holds chords": (
        lambda: chord(
            [
                chord([add.s(1, 1), add.s(2, 2)], tsum.s()),
                chord([mul.s(3, 3), chord([add.s(5, 5)], collect.s()) | tsum.s()], collect.s()),
                add.s(0, 1),
            ],
            collect.s(),
        ),
        [6, [9, 10], 1],
    ),
    "a group of groups": (
        lambda: group(group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)),
        [[2, 4], 6],
    ),
    "a chord of chains and groups": (
        lambda: chord([add.s(1, 1) | mul.s(2), group(add.s(0, 1), add.s(0, 2))], collect.s()),
        [4, [1, 2]],
    ),
    "a chain ending in a chord whose body is a chain": (
        lambda: chain(add.s(1, 1), chord([add.s(1), add.s(2)], tsum.s() | add.s(100))),
        (3 + 4) + 100,
    ),
    "a chain ending in a chain with options of its own": (
        lambda: chain(add.s(1, 1), chain(add.s(10), add.s(100)).set(priority=5)),
        112,
    ),
    "a chord whose body is a chord": (
        lambda: chord([add.s(1, 1)], chord([add.si(0, 3), add.si(0, 4)], tsum.s())),
        7,
    ),
}


def _task_ids(node: dict[str, Any]) -> list[str]:
    own = [node["options"]["task_id"]] if node["kind"] == "task" else []
    inner = [*node.get("steps", ()), *node.get("members", ())]
    inner += [node[k] for k in ("header", "body") if k in node]
    inner += [*node.get("link", ()), *node.get("link_error", ())]
    return own + [i for n in inner for i in _task_ids(n)]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_task_of_a_nested_shape_gets_its_own_id(shape: str) -> None:
    # Sending an id twice runs it once: two tasks of one workflow with one id hang it.
    from celeriac.workflow import freeze

    build, _ = SHAPES[shape]
    ids = _task_ids(freeze(build().to_dict(), "w"))
    assert len(ids) == len(set(ids)), sorted(ids)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_nested_shapes_return_the_right_value(app: Celeriac, shape: str) -> None:
    build, expected = SHAPES[shape]
    result = build().apply_async()
    run(app)
    assert result.get(timeout=1) == expected


def test_workflows_run_on_every_broker(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The joins and dedupe by id rely on each broker's own store: SQLite and Redis too."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(tasks.app.conf, "broker_url", broker_url)
    app = tasks.app
    try:
        build, expected = SHAPES["a chord whose header holds chords"]
        nested = build().apply_async()
        failing = chord([add.s(1, 1), boom.s("x")], tsum.s()).apply_async()
        big = chord([identity.s(i) for i in range(300)], collect.s()).apply_async()
        run(app)
        assert nested.get(timeout=5) == expected
        assert big.get(timeout=5) == list(range(300))
        with pytest.raises(ChordError, match="chord member 1"):
            failing.get(timeout=5)
        callbacks = ledger.count("callback")
        assert set(callbacks.values()) == {1}, "a callback ran twice"
        assert {nested.id, big.id} <= set(callbacks) and failing.id not in callbacks
    finally:
        app.broker.close()


def test_a_failure_inside_a_nested_chord_fails_the_outer_one(app: Celeriac, ledger: Ledger) -> None:
    inner = chord([add.s(1, 1), boom.s("deep")], tsum.s())
    r = chain(chord([inner, add.s(1, 1)], collect.s()), add.s(1)).apply_async()
    run(app)
    with pytest.raises(ChordError, match="boom deep") as raised:
        r.get(timeout=1)
    # Member 0 is the inner chord: it read "chord member 0 (<the task inside it>) failed".
    assert str(raised.value).startswith(
        "chord member 0 failed: celeriac.errors.ChordError: chord member 1 "
        f"({boom.name}[{r.id}:s0:h:0:h:1]) failed:"
    ), raised.value
    assert not ledger.count("callback")


# -- progress and the CLI ----------------------------------------------------------------


def test_progress_shows_in_info_and_in_celeriac_result(app: Celeriac, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    r = reports_progress.delay(str(gate))
    runner = threading.Thread(target=run_queued, args=(app,))
    runner.start()
    try:
        assert wait_for(lambda: r.info == {"done": 3, "total": 10}, timeout=10)
        assert r.state == "PROGRESS"
        code, output = invoke("-A", "tests.apps.canvas", "result", r.id)
        assert code == 0
        assert "PROGRESS" in output and "'done': 3, 'total': 10" in output
    finally:
        gate.unlink()
        runner.join(timeout=20)
    assert r.get(timeout=1) == "done"


def test_celeriac_result_waits_for_a_group_and_a_chord(app: Celeriac) -> None:
    g = group(add.s(i, i) for i in range(4)).apply_async()
    c = chord([add.s(i, i) for i in range(4)], tsum.s()).apply_async()
    bad = group(add.s(1, 1), boom.s("cli")).apply_async()
    run(app)
    code, output = invoke("-A", "tests.apps.canvas", "result", g.id, "--wait", "--json")
    assert code == 0
    shown = json.loads(output)
    assert shown["state"] == "SUCCESS" and shown["result"] == [0, 2, 4, 6]
    assert shown["meta"] == {"done": 4, "total": 4}
    code, output = invoke("-A", "tests.apps.canvas", "result", c.id, "--wait")
    assert code == 0 and "SUCCESS" in output and "12" in output
    code, output = invoke("-A", "tests.apps.canvas", "result", bad.id, "--wait")
    assert code == 1 and "FAILURE" in output and "boom cli" in output


def test_celeriac_result_of_a_chord_not_done_says_what_it_waits_on(app: Celeriac) -> None:
    # It said "PENDING: no result stored ... (queued or running, unknown, or its result
    # expired)": nothing of the chord, whose header is saved under its id.
    c = chord([add.s(i, i) for i in range(8)], tsum.s()).apply_async()
    run_queued(app, max_tasks=1)
    code, output = invoke("-A", "tests.apps.canvas", "result", c.id)
    assert code == 0
    assert (
        f"PENDING: chord {c.id}: its body runs once its 8 members have finished; 7 task(s)"
        in output
    )
    assert f"{c.id}:h:1, {c.id}:h:2, {c.id}:h:3, {c.id}:h:4, {c.id}:h:5 and 2 more" in output
    code, output = invoke("-A", "tests.apps.canvas", "result", c.id, "--json")
    shown = json.loads(output)
    assert shown["running_on"] == []  # as for a task: the workers running its body
    assert shown["chord"] == {"members": 8, "waiting_on": [f"{c.id}:h:{i}" for i in range(1, 8)]}
    run_queued(app, max_tasks=7)  # the members, not the body their last one sent
    code, output = invoke("-A", "tests.apps.canvas", "result", c.id)
    assert "all 8 members finished; its body is queued or running" in output
    code, output = invoke("-A", "tests.apps.canvas", "result", c.id, "--wait", "--timeout", "0.2")
    assert code == 1 and f"task chord[{c.id}] did not finish" in output  # was "task ?[...]"


def test_replaying_a_dead_lettered_workflow_step_says_its_workflow_stays_ended(
    app: Celeriac,
) -> None:
    # "replayed 1 dead letter(s)", the step ran, and its chain stayed FAILURE: nothing said
    # that the workflow had ended when the step was dead-lettered.
    r = chain(add.s(1, 1), rejects.si(), identity.s()).apply_async()
    alone = rejects.delay()
    run(app)
    assert r.state == "FAILURE" and len(app.broker.dead_letters()) == 2
    code, output = invoke("-A", "tests.apps.canvas", "dlq", "replay", f"{r.id}:s1", alone.id)
    assert code == 0 and "replayed 2 dead letter(s)" in output
    assert "note: 1 of them were steps of workflows (a chain, group or chord)" in output
    assert "their workflows stay as they ended" in output
    run(app)
    code, output = invoke("-A", "tests.apps.canvas", "dlq", "replay", "--task", rejects.name)
    assert "replayed 2" in output and "note: 1 of them were steps" in output
    run(app)
    code, output = invoke("-A", "tests.apps.canvas", "dlq", "replay", alone.id)
    assert "replayed 1" in output and "steps of workflows" not in output


def test_a_later_step_with_its_own_countdown_counts_the_workflow_s_expiry_from_its_due(
    app: Celeriac,
) -> None:
    # The per-call expiry counts from now (c5eca84), and one before the due is refused:
    # raised while the worker continued the chain, it hung PENDING for ever.
    import datetime as dt

    r = chain(add.s(1, 1), add.s(2).set(countdown=0.3)).apply_async(expires=0.2)
    run(app)
    time.sleep(0.35)
    run_queued(app, include_delayed=True, fail_fast=False)
    assert r.get(timeout=1) == 4  # due at +0.3, expiring 0.2 s after that
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    late = chain(add.s(1, 1), add.s(2).set(countdown=60)).apply_async(expires=soon)
    run(app)
    assert late.state == "PENDING" and [s.delayed for s in app.broker.stats()] == [1]
    (waiting,) = app.broker.peek("default", 10)
    message = app.codec.decode(waiting.body)
    assert message.expires == pytest.approx(soon.timestamp(), abs=0.001)  # it will expire
    assert message.eta is not None and message.eta > time.time() + 50  # at its due


# -- the ETL example --------------------------------------------------------------------


def load_etl() -> ModuleType:
    spec = importlib.util.spec_from_file_location("etl_example_tasks", ETL / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXPECTED_SALES = [
    (1001, "2026-03-01", "Ada Lovelace", "GB", 3998),
    (1002, "2026-03-01", "Grace Hopper", "US", 25000),
    (1003, "2026-03-05", "Alan Turing", "GB", 2200),
    (1005, "2026-03-03", "Barbara Liskov", "US", 2900),
    (1006, "2026-03-04", "Donald Knuth", "US", 9995),
    (1008, "2026-03-05", "Tim Berners-Lee", "CH", 990),
]


def loaded_sales(db_path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return db.execute("SELECT * FROM sales ORDER BY order_id").fetchall()


def test_the_etl_example_runs_in_process(tmp_path: Path) -> None:
    etl = load_etl()
    etl.app.conf.broker_url = "memory://"
    etl.app.use_broker(MemoryBroker())
    db_path = tmp_path / "warehouse.db"
    flow = etl.pipeline(str(ETL / "sales.csv"), str(db_path))
    assert [s.name for s in flow.steps] == ["etl.extract", "etl.transform", "etl.load"]
    result = flow.delay()
    assert run_queued(etl.app) == 3
    assert result.get(timeout=1) == len(EXPECTED_SALES)
    assert loaded_sales(db_path) == EXPECTED_SALES
    # The rows travelled through the broker's store, not through messages.
    extracted = etl.app.AsyncResult(f"{result.id}:s0").get(timeout=1)
    assert extracted == f"etl:raw:{result.id}:s0"
    # Running the pipeline again (at-least-once) loads nothing twice.
    etl.pipeline(str(ETL / "sales.csv"), str(db_path)).delay()
    run_queued(etl.app)
    assert loaded_sales(db_path) == EXPECTED_SALES


def test_eager_mode_runs_a_workflow_at_once(app: Celeriac, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.conf, "task_always_eager", True)
    assert (add.s(1, 2) | mul.s(3)).delay().get(timeout=1) == 9


def test_celery_s_long_forms_of_a_signature(app: Celeriac) -> None:
    # add.signature((2, 2), countdown=10) and `from celeriac import signature`, as Celery
    # code writes them, were AttributeErrors.
    import celeriac

    sig = add.signature((1,), {"y": 2}, {"queue": "math"}, priority=7)
    assert sig.to_dict() == add.s(1, y=2).set(queue="math", priority=7).to_dict()
    assert add.signature().to_dict() == add.s().to_dict()
    assert add.signature((1, 2), immutable=True).to_dict() == add.si(1, 2).to_dict()
    with pytest.raises(ValueError, match="routing_key is Celery's: route with queue="):
        add.signature((1, 2), routing_key="math")
    assert celeriac.signature is signature
    r = add.signature((40, 2)).delay()
    run(app)
    assert r.get(timeout=1) == 42


def test_signatures_need_an_app_to_be_sent() -> None:
    lonely: Signature[Any] = Signature("nowhere.task")
    with pytest.raises(Exception, match="knows no app"):
        lonely.delay()
    with pytest.raises(ValueError, match="at least one step"):
        chain()
    with pytest.raises(TypeError, match="not a signature"):
        group([add.s(1, 1), 3])  # type: ignore[list-item]
    assert mul.s(2)(y=3) == 6


def test_a_group_result_revokes_every_member_nested_ones_too() -> None:
    local = Celeriac("group-revoke", broker="memory://")

    @local.task
    def double(x: int) -> int:
        return 2 * x

    g = group(double.s(1), group(double.s(2), double.s(3))).apply_async()
    g.revoke()
    assert run_queued(local) == 3
    inner = g.results[1]
    assert isinstance(inner, GroupResult)
    assert [m.state for m in (g.results[0], *inner.results)] == ["REVOKED"] * 3
