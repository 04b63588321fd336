"""Key names, compact ids and the id index: the data layout of the Redis broker.

Every key of a queue carries the queue's hash tag, ``<prefix>:{<queue>}:...``, so one
script can touch all of them in Redis Cluster. A task's result and its wake-up channel are
named by task id (``<prefix>:r:{<id>}``) because readers know only the id.

Ids are stored compactly: a canonical UUID string (36 bytes) becomes 17 bytes (a zero byte
and the 16 raw bytes); any other id is stored as its UTF-8 bytes (prefixed with ``\\x01``
when it would be mistaken for a compact UUID, or when it is empty: entry.lua reads an id
length of 0 as bytes pushed by hand). :func:`expand` reverses :func:`compact`.

Bytes pushed by hand into a ready list (not a celeriac entry) are held under a *foreign*
id that fetch makes up: ``\\x00raw-<n>`` (includes/queue.lua: foreign_id). Led by a zero
byte and never 17 bytes long, it is the compact form of no id a client may send:
:func:`expand` gives the id ``"\\x00raw-<n>"``, which :func:`compact` maps back to those
bytes (the worker settles by ``compact(lease.id)``), and send refuses that id.

Versions sharing one Redis. Earlier versions spelled a foreign id ``raw-<n>``, an id any
client may use, and stored an empty id as no bytes (so fetch took it for bytes pushed by
hand). An entry an older worker holds under ``raw-<n>`` needs nothing: once held it is an
ordinary entry with that id (when its lease runs out it is queued again as one), which
every version settles and dead-letters as ``raw-<n>``; only a client's own task
``raw-<n>`` could still meet it, as before. The other way round, an older worker cannot
settle an entry held under ``\\x00raw-<n>`` or ``\\x01`` (the empty id): it escapes the
zero byte, and compacts ``""`` to no bytes. Its complete or dead-letter then reports a lost
lease and changes nothing; the entry comes back when the lease runs out, until a current
worker takes it: nothing is lost or run twice while an upgrade lasts. The one casualty is
a task whose id is exactly ``"\\x00raw-<n>"``, queued by an older producer: it now names
a foreign entry, so no worker can settle it.
"""

from __future__ import annotations

import re
from functools import cached_property

import msgspec

from celeriac.errors import ConfigurationError

PRIORITIES = 10  # 0..9, one ready list each
INDEX_BUCKETS = 1021  # id index hashes per queue (a prime: ids spread evenly); part of the layout

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def compact(task_id: str) -> bytes:
    """The bytes an id is stored as (17 bytes for a canonical lowercase UUID).

    Example:
        >>> len(compact("9b2c7a4e-0d1f-4c3b-8a5e-6f7a8b9c0d1e"))
        17
        >>> compact("order-42")
        b'order-42'
    """
    if len(task_id) == 36 and _UUID.fullmatch(task_id):
        return b"\x00" + bytes.fromhex(task_id.replace("-", ""))
    raw = task_id.encode("utf-8", "surrogateescape")
    if raw[:1] in (b"\x00", b"\x01", b""):
        return raw if is_foreign(raw) else b"\x01" + raw
    return raw


def expand(cid: bytes) -> str:
    """The task id that :func:`compact` turned into ``cid``."""
    if len(cid) == 17 and cid[0] == 0:
        # str(uuid.UUID(bytes=...)) spelled out: a seventh of its time, paid per message fetched.
        h = cid[1:].hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if cid[:1] == b"\x01":
        cid = cid[1:]
    return cid.decode("utf-8", "surrogateescape")


def is_foreign(cid: bytes) -> bool:
    """Whether ``cid`` is the id fetch made up for bytes pushed by hand (see above).

    Example:
        >>> is_foreign(b"\\x00raw-3"), is_foreign(b"raw-3"), is_foreign(compact("\\x00raw-3"))
        (True, False, True)
    """
    return cid[:5] == b"\x00raw-" and len(cid) != 17 and cid[5:].isdigit()


def index_bucket(cid: bytes) -> int:
    """Which of a queue's index hashes holds ``cid``: the id's bytes as one big-endian
    number, modulo the bucket count (index.lua computes the same, byte by byte)."""
    return int.from_bytes(cid, "big") % INDEX_BUCKETS


class QueueKeys(msgspec.Struct, frozen=True, dict=True):
    """The keys of one queue, all under its hash tag."""

    name: str
    tag: bytes  # b"<prefix>:{<queue>}"

    @cached_property
    def ready(self) -> tuple[bytes, ...]:
        """Ready lists, index = priority."""
        return tuple(self.tag + b":ready:%d" % p for p in range(PRIORITIES))

    @cached_property
    def block(self) -> tuple[bytes, ...]:
        """The 15-key queue block every moving script takes (see includes/queue.lua)."""
        return (*self.ready, self.delayed, self.held, self.leases, self.seq, self.wake)

    @cached_property
    def buckets(self) -> tuple[bytes, ...]:
        """Every index bucket, in bucket order."""
        return tuple(self.tag + b":ids:%d" % b for b in range(INDEX_BUCKETS))

    @property
    def delayed(self) -> bytes:
        """Sorted set of entries waiting for their due time."""
        return self.tag + b":delayed"

    @property
    def held(self) -> bytes:
        """Hash of messages under a lease."""
        return self.tag + b":held"

    @property
    def leases(self) -> bytes:
        """Sorted set of lease deadlines."""
        return self.tag + b":leases"

    @property
    def seq(self) -> bytes:
        """Counter for fencing tokens."""
        return self.tag + b":seq"

    @property
    def wake(self) -> bytes:
        """List that blocked fetchers wait on."""
        return self.tag + b":wake"

    @property
    def outbox(self) -> bytes:
        """Committed results not yet copied to their result keys (Cluster)."""
        return self.tag + b":outbox"

    @property
    def dead(self) -> bytes:
        """Hash of dead-letter records."""
        return self.tag + b":dead"

    @property
    def dead_at(self) -> bytes:
        """Sorted set ordering dead letters by time."""
        return self.tag + b":dead_at"

    def bucket(self, cid: bytes) -> bytes:
        """The index bucket key of ``cid``."""
        return self.buckets[index_bucket(cid)]


class Keyspace:
    """Every key name the broker uses, under one prefix (``?prefix=`` in the URL)."""

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"Redis key prefix {prefix!r} must be non-empty and contain no braces "
                "(braces would change the Cluster hash tag)"
            )
        self.prefix = prefix.encode()
        self._queues: dict[str, QueueKeys] = {}
        self.queues = self.prefix + b":queues"
        # Result waiters (standalone Redis): a settling script publishes a wake-up only
        # while this sorted set is not empty (member: a waiter, score: its expiry in ms).
        self.waiting = self.prefix + b":waiting"
        self.workers_alive = self.prefix + b":{workers}:alive"
        self.workers_info = self.prefix + b":{workers}:info"

    def queue(self, name: str) -> QueueKeys:
        """The keys of queue ``name``.

        Raises:
            ConfigurationError: the name is empty or contains a brace.
        """
        keys = self._queues.get(name)
        if keys is None:
            if not name or "{" in name or "}" in name:
                raise ConfigurationError(
                    f"queue name {name!r} cannot be used with Redis: it must be non-empty "
                    "and contain no braces (they would break the Cluster hash tag)"
                )
            keys = self._queues[name] = QueueKeys(name, b"%s:{%s}" % (self.prefix, name.encode()))
        return keys

    def result(self, task_id: str) -> bytes:
        """The result key of a task: ``F`` + bytes when final, ``P`` + bytes otherwise."""
        return b"%s:r:{%s}" % (self.prefix, task_id.encode("utf-8", "surrogateescape"))

    def store(self, kind: bytes, key: str) -> bytes:
        """A key of the small store: ``kind`` is kv, join, rate, admit or stream."""
        return b"%s:%s:%s" % (self.prefix, kind, key.encode("utf-8", "surrogateescape"))

    def channel(self, task_id: str) -> bytes:
        """The pub/sub channel on which a task's final result is announced."""
        return b"%s:done:%s" % (self.prefix, task_id.encode("utf-8", "surrogateescape"))
