"""Dedupe and debounce, for trigger-driven work.

* ``apply_async(dedupe_key="sync:42", dedupe_ttl=60)``: while a task with that key is
  queued (or, with ``dedupe_mode="running"``, until it finishes; never longer than the
  TTL), sending again returns the first task's handle and sends nothing.
* ``apply_async(debounce=5, debounce_key="sync:42")``: a burst of sends within 5 s runs
  once, 5 s after the last send, with the last send's arguments. Earlier sends of the
  burst end REVOKED ("superseded").

Both keep their state in the broker's small store, so they hold across producers and hosts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from celeriac.message import Message
from celeriac.middleware.base import Job, Middleware, Outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac


class Dedupe(Middleware):
    """Producer-side dedupe and debounce, and their worker-side clean-up."""

    options = frozenset({"dedupe_key", "dedupe_ttl", "dedupe_mode", "debounce", "debounce_key"})

    def before_send(self, app: Celeriac, message: Message) -> str | None:
        """Return an existing task id to send nothing; arm debounce on this message."""
        opts = message.options
        if "debounce" in opts:
            self._debounce(app, message)
        key = opts.get("dedupe_key")
        if key is None:
            return None
        ttl = float(opts.get("dedupe_ttl", 3600))
        store = f"dedupe:{key}"
        for _ in range(3):  # the holder may expire between our two calls: try again
            if app.broker.kv_set(store, message.id.encode(), ttl, only_if_absent=True):
                return None
            (held,) = app.broker.kv_get([store])
            if held is not None:
                return held.decode()
        return None

    def _debounce(self, app: Celeriac, message: Message) -> None:
        wait = float(message.options["debounce"])
        key = message.options.setdefault("debounce_key", message.task)
        due = time.time() + wait
        if message.expires is not None:
            message.expires += due - (message.eta or message.sent_at)
        message.eta = due
        app.broker.kv_set(f"debounce:{key}", message.id.encode(), wait * 2 + 60)

    def before_execute(self, job: Job) -> Outcome | None:
        """Skip superseded debounced sends; free a queued-mode dedupe key."""
        message, task = job.message, job.task
        if message is None or task is None:
            return None
        broker = task.app.broker
        if "debounce" in message.options:
            (last,) = broker.kv_get([f"debounce:{message.options['debounce_key']}"])
            if last is not None and last.decode() != message.id:
                return Outcome("REVOKED", reason="superseded by a later send (debounce)")
        if message.options.get("dedupe_mode", "queued") == "queued":
            self._release(job)
        return None

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Free a running-mode dedupe key once the task finished."""
        message = job.message
        if message is not None and message.options.get("dedupe_mode") == "running":
            self._release(job)

    def _release(self, job: Job) -> None:
        message, task = job.message, job.task
        assert message is not None and task is not None
        key = message.options.get("dedupe_key")
        if key is None:
            return
        store = f"dedupe:{key}"
        (held,) = task.app.broker.kv_get([store])
        if held is not None and held.decode() == message.id:
            task.app.broker.kv_delete(store)
