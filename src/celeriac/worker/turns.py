"""Turns: a child's tasks run side by side, except one that must run alone.

A task whose last allowed delivery follows a death it shared with other tasks runs alone
(:mod:`celeriac.worker.death_notes`). A process child runs one task at a time already: it
only commits its batch before the task and the task's outcome at once after. A threads
child's consumers and an asyncio child's tasks take a turn around each task instead (an
asyncio task's commit included, and a threads task's that ran alone): a task that must run
alone waits until none runs, and no other starts until it has ended. A turn is taken only
after the message was read, so the wait never counts against the task's time limits.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


class _Counts:
    """Who runs: how many side by side, whether one alone, how many wait to run alone."""

    def __init__(self) -> None:
        self.running = 0  # tasks running side by side
        self.alone_running = False
        self._alone_waiting = 0

    def _may_start(self, alone: bool) -> bool:
        if alone:
            return not self.running and not self.alone_running
        return not self.alone_running and not self._alone_waiting


class Turns(_Counts):
    """Turns for a threads child's consumer threads.

    Example:
        >>> turns = Turns()
        >>> with turns.take(alone=False, before_wait=lambda: None):
        ...     turns.running
        1
        >>> with turns.take(alone=True, before_wait=lambda: None):
        ...     turns.running, turns.alone_running
        (0, True)
    """

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition(threading.Lock())
        self._waiting = 0  # threads waiting for a turn: told when one ends

    def _start(self, alone: bool) -> None:
        if alone:
            self._alone_waiting -= 1
            self.alone_running = True
        else:
            self.running += 1

    def begin(self, alone: bool, before_wait: Callable[[], None]) -> None:
        """Take a turn, one side by side or ``alone``, waiting for it if need be; every
        :meth:`begin` is followed by an :meth:`end` (``take`` pairs them).

        ``before_wait`` runs (outside any lock) before this thread waits: the consumer
        commits its finished tasks and lists the message it holds, so that a task running
        alone runs with nothing of another task's in the child, and the waiting message's
        lease is renewed.
        """
        with self._changed:
            if alone:
                self._alone_waiting += 1
            if self._may_start(alone):
                self._start(alone)
                return
        try:
            before_wait()
        except BaseException:
            with self._changed:  # never waited: the others must not wait for it
                if alone:
                    self._alone_waiting -= 1
                self._changed.notify_all()
            raise
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: self._may_start(alone))
            finally:
                self._waiting -= 1
            self._start(alone)

    def end(self, alone: bool) -> None:
        """Give back the turn :meth:`begin` took."""
        with self._changed:
            if alone:
                self.alone_running = False
            else:
                self.running -= 1
            if self._waiting:
                self._changed.notify_all()

    @contextlib.contextmanager
    def take(self, *, alone: bool, before_wait: Callable[[], None]) -> Iterator[None]:
        """Hold a turn while the block runs (:meth:`begin`, then :meth:`end`)."""
        self.begin(alone, before_wait)
        try:
            yield
        finally:
            self.end(alone)


class LoopTurns(_Counts):
    """Turns for the tasks on an asyncio child's event loop (one thread: no lock, and the
    common case, no task waiting to run alone, awaits nothing).

    Example:
        >>> import asyncio
        >>> async def two() -> tuple[int, bool]:
        ...     turns = LoopTurns()
        ...     async with turns.take(alone=False):
        ...         side = turns.running
        ...     async with turns.take(alone=True):
        ...         return side, turns.alone_running
        >>> asyncio.run(two())
        (1, True)
    """

    def __init__(self) -> None:
        super().__init__()
        self._changed: asyncio.Condition | None = None  # made on the loop, when first needed

    @contextlib.asynccontextmanager
    async def take(
        self, *, alone: bool, before_wait: Callable[[], None] = lambda: None
    ) -> AsyncIterator[None]:
        """Hold a turn while the block runs: one side by side, or ``alone``;
        ``before_wait`` runs first when the task must wait for it."""
        if alone or not self._may_start(alone):
            before_wait()
            await self._wait(alone)
        if alone:
            self.alone_running = True
        else:
            self.running += 1
        try:
            yield
        finally:
            if alone:
                self.alone_running = False
            else:
                self.running -= 1
            if self._changed is not None and (self._alone_waiting or not self.running):
                async with self._changed:
                    self._changed.notify_all()

    async def _wait(self, alone: bool) -> None:
        import asyncio  # loaded by code that awaits, not at import: see architecture.md

        if self._changed is None:
            self._changed = asyncio.Condition()
        if alone:
            self._alone_waiting += 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: self._may_start(alone))
        except asyncio.CancelledError:
            if alone:  # the tasks it held back may start now: tell them
                self._alone_waiting -= 1
                async with self._changed:
                    self._changed.notify_all()
            raise
        if alone:
            self._alone_waiting -= 1
