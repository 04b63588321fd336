"""Reaping: what the supervisor does when one of its children has exited.

A mixin of :class:`~celeriac.worker.supervisor.Worker`, kept apart so each module stays
small. The messages a dead child held go back to the queue at once: the running one
counted as a delivery, and so is one it had taken to run but not started, so a message
that kills every child that reads it is dead-lettered; prefetched ones are not counted,
nor are the tasks running beside one this supervisor killed the child for (in a threads
or asyncio child: they did nothing wrong). A task the supervisor killed (past its hard
time limit, or revoked with terminate) gets its verdict recorded first, so its next
delivery settles it instead of running it. The death is said in one line (how the child
ended, what it was doing), and a fresh child takes its place, later when the place
crash-loops.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from celeriac.brokers.records import Lease
from celeriac.control import mark_given_back
from celeriac.middleware.verdicts import verdict_key
from celeriac.worker.alone import blocked_loop_verdict, killed_verdict
from celeriac.worker.broken import EXIT_TASK_CLOSED_DESCRIPTORS, closed_descriptors_verdict
from celeriac.worker.crash_loop import EXIT_START_FAILED, ChildDeaths
from celeriac.worker.death_notes import death_key, death_note
from celeriac.worker.reading import shown
from celeriac.worker.slot import Held, Slot, SlotView, hand_mark

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

#: Why a task is settled by a verdict, beside FAILURE (its hard limit) and REVOKED: its
#: child exited after it closed the child's descriptors (see .broken).
CLOSED_DESCRIPTORS = "CLOSED"
#: ... and: it blocked its asyncio child's event loop until another task's hard limit
#: passed (see .hard_limits).
BLOCKED_LOOP = "BLOCKED"


class ChildState(msgspec.Struct):
    """The supervisor's record of one place for a child, kept across the children in it."""

    index: int
    slot: Slot
    pid: int = 0
    started: float = 0.0
    last_view: SlotView = msgspec.field(default_factory=lambda: SlotView([], 0))
    killed_for: tuple[Held, str] | None = None  # the task we killed it for, and why
    killed_cold: bool = False  # killed (with what its tasks started) by a cold shutdown
    crashes: int = 0
    fork_failures: int = 0  # in a row: see Reaping._could_not_fork
    consumer: str = ""  # lease holder id of the current process in this place
    generation: int = 0
    respawn_at: float = 0.0  # monotonic time a crash-looping place gets its next child


class Reaping:
    """Cleans up after children that exited, and starts their replacements."""

    app: Celeriac
    id: str
    _children: list[ChildState]
    _lifecycle: threading.Lock
    _stop_requests: int
    _done_before: int
    _growth_before: dict[str, list[int]]
    _deaths: ChildDeaths
    _tasks_done: Callable[[], int]
    _spawn: Callable[[ChildState], None]
    _beat_child: Callable[[ChildState, int, float], None]
    _quietly: Callable[[Callable[[], object], str], None]

    def _reap_children(self) -> None:
        for child in self._children:
            if not child.pid:
                continue
            # With the hard-limit watch's lock: it must never signal a pid once reaped
            # (by then it may be another process's).
            with self._lifecycle:
                pid, status = os.waitpid(child.pid, os.WNOHANG)
                if pid == 0:
                    continue
                child.pid = 0
            self._after_exit(child, os.waitstatus_to_exitcode(status), pid)

    def _after_exit(self, child: ChildState, code: int, pid: int = 0) -> None:
        """After the child ``pid`` (by default the child's) exited with ``code``."""
        # The slot as the child left it: a task it started (and died of) after this tick's
        # read must count as a delivery, or a poison task crash-loops uncounted. A child
        # killed mid-write leaves no complete record (rss 0): the tick's read stands then.
        final = child.slot.read()
        pid, killed = pid or child.pid, child.killed_for
        view = final if final.rss else child.last_view
        child.pid = 0
        closed = code == EXIT_TASK_CLOSED_DESCRIPTORS and view.held and view.held[0].started
        if killed is None and closed:  # the child put that task first: see .broken
            killed = (view.held[0], CLOSED_DESCRIPTORS)
        self._fold_counters(view)
        recorded = self._record_verdict(*killed) if killed is not None else False
        # Release what the child held but had not yet written into its slot (taken by the
        # same call that committed its last task): its heartbeat ends now, and the reaper
        # hands back everything held under its consumer id, at once.
        self._quietly(
            functools.partial(self._beat_child, child, pid, 0.0), "end a dead child's heartbeat"
        )
        reading = self._reading(child, view, killed)
        beside: list[Held] = []  # started tasks killed beside ``killed``, run at most once
        # What a child that the supervisor stopped held did nothing wrong: it goes back where
        # it was, at the head (last first), since a cold shutdown's tasks went behind the
        # whole backlog at every deploy. What a child that died by itself held goes to the
        # back: the message that killed it among them. Not its prefetch to the head either:
        # the next child ran those in a batch, died on the killer behind them before their
        # commit, and they ran a second time.
        stopped = killed is not None or child.killed_cold or self._stop_requests >= 2
        # Revoked while held, marked now (see control.mark_given_back): only what goes back
        # uncounted, unstarted. A task put back counted may be dead-lettered at its next
        # delivery instead of dropped, and its waiters were told REVOKED, then FAILURE.
        given_back = [h.id for h in view.held if not h.started and h not in reading]
        if given_back:
            self._quietly(
                functools.partial(mark_given_back, self.app, given_back),
                "mark the revoked tasks a dead child held",
            )
        for held in reversed(view.held) if stopped else view.held:
            if killed is not None and held.id == killed[0].id:
                continue
            # The running task counts as a delivery (a crash), and so does a message taken
            # to run but not started yet (its decoding may be what killed the child: not
            # counted, it did so for ever); prefetched ones do not. Nor do the tasks
            # killed beside the one this supervisor killed the child for (a threads or
            # asyncio child): they did nothing wrong, and counted, a task sharing a child
            # with hanging ones was dead-lettered as a crash after max_deliveries of them.
            # Except a task allowed one delivery: it is never run twice, whoever's fault.
            lease = Lease(held.id, held.queue, held.token)
            counted = (bool(held.started) or held in reading) and killed is None
            if killed is not None and held.started and self._once_only(held.task):
                counted = True
                beside.append(held)
            back = functools.partial(
                self.app.broker.requeue,
                lease,
                count_delivery=counted,
                front=stopped,
            )
            self._quietly(back, f"put back task {held.label}")
        if killed is not None:
            self._put_back_killed(killed[0], recorded)
        if killed is not None and beside:
            self._note_death(beside, f"killed with its child, stopped for {killed[0].label}")
        self._quietly(self.app.broker.reap, "hand back what dead workers held")
        # Handed back: the next reads of this slot (until a child takes it) must not list
        # them, or lease renewal renews what went back and calls it lost.
        child.slot.clear()
        child.last_view = SlotView([], 0)
        running = [h for h in view.held if h.started]
        # A child that stops by itself (recycling, shutdown) leaves nothing started in its
        # slot; one that exits with code 0 in a task was ended by the task (os._exit(0)),
        # and one with a message in hand by that message (os._exit(0) unpickling it).
        if (code != 0 or running or reading) and killed is None and self._stop_requests < 2:
            self._note_death([*running, *reading], _how_it_ended(code))
            log.error(
                "worker child %d died (%s) while %s; its messages were put back and a new "
                "child is starting",
                pid,
                _how_it_ended(code),
                _doing(running, reading, self.app.conf.task_max_deliveries),
            )
            child.crashes = child.crashes + 1 if time.time() - child.started < 2 else 0
            self._deaths.note(pid, _how_it_ended(code), self._tasks_done())  # for ping
        if self._stop_requests == 0:
            if child.crashes > 3:
                # A crash loop: back off, but never by sleeping here — heartbeats, lease
                # renewals and the other children must go on meanwhile.
                pause = _pause(child.crashes)
                log.error(
                    "worker child in place %d crashed %d times in a row; next one in %.1fs",
                    child.index,
                    child.crashes,
                    pause,
                )
                child.respawn_at = time.monotonic() + pause
            else:
                self._spawn(child)

    def _once_only(self, task: str) -> bool:
        """Whether ``task`` may be delivered once only (its ``max_deliveries``, else the
        app's ``task_max_deliveries``, is 1)."""
        known = self.app.tasks.get(task)
        own = known.options.max_deliveries if known is not None else None
        return (own if own is not None else self.app.conf.task_max_deliveries) <= 1

    def _note_death(self, held: list[Held], how: str) -> None:
        """Note how a child died (see :mod:`celeriac.worker.death_notes`) for each task
        it was running or reading: put back counted, the task may be dead-lettered next,
        and its dead letter then says how; one that died beside others may run alone."""
        for h in held:
            note = functools.partial(
                self.app.broker.kv_set,
                death_key(h.id),
                death_note(how, len(held) - 1),
                self.app.conf.result_expires,
            )
            self._quietly(note, f"note how the child running task {h.label} died")

    def _could_not_fork(self, child: ChildState, exc: OSError) -> None:
        """A child could not be started: ``fork`` failed. Its place is tried again after a
        pause, as a crash-looping one is, while the other children work on.

        A container's process limit (``pids.max``: Kubernetes' pod pid limit, ``docker
        --pids-limit``, systemd's ``TasksMax``; ``ulimit -u``), which the processes tasks
        start count against, or memory to copy the supervisor: the error ended the
        supervisor (exit 1), and its other children finished their tasks with nobody
        renewing their leases or enforcing hard limits.
        """
        child.fork_failures += 1
        self._deaths.note(0, f"fork failed ({exc})", self._tasks_done())  # runs nothing either
        pause = _pause(child.fork_failures)
        child.respawn_at = time.monotonic() + pause
        self._quietly(functools.partial(self._beat_child, child, 0, 0.0), "end a child's heartbeat")
        if child.fork_failures & (child.fork_failures - 1):
            return  # said at the 1st, 2nd, 4th, 8th... failure in a row: not every pause
        why = {
            errno.EAGAIN: "; the process limit: the container's pids.max, systemd's TasksMax "
            "or ulimit -u, which the processes tasks start count against",
            errno.ENOMEM: "; no memory to copy the supervisor",
        }.get(exc.errno or 0, "")
        log.error(
            "worker %s could not start a child in place %d: fork failed (%s%s), %d time(s) "
            "in a row. The other children work on; it tries again in %.1fs",
            self.id,
            child.index,
            exc,
            why,
            child.fork_failures,
            pause,
        )

    def _reading(
        self, child: ChildState, view: SlotView, killed: tuple[Held, str] | None
    ) -> list[Held]:
        """The messages a dead child had taken to run but not started (its consumers'
        hands, see :meth:`Slot.hand`): being read, or on their way to start.

        A child that ends by itself (recycling, a warm stop) lists nothing any more: it
        gave everything back. Nothing when this supervisor killed it (a hard limit, a cold
        stop): the message in hand did nothing wrong then.
        """
        if killed is not None or self._stop_requests >= 2:
            return []
        marks = child.slot.in_hand()
        return [h for h in view.held if not h.started and hand_mark(h.id, h.token) in marks]

    def _fold_counters(self, view: SlotView) -> None:
        # A child's counters die with it: keep them at the supervisor for inspect.
        self._done_before += view.done
        for name, (runs, grown) in (view.growth or {}).items():
            total = self._growth_before.setdefault(name, [0, 0])
            total[0] += runs
            total[1] += grown

    def _record_verdict(self, held: Held, state: str) -> bool:
        """Record why we stopped a task; True when the broker took it.

        The next delivery does not run it: the Verdicts middleware settles it with this
        verdict through the whole pipeline, so retries, chains and chords carry on.
        Recorded before the dead child's heartbeat ends: after, a reaper could hand its
        message back before the verdict exists, and it would run again.
        """
        if state == CLOSED_DESCRIPTORS:
            verdict = closed_descriptors_verdict(held)
        elif state == BLOCKED_LOOP:
            verdict = blocked_loop_verdict(held)
        else:
            verdict = killed_verdict(held, state)
        recorded: list[bool] = []

        def record() -> None:
            self.app.broker.kv_set(verdict_key(held.id), verdict, self.app.conf.result_expires)
            recorded.append(True)

        self._quietly(record, f"record why task {held.label} was stopped")
        return bool(recorded)

    def _put_back_killed(self, held: Held, recorded: bool) -> None:
        """Hand back the message of a task we stopped, counted as a delivery.

        With its verdict, to the head of its queue, after the rest of what its child held
        (each of those also goes to the head, so this one lands first): the next fetch
        settles it unrun. At the back, its caller waited for the whole backlog to read
        FAILURE (or REVOKED), and after a warm shutdown for the next worker to reach it.
        Without a verdict (the broker failed), it runs again: to the back, as any suspect.
        """
        lease = Lease(held.id, held.queue, held.token)
        self._quietly(
            functools.partial(self.app.broker.requeue, lease, count_delivery=True, front=recorded),
            f"put back task {held.label}",
        )


def _pause(failures: int) -> float:
    """Seconds before a place that failed ``failures`` times in a row gets its next child.

    Example:
        >>> _pause(1), _pause(4), _pause(20)
        (0.2, 1.6, 5.0)
    """
    return min(2.0**failures / 10, 5.0)


def _doing(running: list[Held], reading: list[Held], limit: int) -> str:
    """What a child was doing when it died, for the line that says so.

    Example:
        >>> _doing([], [Held("id1", "q", "t")], 5)  # doctest: +ELLIPSIS
        'reading message id1 (taken to run, not started; counted as a delivery, so a ...'
        >>> _doing([], [], 5)
        'running: none'
    """
    if running or not reading:
        return "running: " + (", ".join(h.label for h in running) or "none")
    ids = ", ".join(shown(h.id) for h in reading)
    return (
        f"reading message {ids} (taken to run, not started; counted as a delivery, so a "
        f"message that kills every child that reads it is dead-lettered after "
        f"task_max_deliveries={limit}, see `celeriac dlq list`)"
    )


def _how_it_ended(code: int) -> str:
    """A child's exit status in words (``code`` as :func:`os.waitstatus_to_exitcode` gives).

    Example:
        >>> _how_it_ended(-9)
        "killed by SIGKILL: the kernel's OOM killer, or kill -9"
        >>> _how_it_ended(0)
        'exit code 0: os._exit(0) in the task?'
    """
    if code == -signal.SIGKILL:
        return "killed by SIGKILL: the kernel's OOM killer, or kill -9"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == 0:
        return "exit code 0: os._exit(0) in the task?"
    if code == EXIT_START_FAILED:
        return f"exit code {code}: a middleware's on_child_start raised, as the child logged"
    return f"exit code {code}"
