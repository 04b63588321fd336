"""Broker URLs, and the translation of driver errors into celeriac's.

URL forms::

    redis://[user:password@]host:6379/0       plain TCP (ACL user optional)
    rediss://[user:password@]host:6380/0      TLS (ssl_* query options, redis-py's names)
    unix:///run/redis/redis.sock?db=0         a Unix socket
    redis://host:7000?cluster=1               Redis Cluster (any node; the others are found)
    redis://h1:7000?cluster=1&nodes=h2:7000,h3:7000   ... starting from whichever answers

Three query options belong to celeriac and are removed before a client sees the URL:
``prefix`` (default ``celeriac``) puts every key under another namespace, as tests do,
``cluster=1`` selects Redis Cluster, and ``nodes=`` names more Cluster nodes to start
from: a client reads the slot map from the first that answers, so a process can start
while the URL's own node is down. Every other option (``socket_timeout=``,
``ssl_cert_reqs=``, ...) is redis-py's, with redis-py's meaning, and is checked when the
URL is parsed: by :mod:`.dial`, which opens the sync face's connections, for the options
it takes, else by building (not connecting) the connection redis-py would make from it
(redis-py then opens them: see wire.opener).
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

import msgspec

from celeriac.brokers import redacted
from celeriac.brokers.redis import dial, errors
from celeriac.brokers.redis.scripts import Denial, denied_in_script
from celeriac.celery_names import URL_OPTIONS
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError

if TYPE_CHECKING:
    import redis.cluster

    from celeriac.brokers.redis.redis_py import AsyncClient

_TRUE = {"1", "true", "yes", "on"}

#: Redis's refusal when full, as a reply (OOM ...) and inside a script (ERR ...). Not
#: the bare word "maxmemory": an error that echoes its arguments has it too (a renamed
#: CONFIG: "unknown command 'CONFIG', with args beginning with: 'GET' 'maxmemory-policy'").
_OOM = "used memory > 'maxmemory'"
#: Redis's reply to a connection past ``maxclients``, before it closes it (a
#: ConnectionError with these words).
_MAXCLIENTS = "max number of clients reached"

#: Seconds a client waits for a reply unless the URL says (socket_timeout=).
SOCKET_TIMEOUT = 30.0


class RedisURL(msgspec.Struct, frozen=True):
    """A parsed broker URL: what redis-py gets, and what celeriac keeps for itself."""

    redis_url: str  # the URL without celeriac's options
    safe: str  # the URL with the password hidden, for messages and logs
    prefix: str = "celeriac"
    cluster: bool = False
    seeds: tuple[tuple[str, int], ...] = ()  # nodes= : more Cluster nodes to start from

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """Split a broker URL into redis-py's part and celeriac's options.

        Example:
            >>> u = RedisURL.parse("redis://:s3cret@db:6379/2?prefix=t1")
            >>> u.safe, u.prefix, u.cluster
            ('redis://:***@db:6379/2?prefix=t1', 't1', False)

        Raises:
            ConfigurationError: not a redis://, rediss:// or unix:// URL, a database that is
                not a number, an option neither celeriac nor redis-py knows or a value
                redis-py cannot use, or Cluster over a Unix socket.
        """
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ConfigurationError(
                f"not a Redis URL: {redacted(url)!r}. Use redis://host:6379/0, "
                "rediss://host:6380/0 or unix:///path/to/redis.sock?db=0"
            )
        try:
            parts.port  # noqa: B018 - parsing the port is the check: "host:abc" raises
        except ValueError:
            # A password with "/", "?" or "#" in it (a base64 token) ends the host part
            # early, so the parser reads part of the password as the port.
            unencoded = "@" in url.partition("://")[2] and "@" not in parts.netloc
            hint = (
                " The part before '@' holds '/', '?' or '#': percent-encode the password "
                "(urllib.parse.quote(password, safe=''); '/' is %2F)."
                if unencoded
                else ""
            )
            raise ConfigurationError(
                f"the port in the broker URL {redacted(url)!r} is not a number from 0 to "
                f"65535. Use redis://host:6379/0.{hint}"
            ) from None
        ours = {"prefix": "celeriac", "cluster": "0"}
        rest: list[tuple[str, str]] = []
        nodes: list[str] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in ours:
                ours[key] = value
            elif key == "nodes":
                nodes += value.split(",")
            else:
                rest.append((key, value))
        _check_database(url, parts.scheme, parts.path, rest)
        unknown = _unknown_options({key for key, _ in rest})
        celerys = [f"{k}: it is Celery's; {URL_OPTIONS[k]}" for k in unknown if k in URL_OPTIONS]
        if celerys:
            raise ConfigurationError(
                f"unknown option in the broker URL {redacted(url)}: {'; '.join(celerys)}."
            )
        if unknown:
            raise ConfigurationError(
                f"unknown option {', '.join(map(repr, unknown))} in the broker URL "
                f"{redacted(url)}: celeriac takes prefix=, cluster=1 and nodes=, redis-py its "
                "connection options (socket_timeout=, ssl_cert_reqs=, client_name=, ...). "
                "Check the spelling."
            )
        cluster = ours["cluster"].lower() in _TRUE
        if cluster and parts.scheme == "unix":
            raise ConfigurationError(
                f"Redis Cluster cannot be reached over a Unix socket: {redacted(url)!r}"
            )
        if nodes and not cluster:
            raise ConfigurationError(
                f"nodes= in the broker URL {redacted(url)} lists Redis Cluster nodes to start "
                "from: add cluster=1, or remove nodes= for a single Redis"
            )
        base = url.split("?", 1)[0]  # string surgery: urlunsplit would mangle unix:///path
        parsed = cls(
            redis_url=f"{base}?{urlencode(rest)}" if rest else base,
            safe=redacted(url),
            prefix=ours["prefix"],
            cluster=cluster,
            seeds=tuple(_seed(node, url) for node in nodes),
        )
        parsed._check_values()
        return parsed

    def _check_values(self) -> None:
        """Refuse an option value that cannot be used, as the client that will use it
        reads it: :mod:`.dial` for the options it takes (a plain URL loads no redis-py),
        else redis-py (``socket_timeout=abc``, ``ssl_cert_reqs=bogus``, ``ssl_ca_certs=``
        on a plain ``redis://``). Each was found only at the first send: a bare ValueError
        or TypeError, or a RedisError that read as the server refusing a command."""
        problem = _unusable_value(urlsplit(self.redis_url))
        try:
            if problem is None and dial.Endpoint.from_url(self.redis_url) is not None:
                return
        except ValueError as exc:
            problem = str(exc).rstrip(".")
        if problem is None:
            from celeriac.brokers.redis import redis_py

            problem = redis_py.check_values(self.redis_url, self.cluster, self.socket_timeout)
            if problem is None:
                return
        raise ConfigurationError(
            f"the broker URL {self.safe} has an option celeriac cannot use: {problem}. Fix "
            "it in the URL's query string."
        )

    @property
    def socket_timeout(self) -> float:
        """Seconds a client waits for a reply: the URL's ``socket_timeout=``, else ours.

        Example:
            >>> RedisURL.parse("redis://db:6379/0?socket_timeout=2").socket_timeout
            2.0
            >>> RedisURL.parse("redis://db:6379/0").socket_timeout
            30.0
        """
        return _socket_timeout(self.redis_url)

    def cluster_client(self) -> redis.cluster.RedisCluster:
        """A new redis-py Cluster client (redis-py reads the slot map at once).

        Raises:
            BrokerConnectionError: none of the Cluster's nodes answers.
        """
        from celeriac.brokers.redis import redis_py

        try:
            return redis_py.cluster_client(self.redis_url, self.socket_timeout, self.seeds)
        except redis_py.DRIVER_ERRORS as exc:
            raise translate(exc, "connect", self.safe) from exc

    @property
    def tls(self) -> bool:
        """True for ``rediss://``."""
        return self.redis_url.startswith("rediss:")

    def async_client(self) -> AsyncClient:
        """A new redis.asyncio client, bound to the running event loop."""
        from celeriac.brokers.redis import redis_py

        return redis_py.async_client(self.redis_url, self.socket_timeout, self.cluster, self.seeds)


def _seed(node: str, url: str) -> tuple[str, int]:
    """One ``host:port`` of ``nodes=`` (``[::1]:7000`` for IPv6), as a Cluster seed.

    Example:
        >>> _seed("10.0.0.2:7000", "redis://h:7000?cluster=1&nodes=10.0.0.2:7000")
        ('10.0.0.2', 7000)
    """
    host, _, port = node.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"nodes= in the broker URL {redacted(url)} has {node!r}, not host:port: write "
            "nodes=host2:7000,host3:7000 (the other Cluster nodes to start from)"
        )
    return host, int(port)


def _check_database(url: str, scheme: str, path: str, query: list[tuple[str, str]]) -> None:
    """Refuse a database that is not a number: redis-py would quietly use database 0."""
    numbers = [value for key, value in query if key == "db"]
    if scheme != "unix" and path not in {"", "/"}:
        numbers.append(path[1:])
    for number in numbers:
        if not number.isdigit():
            raise ConfigurationError(
                f"the database in the broker URL {redacted(url)} is {number!r}, not a number: "
                "write redis://host:6379/0 (or ?db=0 after a Unix socket path)."
            )


def _unknown_options(names: set[str]) -> list[str]:
    """The query options neither :mod:`.dial` nor redis-py takes, sorted. redis-py is
    imported (its signatures read, ~4 ms more) only for a name that is not dial's."""
    others = names - dial.OPTIONS if names else names
    if not others:
        return []
    from celeriac.brokers.redis.redis_py import redis_options

    return sorted(others - redis_options())


#: Options naming a file (or, ssl_ca_path, a folder) that must be there to connect.
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _unusable_value(url: SplitResult) -> str | None:
    """What no client can use, whichever reads it: a timeout that is not a number of
    seconds over 0 (0 made the socket non-blocking: "did not answer" of a healthy
    server; -1, nan and inf raised a bare ValueError or OverflowError), and a TLS file
    that is not there (it read as "Redis did not answer", and workers waited for ever).

    Example:
        >>> _unusable_value(urlsplit("redis://db/0?socket_timeout=0"))
        'socket_timeout=0 must be a number of seconds over 0 (e.g. 5)'
        >>> _unusable_value(urlsplit("rediss://db/0?socket_timeout=2.5")) is None
        True
    """
    query = dict(parse_qsl(url.query))
    for name in ("socket_timeout", "socket_connect_timeout"):
        given = query.get(name)
        if given is None:
            continue
        try:
            seconds = float(given)
        except ValueError:
            continue  # said by the client that reads it: "is not a number of seconds"
        if not 0 < seconds < math.inf:
            return f"{name}={given} must be a number of seconds over 0 (e.g. 5)"
    if url.scheme != "rediss":
        return None  # TLS options on a plain URL: said as such by the client
    for name in _FILES:
        path = query.get(name)
        if path and not os.path.isfile(path):
            return f"{name}={path}: no such file here"
    folder = query.get("ssl_ca_path")
    if folder and not os.path.isdir(folder):
        return f"ssl_ca_path={folder}: no such folder here"
    return None


def _socket_timeout(url: str) -> float:
    """The URL's ``socket_timeout=`` in seconds, else ours (see RedisURL.socket_timeout)."""
    given = dict(parse_qsl(urlsplit(url).query)).get("socket_timeout")
    try:
        seconds = float(given) if given else 0.0
    except ValueError:
        seconds = 0.0  # redis-py refuses it when it connects, with its own words
    return seconds if seconds > 0 else SOCKET_TIMEOUT


def translate(exc: BaseException, what: str, url: str) -> BrokerError:
    """The celeriac error for a driver's error (an :mod:`.errors` one, or redis-py's,
    adopted first), with a message readable at 3 a.m.

    The result is chained to ``exc`` as ``raise ... from exc`` would (drivers throw it into
    the plan that was running rather than raising it here).
    """
    error: BrokerError
    original = exc
    exc = _what_redis_said(exc)
    denial = denied_in_script(str(exc)) if isinstance(exc, errors.ResponseError) else None
    if isinstance(exc, errors.NoPermissionError) or denial is not None:
        error = BrokerError(f"could not {what}: {_denied(exc, url, denial)}")
    elif isinstance(exc, errors.AuthenticationError) and urlsplit(url).password is None:
        # The server's words ("HELLO must be called with the client already authenticated",
        # "NOAUTH Authentication required") leave the reader to infer the missing password.
        error = BrokerConnectionError(
            f"could not {what}: Redis at {url} requires a password and the broker URL gives "
            f"none ({exc}). Put it in the URL: redis://:PASSWORD@host:6379/0, or "
            "redis://USER:PASSWORD@host:6379/0 for an ACL user (percent-encode '/', '?', '#')."
        )
    elif isinstance(exc, errors.AuthenticationError):
        error = BrokerConnectionError(
            f"could not {what}: Redis at {url} refused this client's credentials "
            f"({type(exc).__name__}: {exc}). Check the user and password in the broker URL "
            "(redis://user:password@host:6379/0) and the user's ACL on the server."
        )
    elif (cluster := _cluster_error(exc, what, url)) is not None:
        error = cluster
    elif (busy := _busy_error(exc, what, url)) is not None:
        error = busy
    elif isinstance(exc, errors.ConnectionError | errors.TimeoutError):
        error = _unreachable(exc, what, url)
    elif isinstance(exc, errors.ReadOnlyError):
        # After a failover the old primary is a replica: a connection error, so workers
        # reconnect (resolving the host again) and producers can retry.
        error = BrokerConnectionError(
            f"could not {what}: Redis at {url} is a read-only replica ({exc}). Point the "
            "broker URL at the primary, or at an endpoint that follows failovers (Sentinel, "
            "a managed service's primary endpoint); workers reconnect by themselves."
        )
    elif isinstance(exc, errors.OutOfMemoryError) or _OOM in str(exc):
        error = BrokerError(
            f"could not {what}: Redis at {url} is full (used memory over maxmemory), so it "
            f"refused the write ({exc}). Drain or purge queues (celeriac status), shorten "
            "result_expires, or raise maxmemory. Check that maxmemory-policy is still "
            "noeviction (`redis-cli CONFIG GET maxmemory-policy`): another policy deletes "
            "keys, queued tasks among them, and celeriac status names it."
        )
    elif "DB index is out of range" in str(exc):
        error = BrokerConnectionError(
            f"could not {what}: Redis at {url} has no such database ({exc}). Use a database "
            "number below the server's `databases` setting (16 by default), e.g. /0."
        )
    else:
        error = BrokerError(f"could not {what}: Redis at {url} refused the command: {exc}")
    error.answered = _answered(exc)
    if isinstance(exc, errors.TimeoutError) and "connecting" not in str(exc):
        # Sent, or partly sent, and unanswered: Redis may run it when it answers.
        error.maybe_done = True
    error.__cause__ = original
    error.__suppress_context__ = True
    return error


def _answered(exc: errors.RedisError) -> bool:
    """True when ``exc`` is Redis's own reply (an error reply, a refused password, a full
    connection table), not a connection that failed or timed out."""
    said = errors.ResponseError | errors.AuthenticationError
    busy = errors.BusyLoadingError | errors.BusyScriptError
    return isinstance(exc, said | busy) or _MAXCLIENTS in str(exc)


def _what_redis_said(exc: BaseException) -> errors.RedisError:
    """``exc`` in the :mod:`.errors` vocabulary, unwrapped to what the server said.

    redis.asyncio over a Unix socket wraps what the server said while connecting (a wrong
    password, no such database) in a ConnectionError, which read "did not answer ...
    check that redis-server is running".
    """
    ours = _ours(exc)
    if ours is None:  # no driver's error: worded as a refusal, with what it was as the cause
        ours = errors.RedisError(*exc.args)
        ours.__cause__ = exc
    said = _ours(exc.__cause__) if exc.__cause__ is not None else None
    if isinstance(ours, errors.ConnectionError) and isinstance(
        said, errors.AuthenticationError | errors.ResponseError
    ):
        return said
    return ours


def _ours(exc: BaseException) -> errors.RedisError | None:
    """``exc`` in the :mod:`.errors` vocabulary: redis-py's adopted (redis-py raised it, so
    it is loaded); None for anything else (the OSError a connection failed with)."""
    if isinstance(exc, errors.RedisError):
        return exc
    if not type(exc).__module__.startswith("redis."):
        return None
    from celeriac.brokers.redis.redis_py import adopt

    return adopt(exc)


def _tls_error(
    causes: list[BaseException], what: str, url: str, said: str
) -> BrokerConnectionError | None:
    """The TLS step that failed, in words (see :func:`_unreachable`); None if none did."""
    # ssl is loaded by a TLS connection only (~4 MiB a process): without it, no TLS error.
    ssl = sys.modules.get("ssl")
    verify = [c for c in causes if ssl is not None and isinstance(c, ssl.SSLCertVerificationError)]
    if verify and "mismatch" in str(getattr(verify[0], "verify_message", verify[0])).lower():
        # The CA was trusted, the name was not: "name the CA that signed it" sent an
        # operator after a CA file already given, and ssl_cert_reqs=none drops every check.
        return BrokerConnectionError(
            f"could not {what}: Redis at {url} presented a TLS certificate for another name "
            f"({said}). Use the host name (or IP) the certificate was issued for in the URL "
            "(openssl s_client -connect HOST:PORT shows its names), or, keeping the CA "
            "check, ssl_check_hostname=false."
        )
    if verify:
        return BrokerConnectionError(
            f"could not {what}: Redis at {url} presented a TLS certificate this client does "
            f"not trust ({said}). Name the CA that signed it in the URL: "
            "ssl_ca_certs=/path/to/ca.pem (ssl_cert_reqs=none skips the check)."
        )
    if ssl is not None and any(isinstance(c, ssl.SSLError) for c in causes):
        return BrokerConnectionError(
            f"could not {what}: the TLS handshake with Redis at {url} failed ({said}). Check "
            "that this port speaks TLS (else use redis://) and the URL's ssl_* options."
        )
    return None


def _unreachable(exc: errors.RedisError, what: str, url: str) -> BrokerConnectionError:
    """What translate() says of a connection that failed: the step that failed when the
    error tells it (the host's name, TLS), else that Redis did not answer.

    Each read "did not answer ... check that redis-server is running": a host name that
    does not resolve sent an operator after the server, not the URL or DNS, and a TLS
    mismatch (rediss:// at a plain port, redis:// at a TLS one, an untrusted certificate)
    gave no hint of TLS beyond the last words.
    """
    causes = _causes(exc)
    said = f"{type(exc).__name__}: {exc}"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return BrokerConnectionError(
            f"could not {what}: the host name in the broker URL {url} does not resolve "
            f"({said}). Check the host in the URL and this host's DNS (in Kubernetes or "
            "Compose, the service's name and namespace); workers retry until it resolves."
        )
    tls_failed = _tls_error(causes, what, url, said)
    if tls_failed is not None:
        return tls_failed
    tls = ""
    if url.startswith("rediss:") and isinstance(exc, errors.TimeoutError):
        tls = (
            " A rediss:// URL at a port that speaks plain Redis gets no TLS answer and "
            "times out like this: for a server without TLS, use redis://."
        )
    elif url.startswith("redis:") and any(isinstance(c, ConnectionResetError) for c in causes):
        tls = (
            " A port that expects TLS resets plain connections like this (managed services "
            "often serve TLS on 6380): if so, use rediss://."
        )
    if isinstance(exc, errors.TimeoutError) and "reading" in str(exc):
        # Connected and sent, then nothing: "check that redis-server is running" sent an
        # operator to a server that was running, only stopped or busy.
        return BrokerConnectionError(
            f"could not {what}: Redis at {url} did not answer within "
            f"{_socket_timeout(url):g}s (socket_timeout), though it took the connection: it "
            "is stopped or frozen (SIGSTOP, a paused VM), blocked by a long script or "
            "command (`redis-cli SLOWLOG GET`), or overloaded. Check `redis-cli -h HOST -p "
            f"PORT PING` from this host.{tls}"
        )
    if _names_cluster(url):
        # redis-py 8.2 raises a node's ConnectionError where older ones raised
        # RedisClusterException (see _cluster_error) when no node answers.
        return BrokerConnectionError(
            f"could not {what}: a node of the Redis Cluster at {url} did not answer "
            f"({said}). Check that its nodes are running and reachable from this host "
            "(redis-cli --cluster check HOST:PORT), and that the broker URL (host, port, "
            f"password, TLS) is right.{tls}"
        )
    return BrokerConnectionError(
        f"could not {what}: Redis at {url} did not answer ({said}). Check that "
        "redis-server is running and reachable from this host, and that the broker URL "
        f"(host, port, password, TLS) is right.{tls}"
    )


def _names_cluster(url: str) -> bool:
    """Whether the (redacted) broker URL ``url`` selects Redis Cluster.

    Example:
        >>> _names_cluster("redis://h:7000?cluster=1"), _names_cluster("redis://h:6379/0")
        (True, False)
    """
    return any(
        key == "cluster" and value.lower() in _TRUE for key, value in parse_qsl(urlsplit(url).query)
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from or while handling, innermost last."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _busy_error(exc: errors.RedisError, what: str, url: str) -> BrokerError | None:
    """What translate() says of a Redis that is there but cannot take this client now
    (loading its data, every connection taken); None for other errors.

    Both are ConnectionErrors to redis-py, and read "did not answer ... check that
    redis-server is running": an operator went looking for a dead server while Redis read
    its AOF, or served every connection it already had.
    """
    if isinstance(exc, errors.BusyLoadingError):
        return BrokerConnectionError(
            f"could not {what}: Redis at {url} is loading its data set into memory ({exc}): "
            "it has just started and is reading its AOF or RDB file, and answers once that "
            "is done (`redis-cli INFO persistence` shows loading_eta_seconds). Workers wait "
            "for it by themselves; send again once it answers."
        )
    if isinstance(exc, errors.BusyScriptError) or str(exc).startswith("BUSY "):  # redis-py
        # A BrokerError read as a refusal to give up on, where it passes as LOADING does.
        return BrokerConnectionError(
            f"could not {what}: Redis at {url} is busy running a script ({exc}): it answers "
            "no other command until the script ends. `redis-cli SLOWLOG GET` names it, and "
            "`redis-cli SCRIPT KILL` stops one that has not written yet. Workers wait for it "
            "by themselves; send again once it answers."
        )
    if _MAXCLIENTS in str(exc):
        return BrokerConnectionError(
            f"could not {what}: Redis at {url} refused a new connection: it has reached its "
            f"maxclients limit ({exc}). Each worker child, beat and producer process keeps "
            "connections of its own: `redis-cli INFO clients` (connected_clients) and "
            "`redis-cli CLIENT LIST` show who holds them. Raise maxclients (on a managed "
            "service, a larger tier) or run fewer processes; workers reconnect by themselves "
            "once one is free."
        )
    return None


def _cluster_error(exc: errors.RedisError, what: str, url: str) -> BrokerError | None:
    """What translate() says of a Cluster that cannot serve a command; None for others."""
    if isinstance(exc, errors.RedisClusterException | errors.ClusterDownError):
        seeds = (
            " A client starts from the URL's node alone: list others with "
            "nodes=host2:7000,host3:7000 so it can start while one is down."
            if "nodes=" not in url and "at least one reachable node" in str(exc)
            else ""
        )
        return BrokerConnectionError(
            f"could not {what}: the Redis Cluster at {url} cannot serve it "
            f"({type(exc).__name__}: {exc}). Check that its nodes are running and reachable "
            "from this host (redis-cli --cluster check HOST:PORT), and that the broker URL "
            f"(host, port, password, TLS) is right.{seeds}"
        )
    if isinstance(exc, errors.ClusterError) and str(exc).startswith("TTL exhausted"):
        # Redirected until redis-py (and the driver, REDIRECT_PATIENCE) gave up: a slot on
        # the move. It read "refused the command: TTL exhausted.", as if the command were
        # wrong, and producers took it for a refusal rather than an outage to wait out.
        return BrokerConnectionError(
            f"could not {what}: the Redis Cluster at {url} is moving the slot ({exc}). A "
            "reshard or rebalance is migrating it; send again once it is done. If none is "
            "running, a migration was left half-done: `redis-cli --cluster check HOST:PORT` "
            "shows it and `redis-cli --cluster fix HOST:PORT` finishes it."
        )
    return None


def _denied(exc: errors.RedisError, url: str, denial: Denial | None) -> str:
    """An ACL refusal, with the grant that lifts it for the URL's user and prefix."""
    parts = urlsplit(url)
    user = parts.username or "default"
    prefix = dict(parse_qsl(parts.query)).get("prefix", "celeriac")
    said = str(exc).split(" script: ")[0]  # the rest is a SHA1 and a line number
    named = re.search(r"to run the '([\w|]+)' command", said)  # a NOPERM reply names it
    command = denial.command.lower() if denial else named.group(1) if named else ""
    if denial is not None:
        where = f"celeriac's script {denial.script}" if denial.script else "a script"
        said = f"{said}, on line {denial.line} of {where}"
    if "channel" in said:
        grant = f" Grant the channels: ACL SETUSER {user} &{prefix}:*."
    elif "keys" in said:
        grant = f" Grant the keys: ACL SETUSER {user} ~{prefix}:*."
    elif command:
        grant = f" Grant the command: ACL SETUSER {user} +{command}."
    else:
        grant = ""
    return (
        f"Redis at {url} denied it to the URL's user {user!r} ({said}).{grant} celeriac "
        f"needs the keys ~{prefix}:*, the channels &{prefix}:* and the commands its scripts, "
        "lists, sorted sets, hashes and pub/sub run: +@all -@dangerous grants them (add "
        "+info +config|get, which @dangerous holds, for the start-up check of the "
        "server's settings)."
    )
