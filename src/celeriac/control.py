"""Remote control through the broker: revoke, ping, inspect, shutdown.

Everything travels through the broker's small store, so it works on every broker and
reaches workers on every host:

* revokes are appended to the bounded stream ``revokes`` — stored, so a worker that starts
  later still honours them (workers re-read it every quarter second and at start-up);
* commands are appended to the stream ``control``; each live worker's supervisor reads it
  every tick and writes its reply under ``reply:<command id>:<worker id>`` for a minute.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.brokers.base import WorkerInfo

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.control")

REVOKES = "revokes"
CONTROL = "control"
STREAM_LENGTH = 10_000
REPLY_TTL = 60.0


class Revocation(msgspec.Struct):
    """One revoke: which task, and whether to stop it if it is running."""

    id: str
    terminate: bool = False
    at: float = 0.0


class Command(msgspec.Struct):
    """A control command for every worker, or one (``target``)."""

    id: str
    command: str  # ping | active | registered | stats | memory | shutdown
    target: str | None = None
    at: float = 0.0


_revocation_decoder = msgspec.json.Decoder(Revocation)


@dataclass(frozen=True, slots=True)
class Reply:
    """One worker's answer to a command."""

    worker: str
    data: Any


def live_workers(app: Celeriac) -> list[WorkerInfo]:
    """Live workers (supervisors), without the per-child consumer entries they heartbeat.

    Example:
        >>> from celeriac import Celeriac
        >>> live_workers(Celeriac("doc", broker="memory://"))
        []
    """
    return [w for w in app.broker.workers() if "child_of" not in w.extra]


def revoke(app: Celeriac, task_id: str, *, terminate: bool = False) -> None:
    """Revoke a task: it will not start; with ``terminate`` it is stopped if running.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> revoke(app, "some-task-id")
    """
    revoke_many(app, [task_id], terminate=terminate)


def revoke_many(app: Celeriac, task_ids: Sequence[str], *, terminate: bool = False) -> None:
    """Revoke tasks in one broker call (a group's members: ``GroupResult.revoke``).

    Raises:
        TypeError: an id is not a non-empty string.
        ValueError: more ids than the revokes stream keeps (``STREAM_LENGTH``): the oldest
            would be trimmed before a worker could read them.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> revoke_many(app, ["a", "b"])
    """
    from celeriac.middleware.revocation import Revocation as Skipper

    for task_id in task_ids:
        if not isinstance(task_id, str) or not task_id:
            # Stored as it is: an id of another type (revoke(app, 42)) made every worker
            # that read it exit, and workers started later too, while the stream held it.
            raise TypeError(f"revoke: a task id is a non-empty string, got {task_id!r}")
    if len(task_ids) > STREAM_LENGTH:
        raise ValueError(
            f"revoke: {len(task_ids):,} ids at once, but the revokes stream keeps the last "
            f"{STREAM_LENGTH:,}: the first would be trimmed before workers read them. Revoke "
            "them in parts, a few seconds apart, or purge the queue (celeriac purge QUEUE)"
        )
    now = time.time()
    entries = [msgspec.json.encode(Revocation(i, terminate, now)) for i in task_ids]
    app.broker.stream_append(REVOKES, entries, STREAM_LENGTH)
    # This process's own middleware re-reads the stream only every quarter second: a task
    # revoked and then run here within it (``run_queued`` in a test) ran anyway.
    for middleware in app.middleware.middleware:
        if isinstance(middleware, Skipper):
            for task_id in task_ids:
                middleware.revoked_here(task_id)


def read_revocations(app: Celeriac, after: int) -> tuple[int, list[Revocation]]:
    """Revocations newer than sequence ``after``; returns the last sequence seen.

    An entry this version cannot read (written by hand or by another tool, or in a shape a
    newer celeriac uses) is skipped with a warning. It used to raise: the worker reading it
    exited, and so did every worker started while the stream held it.
    """
    items = app.broker.stream_read(REVOKES, after, STREAM_LENGTH)
    last = items[-1][0] if items else after
    revocations: list[Revocation] = []
    for _, raw in items:
        try:
            revocations.append(_revocation_decoder.decode(raw))
        except msgspec.DecodeError as exc:
            log.warning(
                "skipping an entry of the revokes stream that this worker cannot read (%s): "
                "%r. If it revoked a task, revoke it again with `celeriac revoke ID`.",
                exc,
                raw[:200],
            )
    return last, revocations


def broadcast(
    app: Celeriac, command: str, *, target: str | None = None, timeout: float = 1.0
) -> list[Reply]:
    """Send a command to the live workers and collect their replies for up to ``timeout``.

    Example:
        >>> from celeriac import Celeriac
        >>> broadcast(Celeriac("doc", broker="memory://"), "ping", timeout=0.1)
        []
    """
    if not isinstance(command, str) or not (target is None or isinstance(target, str)):
        # Workers could not read such a command and exited (every live one, for a target).
        raise TypeError(f"broadcast: command and target are strings, got {command!r}, {target!r}")
    broker = app.broker
    workers = [w.id for w in live_workers(app) if target in (None, w.id)]
    cmd = Command(uuid.uuid4().hex, command, target, time.time())
    broker.stream_append(CONTROL, [msgspec.json.encode(cmd)], 1000)
    keys = [f"reply:{cmd.id}:{w}" for w in workers]
    deadline = time.monotonic() + timeout
    while True:
        values = broker.kv_get(keys) if keys else []
        if all(v is not None for v in values) or time.monotonic() > deadline:
            return [
                Reply(w, msgspec.json.decode(v))
                for w, v in zip(workers, values, strict=True)
                if v is not None
            ]
        time.sleep(0.02)


def reply(app: Celeriac, command: Command, worker_id: str, data: Any) -> None:
    """Answer a command (worker side)."""
    app.broker.kv_set(f"reply:{command.id}:{worker_id}", msgspec.json.encode(data), REPLY_TTL)
