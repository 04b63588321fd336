"""A child that holds messages and starts none of them: stuck.

A child runs the first message it fetched within microseconds, and lists it in its slot
as started (:mod:`celeriac.worker.slot`). One whose slot lists the same messages, none
started, for three leases is not working: it was stopped (SIGSTOP, a debugger, a frozen
cgroup) or is deadlocked outside any task (a lock that a fork copied while another thread
held it). Its supervisor went on renewing every lease in its slot, so those messages
waited for ever while ``celeriac ping`` said the worker was healthy; hard limits only
watch tasks that started. The supervisor now kills such a child: its messages go back to
the queue (the one it had in hand counted as a delivery, as for any child that dies) and
a fresh child takes its place.

A child also writes a first record, empty, before its first fetch, within milliseconds of
its start. One that has written none for as long is stuck the same way before it could
consume: it holds nothing, but the worker ran one child short while ``ping`` said pong.
It is killed too, and replaced.

A child with nothing in hand changes its slot's *beat* every time it goes round its loop:
before each fetch, which waits half a second at most, and while it waits out a broker
outage. One whose beat stands still for three leases (ten seconds at least: longer than a
child takes to exit once it stops looping) stopped or deadlocked between tasks, in an
``on_idle`` hook or a lock that a fork copied while another thread held it. It holds
nothing, but the worker ran one child short while ``ping`` said pong; it is killed too.
"""

from __future__ import annotations

from celeriac.worker.reading import shown
from celeriac.worker.slot import Held

#: Leases a child may hold the same unstarted messages for before it counts as stuck. Over
#: the longest a healthy child waits with messages unstarted: a settle retried through a
#: broker outage gives up after one lease, plus a call's socket timeout.
STUCK_AFTER_LEASES = 3.0
#: Seconds at least that an idle child's beat may stand still: over a child's own exit once
#: it left its loop (``STOP_PATIENCE`` and ``LEFTOVER_GRACE`` in celeriac.worker.child, 5 s).
IDLE_AFTER_AT_LEAST = 10.0

#: What a child's slot showed: the unstarted messages it listed, its beat when it listed
#: none, or None before its first record.
_Shown = frozenset[tuple[str, str]] | int | None


class StuckWatch:
    """Remembers, per child process, since when its slot has shown the same: the same
    unstarted messages and nothing started, no record at all, or nothing held and the
    same beat.

    Example:
        >>> watch = StuckWatch(after=60.0)
        >>> held = [Held("t1", "default", "7")]
        >>> watch.stuck_for(4242, held, now=100.0) is None  # first seen
        True
        >>> watch.stuck_for(4242, held, now=170.0)  # the same, 70 s later
        70.0
        >>> watch.stuck_for(4242, [Held("t1", "default", "7", "shop.add", 1.0)], now=171.0)
        >>> watch.stuck_for(4343, [], now=100.0, written=False)  # no record yet: counted
        >>> watch.stuck_for(4343, [], now=160.0, written=False)
        60.0
        >>> watch.stuck_for(4444, [], now=100.0, beats=7)  # idle
        >>> watch.stuck_for(4444, [], now=130.0, beats=8)  # it went round: counted anew
        >>> watch.stuck_for(4444, [], now=195.0, beats=8)
        65.0
    """

    def __init__(self, after: float) -> None:
        self.after = after
        self.idle_after = max(after, IDLE_AFTER_AT_LEAST)
        # pid -> what its slot showed, and since when
        self._since: dict[int, tuple[_Shown, float]] = {}

    def stuck_for(
        self, pid: int, held: list[Held], now: float, *, written: bool = True, beats: int = 0
    ) -> float | None:
        """Seconds child ``pid`` has listed ``held`` unchanged with none started, or has
        not ``written`` a record at all, once that is at least ``after``; or has held
        nothing with its ``beats`` unchanged, once that is at least ``idle_after``. None
        otherwise (and for pid 0: no child). ``now``: a monotonic clock."""
        if not pid or any(h.started for h in held):
            self._since.pop(pid, None)
            return None
        shown: _Shown = None
        if written:
            shown = frozenset((h.id, h.token) for h in held) if held else beats
        seen = self._since.get(pid)
        if seen is None or seen[0] != shown:
            self._since[pid] = (shown, now)
            return None
        waited = now - seen[1]
        after = self.idle_after if isinstance(shown, int) else self.after
        return waited if waited >= after else None

    def forget(self, pid: int) -> None:
        """Drop what is known of ``pid`` (the child is gone)."""
        self._since.pop(pid, None)

    def keep_only(self, pids: set[int]) -> None:
        """Drop what is known of children not in ``pids`` (they died meanwhile).

        Example:
            >>> watch = StuckWatch(after=60.0)
            >>> _ = watch.stuck_for(4242, [Held("t1", "default", "7")], now=100.0)
            >>> watch.keep_only({4343})
            >>> watch.stuck_for(4242, [Held("t1", "default", "7")], now=170.0) is None
            True
        """
        for pid in self._since.keys() - pids:
            del self._since[pid]

    def reset(self) -> None:
        """Start every count again: the broker does not answer the supervisor, so its
        children wait on it too, and that is not being stuck.

        Example:
            >>> watch = StuckWatch(after=60.0)
            >>> held = [Held("t1", "default", "7")]
            >>> watch.stuck_for(4242, held, now=100.0)
            >>> watch.reset()
            >>> watch.stuck_for(4242, held, now=170.0) is None  # counted from here
            True
        """
        self._since.clear()


def stuck_note(pid: int, held: list[Held], waited: float) -> str:
    """The supervisor's log line for a stuck child it kills.

    Example:
        >>> print(stuck_note(4242, [Held("t1", "default", "7")], 61.0))  # doctest: +ELLIPSIS
        worker child 4242 has held 1 message(s) for 61s without starting any (t1): ...
    """
    ids = ", ".join(shown(h.id) for h in held[:3]) + (", ..." if len(held) > 3 else "")
    return (
        f"worker child {pid} has held {len(held)} message(s) for {waited:.0f}s without "
        f"starting any ({ids}): it is stopped (SIGSTOP, a debugger, a frozen cgroup) or "
        "deadlocked outside a task, and its supervisor renewed their leases all the while. "
        "Killing it: the messages go back to the queue and a new child starts. If this "
        "repeats, look for a library that is not fork-safe (py-spy dump --pid PID of the "
        "next stuck child shows where it waits)"
    )


def stuck_idle_note(pid: int, waited: float) -> str:
    """The supervisor's log line for a child it kills that stopped going round its loop
    with nothing in hand.

    Example:
        >>> print(stuck_idle_note(4242, 91.0))  # doctest: +ELLIPSIS
        worker child 4242 has not looked for work for 91s, with nothing in hand: ...
    """
    return (
        f"worker child {pid} has not looked for work for {waited:.0f}s, with nothing in "
        "hand: it is stopped (SIGSTOP, a debugger, a frozen cgroup) or deadlocked between "
        "tasks (an on_idle middleware hook that never returns, a lock that a fork copied "
        "while another thread held it), and the worker ran one child short all the while. "
        "Killing it (it holds no messages); a new child starts. If this repeats, py-spy "
        "dump --pid PID of the next stuck child shows where it waits"
    )


def stuck_at_start_note(pid: int, waited: float) -> str:
    """The supervisor's log line for a child it kills that never began to consume.

    Example:
        >>> print(stuck_at_start_note(4242, 91.0))  # doctest: +ELLIPSIS
        worker child 4242 has not begun to consume 91s after it started: ...
    """
    return (
        f"worker child {pid} has not begun to consume {waited:.0f}s after it started: it is "
        "stopped (SIGSTOP, a debugger, a frozen cgroup), deadlocked before its first "
        "fetch, or still in a middleware's on_child_start (a connect with no timeout), and "
        "the worker ran one child short all the while. Killing it (it holds no "
        "messages); a new child starts. If this repeats, look for a library that is not "
        "fork-safe, such as a thread started when your tasks' module is imported (py-spy "
        "dump --pid PID of the next stuck child shows where it waits)"
    )
