"""The hot path to a standalone Redis: commands on kept connections, without redis-py's
per-command machinery.

redis-py's ``execute_command`` costs ~30 µs of Python per call (pool checkout, retry
wrapper, event dispatch, observability hooks, response callbacks), as much as the round
trip itself on loopback; a worker pays it once per task and a producer once per
``delay()``. :class:`Wire` keeps redis-py's connections (so URLs, TLS, ACL, Unix sockets
and the hiredis parser behave exactly as in redis-py) but drives them directly: pack with
hiredis, one ``sendall``, one parsed reply. Replies are raw (no response callbacks), so
only commands whose raw reply is what the caller wants go through here (:data:`RAW`).

Thread- and fork-safe: idle connections sit in a list (``pop``/``append`` are atomic), a
connection is used by one call at a time, and a forked child never touches its parent's
sockets (they are dropped, not closed, on the first call after the fork).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

import redis

#: Commands whose raw reply (bytes, ints, lists, None) is what the plans expect.
RAW = frozenset(
    {"EVALSHA", "EVAL", "BLPOP", "GETRANGE", "GET", "DEL", "HDEL", "ZREM", "SADD", "XADD"}
    | {"ZADD", "ZREMRANGEBYSCORE"}
)

#: Retries after a broken connection, and the pause before each (as redis-py's Retry with
#: exponential backoff): a pooled socket that a Redis restart broke costs one retry.
RETRY_PAUSES = (0.02, 0.04)

#: Bytes per sendall in a pipeline: few system calls, yet Redis starts working early.
SEND_CHUNK = 64 * 1024

_RETRYABLE = (RedisConnectionError, RedisTimeoutError)


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
    """Runs raw commands on connections made like ``client``'s own.

    Example:
        >>> wire = Wire(redis.Redis.from_url("redis://127.0.0.1:6379/0"))  # doctest: +SKIP
        >>> wire.call(("GET", "missing"))  # doctest: +SKIP
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        # redis-py's connections are untyped: Any below.
        self._connection_class: Any = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def call(self, args: Sequence[Any]) -> Any:
        """One command, one reply; an error reply is raised as redis-py's exception.

        Raises:
            redis.ResponseError: Redis answered with an error (``NoScriptError`` included).
            redis.ConnectionError: the server could not be reached after the retries.
        """
        return self._round_trip((hiredis.pack_command(tuple(args)),), 1)[0]

    def pipeline(self, commands: Iterable[Sequence[Any]]) -> list[Any]:
        """Several commands in one round trip; an error reply is returned in its place.

        ``commands`` may be a generator: every 64 KiB of packed commands is sent as soon as
        it is made, so Redis runs the first ones while the caller still builds the rest.
        """
        packed = _Packed(commands)
        return self._round_trip(packed, lambda: packed.count, errors_in_place=True)

    def close(self) -> None:
        """Close every idle connection (a call in flight closes its own when done)."""
        while self._idle:
            self._idle.pop().disconnect()

    def _round_trip(
        self,
        packed: Iterable[bytes],
        replies: int | Callable[[], int],  # a function: known once everything is sent
        *,
        errors_in_place: bool = False,
    ) -> list[Any]:
        for attempt in range(len(RETRY_PAUSES) + 1):
            conn = self._checkout()
            try:
                # One sendall per chunk: Redis starts on the first while the rest are sent.
                conn.send_packed_command(packed, check_health=False)
                count = replies if isinstance(replies, int) else replies()
                out = [self._read(conn, errors_in_place) for _ in range(count)]
            except ResponseError:
                self._idle.append(conn)  # the reply was read whole: the socket is clean
                raise
            except _RETRYABLE:
                conn.disconnect()
                if attempt == len(RETRY_PAUSES):
                    raise
                time.sleep(RETRY_PAUSES[attempt])
                continue
            except BaseException:
                conn.disconnect()  # a reply may be half read: never reuse this socket
                raise
            self._idle.append(conn)
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _read(conn: Any, errors_in_place: bool) -> Any:
        if not errors_in_place:
            return conn.read_response()
        try:
            return conn.read_response()
        except ResponseError as exc:
            return exc

    def _checkout(self) -> Any:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._idle = []
            self._pid = os.getpid()
        try:
            return self._idle.pop()
        except IndexError:
            return self._connection_class(**self._connection_kwargs)
