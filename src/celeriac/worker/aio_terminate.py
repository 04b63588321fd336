"""``revoke --terminate`` in an asyncio child: the one coroutine is cancelled, not the child.

The supervisor stops a task revoked with ``terminate`` by killing its child (see
:mod:`celeriac.worker.hard_limits`). In an asyncio child that killed every coroutine beside
it, and each ran again: one terminate re-ran 19 other tasks. So while async tasks run, the
child reads the revokes stream itself (every :data:`TERMINATE_POLL` seconds, off the loop,
from where it last read) and cancels a revoked task's coroutine where it awaits: the task
settles REVOKED through the whole pipeline (its chain or chord carries on), and the tasks
beside it run on. The supervisor gives the child
:data:`celeriac.worker.hard_limits.TERMINATE_GRACE` seconds for that
before it kills it as before: a coroutine that blocks the loop (a blocking call in an
``async def``) cannot be cancelled, nor a plain-def task running in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from celeriac.control import TerminateRevokes
from celeriac.errors import BrokerError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

#: Seconds between two reads of the revokes stream while async tasks run.
TERMINATE_POLL = 0.25

OffLoop = Callable[..., Awaitable[Any]]


class Terminations:
    """The async task bodies an asyncio child runs, and the cancel of those revoked with
    terminate.

    Example:
        >>> from celeriac import Celeriac
        >>> terminations = Terminations(Celeriac("doc", broker="memory://"))
        >>> terminations.claim("t1")  # not cancelled by a terminate
        False
    """

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        # Revoked with terminate, as the supervisor reads them: one read before its body
        # began (in its before_execute hooks) keeps that body from starting.
        self._terminates = TerminateRevokes()
        # id -> (the asyncio task running its body, its label as log lines name a task)
        self._bodies: dict[str, tuple[asyncio.Task[Any], str]] = {}
        self._cancelled: set[str] = set()  # ids cancelled here, until their body ends

    def body_started(self, task_id: str, runner: asyncio.Task[Any], label: str) -> None:
        """The body of ``task_id`` now runs in ``runner``: a terminate may cancel it."""
        self._bodies[task_id] = (runner, label)

    def body_ended(self, task_id: str) -> None:
        """The body of ``task_id`` returned or raised: nothing to cancel any more."""
        self._bodies.pop(task_id, None)

    def revoked(self, task_id: str) -> bool:
        """Whether ``task_id`` was revoked with terminate before its body began (read while
        it was in its before_execute hooks): its body must not start."""
        return task_id in self._terminates

    def cancelled(self, task_id: str) -> bool:
        """Whether a terminate cancelled the body of ``task_id`` (until :meth:`claim`)."""
        return task_id in self._cancelled

    def claim(self, task_id: str) -> bool:
        """Whether ``task_id``'s body was cancelled by a terminate (once: the caller settles
        it REVOKED and takes back the cancel request)."""
        if task_id not in self._cancelled:
            return False
        self._cancelled.discard(task_id)
        return True

    async def watch(self, off_loop: OffLoop, busy: Callable[[], bool]) -> None:
        """Until cancelled: while tasks run (``busy``: in their hooks or bodies), read the
        revokes made since the last read and cancel the bodies revoked with terminate. No
        read while none runs."""
        while True:
            await asyncio.sleep(TERMINATE_POLL)
            if not busy():
                continue
            try:
                terminated = await off_loop(self._terminates.read, self.app)
            except BrokerError:
                continue  # the supervisor's kill, after its grace, still stops the task
            doomed = [i for i in terminated if i in self._bodies]
            self._cancelled.update(doomed)
            for runner, label in [self._bodies.pop(i) for i in doomed]:
                runner.cancel()  # the body awaits: delivered where it awaits
                log.warning(
                    "task %s was revoked with terminate; child %d cancelled its coroutine, "
                    "and its %d other running task(s) go on",
                    label,
                    os.getpid(),
                    len(self._bodies),
                )
