"""Huey 3.5: its tasks and adapter (runs in the peers' interpreter).

Defaults: ``RedisHuey`` (blocking dequeue, results stored in Redis), the consumer with
its periodic scheduler. Huey's default worker type is threads; ``-k process`` gives the
same 2-process budget as the others (threads would share one core under the GIL).
Huey acks on dequeue: a task whose worker dies is lost (at-most-once).
"""

from __future__ import annotations

from huey import RedisHuey

from benchmarks.adapters.base import Adapter, args_for, broker_url, script
from benchmarks.probes import task_done, task_started

huey = RedisHuey("bench", url=broker_url())


@huey.task()
def noop(i: int) -> None:
    """Count and return."""
    task_done()


@huey.task()
def stamp(i: int) -> None:
    """Record the start (latency probe)."""
    task_started()


@huey.task()
def payload(i: int, data: str) -> None:
    """Count and return; ``data`` only travels."""
    task_done()


_TASKS = {"noop": noop, "stamp": stamp, "payload": payload}


class HueyAdapter(Adapter):
    """Huey through calling the task and ``task.map``."""

    name = "huey"
    results = "stored in Redis (a hash per instance), by default"
    batch = "task.map(items): no batch send, one enqueue per item"
    pool = "consumer + 2 worker processes (-w 2 -k process)"

    def connect(self) -> None:
        """Open the connection before a timed section."""
        huey.storage.conn.ping()

    def send(self, task: str, i: int, data: str | None = None) -> None:
        """``task(i)``."""
        _TASKS[task](*args_for(task, i, data))

    def send_batch(self, task: str, count: int, data: str | None = None) -> None:
        """``task.map(items)``."""
        _TASKS[task].map([args_for(task, i, data) for i in range(count)])

    def worker_commands(self, processes: int, pool: str) -> list[list[str]]:
        """``huey_consumer MODULE.huey -w N -k process -q``."""
        return [
            [
                script("huey_consumer"),
                f"{__name__}.huey",
                "-w",
                str(processes),
                "-k",
                "process",
                "-q",
            ]
        ]


ADAPTER = HueyAdapter()
