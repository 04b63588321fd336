"""The extension mechanism: middleware with named, no-op hooks.

``before_*`` hooks run in registration order and ``after_*`` hooks in reverse, like
nested context managers. A hook that raises is logged with the task it was handling and
skipped; it never takes the worker down. Each middleware declares the task options it
understands (``options``); ``@app.task`` rejects any option no middleware declared.

A task's trip through the hooks in a worker::

    before_execute  -> may return an Outcome to skip running (expired, revoked, ...)
    <the task runs>
    after_execute   -> may replace the Outcome (a failure becomes a retry, ...)
    <the broker settles the message: ack + result, requeue or dead-letter, fenced>
    after_settle    -> act on what was committed (continue a chain, emit events, ...)

And in the producer::

    before_send     -> may change the message, or name an existing task (dedupe)
    <encode, size check, broker send>
    send_failed     -> only when that failed: undo what before_send wrote
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from celeriac.errors import ConfigurationError
from celeriac.message import ErrorInfo, Message
from celeriac.text import printable

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.records import Delivery
    from celeriac.task import Request, Task

log = logging.getLogger("celeriac.middleware")


class Outcome(msgspec.Struct):
    """What happened to one delivery, and so what the broker must do with it.

    ``state`` is a result state (SUCCESS, FAILURE, RETRY, EXPIRED, REVOKED) or one of the
    message-only states: DEFERRED (put back without counting a delivery), DEAD
    (dead-lettered with ``reason``) and MOVED (held under an id the broker made up for
    bytes pushed by hand: sent again under the message's own id, this copy acked).
    """

    state: str
    value: Any = None
    error: ErrorInfo | None = None
    exception: BaseException | None = None
    delay: float | None = 0.0  # RETRY and DEFERRED: seconds until due (None: policy's)
    max_retries: int | None = None  # RETRY: self.retry(max_retries=N), over the task's
    body: bytes | None = None  # RETRY and DEFERRED: the message to store instead
    reason: str = ""  # DEAD: why
    runtime: float = 0.0
    store_result: bool = True  # final states: store the result; RETRY: store its state
    # FAILURE decided without running the task, and why (an earlier step of its workflow
    # failed): logged as not run, at WARNING, not as a failure of its own at ERROR.
    not_run: str = ""
    # FAILURE of a task the retry policy stopped retrying, and when ("after 3 retries"):
    # its log line says so, or it read as a first failure.
    gave_up: str = ""


#: The ``Job.context`` key under which the worker pools put the Unix time at which the
#: running task's hard limit ends it (0.0: no hard limit). ``after_execute`` hooks run
#: before that limit is lifted: a hook that waits (Canvas, for a broker that does not
#: answer) must be done by then, or the task is killed and settled as a time-out.
HARD_DEADLINE = "hard_deadline"


class Job(msgspec.Struct):
    """One delivery as it moves through a worker."""

    delivery: Delivery
    worker_id: str
    message: Message | None = None
    task: Task[Any, Any] | None = None
    request: Request | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)  # scratch space for middleware
    app: Celeriac | None = None  # the worker's app: there even when the task is unknown
    # Run with no other task beside it in its child (see celeriac.worker.death_notes)
    alone: bool = False

    @property
    def label(self) -> str:
        """``name[id]``, the way every log line names a task (control characters escaped:
        the name is the sender's text, see :mod:`celeriac.text`)."""
        name = self.message.task if self.message else "?"
        return printable(f"{name}[{self.delivery.id}]")


class Middleware:
    """Base class: override the hooks you need; each default does nothing.

    Every hook at work, in a policy that runs: examples/advanced/middleware.py.

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.middleware import default_middleware
        >>> class Stamp(Middleware):
        ...     options = frozenset({"team"})  # @app.task(team="billing")
        ...     def before_send(self, app, message):
        ...         message.headers["sent_by"] = "web-1"
        ...         return None  # send it (a task id instead: that task stands for it)
        >>> app = Celeriac("doc", broker="memory://", middleware=[*default_middleware(), Stamp()])
        >>> @app.task(team="billing")
        ... def invoice(order_id: int) -> None: ...
        >>> message = invoice.message((1,))  # built, not sent: no hook ran yet
        >>> app.middleware.before_send(app, message)  # what delay() runs next
        >>> message.headers
        {'sent_by': 'web-1'}
    """

    #: task options this middleware understands, e.g. {"max_retries", "retry_backoff"}
    options: ClassVar[frozenset[str]] = frozenset()
    #: those of ``options`` that only ``@app.task`` takes: their values (a function, an
    #: exception class) cannot travel in a message, so ``apply_async`` refuses them
    task_only_options: ClassVar[frozenset[str]] = frozenset()

    def check_options(self, app: Celeriac, task: str, options: dict[str, Any]) -> None:
        """Raise :class:`~celeriac.errors.ConfigurationError` for a value of one of this
        middleware's options that it could not apply; ignore every other option.

        Called with a task's options when ``@app.task`` defines it (at import time), and
        with the options ``apply_async`` gives for one call. A value that passed would
        fail in the worker, for every message of the task; :func:`option_error` words
        the error.
        """

    def before_send(self, app: Celeriac, message: Message) -> str | None:
        """Called in the producer before a message is encoded; may change it or raise.

        Return an existing task id to send nothing and hand the caller that task instead
        (dedupe).
        """
        return None

    def send_blocks(self, app: Celeriac, message: Message) -> bool:
        """Whether :meth:`before_send` will make a blocking call (the broker's sync face)
        for ``message``: then ``adelay()`` and ``apublish()`` run the send in a thread,
        so a slow broker holds up that send, not the caller's event loop."""
        return False

    def send_failed(self, app: Celeriac, message: Message) -> None:
        """Called in the producer when a message that passed :meth:`before_send` was not
        sent after all (too large, unencodable, the broker failed): undo what
        :meth:`before_send` wrote, or it would stand for a task that does not exist."""

    def before_execute(self, job: Job) -> Outcome | None:
        """Called before the task runs; return an Outcome to not run it."""
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Called after the task ran (or was skipped); return the Outcome to settle.

        ``job.task`` is None for one skipped case: a revoked message of a task this worker
        does not know, settled REVOKED without running.
        """
        return outcome

    def before_dead_letter(self, job: Job, outcome: Outcome) -> None:
        """Called just before the broker commits a dead letter, whatever decided it.

        It is the only hook that hears of a message dead-lettered before it could run (too
        many deliveries, an unknown task, a malformed message: ``job.message`` is None when
        it could not be read). A worker that dies before the commit leaves the message to
        be delivered and dead-lettered again, so this may run more than once for one
        letter: make it idempotent.
        """

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Called after the broker settled the message; ``committed`` is False when the
        lease had been lost and another worker owns the message now.

        It may run in another thread of the child than the task did: in the threads
        pool, and in a process child for a batch's commits made while a task overruns
        (see :mod:`celeriac.worker.overrun`). Keep what it shares thread-safe."""

    def on_idle(self) -> None:
        """Called when the worker has nothing to run (flush buffers here)."""

    def on_child_start(self, app: Celeriac) -> None:
        """Called in each worker child as it starts, before it takes a task: open here
        what each process needs of its own (a database pool, a client), Celery's
        ``worker_process_init``. A child is forked from its supervisor, which imported
        the app: a connection opened at import is shared by every child, and their
        replies get mixed up.

        Runs once per child process, whatever the pool (``-P threads`` and ``-P asyncio``
        run one child: this runs before its threads or its event loop start). A hook that
        raises stops the child before it takes any task: the error is logged and the
        supervisor starts another, backing off if every start fails.
        """

    def on_child_stop(self, app: Celeriac) -> None:
        """Called in a worker child that stops of its own accord (recycled, a warm
        shutdown) after it gave back or settled every task: close here what
        :meth:`on_child_start` opened, flush what is buffered. Not called in a child that
        is killed (a hard limit, the OOM killer). A hook that raises is logged."""

    async def on_loop_start(self, app: Celeriac) -> None:
        """Called in a ``-P asyncio`` child, inside its event loop, after
        :meth:`on_child_start` and before it takes a task: open what the tasks await on
        and must be made in the loop that uses it (an aiohttp session, an asyncpg pool).
        A hook that raises stops the child, as :meth:`on_child_start` does."""

    async def on_loop_stop(self, app: Celeriac) -> None:
        """Called in a ``-P asyncio`` child's event loop once its last task ended, before
        the loop closes: close what :meth:`on_loop_start` opened. A hook that raises is
        logged."""


def option_error(task: str, option: str, value: object, accepted: str) -> ConfigurationError:
    """The error for a task option's value: the task, the option, the value, and what is
    accepted instead.

    Example:
        >>> print(option_error("shop.push", "dedupe_mode", "queud", "'queued' or 'running'"))
        task shop.push: dedupe_mode must be 'queued' or 'running', got 'queud'
    """
    return ConfigurationError(f"task {task}: {option} must be {accepted}, got {value!r}")


def is_seconds(value: object, *, over_zero: bool = False) -> bool:
    """Whether ``value`` is a finite number of seconds, at least 0 (or over 0): not a bool,
    a str, NaN or infinity, which a policy's arithmetic fails on in the worker.

    Example:
        >>> is_seconds(2.5), is_seconds(0, over_zero=True), is_seconds(True), is_seconds("1")
        (True, False, False, False)
    """
    if value.__class__ is bool or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (value > 0 if over_zero else value >= 0)


def call_options(
    defined: dict[str, Any], sent: dict[str, Any], names: frozenset[str]
) -> dict[str, Any]:
    """A task's options as defined, overridden by those of ``names`` that ``apply_async``
    gave for this one call (they travel in the message's options).

    Example:
        >>> call_options({"max_retries": 3, "retry_jitter": False}, {"max_retries": 0},
        ...              frozenset({"max_retries"}))
        {'max_retries': 0, 'retry_jitter': False}
    """
    given = {name: sent[name] for name in names if name in sent}
    return {**defined, **given} if given else defined


class MiddlewareStack:
    """Runs hooks in order and contains their failures."""

    def __init__(self, middleware: list[Middleware]) -> None:
        self.middleware = middleware
        # Only middleware that override a hook are called for it: delay() and the worker's
        # per-task path skip every no-op hook. after_* lists are already reversed.
        self._senders = _overriding(middleware, "before_send")
        self._blockers = _overriding(middleware, "send_blocks")
        self._unsent = _overriding(middleware, "send_failed")[::-1]
        self._before = _overriding(middleware, "before_execute")
        self._after = _overriding(middleware, "after_execute")[::-1]
        self._settled = _overriding(middleware, "after_settle")[::-1]
        self._dead = _overriding(middleware, "before_dead_letter")[::-1]
        self._idle = _overriding(middleware, "on_idle")
        self._starting = _overriding(middleware, "on_child_start")
        self._stopping = _overriding(middleware, "on_child_stop")[::-1]
        self._loop_starting = _overriding(middleware, "on_loop_start")
        self._loop_stopping = _overriding(middleware, "on_loop_stop")[::-1]
        self._checkers = _overriding(middleware, "check_options")
        # Read per send that gives options: unions made once, not per call.
        self._known = frozenset().union(*(m.options for m in middleware))
        self._task_only = frozenset().union(*(m.task_only_options for m in middleware))

    def known_options(self) -> frozenset[str]:
        """Every task option some middleware declared."""
        return self._known

    def task_only_options(self) -> frozenset[str]:
        """Every task option some middleware takes from ``@app.task`` only."""
        return self._task_only

    def check_options(self, app: Celeriac, task: str, options: dict[str, Any]) -> None:
        """Let every middleware refuse a value of its options (see
        :meth:`Middleware.check_options`); the first error propagates to the caller."""
        for m in self._checkers:
            m.check_options(app, task, options)

    def before_send(self, app: Celeriac, message: Message) -> str | None:
        """Producer-side hooks; their errors propagate to the caller of delay().

        Returns the id of an existing task that stands for this message, if a hook said so.
        """
        for m in self._senders:
            existing = m.before_send(app, message)
            if existing is not None:
                return existing
        return None

    def send_blocks(self, app: Celeriac, message: Message) -> bool:
        """Whether a send hook will make a blocking call for ``message`` (see
        :meth:`Middleware.send_blocks`)."""
        return any(m.send_blocks(app, message) for m in self._blockers)

    def send_failed(self, app: Celeriac, messages: Sequence[Message]) -> None:
        """Let the send hooks undo their work for messages that were not sent.

        Best effort: the caller is already raising the error that stopped the send, and a
        hook's own failure (the broker is down) is logged, not raised over it.
        """
        for m in self._unsent:
            for message in messages:
                try:
                    m.send_failed(app, message)
                except Exception:
                    log.exception(
                        "%s.send_failed failed for task %s[%s]; carrying on",
                        type(m).__name__,
                        message.task,
                        message.id,
                    )

    def before_execute(self, job: Job) -> Outcome | None:
        """Run before_execute hooks until one returns an Outcome."""
        for m in self._before:
            try:
                outcome = m.before_execute(job)
            except Exception:
                log.exception(
                    "%s.before_execute failed for task %s; carrying on", type(m).__name__, job.label
                )
                continue
            if outcome is not None:
                return outcome
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Run after_execute hooks in reverse order, each seeing the previous Outcome."""
        for m in self._after:
            try:
                outcome = m.after_execute(job, outcome)
            except Exception:
                log.exception(
                    "%s.after_execute failed for task %s; carrying on", type(m).__name__, job.label
                )
        return outcome

    def before_dead_letter(self, job: Job, outcome: Outcome) -> None:
        """Run before_dead_letter hooks in reverse order."""
        for m in self._dead:
            try:
                m.before_dead_letter(job, outcome)
            except Exception:
                log.exception(
                    "%s.before_dead_letter failed for task %s; carrying on",
                    type(m).__name__,
                    job.label,
                )

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Run after_settle hooks in reverse order."""
        for m in self._settled:
            try:
                m.after_settle(job, outcome, committed)
            except Exception:
                log.exception(
                    "%s.after_settle failed for task %s; carrying on", type(m).__name__, job.label
                )

    def on_idle(self) -> None:
        """Run on_idle hooks (the worker has nothing to run)."""
        for m in self._idle:
            try:
                m.on_idle()
            except Exception:
                log.exception("%s.on_idle failed; carrying on", type(m).__name__)

    def child_started(self, app: Celeriac) -> None:
        """Run on_child_start hooks in order (see :meth:`Middleware.on_child_start`).

        Raises:
            ChildStartFailed: a hook raised (its error is the cause); the hooks that had
                run already were given their on_child_stop, as a stop would.
        """
        for m in self._starting:
            try:
                m.on_child_start(app)
            except Exception as exc:
                self._stop(app, self._registered_before(m, self._stopping))
                raise ChildStartFailed(type(m).__name__, "on_child_start", exc) from exc

    def child_stopping(self, app: Celeriac) -> None:
        """Run on_child_stop hooks in reverse order; each failure is logged."""
        self._stop(app, self._stopping)

    async def loop_started(self, app: Celeriac) -> None:
        """Run on_loop_start hooks in order, in a ``-P asyncio`` child's event loop.

        Raises:
            ChildStartFailed: as :meth:`child_started`, for the loop's hooks.
        """
        for m in self._loop_starting:
            try:
                await m.on_loop_start(app)
            except Exception as exc:
                await self._loop_stop(app, self._registered_before(m, self._loop_stopping))
                raise ChildStartFailed(type(m).__name__, "on_loop_start", exc) from exc

    async def loop_stopping(self, app: Celeriac) -> None:
        """Run on_loop_stop hooks in reverse order; each failure is logged."""
        await self._loop_stop(app, self._loop_stopping)

    def _registered_before(self, failed: Middleware, hooked: list[Middleware]) -> list[Middleware]:
        """Those of ``hooked`` registered before ``failed``: as nested context managers,
        they stop when it fails to start."""
        before = self.middleware[: next(i for i, m in enumerate(self.middleware) if m is failed)]
        return [m for m in hooked if any(m is b for b in before)]

    def _stop(self, app: Celeriac, stopping: list[Middleware]) -> None:
        for m in stopping:
            try:
                m.on_child_stop(app)
            except Exception:  # noqa: BLE001 - logged, with its traceback
                _stop_failed(m, "on_child_stop")

    async def _loop_stop(self, app: Celeriac, stopping: list[Middleware]) -> None:
        for m in stopping:
            try:
                await m.on_loop_stop(app)
            except Exception:  # noqa: BLE001 - logged, with its traceback
                _stop_failed(m, "on_loop_stop")


def _stop_failed(m: Middleware, hook: str) -> None:
    log.exception(
        "%s.%s failed in worker child %d; the child exits all the same",
        type(m).__name__,
        hook,
        os.getpid(),
    )


class ChildStartFailed(Exception):
    """A middleware's ``on_child_start`` (or ``on_loop_start``) raised: the child must not
    take tasks."""

    def __init__(self, middleware: str, hook: str, error: Exception) -> None:
        super().__init__(f"{middleware}.{hook} raised {type(error).__name__}: {error}")
        self.middleware = middleware


def _overriding(middleware: list[Middleware], hook: str) -> list[Middleware]:
    """The middleware whose class overrides ``hook``, in registration order."""
    return [m for m in middleware if getattr(type(m), hook) is not getattr(Middleware, hook)]
