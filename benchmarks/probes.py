"""What the benchmark's tasks call: count a completion, stamp a start (os, struct, time; redis
for a stamp).

Kept small on purpose: RQ's work horse imports the task module after every fork, so
whatever this module imports is paid per job there, and every worker's idle memory
includes what its task module imports. redis-py is imported by the first stamp: a
system whose worker does not load redis-py itself is not charged for the harness's.

A completion is counted by appending its time, 8 bytes, to a file that the driver names
(``BENCH_COUNTER_FILE``): one ``write`` system call, a few microseconds, so a no-op task
stays close to a no-op and the drain measures the task queue rather than the counter.
Appends with ``O_APPEND`` from many processes never overlap (Linux positions and writes
under the file's lock), so the file's size is the count. Until 2026-11-30 the counter was
a Redis ``INCR``: a round trip that cost ~200 us of CPU per task (worker and Redis), more
than celeriac's own handling of the task, the same for every system and hiding most of
the difference between them.

Times are ``time.monotonic()``: on Linux that is ``CLOCK_MONOTONIC``, one clock for every
process on the machine, so a time taken inside a worker can be subtracted from one taken
in the driver (and no NTP step can bend it).
"""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

#: Where latency probes stamp their start: a database of its own on the same private
#: server, so the stamps never mix with a system's keys (and FLUSHALL still clears them).
STAMPS_DB = 1
STAMPS_KEY = "bench:stamps"  # start times of latency probes, in order

#: One completion in the counter file: its time, a little-endian double.
RECORD = struct.Struct("<d")

_client: redis.Redis | None = None
_client_pid = 0
_file = -1
_file_pid = 0


def now() -> float:
    """The shared clock (see the module docstring)."""
    return time.monotonic()


def stamps_url(redis_url: str) -> str:
    """The URL of the stamps database on the server that ``redis_url`` names."""
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") >= 3 else redis_url
    return f"{base}/{STAMPS_DB}"


def _stamps() -> redis.Redis:
    """This process's stamps client, made anew after a fork (a socket is not shareable)."""
    global _client, _client_pid  # noqa: PLW0603 - one client per process, on purpose
    if _client is None or _client_pid != os.getpid():
        import redis  # here: see the module docstring

        _client = redis.Redis.from_url(os.environ["BENCH_STAMPS_URL"])
        _client_pid = os.getpid()
    return _client


def _counter_file() -> int:
    """This process's descriptor of the counter file, opened anew after a fork.

    A descriptor inherited through fork shares its file offset with the parent; each
    process opens its own so that nothing but the append itself is shared.
    """
    global _file, _file_pid  # noqa: PLW0603 - one descriptor per process, on purpose
    if _file_pid != os.getpid():
        _file = os.open(os.environ["BENCH_COUNTER_FILE"], os.O_WRONLY | os.O_APPEND)
        _file_pid = os.getpid()
    return _file


def task_done() -> None:
    """Count one finished task: append its completion time to the counter file.

    The same for every system: one ``write`` of 8 bytes, no network.
    """
    os.write(_counter_file(), RECORD.pack(time.monotonic()))


def completions(path: str) -> int:
    """How many tasks have counted themselves in the counter file at ``path``."""
    return os.stat(path).st_size // RECORD.size


def completion_times(path: str) -> list[float]:
    """The completion times in the counter file at ``path``, earliest first."""
    with open(path, "rb") as f:
        data = f.read()
    usable = len(data) - len(data) % RECORD.size
    return sorted(t for (t,) in RECORD.iter_unpack(data[:usable]))


def task_started() -> None:
    """Record that a latency probe started (its first line), with the shared clock."""
    _stamps().rpush(STAMPS_KEY, repr(now()))
