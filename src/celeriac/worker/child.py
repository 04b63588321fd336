"""Worker children: full consumers in their own processes.

Each consumer fetches from the broker itself, runs one task at a time, settles each message
and, when it has nothing else in hand, fetches the next one in the same broker call. On
Redis a process child sends a batch's commit and that fetch while the last half of the
batch still runs, and reads the reply when it needs it (``_send_ahead``, ``_land``). A
child reports everything it holds through its :class:`~celeriac.worker.slot.Slot`; the
supervisor renews those leases, enforces hard limits and cleans up after it if it dies.

Pools:

* ``process`` (default): one consumer per child process, in its main thread, so the soft
  time limit is a signal (SIGALRM) that interrupts blocking calls.
* ``threads``: one child process with N consumer threads. The soft limit is raised in the
  task's thread as an asynchronous exception: it lands at the next Python instruction, so
  a thread blocked inside a C call (a socket read, ``time.sleep``) sees it only when that
  call returns. A hard limit can only stop the whole child: its other running tasks are
  delivered again (not counted as deliveries).
* ``asyncio``: see :mod:`celeriac.worker.aio`.

Batching of short tasks is in :mod:`celeriac.worker.batch`, the soft-limit machinery of
both pools in :mod:`celeriac.worker.soft_limits`, how much a child takes, when it recycles
and what it gives back unstarted in :mod:`celeriac.worker.intake`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from celeriac import crashpoints, pid
from celeriac.brokers.records import Delivery
from celeriac.errors import BrokerError
from celeriac.middleware.base import HARD_DEADLINE, ChildStartFailed, Job, Outcome
from celeriac.parent import stop_with_parent
from celeriac.worker.alone import Orphan
from celeriac.worker.batch import Batch
from celeriac.worker.broken import EXIT_TASK_CLOSED_DESCRIPTORS, DescriptorsLost, blame
from celeriac.worker.broker_duties import child_ttl
from celeriac.worker.crash_loop import EXIT_START_FAILED
from celeriac.worker.descendants import end_leftovers, listed, plain_signals_in_forks
from celeriac.worker.executor import FINAL, Executor, FetchSpec
from celeriac.worker.handback import Prefetched, start_quiet_thread
from celeriac.worker.intake import ALLOWANCE_WAIT, Intake
from celeriac.worker.memory import Ceiling
from celeriac.worker.outage import Outage
from celeriac.worker.output import flush_output
from celeriac.worker.overrun import OVERRUN, OverrunWatch
from celeriac.worker.restore import Undo
from celeriac.worker.slot import Held, Slot
from celeriac.worker.soft_limits import SoftAlarm

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

EXIT_RECYCLE = 0  # the child chose to stop (shutdown or recycling); start a fresh one
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ChildSpec(msgspec.Struct, frozen=True):
    """What a child needs to know, fixed at fork time."""

    worker_id: str
    queues: tuple[str, ...]
    index: int
    pool: str = "process"
    concurrency: int = 1  # consumers inside this child (threads or coroutines)
    consumer: str = ""  # the lease holder id of this child; its supervisor heartbeats it
    supervisor_pid: int = 0
    # The RSS ceiling the supervisor chose; None: worker_max_memory_per_child as it stands.
    ceiling: Ceiling | None = None


_statm: tuple[int, int] | None = None  # (pid, descriptor of that process's statm)


def current_rss() -> int:
    """This process's resident memory in bytes: one pread on a descriptor kept open.

    Opening /proc/self/statm per read cost ~20 us, four times per task, about a quarter of
    a no-op task's CPU; the descriptor is reopened after fork (/proc/self resolved at open).
    """
    global _statm  # noqa: PLW0603 - one descriptor per process
    this = pid.current()
    if _statm is None or _statm[0] != this:
        _statm = (this, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
    try:
        return int(os.pread(_statm[1], 64, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError) as exc:
        # Closed by a task (os.closerange), or its number is another file now: see .broken
        _statm = None
        raise DescriptorsLost(f"this process's /proc/self/statm descriptor: {exc}") from exc


class Child(Intake):
    """The process pool's child: one consumer in the main thread."""

    def __init__(self, app: Celeriac, spec: ChildSpec, slot: Slot) -> None:
        self.app = app
        self.spec = spec
        self.slot = slot
        self.stopping = False
        self.shutting_down = False  # a stop signal came (not recycling): see _reconnecting
        self.tasks_done = 0
        self._taken = 0  # deliveries this child began to handle: see _may_take
        self._recycling_said = False
        self.growth: dict[str, list[int]] = {}  # task name -> [runs, RSS growth in bytes]
        self._held: dict[Hashable, list[Held]] = {}  # per consumer
        self._lock = threading.Lock()
        self._prefetched = Prefetched(self._lock)  # each consumer's, given back at SIGTERM
        self._overrun = OverrunWatch(self._free_behind)
        self._behind: dict[Hashable, tuple[Executor, Batch, list[Delivery], Held]] = {}
        conf = app.conf
        self.fetch = FetchSpec(
            spec.queues,
            spec.consumer or spec.worker_id,
            max(conf.worker_prefetch_multiplier, 1),
            conf.worker_lease_seconds,
        )
        self.alarm = SoftAlarm()
        # The handlers this child installed, put back after a task that replaced one.
        self._handlers: dict[int, Callable[[int, FrameType | None], Any] | int] = {}
        self.rss = current_rss()  # as last measured: after the previous task
        self._undo = Undo(self._handlers)  # what a task changed in this process, put back
        self._alone = False  # the supervisor is gone: this child enforces its hard limits

    def run(self) -> int:
        """Consume until told to stop or until it is time to recycle; return an exit code."""
        self._install_signals()
        signal.signal(signal.SIGALRM, self.alarm.on_signal)
        self._handlers[signal.SIGALRM] = self.alarm.on_signal
        executor = Executor(
            self.app, self.spec.worker_id, soft_limit=self.alarm, contain_exits=True
        )
        self._consume(executor, key=0)
        return EXIT_RECYCLE

    def _install_signals(self) -> None:
        # The supervisor decides on Ctrl-C, Ctrl-\ and a closed terminal, which reach the
        # whole process group: a child that died of SIGQUIT or SIGHUP on the spot left its
        # tasks held until lease expiry. A handler that does nothing, not SIG_IGN: an
        # ignored signal stays ignored across exec, so every program a task started
        # ignored SIGINT too (a task stopping its ffmpeg with SIGINT waited for ever). A
        # handler is reset at exec. (It interrupts a blocking call as SIG_IGN does not, as
        # the supervisor's SIGTERM that follows each of these does anyway.)
        for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(signum, _supervisors_to_decide)
            self._handlers[signum] = _supervisors_to_decide
        signal.signal(signal.SIGTERM, self._on_term)
        self._handlers[signal.SIGTERM] = self._on_term

    # -- the consume loop (shared by the process and threads pools) -----------------------

    def _consume(self, executor: Executor, key: int) -> None:
        pending = self._prefetched.watch(key)  # changed only through self._prefetched
        conf = self.app.conf
        # A batch's commit, and the next fetch, sent while its last tasks run (see
        # Batch.may_send_ahead): one consumer per process, and no delivery limit, whose
        # count a fetch ahead would overrun.
        sends_ahead = (
            self.spec.pool == "process"
            and self.app.broker.overlaps_calls
            and not conf.worker_max_tasks_per_child
        )
        batch = Batch(conf.worker_batch_max, conf.worker_batch_window, sends_ahead=sends_ahead)
        crashed = True
        try:
            while not self.stopping:
                if not pending:
                    self.slot.beat()  # still going round: not stuck (celeriac.worker.stuck)
                    if crashpoints.ARMED:
                        crashpoints.reached("idle")
                    self.app.middleware.on_idle()
                    self._publish(key, pending, None, batch)
                    fetched = self._reconnecting(
                        lambda: self._fetch(batch), give_up_when_stopping=True
                    )
                    self._prefetched.add(pending, fetched or [])
                    if pending:  # listed: the supervisor can tell in hand from prefetched
                        self._publish(key, pending, None, batch)
                    if crashpoints.ARMED and pending:
                        crashpoints.reached("after_fetch")
                    continue
                if not self._may_take(key, pending):
                    # Stopping: pending goes back below, and the threads that run tasks
                    # finish them. Else it gave pending back, to look again in a moment.
                    continue
                delivery = self._prefetched.take(pending)
                if delivery is None:  # a warm shutdown began: the hand-back has them
                    continue
                # In hand from here: if this child dies before its slot names the task as
                # started (decoding it segfaults), the delivery still counts (Slot.hand).
                lease = delivery.lease
                self.slot.hand(key, lease.id, lease.token)
                more = self._handle(executor, key, delivery, pending, batch)
                if crashpoints.ARMED and more:
                    crashpoints.reached("after_fetch")
                if more:
                    self._prefetched.add(pending, more)
            crashed = False
        finally:
            # After a crash the slot is left as it is: it names the running task, which the
            # supervisor puts back counted as a delivery and names in its log; what ran
            # and waits for its commit, and the prefetched, go back as the slot says.
            if not crashed:
                if batch.owes_commits():  # these ran: commit them first
                    self._commit(executor, key, batch, None, pending)
                self._give_back(key, self._prefetched.split(pending, 0))
            self._prefetched.wait(STOP_PATIENCE)  # not exiting in the middle of it
            executor.close()

    def _handle(
        self,
        executor: Executor,
        key: Hashable,
        delivery: Delivery,
        pending: list[Delivery],
        batch: Batch,
    ) -> list[Delivery]:
        job, outcome = executor.prepare(delivery)
        if outcome is None:
            assert job.message is not None
            task_name = job.message.task
            if (
                not batch.admits(task_name)
                or job.alone
                or (batch.flight is not None and not batch.short(task_name))
            ):
                # Before a slow task; and before one to run alone: a commit waiting beside
                # it would be counted if it kills the child (see worker.death_notes).
                self._commit(executor, key, batch, None, pending)
            if len(pending) >= self.fetch.limit and batch.may_hold_up(task_name):
                self._give_back_surplus(pending)
            outcome = self._run(executor, key, job, pending, batch)
            batch.timed(task_name, outcome.runtime)
        self._count(outcome)
        if not pending and batch.flight is not None:
            self._land(key, batch, pending)  # what it fetched is what runs next
        # Decided before the commit's fetch: a child that recycles gave back what that
        # fetch took, to the back of its queue (with --max-tasks-per-child 1, every other
        # message, again and again). Once: in the threads pool the other consumers finish
        # their tasks after one decided to recycle, and each said it again.
        if not self.stopping and self._should_recycle():
            self.stopping = True
        # Fetch in the same broker call only when nothing else is in hand: a child never
        # hoards more work than one batch that an idle sibling could start.
        fetch = self._fetch_spec(batch) if not pending and not self.stopping else None
        # Not one that ran alone: its commit, held back in the batch, would be counted again
        # if a later task of the batch killed the child, and this was its last delivery.
        if outcome.state in FINAL and batch.most > 1 and not job.alone:
            batch.add(job, outcome)
            if not self.stopping and batch.may_send_ahead(len(pending)):
                self._send_ahead(executor, key, batch, pending)
                return []
            # With worker_max_tasks_per_child's count used up, what it holds goes back
            # unrun: the commits go now, not after the other consumers' tasks end.
            if pending and not batch.full() and self._left_to_take() != 0:
                return []
            return self._commit(executor, key, batch, fetch, pending)
        if batch.owes_commits():
            self._commit(executor, key, batch, None, pending)
        settled = self._reconnecting(
            lambda: executor.settle(job, outcome, fetch), give_up_after=self.fetch.lease_seconds
        )
        return settled or []

    def _run(
        self, executor: Executor, key: Hashable, job: Job, pending: list[Delivery], batch: Batch
    ) -> Outcome:
        """Run the job's task: at once, a process child running one task at a time (the
        threads child takes turns, see :mod:`celeriac.worker.turns`)."""
        return self._execute(executor, key, job, pending, batch)

    def _commit(
        self,
        executor: Executor,
        key: Hashable,
        batch: Batch,
        fetch: FetchSpec | None,
        pending: list[Delivery],
    ) -> list[Delivery]:
        """Commit the batch's waiting tasks (and fetch) in one broker call; a commit in
        flight is landed first (its fetch joins ``pending``)."""
        if batch.flight is not None:
            self._land(key, batch, pending)
            if pending:
                fetch = None
        finished = batch.take()
        if not finished:
            return []
        settled = self._reconnecting(
            lambda: executor.settle_many(finished, fetch), give_up_after=self.fetch.lease_seconds
        )
        # What was fetched is listed at once (pending is empty when this fetched): unlisted,
        # a child that died before its next write had them all counted as delivered.
        self._publish(key, pending or settled or [], None, batch)
        return settled or []

    def _send_ahead(
        self, executor: Executor, key: Hashable, batch: Batch, pending: list[Delivery]
    ) -> None:
        """Send the batch's commits and the next fetch now, and run what is left of
        ``pending`` while Redis works on them; :meth:`_land` reads the reply. A fetch
        while tasks are still in hand takes a full batch: the child holds at most half a
        batch more than when it fetches with nothing left."""
        fetch = self._fetch_spec(batch)
        finished = batch.finished

        def again() -> list[Delivery]:
            return executor.settle_many(finished, fetch)

        try:
            land = executor.settle_many_start(finished, fetch)
        except BrokerError:  # made again, with the outage's retries, when it is landed
            land = again
        batch.send_ahead(land, again)
        self._publish(key, pending, None, batch)  # what it commits is no longer listed
        if crashpoints.ARMED:
            crashpoints.reached("sent_ahead")

    def _land(
        self, key: Hashable, batch: Batch, pending: list[Delivery], running: Held | None = None
    ) -> None:
        """Read the reply of the commit in flight (made again, with the outage's retries,
        if it failed) and add what it fetched to ``pending``. ``running``: the task that
        still runs meanwhile, when the overrun watch lands it (see _free_behind)."""
        flight = batch.flight
        assert flight is not None
        try:
            more = flight.land()
        except BrokerError:
            flight.listed = True  # held again: renewed while the commit is made again
            self._publish(key, pending, running, batch)
            more = self._reconnecting(flight.again, give_up_after=self.fetch.lease_seconds) or []
        batch.flight = None
        waited = time.monotonic() - flight.sent_at
        if more and waited > self.fetch.lease_seconds / 3:
            more = self._still_ours(more, waited)
        if more:
            self._prefetched.add(pending, more)
        self._publish(key, pending, running, batch)

    def _free_behind(self, key: Hashable) -> None:
        """Commit what waits behind consumer ``key``'s running task, and give back the
        messages it holds beyond its prefetch: the task was taken as short and overran
        (see :mod:`celeriac.worker.overrun`). In the watch's thread, while the consumer is
        in its task, which stays listed in the slot throughout."""
        executor, batch, pending, running = self._behind.pop(key)
        if batch.flight is not None:
            self._land(key, batch, pending, running)
        finished = batch.take()
        if finished:
            self._reconnecting(
                lambda: executor.settle_many(finished), give_up_after=self.fetch.lease_seconds
            )
        surplus = self._prefetched.split(pending, self.fetch.limit - 1)
        self._publish(key, pending, running, batch)  # unlisted before they go back
        log.debug(
            "child %d: task %s[%s] has run %gs, far longer than the tasks a batch is taken "
            "for: committed %d finished task(s) and gave back %d message(s) it held",
            os.getpid(),
            running.task,
            running.id,
            OVERRUN,
            len(finished),
            len(surplus),
        )
        self._requeue_unstarted(surplus)

    def _ended_while_freeing(self, running: Held) -> None:
        """The task ended while the overrun watch frees what its batch held: listed with
        no hard limit from now, as a task is once done (see _execute), so that broker
        calls that stall meanwhile do not get a finished task killed for its limit."""
        with self._lock:
            running.hard_deadline = 0.0  # the record listed in self._held: rewritten below
            self._write_slot()

    def _still_ours(self, fetched: list[Delivery], waited: float) -> list[Delivery]:
        """The messages of a fetch that landed late that this child still holds.

        Listed in the slot only once the reply is read, they were not renewed meanwhile:
        behind a task thought short that ran for a lease, theirs lapsed, and another
        worker may have them. Renewed here, the lost ones are dropped, not run twice."""
        try:
            lost = set(self.app.broker.renew([d.lease for d in fetched], self.fetch.lease_seconds))
        except BrokerError:
            return fetched  # fenced at their commit all the same
        if lost:
            log.warning(
                "child %d: %d message(s) of a fetch whose reply it could read only after "
                "%.0fs (a task ran that long meanwhile) lost their lease: they are back in "
                "their queue or with another worker, so this child does not run them (%s)",
                os.getpid(),
                len(lost),
                waited,
                ", ".join(sorted(lost)[:5]) + (", ..." if len(lost) > 5 else ""),
            )
        return [d for d in fetched if d.id not in lost]

    def _execute(
        self, executor: Executor, key: Hashable, job: Job, pending: list[Delivery], batch: Batch
    ) -> Outcome:
        task, message, delivery = job.task, job.message, job.delivery
        assert task is not None and message is not None
        soft, hard = self.limits(job)
        started = time.time()
        hard_at = started + hard if hard != math.inf else 0.0
        running = Held(
            delivery.id, delivery.queue, delivery.lease.token, message.task, started, hard_at
        )
        self._publish(key, pending, running, batch)
        job.context[HARD_DEADLINE] = hard_at
        rss_before = self.rss
        # Something held behind it (a batch's messages, or commits): freed if it overruns.
        watched = len(pending) >= self.fetch.limit or batch.owes_commits()
        if watched:
            self._behind[key] = (executor, batch, pending, running)
            self._overrun.arm(key)
        try:
            outcome = executor.execute(job, soft)
        finally:
            if watched:
                self._overrun.disarm(key, lambda: self._ended_while_freeing(running))
        if self.spec.pool == "process":  # the threads pool's tasks cannot set handlers
            self._undo.signals(job)
            self._undo.folder(job)
        self._undo.streams(job, replaced_too=self.spec.pool == "process")
        try:
            self.rss = current_rss()  # the one read per task: growth, slot and recycling use it
        except DescriptorsLost:  # its connections must not be used again: see .broken
            with self._lock:  # held until the exit: no other consumer writes the slot again
                held = [h for items in self._held.values() for h in items]
                blamed = blame(job.label, outcome.state, running, held)
                self.slot.write(blamed, self.rss, self.tasks_done, self.growth)
                exit_child(EXIT_TASK_CLOSED_DESCRIPTORS)
        with self._lock:
            stats = self.growth.setdefault(task.name, [0, 0])
            stats[0] += 1
            stats[1] += self.rss - rss_before
        if hard_at and hard_at - time.time() < self.fetch.lease_seconds:
            # Done: what is left (the commit, retried for up to a lease, and the settle
            # hooks) must not pass for the task running past its hard limit, or the
            # supervisor kills a child whose task succeeded and cuts its hooks short. Still
            # started: counted as a delivery if the child dies before the commit. Only near
            # the deadline: a slot write per task is a few percent of a no-op's cost.
            running.hard_deadline = 0.0
            self._publish(key, pending, running, batch)
        return outcome

    def limits(self, job: Job) -> tuple[float, float]:
        """(soft, hard) seconds for this job: the message's, the task's, or the app's."""
        assert job.task is not None and job.message is not None
        conf, opts, message = self.app.conf, job.task.options, job.message
        soft = message.soft_limit if message.soft_limit is not None else opts.soft_time_limit
        hard = message.hard_limit if message.hard_limit is not None else opts.time_limit
        soft = conf.task_soft_time_limit if soft is None else soft
        hard = conf.task_time_limit if hard is None else hard
        return float(soft), float(hard)

    def _fetch(self, batch: Batch) -> list[Delivery]:
        spec = self._fetch_spec(batch)
        if spec is None:  # worker_max_tasks_per_child: it may take no more, so it recycles
            if self._others_in_hand():  # unless one of those is put back unrun
                time.sleep(ALLOWANCE_WAIT)
            else:
                self.stopping = True
            return []
        return self.app.broker.fetch(
            self.spec.queues,
            self.fetch.consumer,
            limit=spec.limit,
            lease_seconds=self.fetch.lease_seconds,
            timeout=0.5,
        )

    def _reconnecting(
        self,
        action: Callable[[], list[Delivery]],
        *,
        give_up_when_stopping: bool = False,
        give_up_after: float = math.inf,
    ) -> list[Delivery] | None:
        """Run a broker call, retrying with capped backoff while the broker is unreachable.

        Never crash-loops on an outage: the child waits and resumes by itself. A settle
        that cannot reach the broker before its lease would expire is abandoned; the
        message is then delivered again (at-least-once), never lost. During a shutdown
        the child waits at most STOP_PATIENCE seconds of an outage, not a whole lease: a
        worker stopped while its broker is down must stop promptly, and what it could not
        settle is delivered again all the same, once its lease expires.
        """
        outage: Outage | None = None  # made on the first failure: this runs per batch
        began = 0.0  # when the first failed try began: a hung broker fails a timeout later
        while True:
            tried = time.monotonic()
            try:
                delivered = action()
            except BrokerError as exc:
                if outage is None:
                    outage, began = Outage(first_delay=0.1), tried
                logged = outage.failed(began=tried)  # its length counts a hung call
                waited = time.monotonic() - began
                if give_up_when_stopping and self.stopping:
                    return None  # nothing in hand: a fetch the child no longer needs
                if waited > give_up_after or (self.shutting_down and waited >= STOP_PATIENCE):
                    self._give_up(exc, waited)
                    return None
                if logged:
                    log.warning(
                        "child %d: %s (%s); retrying with backoff until it %s",
                        os.getpid(),
                        "the broker refuses its calls" if exc.answered else "broker unavailable",
                        exc,
                        "accepts them" if exc.answered else "answers",
                    )
                self._pause(outage, began)
                continue
            if outage is not None:
                log.info(
                    "child %d: the broker answers again after %.0fs", os.getpid(), outage.ended()
                )
            return delivered

    def _pause(self, outage: Outage, began: float) -> None:
        """Sleep until the outage's next try; a stop signal cuts it short (a sleep is
        resumed after a signal handler, and the backoff reaches seconds), and during a
        shutdown the last try comes when STOP_PATIENCE runs out."""
        shutting_down = self.shutting_down
        wake = outage.retry_at
        if shutting_down:
            wake = min(wake, began + STOP_PATIENCE)
        while self.shutting_down == shutting_down:
            self.slot.beat()  # waiting out an outage is not being stuck
            left = wake - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _give_up(self, exc: BrokerError, waited: float) -> None:
        """Say that a settle was abandoned, and what becomes of its message."""
        log.error(
            "child %d gave up on the broker after %.0fs%s: %s. The message stays in the "
            "broker and is delivered again (the task runs again) once its lease (%gs) or "
            "this child's heartbeat (%gs) has run out, so soon after the broker is back.",
            os.getpid(),
            waited,
            " (shutting down)" if self.shutting_down else "",
            str(exc).rstrip("."),
            self.fetch.lease_seconds,
            child_ttl(self.app.conf),
        )

    # -- bookkeeping ----------------------------------------------------------------------

    def _publish(
        self,
        key: Hashable,
        pending: list[Delivery],
        running: Held | None,
        batch: Batch | None = None,
    ) -> None:
        # In order: running, then ran and waiting for their commit (counted as delivered
        # if this child dies), then prefetched. Read under the lock: a warm shutdown's
        # hand-back takes from pending and unlists what it took under it.
        with self._lock:
            held = [running] if running is not None else []
            if batch is not None:
                held += batch.held
                if batch.flight is not None and batch.flight.listed:
                    held += batch.flight.held
                held += batch.waiting(pending)
            else:
                held += [Held(d.id, d.queue, d.lease.token) for d in pending]
            self._held[key] = held
            self._write_slot()

    def _write_slot(self) -> None:
        """Write what every consumer holds into the slot; under ``self._lock``."""
        everything = next(iter(self._held.values()))
        if len(self._held) > 1:  # threads: running tasks of every consumer first
            everything = [h for items in self._held.values() for h in items]
            everything.sort(key=lambda h: h.started == 0)
        self.slot.write(everything, self.rss, self.tasks_done, self.growth)

    def _unlist(self, given: list[Delivery]) -> None:
        """Stop listing in the slot what the warm shutdown's hand-back took (under
        ``self._lock``), before it gives them back: listed, their stale leases were
        renewed, and called lost, until the running task ended."""
        gone = {(d.id, d.lease.token) for d in given}
        for key, held in self._held.items():
            self._held[key] = [h for h in held if (h.id, h.token) not in gone]
        if self._held:
            self._write_slot()

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = self.shutting_down = True
        # What waits beside the running task goes back now, not when it ends.
        self._prefetched.close(self._unlist, self._requeue_unstarted)
        orphaned = self.spec.supervisor_pid and os.getppid() != self.spec.supervisor_pid
        if orphaned and not self._alone:  # the SIGTERM of stop_with_parent
            self._alone = True
            spec = self.spec
            orphan = Orphan(
                self.app, self.fetch.consumer, spec.worker_id, spec.queues, self._held_now
            )
            # Two threads: a broker that hangs must not hold back a hard limit.
            start_quiet_thread(orphan.watch_hard_limits)
            start_quiet_thread(orphan.keep)

    def _held_now(self) -> list[Held]:
        """What every consumer of this child holds now, as a list of its own."""
        with self._lock:  # every pool replaces its lists whole: a copy is consistent
            return [h for items in list(self._held.values()) for h in items]


def _supervisors_to_decide(signum: int, frame: FrameType | None) -> None:
    """A child's handler of SIGINT, SIGQUIT and SIGHUP: nothing (see _install_signals)."""


#: Blocked by the supervisor around fork, unblocked by the child once its own handlers are
#: in place: a SIGTERM in a fresh child's first milliseconds then reaches the child's
#: handler instead of the supervisor's, inherited and meaningless there.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
#: Seconds of a broker outage a child that was told to stop still retries a settle (the
#: commit of a task that ran): enough for a broker restart or a failover to finish, short
#: enough that stopping a worker during an outage is prompt (it waited a whole lease, 30 s).
STOP_PATIENCE = 3.0


def child_main(app: Celeriac, spec: ChildSpec, slot: Slot) -> None:
    """Entry point of a forked child; never returns."""
    code = 1
    try:
        if spec.pool == "asyncio":
            from celeriac.worker.aio import AsyncioChild

            child: Any = AsyncioChild(app, spec, slot)
        elif spec.pool == "threads":
            from celeriac.worker.threads import ThreadsChild

            child = ThreadsChild(app, spec, slot)
        else:
            child = Child(app, spec, slot)
        # Forked with the stop signals blocked: this child's handlers first, then a signal
        # that came meanwhile is delivered to them (not lost to the supervisor's).
        child._install_signals()
        os.register_at_fork(after_in_child=plain_signals_in_forks)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        # Without its supervisor, no one renews its leases, enforces its hard limits or
        # heartbeats it: it must finish its current task, give back the rest and go.
        stop_with_parent(spec.supervisor_pid)
        if crashpoints.ARMED:
            crashpoints.reached("child_start")
        started = _start_hooks(app)
        try:
            code = child.run() if started else EXIT_START_FAILED
        finally:
            if started:
                app.middleware.child_stopping(app)
    except BaseException:  # logged, then the process ends with code 1
        log.exception("worker child %d crashed; the supervisor will start another", os.getpid())
    finally:
        exit_child(code)


def _start_hooks(app: Celeriac) -> bool:
    """Run the middleware's on_child_start hooks; False (said in the log) when one raised:
    this child then takes no task and exits, and the supervisor starts another."""
    try:
        app.middleware.child_started(app)
    except ChildStartFailed as failed:
        log_start_failed(failed)
        return False
    return True


def log_start_failed(failed: ChildStartFailed) -> None:
    """Say that this child will not start because a middleware's start hook raised."""
    log.error(
        "worker child %d did not start: %s. It took no task; the supervisor starts "
        "another (backing off after a few in a row), and the tasks wait in their "
        "queues meanwhile. Fix what the hook needs, or catch the error in the hook to "
        "start without it.",
        os.getpid(),
        failed,
        exc_info=failed.__cause__,
    )


def exit_child(code: int) -> NoReturn:
    """End this child with ``code``: what its tasks left running first, then the log and
    what tasks printed (``os._exit`` drops buffers)."""
    try:
        _end_leftovers()
    finally:
        logging.shutdown()
        flush_output()
        os._exit(code)


#: Seconds the processes a child's tasks left running get, after SIGTERM, to end before
#: SIGKILL as the child exits: enough for ffmpeg to close its file or a browser its profile.
LEFTOVER_GRACE = 2.0


def _end_leftovers() -> None:
    """End what this child's tasks started and left running, and say so (see
    :func:`celeriac.worker.descendants.end_leftovers`)."""
    try:
        left = end_leftovers(LEFTOVER_GRACE)
    except Exception:  # the child is exiting: say it, and exit all the same
        log.exception("child %d could not end the processes its tasks left", os.getpid())
        return
    if left:
        log.warning(
            "child %d is exiting, and its tasks left %d process%s running: %s. Nothing would "
            "stop them once it is gone (they are reparented to init), so they got SIGTERM "
            "(SIGKILL after %gs). A task should wait for what it starts (subprocess.run, "
            "Popen.wait, `with Popen(...)`, closing its browser in a finally); a process "
            "that must outlive its task belongs to a service of its own.",
            os.getpid(),
            len(left),
            "es" if len(left) > 1 else "",
            listed(left),
            LEFTOVER_GRACE,
        )
