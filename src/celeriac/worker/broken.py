"""A task that closed the descriptors of the worker child running it.

``os.closerange(3, ...)`` in a task (a daemonizing library, a "close every descriptor"
cleanup) closes the child's own: its broker connection among them. SQLite cannot recover
in that process (every later call fails with "locking protocol", a new connection too: its
lock and shared-memory state is per process), and a socket's or file's number may by then
belong to a file the task opened, so the old connections must not be used again at all.
The child crashed on its next read of its memory use: the task ran again five times, and
was dead-lettered as if the worker had crashed each time.

The child notices (its kept descriptor of ``/proc/self/statm`` is gone or is another file
now, read after every task), says so naming the task, and exits with
:data:`EXIT_TASK_CLOSED_DESCRIPTORS` with that task first in its slot. Its supervisor, on
connections of its own, records a FAILURE verdict for the task (as for a hard limit) and
puts the message back: the next delivery settles it unrun, through every middleware.
"""

from __future__ import annotations

import logging
import os

import msgspec

from celeriac.message import ErrorInfo
from celeriac.middleware.verdicts import Verdict
from celeriac.worker.slot import Held

log = logging.getLogger("celeriac.worker")

#: The exit code of a child whose task closed its descriptors; the first started task in
#: its slot is that task.
EXIT_TASK_CLOSED_DESCRIPTORS = 75


class DescriptorsLost(OSError):
    """A descriptor this process keeps open was closed, or is another file now."""


def closed_descriptors_verdict(held: Held) -> bytes:
    """The FAILURE verdict recorded for a task that closed its child's descriptors.

    Example:
        >>> raw = closed_descriptors_verdict(Held("a1", "q", "t", "shop.daemonize"))
        >>> b"closed file descriptors" in raw
        True
    """
    message = (
        f"task {held.label} closed file descriptors it did not open (os.closerange, a "
        "daemonizing library?), among them its worker child's broker connection, so its "
        "outcome could not be stored; the child was replaced and the task is "
        "not run again. Close only the descriptors the task opened itself."
    )
    error = ErrorInfo(type="builtins.OSError", message=message)
    return msgspec.json.encode(Verdict("FAILURE", error))


def blame(label: str, state: str, running: Held, held: list[Held]) -> list[Held]:
    """Say that the task ``label`` (``running``, which ended ``state``) closed this
    child's descriptors; return what the child's slot lists as it exits: that task first,
    the only one started. The others (another thread's, a batch's) did nothing wrong and
    go back uncounted."""
    log.error(
        "task %s closed file descriptors it did not open (os.closerange, a daemonizing "
        "library?), among them this child's broker connection, and ended %s: child %d "
        "cannot use the broker any more and exits. Its supervisor records the task's "
        "FAILURE (it is not run again), and a fresh child takes its place",
        label,
        state,
        os.getpid(),
    )
    mine = (running.id, running.token)
    return [running, *(Held(h.id, h.queue, h.token) for h in held if (h.id, h.token) != mine)]
