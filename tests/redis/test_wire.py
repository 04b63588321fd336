"""celeriac's own sync client (wire.py): raw replies, errors as celeriac's, retries as promised.

redis-py appears here only as an independent client that looks at the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import redis
from celeriac.brokers.redis import errors
from celeriac.brokers.redis.errors import NoScriptError, ResponseError
from celeriac.brokers.redis.wire import RETRY_PAUSES, Wire, opener
from celeriac.testing import wait_for
from tests.redis_server import RedisServer, start_redis


@pytest.fixture
def wire(redis_server: RedisServer) -> Iterator[Wire]:
    made = Wire(opener(f"redis://127.0.0.1:{redis_server.port}/0", 30.0))
    yield made
    made.close()


def test_replies_come_back_raw(wire: Wire, prefix: str) -> None:
    key = f"{prefix}:k"
    assert wire.call(("SET", key, b"\x00v")) == b"OK"
    assert wire.call(("GET", key)) == b"\x00v"
    assert wire.call(("GET", f"{prefix}:missing")) is None
    assert wire.call(("RPUSH", f"{prefix}:l", 1, 2)) == 2
    assert wire.call(("LRANGE", f"{prefix}:l", 0, -1)) == [b"1", b"2"]


def test_error_replies_are_celeriacs_redis_errors(wire: Wire, prefix: str) -> None:
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


def test_an_error_inside_an_array_reply_is_a_redis_error(wire: Wire) -> None:
    reply = wire.call(("EVAL", "return {1, redis.error_reply('NOSCRIPT inner')}", 0))
    assert reply[0] == 1
    assert isinstance(reply[1], NoScriptError)


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


def test_a_command_sent_now_is_answered_later_on_its_own_socket(
    wire: Wire, redis_server: RedisServer, prefix: str
) -> None:
    raw = redis.Redis(port=redis_server.port)
    try:
        sent = wire.send(("INCR", f"{prefix}:n"))
        # Redis runs it at once; the reply waits in the socket meanwhile.
        assert wait_for(lambda: raw.get(f"{prefix}:n") == b"1", timeout=5)
        assert wire.call(("INCR", f"{prefix}:other")) == 1  # another socket meanwhile
        assert sent.reply() == 1
        connections = raw.info("stats")["total_connections_received"]
        for _ in range(3):  # both sockets went back clean: no new connection is made
            wire.send(("PING",)).reply()
            wire.call(("PING",))
        assert raw.info("stats")["total_connections_received"] == connections
        with pytest.raises(NoScriptError):  # an error reply is raised, as by call()
            wire.send(("EVALSHA", "0" * 40, 0)).reply()
    finally:
        raw.close()


def test_a_reply_lost_with_its_connection_is_asked_again(
    wire: Wire, redis_server: RedisServer, prefix: str
) -> None:
    raw = redis.Redis(port=redis_server.port)
    key = f"{prefix}:list"
    try:
        sent = wire.send(("BLPOP", key, 10))  # blocks in Redis: no reply before the kill
        assert sent.link is not None
        assert wait_for(lambda: raw.info("clients")["blocked_clients"] == 1, timeout=5)
        raw.client_kill(f"127.0.0.1:{sent.link.sock.getsockname()[1]}")
        connections = raw.info("stats")["total_connections_received"]
        raw.rpush(key, "x")
        # The read finds the connection closed: the command is made again on a fresh one,
        # with call()'s retries, and finds the item.
        assert sent.reply() == [key.encode(), b"x"]
        assert raw.info("stats")["total_connections_received"] == connections + 1
    finally:
        raw.close()


def test_a_server_that_hangs_up_costs_three_attempts_then_an_error() -> None:
    # A listener on loopback that reads each connection's first request (the handshake)
    # and hangs up without answering: every attempt fails in the handshake. The
    # wire's policy is one try plus two retries (RETRY_PAUSES), each a fresh connection.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                conn.recv(65536)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    made = Wire(opener(f"redis://127.0.0.1:{listener.getsockname()[1]}?socket_timeout=5", 5))
    try:
        with pytest.raises(errors.ConnectionError):
            made.call(("PING",))
    finally:
        made.close()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        listener.close()
        server.join(timeout=5)
    assert len(accepted) == len(RETRY_PAUSES) + 1


def test_connections_idle_through_a_restart_are_dropped_together(tmp_path: Path) -> None:
    # Each dead idle connection cost a call one of its three tries: with 40 idle (a busy
    # producer's threads, an asyncio child after a burst), the next 13 calls failed with
    # Redis back, and a worker child waited out its backoff after each.
    server = start_redis(tmp_path / "redis")
    made = Wire(opener(f"redis://127.0.0.1:{server.port}/0", 30.0))
    try:
        held = [made.send(("PING",)) for _ in range(40)]  # 40 connections at once...
        assert [sent.reply() for sent in held] == [b"PONG"] * 40  # ...then idle
        server.kill()
        server = start_redis(tmp_path / "redis", port=server.port)
        assert made.call(("PING",)) == b"PONG"  # one broken, the rest dropped unused
        assert made.call(("INCR", "n")) == 1
    finally:
        made.close()
        server.stop()


def test_a_frozen_server_costs_one_timeout_not_three(tmp_path: Path) -> None:
    # A timeout was retried like a broken socket: two fresh connections, each waiting
    # socket_timeout again (90 s with the defaults before a frozen Redis was reported to
    # a worker or a scheduler), and the command sent again if Redis answered the handshake.
    server = start_redis(tmp_path / "redis")
    made = Wire(opener(f"redis://127.0.0.1:{server.port}?socket_timeout=0.5", 0.5))
    raw = redis.Redis(port=server.port)
    try:
        made.call(("PING",))
        before = raw.info("stats")["total_connections_received"]
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(errors.TimeoutError):
                made.call(("INCR", "n"))
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert raw.get("n") == b"1"
        assert raw.info("stats")["total_connections_received"] == before  # no retry
    finally:
        made.close()
        raw.close()
        server.stop()


def test_a_forked_child_that_exits_leaves_its_parents_connections_open(
    redis_server: RedisServer,
) -> None:
    # A child forked by a producer (a web server's workers, multiprocessing) holds copies
    # of the parent's sockets; when it exits, its Wire is finalized (closed). Shutting
    # those copies down would end the parent's connections too: the parent's next call
    # would fail over to a new connection, and a command in flight would be sent again.
    made = Wire(opener(f"redis://127.0.0.1:{redis_server.port}/0", 30.0))
    raw = redis.Redis(port=redis_server.port)
    try:
        made.call(("PING",))  # one idle connection, kept
        before = raw.info("stats")["total_connections_received"]
        child = os.fork()
        if child == 0:  # the child closes its copy of the Wire (as its exit's finalizer does)
            try:
                made.close()
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert made.call(("PING",)) == b"PONG"
        assert raw.info("stats")["total_connections_received"] == before  # the same one
    finally:
        made.close()
        raw.close()
