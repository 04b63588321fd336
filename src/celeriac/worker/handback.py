"""What a process or threads child holds beside its running tasks, given back at once when
a warm shutdown begins.

Each consumer of a child keeps the messages it fetched but has not started in a list of its
own (``worker_prefetch_multiplier`` - 1 of them, or a batch of short tasks). At a warm
shutdown they used to go back only when the consumer's running task ended: behind a
5-minute task, 5 minutes during which idle workers could have run them.

The stop signal's handler cannot give them back itself: it runs in the main thread between
two bytecodes of whatever runs there (a process child's task, which may be in the middle
of a broker call on the same connection, or holding a lock that the broker or logging
takes). So the handler only closes the lists and starts a thread, which takes them under
the child's lock and gives them back with a broker connection of its own (SQLite's is per
thread; a Redis client takes a connection of its pool per call). A consumer takes its next
message under the same lock, and takes none once they are closed, so a message is either
started by this child or given back by the thread, never both.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import threading
from collections.abc import Callable, Hashable

from celeriac.brokers.records import Delivery

log = logging.getLogger("celeriac.worker")


class Prefetched:
    """The prefetched messages of each consumer of a child, and their hand-back.

    Every change to a consumer's list goes through this object, under ``lock``; only the
    consumer itself reads its list without the lock (the hand-back thread only ever
    removes from it, under the lock).

    Example:
        >>> import threading
        >>> from celeriac.brokers.records import Delivery, Lease
        >>> prefetched = Prefetched(threading.Lock())
        >>> pending = prefetched.watch(0)
        >>> prefetched.add(pending, [Delivery(Lease("a", "q", "t"), b"", 1)])
        >>> prefetched.take(pending).id
        'a'
        >>> prefetched.take(pending) is None
        True
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._lists: dict[Hashable, list[Delivery]] = {}
        self.closed = False  # a warm shutdown began: no consumer takes another message
        self._handing = _thread.allocate_lock()  # held while the hand-back thread runs

    def watch(self, key: Hashable) -> list[Delivery]:
        """The list of consumer ``key``, empty, which this object changes in place."""
        pending: list[Delivery] = []
        with self._lock:
            self._lists[key] = pending
        return pending

    def take(self, pending: list[Delivery]) -> Delivery | None:
        """The next message to run; None when there is none, or a warm shutdown began
        (the message is then the hand-back's, or the consumer's to give back as it
        ends). One uncontended lock per task: the consume loop's only cost of this."""
        with self._lock:
            if self.closed or not pending:
                return None
            return pending.pop(0)

    def add(self, pending: list[Delivery], more: list[Delivery]) -> None:
        """Add what a fetch returned (the consumer checks ``stopping`` next, and gives
        them back itself when a shutdown began meanwhile)."""
        with self._lock:
            pending.extend(more)

    def split(self, pending: list[Delivery], keep: int) -> list[Delivery]:
        """Remove and return all but the first ``keep`` messages."""
        with self._lock:
            rest = pending[keep:]
            del pending[keep:]
            return rest

    def close(
        self,
        unlist: Callable[[list[Delivery]], None],
        give_back: Callable[[list[Delivery]], None],
    ) -> None:
        """Start giving back every consumer's list at once: from a stop signal's handler.

        The thread takes the lists under the lock, calls ``unlist`` with them (still under
        the lock: the slot must stop listing them before the consumer writes it again),
        then ``give_back`` (a broker call, outside the lock). Does nothing more after the
        first call, or when no list holds anything: a consumer that adds to its list
        checks ``stopping`` next and gives back what it added itself.
        """
        if self.closed:
            return
        self.closed = True
        if not any(self._lists.values()):  # no lock in a handler: see the module docstring
            return
        self._handing.acquire()  # new and free: never blocks
        start_quiet_thread(lambda: self._hand_back(unlist, give_back))

    def wait(self, timeout: float) -> None:
        """Wait for the hand-back to finish, at most ``timeout`` seconds: the child must
        not exit in the middle of it. What it has not given back by then is still held
        under this child's consumer id, which the supervisor declares dead as the child
        exits, so its reaper hands them back."""
        if self._handing.acquire(timeout=timeout):
            self._handing.release()

    def _hand_back(
        self,
        unlist: Callable[[list[Delivery]], None],
        give_back: Callable[[list[Delivery]], None],
    ) -> None:
        try:
            with self._lock:
                taken = [d for pending in self._lists.values() for d in pending]
                for pending in self._lists.values():
                    pending.clear()
                unlist(taken)
            if taken:
                log.info(
                    "child %d gives back %d prefetched message(s) at once; its running "
                    "task(s) finish meanwhile",
                    os.getpid(),
                    len(taken),
                )
                give_back(taken)
        finally:
            self._handing.release()


def start_quiet_thread(target: Callable[[], object]) -> None:
    """Start ``target`` in a new thread, from a signal handler.

    ``_thread``, not ``threading``, whose module lock the interrupted code may hold; and
    with every signal blocked in the new thread, so that signals keep reaching the main
    thread (SIGALRM, the soft limit, must interrupt the task running there).
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        _thread.start_new_thread(target, ())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
