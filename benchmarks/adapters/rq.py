"""RQ 2.12: its job functions and adapter (runs in the peers' interpreter).

Defaults: ``rq worker`` forks a work horse per job; results are kept in the job's hash
for 500 s. RQ has no multi-process worker in the stable CLI, so the 2-process budget is
two ``rq worker`` processes.
"""

from __future__ import annotations

from rq import Queue

import redis
from benchmarks.adapters.base import Adapter, args_for, broker_url, script
from benchmarks.probes import task_done, task_started

connection = redis.Redis.from_url(broker_url())
queue = Queue(connection=connection)


def noop(i: int) -> None:
    """Count and return."""
    task_done()


def stamp(i: int) -> None:
    """Record the start (latency probe)."""
    task_started()


def payload(i: int, data: str) -> None:
    """Count and return; ``data`` only travels."""
    task_done()


_FUNCTIONS = {"noop": noop, "stamp": stamp, "payload": payload}


class RQAdapter(Adapter):
    """RQ through ``Queue.enqueue`` and ``Queue.enqueue_many``."""

    name = "rq"
    results = "stored in Redis (the job hash, result_ttl 500 s), by default"
    batch = "Queue.enqueue_many(prepare_data...): one pipeline"
    pool = "2 x `rq worker` (each forks a work horse per job)"

    def connect(self) -> None:
        """Open the connection before a timed section."""
        connection.ping()

    def send(self, task: str, i: int, data: str | None = None) -> None:
        """``queue.enqueue(fn, i)``."""
        queue.enqueue(_FUNCTIONS[task], *args_for(task, i, data))

    def send_batch(self, task: str, count: int, data: str | None = None) -> None:
        """``queue.enqueue_many([Queue.prepare_data(fn, args) ...])``."""
        function = _FUNCTIONS[task]
        queue.enqueue_many(
            [Queue.prepare_data(function, args_for(task, i, data)) for i in range(count)]
        )

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """``processes`` processes of ``rq worker --url URL -q``."""
        command = [script("rq"), "worker", "--url", broker_url(), "-q"]
        return [command for _ in range(processes)]


ADAPTER = RQAdapter()
