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

from celeriac.control import CONTROL, Command, TerminateRevokes, reply
from celeriac.errors import BrokerError
from celeriac.worker.outage import Outage

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")

_EVERY = 0.5  # answers within a second, without a round trip per tick
_command_decoder = msgspec.json.Decoder(Command)


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
        # Revoked with terminate: ids of the latest STREAM_LENGTH at least (what the stream
        # holds), trimmed now and then; it grew for the worker's whole life.
        self.to_terminate = TerminateRevokes()
        self.shutdown_requested = False
        self._control_seq: int | None = None
        # Commands sent before this are another worker's business: never replayed. Those
        # sent after are answered even when they came before this worker's first read: a
        # health check that pings as soon as `status` lists the worker went unanswered.
        self._started = time.time()
        self._polled = 0.0
        self._outage = Outage()

    def poll(self) -> None:
        """Read new commands and revokes (rate-limited); never raises for broker errors."""
        now = time.monotonic()
        if now - self._polled < _EVERY or now < self._outage.retry_at:
            return
        self._polled = now
        try:
            self._poll_revokes()
            self._poll_control()
        except BrokerError as exc:
            if self._outage.failed():  # once per outage and every 30 s, not at every poll
                log.warning(
                    "worker %s could not read remote-control messages (revokes, inspect); "
                    "trying again with backoff: %s",
                    self.worker_id,
                    exc,
                )
            return
        if self._outage.since:
            lasted = self._outage.ended()
            log.info(
                "worker %s reads remote-control messages again (after %.0f s)",
                self.worker_id,
                lasted,
            )

    def _poll_revokes(self) -> None:
        self.to_terminate.read(self.app)

    def _poll_control(self) -> None:
        broker = self.app.broker
        first = self._control_seq is None  # the whole stream (it keeps 1,000), once
        items = broker.stream_read(CONTROL, self._control_seq or 0, 1000 if first else 100)
        self._control_seq = self._control_seq or 0
        for seq, raw in items:
            self._control_seq = seq
            try:
                command = _command_decoder.decode(raw)
                if first and command.at < self._started:
                    continue  # sent before this worker started: not for it
            except msgspec.DecodeError as exc:
                if first:
                    continue  # said by the workers that were running when it came
                # Written by hand, another tool or a newer celeriac: skipped. Raised, it
                # stopped every live worker (the supervisor's loop does not catch it).
                log.warning(
                    "worker %s: skipping a control message it cannot read (%s): %r",
                    self.worker_id,
                    exc,
                    raw[:200],
                )
                continue
            if command.target not in (None, self.worker_id):
                continue
            if command.command == "shutdown":
                log.info(
                    "worker %s: shutdown requested remotely (pid %d)", self.worker_id, os.getpid()
                )
                self.shutdown_requested = True
            reply(self.app, command, self.worker_id, self.answer(command.command))
