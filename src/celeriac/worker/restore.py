"""Process-wide state a task changed, put back before its child's next task.

A child runs many tasks, and what one task does to the process stays for the next: a
closed ``sys.stdout`` made every later task that printed fail ("I/O operation on closed
file"), ``sys.stdout = open(os.devnull, "w")`` to quiet a chatty library lost what every
later task printed, and an ``os.chdir`` ran later tasks in that folder (relative paths,
imports from a relative ``PYTHONPATH`` entry). Each is checked after every task (well
under a microsecond, the working directory ~0.5 µs), put back, and the task named in a
warning. The signal handlers a task replaced are put back by the child itself
(``Child._keep_handlers``).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

_DESCRIPTORS = {"stdout": 1, "stderr": 2}


class OwnStreams:
    """The ``sys.stdout`` and ``sys.stderr`` a child started with.

    Example:
        >>> streams = OwnStreams()
        >>> streams.put_back(replaced_too=True)
        []
    """

    def __init__(self) -> None:
        self._own: dict[str, TextIO] = {"stdout": sys.stdout, "stderr": sys.stderr}

    def put_back(self, *, replaced_too: bool) -> list[str]:
        """Put back each stream a task closed (and, with ``replaced_too``, one it
        replaced; not in a threads child, where another task may be inside its own
        ``redirect_stdout``); return what the task did, e.g. ``["closed sys.stdout"]``."""
        did: list[str] = []
        for name in _DESCRIPTORS:
            now, own = getattr(sys, name), self._own[name]
            if _closed(now):
                what = "closed"
            elif now is own or not replaced_too:
                continue
            else:
                what = "replaced"
            if _closed(own):
                self._own[name] = _reopened(name, own)
            setattr(sys, name, self._own[name])
            did.append(f"{what} sys.{name}")
        return did


class OwnFolder:
    """The working directory a child started in.

    Example:
        >>> folder = OwnFolder()
        >>> folder.put_back() is None
        True
    """

    def __init__(self) -> None:
        self.path = os.getcwd()

    def put_back(self) -> str | None:
        """Go back to the child's folder if a task left another; return the folder the
        task left ("a deleted folder" when it is gone), or None when nothing changed."""
        try:
            now = os.getcwd()
        except OSError:  # the task's folder was deleted meanwhile
            now = "a deleted folder"
        if now == self.path:
            return None
        os.chdir(self.path)
        return now


def _closed(stream: object) -> bool:
    try:
        return bool(getattr(stream, "closed", False))
    except Exception:  # noqa: BLE001 - a stream-like object of the task's: not ours to judge
        return False


def _reopened(name: str, closed: TextIO) -> TextIO:
    """A new stream on the descriptor the closed one wrote to (closing ``sys.stdout``
    leaves descriptor 1 open), line-buffered as the worker makes it; /dev/null when the
    task closed the descriptor too."""
    try:
        return open(  # the child's, for the rest of its life: never closed
            _DESCRIPTORS[name],
            "w",
            encoding=getattr(closed, "encoding", None) or "utf-8",
            errors=getattr(closed, "errors", None) or "backslashreplace",
            closefd=False,
            buffering=1,
        )
    except OSError:
        return open(os.devnull, "w")
