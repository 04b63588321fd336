"""The executor: one delivery in, one settled message out. Every pool uses it.

Steps: read the message (malformed → dead letter; a newer protocol → deferred for an
upgraded worker), find the task (unknown → deferred for a worker that knows it), check the
delivery count (too many → dead letter), run the middleware and the function, and settle
with the broker — ack with the result in one fenced step, requeue, or dead-letter. The
result record it stores, and what becomes of one it cannot store, are in
:mod:`celeriac.worker.result_records`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac import crashpoints, pid
from celeriac.brokers.records import DeadLetter, Delivery, LeaseLoss, Outgoing
from celeriac.errors import (
    ArgumentsRefused,
    BrokerError,
    Reject,
    Retry,
    SerializationError,
)
from celeriac.message import (
    ErrorInfo,
    Message,
    ResultRecord,
    decode_result,
    encode_result,
    storable_text,
)
from celeriac.middleware.base import Job, Outcome
from celeriac.task import _current
from celeriac.text import printable
from celeriac.worker.outage import Outage
from celeriac.worker.outcome_log import LOG_TEXT_CHARS, for_log, log_outcome
from celeriac.worker.reading import Reading, error_info, peek_name
from celeriac.worker.result_records import ResultRecords, cut_error, now_failed

if TYPE_CHECKING:
    import asyncio

    from celeriac.app import Celeriac
    from celeriac.task import Task

log = logging.getLogger("celeriac.worker")

FINAL = frozenset({"SUCCESS", "FAILURE", "EXPIRED", "REVOKED"})


class FetchSpec(msgspec.Struct, frozen=True):
    """What to fetch next when settling: lets a broker commit and fetch in one call."""

    queues: Sequence[str]
    consumer: str
    limit: int
    lease_seconds: float


#: A soft time limit for the task's own code: ``with soft_limit(seconds): <the function>``.
#: The worker's pools supply one (SIGALRM, an asynchronous exception in a thread); the
#: limit must be deliverable only inside that block, never in middleware or broker calls.
SoftLimit = Callable[[float], AbstractContextManager[object]]


def no_soft_limit(seconds: float) -> AbstractContextManager[object]:
    """The soft limit of in-process runners: none.

    Example:
        >>> with no_soft_limit(0.5):
        ...     pass
    """
    return _NO_LIMIT


_NO_LIMIT = contextlib.nullcontext()


def outcome_for(exc: BaseException) -> Outcome:
    """The Outcome of a task that raised ``exc``: a retry, a rejection or a failure.

    Example:
        >>> outcome_for(ValueError("no")).state
        'FAILURE'
        >>> outcome_for(SystemExit(3)).error.message
        'the task raised SystemExit(3); in a worker that fails the task, not the worker'
    """
    if isinstance(exc, Retry):
        return Outcome(
            "RETRY", delay=exc.delay, exception=exc.exc or exc, max_retries=exc.max_retries
        )
    if isinstance(exc, Reject):
        return Outcome("DEAD", reason=f"rejected by the task: {exc.reason}")
    error = error_info(exc)
    if not isinstance(exc, Exception):  # say what it means, not just "0" (or nothing)
        try:
            shown = repr(exc)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the task's failure
            shown = f"{type(exc).__qualname__}(<repr() failed>)"
        error.message = f"the task raised {shown}; in a worker that fails the task, not the worker"
    return Outcome("FAILURE", error=error, exception=exc)


class Executor(Reading, ResultRecords):
    """Processes deliveries for one worker process (or thread).

    Args:
        app: the worker's app.
        worker_id: the name results and logs give this worker.
        soft_limit: how the pool enforces a soft time limit around the task's own code.
        contain_exits: a task's SystemExit, KeyboardInterrupt or any other BaseException
            is its FAILURE. On in a worker child, where only a task can raise them (a
            child ignores SIGINT); off in-process, where Ctrl-C must stop the caller.

    Example:
        >>> from celeriac import Celeriac
        >>> executor = Executor(Celeriac("doc", broker="memory://"), "doc-worker")
        >>> executor.contain_exits
        False
    """

    def __init__(
        self,
        app: Celeriac,
        worker_id: str,
        *,
        soft_limit: SoftLimit = no_soft_limit,
        contain_exits: bool = False,
    ) -> None:
        self.app = app
        self.worker_id = worker_id
        self.soft_limit = soft_limit
        self.contain_exits = contain_exits
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pid = pid.current()  # the process whose tasks this runs: see exit_if_forked
        self._retry_state_said = -math.inf  # when a RETRY state not stored was last said
        self._oversized_said = -math.inf  # when a message over the size limit was last said
        self._unknown_notes: dict[str, str] = {}  # task name -> why it may be unknown here

    # -- running ------------------------------------------------------------------------

    def execute(self, job: Job, soft: float = math.inf) -> Outcome:
        """Run the middleware and the task, the task's own code under a soft limit of
        ``soft`` seconds; never raises for a task's failure."""
        outcome = self.app.middleware.before_execute(job)
        if outcome is None:
            outcome = self._call(job, soft)
        return self.app.middleware.after_execute(job, outcome)

    def _call(self, job: Job, soft: float) -> Outcome:
        task, request = job.task, job.request
        assert task is not None and request is not None
        token = _current.set(request)
        started = time.perf_counter()
        try:
            # The soft limit can land only inside this block, so never in a middleware hook
            # (a chain's next step unsent) or a broker call. It may land just after the
            # function returned, even inside the limit's own exit: still inside this try,
            # so the task ends FAILURE with SoftTimeLimitExceeded and nothing escapes.
            with self.soft_limit(soft):
                value = self.invoke(job)
                if task.is_async:
                    value = self.run_coroutine(value)
            outcome = Outcome("SUCCESS", value=value)
        except Exception as exc:  # noqa: BLE001 - a task's failure is data, not a crash
            outcome = outcome_for(exc)
        except BaseException as exc:
            if not self.contain_exits:
                raise
            # sys.exit() in a task must not take a consumer down, nor must any other
            # BaseException (asyncio.CancelledError from asyncio.run, GeneratorExit, a
            # library's own): it killed the child, and the task ran again and again until
            # dead-lettered as "the worker crashed", repeating its side effects each time.
            outcome = outcome_for(exc)
        finally:
            if self.contain_exits:
                exit_if_forked(self.pid, job)
            _current.reset(token)
        outcome.runtime = time.perf_counter() - started
        return outcome

    def invoke(self, job: Job) -> Any:
        """Call the task's function with the job's arguments (a coroutine for async tasks).

        The caller sets the current request (``_current``) around it.
        """
        task, request = job.task, job.request
        assert task is not None and request is not None
        conversions = task.conversions  # None for most tasks: nothing more to do
        kwargs = self._accepted_kwargs(task, request.kwargs)
        args = request.args
        if conversions is not None:
            # JSON carried bytes, datetimes, tuples... as text and lists: back to the
            # parameters' annotated types (a value that is not one fails the task here).
            args, kwargs = conversions.apply(task.name, args, kwargs)
        # Arguments the function cannot take never get here: see Reading._unknown.
        return task.fn(*([task, *args] if task.bind else args), **kwargs)

    def run_coroutine(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run an ``async def`` task on this process's own event loop.

        When anything ends the run early (the soft limit lands in the loop's ``select``,
        not in the coroutine), the coroutine and whatever it started are cancelled and
        run to their end here: left pending, they would resume inside the next async task
        this process runs, after their own task had failed.

        Example:
            >>> import asyncio
            >>> from celeriac import Celeriac
            >>> executor = Executor(Celeriac("doc", broker="memory://"), "doc-worker")
            >>> async def answer() -> int:
            ...     await asyncio.sleep(0)
            ...     return 42
            >>> executor.run_coroutine(answer())
            42
            >>> executor.close()
        """
        if self._loop is None:
            import asyncio  # loaded by code that awaits, not at import: see architecture.md

            self._loop = asyncio.new_event_loop()
        loop = self._loop
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except BaseException:
            _cancel_pending(loop)
            raise

    def close(self) -> None:
        """Close this executor's event loop, if an async task ever needed one."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _accepted_kwargs(self, task: Task[Any, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        # A newer producer may send keyword arguments this (older) code does not take:
        # drop them with a warning instead of failing every such task during a deploy.
        if not kwargs:
            return kwargs
        accepted = task.arguments.keywords  # the signature as the producer checks it
        if accepted is None:
            return kwargs
        dropped = sorted(set(kwargs) - accepted)
        if not dropped:
            return kwargs
        if self.app.conf.task_strict_kwargs:
            raise ArgumentsRefused(
                f"task {task.name} does not accept keyword argument(s) {', '.join(dropped)} "
                "(task_strict_kwargs is on; sent by code of another version?)"
            )
        log.warning(
            "task %s[%s]: dropped keyword argument(s) %s that this version of the "
            "task does not accept (sent by code of another version: a newer one that added "
            "them, or an older one from before a rename?)",
            task.name,
            for_log(_current_id()),
            for_log(", ".join(dropped)),
        )
        return {k: v for k, v in kwargs.items() if k in accepted}

    # -- settling -----------------------------------------------------------------------

    def settle(self, job: Job, outcome: Outcome, fetch: FetchSpec | None = None) -> list[Delivery]:
        """Tell the broker what happened (fenced); return deliveries fetched meanwhile."""
        broker, conf = self.app.broker, self.app.conf
        lease, more = job.delivery.lease, list[Delivery]()
        state = outcome.state
        if crashpoints.ARMED:
            crashpoints.reached("before_commit")
        if state in FINAL:
            result = self._encoded_result(job, outcome) if outcome.store_result else None
            if fetch is not None:
                committed, more = broker.complete_and_fetch(
                    lease,
                    result,
                    conf.result_expires,
                    fetch.queues,
                    fetch.consumer,
                    limit=fetch.limit,
                    lease_seconds=fetch.lease_seconds,
                )
            else:
                committed = broker.complete(lease, result, conf.result_expires)
        elif state == "RETRY":
            committed = self._retry(job, outcome)
        elif state == "DEFERRED":
            committed = broker.requeue(
                lease, delay=outcome.delay or 0.0, body=outcome.body, count_delivery=False
            )
        elif state == "MOVED":
            committed = self._move(job, outcome)
        else:
            self.app.middleware.before_dead_letter(job, outcome)
            committed = self._dead_letter(job, outcome)
        if crashpoints.ARMED:
            crashpoints.reached(
                {"RETRY": "after_retry", "DEAD": "after_dead_letter"}.get(state, "after_commit")
            )
        self._log(job, outcome, committed)
        self.app.middleware.after_settle(job, outcome, committed)
        return more

    def settle_many(
        self, finished: Sequence[tuple[Job, Outcome]], fetch: FetchSpec | None = None
    ) -> list[Delivery]:
        """Commit several final outcomes (each fenced, with its result) in one broker call,
        and fetch in the same call; return what was fetched.

        Only for final states (SUCCESS, FAILURE, EXPIRED, REVOKED): a retry, a deferral
        or a dead letter goes through :meth:`settle`.
        """
        return self.settle_many_start(finished, fetch)()

    def settle_many_start(
        self, finished: Sequence[tuple[Job, Outcome]], fetch: FetchSpec | None = None
    ) -> Callable[[], list[Delivery]]:
        """:meth:`settle_many`, its broker call sent now: the function it returns reads the
        reply (once), logs each outcome, runs the ``after_settle`` hooks and returns what
        was fetched. A broker that cannot overlap calls makes the call here (see
        :mod:`celeriac.brokers.landing`); its error is raised by the function.
        """
        conf = self.app.conf
        items = [
            (job.delivery.lease, self._encoded_result(job, o) if o.store_result else None)
            for job, o in finished
        ]
        if crashpoints.ARMED:
            crashpoints.reached("before_commit")
        landing = self.app.broker.complete_many_start(
            items,
            conf.result_expires,
            fetch.queues if fetch else (),
            fetch.consumer if fetch else "",
            limit=fetch.limit if fetch else 0,
            lease_seconds=fetch.lease_seconds if fetch else 0.0,
        )

        def land() -> list[Delivery]:
            committed, more = landing.result()
            if crashpoints.ARMED:
                crashpoints.reached("after_commit")
            for (job, outcome), ok in zip(finished, committed, strict=True):
                self._log(job, outcome, ok)
                self.app.middleware.after_settle(job, outcome, ok)
            return more

        return land

    def _move(self, job: Job, outcome: Outcome) -> bool:
        """Send a message held under an id the broker made up again under its own id, then
        ack this copy (see Reading._resolve). Sending first: a crash in between delivers
        the copy again, and its second send finds the id taken and sends nothing."""
        message, delivery = job.message, job.delivery
        assert message is not None
        moved = Outgoing(message.id, delivery.queue, delivery.body, delivery.priority, message.eta)
        if not self.app.broker.send([moved])[0]:
            outcome.reason = (
                f"delivered under an id the broker made up, not its own; task "
                f"{printable(message.task)}[{printable(message.id)}] was already sent, so "
                "this copy was dropped (one task per id)"
            )
        return self.app.broker.complete(delivery.lease, None, self.app.conf.result_expires)

    def _retry(self, job: Job, outcome: Outcome) -> bool:
        assert job.message is not None
        delay = outcome.delay or 0.0
        options = dict(job.message.options)
        first = options.get("first_error")
        if isinstance(first, str):  # the error's text, kept for a later dead letter
            options["first_error"] = _first_error(first)
        try:
            body = outcome.body or self.app.codec.encode(
                self._retried(job, delay, options), like=job.delivery.body
            )
        except Exception as exc:  # noqa: BLE001 - a retry that cannot be sent is a failure
            bad = SerializationError(
                f"task {job.label} cannot be retried: its message could not be encoded "
                f"({type(exc).__name__}: {exc})"
            )
            now_failed(outcome, bad, error_info(bad))  # logged as FAILURE, not "will retry"
            return self.app.broker.complete(
                job.delivery.lease, self._encoded_result(job, outcome), self.app.conf.result_expires
            )
        committed = self.app.broker.requeue(job.delivery.lease, delay=delay, body=body)
        if committed and outcome.store_result:  # not for a task that ignores its result
            message = job.message
            record = ResultRecord(
                state="RETRY",
                task=message.task,
                retries=message.retries + 1,
                error=error_info(outcome.exception) if outcome.exception else None,
                worker=self.worker_id,
            )
            raw, limit = encode_result(record), self.app.conf.task_result_max_bytes
            if len(raw) > limit and record.error is not None:
                # As a FAILURE's: an error quoting a whole response was stored whole.
                record.error = cut_error(record.error, len(raw), limit)
                raw = encode_result(record)
            try:
                self.app.broker.store_result(message.id, raw, self.app.conf.result_expires)
            except BrokerError as exc:
                # The retry is queued: only the state a get() reads meanwhile is missing.
                # Raised, the settle was tried again, found its lease gone (the requeue
                # had committed) and logged "lease lost" for every retry (a full Redis).
                # Said once per Outage.REPEAT seconds, not once per retry.
                now = time.monotonic()
                if now - self._retry_state_said >= Outage.REPEAT:
                    self._retry_state_said = now
                    log.warning(
                        "task %s: retry queued, but its RETRY state was not stored (%s); "
                        "AsyncResult.state reads the previous one until the retry runs. "
                        "Said once per %.0fs for every task it happens to.",
                        job.label,
                        for_log(str(exc)),
                        Outage.REPEAT,
                    )
        return committed

    def _retried(self, job: Job, delay: float, options: dict[str, Any]) -> Message:
        """The next version of the job's message: one more retry, due in ``delay`` seconds.

        Made anew at each try of the settle (the worker tries again while the broker is
        unreachable; counted in place, each try took one more retry), and with the
        arguments as they were sent, read again from the delivered bytes: the function
        got the message's own lists and dicts, so a task that consumed its list
        (``ids.pop()``) or filled in a dict before failing was retried with what it left.
        """
        assert job.message is not None
        sent = self.app.codec.decode(job.delivery.body)
        return msgspec.structs.replace(
            job.message,
            args=sent.args,
            kwargs=sent.kwargs,
            retries=job.message.retries + 1,
            eta=time.time() + delay,
            options=options,
        )

    def _dead_letter(self, job: Job, outcome: Outcome) -> bool:
        delivery = job.delivery
        name = job.message.task if job.message else (peek_name(delivery.body) or "?")
        error = f"{outcome.error.type}: {outcome.error.message}" if outcome.error else ""
        first = job.message.options.get("first_error") if job.message else None
        if first and first != error:
            error = f"first error: {first} | last error: {error}"
        # The broker stores these as text: a lone surrogate (a Reject reason naming a file)
        # must not make the dead letter itself fail.
        error, reason = storable_text(error), storable_text(outcome.reason)
        letter = DeadLetter(
            id=delivery.id,
            queue=delivery.queue,
            task=name,
            reason=reason,
            body=delivery.body,
            deliveries=delivery.deliveries,
            error=error,
            dead_at=time.time(),
        )
        own = outcome.error  # the task's own error, when it failed before dead-lettering
        record = ResultRecord(
            state="FAILURE",
            task=name,
            date_done=time.time(),
            worker=self.worker_id,
            error=ErrorInfo(
                type=own.type if own else "celeriac.errors.Reject",
                message=f"dead-lettered: {reason}" + (f": {own.message}" if own else ""),
                traceback=own.traceback if own else "",
            ),
        )
        return self.app.broker.dead_letter(delivery.lease, letter, encode_result(record))

    def _log(self, job: Job, outcome: Outcome, committed: bool) -> None:
        if committed:
            log_outcome(job, outcome)
            return
        loss = self.app.broker.lease_loss(job.delivery.lease)
        own = loss is LeaseLoss.FINISHED and self._stored_by_me(job, outcome)
        log_outcome(job, outcome, OWN_COMMIT if own else loss.value)

    def _stored_by_me(self, job: Job, outcome: Outcome) -> bool:
        """Whether the result stored for ``job`` is this outcome, stored by this worker: its
        commit landed, the reply was lost, and the call made again found it done. Read
        only then (rare): "another worker finished it" sent operators looking for a second
        run where there was none."""
        try:
            stored = self.app.broker.get_result(job.delivery.id)
        except BrokerError:
            return False
        if stored is None:
            return False
        record = decode_result(stored[0])
        return bool(record.worker == self.worker_id and record.state == outcome.state)

    def process(self, delivery: Delivery) -> tuple[Job, Outcome]:
        """Prepare, execute and settle one delivery (used by in-process runners)."""
        job, outcome = self.prepare(delivery)
        if outcome is None:
            outcome = self.execute(job)
        self.settle(job, outcome)
        return job, outcome


#: What a lost lease means when the result stored is this worker's own (see _log).
OWN_COMMIT = (
    "not discarded after all: this worker's own commit reached the broker, but its reply "
    "was lost (a broken connection, a timeout), and the call made again found the task "
    "settled by it. The outcome stands and the task ran once; only the hooks that follow "
    "a commit (after_settle) did not run"
)


def exit_if_forked(owner: int, job: Job) -> None:
    """End this process at once if it is a copy of the worker child ``owner`` that a task
    forked (``os.fork()`` without exec) and that came back out of the task.

    Such a copy went on as a second consumer under its child's name, unseen by the
    supervisor: it took tasks, wrote over its child's slot (what the supervisor renews
    and puts back), had no hard limit, and kept consuming after the worker stopped. Its
    commit of the forking task was refused (the child had settled it): "lease lost".
    ``os._exit``: no cleanup of the child's may run in the copy (its ``finally`` blocks
    would give back the child's prefetched messages).
    """
    if pid.current() == owner:
        return
    log.error(
        "task %s forked its worker child %d (os.fork() without exec) and the copy, process "
        "%d, returned from the task instead of ending with os._exit(): it would have gone "
        "on as a second consumer that no supervisor sees, so it exits now. End forked code "
        "with os._exit(), or use subprocess or multiprocessing.",
        job.label,
        owner,
        pid.current(),
    )
    logging.shutdown()
    os._exit(1)


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every unfinished task on ``loop`` and run the loop until they end.

    A coroutine that ignores cancellation keeps this waiting until the hard limit stops
    the process: nothing of it may run later, inside another task.
    """
    import asyncio  # loaded by code that awaits, not at import: see architecture.md

    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    # Everything here is the cancelled task's own cleanup: whatever it raises (even
    # SystemExit) is not this worker's business; the original error is raised next.
    with contextlib.suppress(BaseException):
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _current_id() -> str:
    request = _current.get()
    return request.id if request else "?"


def _first_error(text: str) -> str:
    """A retry's first error as its message carries it: storable, and cut short.

    Whole, an error quoting a response body of a megabyte made every retry of the task a
    message of a megabyte, over ``task_payload_max_bytes`` (which its producer would have
    refused) and in the broker's memory for as long as the task kept retrying. Only a dead
    letter shows it, beside the last error.

    Example:
        >>> len(_first_error("x" * 10_000)) < 2100
        True
    """
    if len(text) > LOG_TEXT_CHARS:
        text = f"{text[:LOG_TEXT_CHARS]}... ({len(text) - LOG_TEXT_CHARS:,} more characters)"
    return storable_text(text)
