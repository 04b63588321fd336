"""Every broker (and Redis's async face), driven through one random sequence of calls,
must answer alike.

The other conformance tests each pin one rule. These walks mix the calls a worker and an
operator make (send, fetch, complete, requeue, dead-letter, replay, purge, revoke...) on
a few ids and two queues, so that one broker's answer to a sequence nobody wrote a test
for is checked against the three others: a send that says "duplicate" where the others
queue, a message that one broker no longer hands out, a count that drifts.

The memory broker is the reference only in that it is listed first; a difference is a
failure whichever broker it is, and the message shows the walk up to that step (the seed
replays it). Fencing tokens differ between brokers, so each broker's leases are kept apart
and a step names a lease by its task id.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.records import DeadLetter, Delivery, Lease, Outgoing, WorkerInfo
from celeriac.brokers.sqlite import SQLiteBroker
from tests.redis_server import RedisClusterNodes, RedisServer

# More walks, longer, when hunting: WALK_SEEDS=300 WALK_STEPS=150 (about 5 min on 2 cores);
# WALK_FIRST_SEED=1000 walks seeds no earlier hunt walked.
_FIRST_SEED = int(os.environ.get("WALK_FIRST_SEED", "0"))
SEEDS = range(_FIRST_SEED, _FIRST_SEED + int(os.environ.get("WALK_SEEDS", "24")))
STEPS = int(os.environ.get("WALK_STEPS", "80"))
QUEUES = ("qa", "qb")
# A few ids, so sends repeat ids that are queued, held, finished or dead: a canonical
# UUID (stored as 17 bytes on Redis), a custom id, and ids that need escaping there.
IDS = (
    "0b5e2c1a-8f3d-4e6a-9c7b-1d2e3f4a5b6c",
    "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f",
    "order-1",
    "order-2",
    "\x01odd",
    "",
)
PRIORITIES = (-2, 0, 0, 3, 9, 12)
# Who fetches: a consumer is a worker's id, so a worker whose heartbeat lapsed loses its
# leases at the next reap.
CONSUMERS = ("walker", "w2")
FAR = 10_000.0  # seconds: a due time or lease no walk outlives
SHORT = 0.1  # seconds: a lease or delay that runs out in the pause after its step
PAUSE = 0.4  # seconds the walk waits after such a step, once every broker took it


def body_for(task_id: str, n: int) -> bytes:
    """A body as a producer writes it (led by its id, which Redis strips and restores),
    or bytes of another shape."""
    if n % 3:
        return b'{"id":"%s","task":"t.walk","n":%d}' % (task_id.encode("utf-8", "replace"), n)
    return b"raw body %d" % n


def renewed(body: bytes) -> tuple[bytes, int] | None:
    """A replay's renew (the app's codec renews a message it can read; none else)."""
    return (b"renewed " + body, 7) if body.startswith(b"raw") else None


def letter_fields(d: DeadLetter) -> tuple[str, str, str, str, bytes, int, str, float]:
    return (d.id, d.queue, d.task, d.reason, d.body, d.deliveries, d.error, d.dead_at)


def delivered(d: Delivery) -> tuple[str, str, bytes, int, int]:
    return (d.id, d.queue, d.body, d.deliveries, d.priority)


class Walk:
    """One broker's side of a walk: the broker and the leases it handed out, by id."""

    def __init__(self, name: str, broker: Broker) -> None:
        self.name = name
        self.broker = broker
        self.held: dict[str, Lease] = {}
        self.stale: dict[str, Lease] = {}  # leases given up: settling with one must fail
        self.holder: dict[str, str] = {}  # the consumer each held id was handed to

    def took(
        self, deliveries: list[Delivery], consumer: str = "walker"
    ) -> list[tuple[str, str, bytes, int, int]]:
        for d in deliveries:
            self.held[d.id] = d.lease
            self.holder[d.id] = consumer
        return [delivered(d) for d in deliveries]

    def settled(self, task_id: str, done: bool) -> None:
        if done:
            self.stale[task_id] = self.held.pop(task_id)


# One step: given the walk of one broker, returns what that broker answered.
Step = Callable[[Walk], Any]


class Steps:
    """The steps of a walk, drawn from one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.now = time.time()
        self.short = False  # whether the step being drawn lets a lease or delay run out
        self.holding: dict[str, int] = {}  # how many messages each consumer holds

    def draw(
        self, held: list[str], stale: list[str], holding: dict[str, int]
    ) -> tuple[str, Step, bool]:
        """The next step, described, for the ids every broker holds now, and whether the
        walk pauses after it (a step with a short lease or delay: every broker sees it run
        out in the same pause, never between two brokers' turns)."""
        self.short = False
        self.holding = holding
        what, step = self._draw(held, stale)
        return what, step, self.short

    def _short(self) -> bool:
        self.short = self.short or self.rng.random() < 0.08
        return self.short

    def _draw(self, held: list[str], stale: list[str]) -> tuple[str, Step]:
        rng = self.rng
        self.n += 1
        choices: list[Callable[[], tuple[str, Step]]] = [
            self._send,
            self._send,
            self._send,
            self._fetch,
            self._fetch,
            self._stats,
            self._results,
            self._revoke,
            self._forget,
            self._dead_letters,
            self._replay,
            self._reap,
            self._heartbeat,
            self._progress,
            self._store,
        ]
        if held:
            choices += [lambda: self._settle(rng.choice(held))] * 4
            choices += [lambda: self._complete_many(held)] * 2
            choices.append(lambda: self._renew(held))
        if stale:
            choices.append(lambda: self._settle(rng.choice(stale), stale=True))
        if rng.random() < 0.04:
            choices += [self._purge, self._purge_dead_letters]
        if rng.random() < 0.03:
            # Past the per-call chunks: 500 messages per send call, 1,000 per fetch batch.
            choices += [self._bulk_send, self._bulk_fetch]
        return rng.choice(choices)()

    def _message(self, slot: int) -> Outgoing:
        rng = self.rng
        at = rng.randrange(len(IDS))
        task_id = IDS[at]
        eta = rng.choice((None, None, None, self.now - 5, self.now + FAR))
        if eta is None and self._short():
            # No two due in the same millisecond: Redis keeps due times in whole ms, and
            # orders a tie by the entry's bytes where the others keep send order.
            eta = time.time() + SHORT + slot * 0.003
        # One queue per id: Redis's id index is per queue, so an id sent to a second queue
        # while the first still holds it is queued in both there (docs/architecture.md).
        queue = QUEUES[at % len(QUEUES)]
        return Outgoing(task_id, queue, body_for(task_id, self.n), rng.choice(PRIORITIES), eta)

    def _send(self) -> tuple[str, Step]:
        slots = self.rng.sample(range(4), self.rng.choice((1, 1, 2, 3)))  # due order, if short
        messages = [self._message(slot) for slot in slots]
        return f"send {messages}", lambda w: w.broker.send(messages)

    def _bulk_send(self) -> tuple[str, Step]:
        rng = self.rng
        messages = [
            Outgoing(f"bulk-{k}", "qa", body_for(f"bulk-{k}", k), rng.choice(PRIORITIES))
            for k in rng.sample(range(1_200), 600)
        ]
        return "send 600 bulk-<n> to qa", lambda w: w.broker.send(messages)

    def _bulk_fetch(self) -> tuple[str, Step]:
        def fetch(w: Walk) -> Any:
            taken = w.broker.fetch(["qa"], "walker", limit=1_100, lease_seconds=FAR, timeout=0)
            return w.took(taken)

        return "fetch ['qa'] limit=1100", fetch

    def _fetch(self) -> tuple[str, Step]:
        queues = self.rng.choice((["qa"], ["qb"], ["qa", "qb"], ["qb", "qa"]))
        # Over several queues one at a time: Cluster keeps priority strict across the
        # queues' best messages, not across a whole batch (brokers/redis/broker.py).
        limit = self.rng.choice((1, 2, 5)) if len(queues) == 1 else 1
        consumer = self.rng.choice(CONSUMERS)
        lease = FAR
        if self._short():
            # One message whose lease lapses: messages released by one reap come back in
            # an order no broker promises (they are due at the same moment).
            lease, limit = SHORT, 1

        def fetch(w: Walk) -> Any:
            taken = w.broker.fetch(queues, consumer, limit=limit, lease_seconds=lease, timeout=0)
            return w.took(taken, consumer)

        return f"fetch {queues} limit={limit} lease={lease} by {consumer}", fetch

    def _settle(self, task_id: str, *, stale: bool = False) -> tuple[str, Step]:
        rng = self.rng
        how = rng.choice(("complete", "complete_and_fetch", "requeue", "requeue", "dead_letter"))
        queue = rng.choice(QUEUES)
        limit = rng.choice((1, 3))
        result = rng.choice((None, b'{"state":"SUCCESS","n":%d}' % self.n))
        delay = rng.choice((0.0, 0.0, FAR))
        if how == "requeue" and delay == 0 and self._short():
            delay = SHORT
        new_body = rng.choice((None, body_for(task_id, self.n)))
        count = rng.choice((True, False))
        at = self.now + self.n  # dead letters newest first: one time per step
        n = self.n

        def settle(w: Walk) -> Any:
            lease = (w.stale if stale else w.held)[task_id]
            more: list[Delivery] = []
            if how == "complete":
                done = w.broker.complete(lease, result, FAR)
            elif how == "complete_and_fetch":
                done, more = w.broker.complete_and_fetch(
                    lease, result, FAR, [queue], "walker", limit=limit, lease_seconds=FAR
                )
            elif how == "requeue":
                done = w.broker.requeue(lease, delay=delay, body=new_body, count_delivery=count)
            else:
                letter = DeadLetter(
                    task_id, lease.queue, "t.walk", "poison", b"raw %d" % n, 1, "E: boom", at
                )
                done = w.broker.dead_letter(lease, letter, result)
            if not stale:
                w.settled(task_id, done)
            # lease_loss is not compared: a broker that cannot tell why says LAPSED.
            return done, w.took(more)

        said = f"{how} {task_id!r}{' (stale lease)' if stale else ''}"
        detail = {
            "complete": f"result={result!r}",
            "complete_and_fetch": f"result={result!r} then fetch {queue} limit={limit}",
            "dead_letter": f"result={result!r}",
        }
        extra = detail.get(how, f"delay={delay} body={new_body!r} count_delivery={count}")
        return f"{said} {extra}", settle

    def _complete_many(self, held: list[str]) -> tuple[str, Step]:
        rng = self.rng
        chosen = rng.sample(held, rng.randint(1, len(held)))
        limit = rng.choice((0, 0, 1, 3))
        queue = rng.choice(QUEUES)
        result = b'{"state":"SUCCESS","many":%d}' % self.n

        def complete_many(w: Walk) -> Any:
            items = [(w.held[i], result) for i in chosen]
            done, more = w.broker.complete_many(
                items, FAR, [queue], "walker", limit=limit, lease_seconds=FAR
            )
            for i, ok in zip(chosen, done, strict=True):
                w.settled(i, ok)
            return done, w.took(more)

        return f"complete_many {chosen} then fetch {queue} limit={limit}", complete_many

    def _renew(self, held: list[str]) -> tuple[str, Step]:
        chosen = self.rng.sample(held, self.rng.randint(1, len(held)))
        return f"renew {chosen}", lambda w: sorted(w.broker.renew([w.held[i] for i in chosen], FAR))

    def _stats(self) -> tuple[str, Step]:
        def stats(w: Walk) -> Any:
            return sorted(
                (s.queue, s.ready, s.delayed, s.in_flight, s.dead)
                for s in w.broker.stats()
                if s.ready or s.delayed or s.in_flight or s.dead
            )

        return "stats", stats

    def _results(self) -> tuple[str, Step]:
        ids = self.rng.sample(IDS, 3)
        return f"get_results {ids}", lambda w: (
            w.broker.get_results(ids),
            w.broker.get_result(ids[0]),
        )

    def _revoke(self) -> tuple[str, Step]:
        ids = self.rng.sample(IDS, self.rng.randint(1, 2))
        mark = b'{"state":"REVOKED","n":%d}' % self.n
        return f"mark_revoked {ids}", lambda w: w.broker.mark_revoked(ids, mark, FAR)

    def _forget(self) -> tuple[str, Step]:
        task_id = self.rng.choice(IDS)
        return f"forget_result {task_id!r}", lambda w: w.broker.forget_result(task_id)

    def _dead_letters(self) -> tuple[str, Step]:
        ids = self.rng.sample(IDS, 2)

        def dead_letters(w: Walk) -> Any:
            found = sorted(letter_fields(d) for d in w.broker.find_dead_letters(ids))
            return [letter_fields(d) for d in w.broker.dead_letters(50)], found

        return f"dead_letters, find_dead_letters {ids}", dead_letters

    def _replay(self) -> tuple[str, Step]:
        rng = self.rng
        ids = rng.choice((None, rng.sample(IDS, 2)))
        task = rng.choice((None, None, "t.walk", "t.other"))
        renew = rng.choice((None, renewed))
        return (
            f"replay ids={ids} task={task} renew={renew}",
            lambda w: w.broker.replay_dead_letters(ids, task, renew),
        )

    def _reap(self) -> tuple[str, Step]:
        return "reap", lambda w: w.broker.reap()

    def _heartbeat(self) -> tuple[str, Step]:
        rng = self.rng
        worker = rng.choice(CONSUMERS)
        how = rng.choice(("heartbeat", "heartbeat", "forget_worker", "workers"))
        # A lapse only for a worker holding one message at most: what one reap releases
        # comes back in an order no broker promises.
        lapse = how == "heartbeat" and self.holding.get(worker, 0) <= 1
        ttl = SHORT if lapse and self._short() else FAR
        info = WorkerInfo(worker, "host", 1, QUEUES, 2, self.now)

        def heartbeat(w: Walk) -> Any:
            if how == "heartbeat":
                w.broker.heartbeat(info, ttl)
            elif how == "forget_worker":
                w.broker.forget_worker(worker)
            return sorted(x.id for x in w.broker.workers())

        return f"{how} {worker}{f' ttl={ttl}' if how == 'heartbeat' else ''}", heartbeat

    def _progress(self) -> tuple[str, Step]:
        task_id = self.rng.choice(IDS)
        state = b'{"state":"PROGRESS","n":%d}' % self.n
        return f"store_result {task_id!r}", lambda w: w.broker.store_result(task_id, state, FAR)

    def _store(self) -> tuple[str, Step]:
        """A call on the small store the policies keep their state in."""
        rng = self.rng
        key = rng.choice(("k1", "k2"))
        value = rng.choice((b"v1", b"v2"))
        absent = rng.random() < 0.5
        member = rng.choice(("m1", "m2", "m3"))
        items = [b"s%d" % (self.n * 10 + i) for i in range(rng.randint(1, 3))]
        maxlen = rng.choice((2, 5))

        def stream_read(w: Walk) -> Any:
            # Sequence numbers only grow (their values are the broker's own): all, then
            # what came after the first.
            read = w.broker.stream_read(key, 0, 10)
            later = w.broker.stream_read(key, read[0][0], 10) if read else []
            return [item for _, item in read], [item for _, item in later]

        calls: list[tuple[str, Step]] = [
            (
                f"kv_set {key} {value!r} only_if_absent={absent}",
                lambda w: w.broker.kv_set(key, value, FAR, only_if_absent=absent),
            ),
            ("kv_get", lambda w: w.broker.kv_get(["k1", "k2", "k3"])),
            (f"kv_delete_if {key} {value!r}", lambda w: w.broker.kv_delete_if(key, value)),
            (f"kv_delete {key}", lambda w: w.broker.kv_delete(key)),
            (
                f"join_add {key} {member} {value!r}",
                lambda w: w.broker.join_add(key, member, value, FAR),
            ),
            (f"join_values {key}", lambda w: w.broker.join_values(key)),
            (f"join_delete {key}", lambda w: w.broker.join_delete(key)),
            (
                f"stream_append {key} {items} maxlen={maxlen}",
                lambda w: w.broker.stream_append(key, items, maxlen),
            ),
            (f"stream_read {key}", stream_read),
        ]
        return rng.choice(calls)

    def _purge(self) -> tuple[str, Step]:
        queue = self.rng.choice(QUEUES)
        return f"purge {queue}", lambda w: w.broker.purge(queue)

    def _purge_dead_letters(self) -> tuple[str, Step]:
        return "purge_dead_letters", lambda w: w.broker.purge_dead_letters()


class AsyncFaces:
    """A broker whose calls that have an async face (send, results) are made through it,
    on an event loop of its own: the Redis async driver, on redis.asyncio, runs the same
    plans as the sync one and must answer alike. Every other call is the broker's own."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def send(self, messages: Sequence[Outgoing]) -> list[bool]:
        return self._loop.run_until_complete(self._broker.asend(messages))

    def get_result(self, task_id: str) -> tuple[bytes, bool] | None:
        return self._loop.run_until_complete(self._broker.aget_result(task_id))

    def get_results(self, task_ids: Sequence[str]) -> list[tuple[bytes, bool] | None]:
        return self._loop.run_until_complete(self._broker.aget_results(task_ids))

    def store_result(self, task_id: str, result: bytes, ttl: float) -> None:
        self._loop.run_until_complete(self._broker.astore_result(task_id, result, ttl))

    def close(self) -> None:
        self._loop.run_until_complete(self._broker.aclose())
        self._loop.close()
        self._broker.close()


def _redis(url: str) -> Broker:
    from celeriac.brokers.redis import RedisBroker

    glue = "&" if "?" in url else "?"
    return RedisBroker(f"{url}{glue}prefix=w{uuid.uuid4().hex[:12]}")


@pytest.fixture
def brokers(
    tmp_path: Path, redis_server: RedisServer, redis_cluster: RedisClusterNodes
) -> Iterator[list[Walk]]:
    made = [
        Walk("memory", MemoryBroker()),
        Walk("sqlite", SQLiteBroker(f"sqlite:///{tmp_path}/walk.db")),
        Walk("redis", _redis(redis_server.url)),
        Walk("redis-cluster", _redis(redis_cluster.url)),
        Walk("redis-async", cast(Broker, AsyncFaces(_redis(redis_server.url)))),
    ]
    yield made
    for walk in made:
        walk.broker.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_every_broker_answers_a_random_walk_alike(brokers: list[Walk], seed: int) -> None:
    steps = Steps(seed)
    said: list[str] = []
    for _ in range(STEPS):
        first = brokers[0]
        # Every broker holds the same ids (a difference in a fetch fails before this).
        held = sorted(first.held)
        holding = Counter(first.holder[i] for i in held)
        stale = sorted(i for i in first.stale if i not in first.held)
        what, step, pause = steps.draw(held, stale, holding)
        said.append(what)
        answers = [(walk.name, step(walk)) for walk in brokers]
        expected = answers[0][1]
        for name, answer in answers[1:]:
            assert answer == expected, (
                f"seed {seed}, step {len(said)}: {name} answered {answer!r} where "
                f"{answers[0][0]} answered {expected!r}. The walk:\n  " + "\n  ".join(said)
            )
        if pause:
            # Then every lapsed lease is released on every broker alike: left to the next
            # fetch, memory released those of every queue, SQLite and Redis only the
            # fetched queues' (settling a lapsed lease nobody took again succeeds). And
            # what came due is made ready: Redis appends a delayed message to its ready
            # list at the first fetch after its due time, where SQLite and memory order
            # it by due time at once (brokers/redis/broker.py, "Order").
            time.sleep(PAUSE)
            said.append(f"(paused {PAUSE} s, then reap, and a fetch of none from each queue)")
            reaped = [walk.broker.reap() for walk in brokers]
            assert reaped == [reaped[0]] * len(brokers), (
                f"seed {seed}, step {len(said)}: reap released {reaped} (in the order "
                f"{[walk.name for walk in brokers]}). The walk:\n  " + "\n  ".join(said)
            )
            for walk in brokers:
                for queue in QUEUES:
                    walk.broker.fetch([queue], "walker", limit=0, lease_seconds=FAR, timeout=0)
