"""Revocation: a revoked task is not run; its state becomes REVOKED.

Revokes live in the broker (see :mod:`celeriac.control`), so they survive worker restarts
and reach every host. Each process keeps the set it has read from the revokes stream and
refreshes it at most every quarter second, so a revoke takes effect within about that
long: no extra broker round trip per task. A revoke made in this process (a test's
``run_queued``, eager mode, a task revoking another) applies at once.

The stream keeps the last ``STREAM_LENGTH`` revokes and the set at most twice that, so a
revoke followed by ``STREAM_LENGTH`` others can be missing from both: it was trimmed from
the stream before this worker read it, or from the set. It used to be forgotten, and its
task ran. The revoke is also a mark in the result store, kept for as long as the task can
matter (``control.REVOKE_KEEP``), so the set is only the fast path. The process remembers
the latest revoke time it may be missing (``_horizon``); a task sent after it (plus a
margin for clocks) cannot be the subject of a missing revoke, since a task is revoked
after it is sent. Only an older message (a countdown, a backlog, a retry) is looked up,
one read of its result key: while fewer than ``STREAM_LENGTH`` revokes were ever made,
none is.

A refresh that fails (the broker is briefly unreachable) keeps the revokes already read:
a task revoked long ago must not run because the latest read failed. A look-up that fails
puts the message back for a second, uncounted: the task may be revoked, so it must not run
on a guess.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

from celeriac.control import STREAM_LENGTH, has_revoke_mark, read_revocations_counted
from celeriac.control import Revocation as Revoke
from celeriac.errors import BrokerError
from celeriac.middleware.base import Job, Middleware, Outcome

log = logging.getLogger("celeriac.worker")

_REFRESH = 0.25
# Seconds the clocks of the hosts that send tasks and of those that revoke them may differ
# by. A larger margin only costs look-ups, for messages sent just after the horizon.
_CLOCK_MARGIN = 60.0
_LOOKUP_RETRY = 1.0  # seconds a message waits when its look-up failed


class Revocation(Middleware):
    """Skips tasks revoked before they start."""

    def __init__(self) -> None:
        # An ordered set, the oldest revokes first: task id -> when it was revoked.
        self._revoked: dict[str, float] = {}
        self._seq = 0
        self._checked = 0.0
        # Revokes made at or before this time (the revoker's clock) may be missing from
        # _revoked; -inf while this process has read every revoke ever made.
        self._horizon = -math.inf

    def revoked_here(self, task_id: str) -> None:
        """Honour a revoke made in this process at once, not at the next refresh.

        Example:
            >>> middleware = Revocation()
            >>> middleware.revoked_here("abc")
            >>> "abc" in middleware._revoked
            True
        """
        self._remember([Revoke(task_id, at=time.time())])

    def before_execute(self, job: Job) -> Outcome | None:
        """Return REVOKED for a revoked task id."""
        if job.task is None:
            return None
        now = time.monotonic()
        if now - self._checked > _REFRESH:
            self._checked = now
            self._refresh(job)
        if job.delivery.id in self._revoked:
            return Outcome("REVOKED", reason="revoked before it started")
        if self._horizon == -math.inf:
            return None
        sent_at = job.message.sent_at if job.message is not None else 0.0
        if sent_at > self._horizon + _CLOCK_MARGIN:
            return None  # sent after every revoke this process may be missing
        return self._look_up(job)

    def _refresh(self, job: Job) -> None:
        assert job.task is not None
        try:
            self._seq, entries, full = read_revocations_counted(job.task.app, self._seq)
        except BrokerError as exc:
            log.warning(
                "could not read new revokes before task %s (%s); checking it against "
                "the revokes read so far",
                job.label,
                exc,
            )
            return
        if full:
            # Older revokes may have been trimmed before this process read them (it
            # started after them, or more than the stream holds came in since the last
            # read). The oldest one read bounds when they were made.
            oldest = entries[0].at if entries else 0.0
            self._horizon = max(self._horizon, oldest or time.time())
        self._remember(entries)

    def _look_up(self, job: Job) -> Outcome | None:
        """Read the task's revoke mark: its revoke may be missing from the set."""
        assert job.task is not None
        try:
            revoked = has_revoke_mark(job.task.app.broker, job.delivery.id)
        except BrokerError as exc:
            log.warning(
                "could not check whether task %s was revoked (%s): more revokes were made "
                "since it was sent than this worker keeps in memory. It is put back and "
                "checked again in %.0f s",
                job.label,
                exc,
                _LOOKUP_RETRY,
            )
            return Outcome("DEFERRED", delay=_LOOKUP_RETRY, reason="revoke check failed")
        if revoked:
            return Outcome("REVOKED", reason="revoked before it started")
        return None

    def _remember(self, revokes: Iterable[Revoke]) -> None:
        self._revoked.update((r.id, r.at) for r in revokes)
        if len(self._revoked) > 2 * STREAM_LENGTH:  # trimmed now and then, not per revoke
            ids = list(self._revoked)
            dropped = max(self._revoked[i] for i in ids[:-STREAM_LENGTH])
            self._horizon = max(self._horizon, dropped or time.time())
            self._revoked = {i: self._revoked[i] for i in ids[-STREAM_LENGTH:]}
