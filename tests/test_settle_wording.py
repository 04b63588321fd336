"""What a worker says when it cannot settle a task, and when its broker refuses calls.

A lost lease has several causes that call for different actions (another worker took the
message; the broker queued it again; the broker lost it, result and all), and a Redis
that refuses writes (maxmemory) is said once, not once per task.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import redis
from celeriac import Celeriac, Task
from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.records import DeadLetter, Lease, LeaseLoss, Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.testing import wait_for
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer, start_redis

# Tasks for the worker processes these tests start (`-A tests.test_settle_wording`).
app = Celeriac("settle-wording")


@app.bound_task(max_retries=1000)
def retries_forever(self: Task[Any, Any], n: int) -> None:
    raise self.retry(countdown=0.2)


# -- the broker's reason for a lost lease ------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def any_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "memory":
        yield MemoryBroker()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    made = RedisBroker(f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}")
    yield made
    made.close()


def _take(broker: Broker, consumer: str, lease_seconds: float = 30.0) -> Lease:
    (delivery,) = broker.fetch(["q"], consumer, limit=1, lease_seconds=lease_seconds, timeout=10)
    return delivery.lease


def _lapse(broker: Broker, lease: Lease) -> None:
    """Wait until the broker gave ``lease``'s message back (its lease ran out)."""
    assert wait_for(lambda: broker.reap() > 0, timeout=10)
    assert not broker.complete(lease, None, 60)


def test_a_message_taken_by_another_worker_says_so(any_broker: Broker) -> None:
    any_broker.send([Outgoing("a", "q", b"{}")])
    first = _take(any_broker, "w1", lease_seconds=0.05)
    _lapse(any_broker, first)
    _take(any_broker, "w2")
    assert any_broker.lease_loss(first) is LeaseLoss.TAKEN


def test_a_message_queued_again_says_it_will_run_again(any_broker: Broker) -> None:
    any_broker.send([Outgoing("a", "q", b"{}")])
    first = _take(any_broker, "w1", lease_seconds=0.05)
    _lapse(any_broker, first)
    assert not any_broker.requeue(first, delay=5)
    assert any_broker.lease_loss(first) is LeaseLoss.REQUEUED


@pytest.mark.parametrize("result", [b'{"state":"SUCCESS"}', None])
def test_a_message_another_worker_finished_says_so(
    any_broker: Broker, result: bytes | None
) -> None:
    any_broker.send([Outgoing("a", "q", b"{}")])
    first = _take(any_broker, "w1", lease_seconds=0.05)
    _lapse(any_broker, first)
    assert any_broker.complete(_take(any_broker, "w2"), result, 60)
    letter = DeadLetter("a", "q", "t", "why", b"{}", 1, "", time.time())
    assert not any_broker.dead_letter(first, letter, None)
    # Without a result stored, the broker cannot tell a finished message from a lost one.
    expected = LeaseLoss.FINISHED if result else LeaseLoss.GONE
    assert any_broker.lease_loss(first) is expected


def test_a_message_redis_lost_is_not_blamed_on_another_worker(tmp_path: Path) -> None:
    """Redis restarted empty: nobody holds the message, nobody will run it again."""
    server = start_redis(tmp_path / "redis")
    broker = RedisBroker(server.url)
    try:
        for n in range(3):  # the queue's token counter is a few hand-outs old
            broker.send([Outgoing(f"old{n}", "q", b"{}")])
            assert broker.complete(_take(broker, "w1"), None, 60)
        broker.send([Outgoing("a", "q", b"{}")])
        lease = _take(broker, "w1")
        server.kill()
        server = start_redis(tmp_path / "redis", port=server.port)
        broker.send([Outgoing("b", "q", b"{}")])  # the queue is in use again
        _take(broker, "w2")
        assert not broker.complete(lease, None, 60)
        assert broker.lease_loss(lease) is LeaseLoss.VANISHED
        server.stop()
        # Unreachable: a log line's lookup falls back to the general reason, never raises.
        assert broker.lease_loss(lease) is LeaseLoss.LAPSED
    finally:
        broker.close()
        server.stop()


# -- what a real worker logs -------------------------------------------------------------


def test_a_worker_whose_redis_restarted_empty_says_the_broker_lost_the_task(
    tmp_path: Path,
) -> None:
    server = start_redis(tmp_path / "redis")
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = WorkerProcesses(server.url, ledger)
    sender = Celeriac("sender", broker=server.url)
    try:
        workers.start("-c", "1")
        result = sender.send_task("tests.apps.core.work", args=(3.0, "long"))
        assert wait_for(lambda: ledger.count("start")[result.id] == 1, timeout=30)
        server.kill()  # persistence is off: the restarted server is empty
        server = start_redis(tmp_path / "redis", port=server.port)
        assert wait_for(lambda: result.id in _lost_lines(workers), timeout=30), workers.log_text()
        line = _lost_lines(workers)
        assert "the broker no longer holds this message" in line, line
        assert "another worker" not in line, line
    finally:
        sender.broker.close()
        workers.kill_all()
        server.stop()


def _lost_lines(workers: WorkerProcesses) -> str:
    return "\n".join(line for line in workers.log_text().splitlines() if "before settling" in line)


# -- a Redis that refuses writes ---------------------------------------------------------


def _lines(workers: WorkerProcesses, pattern: str) -> list[str]:
    text = "\n".join(path.read_text() for path in workers.logs if path.exists())
    return [line for line in text.splitlines() if re.search(pattern, line)]


def test_a_full_redis_keeps_retrying_tasks_and_says_so_once(tmp_path: Path) -> None:
    """With maxmemory reached, a retry's requeue commits but the RETRY state it stores
    next is refused. That refusal used to fail the whole settle: the child retried it,
    found its lease gone and logged "broker unavailable", "lease lost" and "answers
    again" for every retry of every task. A due retry's fetch was refused too (its first
    write grew memory). Now the retries go on, and the missing state is said once."""
    server = start_redis(
        tmp_path / "redis", extra=("--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    )
    url = f"{server.url}?prefix=full"
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = WorkerProcesses(url, ledger)
    sender = Celeriac("sender", broker=url)
    raw = redis.Redis(port=server.port)
    try:
        for n in range(20):
            sender.send_task("tests.test_settle_wording.retries_forever", args=(n,))
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for filled in range(100_000):
                raw.set(f"fill:{filled}", b"x" * 10_000)
        workers.start("-c", "1", app="tests.test_settle_wording", wait=False)
        retried = r"will retry in .* \(attempt 5\)"
        assert wait_for(lambda: _lines(workers, retried), timeout=60), workers.log_text()
        assert len(_lines(workers, "RETRY state was not stored")) == 1, workers.log_text()
        assert _lines(workers, "lease lost|broker unavailable") == [], workers.log_text()
    finally:
        raw.close()
        sender.broker.close()
        workers.kill_all()
        server.stop()
