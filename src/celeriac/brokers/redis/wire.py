"""celeriac's sync client for a standalone Redis: commands on kept sockets, without redis-py.

redis-py's ``execute_command`` costs ~30 µs of Python per call (pool checkout, retry
wrapper, event dispatch, observability hooks, response callbacks), and even its bare
``send_packed_command`` / ``read_response`` pair ~8,000 instructions more (health and
push-message checks, buffer bookkeeping), about the round trip itself on loopback; a worker pays
it once per broker call and a producer once per ``delay()``. Importing redis-py costs a
process ~18 MiB and ~100 ms more (it imports asyncio, ssl, email, importlib.metadata...),
more than the rest of a worker. :class:`Wire` packs with hiredis, makes one ``sendall``,
and ``recv``s into a hiredis reader of its own, on connections that :mod:`.dial` opens
(or redis-py, for a URL whose options dial does not take: see :func:`opener`). Replies
are raw (RESP3 as hiredis reads it: maps are dicts); error replies are raised (or
returned in place) as :mod:`.errors` exceptions.

Thread- and fork-safe: idle connections sit in a list (``pop``/``append`` are atomic), a
connection is used by one call at a time, and a forked child never touches its parent's
sockets (they are dropped, not closed, on the first call after the fork).
"""

from __future__ import annotations

import contextlib
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import hiredis

from celeriac import pid
from celeriac._version import __version__
from celeriac.brokers.redis import dial, errors
from celeriac.brokers.redis.errors import ConnectionError as RedisConnectionError
from celeriac.brokers.redis.errors import InvalidResponse, ReadOnlyError, RedisError
from celeriac.brokers.redis.errors import TimeoutError as RedisTimeoutError

#: A connected socket and how to close it (a redis-py connection closes its own way).
Opened = tuple[socket.socket, Callable[[], None]]

#: The library name and version every connection gives Redis (CLIENT SETINFO), so that
#: an operator can tell celeriac's connections from the rest in CLIENT LIST.
LIB_NAME = "celeriac"

#: Commands whose raw reply (bytes, ints, lists, None) is what the plans expect.
RAW = frozenset(
    {"EVALSHA", "EVAL", "BLPOP", "GETRANGE", "GET", "DEL", "HDEL", "ZREM", "SADD", "XADD"}
    | {"ZADD", "ZREMRANGEBYSCORE"}
)

#: Retries after a broken connection, and the pause before each (as redis-py's Retry with
#: exponential backoff): a pooled socket that a Redis restart broke costs one retry. A
#: timeout is not retried: the server is there and not answering (frozen, swapping, a
#: long script), so each retry only waited socket_timeout again (90 s with the defaults
#: before any caller heard of it) and sent the command a second time.
RETRY_PAUSES = (0.02, 0.04)

#: Bytes per sendall in a pipeline: few system calls, yet Redis starts working early.
SEND_CHUNK = 64 * 1024

#: Bytes read from the socket per system call, into a buffer each connection keeps.
RECV_SIZE = 64 * 1024

_RETRYABLE = RedisConnectionError


def opener(url: str, socket_timeout: float) -> Callable[[], Opened]:
    """How :class:`Wire` opens its connections to the standalone Redis at ``url`` (the
    URL without celeriac's own options): :func:`.dial.connect`, or redis-py's connection
    when the URL has an option dial does not take (redis-py is then imported, once).

    Example:
        >>> open_one = opener("redis://127.0.0.1:6379/0", 30.0)  # nothing connects yet
    """
    endpoint = dial.Endpoint.from_url(url)
    if endpoint is None:
        from celeriac.brokers.redis.redis_py import connection_opener

        return connection_opener(url, socket_timeout)

    def open_dialled() -> Opened:
        sock = dial.connect(endpoint, lib_name=LIB_NAME, lib_version=__version__)
        owner = pid.current()
        return sock, lambda: _shut(sock, owner)

    return open_dialled


def _shut(sock: socket.socket, owner: int) -> None:
    """Close a connection: for good in the process that opened it (the server sees it end
    even while a forked child still holds a copy of the descriptor), only this process's
    descriptor in a forked child, whose shutdown would end the parent's connection too
    (as redis-py's disconnect does)."""
    if pid.current() == owner:
        with contextlib.suppress(OSError):  # already broken or closed by the server
            sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class _Link:
    """One connection: a socket, and a reply parser of its own."""

    __slots__ = ("buffer", "close", "reader", "replica", "sock")

    def __init__(self, opened: Opened) -> None:
        self.sock, self.close = opened
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=self._error)
        self.buffer = bytearray(RECV_SIZE)
        self.replica = False  # a READONLY reply came: the server is a replica (_round_trip)

    def _error(self, text: str) -> errors.RedisError:
        error = errors.reply_error(text)
        if isinstance(error, ReadOnlyError):
            self.replica = True
        return error

    def send(self, packed: Iterable[bytes]) -> None:
        dial.send(self.sock, packed)

    def read(self) -> Any:
        """The next reply; an error reply comes back as an :mod:`.errors` exception, not
        raised."""
        return dial.read_reply(self.sock, self.reader, self.buffer)

    def replies(self, count: int, timeout: float | None) -> list[Any]:
        """The next ``count`` replies; ``timeout`` caps the wait below the socket's."""
        kept = self.sock.gettimeout() if timeout is not None else None
        if timeout is None or (kept is not None and kept <= timeout):
            return [self.read() for _ in range(count)]
        self.sock.settimeout(timeout)  # a time-out closes the link: put back only here
        out = [self.read() for _ in range(count)]
        self.sock.settimeout(kept)
        return out


class _Packed:
    """Commands packed in chunks of about SEND_CHUNK bytes, made while they are sent and
    kept, so a retry on a fresh connection sends them all again."""

    def __init__(self, commands: Iterable[Sequence[Any]]) -> None:
        self._source = iter(commands)
        self._chunks: list[bytes] = []
        self._done = False
        self.count = 0

    def __iter__(self) -> Iterator[bytes]:
        yield from list(self._chunks)  # made by an earlier attempt
        if self._done:
            return
        chunk: list[bytes] = []
        size = 0
        for args in self._source:
            command = hiredis.pack_command(tuple(args))
            self.count += 1
            chunk.append(command)
            size += len(command)
            if size >= SEND_CHUNK:
                # Kept before it is handed out: a send that fails loses nothing.
                joined = b"".join(chunk)
                self._chunks.append(joined)
                chunk, size = [], 0
                yield joined
        if chunk:
            joined = b"".join(chunk)
            self._chunks.append(joined)
            self._done = True
            yield joined
        self._done = True


class Wire:
    """Runs raw commands on connections that ``open`` makes (see :func:`opener`).

    Example:
        >>> wire = Wire(opener("redis://127.0.0.1:6379/0", 30.0))  # doctest: +SKIP
        >>> wire.call(("GET", "missing"))  # doctest: +SKIP
    """

    def __init__(self, open: Callable[[], Opened]) -> None:
        self._open = open
        self._idle: list[_Link] = []
        self._pid = pid.current()
        # A Wire dropped without close() (an app garbage-collected in a cycle) closes its
        # sockets before the cycle's finalizers run, so no socket is finalized while open.
        weakref.finalize(self, _close_all, self._idle)

    def call(self, args: Sequence[Any], timeout: float | None = None) -> Any:
        """One command, one reply; an error reply is raised as an :mod:`.errors` exception.

        ``timeout`` caps the wait for the reply below the socket timeout (a result
        waiter's read must not outlast the wait's own timeout).

        Raises:
            errors.ResponseError: Redis answered with an error (``NoScriptError`` included).
            errors.ConnectionError: the server could not be reached after the retries.
        """
        return self._round_trip((hiredis.pack_command(tuple(args)),), 1, timeout=timeout)[0]

    def send(self, args: Sequence[Any]) -> Sent:
        """Send one command now and leave its reply to be read later (:meth:`Sent.reply`).

        The connection is the call's own until then. A send that fails is not an error
        yet: the reply's read makes the call again, with :meth:`call`'s retries.
        """
        sent = Sent(self, hiredis.pack_command(tuple(args)))
        try:
            link = self._checkout()
        except _RETRYABLE:
            return sent  # the reply's read makes the call again
        try:
            link.send((sent.packed,))
        except _RETRYABLE:
            link.close()  # the reply's read makes the call again
            self._drop_idle()
            return sent
        except BaseException:
            link.close()
            raise  # a timeout is not tried again: as in call()
        sent.link = link
        return sent

    def pipeline(self, commands: Iterable[Sequence[Any]]) -> list[Any]:
        """Several commands in one round trip; an error reply is returned in its place.

        ``commands`` may be a generator: every 64 KiB of packed commands is sent as soon as
        it is made, so Redis runs the first ones while the caller still builds the rest.
        """
        packed = _Packed(commands)
        return self._round_trip(packed, lambda: packed.count, errors_in_place=True)

    def close(self) -> None:
        """Close every idle connection (a call in flight closes its own when done)."""
        _close_all(self._idle)

    def _round_trip(
        self,
        packed: Iterable[bytes],
        replies: int | Callable[[], int],  # a function: known once everything is sent
        *,
        errors_in_place: bool = False,
        timeout: float | None = None,
    ) -> list[Any]:
        for attempt in range(len(RETRY_PAUSES) + 1):
            link: _Link | None = None
            try:
                link = self._checkout()
                # One sendall per chunk: Redis starts on the first while the rest are sent.
                link.send(packed)
                count = replies if isinstance(replies, int) else replies()
                out = (
                    [link.read() for _ in range(count)]
                    if timeout is None  # the hot path: no call more
                    else link.replies(count, timeout)
                )
            except _RETRYABLE:
                if link is not None:
                    link.close()
                self._drop_idle()
                if attempt == len(RETRY_PAUSES):
                    raise
                time.sleep(RETRY_PAUSES[attempt])
                continue
            except BaseException:
                if link is not None:
                    link.close()  # a reply may be half read: never reuse this socket
                raise
            assert link is not None
            self._put_back(link)
            if not errors_in_place:
                for reply in out:
                    # Any error reply: LOADING, BUSY and the like are ConnectionErrors, and
                    # returned as values they read as a script's answer (a send said "not
                    # new" of every message while Redis ran a long script: none was kept).
                    if isinstance(reply, RedisError):
                        raise reply
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop_idle(self) -> None:
        """Close the idle connections after one broke: a Redis that restarted, or a network
        that dropped, broke them all, and each would cost a call one of its three tries (a
        worker child that had held 39 took 40 s to fetch again after a 2 s restart, and a
        producer's next 13 sends failed with Redis back)."""
        _close_all(self._idle)

    def _put_back(self, link: _Link) -> None:
        """Keep a link whose every reply was read whole (its socket is clean)."""
        if link.replica:
            # The old primary after a failover: a new connection resolves the host again
            # and may reach the new primary; this one never would.
            link.close()
        else:
            self._idle.append(link)

    def _checkout(self) -> _Link:
        if self._pid != pid.current():  # forked: the parent's sockets are not ours to use
            self._idle.clear()  # dropped: the copies close without a shutdown when collected
            self._pid = pid.current()
        try:
            return self._idle.pop()
        except IndexError:
            return _Link(self._open())


class Sent:
    """A command sent by :meth:`Wire.send`, whose reply is not read yet."""

    __slots__ = ("link", "packed", "wire")

    def __init__(self, wire: Wire, packed: bytes) -> None:
        self.wire = wire
        self.packed = packed
        self.link: _Link | None = None  # None: not sent (or its reply already read)

    def reply(self) -> Any:
        """The command's reply, read once; an error reply is raised as an :mod:`.errors` exception.

        If the send or the read failed on a broken connection, the command is made again
        as :meth:`Wire.call` makes it (retries included): as a round trip that broke.

        Raises:
            errors.ResponseError: Redis answered with an error (``NoScriptError`` included).
            errors.ConnectionError: the server could not be reached after the retries.
        """
        link, self.link = self.link, None
        if link is None:
            return self._again()
        try:
            out = link.read()
        except _RETRYABLE:
            link.close()
            self.wire._drop_idle()
            return self._again()
        except BaseException:
            link.close()  # a reply may be half read: never reuse this socket
            raise
        self.wire._put_back(link)
        if isinstance(out, RedisError):  # any error reply (see Wire._round_trip)
            raise out
        return out

    def _again(self) -> Any:
        return self.wire._round_trip((self.packed,), 1)[0]  # as call(), packed already


def _close_all(links: list[_Link]) -> None:
    while True:
        try:
            link = links.pop()
        except IndexError:  # empty, or emptied by another thread meanwhile
            return
        link.close()


class Subscriber:
    """Pub/sub on a connection of its own (a subscribed connection takes no other
    command): the channels a plan subscribed to, and their messages one at a time.

    A connection that breaks is opened again at the next read, subscribed to the same
    channels; what was published meanwhile is lost, which result waiters allow for (they
    read the result key again between reads).
    """

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self._link: _Link | None = None
        self._channels: list[bytes] = []

    def subscribe(self, channel: bytes) -> None:
        """Subscribe to ``channel`` now (connecting first if needed).

        Raises:
            errors.ConnectionError: the server could not be reached.
        """
        self._channels.append(channel)
        if self._link is None:
            self._connected()  # subscribes to every channel, this one included
        else:
            self._send(self._link, (channel,))

    def message(self, timeout: float) -> bytes | None:
        """The next message's data, or None once ``timeout`` seconds pass without one.

        Raises:
            errors.ConnectionError: the connection broke (the next call opens another).
        """
        deadline = time.monotonic() + timeout
        link = self._connected()
        while (remaining := deadline - time.monotonic()) > 0:
            link.sock.settimeout(remaining)
            try:
                reply = link.read()
            except RedisTimeoutError:
                return None  # the reader keeps a partial reply: the socket stays usable
            except BaseException:
                self.close()
                raise
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                data: bytes = reply[2]
                return data
        return None

    def close(self) -> None:
        """Close the connection (its subscriptions end with it)."""
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _connected(self) -> _Link:
        if self._link is not None:
            return self._link
        link = self._link = _Link(self._wire._open())
        self._send(link, tuple(self._channels))
        return link

    def _send(self, link: _Link, channels: tuple[bytes, ...]) -> None:
        if not channels:
            return
        try:
            command: list[Any] = ["SUBSCRIBE", *channels]
            link.send((hiredis.pack_command(tuple(command)),))
            for _ in channels:  # each channel's confirmation, so none is read as a message
                confirmed = link.read()
                if isinstance(confirmed, errors.RedisError):
                    raise confirmed
        except BaseException:
            self.close()
            raise
