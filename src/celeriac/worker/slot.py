"""The slot: a small shared-memory record through which a child tells its supervisor what it
holds, without any per-task message passing.

The child writes; the supervisor reads. A sequence counter (a seqlock) makes a torn read
detectable: the writer makes it odd while writing and even when done, and the reader
retries when it changed underneath. The reader takes no lock, so a child killed mid-write
can never block its supervisor; writers inside one child (threads) take turns on a lock.

Capacity: a held message takes ~125 bytes (more with a long task name), so the default
4 MiB holds ~30,000. Only the pages written count as memory. A child holding more than
fits publishes the first records (running tasks come first) and logs an error: the rest
are not renewed, so their leases may expire and another worker may run them.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass

import msgspec

log = logging.getLogger("celeriac.worker")

_HEADER = struct.Struct("<QI")  # sequence, payload length
_SIZE = 4 << 20  # bytes: -c 10,000 with task names of ~250 characters


class Held(msgspec.Struct, array_like=True):
    """A message a child holds: its lease, and when it started (0: not started yet)."""

    id: str
    queue: str
    token: str
    task: str = ""
    started: float = 0.0
    hard_deadline: float = 0.0  # Unix time; 0: no hard limit


@dataclass(slots=True)
class SlotView:
    """What the supervisor read."""

    held: list[Held]
    rss: int  # bytes, as the child last measured itself
    done: int = 0  # tasks this child finished
    growth: dict[str, list[int]] | None = None  # task name -> [runs, RSS growth in bytes]


class _Payload(msgspec.Struct, array_like=True):
    held: list[Held]
    rss: int = 0
    done: int = 0
    growth: dict[str, list[int]] = msgspec.field(default_factory=dict)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Payload).decode


class Slot:
    """One child's shared record. Create it in the supervisor before forking the child.

    Example:
        >>> s = Slot()
        >>> s.write([Held(id="t1", queue="default", token="x")], rss=0)
        >>> [h.id for h in s.read().held]
        ['t1']
    """

    def __init__(self, size: int = _SIZE) -> None:
        if size < 1024:
            raise ValueError(f"a slot needs at least 1024 bytes, not {size}")
        self._mem = mmap.mmap(-1, size)  # anonymous and shared across fork()
        self._room = size - _HEADER.size
        self._seq = 0
        self._lock = threading.Lock()  # the child's writers; the supervisor never writes
        self._overflowed = False  # the last write left records out (logged once per spell)

    def write(
        self,
        held: list[Held],
        rss: int,
        done: int = 0,
        growth: dict[str, list[int]] | None = None,
    ) -> None:
        """Publish what the child holds now, and its counters (child side).

        Safe from several threads: each write lands whole. What does not fit is left
        out from the end of ``held`` (so list running tasks first), and logged.

        Example:
            >>> s = Slot(size=4096)
            >>> s.write([Held(id=f"t{i}", queue="q", token="x") for i in range(1000)], rss=0)
            >>> 0 < len(s.read().held) < 1000
            True
        """
        data = _encode(_Payload(held, rss, done, growth or {}))
        if len(data) > self._room:
            data = self._fit(held, rss, done, len(data))
        else:
            self._overflowed = False
        with self._lock:
            self._seq += 1
            _HEADER.pack_into(self._mem, 0, self._seq * 2 - 1, len(data))
            self._mem[_HEADER.size : _HEADER.size + len(data)] = data
            _HEADER.pack_into(self._mem, 0, self._seq * 2, len(data))

    def _fit(self, held: list[Held], rss: int, done: int, size: int) -> bytes:
        """A head of ``held`` that fits (about the longest), without the growth counters."""
        keep, data = len(held), b""
        while size > self._room and keep:
            keep = max(min(keep - 1, keep * self._room // size), 0)  # at least one less
            data = _encode(_Payload(held[:keep], rss, done))
            size = len(data)
        if not self._overflowed:
            self._overflowed = True
            log.error(
                "worker child %d holds %d messages but its slot fits %d: the other %d are "
                "not renewed, so their leases may expire and another worker run them; "
                "lower the concurrency (-c)",
                os.getpid(),
                len(held),
                keep,
                len(held) - keep,
            )
        return data

    def read(self) -> SlotView:
        """The child's last complete record (supervisor side)."""
        for _ in range(1000):
            seq, length = _HEADER.unpack_from(self._mem, 0)
            if seq % 2 == 0:
                data = bytes(self._mem[_HEADER.size : _HEADER.size + length])
                if _HEADER.unpack_from(self._mem, 0)[0] == seq:
                    if seq == 0:
                        return SlotView([], 0)
                    p = _decode(data)
                    return SlotView(p.held, p.rss, p.done, p.growth)
            time.sleep(0.0001)
        return SlotView([], 0)  # a child that died mid-write; its leases will expire

    def clear(self) -> None:
        """Forget everything (before a fresh child takes this slot)."""
        self._seq = 0
        _HEADER.pack_into(self._mem, 0, 0, 0)
