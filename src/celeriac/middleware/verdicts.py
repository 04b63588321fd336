"""Verdicts: outcomes decided outside the task, settled through the normal pipeline.

When the supervisor kills a child for a task's hard time limit, or for ``revoke
--terminate``, it cannot settle the message itself without skipping every middleware (a
chain would never continue, a chord never join). So it records a *verdict* in the
broker's store and puts the message back. The next delivery does not run the task: this
middleware turns the verdict into the task's outcome (FAILURE with TimeLimitExceeded, or
REVOKED), and retries, canvas and events see it like any other outcome.

Only redeliveries are checked (a verdict always comes with a redelivery), so the hot path
pays nothing.
"""

from __future__ import annotations

import msgspec

from celeriac.message import ErrorInfo
from celeriac.middleware.base import Job, Middleware, Outcome


class Verdict(msgspec.Struct):
    """What the supervisor decided about a task it stopped."""

    state: str  # FAILURE or REVOKED
    error: ErrorInfo


def verdict_key(task_id: str) -> str:
    """Where a task's verdict is kept."""
    return f"verdict:{task_id}"


class Verdicts(Middleware):
    """Settles a redelivered task with the verdict recorded for it, if any."""

    def before_execute(self, job: Job) -> Outcome | None:
        """Return the recorded verdict as this delivery's outcome."""
        if job.delivery.deliveries < 2 or job.task is None:
            return None
        (raw,) = job.task.app.broker.kv_get([verdict_key(job.delivery.id)])
        if raw is None:
            return None
        verdict = msgspec.json.decode(raw, type=Verdict)
        exc = _exception(verdict.error)
        return Outcome(
            verdict.state, error=verdict.error, exception=exc, reason=verdict.error.message
        )

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Forget a verdict once its outcome is committed."""
        if committed and job.task is not None and job.delivery.deliveries >= 2:
            job.task.app.broker.kv_delete(verdict_key(job.delivery.id))


def _exception(error: ErrorInfo) -> BaseException:
    """The exception a verdict's error stands for, by the type it names."""
    from celeriac.errors import TaskRevoked, TimeLimitExceeded

    kinds: dict[str, type[BaseException]] = {
        "celeriac.errors.TaskRevoked": TaskRevoked,  # revoked with terminate
        "builtins.OSError": OSError,  # a task closed its child's descriptors (.broken)
    }
    return kinds.get(error.type, TimeLimitExceeded)(error.message)
