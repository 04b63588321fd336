"""Work an asyncio child's tasks leave running beside them, ended when the child stops.

A mixin of :class:`~celeriac.worker.aio.AsyncioChild`, kept apart so each module stays
small. An asyncio task a task started (``asyncio.create_task(send_report())``) and did not
await is named by the loop's task factory, so that the watchdog and the child's end can
say whose it is; when the child stops (a warm shutdown, a recycle) such work gets
``_BACKGROUND_GRACE`` seconds to end, then is cancelled, and so are calls tasks handed to
threads (``asyncio.to_thread``) waited for, then left: both named in the log, where
``asyncio.run`` had cut them off silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from celeriac.task import Request, _current
from celeriac.text import printable
from celeriac.worker.task_threads import TaskThreads

log = logging.getLogger("celeriac.worker")

#: Seconds that work a task left running on the loop gets to end when the child stops.
_BACKGROUND_GRACE = 5.0


class BackgroundWork:
    """Names the work tasks start on the loop, and ends it when the child stops."""

    _spawned: dict[asyncio.Task[Any], str]  # started by a task: its label

    def _make_task(
        self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        """The loop's task factory: remember which celeriac task started each asyncio task.

        Called in the creator's context, so ``_current`` is the request of the celeriac
        task whose code (or whose own asyncio tasks) called ``create_task``: the name the
        watchdog and the end of the child give for work a task left running.
        """
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        request = _current.get()
        if request is not None:
            self._spawned[task] = _request_label(request)
            task.add_done_callback(self._forget_spawned)
        return task

    def _forget_spawned(self, task: asyncio.Task[Any]) -> None:
        self._spawned.pop(task, None)

    async def _end_background(self) -> None:
        """Give work the tasks left running on the loop a grace to end, then cancel it.

        ``asyncio.run`` cancelled it silently as the child stopped (a warm shutdown or a
        recycle): a task's ``asyncio.create_task(send_report())`` was cut off unlogged.
        """
        left = [t for t in self._spawned if not t.done()]
        if not left:
            return
        log.warning(
            "child %d is stopping while %d asyncio task(s) started with create_task by %s "
            "still run; waiting up to %gs for them to end, then cancelling them. Work a "
            "task must finish belongs in the task: await it (asyncio.gather, a TaskGroup).",
            os.getpid(),
            len(left),
            _some(self._spawned[t] for t in left),
            _BACKGROUND_GRACE,
        )
        _, pending = await asyncio.wait(left, timeout=_BACKGROUND_GRACE)
        if not pending:
            return
        labels = _some(self._spawned.get(t, "?") for t in pending)
        for t in pending:
            t.cancel()
        # Bounded: a coroutine that ignores cancellation must not keep the child alive.
        await asyncio.wait(pending, timeout=_BACKGROUND_GRACE)
        log.warning(
            "child %d cancelled %d asyncio task(s) started by %s, still running %gs after "
            "their tasks' end; what they had not done is lost",
            os.getpid(),
            len(pending),
            labels,
            _BACKGROUND_GRACE,
        )


async def end_threads(threads: TaskThreads) -> None:
    """Give the calls tasks left running in threads a grace to end, then leave them: the
    child exits without them (see :mod:`celeriac.worker.task_threads`)."""
    left = threads.unfinished()
    if not left:
        return
    futures = [asyncio.wrap_future(f) for f, _ in left]
    _, pending = await asyncio.wait(futures, timeout=_BACKGROUND_GRACE)
    if not pending:
        return
    log.warning(
        "child %d is stopping while %d call(s) handed to threads by %s (asyncio.to_thread, "
        "run_in_executor) still run %gs after their tasks' end; it exits without waiting "
        "for them, and what they had not done is lost (a thread cannot be cancelled). Give "
        "blocking calls a timeout of their own.",
        os.getpid(),
        len(pending),
        _some(by for _, by in threads.unfinished()),
        _BACKGROUND_GRACE,
    )


def _request_label(request: Request) -> str:
    """``name[id]`` of a running task's request, as log lines name a task."""
    return printable(f"{request.task}[{request.id}]")


def _some(labels: Any) -> str:
    """A few distinct task labels, in words (a child may run thousands)."""
    distinct = list(dict.fromkeys(labels))
    shown = ", ".join(distinct[:5])
    return shown if len(distinct) <= 5 else f"{shown} and {len(distinct) - 5} more tasks"
