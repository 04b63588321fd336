"""Redis servers in states an operator meets: loading a large file, commands renamed,
every connection taken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import redis
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import BrokerConnectionError
from tests.redis_server import start_redis


def test_a_redis_loading_its_data_is_named_as_such_not_as_down(tmp_path: Path) -> None:
    # redis-py raises BusyLoadingError, a ConnectionError, and the error read "did not
    # answer ... check that redis-server is running" from a server that had answered.
    server = start_redis(tmp_path / "r")
    admin = redis.Redis(port=server.port)
    admin.eval("for i = 1, 20000 do redis.call('SET', 'k' .. i, 'v') end", 0)
    admin.save()
    admin.close()
    server.stop()
    # Redis's own test hooks: 500 us per key read, so loading lasts about 10 s.
    slow = ("--key-load-delay", "500", "--loading-process-events-interval-bytes", "1024")
    server = start_redis(
        tmp_path / "r", port=server.port, extra=slow, started=(b"+PONG", b"-LOADING")
    )
    broker = RedisBroker(server.url)
    try:
        with pytest.raises(BrokerConnectionError) as caught:
            broker.send([Outgoing("a", "q", b"a")])  # workers retry a connection error
        message = str(caught.value)
        assert f"Redis at {server.url} is loading its data set into memory" in message
        assert "loading_eta_seconds" in message
        assert "Check that redis-server is running" not in message
    finally:
        broker.close()
        server.stop()


def test_a_renamed_config_is_not_called_a_full_redis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "unknown command 'CONFIG', with args beginning with: 'GET' 'maxmemory-policy'" has
    # the word maxmemory in it, and the start-up warning said Redis was full.
    server = start_redis(tmp_path / "r", extra=("--rename-command", "CONFIG", ""))
    broker = RedisBroker(server.url)
    try:
        with caplog.at_level(logging.WARNING, "celeriac.brokers.redis.startup"):
            assert broker.send([Outgoing("a", "q", b"a")]) == [True]
        assert "cannot run CONFIG GET" in caplog.text
        assert "unknown command 'CONFIG'" in caplog.text
        assert "is full" not in caplog.text
    finally:
        broker.close()
        server.stop()


def test_a_redis_at_maxclients_is_named_as_such_not_as_down(tmp_path: Path) -> None:
    # Redis answers a connection past maxclients with "ERR max number of clients reached"
    # and closes it: the error read "did not answer ... Check that redis-server is
    # running", sending an operator after a dead server that served every other client.
    server = start_redis(tmp_path / "r", extra=("--maxclients", "2"))
    others = [redis.Redis(port=server.port) for _ in range(2)]
    broker = RedisBroker(server.url)
    try:
        for other in others:
            other.ping()  # both of the server's connections are taken
        with pytest.raises(BrokerConnectionError) as caught:  # workers wait and retry
            broker.send([Outgoing("a", "q", b"a")])
        message = str(caught.value)
        assert "reached its maxclients limit" in message
        assert "redis-cli INFO clients" in message
        assert "Check that redis-server is running" not in message
        with pytest.raises(BrokerConnectionError, match="reached its maxclients limit"):
            asyncio.run(broker.asend([Outgoing("a", "q", b"a")]))
        while others:  # connections free up: the same broker object goes on
            others.pop().close()
        assert broker.send([Outgoing("a", "q", b"a")]) == [True]
    finally:
        broker.close()
        for other in others:
            other.close()
        server.stop()


def test_a_redis_busy_running_a_script_is_an_outage_with_its_way_out(tmp_path: Path) -> None:
    # BUSY read as a refusal (BrokerError, no advice): code that retries the documented
    # BrokerConnectionError of an outage gave up on it, where LOADING passes.
    server = start_redis(tmp_path / "r", extra=("--busy-reply-threshold", "100"))
    broker = RedisBroker(server.url)
    runner = redis.Redis(port=server.port)
    admin = redis.Redis(port=server.port)
    try:
        assert broker.send([Outgoing("a", "q", b"a")]) == [True]  # checked, scripts loaded
        spin = threading.Thread(
            target=lambda: _swallow(lambda: runner.eval("while true do end", 0)), daemon=True
        )
        spin.start()
        assert spin.is_alive()
        time.sleep(0.3)  # past busy-reply-threshold
        with pytest.raises(BrokerConnectionError) as caught:
            broker.send([Outgoing("b", "q", b"b")])
        message = str(caught.value)
        assert f"Redis at {server.url} is busy running a script" in message
        assert "SCRIPT KILL" in message and "Workers wait for it by themselves" in message
        admin.script_kill()
        spin.join(timeout=10)
        assert broker.send([Outgoing("b", "q", b"b")]) == [True]  # unrun, then sent
    finally:
        runner.close()
        admin.close()
        broker.close()
        server.stop()


def _swallow(call: Callable[[], object]) -> None:
    """Run ``call``; the error a killed script ends with is the point, not a failure."""
    with contextlib.suppress(redis.RedisError):
        call()
