"""This process's id, read without a system call.

``os.getpid()`` is a system call on every use (glibc stopped caching it), and the hot
paths ask per task whether an object was made before a fork (the broker, a connection
pool, a /proc descriptor): five calls per task cost a no-op task ~3% of its CPU. The id
is kept here and refreshed in every child right after ``os.fork()``.

Example:
    >>> import os
    >>> from celeriac import pid
    >>> pid.current() == os.getpid()
    True
"""

from __future__ import annotations

import os

_pid = os.getpid()


def current() -> int:
    """This process's id, as ``os.getpid()`` returns it (kept up to date across forks)."""
    return _pid


def _refresh() -> None:
    global _pid  # noqa: PLW0603 - one id per process, by design
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh)
