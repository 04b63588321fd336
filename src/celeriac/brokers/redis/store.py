"""Plans for the small store: state for policies (revokes, dedupe, joins, limits, beat).

Each key is a single Redis key of its own (``<prefix>:<kind>:<key>``), so every operation
touches one slot and works unchanged in Cluster; reading several kv keys is a pipeline.
Rate limits run on Redis's clock inside a script, so every worker shares one limiter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from celeriac.brokers.redis.ops import Context, ms
from celeriac.brokers.redis.scripts import SCRIPTS
from celeriac.brokers.redis.steps import Arg, Batch, Call, Command, Plan

_SEQ = 1_000_000  # stream ids "<ms>-<n>" become the integer ms * _SEQ + n


def kv_set(ctx: Context, key: str, value: bytes, ttl: float, only_if_absent: bool) -> Plan[bool]:
    """SET with a TTL (NX when only_if_absent); True when written. A script rather than a
    plain SET, so that a full Redis still takes it (see kv_set-1.lua)."""
    args: list[Arg] = [value, ms(ttl), "NX" if only_if_absent else ""]
    written = yield Call(SCRIPTS.kv_set, (ctx.keys.store(b"kv", key),), args)
    return bool(written)


def kv_get(ctx: Context, keys: Sequence[str]) -> Plan[list[bytes | None]]:
    """The values of keys, in one pipeline (keys may live in different Cluster slots)."""
    if not keys:
        return []
    replies = yield Batch([Command(("GET", ctx.keys.store(b"kv", key))) for key in keys])
    return list(replies)


def kv_delete(ctx: Context, key: str) -> Plan[None]:
    """Unset a key."""
    yield Command(("DEL", ctx.keys.store(b"kv", key)))


def kv_delete_if(ctx: Context, key: str, value: bytes) -> Plan[bool]:
    """Unset a key only while it holds ``value`` (one script: no read-then-delete race)."""
    deleted = yield Call(SCRIPTS.kv_delete_if, (ctx.keys.store(b"kv", key),), [value])
    return bool(deleted)


def join_add(ctx: Context, key: str, member: str, value: bytes, ttl: float) -> Plan[int]:
    """Add a member once; the number of distinct members."""
    count = yield Call(SCRIPTS.join_add, (ctx.keys.store(b"join", key),), [member, value, ms(ttl)])
    return int(count)


def join_values(ctx: Context, key: str) -> Plan[dict[str, bytes]]:
    """Every member of a join and its value."""
    found = yield Command(("HGETALL", ctx.keys.store(b"join", key)))
    return {member.decode(): value for member, value in dict(found).items()}


def join_delete(ctx: Context, key: str) -> Plan[None]:
    """Drop a join, members and count (one hash)."""
    yield Command(("DEL", ctx.keys.store(b"join", key)))


def rate_reserve(
    ctx: Context, key: str, per_second: float, burst: int, max_wait: float
) -> Plan[float]:
    """Reserve the next GCRA slot unless it is more than ``max_wait`` ahead; seconds
    until it. No third argument means no limit (see rate_reserve-1.lua)."""
    interval_us = max(round(1_000_000 / per_second), 1)
    args: list[int] = [interval_us, max(burst, 1)]
    if max_wait < math.inf:
        # Rounded down: a slot a fraction of a microsecond inside max_wait is not taken.
        args.append(math.floor(max(max_wait, -1.0) * 1_000_000))
    wait_us = yield Call(SCRIPTS.rate_reserve, (ctx.keys.store(b"rate", key),), args)
    return int(wait_us) / 1_000_000


def rate_admit(ctx: Context, key: str, limit: int, period: float) -> Plan[float]:
    """Admit a start if the sliding window has room; else seconds until it will."""
    wait_us = yield Call(
        SCRIPTS.rate_admit,
        (ctx.keys.store(b"admit", key),),
        [limit, max(round(period * 1_000_000), 1)],
    )
    return int(wait_us) / 1_000_000


def stream_append(ctx: Context, key: str, items: Sequence[bytes], maxlen: int) -> Plan[None]:
    """XADD each item, trimming to exactly ``maxlen`` (ids: Redis time, always growing),
    in one script call (see stream_append-1.lua)."""
    if items:
        stream = ctx.keys.store(b"stream", key)
        yield Call(SCRIPTS.stream_append, (stream,), [max(maxlen, 0), *items])


def stream_read(ctx: Context, key: str, after: int, limit: int) -> Plan[list[tuple[int, bytes]]]:
    """Items with a sequence number above ``after``, oldest first."""
    start = f"({after // _SEQ}-{after % _SEQ}"
    rows = yield Command(("XRANGE", ctx.keys.store(b"stream", key), start, "+", "COUNT", limit))
    out: list[tuple[int, bytes]] = []
    for stream_id, fields in rows:
        millis, _, n = stream_id.partition(b"-")
        out.append((int(millis) * _SEQ + int(n), dict(fields)[b"i"]))
    return out
