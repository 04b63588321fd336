"""The overrun watch's thread (celeriac.worker.overrun): there while a child runs batches,
gone when it is idle."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a process of its own: the test process has threads of its own that come and go.
_SCRIPT = textwrap.dedent(
    """
    import os, time
    from celeriac.worker.overrun import OverrunWatch

    def threads():
        return len(os.listdir("/proc/self/task"))

    def settle(expected):
        deadline = time.monotonic() + 10
        while threads() != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return threads()

    alone = threads()
    freed = []
    watch = OverrunWatch(freed.append, after=0.05, tick=0.01, idle_end=0.2)
    watch.arm(0)
    running = settle(alone + 1)
    time.sleep(0.1)  # past `after`: freed once
    watch.disarm(0, lambda: None)
    ended = settle(alone)
    watch.arm(1)  # the next batch starts it again
    again = settle(alone + 1)
    watch.disarm(1, lambda: None)
    print(alone, running, ended, again, settle(alone), freed)
    """
)


def test_the_watch_thread_ends_when_nothing_is_watched_and_starts_again() -> None:
    # It woke every 50 ms for a batching child's whole life, idle or not, and a task that
    # forked (os.fork warns in a process with threads, from Python 3.12) always met it.
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split(maxsplit=5)
    alone, running, ended, again, last = map(int, out[:5])
    assert (running, ended, again, last) == (alone + 1, alone, alone + 1, alone), out
    assert out[5].strip() == "[0]"  # the first task overran; the second ended in time
