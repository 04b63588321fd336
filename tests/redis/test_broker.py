"""Redis-specific behaviour: layout, memory, URLs, foreign bytes, Cluster details."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import key_slot

import redis
from celeriac.brokers import broker_from_url
from celeriac.brokers.records import DeadLetter, Delivery, Outgoing, WorkerInfo
from celeriac.brokers.redis import RedisBroker, ops
from celeriac.brokers.redis.connection import RedisURL
from celeriac.brokers.redis.keys import INDEX_BUCKETS, Keyspace, compact, expand, is_foreign
from celeriac.errors import BrokerConnectionError, ConfigurationError, MessageError
from celeriac.message import Message, encode_message, ready_at
from celeriac.testing import wait_for
from tests.redis_server import RedisServer, start_redis


def test_broker_from_url_gives_a_redis_broker(redis_server: RedisServer) -> None:
    broker = broker_from_url(f"{redis_server.url}?prefix=x{uuid.uuid4().hex}")
    try:
        assert isinstance(broker, RedisBroker)
        assert broker.send([Outgoing("a", "q", b"a")]) == [True]
    finally:
        broker.close()


# -- bytes pushed by hand ----------------------------------------------------------------

FOREIGN = [
    b'{"id": "x", "task": "t"',
    b"\x00\xff\xfe binary",
    b"",
    b"[1, 2, 3]",
    b"\xce\x1a\x00",
    b"\xce\x1a\x09\x00\x00\xff\xff short",
]


def test_new_connections_read_no_package_metadata(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py read its own version from its package metadata at every new connection
    # (~0.2 ms; a worker child's first ones imported the email parser for it). celeriac's
    # own client names itself from celeriac's version (tests/redis/test_dial.py).
    import importlib.metadata

    reads: list[str] = []
    real_version = importlib.metadata.version

    def counted(name: str) -> str:
        reads.append(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", counted)
    for _ in range(3):
        broker._sync.close()
        assert broker.workers() is not None  # a new connection, and its handshake
    assert reads == []


def test_foreign_bytes_are_delivered_as_they_are(broker: RedisBroker, raw: redis.Redis) -> None:
    q = broker.keys.queue("q")
    raw.rpush(q.ready[0], *FOREIGN)
    raw.rpush(q.ready[4], b"pushed at priority 4")
    broker.send([Outgoing("real", "q", b"{}")])
    got = broker.fetch(["q"], "w", limit=20, lease_seconds=30, timeout=0)
    assert [d.body for d in got] == [b"pushed at priority 4", *FOREIGN, b"{}"]
    assert got[0].priority == 4
    assert len({d.id for d in got}) == len(got)
    for d in got:  # the worker dead-letters them with their raw bytes
        letter = DeadLetter(d.id, d.queue, "?", "malformed", d.body, d.deliveries, "", time.time())
        assert broker.dead_letter(d.lease, letter, None)
    assert sorted(d.body for d in broker.dead_letters()) == sorted(d.body for d in got)
    assert broker.stats()[0].in_flight == 0


def test_stats_read_the_wait_from_the_stored_message_at_each_list_head(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # An entry keeps no time; stats() reads the send time from the message at the head of
    # each ready list, its "id" field put back (stored_body takes it out), and skips
    # bytes pushed by hand, which a fetch dead-letters.
    q = broker.keys.queue("q")
    raw.rpush(q.ready[0], *FOREIGN)
    sent = Message(id=str(uuid.uuid4()), task="shop.charge", sent_at=1_700_000_000.25)
    stored = ops.stored_body(sent.id, encode_message(sent))
    assert stored.startswith(b"\x00{")  # the case that needs the id put back
    broker.send([Outgoing(sent.id, "q", encode_message(sent), 3)])
    (stats,) = broker.stats(ready_at)
    assert (stats.ready, stats.ready_since) == (len(FOREIGN) + 1, 1_700_000_000.25)
    # Without ready_at a Redis broker cannot tell, and says None rather than a guess.
    assert broker.stats()[0].ready_since is None


def test_peek_shows_bytes_pushed_by_hand_as_pushed_and_a_stored_body_as_sent(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    q = broker.keys.queue("q")
    sent = Message(id=str(uuid.uuid4()), task="shop.charge", sent_at=1_800_000_000.25)
    broker.send([Outgoing(sent.id, "q", encode_message(sent))])
    raw.rpush(q.ready[0], *FOREIGN)
    raw.rpush(q.ready[2], b"\x00{pushed by hand")  # led like a stored body: kept as it is
    seen = broker.peek("q", 100)
    assert [(w.id, w.priority, w.body) for w in seen] == [
        ("", 2, b"\x00{pushed by hand"),
        (sent.id, 0, encode_message(sent)),  # its id put back, byte for byte
        *[("", 0, body) for body in FOREIGN],
    ]
    # A foreign entry (given an id by a fetch, then put back) keeps its bytes as pushed.
    (taken,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    assert broker.requeue(taken.lease)
    again = broker.peek("q", 100)[0]  # back at its priority, 2
    assert taken.id and (again.id, again.body) == (taken.id, b"\x00{pushed by hand")


def test_stats_pass_over_bytes_pushed_by_hand_to_the_first_message_behind_them(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    q = broker.keys.queue("q")
    broker.send([Outgoing("later", "q", b"{}", eta=time.time() + 600)])  # registers q
    raw.rpush(q.ready[0], b"pushed by hand")
    (stats,) = broker.stats(ready_at)
    assert (stats.ready, stats.ready_since, stats.waited(time.time())) == (1, None, None)
    hour_ago = time.time() - 3600
    sent = Message(id=str(uuid.uuid4()), task="shop.charge", sent_at=hour_ago)
    broker.send([Outgoing(sent.id, "q", encode_message(sent))])
    (stats,) = broker.stats(ready_at)
    assert (stats.ready, stats.ready_since) == (2, hour_ago)


def test_stats_read_a_head_s_message_once_while_it_stays_first(broker: RedisBroker) -> None:
    # An exporter asks every scrape; a stuck head's body (up to 256 KB) is sent once.
    read: list[bytes] = []

    def counted(body: bytes) -> float | None:
        read.append(body)
        return ready_at(body)

    at = 1_700_000_000.0
    stuck = [Message(id=str(uuid.uuid4()), task="t", sent_at=at + i) for i in range(3)]
    broker.send([Outgoing(m.id, "q", encode_message(m), 4) for m in stuck])
    assert [s.ready_since for s in broker.stats(counted)] == [at]
    assert [s.ready_since for s in broker.stats(counted)] == [at]
    assert len(read) == 1
    (first,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    assert [s.ready_since for s in broker.stats(counted)] == [at + 1]
    assert len(read) == 2  # a new head: read
    assert broker.requeue(first.lease)  # back at the tail: the head is still the second
    assert [s.ready_since for s in broker.stats(counted)] == [at + 1]
    assert len(read) == 2


def test_stats_date_no_queue_by_a_lapsed_lease_without_its_message(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # A lease left without its held message (release() drops such ones) is no message.
    q = broker.keys.queue("q")
    broker.send([Outgoing("held", "q", b"{}")])
    broker.fetch(["q"], "w", limit=1, lease_seconds=0.05, timeout=0)
    raw.zadd(q.leases, {b"orphan": (time.time() - 86_400) * 1000})
    assert wait_for(lambda: broker.stats(ready_at)[0].ready_since is not None, timeout=15)
    (stats,) = broker.stats(ready_at)
    assert stats.ready_since is not None and stats.ready_since > time.time() - 60


def test_foreign_bytes_survive_requeue_and_lease_expiry(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    raw.rpush(broker.keys.queue("q").ready[0], b"junk")
    (d,) = broker.fetch(["q"], "w", limit=1, lease_seconds=0.1, timeout=0)
    (again,) = broker.fetch(["q"], "w2", limit=1, lease_seconds=30, timeout=15)
    assert (again.id, again.body, again.deliveries) == (d.id, b"junk", 2)
    assert broker.requeue(again.lease)
    (third,) = broker.fetch(["q"], "w3", limit=1, lease_seconds=30, timeout=0)
    assert (third.id, third.body, third.deliveries) == (d.id, b"junk", 3)


def _dead(d: Delivery, reason: str = "malformed") -> DeadLetter:
    return DeadLetter(d.id, d.queue, "t.x", reason, d.body, d.deliveries, "", time.time())


def test_a_foreign_entry_never_takes_the_id_of_a_task(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # Foreign bytes used to be held as 'raw-<seq>': here 'raw-3', over the held task raw-3.
    q = broker.keys.queue("q")
    assert broker.send([Outgoing("raw-3", "q", b'{"real":"task"}')]) == [True]
    (real,) = broker.fetch(["q"], "w1", limit=1, lease_seconds=30, timeout=0)
    pushed = b"\x00{pushed by hand"  # led like a stored body whose id was taken out
    raw.rpush(q.ready[0], pushed)
    (foreign,) = broker.fetch(["q"], "w2", limit=1, lease_seconds=30, timeout=0)
    assert foreign.id != "raw-3"
    assert foreign.body == pushed  # as pushed, not "restored" with an id
    assert compact(expand(compact(foreign.id))) == compact(foreign.id)
    assert broker.dead_letter(foreign.lease, _dead(foreign), None)
    assert broker.complete(real.lease, b"ok", 60)
    assert broker.get_result("raw-3") == (b"ok", True)
    assert [(d.id, d.body) for d in broker.dead_letters()] == [(foreign.id, pushed)]
    assert broker.stats()[0].in_flight == 0


def test_a_foreign_id_is_never_taken_for_a_uuid(broker: RedisBroker, raw: redis.Redis) -> None:
    q = broker.keys.queue("q")
    raw.set(q.seq, 10**11 - 2)  # this fetch: token 10**11 - 1, foreign id 10**11 (12 digits)
    raw.rpush(q.ready[0], b"junk")
    (d,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    assert d.id == "\x00raw-0100000000000"  # 18 bytes: a 17-byte one would expand as a UUID
    assert broker.complete(d.lease, None, 60)


@pytest.mark.parametrize("task_id", ["\x00raw-1", "\x00raw-0100000000000"])
def test_the_foreign_id_spelling_is_refused_by_send(broker: RedisBroker, task_id: str) -> None:
    with pytest.raises(MessageError, match="reserved"):
        broker.send([Outgoing("a", "q", b"a"), Outgoing(task_id, "q", b"b")])
    assert broker.stats() == []  # nothing was sent, not even the valid one
    # Ids that only look alike are ordinary ids.
    alike = ["raw-1", "\x00raw-", "\x00raw-1x", "\x00raw-" + "1" * 12, "\x01\x00raw-1"]
    assert broker.send([Outgoing(i, "q", b"x") for i in alike]) == [True] * len(alike)
    got = broker.fetch(["q"], "w", limit=10, lease_seconds=30, timeout=0)
    assert [d.id for d in got] == alike
    assert all(broker.complete(d.lease, None, 60) for d in got)


# -- sizes: no script may fail midway (Redis does not roll back what it already wrote) ----


def _take_all(broker: RedisBroker, queue: str) -> list[Delivery]:
    """Everything ready in ``queue``, a thousand per fetch."""
    taken: list[Delivery] = []
    while got := broker.fetch([queue], "w", limit=1000, lease_seconds=60, timeout=0):
        taken += got
    return taken


def test_a_fetch_of_thousands_holds_all_it_takes(broker: RedisBroker) -> None:
    # Lua's unpack() fails near 8000 values: the hold of 4000 entries (2 values each)
    # failed after they were popped, and they were lost.
    count = 4500
    broker.send([Outgoing(f"t{i}", "q", b"x") for i in range(count)])
    got = broker.fetch(["q"], "w", limit=count + 10, lease_seconds=30, timeout=0)
    assert sorted(d.id for d in got) == sorted(f"t{i}" for i in range(count))
    assert (broker.stats()[0].ready, broker.stats()[0].in_flight) == (0, count)
    committed, _ = broker.complete_many([(d.lease, None) for d in got], 60)
    assert all(committed)


def test_a_fetch_over_hundreds_of_queues_keeps_strict_priority(broker: RedisBroker) -> None:
    # 820 queues are 8200 ready lists: more than one LMPOP (one unpack()) can name.
    names = [f"q{i}" for i in range(820)]
    broker.send([Outgoing(f"low-{n}", n, b"x") for n in names])
    broker.send([Outgoing("p3-late", names[-1], b"x", 3), Outgoing("p3-early", "q5", b"x", 3)])
    broker.send([Outgoing("p9", names[-2], b"x", 9)])
    got = broker.fetch(names, "w", limit=10, lease_seconds=30, timeout=0)
    assert [d.id for d in got] == ["p9", "p3-early", "p3-late", *(f"low-q{i}" for i in range(7))]


def test_every_due_delayed_message_is_promoted_before_taking(broker: RedisBroker) -> None:
    eta = time.time() + 0.3
    broker.send([Outgoing(f"low{i}", "q", b"x", 0, eta) for i in range(1500)])
    broker.send([Outgoing("high", "q", b"x", 9, eta + 0.05)])  # due after all the others
    assert wait_for(lambda: broker.stats()[0].delayed == 0, timeout=15)  # all due (Redis time)
    (d,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    assert (d.id, d.priority) == ("high", 9)


def test_complete_many_over_a_batch_settles_every_queue(broker: RedisBroker) -> None:
    broker.send([Outgoing("a", "q1", b"a")])
    broker.send([Outgoing(f"t{i}", "q2", b"x") for i in range(8100)])
    (a,) = broker.fetch(["q1"], "w", limit=1, lease_seconds=30, timeout=0)
    many = _take_all(broker, "q2")
    items = [(a.lease, b"result of a"), *((d.lease, b"r") for d in many)]
    committed, _ = broker.complete_many(items, 60)
    assert committed == [True] * len(items)
    assert broker.get_result("a") == (b"result of a", True)
    assert [s.in_flight for s in broker.stats()] == [0, 0]


def test_thousands_of_dead_letters_are_listed_and_replayed(broker: RedisBroker) -> None:
    count = 8200
    broker.send([Outgoing(f"t{i}", "q", b"x") for i in range(count)])
    for d in _take_all(broker, "q"):
        assert broker.dead_letter(d.lease, _dead(d, "poison"), None)
    assert len(broker.dead_letters(count + 1)) == count
    assert broker.replay_dead_letters(task="t.x") == count
    assert (broker.stats()[0].ready, broker.stats()[0].dead) == (count, 0)


def test_purging_dead_letters_frees_them_in_the_background(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    # DEL freed every letter in the call: a million (raw bytes and tracebacks) stalled the
    # server for its length. UNLINK frees a big hash in Redis's background thread.
    def unlinks() -> int:
        stats: dict[str, dict[str, int]] = raw.info("commandstats")
        return stats.get("cmdstat_unlink", {}).get("calls", 0)

    broker.send([Outgoing(f"t{i}", "q", b"x") for i in range(10)])
    for d in _take_all(broker, "q"):
        assert broker.dead_letter(d.lease, _dead(d, "poison"), None)
    before = unlinks()
    assert broker.purge_dead_letters() == 10
    assert unlinks() == before + 1
    assert broker.stats()[0].dead == 0
    assert broker.dead_letters() == []


def test_a_replay_of_every_dead_letter_is_done_a_step_at_a_time(tmp_path: Path) -> None:
    # Every letter of a queue was read in one reply and replayed in one script call: at
    # 200,000 letters Redis stalled 2.7 s and the CLI took 500 MB. A server that caps a
    # client's reply at 1 MB (as managed ones do) shows the size of each step: 3 MB of
    # letters in one reply closed the connection, and nothing was replayed.
    server = start_redis(
        tmp_path / "redis", extra=("--client-output-buffer-limit", "normal 1mb 1mb 0")
    )
    broker = RedisBroker(server.url)
    try:
        count, body = 3000, b"x" * 1000
        for first in range(0, count, 500):
            broker.send([Outgoing(f"t{i}", "q", body) for i in range(first, first + 500)])
        for d in _take_all(broker, "q"):
            assert broker.dead_letter(d.lease, _dead(d, "unknown task"), None)
        assert broker.replay_dead_letters(task="t.x") == count
        assert (broker.stats()[0].ready, broker.stats()[0].dead) == (count, 0)
        got = _take_all(broker, "q")
        assert sorted(d.id for d in got) == sorted(f"t{i}" for i in range(count))
        assert got[0].id == "t0"  # the oldest first, as they were queued
    finally:
        broker.close()
        server.stop()


def test_thousands_of_live_workers_are_listed(broker: RedisBroker) -> None:
    count = 8200
    now = time.time()
    broker.heartbeat_all([WorkerInfo(f"w{i}", "h", i, ("q",), 1, now) for i in range(count)], 60)
    assert len(broker.workers()) == count


# -- memory ------------------------------------------------------------------------------


def test_memory_per_queued_task(broker: RedisBroker, raw: redis.Redis) -> None:
    count = 10_000
    messages = [
        Message(id=str(uuid.uuid4()), task="tasks.add", args=[1, 2], sent_at=time.time())
        for _ in range(count)
    ]
    bodies = [encode_message(m) for m in messages]
    # Warm up: scripts cached, connections open, so only the queued tasks are measured.
    broker.send([Outgoing(f"warm{i}", "warm", b"{}") for i in range(100)])
    broker.purge("warm")
    before = int(raw.info("memory")["used_memory"])
    for start in range(0, count, 1000):
        assert all(
            broker.send(
                [
                    Outgoing(m.id, "mem", b)
                    for m, b in zip(
                        messages[start : start + 1000], bodies[start : start + 1000], strict=True
                    )
                ]
            )
        )
    per_task = (int(raw.info("memory")["used_memory"]) - before) / count
    body = sum(map(len, bodies)) / count
    print(f"\nRedis memory per queued task: {per_task:.0f} bytes ({body:.0f}-byte message)")
    assert per_task < 400  # a generous bound; the target is <= 200
    assert broker.purge("mem") == count


def test_a_queued_body_is_stored_without_its_id_and_fetched_whole(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    message = Message(id=str(uuid.uuid4()), task="tasks.add", args=[1, 2])
    body = encode_message(message)
    other = b'{"task":"t","id":"custom-1"}'  # not led by its id: stored as it is
    assert broker.send([Outgoing(message.id, "q", body), Outgoing("custom-1", "q", other)])
    stored = raw.lrange(broker.keys.queue("q").ready[0], 0, -1)
    assert message.id.encode() not in stored[0]  # 17 raw bytes in the header, not 36 in JSON
    assert len(stored[0]) < len(body) - 15
    assert stored[1].endswith(other)
    got = broker.fetch(["q"], "w", limit=2, lease_seconds=30, timeout=0)
    assert [(d.id, d.body) for d in got] == [(message.id, body), ("custom-1", other)]
    assert broker.requeue(got[0].lease)  # requeued: still whole when fetched again
    (again,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    assert again.body == body


def test_the_send_call_builds_what_the_entry_layout_says() -> None:
    # _send_call inlines pack_entry, stored_body, index_bucket and the result key (it runs
    # once per message sent); this pins the inline copy to the functions that define them.
    ctx = ops.Context(Keyspace("p"), cluster=False, known=set())
    q = ctx.keys.queue("q")
    sent = [
        Message(id=str(uuid.uuid4()), task="t", args=[i], priority=p) for i, p in [(1, 3), (2, 12)]
    ]
    outgoing = [
        Outgoing(m.id, "q", encode_message(m), m.priority, 12.5 * i) for i, m in enumerate(sent)
    ]
    outgoing.append(Outgoing("custom-1", "q", b'{"task":"t","id":"custom-1"}', -1))
    call = ops._send_call(ctx, q, outgoing)
    assert call.args[:2] == ["direct", 0]  # the lowest priority: -1, sent at 0
    assert tuple(call.keys[2:12]) == q.ready  # priorities 0 to 9 (12, sent at 9), in order
    for n, out in enumerate(outgoing):
        bucket, result, eta, entry = call.args[2 + 4 * n : 6 + 4 * n]
        priority, cid = min(max(out.priority, 0), 9), compact(out.id)
        assert call.keys[bucket - 1] == q.bucket(cid)
        assert call.keys[result - 1] == ctx.target(q, out.id)
        assert eta == (int(out.eta * 1000) if out.eta else 0)
        # The script reads the id and the priority (its ready list) from the entry.
        assert entry == ops.pack_entry(cid, priority, ops.stored_body(out.id, out.body))
    assert len(call.keys) == len(set(call.keys))  # each key passed once
    # One priority only: its ready list is the one ready list passed.
    call = ops._send_call(ctx, q, [Outgoing("a", "q", b"{}", 4), Outgoing("b", "q", b"{}", 4)])
    assert call.args[:2] == ["direct", 4] and call.keys[2:4] == [q.ready[4], q.bucket(b"a")]


def test_the_hot_path_recovers_from_a_dropped_connection(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    assert broker.send([Outgoing("a", "q", b"a")]) == [True]  # connections made and kept
    killed = raw.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    # The kept sockets are dead: one retry on a fresh connection, and the caller sees nothing.
    assert broker.send([Outgoing("b", "q", b"b")]) == [True]
    raw.client_kill_filter(_type="normal", skipme=True)
    many = [Outgoing(f"m{i}", "q", b"x" * 200) for i in range(3000)]  # a streamed pipeline
    assert broker.send(many) == [True] * 3000
    assert broker.stats()[0].ready == 3002


def test_a_streamed_send_recovers_from_a_script_flush(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    broker.send([Outgoing("warm", "q", b"w")])
    raw.script_flush()
    many = [Outgoing(f"m{i}", "q", b"x" * 200) for i in range(2000)]  # NOSCRIPT mid-stream
    assert broker.send(many) == [True] * 2000
    assert broker.stats()[0].ready == 2001


# -- layout ------------------------------------------------------------------------------


def test_every_key_of_a_queue_shares_one_slot() -> None:
    q = Keyspace("celeriac").queue("emails")
    keys = {*q.block, *q.buckets, q.outbox, q.dead, q.dead_at}
    assert len(keys) == 15 + INDEX_BUCKETS + 3
    assert {key_slot(k) for k in keys} == {key_slot(b"{emails}")}
    ks = Keyspace("p")
    assert key_slot(ks.result("abc")) == key_slot(b"{abc}")
    assert key_slot(ks.workers_alive) == key_slot(ks.workers_info)


@pytest.mark.parametrize("name", ["", "a{b", "a}b"])
def test_queue_names_with_braces_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="hash tag"):
        Keyspace("celeriac").queue(name)


@pytest.mark.parametrize(
    "task_id",
    [
        "a",
        "9b2c7a4e-0d1f-4c3b-8a5e-6f7a8b9c0d1e",
        "9B2C7A4E-0D1F-4C3B-8A5E-6F7A8B9C0D1E",
        "\x00",
        "\x01x",
        "\udcff surrogate",
        "ü" * 40,
        "",
        "\x00raw-3",  # a foreign id (refused by send), as fetch delivers it
        "\x00raw-123456789012",  # 17 bytes: not a foreign id, escaped like any other
    ],
)
def test_compact_ids_round_trip(task_id: str) -> None:
    assert expand(compact(task_id)) == task_id
    assert compact(task_id) != b""  # entry.lua reads an empty id as bytes pushed by hand


def test_foreign_ids_round_trip_and_no_other_id_compacts_to_one() -> None:
    for cid in (b"\x00raw-1", b"\x00raw-99999999999", b"\x00raw-0100000000000"):
        assert is_foreign(cid)
        assert compact(expand(cid)) == cid
    assert not is_foreign(b"\x00raw-123456789012")  # 17 bytes: a UUID
    for task_id in ("raw-1", "\x01\x00raw-1", "\x00raw-", "\x00raw-1 ", str(uuid.uuid4())):
        assert not is_foreign(compact(task_id))


def test_a_compact_uuid_expands_as_uuid_prints_it() -> None:
    raw = [bytes(16), b"\xff" * 16, *(os.urandom(16) for _ in range(5000))]
    for value in raw:
        assert expand(b"\x00" + value) == str(uuid.UUID(bytes=value))


# -- URLs --------------------------------------------------------------------------------


def test_url_options() -> None:
    url = RedisURL.parse("redis://alice:pw@db.example:6380/3?prefix=shop&socket_timeout=2")
    assert url.safe == "redis://alice:***@db.example:6380/3?prefix=shop&socket_timeout=2"
    assert (url.prefix, url.cluster) == ("shop", False)
    assert url.redis_url == "redis://alice:pw@db.example:6380/3?socket_timeout=2"
    assert RedisURL.parse("rediss://h:6380/0?cluster=1").cluster
    assert RedisURL.parse("unix:///run/redis.sock?db=1").redis_url == "unix:///run/redis.sock?db=1"
    with pytest.raises(ConfigurationError, match="Unix socket"):
        RedisURL.parse("unix:///run/redis.sock?cluster=1")
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        RedisURL.parse("amqp://guest@localhost//")
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBroker("redis://localhost/0?prefix={x}")


def test_cluster_seed_nodes_in_the_url() -> None:
    url = RedisURL.parse("redis://h1:7000?cluster=1&nodes=h2:7001,[::1]:7002&nodes=h4:7003")
    assert url.seeds == (("h2", 7001), ("::1", 7002), ("h4", 7003))
    assert url.redis_url == "redis://h1:7000"  # redis-py never sees nodes=
    assert RedisURL.parse("redis://h1:7000?cluster=1").seeds == ()
    with pytest.raises(ConfigurationError, match=r"nodes= .* add cluster=1"):
        RedisURL.parse("redis://h1:6379/0?nodes=h2:6379")
    for bad in ("h2", "h2:port", "h2:70000", ":7000"):
        with pytest.raises(ConfigurationError, match=f"has '{re.escape(bad)}', not host:port"):
            RedisURL.parse(f"redis://h1:7000?cluster=1&nodes={bad}")


def test_url_mistakes_are_refused_before_any_connection() -> None:
    # redis-py would quietly use database 0 for these, or fail at the first connection
    # with a TypeError naming none of the URL.
    with pytest.raises(ConfigurationError, match="'one', not a number"):
        RedisURL.parse("redis://localhost:6379/one")
    with pytest.raises(ConfigurationError, match="'x', not a number"):
        RedisURL.parse("unix:///run/redis.sock?db=x")
    with pytest.raises(ConfigurationError, match="unknown option 'sokcet_timeout'") as caught:
        RedisURL.parse("redis://alice:pw@localhost/0?sokcet_timeout=2")
    assert "pw" not in str(caught.value) and "alice:***@" in str(caught.value)
    with pytest.raises(ConfigurationError, match="not a Redis URL") as caught:
        RedisURL.parse("http://alice:pw@localhost/0")
    assert "pw" not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"port .* is not a number") as caught:
        RedisURL.parse("redis://alice:pw@localhost:abc/0")  # was: a bare ValueError
    assert "pw" not in str(caught.value)
    # Options redis-py takes pass, whichever class takes them.
    for option in ("socket_timeout=2", "client_name=w", "db=3", "max_connections=5"):
        assert RedisURL.parse(f"redis://localhost?{option}").redis_url.endswith(option)
    assert RedisURL.parse("rediss://localhost?ssl_cert_reqs=none").redis_url.endswith("=none")


@pytest.mark.parametrize(
    ("url", "said"),
    [
        # Each was found only at the first send: a bare ValueError or TypeError, or a
        # RedisError worded as the server refusing a command.
        ("redis://alice:pw@localhost/0?socket_timeout=abc", "socket_timeout='abc' is not a number"),
        ("rediss://alice:pw@localhost/0?ssl_cert_reqs=bogus", "one of none, optional, required"),
        ("redis://alice:pw@localhost/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs= applies to TLS"),
        ("redis://alice:pw@localhost/0?timeout=3", "does not take timeout= from a URL"),
        ("redis://alice:pw@localhost:7000?cluster=1&socket_timeout=x", "socket_timeout='x'"),
        # 0 made the socket non-blocking ("did not answer" of a healthy server); the rest
        # raised a bare ValueError or OverflowError at the first send.
        ("redis://alice:pw@localhost/0?socket_timeout=0", "socket_timeout=0 must be a number"),
        ("redis://alice:pw@localhost/0?socket_timeout=-1", "over 0 (e.g. 5)"),
        ("redis://alice:pw@localhost/0?socket_timeout=nan", "socket_timeout=nan must be"),
        ("redis://alice:pw@localhost/0?socket_connect_timeout=inf", "socket_connect_timeout=inf"),
        # Read as "Redis did not answer", and workers waited for ever.
        ("rediss://alice:pw@localhost/0?ssl_ca_certs=/no/ca.pem", "/no/ca.pem: no such file"),
        ("rediss://alice:pw@localhost/0?ssl_certfile=/no/c.pem", "ssl_certfile=/no/c.pem: no"),
        ("rediss://alice:pw@localhost/0?ssl_ca_path=/no/certs", "ssl_ca_path=/no/certs: no"),
    ],
)
def test_an_option_value_celeriac_cannot_use_is_refused_at_once(url: str, said: str) -> None:
    with pytest.raises(ConfigurationError, match="option celeriac cannot use") as caught:
        RedisURL.parse(url)
    assert said in str(caught.value)
    assert "pw" not in str(caught.value) and "alice:***@" in str(caught.value)


def test_a_database_the_server_lacks_is_named(redis_server: RedisServer) -> None:
    broker = RedisBroker(f"{redis_server.url.rsplit('/', 1)[0]}/99")
    try:
        with pytest.raises(BrokerConnectionError, match=r"no such database .*below the server"):
            broker.check()
    finally:
        broker.close()


def test_unix_socket(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "sock", unixsocket=True)
    broker = RedisBroker(f"unix://{server.unixsocket}?db=2&prefix=u")
    try:
        assert broker.send([Outgoing("a", "q", b"a")]) == [True]
        assert [d.id for d in broker.fetch(["q"], "w", limit=1, lease_seconds=5, timeout=0)] == [
            "a"
        ]
    finally:
        broker.close()
        server.stop()


# -- the sync hot path never touches an event loop ---------------------------------------


def test_sync_hot_path_has_no_event_loop(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker.check()

    def forbidden(*args: object) -> None:
        raise AssertionError("the sync face touched asyncio")

    for name in ("get_event_loop", "get_running_loop", "new_event_loop", "run"):
        monkeypatch.setattr(asyncio, name, forbidden)
    broker.send([Outgoing("a", "q", b"a"), Outgoing("b", "q", b"b")])
    (d,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    committed, more = broker.complete_and_fetch(
        d.lease, b"r", 60, ["q"], "w", limit=1, lease_seconds=30
    )
    assert committed and [m.id for m in more] == ["b"]
    assert broker.wait_result("a", 5) == b"r"


# -- Cluster: results travel through the queue's outbox ---------------------------------


def test_cluster_commit_leaves_no_outbox(cluster_broker: RedisBroker) -> None:
    cluster_broker.send([Outgoing("a", "q", b"a")])
    (d,) = cluster_broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    assert cluster_broker.complete(d.lease, b"done", 60)
    client = cluster_broker._sync.client
    assert client.hlen(cluster_broker.keys.queue("q").outbox) == 0
    assert cluster_broker.get_result("a") == (b"done", True)


def test_cluster_reaper_finishes_an_interrupted_commit(cluster_broker: RedisBroker) -> None:
    # As if a worker died between its committing script and copying the result out.
    cluster_broker.send([Outgoing("a", "q", b"a")])
    client = cluster_broker._sync.client
    client.hset(cluster_broker.keys.queue("q").outbox, compact("a"), b"60000:the result")
    assert cluster_broker.send([Outgoing("a", "q", b"a")]) == [False]  # committed counts
    assert cluster_broker.get_result("a") is None
    cluster_broker.reap()
    assert cluster_broker.get_result("a") == (b"the result", True)
    assert client.hlen(cluster_broker.keys.queue("q").outbox) == 0


# -- result wake-ups ---------------------------------------------------------------------


def test_a_commit_publishes_its_wake_up_only_while_a_waiter_is_registered(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    listener = raw.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(broker.keys.channel("a"), broker.keys.channel("b"))

    def woken(timeout: float) -> list[bytes]:
        seen = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = listener.get_message(timeout=left)
            if message is not None:
                seen.append(message["channel"])
        return seen

    broker.send([Outgoing("a", "q", b"a"), Outgoing("b", "q", b"b")])
    a, b = broker.fetch(["q"], "w", limit=2, lease_seconds=30, timeout=0)
    assert broker.complete_many([(a.lease, b"ra")], 60) == ([True], [])
    assert woken(0.3) == []  # nobody waits: no PUBLISH (it costs Redis ~5 us per result)
    raw.zadd(broker.keys.waiting, {b"someone": int((time.time() + 60) * 1000)})
    assert broker.complete_many([(b.lease, b"rb")], 60) == ([True], [])
    assert woken(5) == [broker.keys.channel("b")]
    listener.close()


def test_a_waiter_registers_and_is_woken_by_the_commit_not_by_its_poll(
    broker: RedisBroker, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeriac.brokers.redis import admin

    # The waiter's fallback, reading the key after a quiet LISTEN_STEP, is pushed past the
    # wait's timeout: only the commit's wake-up can end the wait before it.
    monkeypatch.setattr(admin, "LISTEN_STEP", 3600.0)
    broker.send([Outgoing("t", "q", b"t")])
    (d,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    got: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: got.append(broker.wait_result("t", 120)))
    waiter.start()
    assert wait_for(lambda: raw.zcard(broker.keys.waiting) == 1, timeout=10)
    time.sleep(0.1)  # the waiter is subscribed and listening
    assert broker.complete_many([(d.lease, b"done")], 60) == ([True], [])
    waiter.join(30)  # a generous deadline, far under the wait's 120 s timeout
    assert not waiter.is_alive(), "the commit's wake-up never came"
    assert got == [b"done"]
    assert raw.zcard(broker.keys.waiting) == 0  # it left


def test_a_waiter_that_never_leaves_lapses_and_one_that_waits_on_is_renewed(
    broker: RedisBroker, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A waiter cancelled or killed never removes its registration. It was registered until
    # its timeout, years for an aget() with none, so every commit published for good.
    from celeriac.brokers.redis import admin

    monkeypatch.setattr(admin, "WAITER_LEASE", 1.0)

    async def abandon() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.await_result("gone", 10 * 365 * 86_400.0), 0.3)

    asyncio.run(abandon())
    ((_, lapses),) = raw.zrange(broker.keys.waiting, 0, -1, withscores=True)
    assert lapses <= (time.time() + 1.0) * 1000
    time.sleep(1.2)
    broker.reap()
    assert raw.zcard(broker.keys.waiting) == 0

    # A waiter that waits on renews its registration: the reaper leaves it alone.
    waiter = threading.Thread(target=broker.wait_result, args=("slow", 4.0))
    waiter.start()
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        broker.reap()
        assert wait_for(lambda: raw.zcard(broker.keys.waiting) == 1, timeout=10)
        time.sleep(0.3)
    waiter.join(30)
    assert raw.zcard(broker.keys.waiting) == 0  # it left


def _fetch_and_report(url: str, report: multiprocessing.Queue[list[str]]) -> None:
    broker = RedisBroker(url)
    got = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=20)
    report.put([d.id for d in got])
    broker.close()


def test_a_wake_up_delivers_without_another_round_trip(
    redis_server: RedisServer, prefix: str, broker: RedisBroker, raw: redis.Redis
) -> None:
    # An idle fetcher sends its fetch in one pipeline with the BLPOP it blocks on, so Redis
    # takes the message for it the moment the wake-up comes: even a fetcher that cannot
    # send anything (stopped) is handed the message, under a lease recorded at once.
    context = multiprocessing.get_context("fork")
    report: multiprocessing.Queue[list[str]] = context.Queue()
    url = f"{redis_server.url}?prefix={prefix}"
    fetcher = context.Process(target=_fetch_and_report, args=(url, report))
    fetcher.start()
    assert fetcher.pid is not None
    try:
        assert wait_for(lambda: any(c["cmd"] == "blpop" for c in raw.client_list()), timeout=10), (
            "the fetcher never blocked"
        )
        os.kill(fetcher.pid, signal.SIGSTOP)
        broker.send([Outgoing("handed", "q", b"body")])
        assert wait_for(
            lambda: [(s.ready, s.in_flight) for s in broker.stats() if s.queue == "q"] == [(0, 1)],
            timeout=10,
        ), "the message was not taken while its fetcher was stopped"
        os.kill(fetcher.pid, signal.SIGCONT)
        assert report.get(timeout=20) == ["handed"]
    finally:
        os.kill(fetcher.pid, signal.SIGCONT)
        fetcher.join(30)
        if fetcher.is_alive():
            fetcher.kill()


def test_cluster_a_copy_queued_after_its_task_finished_is_acked_not_handed_out(
    cluster_broker: RedisBroker,
) -> None:
    # The end state of a send that raced the commit of the same id: send's check read the
    # result key before the commit, its script queued the id again after it.
    message = Outgoing("order-7", "q", b"charge")
    cluster_broker.send([message])
    (first,) = cluster_broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    assert cluster_broker.complete(first.lease, b"charged", 60)
    ctx = cluster_broker._ctx
    cluster_broker._sync.run(_one(ops._send_call(ctx, ctx.keys.queue("q"), [message])), "send")
    assert [s.ready for s in cluster_broker.stats()] == [1]  # queued again
    assert cluster_broker.fetch(["q"], "w", limit=5, lease_seconds=30, timeout=0) == []
    (stats,) = cluster_broker.stats()
    assert (stats.ready, stats.in_flight) == (0, 0)
    assert cluster_broker.get_result("order-7") == (b"charged", True)


def _one(step: Any) -> Any:
    return (yield step)


def test_an_idle_fetch_stays_under_a_short_socket_timeout(
    redis_server: RedisServer, prefix: str
) -> None:
    # BLPOP blocked 5 s whatever the URL said: with socket_timeout=1 every idle fetch
    # timed out on its own wait and was reported as a broker that did not answer.
    broker = RedisBroker(f"{redis_server.url}?prefix={prefix}&socket_timeout=1")
    try:
        assert broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=2.5) == []
        broker.send([Outgoing("a", "q", b"a")])
        (delivery,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=2.5)
        assert delivery.id == "a"
    finally:
        broker.close()


@pytest.mark.parametrize("option", ["health_check_interval=5", "protocol=2"])
def test_a_url_option_only_redis_py_takes_has_redis_py_open_the_connections(
    redis_server: RedisServer, prefix: str, option: str
) -> None:
    # celeriac's own client (dial.py) takes the common options; for any other, redis-py
    # opens the wire's connections, in RESP3 whatever protocol= says (the wire reads
    # replies raw: a hash must come back as a map, as the plans read it).
    broker = RedisBroker(f"{redis_server.url}?prefix={prefix}&{option}")
    try:
        broker.send([Outgoing("t1", "q", b"{}")])
        (got,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
        assert broker.complete(got.lease, b'{"ok": 1}', 60)
        assert broker.get_result("t1") is not None
        broker.join_add("j", "a", b"1", 60)
        assert broker.join_values("j") == {"a": b"1"}  # HGETALL: a map in RESP3 only
        broker.stream_append("s", [b"x"], 10)
        assert [item for _, item in broker.stream_read("s", 0, 10)] == [b"x"]  # XRANGE
        opener = broker._sync._wire._open  # type: ignore[union-attr]
        assert opener.__qualname__.startswith("connection_opener"), opener.__qualname__
    finally:
        broker.close()
