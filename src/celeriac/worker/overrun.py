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
the messages held back to the front of the queue's competition (uncounted, as at a warm
shutdown). It does this under the watch's lock, which the consumer takes as its task ends
(:meth:`OverrunWatch.disarm`): the consumer never touches its batch meanwhile.
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
#: How often the watch looks. Its thread wakes this often once a child has batched.
TICK = 0.05


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
        >>> watch.disarm(0)
        >>> freed
        [0]
    """

    def __init__(
        self, free: Callable[[Hashable], None], after: float = OVERRUN, tick: float = TICK
    ) -> None:
        self._free = free
        self._after = after
        self._tick = min(tick, after)
        self._armed: dict[Hashable, float] = {}  # consumer -> monotonic time its task began
        self._lock = threading.Lock()  # held while freeing: see disarm
        self._started = False

    def arm(self, key: Hashable) -> None:
        """Watch consumer ``key``'s task, which begins now. Runs per task: a dict write."""
        self._armed[key] = time.monotonic()
        if not self._started:
            self._started = True
            # Every signal blocked in it: SIGALRM (the soft limit) must interrupt the task.
            start_quiet_thread(self._watch)

    def disarm(self, key: Hashable) -> None:
        """Stop watching consumer ``key``, whose task has ended; waits while its held
        work is being freed, so the consumer finds its batch as the watch left it."""
        with self._lock:
            self._armed.pop(key, None)

    def _watch(self) -> None:
        while True:
            time.sleep(self._tick)
            if not self._armed:
                continue
            now = time.monotonic()
            for key, began in list(self._armed.items()):
                if now - began < self._after:
                    continue
                with self._lock:
                    if self._armed.get(key) != began:  # ended (or a new task began) meanwhile
                        continue
                    del self._armed[key]
                    try:
                        self._free(key)
                    except Exception:
                        log.exception(
                            "could not commit or give back what a batch held behind a "
                            "slow task: the child does it when that task ends, and what it "
                            "cannot is delivered again once its lease runs out"
                        )
