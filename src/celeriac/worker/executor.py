"""The executor: one delivery in, one settled message out. Every pool uses it.

Steps: read the message (malformed → dead letter; a newer protocol → deferred for an
upgraded worker), find the task (unknown → deferred for a worker that knows it), check the
delivery count (too many → dead letter), run the middleware and the function, and settle
with the broker — ack with the result in one fenced step, requeue, or dead-letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import crashpoints
from celeriac.brokers.base import DeadLetter, Delivery
from celeriac.codec import UntrustedMessage
from celeriac.errors import (
    ArgumentsRefused,
    BrokerError,
    MalformedMessage,
    NewerProtocol,
    PayloadTooLarge,
    Reject,
    Retry,
    SerializationError,
)
from celeriac.message import (
    NAME_SHOWN,
    ErrorInfo,
    ResultRecord,
    decode_result,
    encode_result,
    invalid_field,
    peek_identity,
    storable_text,
)
from celeriac.middleware.base import Job, Outcome
from celeriac.task import Request, _current
from celeriac.text import printable
from celeriac.worker.outage import Outage

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.task import Task

log = logging.getLogger("celeriac.worker")

FINAL = frozenset({"SUCCESS", "FAILURE", "EXPIRED", "REVOKED"})


@dataclass(frozen=True, slots=True)
class FetchSpec:
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
        return Outcome("RETRY", delay=exc.delay, exception=exc.exc or exc)
    if isinstance(exc, Reject):
        return Outcome("DEAD", reason=f"rejected by the task: {exc.reason}")
    error = error_info(exc)
    if isinstance(exc, SystemExit | KeyboardInterrupt):  # say what it means, not just "0"
        error.message = f"the task raised {exc!r}; in a worker that fails the task, not the worker"
    return Outcome("FAILURE", error=error, exception=exc)


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as stored in a result: qualified type, message, traceback text.

    Text that UTF-8 cannot carry (a lone surrogate, as in a file name decoded with
    ``surrogateescape``) is kept with backslash escapes, so the error can always be stored.

    Example:
        >>> name = "report-" + chr(0xDCFF) + ".csv"  # b"report-\\xff.csv", surrogateescape
        >>> print(error_info(FileNotFoundError(f"missing {name}")).message)
        missing report-\\udcff.csv
    """
    cls = type(exc)
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the task's failure
        message = f"<{cls.__name__} whose str() failed>"
    text = "".join(traceback.format_exception(exc))
    return ErrorInfo(
        type=f"{cls.__module__}.{cls.__qualname__}",
        message=storable_text(message),
        traceback=storable_text(text),
    )


class Executor:
    """Processes deliveries for one worker process (or thread).

    Args:
        app: the worker's app.
        worker_id: the name results and logs give this worker.
        soft_limit: how the pool enforces a soft time limit around the task's own code.
        contain_exits: a task's SystemExit or KeyboardInterrupt is its FAILURE. On in a
            worker child, where only a task can raise them (a child ignores SIGINT); off
            in-process, where Ctrl-C must stop the caller.

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
        self._retry_state_said = -math.inf  # when a RETRY state not stored was last said
        self._oversized_said = -math.inf  # when a message over the size limit was last said

    # -- preparing ----------------------------------------------------------------------

    def prepare(self, delivery: Delivery) -> tuple[Job, Outcome | None]:
        """Decode and resolve a delivery; an Outcome when it must not run at all.

        Never raises for what a message holds: whatever reading or resolving it raises
        dead-letters that one message, and a message handed out more often than any task
        it may name allows is dead-lettered before it is read. Both ended in a crash loop:
        an error here killed the child before its slot named the task, and a message whose
        decoding kills the process (a segfault unpickling it) was read again, never
        counted against ``task_max_deliveries``, at every delivery.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.brokers.base import Lease
            >>> executor = Executor(Celeriac("doc", broker="memory://"), "doc-worker")
            >>> delivery = Delivery(Lease("a1", "default", "t1"), b'{"id": "a1"', 1)
            >>> executor.prepare(delivery)[1].state
            'DEAD'
        """
        job = Job(delivery, self.worker_id, app=self.app)
        most = self.app.conf.task_max_deliveries
        if delivery.deliveries > most:  # rare: only then is the body peeked at
            unread = self._over_limit_unread(job, most)
            if unread is not None:
                return job, unread
        try:
            return job, self._resolve(job, most)
        except Exception as exc:  # noqa: BLE001 - one message's problem, not the worker's
            return job, self._unreadable(job, exc)
        except (SystemExit, KeyboardInterrupt) as exc:  # raised by an unpickled object
            if not self.contain_exits:
                raise
            return job, self._unreadable(job, exc)

    def _resolve(self, job: Job, max_deliveries: int) -> Outcome | None:
        """What :meth:`prepare` does, given the app's ``task_max_deliveries``."""
        delivery = job.delivery
        refused = self._read(job)
        if refused is not None:
            return refused
        message = job.message
        assert message is not None
        wrong = invalid_field(message)
        if wrong is not None:
            # Readable but not runnable as sent: run, it was retried without end, killed at
            # once or expired unrun. Dead-lettered, it can be fixed and replayed.
            return Outcome(
                "DEAD",
                reason=(
                    f"malformed message: task {_shown(message.task)}[{_shown(message.id)}]: "
                    f"{wrong}. Fix the producer that sent it"
                ),
            )
        self._check_size(job)
        task = self.app.tasks.get(message.task)
        if task is not None and task.options.max_deliveries is not None:
            max_deliveries = task.options.max_deliveries
        if delivery.deliveries > max_deliveries:
            return Outcome("DEAD", reason=_too_many(delivery.deliveries, max_deliveries))
        if task is None:
            return self._unknown(job)
        job.task = task
        job.request = Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            delivery_count=delivery.deliveries,
            queue=message.queue,
            priority=message.priority,
            eta=message.eta,
            expires=message.expires,
            root_id=message.root_id,
            parent_id=message.parent_id,
            headers=message.headers,
            worker=self.worker_id,
            message=message,
        )
        return None

    def _over_limit_unread(self, job: Job, most: int) -> Outcome | None:
        """The dead letter of a delivery past its limit, decided without decoding it; None
        when the task it names (peeked at), or any task here when none can be peeked at
        (pickle), may still run it.

        Checked before reading: a message whose decoding kills the process was counted at
        every death but read again each time, so the limit never applied to it.
        """
        delivery = job.delivery
        name = _peek_name(delivery.body)
        if name is None:  # any task here may be the one it names: the largest limit
            limits = (t.options.max_deliveries for t in self.app.tasks.values())
            limit = max([most, *(n for n in limits if n is not None)])
        else:
            task = self.app.tasks.get(name)
            own = task.options.max_deliveries if task is not None else None
            limit = most if own is None else own
        if delivery.deliveries <= limit:
            return None
        return Outcome(
            "DEAD",
            reason=(
                f"{_too_many(delivery.deliveries, limit)}. It was not decoded either: "
                "reading it may be what stopped the worker each time"
            ),
        )

    def _unreadable(self, job: Job, exc: BaseException) -> Outcome:
        """The dead letter of a delivery that reading or resolving raised ``exc`` for.

        Raised, it killed the child before its slot named the task, and the message was
        put back to do it again, for ever. The exception is the dead letter's error and is
        logged with its traceback: it is a message no producer of this version sends, or a
        bug in reading one.
        """
        body = job.delivery.body
        log.error(
            "task %s: reading its message raised %s; dead-lettering it (see `celeriac dlq "
            "list`). If a celeriac producer sent it, please report this traceback",
            _label(job),
            type(exc).__name__,
            exc_info=exc,
        )
        error = error_info(exc)
        return Outcome(
            "DEAD",
            reason=(
                f"malformed message: reading it raised {type(exc).__name__} (first bytes: "
                f"{body[:60]!r}). Fix the producer that sent it, or report the traceback "
                "in the worker's log"
            ),
            error=error,
            exception=exc,
        )

    def _read(self, job: Job) -> Outcome | None:
        """Decode the delivery into ``job.message``; the dead letter when it cannot run."""
        delivery = job.delivery
        try:
            message = job.message = self.app.codec.decode(delivery.body)
        except UntrustedMessage as exc:
            return Outcome("DEAD", reason=f"refused: {exc}")
        except NewerProtocol as exc:
            return self._newer(job, exc)
        except MalformedMessage as exc:
            return Outcome("DEAD", reason=f"malformed message: {exc}")
        except RecursionError:
            # msgspec gives up on nesting past Python's recursion limit with RecursionError,
            # not a DecodeError: uncaught, it killed the child at every delivery.
            return Outcome(
                "DEAD",
                reason=(
                    "malformed message: nested too deeply to decode (arrays or objects "
                    "inside one another ~1000 levels deep); first bytes: "
                    f"{delivery.body[:60]!r}"
                ),
            )
        if message.id != delivery.id and self.app.codec.keys:
            # The signature covers the body, not the id the broker holds it under: a
            # signed message copied into a queue (pushed by hand, its id made up by the
            # broker) would run again, past the one-task-per-id rule. Sent the normal way,
            # both ids are the same.
            return Outcome(
                "DEAD",
                reason=(
                    f"refused: a signed message of task {message.task}[{message.id}] was "
                    f"delivered under another id ({delivery.id}), so it is a copy (a replay?) "
                    "pushed into the queue, not a send. Signed messages run only under their "
                    "own id; send the task again with app.send_task or `celeriac call`."
                ),
            )
        return None

    def _check_size(self, job: Job) -> None:
        """Say so when a delivery is over task_payload_max_bytes; it runs all the same.

        Only a producer with another limit (another language, another version or setting)
        sends one. Refused here it would be lost or dead-lettered while its bytes already sit
        in the broker, which is what the limit protects: it runs, and the log names the
        task and the setting to fix. Said once per Outage.REPEAT seconds, not per message.
        """
        size, limit = len(job.delivery.body), self.app.conf.task_payload_max_bytes
        if size <= limit:
            return
        now = time.monotonic()
        if now - self._oversized_said < Outage.REPEAT:
            return
        self._oversized_said = now
        log.warning(
            "task %s: its message is %s bytes, over task_payload_max_bytes (%s), so its "
            "producer has another limit (another version, language or setting); running it "
            "all the same. Messages this large fill the broker's memory: make that producer "
            "pass ids instead of data, or give it this limit. Said once per %.0fs for every "
            "message it happens to.",
            _label(job),
            f"{size:,}",
            f"{limit:,}",
            Outage.REPEAT,
        )

    def _unknown(self, job: Job) -> Outcome:
        message = job.message
        assert message is not None
        conf = self.app.conf
        if len(message.task) > NAME_SHOWN:
            # No task has such a name (a registered one of any length still runs). Put back
            # for task_unknown_max_age, it wrote its whole name in a log line per deferral.
            return Outcome(
                "DEAD",
                reason=(
                    f"malformed message: task {_shown(message.task)}[{_shown(message.id)}]: "
                    f"its name is {len(message.task):,} characters long, and no task here "
                    "has such a name. Fix the producer that sent it"
                ),
            )
        if not self._sent_at_readable(message.sent_at) and conf.task_unknown_max_age > 0:
            # No send time (a message built by hand or by another language's producer), or
            # none that can be counted from (NaN, in the future): its age could never reach
            # task_unknown_max_age, so it would be put back for ever. Its age counts from
            # now, written into the message it is put back as.
            return self._defer_unknown(job, stamped=self._stamped(job))
        if self._past_max_age(message.sent_at):  # task_unknown_max_age=0: at once
            return Outcome(
                "DEAD",
                reason=(
                    f"unknown task: no worker that knows {message.task} took it within "
                    f"task_unknown_max_age={conf.task_unknown_max_age:g}s"
                ),
            )
        return self._defer_unknown(job, stamped=None)

    def _stamped(self, job: Job) -> bytes | None:
        """The message with ``sent_at`` set to now, encoded; None when it cannot be."""
        message = job.message
        assert message is not None
        message.sent_at = time.time()
        try:
            return self.app.codec.encode(message)
        except Exception:  # noqa: BLE001 - it was just decoded; put back as it came
            return None

    def _defer_unknown(self, job: Job, stamped: bytes | None) -> Outcome:
        conf = self.app.conf
        log.warning(
            "task %s is not registered in this worker; putting it back for %gs so a worker "
            "that knows it can take it (dead-lettered after %gs). Deploy the code that defines "
            "it, or purge the queue.",
            job.label,
            conf.task_unknown_retry_delay,
            conf.task_unknown_max_age,
        )
        return Outcome(
            "DEFERRED", delay=conf.task_unknown_retry_delay, reason="unknown task", body=stamped
        )

    def _newer(self, job: Job, exc: NewerProtocol) -> Outcome:
        """A newer producer's message: put back unchanged for an upgraded worker, as an
        unknown task is (a rolling deploy that upgrades producers first loses nothing), and
        dead-lettered with the advice once no upgraded worker took it in time."""
        conf = self.app.conf
        if not self._sent_at_readable(exc.sent_at):
            # No send time to count from (none, NaN, far in the future), and this version
            # cannot write one: put back, it would wait for ever.
            return Outcome("DEAD", reason=f"malformed message: {exc}")
        if self._past_max_age(exc.sent_at):
            return Outcome(
                "DEAD",
                reason=(
                    f"malformed message: {exc}; no upgraded worker took it within "
                    f"task_unknown_max_age={conf.task_unknown_max_age:g}s"
                ),
            )
        log.warning(
            "%s Putting it back for %gs so an upgraded worker can take it (dead-lettered "
            "after %gs).",
            printable(str(exc)),
            conf.task_unknown_retry_delay,
            conf.task_unknown_max_age,
        )
        return Outcome("DEFERRED", delay=conf.task_unknown_retry_delay, reason="newer protocol")

    def _sent_at_readable(self, sent_at: float) -> bool:
        """Whether a message's age can be counted from ``sent_at``: a time after 1970 and
        not past now by more than task_unknown_max_age (a producer's clock may run ahead
        a little; NaN fails both)."""
        return 0 < sent_at <= time.time() + self.app.conf.task_unknown_max_age

    def _past_max_age(self, sent_at: float) -> bool:
        """Whether a message sent at ``sent_at`` waited task_unknown_max_age for a worker
        that can run it. max: sent_at is rounded, and a producer's clock may run ahead."""
        return max(time.time() - sent_at, 0.0) >= self.app.conf.task_unknown_max_age

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
        except (SystemExit, KeyboardInterrupt) as exc:
            if not self.contain_exits:
                raise
            outcome = outcome_for(exc)  # sys.exit() in a task must not take a consumer down
        finally:
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
        if conversions is None:
            args = [task, *request.args] if task.bind else request.args
            return task.fn(*args, **self._accepted_kwargs(task, request.kwargs))
        # JSON carried bytes, datetimes, tuples... as text and lists: back to the
        # parameters' annotated types (a value that is not one fails the task here).
        args, kwargs = conversions.apply(
            task.name, request.args, self._accepted_kwargs(task, request.kwargs)
        )
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
                "(task_strict_kwargs is on; sent by newer code?)"
            )
        log.warning(
            "task %s[%s]: dropped keyword argument(s) %s that this version of the "
            "task does not accept (sent by newer code?)",
            task.name,
            _for_log(_current_id()),
            _for_log(", ".join(dropped)),
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
        else:
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
        conf = self.app.conf
        items = [
            (job.delivery.lease, self._encoded_result(job, o) if o.store_result else None)
            for job, o in finished
        ]
        if crashpoints.ARMED:
            crashpoints.reached("before_commit")
        committed, more = self.app.broker.complete_many(
            items,
            conf.result_expires,
            fetch.queues if fetch else (),
            fetch.consumer if fetch else "",
            limit=fetch.limit if fetch else 0,
            lease_seconds=fetch.lease_seconds if fetch else 0.0,
        )
        if crashpoints.ARMED:
            crashpoints.reached("after_commit")
        for (job, outcome), ok in zip(finished, committed, strict=True):
            self._log(job, outcome, ok)
            self.app.middleware.after_settle(job, outcome, ok)
        return more

    def _encoded_result(self, job: Job, outcome: Outcome) -> bytes:
        """The result record to store for ``outcome``.

        A value that cannot be stored (not JSON-serializable, nested too deeply, over
        task_result_max_bytes) is stored as a FAILURE that says why, and ``outcome`` is
        made that FAILURE in place, so the log line and the ``after_settle`` hooks (task
        events) say what the caller's ``get()`` raises: they said "succeeded".
        """
        try:
            raw = encode_result(self._record(job, outcome))
        except Exception as unencodable:  # noqa: BLE001 - a result it cannot store is a failure
            # encode_result already turns what msgspec refuses into a FAILURE record; this
            # is the last line: settling must never crash the child (it would run the task
            # again and again, then dead-letter it for the wrong reason).
            bad = SerializationError(
                f"task {job.label}: its {outcome.state} result could not be encoded "
                f"({type(unencodable).__name__}: {unencodable})"
            )
            _now_failed(outcome, bad, error_info(bad))
            return encode_result(self._record(job, outcome))
        if outcome.state != "FAILURE" and raw.startswith(_FAILURE_RECORD):
            # encode_result stored a FAILURE instead of the value: it says why.
            error = decode_result(raw).error
            text = error.message if error else "the task's result could not be encoded"
            _now_failed(outcome, SerializationError(text), error)
            return raw
        limit = self.app.conf.task_result_max_bytes
        if len(raw) <= limit:
            return raw
        # Refused like an oversized message: results live in broker memory too.
        exc = PayloadTooLarge(
            f"task {job.label} returned {len(raw):,} bytes, over task_result_max_bytes "
            f"({limit:,}); store the data elsewhere (a file, object storage) and return its id"
        )
        _now_failed(outcome, exc, error_info(exc))
        return encode_result(self._record(job, outcome))

    def _record(self, job: Job, outcome: Outcome) -> ResultRecord:
        message = job.message
        error = outcome.error
        if error is None and outcome.state in {"EXPIRED", "REVOKED"}:
            error = ErrorInfo(
                type=f"celeriac.errors.Task{outcome.state.title()}", message=outcome.reason
            )
        return ResultRecord(
            state=outcome.state,
            task=message.task if message else "",
            result=outcome.value if outcome.state == "SUCCESS" else None,
            error=error,
            retries=message.retries if message else 0,
            date_done=time.time(),
            worker=self.worker_id,
        )

    def _retry(self, job: Job, outcome: Outcome) -> bool:
        message = job.message
        assert message is not None
        delay = outcome.delay or 0.0
        message.retries += 1
        message.eta = time.time() + delay
        first = message.options.get("first_error")
        if isinstance(first, str):  # the error's text, kept for a later dead letter
            message.options["first_error"] = storable_text(first)
        try:
            body = outcome.body or self.app.codec.encode(message)
        except Exception as exc:  # noqa: BLE001 - a retry that cannot be sent is a failure
            bad = SerializationError(
                f"task {job.label} cannot be retried: its message could not be encoded "
                f"({type(exc).__name__}: {exc})"
            )
            _now_failed(outcome, bad, error_info(bad))  # logged as FAILURE, not "will retry"
            return self.app.broker.complete(
                job.delivery.lease, self._encoded_result(job, outcome), self.app.conf.result_expires
            )
        committed = self.app.broker.requeue(job.delivery.lease, delay=delay, body=body)
        if committed:
            record = ResultRecord(
                state="RETRY",
                task=message.task,
                retries=message.retries,
                error=error_info(outcome.exception) if outcome.exception else None,
                worker=self.worker_id,
            )
            try:
                self.app.broker.store_result(
                    message.id, encode_result(record), self.app.conf.result_expires
                )
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
                        _for_log(str(exc)),
                        Outage.REPEAT,
                    )
        return committed

    def _dead_letter(self, job: Job, outcome: Outcome) -> bool:
        delivery = job.delivery
        name = job.message.task if job.message else (_peek_name(delivery.body) or "?")
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
        label = _label(job)  # the name and id are the sender's text
        if not committed:
            log.warning(
                "task %s: lease lost before settling (%s), so this outcome was discarded: %s",
                label,
                outcome.state,
                self.app.broker.lease_loss(job.delivery.lease).value,
            )
            return
        # No run time for an outcome decided without running the task here (a verdict of
        # the supervisor's after a kill, an expiry): "in 0.0000s" would mislead.
        runtime = f" in {outcome.runtime:.4f}s" if outcome.runtime else ""
        state = outcome.state
        if state == "SUCCESS":
            log.info("task %s succeeded%s", label, runtime)
        elif state == "FAILURE":
            error = outcome.error
            log.error(
                "task %s failed%s: %s: %s",
                label,
                runtime,
                _for_log(error.type) if error else "?",
                _for_log(error.message) if error else "",
            )
        elif state == "RETRY":
            log.info(
                "task %s will retry in %.1fs (attempt %d)",
                label,
                outcome.delay or 0.0,
                job.message.retries if job.message else 0,
            )
        elif state == "DEAD":
            log.error(
                "task %s dead-lettered: %s. See `celeriac dlq list`.",
                label,
                _for_log(outcome.reason),
            )
        elif state != "DEFERRED":
            log.info("task %s %s: %s", label, state.lower(), _for_log(outcome.reason))

    def process(self, delivery: Delivery) -> tuple[Job, Outcome]:
        """Prepare, execute and settle one delivery (used by in-process runners)."""
        job, outcome = self.prepare(delivery)
        if outcome is None:
            outcome = self.execute(job)
        self.settle(job, outcome)
        return job, outcome


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every unfinished task on ``loop`` and run the loop until they end.

    A coroutine that ignores cancellation keeps this waiting until the hard limit stops
    the process: nothing of it may run later, inside another task.
    """
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    # Everything here is the cancelled task's own cleanup: whatever it raises (even
    # SystemExit) is not this worker's business; the original error is raised next.
    with contextlib.suppress(BaseException):
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


#: How an encoded result record that stores a FAILURE begins: ``state`` is its first field
#: and always written (msgspec keeps the declared order).
_FAILURE_RECORD = b'{"state":"FAILURE"'


def _now_failed(outcome: Outcome, exc: Exception, error: ErrorInfo | None) -> None:
    """Make ``outcome`` the FAILURE ``exc`` that was stored in place of its result."""
    outcome.state, outcome.value, outcome.exception = "FAILURE", None, exc
    outcome.error = error or error_info(exc)


def _current_id() -> str:
    request = _current.get()
    return request.id if request else "?"


LOG_TEXT_CHARS = 2000  # of an error in a log line; the stored result keeps all of it


def _for_log(text: str) -> str:
    """``text`` as one log line shows it: control characters escaped and cut short.

    Task names, ids, reasons and error texts come from messages and task code, so anyone
    who can send a task can put a newline or an ANSI escape code in them: written as
    they are, they forged log lines ("...\\n04:00:00 INFO task x succeeded") or rewrote
    the operator's terminal. A task failing with a megabyte of text wrote a megabyte line
    per failure (the result and ``celeriac result ID`` have it whole).

    Example:
        >>> print(_for_log("bad\\nFAKE 04:00:00 INFO ok \\x1b[2J"))
        bad\\nFAKE 04:00:00 INFO ok \\x1b[2J
        >>> len(_for_log("x" * 10_000)) < 2100
        True
    """
    text = printable(text)
    if len(text) <= LOG_TEXT_CHARS:
        return text
    more = len(text) - LOG_TEXT_CHARS
    return f"{text[:LOG_TEXT_CHARS]}... ({more:,} more characters in the result)"


def _label(job: Job) -> str:
    """``name[id]`` as :attr:`Job.label`, each part cut by :func:`_shown`."""
    name = job.message.task if job.message else "?"
    return f"{_shown(name)}[{_shown(job.delivery.id)}]"


def _shown(text: str) -> str:
    """A task name or id from a message, as a reason or a log line shows it: escaped, and
    cut to NAME_SHOWN characters (a producer can send a name of megabytes).

    Example:
        >>> print(_shown("x" * 300))  # doctest: +ELLIPSIS
        xxx...x... (300 characters)
    """
    text = printable(text)
    return text if len(text) <= NAME_SHOWN else f"{text[:NAME_SHOWN]}... ({len(text):,} characters)"


def _peek_name(body: bytes) -> str | None:
    """The task name in ``body`` read without decoding it as a message; None when it
    cannot be read so (pickle, not a mapping, or reading it raised: a dead letter must be
    written whatever the bytes hold)."""
    try:
        return peek_identity(body)[1]
    except Exception:  # noqa: BLE001 - best effort: the name only labels the letter
        return None


def _too_many(deliveries: int, limit: int) -> str:
    """Why a message handed out ``deliveries`` times is dead-lettered, over ``limit``.

    Example:
        >>> print(_too_many(6, 5))  # doctest: +NORMALIZE_WHITESPACE
        started 5 times without finishing (the worker crashed, was killed or lost its lease
        each time), so this delivery, the 6th, was not run; limit task_max_deliveries=5
    """
    return (
        f"started {_times(deliveries - 1)} without finishing (the worker crashed, was killed "
        f"or lost its lease each time), so this delivery, the {_ordinal(deliveries)}, was "
        f"not run; limit task_max_deliveries={limit}"
    )


def _times(n: int) -> str:
    """``1`` -> ``'once'``, ``3`` -> ``'3 times'``."""
    return "once" if n == 1 else f"{n} times"


def _ordinal(n: int) -> str:
    """``3`` -> ``'3rd'``.

    Example:
        >>> [_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)]
        ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd']
    """
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"
