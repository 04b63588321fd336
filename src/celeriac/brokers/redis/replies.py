"""Replies as the plans read them, for the few commands whose raw reply (RESP3 as hiredis
reads it) is not already that: what redis-py's response callbacks did for these, kept to
the commands celeriac sends. Every other reply is used raw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _info(reply: Any) -> dict[str, Any]:
    """``INFO``'s text as a dict; numbers as int (``redis_version`` stays text).

    Example:
        >>> _info(b"# Server\\r\\nredis_version:7.2.4\\r\\nuptime_in_seconds:12\\r\\n")
        {'redis_version': '7.2.4', 'uptime_in_seconds': 12}
    """
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    found: dict[str, Any] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        found[key] = int(value) if value.isdigit() else value
    return found


def _stream_rows(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """``XRANGE``'s entries as (id, fields) pairs, the fields as a dict.

    Example:
        >>> _stream_rows([[b"1-0", [b"i", b"x"]]])
        [(b'1-0', {b'i': b'x'})]
    """
    return [
        (entry_id, dict(zip(fields[::2], fields[1::2], strict=True))) for entry_id, fields in reply
    ]


_SHAPES: dict[str, Callable[[Any], Any]] = {
    "INFO": _info,
    "XRANGE": _stream_rows,
    "HEXISTS": bool,
}


def shaped(args: tuple[Any, ...], reply: Any) -> Any:
    """``reply`` to the command ``args`` as the plans read it (most are as they came).

    Example:
        >>> shaped(("HEXISTS", b"h", b"f"), 1), shaped(("GET", b"k"), b"v")
        (True, b'v')
    """
    shape = _SHAPES.get(args[0]) if isinstance(args[0], str) else None
    return reply if shape is None or isinstance(reply, BaseException) else shape(reply)
