"""Revocation: a revoked task is not run; its state becomes REVOKED.

Revokes live in the broker (see :mod:`celeriac.control`), so they survive worker restarts
and reach every host. Each process keeps the set it has read and refreshes it at most
every quarter second, so a revoke takes effect within about that long: no extra broker
round trip per task. A revoke made in this process (a test's ``run_queued``, eager mode, a
task revoking another) applies at once.

A refresh that fails (the broker is briefly unreachable) keeps the revokes already read:
a task revoked long ago must not run because the latest read failed. The set keeps the
ids of at least the last ``STREAM_LENGTH`` revokes, as many as the broker's stream holds
(what a worker started now knows), and at most twice that: it grew with every revoke for
the life of the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from celeriac.control import STREAM_LENGTH, read_revocations
from celeriac.errors import BrokerError
from celeriac.middleware.base import Job, Middleware, Outcome

log = logging.getLogger("celeriac.worker")

_REFRESH = 0.25


class Revocation(Middleware):
    """Skips tasks revoked before they start."""

    def __init__(self) -> None:
        self._revoked: dict[str, None] = {}  # an ordered set: the oldest revokes go first
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
        self._remember([task_id])

    def before_execute(self, job: Job) -> Outcome | None:
        """Return REVOKED for a revoked task id."""
        if job.task is None:
            return None
        now = time.monotonic()
        if now - self._checked > _REFRESH:
            self._checked = now
            try:
                self._seq, entries = read_revocations(job.task.app, self._seq)
            except BrokerError as exc:
                log.warning(
                    "could not read new revokes before task %s (%s); checking it against "
                    "the revokes read so far",
                    job.label,
                    exc,
                )
            else:
                self._remember(e.id for e in entries)
        if job.delivery.id in self._revoked:
            return Outcome("REVOKED", reason="revoked before it started")
        return None

    def _remember(self, task_ids: Iterable[str]) -> None:
        self._revoked.update(dict.fromkeys(task_ids))
        if len(self._revoked) > 2 * STREAM_LENGTH:  # trimmed now and then, not per revoke
            self._revoked = dict.fromkeys(list(self._revoked)[-STREAM_LENGTH:])
