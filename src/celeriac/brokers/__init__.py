"""Brokers: one module per broker behind the contract in :mod:`celeriac.brokers.base`.

``broker_from_url`` picks one by URL scheme: ``memory://``, ``sqlite:///path.db``,
``redis://host:port/db`` (also ``rediss://`` and ``unix://``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from celeriac.brokers.base import Broker
from celeriac.errors import ConfigurationError

SCHEMES = ("memory://", "sqlite:///", "redis://", "rediss://", "unix://")


def broker_from_url(url: str) -> Broker:
    """Create the broker a URL names.

    Example:
        >>> broker_from_url("memory://").in_process_only
        True

    Raises:
        ConfigurationError: the scheme is not one celeriac knows.
    """
    if url.startswith("memory://"):
        from celeriac.brokers.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith("sqlite://"):
        from celeriac.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from celeriac.brokers.redis import RedisBroker
        except ImportError as exc:
            raise ConfigurationError(f"the Redis broker is not available here: {exc}") from exc
        broker: Broker = RedisBroker(url)
        return broker
    raise ConfigurationError(
        f"unknown broker URL {redacted(url)!r}. Use one of: memory://, sqlite:///celeriac.db, "
        "redis://localhost:6379/0"
    )


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``: the form messages and logs show.

    Example:
        >>> redacted("redis://alice:s3cret@db:6379/0")
        'redis://alice:***@db:6379/0'
    """
    password = urlsplit(url).password
    return url if password is None else url.replace(f":{password}@", ":***@", 1)
