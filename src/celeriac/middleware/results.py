"""Results: which outcomes are stored, and the optional STARTED state."""

from __future__ import annotations

from celeriac.message import ResultRecord, encode_result
from celeriac.middleware.base import Job, Middleware, Outcome


class Results(Middleware):
    """Honours ``ignore_result`` and ``task_track_started``.

    The final result itself is written by the broker in the same step as the ack, so a
    committed task always has its result and a crashed one never half has it.
    """

    options = frozenset({"ignore_result", "track_started"})

    def before_execute(self, job: Job) -> Outcome | None:
        """Store STARTED when the task or the app asks to track it."""
        task, request = job.task, job.request
        if task is None or request is None:
            return None
        track = task.options.extra.get("track_started", task.app.conf.task_track_started)
        if track:
            record = ResultRecord(
                state="STARTED", task=task.name, retries=request.retries, worker=job.worker_id
            )
            task.app.broker.store_result(
                request.id, encode_result(record), task.app.conf.result_expires
            )
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Drop the stored value of a successful task that ignores its result."""
        task = job.task
        if task is None or outcome.state != "SUCCESS":
            return outcome
        outcome.store_result = not task.ignores_result
        return outcome
