"""A Redis at ``maxmemory`` with ``noeviction`` refuses writes that may grow memory:
what operators and workers must still be able to do meanwhile.

The worker processes import this module (``-A tests.redis.test_full_redis``) for its task.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import redis
from celeriac import Celeriac, Task
from celeriac.beat.scheduler import Scheduler
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import BrokerError
from celeriac.testing import wait_for
from tests.apps import core
from tests.apps.core import record
from tests.conftest import Ledger, WorkerProcesses, run_celeriac
from tests.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.slow

app = Celeriac("full-redis")


@app.bound_task(soft_time_limit=30, time_limit=2)
def hangs(self: Task[Any, Any]) -> None:
    record("start", self.request.id)
    time.sleep(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to fill up (stopped by PID)."""
    started = start_redis(tmp_path / "redis", extra=("--maxmemory-policy", "noeviction"))
    yield started
    started.stop()


@pytest.fixture
def workers(server: RedisServer, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Worker processes on ``server``; every one killed by PID at teardown."""
    procs = WorkerProcesses(server.url, Ledger(tmp_path / "ledger.txt"))
    yield procs
    procs.kill_all()


def fill_up(server: RedisServer) -> None:
    """Make Redis full: ``maxmemory`` below what it uses, so it refuses every write that
    may grow memory, and check that it does."""
    with redis.Redis(port=server.port) as raw:
        raw.config_set("maxmemory", int(raw.info("memory")["used_memory"]) // 2)
    broker = RedisBroker(server.url)
    try:
        with pytest.raises(BrokerError, match="is full"):
            broker.send([Outgoing("ballast", "ballast", b"x")])
    finally:
        broker.close()


def test_ping_inspect_and_shutdown_reach_workers_while_redis_is_full(
    server: RedisServer, workers: WorkerProcesses, tmp_path: Path
) -> None:
    # The command and the replies are writes: each was refused, so `celeriac ping -w HOST`,
    # a container's liveness check, failed for every worker, and an orchestrator restarted
    # the whole fleet while it was draining the queues that filled Redis.
    proc = workers.start("-c", "1")
    fill_up(server)
    url = ("-b", server.url)
    pinged = run_celeriac(*url, "ping", "-w", socket.gethostname(), "--timeout", "10", cwd=tmp_path)
    assert pinged.returncode == 0, pinged.stderr
    assert "pong" in pinged.stdout
    inspected = run_celeriac(*url, "inspect", "active", "--timeout", "10", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    stopped = run_celeriac(*url, "shutdown", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(timeout=30) == 0, workers.log_text()


def test_a_task_killed_at_its_hard_limit_while_redis_is_full_does_not_run_again(
    server: RedisServer, workers: WorkerProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The supervisor records why it killed the task (a verdict) and puts the message back;
    # the next delivery settles it with that verdict. Redis refused the verdict but took the
    # put-back (its first write frees memory): the task ran again, was killed again, and so
    # on until dead-lettered as a crash, its side effects repeated each time.
    monkeypatch.setattr(app.conf, "broker_url", server.url)
    workers.start("-c", "1", app="tests.redis.test_full_redis")
    try:
        handle = hangs.delay()
        assert wait_for(lambda: workers.ledger.count("start"), timeout=20), workers.log_text()
        fill_up(server)
        assert wait_for(lambda: handle.state == "FAILURE", timeout=30), workers.log_text()
        assert type(handle.info).__name__ == "TimeLimitExceeded", repr(handle.info)
        assert workers.ledger.count("start") == {handle.id: 1}, workers.log_text()
    finally:
        app.broker.close()


@pytest.mark.parametrize("pool", ["process", "asyncio"])
def test_a_chain_step_that_ends_while_redis_is_briefly_full_is_not_run_again(
    server: RedisServer, workers: WorkerProcesses, monkeypatch: pytest.MonkeyPatch, pool: str
) -> None:
    # A step sends the next one before it commits. Refused (Redis full, or restarting),
    # the step was put back to run again a second later: the whole step again, its side
    # effects too, every second until Redis took writes. It now tries the send again for
    # a few seconds first, its lease still renewed.
    monkeypatch.setattr(core.app.conf, "broker_url", server.url)
    workers.start("-c", "1", "-P", pool)
    try:
        handle = (core.work.s(1.5, "first") | core.add.si(1, 2)).apply_async()
        assert wait_for(lambda: workers.ledger.count("start"), timeout=20), workers.log_text()
        fill_up(server)
        assert wait_for(lambda: workers.ledger.count("end"), timeout=20), workers.log_text()
        time.sleep(2.5)  # the step has ended and is trying to send the next one
        with redis.Redis(port=server.port) as raw:
            raw.config_set("maxmemory", 0)
        assert handle.get(timeout=30) == 3, workers.log_text()
        assert list(workers.ledger.count("start").values()) == [1], workers.log_text()
    finally:
        core.app.broker.close()


def test_beat_says_once_that_redis_refuses_its_sends_not_at_every_pass(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A full Redis answers beat's reads and refuses its sends: each pass read the entries
    # ("the broker is reachable again"), failed to send ("broker unreachable") and said
    # the ticks lost so far ("not sent ... could not reach the broker for 1s"): three
    # lines a second for as long as Redis stayed full.
    beat_app = Celeriac("beat-full", broker=server.url)
    beat_app.beat.periodic(beat_app.task(lambda: None, name="t.ping"), every=1, name="ping")
    scheduler = Scheduler(beat_app, ident="full:1")

    def sent() -> int:
        return sum(s.ready for s in beat_app.broker.stats())

    try:
        while not sent():  # the first tick that comes due is sent
            time.sleep(scheduler.step())
        fill_up(server)
        with caplog.at_level(logging.INFO, logger="celeriac.beat"):
            for _ in range(4):  # four ticks come due while Redis is full
                time.sleep(scheduler.step())
            with redis.Redis(port=server.port) as raw:
                raw.config_set("maxmemory", 0)
            while sent() < 2:
                time.sleep(scheduler.step())
        said = caplog.messages
        assert sum("broker unreachable" in m and "is full" in m for m in said) == 1, said
        assert said.count("beat: the broker is reachable again") == 1, said
        assert sum(" not sent (" in m for m in said) == 1, said  # the ticks lost, once
    finally:
        beat_app.broker.close()
