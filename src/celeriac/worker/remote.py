"""The supervisor's side of remote control: answer commands, stop revoked running tasks.

It reads the broker's ``control`` and ``revokes`` streams (see :mod:`celeriac.control`)
at most every quarter second, so a worker answers within a second and a
``revoke --terminate`` stops a running task within about a quarter second.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.control import CONTROL, Command, read_revocations, reply
from celeriac.errors import BrokerError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

_EVERY = 0.5  # answers within a second, without a round trip per tick


class Remote:
    """Polls the control and revoke streams for one supervisor.

    Args:
        app: the worker's app.
        worker_id: the supervisor's id, as workers() lists it.
        answer: builds the reply to a command from the supervisor's current state.
    """

    def __init__(self, app: Celeriac, worker_id: str, answer: Callable[[str], Any]) -> None:
        self.app = app
        self.worker_id = worker_id
        self.answer = answer
        self.to_terminate: set[str] = set()
        self.shutdown_requested = False
        self._control_seq: int | None = None
        self._revoke_seq = 0
        self._polled = 0.0

    def poll(self) -> None:
        """Read new commands and revokes (rate-limited); never raises for broker errors."""
        now = time.monotonic()
        if now - self._polled < _EVERY:
            return
        self._polled = now
        try:
            self._poll_revokes()
            self._poll_control()
        except BrokerError as exc:
            log.warning("worker %s could not read remote-control messages: %s", self.worker_id, exc)

    def _poll_revokes(self) -> None:
        self._revoke_seq, entries = read_revocations(self.app, self._revoke_seq)
        self.to_terminate.update(e.id for e in entries if e.terminate)

    def _poll_control(self) -> None:
        broker = self.app.broker
        if self._control_seq is None:  # start at the tail: never replay old commands
            items = broker.stream_read(CONTROL, 0, 1000)
            self._control_seq = items[-1][0] if items else 0
            return
        for seq, raw in broker.stream_read(CONTROL, self._control_seq, 100):
            self._control_seq = seq
            command = msgspec.json.decode(raw, type=Command)
            if command.target not in (None, self.worker_id):
                continue
            if command.command == "shutdown":
                log.info(
                    "worker %s: shutdown requested remotely (pid %d)", self.worker_id, os.getpid()
                )
                self.shutdown_requested = True
            reply(self.app, command, self.worker_id, self.answer(command.command))
