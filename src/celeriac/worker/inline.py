"""Run queued tasks inside the calling process: eager mode and the testing helper."""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from celeriac.task import IN_PROCESS
from celeriac.worker.executor import Executor

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.records import QueueStats
    from celeriac.middleware.base import Job

T = TypeVar("T")

#: The failures of tasks run by a drain nested in a running task (a task's ``delay()`` in
#: eager mode), held for the drain that runs that task; None outside any drain.
_held: contextvars.ContextVar[list[tuple[Job, BaseException]] | None] = contextvars.ContextVar(
    "celeriac_held_failures", default=None
)
#: How many drains are running in this context (1: run_queued, 2+: sends of running tasks).
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("celeriac_drains", default=0)
#: How deep eager mode nests drains. A task that sends itself again (a page at a time, a
#: poll) hit Python's recursion limit at ~75 levels (~13 frames each); past this depth a
#: send is left queued, and the drain already running takes it next.
EAGER_DEPTH = 16


def run_queued(
    app: Celeriac,
    queues: Sequence[str] | None = None,
    *,
    fail_fast: bool = True,
    include_delayed: bool = False,
    max_tasks: int = 100_000,
) -> int:
    """Run queued tasks in this process until none is due; return how many ran.

    Each task runs as a worker runs it: the middleware (retries, expiry, revocation,
    dedupe, rate limits, canvas), its result stored, its own event loop for an
    ``async def`` task (called from a running event loop, an async test, the tasks run in
    a helper thread while the caller waits). What a task sends while it runs is run at
    once (eager mode), but its failure is not raised into the task that sent it (in
    production that task succeeds): it is raised by the outer call once the sending task
    has finished. Delayed tasks (countdown, ETA, a retry's backoff) wait for
    ``include_delayed``; there is no soft or hard time limit.

    Args:
        app: the app whose broker holds the tasks.
        queues: the queues to drain; every queue the broker knows when None.
        fail_fast: re-raise the first task exception (its own type, with a note naming
            the task) in the caller. A task that ends dead-lettered (``Reject``) or
            EXPIRED/REVOKED is not raised: read its result.
        include_delayed: also wait for countdown/ETA tasks and retries to come due.
        max_tasks: a bound, so a task that re-sends itself cannot loop forever.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def double(x: int) -> int:
        ...     return 2 * x
        >>> r = double.delay(21)
        >>> run_queued(app)
        1
        >>> r.get(timeout=1)
        42
    """

    def drain() -> int:
        executor = Executor(app, IN_PROCESS)
        try:
            return _drain(
                app,
                executor,
                queues,
                fail_fast=fail_fast,
                include_delayed=include_delayed,
                max_tasks=max_tasks,
            )
        finally:
            executor.close()

    if _loop_running():
        # An async test or handler: an ``async def`` task needs an event loop of its own,
        # and this thread's is busy running the caller (it failed every such task with
        # "Cannot run the event loop while another loop is running").
        return _in_helper_thread(drain)
    return drain()


def run_eagerly(app: Celeriac) -> None:
    """Eager mode's step after a send: run every queued task now (see :func:`run_queued`).

    Called by a task that runs in a drain nested :data:`EAGER_DEPTH` deep, it runs
    nothing: the innermost drain running takes the new task after the current one.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> run_eagerly(app)  # nothing queued: nothing runs
    """
    if _depth.get() < EAGER_DEPTH:
        run_queued(app)


def _drain(
    app: Celeriac,
    executor: Executor,
    queues: Sequence[str] | None,
    *,
    fail_fast: bool,
    include_delayed: bool,
    max_tasks: int,
) -> int:
    outer = _held.get()
    held: list[tuple[Job, BaseException]] = []
    token, level = _held.set(held), _depth.set(_depth.get() + 1)
    try:
        ran = _each(
            app,
            executor,
            queues,
            held=held,
            fail_fast=fail_fast,
            include_delayed=include_delayed,
            max_tasks=max_tasks,
        )
    finally:
        _depth.reset(level)
        _held.reset(token)
    if not held or not fail_fast:
        return ran
    if outer is not None:
        # A task's delay() in eager mode ran these: in production a failure of theirs never
        # fails the task that sent them, so the drain running that task raises it later.
        outer.extend(held)
        return ran
    job, exc = held[0]
    exc.add_note(
        f"raised by task {job.label}, run by celeriac's run_queued (or eager mode); its "
        "result is stored as FAILURE. Pass fail_fast=False to run every task and read "
        "each result instead."
    )
    raise exc


def _each(
    app: Celeriac,
    executor: Executor,
    queues: Sequence[str] | None,
    *,
    held: list[tuple[Job, BaseException]],
    fail_fast: bool,
    include_delayed: bool,
    max_tasks: int,
) -> int:
    broker = app.broker
    names, wait, ran = _queues(app, queues), 0.0, 0
    while ran < max_tasks and not (fail_fast and held):
        deliveries = broker.fetch(
            names,
            executor.worker_id,
            limit=1,
            lease_seconds=app.conf.worker_lease_seconds,
            timeout=wait,
        )
        if not deliveries:
            # Nothing due in the queues we know: look again once (tasks may have sent to
            # new queues, or delayed ones may be waiting) before calling it done. A task
            # that came due since the fetch (a retry's short backoff) is ready now: it was
            # left unrun when only delayed tasks counted.
            stats = broker.stats()
            fresh = _queues(app, queues, stats)
            ready = any(s.ready for s in stats if s.queue in fresh)
            delayed = include_delayed and any(s.delayed for s in stats)
            if fresh == names and not delayed and not ready:
                app.middleware.on_idle()
                return ran
            names, wait = fresh, 60.0 if delayed and not ready else 0.0
            continue
        wait = 0.0
        job, outcome = executor.process(deliveries[0])
        ran += 1
        if outcome.state == "FAILURE" and outcome.exception is not None:
            held.append((job, outcome.exception))
    return ran


def _queues(
    app: Celeriac, queues: Sequence[str] | None, stats: Sequence[QueueStats] | None = None
) -> list[str]:
    if queues:
        return list(queues)
    known = app.broker.stats() if stats is None else stats
    return sorted(s.queue for s in known) or [app.conf.task_default_queue]


def _loop_running() -> bool:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:  # never imported, so no loop runs (see architecture.md)
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_helper_thread(call: Callable[[], T]) -> T:
    """``call()`` in a new thread (with this context: a running task's request), waited
    for; its exception re-raised here."""
    context = contextvars.copy_context()
    box: list[T] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            box.append(context.run(call))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            failed.append(exc)

    helper = threading.Thread(target=target, name="celeriac-run-queued", daemon=True)
    helper.start()
    helper.join()
    if failed:
        raise failed[0]
    return box[0]
