"""Expiry: a message whose ``expires`` time passed before it started is not run (EXPIRED).

Each expiry is also recorded per queue and UTC day in the broker's store (an idempotent
join, so a redelivered message is counted once), for ``celeriac status``.
"""

from __future__ import annotations

import time

from celeriac.message import Message
from celeriac.middleware.base import Job, Middleware, Outcome
from celeriac.text import seconds

_COUNT_TTL = 2 * 86_400.0


def expired_key(queue: str, when: float | None = None) -> str:
    """The store key that counts a queue's expired tasks for one UTC day."""
    return f"expired:{queue}:{time.strftime('%Y%m%d', time.gmtime(when))}"


class Expiry(Middleware):
    """Skips expired messages; the result state becomes EXPIRED and the message is acked."""

    options = frozenset({"expires"})

    def before_execute(self, job: Job) -> Outcome | None:
        """Return an EXPIRED outcome when the message's expiry is in the past."""
        if job.message is None:
            return None
        return expired(job.message, job.delivery.deliveries)

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Count a committed expiry (of a task this worker does not know too)."""
        app = job.task.app if job.task is not None else job.app
        if outcome.state == "EXPIRED" and committed and app is not None:
            app.broker.join_add(expired_key(job.delivery.queue), job.delivery.id, b"", _COUNT_TTL)


def expired(message: Message, deliveries: int = 1) -> Outcome | None:
    """EXPIRED, saying how late, when ``message``'s expiry has passed; else None.

    ``deliveries`` is the delivery's count: over 1, an earlier delivery was taken to run
    and did not finish (its worker child died, the worker was killed), so the task may
    have run in part, and is not said to have never started.

    Example:
        >>> expired(Message(id="t1", task="shop.mail", expires=time.time() - 90)).state
        'EXPIRED'
        >>> expired(Message(id="t2", task="shop.mail", expires=time.time() + 90)) is None
        True
    """
    if message.expires is None or message.expires >= time.time():
        return None
    late = time.time() - message.expires
    if not message.retries and deliveries > 1:
        # It read "before a worker started it" of a task whose child died mid-run (OOM):
        # its side effects happened, and the caller was told it never ran.
        return Outcome(
            "EXPIRED",
            reason=(
                f"expired {seconds(late)} before a worker could run it again: an earlier "
                "delivery was taken to run and did not finish (its worker child died or its "
                "worker was stopped), so it may have run in part"
            ),
        )
    if not message.retries:
        return Outcome("EXPIRED", reason=f"expired {seconds(late)} before a worker started it")
    # A retry that came up too late: it did run, and failed. "Before a worker started it"
    # told its caller it never ran, and hid the error it failed with.
    first = message.options.get("first_error")
    return Outcome(
        "EXPIRED",
        reason=(
            f"expired {seconds(late)} before a worker started retry {message.retries}; "
            "its earlier runs failed" + (f" (first error: {first})" if first else "")
        ),
    )
