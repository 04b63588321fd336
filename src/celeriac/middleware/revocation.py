"""Revocation: a revoked task is not run; its state becomes REVOKED.

Revokes live in the broker (see :mod:`celeriac.control`), so they survive worker restarts
and reach every host. Each process keeps the set it has read and refreshes it at most
every quarter second, so a revoke takes effect within about that long: no extra broker
round trip per task. A revoke made in this process (a test's ``run_queued``, eager mode, a
task revoking another) applies at once.
"""

from __future__ import annotations

import time

from celeriac.control import read_revocations
from celeriac.middleware.base import Job, Middleware, Outcome

_REFRESH = 0.25


class Revocation(Middleware):
    """Skips tasks revoked before they start."""

    def __init__(self) -> None:
        self._revoked: set[str] = set()
        self._seq = 0
        self._checked = 0.0

    def revoked_here(self, task_id: str) -> None:
        """Honour a revoke made in this process at once, not at the next refresh.

        Example:
            >>> middleware = Revocation()
            >>> middleware.revoked_here("abc")
            >>> "abc" in middleware._revoked
            True
        """
        self._revoked.add(task_id)

    def before_execute(self, job: Job) -> Outcome | None:
        """Return REVOKED for a revoked task id."""
        if job.task is None:
            return None
        now = time.monotonic()
        if now - self._checked > _REFRESH:
            self._checked = now
            self._seq, entries = read_revocations(job.task.app, self._seq)
            self._revoked.update(e.id for e in entries)
        if job.delivery.id in self._revoked:
            return Outcome("REVOKED", reason="revoked before it started")
        return None
