"""What a child does once its supervisor is gone.

A child gets SIGTERM when its supervisor dies (``PR_SET_PDEATHSIG``: kill -9, the OOM
killer), finishes its running task, gives back the rest and exits. Meanwhile it does for
itself what the supervisor did for it, each in a thread of its own (a broker that hangs
instead of refusing costs a socket timeout per call, and must not hold back a hard limit):

* :meth:`Orphan.watch_hard_limits`: a task past its hard limit is killed and settled
  FAILURE, and the child exits. Without it, a task that ignored its soft limit kept an
  orphan running for ever.
* :meth:`Orphan.keep`: the child's consumer id is heartbeated and what it holds is
  renewed, with a broker connection of the thread's own (SQLite's is per thread; a Redis
  client takes one of its pool per call). Without it, another worker's reaper handed the
  running task's message out again about 10 s later (5 missed heartbeats), and a 20 s
  task ran twice at once, side effects and all; the orphan's commit was then refused.

Only tasks within their hard limit are renewed: past it, the watch kills the task and
settles it, and should that fail, the lease running out is the one way left for the
message to run again, which a renewal would defer for as long as the stuck task hangs on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import msgspec

from celeriac.brokers.records import Lease
from celeriac.errors import BrokerError, TaskRevoked, TimeLimitExceeded
from celeriac.middleware.verdicts import Verdict, verdict_key
from celeriac.worker.broker_duties import child_ttl, consumer_info, lost_by_reason
from celeriac.worker.descendants import kill_own_tree, words
from celeriac.worker.outage import Outage
from celeriac.worker.output import flush_output
from celeriac.worker.reading import error_info
from celeriac.worker.slot import Held

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

_STEP = 0.1  # seconds between checks of what is due


class Orphan:
    """An orphaned child's hard-limit watch, lease renewals and heartbeats (see the module
    docstring): each public method is the target of a thread of its own."""

    def __init__(
        self,
        app: Celeriac,
        consumer: str,
        supervisor: str,
        queues: tuple[str, ...],
        held: Callable[[], list[Held]],
    ) -> None:
        self.app = app
        self.consumer = consumer
        self.supervisor = supervisor
        self.queues = queues
        self._held = held  # what the child holds now (a copy)
        self._said_lost: set[str] = set()

    def watch_hard_limits(self) -> None:
        """Kill a task past its hard limit and exit, as the supervisor would have."""
        while True:
            now = time.time()
            held = self._held()
            for running in held:
                if running.hard_deadline and now > running.hard_deadline:
                    self._stop(running, held)
            time.sleep(_STEP)

    def _stop(self, overdue: Held, held: list[Held]) -> NoReturn:
        """Do what the supervisor does for a task past its hard limit, then exit."""
        # What its tasks started would outlive it, reparented to init (see .descendants).
        started = kill_own_tree()
        log.error(
            "child %d: task %s passed its hard time limit and this child's supervisor "
            "is gone, so nothing else can stop it: killed%s, recording its failure, "
            "putting back what this child holds, and exiting",
            os.getpid(),
            overdue.label,
            words(started).removeprefix(" and") or " nothing it started",
        )
        broker = self.app.broker
        try:
            verdict = killed_verdict(overdue, "FAILURE")
            broker.kv_set(verdict_key(overdue.id), verdict, self.app.conf.result_expires)
            for h in held:
                # The overdue task counts as a delivery, as when the supervisor kills it.
                lease = Lease(h.id, h.queue, h.token)
                broker.requeue(lease, count_delivery=bool(h.started))
        except BrokerError as exc:
            log.error(
                "child %d could not reach the broker (%s); what it held is delivered again "
                "when its lease expires",
                os.getpid(),
                exc,
            )
        finally:
            logging.shutdown()
            flush_output()
            os._exit(1)

    def keep(self) -> None:
        """Renew and heartbeat on time until the process exits (a thread's target)."""
        import psutil  # only an orphan needs it (see celeriac.worker.descendants)

        conf = self.app.conf
        started = psutil.Process().create_time()
        beat_at = renew_at = 0.0
        outage = Outage(first_delay=0.5, longest=1.0)  # as the supervisor's: catch up soon
        while True:
            now = time.monotonic()
            if now >= outage.retry_at and now >= min(beat_at, renew_at):
                try:
                    if now >= beat_at:
                        self._beat(started)
                        beat_at = now + conf.worker_heartbeat_seconds
                    if now >= renew_at:
                        self._renew()
                        renew_at = now + conf.worker_lease_seconds / 3
                except Exception as exc:  # a bug, too, must not end them for good
                    if outage.failed(began=now):
                        log.error(
                            "child %d, its supervisor gone, could not renew its running "
                            "task's lease or heartbeat (%s); it tries again with backoff",
                            os.getpid(),
                            exc,
                            exc_info=not isinstance(exc, BrokerError),
                        )
                else:
                    if outage.since:
                        outage.ended()
            time.sleep(_STEP)

    def _beat(self, started: float) -> None:
        info = consumer_info(self.consumer, os.getpid(), self.queues, started, self.supervisor)
        self.app.broker.heartbeat(info, child_ttl(self.app.conf))

    def _renew(self) -> None:
        now = time.time()
        # Past its hard limit, a task is the watch's to kill: see the module docstring.
        leases = [
            Lease(h.id, h.queue, h.token)
            for h in self._held()
            if not (h.hard_deadline and now > h.hard_deadline)
        ]
        if not leases:
            return
        lost = self.app.broker.renew(leases, self.app.conf.worker_lease_seconds)
        still = {(h.id, h.token) for h in self._held()}  # a commit meanwhile is no loss
        tokens = {lease.id: lease.token for lease in leases}
        new = sorted(i for i in lost if (i, tokens[i]) in still and i not in self._said_lost)
        if new:
            self._said_lost.update(new)
            lost_now = [lease for lease in leases if lease.id in new]
            for reason, ids in lost_by_reason(self.app.broker, lost_now).items():
                log.warning(
                    "child %d, its supervisor gone, lost the lease of %s: %s; their results "
                    "here will be refused",
                    os.getpid(),
                    ids,
                    reason,
                )


def killed_verdict(held: Held, state: str) -> bytes:
    """The verdict recorded for a task stopped from outside its child: FAILURE (past its
    hard limit) or REVOKED (revoked with terminate). Its next delivery is settled with it.
    """
    if state == "REVOKED":
        exc: Exception = TaskRevoked(f"task {held.task}[{held.id}] was revoked and stopped")
    else:
        limit = held.hard_deadline - held.started
        exc = TimeLimitExceeded(
            f"task {held.task}[{held.id}] ran past its hard time limit ({limit:g}s) and was killed"
        )
    return msgspec.json.encode(Verdict(state, error_info(exc)))


def blocked_loop_verdict(held: Held) -> bytes:
    """The verdict recorded for a task that blocked its asyncio child's event loop until
    another task of the child passed its hard limit: FAILURE, TimeLimitExceeded.

    Example:
        >>> blocked_loop_verdict(Held("t1", "q", "x", "shop.sync", 1.0))[:30]
        b'{"state":"FAILURE","error":{"t'
    """
    exc = TimeLimitExceeded(
        f"task {held.task}[{held.id}] blocked the event loop of its asyncio child until "
        "another task's hard time limit passed, and the child was killed. A blocking call "
        "in an async def (time.sleep, a sync HTTP or database client, CPU-heavy work) stops "
        "every task of the child: await an async client, or use asyncio.to_thread"
    )
    return msgspec.json.encode(Verdict("FAILURE", error_info(exc)))
