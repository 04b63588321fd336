"""Beat ticks: a tick runs once, even when two schedulers sent it.

The schedulers' claim keeps almost every tick to one send, but not every one: a scheduler
that stalls past its claim (a paused VM, a lost reply from the broker) or dies between its
send and its ``sent`` mark is taken over, and the tick is sent again. The deterministic
task id hides that second send only while the first copy is queued, running or has a
stored result; a tick of an ``ignore_result`` task that already finished leaves nothing
behind. So the worker fences ticks itself: the first copy of a tick to start writes
``beat:ran:<task id>`` with its send time, and a copy sent at another time is skipped.

What is *not* a second send, and runs: a redelivery or a put-back of the same message
(same send time), a retry, and a dead letter replayed by hand (``replayed_at``).
"""

from __future__ import annotations

import logging
import time

from celeriac.middleware.base import Job, Middleware, Outcome
from celeriac.text import printable

log = logging.getLogger("celeriac.beat")

_KEPT = 300.0  # seconds the fence outlives the tick's expiry: a late second copy is caught
_NO_EXPIRY = 3600.0  # a tick sent without an expiry: how long to keep its fence instead


class Ticks(Middleware):
    """Skips the second send of a beat tick whose first send already started."""

    def before_execute(self, job: Job) -> Outcome | None:
        """Fence a tick's first start; return a quiet REVOKED for a second send of it."""
        message, task = job.message, job.task
        if message is None or task is None or "beat_tick" not in message.headers:
            return None
        if message.retries > 0:
            return None  # a retry is the same run going on
        broker = task.app.broker
        key = fence_key(message.id)
        stamp = repr(message.sent_at).encode()
        now = time.time()
        left = (message.expires - now) if message.expires is not None else _NO_EXPIRY
        ttl = max(left, 0.0) + _KEPT
        if "replayed_at" in message.options:  # a deliberate re-run: it takes the fence
            broker.kv_set(key, stamp, ttl)
            return None
        if broker.kv_set(key, stamp, ttl, only_if_absent=True):
            return None
        (held,) = broker.kv_get([key])
        if held is None or held == stamp:
            return None  # the same send again (a redelivery), or the fence just lapsed
        log.warning(
            "beat: task %s was sent twice for tick %s of entry %s (a scheduler took over a "
            "tick whose first sender stalled or died after sending); the first copy already "
            "started, so this second copy is skipped. Nothing to do.",
            job.label,
            printable(str(message.headers.get("beat_tick"))),  # headers: the sender's text
            printable(str(message.headers.get("beat_entry"))),
        )
        return Outcome(
            "REVOKED",
            reason="a second send of a beat tick whose first copy already ran",
            store_result=False,
        )


def fence_key(task_id: str) -> str:
    """The small-store key that records which send of a tick started first.

    Example:
        >>> fence_key("beat:cleanup:20240331T010000Z")
        'beat:ran:beat:cleanup:20240331T010000Z'
    """
    return f"beat:ran:{task_id}"
