"""The slot: a small shared-memory record through which a child tells its supervisor what it
holds, without any per-task message passing.

The child writes; the supervisor reads. A sequence counter (a seqlock) makes a torn read
detectable: the writer makes it odd while writing and even when done, and the reader
retries when it changed underneath. No lock, so a child killed mid-write can never block
its supervisor.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

import msgspec

_HEADER = struct.Struct("<QI")  # sequence, payload length
_SIZE = 1 << 20  # enough for ~5,000 held messages


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

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, _SIZE)  # anonymous and shared across fork()
        self._seq = 0

    def write(
        self,
        held: list[Held],
        rss: int,
        done: int = 0,
        growth: dict[str, list[int]] | None = None,
    ) -> None:
        """Publish what the child holds now, and its counters (child side)."""
        data = _encode(_Payload(held, rss, done, growth or {}))
        if len(data) > _SIZE - _HEADER.size:
            data = _encode(_Payload(held[: len(held) // 2], rss, done))  # keep what fits
        self._seq += 1
        _HEADER.pack_into(self._mem, 0, self._seq * 2 - 1, len(data))
        self._mem[_HEADER.size : _HEADER.size + len(data)] = data
        _HEADER.pack_into(self._mem, 0, self._seq * 2, len(data))

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
