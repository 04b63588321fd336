"""Tasks that misbehave toward the worker process that runs them: they start helpers with
multiprocessing and stop them, close descriptors they do not own, raise what cannot be
shown.

Executions are appended to the ledger named by $CELERIAC_TEST_LEDGER (tests.apps.core's
``record``).
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import Any

from celeriac import Celeriac, Task
from tests.apps.core import record

app = Celeriac("hostile-tests")

#: multiprocessing's fork start method (Linux's default before Python 3.14): the helper is
#: a copy of the worker child, with whatever the child had set up.
_FORK = multiprocessing.get_context("fork")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.bound_task()
def add(self: Task[Any, Any], x: int, y: int) -> int:
    record("run", self.request.id)
    return x + y


@app.bound_task()
def stops_its_helper(self: Task[Any, Any]) -> int | None:
    """Start a helper process with multiprocessing (fork), stop it with terminate()
    (SIGTERM) and return its exit code: -15 once it ended, None when it did not."""
    record("run", self.request.id)
    helper = _FORK.Process(target=_sleep, args=(30,))
    helper.start()
    time.sleep(0.2)
    helper.terminate()
    helper.join(5)
    if helper.exitcode is None:
        helper.kill()  # not left behind by the test
        helper.join(5)
        return None
    return helper.exitcode


@app.bound_task()
async def stops_its_helper_async(self: Task[Any, Any]) -> int | None:
    """:func:`stops_its_helper` from a coroutine (forked from the asyncio child's loop)."""
    return stops_its_helper.fn(self)


@app.bound_task()
def closes_descriptors(self: Task[Any, Any], log_path: str) -> str:
    """Close every descriptor from 3 up, then open a log file of its own (as a daemonizing
    library does): its number is one the worker child had open."""
    record("run", self.request.id)
    os.closerange(3, 1024)
    global _own_log
    _own_log = open(log_path, "a")  # noqa: SIM115
    return "closed"


_own_log = None


class Table:
    """Compares as a numpy array or a pandas DataFrame does: ``==`` gives an object whose
    truth value raises ("The truth value of an array ... is ambiguous")."""

    def __eq__(self, other: object) -> Any:
        return _Ambiguous()

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "<Table 3x2>"


class _Ambiguous:
    def __bool__(self) -> bool:
        raise ValueError("The truth value of a Table is ambiguous. Use a.any() or a.all().")


class Unshowable(BaseException):
    """A library's BaseException whose str() and repr() both raise."""

    def __str__(self) -> str:
        raise RuntimeError("str() of Unshowable")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of Unshowable")


@app.bound_task()
def rejects_table(self: Task[Any, Any]) -> None:
    """Raise an error whose one argument is the offending table, as
    ``raise ValueError(df)`` does."""
    record("run", self.request.id)
    raise ValueError(Table())


@app.bound_task()
def raises_unshowable(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    raise Unshowable


@app.bound_task()
async def rejects_table_async(self: Task[Any, Any]) -> None:
    rejects_table.fn(self)


@app.bound_task()
async def raises_unshowable_async(self: Task[Any, Any]) -> None:
    raises_unshowable.fn(self)


@app.bound_task()
def closes_stdout(self: Task[Any, Any]) -> str:
    """Close ``sys.stdout``, as a library daemonizing itself or a misguided cleanup may."""
    record("run", self.request.id)
    sys.stdout.close()
    return "closed"


@app.bound_task()
def silences_stdout(self: Task[Any, Any]) -> str:
    """Point ``sys.stdout`` at /dev/null to quiet a chatty library, and never put it back."""
    record("run", self.request.id)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return "silenced"


@app.bound_task()
def moves_to(self: Task[Any, Any], folder: str) -> str:
    record("run", self.request.id)
    os.chdir(folder)
    return folder


@app.bound_task()
def prints_where(self: Task[Any, Any], text: str) -> str:
    """Print ``text``; return the folder the task runs in."""
    record("run", self.request.id)
    print(text)
    return os.getcwd()


@app.bound_task()
def blocks_sigterm(self: Task[Any, Any], seconds: float) -> str:
    """Block SIGTERM in the thread running it (a library guarding a critical section that
    never unblocks it again), then take ``seconds``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    record("run", self.request.id)
    time.sleep(seconds)
    return "blocked"


@app.bound_task()
async def blocks_sigterm_async(self: Task[Any, Any], seconds: float) -> str:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    record("run", self.request.id)
    await asyncio.sleep(seconds)
    return "blocked"


@app.bound_task(max_deliveries=1, soft_time_limit=10, time_limit=1)
def at_most_once_hangs(self: Task[Any, Any]) -> None:
    """A task that must never run twice (max_deliveries=1), stuck past its hard limit."""
    record("run", self.request.id)
    time.sleep(30)


@app.bound_task(max_deliveries=2)
def segfaults(self: Task[Any, Any]) -> None:
    """Crash in C code, as a buggy extension does."""
    record("run", self.request.id)
    ctypes.string_at(0)


@app.bound_task(max_deliveries=2)
def exits_quietly(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    os._exit(0)


@app.bound_task()
async def leaves_work_in_a_thread(self: Task[Any, Any], seconds: float) -> str:
    """Hand a blocking call to a thread and return without awaiting it (as a coroutine
    cancelled at its soft limit leaves its ``asyncio.to_thread`` call running)."""
    record("run", self.request.id)
    asyncio.get_running_loop().run_in_executor(None, time.sleep, seconds)
    return "left"


@app.bound_task()
def interrupts_its_helper(self: Task[Any, Any]) -> int | None:
    """Start a program, stop it with SIGINT (as ffmpeg is asked to finish its file), and
    return its exit status: -2 once SIGINT ended it, None when it ignored SIGINT."""
    record("run", self.request.id)
    helper = subprocess.Popen(["sleep", "30"])
    time.sleep(0.2)
    helper.send_signal(signal.SIGINT)
    try:
        return helper.wait(5)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()
        return None


@app.bound_task()
def raises_generator_exit(self: Task[Any, Any]) -> None:
    """GeneratorExit out of a plain function (a generator's close() mishandled)."""
    record("run", self.request.id)
    raise GeneratorExit
