"""Celery 5.7: its tasks and adapter (runs in the peers' interpreter).

Defaults: prefork pool, prefetch multiplier 4, no result backend (Celery stores results
only when one is configured), events off.
"""

from __future__ import annotations

from celery import Celery, group

from benchmarks.adapters.base import Adapter, args_for, broker_url, script
from benchmarks.probes import task_done, task_started

app = Celery("bench", broker=broker_url())


@app.task
def noop(i: int) -> None:
    """Count and return."""
    task_done()


@app.task
def stamp(i: int) -> None:
    """Record the start (latency probe)."""
    task_started()


@app.task
def payload(i: int, data: str) -> None:
    """Count and return; ``data`` only travels."""
    task_done()


_TASKS = {"noop": noop, "stamp": stamp, "payload": payload}


class CeleryAdapter(Adapter):
    """Celery through ``delay`` and ``group``."""

    name = "celery"
    results = "not stored (no result backend unless configured)"
    batch = "group(...).apply_async(): no batch send, one publish per task"
    pool = "main + 2 prefork children (-c 2), prefetch multiplier 4"

    def connect(self) -> None:
        """Open the producer connection before a timed section."""
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)

    def send(self, task: str, i: int, data: str | None = None) -> None:
        """``task.delay(i)``."""
        _TASKS[task].delay(*args_for(task, i, data))

    def send_batch(self, task: str, count: int, data: str | None = None) -> None:
        """``group(task.s(i) for i in range(count)).apply_async()``."""
        chosen = _TASKS[task]
        group(chosen.s(*args_for(task, i, data)) for i in range(count)).apply_async()

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """``celery -A ... worker -c N -l warning`` (prefork, the default pool)."""
        return [[script("celery"), "-A", __name__, "worker", "-c", str(processes), "-l", "warning"]]


ADAPTER = CeleryAdapter()
