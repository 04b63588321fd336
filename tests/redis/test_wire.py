"""The raw hot path (wire.py): its own socket reads must answer exactly as redis-py would."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from redis.exceptions import NoScriptError, ResponseError

import redis
from celeriac.brokers.redis.wire import Wire
from tests.redis_server import RedisServer


@pytest.fixture
def wire(redis_server: RedisServer) -> Iterator[Wire]:
    made = Wire(redis.Redis(port=redis_server.port))
    yield made
    made.close()


def test_replies_come_back_raw(wire: Wire, prefix: str) -> None:
    key = f"{prefix}:k"
    assert wire.call(("SET", key, b"\x00v")) == b"OK"
    assert wire.call(("GET", key)) == b"\x00v"
    assert wire.call(("GET", f"{prefix}:missing")) is None
    assert wire.call(("RPUSH", f"{prefix}:l", 1, 2)) == 2
    assert wire.call(("LRANGE", f"{prefix}:l", 0, -1)) == [b"1", b"2"]


def test_error_replies_are_redis_py_exceptions(wire: Wire, prefix: str) -> None:
    wire.call(("SET", f"{prefix}:s", "x"))
    with pytest.raises(NoScriptError):  # the drivers reload a script on exactly this type
        wire.call(("EVALSHA", "0" * 40, 0))
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        wire.call(("LPUSH", f"{prefix}:s", "y"))
    assert wire.call(("PING",)) == b"PONG"  # the socket is still clean after an error


def test_a_pipeline_returns_errors_in_place(wire: Wire, prefix: str) -> None:
    replies = wire.pipeline(
        [("INCR", f"{prefix}:n"), ("EVALSHA", "0" * 40, 0), ("INCR", f"{prefix}:n")]
    )
    assert replies[0] == 1 and replies[2] == 2
    assert isinstance(replies[1], NoScriptError)


def test_a_reply_larger_than_one_read_is_whole(wire: Wire, prefix: str) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: many recv calls
    wire.call(("SET", f"{prefix}:big", big))
    assert wire.call(("GET", f"{prefix}:big")) == big


def test_threads_never_share_a_socket(wire: Wire, prefix: str) -> None:
    failures: list[BaseException] = []

    def count(name: str) -> None:
        try:
            for i in range(300):
                assert wire.call(("INCR", f"{prefix}:{name}")) == i + 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=count, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
