"""Results: which outcomes are stored, and the optional STARTED state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.message import ResultRecord, encode_result
from celeriac.middleware.base import Job, Middleware, Outcome, option_error

if TYPE_CHECKING:
    from celeriac.app import Celeriac


class Results(Middleware):
    """Honours ``ignore_result`` and ``track_started``, the task's or one call's
    (``apply_async(ignore_result=True)``), and the app's ``task_track_started``.

    The final result itself is written by the broker in the same step as the ack, so a
    committed task always has its result and a crashed one never half has it.

    A task that ignores its result stores no STARTED or RETRY state either (as Celery's
    ``track_started`` does nothing then): its success stores nothing that would replace
    them, so a task retried once, or tracked, read RETRY (with the retry's error) or
    STARTED for ``result_expires`` after it had succeeded. Its FAILURE is stored, and a
    workflow step keeps its RETRY (Canvas stores its result).
    """

    options = frozenset({"ignore_result", "track_started"})

    def check_options(self, app: Celeriac, task: str, options: dict[str, Any]) -> None:
        """Refuse a value other than True or False: ``ignore_result="no"`` is truthy.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> Results().check_options(app, "shop.add", {"track_started": "yes"})
            Traceback (most recent call last):
            celeriac.errors.ConfigurationError: task shop.add: track_started must be True or \
False, got 'yes'
        """
        for name in self.options:
            value = options.get(name)
            if value is not None and not isinstance(value, bool):
                raise option_error(task, name, value, "True or False")

    def before_execute(self, job: Job) -> Outcome | None:
        """Store STARTED when the call, the task or the app asks to track it."""
        task, request, message = job.task, job.request, job.message
        if task is None or request is None or message is None:
            return None
        track = message.options.get("track_started")
        if track is None:  # per call, as apply_async takes it: it was read from the task only
            track = task.options.extra.get("track_started", task.app.conf.task_track_started)
        if track and not _ignores_result(job):
            record = ResultRecord(
                state="STARTED", task=task.name, retries=request.retries, worker=job.worker_id
            )
            task.app.broker.store_result(
                request.id, encode_result(record), task.app.conf.result_expires
            )
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Store neither the value nor the RETRY state of a task that ignores its result."""
        if outcome.state in {"SUCCESS", "RETRY"}:
            outcome.store_result = not _ignores_result(job)
        return outcome


def _ignores_result(job: Job) -> bool:
    """Whether the job's success stores no value: the call's choice, else the task's."""
    task, message = job.task, job.message
    if task is None:
        return False
    ignore = message.options.get("ignore_result") if message is not None else None
    return bool(task.ignores_result if ignore is None else ignore)
