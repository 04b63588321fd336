"""Text from messages, shown to people: in log lines and on terminals.

Task names, queue names, ids, reasons and error texts come from the broker, where anyone
who can send a task puts what they like. Written as they are, a newline or carriage return
forged a log line or a line of output ("...\\n04:00:00 INFO task x succeeded"), and an ANSI
escape code cleared the operator's screen or recoloured a table (rich passes ``ESC``
through).
"""

from __future__ import annotations


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with its control characters written as escapes (``\\n``, ``\\x1b``).

    With ``lines``, newlines and tabs stay, for texts of several lines: an error message,
    a traceback.

    Example:
        >>> print(printable("evil\\x1b[2J\\rline\\none"))
        evil\\x1b[2J\\rline\\none
        >>> print(printable("first\\n\\x1b[31msecond", lines=True))
        first
        \\x1b[31msecond
    """
    if text.isprintable():  # nearly always: one C-speed scan
        return text
    kept = "\n\t" if lines else ""
    return "".join(c if c.isprintable() or c in kept else _escaped(c) for c in text)


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: a 100 KB task id or
    queue name in an error message or log line would be the whole of it.

    Example:
        >>> cut("q" * 500, 8)
        'qqqqqqqq... (500 characters)'
        >>> cut("short", 8)
        'short'
    """
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def error_type(exc: BaseException) -> str:
    """The qualified name of ``exc``'s class, as results and log lines name it.

    Example:
        >>> error_type(ConnectionError("refused"))
        'builtins.ConnectionError'
    """
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def error_text(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's own ``__str__`` raises: that raise
    must not cost the task its failure's record or its retry.

    Example:
        >>> class Broken(Exception):
        ...     def __str__(self) -> str:
        ...         raise RuntimeError
        >>> error_text(Broken())
        '<Broken whose str() failed>'
    """
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - any error of a broken __str__
        return f"<{type(exc).__name__} whose str() failed>"


def seconds(value: float) -> str:
    """A duration in a message, two significant digits under 10 s: "0.034s", where one
    decimal said "0.0s" (a retry that seemed to come back at once, a task that seemed to
    expire the moment it was due).

    Example:
        >>> [seconds(s) for s in (0.0, 0.0342, 0.2, 3.25, 12.7, 3600.0)]
        ['0s', '0.034s', '0.2s', '3.2s', '13s', '3600s']
        >>> seconds(0.000046), seconds(1e-9)  # a retry's full jitter can draw that
        ('0.000046s', '0s')
    """
    if value >= 10:
        return f"{value:.0f}s"
    text = f"{value:.2g}"
    if "e" in text:  # under 0.0001 s: "4.6e-05s" is no way to tell a person a delay
        text = f"{value:.6f}".rstrip("0").rstrip(".") or "0"
    return f"{text}s"


def duration(value: float) -> str:
    """A duration in a table, to the unit that matters at that size.

    Example:
        >>> [duration(s) for s in (0.25, 59.94, 192.0, 7320.0)]
        ['0.2s', '59.9s', '3m 12s', '2h 2m']
    """
    if value < 60:
        return f"{value:.1f}s"
    minutes, hours = int(value // 60), int(value // 3600)
    return f"{hours}h {minutes % 60}m" if hours else f"{minutes}m {int(value % 60)}s"


def _escaped(char: str) -> str:
    """One unprintable character as its Python escape: ``\\x1b``, ``\\r``, ``\\u2028``."""
    return char.encode("unicode_escape").decode("ascii")
