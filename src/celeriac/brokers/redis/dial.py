"""Opening a connection to a standalone Redis and its handshake, without redis-py.

A worker or producer on a standalone Redis runs its commands through :mod:`.wire`; only
opening a connection still took redis-py, whose import costs an idle worker ~35 MiB and
its start ~100 ms (it imports asyncio, ssl, email, importlib.metadata...). This module
opens it with the standard library and hiredis instead (docs/architecture.md, "A process
loads what it uses"); ``ssl`` is imported only to open a ``rediss://`` connection.

It mirrors redis-py 8: the URL options it takes have redis-py's names and meanings
(``parse_url``, ``to_bool``, ``SSLConnection``), and its handshake is redis-py's (HELLO 3
with AUTH, CLIENT SETINFO whose refusal by Redis before 7.2 is ignored, SELECT), sent in
one round trip, with the error wording :func:`.connection.translate` reads. A URL with an
option it does not take makes :meth:`Endpoint.from_url` return None: the caller then opens
the connection with redis-py, which takes and checks every option.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
import msgspec

from celeriac.brokers.redis import errors

if TYPE_CHECKING:
    import ssl

#: ``ssl_cert_reqs=``'s values, redis-py's words for ssl.CERT_NONE and the others.
CertReqs = Literal["none", "optional", "required"]
_T = TypeVar("_T")

#: The query options dial takes (redis-py's names); any other is left to redis-py.
OPTIONS = frozenset(
    {"db", "socket_timeout", "socket_connect_timeout", "client_name", "username", "password"}
    | {"socket_keepalive", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data"}
    | {"ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_check_hostname", "ssl_min_version"}
    | {"ssl_ciphers"}
)
#: Those a scheme takes: keepalive is TCP's and ssl_* TLS's only, as in redis-py's classes.
_TAKEN = {
    "rediss": OPTIONS,
    "redis": frozenset(o for o in OPTIONS if not o.startswith("ssl_")),
    "unix": frozenset(o for o in OPTIONS if not o.startswith(("ssl_", "socket_keepalive"))),
}

#: redis-py's to_bool: these are false (any case), anything else is true.
_FALSE = frozenset({"0", "F", "FALSE", "N", "NO"})
#: ssl.TLSVersion's names and numbers (redis-py takes the numbers), without importing ssl.
_TLS_VERSIONS = {"MINIMUM_SUPPORTED": -2, "MAXIMUM_SUPPORTED": -1, "SSLv3": 768}
_TLS_VERSIONS |= {"TLSv1": 769, "TLSv1_1": 770, "TLSv1_2": 771, "TLSv1_3": 772}
_CERT_REQS: tuple[CertReqs, ...] = ("none", "optional", "required")

#: Handshake replies are small: the HELLO map is the largest (~200 bytes).
_RECV_SIZE = 4096


class TLS(msgspec.Struct, frozen=True):
    """A ``rediss://`` URL's TLS options, as redis-py's SSLConnection takes them."""

    cert_reqs: CertReqs = "required"
    ca_certs: str | None = None  # a PEM file of CA certificates
    ca_path: str | None = None  # a folder of them
    ca_data: str | None = None  # PEM text
    certfile: str | None = None  # the client's certificate (mutual TLS)
    keyfile: str | None = None
    password: str | None = None  # unlocks keyfile
    check_hostname: bool = True  # ignored when cert_reqs is "none", as in redis-py
    min_version: int | None = None  # an ssl.TLSVersion's number (771 is TLSv1_2)
    ciphers: str | None = None


class Endpoint(msgspec.Struct, frozen=True):
    """Where a standalone Redis is and how to connect to it: a URL, read."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a Unix socket (unix:// URLs); host and port are then unused
    db: int = 0
    username: str | None = None
    password: str | None = None
    client_name: str | None = None
    connect_timeout: float = 5.0  # socket_connect_timeout=, the TLS handshake included
    timeout: float = 30.0  # socket_timeout=: the socket's timeout once connected
    keepalive: bool = True  # socket_keepalive= (TCP only)
    tls: TLS | None = None  # rediss:// only

    @classmethod
    def from_url(cls, url: str) -> Endpoint | None:
        """Read a ``redis://``, ``rediss://`` or ``unix://`` URL as redis-py's parse_url
        does; None when it has an option this module does not take (redis-py opens it).

        Example:
            >>> e = Endpoint.from_url("redis://:p%2Fw@db:6380/2?socket_timeout=5")
            >>> e.host, e.port, e.db, e.password, e.timeout, e.tls
            ('db', 6380, 2, 'p/w', 5.0, None)
            >>> e = Endpoint.from_url("unix:///run/redis.sock?db=1")
            >>> e.path, e.db
            ('/run/redis.sock', 1)
            >>> Endpoint.from_url("redis://db:6379/0?health_check_interval=5") is None
            True

        Raises:
            ValueError: an option's value does not parse (``socket_timeout=abc``).
        """
        parts = urlsplit(url)
        # As redis-py's parse_qs: a blank value is no option, the first of repeats counts.
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query):
            query.setdefault(key, value)
        taken = _TAKEN.get(parts.scheme)
        if taken is None or not query.keys() <= taken:
            return None
        connect_timeout = _option(query, "socket_connect_timeout", float, 5.0)
        timeout = _option(query, "socket_timeout", float, 30.0)
        if not all(0 < t < math.inf for t in (connect_timeout, timeout)):
            # 0 makes redis-py's socket non-blocking, a negative one fails: not modelled
            # here, left to redis-py to do as it always did.
            return None
        unix = parts.scheme == "unix"
        # The path is the db ("/2") on TCP; the caller refused any other such path.
        db = int(parts.path[1:]) if not unix and parts.path[1:].isdigit() else 0
        return cls(
            host=unquote(parts.hostname or "localhost"),
            port=parts.port or 6379,
            path=unquote(parts.path) if unix else None,
            db=_option(query, "db", int, db),  # ?db= wins over the path, as in redis-py
            # The URL's user and password win over the query's, as in redis-py.
            username=unquote(parts.username or "") or query.get("username"),
            password=unquote(parts.password or "") or query.get("password"),
            client_name=query.get("client_name"),
            connect_timeout=connect_timeout,
            timeout=timeout,
            keepalive=_option(query, "socket_keepalive", _to_bool, True),
            tls=_tls(query) if parts.scheme == "rediss" else None,
        )

    @property
    def where(self) -> str:
        """``host:port``, or the Unix socket's path, as redis-py's errors name it.

        Example:
            >>> Endpoint(port=6380).where, Endpoint(path="/run/redis.sock").where
            ('localhost:6380', '/run/redis.sock')
        """
        return self.path if self.path is not None else f"{self.host}:{self.port}"


#: What each parser accepts, for the error that names a value it refused.
_EXPECTED = {
    "float": "a number of seconds",
    "int": "a whole number",
    "_cert_reqs": "one of none, optional, required",
    "_tls_version": "a TLS version: TLSv1_2 or TLSv1_3 (or redis-py's number, 771 or 772)",
}


def _option(query: dict[str, str], name: str, parse: Callable[[str], _T], default: _T) -> _T:
    """The query's ``name`` read by ``parse``, else ``default``.

    Example:
        >>> _option({"db": "x"}, "db", int, 0)
        Traceback (most recent call last):
        ...
        ValueError: db='x' is not a whole number
    """
    if name not in query:
        return default
    try:
        return parse(query[name])
    except ValueError:
        expected = _EXPECTED.get(getattr(parse, "__name__", ""), "a value it takes")
        raise ValueError(f"{name}={query[name]!r} is not {expected}") from None


def _to_bool(value: str) -> bool:
    """redis-py's ``to_bool`` (``off`` is true there too: kept, so that the async face,
    still on redis-py, reads the same URL the same way)."""
    return value.upper() not in _FALSE


def _tls_version(value: str) -> int:
    """``TLSv1_2``, or redis-py's number for it, ``771``."""
    number = _TLS_VERSIONS[value] if value in _TLS_VERSIONS else int(value)
    if number not in _TLS_VERSIONS.values():
        raise ValueError(value)
    return number


def _cert_reqs(value: str) -> CertReqs:
    """``none``, ``optional`` or ``required`` (redis-py's words, lowercase only as there)."""
    if value not in _CERT_REQS:
        raise ValueError(value)
    return value  # narrowed by the check above


def _tls(query: dict[str, str]) -> TLS:
    """The ``ssl_*`` options of a ``rediss://`` URL."""
    return TLS(
        cert_reqs=_option(query, "ssl_cert_reqs", _cert_reqs, "required"),
        ca_certs=query.get("ssl_ca_certs"),
        ca_path=query.get("ssl_ca_path"),
        ca_data=query.get("ssl_ca_data"),
        certfile=query.get("ssl_certfile"),
        keyfile=query.get("ssl_keyfile"),
        password=query.get("ssl_password"),
        check_hostname=_option(query, "ssl_check_hostname", _to_bool, True),
        min_version=_option(query, "ssl_min_version", _tls_version, None),
        ciphers=query.get("ssl_ciphers"),
    )


def connect(endpoint: Endpoint, *, lib_name: str, lib_version: str) -> socket.socket:
    """A connected socket to Redis, handshake done, with ``endpoint.timeout`` set on it.

    Nothing is left unread on it: the caller's own reply parser starts clean.

    Example:
        >>> sock = connect(Endpoint(), lib_name="celeriac", lib_version="1.0")  # doctest: +SKIP

    Raises:
        errors.TimeoutError: no connection (or TLS handshake) within the connect timeout,
            or no handshake reply within ``endpoint.timeout``.
        errors.ConnectionError: refused, unreachable, a name that does not resolve, a
            TLS failure (the OSError is the ``__cause__``), or the connection closed.
        errors.AuthenticationError: the server refused the user or password.
        errors.ResponseError: the server refused the handshake (a database past its
            ``databases``: "DB index is out of range").
    """
    sock = _open(endpoint)
    try:
        sock.settimeout(endpoint.timeout)
        _handshake(sock, endpoint, lib_name, lib_version)
    except BaseException:
        sock.close()  # no half-open connection left behind, whatever went wrong
        raise
    return sock


def _open(endpoint: Endpoint) -> socket.socket:
    """A connected socket (TLS handshake done), its timeout still the connect timeout."""
    try:
        if endpoint.path is not None:
            return _unix(endpoint.path, endpoint.connect_timeout)
        return _tcp(endpoint)
    except TimeoutError as exc:
        raise errors.TimeoutError("Timeout connecting to server") from exc
    except OSError as exc:  # ssl.SSLError is one: kept as the __cause__, translate reads it
        raise errors.ConnectionError(_connect_error(endpoint.where, exc)) from exc


def _connect_error(where: str, exc: OSError) -> str:
    """redis-py's words for a connection that failed (its ``format_error_message``).

    Example:
        >>> _connect_error("db:6379", ConnectionRefusedError(111, "Connection refused"))
        'Error 111 connecting to db:6379. Connection refused.'
    """
    if len(exc.args) > 1:
        return f"Error {exc.args[0]} connecting to {where}. {exc.args[1]}."
    if exc.args:
        return f"Error {exc.args[0]} connecting to {where}."
    return f"Error connecting to {where}."


def _tcp(endpoint: Endpoint) -> socket.socket:
    """A socket connected over TCP, wrapped in TLS for ``rediss://``."""
    # Made first: a CA file that is not there fails before any connection is made.
    context = _context(endpoint.tls) if endpoint.tls is not None else None
    address = (endpoint.host, endpoint.port)
    sock = socket.create_connection(address, timeout=endpoint.connect_timeout)
    try:
        # Commands are written whole: Nagle's algorithm would only delay small ones.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if endpoint.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if context is None:
            return sock
        # The handshake runs under the connect timeout: a rediss:// URL at a plain port
        # (the server waits for a line that never comes) fails in seconds, not in 30.
        return context.wrap_socket(sock, server_hostname=endpoint.host)
    except BaseException:
        sock.close()
        raise


def _unix(path: str, timeout: float) -> socket.socket:
    """A socket connected to the Unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _context(tls: TLS) -> ssl.SSLContext:
    """The SSLContext redis-py's SSLConnection makes of the same options."""
    import ssl  # here only: ~4 MiB a process, for rediss:// alone

    context = ssl.create_default_context()
    # check_hostname first: CERT_NONE is refused while it is on.
    context.check_hostname = tls.check_hostname and tls.cert_reqs != "none"
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}
    context.verify_mode = modes.get(tls.cert_reqs, ssl.CERT_REQUIRED)
    if tls.certfile or tls.keyfile:
        context.load_cert_chain(tls.certfile or "", tls.keyfile, tls.password)
    if tls.ca_certs or tls.ca_path or tls.ca_data:
        context.load_verify_locations(tls.ca_certs, tls.ca_path, tls.ca_data)
    if tls.min_version is not None:
        context.minimum_version = ssl.TLSVersion(tls.min_version)
    if tls.ciphers:
        context.set_ciphers(tls.ciphers)
    return context


def _handshake(sock: socket.socket, endpoint: Endpoint, lib_name: str, lib_version: str) -> None:
    """HELLO 3 (with AUTH and SETNAME), CLIENT SETINFO and SELECT in one round trip."""
    hello: list[str | int] = ["HELLO", 3]
    if endpoint.username or endpoint.password:  # as redis-py: a user alone sends AUTH too
        hello += ["AUTH", endpoint.username or "default", endpoint.password or ""]
    if endpoint.client_name:
        hello += ["SETNAME", endpoint.client_name]
    # (command, whether an error reply fails the connection): Redis before 7.2 has no
    # CLIENT SETINFO, and lacking it is no reason to refuse a connection.
    steps: list[tuple[Sequence[str | int], bool]] = [
        (hello, True),
        (("CLIENT", "SETINFO", "LIB-NAME", lib_name), False),
        (("CLIENT", "SETINFO", "LIB-VER", lib_version), False),
    ]
    if endpoint.db:
        steps.append((("SELECT", endpoint.db), True))
    send(sock, (b"".join(_pack(command) for command, _ in steps),))
    reader = hiredis.Reader(protocolError=errors.InvalidResponse, replyError=errors.reply_error)
    buffer = bytearray(_RECV_SIZE)
    for _, required in steps:
        # Read in order and stop at the first refusal: after "max number of clients" or
        # NOAUTH the later replies say nothing more (or the server has hung up).
        reply = read_reply(sock, reader, buffer)
        if required and isinstance(reply, errors.RedisError):
            raise reply


def _pack(command: Sequence[str | int]) -> bytes:
    """One command in RESP."""
    args: tuple[Any, ...] = tuple(command)  # hiredis's stub says a 1-tuple: any length is
    return cast(bytes, hiredis.pack_command(args))


def send(sock: socket.socket, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` in order, in redis-py's words when it cannot (the wire's writes
    and the handshake's alike).

    Raises:
        errors.TimeoutError: the socket timed out writing.
        errors.ConnectionError: the connection broke.
    """
    try:
        for chunk in chunks:
            sock.sendall(chunk)
    except TimeoutError as exc:
        raise errors.TimeoutError("Timeout writing to socket") from exc
    except OSError as exc:
        raise errors.ConnectionError(f"Error while writing to socket: {exc}") from exc


def read_reply(sock: socket.socket, reader: hiredis.Reader, buffer: bytearray) -> Any:
    """The next reply on ``sock``, parsed by ``reader`` from reads into ``buffer``; an error
    reply is returned as its exception, not raised (the wire's reads and the handshake's).

    Raises:
        errors.TimeoutError: no reply within the socket's timeout.
        errors.ConnectionError: the connection broke or was closed.
    """
    reply = reader.gets()
    while reply is False:
        try:
            size = sock.recv_into(buffer)
        except TimeoutError as exc:
            raise errors.TimeoutError("Timeout reading from socket") from exc
        except OSError as exc:
            raise errors.ConnectionError(f"Error while reading from socket: {exc}") from exc
        if not size:
            raise errors.ConnectionError("Connection closed by server.")
        reader.feed(buffer, 0, size)  # type: ignore[arg-type]  # any buffer, as redis-py
        reply = reader.gets()
    return reply
