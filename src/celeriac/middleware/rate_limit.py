"""Global rate limits, shared by every worker on every host.

``@app.task(rate_limit="20/s")`` limits one task; ``Celeriac(limits={"smtp": "10/s"})`` and
``@app.task(limit="smtp")`` share one limit among the tasks that call one service;
``rate_limit_key=lambda tenant_id, *a, **k: str(tenant_id)`` splits a limit per tenant.

A task over its limit reserves the next free slot in the broker (one call) and waits for
it in the broker's delayed store: it holds no worker slot, does not spin, and does not use
up a retry. When it comes back, an exact sliding-window check at its real start time
admits it (or defers it the few milliseconds it arrived early): no window of the limit's
period ever sees more than N starts. The window is kept 1% + 5 ms longer than asked, so
that the moment a task's own code runs, a little after admission, obeys the limit too; an
admission whose call took more than half of that margin (a slow commit, a paused process)
is counted as spent and asked for again, up to three times. A process paused for longer
than the margin after its admission (e.g. SIGSTOP) can still start its task late.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celeriac.errors import ConfigurationError
from celeriac.middleware.base import Job, Middleware, Outcome, call_options

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PER_CALL = frozenset({"rate_limit", "limit"})  # options apply_async may give per message
_SLOT = "rate_slot"  # option on a deferred message: the time of its reserved slot
# Admissions asked for per start at most: a broker slow on every call must not spend the
# whole window on one task's retries.
_ADMIT_TRIES = 3


def parse_rate(text: str) -> tuple[int, float]:
    """``"100/m"`` → (100 starts, per 60 seconds).

    Example:
        >>> parse_rate("120/m")
        (120, 60.0)
    """
    count, _, unit = text.partition("/")
    try:
        limit, period = int(count), _UNITS[unit.strip() or "s"]
    except (KeyError, ValueError):
        raise ConfigurationError(
            f"rate limit {text!r}: write it as N/s, N/m, N/h or N/d (e.g. '100/m')"
        ) from None
    if limit <= 0:
        raise ConfigurationError(f"rate limit {text!r} must be positive")
    return limit, period


class RateLimit(Middleware):
    """Defers tasks over their limit to their reserved slot."""

    options = frozenset({"rate_limit", "limit", "rate_limit_key"})

    def before_execute(self, job: Job) -> Outcome | None:
        """Run now, or defer the message to the next free slot of its limiter."""
        task, message = job.task, job.message
        if task is None or message is None:
            return None
        try:
            limiter = self._limiter(job)
        except Exception as exc:  # noqa: BLE001 - reported as the task's failure, by name
            return _misconfigured(job, exc)
        if limiter is None:
            return None
        key, limit, period = limiter
        broker = task.app.broker
        if _SLOT not in message.options:
            # Phase 1: reserve a slot, once. Slots are spread evenly, so a backlog waits in
            # the broker in order instead of all waking together.
            wait = broker.rate_reserve(key + ":slots", limit / period)
            if wait > 0.001:
                return self._defer(job, wait, key)
        # Phase 2: admit at the real start time. Starts can run late by a few ms (fetch
        # and scheduling), so the exact window check is what guarantees "never more than
        # N in any window"; the guard covers the gap between admission and the task's code.
        guard = period * 0.01 + 0.005
        for _ in range(_ADMIT_TRIES):
            asked = time.monotonic()
            wait = broker.rate_admit(key, limit, period + guard)
            if wait > 0:
                return self._defer(job, wait, key)
            if time.monotonic() - asked <= guard / 2:
                break
            # The admission was recorded up to that long before now (a slow commit, a
            # paused process): more than the guard may pass before the task's first line,
            # and its start could crowd the next window. Count that admission as spent
            # and ask again; spending a slot only slows the limit, never breaks it.
        message.options.pop(_SLOT, None)
        return None

    def _defer(self, job: Job, wait: float, key: str) -> Outcome:
        message = job.message
        assert message is not None
        message.options[_SLOT] = time.time() + wait
        return Outcome(
            "DEFERRED",
            delay=wait,
            body=job.task.app.codec.encode(message) if job.task else None,
            reason=f"rate limit {key}",
        )

    def _limiter(self, job: Job) -> tuple[str, int, float] | None:
        assert job.task is not None and job.request is not None and job.message is not None
        opts = job.task.options.extra
        sent = job.message.options
        if sent and ("rate_limit" in sent or "limit" in sent):
            # Given to apply_async for this call: it replaces the task's own limit of either
            # kind (it was ignored). A per-call rate_limit_key cannot travel (a function).
            own = {k: v for k, v in opts.items() if k not in _PER_CALL}
            opts = call_options(own, sent, _PER_CALL)
        if "limit" in opts:
            name = opts["limit"]
            rate = job.task.app.conf.limits.get(name)
            if rate is None:
                known = ", ".join(sorted(job.task.app.conf.limits)) or "none"
                raise ConfigurationError(
                    f"its limit {name!r} is not in this worker's limits setting (it has: {known})"
                )
            key = f"rate:limit:{name}"
        elif "rate_limit" in opts:
            rate, key = opts["rate_limit"], f"rate:task:{job.task.name}"
        else:
            return None
        split: Callable[..., Any] | None = opts.get("rate_limit_key")
        if split is not None:
            key += ":" + str(split(*job.request.args, **job.request.kwargs))
        return (key, *parse_rate(rate))


def _misconfigured(job: Job, exc: Exception) -> Outcome:
    """FAILURE, not a run: a limit this worker cannot apply (a rate it cannot read, a limit
    name missing from its ``limits``, a ``rate_limit_key`` that raised) used to fail the
    hook, which is logged and skipped, so the task ran with no limit at all and every task
    of it hammered the service the limit protects."""
    from celeriac.worker.executor import error_info

    if not isinstance(exc, ConfigurationError):  # the task's rate_limit_key raised
        exc = ConfigurationError(
            f"its rate_limit_key raised {type(exc).__name__}: {exc} (it is called with the "
            "task's arguments and returns the text that splits the limit)"
        )
    exc = ConfigurationError(
        f"task {job.label} was not run: {exc}. Fix the task's rate limit (or the app's "
        "limits setting) and send it again."
    )
    return Outcome("FAILURE", error=error_info(exc), exception=exc)
