"""Tasks the worker tests run in real worker processes.

Each execution appends a line to the ledger file named by $CELERIAC_TEST_LEDGER — outside
the broker under test — so tests can count executions exactly.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import psutil

from celeriac import Celeriac, Task

app = Celeriac("core-tests")


def record(phase: str, task_id: str, extra: Any = "") -> None:
    """Append one ledger line: phase, task id, pid, time, extra."""
    path = os.environ.get("CELERIAC_TEST_LEDGER")
    if not path:
        return
    line = f"{phase} {task_id} {os.getpid()} {time.time():.6f} {extra}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines from many processes never mix
    finally:
        os.close(fd)


@app.bound_task()
def add(self: Task[Any, Any], x: int, y: int) -> int:
    record("run", self.request.id)
    return x + y


@app.bound_task()
def work(self: Task[Any, Any], seconds: float, label: str = "") -> str:
    record("start", self.request.id, label)
    time.sleep(seconds)
    record("end", self.request.id, label)
    return label


@app.bound_task()
def slow_first_time(self: Task[Any, Any], seconds: float) -> int:
    record("start", self.request.id, self.request.delivery_count)
    if self.request.delivery_count == 1:
        time.sleep(seconds)
    return self.request.delivery_count


@app.bound_task(soft_time_limit=0.5, time_limit=5)
def cleans_up_after_soft_limit(self: Task[Any, Any]) -> str:
    try:
        time.sleep(3)
    except Exception as exc:  # noqa: BLE001 - the point: the task sees the soft limit
        record("cleanup", self.request.id, type(exc).__name__)
        return "cleaned up"
    return "not interrupted"


@app.task(soft_time_limit=10, time_limit=1)
def stuck() -> None:
    time.sleep(30)


@app.task
def crash() -> None:
    os._exit(3)  # like a segfault: the process vanishes mid-task


@app.bound_task(max_deliveries=2)
def dies(self: Task[Any, Any]) -> None:
    record("run", self.request.id, self.request.delivery_count)
    os._exit(3)  # at once: within the asyncio child's slot-flush interval


@app.bound_task()
def dies_after(self: Task[Any, Any], seconds: float) -> None:
    record("run", self.request.id, self.request.delivery_count)
    time.sleep(seconds)  # the tasks beside it in a threads or asyncio child are running
    os._exit(3)


@app.bound_task()
def dies_if(self: Task[Any, Any], die: bool, n: int) -> int:
    record("run", self.request.id, self.request.delivery_count)
    if die:  # a short task that now and then kills its process (a C extension's bug)
        os._exit(3)
    return n


@app.task
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@app.task
def echo_kwargs(a: int, b: int = 0) -> list[int]:
    return [a, b]


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


_leaked: list[bytearray] = []


@app.task
def leak(megabytes: int) -> int:
    """Keep a block of memory forever, like a cache that is never cleared."""
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page so it counts in RSS
    _leaked.append(block)
    return len(_leaked)


@app.bound_task(rate_limit="20/s")
def limited(self: Task[Any, Any], n: int) -> int:
    record("start", self.request.id, n)
    return n


@app.bound_task()
async def nap(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    await asyncio.sleep(seconds)
    record("end", self.request.id)
    return "rested"


@app.bound_task()
async def blocks_the_loop(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    time.sleep(seconds)
    return "blocked"


@app.bound_task(soft_time_limit=0.3, time_limit=10)
async def naps_too_long(self: Task[Any, Any]) -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        record("cleanup", self.request.id, "CancelledError")
        raise
    return "not interrupted"


@app.bound_task(soft_time_limit=0.3, time_limit=10)
def spins_too_long(self: Task[Any, Any]) -> str:
    deadline = time.time() + 5
    try:
        # Not `while time.time() < deadline`: Python 3.13 runs no handler of this try
        # for an exception raised while such a loop tests its condition (CPython #130279).
        while True:  # pure Python: the threads pool's soft limit lands here
            if time.time() >= deadline:
                break
    except Exception as exc:  # noqa: BLE001 - the point: the task sees the soft limit
        record("cleanup", self.request.id, type(exc).__name__)
        return "cleaned up"
    return "not interrupted"


@app.bound_task(soft_time_limit=0.3, time_limit=1)
def starts_helpers_and_hangs(self: Task[Any, Any]) -> None:
    """Start a shell that starts a sleep (ffmpeg, a browser...), then ignore the soft limit
    as a C call that never returns to Python would: only the hard limit ends it."""
    helper = subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not psutil.Process(helper.pid).children() and time.monotonic() < deadline:
        time.sleep(0.01)
    tree = [helper.pid, *(p.pid for p in psutil.Process(helper.pid).children())]
    record("helpers", self.request.id, ",".join(map(str, tree)))
    while True:
        try:
            time.sleep(30)
        except Exception:  # noqa: BLE001 - the point: the soft limit is ignored
            continue


@app.bound_task(soft_time_limit=0.3, time_limit=1)
def keeps_shared_memory(self: Task[Any, Any], name: str) -> None:
    """Create shared memory (its resource tracker unlinks it if this process dies) and
    ignore the soft limit: only the hard limit ends it."""
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(name=name, create=True, size=4096)
    record("shared", self.request.id, block.name)
    while True:
        try:
            time.sleep(30)
        except Exception:  # noqa: BLE001 - the point: the soft limit is ignored
            continue


@app.bound_task()
def leaves_a_helper(self: Task[Any, Any]) -> int:
    """Start a process and return without waiting for it (a browser never closed)."""
    helper = subprocess.Popen(["sleep", "600"])
    record("helpers", self.request.id, helper.pid)
    return helper.pid


@app.bound_task()
def forks_without_exit(self: Task[Any, Any]) -> int:
    """Fork and forget os._exit() in the copy: both processes return from the task."""
    copy = os.fork()
    record("forked", self.request.id, copy)  # the copy records 0
    return copy


@app.task
def daemonizes() -> None:
    """Start a process that outlives its parent shell (``cmd &``): an orphan at once."""
    subprocess.run(["sh", "-c", "sleep 0.2 &"], check=True)


@app.bound_task(max_deliveries=1)
def delivered_once(self: Task[Any, Any], seconds: float) -> int:
    """A task that may be handed out only once: a second delivery dead-letters it."""
    record("start", self.request.id, self.request.delivery_count)
    time.sleep(seconds)
    return self.request.delivery_count


@app.bound_task()
def prints(self: Task[Any, Any], text: str, end: str = "\n") -> None:
    """Print to the child's standard output, as tasks do (what ``kubectl logs`` shows)."""
    record("run", self.request.id)
    print(text, end=end)


@app.bound_task()
def waits_for_ready(self: Task[Any, Any], count: int, seconds: float) -> int:
    """Run until ``count`` messages wait ready in the default queue (at most ``seconds``),
    using the app's broker meanwhile (as a task calling ``.delay()`` does); record and
    return how many it saw."""
    record("start", self.request.id)
    deadline = time.monotonic() + seconds
    ready = 0
    while time.monotonic() < deadline:
        ready = sum(s.ready for s in app.broker.stats() if s.queue == "default")
        if ready >= count:
            break
        time.sleep(0.05)
    record("saw", self.request.id, ready)
    return ready
