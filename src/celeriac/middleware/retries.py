"""Retries: autoretry_for, max_retries, exponential backoff with full jitter.

A retry is a new version of the same message (same task id, ``retries`` + 1) that waits in
the broker's delayed store — never in a worker — committed in the same fenced step that
releases the current delivery.
"""

from __future__ import annotations

from typing import Any

from celeriac.errors import Retry
from celeriac.middleware.base import Job, Middleware, Outcome
from celeriac.retry import RetryPolicy


class Retries(Middleware):
    """Turns failures into retries per the task's options, and bounds every retry.

    Task options: ``autoretry_for`` (exception types), ``max_retries`` (default 3),
    ``retry_backoff`` (base seconds, default 1), ``retry_backoff_max`` (default 600),
    ``retry_jitter`` (default True), ``dead_letter_after_retries`` (default False: the
    final failure is only stored; True also dead-letters the message).
    """

    options = frozenset(
        {
            "autoretry_for",
            "max_retries",
            "retry_backoff",
            "retry_backoff_max",
            "retry_jitter",
            "dead_letter_after_retries",
        }
    )

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Decide between RETRY and a final FAILURE."""
        task, message = job.task, job.message
        if task is None or message is None or outcome.state not in {"FAILURE", "RETRY"}:
            return outcome
        opts: dict[str, Any] = task.options.extra
        if outcome.state == "FAILURE":
            retry_on = tuple(opts.get("autoretry_for", ()))
            if not (retry_on and isinstance(outcome.exception, retry_on)):
                return outcome
        max_retries = opts.get("max_retries", 3)
        if max_retries is not None and message.retries >= max_retries:
            return self._give_up(job, outcome, max_retries, opts)
        if outcome.state == "FAILURE" or outcome.delay is None:
            policy = RetryPolicy(
                base=float(opts.get("retry_backoff", 1.0)),
                cap=float(opts.get("retry_backoff_max", 600.0)),
                jitter=bool(opts.get("retry_jitter", True)),
            )
            delay = policy.delay(message.retries)
        else:
            delay = outcome.delay
        exc = outcome.exception
        if exc is not None and not isinstance(exc, Retry):
            # Kept in the message, so a dead letter can show the first error and the last.
            message.options.setdefault("first_error", f"{_qualname(exc)}: {exc}")
        return Outcome("RETRY", delay=delay, exception=exc, runtime=outcome.runtime)

    def _give_up(
        self, job: Job, outcome: Outcome, max_retries: int, opts: dict[str, Any]
    ) -> Outcome:
        from celeriac.worker.executor import error_info

        exc = outcome.exception
        error = outcome.error or (error_info(exc) if exc is not None else None)
        final = Outcome("FAILURE", error=error, exception=exc, runtime=outcome.runtime)
        if opts.get("dead_letter_after_retries"):
            final.state = "DEAD"
            final.reason = f"failed after {max_retries} retries"
        return final


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"
