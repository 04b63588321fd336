"""The processes a worker child's tasks started (ffmpeg, a browser, a multiprocessing pool,
a shell pipeline), stopped with the child when it is killed.

A child killed with SIGKILL (its task past its hard time limit, revoked with terminate, a
cold shutdown) cannot clean up: a process its task started is reparented to init and runs
on, outside every worker's reach, for ever (``sleep 600`` stayed; a headless browser or a
transcoder stays until the host runs out of memory). So whoever kills a child first
freezes it and everything under it with SIGSTOP (a frozen process forks no more, so the
walk of the tree cannot miss a process started meanwhile), then kills them all.

The tree is found by parent links (``/proc``, through psutil), not by process group: a
child keeps the supervisor's group (the terminal's Ctrl-C and job control work as before),
and a helper started with ``start_new_session=True`` is still found. A process that left
the tree on purpose (a daemon's double fork, reparented to init) is not touched, nor is
multiprocessing's resource tracker, which cleans up after the child once it is gone.

A child that ends by itself (recycling, a warm shutdown) ends what its tasks left running
in the same way, more gently (SIGTERM, then SIGKILL after a grace): a browser a failed
task never closed, an ``ffmpeg`` started and never waited for, reparented to init once
the child exits, piled up with every recycle, outside what memory recycling can see.

psutil is imported by the functions that use it, which run only when a child is killed or
ends: at module level it was ~5 ms of every worker's start (before its first task) and
~0.8 MiB of every idle worker process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from celeriac.text import printable

if TYPE_CHECKING:
    import psutil

#: Walks of the tree after the first: each finds what the processes found in the walk
#: before forked before their SIGSTOP landed. A fork bomb is not stopped, only bounded.
_WALKS = 8
#: Seconds to wait for the root to be frozen before walking its tree: a process in an
#: uninterruptible wait (a disk read) stops when it comes back, and must not hold up a kill.
_FREEZE_WAIT = 0.2


class Started:
    """A process found under a child: its pid and name, taken while it was alive."""

    __slots__ = ("name", "pid", "process")

    def __init__(self, process: psutil.Process) -> None:
        import psutil

        self.process = process
        self.pid = process.pid
        try:
            self.name = printable(process.name())
        except psutil.Error:
            self.name = "?"

    def __str__(self) -> str:
        return f"{self.pid} ({self.name})"


def kill_tree(pid: int) -> list[Started]:
    """SIGKILL process ``pid`` and every process under it; return those under it.

    ``pid`` must be a child of the caller not yet reaped (``waitpid``), so that it is
    still the process the caller means; the others are signalled through psutil, which
    checks that a pid was not reused meanwhile.
    """
    _signal(pid, signal.SIGSTOP)
    _wait_frozen(pid)
    found = _freeze_under(pid)
    _signal(pid, signal.SIGKILL)
    _kill(found)
    return found


def kill_own_tree() -> list[Started]:
    """SIGKILL every process under this one (it cannot freeze itself; its other threads
    may still fork, so the tree is walked again after the kill)."""
    found = _freeze_under(os.getpid())
    _kill(found)
    known = {s.pid for s in found}  # killed but not reaped: still under this process
    late = [s for s in _freeze_under(os.getpid()) if s.pid not in known]
    _kill(late)
    return found + late


def end_leftovers(grace: float) -> list[Started]:
    """SIGTERM the processes still running under this one (what its tasks started and left
    behind), and SIGKILL those still there after ``grace`` seconds; return them.

    For a child that ends by itself (recycling, a warm shutdown): once it exits, nothing
    would ever stop them. Finished ones (zombies) are left to be reaped, and the resource
    tracker to clean up.
    """
    import psutil

    found: list[Started] = []
    with contextlib.suppress(psutil.Error):
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE and not _cleans_up_after(process):
                    found.append(Started(process))
    for started in found:
        with contextlib.suppress(psutil.Error):
            started.process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs([s.process for s in found], timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    return found


def words(found: list[Started]) -> str:
    """The processes killed with a child, for its log line ('' when none).

    Example:
        >>> words([])
        ''
    """
    if not found:
        return ""
    plural = "es" if len(found) > 1 else ""
    return f" and the {len(found)} process{plural} its tasks started ({listed(found)})"


def listed(found: list[Started]) -> str:
    """The first ten of ``found`` by pid and name, for a log line.

    Example:
        >>> listed([])
        ''
    """
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    return ", ".join(str(s) for s in found[:10]) + more


def _freeze_under(pid: int) -> list[Started]:
    """SIGSTOP every process under ``pid``, walking its tree until no new one appears."""
    import psutil

    found: dict[int, Started] = {}
    for _ in range(_WALKS):
        try:
            under = psutil.Process(pid).children(recursive=True)
        except psutil.Error:  # gone (a zombie has no children left to walk)
            break
        new = [p for p in under if p.pid not in found and not _cleans_up_after(p)]
        if not new:
            break
        for process in new:
            found[process.pid] = Started(process)
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGSTOP)
    return list(found.values())


def _cleans_up_after(process: psutil.Process) -> bool:
    """Whether ``process`` is multiprocessing's resource tracker: spared, it unlinks the
    shared memory and semaphores its task left once the child is gone (it waits for its
    pipe to close). Killed with the child, they stayed in /dev/shm until a reboot."""
    import psutil

    try:
        return any("multiprocessing.resource_tracker" in arg for arg in process.cmdline())
    except psutil.Error:
        return False


def _kill(found: list[Started]) -> None:
    import psutil

    for started in found:
        with contextlib.suppress(psutil.Error):
            started.process.send_signal(signal.SIGKILL)


def _wait_frozen(pid: int) -> None:
    import psutil

    deadline = time.monotonic() + _FREEZE_WAIT
    try:
        process = psutil.Process(pid)
        while process.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
    except psutil.Error:
        return


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def plain_signals_in_forks() -> None:
    """SIGTERM and SIGALRM at their defaults, and no wake-up fd, in a process a task
    forked from its worker child (multiprocessing's fork start method, ``os.fork()``);
    registered by the child with ``os.register_at_fork``.

    The copy inherited the child's handlers: ``Process.terminate()`` (SIGTERM) ran the
    child's warm-shutdown handler in the helper, which did not end (``join()`` waited for
    ever). It gave back the messages the child had prefetched, which the child ran all the
    same (twice), wrote the child's slot (shared memory) and, its parent not being the
    supervisor, renewed leases and heartbeated as an orphaned child. A signal it handled
    also wrote the child's own wake-up pipe (the threads child's, an asyncio loop's).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
