"""OpenTelemetry tracing (celeriac.integrations.opentelemetry.Tracing) on real workers of
every pool: one trace from the producer's span to the task's own spans, a failure's
status and exception, a chain as one trace; and what a before_execute hook sets in a
contextvar, seen by the task on every pool.

The worker processes import this module (``-A tests.test_tracing``) for its app; they
write their spans, one JSON object a line, to the file CELERIAC_TEST_SPANS names.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, TextIO

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celeriac import (
    Celeriac,
    Middleware,
    Reject,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from celeriac.brokers.records import Delivery, Lease
from celeriac.integrations.opentelemetry import Tracing
from celeriac.middleware import default_middleware
from celeriac.middleware.base import Job, Outcome
from celeriac.testing import wait_for
from tests.conftest import ROOT, Ledger, WorkerProcesses

APP = "tests.test_tracing"
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)}

#: Spans made in this process (the producer's, in the tests).
made_here = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(made_here))
_spans_file = os.environ.get("CELERIAC_TEST_SPANS")
_out: TextIO | None = open(_spans_file, "a") if _spans_file else None  # noqa: SIM115 - for the process's life
if _out is not None:  # a worker: every span a line of the file, whichever child made it
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=_out, formatter=lambda s: s.to_json(indent=None) + "\n")
        )
    )

#: What the RequestTag middleware sets for each task, as a log context would be.
request_tag: contextvars.ContextVar[str] = contextvars.ContextVar("request_tag", default="unset")


class RequestTag(Middleware):
    """Sets ``request_tag`` to the task's id in before_execute and resets it after."""

    def before_execute(self, job: Job) -> Outcome | None:
        job.context["tag_token"] = request_tag.set(f"tag-{job.delivery.id}")
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        request_tag.reset(job.context.pop("tag_token"))  # raises in another context
        return outcome


app = Celeriac("tracing", middleware=[Tracing(provider), *default_middleware(), RequestTag()])


@app.bound_task()
def charge(self: Any, order_id: int) -> list[str]:
    """Makes a span of its own, as an instrumented HTTP client would."""
    with provider.get_tracer("shop").start_as_current_span("charge card"):
        return [f"charged {order_id}", request_tag.get(), f"tag-{self.request.id}"]


@app.bound_task()
async def acharge(self: Any, order_id: int) -> list[str]:
    with provider.get_tracer("shop").start_as_current_span("charge card"):
        return [f"charged {order_id}", request_tag.get(), f"tag-{self.request.id}"]


@app.task(max_retries=0)
def declined(order_id: int) -> None:
    raise ValueError(f"card declined for order {order_id}")


@app.task(soft_time_limit=0.2, time_limit=0.6, max_retries=0)
def hangs() -> None:
    """Sleeps through its soft limit: its child is killed at the hard limit."""
    while True:
        with contextlib.suppress(SoftTimeLimitExceeded):
            time.sleep(5)


@app.task(max_deliveries=1)
def kills_its_child() -> None:
    """Dies with its child, as a task the OOM killer takes: dead-lettered at the redelivery."""
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def refuses(order_id: int) -> None:
    """Runs, and sends itself to the dead-letter queue."""
    raise Reject(f"order {order_id} belongs to a closed shop")


def _hex(value: int, digits: int) -> str:
    return f"0x{value:0{digits}x}"


def _worker_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def _sent(name: str) -> ReadableSpan:
    found = [s for s in made_here.get_finished_spans() if s.name == f"send {name}"]
    assert len(found) == 1, [s.name for s in made_here.get_finished_spans()]
    return found[0]


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This module's app on a fresh SQLite broker; the file the workers write spans to."""
    broker = f"sqlite:///{tmp_path}/broker.db"
    monkeypatch.setattr(app.conf, "broker_url", broker)
    made_here.clear()
    return tmp_path / "spans.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_one_trace_from_the_producer_to_the_tasks_own_spans(
    pool: str, traced: Path, tmp_path: Path
) -> None:
    workers = WorkerProcesses(app.conf.broker_url, Ledger(tmp_path / "ledger.txt"))
    env = {**ENV, "CELERIAC_TEST_SPANS": str(traced)}
    try:
        workers.start("-P", pool, "-c", "2", app=APP, env=env)
        task = acharge if pool == "asyncio" else charge
        with provider.get_tracer("web").start_as_current_span("POST /orders") as request:
            charged = task.delay(7)
            failed = declined.delay(8)
        value = charged.get(timeout=30)
        with pytest.raises(ValueError, match="card declined"):
            failed.get(timeout=30)
    finally:
        workers.kill_all()
    # What the before_execute hook set was the task's, on every pool; and reset after.
    assert value == ["charged 7", f"tag-{charged.id}", f"tag-{charged.id}"]
    trace_id = _hex(request.get_span_context().trace_id, 32)
    assert wait_for(lambda: len(_worker_spans(traced)) >= 3, timeout=10), _worker_spans(traced)
    spans = _worker_spans(traced)
    [run] = _named(spans, f"run {task.name}")
    [inner] = _named(spans, "charge card")
    sent = _sent(task.name)
    assert sent.parent is not None and sent.parent.span_id == request.get_span_context().span_id
    assert run["context"]["trace_id"] == trace_id
    assert run["parent_id"] == _hex(sent.context.span_id, 16)  # the send span, from the headers
    assert run["kind"] == "SpanKind.CONSUMER"
    assert run["attributes"]["celeriac.outcome"] == "SUCCESS"
    assert run["attributes"]["messaging.message.id"] == charged.id
    assert inner["parent_id"] == run["context"]["span_id"]  # the task's span, under its run
    [failure] = _named(spans, "run tests.test_tracing.declined")
    assert failure["context"]["trace_id"] == trace_id
    assert failure["status"]["status_code"] == "ERROR"
    assert "card declined for order 8" in failure["status"]["description"]
    assert [e["name"] for e in failure["events"]] == ["exception"]


@pytest.mark.slow
def test_a_chain_is_one_trace_each_step_under_the_one_before(traced: Path, tmp_path: Path) -> None:
    workers = WorkerProcesses(app.conf.broker_url, Ledger(tmp_path / "ledger.txt"))
    try:
        workers.start("-c", "2", app=APP, env={**ENV, "CELERIAC_TEST_SPANS": str(traced)})
        first = charge.s(1)
        result = (first | declined.si(2)).apply_async()
        with pytest.raises(ValueError, match="card declined"):
            result.get(timeout=30)
    finally:
        workers.kill_all()
    assert wait_for(lambda: len(_worker_spans(traced)) >= 4, timeout=10), _worker_spans(traced)
    spans = _worker_spans(traced)
    [step1] = _named(spans, "run tests.test_tracing.charge")
    [send2] = _named(spans, "send tests.test_tracing.declined")  # sent by the worker
    [step2] = _named(spans, "run tests.test_tracing.declined")
    assert send2["parent_id"] == step1["context"]["span_id"]
    assert step2["parent_id"] == send2["context"]["span_id"]
    assert len({s["context"]["trace_id"] for s in (step1, send2, step2)}) == 1


@pytest.mark.slow
def test_a_task_killed_at_its_hard_limit_is_in_the_trace_as_a_failure(
    traced: Path, tmp_path: Path
) -> None:
    # The killed child's span is lost with it (never ended, never exported); the run that
    # settles the task with TimeLimitExceeded (the supervisor's verdict) is the trace's.
    workers = WorkerProcesses(app.conf.broker_url, Ledger(tmp_path / "ledger.txt"))
    try:
        workers.start("-c", "1", app=APP, env={**ENV, "CELERIAC_TEST_SPANS": str(traced)})
        result = hangs.delay()
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=60)
    finally:
        workers.kill_all()
    sent = _sent(hangs.name)
    assert wait_for(lambda: _named(_worker_spans(traced), f"run {hangs.name}"), timeout=10)
    [run] = _named(_worker_spans(traced), f"run {hangs.name}")
    assert run["parent_id"] == _hex(sent.context.span_id, 16)
    assert run["status"]["status_code"] == "ERROR"
    assert run["attributes"]["celeriac.outcome"] == "FAILURE"
    [event] = run["events"]
    assert event["attributes"]["exception.type"].endswith("TimeLimitExceeded")


@pytest.mark.slow
def test_a_message_dead_lettered_before_it_ran_ends_its_trace_with_the_reason(
    traced: Path, tmp_path: Path
) -> None:
    # Without its span, the trace of a task whose every run killed its child (or of a task
    # no worker knows) ended at its send span, as if it were still queued.
    workers = WorkerProcesses(app.conf.broker_url, Ledger(tmp_path / "ledger.txt"))
    env = {**ENV, "CELERIAC_TEST_SPANS": str(traced), "CELERIAC_TASK_UNKNOWN_MAX_AGE": "0"}
    try:
        workers.start("-c", "1", app=APP, env=env)
        killer = kills_its_child.delay()
        unknown = app.send_task("shop.retired_task")
        rejected = refuses.delay(3)
        ids = {killer.id, unknown.id, rejected.id}
        assert wait_for(lambda: {d.id for d in app.broker.dead_letters()} >= ids, timeout=60), (
            app.broker.dead_letters()
        )
    finally:
        workers.kill_all()

    def dead_spans() -> list[dict[str, Any]]:
        return [s for s in _worker_spans(traced) if s["name"].startswith("dead-letter ")]

    assert wait_for(lambda: len(dead_spans()) >= 2, timeout=10), _worker_spans(traced)
    assert len(dead_spans()) == 2, dead_spans()
    by_id = {s["attributes"]["messaging.message.id"]: s for s in dead_spans()}
    assert set(by_id) == {killer.id, unknown.id}  # the rejected task ran: its run span says
    for task_id, name in ((killer.id, kills_its_child.name), (unknown.id, "shop.retired_task")):
        span = by_id[task_id]
        assert span["name"] == f"dead-letter {name}"
        assert span["parent_id"] == _hex(_sent(name).context.span_id, 16)
        assert span["status"]["status_code"] == "ERROR"
        assert span["attributes"]["celeriac.outcome"] == "DEAD"
    assert "killed by SIGKILL" in by_id[killer.id]["status"]["description"]
    assert "unknown task" in by_id[unknown.id]["status"]["description"]
    [ran] = _named(_worker_spans(traced), f"run {refuses.name}")
    assert ran["attributes"]["celeriac.outcome"] == "DEAD"
    assert "closed shop" in ran["status"]["description"]


def _job(headers: dict[str, Any] | None = None) -> Job:
    """A delivery of a task no worker knows, sent under this module's tracer."""
    message = app.task_named("shop.gone").message((), headers=headers or {})
    if headers is None:
        app.middleware.before_send(app, message)  # the send span, and its context carried
    return Job(Delivery(Lease(message.id, "default", "1"), b"", 1), "w", message=message, app=app)


def test_a_dead_letter_settled_again_after_a_broker_error_has_one_span() -> None:
    # A settle that meets a broker error is tried again, whole, before_dead_letter
    # included: each try made a span, and one dead letter read as several.
    made_here.clear()
    job = _job()
    dead = Outcome("DEAD", reason="unknown task: no worker knows shop.gone")
    for _ in range(3):
        Tracing(provider).before_dead_letter(job, dead)
    spans = [s for s in made_here.get_finished_spans() if s.name == "dead-letter shop.gone"]
    assert len(spans) == 1
    assert spans[0].parent is not None
    assert spans[0].parent.span_id == _sent("shop.gone").context.span_id


def test_a_header_the_propagator_cannot_read_starts_a_trace_of_its_own() -> None:
    # A producer of another stack sent a traceparent that is not text: the propagator
    # raised in before_execute, and the run had no span at all.
    made_here.clear()
    tracing = Tracing(provider)
    for headers in ({"traceparent": 5}, {"baggage": 7}):
        job = _job(headers)
        assert tracing.before_execute(job) is None
        tracing.after_execute(job, Outcome("SUCCESS"))
        tracing.before_dead_letter(_job(headers), Outcome("DEAD", reason="refused"))
    runs = [s for s in made_here.get_finished_spans() if s.name == "run shop.gone"]
    dead = [s for s in made_here.get_finished_spans() if s.name == "dead-letter shop.gone"]
    assert len(runs) == 2 and len(dead) == 2
    assert all(s.parent is None for s in runs + dead)
