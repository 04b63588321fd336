"""How a worker child died, noted for each task it held, and what the note decides.

When a child dies, its supervisor puts back what it held, counting a delivery for each
task it was running or reading, and notes how it died (``killed by SIGSEGV``) under
:func:`death_key` of each of them. A task dead-lettered for too many deliveries says so
in its reason (:func:`last_death`), not only in the worker's log.

A death is *shared* when the child was running other tasks beside it: a threads or
asyncio child runs several, and a process child lists the finished tasks of its batch,
whose commit is still to come, as started. Every one of them was counted, though at most
one killed the child. With a poison task among them, a few shared deaths dead-lettered
the innocent tasks beside it too, most surely on a short queue, where the next child
fetched the same messages again. So a message whose last allowed delivery follows a shared
death runs alone (:mod:`celeriac.worker.turns`): an innocent task finishes, and one that
kills its child alone is dead-lettered at the next delivery, for a death of its own. The
limit itself stands: a task with ``max_deliveries=1`` is never handed out twice.
"""

from __future__ import annotations

import re

_SHARED = re.compile(rb", beside (\d+) other tasks?$")


def death_key(task_id: str) -> str:
    """Where the supervisor notes how a worker child died while it held ``task_id``
    (``killed by SIGSEGV``, ``exit code 0: os._exit(0) in the task?``): the dead letter
    of a task that kills every child running it says so, not only the worker's log.

    Example:
        >>> death_key("a1")
        'died:a1'
    """
    return f"died:{task_id}"


def death_note(how: str, others: int) -> bytes:
    """The note of a death (``how``: the child's exit in words) for one task of the
    child, which was running ``others`` other tasks too.

    Plain text, read by any version's dead letters; the count at its end is what
    :func:`shared_with` reads back.

    Example:
        >>> death_note("killed by SIGSEGV", 0)
        b'killed by SIGSEGV'
        >>> death_note("killed by SIGSEGV", 3)
        b'killed by SIGSEGV, beside 3 other tasks'
    """
    if others <= 0:
        return how.encode()
    return f"{how}, beside {others} other task{'s' if others > 1 else ''}".encode()


def shared_with(note: bytes | None) -> int:
    """How many other tasks were running in the child whose death ``note`` records (0:
    it died alone, or nothing was noted).

    Example:
        >>> shared_with(death_note("killed by SIGKILL", 1)), shared_with(b"exit code 1")
        (1, 0)
        >>> shared_with(None)
        0
    """
    found = _SHARED.search(note) if note else None
    return int(found.group(1)) if found else 0


def how_it_died(note: bytes) -> str:
    """The child's exit in words, as ``note`` records it, without who ran beside it.

    Example:
        >>> how_it_died(death_note("killed by SIGSEGV", 2))
        'killed by SIGSEGV'
    """
    return _SHARED.sub(b"", note).decode("utf-8", "replace")


def last_death(note: bytes | None) -> str:
    """What a too-many-deliveries reason adds about the last death (see
    :func:`death_key`); nothing when none was noted.

    Example:
        >>> last_death(b"killed by SIGSEGV")
        '; the last time, its worker child died (killed by SIGSEGV)'
    """
    if note is None:
        return ""
    return f"; the last time, its worker child died ({note.decode('utf-8', 'replace')})"
