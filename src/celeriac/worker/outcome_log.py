"""The one log line a worker writes per settled task, and how message text is shown in it.

Its level by outcome: ERROR for a failure or a dead letter, WARNING for a step a failure
kept from running and for an outcome discarded with a lost lease, INFO for the rest; a
deferral writes none.
"""

from __future__ import annotations

import logging

from celeriac.errors import Retry
from celeriac.middleware.base import Job, Outcome
from celeriac.middleware.retries import described
from celeriac.text import printable, seconds
from celeriac.worker.reading import label

log = logging.getLogger("celeriac.worker")

#: The level of a committed outcome's line, by state (INFO for any other): the one place
#: that says it.
_LOG_LEVELS = {"FAILURE": logging.ERROR, "DEAD": logging.ERROR}
LOG_TEXT_CHARS = 2000  # of an error in a log line; the stored result keeps all of it


def log_outcome(job: Job, outcome: Outcome, lease_loss: str = "") -> None:
    """Log how ``job`` ended; ``lease_loss`` (the broker's reason) when it was not committed.

    Example:
        >>> from celeriac.brokers.records import Delivery, Lease
        >>> job = Job(Delivery(Lease("t1", "default", "tok"), b"{}", 1), "worker-1")
        >>> log_outcome(job, Outcome("EXPIRED", reason="expired 3.2s before a worker started it"))
    """
    if lease_loss:
        log.warning(
            "task %s: lease lost before settling (%s), so this outcome was discarded: %s",
            label(job),
            outcome.state,
            lease_loss,
        )
        return
    state = outcome.state
    # An unrun step of a failed workflow: its cause was logged at ERROR once, and a
    # line per step ("task parse failed: ConnectionError") blamed tasks that never ran.
    level = logging.WARNING if outcome.not_run else _LOG_LEVELS.get(state, logging.INFO)
    if state == "DEFERRED" or not log.isEnabledFor(level):
        # A line that would be dropped is not built: the escaped label and the run
        # time's float formatting were ~5% of a no-op task's instructions at WARNING.
        return
    shown = label(job)  # the name and id are the sender's text
    # No run time for an outcome decided without running the task here (a verdict of
    # the supervisor's after a kill, an expiry): "in 0.0000s" would mislead.
    runtime = f" in {outcome.runtime:.4f}s" if outcome.runtime else ""
    if state == "SUCCESS":
        log.log(level, "task %s succeeded%s", shown, runtime)
    elif state == "FAILURE":
        error = outcome.error
        log.log(
            level,
            "task %s %s: %s: %s",
            shown,
            f"not run: {for_log(outcome.not_run)}"
            if outcome.not_run
            else f"failed{runtime}{f' (gave up {outcome.gave_up})' if outcome.gave_up else ''}",
            for_log(error.type) if error else "?",
            for_log(_unlabelled(error.message, job)) if error else "",
        )
    elif state == "RETRY":
        # With its cause: "will retry in 0.2s (attempt 1)" alone left the operator to
        # guess why a task kept coming back, until its retries ran out.
        cause = outcome.exception
        if isinstance(cause, Retry):  # raise self.retry(exc=...): its exc, if it has one
            cause = cause.exc
        log.log(
            level,
            "task %s will retry in %s (attempt %d)%s",
            shown,
            seconds(outcome.delay or 0.0),
            job.message.retries + 1 if job.message else 0,  # the retry just queued
            f": {for_log(described(cause))}" if cause is not None else "",
        )
    elif state == "DEAD":
        log.log(
            level,
            "task %s dead-lettered: %s. See `celeriac dlq list`.",
            shown,
            for_log(outcome.reason),
        )
    else:
        reason = _unlabelled(outcome.reason, job)
        if reason != outcome.reason or reason.startswith(state.lower()):
            # "expired 3.2s before ...", "was revoked and stopped": the state said once
            log.log(level, "task %s %s", shown, for_log(reason))
        else:
            log.log(level, "task %s %s: %s", shown, state.lower(), for_log(reason))


def _unlabelled(text: str, job: Job) -> str:
    """``text`` without a leading ``task NAME[ID] `` that names this line's own task (a
    verdict's or an error's text, written to be read on its own): the line starts with
    the label already, and said it twice. Otherwise ``text`` itself.

    Example:
        >>> from celeriac.brokers.records import Delivery, Lease
        >>> from celeriac.message import Message
        >>> job = Job(Delivery(Lease("t1", "default", "tok"), b"{}", 1), "w")
        >>> job.message = Message(id="t1", task="shop.add")
        >>> _unlabelled("task shop.add[t1] was revoked and stopped", job)
        'was revoked and stopped'
    """
    message = job.message
    if message is None or not text.startswith("task "):
        return text
    for own in (f"task {job.label} ", f"task {message.task}[{job.delivery.id}] "):
        if text.startswith(own):  # as Job.label writes it (escaped), or as sent
            return text[len(own) :]
    return text


def for_log(text: str) -> str:
    """``text`` as one log line shows it: control characters escaped and cut short.

    Task names, ids, reasons and error texts come from messages and task code, so anyone
    who can send a task can put a newline or an ANSI escape code in them: written as
    they are, they forged log lines ("...\\n04:00:00 INFO task x succeeded") or rewrote
    the operator's terminal. A task failing with a megabyte of text wrote a megabyte line
    per failure (the result and ``celeriac result ID`` have it whole).

    Example:
        >>> print(for_log("bad\\nFAKE 04:00:00 INFO ok \\x1b[2J"))
        bad\\nFAKE 04:00:00 INFO ok \\x1b[2J
        >>> len(for_log("x" * 10_000)) < 2100
        True
    """
    text = printable(text)
    if len(text) <= LOG_TEXT_CHARS:
        return text
    more = len(text) - LOG_TEXT_CHARS
    return f"{text[:LOG_TEXT_CHARS]}... ({more:,} more characters in the result)"
