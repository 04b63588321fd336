"""Tracing with OpenTelemetry: one trace from the web request to the tasks it sent.

    pip install 'celeriac[otel]' opentelemetry-sdk   (and an exporter: OTLP, Jaeger, ...)

    Tracing()                       a middleware: put it first, before the defaults
    send <task>   (kind PRODUCER)   one span per message sent, under the current span; its
                                    context travels in the message's headers (traceparent)
    run <task>    (kind CONSUMER)   one span per run, under the send span, current while the
                                    task runs: the spans its code makes are its children,
                                    and what it sends (a chain's next step) is sent under it
    celeriac.outcome                the run span's attribute: SUCCESS, FAILURE, RETRY, ...;
                                    a failure's span has status ERROR and the exception

In production the SDK is set up as in any program (a BatchSpanProcessor and an OTLP
exporter, once per process): a worker's children are forked from the supervisor, and the
batch processor starts its thread again in each. Here the spans are kept in memory and
printed as a tree.

Run it, in this folder:  python tracing.py
It runs the tasks in this process on the in-memory broker (celeriac.testing.run_queued);
a worker (`celeriac -A yourmodule worker`) makes the same spans, in each child.
"""

from __future__ import annotations

from collections import defaultdict

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from celeriac import Celeriac
from celeriac.canvas import chain
from celeriac.integrations.opentelemetry import Tracing
from celeriac.middleware import default_middleware
from celeriac.testing import run_queued

# The application's SDK set-up: in production, BatchSpanProcessor(OTLPSpanExporter()).
kept = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(kept))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("shop")

# Tracing first: its after_execute then runs last, so a chain's next step (sent by the
# canvas middleware after the task ran) is sent while the run span is still current.
app = Celeriac("shop", middleware=[Tracing(), *default_middleware()])
app.conf.broker_url = "memory://"  # in this process (an assignment overrides the env)


@app.task
def reserve_stock(order_id: int) -> int:
    """Reserve the order's items; its own span is a child of the task's run span."""
    with tracer.start_as_current_span("UPDATE stock"):
        return order_id


@app.task(max_retries=0)
def charge(order_id: int) -> str:
    """Charge the order's card: order 13's card is declined."""
    with tracer.start_as_current_span("POST payments/charge"):
        if order_id == 13:
            raise ValueError(f"card declined for order {order_id}")
        return f"order {order_id} charged"


def print_tree(spans: list[ReadableSpan]) -> None:
    """Each span under its parent, in the order they started."""
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        children[span.parent.span_id if span.parent else None].append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        kind = span.kind.name if span.kind is not trace.SpanKind.INTERNAL else ""
        outcome = span.attributes.get("celeriac.outcome") if span.attributes else None
        status = span.status.status_code.name if span.status.status_code.name == "ERROR" else ""
        print("  " * depth + " ".join(str(w) for w in (span.name, kind, outcome, status) if w))
        for child in children[span.context.span_id if span.context else None]:
            show(child, depth + 1)

    for root in children[None]:
        show(root, 0)


def main() -> None:
    """Send a chain from a web request's span, run it, and print the trace."""
    with tracer.start_as_current_span("POST /orders/7"):
        chain(reserve_stock.s(7), charge.s()).delay()
    run_queued(app)
    spans = list(kept.get_finished_spans())
    print_tree(spans)
    print("one trace:", len({s.context.trace_id for s in spans if s.context}) == 1)

    kept.clear()
    with tracer.start_as_current_span("POST /orders/13"):
        declined = charge.delay(13)
    run_queued(app, fail_fast=False)
    print_tree(list(kept.get_finished_spans()))
    run = next(s for s in kept.get_finished_spans() if s.name == "run " + charge.name)
    print("recorded:", [e.attributes["exception.type"] for e in run.events if e.attributes])
    print("result:", declined.state)


if __name__ == "__main__":
    main()
