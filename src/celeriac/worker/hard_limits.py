"""The supervisor's hard-limit watch: a thread that kills a child whose task passed its
hard time limit, or runs a task revoked with ``terminate``.

A mixin of :class:`~celeriac.worker.supervisor.Worker`, kept apart so each module stays
small. The kill only records why (``ChildState.killed_for``); the main flow's pass reaps
the child and settles that task (:mod:`celeriac.worker.reaping`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from celeriac.worker.descendants import Started, kill_tree, words
from celeriac.worker.reaping import BLOCKED_LOOP, ChildState
from celeriac.worker.remote import Remote
from celeriac.worker.slot import Held, SlotView, hand_mark

log = logging.getLogger("celeriac.worker")

_TICK = 0.05  # seconds between the watch's checks
#: Seconds the supervisor leaves an asyncio child to cancel a coroutine revoked with
#: terminate itself (see :mod:`.aio_terminate`) before it kills the child, and every task
#: in it. Here, not there: that module loads asyncio (and ssl, ~3 MiB a process), which a
#: process or threads worker never needs.
TERMINATE_GRACE = 2.0


class HardLimits:
    """The hard-limit watch of a supervisor."""

    id: str
    pool: str
    remote: Remote
    _children: list[ChildState]
    _lifecycle: threading.Lock
    _watch_stop: threading.Event
    _terminate_seen: dict[str, float]  # a task revoked with terminate: first seen running

    def _start_watching_limits(self) -> threading.Thread:
        """Start the thread that enforces hard limits; set ``_watch_stop`` to end it.

        Not the main flow's pass: that one waits on broker calls, and a broker that hangs
        instead of refusing (Redis frozen or failing over, a lost network: a socket timeout
        of 30 s; a SQLite write lock held by a consumer thread that a task starves of the
        GIL: the 30 s busy timeout) held back every hard limit meanwhile. A task with a
        2 s limit was killed after 31 s. Started with every signal blocked, so that signals
        reach the main thread (a SIGTERM taken by this thread would not interrupt the
        main flow's blocked call, and its handler would wait for that call to return).
        """
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            watch = threading.Thread(
                target=self._watch_limits, name="celeriac-hard-limits", daemon=True
            )
            watch.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return watch

    def _watch_limits(self) -> None:
        while not self._watch_stop.wait(_TICK):
            try:
                with self._lifecycle:
                    now = time.time()
                    for child in self._children:
                        if child.pid:
                            self._enforce_limits(child, child.slot.read(), now)
            except Exception:  # a bug here must not end hard limits for good
                log.exception("worker %s: checking hard time limits failed", self.id)

    def _enforce_limits(self, child: ChildState, view: SlotView, now: float) -> None:
        if not child.pid or child.killed_for is not None:
            return
        for running in (h for h in view.held if h.started and not h.settling):
            if running.id in self.remote.to_terminate:
                if self._child_may_cancel(running, now):
                    continue
                pid, started = child.pid, self._kill_for(child, running, "REVOKED")
                log.warning(
                    "task %s was revoked with terminate; killed child %d%s%s",
                    running.label,
                    pid,
                    words(started),
                    _beside(view, running),
                )
                return
            if running.hard_deadline and now > running.hard_deadline:
                blocker = _blocker(view, running, *child.slot.blocker())
                if blocker is not None:
                    self._kill_for_blocker(child, view, blocker, running)
                    return
                pid, started = child.pid, self._kill_for(child, running, "FAILURE")
                log.error(
                    "task %s passed its hard time limit; killed child %d%s%s",
                    running.label,
                    pid,
                    words(started),
                    _beside(view, running),
                )
                return

    def _child_may_cancel(self, running: Held, now: float) -> bool:
        """Whether an asyncio child may still cancel ``running``, revoked with terminate,
        itself (see :mod:`.aio_terminate`): an async task, within TERMINATE_GRACE of the
        first time this watch saw its terminate. Killed, the child took every coroutine
        beside it down, and each ran again."""
        if self.pool != "asyncio" or not running.loop_deadline:
            return False  # a plain-def task in a thread, or a process: nothing to cancel
        seen = self._terminate_seen.setdefault(running.id, now)
        if len(self._terminate_seen) > 1000:  # ids long gone: the oldest half
            for old in list(self._terminate_seen)[:500]:
                del self._terminate_seen[old]
        return now - seen < TERMINATE_GRACE

    def _kill_for_blocker(
        self, child: ChildState, view: SlotView, blocker: Held, victim: Held
    ) -> None:
        """Kill an asyncio child for the task that blocks its loop, when another task
        passed its hard limit meanwhile: that one could not run (nor its soft limit fire).
        Blamed on the first task past its limit, the blocker was put back as innocent,
        blocked the next child's loop too, and the victim was killed for again at each
        delivery (the blocker ran 4 to 7 times)."""
        pid, started = child.pid, self._kill_for(child, blocker, BLOCKED_LOOP)
        log.error(
            "task %s passed its hard time limit while task %s blocked the event loop; "
            "killed child %d%s for %s, which ends FAILURE%s. A blocking call in an async "
            "def task stops every task of its child: await an async client, or use "
            "asyncio.to_thread",
            victim.label,
            blocker.label,
            pid,
            words(started),
            blocker.label,
            _beside(view, blocker),
        )

    def _kill_for(self, child: ChildState, running: Held, state: str) -> list[Started]:
        """Kill the child (and what its tasks started, see :mod:`.descendants`) because
        of ``running``; return the processes killed under it."""
        child.killed_for = (running, state)
        return kill_tree(child.pid)


def _beside(view: SlotView, killed_for: Held) -> str:
    """The other running tasks a kill for ``killed_for`` ends too, for its log line: a
    threads or asyncio child's (the terminate of one async task re-ran 19 others, said by
    no line), or "" when there are none.

    Example:
        >>> view = SlotView([Held("a", "q", "t", "shop.a", 1.0), Held("b", "q", "t", "x", 1.0)], 0)
        >>> _beside(view, view.held[0])
        '; with it x[b], put back to run again (unless allowed one delivery: dead-lettered)'
    """
    others = [h.label for h in view.held if h.started and h.id != killed_for.id]
    if not others:
        return ""
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    return f"; with it {shown}, put back to run again (unless allowed one delivery: dead-lettered)"


def _blocker(view: SlotView, victim: Held, mark: int, since: float) -> Held | None:
    """The started task the child's watchdog wrote as blocking its event loop
    (:meth:`.Slot.block`), when ``victim``, past its hard limit, is its victim: an async
    task on that loop, blocked since before its soft limit was to cancel it, or any task
    still waiting on the loop to start its body (its hooks' results come back there). A
    task in its thread, or one past its soft limit before the block, is at fault itself."""
    if not mark or not victim.loop_deadline or since > victim.loop_deadline:
        return None
    return next(
        (
            h
            for h in view.held
            if h.started and h.id != victim.id and hand_mark(h.id, h.token) == mark
        ),
        None,
    )
