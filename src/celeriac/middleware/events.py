"""Events: what happened to each task, for monitoring (`celeriac events`).

One event per task by default — its outcome, with its runtime — and ``received`` and
``started`` too with ``worker_send_started_events``. Events are buffered in the worker and
written to the broker's bounded stream ``events``
in batches (every quarter second, every 200 events, or when the worker goes idle), so
monitoring costs no extra round trip per task and the stream never grows without bound:
it keeps the last ``max_length`` events, and an event's ``detail`` (the error message)
is cut to ``DETAIL_CHARS``, so one task failing with a megabyte of text cannot make the
stream hold gigabytes. The result keeps the whole error.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec

from celeriac.errors import BrokerError
from celeriac.middleware.base import Job, Middleware, Outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

STREAM = "events"
_SAY_AGAIN = 30.0  # seconds between two warnings about events the broker refused
DETAIL_CHARS = 500  # an event names what happened; the result holds the whole error
_NAMES = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "EXPIRED": "expired",
    "REVOKED": "revoked",
    "DEAD": "dead-lettered",
    "DEFERRED": "deferred",
}
#: Every type of event a worker writes: what ``celeriac events --type`` chooses from.
EVENT_TYPES = ("received", "started", *_NAMES.values(), "not-run", "moved")
#: The task name of an event about bytes that could not be read as a message (they were
#: dead-lettered): its task is not known.
UNREAD_TASK = "?"


class Event(msgspec.Struct, omit_defaults=True):
    """One task event."""

    type: str  # received, started, succeeded, failed, not-run, retried, expired, revoked, ...
    id: str
    task: str
    worker: str
    at: float
    runtime: float | None = None
    detail: str = ""


class Events(Middleware):
    """Buffers task events and flushes them to the broker in batches."""

    def __init__(self, max_length: int = 10_000) -> None:
        self.max_length = max_length
        self._buffer: list[bytes] = []
        self._flushed = time.monotonic()
        self._app: Celeriac | None = None
        self._dropped = 0  # events the broker refused since it last took a batch
        self._said_at = -_SAY_AGAIN  # when that was last logged

    def _add(self, job: Job, kind: str, runtime: float | None = None, detail: str = "") -> None:
        # The worker's app, there even for a task it does not know or could not decode:
        # with the task's only, their events were never written (nor, with events turned
        # off, ever dropped from the buffer).
        app = job.app or (job.task.app if job.task is not None else None)
        if app is None or not app.conf.worker_send_task_events:
            return
        self._app = app
        if len(detail) > DETAIL_CHARS:
            detail = detail[: DETAIL_CHARS - 1] + "…"
        name = job.message.task if job.message else UNREAD_TASK
        event = Event(kind, job.delivery.id, name, job.worker_id, time.time(), runtime, detail)
        self._buffer.append(msgspec.json.encode(event))
        if len(self._buffer) >= 200 or time.monotonic() - self._flushed > 0.25:
            self.on_idle()

    def before_execute(self, job: Job) -> Outcome | None:
        """Record received and started, when ``worker_send_started_events`` asks for them.

        Off by default: the outcome event already says when the task ran (its time minus
        its runtime), and two more events per task cost a no-op task ~10% of its CPU.
        """
        if job.task is not None and job.task.app.conf.worker_send_started_events:
            self._add(job, "received")
            self._add(job, "started")
        return None

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Record the outcome. A step an earlier failure kept from running is ``not-run``:
        as ``failed``, with the earlier step's error, a chord of 1,000 after one failed
        step made 1,001 failures of a monitor's count, as its log lines once did."""
        if outcome.not_run:
            self._add(job, "not-run", outcome.runtime, outcome.not_run)
            return
        detail = outcome.error.message if outcome.error else outcome.reason
        self._add(job, _NAMES.get(outcome.state, outcome.state.lower()), outcome.runtime, detail)

    def on_idle(self) -> None:
        """Write buffered events to the broker.

        Events are for monitoring: a batch the broker refuses (down, or a full Redis) is
        dropped, said once per outage and every 30 s. It raised into the worker's hook
        runner, which logged a full traceback at every flush (132 in 15 s at maxmemory).
        """
        self._flushed = time.monotonic()
        if self._buffer and self._app is not None:
            batch, self._buffer = self._buffer, []
            try:
                self._app.broker.stream_append(STREAM, batch, self.max_length)
            except BrokerError as exc:
                self._dropped += len(batch)
                now = time.monotonic()
                if now - self._said_at >= _SAY_AGAIN:
                    self._said_at = now
                    log.warning(
                        "task events not written (%d dropped so far; the tasks are not "
                        "affected): %s",
                        self._dropped,
                        exc,
                    )
            else:
                if self._dropped:
                    log.info("task events are written again (%d were dropped)", self._dropped)
                    self._dropped, self._said_at = 0, -_SAY_AGAIN
