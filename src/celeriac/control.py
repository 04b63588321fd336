"""Remote control through the broker: revoke, ping, inspect, shutdown.

Everything travels through the broker's small store, so it works on every broker and
reaches workers on every host:

* a revoke is recorded twice. Each id no worker holds gets a revoke mark in the result
  store (:meth:`~celeriac.brokers.base.Broker.mark_revoked`): the task reads REVOKED at
  once, unless it already finished, and the mark is kept ``REVOKE_KEEP`` (or
  ``result_expires``, if longer), however many revokes follow. An id a worker holds (it
  may be running: its result will say how it ended) gets the same record under
  :func:`_revoke_key` in the small store instead. And the revoke is appended to the bounded
  stream ``revokes``, which workers re-read every quarter second and at start-up: the
  check before each task is a set lookup, with no broker round trip. A worker looks a
  task's mark up only when a revoke of it could have left the stream or the worker's
  memory (see :mod:`celeriac.middleware.revocation`);
* commands are appended to the stream ``control``; each live worker's supervisor reads it
  every tick and writes its reply under ``reply:<command id>:<worker id>`` for a minute.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.brokers.records import WorkerInfo
from celeriac.message import ErrorInfo, ResultRecord, encode_result

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Broker

log = logging.getLogger("celeriac.control")

REVOKES = "revokes"
CONTROL = "control"
STREAM_LENGTH = 10_000
#: Seconds a revoke mark is kept at least (``result_expires`` if longer): a revoked task
#: whose message comes due later than this (a countdown of months) is only skipped if its
#: revoke is still among the last ``STREAM_LENGTH``.
REVOKE_KEEP = 30 * 86_400.0
REPLY_TTL = 60.0
#: How the ``ping`` reply of a worker that answers but runs nothing begins (its children
#: keep dying: :mod:`celeriac.worker.crash_loop`), words for a person after it; a healthy
#: worker answers "pong".
UNHEALTHY = "unhealthy: "


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


class Reply(msgspec.Struct, frozen=True):
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
    return supervisors(app.broker.workers())


def supervisors(heartbeats: list[WorkerInfo]) -> list[WorkerInfo]:
    """The workers among ``broker.workers()``, without their children's entries, for a
    caller that needs both (one read of the broker).

    Example:
        >>> supervisors([WorkerInfo("w1/0.1", "h", 1, (), 1, 0.0, extra={"child_of": "w1"})])
        []
    """
    return [w for w in heartbeats if "child_of" not in w.extra]


def revoke(app: Celeriac, task_id: str, *, terminate: bool = False) -> bool:
    """Revoke a task: it will not start; with ``terminate`` it is stopped if running.
    Returns True when a worker held it (see :func:`revoke_many`).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> revoke(app, "some-task-id")
        False
    """
    return bool(revoke_many(app, [task_id], terminate=terminate))


def revoke_many(app: Celeriac, task_ids: Sequence[str], *, terminate: bool = False) -> list[str]:
    """Revoke tasks (a group's members: ``GroupResult.revoke``); returns the ids a worker
    held then (running, or taken to run).

    A task no worker holds reads REVOKED at once (a stored SUCCESS or FAILURE is left as it
    is); a worker that takes its message later acks it without running it and stores
    REVOKED. A task a worker holds is not marked: its worker stores REVOKED if it has not
    started it, or stops it and stores REVOKED with ``terminate``; one already running goes
    on without ``terminate``, and its result says how it ended. Marked at once, such a
    task's waiters were told REVOKED, and then it succeeded: work a caller took for not
    done had been done. Three broker calls, and one more per held id.

    Raises:
        TypeError: an id is not a non-empty string.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> revoke_many(app, ["a", "b"])
        []
    """
    from celeriac.middleware.revocation import Revocation as Skipper

    for task_id in task_ids:
        if not isinstance(task_id, str) or not task_id:
            # Stored as it is: an id of another type (revoke(app, 42)) made every worker
            # that read it exit, and workers started later too, while the stream held it.
            raise TypeError(f"revoke: a task id is a non-empty string, got {task_id!r}")
    now = time.time()
    held = [i for i, h in zip(task_ids, app.broker.held(task_ids), strict=True) if h]
    # The records first: a worker that reads the stream entry and later looks the record
    # up (its memory lost the entry) must find it. Ids beyond the stream's length are
    # fine: a worker that sees the stream full looks up the records of older messages.
    taken = set(held)
    waiting = [i for i in task_ids if i not in taken]
    if waiting:
        app.broker.mark_revoked(waiting, _revoke_mark(now), _mark_ttl(app))
    for task_id in held:
        app.broker.kv_set(_revoke_key(task_id), _revoke_mark(now), _mark_ttl(app))
    entries = [msgspec.json.encode(Revocation(i, terminate, now)) for i in task_ids]
    app.broker.stream_append(REVOKES, entries, STREAM_LENGTH)
    # This process's own middleware re-reads the stream only every quarter second: a task
    # revoked and then run here within it (``run_queued`` in a test) ran anyway.
    for middleware in app.middleware.middleware:
        if isinstance(middleware, Skipper):
            for task_id in task_ids:
                middleware.revoked_here(task_id)
    return held


def mark_given_back(app: Celeriac, task_ids: Sequence[str]) -> list[str]:
    """Mark REVOKED those of ``task_ids`` that were revoked while a worker held them, as
    that worker hands them back unstarted (a warm shutdown's prefetch, a dead child's);
    returns them. One broker read, and a write when some were.

    A revoke marks no task a worker holds (:func:`revoke_many`). Handed back unmarked, such
    a task read PENDING, and its waiters waited, until a worker took it again to drop it:
    for as long as none consumed its queue (a deploy's gap). Marked, it reads REVOKED at
    once, as a task revoked in its queue does; a worker still drops it unrun.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> mark_given_back(app, ["not-revoked"])
        []
    """
    if not task_ids:
        return []
    records = app.broker.kv_get([_revoke_key(task_id) for task_id in task_ids])
    revoked = [i for i, record in zip(task_ids, records, strict=True) if record is not None]
    if revoked:
        app.broker.mark_revoked(revoked, _revoke_mark(time.time()), _mark_ttl(app))
    return revoked


def _revoke_key(task_id: str) -> str:
    """Where the revoke of a task a worker held when it was revoked is kept (the small
    store): the record a worker looks up when the revokes stream no longer holds it.

    Example:
        >>> _revoke_key("a1")
        'revoked:a1'
    """
    return f"revoked:{task_id}"


def _revoke_mark(now: float) -> bytes:
    """The REVOKED record a revoke stores at once (a worker's settle replaces it with
    one naming the task and the worker)."""
    error = ErrorInfo(type="celeriac.errors.TaskRevoked", message="revoked before it finished")
    return encode_result(ResultRecord(state="REVOKED", error=error, date_done=now))


def _mark_ttl(app: Celeriac) -> float:
    keep = app.conf.result_expires
    return max(keep, REVOKE_KEEP) if math.isfinite(keep) else REVOKE_KEEP


def is_revoke_mark(raw: bytes) -> bool:
    """Whether stored result bytes say REVOKED: a revoke mark, or a REVOKED outcome.

    Example:
        >>> is_revoke_mark(_revoke_mark(0.0)), is_revoke_mark(b'{"state":"SUCCESS"}')
        (True, False)
    """
    try:
        return _state_decoder.decode(raw).state == "REVOKED"
    except msgspec.DecodeError:
        return False


def has_revoke_mark(broker: Broker, task_id: str) -> bool:
    """Whether the task was revoked: its stored result says REVOKED, or (revoked while a
    worker held it) its :func:`_revoke_key` is set. Two reads, the second only when the
    first says no.

    Raises:
        BrokerError: the broker did not answer (each caller decides what that means).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> revoke(app, "t1")
        False
        >>> has_revoke_mark(app.broker, "t1"), has_revoke_mark(app.broker, "t2")
        (True, False)
    """
    stored = broker.get_result(task_id)
    if stored is not None and is_revoke_mark(stored[0]):
        return True
    return broker.kv_get([_revoke_key(task_id)])[0] is not None


class _State(msgspec.Struct):
    state: str = ""


_state_decoder = msgspec.json.Decoder(_State)


def read_revocations(app: Celeriac, after: int) -> tuple[int, list[Revocation]]:
    """Revocations newer than sequence ``after``; returns the last sequence seen.

    An entry this version cannot read (written by hand or by another tool, or in a shape a
    newer celeriac uses) is skipped with a warning. It used to raise: the worker reading it
    exited, and so did every worker started while the stream held it.
    """
    last, revocations, _ = read_revocations_counted(app, after)
    return last, revocations


def read_revocations_counted(app: Celeriac, after: int) -> tuple[int, list[Revocation], bool]:
    """:func:`read_revocations`, and whether the read was full (``STREAM_LENGTH`` entries,
    unreadable ones included): then older revokes may have been trimmed unread."""
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
    return last, revocations, len(items) >= STREAM_LENGTH


class TerminateRevokes:
    """The ids revoked with ``terminate``, read from the revokes stream as they come (the
    latest ``STREAM_LENGTH`` at least): what a supervisor kills a child for, and what an
    asyncio child cancels a coroutine for (:mod:`celeriac.worker.aio_terminate`).

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> seen = TerminateRevokes()
        >>> revoke(app, "t1", terminate=True)
        False
        >>> seen.read(app), "t1" in seen, "t2" in seen
        (['t1'], True, False)
    """

    def __init__(self) -> None:
        self._seq = 0  # the last entry of the stream read
        self._ids: dict[str, None] = {}  # an ordered set, the oldest first

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def read(self, app: Celeriac) -> list[str]:
        """Read the revokes made since the last read; return the ids among them revoked
        with terminate.

        Raises:
            BrokerError: the broker did not answer (what was read before still holds).
        """
        self._seq, entries = read_revocations(app, self._seq)
        new = [e.id for e in entries if e.terminate]
        self._ids.update(dict.fromkeys(new))
        if len(self._ids) > 2 * STREAM_LENGTH:  # trimmed now and then, not per read
            self._ids = dict.fromkeys(list(self._ids)[-STREAM_LENGTH:])
        return new


def broadcast(
    app: Celeriac, command: str, *, target: str | None = None, timeout: float = 1.0
) -> list[Reply]:
    """Send a command to the live workers and collect their replies for up to ``timeout``.

    Example:
        >>> from celeriac import Celeriac
        >>> broadcast(Celeriac("doc", broker="memory://"), "ping", timeout=0.1)
        []
    """
    return ask(app, command, target=target, timeout=timeout)[0]


def ask(
    app: Celeriac, command: str, *, target: str | None = None, timeout: float = 1.0
) -> tuple[list[Reply], list[str]]:
    """:func:`broadcast`, and the ids of the live workers asked that gave no reply in time
    (frozen, stopping): left unsaid, ``inspect active`` read a frozen worker as idle.

    Example:
        >>> from celeriac import Celeriac
        >>> ask(Celeriac("doc", broker="memory://"), "ping", timeout=0.1)
        ([], [])
    """
    if not isinstance(command, str) or not (target is None or isinstance(target, str)):
        # Workers could not read such a command and exited (every live one, for a target).
        raise TypeError(f"broadcast: command and target are strings, got {command!r}, {target!r}")
    workers = [w.id for w in live_workers(app) if target in (None, w.id)]
    cmd = Command(uuid.uuid4().hex, command, target, time.time())
    return _collect(app, [cmd], [(w, f"reply:{cmd.id}:{w}") for w in workers], timeout)


def ask_each(
    app: Celeriac, command: str, worker_ids: Sequence[str], *, timeout: float = 1.0
) -> tuple[list[Reply], list[str]]:
    """:func:`ask` of each worker in ``worker_ids``, one command each, all sent at once and
    waited for together: a health check naming five workers of which some are frozen
    takes ``timeout``, not five times it.

    Example:
        >>> from celeriac import Celeriac
        >>> ask_each(Celeriac("doc", broker="memory://"), "ping", ["web-1:42:9f86d0"],
        ...          timeout=0.1)
        ([], ['web-1:42:9f86d0'])
    """
    if not isinstance(command, str) or not all(isinstance(w, str) for w in worker_ids):
        # As in ask(): a worker cannot read such a command (every one named would exit).
        raise TypeError(f"ask_each: command and worker ids are strings, got {command!r}")
    now = time.time()
    cmds = [Command(uuid.uuid4().hex, command, w, now) for w in worker_ids]
    awaited = [(w, f"reply:{c.id}:{w}") for w, c in zip(worker_ids, cmds, strict=True)]
    return _collect(app, cmds, awaited, timeout)


def _collect(
    app: Celeriac, cmds: list[Command], awaited: list[tuple[str, str]], timeout: float
) -> tuple[list[Reply], list[str]]:
    """Send ``cmds``, then read the (worker, reply key) pairs of ``awaited`` until all have
    answered or ``timeout`` passed: the replies, and the workers that gave none."""
    broker = app.broker
    if cmds:  # -w of a host with no live worker: nothing to send (SQLite: no write)
        broker.stream_append(CONTROL, [msgspec.json.encode(c) for c in cmds], 1000)
    keys = [key for _, key in awaited]
    deadline = time.monotonic() + timeout
    while True:
        values = broker.kv_get(keys) if keys else []
        if all(v is not None for v in values) or time.monotonic() > deadline:
            replies = [
                Reply(w, msgspec.json.decode(v))
                for (w, _), v in zip(awaited, values, strict=True)
                if v is not None
            ]
            return replies, [w for (w, _), v in zip(awaited, values, strict=True) if v is None]
        time.sleep(0.02)


def reply(app: Celeriac, command: Command, worker_id: str, data: Any) -> None:
    """Answer a command (worker side)."""
    app.broker.kv_set(f"reply:{command.id}:{worker_id}", msgspec.json.encode(data), REPLY_TTL)
