"""What a batch holds behind a task that turned out slow, freed while that task runs.

A child takes many messages per fetch, and commits many finished tasks per broker call,
only for tasks known to be short (see :class:`~celeriac.worker.batch.Batch`). A task
known to be short can still be slow once: a call that waits on a network timeout. Behind
it, the batch's other messages waited in this child while idle siblings could have run
them, and the results of the tasks that had already run waited for their commit: behind
one 4-second call of a usually-instant task, 10 finished results and 33 messages waited
4 seconds.

So a consumer running a task with something held behind it arms a watch; a thread of the
child checks the watches every :data:`TICK` seconds, and for a task still running after
:data:`OVERRUN` seconds it commits what waits (landing a commit in flight first) and gives
the messages held back to their queue (uncounted, as at a warm shutdown). It does this
under the consumer's lock in the watch, which the consumer takes as its task ends
(:meth:`OverrunWatch.disarm`), so the consumer never touches its batch meanwhile. A task
that ends while the watch is at it first drops its hard limit from the slot, as a task
does once done: the watch's broker calls may stall (30 s of retries), and the supervisor
killed the finished task for its limit, storing FAILURE and running its batch again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

from celeriac.worker.handback import start_quiet_thread

log = logging.getLogger("celeriac.worker")

#: Seconds a task may run, with a batch's commits or messages held behind it, before they
#: are committed and given back. Well past any task a batch is taken for (a few ms), and
#: short beside the wait it saves.
OVERRUN = 0.25
#: How often the watch looks. Its thread wakes this often while a child runs batches.
TICK = 0.05
#: Seconds with nothing to watch after which the thread ends (the next batch starts one):
#: an idle child wakes for nothing, and a task that forks meets no thread of ours.
IDLE_END = 1.0


class OverrunWatch:
    """Frees what a consumer holds behind its running task once the task overruns.

    ``free`` is called with the consumer's key, in the watch's thread, while the task
    still runs; the consumer's :meth:`disarm` waits for it to end.

    Example:
        >>> import time
        >>> freed = []
        >>> watch = OverrunWatch(freed.append, after=0.01)
        >>> watch.arm(0)
        >>> time.sleep(0.2)
        >>> watch.disarm(0, lambda: None)
        >>> freed
        [0]
    """

    def __init__(
        self,
        free: Callable[[Hashable], None],
        after: float = OVERRUN,
        tick: float = TICK,
        idle_end: float = IDLE_END,
    ) -> None:
        self._free = free
        self._after = after
        self._tick = min(tick, after)
        self._idle_end = idle_end
        self._armed: dict[Hashable, float] = {}  # consumer -> monotonic time its task began
        # Per consumer, held while its held work is freed: see disarm. One per consumer,
        # so a threads child's other consumers never wait on one's broker calls.
        self._locks: dict[Hashable, threading.Lock] = {}
        self._started = False

    def arm(self, key: Hashable) -> None:
        """Watch consumer ``key``'s task, which begins now. Runs per task: a dict write."""
        if key not in self._locks:  # only the consumer itself arms its key
            self._locks[key] = threading.Lock()
        self._armed[key] = time.monotonic()
        if not self._started:
            self._started = True
            # Every signal blocked in it: SIGALRM (the soft limit) must interrupt the task.
            start_quiet_thread(self._watch)

    def disarm(self, key: Hashable, while_freeing: Callable[[], None]) -> None:
        """Stop watching consumer ``key``, whose task has ended. While its held work is
        being freed, calls ``while_freeing`` first (the consumer says its task ended: the
        freeing makes broker calls, and a broker that stalls must not keep a finished task
        listed under its hard limit, to be killed for it), then waits for the freeing to
        end, so the consumer finds its batch as the watch left it."""
        lock = self._locks[key]
        if not lock.acquire(blocking=False):
            while_freeing()
            lock.acquire()
        try:
            self._armed.pop(key, None)
        finally:
            lock.release()

    def _watch(self) -> None:
        idle = 0.0
        while True:
            time.sleep(self._tick)
            if not self._armed:
                idle += self._tick
                if idle >= self._idle_end and self._end():
                    return
                continue
            idle = 0.0
            now = time.monotonic()
            for key, began in list(self._armed.items()):
                if now - began < self._after:
                    continue
                with self._locks[key]:
                    if self._armed.get(key) != began:  # ended (or a new task began) meanwhile
                        continue
                    del self._armed[key]
                    try:
                        self._free(key)
                    except Exception:
                        log.exception(
                            "could not commit or give back what a batch held behind a "
                            "slow task: what it had not handed to the broker yet is "
                            "committed or given back when that task ends, the rest is "
                            "delivered again once its lease runs out"
                        )

    def _end(self) -> bool:
        """Whether this thread may end: nothing was armed once the next arm was told to
        start a thread. An arm in between finds ``_started`` False and starts one, or
        this thread sees what it armed and goes on (both at once: two threads for a
        while, each checking under the consumer's lock, so nothing is freed twice)."""
        self._started = False
        if not self._armed:
            return True
        self._started = True
        return False
