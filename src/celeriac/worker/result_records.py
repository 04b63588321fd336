"""The result record a settle stores for a task, and what becomes of one it cannot store.

A mixin of :class:`~celeriac.worker.executor.Executor`, kept apart so each module stays
small: the record itself; a value that cannot be encoded, or is over
``task_result_max_bytes``, stored as the FAILURE that says why
(:meth:`ResultRecords._encoded_result`); an error too large for the limit cut to fit. The
settle itself (ack, retry, dead letter) is in :mod:`celeriac.worker.executor`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from celeriac.errors import PayloadTooLarge, SerializationError
from celeriac.message import ErrorInfo, ResultRecord, decode_result, encode_result
from celeriac.middleware.base import Job, Outcome
from celeriac.worker.reading import error_info

if TYPE_CHECKING:
    from celeriac.app import Celeriac


class ResultRecords:
    """Encodes the result record of an outcome, as the executor stores it."""

    app: Celeriac
    worker_id: str

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
            now_failed(outcome, bad, error_info(bad))
            return encode_result(self._record(job, outcome))
        if outcome.state != "FAILURE" and raw.startswith(_FAILURE_RECORD):
            # encode_result stored a FAILURE instead of the value: it says why.
            error = decode_result(raw).error
            text = error.message if error else "the task's result could not be encoded"
            now_failed(outcome, SerializationError(text), error)
            return raw
        limit = self.app.conf.task_result_max_bytes
        if len(raw) <= limit:
            return raw
        if outcome.state != "SUCCESS" and outcome.error is not None:
            # An error over the limit (an exception quoting a whole response, a recursion's
            # traceback) was stored as "returned N bytes", as if the task had returned a
            # value: keep what it raised, cut to fit.
            outcome.error = cut_error(outcome.error, len(raw), limit)
            return encode_result(self._record(job, outcome))
        # Refused like an oversized message: results live in broker memory too.
        exc = PayloadTooLarge(
            f"task {job.label} returned {len(raw):,} bytes, over task_result_max_bytes "
            f"({limit:,}); store the data elsewhere (a file, object storage) and return its id"
        )
        now_failed(outcome, exc, error_info(exc))
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


#: How an encoded result record that stores a FAILURE begins: ``state`` is its first field
#: and always written (msgspec keeps the declared order).
_FAILURE_RECORD = b'{"state":"FAILURE"'


def cut_error(error: ErrorInfo, size: int, limit: int) -> ErrorInfo:
    """``error`` with its message and traceback cut to fit a result of ``limit`` bytes,
    each saying so (JSON escapes at most 6 bytes a character, hence the margin).

    Example:
        >>> big = ErrorInfo(type="builtins.ValueError", message="x" * 100_000)
        >>> cut = cut_error(big, 100_100, 4_096)
        >>> cut.type, len(cut.message) < 1_000, cut.message.endswith("task_result_max_bytes]")
        ('builtins.ValueError', True, True)
    """
    keep = max((limit - 1_024) // 12, 0)
    note = f" [... cut: the error's result was {size:,} bytes, over task_result_max_bytes]"
    return ErrorInfo(
        type=error.type,
        message=error.message if len(error.message) <= keep else error.message[:keep] + note,
        traceback=error.traceback
        if len(error.traceback) <= keep
        else "..." + error.traceback[-keep:],
    )


def now_failed(outcome: Outcome, exc: Exception, error: ErrorInfo | None) -> None:
    """Make ``outcome`` the FAILURE ``exc`` that was stored in place of its result."""
    outcome.state, outcome.value, outcome.exception = "FAILURE", None, exc
    outcome.error = error or error_info(exc)
