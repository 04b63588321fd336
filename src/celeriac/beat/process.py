"""The scheduler as a process of its own beside a worker (``worker --beat``): forked with
stop signals blocked across the fork, stopped by PID (warm, then SIGKILL)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from celeriac.beat.scheduler import Scheduler

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.beat")


def fork_scheduler(app: Celeriac) -> int:
    """Start a scheduler in a forked child process and return its PID (``worker --beat``).

    The child stops on SIGTERM/SIGINT, and by itself when its parent is gone.

    Example:
        >>> pid = fork_scheduler(app)  # doctest: +SKIP
        >>> stop_scheduler(pid)  # doctest: +SKIP
        0
    """
    # Open the broker first: a new SQLite file must not be created by two processes at once.
    _ = app.broker
    parent = os.getpid()
    # Stop signals blocked across fork, as for worker children: one that came before the
    # child's handlers were installed killed it by the default action (exit code -15), or
    # ran the parent's handler in it.
    stops = {signal.SIGTERM, signal.SIGINT}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        pid = os.fork()
        if pid == 0:  # the child: schedule, then leave without running the parent's cleanup
            code = 1
            try:
                scheduler = Scheduler(app, parent_pid=parent)
                for signum in stops:
                    signal.signal(signum, scheduler._on_signal)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                code = scheduler.run()
            except BaseException:  # the child must always reach os._exit, whatever happened
                log.exception("beat: scheduler crashed")
            finally:
                os._exit(code)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the parent, right after fork
    log.info("beat: started scheduler process %d", pid)
    return pid


def stop_scheduler(pid: int, timeout: float = 10.0) -> int | None:
    """Stop a scheduler process started by :func:`fork_scheduler`, by PID; its exit code.

    SIGTERM first (warm), SIGKILL after ``timeout`` seconds. None if it was already reaped.

    Example:
        >>> stop_scheduler(fork_scheduler(app))  # doctest: +SKIP
        0
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            log.warning(
                "beat: scheduler process %d did not stop in %.0fs; killing it", pid, timeout
            )
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.02)
