"""Waiting for a commit on the SQLite file: one thread of a process looks, the others are
told.

SQLite cannot tell a process that another one committed; a waiting fetch asks its
connection for ``data_version`` every few milliseconds. With every consumer thread asking
on its own, an idle ``-P threads -c 100`` worker used 1.6 cores (25,000 wake-ups and
queries a second). Now the first waiting thread asks for all of them and wakes them when
it sees a commit; the others sleep on a condition until then, or until their own deadline.
When the looking thread stops (its deadline), it wakes one other to take over.

A forked child starts with a fresh condition: a lock held by another thread at the fork
would otherwise never be released in the child.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from celeriac import pid

#: Seconds between two looks at the file by the looking thread.
LOOK_EVERY = 0.004

_LONGEST_SLEEP = 3600.0  # seconds of one condition wait; the loop then waits again


class CommitWatch:
    """Commits seen by this process's looking thread, and the threads waiting for one.

    Example:
        >>> watch = CommitWatch()
        >>> seen = watch.seen()
        >>> watch.wait(seen, time.monotonic() + 0.01, changed=lambda: True)
        True
        >>> watch.seen() == seen + 1
        True
    """

    def __init__(self) -> None:
        self._pid = -1
        self._cond = threading.Condition()
        self._commits = 0
        self._looking = False

    def _fresh(self) -> threading.Condition:
        if self._pid != pid.current():
            self._pid = pid.current()
            self._cond = threading.Condition()
            self._looking = False
        return self._cond

    def seen(self) -> int:
        """How many commits this process has seen: read it before the query a wait
        follows, so that a commit in between wakes the wait."""
        self._fresh()
        return self._commits

    def wait(self, seen: int, until: float, changed: Callable[[], bool]) -> bool:
        """Wait until a commit after ``seen`` is seen, or ``time.monotonic()`` reaches
        ``until``; True when one was. ``changed`` (the calling thread's own look at the
        file) is called only by the looking thread, outside the lock."""
        cond = self._fresh()
        with cond:
            while self._commits == seen:
                now = time.monotonic()
                if now >= until:
                    return False
                if self._looking:
                    # Told of a commit, or to take over the looking. Bounded: a wait
                    # longer than threading.TIMEOUT_MAX (get(timeout=inf)) raises.
                    cond.wait(min(until - now, _LONGEST_SLEEP))
                    continue
                self._looking = True
                found = False  # _look may raise (Ctrl-C in its sleep): another takes over
                try:
                    found = self._look(cond, until, changed)
                finally:
                    self._looking = False
                    # A commit wakes every waiter; otherwise one takes over the looking.
                    if found:
                        cond.notify_all()
                    else:
                        cond.notify()
            return True

    def _look(self, cond: threading.Condition, until: float, changed: Callable[[], bool]) -> bool:
        """Look at the file every LOOK_EVERY until a commit (counted) or ``until``."""
        while time.monotonic() < until:
            cond.release()  # the others may wait meanwhile; a commit is counted below
            try:
                time.sleep(LOOK_EVERY)
                found = changed()
            finally:
                cond.acquire()
            if found:
                self._commits += 1
                return True
        return False
