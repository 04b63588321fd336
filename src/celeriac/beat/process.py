"""The scheduler as a process of its own beside a worker (``worker --beat``): forked with
stop signals blocked across the fork, started again by the worker's supervisor when it
dies, stopped by PID (warm, then SIGKILL)."""

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


class SchedulerProcess:
    """The scheduler process of ``worker --beat``: kept alive while the worker runs.

    The worker's supervisor calls :meth:`check` on each pass. A scheduler that died (the
    OOM killer, a crash, a stray ``kill``) is started again: it left the worker running
    with no scheduler, said in one log line, and every periodic task stopped until someone
    restarted the worker. One that dies again within a minute of its start waits longer
    before the next, up to a minute: a crash loop must not fork many times a second.

    Example:
        >>> scheduler = SchedulerProcess(app)  # doctest: +SKIP
        >>> scheduler.start()  # doctest: +SKIP
        >>> scheduler.check()  # each supervisor pass  # doctest: +SKIP
        >>> scheduler.stop()  # doctest: +SKIP
    """

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self.pid = 0
        self._started = 0.0
        self._pause = _FIRST_PAUSE  # before the next start after a quick death
        self._restart_at: float | None = None

    def start(self) -> None:
        """Fork the scheduler process."""
        self.pid = fork_scheduler(self.app)
        self._started = time.monotonic()

    def check(self) -> None:
        """Start the scheduler again if it died, after a pause if it died young."""
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self._restart_at = None
                try:
                    self.start()
                except OSError as exc:  # no fork (EAGAIN, ENOMEM): not the worker's end
                    self._pause = min(self._pause * 2, _LONGEST_PAUSE)
                    log.error(
                        "beat: cannot start a scheduler process (%s); trying again in %.0fs",
                        exc,
                        self._pause,
                    )
                    self._restart_at = now + self._pause
            return
        if not self.pid:
            return
        try:
            done, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: gone all the same
            done, status = self.pid, 0
        if not done:
            return
        lived = now - self._started
        self._pause = _FIRST_PAUSE if lived > _YOUNG else min(self._pause * 2, _LONGEST_PAUSE)
        log.error(
            "beat: scheduler process %d ended (%s) after %.0fs; starting another in %.0fs "
            "(periodic tasks are not sent meanwhile, and no tick is sent twice)",
            self.pid,
            _how_it_ended(status),
            lived,
            self._pause,
        )
        self.pid = 0
        self._restart_at = now + self._pause

    def stop(self) -> None:
        """Stop the scheduler (warm, then SIGKILL), and start no other."""
        self._restart_at = None
        if self.pid:
            stop_scheduler(self.pid)
            self.pid = 0


_FIRST_PAUSE = 1.0  # seconds before starting a scheduler that died again
_LONGEST_PAUSE = 60.0
_YOUNG = 60.0  # seconds: a scheduler that dies younger than this is in a crash loop


def _how_it_ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
