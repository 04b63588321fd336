"""Deterministic crash points for the torture tests (never enabled in production).

Set ``CELERIAC_CRASH_AT=<point>[:<n>]`` in a worker's environment and the process kills
itself with SIGKILL the n-th time (default: first) it reaches that point; with
``CELERIAC_CRASH_MARKER=<path>`` it does so only if that file does not exist yet, creating
it first, so a scenario crashes exactly once across restarts. With
``CELERIAC_CRASH_HOW=stop`` the process stops itself (SIGSTOP) instead: a frozen process
that still holds what it took. Without the variable each point costs one comparison of a
module constant with None.

Points: ``child_start`` (a worker child, before its first record: it holds nothing),
``idle`` (a worker child with nothing in hand, about to look for work),
``after_fetch`` (taken from the broker, not yet recorded in the slot),
``before_commit`` (task ran, result not stored), ``sent_ahead`` (a batch's commit sent,
its reply not read, while the child still holds tasks to run), ``after_commit`` (stored and
acked, not yet logged or continued), ``after_retry`` (retry stored; the original delivery is
released by the same atomic call), ``after_dead_letter``.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "child_start",
    "idle",
    "after_fetch",
    "before_commit",
    "sent_ahead",
    "after_commit",
    "after_retry",
    "after_dead_letter",
)

_spec = os.environ.get("CELERIAC_CRASH_AT")
ARMED: str | None = _spec.split(":", 1)[0] if _spec else None
_nth = int(_spec.split(":", 1)[1]) if _spec and ":" in _spec else 1
_hits = 0


def reached(point: str) -> None:
    """Crash here if the environment armed this point (callers check ARMED first).

    Example:
        >>> reached("before_commit")  # not armed: nothing happens
    """
    global _hits  # noqa: PLW0603 - a per-process counter is the point
    if point != ARMED:
        return
    _hits += 1
    if _hits < _nth:
        return
    marker = os.environ.get("CELERIAC_CRASH_MARKER")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # this scenario crashed already
        os.write(fd, f"{point} pid={os.getpid()}\n".encode())
        os.close(fd)
    stop = os.environ.get("CELERIAC_CRASH_HOW") == "stop"
    os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)
