"""Tasks and a middleware for the worker's edge cases: soft limits next to slow hooks,
tasks that raise SystemExit, results that cannot be encoded, async tasks past their soft
limit, and a stop signal in a fresh child's first instant.

Executions are appended to the ledger named by $CELERIAC_TEST_LEDGER (tests.apps.core's
``record``). The environment switches the hooks on, only in the worker processes:

* ``CELERIAC_TEST_SLOW_HOOKS=<seconds>``: every before_execute and after_execute hook of
  :class:`SlowHooks` sleeps that long (a slow broker under STARTED tracking or Canvas).
* ``CELERIAC_TEST_TERM_AT_FORK=<marker path>``: the first forked child sends itself
  SIGTERM right after fork (as a supervisor's warm shutdown can, in that instant).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from celeriac import Celeriac, SoftTimeLimitExceeded, Task
from celeriac.middleware import Job, Middleware, Outcome, default_middleware
from tests.apps.core import record


class SlowHooks(Middleware):
    """Hooks that take longer than the tasks' soft limits; each records how it ended."""

    def before_execute(self, job: Job) -> Outcome | None:
        self._take_time(job, "before")
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        self._take_time(job, "after")
        first = job.delivery.deliveries == 1
        if first and job.message and job.message.task.endswith("breaks_its_child"):
            raise SystemExit("a hook took the child down")  # celeriac's code, not the task's
        return outcome

    def _take_time(self, job: Job, hook: str) -> None:
        seconds = float(os.environ.get("CELERIAC_TEST_SLOW_HOOKS", "0"))
        if not seconds:
            return
        try:
            time.sleep(seconds)
        except BaseException as exc:
            record("hook-interrupted", job.delivery.id, f"{hook}:{type(exc).__name__}")
            raise
        record("hook-done", job.delivery.id, hook)


# After the defaults: its after_execute runs before Canvas continues a workflow.
app = Celeriac("edges-tests", middleware=[*default_middleware(), SlowHooks()])


def _term_at_fork() -> None:
    marker = os.environ.get("CELERIAC_TEST_TERM_AT_FORK")
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # only the first child
    os.close(fd)
    record("forked", "-", os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


os.register_at_fork(after_in_child=_term_at_fork)


@app.bound_task(soft_time_limit=0.1, time_limit=10)
def quick(self: Task[Any, Any]) -> str:
    record("run", self.request.id)
    return "quick"


@app.bound_task()
def add(self: Task[Any, Any], x: int, y: int) -> int:
    record("run", self.request.id)
    return x + y


@app.bound_task(soft_time_limit=0.1, time_limit=10)
def sleeps(self: Task[Any, Any], seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cut short"
    return "slept"


@app.bound_task()
def exits(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    sys.exit(3)


@app.bound_task()
def interrupts(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    raise KeyboardInterrupt


class OwnBaseException(BaseException):
    """A library's own BaseException (as gevent's GreenletExit or trio's Cancelled)."""


async def _cancelled_inside() -> None:
    waiting = asyncio.ensure_future(asyncio.sleep(10))
    await asyncio.sleep(0)
    waiting.cancel()
    await waiting


@app.bound_task()
def cancelled(self: Task[Any, Any]) -> None:
    """A plain task whose asyncio.run() raises asyncio.CancelledError, a BaseException."""
    record("run", self.request.id)
    asyncio.run(_cancelled_inside())


@app.bound_task()
async def cancels_itself(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    raise asyncio.CancelledError


@app.bound_task()
def raises_base_exception(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    raise OwnBaseException("from a library")


@app.bound_task()
def closes_stderr(self: Task[Any, Any]) -> str:
    """Closes ``sys.stderr``, as a library daemonizing itself may."""
    sys.stderr.close()
    record("run", self.request.id)
    return "closed"


@app.bound_task()
def ignores_sigterm(self: Task[Any, Any], seconds: float) -> str:
    """Ignores SIGTERM from then on (as a library may), and takes ``seconds``."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record("run", self.request.id)
    time.sleep(seconds)
    return "slept"


@app.bound_task()
async def ignores_sigterm_async(self: Task[Any, Any], seconds: float) -> str:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record("run", self.request.id)
    await asyncio.sleep(seconds)
    return "slept"


@app.bound_task(soft_time_limit=1, time_limit=10)
def times_itself_with_sigalrm(self: Task[Any, Any]) -> str:
    """Times a block with a SIGALRM timer of its own, cancelled after it, as timeout
    libraries do (timeout-decorator), restoring the handler it found."""
    found = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        return "timed"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, found)


@app.bound_task(soft_time_limit=1.5, time_limit=10)
def sleeps_longer(self: Task[Any, Any], seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cut short"
    return "slept"


@app.bound_task()
def meet(self: Task[Any, Any], others: int) -> str:
    """Wait (up to 5 s) until ``others`` more meet tasks run at the same time."""
    record("meet", self.request.id)
    deadline = time.monotonic() + 5
    path = os.environ["CELERIAC_TEST_LEDGER"]
    while time.monotonic() < deadline:
        with open(path) as ledger:
            if sum(line.startswith("meet ") for line in ledger) > others:
                return "met"
        time.sleep(0.02)
    return "alone"


@app.bound_task()
def breaks_its_child(self: Task[Any, Any]) -> int:
    record("run", self.request.id)
    return self.request.delivery_count


def _surrogate_name() -> str:
    return b"report-\xff.csv".decode("utf-8", "surrogateescape")  # as os.listdir gives it


@app.bound_task()
def missing_file(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    raise FileNotFoundError(f"missing {_surrogate_name()}")


@app.bound_task()
def returns_file_name(self: Task[Any, Any]) -> str:
    record("run", self.request.id)
    return _surrogate_name()


@app.bound_task()
def returns_itself(self: Task[Any, Any]) -> list[Any]:
    record("run", self.request.id)
    loop: list[Any] = []
    loop.append(loop)
    return loop


@app.bound_task(soft_time_limit=0.2, time_limit=10)
async def overruns(self: Task[Any, Any]) -> str:
    try:
        await asyncio.sleep(0.6)
    except asyncio.CancelledError:
        record("cleanup", self.request.id, "CancelledError")
        raise
    record("after-limit", self.request.id)  # a side effect the soft limit must prevent
    return "not interrupted"


@app.bound_task()
async def nap(self: Task[Any, Any], seconds: float) -> str:
    await asyncio.sleep(seconds)
    record("nap", self.request.id)
    return "rested"
