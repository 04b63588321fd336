"""OpenTelemetry tracing: a span for each send and each run of a task, in one trace with
the request that sent it and the spans the task's own code makes.

Put it first, before the defaults, so that its ``after_execute`` runs last::

    from celeriac.integrations.opentelemetry import Tracing
    app = Celeriac("shop", middleware=[Tracing(), *default_middleware()])

- The producer: each message sent makes a ``send <task>`` span (kind PRODUCER) under the
  current span, and carries its context in the message's headers (the propagator the
  application configured: W3C ``traceparent`` by default).
- The worker: each run makes a ``run <task>`` span (kind CONSUMER) under the send span,
  current while the task runs, so the spans the task makes (an HTTP call, a query) are
  its children, on every pool. What the task sends (a chain's next step, a callback) is
  sent under it, so a whole workflow is one trace. Its status is the outcome: ERROR for a
  failure, with the exception recorded; ``celeriac.outcome`` says which (SUCCESS,
  FAILURE, RETRY, EXPIRED, REVOKED, ...). A task delivered twice (a worker died under
  it) has two run spans under one send span. A run killed with its child (its hard time
  limit, ``revoke --terminate``) loses its span with the child; the delivery that then
  settles it (FAILURE with TimeLimitExceeded, or REVOKED) has a run span of its own.
- A message dead-lettered before it could run (too many deliveries: a task that kills
  every child running it; an unknown task) gets a ``dead-letter <task>`` span under its
  send span, status ERROR with the reason: its trace does not end at the send, unexplained.
  With a ``BatchSpanProcessor``, a child killed (a hard limit, the OOM killer) also loses
  the spans it had not exported yet, of tasks that finished before (its schedule delay:
  5 s by default).

Only ``opentelemetry-api`` is imported. Where spans go is the application's choice of SDK
and exporter, set up as in any program; without one, every span is a no-op. A worker's
children are forked from the supervisor, which imported the app: the SDK's batch
processor starts its thread again in each child, and an exporter that holds a connection
is best made in ``Middleware.on_child_start``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from celeriac._version import __version__
from celeriac.middleware.base import Job, Middleware, Outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.message import Message

#: ``job.context`` keys: the run span, the token that makes it current, and whether this
#: delivery has had its span (a run span, or a dead letter's: a settle tried again
#: through a broker outage calls ``before_dead_letter`` again, and made one span a try).
_SPAN = "otel_span"
_ATTACHED = "otel_attached"
_SPANNED = "otel_spanned"
#: Outcomes that are the task's failure: the span's status is ERROR.
_FAILED = frozenset({"FAILURE", "DEAD"})


class Tracing(Middleware):
    """Spans for sends and runs, their context carried in each message's headers.

    Args:
        tracer_provider: where spans go; the global one (set by the application's SDK set-up)
            when None.

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.middleware import default_middleware
        >>> app = Celeriac("doc", broker="memory://", middleware=[Tracing(), *default_middleware()])
        >>> @app.task
        ... def charge(order_id: int) -> None: ...
        >>> message = charge.message((7,))
        >>> app.middleware.before_send(app, message)  # what delay() runs
        >>> sorted(message.headers)  # with no SDK set up, an invalid context: nothing to carry
        []
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider

    @property
    def tracer(self) -> trace.Tracer:
        """celeriac's tracer, from the provider given or the global one as it is now: an
        application may set its SDK up after the app is made."""
        return trace.get_tracer("celeriac", __version__, tracer_provider=self._provider)

    def before_send(self, app: Celeriac, message: Message) -> str | None:
        """Make the send span and write its context into the message's headers."""
        with self.tracer.start_as_current_span(
            f"send {message.task}",
            kind=SpanKind.PRODUCER,
            attributes=_attributes(message, "send"),
        ):
            propagate.inject(message.headers)
        return None

    def before_execute(self, job: Job) -> Outcome | None:
        """Start the run span under the send span the headers name, and make it current."""
        message = job.message
        if message is None:
            return None
        parent = _parent(message)
        span = self.tracer.start_span(
            f"run {message.task}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_attributes(message, "process"),
        )
        job.context[_SPAN] = span
        job.context[_SPANNED] = True
        job.context[_ATTACHED] = context.attach(trace.set_span_in_context(span, parent))
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Set the run span's status from the outcome, end it, and make it no longer current."""
        span: trace.Span | None = job.context.pop(_SPAN, None)
        token: Any = job.context.pop(_ATTACHED, None)
        if span is None:
            return outcome
        span.set_attribute("celeriac.outcome", outcome.state)
        if outcome.exception is not None:  # a failure's, or the one a retry follows
            span.record_exception(outcome.exception)
        if outcome.state in _FAILED:
            error = outcome.error.message if outcome.error is not None else outcome.reason
            span.set_status(Status(StatusCode.ERROR, error or outcome.state))
        span.end()
        if token is not None:
            context.detach(token)
        return outcome

    def before_dead_letter(self, job: Job, outcome: Outcome) -> None:
        """Record a message dead-lettered before it could run as a span under its send span
        (one that ran has its run span, with the outcome, already)."""
        message = job.message
        if message is None or job.context.get(_SPANNED):  # unreadable: no context to join
            return
        job.context[_SPANNED] = True
        span = self.tracer.start_span(
            f"dead-letter {message.task}",
            context=_parent(message),
            kind=SpanKind.CONSUMER,
            attributes=_attributes(message, "settle"),
        )
        span.set_attribute("celeriac.outcome", outcome.state)
        span.set_status(Status(StatusCode.ERROR, outcome.reason or outcome.state))
        span.end()


def _parent(message: Message) -> context.Context:
    """The send span's context, from the message's headers; an empty one (the run starts a
    trace of its own) when a header is not what the propagator reads: a producer's
    ``traceparent`` of another type raised in the propagator, and the run had no span."""
    try:
        return propagate.extract(message.headers)
    except Exception:  # noqa: BLE001 - any propagator, any header: the span matters more
        return context.Context()


def _attributes(message: Message, operation: str) -> dict[str, Any]:
    """OpenTelemetry's messaging attributes of ``message``, and celeriac's own."""
    return {
        "messaging.system": "celeriac",
        "messaging.operation.type": operation,
        "messaging.destination.name": message.queue,
        "messaging.message.id": message.id,
        "celeriac.task": message.task,
        "celeriac.retries": message.retries,
    }
