"""Every exception celeriac raises, under one root.

::

    CeleriacError
    ├── ConfigurationError          a bad setting, broker URL or app path
    ├── MessageError                a message cannot be built or read
    │   ├── SerializationError      an argument or result is not serializable
    │   ├── PayloadTooLarge         refused at enqueue: the message is over the hard size
    │   ├── ArgumentsRefused        also a TypeError: arguments the task cannot take (never
    │   │                           retried: the same message would fail the same way)
    │   └── MalformedMessage        bytes in the broker that are not a celeriac message
    │       └── NewerProtocol       a message of a protocol version this worker cannot read
    ├── BrokerError                 the broker failed (translated from driver errors)
    │   ├── BrokerConnectionError   the broker cannot be reached
    │   └── LeaseLost               a worker tried to settle a message it no longer holds
    ├── NotRegistered               no task of that name in this process
    ├── UnknownEntry                no periodic (beat) entry of that name
    ├── TaskFailed                  a task's exception that cannot be rebuilt as its own type
    │   └── ChordError              a chord member failed, so its callback did not run
    ├── ResultTimeout               also a TimeoutError: get() waited longer than asked
    ├── GetInsideTask               also a RuntimeError: get() on another task's result from
    │                               inside a running task (it can deadlock the worker)
    └── TaskControl                 raised inside tasks to steer the worker, not errors
        ├── Retry                   run this task again later
        ├── Reject                  do not run or retry this message; dead-letter it
        ├── SoftTimeLimitExceeded   the task passed its soft time limit (catch it to clean up)
        ├── TimeLimitExceeded       the task passed its hard time limit and was stopped
        ├── TaskExpired             the message's expiry passed before it started
        └── TaskRevoked             the task was revoked

Driver errors never escape a broker: each broker raises ``BrokerConnectionError(...) from
exc`` so callers handle one family whatever the broker.
"""

from __future__ import annotations

import math
import reprlib
import time


class CeleriacError(Exception):
    """The root of every error celeriac raises."""


class ConfigurationError(CeleriacError):
    """A setting, broker URL or ``-A`` app path is wrong; the message says which and how."""


class MessageError(CeleriacError):
    """A message cannot be built or read."""


class SerializationError(MessageError):
    """An argument or a result cannot be encoded.

    Example:
        >>> raise SerializationError("shop.send_welcome: argument 'user' is a User object")
        Traceback (most recent call last):
        ...
        celeriac.errors.SerializationError: shop.send_welcome: argument 'user' is a User object
    """


class PayloadTooLarge(MessageError):
    """A message is larger than ``task_payload_max_bytes``; nothing was sent."""


class ArgumentsRefused(MessageError, TypeError):
    """A message's arguments do not fit its task: a value that is not its parameter's
    annotated type, or a keyword the task does not take (``task_strict_kwargs``).

    Autoretry never retries it, whatever ``autoretry_for`` says (``Exception`` covers it):
    the same message would fail the same way at every attempt.

    Example:
        >>> isinstance(ArgumentsRefused("task shop.report: argument 'when' ..."), TypeError)
        True
    """


class MalformedMessage(MessageError):
    """Bytes in the broker that are not a message this worker can read."""


class NewerProtocol(MalformedMessage):
    """A message of a newer protocol version than this worker reads (a newer producer's).

    A worker puts it back for an upgraded worker, as it does for a task it does not know,
    so it carries what it could read of the message.

    Example:
        >>> exc = NewerProtocol("task t[a] uses message protocol v2", task="t", sent_at=5.0)
        >>> exc.task, exc.sent_at
        ('t', 5.0)
    """

    def __init__(self, text: str, *, task: str = "?", sent_at: float = 0.0) -> None:
        super().__init__(text)
        self.task = task  # the name as sent ("?" when unreadable)
        self.sent_at = sent_at  # 0.0 when the message did not say (or not as a number)


class BrokerError(CeleriacError):
    """The broker failed to do what was asked.

    ``maybe_done`` is True when it may have done it all the same: the request reached
    the broker and no answer came back (a Redis that did not answer in time runs the
    command once it answers), or a batch in several calls failed partway. A send is safe
    to repeat with the same ids: an id already queued is not queued twice.

    Example:
        >>> BrokerError("could not send messages: Redis did not answer").maybe_done
        False
    """

    maybe_done = False
    #: True when the broker answered the call with a refusal (a wrong password, an ACL
    #: denial, a server loading its data or running a long script): it is there, and
    #: "cannot reach the broker" would send an operator after the network.
    answered = False


class BrokerConnectionError(BrokerError):
    """The broker cannot be reached. Producers see this; workers reconnect by themselves."""


class LeaseLost(BrokerError):
    """A worker tried to settle a message whose lease it no longer holds.

    Another worker may hold it now, so this worker's result must not be committed.
    """


class NotRegistered(CeleriacError, KeyError):
    """No task of this name is registered in this process."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class UnknownEntry(CeleriacError, KeyError):
    """No periodic entry of this name (``app.beat``, ``celeriac beat``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such periodic entry"


class TaskFailed(CeleriacError):
    """A task failed with an exception that cannot be rebuilt here as its own type.

    Attributes:
        exc_type: the qualified name of the task's exception type.
        remote_traceback: the traceback text from the worker.
    """

    def __init__(self, message: str, exc_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback


class ChordError(TaskFailed):
    """A member of a chord (or of a group followed by more steps) failed, so the callback did
    not run; the message names the member, its task id and its error.

    Example:
        >>> raise ChordError("chord member 3 (shop.resize[ab12]) failed: ValueError: bad size")
        Traceback (most recent call last):
        ...
        celeriac.errors.ChordError: chord member 3 (shop.resize[ab12]) failed: ValueError: bad size
    """


class ResultTimeout(CeleriacError, TimeoutError):
    """``AsyncResult.get()`` waited longer than its timeout; the task may still finish."""


class GetInsideTask(CeleriacError, RuntimeError):
    """A running task called ``get()`` / ``aget()`` on another task's result, and was refused.

    Waiting holds the worker's slot (a process, a thread, a coroutine slot) while the
    subtask waits for a free one: with ``-c 1``, or when every slot waits the same way,
    nothing runs the subtask and the task hangs until its soft time limit. Chain the steps
    (or use a chord) instead; pass ``disable_sync_subtasks=False`` only when the subtask runs
    on a queue that other workers serve.

    Example:
        >>> raise GetInsideTask("task shop.parent[ab12] waited for shop.child[cd34]")
        Traceback (most recent call last):
        ...
        celeriac.errors.GetInsideTask: task shop.parent[ab12] waited for shop.child[cd34]
    """


class TaskControl(CeleriacError):
    """Raised inside a task to steer the worker; not a failure of celeriac."""


class Retry(TaskControl):
    """Run this task again after ``delay`` seconds (the retry policy's backoff when None).

    Example:
        >>> raise Retry(delay=5)
        Traceback (most recent call last):
        ...
        celeriac.errors.Retry: retry in 5s
    """

    def __init__(
        self,
        delay: float | None = None,
        exc: BaseException | None = None,
        max_retries: int | None = None,
    ) -> None:
        if delay is not None:
            _check_retry_delay(delay)
        _check_retry_cause(exc)
        if max_retries is not None and (
            max_retries.__class__ is bool or not isinstance(max_retries, int) or max_retries < 0
        ):
            raise ValueError(
                f"retry max_retries must be a whole number of at least 0, got {max_retries!r}"
            )
        super().__init__(f"retry in {delay:g}s" if delay is not None else "retry")
        self.delay = delay
        self.exc = exc
        self.max_retries = max_retries  # this retry's own limit, over the task's option

    def __reduce__(
        self,
    ) -> tuple[type[Retry], tuple[float | None, BaseException | None, int | None]]:
        # Pickled as an exception (its text for args), it came back as Retry("retry in
        # 5s"), which its own check refuses: copy.copy and a process pool's result failed.
        return (type(self), (self.delay, self.exc, self.max_retries))


def _check_retry_delay(delay: object) -> None:
    """Refuse a retry delay no broker can honour, as ``apply_async`` refuses such a
    countdown. ``inf`` or ``1e12`` (a Retry-After header misread, a backoff computed by
    hand) left the task in the delayed store for ever, its state RETRY, with nothing
    logged; a str failed the task with "Unknown format code 'g'".

    Example:
        >>> _check_retry_delay(1e12)
        Traceback (most recent call last):
        ValueError: retry countdown=1000000000000.0 puts the retry after the year 9999: it \
would never come due, and the task would wait as RETRY for ever; pass seconds, e.g. \
countdown=30
    """
    if delay.__class__ is bool or not isinstance(delay, int | float):
        raise TypeError(
            f"retry countdown must be a number of seconds, got {type(delay).__name__} "
            f"{delay!r}; pass seconds, e.g. countdown=30"
        )
    if not math.isfinite(delay):
        raise ValueError(
            f"retry countdown={delay!r} is not a finite number of seconds, so the retry "
            "cannot be scheduled; pass seconds, e.g. countdown=30"
        )
    # here: celeriac.message imports this module
    from celeriac.message import LATEST_TIME, unix_time_as_seconds

    if wrong := unix_time_as_seconds("countdown", delay, time.time()):
        raise ValueError(f"retry {wrong}")  # a Retry-After date turned into a timestamp by hand
    if time.time() + delay > LATEST_TIME:
        raise ValueError(
            f"retry countdown={delay!r} puts the retry after the year 9999: it would never "
            "come due, and the task would wait as RETRY for ever; pass seconds, e.g. "
            "countdown=30"
        )


def _check_retry_cause(exc: object) -> None:
    """Refuse a retry's ``exc`` that is not an exception. ``self.retry(exc=str(e))`` could
    not be stored as the retry's error nor raised when the retries ran out: the task was
    retried for ever, past ``max_retries``, its state never RETRY, a worker warning per run.

    Example:
        >>> _check_retry_cause("smtp timeout")
        Traceback (most recent call last):
        TypeError: retry exc must be the exception that made the task retry, got str \
'smtp timeout'; pass the exception itself, e.g. raise self.retry(exc=error)
    """
    if exc is not None and not isinstance(exc, BaseException):
        raise TypeError(
            f"retry exc must be the exception that made the task retry, got "
            f"{type(exc).__name__} {reprlib.repr(exc)}; pass the exception itself, e.g. "
            "raise self.retry(exc=error)"
        )


class Reject(TaskControl):
    """Do not run or retry this message: send it to the dead-letter queue with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SoftTimeLimitExceeded(TaskControl):
    """The task ran past its soft time limit. Catch it to clean up; the hard limit follows.

    Example:
        >>> str(SoftTimeLimitExceeded())
        'the task ran past its soft time limit'
    """

    def __init__(self, message: str = "the task ran past its soft time limit") -> None:
        # A default, as the threads pool raises the class inside the task's thread.
        super().__init__(message)


class TimeLimitExceeded(TaskControl):
    """The task ran past its hard time limit and its process was stopped."""


class TaskExpired(TaskControl):
    """The message's expiry passed before a worker started it."""


class TaskRevoked(TaskControl):
    """The task was revoked before or while it ran."""
