"""Prometheus metrics of a broker and its workers: what ``celeriac metrics`` serves.

Two sources, one per kind of question:

* **what happened** (tasks succeeded, failed, retried..., and how long they ran) is
  counted from the broker's task events, which every worker writes by default. One
  exporter sees every worker on every host, whatever its pool, so nothing is counted per
  process and summed (prometheus-client's multiprocess mode, which a worker that forks
  and recycles its children would need); counters start at 0 when the exporter starts,
  which Prometheus's ``rate()`` and ``increase()`` expect;
* **what is there now** (each queue's ready, delayed, in-flight and dead counts, how long
  its longest-waiting ready task has waited, the live workers) is read from the broker at
  each scrape, as ``celeriac status`` reads it.

A task name is a label, so a broker that sees tasks of unbounded names (a producer's bug)
would make a series per name: past ``TASK_LABELS`` names, the others count as ``other``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celeriac.control import live_workers
from celeriac.errors import BrokerError
from celeriac.event_feed import EventFeed
from celeriac.message import ready_at
from celeriac.middleware.events import EVENT_TYPES, UNREAD_TASK, Event

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.metrics")

#: Distinct task names counted under their own name; the ones after count as ``other``.
TASK_LABELS = 1000
#: The label of tasks past ``TASK_LABELS``.
OTHER = "other"
#: Runtime buckets in seconds: no-op tasks take ~0.1 ms, and a task may run for an hour.
RUNTIME_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"),
)  # fmt: skip
#: The events whose runtime is a task's run: the others were decided without running.
_TIMED = frozenset({"succeeded", "failed"})
_KNOWN_TYPES = frozenset(EVENT_TYPES)
#: The outcomes each task the app defines is counted under from the start, at 0. A series
#: that appears at 1 hides its first event from ``increase()`` and ``rate()``: an alert on
#: a task's first expiry, or first dead letter, since the exporter started never fired.
STARTED_AT_ZERO = ("succeeded", "failed", "retried", "expired", "revoked", "dead-lettered")
#: Seconds between reads of the event stream once every event was read.
FOLLOW_PAUSE = 0.5
#: Seconds between reads while the broker does not answer.
UNREACHABLE_PAUSE = 2.0


class TaskMetrics:
    """The counters and histograms of task events, and the collector of the broker's
    current counts, on one registry. The app's own tasks (what ``-A`` imported) are counted
    from 0 under each outcome of ``STARTED_AT_ZERO``, and dead letters of bytes that are
    not a message (task ``?``) too; other names from their first event.

    Example:
        >>> from celeriac import Celeriac
        >>> from prometheus_client import CollectorRegistry, generate_latest
        >>> registry = CollectorRegistry()
        >>> metrics = TaskMetrics(Celeriac("doc", broker="memory://"), registry)
        >>> metrics.count(b'{"type":"succeeded","id":"1","task":"shop.send","worker":"w",'
        ...               b'"at":0,"runtime":0.02}')
        >>> registry.get_sample_value(
        ...     "celeriac_task_events_total", {"task": "shop.send", "event": "succeeded"})
        1.0
    """

    def __init__(self, app: Celeriac, registry: CollectorRegistry) -> None:
        self.app = app
        self.events = Counter(
            "celeriac_task_events",
            "Task events read from the broker since this exporter started, by task and "
            "event (succeeded, failed, retried, expired, revoked, dead-lettered, deferred, "
            "not-run; received and started with worker_send_started_events; other: a type "
            "this exporter does not know)",
            ["task", "event"],
            registry=registry,
        )
        self.runtime = Histogram(
            "celeriac_task_runtime_seconds",
            "How long tasks ran, by task and outcome (succeeded or failed)",
            ["task", "event"],
            buckets=RUNTIME_BUCKETS,
            registry=registry,
        )
        self.missed = Counter(
            "celeriac_events_missed",
            "Times the broker's event stream was trimmed past the last event read (it "
            "keeps only the newest events): task events may have gone uncounted",
            registry=registry,
        )
        self.unreadable = Counter(
            "celeriac_events_unreadable",
            "Events that could not be read (a newer celeriac's, or another tool's)",
            registry=registry,
        )
        self._tasks: set[str] = set()
        self._capped = False  # past TASK_LABELS names: said
        for name in sorted(app.tasks)[:TASK_LABELS]:  # the tasks -A imported
            for event in STARTED_AT_ZERO:
                self.events.labels(self._task_label(name), event)
        # Bytes that are not a message, dead-lettered: their event names no task.
        self.events.labels(UNREAD_TASK, "dead-lettered")
        registry.register(BrokerCollector(app))

    def count(self, raw: bytes) -> None:
        """Count one event as the broker holds it (JSON)."""
        try:
            event = msgspec.json.decode(raw, type=Event)
        except msgspec.DecodeError:
            self.unreadable.inc()
            return
        task = self._task_label(event.task)
        # A type this version does not write (a newer one's, another tool's) as "other": a
        # writer of unbounded types must not make a series per type.
        kind = event.type if event.type in _KNOWN_TYPES else OTHER
        self.events.labels(task, kind).inc()
        if event.runtime is not None and event.type in _TIMED:
            self.runtime.labels(task, event.type).observe(event.runtime)

    def _task_label(self, name: str) -> str:
        if name in self._tasks or name == UNREAD_TASK:  # one label, not a name to count
            return name
        if len(self._tasks) < TASK_LABELS:
            self._tasks.add(name)
            return name
        if not self._capped:  # said once (a task named "other" made it said per name)
            self._capped = True
            log.warning(
                "more than %d task names seen in events: tasks not seen before (first: "
                "%r) are counted as %r, so that Prometheus is not sent a series per name. "
                "A producer sending unbounded task names is the likely cause",
                TASK_LABELS,
                name,
                OTHER,
            )
        return OTHER

    def follow(self, feed: EventFeed, stop: threading.Event) -> None:
        """Count the events ``feed`` reads until ``stop`` is set. A broker that does not
        answer is waited for (said once, and again when it answers); a stream trimmed
        past the last event read is counted in ``celeriac_events_missed_total``."""
        away = False
        while not stop.is_set():
            try:
                page = feed.read()
            except BrokerError as exc:
                if not away:
                    log.warning("%s Task events are not counted until it answers.", exc)
                away = True
                stop.wait(UNREACHABLE_PAUSE)
                continue
            if away:
                log.warning("the broker answers again: counting task events")
                away = False
            if page.missed:
                self.missed.inc()
            for raw in page.events:
                self.count(raw)
            if not page.full:
                stop.wait(FOLLOW_PAUSE)


class BrokerCollector(Collector):
    """The broker's counts at the time of each scrape: queues and live workers."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self._said: str | None = None  # the last error logged, so an outage is said once

    def describe(self) -> list[Metric]:
        """No metrics described ahead: registering must not read the broker."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read the queues' counts and the live workers; ``celeriac_broker_up`` says
        whether that worked (0: the broker did not answer, and the other metrics of this
        collector are left out rather than reported as zeros)."""
        up = GaugeMetricFamily(
            "celeriac_broker_up",
            "1 when this scrape read the broker's queues and workers, 0 when it could not",
        )
        try:
            stats = self.app.broker.stats(ready_at)
            workers = live_workers(self.app)
        except BrokerError as exc:
            if str(exc) != self._said:
                log.warning("a scrape could not read the broker: %s", exc)
                self._said = str(exc)
            up.add_metric([], 0)
            yield up
            return
        self._said = None
        up.add_metric([], 1)
        yield up
        queues = GaugeMetricFamily(
            "celeriac_queue_tasks",
            "Tasks in each queue by state: ready (a fetch can take them), delayed (a "
            "countdown, an ETA or a retry's backoff), in_flight (held under a lease), dead "
            "(dead-lettered)",
            labels=["queue", "state"],
        )
        for s in stats:
            queues.add_metric([s.queue, "ready"], s.ready)
            queues.add_metric([s.queue, "delayed"], s.delayed)
            queues.add_metric([s.queue, "in_flight"], s.in_flight)
            queues.add_metric([s.queue, "dead"], s.dead)
        yield queues
        now = time.time()
        latency = GaugeMetricFamily(
            "celeriac_queue_latency_seconds",
            "How long the longest-waiting ready task of each queue has waited to start, "
            "since it was sent or came due (0: none waiting; no sample while Redis cannot "
            "tell: the messages first in its lists are pickled or not messages). A task "
            "given back to its queue (its worker died, a rate limit deferred it) counts "
            "from its send on Redis",
            labels=["queue"],
        )
        for s in stats:
            waited = s.waited(now)
            if waited is not None:  # not 0: an alert on it would never fire
                latency.add_metric([s.queue], waited)
        yield latency
        unhealthy = sum(1 for w in workers if isinstance(w.extra.get("unhealthy"), str))
        yield GaugeMetricFamily("celeriac_workers", "Live workers, by heartbeat", len(workers))
        yield GaugeMetricFamily(
            "celeriac_workers_unhealthy",
            "Live workers that run no task (a child crash loop): celeriac status says why",
            unhealthy,
        )
        yield GaugeMetricFamily(
            "celeriac_worker_concurrency",
            "Tasks the live workers can run at once: their -c (children, threads or "
            "coroutines) summed",
            sum(w.concurrency for w in workers),
        )
