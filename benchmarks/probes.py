"""What the benchmark's tasks call: count a completion, stamp a start (os, time, redis only).

Kept small on purpose: RQ's work horse imports the task module after every fork, so
whatever this module imports is paid per job there.

Times are ``time.monotonic()``: on Linux that is ``CLOCK_MONOTONIC``, one clock for every
process on the machine, so a time taken inside a worker can be subtracted from one taken
in the driver (and no NTP step can bend it).
"""

from __future__ import annotations

import os
import time

import redis

#: Where the tasks count and stamp: a database of its own on the same private server, so
#: the counters never mix with a system's keys (and FLUSHALL still clears them).
COUNTER_DB = 1

COUNT_KEY = "bench:count"  # INCR'd by every counted task
FIRST_KEY = "bench:first"  # monotonic time of the first counted completion
LAST_KEY = "bench:last"  # monotonic time of the completion that reached the target
DONE_KEY = "bench:done"  # a list the driver BLPOPs: pushed once the target is reached
STAMPS_KEY = "bench:stamps"  # start times of latency probes, in order

_client: redis.Redis | None = None
_client_pid = 0
_target = 0


def now() -> float:
    """The shared clock (see the module docstring)."""
    return time.monotonic()


def counter_url(redis_url: str) -> str:
    """The URL of the counter database on the server that ``redis_url`` names."""
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") >= 3 else redis_url
    return f"{base}/{COUNTER_DB}"


def _counter() -> redis.Redis:
    """This process's counter client, made anew after a fork (a socket is not shareable)."""
    global _client, _client_pid, _target  # noqa: PLW0603 - one client per process, on purpose
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
        _client_pid = os.getpid()
        _target = int(os.environ.get("BENCH_TARGET", "0"))
    return _client


def task_done() -> None:
    """Count one finished task; the task that reaches the target records the time.

    One INCR per task, the same for every system. The first and the last completion are
    stamped with the shared clock so the driver can tell start-up from steady state.
    """
    client = _counter()
    count = client.incr(COUNT_KEY)
    stamp = repr(now())
    if count == 1:
        client.set(FIRST_KEY, stamp)
    if count == _target:
        client.set(LAST_KEY, stamp)
        client.rpush(DONE_KEY, stamp)


def task_started() -> None:
    """Record that a latency probe started (its first line), with the shared clock."""
    _counter().rpush(STAMPS_KEY, repr(now()))
