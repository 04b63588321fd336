"""Reading a delivery before its task runs: decode, resolve, refuse.

A mixin of :class:`~celeriac.worker.executor.Executor`, kept apart so each module stays
small. Whatever a message holds, reading it never raises: a message that cannot be read
or acted on is dead-lettered naming why, one of a newer protocol or an unknown task is
put back for a worker that can run it, and one handed out more often than its task allows
is dead-lettered before it is decoded (its decoding may be what killed the workers).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import time
import traceback
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from celeriac.brokers.records import MADE_UP_ID, Delivery
from celeriac.codec import UntrustedMessage
from celeriac.control import has_revoke_mark
from celeriac.errors import BrokerError, MalformedMessage, NewerProtocol
from celeriac.message import (
    NAME_SHOWN,
    ErrorInfo,
    Message,
    error_args,
    invalid_field,
    peek_identity,
    storable_text,
)
from celeriac.middleware.base import Job, Outcome
from celeriac.middleware.expiry import expired
from celeriac.middleware.verdicts import Verdicts, verdict_key
from celeriac.task import Request, Task, unimportable_note, unimported_note
from celeriac.text import cut, error_text, error_type, printable
from celeriac.worker.death_notes import death_key, how_it_died, last_death, shared_with
from celeriac.worker.outage import Outage

if TYPE_CHECKING:
    from celeriac.app import Celeriac

log = logging.getLogger("celeriac.worker")


class Reading:
    """Turns a delivery into a Job and, when it must not run, the Outcome that settles it."""

    app: Celeriac
    worker_id: str
    contain_exits: bool
    _oversized_said: float
    _unknown_notes: dict[str, str]
    #: Leave the revoke read of an unknown task to :meth:`unless_revoked`: the asyncio
    #: pool reads on its loop's thread, where a broker call would stall every task.
    revoke_reads_later: bool = False

    # -- preparing ----------------------------------------------------------------------

    def prepare(self, delivery: Delivery) -> tuple[Job, Outcome | None]:
        """Decode and resolve a delivery; an Outcome when it must not run at all.

        Never raises for what a message holds: whatever reading or resolving it raises
        dead-letters that one message, and a message handed out more often than any task
        it may name allows is dead-lettered before it is read. Both ended in a crash loop:
        an error here killed the child before its slot named the task, and a message whose
        decoding kills the process (a segfault unpickling it) was read again, never
        counted against ``task_max_deliveries``, at every delivery.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.brokers.base import Lease
            >>> from celeriac.worker.executor import Executor
            >>> executor = Executor(Celeriac("doc", broker="memory://"), "doc-worker")
            >>> delivery = Delivery(Lease("a1", "default", "t1"), b'{"id": "a1"', 1)
            >>> executor.prepare(delivery)[1].state
            'DEAD'
        """
        job = Job(delivery, self.worker_id, app=self.app)
        most = self.app.conf.task_max_deliveries
        if delivery.deliveries > most:  # rare: only then is the body peeked at
            unread = self._over_limit_unread(job, most)
            if unread is not None:
                return job, unread
        try:
            return job, self._resolve(job, most)
        except Exception as exc:  # noqa: BLE001 - one message's problem, not the worker's
            return job, self._unreadable(job, exc)
        except (SystemExit, KeyboardInterrupt) as exc:  # raised by an unpickled object
            if not self.contain_exits:
                raise
            return job, self._unreadable(job, exc)

    def _resolve(self, job: Job, max_deliveries: int) -> Outcome | None:
        """What :meth:`prepare` does, given the app's ``task_max_deliveries``."""
        delivery = job.delivery
        refused = self._read(job)
        if refused is not None:
            return refused
        message = job.message
        assert message is not None
        wrong = invalid_field(message)
        if wrong is not None:
            # Readable but not runnable as sent: run, it was retried without end, killed at
            # once or expired unrun. Dead-lettered, it can be fixed and replayed.
            return Outcome(
                "DEAD",
                reason=(
                    f"malformed message: task {shown(message.task)}[{shown(message.id)}]: "
                    f"{wrong}. Fix the producer that sent it"
                ),
            )
        made_up = delivery.id.startswith(MADE_UP_ID)
        if made_up and message.id and not message.id.startswith(MADE_UP_ID):
            # Pushed into a Redis list by hand or by another language's producer, not sent:
            # the broker made up the id it is held under, and run here its result (and its
            # retries' state) were stored under that made-up id, so the sender waited on
            # its own id for ever. Settling sends it again under its own id (one task per
            # id, as any send) and acks this copy. Signed copies were refused in _read. An
            # id given with the message (Outgoing.id) stays the task's, as before.
            return Outcome(
                "MOVED",
                reason=(
                    f"delivered under an id the broker made up, not its own; sent again as "
                    f"task {shown(message.task)}[{shown(message.id)}] (pushed into the "
                    "queue by hand? send with app.send_task or `celeriac call` instead)"
                ),
            )
        self._check_size(job)
        task = self.app.tasks.get(message.task)
        given = task.options.max_deliveries if task is not None else None
        own = given is not None
        if given is not None:
            max_deliveries = given
        if delivery.deliveries > max_deliveries:
            verdict, death = self._notes(delivery)
            if verdict is None:  # else the Verdicts middleware settles it, unrun
                reason = too_many(delivery.deliveries, max_deliveries, own=own)
                reason += last_death(death)
                return Outcome("DEAD", reason=reason)
        elif delivery.deliveries == max_deliveries > 1 and task is not None:
            self._alone_if_shared(job, max_deliveries)
        unfit = None if task is None else _unfit(task, message)
        if task is None or unfit is not None:
            return self._unknown(job, unfit or "")
        job.task = task
        job.request = Request(
            id=message.id,
            task=message.task,
            args=message.args,
            kwargs=message.kwargs,
            retries=message.retries,
            delivery_count=delivery.deliveries,
            queue=message.queue,
            priority=message.priority,
            eta=message.eta,
            expires=message.expires,
            root_id=message.root_id,
            parent_id=message.parent_id,
            headers=message.headers,
            worker=self.worker_id,
            message=message,
        )
        return None

    def _notes(self, delivery: Delivery) -> tuple[bytes | None, bytes | None]:
        """The verdict recorded for this delivery's task (its hard limit, a revoke with
        terminate, descriptors it closed), and how its worker child last died (see
        :func:`death_key`), in one broker read, made only for a delivery at or over its limit.

        A verdict means the Verdicts middleware settles it unrun: the kill that recorded
        it counted a delivery, and a task with ``max_deliveries=1`` was then dead-lettered
        as "started once without finishing (the worker crashed...)", a Reject where its
        caller expects TimeLimitExceeded, in a dead-letter queue whose replay would run it
        again, and its verdict was left in the store.
        """
        try:
            verdict, death = self.app.broker.kv_get(
                [verdict_key(delivery.id), death_key(delivery.id)]
            )
        except BrokerError:
            return None, None  # dead-lettered as over its limit, as before
        if not any(isinstance(m, Verdicts) for m in self.app.middleware.middleware):
            verdict = None  # nothing would settle it: over its limit, as before
        return verdict, death

    def _alone_if_shared(self, job: Job, limit: int) -> None:
        """Mark ``job`` to run alone when this, its last delivery of ``limit``, follows a
        death it shared with other tasks (see :mod:`celeriac.worker.death_notes`): each
        of them was counted, though at most one killed the child. Alone, a death is its
        own. One read, made only at a redelivery's last allowed delivery."""
        verdict, death = self._notes(job.delivery)
        others = shared_with(death)
        if verdict is not None or death is None or not others:
            return
        job.alone = True
        log.warning(
            "task %s: its worker child died (%s) the last time, while it ran beside %d "
            "other task(s), and this is its last delivery of %d; it runs alone now (the "
            "child's other tasks wait for it), so that a death is its own: dead-lettered if "
            "it dies again",
            label(job),
            printable(how_it_died(death)),
            others,
            limit,
        )

    def _over_limit_unread(self, job: Job, most: int) -> Outcome | None:
        """The dead letter of a delivery past its limit, decided without decoding it; None
        when the task it names (peeked at), or any task here when none can be peeked at
        (pickle), may still run it.

        Checked before reading: a message whose decoding kills the process was counted at
        every death but read again each time, so the limit never applied to it. The first
        delivery over the limit is still read, and dead-lettered by the ordinary check: it
        knows the task, so a workflow the message belongs to fails with it (unread, a
        chord waited for ever on that member). Only if that reading died too is the next
        delivery refused unread.
        """
        delivery = job.delivery
        name = peek_name(delivery.body)
        if name is None:  # any task here may be the one it names: the largest limit
            limits = (t.options.max_deliveries for t in self.app.tasks.values())
            limit = max([most, *(n for n in limits if n is not None)])
            own = limit != most
        else:
            task = self.app.tasks.get(name)
            given = task.options.max_deliveries if task is not None else None
            limit, own = (most, False) if given is None else (given, True)
        if delivery.deliveries <= limit + 1:
            return None
        return Outcome(
            "DEAD",
            reason=(
                f"{too_many(delivery.deliveries, limit, own=own)}"
                f"{last_death(self._notes(delivery)[1])}"
                ". It was not decoded either: the worker stopped while reading it, past the "
                "limit, so reading it may be what stopped the worker each time"
            ),
        )

    def _unreadable(self, job: Job, exc: BaseException) -> Outcome:
        """The dead letter of a delivery that reading or resolving raised ``exc`` for.

        Raised, it killed the child before its slot named the task, and the message was
        put back to do it again, for ever. The exception is the dead letter's error and is
        logged with its traceback: it is a message no producer of this version sends, or a
        bug in reading one.
        """
        body = job.delivery.body
        log.error(
            "task %s: reading its message raised %s; dead-lettering it (see `celeriac dlq "
            "list`). If a celeriac producer sent it, please report this traceback",
            label(job),
            type(exc).__name__,
            exc_info=exc,
        )
        error = error_info(exc)
        return Outcome(
            "DEAD",
            reason=(
                f"malformed message: reading it raised {type(exc).__name__} (first bytes: "
                f"{body[:60]!r}). Fix the producer that sent it, or report the traceback "
                "in the worker's log"
            ),
            error=error,
            exception=exc,
        )

    def _read(self, job: Job) -> Outcome | None:
        """Decode the delivery into ``job.message``; the dead letter when it cannot run."""
        delivery = job.delivery
        try:
            message = job.message = self.app.codec.decode(delivery.body)
        except UntrustedMessage as exc:
            return Outcome("DEAD", reason=f"refused: {exc}")
        except NewerProtocol as exc:
            return self._newer(job, exc)
        except MalformedMessage as exc:
            return Outcome("DEAD", reason=f"malformed message: {exc}")
        except RecursionError:
            # msgspec gives up on nesting past Python's recursion limit with RecursionError,
            # not a DecodeError: uncaught, it killed the child at every delivery.
            return Outcome(
                "DEAD",
                reason=(
                    "malformed message: nested too deeply to decode (arrays or objects "
                    "inside one another ~1000 levels deep); first bytes: "
                    f"{delivery.body[:60]!r}"
                ),
            )
        if message.id != delivery.id and self.app.codec.keys:
            # The signature covers the body, not the id the broker holds it under: a
            # signed message copied into a queue (pushed by hand, its id made up by the
            # broker) would run again, past the one-task-per-id rule. Sent the normal way,
            # both ids are the same.
            return Outcome(
                "DEAD",
                reason=(
                    f"refused: a signed message of task {message.task}[{message.id}] was "
                    f"delivered under another id ({delivery.id}), so it is a copy (a replay?) "
                    "pushed into the queue, not a send. Signed messages run only under their "
                    "own id; send the task again with app.send_task or `celeriac call`."
                ),
            )
        return None

    def _check_size(self, job: Job) -> None:
        """Say so when a delivery is over task_payload_max_bytes; it runs all the same.

        Only a producer with another limit (another language, another version or setting)
        sends one. Refused here it would be lost or dead-lettered while its bytes already sit
        in the broker, which is what the limit protects: it runs, and the log names the
        task and the setting to fix. Said once per Outage.REPEAT seconds, not per message.
        """
        size, limit = len(job.delivery.body), self.app.conf.task_payload_max_bytes
        if size <= limit:
            return
        now = time.monotonic()
        if now - self._oversized_said < Outage.REPEAT:
            return
        self._oversized_said = now
        log.warning(
            "task %s: its message is %s bytes, over task_payload_max_bytes (%s), so its "
            "producer has another limit (another version, language or setting); running it "
            "all the same. Messages this large fill the broker's memory: make that producer "
            "pass ids instead of data, or give it this limit. Said once per %.0fs for every "
            "message it happens to.",
            label(job),
            f"{size:,}",
            f"{limit:,}",
            Outage.REPEAT,
        )

    def _unknown(self, job: Job, unfit: str = "") -> Outcome:
        """A task this worker does not know, or (``unfit``: why) whose function cannot
        take the arguments it was sent: another version's message, put back for a worker
        of that version, dead-lettered after task_unknown_max_age. Run, a positional
        argument a newer producer added failed the task for good (a message from a newer
        producer must not fail, nor vanish, in an older worker)."""
        message = job.message
        assert message is not None
        conf = self.app.conf
        if self._revoked(job):
            return self._revoked_unknown(job)
        late = expired(message, job.delivery.deliveries)
        if late is not None:
            # Expired waiting for a worker that knows it: it was put back every
            # task_unknown_retry_delay, then dead-lettered, where any worker that knew it
            # would have expired it (a periodic tick of a mistyped task: one more each tick).
            # Said why: a tick passed over by workers of older code read as one no worker
            # had been free to start.
            why = f"cannot take its arguments ({unfit})" if unfit else "does not know the task"
            late.reason = (
                f"{late.reason}; this worker {why}, so workers of another version may have "
                "passed it over meanwhile"
            )
            return self._told(job, late)
        if not unfit and len(message.task) > NAME_SHOWN:
            # No task has such a name (a registered one of any length still runs). Put back
            # for task_unknown_max_age, it wrote its whole name in a log line per deferral.
            return Outcome(
                "DEAD",
                reason=(
                    f"malformed message: task {shown(message.task)}[{shown(message.id)}]: "
                    f"its name is {len(message.task):,} characters long, and no task here "
                    "has such a name. Fix the producer that sent it"
                ),
            )
        if not self._sent_at_readable(message.sent_at) and conf.task_unknown_max_age > 0:
            # No send time (a message built by hand or by another language's producer), or
            # none that can be counted from (NaN, in the future): its age could never reach
            # task_unknown_max_age, so it would be put back for ever. Its age counts from
            # now, written into the message it is put back as.
            return self._defer_unknown(job, self._stamped(job), unfit)
        if self._past_max_age(message.sent_at):  # task_unknown_max_age=0: at once
            within = f"took it within task_unknown_max_age={conf.task_unknown_max_age:g}s"
            if unfit:
                why = f"arguments that do not fit: {unfit}; no worker that could take them "
            else:
                why = f"unknown task: no worker that knows {message.task} "
            return Outcome("DEAD", reason=why + within)
        return self._defer_unknown(job, None, unfit)

    def _stamped(self, job: Job) -> bytes | None:
        """The message with ``sent_at`` set to now, encoded; None when it cannot be."""
        message = job.message
        assert message is not None
        message.sent_at = time.time()
        try:
            return self.app.codec.encode(message, like=job.delivery.body)
        except Exception:  # noqa: BLE001 - it was just decoded; put back as it came
            return None

    def _revoked_unknown(self, job: Job) -> Outcome:
        """REVOKED for a revoked message of a task this worker does not know, told to the
        middleware as a skipped task is (Canvas continues its chain or chord, errbacks
        fire). The Revocation middleware sees only tasks this worker runs: such a message
        (a typo sent anyway, a step for another service) was put back, and "not
        registered" said, every task_unknown_retry_delay until task_unknown_max_age."""
        return self.app.middleware.after_execute(
            job, Outcome("REVOKED", reason="revoked before it started")
        )

    def _revoked(self, job: Job) -> bool:
        """Whether the task has a revoke mark: one read, on this rare path only. A broker
        error is no: the message is put back and asked about again at its next delivery.
        With :attr:`revoke_reads_later`, no now: the job is marked for
        :meth:`unless_revoked`."""
        if self.revoke_reads_later:
            job.context[_DUE] = _Due()
            return False
        return self._has_revoke_mark(job)

    def _has_revoke_mark(self, job: Job) -> bool:
        try:
            return has_revoke_mark(self.app.broker, job.delivery.id)
        except BrokerError:
            return False

    def unless_revoked(self, job: Job, outcome: Outcome) -> Outcome:
        """``outcome``, or REVOKED when :meth:`prepare` left the revoke read of a task this
        worker does not run to this call (see :attr:`revoke_reads_later`) and it has a
        revoke mark. A blocking call: the asyncio pool makes it in a thread.

        Example:
            >>> from celeriac import Celeriac
            >>> from celeriac.control import revoke
            >>> from celeriac.worker.executor import Executor
            >>> app = Celeriac("doc", broker="memory://")
            >>> revoke(app, app.send_task("not.deployed").id)
            False
            >>> executor = Executor(app, "doc-worker")
            >>> executor.revoke_reads_later = True
            >>> fetch = app.broker.fetch
            >>> (delivery,) = fetch(["default"], "w", limit=1, lease_seconds=9, timeout=0)
            >>> job, outcome = executor.prepare(delivery)
            >>> outcome.state, executor.unless_revoked(job, outcome).state
            ('DEFERRED', 'REVOKED')
        """
        due: _Due | None = job.context.pop(_DUE, None)
        if due is None:
            return outcome
        if self._has_revoke_mark(job):
            return self._revoked_unknown(job)
        if due.warning is not None:
            log.warning(*due.warning)
        return self.app.middleware.after_execute(job, outcome) if due.tell else outcome

    @staticmethod
    def revoke_read_due(job: Job) -> bool:
        """Whether :meth:`prepare` left a revoke read to :meth:`unless_revoked` for ``job``
        (see :attr:`revoke_reads_later`): the asyncio pool hops to a thread only then.

        Example:
            >>> from celeriac.brokers.records import Delivery, Lease
            >>> Reading.revoke_read_due(Job(Delivery(Lease("a1", "q", "t"), b"{}", 1), "w"))
            False
        """
        return _DUE in job.context

    def _told(self, job: Job, outcome: Outcome) -> Outcome:
        """``outcome`` told to the middleware as a skipped task's is, now, or by
        :meth:`unless_revoked` when the revoke read is still due there (told twice, a
        chain read "expired earlier" of a step settled REVOKED; and Canvas wrote on the
        asyncio pool's loop thread)."""
        due = job.context.get(_DUE)
        if due is not None:
            due.tell = True
            return outcome
        return self.app.middleware.after_execute(job, outcome)

    def _warn(self, job: Job, *args: Any) -> None:
        """``log.warning(*args)``, or when the job's revoke read is still due, at
        :meth:`unless_revoked` unless it finds a revoke ("putting it back", then dropped)."""
        due = job.context.get(_DUE)
        if due is not None:
            due.warning = args
        else:
            log.warning(*args)

    def _defer_unknown(self, job: Job, stamped: bytes | None, unfit: str = "") -> Outcome:
        conf = self.app.conf
        if unfit:
            self._warn(
                job,
                "task %s cannot take the arguments it was sent (%s): sent by code of another "
                "version? Putting it back for %gs so a worker of that version can take it "
                "(%s). Deploy one version of the task (`celeriac check --against` compares "
                "two before a deploy), or, if it must not run, revoke it (celeriac revoke %s).",
                job.label,
                printable(unfit),
                conf.task_unknown_retry_delay,
                _dead_lettered_when(conf.task_unknown_max_age),
                shlex.quote(printable(job.delivery.id)),
            )
            return Outcome(
                "DEFERRED",
                delay=conf.task_unknown_retry_delay,
                reason="arguments do not fit",
                body=stamped,
            )
        self._warn(
            job,
            "task %s is not registered in this worker; putting it back for %gs so a worker "
            "that knows it can take it (%s). Deploy the code that defines it, or, if it must "
            "not run, revoke it (celeriac revoke %s; many: celeriac peek QUEUE --task NAME "
            "--ids -n 10000 | celeriac revoke -).%s",
            job.label,
            conf.task_unknown_retry_delay,
            _dead_lettered_when(conf.task_unknown_max_age),
            shlex.quote(printable(job.delivery.id)),
            printable(self._unknown_note(job.message.task if job.message else "")),
        )
        return Outcome(
            "DEFERRED", delay=conf.task_unknown_retry_delay, reason="unknown task", body=stamped
        )

    def _newer(self, job: Job, exc: NewerProtocol) -> Outcome:
        """A newer producer's message: put back unchanged for an upgraded worker, as an
        unknown task is (a rolling deploy that upgrades producers first loses nothing), and
        dead-lettered with the advice once no upgraded worker took it in time."""
        conf = self.app.conf
        if self._revoked(job):  # put back for an upgraded worker, it would run nowhere
            return self._revoked_unknown(job)
        if not self._sent_at_readable(exc.sent_at):
            # No send time to count from (none, NaN, far in the future), and this version
            # cannot write one: put back, it would wait for ever.
            return Outcome("DEAD", reason=f"malformed message: {exc}")
        if self._past_max_age(exc.sent_at):
            return Outcome(
                "DEAD",
                reason=(
                    f"malformed message: {exc}; no upgraded worker took it within "
                    f"task_unknown_max_age={conf.task_unknown_max_age:g}s"
                ),
            )
        self._warn(
            job,
            "%s Putting it back for %gs so an upgraded worker can take it (%s).",
            printable(str(exc)),
            conf.task_unknown_retry_delay,
            _dead_lettered_when(conf.task_unknown_max_age),
        )
        return Outcome("DEFERRED", delay=conf.task_unknown_retry_delay, reason="newer protocol")

    def _unknown_note(self, task_name: str) -> str:
        """Why this worker may not know the task: defined in ``__main__``, in a module it
        could import but never did (see :func:`celeriac.task.unimported_note`), or known
        here under another module path."""
        note = self._unknown_notes.get(task_name)
        if note is None:  # worked out once per name: a deploy's flood repeats a few names
            note = self._unknown_notes[task_name] = (
                unimportable_note(task_name)
                or unimported_note(task_name)
                or _known_as(task_name, self.app.tasks)
            )
        return note

    def _sent_at_readable(self, sent_at: float) -> bool:
        """Whether a message's age can be counted from ``sent_at``: a time after 1970 and
        not past now by more than task_unknown_max_age (a producer's clock may run ahead
        a little; NaN fails both)."""
        return 0 < sent_at <= time.time() + self.app.conf.task_unknown_max_age

    def _past_max_age(self, sent_at: float) -> bool:
        """Whether a message sent at ``sent_at`` waited task_unknown_max_age for a worker
        that can run it. max: sent_at is rounded, and a producer's clock may run ahead."""
        return max(time.time() - sent_at, 0.0) >= self.app.conf.task_unknown_max_age


def error_info(exc: BaseException) -> ErrorInfo:
    """An exception as stored in a result: qualified type, message, traceback text.

    Text that UTF-8 cannot carry (a lone surrogate, as in a file name decoded with
    ``surrogateescape``) is kept with backslash escapes, so the error can always be stored.

    Example:
        >>> name = "report-" + chr(0xDCFF) + ".csv"  # b"report-\\xff.csv", surrogateescape
        >>> print(error_info(FileNotFoundError(f"missing {name}")).message)
        missing report-\\udcff.csv
    """
    message = error_text(exc)
    whole = traceback.TracebackException.from_exception(exc, compact=True)  # as format_exception
    text = "".join(_without_our_frames(whole).format())
    return ErrorInfo(
        type=error_type(exc),
        message=storable_text(message),
        traceback=storable_text(text),
        args=error_args(exc, message),
    )


#: Where celeriac's own code lives: the frames a failed task's traceback starts with.
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _without_our_frames(te: traceback.TracebackException) -> traceback.TracebackException:
    """``te`` without the worker's frames in front of the task's own (the executor's call
    of the function): the traceback read at 3 a.m. starts at the task. Frames after it are
    kept, celeriac's included (a ``delay()`` the task made that failed); an error raised in
    celeriac alone (no frame of the task) keeps every frame."""
    stack = te.stack
    first = next((i for i, f in enumerate(stack) if not f.filename.startswith(_OURS)), None)
    if first:  # 0: nothing to drop; None: no frame of the task's
        te.stack = traceback.StackSummary.from_list(stack[first:])
    return te


def label(job: Job) -> str:
    """``name[id]`` as :attr:`Job.label`, each part cut by :func:`shown`."""
    name = job.message.task if job.message else "?"
    return f"{shown(name)}[{shown(job.delivery.id)}]"


def shown(text: str) -> str:
    """A task name or id from a message, as a reason or a log line shows it: escaped, and
    cut to NAME_SHOWN characters (a producer can send a name of megabytes).

    Example:
        >>> print(shown("x" * 300))  # doctest: +ELLIPSIS
        xxx...x... (300 characters)
    """
    return cut(printable(text), NAME_SHOWN)


def peek_name(body: bytes) -> str | None:
    """The task name in ``body`` read without decoding it as a message; None when it
    cannot be read so (pickle, not a mapping, or reading it raised: a dead letter must be
    written whatever the bytes hold)."""
    try:
        return peek_identity(body)[1]
    except Exception:  # noqa: BLE001 - best effort: the name only labels the letter
        return None


def too_many(deliveries: int, limit: int, *, own: bool = False) -> str:
    """Why a message handed out ``deliveries`` times is dead-lettered, over ``limit``:
    the app's ``task_max_deliveries``, or with ``own`` the task's own ``max_deliveries``
    (named as the setting, it sent a reader to a setting that was not the limit).

    Example:
        >>> print(too_many(6, 5))  # doctest: +NORMALIZE_WHITESPACE
        started 5 times without finishing (the worker crashed, was killed or lost its lease
        each time), so this delivery, the 6th, was not run; limit task_max_deliveries=5
        >>> too_many(2, 1, own=True).endswith("limit: the task's max_deliveries=1")
        True
    """
    setting = f": the task's max_deliveries={limit}" if own else f" task_max_deliveries={limit}"
    return (
        f"started {times(deliveries - 1)} without finishing (the worker crashed, was killed "
        f"or lost its lease each time), so this delivery, the {ordinal(deliveries)}, was "
        f"not run; limit{setting}"
    )


def times(n: int) -> str:
    """``1`` -> ``'once'``, ``3`` -> ``'3 times'``."""
    return "once" if n == 1 else f"{n} times"


def ordinal(n: int) -> str:
    """``3`` -> ``'3rd'``.

    Example:
        >>> [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)]
        ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd']
    """
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def _unfit(task: Task[Any, Any], message: Message) -> str | None:
    """Why ``task``'s function cannot take ``message``'s arguments, or None. Keywords it
    does not take are left out: they are dropped when it runs, or refused with
    task_strict_kwargs (ArgumentsRefused).

    A chunk's argument lists are checked one by one; a workflow step that will not run
    is not checked. A decorated function (``__wrapped__``) is checked only for too many
    positional arguments: a decorator may supply arguments (``db=``) its wrapper's
    callers do not, but none takes more than the function it wraps.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task(name="shop.process")
        ... def process(order: int) -> None: ...
        >>> _unfit(process, Message(id="t1", task="shop.process", args=[5, "x"]))
        'too many positional arguments; the function is process(order)'
    """
    canvas = message.options.get("canvas") if message.options else None
    if isinstance(canvas, dict):
        if canvas.get("abort"):
            return None  # it will not run, and lacks what it awaited
        if canvas.get("chunk"):
            return _unfit_chunk(task, message.args)
    arguments = task.arguments
    problem = arguments.problem(message.args, message.kwargs)  # per message: the fast path
    if problem is None:
        return None
    if hasattr(task.fn, "__wrapped__"):
        return problem if len(message.args) > arguments.most else None
    if message.kwargs and arguments.keywords is not None:
        kwargs = {k: v for k, v in message.kwargs.items() if k in arguments.keywords}
        problem = arguments.problem(message.args, kwargs)
    return problem


def _unfit_chunk(task: Task[Any, Any], args: list[Any]) -> str | None:
    """Why one of a chunk's calls cannot take its argument list (see :func:`_unfit`)."""
    if len(args) != 1 or not isinstance(args[0], list):
        return None  # not a chunk's shape: running it says what is wrong
    decorated = hasattr(task.fn, "__wrapped__")
    for number, call in enumerate(args[0]):
        if not isinstance(call, list):
            return None
        problem = task.arguments.problem(call, None)
        if problem is not None and (not decorated or len(call) > task.arguments.most):
            return f"call {number} of the chunk: {problem}"
    return None


@dataclasses.dataclass
class _Due:
    """What :meth:`Reading.unless_revoked` owes a job (``Job.context[_DUE]``): the revoke
    read, then, if it finds none, telling the middleware (``tell``) and the warning
    prepare had for the log."""

    tell: bool = False
    warning: tuple[Any, ...] | None = None


_DUE = "celeriac.revoke_read_due"


def _dead_lettered_when(max_age: float) -> str:
    """When a message put back for another worker is dead-lettered, for a log line: it
    said "putting it back for 10s (dead-lettered after 5s)", the age counting from the
    send, unsaid."""
    return f"dead-lettered at a delivery past task_unknown_max_age={max_age:g}s from its send"


def _known_as(task_name: str, tasks: Collection[str]) -> str:
    """A registered task the sender may have meant, for the unknown-task warning: the same
    function under another module path (``qs.tasks.send`` sent, ``tasks.send`` here: the
    producer and the worker import the module by different names), or a near spelling.

    Example:
        >>> _known_as("qs.tasks.send_welcome", ["tasks.send_welcome", "tasks.other"])
        " This worker has 'tasks.send_welcome': a task's name is its module's import path, \
so the producer and the worker must import the module the same way (-A qs.tasks)."
    """
    # One name the other's dotted tail: the same module imported under two paths.
    same = [t for t in tasks if t.endswith(f".{task_name}") or task_name.endswith(f".{t}")]
    if len(same) == 1:
        module = task_name.rpartition(".")[0]
        return (
            f" This worker has {same[0]!r}: a task's name is its module's import path, so the "
            f"producer and the worker must import the module the same way (-A {module})."
        )
    import difflib  # this path only: a message no task here takes

    close = difflib.get_close_matches(task_name, list(tasks), n=1, cutoff=0.85)
    return f" Did you mean {close[0]!r}?" if close else ""
