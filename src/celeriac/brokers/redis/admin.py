"""Plans for results, dead letters and queue administration (see :mod:`.steps`)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from celeriac.brokers.records import (
    PEEK_BYTES,
    DeadLetter,
    Lease,
    LeaseLoss,
    QueueStats,
    ReadyAt,
    Renew,
    Waiting,
    peek_bounds,
    queue_stats,
    replayed,
)
from celeriac.brokers.redis.keys import compact, expand, is_foreign
from celeriac.brokers.redis.ops import (
    Context,
    after_commit,
    known_queues,
    ms,
    result_spec,
    sent_body,
    settled,
)
from celeriac.brokers.redis.scripts import SCRIPTS, check
from celeriac.brokers.redis.startup import config_value
from celeriac.brokers.redis.steps import (
    Arg,
    Batch,
    Call,
    Command,
    Listen,
    Pause,
    Plan,
    Subscribe,
)
from celeriac.errors import BrokerConnectionError, BrokerError

DEAD_RESULT_TTL = 86_400.0 * 7  # seconds a dead-lettered task's result is kept
PURGE_STEP = 10_000  # entries deleted per purge call, so Redis never stalls for long
LISTEN_STEP = 1.0  # seconds per wait for a wake-up; the key is read again after each
WAITER_LEASE = 60.0  # seconds a waiter's registration lasts unless it is renewed
MGET_KEYS = 1_000  # result keys per MGET: about a millisecond of Redis's time at most
REPLAY_STEP = 1_000  # dead letters per replay call, so Redis never stalls for long
OUTAGE_PAUSE_MAX = 1.0  # seconds between a waiter's reads while Redis is away (0.1 s, doubled)

log = logging.getLogger("celeriac.broker")


class _Letter(msgspec.Struct, array_like=True):
    """A dead-letter record as stored (msgpack); Lua never reads it."""

    id: str
    queue: str
    task: str
    reason: str
    body: bytes
    deliveries: int
    error: str
    dead_at: float


_letter_decoder = msgspec.msgpack.Decoder(_Letter)


# -- results -----------------------------------------------------------------------------


def store_result(ctx: Context, task_id: str, result: bytes, ttl: float) -> Plan[None]:
    """Store a non-final state unless a final one exists."""
    yield Call(SCRIPTS.store_result, (ctx.keys.result(task_id),), [result, ms(ttl)])


def _read_result(stored: bytes | None) -> tuple[bytes, bool] | None:
    if not stored:
        return None
    return stored[1:], stored[:1] in _READ_AS_FINAL


_READ_AS_FINAL = (b"F", b"R")  # a final result, or a revoke mark (mark_revoked-1.lua)


def mark_revoked(
    ctx: Context, task_ids: Sequence[str], result: bytes, ttl: float
) -> Plan[list[bool]]:
    """Mark each id without a final result revoked, in one pipeline (each result key is
    in its own Cluster slot); True for each id marked."""
    if not task_ids:
        return []
    replies = yield Batch(
        Call(SCRIPTS.mark_revoked, (ctx.keys.result(i),), [result, ms(ttl), ctx.keys.channel(i)])
        for i in task_ids
    )
    return [reply == 1 for reply in replies]


def held(ctx: Context, task_ids: Sequence[str]) -> Plan[list[bool]]:
    """Whether each id's message is in a queue's held hash (under a lease, not yet given
    back): one HMGET per known queue, in one pipeline (each queue in its own slot)."""
    names = (yield from known_queues(ctx)) if task_ids else []
    if not names:
        return [False] * len(task_ids)
    cids = [compact(task_id) for task_id in task_ids]
    replies = yield Batch(Command(("HMGET", ctx.keys.queue(n).held, *cids)) for n in names)
    return [any(reply[k] is not None for reply in replies) for k in range(len(task_ids))]


def get_result(ctx: Context, task_id: str) -> Plan[tuple[bytes, bool] | None]:
    """The stored result and whether it is final."""
    stored = yield Command(("GET", ctx.keys.result(task_id)))
    return _read_result(stored)


def get_results(ctx: Context, task_ids: Sequence[str]) -> Plan[list[tuple[bytes, bool] | None]]:
    """The stored result of each id and whether it is final, in one round trip (in
    Cluster, one per node).

    Standalone: MGETs of up to ``MGET_KEYS`` keys each, in one pipeline, so a group of
    10,000 is 10 commands, none of which holds Redis for long. Cluster: every result key is
    in its own slot (the id is its hash tag), which no MGET may span, so one GET per id,
    pipelined; redis-py sends each node its share in one round trip.
    """
    if not task_ids:
        return []
    keys = [ctx.keys.result(task_id) for task_id in task_ids]
    if ctx.cluster:
        replies = yield Batch([Command(("GET", key)) for key in keys])
    else:
        chunks = yield Batch(
            [
                Command(("MGET", *keys[start : start + MGET_KEYS]))
                for start in range(0, len(keys), MGET_KEYS)
            ]
        )
        replies = [reply for chunk in chunks for reply in chunk]
    return [_read_result(reply) for reply in replies]


#: Seconds between two "still waiting" lines of one process: 500 waiters through a 2 s
#: restart logged 500 of them.
OUTAGE_SAID_EVERY = 30.0
_outage_said_at = [-OUTAGE_SAID_EVERY]  # monotonic time of the last one


def _say_outage() -> bool:
    """Whether a wait that met an outage says so: the first in OUTAGE_SAID_EVERY seconds."""
    now = time.monotonic()
    if now - _outage_said_at[0] < OUTAGE_SAID_EVERY:
        return False
    _outage_said_at[0] = now
    return True


def wait_result(ctx: Context, task_id: str, timeout: float) -> Plan[bytes | None]:
    """Subscribe to the task's channel, then look: a commit in between is never missed.

    Every waiter joins the task's channel (the async face shares one pub/sub connection
    per event loop, see subscriptions.py), so many waiters on one id all wake, each as
    soon as the committing script publishes. The wake-up is one byte; the waiter then
    reads the result key. It also reads the key after every quiet second, because a
    wake-up published while a dropped connection was being replaced and subscribed again
    is gone for good.

    Redis going away once the wait has begun (a restart, a failover, a blip) is waited
    out until the deadline, as workers wait it out: a ``get(timeout=60)`` across a
    two-second restart returns the result. Before the wait has begun (its registration
    and subscription), and at the deadline, it raises
    :class:`~celeriac.errors.BrokerConnectionError`, so a dead broker is still reported at
    once and a wait never ends as a time-out that was an outage.
    """
    deadline = time.monotonic() + timeout
    waiter = b""
    renew_at = math.inf
    if not ctx.cluster:
        # Registered before the first look, so a commit after it publishes (settling
        # scripts skip the wake-up while nobody is registered). The score is when the
        # registration may be dropped: by this waiter when it leaves, or by the reaper
        # once it lapses. It lasts WAITER_LEASE and is renewed halfway, not set to the
        # timeout: a waiter that never leaves (cancelled, its process killed; aget() with
        # no timeout waits for years) must not keep commits publishing for years, and a
        # restart that lost the set is repaired within a renewal. A clock more than
        # WAITER_LEASE off only costs wake-ups: the key is read every LISTEN_STEP anyway.
        waiter = os.urandom(8).hex().encode()
        yield Command(("ZADD", ctx.keys.waiting, _lapses(), waiter), _bound(deadline))
        renew_at = time.monotonic() + WAITER_LEASE / 2
    yield Subscribe(ctx.keys.channel(task_id))
    found: bytes | None = None
    away = 0  # reads in a row that found Redis unreachable
    while True:
        try:
            # Each read is bounded by the wait's deadline, not only the socket timeout: a
            # get(timeout=1) on a frozen Redis took 31 s (a paused VM, SIGSTOP).
            key = ctx.keys.result(task_id)
            stored = _read_result((yield Command(("GET", key), _bound(deadline))))
            if stored is not None and stored[1]:
                found = stored[0]
                break
            away = 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            yield Listen(min(remaining, LISTEN_STEP))
            if time.monotonic() >= renew_at:
                yield Command(("ZADD", ctx.keys.waiting, _lapses(), waiter), _bound(deadline))
                renew_at = time.monotonic() + WAITER_LEASE / 2
        except BrokerConnectionError as exc:
            pause = min(0.1 * 2**away, OUTAGE_PAUSE_MAX)
            if time.monotonic() + pause >= deadline:
                raise
            if away == 0 and _say_outage():
                log.warning(
                    "%s Still waiting, up to %.0f s more (the wait's timeout; other waits of "
                    "this process say nothing more for %.0f s).",
                    exc,
                    deadline - time.monotonic(),
                    OUTAGE_SAID_EVERY,
                )
            away += 1
            yield Pause(pause)
    if waiter:
        yield Command(("ZREM", ctx.keys.waiting, waiter), LISTEN_STEP)
    return found


def _bound(deadline: float) -> float:
    """Seconds a waiter's command may wait for its reply: what is left of the wait, and
    at least LISTEN_STEP, so the last look at the key still gets its answer."""
    return max(deadline - time.monotonic(), LISTEN_STEP)


def _lapses() -> int:
    """When a waiter's registration made now may be dropped (Unix ms)."""
    return int((time.time() + WAITER_LEASE) * 1000)


def forget_result(ctx: Context, task_id: str) -> Plan[None]:
    """Delete a stored result."""
    yield Command(("DEL", ctx.keys.result(task_id)))


def forget_results(ctx: Context, task_ids: Sequence[str]) -> Plan[None]:
    """Delete the stored results of many ids in one round trip (in Cluster, one per node),
    as :func:`get_results` reads them: DELs of up to ``MGET_KEYS`` keys each in one
    pipeline on a standalone server; one DEL per id, pipelined, in Cluster, where each
    result key is in its own slot and no DEL may span slots."""
    if not task_ids:
        return
    keys = list(dict.fromkeys(ctx.keys.result(task_id) for task_id in task_ids))
    if ctx.cluster:
        yield Batch([Command(("DEL", key)) for key in keys])
    else:
        yield Batch(
            [
                Command(("DEL", *keys[start : start + MGET_KEYS]))
                for start in range(0, len(keys), MGET_KEYS)
            ]
        )


# -- dead letters ------------------------------------------------------------------------


def dead_letter(ctx: Context, lease: Lease, letter: DeadLetter, result: bytes | None) -> Plan[bool]:
    """Move a held message to its queue's dead-letter store, fenced, with its final result."""
    q, cid = ctx.keys.queue(lease.queue), compact(lease.id)
    record = msgspec.msgpack.encode(
        _Letter(
            letter.id,
            letter.queue,
            letter.task,
            letter.reason,
            letter.body,
            letter.deliveries,
            letter.error,
            letter.dead_at,
        )
    )
    keys = (q.held, q.leases, q.bucket(cid), ctx.target(q, lease.id), q.dead, q.dead_at)
    args = [
        cid,
        lease.token,
        *result_spec(ctx, lease.id, result, DEAD_RESULT_TTL),
        compact(letter.id),
        int(letter.dead_at * 1000),
        record,
    ]
    code = yield Call(SCRIPTS.dead_letter, keys, args)
    committed = settled(code, f"dead-letter task {lease.id}")
    if committed:
        yield from after_commit(ctx, q, cid, ms(DEAD_RESULT_TTL), result)
    return committed


def lease_loss(ctx: Context, lease: Lease) -> Plan[LeaseLoss]:
    """Why a fenced script just refused ``lease``: read after the fact (never part of the
    fenced step), so the answer describes the message as it is now.

    Held under another token: another worker has it. Not held but still in the id index:
    waiting in its queue again. Neither, with a final result stored: another worker
    finished it. Neither, without one, while the queue's token counter is behind the
    lease's token: Redis lost the writes that made the token (the counter only grows), so
    a restart without persistence, a flush or a failover took the message with them. A
    counter that climbed past the token again since (a young queue) reads as GONE, whose
    words include that case.
    """
    q, cid = ctx.keys.queue(lease.queue), compact(lease.id)
    held, indexed, seq, result = yield Batch(
        [
            Command(("HEXISTS", q.held, cid)),
            Command(("HEXISTS", q.bucket(cid), cid)),
            Command(("GET", q.seq)),
            Command(("GETRANGE", ctx.keys.result(lease.id), 0, 0)),
        ]
    )
    if held:
        return LeaseLoss.TAKEN
    if indexed:
        return LeaseLoss.REQUEUED
    if result == b"F":
        return LeaseLoss.FINISHED
    if lease.token.isdigit() and int(seq or 0) < int(lease.token):
        return LeaseLoss.VANISHED
    return LeaseLoss.GONE


def _letters(ctx: Context, names: Sequence[str], limit: int) -> Plan[list[list[DeadLetter]]]:
    if not names:
        return []
    replies = yield Batch(
        [
            Call(SCRIPTS.dead_letters, (q.dead, q.dead_at), [limit])
            for q in map(ctx.keys.queue, names)
        ]
    )
    return [[_as_letter(_letter_decoder.decode(r)) for r in reply] for reply in replies]


def _as_letter(row: _Letter) -> DeadLetter:
    return DeadLetter(
        row.id, row.queue, row.task, row.reason, row.body, row.deliveries, row.error, row.dead_at
    )


def dead_letters(ctx: Context, limit: int) -> Plan[list[DeadLetter]]:
    """The newest dead letters of every queue, newest first."""
    names = yield from known_queues(ctx)
    per_queue = yield from _letters(ctx, names, limit)
    letters = [letter for group in per_queue for letter in group]
    return sorted(letters, key=lambda d: d.dead_at, reverse=True)[:limit]


def find_dead_letters(ctx: Context, ids: Sequence[str]) -> Plan[list[DeadLetter]]:
    """The dead letters with these ids: one HMGET per queue, not a read of every letter."""
    names = yield from known_queues(ctx)
    per_queue = yield from _letters_by_id(ctx, names, ids)
    return [letter for group in per_queue for letter in group]


def _letters_by_id(
    ctx: Context, names: Sequence[str], ids: Sequence[str]
) -> Plan[list[list[DeadLetter]]]:
    if not names or not ids:
        return [[] for _ in names]
    cids = [compact(i) for i in dict.fromkeys(ids)]
    replies = yield Batch([Command(("HMGET", ctx.keys.queue(n).dead, *cids)) for n in names])
    return [[_as_letter(_letter_decoder.decode(r)) for r in reply if r] for reply in replies]


def replay_dead_letters(
    ctx: Context, ids: Sequence[str] | None, task: str | None, renew: Renew | None
) -> Plan[int]:
    """Send chosen dead letters back to their queues with a fresh delivery count (and,
    with ``renew``, a renewed body at the message's own priority).

    ``REPLAY_STEP`` letters per script call, oldest first: every letter of every queue
    read in one reply and replayed in one call held Redis for 2.7 s at 200,000 small
    letters (workers, waiters and producers all stalled) and the CLI for 500 MB, when a
    bad deploy's "unknown task" letters are what is replayed by the thousand. Without
    ``ids``, the letters are those dead when it starts (their ids read first, without
    bodies): one that dies again during the replay is not replayed again.
    """
    names = yield from known_queues(ctx)
    if not names:
        return 0
    total = 0
    if ids is not None:  # by id: a step of ids at a time, looked up in every queue at once
        cids = [compact(i) for i in dict.fromkeys(ids)]
        for first in range(0, len(cids), REPLAY_STEP):
            step = cids[first : first + REPLAY_STEP]
            total += yield from _replay_step(ctx, names, step, task, renew)
        return total
    per_queue: list[list[bytes]] = yield Batch(
        [Command(("ZRANGE", ctx.keys.queue(n).dead_at, 0, -1)) for n in names]
    )
    for name, dead in zip(names, per_queue, strict=True):
        for first in range(0, len(dead), REPLAY_STEP):
            step = dead[first : first + REPLAY_STEP]
            total += yield from _replay_step(ctx, [name], step, task, renew)
    return total


def _replay_step(
    ctx: Context, names: Sequence[str], cids: Sequence[bytes], task: str | None, renew: Renew | None
) -> Plan[int]:
    """Replay the letters of ``cids`` found in the queues ``names`` (of ``task``, if
    given): one read per queue, then one script call per queue that holds any."""
    rows = yield Batch([Command(("HMGET", ctx.keys.queue(n).dead, *cids)) for n in names])
    calls: list[Call | Command] = []
    forget: list[Call | Command] = []
    for name, found in zip(names, rows, strict=True):
        letters = [_as_letter(_letter_decoder.decode(r)) for r in found if r]
        # Oldest first, as every broker queues them, not in the order the ids were given.
        chosen = sorted((d for d in letters if task is None or d.task == task), key=_dead_at)
        if not chosen:
            continue
        q = ctx.keys.queue(name)
        keys = [*q.ready, q.dead, q.dead_at, q.wake]
        args: list[Arg] = []
        for letter in chosen:
            cid = compact(letter.id)
            keys.append(q.bucket(cid))
            body, priority = replayed(letter.body, renew)
            args += [cid, len(keys), priority, body]
            forget.append(Command(("DEL", ctx.keys.result(letter.id))))
        calls.append(Call(SCRIPTS.replay, keys, args))
    if not calls:
        return 0
    yield Batch(forget)  # first: a replayed task must not look finished
    replies = yield Batch(calls)
    return sum(int(r) for r in replies)


def _dead_at(letter: DeadLetter) -> float:
    return letter.dead_at


def purge_dead_letters(ctx: Context) -> Plan[int]:
    """Delete every dead letter."""
    names = yield from known_queues(ctx)
    if not names:
        return 0
    replies = yield Batch(
        [Call(SCRIPTS.purge_dead, (q.dead, q.dead_at), []) for q in map(ctx.keys.queue, names)]
    )
    return sum(int(r) for r in replies)


# -- queues ------------------------------------------------------------------------------


def notes(ctx: Context, url: str) -> Plan[list[str]]:
    """What ``celeriac status`` says beside the counts, and a worker logs when it starts
    to be true: that the server now evicts keys, or is a read-only replica. After a
    failover the old primary is one, and its counts (copied from the new primary, or
    frozen since the link broke) read like a healthy broker's. Nothing the server may not
    be asked (an ACL without CONFIG or ROLE), nor on Cluster (each node has its own)."""
    if ctx.cluster:
        return []
    said = yield from _evicting(url)
    try:
        role = yield Command(("ROLE",))
    except BrokerError:
        return said  # a refusal (NOPERM): the counts are still worth showing
    if not role or role[0] not in (b"slave", b"replica"):
        return said
    primary = f"{role[1].decode()}:{role[2]}" if len(role) > 2 else "another server"
    link = role[3].decode() if len(role) > 3 else "unknown"
    return [
        *said,
        f"Redis at {url} is a read-only replica of {primary} (replication link: {link}): "
        "these counts are copied from it, and no task can be sent or taken here. Point the "
        "broker URL at the primary, or at an endpoint that follows failovers.",
    ]


def _evicting(url: str) -> Plan[list[str]]:
    """A note when ``maxmemory-policy`` is no longer ``noeviction``: refused at start-up,
    it can be set on a running server (CONFIG SET), which then deletes queued tasks and
    results under memory pressure, in silence (an on-call run lost 675 of 705 tasks)."""
    try:
        reply = yield Command(("CONFIG", "GET", "maxmemory-policy"))
    except BrokerError:
        return []  # a managed service's CONFIG is often refused: said at start-up
    policy = config_value(reply, b"maxmemory-policy").decode() or "noeviction"
    if policy == "noeviction":
        return []
    return [
        f"Redis at {url} now uses maxmemory-policy {policy}: under memory pressure it "
        "deletes keys, queued tasks and results among them, without a word. Set it back: "
        "redis-cli CONFIG SET maxmemory-policy noeviction (and in redis.conf)."
    ]


def stats(ctx: Context, ready_at: ReadyAt | None = None) -> Plan[list[QueueStats]]:
    """Counts for every known queue; with ``ready_at``, since when its longest-waiting
    ready message has been ready (see :meth:`.Broker.stats`)."""
    names = yield from known_queues(ctx)
    if not names:
        return []
    queues = [ctx.keys.queue(name) for name in names]
    keys = [(*q.ready, q.delayed, q.held, q.dead, q.leases) for q in queues]
    if ready_at is None:
        replies = yield Batch([Call(SCRIPTS.stats, k, []) for k in keys])
    else:
        if len(ctx.heads) > HEADS_KEPT:  # queues come and go: forget the old ones' heads
            ctx.heads.clear()
        replies = yield Batch(
            [
                Call(SCRIPTS.stats, k, [b"1", *_known_heads(ctx, q.name)])
                for q, k in zip(queues, keys, strict=True)
            ]
        )
    return [
        queue_stats(
            q.name,
            [int(n) for n in reply[:4]],
            None if ready_at is None else _ready_since(ctx, q.name, reply, ready_at),
        )
        for q, reply in zip(queues, replies, strict=True)
    ]


#: Ready-list heads whose times ``stats`` keeps (:attr:`.Context.heads`), ten per queue.
HEADS_KEPT = 100_000


def _known_heads(ctx: Context, queue: str) -> list[bytes]:
    """ARGV[2..11] of stats-14.lua: the fingerprint of each list's head already read."""
    return [ctx.heads.get((queue, p), (b"", None))[0] for p in range(10)]


def _ready_since(ctx: Context, queue: str, reply: list[Any], ready_at: ReadyAt) -> float | None:
    """The oldest of the times stats-14.lua returns after the counts: a due delayed
    message's due time, a lapsed lease's deadline, and what ``ready_at`` reads from each
    ready list's first entry (or read at an earlier call, when the list's head is still
    that entry)."""
    times = [float(ms) / 1000 for ms in reply[5:7] if float(ms) >= 0]
    for i in range(7, len(reply), 4):
        priority, fingerprint, cid, body = reply[i : i + 4]
        if cid:
            stored = body if is_foreign(cid) else sent_body(expand(cid), body)
            ctx.heads[(queue, int(priority))] = (fingerprint, ready_at(stored))
        at = ctx.heads.get((queue, int(priority)), (b"", None))[1]
        if at is not None:
            times.append(at)
    return min(times, default=None)


def peek(ctx: Context, name: str, limit: int) -> Plan[list[Waiting]]:
    """Messages waiting in a queue, read by peek-13.lua (see :meth:`.Broker.peek`)."""
    q = ctx.keys.queue(name)
    limit = peek_bounds(limit)
    if not limit:
        return []
    keys = (*q.ready, q.delayed, q.held, q.leases)
    reply = yield Call(SCRIPTS.peek, keys, [limit, PEEK_BYTES])
    waiting = []
    for i in range(0, len(reply), 5):
        cid, priority, deliveries, body, due = reply[i : i + 5]
        # Bytes pushed by hand have no id until a fetch gives them one; an entry made for
        # them then keeps them exactly as pushed, never "restored" (as fetch does).
        task_id = expand(cid) if cid else ""
        if cid and not is_foreign(cid):
            body = sent_body(task_id, body)
        at = float(due) / 1000 if float(due) >= 0 else None
        waiting.append(Waiting(task_id, body, int(priority), int(deliveries), at))
    return waiting


def purge(ctx: Context, name: str) -> Plan[int]:
    """Delete the ready and delayed messages of a queue, a slice per call."""
    q = ctx.keys.queue(name)
    total = 0
    while True:
        deleted = check(
            int((yield Call(SCRIPTS.purge, (*q.block, *q.buckets), [PURGE_STEP]))),
            f"purge queue {name}",
        )
        total += deleted
        if deleted < PURGE_STEP:
            return total
