"""Where celeriac still runs on redis-py: Redis Cluster (redis-py routes each command by
slot), the async face (redis.asyncio), and a standalone Redis whose URL has an option that
:mod:`.dial` does not take. Nothing else imports redis-py, and this module is imported
only when one of those is used (docs/architecture.md, "A process loads what it uses").

redis-py's exceptions are adopted into :mod:`.errors` (:func:`adopt`) before
:func:`.connection.translate` words them, so the rest of the broker reads one vocabulary.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url
from redis.exceptions import ClusterDownError, ClusterError, RedisClusterException
from redis.retry import Retry

import redis
from celeriac._version import __version__
from celeriac.brokers.redis import errors

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

#: What redis-py raises when Redis fails: a Cluster that cannot be reached at all raises
#: RedisClusterException, which is no RedisError (a worker on Cluster died of it).
DRIVER_ERRORS = (redis.RedisError, RedisClusterException)

#: redis-py's classes and the :mod:`.errors` class each becomes, most specific first.
_ADOPTED: tuple[tuple[type[BaseException], type[errors.RedisError]], ...] = (
    (RedisClusterException, errors.RedisClusterException),
    (ClusterDownError, errors.ClusterDownError),
    (ClusterError, errors.ClusterError),
    (redis.exceptions.NoScriptError, errors.NoScriptError),
    (redis.exceptions.ReadOnlyError, errors.ReadOnlyError),
    (redis.exceptions.NoPermissionError, errors.NoPermissionError),
    (redis.exceptions.OutOfMemoryError, errors.OutOfMemoryError),
    (redis.exceptions.BusyLoadingError, errors.BusyLoadingError),
    (redis.AuthenticationError, errors.AuthenticationError),
    (redis.ConnectionError, errors.ConnectionError),
    (redis.TimeoutError, errors.TimeoutError),
    (redis.ResponseError, errors.ResponseError),
    (redis.exceptions.InvalidResponse, errors.InvalidResponse),
)


def adopt(exc: BaseException) -> errors.RedisError:
    """The :mod:`.errors` exception for a redis-py one: same words, the original as its
    cause (so what it was raised from, a DNS or TLS error, is still found).

    Example:
        >>> adopted = adopt(redis.exceptions.NoScriptError("No matching script"))
        >>> type(adopted).__name__, str(adopted)
        ('NoScriptError', 'No matching script')
    """
    if isinstance(exc, errors.RedisError):
        return exc
    kind = next((ours for theirs, ours in _ADOPTED if isinstance(exc, theirs)), errors.RedisError)
    adopted = kind(*exc.args)
    adopted.__cause__ = exc
    return adopted


def driver_identity() -> dict[str, Any]:
    """The library name and version redis-py's connections give Redis (CLIENT SETINFO):
    ``redis-py(celeriac_v0.1.0)`` in CLIENT LIST.

    Given here, too, so that redis-py does not read its own version from its package
    metadata at every new connection: ~0.2 ms each, and a worker child's first ones
    imported the ``email`` parser to do it.

    Example:
        >>> sorted(driver_identity()) in (["driver_info"], ["lib_name", "lib_version"])
        True
    """
    name = f"redis-py(celeriac_v{__version__})"
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 8: the keywords that 8 deprecates
        return {"lib_name": name, "lib_version": redis.__version__}
    identity = DriverInfo(lib_version=redis.__version__)
    return {"driver_info": identity.add_upstream_driver("celeriac", __version__)}


def _retry(*, timeouts: bool = False, asynchronous: bool = False) -> Retry | AsyncRetry:
    """Two quick retries of a broken connection; a time-out only when ``timeouts``.
    ``asynchronous``: the retry of a redis.asyncio client, whose calls it awaits (given the
    sync one, redis-py 8.2 converts it and warns at every client made).

    A time-out is the server there and not answering (frozen, a paused VM, a partition):
    each retry waited socket_timeout again and sent the command again, so a producer's
    first ``delay()`` to a frozen Redis waited 90 s with the defaults. The wire (wire.py)
    never retries one. ``retry_on_timeout=true`` in the URL still turns it on. Cluster
    keeps it: a timed-out node may have failed over.
    """
    retried: tuple[type[Exception], ...] = (redis.ConnectionError,)
    if timeouts:
        retried += (redis.TimeoutError, TimeoutError)
    kind = AsyncRetry if asynchronous else Retry
    return kind(ExponentialBackoff(cap=0.2, base=0.02), 2, supported_errors=retried)


def _defaults(url: str, socket_timeout: float) -> dict[str, Any]:
    """Client options the URL may override (keepalive only exists over TCP)."""
    found = {"socket_connect_timeout": 5.0, "socket_timeout": socket_timeout}
    found.update(driver_identity())
    if not url.startswith("unix:"):
        found["socket_keepalive"] = True
    return found


class HandshakeBoundSSLConnection(redis.SSLConnection):
    """redis-py's TLS connection, its handshake bounded by the connect timeout (5 s).

    redis-py runs the handshake under the socket timeout (30 s): a ``rediss://`` URL
    pointed at a plain Redis port (the server waits for a newline that never comes) took
    90 s to fail, three tries of 30 s, before any error was shown.
    """

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        sock.settimeout(self.socket_connect_timeout)  # the handshake is part of connecting
        wrapped = super()._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
        wrapped.settimeout(self.socket_timeout)
        return wrapped


def _tls(url: str) -> dict[str, Any]:
    return {"connection_class": HandshakeBoundSSLConnection} if url.startswith("rediss:") else {}


def cluster_client(
    url: str, socket_timeout: float, seeds: tuple[tuple[str, int], ...]
) -> redis.cluster.RedisCluster:
    """A new redis-py Cluster client, starting from the URL's node and ``seeds``.

    Raises:
        RedisClusterException: none of the nodes answers.
    """
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in seeds]  # type: ignore[no-untyped-call]
    return redis.cluster.RedisCluster.from_url(
        url, startup_nodes=nodes, retry=_retry(timeouts=True), **_defaults(url, socket_timeout)
    )


def async_client(
    url: str, socket_timeout: float, cluster: bool, seeds: tuple[tuple[str, int], ...]
) -> AsyncClient:
    """A new redis.asyncio client, bound to the running event loop."""
    defaults = _defaults(url, socket_timeout)
    if cluster:
        nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in seeds]
        return redis.asyncio.cluster.RedisCluster.from_url(
            url, startup_nodes=nodes, retry=_retry(timeouts=True, asynchronous=True), **defaults
        )
    # A blocking pool: past its 100 connections a command waits for a free one. The
    # default pool raised "Too many connections" instead, so ~100 concurrent aget()s
    # or sends in one loop failed (each holds a connection while its reply is due).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=100, timeout=None, retry=_retry(asynchronous=True), **defaults
    )
    return redis.asyncio.Redis.from_pool(pool)


def connection_opener(url: str, socket_timeout: float) -> Callable[[], tuple[Any, Any]]:
    """How the wire opens a connection with redis-py, for a URL with an option that
    :mod:`.dial` does not take: redis-py's own connection, its socket handed over."""
    pool = redis.ConnectionPool.from_url(url, **_defaults(url, socket_timeout), **_tls(url))
    # RESP3, whatever protocol= says: the wire reads replies raw, and the plans read
    # RESP3's (a hash is a map, not a flat list).
    kwargs = {**pool.connection_kwargs, "protocol": 3}

    def open_with_redis_py() -> tuple[Any, Any]:
        conn = pool.connection_class(**kwargs)
        try:
            # One try of the handshake, so that a failed one is one of the wire's
            # attempts. Newer redis-py's connect() retries it inside; older redis-py has
            # no connect_check_health and its connect() does not.
            opened = getattr(conn, "connect_check_health", None)
            if opened is not None:
                opened(check_health=False)
            else:
                conn.connect()
        except DRIVER_ERRORS as exc:
            raise adopt(exc) from exc
        return conn._sock, conn.disconnect

    return open_with_redis_py


def check_values(url: str, cluster: bool, socket_timeout: float) -> str | None:
    """What redis-py cannot use in the URL's options, as it reads them (None: all good):
    a value it cannot parse (``socket_timeout=abc``, ``ssl_cert_reqs=bogus``) or an
    option its connection does not take here (``ssl_ca_certs=`` on ``redis://``)."""
    try:
        if cluster:  # a Cluster client connects as it is made: check values only
            parse_url(url)  # type: ignore[no-untyped-call]
            return None
        pool = redis.ConnectionPool.from_url(url, **_defaults(url, socket_timeout), **_tls(url))
        pool.connection_class(**pool.connection_kwargs)  # built, never connected
        return None
    except TypeError as exc:  # "... got an unexpected keyword argument 'ssl_ca_certs'"
        found = re.search(r"argument '(\w+)'", str(exc))
        option = found.group(1) if found else ""
        if option.startswith("ssl"):
            return f"{option}= applies to TLS only: use a rediss:// URL"
        if option:
            return f"redis-py's connection does not take {option}= from a URL"
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever redis-py raises for a bad value
        return str(exc).rstrip(".") or type(exc).__name__


@functools.cache
def redis_options() -> frozenset[str]:
    """Every keyword redis-py's clients, pools and connections take: the query options a
    broker URL may carry besides celeriac's own (read from redis-py, so any version's)."""
    import inspect

    names = set(URL_QUERY_ARGUMENT_PARSERS)
    classes = (
        redis.Redis,
        redis.cluster.RedisCluster,
        redis.ConnectionPool,
        redis.Connection,
        redis.SSLConnection,
        redis.UnixDomainSocketConnection,
    )
    for cls in classes:
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                names.update(inspect.signature(init).parameters)
    return frozenset(names - {"self", "args", "kwargs"})
