"""Process-wide state a task changed, put back before its child's next task: signal
handlers and the signal mask, standard streams, the working directory.

A child runs many tasks, and what one task does to the process stays for the next: a
closed ``sys.stdout`` made every later task that printed fail ("I/O operation on closed
file"), ``sys.stdout = open(os.devnull, "w")`` to quiet a chatty library lost what every
later task printed, and an ``os.chdir`` ran later tasks in that folder (relative paths,
imports from a relative ``PYTHONPATH`` entry). Each is checked after every task (well
under a microsecond, the working directory ~0.5 µs), put back, and the task named in a
warning. So are the child's signal handlers a task replaced, and its signals a task
left blocked: either left it deaf to the warm shutdown (which then waited for ever) or
without soft time limits.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs; see Undo.signals
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol, TextIO

from celeriac.text import printable

log = logging.getLogger("celeriac.worker")

#: The signals a child handles itself (the warm shutdown's, the soft limit's): one a task
#: left blocked in the child's main thread is unblocked.
_OWN_SIGNALS = frozenset({signal.SIGTERM, signal.SIGALRM})
_MEANWHILE = " (or another task running in this child meanwhile)"
Handler = Callable[[int, FrameType | None], Any] | int

_DESCRIPTORS = {"stdout": 1, "stderr": 2}


class Labelled(Protocol):
    """A task as a warning names it (a :class:`~celeriac.middleware.base.Job`): its label
    is made only for a warning, not after every task (~0.4 µs each)."""

    @property
    def label(self) -> str:
        """``name[id]``."""
        ...


class Undo:
    """What a task changed in its child's process, put back after it, each change said in
    a warning naming the task.

    Args:
        handlers: the child's own signal handlers, by signal (filled in as it installs
            them).

    Example:
        >>> class Job:  # as a worker's Job names its task
        ...     label = "shop.report[a1]"
        >>> undo = Undo({})
        >>> undo.streams(Job(), replaced_too=True)
    """

    def __init__(self, handlers: dict[int, Handler]) -> None:
        self.handlers = handlers
        self._streams = OwnStreams()
        self._folder = OwnFolder()

    def signals(self, job: Labelled, others: bool = False) -> None:
        """Put back the child's signal handlers the task ``job`` replaced, and unblock
        its signals the task left blocked; only a task on the main thread can (a process
        child's, an asyncio child's async one). ``others``: other tasks ran meanwhile (an
        asyncio child), so one of them may have.

        Read with ``_signal.getsignal``, the C function under ``signal.getsignal``: the
        latter tries to turn each handler into an enum first, ~1.5 µs a signal (8 µs per
        task for these five, a tenth of a no-op's whole cost); this is ~0.03 µs. The
        mask costs ~0.3 µs.
        """
        getsignal: Callable[[int], object] = _signal.getsignal
        for signum, handler in self.handlers.items():
            if getsignal(signum) != handler:
                log.warning(
                    "task %s%s replaced this child's handler of %s; it is put back (a warm "
                    "shutdown and soft time limits depend on it)",
                    job.label,
                    _MEANWHILE if others else "",
                    signal.Signals(signum).name,
                )
                signal.signal(signum, handler)
        # Blocked (pthread_sigmask) instead of replaced: as deaf, and the warm shutdown's
        # SIGTERM stayed pending for ever while the child consumed on.
        blocked = _signal.pthread_sigmask(signal.SIG_BLOCK, ()) & _OWN_SIGNALS
        if blocked:
            log.warning(
                "task %s%s blocked this child's %s (pthread_sigmask); unblocked (a warm "
                "shutdown and soft time limits depend on them)",
                job.label,
                _MEANWHILE if others else "",
                ", ".join(sorted(signal.Signals(s).name for s in blocked)),
            )
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)

    def streams(self, job: Labelled, *, replaced_too: bool, others: bool = False) -> None:
        """Put back the child's sys.stdout and sys.stderr if the task ``job`` closed (or,
        with ``replaced_too``, replaced) one: see :class:`OwnStreams`."""
        did = self._streams.put_back(replaced_too=replaced_too)
        if did:
            log.warning(
                "task %s%s %s; this child's own is put back (later tasks' print() failed "
                "on a closed stream, or what they printed was lost)",
                job.label,
                _MEANWHILE if others else "",
                " and ".join(did),
            )

    def folder(self, job: Labelled) -> None:
        """Go back to the child's working directory if the task ``job`` left another
        (a process child's only: in the threads pool, tasks share one)."""
        left = self._folder.put_back()
        if left is not None:
            log.warning(
                "task %s changed this child's working directory to %s; it is put back to "
                "%s, where later tasks run (relative paths, a relative PYTHONPATH entry)",
                job.label,
                printable(left),
                printable(self._folder.path),
            )


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
