"""The supervisor: the parent process of a worker.

It starts N children (each a full consumer), then loops a few times a second:

* reaps children that exited: the messages a dead child held go back to the queue at once
  (the running one counted as a delivery, prefetched ones not); a fresh child replaces it;
* a child whose task passed its hard time limit (or that runs a task revoked with
  terminate) is killed by a thread of its own (:mod:`celeriac.worker.hard_limits`, which no
  broker call holds up); the pass records a verdict for that task and hands its message
  back: the next delivery does not run it but settles it as FAILURE with
  ``TimeLimitExceeded`` (or REVOKED) through the middleware, so chains and chords carry
  on; then replaces the child;
* renews the leases of everything its children hold, every third of the lease;
* heartbeats for the host, and runs the broker's deterministic reaper for dead hosts.

Shutdown: the first SIGTERM/SIGINT/SIGHUP is warm (children finish their running task and give
back what they prefetched); a second, or SIGQUIT (Ctrl-\\), is cold (children are killed
and everything they held is given back at once). Either way nothing is lost.

Three parts live in their own modules, as mixins of :class:`Worker`: its broker duties
(heartbeats, lease renewal, the reaper, remote-control answers) in
:mod:`celeriac.worker.broker_duties`, what it does once a child has exited in
:mod:`celeriac.worker.reaping`, and the hard-limit watch in
:mod:`celeriac.worker.hard_limits`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from celeriac.brokers import redacted, shown
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.worker.broker_duties import BrokerDuties
from celeriac.worker.child import (
    STOP_PATIENCE,
    STOP_SIGNALS,
    ChildSpec,
    child_main,
    current_rss,
)
from celeriac.worker.crash_loop import ChildDeaths
from celeriac.worker.descendants import Started, kill_tree, words
from celeriac.worker.hard_limits import HardLimits
from celeriac.worker.memory import Ceiling, choose_ceiling, memory_limit
from celeriac.worker.outage import Outage
from celeriac.worker.output import line_buffered_stdout
from celeriac.worker.reaping import ChildState, Reaping
from celeriac.worker.remote import Remote
from celeriac.worker.slot import Held, Slot, SlotView
from celeriac.worker.stuck import (
    STUCK_AFTER_LEASES,
    StuckWatch,
    stuck_at_start_note,
    stuck_idle_note,
    stuck_note,
)

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

_TICK = 0.05  # seconds between supervisor checks
_TERM_AGAIN = 1.0  # seconds between SIGTERMs to an idle child a warm shutdown waits for
_ORPHANS_PER_PASS = 100  # orphans reaped per pass at most, as PID 1 (see _reap_orphans)
POOLS = ("process", "threads", "asyncio")


class Companion(Protocol):
    """A process kept alive beside the worker's children (``worker --beat``'s scheduler):
    its :meth:`check` runs on each supervisor pass until a shutdown begins."""

    pid: int  # its process (0: none now); the supervisor leaves it to :meth:`check` to reap

    def check(self) -> None:
        """Start the process again if it died."""


class Worker(Reaping, BrokerDuties, HardLimits):
    """A supervisor and its children.

    Example:
        >>> import tempfile
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker=f"sqlite:///{tempfile.mkdtemp()}/doc.db")
        >>> worker = Worker(app, queues=["default"], concurrency=2)
        >>> worker.concurrency
        2
    """

    def __init__(
        self,
        app: Celeriac,
        queues: list[str],
        concurrency: int,
        pool: str = "process",
        companions: Sequence[Companion] = (),
    ) -> None:
        if app.broker.in_process_only:
            raise ConfigurationError(
                f"broker {redacted(app.conf.broker_url)} lives inside one process, so worker "
                "processes cannot reach it. Use sqlite:///celeriac.db or redis://, or run "
                "queued tasks in-process with celeriac.testing.run_queued()."
            )
        app.broker.check_queue_names(queues)  # here, not in a crash loop of every child
        self.app = app
        self.queues = tuple(dict.fromkeys(queues))  # -Q a,a: each once (status, fetch order)
        if concurrency < 1:  # no consumer at all: a threads child would exit and respawn
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        if pool not in POOLS:
            raise ConfigurationError(f"unknown pool {pool!r}; use one of {', '.join(POOLS)}")
        self.pool = pool
        self.companions = tuple(companions)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # The process pool has one child per slot; the others run every slot in one child.
        processes = concurrency if pool == "process" else 1
        hands = 1 if pool == "process" else concurrency  # one per consumer of a child
        self._children = [ChildState(i, Slot(hands=hands)) for i in range(processes)]
        # Taken by the hard-limit watch (see .hard_limits) around each check and kill, and
        # by the main flow around a fork and a reap: a pid is never signalled once reaped,
        # and no fork happens while the watch holds a lock of its own (logging's).
        self._lifecycle = threading.Lock()
        self._terminate_seen: dict[str, float] = {}  # see HardLimits._child_may_cancel
        self._init = os.getpid() == 1  # orphans come to this process: see _reap_orphans
        self._watch_stop = threading.Event()
        self._stop_requests = 0
        self._said_failed: dict[str, float] = {}  # what _quietly said failed, and when
        # What a shutdown could not do for want of the broker, said once when it stops;
        # and whether the broker answered the shutdown's last call.
        self._unreached: list[str] = []
        self._unreached_why = ""
        self._reachable = True
        self._last_renew = self._last_beat = self._last_reap = 0.0
        self._last_notes, self._notes_said = time.time(), {}  # start-up said its own
        self._last_term = time.time()  # the last SIGTERM to idle children, see _tick_shutdown
        self._lost_before: set[tuple[str, str]] = set()
        # At most a second between tries: heartbeats and lease renewals must resume at once
        # when the broker is back, before another worker's reaper takes this one for dead.
        self._outage = Outage(first_delay=0.5, longest=1.0)
        self._started = time.time()
        self._done_before = 0
        self._growth_before: dict[str, list[int]] = {}
        self._deaths = ChildDeaths()  # whether its children keep dying: see .crash_loop
        self._stuck = StuckWatch(STUCK_AFTER_LEASES * app.conf.worker_lease_seconds)
        self.remote = Remote(app, self.id, self._answer)
        # The setting as it stands until run() fits it to the machine's memory.
        self._ceiling = Ceiling.of_setting(app.conf.worker_max_memory_per_child)

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Run until a shutdown signal; return the process exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGQUIT, self._on_signal)
        # A closed terminal (an SSH session dropped without nohup): warm, as SIGTERM. Its
        # default, death on the spot, left every running task held until lease expiry.
        signal.signal(signal.SIGHUP, self._on_signal)
        children = f"{len(self._children)} child{'ren' if len(self._children) > 1 else ''}"
        inside = {"threads": "threads", "asyncio": "coroutines"}.get(self.pool)
        log.info(
            "worker %s starting %s%s on queues %s (broker %s)",
            self.id,
            children,
            f" with {self.concurrency} {inside}" if inside else "",
            ", ".join(self.queues),
            shown(self.app.conf.broker_url),
        )
        if self._init:
            log.info(
                "worker %s runs as PID 1 (a container's first process, without --init): it "
                "reaps the orphaned processes the kernel hands it",
                self.id,
            )
        if not self._wait_for_broker():
            log.info("worker %s stopped before the broker could be reached", self.id)
            return 0
        _trim_heap()
        line_buffered_stdout()  # before any fork: what tasks print must not wait or be lost
        self._choose_memory_ceiling()
        watch = self._start_watching_limits()
        try:
            for child in self._children:
                self._spawn(child)
            while self._stop_requests == 0:
                self._tick()
                time.sleep(_TICK)
            self._shutdown()
        finally:
            self._watch_stop.set()
            watch.join()
        return 0

    def _wait_for_broker(self) -> bool:
        """Announce this worker, waiting for the broker as long as it takes; False when a
        shutdown signal came first.

        A worker that starts before its broker (a container restart, Redis still loading
        its data) connects when the broker comes, as it reconnects after an outage later;
        a broker refused for what it is (an evicting Redis) stops it at once instead.
        """
        outage = self._outage
        while self._stop_requests == 0:
            try:
                self._heartbeat()
            except BrokerError as exc:
                if outage.failed():
                    log.error(
                        "worker %s %s: %s It retries until the broker %s (Ctrl-C stops).",
                        self.id,
                        "cannot start: the broker refuses its calls"
                        if exc.answered
                        else "cannot reach the broker yet",
                        exc,
                        "accepts them" if exc.answered else "answers",
                    )
                while self._stop_requests == 0 and time.monotonic() < outage.retry_at:
                    time.sleep(_TICK)
                continue
            if outage.since:
                log.info(
                    "worker %s reached the broker after %.0fs; starting", self.id, outage.ended()
                )
            return True
        return False

    def _choose_memory_ceiling(self) -> None:
        """Choose the RSS ceiling its children recycle above, and say it once.

        Left at its default, worker_max_memory_per_child is fitted to the memory the
        container (or host) allows, so that every child can reach it before the kernel's
        OOM killer fires: 8 children under 1 GiB each in a 4 GiB container were killed,
        with their running tasks, long before any of them recycled. A value the user set
        is kept, with a warning when it cannot fit. Measured after _trim_heap: a child
        starts as a copy of this process, so this RSS is also a fresh child's size.
        """
        conf = self.app.conf
        name = "worker_max_memory_per_child"
        ceiling = choose_ceiling(
            conf.worker_max_memory_per_child,
            conf.was_set(name),
            memory_limit(),
            current_rss(),
            len(self._children),
        )
        self._ceiling = ceiling
        for level, line in ceiling.notes:
            log.log(level, "worker %s: %s", self.id, line)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGQUIT:  # Ctrl-\: cold at once, as a second SIGTERM is
            self._stop_requests = max(self._stop_requests, 1)
        self._stop_requests += 1
        # The children are told here, not after the pass in progress: a pass blocked on a
        # broker that hangs (a socket timeout, 30 s by default) delayed both kinds of stop.
        # _shutdown signals them again, which covers a child forked meanwhile.
        if self._stop_requests == 1:
            for child in self._children:
                if child.pid and _still_ours(child.pid):
                    _signal(child.pid, signal.SIGTERM)
            log.info("worker %s: warm shutdown — %s", self.id, self._warm_words())
        else:
            running = self._running()  # read before the kill, which may tear a slot
            started = [s for child in self._children for s in self._kill_cold(child)]
            log.warning(
                "worker %s: cold shutdown — killed its children%s%s; what they held goes "
                "back to the queue, and killed tasks run again",
                self.id,
                f" with {_tasks(running)}" if running else "",
                words(started),
            )

    def _kill_cold(self, child: ChildState) -> list[Started]:
        """Kill a child (and what its tasks started) for a cold shutdown, once; return the
        processes killed under it. Safe in a signal handler (see :func:`_still_ours`)."""
        if not child.pid or child.killed_cold or not _still_ours(child.pid):
            return []
        child.killed_cold = True
        return kill_tree(child.pid)

    def _warm_words(self) -> str:
        """What a warm shutdown waits for, and what the operator can do about it."""
        if not any(c.pid for c in self._children):
            return "no child is running yet."
        running = self._running()
        if not running:
            return "no task is running; prefetched messages go back to the queue."
        outage = (
            f" The broker is unreachable: a result not stored within {STOP_PATIENCE:g}s "
            "of the task's end is given up, and the task runs again once its lease expires."
            if self._outage.since
            else ""
        )
        return (
            f"waiting for {_tasks(running)} to finish; prefetched messages go back to the "
            f"queue.{outage} Send the signal again (or SIGQUIT) for a cold shutdown: running "
            "tasks are killed and run again later."
        )

    def _running(self) -> list[Held]:
        """The tasks its children run now: their slots, read again (a pass may be late
        while a broker call waits, and a task started since the last one is running)."""
        return [h for c in self._children if c.pid for h in c.slot.read().held if h.started]

    def _spawn(self, child: ChildState) -> None:
        child.slot.clear()
        child.last_view = SlotView([], 0)
        child.killed_for = None
        child.killed_cold = False
        inside = 1 if self.pool == "process" else self.concurrency
        child.generation += 1
        child.consumer = f"{self.id}/{child.index}.{child.generation}"
        # Alive in the broker before it can hold anything, so no reaper takes its work.
        self._quietly(
            functools.partial(self._beat_child, child, 0, self._child_ttl()),
            "announce a new child",
        )
        spec = ChildSpec(
            self.id,
            self.queues,
            child.index,
            self.pool,
            inside,
            child.consumer,
            os.getpid(),
            self._ceiling,
        )
        # Stop signals blocked across fork: the child unblocks them once its own handlers
        # are installed (child_main), so none lands on the supervisor's handler in it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        failed: OSError | None = None
        try:
            with self._lifecycle, warnings.catch_warnings():
                # Python 3.12+ warns of fork() beside another thread: the hard-limit watch
                # holds no lock while this one is taken, so the child inherits none held.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
                if pid == 0:
                    child_main(self.app, spec, child.slot)  # never returns
                child.pid, child.started, child.fork_failures = pid, time.time(), 0
        except OSError as exc:  # a process limit, or no memory: tried again later
            failed = exc
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # the parent, right after fork
        if failed is not None:
            self._could_not_fork(child, failed)

    def _reap_orphans(self) -> None:
        """As PID 1, reap the orphans the kernel hands this process; a few per pass.

        A worker run as a container's first process (``docker run`` without ``--init``,
        an exec-form CMD) is the init of its PID namespace: every process orphaned in it
        is reparented to the supervisor, which waited only for its own children. The
        processes killed with a child at a hard limit, and what tasks daemonized (``sh -c
        "cmd &"``), stayed zombies for as long as the worker ran, each holding a pid,
        until the container's pid limit made every fork fail. Its own children and its
        companions (``--beat``) are left to their own code, which needs their status.
        """
        if not self._init:
            return
        ours = {c.pid for c in self._children} | {c.pid for c in self.companions}
        for _ in range(_ORPHANS_PER_PASS):
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # no child at all
                return
            if found is None or found.si_pid in ours:
                return  # none has ended, or one of ours first: reaped by its own code
            with contextlib.suppress(ChildProcessError):
                os.waitpid(found.si_pid, os.WNOHANG)

    def _keep_alive(self) -> None:
        """Start the children whose crash-loop pause is over, and the companions that died."""
        for child in self._children:
            if not child.pid and child.respawn_at and time.monotonic() >= child.respawn_at:
                child.respawn_at = 0.0
                if self._stop_requests == 0:
                    self._spawn(child)
        for companion in self.companions:
            if self._stop_requests == 0:  # a stop signal may have come during this pass
                companion.check()

    def _kill_stuck_children(self) -> None:
        """SIGKILL each child stuck on messages it does not start, before it began to
        consume, or between tasks (see :mod:`celeriac.worker.stuck`); the reaping that
        follows puts back what it held."""
        self._stuck.keep_only({c.pid for c in self._children if c.pid})
        for child in self._children:
            view = child.last_view
            waited = self._stuck.stuck_for(
                child.pid, view.held, time.monotonic(), written=view.written, beats=view.beats
            )
            if waited is not None:  # never for a place without a child (pid 0)
                if not view.written:
                    log.error("%s", stuck_at_start_note(child.pid, waited))
                elif view.held:
                    log.error("%s", stuck_note(child.pid, view.held, waited))
                else:
                    log.error("%s", stuck_idle_note(child.pid, waited))
                self._stuck.forget(child.pid)
                with self._lifecycle:
                    if child.pid:
                        _signal(child.pid, signal.SIGKILL)

    def _tick(self) -> None:
        now = time.time()
        for child in self._children:
            child.last_view = child.slot.read()
        if self._outage.since:  # its children wait on the broker too: not stuck
            self._stuck.reset()
        else:
            self._kill_stuck_children()
        self._reap_children()
        self._keep_alive()
        self._reap_orphans()
        outage = self._outage
        tried = time.monotonic()
        if tried >= outage.retry_at:
            try:
                self._broker_duties(now)
            except BrokerError as exc:
                first = not outage.since
                # From the start of the call that failed: a broker that hangs fails a
                # socket timeout (30 s) later, and "answers again after 1s" hid that.
                if outage.failed(began=tried):
                    down = time.monotonic() - outage.since
                    log.error(
                        "worker %s %s (%s); it retries with backoff, running tasks carry "
                        "on, and their commits wait for the broker",
                        self.id,
                        _outage_words(exc, first=first, down=down),
                        exc,
                    )
            else:
                if outage.since:
                    down = outage.ended()
                    log.info("worker %s: the broker answers again after %.0fs", self.id, down)
        if self.remote.shutdown_requested and self._stop_requests == 0:
            self._stop_requests = 1

    def _quietly(self, action: Callable[[], object], what: str, *, periodic: bool = False) -> None:
        """Run a broker call whose failure must not stop the supervisor; say so once.

        ``what`` names it for a person ("renew the leases of running tasks"). The same
        failure is said again only after Outage.REPEAT seconds: with the broker down, a
        line per pass (several a second) buried everything else.

        During a shutdown, a call that is not ``periodic`` (the heartbeats and renewals
        that go on while running tasks finish) is a last one, never tried again: its
        failure is kept for the summary that :meth:`_shutdown` logs, and it is skipped
        while the shutdown's previous call failed. A broker that hangs instead of refusing
        (a stopped process, a lost network) costs a socket timeout per call, 30 s by
        default, and what they would hand back is delivered again when its lease expires.
        """
        stopping = self._stop_requests > 0
        last = stopping and not periodic
        if last and not self._reachable:
            self._unreached.append(what)
            return
        try:
            action()
        except BrokerError as exc:
            if stopping:
                self._reachable, self._unreached_why = False, str(exc)
            if last:
                self._unreached.append(what)
                return
            now = time.monotonic()
            if now - self._said_failed.get(what, -math.inf) < Outage.REPEAT:
                return
            self._said_failed[what] = now
            log.error(
                "worker %s could not %s (%s); it is tried again on the next pass, and any "
                "message it was settling is delivered again when its lease expires",
                self.id,
                what,
                exc,
            )
        else:
            if stopping:
                self._reachable = True

    # -- shutdown -----------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._outage.since:
            self._reachable = False
            down = time.monotonic() - self._outage.since
            self._unreached_why = f"it had not answered for {down:.0f}s"
        live = [c for c in self._children if c.pid]
        for child in live:
            _signal(child.pid, signal.SIGTERM)
        self._last_term = time.time()
        while any(c.pid for c in self._children):
            if self._stop_requests > 1:
                # A child forked while the handler ran, or one it found already reaped.
                started = [s for child in self._children for s in self._kill_cold(child)]
                if started:
                    log.warning(
                        "worker %s: cold shutdown — killed a child%s", self.id, words(started)
                    )
            self._tick_shutdown()
            time.sleep(_TICK)
        for child in self._children:
            self._quietly(
                functools.partial(self.app.broker.forget_worker, child.consumer),
                "remove a child from the live workers",
            )
        self._quietly(
            functools.partial(self.app.broker.forget_worker, self.id),
            "remove this worker from the live workers",
        )
        self._say_stopped()

    def _say_stopped(self) -> None:
        """The last line: stopped, and what became of the work when the broker was away."""
        if not self._unreached:
            log.info("worker %s stopped", self.id)
            return
        prefix = "put back task "
        put_back = [w.removeprefix(prefix) for w in self._unreached if w.startswith(prefix)]
        log.error(
            "worker %s stopped without reaching the broker (%s).%s Every message this "
            "worker still held stays in the broker and is delivered again once its lease "
            "(%gs) or its holder's heartbeat (%gs) has run out, so soon after the broker is "
            "back; a task that ran but whose result could not be stored runs again. Until "
            "then `celeriac status` may still list this worker.",
            self.id,
            self._unreached_why.rstrip("."),
            f" It could not put back {', '.join(put_back)}." if put_back else "",
            self.app.conf.worker_lease_seconds,
            self._child_ttl(),
        )

    def _tick_shutdown(self) -> None:
        now, conf = time.time(), self.app.conf
        again = self._stop_requests == 1 and now - self._last_term >= _TERM_AGAIN
        if again:
            self._last_term = now
        for child in self._children:
            view = child.slot.read()
            if child.pid:
                child.last_view = view
                # A task past its hard limit, or revoked with terminate, must not hold
                # the shutdown hostage: the hard-limit watch goes on until the end.
                if again and not any(h.started for h in view.held):
                    # Still there with no task running: its SIGTERM may have come while
                    # a task ignored it (signal.signal in the task; the child puts its
                    # handler back after the task), and the shutdown waited for ever. Not
                    # sent while a task runs: it is the task's time, and a signal can
                    # break a C library's blocking call (EINTR).
                    _signal(child.pid, signal.SIGTERM)
        self._reap_children()
        self._reap_orphans()
        if not any(c.pid for c in self._children):
            return  # nothing left to keep alive: no call (it may hang) before the last ones
        # Running tasks are still ours while they finish: keep their leases, and their
        # children alive. While the broker does not answer, one call per pass: one that
        # hangs costs a socket timeout, and children that exit meanwhile wait to be reaped.
        if now - self._last_renew >= conf.worker_lease_seconds / 3:
            self._last_renew = now
            self._quietly(self._renew_leases, "renew the leases of running tasks", periodic=True)
            if not self._reachable:
                return
        if now - self._last_beat >= conf.worker_heartbeat_seconds:
            self._last_beat = now
            self._quietly(self._heartbeat, "send its heartbeat", periodic=True)
            if not self._reachable:
                return
        if self._reachable:  # poll never raises (it backs off and logs by itself)
            self.remote.poll()


def _outage_words(exc: BrokerError, *, first: bool, down: float) -> str:
    """What the supervisor says of a broker call that failed: a broker that answered with a
    refusal (a rotated password, an ACL, BUSY) is not one it "cannot reach".

    Example: ``_outage_words(BrokerError("x"), first=True, down=31)`` is "cannot reach the
    broker: a call waited 31s".
    """
    if exc.answered:
        return (
            "finds the broker refusing its calls"
            if first
            else (f"still finds the broker refusing its calls after {down:.0f}s")
        )
    if not first:
        return f"still cannot reach the broker after {down:.0f}s"
    return "cannot reach the broker" + (f": a call waited {down:.0f}s" if down >= 1 else "")


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the OS before the first fork.

    Start-up (imports, compiling modules) leaves free chunks in glibc's heap that it keeps;
    every forked child would inherit them as resident memory. ``malloc_trim(0)`` releases
    them: ~0.8 MiB of RSS less in the supervisor and in each child, measured. Skipped where
    the C library has no ``malloc_trim`` (musl, macOS).
    """
    import ctypes  # only this start-up step needs it (the child module loads it anyway)

    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)


def _tasks(running: list[Held]) -> str:
    """Running tasks in words, the first five named.

    Example:
        >>> _tasks([Held("id1", "q", "t", "shop.send_email", started=1.0)])
        '1 running task (shop.send_email[id1])'
    """
    names = ", ".join(h.label for h in running[:5])
    more = f" and {len(running) - 5} more" if len(running) > 5 else ""
    return f"{len(running)} running task{'s' if len(running) > 1 else ''} ({names}{more})"


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _still_ours(pid: int) -> bool:
    """Whether a child may be signalled from a signal handler, which may run between the
    main flow's ``waitpid`` and its forgetting the pid: a pid already reaped may be another
    process's by now. Only this thread reaps, so a child still waitable here is still ours."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True
