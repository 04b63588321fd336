"""What a Redis connection or reply can raise, as the drivers raise it: one vocabulary for
celeriac's own sync client (wire.py) and for redis-py where it still runs (Cluster, the
async face), whose exceptions are adopted into these at the driver's edge
(:func:`celeriac.brokers.redis.redis_py.adopt`).

This module imports nothing of redis-py: a worker or producer on a standalone Redis never
loads it (docs/architecture.md, "A process loads what it uses").

The classes follow redis-py's (same names, same tree) so that :func:`.connection.translate`
reads the same whichever side raised, and an error's text is redis-py's too: a reply's
code (``NOSCRIPT``, ``ERR``, ...) is dropped from the message when the class says it.
"""

from __future__ import annotations


class RedisError(Exception):
    """Anything that went wrong talking to Redis."""


class ConnectionError(RedisError):
    """The connection could not be made, broke, or the server refuses this client now."""


class AuthenticationError(ConnectionError):
    """The server refused the credentials (``WRONGPASS``, ``NOAUTH``)."""


class BusyLoadingError(ConnectionError):
    """The server is loading its data set (``LOADING``): there, but not serving yet."""


class BusyScriptError(ConnectionError):
    """``BUSY``: the server runs a script past ``busy-reply-threshold`` and answers nothing
    else until it ends (or ``SCRIPT KILL``): there, and refusing this command unrun."""


class TimeoutError(RedisError):
    """No reply within the socket's timeout (connecting, writing or reading)."""


class ResponseError(RedisError):
    """The server answered with an error."""


class NoScriptError(ResponseError):
    """``NOSCRIPT``: the script is not in this server's cache (yet, or after SCRIPT FLUSH)."""


class ReadOnlyError(ResponseError):
    """``READONLY``: the server is a replica (after a failover, the old primary)."""


class NoPermissionError(ResponseError):
    """``NOPERM``: the user's ACL denies the command, key or channel."""


class OutOfMemoryError(ResponseError):
    """``OOM``: used memory is over ``maxmemory`` and the policy refuses writes."""


class InvalidResponse(RedisError):
    """Bytes that are not RESP came back: not a Redis server, or a corrupted stream."""


class ClusterError(RedisError):
    """Redis Cluster could not serve the command (adopted from redis-py only)."""


class ClusterDownError(ClusterError, ResponseError):
    """``CLUSTERDOWN`` / ``MASTERDOWN``: the cluster cannot serve the slot."""


class RedisClusterException(ClusterError):
    """No node of the Cluster could be reached or used (redis-py's own, adopted)."""


#: Error-reply codes and their classes; the code is dropped from the message, as redis-py
#: does (``NOSCRIPT No matching script`` reads ``No matching script``).
_CODES: dict[str, type[RedisError]] = {
    "OOM": OutOfMemoryError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
    "LOADING": BusyLoadingError,
    "BUSY": BusyScriptError,
    "NOSCRIPT": NoScriptError,
    "READONLY": ReadOnlyError,
    "NOPERM": NoPermissionError,
    "CLUSTERDOWN": ClusterDownError,
    "MASTERDOWN": ClusterDownError,
}

#: ``ERR`` replies with a class of their own; any other ``ERR`` is a ResponseError.
_ERR_TEXTS: dict[str, type[RedisError]] = {
    "max number of clients reached": ConnectionError,
    "invalid password": AuthenticationError,
}


def reply_error(text: str) -> RedisError:
    """The exception for an error reply's text (an exception made, not raised).

    Example:
        >>> error = reply_error("NOSCRIPT No matching script. Please use EVAL.")
        >>> type(error).__name__, str(error)
        ('NoScriptError', 'No matching script. Please use EVAL.')
        >>> type(reply_error("ERR max number of clients reached")).__name__
        'ConnectionError'
        >>> str(reply_error("WRONGTYPE Operation against a key"))
        'WRONGTYPE Operation against a key'
    """
    code, _, rest = text.partition(" ")
    if code == "ERR":
        return _ERR_TEXTS.get(rest, ResponseError)(rest)
    kind = _CODES.get(code)
    return kind(rest) if kind is not None else ResponseError(text)
