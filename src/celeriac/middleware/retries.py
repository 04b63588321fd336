"""Retries: autoretry_for, max_retries, exponential backoff with full jitter.

A retry is a new version of the same message (same task id, ``retries`` + 1) that waits in
the broker's delayed store — never in a worker — committed in the same fenced step that
releases the current delivery.
"""

from __future__ import annotations

import logging
import reprlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import msgspec

from celeriac.errors import ArgumentsRefused, Retry, TaskFailed
from celeriac.middleware.base import (
    Job,
    Middleware,
    Outcome,
    call_options,
    is_seconds,
    option_error,
)
from celeriac.retry import DEFAULT_MAX_RETRIES, RetryPolicy
from celeriac.text import error_text, error_type, printable

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")


class Retries(Middleware):
    """Turns failures into retries per the task's options, and bounds every retry.

    Task options: ``autoretry_for`` (exception types), ``max_retries`` (default 3),
    ``retry_backoff`` (base seconds, default 1), ``retry_backoff_max`` (default 600),
    ``retry_jitter`` (default True), ``dead_letter_after_retries`` (default False: the
    final failure is only stored; True also dead-letters the message). Each but
    ``autoretry_for`` (classes: a message cannot carry them) may also be given to
    ``apply_async`` for one call. A retry that would be due after the message's
    expiry is not scheduled: the task fails with its own error instead of ending EXPIRED.
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

    task_only_options = frozenset({"autoretry_for"})  # classes: a message cannot carry them

    def check_options(self, app: Celeriac, task: str, options: dict[str, Any]) -> None:
        """Refuse a value this middleware could not apply: in the worker it failed this
        hook (logged and skipped), so the task was not retried at all.

        Example:
            >>> from celeriac import Celeriac
            >>> Retries().check_options(Celeriac("doc", broker="memory://"), "shop.push",
            ...                         {"max_retries": -1})
            Traceback (most recent call last):
            celeriac.errors.ConfigurationError: task shop.push: max_retries must be a whole \
number of at least 0, or None for no limit, got -1
        """
        for option, value in options.items():
            accepted = _ACCEPTED.get(option)
            if accepted is not None and not accepted[0](value):
                what = accepted[1]
                if option == "retry_backoff" and value is True:  # Celery's spelling
                    what += " (Celery's retry_backoff=True is 1 second: write retry_backoff=1)"
                raise option_error(task, option, value, what)

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Decide between RETRY and a final FAILURE."""
        task, message = job.task, job.message
        if task is None or message is None or outcome.state not in {"FAILURE", "RETRY"}:
            return outcome
        # apply_async(max_retries=0) and the like apply to their call; they were ignored.
        opts = call_options(task.options.extra, _usable(job, message.options), self.options)
        if outcome.state == "FAILURE":
            retry_on = _exception_types(opts.get("autoretry_for", ()))
            if not (retry_on and isinstance(outcome.exception, retry_on)):
                return outcome
            if isinstance(outcome.exception, ArgumentsRefused):
                return outcome  # the same arguments would fail the same way every time
        max_retries = opts.get("max_retries", DEFAULT_MAX_RETRIES)
        if outcome.state == "RETRY" and outcome.max_retries is not None:
            max_retries = outcome.max_retries  # raise self.retry(max_retries=5): this call's
        if max_retries is not None and message.retries >= max_retries:
            return self._give_up(job, outcome, f"after {max_retries} retries", opts)
        if outcome.state == "FAILURE" or outcome.delay is None:
            policy = RetryPolicy(
                base=float(opts.get("retry_backoff", 1.0)),
                cap=float(opts.get("retry_backoff_max", 600.0)),
                jitter=bool(opts.get("retry_jitter", True)),
            )
            delay = policy.delay(message.retries)
        else:
            delay = outcome.delay
        if message.expires is not None and time.time() + delay >= message.expires:
            # A retry due after the expiry would only end EXPIRED, "expired before a worker
            # started it": the task's own error lost, and its caller told it never ran.
            why = f"after {message.retries} retries: the next would be due after its expiry"
            return self._give_up(job, outcome, why, opts)
        exc = outcome.exception
        if exc is not None and not isinstance(exc, Retry):
            # Kept in the message, so a dead letter can show the first error and the last.
            message.options.setdefault("first_error", described(exc))
        return Outcome("RETRY", delay=delay, exception=exc, runtime=outcome.runtime)

    def _give_up(self, job: Job, outcome: Outcome, why: str, opts: dict[str, Any]) -> Outcome:
        from celeriac.worker.reading import error_info

        exc = outcome.exception
        if isinstance(exc, Retry):
            # ``raise self.retry()`` with no cause: "celeriac.errors.Retry: retry in 5s" told
            # the caller nothing, and run_queued re-raised a Retry in the test.
            exc = TaskFailed(
                f"task {job.label} gave up {why}; its last run raised Retry without an "
                "error (pass the cause, raise self.retry(exc=...), to see it here)"
            )
        error = outcome.error if exc is outcome.exception else None
        error = error or (error_info(exc) if exc is not None else None)
        if error is not None:  # the caller's traceback note says why it was not retried
            note = f"celeriac: task {job.label} gave up {why}"
            error = msgspec.structs.replace(error, traceback=f"{error.traceback}\n{note}".lstrip())
        final = Outcome("FAILURE", error=error, exception=exc, runtime=outcome.runtime, gave_up=why)
        if opts.get("dead_letter_after_retries"):
            final.state = "DEAD"
            final.reason = f"failed {why}"
        return final


def _is_exception_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _are_exception_classes(value: object) -> bool:
    if _is_exception_class(value):
        return True
    return isinstance(value, tuple | list | set | frozenset) and all(
        _is_exception_class(v) for v in value
    )


def _is_retry_count(value: object) -> bool:
    return value is None or (value.__class__ is not bool and isinstance(value, int) and value >= 0)


#: Each option's test, and what it accepts (for the error).
_ACCEPTED: dict[str, tuple[Callable[[object], bool], str]] = {
    "autoretry_for": (
        _are_exception_classes,
        "an exception class or a tuple of exception classes, e.g. (ConnectionError,)",
    ),
    "max_retries": (_is_retry_count, "a whole number of at least 0, or None for no limit"),
    "retry_backoff": (is_seconds, "a finite number of seconds, at least 0"),
    "retry_backoff_max": (is_seconds, "a finite number of seconds, at least 0"),
    "retry_jitter": (lambda v: isinstance(v, bool), "True or False"),
    "dead_letter_after_retries": (lambda v: isinstance(v, bool), "True or False"),
}


def _usable(job: Job, sent: dict[str, Any]) -> dict[str, Any]:
    """The call's options that this middleware can apply; the others are logged and left
    out, so the task's own apply.

    ``apply_async`` checks them, but a message is data (another producer, another
    language): ``"max_retries": "3"`` made this hook raise at every failure, and a
    failing hook is skipped, so ``raise self.retry()`` went on for ever past the task's
    ``max_retries`` (and autoretry_for never retried).
    """
    bad = {
        name: value
        for name, value in sent.items()
        if name in _ACCEPTED and not _ACCEPTED[name][0](value)
    }
    if not bad:
        return sent
    for name, value in bad.items():
        log.warning(
            "task %s: its message's %s=%s is not %s; the task's own is used",
            job.label,
            name,
            printable(reprlib.repr(value)),
            _ACCEPTED[name][1],
        )
    return {name: value for name, value in sent.items() if name not in bad}


def _exception_types(given: object) -> tuple[type[BaseException], ...]:
    """``autoretry_for`` as a tuple of exception classes.

    One class alone (``autoretry_for=ValueError``) is accepted: ``tuple(ValueError)``
    raised in this hook, which is logged and skipped, so the task was never retried.

    Example:
        >>> _exception_types(ValueError), _exception_types([KeyError, OSError])
        ((<class 'ValueError'>,), (<class 'KeyError'>, <class 'OSError'>))
    """
    if isinstance(given, type):
        return (given,)
    return tuple(cast("Iterable[type[BaseException]]", given))


def described(exc: BaseException) -> str:
    """``"module.Type: text"`` for ``exc`` (:func:`~celeriac.text.error_text`: a broken
    ``__str__`` cost the task its retry, this hook failed and the failure stood). What a
    dead letter keeps as the first error, and a retry's log line shows.

    Example:
        >>> described(ConnectionError("upstream refused"))
        'builtins.ConnectionError: upstream refused'
    """
    return f"{error_type(exc)}: {error_text(exc)}"
