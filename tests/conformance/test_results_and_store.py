"""The broker contract for results, workers, the small store and the async faces."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time

from celeriac.brokers.base import Broker
from celeriac.brokers.records import WorkerInfo
from tests.conformance.test_messages import DEADLINE, eventually, one, out

JOIN_TTL = 1.5  # seconds a join lives after an add
JOIN_GAP = 0.8  # seconds between adds: under JOIN_TTL, but two of them are over it
LONG_WAIT = 60.0  # a wait's timeout that a cancelled wait must not sit out

# -- results ---------------------------------------------------------------------------


def test_store_get_forget(broker: Broker) -> None:
    assert broker.get_result("t") is None
    broker.store_result("t", b"started", 60)
    assert broker.get_result("t") == (b"started", False)
    broker.store_result("t", b"progress 50%", 60)
    assert broker.get_result("t") == (b"progress 50%", False)
    broker.send([out("t")])
    assert broker.complete(one(broker).lease, b"final", 60)
    broker.store_result("t", b"late progress", 60)  # never hides the outcome
    assert broker.get_result("t") == (b"final", True)
    broker.forget_result("t")
    assert broker.get_result("t") is None


def test_forget_results_deletes_each_id_and_nothing_else(broker: Broker) -> None:
    broker.store_result("p", b"started", 60)
    broker.send([out("f")])
    assert broker.complete(one(broker).lease, b"final", 60)
    assert broker.mark_revoked(["r"], b"revoked", 60) == [True]
    broker.store_result("kept", b"started", 60)
    broker.forget_results([])
    broker.forget_results(["f", "p", "missing", "r", "f", "caf\u00e9 {x}"])
    assert broker.get_results(["f", "p", "r", "kept"]) == [None, None, None, (b"started", False)]
    assert broker.wait_result("f", 0.05) is None
    # A revoke mark forgotten is no longer a mark: a later mark is new again.
    assert broker.mark_revoked(["r"], b"revoked", 60) == [True]
    ids = [f"many-{i}" for i in range(1_200)]  # more than one chunk on every broker
    for task_id in ids:
        broker.store_result(task_id, b"x", 60)
    broker.forget_results(ids)
    assert broker.get_results(ids) == [None] * len(ids)


def test_result_expires(broker: Broker) -> None:
    broker.store_result("t", b"x", 0.2)
    eventually(lambda: broker.get_result("t") is None, "the result expires")


def test_an_infinite_ttl_keeps_results_keys_and_joins(broker: Broker) -> None:
    # result_expires=math.inf is a valid setting; on Redis every commit raised
    # OverflowError (a TTL in whole milliseconds), and so did every chord's join.
    broker.store_result("t", b"started", math.inf)
    broker.send([out("t")])
    assert broker.complete(one(broker).lease, b"final", math.inf)
    assert broker.get_result("t") == (b"final", True)
    broker.kv_set("k", b"v", math.inf)
    assert broker.kv_get(["k"]) == [b"v"]
    assert broker.join_add("j", "0", b"a", math.inf) == 1
    assert broker.join_values("j") == {"0": b"a"}


def test_get_results_reads_each_id_as_get_result_does_in_order(broker: Broker) -> None:
    broker.store_result("p", b"started", 60)
    broker.send([out("f")])
    assert broker.complete(one(broker).lease, b"final", 60)
    assert broker.mark_revoked(["r"], b"revoked", 60) == [True]  # a revoke mark reads final
    broker.store_result("gone", b"x", 0.2)
    eventually(lambda: broker.get_result("gone") is None, "the result expires")
    ids = ["f", "missing", "p", "r", "gone", "f", "caf\u00e9 {x}"]
    expected = [
        (b"final", True),
        None,
        (b"started", False),
        (b"revoked", True),
        None,
        (b"final", True),  # an id asked twice is answered twice
        None,
    ]
    assert [broker.get_result(i) for i in ids] == expected
    assert broker.get_results(ids) == expected
    assert broker.get_results([]) == []
    assert asyncio.run(broker.aget_results(ids)) == expected
    assert asyncio.run(broker.aget_results([])) == []


def test_get_results_of_more_ids_than_one_query_or_command_takes(broker: Broker) -> None:
    """2,500 ids: over SQLite's 500 per query and Redis's 1,000 per MGET."""
    ids = [f"g:{i}" for i in range(2_500)]
    assert all(broker.mark_revoked(ids[::2], b"revoked", 60))
    expected = [(b"revoked", True) if i % 2 == 0 else None for i in range(len(ids))]
    assert broker.get_results(ids) == expected
    assert broker.get_results(ids[::-1]) == expected[::-1]


def test_wait_returns_a_stored_final_result_at_once(broker: Broker) -> None:
    broker.send([out("t")])
    broker.complete(one(broker).lease, b"done", 60)
    assert broker.wait_result("t", DEADLINE) == b"done"


def test_wait_ignores_an_expired_final_result(broker: Broker) -> None:
    broker.send([out("t")])
    assert broker.complete(one(broker).lease, b"done", 0.2)
    eventually(lambda: broker.get_result("t") is None, "the result expires")
    assert broker.wait_result("t", 0.2) is None
    assert asyncio.run(broker.await_result("t", 0.2)) is None


def test_wait_times_out_on_non_final(broker: Broker) -> None:
    broker.store_result("t", b"started", 60)
    assert broker.wait_result("t", 0.2) is None


def test_many_waiters_wake_on_the_final_result(broker: Broker) -> None:
    broker.send([out("t")])
    d = one(broker)
    got: list[bytes | None] = []
    waiters = [
        threading.Thread(target=lambda: got.append(broker.wait_result("t", DEADLINE)))
        for _ in range(5)
    ]
    for w in waiters:
        w.start()
    time.sleep(0.1)  # let them block (they must wake whether or not they did)
    broker.store_result("t", b"started", 60)  # not final: nobody returns
    time.sleep(0.05)
    started = time.monotonic()
    assert broker.complete(d.lease, b"final", 60)
    for w in waiters:
        w.join(DEADLINE + 5)
    print(f"{type(broker).__name__}: 5 waiters woke {time.monotonic() - started:.4f}s after commit")
    assert got == [b"final"] * 5


def test_hundreds_of_async_waiters_in_one_loop_all_wake(broker: Broker) -> None:
    """300 ``await_result`` calls at once in one event loop: each used to take a Redis
    connection of its own for its subscription, and past redis-py's pool of 100 the rest
    failed with "Too many connections"."""
    broker.send([out("t")])
    d = one(broker)

    async def main() -> list[bytes | None]:
        waits = asyncio.gather(*[broker.await_result("t", DEADLINE) for _ in range(300)])
        await asyncio.sleep(0.2)  # let them subscribe (they must wake whether or not they did)
        # The commit from another thread, as a worker's: through asyncio.to_thread it queued
        # behind the waiters' steps in the default executor (12 s on memory and SQLite).
        committer = threading.Thread(target=broker.complete, args=(d.lease, b"final", 60))
        committer.start()
        try:
            return list(await waits)
        finally:
            committer.join()

    assert asyncio.run(main()) == [b"final"] * 300


def test_dead_letter_result_wakes_waiters(broker: Broker) -> None:
    from tests.conformance.test_messages import letter

    broker.send([out("t")])
    d = one(broker)
    got: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: got.append(broker.wait_result("t", DEADLINE)))
    waiter.start()
    assert broker.dead_letter(d.lease, letter(d), b"failure")
    waiter.join(DEADLINE + 5)
    assert got == [b"failure"]


# -- workers ---------------------------------------------------------------------------


def test_heartbeat_workers_forget(broker: Broker) -> None:
    info = WorkerInfo(
        "w1", "host-a", 4242, ("q", "emails"), 4, 1_700_000_000.0, extra={"children": [1, 2]}
    )
    broker.heartbeat(info, ttl=60)
    (seen,) = [w for w in broker.workers() if w.id == "w1"]
    assert (seen.host, seen.pid, seen.queues, seen.concurrency, seen.started_at) == (
        "host-a",
        4242,
        ("q", "emails"),
        4,
        1_700_000_000.0,
    )
    assert seen.extra == {"children": [1, 2]}
    assert seen.heartbeat_at > 0
    broker.forget_worker("w1")
    assert "w1" not in {w.id for w in broker.workers()}


def test_expired_heartbeat_is_not_listed(broker: Broker) -> None:
    broker.heartbeat(WorkerInfo("w1", "h", 1, ("q",), 1, 0.0), ttl=0.2)
    eventually(lambda: not broker.workers(), "the heartbeat expires")


# -- the small store -------------------------------------------------------------------


def test_kv(broker: Broker) -> None:
    assert broker.kv_get([]) == []
    assert broker.kv_set("k", b"1", 60)
    assert broker.kv_set("k", b"2", 60, only_if_absent=True) is False
    assert broker.kv_get(["k", "missing"]) == [b"1", None]
    assert broker.kv_set("k", b"3", 60)
    assert broker.kv_get(["k"]) == [b"3"]
    broker.kv_delete("k")
    assert broker.kv_set("k", b"4", 60, only_if_absent=True)
    assert broker.kv_set("short", b"x", 0.2)
    eventually(lambda: broker.kv_get(["short"]) == [None], "the key expires")
    assert broker.kv_set("short", b"y", 60, only_if_absent=True)


def test_kv_delete_if_deletes_only_the_value_asked_for(broker: Broker) -> None:
    assert broker.kv_set("held", b"task-1", 60)
    assert broker.kv_delete_if("held", b"task-0") is False  # another holder's: kept
    assert broker.kv_get(["held"]) == [b"task-1"]
    assert broker.kv_delete_if("held", b"task-1") is True
    assert broker.kv_get(["held"]) == [None]
    assert broker.kv_delete_if("held", b"task-1") is False  # gone already
    assert broker.kv_delete_if("never-set", b"x") is False


def test_join_counts_each_member_once(broker: Broker) -> None:
    assert broker.join_add("chord", "m1", b"r1", 60) == 1
    assert broker.join_add("chord", "m1", b"again", 60) == 1
    assert broker.join_add("chord", "m2", b"r2", 60) == 2
    assert broker.join_values("chord") == {"m1": b"r1", "m2": b"r2"}
    assert broker.join_values("other") == {}


def test_a_deleted_join_starts_afresh(broker: Broker) -> None:
    assert broker.join_add("chord", "m1", b"r1", 60) == 1
    assert broker.join_add("chord", "m2", b"r2", 60) == 2
    assert broker.join_add("kept", "m1", b"k1", 60) == 1
    broker.join_delete("chord")
    broker.join_delete("never-made")
    assert broker.join_values("chord") == {}
    assert broker.join_add("chord", "m2", b"new", 60) == 1
    assert broker.join_values("chord") == {"m2": b"new"}
    assert broker.join_values("kept") == {"m1": b"k1"}


def test_every_add_renews_the_whole_join(broker: Broker) -> None:
    # Members arrive JOIN_GAP apart, under the TTL, but further apart in total than it:
    # the join stays whole, as a chord whose members finish one after another must.
    assert broker.join_add("chord", "m1", b"r1", JOIN_TTL) == 1
    time.sleep(JOIN_GAP)
    assert broker.join_add("chord", "m2", b"r2", JOIN_TTL) == 2
    time.sleep(JOIN_GAP)  # m1 was added more than JOIN_TTL ago now
    broker.reap()
    assert broker.join_add("chord", "m3", b"r3", JOIN_TTL) == 3
    assert broker.join_values("chord") == {"m1": b"r1", "m2": b"r2", "m3": b"r3"}


def test_kv_get_reads_many_keys_in_order(broker: Broker) -> None:
    keys = [f"k{i}" for i in range(1_200)]  # more than one chunk on every broker
    for i in (0, 600, 1_199):
        assert broker.kv_set(keys[i], f"v{i}".encode(), 60)
    values = broker.kv_get([*keys, "k600"])
    assert len(values) == 1_201
    assert {i: v for i, v in enumerate(values) if v is not None} == {
        0: b"v0",
        600: b"v600",
        1_199: b"v1199",
        1_200: b"v600",
    }
    assert broker.kv_get([]) == []


def test_a_join_expires_whole_and_an_add_then_starts_afresh(broker: Broker) -> None:
    assert broker.join_add("chord", "m1", b"r1", 0.2) == 1
    assert broker.join_add("chord", "m2", b"r2", 0.2) == 2
    eventually(lambda: broker.join_values("chord") == {}, "the join expires")
    assert broker.join_add("chord", "m2", b"new", 60) == 1
    assert broker.join_values("chord") == {"m2": b"new"}
    broker.reap()
    assert broker.join_add("chord", "m1", b"r1", 60) == 2
    assert broker.join_values("chord") == {"m1": b"r1", "m2": b"new"}


def test_rate_reserve_hands_out_slots(broker: Broker) -> None:
    waits = [broker.rate_reserve("slots", per_second=10, burst=2) for _ in range(4)]
    assert waits[0] == 0 and waits[1] == 0
    assert 0 < waits[2] < waits[3] <= 0.5


def test_rate_reserve_takes_no_slot_further_ahead_than_max_wait(broker: Broker) -> None:
    minute = 1 / 60  # one slot a minute: the few ms this test takes are far below a slot
    assert broker.rate_reserve("slow", minute, max_wait=0) == 0  # now is within any max
    # The next slot is a minute ahead: over max_wait, it is not reserved, and again.
    beyond = broker.rate_reserve("slow", minute, max_wait=30)
    assert 55 < beyond <= 60
    assert 55 < broker.rate_reserve("slow", minute, max_wait=30) <= beyond
    # So the next caller without a max (or with a max it fits in) gets that same slot.
    assert 55 < broker.rate_reserve("slow", minute) <= beyond
    assert 115 < broker.rate_reserve("slow", minute, max_wait=121) <= 120
    assert 175 < broker.rate_reserve("slow", minute, max_wait=math.inf) <= 180
    assert 235 < broker.rate_reserve("slow", minute, burst=1, max_wait=-1) <= 240  # not taken
    assert 235 < broker.rate_reserve("slow", minute) <= 240
    # Burst slots free now are given within any max_wait; one past the burst is not.
    assert [broker.rate_reserve("burst", minute, burst=2, max_wait=1) for _ in range(2)] == [0, 0]
    assert 55 < broker.rate_reserve("burst", minute, burst=2, max_wait=1) <= 60
    assert 55 < broker.rate_reserve("burst", minute, burst=2) <= 60


def test_rate_admit_is_an_exact_window(broker: Broker) -> None:
    assert [broker.rate_admit("admit", 2, 60) for _ in range(2)] == [0, 0]
    wait = broker.rate_admit("admit", 2, 60)
    assert 0 < wait <= 60
    assert broker.rate_admit("other", 1, 60) == 0


def test_stream(broker: Broker) -> None:
    assert broker.stream_read("s", 0, 10) == []
    broker.stream_append("s", [b"a", b"b", b"c"], maxlen=2)
    items = broker.stream_read("s", 0, 10)
    assert [item for _, item in items] == [b"b", b"c"]
    assert items[0][0] < items[1][0]
    broker.stream_append("s", [b"d"], maxlen=10)
    after = broker.stream_read("s", items[-1][0], 10)
    assert [item for _, item in after] == [b"d"]
    assert [item for _, item in broker.stream_read("s", 0, 1)] == [b"b"]


# -- async faces -----------------------------------------------------------------------


def test_cancelled_async_waits_leave_the_default_executor_free(broker: Broker) -> None:
    # More cancelled waits than the default executor has threads: were each to keep its
    # thread for its whole timeout, the later wait and asyncio.run's shutdown would stall.
    broker.send([out("done")])
    assert broker.complete(one(broker).lease, b"final", 60)
    cancelled = min(32, (os.cpu_count() or 1) + 4) + 4

    async def main() -> bytes | None:
        for i in range(cancelled):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(broker.await_result(f"never-{i}", LONG_WAIT), 0.05)
        return await asyncio.wait_for(broker.await_result("done", DEADLINE), DEADLINE)

    got: list[bytes | None] = []
    runner = threading.Thread(target=lambda: got.append(asyncio.run(main())), daemon=True)
    runner.start()
    runner.join(DEADLINE * 2)
    assert not runner.is_alive(), "asyncio.run() did not return"
    assert got == [b"final"]


#: When a cancelled wait is cancelled: early ones land inside its first commands.
CANCEL_AFTER = (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.005)


def test_a_wait_cancelled_at_any_moment_ends_then(broker: Broker) -> None:
    # On Python 3.11 redis.asyncio lost a cancel that arrived just as a command's reply
    # did (asyncio.wait_for's race, fixed in 3.12): the cancelled wait went on to its own
    # timeout, and asyncio.wait_for(handle.aget(), 1) took 60 s. About one early cancel
    # in 20 here; 300 find it on the old code every time.
    async def main() -> list[str]:
        outlived = []
        for i in range(300):
            waiting = asyncio.ensure_future(broker.await_result(f"never-{i}", LONG_WAIT))
            await asyncio.sleep(CANCEL_AFTER[i % len(CANCEL_AFTER)])
            waiting.cancel()
            await asyncio.wait([waiting], timeout=DEADLINE)
            if not waiting.done() or not waiting.cancelled():
                outlived.append(f"wait {i} (cancelled after {CANCEL_AFTER[i % 6]} s)")
                waiting.cancel()
                break
        return outlived

    assert asyncio.run(main()) == []


def test_a_wait_cancelled_as_it_ends_stays_cancelled(broker: Broker) -> None:
    # On Python 3.11 a cancel that arrived while a wait that had found its result left
    # the result channel (redis.asyncio's UNSUBSCRIBE, sent through asyncio.wait_for) was
    # lost: the wait returned and its caller ran on as if never cancelled, so the rest of
    # an `async with asyncio.timeout()` block ran past its deadline. About one cancel in
    # 20 spread over such a wait; 300 find it on the old code every time.
    assert broker.mark_revoked(["done"], b"final", 60) == [True]

    async def wait_then_go_on() -> None:
        await broker.await_result("done", DEADLINE)
        await asyncio.sleep(LONG_WAIT)  # what the caller does next, unless cancelled

    async def main() -> list[str]:
        began = time.perf_counter()
        for _ in range(20):
            assert await broker.await_result("done", DEADLINE) == b"final"
        one_wait = (time.perf_counter() - began) / 20
        outlived = []
        for i in range(300):
            waiting = asyncio.ensure_future(wait_then_go_on())
            after = one_wait * (i % 30) / 25  # spread over the wait, and a little past it
            await asyncio.sleep(after)
            waiting.cancel()
            await asyncio.wait([waiting], timeout=DEADLINE)
            if not waiting.done():
                outlived.append(f"wait {i} (cancelled after {after * 1000:.2f} ms)")
                waiting.cancel()
                await asyncio.wait([waiting], timeout=DEADLINE)
                break
        return outlived

    assert asyncio.run(main()) == []


def test_async_faces(broker: Broker) -> None:
    async def main() -> None:
        assert await broker.asend([out("a"), out("a")]) == [True, False]
        await broker.astore_result("a", b"started", 60)
        assert await broker.aget_result("a") == (b"started", False)
        d = one(broker)
        waiter = asyncio.ensure_future(broker.await_result("a", DEADLINE))
        await asyncio.sleep(0.05)
        assert await asyncio.to_thread(broker.complete, d.lease, b"final", 60)
        assert await waiter == b"final"
        assert await broker.aget_result("a") == (b"final", True)
        assert await broker.await_result("missing", 0.1) is None

    async def again() -> None:  # a second event loop gets its own connections
        assert await broker.asend([out("b")]) == [True]
        assert await broker.aget_result("a") == (b"final", True)

    asyncio.run(main())
    asyncio.run(again())
