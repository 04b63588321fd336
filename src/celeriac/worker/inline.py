"""Run queued tasks inside the calling process: eager mode and the testing helper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from celeriac.worker.executor import Executor

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.records import QueueStats


def run_queued(
    app: Celeriac,
    queues: Sequence[str] | None = None,
    *,
    fail_fast: bool = True,
    include_delayed: bool = False,
    max_tasks: int = 100_000,
) -> int:
    """Run queued tasks in this process until none is due; return how many ran.

    Args:
        app: the app whose broker holds the tasks.
        queues: the queues to drain; every queue the broker knows when None.
        fail_fast: re-raise the first task exception (its own type) in the caller.
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
    executor = Executor(app, "in-process")
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


def _drain(
    app: Celeriac,
    executor: Executor,
    queues: Sequence[str] | None,
    *,
    fail_fast: bool,
    include_delayed: bool,
    max_tasks: int,
) -> int:
    broker = app.broker
    names, wait, ran = _queues(app, queues), 0.0, 0
    while ran < max_tasks:
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
        _, outcome = executor.process(deliveries[0])
        ran += 1
        if fail_fast and outcome.state == "FAILURE" and outcome.exception is not None:
            raise outcome.exception
    return ran


def _queues(
    app: Celeriac, queues: Sequence[str] | None, stats: Sequence[QueueStats] | None = None
) -> list[str]:
    if queues:
        return list(queues)
    known = app.broker.stats() if stats is None else stats
    return sorted(s.queue for s in known) or [app.conf.task_default_queue]
