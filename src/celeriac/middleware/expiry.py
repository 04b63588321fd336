"""Expiry: a message whose ``expires`` time passed before it started is not run (EXPIRED)."""

from __future__ import annotations

import time

from celeriac.middleware.base import Job, Middleware, Outcome


class Expiry(Middleware):
    """Skips expired messages; the result state becomes EXPIRED and the message is acked."""

    options = frozenset({"expires"})

    def before_execute(self, job: Job) -> Outcome | None:
        """Return an EXPIRED outcome when the message's expiry is in the past."""
        message = job.message
        if message is not None and message.expires is not None and message.expires < time.time():
            late = time.time() - message.expires
            return Outcome("EXPIRED", reason=f"expired {late:.1f}s before a worker started it")
        return None
