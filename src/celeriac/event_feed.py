"""Reading the broker's task events in order, from a point on: what ``celeriac events -f``
prints and ``celeriac metrics`` counts.

The broker keeps only the newest events (a bounded stream). A reader that falls behind,
or a broker that restarted, can lose events between two reads; the feed says when the
stream no longer holds the last event it returned, so the reader can say so too instead
of skipping them without a word. A stream older than the feed (a SQLite file swapped or
restored) is read on from its newest event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from celeriac.middleware.events import STREAM

if TYPE_CHECKING:
    from celeriac.brokers.base import Broker

#: Events one read returns at most; a full page is followed at once by the next one.
PAGE = 1000


@dataclass
class Page:
    """One read: the events that came after the last one returned, oldest first."""

    events: list[bytes]
    #: The stream no longer held the last event returned before: it was trimmed past it
    #: (a reader thousands of events behind, or a broker restart), so events in between
    #: may be lost. Whether any were, and how many, Redis's sequence numbers cannot tell.
    missed: bool
    #: The read returned as many as it could: more are waiting, read again at once.
    full: bool


class EventFeed:
    """The events of ``broker`` after sequence number ``after`` (0: from the oldest kept;
    None: from the newest the broker holds at the first read that reaches it).

    Example:
        >>> from celeriac import Celeriac
        >>> broker = Celeriac("doc", broker="memory://").broker
        >>> broker.stream_append("events", [b'{"type":"failed"}'], 100)
        >>> feed = EventFeed(broker, after=None)
        >>> feed.read().events  # finds where the stream ends
        []
        >>> broker.stream_append("events", [b'{"type":"succeeded"}'], 100)
        >>> feed.read().events
        [b'{"type":"succeeded"}']
    """

    def __init__(self, broker: Broker, after: int | None = 0) -> None:
        self.broker = broker
        self.after = after

    def read(self) -> Page:
        """The next page of events.

        Raises:
            BrokerConnectionError: the broker cannot be reached; the feed's place is kept,
                so the next read goes on from it.
        """
        if self.after is None:
            # Where the stream ends, found once the broker answers: an exporter started
            # during an outage would otherwise count the thousands of events it holds.
            self.after = self._newest()
            return Page([], missed=False, full=False)
        # From the last event returned, included, to see whether the stream still holds it.
        items = self.broker.stream_read(STREAM, max(self.after - 1, 0), PAGE + 1)
        if not items and self.after:
            # Trimming keeps the newest events, so the last one returned is held until
            # newer ones come: the stream is empty or older than this feed (a SQLite file
            # swapped or restored from a backup, whose numbers start again below ours; a
            # Redis restored from an older snapshot). Past its numbers, the feed read
            # nothing for ever. It goes on from the stream's newest event: from its start,
            # it counted the restored events a second time.
            self.after = self._newest()
            return Page([], missed=True, full=False)
        missed = False
        if items and self.after and items[0][0] == self.after:
            items = items[1:]
        elif items and self.after and items[0][0] != self.after + 1:  # +1: its very next one
            missed = True
        if items:
            self.after = items[-1][0]
        return Page([raw for _, raw in items], missed, len(items) >= PAGE)

    def _newest(self) -> int:
        """The sequence number of the newest event the stream holds (0: none)."""
        items = self.broker.stream_read(STREAM, 0, 1_000_000)
        return items[-1][0] if items else 0
