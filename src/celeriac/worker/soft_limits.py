"""Soft time limits: SoftTimeLimitExceeded raised inside the running task's own code.

* ``process`` pool: :class:`SoftAlarm`, a SIGALRM in the child's main thread, so it
  interrupts blocking calls.
* ``threads`` pool (and plain-function tasks of the ``asyncio`` pool):
  :func:`thread_soft_limit`, an asynchronous exception raised in the task's thread; it
  lands at the next Python instruction, so a thread blocked inside a C call sees it only
  when that call returns.

The executor runs a task's function inside the block its pool supplies.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from celeriac.errors import SoftTimeLimitExceeded

#: A SIGALRM this close to the running task's soft deadline is its soft limit: the timer
#: and time.monotonic() differ by microseconds, and a task is never given more than this.
_ALARM_SLACK = 0.001
#: A soft limit this long (about 292 years) or longer arms no timer: ``signal.setitimer``
#: and threading's waits raise OverflowError past it. Such a limit never fires while a task
#: runs; armed, ``soft_time_limit=1e10`` failed every run of the task in the process pool
#: ("OverflowError: timestamp out of range for platform time_t").
_LONGEST_TIMER = threading.TIMEOUT_MAX


class SoftAlarm:
    """The process pool's soft limit: SIGALRM, raised only while the task's own code runs.

    The executor runs the task's function inside ``with alarm(soft):``. Outside that block
    (middleware, broker calls, between tasks) the signal raises nothing: an exception there
    would be swallowed by a middleware hook (a chain's next step never sent) or break a
    broker call, and an alarm spent there would leave the task without its limit. Such an
    alarm is dropped, and the next task's block arms its own. It is raised once per task.

    The alarm is armed lazily: two setitimer calls per task were ~2% of a no-op's CPU. An
    alarm armed for an earlier task is left running when it would fire no later than this
    task's deadline; when it fires early, :meth:`on_signal` re-arms it for what is left.

    Example:
        >>> alarm = SoftAlarm()
        >>> with alarm(math.inf):  # no soft limit: nothing is armed
        ...     pass
        >>> with alarm(1e10):  # 317 years: it never fires, and setitimer cannot take it
        ...     pass
        >>> alarm.alarm_at, alarm.in_task
        (0.0, False)
    """

    __slots__ = ("alarm_at", "deadline", "in_task", "seconds")

    def __init__(self) -> None:
        self.in_task = False  # the task's own code is running: the limit may be raised
        self.seconds = math.inf  # the running task's soft limit, for the error message
        self.deadline = math.inf  # monotonic time the running task's soft limit ends
        self.alarm_at = 0.0  # monotonic time the armed SIGALRM fires; 0: none armed

    def __call__(self, soft: float) -> contextlib.AbstractContextManager[object]:
        """The block to run the task's code in, under a soft limit of ``soft`` seconds."""
        if soft >= _LONGEST_TIMER:  # UNBOUNDED, or too long to arm: it never fires
            return _NO_LIMIT
        self.seconds = soft
        return self

    def __enter__(self) -> None:
        now = time.monotonic()
        self.deadline = now + self.seconds
        # in_task before the check: an alarm firing in between re-arms for this task.
        self.in_task = True
        if self.alarm_at and self.alarm_at <= self.deadline:
            # The alarm armed for an earlier task is trusted only as the kernel still has
            # it: a task's code may have cancelled or replaced the timer (signal.alarm(0),
            # a timeout library's own SIGALRM); trusted blindly, no alarm came, and the
            # soft limit of every later task in the child was lost.
            left = signal.getitimer(signal.ITIMER_REAL)[0]
            if left and now + left <= self.alarm_at + _ALARM_SLACK:
                return
        self.alarm_at = self.deadline
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc_info: object) -> None:
        self.in_task = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGALRM: raise SoftTimeLimitExceeded if the running task's code is past its limit."""
        self.alarm_at = 0.0
        if not self.in_task:
            return  # not inside a task's code: an earlier task's alarm, or too late
        left = self.deadline - time.monotonic()
        if left > _ALARM_SLACK:  # armed for an earlier task: wait for this one's deadline
            self.alarm_at = self.deadline
            signal.setitimer(signal.ITIMER_REAL, left)
            return
        self.in_task = False  # once: the task's own cleanup is not interrupted again
        raise SoftTimeLimitExceeded(
            f"the task ran past its soft time limit ({self.seconds:g}s); it may catch "
            "SoftTimeLimitExceeded to clean up, or take a larger soft_time_limit"
        )


_NO_LIMIT = contextlib.nullcontext()


@contextlib.contextmanager
def thread_soft_limit(soft: float) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in this thread if the block runs longer than ``soft``."""
    if soft >= _LONGEST_TIMER:  # UNBOUNDED, or too long to arm: it never fires
        yield
        return
    thread_id, lock, armed = threading.get_ident(), threading.Lock(), [True]

    def fire() -> None:
        with lock:
            if armed[0]:
                _set_async_exc(thread_id, SoftTimeLimitExceeded)

    timer = threading.Timer(soft, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except SoftTimeLimitExceeded as exc:
        if exc.args == SoftTimeLimitExceeded().args:  # raised as a class: say the limit
            exc.args = (
                f"the task ran past its soft time limit ({soft:g}s); it may catch "
                "SoftTimeLimitExceeded to clean up, or take a larger soft_time_limit",
            )
        raise
    finally:
        with lock:
            armed[0] = False
        timer.cancel()
        _set_async_exc(thread_id, None)  # a limit that fired as the block ended must not land


def _set_async_exc(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in another thread at its next Python instruction (None: clear)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )
