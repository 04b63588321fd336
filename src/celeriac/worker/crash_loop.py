"""Whether a worker's children keep dying: what its ``ping`` answers to a liveness probe.

The supervisor answers ``ping`` itself, so a worker whose children died at every start (a
library set up in the supervisor that is not fork-safe, a C extension that segfaults, an
OOM-kill loop) answered "pong" while it ran nothing, and an orchestrator that probes it with
``celeriac ping -w HOST`` never restarted it. The supervisor already sees each death (it
reaps the child and starts another): it keeps the last few here, at no cost to the broker.

A worker is crash-looping when its last :data:`CRASH_LOOP_DEATHS` children died (or could
not be started: fork failed) within :data:`CRASH_LOOP_WINDOW` seconds, the latest of them
less than :data:`STILL_DYING` seconds ago, and it finished no task since the first of
them. One crash an hour ago, or children that die now and then while others work, is no
crash loop; a poison message that killed a few children is over once it is dead-lettered
(no death for :data:`STILL_DYING` seconds) or once the next task finishes.
"""

from __future__ import annotations

import time
from collections import Counter, deque

import msgspec

#: The exit code of a child that a middleware's ``on_child_start`` stopped before it took
#: a task (78, EX_CONFIG in sysexits.h); the child logged the hook's error.
EXIT_START_FAILED = 78

#: Children that died (or could not be started) in a row without a task finished...
CRASH_LOOP_DEATHS = 5
#: ... within this many seconds ...
CRASH_LOOP_WINDOW = 300.0
#: ... the latest less than this many seconds ago: a crash-looping place is given its next
#: child at most 5 s after the last one died (reaping's backoff), so a loop still going
#: has a death well within it; a loop that stopped (a poison message dead-lettered) is over.
STILL_DYING = 60.0


class Death(msgspec.Struct, frozen=True):
    """One child that died, or could not be started."""

    at: float  # time.monotonic()
    pid: int  # 0: fork failed
    how: str  # how it ended, in words (reaping's _how_it_ended)
    done: int  # tasks the worker had finished by then


class ChildDeaths:
    """The supervisor's last few child deaths, and what they say of its health.

    Example:
        >>> deaths = ChildDeaths()
        >>> for pid in range(100, 105):
        ...     deaths.note(pid, "exit code 1", done=7, now=10.0 + pid)
        >>> print(deaths.crash_loop(done=7, now=120.0))  # doctest: +NORMALIZE_WHITESPACE
        its children died 5 times in 4s and it finished no task since (all 5: exit code 1;
        the latest: child 104)
        >>> deaths.note(0, "fork failed ([Errno 11] Resource temporarily unavailable)", 7, 115.0)
        >>> print(deaths.crash_loop(done=7, now=120.0))  # doctest: +NORMALIZE_WHITESPACE
        its children died or could not be started 5 times in 4s and it finished no task
        since (4 x exit code 1; fork failed ([Errno 11] Resource temporarily unavailable);
        the latest: a child that could not be started)
        >>> deaths.crash_loop(done=8, now=120.0) is None  # a task finished since: it works
        True
        >>> deaths.crash_loop(done=7, now=200.0) is None  # none died for a minute: it ended
        True
    """

    def __init__(self) -> None:
        self._recent: deque[Death] = deque(maxlen=CRASH_LOOP_DEATHS)

    def note(self, pid: int, how: str, done: int, now: float | None = None) -> None:
        """Count a child that died (``pid``) or could not be started (``pid`` 0)."""
        at = time.monotonic() if now is None else now
        self._recent.append(Death(at, pid, how, done))

    def crash_loop(self, done: int, now: float | None = None) -> str | None:
        """What makes the worker crash-looping, in words (None when it is not), given the
        tasks it has ``done`` by now."""
        at = time.monotonic() if now is None else now
        if len(self._recent) < CRASH_LOOP_DEATHS:
            return None
        first, latest = self._recent[0], self._recent[-1]
        if at - first.at > CRASH_LOOP_WINDOW or at - latest.at > STILL_DYING:
            return None
        if done > first.done:
            return None  # a task finished meanwhile: children live long enough to work
        count = len(self._recent)
        hows = Counter(d.how for d in self._recent)
        last = f"child {latest.pid}" if latest.pid else "a child that could not be started"
        if len(hows) == 1:
            said = f"all {count}: {latest.how}; the latest: {last}"
        else:
            each = "; ".join(f"{n} x {how}" if n > 1 else how for how, n in hows.items())
            said = f"{each}; the latest: {last}" + (f", {latest.how}" if latest.pid else "")
        died = "died" if all(d.pid for d in self._recent) else "died or could not be started"
        return (
            f"its children {died} {count} times in {latest.at - first.at:.0f}s and it "
            f"finished no task since ({said})"
        )
