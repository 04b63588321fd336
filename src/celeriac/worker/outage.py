"""An outage of the broker as a worker process lives it: backoff, and few log lines."""

from __future__ import annotations

import time


class Outage:
    """The broker being unreachable: when to try again (doubling up to ``longest``) and when
    to say so again (every 30 s, not at every try: an outage of an hour is a few hundred
    lines, not tens of thousands).

    Example:
        >>> outage = Outage()
        >>> outage.failed(), outage.failed()  # the first failure is said, the next not
        (True, False)
        >>> outage.ended() > 0
        True
    """

    REPEAT = 30.0  # seconds between two lines about one outage

    def __init__(self, first_delay: float = 0.5, longest: float = 5.0) -> None:
        self.since = 0.0  # monotonic time of the first failure; 0: the broker answers
        self.retry_at = 0.0
        self._first = self._delay = first_delay
        self._longest = longest
        self._said_at = 0.0

    def failed(self, began: float | None = None) -> bool:
        """Record a failed try and schedule the next; True when it should be logged.

        ``began``: the monotonic time the failed try began, where the outage begins
        (default: now). A broker that hangs fails a socket timeout after the call began.
        """
        now = time.monotonic()
        first = not self.since
        if first:
            self.since, self._delay = now if began is None else min(began, now), self._first
        self.retry_at = now + self._delay
        self._delay = min(self._delay * 2, self._longest)
        if first or now - self._said_at >= self.REPEAT:
            self._said_at = now
            return True
        return False

    def ended(self) -> float:
        """The broker answered: how long it had not (0.0 when it always had)."""
        lasted = time.monotonic() - self.since if self.since else 0.0
        self.since = self.retry_at = 0.0
        return lasted
