"""Brokers: one module per broker behind the contract in :mod:`celeriac.brokers.base`.

``broker_from_url`` picks one by URL scheme: ``memory://``, ``sqlite:///path.db``,
``redis://host:port/db`` (also ``rediss://`` and ``unix://``).
"""

from __future__ import annotations

import os
import re

from celeriac.brokers.base import Broker
from celeriac.errors import CeleriacError, ConfigurationError

#: The URL schemes the Redis broker takes.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
SCHEMES = ("memory://", "sqlite:///", *REDIS_SCHEMES)


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
    if url.startswith(REDIS_SCHEMES):
        try:
            from celeriac.brokers.redis import RedisBroker
        except ImportError as exc:
            raise ConfigurationError(f"the Redis broker is not available here: {exc}") from exc
        broker: Broker = RedisBroker(url)
        return broker
    if not url.strip():
        raise ConfigurationError(
            f"the broker URL is empty ({url!r}): an unset variable in Celeriac(broker=...), "
            "or CELERIAC_BROKER_URL set to nothing? Use one of: memory://, "
            "sqlite:///celeriac.db, redis://localhost:6379/0"
        )
    scheme = url.partition("://")[0].lower()
    raise ConfigurationError(
        f"unknown broker URL {redacted(url)!r}. {_NOT_HERE.get(scheme, '')}Use one of: "
        "memory://, sqlite:///celeriac.db, redis://localhost:6379/0"
    )


_SENTINEL = (
    "Redis Sentinel is not supported: give the URL of the current master, or of an "
    "address that follows it (a DNS name or a proxy). "
)

#: Schemes people bring from other task queues, and what to do instead.
_NOT_HERE = {
    "amqp": "celeriac does not speak AMQP (RabbitMQ): run Redis, or SQLite on one host. ",
    "pyamqp": "celeriac does not speak AMQP (RabbitMQ): run Redis, or SQLite on one host. ",
    "sqs": "The SQS broker is not built yet. ",
    "sentinel": _SENTINEL,
    "redis+sentinel": _SENTINEL,
}


def redacted(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: the form messages and logs show.

    Hidden: the password before the host (a user name alone too: it is more often a
    password written without its colon than a user without one), and the value of every
    query option whose name holds "password" (redis-py also reads ``?password=`` and
    ``?ssl_password=``). A password that was not percent-encoded may hold ``/``, ``?`` or
    ``#`` (a base64 token often holds ``/``): all of it up to the host's ``@`` is hidden,
    not just what a URL parser takes for the password.

    Example:
        >>> redacted("redis://alice:s3cret@db:6379/0")
        'redis://alice:***@db:6379/0'
        >>> redacted("rediss://db:6380/0?ssl_password=s3cret&password=s3cret")
        'rediss://db:6380/0?ssl_password=***&password=***'
        >>> redacted("redis://:ab/c+d=@db:6379/0")
        'redis://:***@db:6379/0'
        >>> redacted("redis://s3cret@db:6379/0"), redacted("sqlite:///var/a@b.db")
        ('redis://***@db:6379/0', 'sqlite:///var/a@b.db')
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The host follows the last "@" before the query, or, when a "?" comes before any "@"
    # or "/", the last "@" at all: that "?" is in an unencoded password.
    head = rest.split("?", 1)[0]
    at = head.rfind("@") if "@" in head or "/" in head else rest.rfind("@")
    if at > 0 and not rest.startswith("/"):  # "sqlite:///a@b.db" has no user part
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
        elif "/" not in user:  # redis://PASSWORD@host, a common slip: redis-py takes it
            rest = f"***{rest[at:]}"  # for a user name, so the refusal would show it
    return f"{scheme}://{_SECRET_OPTION.sub(_HIDDEN, rest)}"


def sqlite_path(url: str) -> str | None:
    """The path a ``sqlite://`` URL names, as written (relative or absolute); None for
    another scheme, or a URL the broker will refuse, saying what is wrong, when it opens.

    Example:
        >>> sqlite_path("sqlite:///celeriac.db"), sqlite_path("redis://db:6379/0")
        ('celeriac.db', None)
    """
    if not url.startswith("sqlite:"):
        return None
    from celeriac.brokers.sqlite_file import path_from_url

    try:
        return path_from_url(url)[0]
    except CeleriacError:
        return None


def shown(url: str) -> str:
    """``url`` as a process's start-up line shows it: redacted, and for a relative SQLite
    path the file it opens, which depends on the folder the process was started in.

    Example:
        >>> shown("redis://alice:s3cret@db:6379/0")
        'redis://alice:***@db:6379/0'
        >>> import os
        >>> shown("sqlite:///celeriac.db") == (
        ...     f"sqlite:///celeriac.db, the file {os.path.abspath('celeriac.db')}: producers "
        ...     "must open the same file, run from this folder or by its absolute path")
        True
    """
    text = redacted(url)
    path = sqlite_path(url)
    if path is None or os.path.isabs(path):
        return text
    path = os.path.abspath(path)
    return (
        f"{text}, the file {path}: producers must open the same file, run from this folder "
        "or by its absolute path"
    )


#: A query option that carries a secret: ``password=``, ``ssl_password=``, ...
_SECRET_OPTION = re.compile(r"(?<=[?&])([^=&#]*password[^=&#]*)=[^&#]*", re.IGNORECASE)
_HIDDEN = r"\1=***"
