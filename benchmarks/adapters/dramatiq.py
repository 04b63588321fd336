"""Dramatiq 2.2: its actors and adapter (runs in the peers' interpreter).

Defaults: 2 processes x 8 threads, the Redis broker's default prefetch, the default
middleware (retries, time limit, age limit, callbacks, pipelines...), no results (the
Results middleware is opt-in).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks.adapters.base import Adapter, args_for, broker_url, script
from benchmarks.probes import task_done, task_started

broker = RedisBroker(url=broker_url())
dramatiq.set_broker(broker)


@dramatiq.actor
def noop(i: int) -> None:
    """Count and return."""
    task_done()


@dramatiq.actor
def stamp(i: int) -> None:
    """Record the start (latency probe)."""
    task_started()


@dramatiq.actor
def payload(i: int, data: str) -> None:
    """Count and return; ``data`` only travels."""
    task_done()


_ACTORS = {"noop": noop, "stamp": stamp, "payload": payload}


class DramatiqAdapter(Adapter):
    """Dramatiq through ``send`` and ``group``."""

    name = "dramatiq"
    results = "not stored (the Results middleware is opt-in)"
    batch = "group(...).run(): no batch send, one enqueue per message"
    pool = "main + 2 worker processes x 8 threads (-p 2, default threads)"

    def connect(self) -> None:
        """Open the connection before a timed section."""
        broker.client.ping()

    def send(self, task: str, i: int, data: str | None = None) -> None:
        """``actor.send(i)``."""
        _ACTORS[task].send(*args_for(task, i, data))

    def send_batch(self, task: str, count: int, data: str | None = None) -> None:
        """``dramatiq.group(messages).run()``."""
        actor = _ACTORS[task]
        dramatiq.group(actor.message(*args_for(task, i, data)) for i in range(count)).run()

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """``dramatiq MODULE -p N`` (threads per process left at the default)."""
        return [[script("dramatiq"), __name__, "-p", str(processes)]]


ADAPTER = DramatiqAdapter()
