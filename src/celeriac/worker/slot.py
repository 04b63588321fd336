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

Apart from the record, each consumer of the child has a *hand*: eight bytes at the end of
the mapping naming the message it took last to read and run (:meth:`Slot.hand`). Until
the record names it as started, that message is listed as prefetched; if the child dies
meanwhile (decoding it segfaulted, the OOM killer) the hand tells the supervisor to count
the delivery, so a message that kills children is dead-lettered after
``task_max_deliveries`` like any poison message, while those merely prefetched go back
uncounted. One 8-byte store per task: a record write (encoding every held message) per
task would cost a few percent of a no-op task.

Beside the hands, a *beat*: eight bytes a child changes every time it goes round its loop
with nothing in hand (before each idle fetch, and every tenth of a second while it waits
out a broker outage). An idle child's record stays the same; its beat tells the supervisor
it still loops (:mod:`celeriac.worker.stuck`).

And a *blocker*: eight bytes an asyncio child sets, from its watchdog thread, to the hand
mark of the task that blocks its event loop, and empties when the loop turns again
(:meth:`Slot.block`). A task past its hard limit while another blocks the loop is a victim:
the supervisor kills the child for the blocker (:mod:`celeriac.worker.hard_limits`).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time

import msgspec

from celeriac.worker.reading import shown

log = logging.getLogger("celeriac.worker")

# Header: the sequence (8 bytes at 0, written as one aligned store through a memoryview)
# and the payload length (4 bytes at 8, written only while the sequence is odd). Written
# with struct.pack_into, the header was zeroed first and then filled byte by byte: a reader
# could see a new even sequence beside a zero length, and the supervisor died decoding an
# empty record ("Input data was truncated"), or saw a zero sequence and read "holds nothing".
_SEQ = slice(0, 8)
_LENGTH = struct.Struct("<I")
_HEADER_SIZE = 12
_HAND = struct.Struct("<q")  # a consumer's hand: hand_mark() of the message it took last
_SIZE = 4 << 20  # bytes: -c 10,000 with task names of ~250 characters


class Held(msgspec.Struct, array_like=True):
    """A message a child holds: its lease, and when it started (0: not started yet)."""

    id: str
    queue: str
    token: str
    task: str = ""
    started: float = 0.0
    hard_deadline: float = 0.0  # Unix time; 0: no hard limit
    # An async task of an asyncio child: when its soft limit must cancel it on the loop
    # (Unix time; its hard deadline with no soft limit; inf with neither), and any task of
    # an asyncio child in its hooks. 0: not on a loop. A hard limit passed while another
    # task blocked the loop since before then is that task's fault.
    loop_deadline: float = 0.0
    # Its outcome is decided (an asyncio child's task, settling): neither a hard limit nor
    # a terminate kills the child for it any more (its neighbours would run again).
    settling: bool = False

    @property
    def label(self) -> str:
        """``name[id]`` as the supervisor's log lines show it: escaped and cut, as
        :attr:`celeriac.middleware.Job.label` is (the id is the sender's text: a newline
        in it forged a line of the worker's log).

        Example:
            >>> print(Held("a\\n04:00 INFO x", "q", "t", "shop.add").label)
            shop.add[a\\n04:00 INFO x]
        """
        return f"{shown(self.task)}[{shown(self.id)}]"


class SlotView(msgspec.Struct):
    """What the supervisor read."""

    held: list[Held]
    rss: int  # bytes, as the child last measured itself
    done: int = 0  # tasks this child finished
    growth: dict[str, list[int]] | None = None  # task name -> [runs, RSS growth in bytes]
    written: bool = True  # False: its child has not written a record yet (see stuck.py)
    beats: int = 0  # changes while the child goes round its loop idle (see stuck.py)


class _Payload(msgspec.Struct, array_like=True):
    held: list[Held]
    rss: int = 0
    done: int = 0
    growth: dict[str, list[int]] = msgspec.field(default_factory=dict)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Payload).decode


def hand_mark(task_id: str, token: str) -> int:
    """What a hand holds for the message ``task_id`` under the lease ``token``.

    ``hash`` of the two strings: children are forked, never spawned, so they share their
    supervisor's hash seed and the supervisor computes the same number from a record. The
    id and the token together: a Redis token is unique within its queue only.

    Example:
        >>> hand_mark("t1", "x") == hand_mark("t1", "x") != hand_mark("t1", "y")
        True
    """
    return hash(task_id) ^ hash(token)


class Slot:
    """One child's shared record. Create it in the supervisor before forking the child.

    Example:
        >>> s = Slot()
        >>> s.write([Held(id="t1", queue="default", token="x")], rss=0)
        >>> [h.id for h in s.read().held]
        ['t1']
    """

    def __init__(self, size: int = _SIZE, hands: int = 1) -> None:
        if size < 1024 + hands * _HAND.size:
            raise ValueError(f"a slot of {hands} hand(s) needs more than {size} bytes")
        self._mem = mmap.mmap(-1, size)  # anonymous and shared across fork()
        self._seq_word = memoryview(self._mem)[_SEQ].cast("Q")  # one store, one load
        self._hands = hands  # one per consumer of the child
        self._hands_at = size - hands * _HAND.size
        beat_at = self._hands_at - 8
        self._beat_word = memoryview(self._mem)[beat_at : beat_at + 8].cast("Q")
        self._blocker_word = memoryview(self._mem)[beat_at - 8 : beat_at].cast("q")
        self._blocked_since = memoryview(self._mem)[beat_at - 16 : beat_at - 8].cast("d")
        self._beats = 0
        self._room = beat_at - 16 - _HEADER_SIZE
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
            self._seq_word[0] = self._seq * 2 - 1  # odd: a write is under way
            _LENGTH.pack_into(self._mem, 8, len(data))
            self._mem[_HEADER_SIZE : _HEADER_SIZE + len(data)] = data
            self._seq_word[0] = self._seq * 2

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
                "lower the concurrency (-c), or shorten the task ids (the longest here: %d "
                "characters)",
                os.getpid(),
                len(held),
                keep,
                len(held) - keep,
                max(len(h.id) for h in held),
            )
        return data

    def hand(self, consumer: int, task_id: str, token: str) -> None:
        """Say that ``consumer`` (0 in a process child, its index in a threads child) took
        the message ``task_id`` under the lease ``token`` to read and run (child side).

        Written before the message is decoded, and left as it is afterwards: once the
        record names the task as started that counts, and once it is settled its lease is
        gone (putting it back does nothing). A hand beyond this slot's is not kept.

        Example:
            >>> s = Slot()
            >>> s.hand(0, "t1", "x")
            >>> s.in_hand() == {hand_mark("t1", "x")}
            True
        """
        if consumer < self._hands:
            offset = self._hands_at + consumer * _HAND.size
            _HAND.pack_into(self._mem, offset, hand_mark(task_id, token))

    def let_go(self, consumer: int) -> None:
        """Empty ``consumer``'s hand (child side): the message it held was read, and now
        waits for its turn to run (:mod:`celeriac.worker.turns`). Nothing it does can kill
        the child meanwhile, so a death then does not count its delivery.

        Example:
            >>> s = Slot()
            >>> s.hand(0, "t1", "x")
            >>> s.let_go(0)
            >>> s.in_hand() == {0}
            True
        """
        if consumer < self._hands:
            _HAND.pack_into(self._mem, self._hands_at + consumer * _HAND.size, 0)

    def beat(self) -> None:
        """Say that the child still goes round its loop (child side): one 8-byte store.

        Consumers of a threads child beat side by side; one that loses an increment to
        another still changed the word, which is all the supervisor looks at.

        Example:
            >>> s = Slot()
            >>> s.beat()
            >>> s.read().beats
            1
        """
        self._beats += 1
        self._beat_word[0] = self._beats

    def block(self, mark: int, since: float = 0.0) -> None:
        """Say that the task of hand mark ``mark`` (:func:`hand_mark`) blocks the child's
        event loop since ``since`` (Unix time), or 0 that none does (child side, from any
        thread). The time is stored first: a reader that sees the mark sees its time.

        Example:
            >>> s = Slot()
            >>> s.block(hand_mark("t1", "x"), since=100.0)
            >>> s.blocker() == (hand_mark("t1", "x"), 100.0)
            True
        """
        if mark:
            self._blocked_since[0] = since
        self._blocker_word[0] = mark

    def blocker(self) -> tuple[int, float]:
        """The hand mark of the task that blocks the child's event loop (0 for none), and
        since when (supervisor side)."""
        mark = int(self._blocker_word[0])
        return mark, float(self._blocked_since[0]) if mark else 0.0

    def in_hand(self) -> set[int]:
        """The hand marks (:func:`hand_mark`) of every consumer's hand (supervisor side)."""
        return {
            _HAND.unpack_from(self._mem, self._hands_at + i * _HAND.size)[0]
            for i in range(self._hands)
        }

    def read(self) -> SlotView:
        """The child's last complete record (supervisor side)."""
        for _ in range(1000):
            seq = self._seq_word[0]
            if seq % 2 == 0:
                (length,) = _LENGTH.unpack_from(self._mem, 8)
                data = bytes(self._mem[_HEADER_SIZE : _HEADER_SIZE + min(length, self._room)])
                if self._seq_word[0] == seq:
                    beats = self._beat_word[0]
                    if seq == 0:
                        return SlotView([], 0, written=False, beats=beats)
                    try:
                        p = _decode(data)
                    except msgspec.DecodeError:
                        # Torn all the same (a CPU that reorders stores): read it again.
                        continue
                    return SlotView(p.held, p.rss, p.done, p.growth, beats=beats)
            time.sleep(0.0001)
        # A child that died mid-write; its leases will expire.
        return SlotView([], 0, beats=self._beat_word[0])

    def clear(self) -> None:
        """Forget everything (before a fresh child takes this slot)."""
        self._seq = self._beats = 0
        self._seq_word[0] = self._beat_word[0] = self._blocker_word[0] = 0
        self._blocked_since[0] = 0.0
        _LENGTH.pack_into(self._mem, 8, 0)
        self._mem[self._hands_at :] = bytes(self._hands * _HAND.size)
