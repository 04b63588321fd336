"""How a broker without an async driver serves its async faces (memory, SQLite): a small
thread pool of its own for the sync calls, and one result poller per event loop for every
``await_result`` of that loop.

Both stay out of the loop's default executor: that one is the app's (its own
``asyncio.to_thread``), and ``asyncio.run()`` waits for it at shutdown. A wait per
default-executor thread (0.25 s steps) made 300 ``aget()`` calls hold up the app's own
``to_thread`` calls for 12 s.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from celeriac import pid

if TYPE_CHECKING:
    from celeriac.brokers.base import Broker

# Seconds a result poller's round lasts at most before it reads every id again (a new
# id, or nobody left, ends a round at once).
ASYNC_WAIT_STEP = 0.25
# Threads per broker (and process) for the async faces of a broker without an async driver.
ASYNC_THREADS = 4
# Threads per broker (and process) for the sends async code makes through the sync face (a
# dedupe send, a workflow's): as many as asyncio's default executor has on a small host,
# and apart from the short calls above, which a frozen broker's sends held up.
SEND_THREADS = 16
_SIDE_SETUP = threading.Lock()
_P = ParamSpec("_P")
_T = TypeVar("_T")  # makes each broker's AsyncSide once


async def in_pool(
    pool: ThreadPoolExecutor, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``fn(*args, **kwargs)`` in a thread of ``pool``, in the caller's context."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


class AsyncSide:
    """What a broker runs its async faces with in one process: a small thread pool for
    the sync calls (short: no wait takes one), one for the sends async code makes through
    the sync face (which a frozen broker holds for its socket timeout), and each event
    loop's result poller."""

    def __init__(self, broker_name: str) -> None:
        self.pid = pid.current()  # a pool's threads do not cross fork()
        # Idle threads cost nothing, and they end when the broker is dropped.
        self.pool = ThreadPoolExecutor(ASYNC_THREADS, thread_name_prefix=f"celeriac-{broker_name}")
        self.sends = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="celeriac-send")
        self._polls: dict[asyncio.AbstractEventLoop, ResultPoll] = {}
        self._guard = threading.Lock()  # loops of other threads come and go meanwhile

    @staticmethod
    def of(broker: Broker) -> AsyncSide:
        """``broker``'s, made on first use in this process."""
        side: AsyncSide | None = broker.__dict__.get("_async_side")
        if side is None or side.pid != pid.current():
            with _SIDE_SETUP:
                side = broker.__dict__.get("_async_side")
                if side is None or side.pid != pid.current():
                    side = broker.__dict__["_async_side"] = AsyncSide(type(broker).__name__)
        return side

    def poll(self, broker: Broker, loop: asyncio.AbstractEventLoop) -> ResultPoll:
        """The result poller of ``loop``, started on its first wait."""
        with self._guard:
            found = self._polls.get(loop)
            if found is None or found.stopped():  # stopped: cancelled before it ever ran
                # A loop closed with waits pending never ran its poller's cleanup: its
                # entry (and the loop) would stay for good.
                for closed in [other for other in self._polls if other.is_closed()]:
                    self._polls.pop(closed).stop()
                found = self._polls[loop] = ResultPoll(broker, self, loop)
            return found

    def drop(self, loop: asyncio.AbstractEventLoop, poll: ResultPoll) -> None:
        """Forget ``loop``'s poller, which has stopped."""
        with self._guard:
            if self._polls.get(loop) is poll:
                del self._polls[loop]


class ResultPoll:
    """The waits of one event loop on one broker: a task that reads every id waited on
    (:meth:`Broker.wait_results`, in one thread of its own) and resolves the waiters'
    futures. It runs while anyone waits, then is dropped, so it keeps no loop alive."""

    def __init__(self, broker: Broker, side: AsyncSide, loop: asyncio.AbstractEventLoop) -> None:
        self._broker = broker
        self._waiting: dict[str, set[asyncio.Future[bytes]]] = {}
        self._wake = threading.Event()  # ends a round: a new id, nobody left, or stopping
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="celeriac-result-poll")
        self._task = loop.create_task(self._run(side, loop))

    def add(self, task_id: str) -> asyncio.Future[bytes]:
        """A future that gets ``task_id``'s final result."""
        waiter: asyncio.Future[bytes] = self._task.get_loop().create_future()
        self._waiting.setdefault(task_id, set()).add(waiter)
        self._wake.set()
        return waiter

    def discard(self, task_id: str, waiter: asyncio.Future[bytes]) -> None:
        """Stop serving ``waiter`` (it got its result, timed out or was cancelled)."""
        if waiter.done() and not waiter.cancelled():
            waiter.exception()  # retrieved: a waiter cancelled meanwhile never reads it
        waiters = self._waiting.get(task_id, set())
        waiters.discard(waiter)
        if not waiters:
            self._waiting.pop(task_id, None)
        if not self._waiting:
            self._wake.set()

    def stopped(self) -> bool:
        """True once the poller task has ended."""
        return self._task.done()

    def stop(self) -> None:
        """End the current round and let the thread go."""
        self._wake.set()
        self._thread.shutdown(wait=False)

    async def _run(self, side: AsyncSide, loop: asyncio.AbstractEventLoop) -> None:
        read = self._broker.wait_results
        try:
            while self._waiting:
                self._wake.clear()
                ids = list(self._waiting)
                found = await loop.run_in_executor(
                    self._thread, read, ids, ASYNC_WAIT_STEP, self._wake
                )
                for task_id, raw in found.items():
                    for waiter in self._waiting.pop(task_id, ()):
                        if not waiter.done():
                            waiter.set_result(raw)
        except asyncio.CancelledError:
            self._fail(None)
            raise
        except Exception as exc:  # noqa: BLE001 - each waiter raises the broker's error
            self._fail(exc)
        finally:
            side.drop(loop, self)
            self.stop()

    def _fail(self, error: Exception | None) -> None:
        """End every wait: with ``error``, or cancelled (the loop is shutting down)."""
        for waiter in [w for waiters in self._waiting.values() for w in waiters if not w.done()]:
            if error is None:
                waiter.cancel()
            else:
                waiter.set_exception(error)
