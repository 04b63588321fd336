"""Dedupe and debounce, for trigger-driven work.

* ``apply_async(dedupe_key="sync:42", dedupe_ttl=60)``: while a task with that key is
  queued (a retry waiting out its backoff too), or, with ``dedupe_mode="running"``, until
  it finishes (never longer than the TTL), sending again returns the first task's handle
  and sends nothing.
* ``apply_async(debounce=5, debounce_key="sync:42")``: a burst of sends within 5 s runs
  once, 5 s after the last send, with the last send's arguments. Earlier sends of the
  burst end REVOKED ("superseded").

Both keep their state in the broker's small store, so they hold across producers and hosts.
The same options given to ``@app.task`` apply to every send of the task.

A key belongs to its task: ``sync.apply_async(dedupe_key="acct:42")`` and
``notify.apply_async(dedupe_key="acct:42")`` both run. Keys were shared by every task: the
second send was handed the first task's id (its caller got ``sync``'s result for
``notify``), and a debounced send superseded another task's send, which then never ran.
The producer writes the scoped key (``<task>:<key>``) back into the message, and workers
use the key the message carries, so old and new producers and workers can run side by
side during a deploy; only a send from an old producer and one from a new producer do not
dedupe against each other.

A task of a workflow (chain, group, chord) always runs under the id its workflow gave it:
its workflow waits for that id. It takes its dedupe key when the key is free, so plain
sends are deduped against it, but it is never replaced by the task that holds the key
(the workflow then waited forever).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from celeriac.control import is_revoke_mark
from celeriac.errors import BrokerError
from celeriac.message import Message
from celeriac.middleware.base import Job, Middleware, Outcome, is_seconds, option_error
from celeriac.middleware.flow import sending_workflow

log = logging.getLogger("celeriac.dedupe")

# Outcomes after which the task will not run again: its dedupe key is free.
_ENDED = frozenset({"SUCCESS", "FAILURE", "EXPIRED", "REVOKED", "DEAD"})
# Outcomes that put the message back in its queue, to run later.
_QUEUED_AGAIN = frozenset({"DEFERRED", "RETRY"})
# A key outlives its message's expiry by this much: a worker whose clock is behind may still
# start the task, and a send meanwhile would run it twice.
_EXPIRY_GRACE = 1.0
# Seconds a task waits when its debounce mark or dedupe key could not be read or freed.
_UNREACHABLE_DELAY = 1.0

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Broker
    from celeriac.task import Task


class Dedupe(Middleware):
    """Producer-side dedupe and debounce, and their worker-side clean-up."""

    options = frozenset({"dedupe_key", "dedupe_ttl", "dedupe_mode", "debounce", "debounce_key"})

    def check_options(self, app: Celeriac, task: str, options: dict[str, Any]) -> None:
        """Refuse a TTL, wait or mode that every send (or worker) of the task would fail
        on: ``dedupe_mode="queud"`` was taken as "running", ``dedupe_ttl="1h"`` failed
        every send.

        Example:
            >>> from celeriac import Celeriac
            >>> Dedupe().check_options(Celeriac("doc", broker="memory://"), "shop.sync",
            ...                        {"dedupe_mode": "queud"})
            Traceback (most recent call last):
            celeriac.errors.ConfigurationError: task shop.sync: dedupe_mode must be 'queued' \
(the key is freed when the task starts) or 'running' (when it finishes), got 'queud'
        """
        mode = options.get("dedupe_mode", "queued")
        if mode not in ("queued", "running"):
            raise option_error(
                task,
                "dedupe_mode",
                mode,
                "'queued' (the key is freed when the task starts) or 'running' (when it finishes)",
            )
        for option in ("dedupe_key", "debounce_key"):
            if options.get(option) == "":
                # A key built from an empty field (f"{order.ref}") made every such send
                # share one key: all but one of them were dropped, each order's own work.
                raise option_error(
                    task,
                    option,
                    "",
                    "a non-empty key (every send with an empty one would share it, and all "
                    "but one of them would be dropped)",
                )
        for option, over_zero in (("dedupe_ttl", True), ("debounce", False)):
            if option in options and not is_seconds(options[option], over_zero=over_zero):
                least = "over 0" if over_zero else "at least 0"
                raise option_error(
                    task, option, options[option], f"a finite number of seconds, {least}"
                )

    def send_blocks(self, app: Celeriac, message: Message) -> bool:
        """True for a message with a dedupe key or debounce (its own or its task's): the
        send hook reads and writes them in the broker."""
        if not _SEND_OPTIONS.isdisjoint(message.options):
            return True
        task = app.tasks.get(message.task)
        return task is not None and not _SEND_OPTIONS.isdisjoint(task.options.extra)

    def before_send(self, app: Celeriac, message: Message) -> str | None:
        """Return an existing task id to send nothing; arm debounce on this message."""
        opts = message.options
        task = app.tasks.get(message.task)
        if task is not None and (defined := task.options.extra):
            # @app.task(debounce=5) and the like: accepted there, then ignored by every send.
            # Written into the message, where workers (of any version) read them.
            for name in self.options & defined.keys():
                opts.setdefault(name, defined[name])
        if "debounce" in opts:
            self._debounce(app, message)
        key = opts.get("dedupe_key")
        if key is None:
            return None
        key = opts["dedupe_key"] = scoped(message.task, key)
        ttl = float(opts.get("dedupe_ttl", 3600))
        store = f"dedupe:{key}"
        life = _key_life(message, ttl)
        if life <= 0:
            return None  # expired already: it will never run, so it stands for nothing
        broker = app.broker
        for _ in range(3):  # the holder may end between our calls: try again
            if broker.kv_set(store, message.id.encode(), life, only_if_absent=True):
                return None
            if sending_workflow():
                log.info(
                    "task %s[%s] is sent by a workflow, which waits for this id: it is sent "
                    "although another task holds its dedupe key %r",
                    message.task,
                    message.id,
                    key,
                )
                return None
            (held,) = broker.kv_get([store])
            if held is None:
                continue
            holder = held.decode()
            found = broker.get_result(holder)
            if found is not None and found[1] and not _may_still_run(opts, found[0]):
                # The holder ended (revoked while queued, or a worker died between its
                # commit and freeing the key) and will not run again: the key is stale.
                # Kept, it handed every send of the TTL a task that never runs again.
                log.info(
                    "task %s[%s]: dedupe key %r was still held by task %s, which has ended; "
                    "freed, and this send takes it",
                    message.task,
                    message.id,
                    key,
                    holder,
                )
                _free(broker, store, holder)
                continue
            # DEBUG: dropping duplicates is what the key is for (a trigger sent on every
            # page view); the caller gets the holder's handle, and at INFO a busy key
            # would fill the log.
            log.debug(
                "task %s[%s] was not sent: its dedupe key %r is held by task %s, which has "
                "not finished (queued, running or waiting to retry); this call returns that "
                "task's handle. The key is freed when that task %s, or at the latest %.0fs "
                "(dedupe_ttl) after it was sent. If it was purged or lost, free the key with "
                "celeriac.middleware.dedupe.release_dedupe_key(app, %r, %r)",
                message.task,
                message.id,
                key,
                holder,
                "starts" if opts.get("dedupe_mode", "queued") == "queued" else "finishes",
                ttl,
                message.task,
                key.removeprefix(f"{message.task}:"),
            )
            return holder
        return None

    def send_failed(self, app: Celeriac, message: Message) -> None:
        """Free the dedupe key and the debounce mark this message took: it was not sent.

        Left behind, the key handed every later send the id of a task that never existed,
        and the mark cancelled the burst's earlier, good send, so nothing ran at all.
        """
        opts = message.options
        if "dedupe_key" in opts:
            _free(app.broker, f"dedupe:{opts['dedupe_key']}", message.id)
        if "debounce_key" in opts:
            _free(app.broker, f"debounce:{opts['debounce_key']}", message.id)

    def _debounce(self, app: Celeriac, message: Message) -> None:
        wait = float(message.options["debounce"])
        given = message.options.get("debounce_key")
        # The task's name alone by default, as older producers wrote it.
        key = message.task if given is None else scoped(message.task, given)
        message.options["debounce_key"] = key
        due = time.time() + wait
        if message.expires is not None:
            message.expires += due - (message.eta or message.sent_at)
        message.eta = due
        # The mark must outlive every send of the burst that may still wait: once it lapses,
        # each superseded send runs. They wait as long as a backlog lasts, up to their expiry
        # (a day by default); a mark kept for only wait * 2 + 60 s let a burst behind a
        # minute's backlog run once per send.
        lives = message.expires - time.time() if message.expires is not None else None
        keep = max(wait * 2, lives if lives is not None else app.conf.result_expires) + 60
        app.broker.kv_set(f"debounce:{key}", message.id.encode(), keep)

    def before_execute(self, job: Job) -> Outcome | None:
        """Skip superseded debounced sends; free a queued-mode dedupe key."""
        message, task = job.message, job.task
        if message is None or task is None:
            return None
        broker = task.app.broker
        try:
            if "debounce" in message.options:
                (last,) = broker.kv_get([f"debounce:{message.options['debounce_key']}"])
                if last is not None and last.decode() != message.id:
                    return Outcome("REVOKED", reason="superseded by a later send (debounce)")
            if message.options.get("dedupe_mode", "queued") == "queued":
                self._release(job)
        except BrokerError as exc:
            # Raised, the hook was logged and skipped and the task ran: a superseded send
            # of a burst ran beside the last one, and a queued-mode key stayed held while
            # its task ran, so the next trigger was dropped.
            log.warning(
                "task %s: its %s could not be read or freed (%s); it is put back and "
                "run in %gs. If this repeats, check that the broker is reachable",
                job.label,
                "debounce mark" if "debounce" in message.options else "dedupe key",
                exc,
                _UNREACHABLE_DELAY,
            )
            return Outcome("DEFERRED", delay=_UNREACHABLE_DELAY, reason=f"dedupe: {exc}")
        return None

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Free the dedupe key of a task that ended; hold it again for one put back unrun.

        Not committed: another worker owns the message now and settles the key itself. A
        final state or a dead letter frees the key in both modes, even when an earlier
        middleware (expiry, revocation, debounce) skipped the task before
        :meth:`before_execute` could free it: it used to stay held for the whole TTL, and
        every later send got the handle of a task that would never run again. A retry
        keeps a running-mode key (the task has not finished). A deferral (a rate limit,
        an unknown task) or a retry puts the message back in the queue: a queued-mode key
        is taken again for it, or every deferral let a duplicate in, and a send while a
        retry waited its backoff ran beside that retry.
        """
        message = job.message
        if not committed or message is None or message.options.get("dedupe_key") is None:
            return
        if outcome.state in _ENDED:
            self._release(job)
        elif (
            outcome.state in _QUEUED_AGAIN
            and message.options.get("dedupe_mode", "queued") == "queued"
        ):
            self._hold_again(job)

    def _hold_again(self, job: Job) -> None:
        message = job.message
        assert message is not None
        ttl = float(message.options.get("dedupe_ttl", 3600))
        left = _key_life(message, ttl)  # never longer than the TTL it was sent with
        if left > 0:
            store = f"dedupe:{message.options['dedupe_key']}"
            _broker(job).kv_set(store, message.id.encode(), left, only_if_absent=True)

    def _release(self, job: Job) -> None:
        message = job.message
        assert message is not None
        key = message.options.get("dedupe_key")
        if key is not None:
            _free(_broker(job), f"dedupe:{key}", message.id)


#: The options whose send hook calls the broker.
_SEND_OPTIONS = frozenset({"dedupe_key", "debounce"})


def release_dedupe_key(app: Celeriac, task: str | Task[Any, Any], key: object) -> str | None:
    """Free ``task``'s dedupe key ``key`` now; return the id of the task that held it.

    For a key whose task will never run although it has not ended: its message was
    purged (``celeriac purge``) or lost with the broker's data. Until its TTL, every send
    with that key is handed the lost task's handle and runs nothing.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task
        ... def sync(n: int) -> int:
        ...     return n
        >>> first = sync.apply_async((1,), dedupe_key="acct:42")
        >>> release_dedupe_key(app, sync, "acct:42") == first.id
        True
        >>> release_dedupe_key(app, sync.name, "acct:42") is None  # by name; nothing held now
        True
    """
    name = task if isinstance(task, str) else task.name
    store = f"dedupe:{scoped(name, key)}"
    (held,) = app.broker.kv_get([store])
    if held is None:
        return None
    _free(app.broker, store, held.decode())
    return held.decode()


def scoped(task: str, key: object) -> str:
    """``key`` as a key of ``task`` alone, so that two tasks never share one.

    Example:
        >>> scoped("shop.sync", "acct:42")
        'shop.sync:acct:42'
        >>> scoped("shop.sync", "shop.sync:acct:42")  # already scoped: the same message again
        'shop.sync:acct:42'
    """
    text, prefix = f"{key}", f"{task}:"
    return text if text.startswith(prefix) else prefix + text


def _key_life(message: Message, ttl: float) -> float:
    """Seconds left for ``message``'s dedupe key: its TTL from the send, and in queued
    mode no longer than its expiry.

    An expired message never starts, so a queued-mode key stands for nothing after that:
    kept for the whole TTL, it handed every later send a task that ended EXPIRED unrun.
    The grace covers a worker whose clock is a little behind the broker's. A running-mode
    key keeps its TTL: a task that started in time may run past its expiry, and a worker
    of an older version would not hold the key again when it starts (a duplicate ran
    beside it); an expired one frees its key when a worker settles it EXPIRED.
    """
    end = message.sent_at + ttl
    if message.expires is not None and message.options.get("dedupe_mode", "queued") == "queued":
        end = min(end, message.expires + _EXPIRY_GRACE)
    return end - time.time()


def _may_still_run(options: dict[str, Any], stored: bytes) -> bool:
    """Whether a running-mode key's holder, final to readers, may still be running: a
    revoke without ``terminate`` that raced the task's fetch, or made by an older version
    (a deploy), marks it REVOKED and lets it run on, and its key must hold until it ends
    (its worker frees it then).

    Example:
        >>> from celeriac.control import _revoke_mark
        >>> _may_still_run({"dedupe_mode": "running"}, _revoke_mark(0.0))
        True
        >>> _may_still_run({}, _revoke_mark(0.0))  # queued mode: freed when it started
        False
    """
    return options.get("dedupe_mode", "queued") == "running" and is_revoke_mark(stored)


def _free(broker: Broker, store: str, task_id: str) -> None:
    """Delete ``store`` if it still names ``task_id`` (a later send may hold it by now).

    One atomic call: a read, then a delete, deleted the key of a send that took it in
    between (the holder's TTL ran out meanwhile), and a third send then ran beside it.
    """
    broker.kv_delete_if(store, task_id.encode())


def _broker(job: Job) -> Broker:
    # The worker's app: there even when the task is unknown (a deferred unknown task).
    app = job.app or (job.task.app if job.task is not None else None)
    assert app is not None
    return app.broker
