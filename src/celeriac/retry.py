"""RetryPolicy: exponential backoff with full jitter, capped.

Full jitter (a uniform draw between 0 and the exponential cap) spreads the retries of many
tasks that failed together, so they do not hammer a recovering service in waves.
"""

from __future__ import annotations

import random

import msgspec

#: Retries a task gets when it sets no ``max_retries`` (Celery's default too).
DEFAULT_MAX_RETRIES = 3


class RetryPolicy(msgspec.Struct, frozen=True):
    """How long to wait before retry number ``attempt`` (0 for the first retry).

    Example:
        >>> policy = RetryPolicy(base=2, cap=600, jitter=False)
        >>> [policy.delay(n) for n in range(4)]
        [2.0, 4.0, 8.0, 16.0]
        >>> 0 <= RetryPolicy(base=2, cap=600).delay(3) <= 16
        True
    """

    base: float = 1.0  # seconds before the first retry (the cap of its draw, with jitter)
    cap: float = 600.0  # no wait is longer than this
    jitter: bool = True

    def ceiling(self, attempt: int) -> float:
        """The longest wait for this attempt: min(cap, base * 2**attempt)."""
        return float(min(self.cap, self.base * 2 ** min(attempt, 64)))

    def delay(self, attempt: int) -> float:
        """A wait for this attempt: uniform in [0, ceiling] with jitter, else the ceiling."""
        ceiling = self.ceiling(attempt)
        return random.uniform(0, ceiling) if self.jitter else ceiling
