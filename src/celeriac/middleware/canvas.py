"""Canvas: move a workflow (chain, group, chord, links) on when one of its tasks finishes.

A workflow is data. :mod:`celeriac.canvas` freezes it — every task gets its id up front,
derived from the workflow's id — and sends its first tasks. Each message carries what comes
after it in ``Message.options["canvas"]`` (the format: :mod:`celeriac.middleware.flow`).

This middleware continues in ``after_execute``, *before* the broker commits the task: a
worker that dies in between leaves an uncommitted task that is delivered and continued
again. Continuing after the commit instead (``after_settle``) would leave a committed
task whose workflow never moves on. Continuing twice is harmless: every message sent here
has an id fixed when the workflow was frozen, and a broker ignores an id it already holds
or has finished; a join records each member once (``join_add``), so a redelivered member
neither completes a join early nor twice, and whoever sees the count reach the size sends
the callback — again under its fixed id.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from celeriac.control import has_revoke_mark
from celeriac.errors import BrokerError, MessageError
from celeriac.message import ErrorInfo, Message
from celeriac.middleware.base import HARD_DEADLINE, Job, Middleware, Outcome
from celeriac.middleware.flow import Flow, public_error, what_happened
from celeriac.text import printable

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.task import Task

log = logging.getLogger("celeriac.canvas")

_FAILED = frozenset({"FAILURE", "EXPIRED", "REVOKED", "DEAD"})
_STATE_ERRORS = {
    "EXPIRED": "celeriac.errors.TaskExpired",
    "REVOKED": "celeriac.errors.TaskRevoked",
    "DEAD": "celeriac.errors.Reject",
}
_TRACEBACK_CHARS = 4000  # tracebacks ride in messages and join values: keep them bounded
_RETRY_DELAY = 1.0  # seconds before a task whose workflow could not be continued runs again
# Seconds between tries to continue a workflow (a Redis restart or failover, a Redis full
# for a moment): a task not continued runs again whole, a dead letter's workflow waits.
_PAUSES = (0.5, 1.0, 2.0, 4.0)
# Seconds a try to continue leaves before the task's hard limit: the supervisor would kill
# the child and settle the task, which succeeded, as a time-out.
_DEADLINE_MARGIN = 1.0
# job.context key: the broker error that kept a dead letter's workflow from being told
_UNTOLD = "canvas_untold"


def error_dict(message: Message, outcome: Outcome) -> dict[str, str]:
    """A failed outcome as the error dict a workflow passes on: which task, what error.

    Example:
        >>> m = Message(id="t1", task="shop.charge")
        >>> o = Outcome("FAILURE", error=ErrorInfo(type="builtins.ValueError", message="no card"))
        >>> error_dict(m, o)["message"]
        'no card'
    """
    info = outcome.error
    if info is None:
        kind = _STATE_ERRORS.get(outcome.state, "celeriac.errors.TaskFailed")
        info = ErrorInfo(type=kind, message=outcome.reason or outcome.state.lower())
    return {
        "id": message.id,
        "task": message.task,
        "type": info.type,
        "message": info.message,
        "traceback": info.traceback[-_TRACEBACK_CHARS:],
    }


def chunk_task(task: Task[Any, Any]) -> Task[Any, Any]:
    """A stand-in for ``task`` that runs it once per argument list and returns the results.

    Each argument list is converted to the task's annotated types as a message's
    arguments are (:mod:`celeriac.arguments`): a chunk passed a ``bytes`` parameter its
    base64 text, and a ``datetime`` its ISO text, where ``map`` and ``starmap`` did not.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def add(x: int, y: int) -> int:
        ...     return x + y
        >>> chunk_task(add).fn([[1, 2], [3, 4]])
        [3, 7]
    """
    from celeriac.task import Task

    call = _one_call(task)
    if task.is_async:

        async def run_chunk_async(items: list[list[Any]]) -> list[Any]:
            values = []
            for number, args in enumerate(items):
                with _naming_the_call(number, len(items)):
                    values.append(await call(args))
            return values

        return Task(task.app, run_chunk_async, task.name, task.options)

    def run_chunk(items: list[list[Any]]) -> list[Any]:
        values = []
        for number, args in enumerate(items):
            with _naming_the_call(number, len(items)):
                values.append(call(args))
        return values

    return Task(task.app, run_chunk, task.name, task.options)


@contextlib.contextmanager
def _naming_the_call(number: int, size: int) -> Iterator[None]:
    """Note on an exception which call of a chunk raised it, and which calls ran: the
    chunk failed as a whole, naming neither, and the calls before it had their effects."""
    try:
        yield
    except Exception as exc:
        exc.add_note(
            f"celeriac: raised by call {number} (counting from 0) of the {size} in this "
            f"chunk: the {number} before it ran, the {size - number - 1} after it did not"
        )
        raise


def _one_call(task: Task[Any, Any]) -> Callable[[list[Any]], Any]:
    """``task`` called with one argument list of a chunk, converted as the worker converts
    a message's arguments (the chunk's own message carries them all as one list)."""
    conversions = task.conversions
    if conversions is None:  # most tasks: nothing to convert
        return lambda args: task(*args)

    def converted(args: list[Any]) -> Any:
        values, _ = conversions.apply(task.name, args, {})
        return task(*values)

    return converted


def _aborted(error: dict[str, str]) -> Outcome:
    origin = f"{error['task']}[{error['id']}] {what_happened(error)} earlier in this workflow"
    trace = f"not run: {origin}\n{error.get('traceback', '')}"
    info = ErrorInfo(type=error["type"], message=error["message"], traceback=trace)
    return Outcome("FAILURE", error=info, reason=origin, not_run=origin)


def _revoked_itself(job: Job) -> Outcome | None:
    """REVOKED when the task was revoked itself: its revoke mark is in the result store.

    Asked only of a task aborted by an earlier step (one read each). A workflow revoked
    through its handle marks every step; settled FAILURE with the first step's error, the
    later steps overwrote their marks, and the handle read FAILURE although every step was
    revoked and none ran. The mark is read, not the Revocation middleware's set: that runs
    after this middleware, and its copy in another worker process may lag the revoke by a
    quarter second.
    """
    app = job.task.app if job.task is not None else job.app
    if app is None:
        return None
    try:
        revoked = has_revoke_mark(app.broker, job.delivery.id)
    except BrokerError as exc:
        log.warning(
            "task %s: could not read whether it was revoked (%s). It will not run either "
            "way (an earlier step of its workflow did not succeed); it is put back and "
            "settled in %gs. If this repeats, check that the broker is reachable",
            job.label,
            exc,
            _RETRY_DELAY,
        )
        return Outcome("DEFERRED", delay=_RETRY_DELAY, reason="revoke check failed")
    if revoked:
        return Outcome("REVOKED", reason="revoked before it started")
    return None


def _data(job: Job) -> dict[str, Any] | None:
    if job.message is None:
        return None
    data: dict[str, Any] | None = job.message.options.get("canvas")
    return data


class Canvas(Middleware):
    """Continues workflows: the next chain step, chord joins, links and errbacks.

    It must come before Retries in the middleware list, so that its ``after_execute``
    runs after Retries' and sees the final outcome (a failure that will be retried does
    not stop a chain). :func:`celeriac.middleware.default_middleware` puts it first.

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.middleware import Results
        >>> app = Celeriac("doc", broker="memory://", middleware=[Canvas(), Results()])
    """

    def before_execute(self, job: Job) -> Outcome | None:
        """Fail a task whose workflow already failed upstream; unpack a chunk."""
        data = _data(job)
        if data is None:
            return None
        abort = data.get("abort")
        if abort is not None:
            # A step revoked itself (a workflow's handle revokes every step) reads REVOKED;
            # one that was not, FAILURE with the earlier step's error (TaskRevoked when
            # that step was revoked): it did not run because of that step.
            return _revoked_itself(job) or _aborted(abort)
        if data.get("chunk") and job.task is not None:
            job.task = chunk_task(job.task)
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Continue the workflow before the task commits (see the module docstring)."""
        data, message = _data(job), job.message
        # No task: a revoked step of a task this worker does not know (reading.py).
        app = job.task.app if job.task is not None else job.app
        if data is None or message is None or app is None:
            return outcome
        job.context["canvas"] = True
        # A broker recognises a finished id by its stored result; without one, a task that
        # continues twice could start its next task twice. So canvas tasks keep a result.
        outcome.store_result = True
        deadline = job.context.get(HARD_DEADLINE, 0.0)
        return self._continue(app, message, data, outcome, deadline)

    def before_dead_letter(self, job: Job, outcome: Outcome) -> None:
        """Fail the workflow of a task dead-lettered before it ran (too many deliveries,
        unknown task): the executor skips ``after_execute`` for those, so this is the only
        hook that hears of them.

        Before the commit, as ``after_execute`` continues before a task's: told after it, a
        worker killed in between left the letter committed and the workflow waiting for
        ever. Killed in between now, the message is delivered and dead-lettered again, and
        the workflow told again (harmless: fixed ids, joins count a member once).
        """
        data, message = _data(job), job.message
        if data is None or message is None or "canvas" in job.context:
            return
        # job.app: the task may be unknown here, or dead-lettered before it was looked up.
        app = job.task.app if job.task is not None else job.app
        if app is None:
            log.warning("task %s was dead-lettered; its workflow cannot be failed here", job.label)
            return
        error = self._advance_patiently(app, message, data, outcome, deadline=0.0)
        if error is None:
            job.context["canvas"] = True  # a settle tried again through an outage: told once
            job.context.pop(_UNTOLD, None)
        else:
            job.context[_UNTOLD] = error  # said once the letter is committed (after_settle)

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Say how to recover a dead letter committed without its workflow told: unlike a
        task that could not continue, it does not run again, so nothing else will.

        A broker error here was once logged as "it will run again in 1s", and the chain or
        chord waited for ever.
        """
        error = job.context.get(_UNTOLD)
        if error is None or not committed or job.message is None:
            return
        message = job.message
        log.error(
            "task %s was dead-lettered, and its workflow could not be told (%s): what waits "
            "for it (the rest of its chain, its chord's body) will wait for ever. Once the "
            "broker answers, `celeriac dlq replay %s` sends it again, and its workflow moves "
            "on when it ends",
            printable(f"{message.task}[{message.id}]"),  # the sender's text
            error,
            printable(message.id),
        )

    def _continue(
        self,
        app: Celeriac,
        message: Message,
        data: dict[str, Any],
        outcome: Outcome,
        deadline: float,
    ) -> Outcome:
        """Send what follows ``outcome``, trying again over a few seconds of broker errors
        (while the task's hard limit, at Unix time ``deadline``, allows); else RETRY.

        The task is not committed yet and its lease is renewed meanwhile. Put back at the
        first error, it ran again, whole, a second later: every second while Redis was
        full, and once for a restart caught at the wrong moment.
        """
        error = self._advance_patiently(app, message, data, outcome, deadline=deadline)
        if error is None:
            return outcome
        # Not continued: do not commit either, or the workflow would stop here for good.
        log.warning(
            "task %s: could not continue its workflow (%s); it will run again in %gs",
            printable(f"{message.task}[{message.id}]"),  # the sender's text
            error,
            _RETRY_DELAY,
        )
        return Outcome("RETRY", delay=_RETRY_DELAY, exception=error, runtime=outcome.runtime)

    def _advance_patiently(
        self,
        app: Celeriac,
        message: Message,
        data: dict[str, Any],
        outcome: Outcome,
        *,
        deadline: float,
    ) -> BrokerError | None:
        """:meth:`_advance`, tried again after each of ``_PAUSES`` while the broker fails
        and a pause ends over ``_DEADLINE_MARGIN`` before ``deadline`` (a Unix time; 0.0:
        none); None once done, else the last error."""
        pauses = iter(_PAUSES)
        while True:
            try:
                self._advance(app, message, data, outcome)
                return None
            except BrokerError as exc:
                error = exc
            pause = next(pauses, None)
            if pause is None or (deadline and time.time() + pause + _DEADLINE_MARGIN > deadline):
                return error
            time.sleep(pause)

    @staticmethod
    def _advance(app: Celeriac, message: Message, data: dict[str, Any], outcome: Outcome) -> None:
        """Send what follows ``outcome`` in the workflow. Raises BrokerError, having sent
        part of it or none: sending it all again is harmless (fixed ids, joins count a
        member once)."""
        then = data.get("then", [])
        flow = Flow(app, message)
        try:
            if outcome.state == "SUCCESS":
                flow.links(data.get("link", ()), outcome.value)
                flow.resume(outcome.value, then)
            elif outcome.state in _FAILED:
                error = data.get("abort") or error_dict(message, outcome)
                flow.links(data.get("link_error", ()), public_error(error))
                flow.fail(error, then)
            flow.send()
        except MessageError:
            # Unreachable for passed-on values (checked in Flow); a producer-side middleware
            # refusing a message would land here.
            log.exception(
                "task %s: its workflow cannot continue", printable(f"{message.task}[{message.id}]")
            )
