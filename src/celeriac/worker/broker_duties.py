"""The supervisor's broker duties: what keeps its children's tasks its own, and lets
others see and question the worker.

A mixin of :class:`~celeriac.worker.supervisor.Worker`, kept apart so each module stays
small: heartbeats (the supervisor's and each live child's consumer id, in one call), lease
renewal of everything its children hold, the deterministic reaper of dead hosts, and the
answers to remote-control commands (``ping``, ``active``, ``registered``, ``memory``,
``stats``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac.brokers.records import Lease, WorkerInfo
from celeriac.control import UNHEALTHY
from celeriac.errors import BrokerError
from celeriac.worker.crash_loop import ChildDeaths
from celeriac.worker.memory import Ceiling
from celeriac.worker.reading import shown
from celeriac.worker.remote import Remote
from celeriac.worker.slot import SlotView

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Broker
    from celeriac.config import Settings
    from celeriac.worker.reaping import ChildState

log = logging.getLogger("celeriac.worker")

#: Heartbeats between a supervisor's reads of the broker's notes (Broker.notes: a minute
#: with the default 2 s), and seconds before one still true is logged again.
NOTES_EVERY = 30
NOTES_REPEAT = 600.0

#: A worker's answer to ``shutdown``.
STOPPING = "stopping warmly: running tasks finish, the rest go back to their queue"


def lost_by_reason(broker: Broker, lost: list[Lease]) -> dict[str, str]:
    """What became of the messages of ``lost`` leases (:meth:`Broker.lease_loss`), each
    reason with the ids it applies to, joined for a log line.

    A lost lease was said as "another worker may run them" in every case: after a Redis
    restart without persistence, which took the messages with it, nobody would run them
    again, and the line sent an operator looking for a second worker.
    """
    said: dict[str, list[str]] = {}
    for lease in lost:
        try:
            reason = broker.lease_loss(lease).value
        except BrokerError:
            reason = "another worker may run it (the broker could not say more)"
        said.setdefault(reason, []).append(shown(lease.id))  # ids are the senders' text
    # One id once: a message taken back and handed out again under a new token, both
    # leases lost, read "lost the lease of a1, a1".
    return {reason: ", ".join(dict.fromkeys(ids)) for reason, ids in said.items()}


class BrokerDuties:
    """Heartbeats, lease renewal, the reaper and remote-control answers of a supervisor."""

    app: Celeriac
    id: str
    queues: tuple[str, ...]
    concurrency: int
    remote: Remote
    _children: list[ChildState]
    _started: float
    _done_before: int
    _growth_before: dict[str, list[int]]
    _deaths: ChildDeaths
    _ceiling: Ceiling
    _last_beat: float
    _last_renew: float
    _last_reap: float
    _last_notes: float = 0.0
    _notes_said: dict[str, float]
    _lost_before: set[tuple[str, str]]  # (id, token) found lost by the last renewal

    def _broker_duties(self, now: float) -> None:
        """What keeps this worker's tasks its own, first; the rest when there is time.

        Every call is a round trip, and on a slow link a pass can take seconds: heartbeats
        (one call for the supervisor and all children) and lease renewals come first, so
        they stay on time; remote control and the reaper of other hosts wait for a pass
        that has time to spare.
        """
        conf = self.app.conf
        started = time.monotonic()
        if now - self._last_beat >= conf.worker_heartbeat_seconds:
            self._heartbeat()
            self._last_beat = now
        if now - self._last_renew >= conf.worker_lease_seconds / 3:
            self._renew_leases()
            self._last_renew = now
        if time.monotonic() - started > conf.worker_heartbeat_seconds / 2:
            return
        self.remote.poll()
        if now - self._last_reap >= max(conf.worker_heartbeat_seconds, 2.0):
            self.app.broker.reap()
            self._last_reap = now
        if now - self._last_notes >= NOTES_EVERY * conf.worker_heartbeat_seconds:
            self._last_notes = now
            self._say_notes(self.app.broker.notes())

    def _say_notes(self, notes: list[str]) -> None:
        """Log what the broker's notes say that was not said in the last ``NOTES_REPEAT``
        seconds (an evicting policy set on a running Redis, a failover that left it a
        replica): checked at start-up only, a policy changed later deleted queued tasks
        while the workers said nothing."""
        now = time.monotonic()
        for note in notes:
            if now - self._notes_said.get(note, -math.inf) >= NOTES_REPEAT:
                self._notes_said[note] = now
                log.error("worker %s: %s", self.id, note)

    def _renew_leases(self) -> None:
        leases = [
            Lease(h.id, h.queue, h.token) for child in self._children for h in child.last_view.held
        ]
        if not leases:
            self._lost_before = set()
            return
        lost = self.app.broker.renew(leases, self.app.conf.worker_lease_seconds)
        if lost:
            # Only what a child still holds was lost: a task committed between this
            # tick's read of the slots and the renewal is merely done.
            lost = self._still_held(lost, leases)
        # Said on the second renewal in a row that finds it lost: a child that committed
        # a batch lists it in its slot until its next write, so once was often "done",
        # not "lost" (~1 run in 6 under load), and read as "another worker may run them".
        tokens = {lease.id: lease.token for lease in leases}
        now_lost = {(i, tokens[i]) for i in lost}
        repeated = sorted(i for i, token in now_lost & self._lost_before)
        self._lost_before = now_lost
        if repeated:
            self._say_lost([lease for lease in leases if lease.id in repeated])

    def _say_lost(self, lost: list[Lease]) -> None:
        """Warn of leases found lost twice in a row, with what became of each message."""
        for reason, ids in lost_by_reason(self.app.broker, lost).items():
            log.warning("worker %s lost the lease of %s: %s", self.id, ids, reason)

    def _still_held(self, ids: list[str], leases: list[Lease]) -> list[str]:
        tokens = {lease.id: lease.token for lease in leases}
        held = {(h.id, h.token) for c in self._children if c.pid for h in c.slot.read().held}
        return [i for i in ids if (i, tokens.get(i)) in held]

    def _answer(self, command: str) -> Any:
        """This worker's reply to a remote-control command."""
        now = time.time()
        views = [(c.pid, c.last_view) for c in self._children if c.pid]
        answers: dict[str, Callable[[], Any]] = {
            "ping": self._ping_answer,
            "active": lambda: [
                {"id": h.id, "task": h.task, "runtime": round(now - h.started, 3), "child": pid}
                for pid, v in views
                for h in v.held
                if h.started
            ],
            # Remote has begun the stop: this only says so. It answered "unknown command",
            # and a script that sent it through broadcast() read that as a refusal.
            "shutdown": lambda: STOPPING,
            "registered": lambda: sorted(self.app.tasks),
            "memory": lambda: self._memory_report(views),
            "stats": lambda: self._stats(views, now),
        }
        answer = answers.get(command)
        return answer() if answer is not None else {"error": f"unknown command {command!r}"}

    def _ping_answer(self) -> str:
        unhealthy = self._unhealthy()
        return "pong" if unhealthy is None else f"{UNHEALTHY}{unhealthy}"

    def _stats(self, views: list[tuple[int, SlotView]], now: float) -> dict[str, Any]:
        """This worker's counters, for ``inspect stats``."""
        return {
            "pid": os.getpid(),
            "queues": list(self.queues),
            "uptime": now - self._started,
            "concurrency": self.concurrency,
            "tasks_done": self._tasks_done(),
            "health": self._unhealthy() or "ok",
            "max_memory_per_child_mb": self._ceiling.mib,  # as chosen at start-up
            "children": {str(pid): {"rss_mb": v.rss >> 20, "done": v.done} for pid, v in views},
        }

    def _tasks_done(self) -> int:
        """Tasks this worker's children finished, the dead ones' included."""
        return self._done_before + sum(c.last_view.done for c in self._children if c.pid)

    def _unhealthy(self) -> str | None:
        """Why this worker runs nothing although it answers, for the person its liveness
        probe wakes; None when it is healthy (see :mod:`celeriac.worker.crash_loop`)."""
        crash_loop = self._deaths.crash_loop(self._tasks_done())
        if crash_loop is None:
            return None
        return (
            f"worker {self.id} is crash-looping: {crash_loop}. It answers but runs no task; "
            "restarting it helps only once the cause is fixed. Its log says why each child "
            "died (the 'worker child ... died' lines, and any traceback before them): "
            "SIGKILL is most often the OOM killer (dmesg; the container's memory limit); "
            "an exit code or SIGSEGV soon after start, what each child does first (a "
            "library that is not fork-safe, set up at import in the supervisor); 'fork "
            "failed', a process limit (pids.max, ulimit -u)."
        )

    def _memory_report(self, views: list[tuple[int, SlotView]]) -> list[dict[str, Any]]:
        totals = {name: list(pair) for name, pair in self._growth_before.items()}
        for _, view in views:
            for name, (runs, grown) in (view.growth or {}).items():
                total = totals.setdefault(name, [0, 0])
                total[0] += runs
                total[1] += grown
        ranked = sorted(totals.items(), key=lambda item: item[1][1], reverse=True)[:20]
        return [
            {
                "task": name,
                "runs": runs,
                "rss_growth_mb": round(grown / 2**20, 1),
                "per_run_kb": round(grown / 1024 / max(runs, 1), 1),
            }
            for name, (runs, grown) in ranked
        ]

    def _heartbeat(self) -> None:
        """The supervisor's heartbeat and each live child's consumer id, in one call."""
        info = WorkerInfo(
            self.id,
            socket.gethostname(),
            os.getpid(),
            self.queues,
            self.concurrency,
            self._started,
            extra={
                "children": [c.pid for c in self._children],
                "active": [h.id for c in self._children for h in c.last_view.held if h.started],
                # For `celeriac status`, which reads heartbeats: only when there is one.
                **({"unhealthy": unhealthy} if (unhealthy := self._unhealthy()) else {}),
            },
        )
        beats = [info, *(self._child_info(c, c.pid) for c in self._children if c.pid)]
        self.app.broker.heartbeat_all(beats, self._child_ttl())

    def _child_ttl(self) -> float:
        return child_ttl(self.app.conf)

    def _child_info(self, child: ChildState, pid: int) -> WorkerInfo:
        return consumer_info(child.consumer, pid, self.queues, child.started, self.id)

    def _beat_child(self, child: ChildState, pid: int, ttl: float) -> None:
        """Heartbeat one child's consumer id; ttl 0 declares it dead at once."""
        self.app.broker.heartbeat(self._child_info(child, pid), ttl)


def child_ttl(conf: Settings) -> float:
    """Seconds a child's consumer id lives after a heartbeat: 5 missed ones mean dead."""
    return conf.worker_heartbeat_seconds * 5


def consumer_info(
    consumer: str, pid: int, queues: tuple[str, ...], started: float, supervisor: str
) -> WorkerInfo:
    """The heartbeat of a child's consumer id: sent by its supervisor, or by the child
    itself once the supervisor is gone (:mod:`celeriac.worker.alone`)."""
    return WorkerInfo(
        consumer, socket.gethostname(), pid, queues, 1, started, extra={"child_of": supervisor}
    )
