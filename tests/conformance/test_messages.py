"""The broker contract for messages: every test runs on memory, SQLite, Redis and Cluster.

Each test checks behaviour, never timing: a wait is always "until it happens, or fail
after a generous deadline".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from celeriac.brokers.base import Broker
from celeriac.brokers.records import DeadLetter, Delivery, Lease, Outgoing, WorkerInfo

DEADLINE = 15.0  # seconds before a wait that should succeed counts as a failure


def out(
    task_id: str,
    queue: str = "q",
    body: bytes | None = None,
    priority: int = 0,
    eta: float | None = None,
) -> Outgoing:
    return Outgoing(task_id, queue, body if body is not None else task_id.encode(), priority, eta)


def take(
    broker: Broker,
    *,
    consumer: str = "w1",
    queues: tuple[str, ...] = ("q",),
    limit: int = 10,
    lease: float = 30.0,
    timeout: float = 0.0,
) -> list[Delivery]:
    return broker.fetch(list(queues), consumer, limit=limit, lease_seconds=lease, timeout=timeout)


def one(broker: Broker, **kwargs: object) -> Delivery:
    got = take(broker, limit=1, **kwargs)  # type: ignore[arg-type]
    assert len(got) == 1, got
    return got[0]


def counts(broker: Broker, queue: str = "q") -> tuple[int, int, int, int]:
    for s in broker.stats():
        if s.queue == queue:
            return s.ready, s.delayed, s.in_flight, s.dead
    return 0, 0, 0, 0


def letter(
    d: Delivery, reason: str = "poison", task: str = "t.poison", at: float = 0.0
) -> DeadLetter:
    return DeadLetter(
        d.id, d.queue, task, reason, d.body, d.deliveries, "ValueError: boom", at or time.time()
    )


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


# -- send ------------------------------------------------------------------------------


def test_send_is_idempotent_while_queued_held_or_finished(broker: Broker) -> None:
    assert broker.send([out("a"), out("a"), out("b")]) == [True, False, True]
    assert broker.send([out("a", body=b"other")]) == [False]
    d = one(broker)
    assert d.id == "a" and d.body == b"a"  # the first body stays
    assert broker.send([out("a")]) == [False]  # held
    assert broker.complete(d.lease, b"done", 60)
    assert broker.send([out("a")]) == [False]  # a final result exists
    e = one(broker)
    assert broker.complete(e.lease, None, 60)  # no result stored: the id is free again
    assert broker.send([out("b")]) == [True]


def test_a_batch_drops_only_the_ids_with_a_final_result(broker: Broker) -> None:
    # Redis asks for every result key of a batch at once, then, only when one exists, for
    # each id: a stored result that is not final (progress) does not stop a send.
    assert broker.send([out("done")]) == [True]
    assert broker.complete(one(broker).lease, b"r", 60)
    broker.store_result("started", b"progress", 60)
    batch = [out("new1", priority=4), out("done", priority=4), out("started", priority=6)]
    assert broker.send([*batch, out("new2", priority=4)]) == [True, False, True, True]
    assert [(d.id, d.priority) for d in take(broker)] == [
        ("started", 6),
        ("new1", 4),
        ("new2", 4),
    ]
    assert broker.send([out(f"n{i}") for i in range(3)]) == [True] * 3  # none has a result


def test_send_many_queues_in_one_call(broker: Broker) -> None:
    assert broker.send([out("a1", "qa"), out("b1", "qb"), out("a2", "qa")]) == [True] * 3
    assert [d.id for d in take(broker, queues=("qa",))] == ["a1", "a2"]
    assert [d.id for d in take(broker, queues=("qb",))] == ["b1"]


@pytest.mark.parametrize(
    "task_id",
    [
        "plain",
        "d9b2c7a4-0d1f-4c3b-8a5e-6f7a8b9c0d1e",
        "D9B2C7A4-0D1F-4C3B-8A5E-6F7A8B9C0D1E",
        "with {braces}",
        "ünïcødé ✓",
        "\x00zero",
        "x" * 300,
    ],
)
def test_any_id_round_trips(broker: Broker, task_id: str) -> None:
    assert broker.send([out(task_id, body=b"\xff\x00 raw")]) == [True]
    d = one(broker)
    assert (d.id, d.body) == (task_id, b"\xff\x00 raw")
    assert broker.complete(d.lease, b"r", 60)
    assert broker.get_result(task_id) == (b"r", True)


def test_the_empty_id_is_an_id_like_any_other(broker: Broker) -> None:
    # Task.apply_async never sends it, but the Broker API takes it (Redis once read it as
    # bytes pushed by hand: delivered under another id, with its header in the body).
    assert broker.send([out("", body=b'{"id":"","task":"t"}')]) == [True]
    assert broker.send([out("", body=b"again")]) == [False]  # queued: idempotent
    d = one(broker)
    assert (d.id, d.body) == ("", b'{"id":"","task":"t"}')
    assert broker.complete(d.lease, b"r", 60)
    assert broker.get_result("") == (b"r", True)
    assert broker.send([out("")]) == [False]  # finished


# -- fetch, priority, delay ------------------------------------------------------------


def test_fetch_from_no_queue_waits_and_takes_nothing(broker: Broker) -> None:
    broker.send([out("a")])
    assert take(broker, queues=()) == []
    started = time.monotonic()
    assert take(broker, queues=(), timeout=0.2) == []
    assert time.monotonic() - started >= 0.15  # it waited: a polling caller does not spin
    assert counts(broker) == (1, 0, 0, 0)


def test_fetch_takes_under_a_lease(broker: Broker) -> None:
    broker.send([out("a", priority=3), out("b"), out("c")])
    got = take(broker, limit=2)
    assert [(d.id, d.queue, d.body, d.deliveries, d.priority) for d in got] == [
        ("a", "q", b"a", 1, 3),
        ("b", "q", b"b", 1, 0),
    ]
    assert got[0].lease.token != got[1].lease.token
    assert [d.id for d in take(broker, consumer="w2")] == ["c"]  # held ones are not handed out
    assert take(broker, consumer="w3") == []
    assert counts(broker) == (0, 0, 3, 0)


def test_held_says_which_ids_a_consumer_holds_now(broker: Broker) -> None:
    # What a revoke asks (control.revoke_many): a held task is its worker's to settle.
    uid = str(uuid.uuid4())
    broker.send([out("a"), out(uid), out("later", eta=time.time() + 60), out("other", "q2")])
    assert broker.held([]) == []
    assert broker.held(["a", uid, "later", "other", "never"]) == [False] * 5
    (first,) = take(broker, limit=1)
    (second,) = take(broker, limit=1)
    assert (first.id, second.id) == ("a", uid)  # a UUID is stored compacted on Redis
    taken = broker.fetch(["q2"], "w", limit=1, lease_seconds=30, timeout=0)
    assert broker.held(["a", uid, "later", "other", "never", "a"]) == [
        True, True, False, True, False, True,
    ]  # fmt: skip
    assert broker.requeue(first.lease, count_delivery=False)
    assert broker.complete(second.lease, None, 60)
    assert broker.complete(taken[0].lease, None, 60)
    assert broker.held(["a", uid, "other"]) == [False, False, False]


def test_priority_is_strict_then_send_order(broker: Broker) -> None:
    broker.send([out(f"low{i}", priority=1) for i in range(50)])
    broker.send([out(f"high{i}", priority=8) for i in range(50)])
    ids = [d.id for d in take(broker, limit=100)]
    assert ids == [f"high{i}" for i in range(50)] + [f"low{i}" for i in range(50)]


def test_every_priority_level_in_order(broker: Broker) -> None:
    broker.send([out(f"p{p}", priority=p) for p in (3, 0, 9, 5, 1, 7, 2, 8, 4, 6)])
    assert [d.priority for d in take(broker, limit=10)] == list(range(9, -1, -1))


def test_priorities_out_of_range_are_clamped_alone_or_in_a_batch(broker: Broker) -> None:
    # The API refuses them, but a message built by hand (app.publish) or by another version
    # reaches the broker as it is. On Redis, a call whose every priority was under 0 or
    # over 9 failed with WRONGTYPE after writing the id to the index: the message was not
    # sent, and a later send of its id was taken for a duplicate and dropped. SQLite and
    # memory kept them as given, so a 12 went ahead of every 9 there and not on Redis.
    for batch in (
        [out("low-1", priority=-1)],
        [out("high-1", priority=12)],
        [out("low-2", priority=-5), out("low-3", priority=-1)],
        [out("high-2", priority=10), out("high-3", priority=99)],
        [out("nine", priority=9)],
    ):
        assert broker.send(batch) == [True] * len(batch)
    assert [(d.id, d.priority) for d in take(broker)] == [
        *[(i, 9) for i in ("high-1", "high-2", "high-3", "nine")],
        *[(i, 0) for i in ("low-1", "low-2", "low-3")],
    ]


def test_priority_across_queues(broker: Broker) -> None:
    broker.send([out("a-low", "qa", priority=1), out("b-high", "qb", priority=5)])
    assert [d.id for d in take(broker, queues=("qa", "qb"), limit=1)] == ["b-high"]
    assert [d.id for d in take(broker, queues=("qa", "qb"), limit=1)] == ["a-low"]


def test_at_equal_priority_the_queue_named_first_goes_first(broker: Broker) -> None:
    # SQLite and memory took the oldest message of any queue, Redis the first queue's:
    # one worker (-Q a,b) ran in another order on the laptop's broker than in production.
    broker.send([out("a1", "qa"), out("b1", "qb"), out("a2", "qa", priority=3)])
    broker.send([out("b2", "qb", priority=3)])
    assert [d.id for d in take(broker, queues=("qb", "qa"), limit=1)] == ["b2"]
    assert [d.id for d in take(broker, queues=("qa", "qb"), limit=1)] == ["a2"]
    assert [d.id for d in take(broker, queues=("qb", "qa"), limit=2)] == ["b1", "a1"]


def test_a_queue_named_twice_hands_each_message_out_once(broker: Broker) -> None:
    # SQLite handed the message out twice, once per name, the first lease void.
    broker.send([out("a"), out("b")])
    taken = take(broker, queues=("q", "q"), limit=5)
    assert sorted((d.id, d.deliveries) for d in taken) == [("a", 1), ("b", 1)]
    assert all(broker.complete(d.lease, None, 60) for d in taken)


def test_delayed_message_waits_in_the_broker(broker: Broker) -> None:
    broker.send([out("later", eta=time.time() + 600)])
    assert take(broker) == []
    assert counts(broker) == (0, 1, 0, 0)


def test_delayed_message_is_handed_out_once_due(broker: Broker) -> None:
    broker.send([out("soon", eta=time.time() + 0.3), out("past", eta=time.time() - 10)])
    assert [d.id for d in take(broker)] == ["past"]
    got = take(broker, timeout=DEADLINE)
    assert [(d.id, d.deliveries) for d in got] == [("soon", 1)]


def test_fetch_waits_for_a_send(broker: Broker) -> None:
    import threading

    got: list[Delivery] = []
    waiter = threading.Thread(target=lambda: got.extend(take(broker, timeout=DEADLINE)))
    waiter.start()
    time.sleep(0.05)
    broker.send([out("x")])
    waiter.join(DEADLINE + 5)
    assert [d.id for d in got] == ["x"]


# -- fencing and leases ----------------------------------------------------------------


def test_stale_token_changes_nothing(broker: Broker) -> None:
    broker.send([out("a"), out("n")])
    stale = one(broker).lease
    assert broker.requeue(stale, count_delivery=False)
    ids = {d.id: d for d in take(broker, consumer="w2")}
    fresh = ids["a"].lease
    assert fresh.token != stale.token
    bogus = Lease("a", "q", "not-a-token")
    for lease in (stale, bogus):
        assert broker.complete(lease, b"late", 60) is False
        assert broker.requeue(lease) is False
        assert broker.requeue(lease, body=b"x", delay=5) is False
        assert broker.dead_letter(lease, letter(ids["a"]), b"dead") is False
        assert broker.renew([lease], 30) == ["a"]
        committed, _ = broker.complete_and_fetch(
            lease, b"late", 60, ["q"], "w1", limit=0, lease_seconds=30
        )
        assert committed is False
    assert broker.get_result("a") is None
    assert broker.dead_letters() == []
    assert counts(broker) == (0, 0, 2, 0)
    assert broker.renew([fresh], 30) == []
    assert broker.complete(fresh, b"ok", 60)
    assert broker.get_result("a") == (b"ok", True)


def test_expired_lease_is_delivered_again(broker: Broker) -> None:
    broker.send([out("a")])
    first = one(broker, lease=0.2)
    again = take(broker, consumer="w2", timeout=DEADLINE)
    assert [(d.id, d.deliveries) for d in again] == [("a", 2)]
    assert broker.complete(first.lease, b"late", 60) is False
    assert broker.complete(again[0].lease, b"ok", 60)


def test_renew_keeps_a_lease(broker: Broker) -> None:
    broker.send([out("a")])
    d = one(broker, lease=0.3)
    assert broker.renew([d.lease], 60) == []
    time.sleep(0.5)
    broker.reap()
    assert take(broker, consumer="w2") == []
    assert broker.complete(d.lease, None, 60)


def test_reap_releases_what_a_dead_worker_held(broker: Broker) -> None:
    broker.heartbeat(WorkerInfo("w-dead", "h", 1, ("q",), 1, time.time()), ttl=0.2)
    broker.heartbeat(WorkerInfo("w-live", "h", 2, ("q",), 1, time.time()), ttl=600)
    broker.send([out("a"), out("b")])
    dead = one(broker, consumer="w-dead", lease=600)
    live = one(broker, consumer="w-live", lease=600)
    eventually(lambda: "w-dead" not in {w.id for w in broker.workers()}, "w-dead expires")
    assert broker.reap() == 1
    assert broker.reap() == 0  # deterministic: nothing more to release
    again = take(broker, consumer="w2")
    assert [(d.id, d.deliveries) for d in again] == [(dead.id, 2)]
    assert broker.complete(dead.lease, b"late", 60) is False
    assert broker.complete(live.lease, None, 60)


def test_a_reaped_worker_is_forgotten_even_before_any_queue_exists(broker: Broker) -> None:
    # Redis kept a dead worker when it knew no queue yet: the worker came back (frozen
    # past its heartbeat), took a message, and the next reap released it under its feet.
    broker.heartbeat(WorkerInfo("w-back", "h", 1, ("q",), 1, time.time()), ttl=0.2)
    eventually(lambda: not broker.workers(), "w-back expires")
    assert broker.reap() == 0
    broker.send([out("a")])
    d = one(broker, consumer="w-back", lease=600)
    assert broker.reap() == 0
    assert broker.complete(d.lease, None, 60)


def test_requeue_delivery_counts_and_body(broker: Broker) -> None:
    broker.send([out("a")])
    assert broker.requeue(one(broker).lease)  # a failure: the count stays
    d = one(broker)
    assert d.deliveries == 2
    assert broker.requeue(d.lease, count_delivery=False)  # a shutdown: the hand-out is undone
    d = one(broker)
    assert d.deliveries == 2
    assert broker.requeue(d.lease, body=b"retry-1")  # a retry: new body, count reset
    d = one(broker)
    assert (d.body, d.deliveries) == (b"retry-1", 1)
    assert broker.requeue(d.lease)  # a crash: counted
    d = one(broker)
    # A rate-limit deferral rewrites the message and takes its hand-out back, but keeps
    # the count: a task that crashes its worker between deferrals still reaches its limit.
    assert broker.requeue(d.lease, body=b"deferred", count_delivery=False)
    d = one(broker)
    assert (d.body, d.deliveries) == (b"deferred", 2)
    assert broker.requeue(d.lease, delay=600)
    assert take(broker) == []
    assert counts(broker) == (0, 1, 0, 0)
    assert broker.send([out("a")]) == [False]  # still queued (delayed)


def test_a_message_given_back_unstarted_goes_back_where_it_was(broker: Broker) -> None:
    # A prefetch given back (a warm shutdown, a recycling child, a batch behind a slow
    # task) went to the back of its queue, behind the whole backlog.
    broker.send([out(i) for i in "abcdef"] + [out("p9", priority=9)])
    held = take(broker, limit=4)
    assert [d.id for d in held] == ["p9", "a", "b", "c"]
    broker.send([out("g")])  # queued after them
    for d in reversed(held):  # last first, as a worker does: each goes to the head
        assert broker.requeue(d.lease, count_delivery=False, front=True)
    got = take(broker, limit=10)
    assert [d.id for d in got] == ["p9", "a", "b", "c", "d", "e", "f", "g"]
    assert {d.id: d.deliveries for d in got}["a"] == 1  # uncounted
    # Without front, and for a deferral (front with a delay), the back of the queue.
    for d in got[1:3]:
        assert broker.requeue(d.lease, count_delivery=False)
    assert broker.requeue(got[3].lease, count_delivery=False, front=True, delay=600)
    for d in reversed(got[4:]):
        assert broker.requeue(d.lease, count_delivery=False, front=True)
    assert [d.id for d in take(broker, limit=10)] == ["d", "e", "f", "g", "a", "b"]


def test_requeue_with_short_delay_comes_back(broker: Broker) -> None:
    broker.send([out("a")])
    assert broker.requeue(one(broker).lease, delay=0.2)
    assert [d.id for d in take(broker, timeout=DEADLINE)] == ["a"]


def test_complete_and_fetch(broker: Broker) -> None:
    broker.send([out("a"), out("b"), out("c")])
    d = one(broker)
    committed, more = broker.complete_and_fetch(
        d.lease, b"ra", 60, ["q"], "w1", limit=2, lease_seconds=30
    )
    assert committed and [m.id for m in more] == ["b", "c"]
    assert broker.get_result("a") == (b"ra", True)
    assert counts(broker) == (0, 0, 2, 0)
    committed, more = broker.complete_and_fetch(
        more[0].lease, None, 60, ["q"], "w1", limit=5, lease_seconds=30
    )
    assert committed and more == []


def test_complete_and_fetch_from_several_queues(broker: Broker) -> None:
    broker.send([out("a1", "qa"), out("a2", "qa"), out("b1", "qb", priority=4)])
    d = one(broker, queues=("qa",))
    committed, more = broker.complete_and_fetch(
        d.lease, b"r", 60, ["qa", "qb"], "w1", limit=2, lease_seconds=30
    )
    assert committed and [m.id for m in more] == ["b1", "a2"]
    assert [m.queue for m in more] == ["qb", "qa"]


def test_complete_many_settles_each_on_its_own_lease_then_fetches(broker: Broker) -> None:
    broker.send([out("a"), out("b"), out("c"), out("d"), out("e", "q2")])
    a, b, c = take(broker, limit=3)
    lost = Lease(b.id, b.queue, "not-the-token")
    committed, more = broker.complete_many(
        [(a.lease, b"ra"), (lost, b"never"), (c.lease, None)],
        60,
        ["q", "q2"],
        "w1",
        limit=5,
        lease_seconds=30,
    )
    assert committed == [True, False, True]  # a lost lease holds back nothing else
    assert sorted(m.id for m in more) == ["d", "e"]
    assert broker.get_result("a") == (b"ra", True)
    assert broker.get_result("b") is None
    assert counts(broker) == (0, 0, 2, 0)  # in q: b (still held) and d
    committed, more = broker.complete_many([(b.lease, b"rb")], 60)
    assert committed == [True] and more == []
    assert broker.get_result("b") == (b"rb", True)


def test_complete_many_started_now_answers_later_as_complete_many(broker: Broker) -> None:
    broker.send([out("a"), out("b"), out("c"), out("d")])
    a, b = take(broker, limit=2)
    lost = Lease(b.id, b.queue, "not-the-token")
    landing = broker.complete_many_start(
        [(a.lease, b"ra"), (lost, b"never")], 60, ["q"], "w1", limit=1, lease_seconds=30
    )
    # Another call while the first is in flight (a Redis broker sent it on its own socket).
    assert broker.get_result("c") is None
    committed, more = landing.result()
    assert committed == [True, False] and [m.id for m in more] == ["c"]
    assert broker.get_result("a") == (b"ra", True)
    assert counts(broker) == (1, 0, 2, 0)  # in q: d; held: b and c


# -- dead letters ----------------------------------------------------------------------


def test_dead_letter_keeps_everything(broker: Broker) -> None:
    broker.send([out("bad", body=b"\x00not json")])
    d = one(broker)
    dead = letter(d, at=1_700_000_000.5)
    assert broker.dead_letter(d.lease, dead, b"failure-record")
    assert broker.dead_letters() == [dead]
    assert broker.get_result("bad") == (b"failure-record", True)
    assert counts(broker) == (0, 0, 0, 1)
    assert broker.send([out("bad")]) == [False]  # it has a final result


def test_dead_letters_newest_first_replay_and_purge(broker: Broker) -> None:
    broker.send([out("a"), out("b", "q2"), out("c")])
    now = time.time()
    for queue, task, at in (("q", "t.a", now - 3), ("q2", "t.b", now - 2), ("q", "t.c", now - 1)):
        d = one(broker, queues=(queue,))
        assert broker.dead_letter(d.lease, letter(d, task=task, at=at), None)
    assert [x.id for x in broker.dead_letters()] == ["c", "b", "a"]
    assert [x.id for x in broker.dead_letters(limit=1)] == ["c"]
    found = broker.find_dead_letters(["b", "a", "no-such-id"])  # by id, across queues
    assert sorted((x.id, x.queue, x.task) for x in found) == [("a", "q", "t.a"), ("b", "q2", "t.b")]
    many = [f"absent-{i}" for i in range(1200)] + ["c"]  # more ids than one query takes
    assert [x.id for x in broker.find_dead_letters(many)] == ["c"]
    assert broker.replay_dead_letters(ids=["a", "no-such-id"]) == 1
    d = one(broker)
    assert (d.id, d.body, d.deliveries) == ("a", b"a", 1)
    assert broker.replay_dead_letters(task="t.b") == 1
    assert [x.id for x in take(broker, queues=("q2",))] == ["b"]
    assert [x.id for x in broker.dead_letters()] == ["c"]
    assert broker.purge_dead_letters() == 1
    assert broker.dead_letters() == []
    assert broker.replay_dead_letters() == 0


def test_replay_queues_the_letters_oldest_first_whatever_the_order_asked(broker: Broker) -> None:
    # Replayed by id on Redis, letters were queued in the order the ids were given: a
    # random walk across the brokers found it (test_random_walks.py).
    broker.send([out("a"), out("b"), out("c")])
    now = time.time()
    for d, at in zip(take(broker, limit=3), (now - 3, now - 2, now - 1), strict=True):
        assert broker.dead_letter(d.lease, letter(d, at=at), None)
    assert broker.replay_dead_letters(ids=["c", "a", "b"]) == 3
    assert [d.id for d in take(broker)] == ["a", "b", "c"]


def test_replay_forgets_the_old_result(broker: Broker) -> None:
    broker.send([out("a")])
    d = one(broker)
    assert broker.dead_letter(d.lease, letter(d), b"failed")
    assert broker.replay_dead_letters() == 1
    assert broker.get_result("a") is None
    assert [x.id for x in take(broker)] == ["a"]


def test_replay_sends_what_renew_gives_at_its_priority(broker: Broker) -> None:
    broker.send([out("a"), out("b"), out("junk")])
    for d in take(broker, limit=3):
        assert broker.dead_letter(d.lease, letter(d), None)
    renewed = {b"a": (b"a-renewed", 2), b"b": (b"b-renewed", 9)}  # junk: None, as it is
    assert broker.replay_dead_letters(renew=renewed.get) == 3
    taken = take(broker, limit=3)
    assert [(d.id, d.body, d.priority) for d in taken] == [
        ("b", b"b-renewed", 9),
        ("a", b"a-renewed", 2),
        ("junk", b"junk", 0),
    ]


# -- stats and purge -------------------------------------------------------------------


def test_stats_lists_every_queue(broker: Broker) -> None:
    broker.send([out("a1", "q1"), out("a2", "q1"), out("a3", "q1", eta=time.time() + 600)])
    broker.send([out("b1", "q2")])
    one(broker, queues=("q1",))
    d = one(broker, queues=("q2",))
    broker.dead_letter(d.lease, letter(d), None)
    assert counts(broker, "q1") == (1, 1, 1, 0)
    assert counts(broker, "q2") == (0, 0, 0, 1)
    assert {"q1", "q2"} <= {s.queue for s in broker.stats()}


def test_stats_count_a_message_whose_lease_ran_out_as_ready(broker: Broker) -> None:
    # The next fetch hands it out, as it does a due delayed one. Counted in flight, the work
    # of a worker killed with -9 read "in flight" for as long as no worker was left.
    broker.send([out("lapses"), out("runs")])
    one(broker, lease=0.05)
    one(broker, lease=600)
    eventually(lambda: counts(broker) == (1, 0, 1, 0), "the lapsed lease counts as ready")
    assert {d.id for d in take(broker, limit=1, timeout=DEADLINE)} == {"lapses"}
    assert counts(broker) == (0, 0, 2, 0)


def sent_body_at(when: float) -> bytes:
    return b"sent at %r" % when


def sent_time(body: bytes) -> float | None:
    """The ready_at these tests give stats(): what sent_body_at wrote, else None."""
    return float(body[8:]) if body.startswith(b"sent at ") else None


def since(broker: Broker, queue: str = "q") -> float | None:
    return next(s.ready_since for s in broker.stats(sent_time) if s.queue == queue)


# Redis's clock and this process's are one machine's clock; Redis keeps whole ms.
MS = 0.0015


def test_stats_say_since_when_the_longest_waiting_ready_message_waits(broker: Broker) -> None:
    before = time.time()
    broker.send([out("first", body=sent_body_at(before))])
    after = time.time()
    # Later, at a higher priority: it runs first, but has not waited longest.
    broker.send([out("urgent", body=sent_body_at(time.time()), priority=7)])
    first_ready = since(broker)
    assert first_ready is not None and before - MS <= first_ready <= after + MS
    assert one(broker).id == "urgent"
    assert since(broker) == first_ready
    assert one(broker).id == "first"
    assert since(broker) is None  # nothing ready: no wait to tell of
    assert [s.waited(time.time()) for s in broker.stats(sent_time) if s.queue == "q"] == [0.0]


def test_stats_find_the_longest_wait_at_any_priority(broker: Broker) -> None:
    # The oldest at priority 5, newer ones at 0 and 9: each list's first is compared.
    before = time.time()
    broker.send([out("old", body=sent_body_at(before), priority=5)])
    broker.send([out("new", body=sent_body_at(time.time()))])
    broker.send([out("newest", body=sent_body_at(time.time()), priority=9)])
    after_first = time.time()
    ready = since(broker)
    assert ready is not None and before - MS <= ready <= after_first + MS
    assert ready < since_after_taking(broker, 2)


def since_after_taking(broker: Broker, count: int) -> float:
    """ready_since once ``count`` messages are taken: a later time, or the test fails."""
    take(broker, limit=count)
    left = since(broker)
    assert left is not None
    return left


def test_stats_date_a_due_delayed_message_from_its_due_time(broker: Broker) -> None:
    eta = time.time() + 0.3
    # Its bytes say nothing: the broker keeps a delayed message's due time itself.
    broker.send([out("later", body=b"no time here", eta=eta)])
    assert since(broker) is None  # not due: delayed, not ready
    eventually(lambda: counts(broker)[0] == 1, "it comes due")
    ready = since(broker)
    assert ready is not None and abs(ready - eta) <= MS


def test_stats_date_a_lapsed_lease_from_its_deadline(broker: Broker) -> None:
    broker.send([out("lapses", body=b"no time here")])
    before = time.time()
    one(broker, lease=0.2)
    after = time.time()
    eventually(lambda: counts(broker)[0] == 1, "the lease lapses")
    ready = since(broker)
    assert ready is not None and before + 0.2 - MS <= ready <= after + 0.2 + MS


def test_stats_keep_the_oldest_of_a_due_message_and_a_ready_one(broker: Broker) -> None:
    eta = time.time() + 0.3
    broker.send([out("due", body=b"no time here", eta=eta)])
    eventually(lambda: counts(broker)[0] == 1, "it comes due")
    broker.send([out("sent", body=sent_body_at(time.time()))])
    ready = since(broker)
    assert ready is not None and abs(ready - eta) <= MS


def test_peek_reads_waiting_messages_in_the_order_workers_take_them(broker: Broker) -> None:
    soon, later = time.time() + 300, time.time() + 600
    broker.send([out("a"), out("b", priority=5), out("c"), out("d", eta=later, priority=9)])
    broker.send([out("e", eta=soon, body=b"e-body")])
    seen = broker.peek("q", 10)
    assert [(w.id, w.priority, w.deliveries) for w in seen] == [
        ("b", 5, 0),
        ("a", 0, 0),
        ("c", 0, 0),
        ("e", 0, 0),
        ("d", 9, 0),
    ]
    assert [w.body for w in seen] == [b"b", b"a", b"c", b"e-body", b"d"]
    assert [w.due for w in seen[:3]] == [None, None, None]
    dues = [w.due for w in seen[3:]]
    assert dues[0] is not None and abs(dues[0] - soon) <= MS
    assert dues[1] is not None and abs(dues[1] - later) <= MS
    # The limit cuts across ready and delayed; nothing was taken by reading.
    assert [w.id for w in broker.peek("q", 4)] == ["b", "a", "c", "e"]
    assert [w.id for w in broker.peek("q", 1)] == ["b"]
    assert counts(broker) == (3, 2, 0, 0)
    assert broker.peek("nobody-used-this", 10) == []


def test_peek_lists_what_the_next_fetches_take_in_their_order(broker: Broker) -> None:
    # No fetch has run since the lease ran out and the delayed ones came due (workers
    # killed, or all busy: when someone peeks): peek must not read the queue as it was.
    broker.send([out("a"), out("b", priority=5), out("c")])
    broker.send([out("lapses", priority=5)])
    assert one(broker, lease=0.3, queues=("q",)).id == "b"  # takes b, highest, first
    broker.send([out("b2", priority=5)])
    lapsed = one(broker, lease=0.3)
    assert lapsed.id == "lapses"
    soon = time.time() + 0.3
    broker.send([out("due5", eta=soon, priority=5), out("due0", eta=soon)])
    broker.send([out("later", eta=time.time() + 600, priority=9)])
    eventually(lambda: counts(broker)[0] == 7, "the leases lapse and the delayed come due")
    peeked = broker.peek("q", 20)
    assert [w.id for w in peeked][-1] == "later" and peeked[-1].due is not None
    # What a fetch does first (SQLite's fetch reaps once a second; the others at once).
    assert broker.reap() == 2
    taken = [d.id for _ in range(7) for d in take(broker, limit=1)]
    assert [w.id for w in peeked[:7]] == taken
    assert {"b", "lapses", "due5", "due0"} <= set(taken)


def test_peek_reads_past_a_slice_and_stops_at_its_byte_budget(broker: Broker) -> None:
    from celeriac.brokers.records import PEEK_BYTES

    ids = [f"m{i:03}" for i in range(250)]  # Redis reads lists 100 elements at a time
    broker.send([out(i) for i in ids])
    assert [w.id for w in broker.peek("q", 1000)] == ids
    assert [w.id for w in broker.peek("q", 120)] == ids[:120]
    mib = 1024 * 1024
    broker.send([out(f"big{i:02}", "big", body=bytes(mib)) for i in range(20)])
    # Reading stops at the message that passes the budget: it is returned, none after it.
    assert len(broker.peek("big", 100)) == PEEK_BYTES // mib
    assert broker.peek("q", -1) == []  # a negative limit is no limit to SQLite


def test_peek_leaves_out_held_messages_and_shows_a_put_back_ones_deliveries(
    broker: Broker,
) -> None:
    broker.send([out("runs"), out("back"), out("waits")])
    one(broker)  # runs: held, not waiting
    back = one(broker)
    assert broker.requeue(back.lease)
    assert [(w.id, w.deliveries) for w in broker.peek("q", 10)] == [("waits", 0), ("back", 1)]


def test_purge_deletes_waiting_messages_only(broker: Broker) -> None:
    ids = [uuid.uuid4().hex for _ in range(30)]
    broker.send([out(i) for i in ids] + [out("later", eta=time.time() + 600)])
    held = one(broker)
    assert broker.purge("q") == 30
    assert counts(broker) == (0, 0, 1, 0)
    assert broker.send([out(ids[-1]), out("later"), out(held.id)]) == [True, True, False]
    assert broker.purge("empty") == 0
