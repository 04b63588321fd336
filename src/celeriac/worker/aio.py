"""The asyncio pool: one child process runs up to N tasks at once on an event loop.

``async def`` tasks run as coroutines; plain functions run in threads with the same limits
as the threads pool. The child fetches only as many messages as it has free slots, so it
never holds work it cannot start, and never more than ``worker_max_tasks_per_child`` leaves
it (it then finishes them and recycles). What a fetch brings after a stop signal came is
given back to the queue unstarted. Broker calls run in threads: the sync broker faces are
the fast ones, and a slow call never blocks the loop.

Soft time limit: the coroutine is cancelled and the task fails with
``SoftTimeLimitExceeded`` (a task may catch ``asyncio.CancelledError`` to clean up). A
coroutine that blocks the loop past its limit cannot be cancelled: it fails with
``SoftTimeLimitExceeded`` when it returns or raises, as in the other pools. A
``TimeoutError`` the task raises itself (``asyncio.timeout``, a socket, an HTTP client) is
the task's own error, not its soft limit. Hard time limit: the supervisor stops the child;
its other running tasks are delivered again.

The slot (what this child holds, for its supervisor) is touched only by the loop's thread.
Writes are batched every ``_SLOT_FLUSH``, except two that cannot wait: after a fetch (the
supervisor must know what the child holds) and before a task's body runs (a task that
kills the child at once must count as a delivery, or it is never dead-lettered).

Three thread pools, so that no kind of work waits behind another: celeriac's own blocking
calls (fetch, settle, middleware hooks), plain-function tasks (one thread per slot), and
the loop's default executor, left to the tasks' own ``asyncio.to_thread``. A watchdog
thread names the task that blocks the loop (a blocking call in an ``async def``), and
work a task left running on the loop (``asyncio.create_task``) is given a grace to end when
the child stops, then cancelled, named in the log (:mod:`celeriac.worker.aio_background`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from celeriac import crashpoints
from celeriac.brokers.records import Delivery
from celeriac.errors import SoftTimeLimitExceeded, TaskRevoked
from celeriac.message import ErrorInfo, peek_identity, storable_text
from celeriac.middleware.base import HARD_DEADLINE, ChildStartFailed, Job, Outcome
from celeriac.task import _current
from celeriac.text import printable
from celeriac.worker.aio_background import BackgroundWork, end_threads
from celeriac.worker.aio_terminate import Terminations
from celeriac.worker.batch import Batch
from celeriac.worker.child import EXIT_RECYCLE, Child, ChildSpec, current_rss, log_start_failed
from celeriac.worker.crash_loop import EXIT_START_FAILED
from celeriac.worker.executor import Executor, exit_if_forked, outcome_for
from celeriac.worker.reading import error_info
from celeriac.worker.slot import Held, Slot, hand_mark
from celeriac.worker.soft_limits import thread_soft_limit
from celeriac.worker.task_threads import TaskThreads
from celeriac.worker.turns import LoopTurns

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

_SLOT_FLUSH = 0.02  # seconds between slot writes: one write per batch, not per task
#: Seconds without a turn of the event loop before the watchdog names the task blocking it.
_BLOCKED_AFTER = 1.0

_STACK_SHOWN = 12  # frames of a blocking task's stack in the watchdog's log line

_T = TypeVar("_T")


class AsyncioChild(Child, BackgroundWork):
    """Consumes with one event loop and ``concurrency`` task slots."""

    def __init__(self, app: Celeriac, spec: ChildSpec, slot: Slot) -> None:
        super().__init__(app, spec, slot)
        self._dirty = False  # the slot lags _held: the flusher writes it
        self._unwritten_start = False  # a task marked started that the slot does not show yet
        self._write_due = False  # a write is scheduled for the loop's next turn
        # Celeriac's own blocking calls, apart from the tasks: 64 plain-function tasks (or
        # the tasks' own to_thread calls) sleeping in a shared pool held up every settle,
        # hook and fetch, until the hard limit of a task that had finished killed the child.
        self._io = ThreadPoolExecutor(min(64, spec.concurrency), "celeriac-io")
        self._sync = ThreadPoolExecutor(spec.concurrency, "celeriac-task")
        self._jobs: dict[asyncio.Task[Any], Job] = {}  # each running job's asyncio task
        self._spawned: dict[asyncio.Task[Any], str] = {}  # started by a task: its label
        self._loop_turns = LoopTurns()  # tasks side by side, or one alone
        self._loop_turned = time.monotonic()  # the last turn of the loop, for the watchdog
        self._terminations = Terminations(app)  # revoke --terminate of one coroutine

    def run(self) -> int:
        """Run the event loop until told to stop or until it is time to recycle."""
        self._install_signals()
        started = asyncio.run(self._main())
        return EXIT_RECYCLE if started else EXIT_START_FAILED

    async def _main(self) -> bool:
        """The child's life in its loop; False when a middleware's on_loop_start raised."""
        try:
            await self.app.middleware.loop_started(self.app)
        except ChildStartFailed as failed:
            log_start_failed(failed)
            return False
        try:
            await self._serve()
        finally:
            await self.app.middleware.loop_stopping(self.app)
        return True

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        # The tasks' own asyncio.to_thread calls; celeriac's calls have a pool of their own.
        threads = TaskThreads(max_workers=min(64, self.spec.concurrency))
        loop.set_default_executor(threads)
        loop.set_task_factory(self._make_task)
        executor = Executor(self.app, self.spec.worker_id)
        executor.revoke_reads_later = True  # a broker call: in _process, off the loop
        running: set[asyncio.Task[None]] = set()
        # A first record, empty: the supervisor tells a child that never wrote one, stuck
        # before it could consume (celeriac.worker.stuck), from an idle one.
        self._write_slot()
        flusher = asyncio.create_task(self._flush_slot())
        on_io = functools.partial(self._off_loop, self._io)
        terminator = asyncio.create_task(
            self._terminations.watch(on_io, busy=lambda: bool(self._jobs))
        )
        watching = self._watch(loop)
        try:
            try:
                await self._consume_on_loop(executor, running)
            except Exception:
                # A worker bug in the loop itself: the tasks it started still finish and
                # commit (their hard limits bound the wait). Left to asyncio.run, they
                # were cancelled mid-run and their messages ran again.
                log.error(  # the traceback follows, from child_main
                    "child %d: its consume loop failed; it finishes its %d running task(s), "
                    "then stops so that a fresh child replaces it",
                    os.getpid(),
                    len(running),
                )
                if running:
                    await asyncio.wait(running)
                raise
            if running:
                await asyncio.wait(running)
            await self._end_background()
            await end_threads(threads)
        finally:
            watching.set()
            flusher.cancel()
            terminator.cancel()
            self._write_slot()
            self._io.shutdown(wait=False)
            self._sync.shutdown(wait=False)

    async def _consume_on_loop(self, executor: Executor, running: set[asyncio.Task[None]]) -> None:
        while not self.stopping:
            room = self.spec.concurrency - len(running)
            left = self._left_to_take()  # fetched messages count, as a process child's
            if left is not None:
                room = min(room, left)
            if room <= 0:
                if left == 0:  # said when the limit is reached, not once the tasks end
                    self._say_recycling(
                        logging.INFO, f"took {self._taken} tasks (worker_max_tasks_per_child)"
                    )
                if not running:
                    # Took the last task worker_max_tasks_per_child allows, and every one
                    # has ended, some uncounted (a worker error): _should_recycle missed it.
                    return
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            else:
                # Before fetching, on a fresh reading (the slot's is up to a flush old): it
                # fetched and started its next tasks, then saw the ones that had ended had
                # taken it over worker_max_memory_per_child (433 MiB under 300 at -c 4).
                self.rss = current_rss()
                if self._should_recycle():
                    self.stopping = True
                    break
                self.slot.beat()  # still going round: not stuck (celeriac.worker.stuck)
                if not running:
                    if crashpoints.ARMED:
                        crashpoints.reached("idle")
                    await self._off_loop(self._io, self.app.middleware.on_idle)
                deliveries = await self._off_loop(self._io, self._fetch_up_to, room)
                if self.stopping and deliveries:
                    # A stop came while the fetch waited: what it brought has not started,
                    # so it goes straight back to the queue, as the process and threads
                    # children give back what they prefetched (a warm stop finishes only
                    # the tasks that had started).
                    await self._off_loop(self._io, self._give_back, "fetched", deliveries)
                    return
                self._taken += len(deliveries)
                self._start(executor, running, deliveries)

    def _start(
        self, executor: Executor, running: set[asyncio.Task[None]], deliveries: list[Delivery]
    ) -> None:
        """Start a task on the loop for each delivery, first listing them in the slot."""
        if not deliveries:
            return
        # Here, not in the fetch's thread: one writer, and _held changes only on the loop.
        # Dying before this write is covered: the supervisor declares a dead child's
        # consumer id dead and the reaper releases what it held.
        for d in deliveries:
            self._held[d.id] = [Held(d.id, d.queue, d.lease.token)]
        self._write_slot()
        for delivery in deliveries:
            task = asyncio.create_task(self._process(executor, delivery))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _off_loop(self, pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in a thread of ``pool``, in this context (as asyncio.to_thread)."""
        return await self._in_thread(pool, contextvars.copy_context(), fn, *args)

    async def _in_thread(
        self,
        pool: ThreadPoolExecutor,
        context: contextvars.Context,
        fn: Callable[..., _T],
        *args: Any,
    ) -> _T:
        """``fn(*args)`` in a thread of ``pool``, in ``context``."""
        call = functools.partial(context.run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> threading.Event:
        """Start the watchdog thread; set the returned event to stop it."""
        stop = threading.Event()
        watchdog = threading.Thread(
            target=self._watch_loop,
            args=(loop, threading.get_ident(), stop),
            name="celeriac-loop-watchdog",
            daemon=True,
        )
        # Started with every signal blocked: they belong to the loop's thread (a SIGTERM
        # taken here would not wake the loop's select).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            watchdog.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return stop

    def _watch_loop(
        self, loop: asyncio.AbstractEventLoop, loop_thread: int, stop: threading.Event
    ) -> None:
        """Name the task that blocks the event loop, once as it blocks and once as it ends.

        A blocking call in an ``async def`` (time.sleep, a sync HTTP or DB client, CPU
        work) stops every task on the loop, and nothing said which: the others reported
        slow runs, and soft limits could not fire.
        """
        reported = 0.0  # the turn whose stall was reported
        blocker = ""
        while not stop.wait(_BLOCKED_AFTER / 4):
            turn = self._loop_turned
            if reported and turn != reported:
                self.slot.block(0)  # (the loop empties it too, at its next turn)
                log.warning(
                    "child %d: the event loop runs again after %.1fs, blocked by %s",
                    os.getpid(),
                    time.monotonic() - reported,
                    blocker,
                )
                reported = 0.0
            stalled = time.monotonic() - turn
            if reported or stalled < _BLOCKED_AFTER:
                continue
            reported, blocker = turn, self._blocker(loop)
            current = asyncio.current_task(loop)
            job = self._jobs.get(current) if current is not None else None
            if job is not None:  # the supervisor blames it, not a task it holds up
                since = time.time() - stalled
                self.slot.block(hand_mark(job.delivery.id, job.delivery.lease.token), since)
                if self._loop_turned != turn:  # it turned meanwhile: that job may not block
                    self.slot.block(0)
            where = _where(sys._current_frames().get(loop_thread))
            log.warning(
                "child %d: %s has blocked the event loop for %.1fs: the other %d task(s) of "
                "this child cannot run meanwhile, and soft time limits cannot fire (the hard "
                "limit still stops the child). A blocking call in an async def task "
                "(time.sleep, requests, a sync database driver, CPU-heavy work) stops every "
                "task on the loop: await an async client instead, wrap the call in "
                "`await asyncio.to_thread(...)`, or make the task a plain def (it then runs "
                "in a thread). It is at:\n%s",
                os.getpid(),
                blocker,
                stalled,
                max(len(self._jobs) - 1, 0),
                where,
            )

    def _blocker(self, loop: asyncio.AbstractEventLoop) -> str:
        """Who runs on the loop now, in words: a celeriac task, work one started, or not."""
        current = asyncio.current_task(loop)
        if current is None:
            return "code outside any task (a callback on the loop)"
        job = self._jobs.get(current)
        if job is not None:
            return f"task {job.label}"
        spawned = self._spawned.get(current)
        if spawned is not None:
            return f"an asyncio task started by task {spawned}"
        return f"the asyncio task {printable(current.get_name())}"

    def _fetch_up_to(self, free: int) -> list[Delivery]:
        deliveries = self._reconnecting(
            lambda: self.app.broker.fetch(
                self.spec.queues,
                self.fetch.consumer,
                limit=free,
                lease_seconds=self.fetch.lease_seconds,
                timeout=0.2,
            ),
            give_up_when_stopping=True,
        )
        return deliveries or []

    async def _process(self, executor: Executor, delivery: Delivery) -> None:
        job = Job(delivery, executor.worker_id, app=self.app)  # prepare's, once it returns
        me = asyncio.current_task()
        assert me is not None
        try:
            # Read on the loop's thread, one message at a time: one hand is enough. A death
            # while decoding it (a segfault unpickling) still counts its delivery.
            self.slot.hand(0, delivery.lease.id, delivery.lease.token)
            job, outcome = executor.prepare(delivery)
            self._jobs[me] = job
            if outcome is not None and executor.revoke_read_due(job):  # is it revoked?
                outcome = await self._off_loop(self._io, executor.unless_revoked, job, outcome)
            if outcome is None:
                # Its commit too: what waits for one is listed as started, and counted if a
                # task that must run alone kills the child meanwhile (see worker.turns).
                let_go = functools.partial(self.slot.let_go, 0)  # read: see Slot.let_go
                async with self._loop_turns.take(alone=job.alone, before_wait=let_go):
                    outcome = await self._execute_async(executor, job)
                    await self._settle(executor, job, outcome)
            else:
                await self._settle(executor, job, outcome)
        except BaseException as exc:  # a worker bug, or a hook's, must not strand the message
            if isinstance(exc, asyncio.CancelledError) and me.cancelling():
                raise  # this job's own asyncio task is being cancelled: the loop is ending
            # A middleware hook's SystemExit or KeyboardInterrupt (a task's own is its
            # failure, see _call) went through Task.__step out of the event loop: the child
            # ended, cancelling every other task it was running.
            await self._off_loop(self._io, self._after_internal_error, executor, job, exc)
        finally:
            self._jobs.pop(me, None)
            self._held.pop(delivery.id, None)  # no longer renewed, whatever happened
            self._dirty = True

    async def _settle(self, executor: Executor, job: Job, outcome: Outcome) -> None:
        self._count(outcome)
        settle = functools.partial(executor.settle, job, outcome)
        await self._off_loop(
            self._io,
            functools.partial(self._reconnecting, settle, give_up_after=self.fetch.lease_seconds),
        )

    def _after_internal_error(self, executor: Executor, job: Job, exc: BaseException) -> None:
        """Settle a message whose handling failed in the worker itself, not in the task.

        Dead-lettered with the error: kept (``celeriac dlq``) and never looping, and its
        caller gets a FAILURE instead of waiting. If even that fails, it is put back
        counted as a delivery, so task_max_deliveries still ends it; if the broker refuses
        that too, its lease, no longer renewed, expires and it is delivered again, counted.
        """
        delivery = job.delivery
        name = job.message.task if job.message else peek_identity(delivery.body)[1]
        label = storable_text(f"{name or '?'}[{delivery.id}]")
        log.error(
            "task %s: the worker failed while handling it (%s); dead-lettering it",
            label,
            storable_text(f"{type(exc).__name__}: {exc}"),
            exc_info=exc,
        )
        info = error_info(exc)
        dead = Outcome(
            "DEAD",
            reason="the worker failed while handling it",
            error=ErrorInfo(
                type=info.type,
                message=storable_text(info.message),
                traceback=storable_text(info.traceback),
            ),
        )
        try:
            self._reconnecting(
                lambda: executor.settle(job, dead), give_up_after=self.fetch.lease_seconds
            )
            return
        except Exception as again:  # noqa: BLE001 - the fallback below must still run
            log.error(
                "task %s: could not dead-letter it either (%s); putting it back, counted as "
                "a delivery (dead-lettered after task_max_deliveries)",
                label,
                storable_text(f"{type(again).__name__}: {again}"),
            )
        try:
            self.app.broker.requeue(delivery.lease, count_delivery=True)
        except Exception as third:  # noqa: BLE001 - its lease expiry is the last resort
            log.error(
                "task %s: could not put it back (%s); it is delivered again when its lease "
                "expires (within %gs), counted as a delivery",
                label,
                storable_text(f"{type(third).__name__}: {third}"),
                self.fetch.lease_seconds,
            )

    async def _execute_async(self, executor: Executor, job: Job) -> Outcome:
        task, message, delivery = job.task, job.message, job.delivery
        assert task is not None and message is not None
        soft, hard = self.limits(job)
        started = time.time()
        hard_at = job.context[HARD_DEADLINE] = started + hard if hard != math.inf else 0.0
        # When the loop must be free to cancel it at its soft limit (see hard_limits); an
        # async task with neither limit is still on the loop, and a terminate can cancel
        # it there (math.inf: read as 0, it was killed with its neighbours, see
        # hard_limits._child_may_cancel).
        on_loop = (started + soft if soft != math.inf else hard_at) if task.is_async else 0.0
        if task.is_async and not on_loop:
            on_loop = math.inf
        lease = delivery.lease
        running = Held(
            delivery.id, delivery.queue, lease.token, message.task, started, hard_at, on_loop
        )
        # Until its body starts, every task waits on the loop (its hooks' results come back
        # there): a hard limit passed meanwhile, with the loop blocked since before it, is
        # the blocker's doing. A plain-def task whose verdict a hook was to settle was
        # killed for itself instead, at every delivery, and dead-lettered as a crash.
        waits = hard_at or math.inf  # on the loop, whatever its limits
        self._held[delivery.id] = [msgspec.structs.replace(running, loop_deadline=waits)]
        self._dirty = self._unwritten_start = True  # written before the task's body runs
        middleware = self.app.middleware
        # The execute hooks share one context, and the task sees what before_execute set
        # in it (a contextvar: a log context, a trace span), and after_execute what the
        # task left, as on the process and threads pools, where hooks and task share a
        # thread: each hook ran in a copy of its own, and a span or log context that
        # before_execute set never reached the task, nor could after_execute undo it.
        hooks = contextvars.copy_context()
        skipped = await self._in_thread(self._io, hooks, middleware.before_execute, job)
        adopt(hooks)
        outcome = skipped or await self._call(executor, job, soft, running)
        if task.is_async:  # on the loop's thread, which can replace signal handlers
            self._undo.signals(job, others=self.spec.concurrency > 1)
        self._undo.streams(job, replaced_too=False, others=self.spec.concurrency > 1)
        hooks.run(adopt, contextvars.copy_context())
        outcome = await self._in_thread(self._io, hooks, middleware.after_execute, job, outcome)
        # Done: a slow commit or settle hook must not pass for the task running past its
        # hard limit, nor a terminate read now for one still to stop (the supervisor would
        # kill the child and every task on its loop, to run again).
        self._held[delivery.id] = [
            Held(delivery.id, delivery.queue, lease.token, message.task, started, settling=True)
        ]
        self._dirty = True
        return outcome

    def _body_deadlines(self, job: Job, running: Held) -> None:
        """List the task with the deadlines of its body in the slot."""
        self._held[job.delivery.id] = [running]  # its deadlines now (see _execute_async)
        if self._unwritten_start:
            # The process pool's rule: "started" is in the slot before the task can kill
            # the child, so the supervisor counts the delivery and a task that always
            # crashes is dead-lettered. One write covers every start marked since the last.
            self._write_slot()
        elif not self._write_due:
            # Its deadlines at the loop's next turn, with those of every task starting on
            # this one: a write per start cost 130 ms of loop time per 1,000 starts at -c 1000.
            self._write_due = True
            asyncio.get_running_loop().call_soon(self._write_if_due)

    async def _call(self, executor: Executor, job: Job, soft: float, running: Held) -> Outcome:
        assert job.task is not None
        if self._terminations.revoked(job.delivery.id):  # in its hooks: see aio_terminate
            # Before its body's deadlines reach the slot: a plain def's (loop_deadline 0)
            # would have the supervisor kill the child for the terminate, neighbours and all.
            return _revoked_and_stopped(job)
        self._body_deadlines(job, running)
        token = _current.set(job.request)
        began = time.perf_counter()
        try:
            if job.task.is_async:
                value = await self._async_body(executor, job, soft)
            else:
                value = await self._off_loop(self._sync, _call_with_soft_limit, executor, job, soft)
                if isinstance(value, _Raised):
                    raise value.exc  # here, in this frame: see _Raised
            outcome = Outcome("SUCCESS", value=value)
        except Exception as exc:  # noqa: BLE001 - a task's failure is data, not a crash
            outcome = outcome_for(exc)
        except BaseException as exc:
            me = asyncio.current_task()
            ours = me is not None and me.cancelling() > 0
            terminated = self._terminations.cancelled(job.delivery.id)
            if isinstance(exc, asyncio.CancelledError) and ours and not terminated:
                raise  # this job's own asyncio task is being cancelled: the loop ends
            # Only a task raises these here (a child ignores SIGINT): SystemExit, or a
            # CancelledError or other BaseException of its own. Left to propagate, they
            # ended the job unsettled and unlogged: its message, held until its lease ran
            # out, ran again each time, silently, until dead-lettered as a crash. (A
            # terminate's cancel is replaced with REVOKED below.)
            outcome = outcome_for(exc)
        finally:
            exit_if_forked(executor.pid, job)  # a copy of this child, forked by an async task
            _current.reset(token)
        if self._terminated(job):
            # Cancelled by a terminate: REVOKED, however its code ended (the cancel raised,
            # or taken and a value returned), as the kill in the other pools makes it.
            outcome = _revoked_and_stopped(job)
        outcome.runtime = time.perf_counter() - began
        return outcome

    async def _async_body(self, executor: Executor, job: Job, soft: float) -> Any:
        """The task's coroutine under its soft limit, where a terminate may cancel it
        (see :mod:`celeriac.worker.aio_terminate`)."""
        me = asyncio.current_task()
        assert me is not None
        self._terminations.body_started(job.delivery.id, me, job.label)
        try:
            return await _with_soft_limit(executor.invoke(job), soft)
        finally:
            self._terminations.body_ended(job.delivery.id)

    def _terminated(self, job: Job) -> bool:
        """Whether a terminate cancelled the job's body; if so, its cancel request is
        taken back, so that the job goes on to settle (once)."""
        me = asyncio.current_task()
        if not self._terminations.claim(job.delivery.id) or me is None:
            return False
        if me.cancelling():
            me.uncancel()
        return True

    def _publish(
        self,
        key: Hashable,
        pending: list[Delivery],
        running: Held | None,
        batch: Batch | None = None,
    ) -> None:
        self._held.pop(key, None)
        self._dirty = True

    async def _flush_slot(self) -> None:
        while True:
            await asyncio.sleep(_SLOT_FLUSH)
            self._loop_turned = time.monotonic()  # the loop turns: the watchdog's sign of life
            self.slot.block(0)  # whatever blocked it no longer does
            if self._dirty:
                self._write_slot()

    def _write_if_due(self) -> None:
        if self._write_due:
            self._write_slot()

    def _write_slot(self) -> None:
        self._dirty = self._unwritten_start = self._write_due = False
        held = [h for items in self._held.values() for h in items]
        held.sort(key=lambda h: h.started == 0)
        self.rss = current_rss()
        self.slot.write(held, self.rss, self.tasks_done, self.growth)


def _revoked_and_stopped(job: Job) -> Outcome:
    """The outcome of a task revoked with terminate that this child stopped itself (see
    :mod:`celeriac.worker.aio_terminate`), worded as the supervisor's kill words it in
    the other pools (:func:`celeriac.worker.alone.killed_verdict`)."""
    said = f"task {job.label} was revoked and stopped"
    return Outcome("REVOKED", reason=said, error=error_info(TaskRevoked(said)))


def _where(frame: FrameType | None) -> str:
    """The stack of the loop's thread from the task's own code down (celeriac's frames
    above it say nothing), at most its last ``_STACK_SHOWN`` frames."""
    if frame is None:
        return "(no stack)"
    stack = list(traceback.extract_stack(frame))
    ours = [i for i, f in enumerate(stack) if f.filename == __file__]
    if ours and ours[-1] + 1 < len(stack):
        stack = stack[ours[-1] + 1 :]
    return "".join(traceback.format_list(stack[-_STACK_SHOWN:])).rstrip("\n")


def adopt(context: contextvars.Context) -> None:
    """Give each variable of ``context`` its value there, in the running context.

    Example:
        >>> import contextvars
        >>> color = contextvars.ContextVar("color", default="none")
        >>> elsewhere = contextvars.copy_context()
        >>> _ = elsewhere.run(color.set, "red")
        >>> color.get(), adopt(elsewhere), color.get()
        ('none', None, 'red')
    """
    for var, value in context.items():
        if var.get(_UNSET) is not value:
            var.set(value)


#: What ``adopt`` compares with for a variable that has no value here.
_UNSET = object()


async def _with_soft_limit(coro: Coroutine[Any, Any, Any], soft: float) -> Any:
    """Await a task's coroutine, cancelled at ``soft`` seconds.

    Only the limit's own expiry is a soft limit: a ``TimeoutError`` the task raises is
    its own, and passes through as it is (so ``autoretry_for=(TimeoutError,)`` works). A
    coroutine that blocked the loop past the limit (``time.sleep`` in an ``async def``)
    could not be cancelled: when it returns or raises, it fails with
    ``SoftTimeLimitExceeded`` all the same, as the process and threads pools stop it.
    """
    if soft == math.inf:
        return await coro
    scope = asyncio.timeout(soft)
    try:
        async with scope:
            value = await coro
    except Exception as exc:
        if scope.expired() and isinstance(exc, TimeoutError):
            raise SoftTimeLimitExceeded(f"cancelled at its soft time limit ({soft:g}s)") from None
        if _blocked_past(scope):
            raise _blocked_error(soft) from exc
        raise
    if _blocked_past(scope):
        raise _blocked_error(soft)
    return value


def _blocked_past(scope: asyncio.Timeout) -> bool:
    """Whether the task's code ran past the scope's deadline without the loop turning to
    cancel it: its cancellation never came (a task that took it and returned keeps its
    value, as one that catches SoftTimeLimitExceeded does in the other pools)."""
    deadline = scope.when()
    return (
        not scope.expired()
        and deadline is not None
        and asyncio.get_running_loop().time() >= deadline
    )


def _blocked_error(soft: float) -> SoftTimeLimitExceeded:
    """The soft limit of a coroutine that blocked past it, saying what to do about it."""
    return SoftTimeLimitExceeded(
        f"the task ran past its soft time limit ({soft:g}s) while blocking the event loop "
        "(a blocking call in an async def), where no cancellation reaches it, so it fails "
        "as it ends. Await an async client, wrap the blocking call in "
        "`await asyncio.to_thread(...)`, make the task a plain def (it then runs in a "
        "thread), or give it a larger soft_time_limit"
    )


class _Raised:
    """A GeneratorExit a plain task raised in its thread, carried back as a value.

    Raised through an ``await`` (the thread's future), a GeneratorExit skips the awaiting
    coroutine's ``except`` clauses (CPython's coroutine machinery): the job's own handler
    never saw it, and the task was dead-lettered as "the worker failed while handling it".
    """

    __slots__ = ("exc",)

    def __init__(self, exc: GeneratorExit) -> None:
        self.exc = exc


def _call_with_soft_limit(executor: Executor, job: Job, soft: float) -> Any:
    """Run a plain function in this worker thread under the soft limit."""
    try:
        with thread_soft_limit(soft):
            return executor.invoke(job)
    except GeneratorExit as exc:
        return _Raised(exc)
    finally:
        # A copy forked here has this thread alone: it would wait for work for ever.
        exit_if_forked(executor.pid, job)
