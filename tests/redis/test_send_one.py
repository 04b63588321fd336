"""One delay() has a script of its own (send_one-5.lua): it must leave Redis exactly as
send-2.lua leaves it for a batch of that one message, in every case the batch script
tells apart. Each case runs both scripts on one server, under two key prefixes set up
the same way, and compares the replies and every key and value under each prefix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import redis
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker, ops
from celeriac.message import Message, encode_message
from tests.redis_server import RedisServer

Setup = Callable[[RedisBroker, redis.Redis], None]
FUTURE = 4_102_444_800.0  # 2100-01-01: never due while the test runs
PAST = 1_700_000_000.25


def _uuid_message(priority: int = 0, eta: float | None = None) -> Outgoing:
    message = Message(id=str(uuid.uuid4()), task="t", args=[1])
    return Outgoing(message.id, "q", encode_message(message), priority, eta)


def _nothing(broker: RedisBroker, raw: redis.Redis) -> None:
    pass


def _queued_before(out: Outgoing) -> Setup:
    def setup(broker: RedisBroker, raw: redis.Redis) -> None:
        broker.send([Outgoing(out.id, out.queue, b"first")])

    return setup


def _result_before(out: Outgoing, head: bytes) -> Setup:
    def setup(broker: RedisBroker, raw: redis.Redis) -> None:
        raw.set(broker._ctx.keys.result(out.id), head + b"{}")

    return setup


def _ready_before(length: int, wake_tokens: int) -> Setup:
    """The ready list of priority 0 ``length`` long, the wake list ``wake_tokens`` long."""

    def setup(broker: RedisBroker, raw: redis.Redis) -> None:
        q = broker._ctx.keys.queue("q")
        more = length - raw.llen(q.ready[0])
        broker.send([Outgoing(f"earlier-{n}", "q", b"x") for n in range(more)])
        assert raw.llen(q.ready[0]) == length
        raw.delete(q.wake)
        if wake_tokens:
            raw.lpush(q.wake, *["1"] * wake_tokens)

    return setup


def _cases() -> Iterator[tuple[str, Outgoing, Setup]]:
    yield "a new UUID id", _uuid_message(), _nothing
    yield "a priority", _uuid_message(7), _nothing
    yield "a priority under 0", Outgoing("low", "q", b'{"task":"t","id":"low"}', -3), _nothing
    yield "a priority over 9", Outgoing("\x00x", "q", b"{}", 12), _nothing
    odd = Outgoing("caf\u00e9-\udcff", "q", b'{"id":"caf\xc3\xa9-\xff","task":"t"}', 9)
    yield "an id that is not ASCII", odd, _nothing
    yield "an uppercase UUID", Outgoing(str(uuid.uuid4()).upper(), "q", b"[]"), _nothing
    yield "an eta to come", _uuid_message(eta=FUTURE), _nothing
    yield "an eta gone by", _uuid_message(3, eta=PAST), _nothing
    queued = _uuid_message()
    yield "an id already queued", queued, _queued_before(queued)
    finished = _uuid_message()
    yield "an id already finished", finished, _result_before(finished, b"F")
    late = _uuid_message(eta=FUTURE)
    yield "a delayed id already finished", late, _result_before(late, b"F")
    revoked = _uuid_message()  # a revoke mark is not final: the worker settles it REVOKED
    yield "an id revoked before it was sent", revoked, _result_before(revoked, b"R")
    running = Outgoing("started-1", "q", b"{}")
    yield "an id with a result that is not final", running, _result_before(running, b"S")
    yield "a short list, wake tokens piled up", _uuid_message(), _ready_before(3, 16)
    # WAKE_CAP is 16: a message that makes the list 16 long pushes a token, the 17th not.
    yield "the last list length that wakes", _uuid_message(), _ready_before(15, 2)
    yield "the first that does not", _uuid_message(), _ready_before(16, 2)


def _state(raw: redis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under ``prefix``, the prefix taken out of its name, with its value."""
    found: dict[bytes, Any] = {}
    for key in raw.scan_iter(match=f"{prefix}:*", count=1000):
        kind = raw.type(key)
        value: Any
        if kind == b"list":
            value = raw.lrange(key, 0, -1)
        elif kind == b"hash":
            value = raw.hgetall(key)
        elif kind == b"zset":
            value = raw.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            value = raw.smembers(key)
        else:
            value = raw.get(key)
        found[key.replace(prefix.encode(), b"<p>")] = (kind, value)
    return found


@pytest.fixture
def two(redis_server: RedisServer) -> Iterator[tuple[RedisBroker, RedisBroker]]:
    """Two brokers on one server under two fresh prefixes: one for each script."""
    made = [RedisBroker(f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}") for _ in range(2)]
    yield made[0], made[1]
    for broker in made:
        broker.close()


@pytest.mark.parametrize("case", list(_cases()), ids=lambda case: case[0])
def test_one_message_leaves_redis_as_a_batch_of_one_does(
    two: tuple[RedisBroker, RedisBroker], raw: redis.Redis, case: tuple[str, Outgoing, Setup]
) -> None:
    _, out, setup = case
    one, batch = two
    for broker in two:
        broker.send([Outgoing("registers-q", "q", b"x")])  # the queue known, a start-up check
        setup(broker, raw)
    one_call = ops._send_one_call(one._ctx, one._ctx.keys.queue("q"), out)
    batch_call = ops._send_call(batch._ctx, batch._ctx.keys.queue("q"), [out])
    assert one_call.script.name == "send_one-5" and batch_call.script.name == "send-2"
    one_reply = one._sync.call(one_call, "send one")
    (batch_reply,) = batch._sync.call(batch_call, "send a batch")
    assert one_reply == batch_reply
    assert _state(raw, one._ctx.keys.prefix.decode()) == _state(
        raw, batch._ctx.keys.prefix.decode()
    )


def test_a_delay_uses_the_one_message_script_and_says_whether_it_was_new(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    broker.send([Outgoing("registers-q", "q", b"x")])
    out = _uuid_message()
    assert ops.one_send(broker._ctx, [out]) == ops._send_one_call(
        broker._ctx, broker._ctx.keys.queue("q"), out
    )
    assert broker.send([out]) == [True]
    assert broker.send([out]) == [False]
    assert raw.llen(broker._ctx.keys.queue("q").ready[0]) == 2


def test_the_async_face_sends_one_message_with_it_too(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    async def twice(out: Outgoing) -> list[list[bool]]:
        return [await broker.asend([out]), await broker.asend([out])]

    broker.send([Outgoing("registers-q", "q", b"x")])
    out = _uuid_message(5)
    assert asyncio.run(twice(out)) == [[True], [False]]
    assert raw.llen(broker._ctx.keys.queue("q").ready[5]) == 1
