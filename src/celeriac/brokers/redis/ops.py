"""The broker operations, each defined once as a plan (see :mod:`.steps`).

A plan names the script, builds its keys and arguments, and reads its reply; the sync and
async drivers only carry the steps to Redis. Settling, fetching and workers live here;
results and administration in :mod:`.admin`; the server's start-up check in :mod:`.startup`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from celeriac.brokers.records import Delivery, Lease, Outgoing, clamped_priority
from celeriac.brokers.redis.keys import (
    INDEX_BUCKETS,
    Keyspace,
    QueueKeys,
    compact,
    expand,
    is_foreign,
)
from celeriac.brokers.redis.scripts import SCRIPTS, ErrorCode, check
from celeriac.brokers.redis.steps import Arg, Batch, Call, Command, Pause, Plan
from celeriac.errors import BrokerError, MessageError

log = logging.getLogger("celeriac.brokers.redis")

MAX_BLOCK = 5.0  # seconds one BLPOP may block; well under the socket timeout
POLL = 0.05  # seconds per wake list when several queues cannot share one BLPOP (Cluster)
# Seconds between the turns of an idle Redis's timer, which ends a BLPOP's timeout: 1/hz,
# hz 10 by default. The start-up check reads the server's hz (Context.block_tick).
BLOCK_TICK = 0.1
# Seconds slept between fetches in the last tick before a due message: what a message sent
# meanwhile may wait more (20 ms made an immediate task's start 11 ms at p50, not 0.5).
SLEEP_STEP = 0.005
SEND_CHUNK = 500  # messages per send script call
# Seconds a process trusts that Redis still holds the queue names it registered: a Redis
# restarted without persistence (or flushed) lost them, and then `celeriac status` and
# `celeriac dlq list` showed no queue while tasks waited in it.
REREGISTER = 60.0


class Context(msgspec.Struct):
    """What every plan needs: key names, and whether the server is a Cluster."""

    keys: Keyspace
    cluster: bool
    known: set[str]  # queue names this process has registered in the queue set
    known_since: float = 0.0  # monotonic time ``known`` was last emptied (see REREGISTER)
    # Seconds one BLPOP may block: under half the socket timeout, or an idle fetch with
    # socket_timeout=2 in the URL timed out on its own BLPOP, an outage every idle moment.
    max_block: float = MAX_BLOCK
    # Seconds by which a BLPOP's timeout may end late: the server's timer tick, 1/hz, read
    # by the start-up check (BLOCK_TICK when the server refuses CONFIG GET).
    block_tick: float = BLOCK_TICK
    # What stats(ready_at) read from each ready list's first entry: (queue, priority) ->
    # (the entry's fingerprint, the time read from its message). A head that stays (a
    # stuck queue) is not sent again at every scrape: its body may be 256 KB.
    heads: dict[tuple[str, int], tuple[bytes, float | None]] = msgspec.field(default_factory=dict)

    def registered(self) -> set[str]:
        """The queues this process registered, forgotten every REREGISTER seconds so that
        it registers them again: one SADD a minute per queue and process."""
        now = time.monotonic()
        if now - self.known_since > REREGISTER:
            self.known.clear()
            self.known_since = now
        return self.known

    @property
    def mode(self) -> str:
        """How scripts store final results: in place, or via the queue's outbox."""
        return "outbox" if self.cluster else "direct"

    def target(self, q: QueueKeys, task_id: str) -> bytes:
        """Where a settling script writes the final result of ``task_id``."""
        return q.outbox if self.cluster else self.keys.result(task_id)

    def register(self, names: Sequence[str]) -> list[Call]:
        """A script call adding queues to the set of known queues (once per process and
        REREGISTER seconds)."""
        registered = self.registered()
        new = [name for name in dict.fromkeys(names) if name not in registered]
        return [Call(SCRIPTS.register_queues, (self.keys.queues,), new)] if new else []


#: The longest time to live sent to Redis, in seconds: 100 years stands for "no expiry".
LONGEST_TTL = 100 * 365 * 86_400.0


def ms(seconds: float) -> int:
    """Seconds as whole milliseconds, at least 1 (Redis refuses a zero TTL), at most
    :data:`LONGEST_TTL`: ``result_expires=math.inf`` (the settings allow it) raised
    OverflowError at every commit, and Redis refuses a TTL past a 64-bit integer.

    Example:
        >>> ms(0.0001), ms(1.5), ms(float("inf")) == ms(LONGEST_TTL)
        (1, 1500, True)
    """
    return max(int(min(seconds, LONGEST_TTL) * 1000), 1)


def result_spec(ctx: Context, task_id: str, result: bytes | None, ttl: float) -> list[Arg]:
    """The five result-spec arguments of includes/result.lua."""
    present = result is not None
    return [ctx.mode, "1" if present else "0", result or b"", ms(ttl), ctx.keys.channel(task_id)]


# -- producing ---------------------------------------------------------------------------


def send(ctx: Context, messages: Sequence[Outgoing]) -> Plan[list[bool]]:
    """Store messages, grouped by queue, in one round trip; True for each new id.

    Raises:
        MessageError: an id is one fetch makes up for bytes pushed by hand (nothing sent).
    """
    one = one_send(ctx, messages)
    if one is not None:
        try:
            reply = yield one
        except BrokerError as exc:
            say_maybe_queued(exc, 1)
            raise
        return [reply == 1]
    created = [False] * len(messages)
    finished: set[int] = set()
    if ctx.cluster and messages:
        # Result keys live in other slots than the queue, so the script cannot read them:
        # read first. A send racing the commit of the same id may queue it again; fetch
        # then finds the final result and acks that copy without handing it out.
        heads = yield Batch([Command(("GETRANGE", ctx.keys.result(m.id), 0, 0)) for m in messages])
        finished = {i for i, head in enumerate(heads) if head == b"F"}
    groups: dict[str, list[int]] = {}
    for i, out in enumerate(messages):
        if i not in finished:
            groups.setdefault(out.queue, []).append(i)
    # At most SEND_CHUNK messages per script call: one call never holds Redis for long,
    # and Redis runs one chunk while the next is still being sent.
    chunks = [
        (name, indexes[start : start + SEND_CHUNK])
        for name, indexes in groups.items()
        for start in range(0, len(indexes), SEND_CHUNK)
    ]
    if not chunks:
        return created
    calls = (
        _send_call(ctx, ctx.keys.queue(name), [messages[i] for i in indexes])
        for name, indexes in chunks
    )
    try:
        replies = yield Batch(itertools.chain(calls, ctx.register(list(groups))))
    except BrokerError as exc:
        say_maybe_queued(exc, len(messages), calls=len(chunks))
        raise
    for (_, indexes), reply in zip(chunks, replies, strict=False):
        for i, flag in zip(indexes, reply, strict=True):
            created[i] = flag == 1
    ctx.known.update(groups)
    return created


def one_send(ctx: Context, messages: Sequence[Outgoing]) -> Call | None:
    """The one script call that sends ``messages``, when that is all :func:`send` would
    do: the common case of one ``delay()`` (one message, to a queue this process has
    registered, on a standalone Redis). Its reply is 1 for a new id; a failure is told as
    :func:`say_maybe_queued` tells it. None: :func:`send` must be run.

    Raises:
        MessageError: an id is one fetch makes up for bytes pushed by hand (nothing sent).
    """
    for m in messages:  # all checked first: a batch is streamed as it is built
        if m.id.startswith("\x00raw-") and is_foreign(compact(m.id)):
            raise MessageError(
                f"task id {m.id!r} is reserved: the Redis broker gives it to bytes pushed into "
                "a queue by hand. Nothing was sent; choose another id."
            )
    if len(messages) != 1 or ctx.cluster:
        return None
    m = messages[0]
    if m.queue not in ctx.registered():
        return None
    return _send_one_call(ctx, ctx.keys.queue(m.queue), m)


def say_maybe_queued(exc: BrokerError, count: int, *, calls: int = 1) -> None:
    """Add to a failed send's error what may be queued all the same, and mark it
    ``maybe_done``: "not sent" alone had callers send again under new ids, and the
    tasks ran twice.

    Two cases: Redis got the calls and did not answer in time (a stopped Redis runs them
    once it runs again), or one of several calls was refused after others had run (Redis
    full halfway, an ACL on one queue).
    """
    if len(exc.args) != 1:
        return
    if not exc.maybe_done and calls > 1:
        exc.maybe_done = True
        exc.args = (
            f"{exc.args[0]} Some of these {count} messages may be queued all the same: they "
            f"go in one call per queue and {SEND_CHUNK} messages, and calls other than the "
            "refused one may have run. Send the same messages again: their ids make a "
            "resend queue only those that are not queued yet.",
        )
    elif exc.maybe_done:
        again = (
            "this message all the same once it answers. Send it again under the same id "
            "to be sure (apply_async(..., task_id=ID))"
            if count == 1
            else f"these {count} messages all the same once it answers. Send the same "
            "messages again to be sure"
        )
        exc.args = (f"{exc.args[0]} Redis may queue {again}: an id queued is not queued twice.",)


def _send_call(ctx: Context, q: QueueKeys, messages: Sequence[Outgoing]) -> Call:
    # Runs once per message sent (a batch of 20,000 runs it 20,000 times): one loop with
    # no call per key; what it builds is exactly what pack_entry and stored_body describe.
    # The script reads each message's id and priority from its entry, so four arguments
    # per message instead of six (fewer to build, pack and parse in Redis).
    levels = {m.priority for m in messages}
    # Clamped at both ends, as each message's priority is below: clamped at one end each,
    # a call whose every priority was under 0 (or over 9) passed too few ready lists, and
    # the script pushed to an index hash (WRONGTYPE) after writing the id to it: the
    # message was not sent and a later send of its id was taken for a duplicate.
    lowest, highest = clamped_priority(min(levels)), clamped_priority(max(levels))
    keys = [q.wake, q.delayed, *q.ready[lowest : highest + 1]]
    position: dict[bytes, int] = {}  # 1-based KEYS index, each key passed once
    buckets = q.buckets
    cluster, outbox, prefix = ctx.cluster, q.outbox, ctx.keys.prefix
    args: list[Arg] = [ctx.mode, lowest]
    for m in messages:
        task_id = m.id
        encoded = task_id.encode("utf-8", "surrogateescape")
        cid = compact(task_id)
        priority = m.priority
        priority = 0 if priority < 0 else 9 if priority > 9 else priority
        key = buckets[int.from_bytes(cid, "big") % INDEX_BUCKETS]
        bucket_at = position.get(key)
        if bucket_at is None:
            keys.append(key)
            bucket_at = position[key] = len(keys)
        key = outbox if cluster else b"%s:r:{%s}" % (prefix, encoded)
        result_at = position.get(key)
        if result_at is None:
            keys.append(key)
            result_at = position[key] = len(keys)
        body = m.body
        head = b'{"id":"%s",' % encoded
        if body.startswith(head):  # stored_body, inline
            body = _STRIPPED + body[len(head) :]
        size = len(cid)
        args += [
            bucket_at,
            result_at,
            int(m.eta * 1000) if m.eta else 0,
            b"\xce\x1a%c\x00\x00%c%c%s%s" % (priority, size >> 8, size & 255, cid, body),
        ]
    return Call(SCRIPTS.send, keys, args)


def _send_one_call(ctx: Context, q: QueueKeys, m: Outgoing) -> Call:
    # The call of send_one-5.lua, which does for one message what send-2.lua does for a
    # batch of it (tests/redis/test_send_one.py holds the two equal), without what a batch
    # needs: the priority range, the key positions, the argument list grown per message.
    # One delay() is the call producers make most: 6 of its ~55 µs of Python, and ~5 % of
    # its rate (docs/benchmarks.md, "One message, one call"). Direct mode only (one_send).
    task_id = m.id
    encoded = task_id.encode("utf-8", "surrogateescape")
    cid = compact(task_id)
    priority = clamped_priority(m.priority)  # once per call: not worth inlining
    body = m.body
    head = b'{"id":"%s",' % encoded
    if body.startswith(head):  # stored_body, inline
        body = _STRIPPED + body[len(head) :]
    size = len(cid)
    bucket = q.buckets[int.from_bytes(cid, "big") % INDEX_BUCKETS]
    target = b"%s:r:{%s}" % (ctx.keys.prefix, encoded)
    entry = b"\xce\x1a%c\x00\x00%c%c%s%s" % (priority, size >> 8, size & 255, cid, body)
    due = int(m.eta * 1000) if m.eta else 0
    keys = [q.wake, q.delayed, q.ready[priority], bucket, target]
    return Call(SCRIPTS.send_one, keys, [due, entry])


def pack_entry(cid: bytes, priority: int, body: bytes) -> bytes:
    """A new entry as includes/entry.lua lays it out (no delivery yet).

    Example:
        >>> pack_entry(b"id", 3, b"{}")
        b'\\xce\\x1a\\x03\\x00\\x00\\x00\\x02id{}'
    """
    return b"\xce\x1a%c\x00\x00%c%c%s%s" % (priority, len(cid) >> 8, len(cid) & 255, cid, body)


# A JSON message body repeats its id, which the entry already holds (as 17 bytes for a
# UUID): stored without it, a queued task is ~42 bytes smaller in Redis. The stored form
# starts with a zero byte, which no JSON body does; fetch puts the id back, byte for byte.
_STRIPPED = b"\x00{"


def stored_body(task_id: str, body: bytes) -> bytes:
    """The body as stored: without its leading ``"id"`` field when it has exactly that one.

    Example:
        >>> stored_body("t1", b'{"id":"t1","task":"add"}')
        b'\\x00{"task":"add"}'
        >>> stored_body("t1", b'{"task":"add","id":"t1"}')  # any other shape: as it is
        b'{"task":"add","id":"t1"}'
    """
    head = b'{"id":"%s",' % task_id.encode("utf-8", "surrogateescape")
    if body.startswith(head):
        return _STRIPPED + body[len(head) :]
    return body


def sent_body(task_id: str, stored: bytes) -> bytes:
    """The body as it was sent (reverses :func:`stored_body`)."""
    if stored.startswith(_STRIPPED):
        return b'{"id":"%s",%s' % (task_id.encode("utf-8", "surrogateescape"), stored[2:])
    return stored


# -- consuming ---------------------------------------------------------------------------


def fetch(
    ctx: Context,
    names: Sequence[str],
    consumer: str,
    *,
    limit: int,
    lease_seconds: float,
    timeout: float,
) -> Plan[list[Delivery]]:
    """Take due messages; block on the queues' wake lists (never a poll) until timeout."""
    deadline = time.monotonic() + timeout
    queues = [ctx.keys.queue(name) for name in dict.fromkeys(names)]
    if not queues:  # nothing can arrive: wait out the timeout, as every broker does
        if timeout > 0:
            yield Pause(timeout)
        return []
    registration = ctx.register(names)
    if registration:
        yield Batch(registration)
        ctx.known.update(names)
    lease_ms = ms(lease_seconds)
    taken, wait_ms = yield from _take(ctx, queues, consumer, limit, lease_ms)
    turn = 0
    while True:
        remaining = deadline - time.monotonic()
        if taken or remaining <= 0:
            return taken
        wait = remaining if wait_ms < 0 else min(remaining, wait_ms / 1000)
        if 0 <= wait_ms <= remaining * 1000:  # a delayed message comes due first
            # A BLPOP's timeout ends on Redis's timer tick (ctx.block_tick: 100 ms at the
            # default hz 10): a message due in 5 ms was fetched up to 100 ms late, and a
            # rate-limited backlog, back at its slots in clumps, ran at 46/s of 50 and was
            # mostly deferred again. So the block ends a tick early, and the last stretch is
            # slept here in steps, with a fetch after each: a message sent meanwhile
            # waits at most a step.
            if wait <= ctx.block_tick:
                yield Pause(min(wait, SLEEP_STEP))
                taken, wait_ms = yield from _take(ctx, queues, consumer, limit, lease_ms)
                continue
            wait -= ctx.block_tick
        wake = [q.wake for q in queues]
        if ctx.cluster:
            if len(wake) > 1:
                # BLPOP cannot span slots: wait on one queue at a time, briefly.
                wake, wait = [wake[turn % len(wake)]], min(wait, POLL)
                turn += 1
            if wait >= 0.001:
                yield Command(("BLPOP", *wake, f"{min(wait, ctx.max_block):.3f}"))
            taken, wait_ms = yield from _take(ctx, queues, consumer, limit, lease_ms)
            continue
        # The fetch goes in one pipeline with the BLPOP: Redis keeps a blocked client's
        # next command in its buffer and runs it the moment the BLPOP returns, so a wake-up
        # is a delivery, without a second round trip, and the fetch script still takes the
        # best priority and records the lease atomically.
        blpop = Command(("BLPOP", *wake, f"{min(wait, ctx.max_block):.3f}"))
        block = [blpop] if wait >= 0.001 else []
        replies = yield Batch([*block, fetch_call(queues, consumer, limit, lease_ms)])
        taken, wait_ms = _fetched(replies[-1], queues)


def _take(
    ctx: Context, queues: Sequence[QueueKeys], consumer: str, limit: int, lease_ms: int
) -> Plan[tuple[list[Delivery], int]]:
    """One non-blocking fetch over ``queues``; the deliveries and a wait hint in ms."""
    if not ctx.cluster:
        return _fetched((yield fetch_call(queues, consumer, limit, lease_ms)), queues)
    if len(queues) == 1:
        taken, hint = _fetched((yield fetch_call(queues, consumer, limit, lease_ms)), queues)
    else:
        # Several queues: peek at each queue's best priority, then take from the queue with
        # the best first (see the module docstring of broker.py: strict across the queues'
        # best messages, not across a whole batch).
        peeks = yield Batch([fetch_call([q], consumer, 0, lease_ms) for q in queues])
        order = sorted(range(len(queues)), key=lambda i: -int(peeks[i][1]))
        hints = [int(p[0]) for p in peeks if int(p[0]) >= 0]
        taken, hint = [], min(hints, default=-1)
        for i in order:
            if len(taken) >= limit or int(peeks[i][1]) < 0:
                continue
            reply = yield fetch_call([queues[i]], consumer, limit - len(taken), lease_ms)
            taken += deliveries(reply, 2, [queues[i]])
    return (yield from _unfinished(ctx, taken)), hint


def _unfinished(ctx: Context, taken: list[Delivery]) -> Plan[list[Delivery]]:
    """Cluster: ack, without running them, deliveries whose task already has a final result.

    send's check for a finished id reads the result keys before its script runs (they are
    in other slots), so a send racing the commit of the same id queues it again; this
    catches that copy when it is fetched, unless the first copy is still running then.
    """
    if not taken:
        return taken
    try:
        heads = yield Batch(
            [Command(("GETRANGE", ctx.keys.result(d.lease.id), 0, 0)) for d in taken]
        )
    except BrokerError as exc:
        # A node holding some of these result keys (their slots are the task ids', all
        # over the cluster) is down. Raised, the fetch left what it took held until the
        # leases ran out, each redelivery counted, and healthy tasks of a live node's queue
        # were dead-lettered. Handed out unchecked instead: a copy of a finished task (the
        # rare send racing its commit) may run again, which at-least-once allows.
        _say_unchecked(exc, len(taken))
        return taken
    keep = []
    for delivery, head in zip(taken, heads, strict=True):
        if head != b"F":
            keep.append(delivery)
        elif (yield from complete(ctx, delivery.lease, None, 1.0)):
            log.info("task %s already finished: its second copy was acked", delivery.lease.id)
    return keep


_UNCHECKED_SAID_EVERY = 60.0  # seconds between two warnings of _say_unchecked
_unchecked_said = -_UNCHECKED_SAID_EVERY


def _say_unchecked(exc: BrokerError, count: int) -> None:
    """Warn, at most once a minute per process, that fetched tasks were not checked."""
    global _unchecked_said  # noqa: PLW0603 - one rate limit per process
    now = time.monotonic()
    if now - _unchecked_said < _UNCHECKED_SAID_EVERY:
        return
    _unchecked_said = now
    log.warning(
        "could not read the result keys of %d fetched task(s) (%s): they run without the "
        "check for an already finished copy, so a task sent again as it finished may run "
        "twice. A Cluster node is down or unreachable: bring it back (redis-cli --cluster "
        "check)",
        count,
        exc,
    )


def _fetched(reply: Sequence[Any], queues: Sequence[QueueKeys]) -> tuple[list[Delivery], int]:
    """A fetch-15 reply over ``queues``: the deliveries and the wait hint in ms."""
    return deliveries(reply, 2, queues), int(reply[0])


def fetch_call(queues: Sequence[QueueKeys], consumer: str, limit: int, lease_ms: int) -> Call:
    """The fetch-15 script over the blocks of ``queues``."""
    return Call(
        SCRIPTS.fetch, [key for q in queues for key in q.block], [consumer, limit, lease_ms]
    )


def deliveries(reply: Sequence[Any], start: int, queues: Sequence[QueueKeys]) -> list[Delivery]:
    """Read the six-per-message tail of a fetch reply."""
    out: list[Delivery] = []
    for i in range(start, len(reply), 6):
        block, cid, token, count, priority, body = reply[i : i + 6]
        task_id = expand(cid)
        lease = Lease(task_id, queues[block - 1].name, token.decode())
        # Bytes pushed by hand are delivered exactly as they were pushed, never "restored".
        body = body if is_foreign(cid) else sent_body(task_id, body)
        out.append(Delivery(lease, body, count, priority))
    return out


def settled(code: int, what: str) -> bool:
    """True when a fenced script settled the message; False when the lease was lost."""
    if code == ErrorCode.LEASE_LOST:
        return False
    return check(code, what) == 1


def complete(ctx: Context, lease: Lease, result: bytes | None, ttl: float) -> Plan[bool]:
    """Ack a held message and store its final result in one fenced script."""
    q, cid = ctx.keys.queue(lease.queue), compact(lease.id)
    keys = (q.held, q.leases, q.bucket(cid), ctx.target(q, lease.id))
    code = yield Call(
        SCRIPTS.complete, keys, [cid, lease.token, *result_spec(ctx, lease.id, result, ttl)]
    )
    committed = settled(code, f"complete task {lease.id}")
    if committed:
        yield from after_commit(ctx, q, cid, ms(ttl), result)
    return committed


def complete_many(
    ctx: Context,
    items: Sequence[tuple[Lease, bytes | None]],
    ttl: float,
    *,
    names: Sequence[str],
    consumer: str,
    limit: int,
    lease_seconds: float,
) -> Plan[tuple[list[bool], list[Delivery]]]:
    """Complete several messages and (``limit`` > 0) fetch, in ONE script call.

    In Cluster, one call only when every key shares one slot (one queue); otherwise each
    completion and the fetch go on their own.
    """
    queues = [ctx.keys.queue(name) for name in dict.fromkeys(names)] if limit > 0 else []
    if ctx.cluster and len({lease.queue for lease, _ in items} | {q.name for q in queues}) > 1:
        committed = []
        for lease, result in items:
            committed.append((yield from complete(ctx, lease, result, ttl)))
        more: list[Delivery] = []
        if limit > 0:
            more = yield from fetch(
                ctx, names, consumer, limit=limit, lease_seconds=lease_seconds, timeout=0.0
            )
        return committed, more
    keys: list[bytes] = []
    position: dict[bytes, int] = {}

    def at(key: bytes) -> int:  # 1-based KEYS index, each key passed once
        index = position.get(key)
        if index is None:
            keys.append(key)
            index = position[key] = len(keys)
        return index

    args: list[Arg] = [0 if ctx.cluster else at(ctx.keys.waiting)]
    cids = []
    for lease, result in items:
        q, cid = ctx.keys.queue(lease.queue), compact(lease.id)
        cids.append((q, cid))
        args += [at(q.held), at(q.leases), at(q.bucket(cid)), cid, lease.token]
        args += [at(ctx.target(q, lease.id)), *result_spec(ctx, lease.id, result, ttl)]
    first_block = len(keys)
    keys += [key for q in queues for key in q.block]
    reply = yield Call(
        SCRIPTS.complete_many, keys, [first_block, consumer, limit, ms(lease_seconds), *args]
    )
    committed = []
    for (lease, result), (q, cid), code in zip(items, cids, reply, strict=False):
        # Per task: the common code (1) and standalone Redis skip the message and the
        # generator that only an odd code or Cluster needs.
        ok = code == 1 or settled(code, f"complete task {lease.id}")
        if ok and ctx.cluster:
            yield from after_commit(ctx, q, cid, ms(ttl), result)
        committed.append(ok)
    return committed, deliveries(reply, len(items) + 2, queues) if queues else []


def publish(ctx: Context, q: QueueKeys, cid: bytes, ttl_ms: int, result: bytes) -> Plan[None]:
    """Copy a committed result from the queue's outbox to its result key (Cluster)."""
    task_id = expand(cid)
    yield Call(
        SCRIPTS.publish_result,
        (ctx.keys.result(task_id),),
        [result, ttl_ms, ctx.keys.channel(task_id)],
    )
    yield Command(("HDEL", q.outbox, cid))


def after_commit(
    ctx: Context, q: QueueKeys, cid: bytes, ttl_ms: int, result: bytes | None
) -> Plan[None]:
    """In Cluster, publish a result the settling script parked in the outbox.

    The commit already happened, so a failure here is not the caller's failure: it is
    logged, and the reaper publishes the parked result later.
    """
    if result is None or not ctx.cluster:
        return
    try:
        yield from publish(ctx, q, cid, ttl_ms, result)
    except BrokerError as exc:
        log.warning(
            "task %s committed, but its result could not be published yet (%s); the reaper "
            "will publish it",
            expand(cid),
            exc,
        )


def requeue(
    ctx: Context,
    lease: Lease,
    delay: float,
    body: bytes | None,
    count_delivery: bool,
    *,
    front: bool = False,
) -> Plan[bool]:
    """Put a held message back, fenced; ``front``: at the head of its ready list."""
    q = ctx.keys.queue(lease.queue)
    if body is None:
        mode = "count" if count_delivery else "uncount"
    else:  # a retry starts counting again; a deferral that rewrote the message does not
        mode = "replace" if count_delivery else "rewrite"
    # Never early: rounded down, and added to Redis's clock read in whole milliseconds, a
    # delay came due up to 2 ms before it ended. A rate-limited task back at its slot then
    # found the window still full, and was deferred again (by 0 ms: due at once) until it
    # opened, ~2 times per task of a backlog at 50/s, where SQLite's came back once.
    delay_ms = math.ceil(delay * 1000) + 1 if delay > 0 else 0
    code = yield Call(
        SCRIPTS.requeue,
        q.block,
        [compact(lease.id), lease.token, delay_ms, mode, body or b"", b"1" if front else b""],
    )
    return settled(code, f"requeue task {lease.id}")


def renew(ctx: Context, leases: Sequence[Lease], lease_seconds: float) -> Plan[list[str]]:
    """Extend leases, one script per queue in one round trip; the ids that were lost."""
    groups: dict[str, list[Lease]] = {}
    for lease in leases:
        groups.setdefault(lease.queue, []).append(lease)
    calls: list[Call | Command] = []
    for name, group in groups.items():
        q = ctx.keys.queue(name)
        args: list[Arg] = [ms(lease_seconds)]
        for lease in group:
            args += [compact(lease.id), lease.token]
        calls.append(Call(SCRIPTS.renew, (q.held, q.leases), args))
    if not calls:
        return []
    replies = yield Batch(calls)
    return [
        group[n - 1].id for group, lost in zip(groups.values(), replies, strict=True) for n in lost
    ]


# -- workers -----------------------------------------------------------------------------


def heartbeat(ctx: Context, worker_id: str, ttl: float, info: bytes) -> Plan[None]:
    """Record a live worker until ``ttl`` seconds from now (Redis time)."""
    yield from heartbeat_all(ctx, [(worker_id, info)], ttl)


def heartbeat_all(ctx: Context, workers: Sequence[tuple[str, bytes]], ttl: float) -> Plan[None]:
    """Record several live workers in one pipeline (one round trip)."""
    keys = (ctx.keys.workers_alive, ctx.keys.workers_info)
    yield Batch([Call(SCRIPTS.heartbeat, keys, [wid, ms(ttl), info]) for wid, info in workers])


def forget_worker(ctx: Context, worker_id: str) -> Plan[None]:
    """Drop a worker that stopped cleanly."""
    yield Batch(
        [
            Command(("ZREM", ctx.keys.workers_alive, worker_id)),
            Command(("HDEL", ctx.keys.workers_info, worker_id)),
        ]
    )


def workers(ctx: Context) -> Plan[tuple[list[bytes], list[bytes]]]:
    """Descriptions of live workers, and ids of workers whose heartbeat expired."""
    live, dead = yield Call(SCRIPTS.workers, (ctx.keys.workers_alive, ctx.keys.workers_info), [])
    return list(live), list(dead)


def known_queues(ctx: Context) -> Plan[list[str]]:
    """Every queue name registered by any process, sorted."""
    members = yield Command(("SMEMBERS", ctx.keys.queues))
    return sorted({m.decode() for m in members} | ctx.known)


def reap(ctx: Context) -> Plan[int]:
    """Release what dead workers and expired leases held, in every queue; finish results
    that a dead worker left in an outbox. Deterministic: the same state, the same moves."""
    _, dead = yield from workers(ctx)
    if not ctx.cluster:  # waiters that died without leaving (see admin.wait_result)
        yield Command(("ZREMRANGEBYSCORE", ctx.keys.waiting, "-inf", int(time.time() * 1000)))
    queues = [ctx.keys.queue(name) for name in (yield from known_queues(ctx))]
    released = 0
    if queues:
        replies = yield Batch([Call(SCRIPTS.reap, (*q.block, q.outbox), dead) for q in queues])
        for q, reply in zip(queues, replies, strict=True):
            released += int(reply[0])
            for i in range(1, len(reply), 2):
                ttl, _, result = reply[i + 1].partition(b":")
                yield from publish(ctx, q, reply[i], int(ttl), result)
    # Dropped once what they held is released, and even when no queue is known yet: kept,
    # a worker that came back (frozen past its heartbeat) lost every lease it took before
    # its next heartbeat, at the next reap.
    if dead:
        yield Call(SCRIPTS.drop_workers, (ctx.keys.workers_alive, ctx.keys.workers_info), dead)
    return released
