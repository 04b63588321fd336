"""The asyncio child's default executor: the threads its tasks' blocking calls run in
(``asyncio.to_thread``, ``loop.run_in_executor(None, ...)``).

``asyncio.run`` ends by joining that executor's threads, without a time limit on Python
3.11 (300 s from 3.12). A blocking call a task left running in a thread (its
``to_thread`` cancelled at a soft limit, a fire-and-forget ``run_in_executor``, an HTTP
request without a timeout) held the child's warm shutdown or recycle until it returned:
for a hung call, for ever, with the worker consuming nothing meanwhile. This executor
remembers which task handed it each call, so the child can give what is left a grace and
name the tasks, and its ``shutdown`` never waits: the child ends with ``os._exit``, which
takes those threads with it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from celeriac.task import _current
from celeriac.text import printable

T = TypeVar("T")


class TaskThreads(ThreadPoolExecutor):
    """A thread pool that knows which task handed it each call still running.

    Example:
        >>> pool = TaskThreads(max_workers=1)
        >>> pool.submit(sum, [1, 2]).result()
        3
        >>> pool.unfinished()
        []
        >>> pool.shutdown()
    """

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="celeriac-task-thread")
        self._by: dict[Future[Any], str] = {}

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` in a thread, noting the task whose code asked (called on the loop's
        thread, in that task's context)."""
        future = super().submit(fn, *args, **kwargs)
        request = _current.get()
        if request is not None and not future.done():
            self._by[future] = printable(f"{request.task}[{request.id}]")
            future.add_done_callback(self._forget)
        return future

    def unfinished(self) -> list[tuple[Future[Any], str]]:
        """The calls still running or queued, each with the task that handed it over."""
        return [(f, by) for f, by in list(self._by.items()) if not f.done()]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls, never waiting for those running (see the module docstring);
        ``wait`` is ignored."""
        super().shutdown(wait=False, cancel_futures=cancel_futures)

    def _forget(self, future: Future[Any]) -> None:
        self._by.pop(future, None)
