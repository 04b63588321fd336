"""The torture workload: tasks that leave a trace of every execution outside the broker.

Every execution appends ledger lines (JSON, one ``os.write`` on an ``O_APPEND`` file, so
lines from many processes never interleave and a SIGKILL never leaves half a line) to the
file named by ``$TORTURE_LEDGER``: ``start`` and ``end`` with the task id, the delivery
count, the retry count, the worker, the pid, the time and a token unique to that
execution. Each task returns its token, so the stored result names the one execution
whose result was committed.

:class:`CommitLog` adds a ``commit`` line when the broker confirmed the fenced commit (or
``dead`` when it confirmed a dead-lettering). The oracle compares those with the stored
result: two different committed tokens for one id is a double commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

from celeriac import Celeriac, Reject, Task
from celeriac.middleware import Job, Middleware, Outcome, default_middleware

LEDGER_ENV = "TORTURE_LEDGER"


def append(lines: list[dict[str, Any]], path: str | None = None) -> None:
    """Append ledger lines in one write (atomic with O_APPEND: lines never mix)."""
    path = path or os.environ.get(LEDGER_ENV)
    if not path or not lines:
        return
    data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def record(phase: str, task: Task[Any, Any], token: str, **extra: Any) -> None:
    """One ledger line about the running task's current execution."""
    request = task.request
    append(
        [
            {
                "phase": phase,
                "id": request.id,
                "delivery": request.delivery_count,
                "retries": request.retries,
                "worker": request.worker,
                "pid": os.getpid(),
                "token": token,
                "t": time.time(),
                **extra,
            }
        ]
    )


class CommitLog(Middleware):
    """Logs what the broker confirmed: a fenced commit, or a dead-lettering."""

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        if not committed or outcome.state not in {"SUCCESS", "FAILURE", "DEAD"}:
            return
        value = outcome.value if isinstance(outcome.value, dict) else {}
        append(
            [
                {
                    "phase": "commit" if outcome.state != "DEAD" else "dead",
                    "id": job.delivery.id,
                    "delivery": job.delivery.deliveries,
                    "token": value.get("token", ""),
                    "state": outcome.state,
                    "pid": os.getpid(),
                    "t": time.time(),
                }
            ]
        )


# CommitLog first: after_* hooks run in reverse order, so it sees the final outcome.
app = Celeriac("torture", middleware=[CommitLog(), *default_middleware()])


def _token() -> str:
    return uuid.uuid4().hex


@app.bound_task()
def job(self: Task[Any, Any], pause: float = 0.0, pad: str = "") -> dict[str, Any]:
    """The normal workload: runs ``pause`` seconds; ``pad`` only makes the message big."""
    token = _token()
    record("start", self, token)
    if pause:
        time.sleep(pause)
    record("end", self, token)
    return {"token": token}


@app.bound_task()
async def ajob(self: Task[Any, Any], pause: float = 0.0) -> dict[str, Any]:
    """The normal workload as an ``async def``: awaits ``pause`` seconds (``-P asyncio``
    runs it as a coroutine, many per child)."""
    token = _token()
    record("start", self, token)
    if pause:
        await asyncio.sleep(pause)
    record("end", self, token)
    return {"token": token}


@app.bound_task()
def abort(self: Task[Any, Any]) -> None:
    """A poison task: the process dies with SIGABRT, as a crashing C extension would."""
    record("start", self, _token())
    os.abort()


@app.bound_task()
def retry_once(self: Task[Any, Any]) -> dict[str, Any]:
    """Asks to be retried on its first attempt, then succeeds."""
    token = _token()
    record("start", self, token)
    if self.request.retries == 0:
        record("end", self, token, retry=True)
        raise self.retry(countdown=0)
    record("end", self, token)
    return {"token": token}


@app.bound_task()
def reject(self: Task[Any, Any]) -> None:
    """Sends itself to the dead-letter queue."""
    token = _token()
    record("start", self, token)
    record("end", self, token)
    raise Reject("the torture test rejects this task")


@app.bound_task()
def big_result(self: Task[Any, Any], megabytes: int) -> dict[str, Any]:
    """Returns a result of ``megabytes`` MB."""
    token = _token()
    record("start", self, token)
    record("end", self, token)
    return {"token": token, "blob": "x" * (megabytes * 1024 * 1024)}


@app.bound_task()
def big_argument(self: Task[Any, Any], blob: str) -> dict[str, Any]:
    """Takes a big argument; returns its length."""
    token = _token()
    record("start", self, token)
    record("end", self, token)
    return {"token": token, "length": len(blob)}


@app.bound_task()
def member(self: Task[Any, Any], i: int, pause: float = 0.0) -> int:
    """A chord member: i squared (chord callbacks get plain values)."""
    token = _token()
    record("start", self, token)
    time.sleep(pause)
    record("end", self, token)
    return i * i


@app.bound_task()
def total(self: Task[Any, Any], values: list[int]) -> dict[str, Any]:
    """A chord callback: how many values and their sum."""
    token = _token()
    record("start", self, token, callback=True)
    record("end", self, token)
    return {"token": token, "count": len(values), "sum": sum(values)}
