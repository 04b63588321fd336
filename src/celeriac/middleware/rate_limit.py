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

A task whose expiry comes before the next free slot ends EXPIRED without reserving it
(``rate_reserve``'s ``max_wait``): a slot it would never use would push every later task
back by one slot, whichever process sent or runs them.

Priorities hold under a limit. Slots are reserved only a short horizon ahead (a second,
or two slots); a task that finds them taken further than that waits in its priority's
line instead (a second limiter per priority, spaced like the slots: a ticket, one call).
A line comes back (1 + priority) horizons ahead of its turns (at once, when nobody of its
priority waits) and reserves up to half a horizon further: a task of higher priority
starts within a few horizons, not behind the whole backlog (a priority-9 task waited 28 s
behind 273 priority-0 tasks at 10/s), and the slots a higher line keeps taken are beyond
a lower line's reach, so the lower one keeps its place and waits. A task past its turn by
ten reaches takes a slot however far, first come, first served, so that nothing that
ignores the lines (an older worker, in a deploy) starves it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from celeriac.brokers.base import RATE_LINES, Broker
from celeriac.brokers.records import clamped_priority
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.middleware.base import Job, Middleware, Outcome, call_options, option_error
from celeriac.text import printable, seconds

if TYPE_CHECKING:
    from celeriac.app import Celeriac

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PER_CALL = frozenset({"rate_limit", "limit"})  # options apply_async may give per message
_SLOT = "rate_slot"  # option on a deferred message: the time of its reserved slot
_LINE = "rate_line"  # option on a message waiting in its priority's line: its first turn
# Seconds (at least two slots) ahead that a task reserves a slot on its first pass; past
# them, it waits in its priority's line (see the module docstring).
_HORIZON = 1.0
# Seconds a process keeps the lines' name (Broker.purge changes it) before reading it again.
_LINES_READ_EVERY = 1.0
# Reaches a task may be past its turn before it takes a slot however far (see _take_turn).
_PATIENCE = 10
# Admissions asked for per start at most: a broker slow on every call must not spend the
# whole window on one task's retries.
_ADMIT_TRIES = 3
# Limiter keys whose latest slot a process remembers (see RateLimit._later).
_LATER_KEPT = 10_000
# Seconds a task waits when its limiter could not be read: the broker's outage decides.
_UNREACHABLE_DELAY = 1.0
log = logging.getLogger("celeriac.rate_limit")
_RATE = "a rate written N/s, N/m, N/h or N/d with N a whole number over 0 (e.g. '100/m')"


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


class _Limiter(NamedTuple):
    """One task's limit: the broker key it is counted under (shared by every version of
    celeriac on the broker, so never renamed), how it reads in logs and events, and its
    rate (``limit`` starts per ``period`` seconds)."""

    key: str
    label: str  # "rate limit 10/m of task shop.mail": "rate:task:shop.mail" told no one much
    limit: int
    period: float


class RateLimit(Middleware):
    """Defers tasks over their limit to their reserved slot."""

    options = frozenset({"rate_limit", "limit", "rate_limit_key"})
    task_only_options = frozenset({"rate_limit_key"})  # a function: a message cannot carry it

    def check_options(self, app: Celeriac, task: str, options: dict[str, Any]) -> None:
        """Refuse a rate this middleware cannot read, a limit name missing from the app's
        ``limits`` setting, and a ``rate_limit_key`` that is not callable: in the worker
        each failed every message of the task (None, for a rate or a limit: none).

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://", limits={"smtp": "10/s"})
            >>> RateLimit().check_options(app, "shop.mail", {"limit": "smpt"})
            Traceback (most recent call last):
            celeriac.errors.ConfigurationError: task shop.mail: limit must be a name in this \
app's limits setting (it has: 'smtp'), got 'smpt'
        """
        rate = options.get("rate_limit")
        if rate is not None:
            try:
                if not isinstance(rate, str):
                    raise ConfigurationError(rate)
                parse_rate(rate)
            except ConfigurationError:
                raise option_error(task, "rate_limit", rate, _RATE) from None
        name = options.get("limit")
        if name is not None and not (isinstance(name, str) and name in app.conf.limits):
            known = ", ".join(repr(n) for n in sorted(app.conf.limits))
            has = f"it has: {known}" if known else "it has none: set Celeriac(limits={...}) first"
            raise option_error(task, "limit", name, f"a name in this app's limits setting ({has})")
        split = options.get("rate_limit_key")
        if split is not None and not callable(split):
            raise option_error(
                task, "rate_limit_key", split, "a function of the task's arguments returning a str"
            )

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
        try:
            return self._apply(job, limiter)
        except BrokerError as exc:
            return _unreachable(job, limiter.label, exc)

    def _apply(self, job: Job, limiter: _Limiter) -> Outcome | None:
        """Reserve (once) and admit: None to run now, else the Outcome to settle."""
        assert job.task is not None and job.message is not None
        key, limit, period = limiter.key, limiter.limit, limiter.period
        broker, message = job.task.app.broker, job.message
        # The window admission counts over is kept this much longer than the period: the
        # task's first line runs a little after its admission, and must obey the limit too.
        guard = period * 0.01 + 0.005
        if _SLOT not in message.options:
            # Phase 1: reserve a slot, once. Slots are spread evenly, so a backlog waits in
            # the broker in order instead of all waking together. They are spread over the
            # admission's window plus one more guard: 1/rate apart, each came back a little
            # before the window had room, by a gap that grew with every period, and the late
            # ones all woke again together at each opening (most were deferred again,
            # some dozens of times). The second guard absorbs a start that runs late.
            waiting = self._reserve(job, limiter, limit / (period + 2 * guard))
            if waiting is not None:
                return waiting
        # Phase 2: admit at the real start time. Starts can run late by a few ms (fetch
        # and scheduling), so the exact window check is what guarantees "never more than
        # N in any window".
        for _ in range(_ADMIT_TRIES):
            asked = time.monotonic()
            wait = broker.rate_admit(key, limit, period + guard)
            if wait > 0:
                return self._defer(job, wait, limiter.label)
            if time.monotonic() - asked <= guard / 2:
                break
            # The admission was recorded up to that long before now (a slow commit, a
            # paused process): more than the guard may pass before the task's first line,
            # and its start could crowd the next window. Count that admission as spent
            # and ask again; spending a slot only slows the limit, never breaks it.
        message.options.pop(_SLOT, None)
        return None

    def __init__(self) -> None:
        # Per limiter, the latest slot this process was given. Slots are handed out in
        # order (the broker's next free slot only moves later), so no task can get one
        # earlier than this: a task expiring before it needs no reservation to know it
        # will not run.
        self._later: dict[str, float] = {}
        # (see _lines) the broker it was read from (an app's broker is replaced when its
        # URL changes), and when
        self._lines_read: tuple[Broker | None, str, float] = (None, "", -math.inf)

    def _reserve(self, job: Job, limiter: _Limiter, per_second: float) -> Outcome | None:
        """Reserve the next free slot, or a place in the task's priority's line: None to
        start now, else the Outcome to settle."""
        assert job.task is not None and job.message is not None
        key, message, broker = limiter.key, job.message, job.task.app.broker
        expires = message.expires
        if expires is not None and self._later.get(key, 0.0) >= expires:
            # No slot before its expiry: reserved, one would push every later task back
            # by a slot nobody uses (a backlog of 100 such tasks at 1/m made a fresh task
            # wait 100 minutes).
            return _expires_first(job, self._later[key], limiter.label)
        # A slot past its expiry is not reserved, by any process: a task that would only
        # expire waiting for it must not push every later task back by one slot (each
        # worker process spent one such slot per backlog, before it learnt the next one).
        max_wait = math.inf if expires is None else max(expires - time.time(), 0.0)
        horizon = max(_HORIZON, 2 / per_second)
        ticket = message.options.pop(_LINE, None)  # the time of its turn: back from its line
        if ticket is None:
            wait = broker.rate_reserve(key + ":slots", per_second, max_wait=min(horizon, max_wait))
            if horizon < wait <= max_wait:
                # Taken further than the horizon: a place in its priority's line instead.
                queued = self._queue_up(job, limiter, per_second, max_wait, horizon)
                if isinstance(queued, Outcome):
                    return queued
                ticket = queued  # nobody of its priority waits before it: its turn is now
        if ticket is not None:
            taken = self._take_turn(
                job, limiter, per_second, max_wait, horizon=horizon, turn=float(ticket)
            )
            if isinstance(taken, Outcome):
                return taken
            wait = taken
        if wait > max_wait:
            self._seen_slot(key, time.time() + wait)  # not reserved; no later slot is earlier
            return _expires_first(job, time.time() + wait, limiter.label)
        if wait <= 0.001:
            return None
        self._seen_slot(key, time.time() + wait)
        return self._defer(job, wait, limiter.label)

    def _queue_up(
        self, job: Job, limiter: _Limiter, per_second: float, max_wait: float, horizon: float
    ) -> Outcome | float:
        """A place in the line of the task's priority: the Outcome that defers it there
        (or ends it EXPIRED: a ticket past its expiry is not taken, as a slot is not), or,
        when nobody of its priority waits before it, the time of its turn: now."""
        assert job.task is not None and job.message is not None
        broker, message = job.task.app.broker, job.message
        ticket = broker.rate_reserve(self._line(limiter, job), per_second, max_wait=max_wait)
        if ticket > max_wait:
            return _expires_first(job, time.time() + ticket, limiter.label)
        turn = time.time() + ticket
        lead = _lead(horizon, message.priority)
        if ticket <= lead:
            return turn
        message.options[_LINE] = turn
        return self._defer(job, ticket - lead, limiter.label, reserved=False)

    def _take_turn(
        self,
        job: Job,
        limiter: _Limiter,
        per_second: float,
        max_wait: float,
        *,
        horizon: float,
        turn: float,
    ) -> Outcome | float:
        """Reserve a slot for a task whose turn in its line has come: the wait for it
        (over ``max_wait``: not reserved), or, when the slots are taken beyond its reach,
        the Outcome that defers it until its next turn.

        A line comes back its lead ahead of its turns, (1 + priority) horizons, and
        reserves up to half a horizon further: the slots a higher line keeps taken are
        beyond a lower line's reach, so the lower one gives way. A task that finds them
        so takes a ticket at the back of its line and comes back at its new turn, or
        once the slots taken now are within its reach, whichever is later (the latter
        alone when the back of its line is past its expiry): a line waits
        at the cost of a deferral per slot at most, and takes the slots as soon as the
        higher line leaves them (without the ticket, one task was deferred 65 times in
        5 s at 50/s; backing off by the time waited left the limit idle for seconds). A
        task past its first turn by :data:`_PATIENCE` reaches, when no higher line has
        tasks waiting, takes a slot however far, first come, first served: what fills
        the slots then ignores the lines (an older worker's reservations, in a deploy),
        and it would otherwise wait for as long as that lasts.
        """
        assert job.task is not None and job.message is not None
        broker, message = job.task.app.broker, job.message
        lead = _lead(horizon, message.priority)
        reach = lead + horizon / 2
        if time.time() - turn > _PATIENCE * reach and not self._higher_waits(job, limiter):
            reach = math.inf
        slots = limiter.key + ":slots"
        wait = broker.rate_reserve(slots, per_second, max_wait=min(reach, max_wait))
        if reach < wait <= max_wait:
            ticket = broker.rate_reserve(self._line(limiter, job), per_second, max_wait=max_wait)
            message.options[_LINE] = turn  # its first turn, for the patience above
            # The back of its line past its expiry (no ticket taken): it comes back when
            # the slots come within its reach, which is before its expiry. It was judged
            # by the back of the line and ended EXPIRED, though it stood near the front.
            behind = ticket - lead if ticket <= max_wait else 0.0
            again = max(behind, wait - reach, 0.001)
            return self._defer(job, again, limiter.label, reserved=False)
        return wait

    def _line(self, limiter: _Limiter, job: Job, priority: int | None = None) -> str:
        """The key of the waiting line of the job's priority (or of ``priority``)."""
        assert job.task is not None and job.message is not None
        if priority is None:
            priority = clamped_priority(job.message.priority)
        return f"{limiter.key}:line:{priority}{self._lines(job.task.app.broker)}"

    def _higher_waits(self, job: Job, limiter: _Limiter) -> bool:
        """Whether a line of higher priority than the job's has tasks waiting for their
        turns: its next ticket is ahead (a reservation bounded by a wait below zero only
        reads it). Only then is a task long past its turn kept from the slots: without
        this check, a lower line took the slots as one block in the middle of a long
        higher flood (a review: 404 priority-0 tasks ran alone while 400 of priority 1
        waited)."""
        assert job.task is not None and job.message is not None
        broker, per_second = job.task.app.broker, 1.0  # a read: the rate changes nothing
        mine = clamped_priority(job.message.priority)
        return any(
            broker.rate_reserve(self._line(limiter, job, p), per_second, max_wait=-1.0) > 0
            for p in range(mine + 1, 10)
        )

    def _lines(self, broker: Broker) -> str:
        """The suffix of the current waiting lines' keys: "" until a purge first named
        new ones. The tasks a purge deleted held places in the old lines, and a fresh
        task queued up behind them waited for the purged backlog's turn."""
        now = time.monotonic()
        read_from, suffix, read_at = self._lines_read
        if read_from is not broker or now - read_at >= _LINES_READ_EVERY:
            name = broker.kv_get([RATE_LINES])[0]
            suffix = f":{name.decode()}" if name else ""
            self._lines_read = (broker, suffix, now)
        return suffix

    def _seen_slot(self, key: str, slot: float) -> None:
        later = self._later
        if len(later) >= _LATER_KEPT:  # many split keys (rate_limit_key): drop past slots
            now = time.time()
            for passed in [k for k, at in list(later.items()) if at < now]:
                later.pop(passed, None)  # pop: a thread of the threads pool may have too
        if len(later) < _LATER_KEPT or key in later:
            later[key] = max(slot, later.get(key, 0.0))

    def _defer(self, job: Job, wait: float, label: str, *, reserved: bool = True) -> Outcome:
        """DEFERRED by ``wait`` seconds: to its reserved slot, where admission decides, or
        (not ``reserved``) to reserve one then, back from its line."""
        message = job.message
        assert message is not None
        if reserved:
            message.options[_SLOT] = time.time() + wait
        return Outcome(
            "DEFERRED",
            delay=wait,
            body=job.task.app.codec.encode(message, like=job.delivery.body) if job.task else None,
            reason=label,
        )

    def _limiter(self, job: Job) -> _Limiter | None:
        assert job.task is not None and job.request is not None and job.message is not None
        opts = job.task.options.extra
        sent = job.message.options
        if sent and ("rate_limit" in sent or "limit" in sent):
            # Given to apply_async for this call: it replaces the task's own limit of either
            # kind (it was ignored). A per-call rate_limit_key cannot travel (a function).
            own = {k: v for k, v in opts.items() if k not in _PER_CALL}
            opts = call_options(own, sent, _PER_CALL)
        if opts.get("limit") is not None:  # None: not set, as for rate_limit
            name = opts["limit"]
            rate = job.task.app.conf.limits.get(name)
            if rate is None:
                known = ", ".join(sorted(job.task.app.conf.limits)) or "none"
                raise ConfigurationError(
                    f"its limit {name!r} is not in this worker's limits setting (it has: {known})"
                )
            key, label = f"rate:limit:{name}", f"rate limit {name!r} ({rate})"
        elif opts.get("rate_limit") is not None:
            rate, key = opts["rate_limit"], f"rate:task:{job.task.name}"
            label = f"rate limit {rate} of task {job.task.name}"
        else:
            return None
        split: Callable[..., Any] | None = opts.get("rate_limit_key")
        if split is not None:
            part = str(split(*job.request.args, **job.request.kwargs))
            key, label = f"{key}:{part}", f"{label} (rate_limit_key {part!r})"
        return _Limiter(key, printable(label), *parse_rate(rate))


def _lead(horizon: float, priority: int) -> float:
    """How far ahead of its turns a line of ``priority`` reserves slots: (1 + priority)
    horizons, so that the slots a higher line keeps taken are beyond a lower line's reach.

    Example:
        >>> _lead(1.0, 0), _lead(1.0, 9), _lead(2.0, 42)
        (1.0, 10.0, 20.0)
    """
    return horizon * (1 + clamped_priority(priority))


def _expires_first(job: Job, slot: float, label: str) -> Outcome:
    """EXPIRED now, for a task whose expiry comes before the first slot its limiter can
    give it: it would only wait in the broker to expire there, unrun."""
    message = job.message
    assert message is not None and message.expires is not None
    now = time.time()
    return Outcome(
        "EXPIRED",
        reason=(
            f"{label} has no free slot before its expiry (it expires in "
            f"{seconds(max(message.expires - now, 0.0))}, the next slot is in "
            f"{seconds(slot - now)}), "
            "so it could not start in time"
        ),
    )


def _unreachable(job: Job, label: str, exc: BrokerError) -> Outcome:
    """DEFERRED, not a run: the broker that keeps the limiter did not answer. The hook's
    error used to be logged and skipped like any other, so during a broker outage (a
    failover, a restart) every task a child held ran at once, with no limit at all."""
    log.warning(
        "task %s: its %s could not be checked (%s); it is not run unlimited but "
        "put back and checked again in %gs. If this repeats, check that the broker is "
        "reachable",
        job.label,
        label,
        exc,
        _UNREACHABLE_DELAY,
    )
    return Outcome("DEFERRED", delay=_UNREACHABLE_DELAY, reason=f"{label}: {exc}")


def _misconfigured(job: Job, exc: Exception) -> Outcome:
    """FAILURE, not a run: a limit this worker cannot apply (a rate it cannot read, a limit
    name missing from its ``limits``, a ``rate_limit_key`` that raised) used to fail the
    hook, which is logged and skipped, so the task ran with no limit at all and every task
    of it hammered the service the limit protects."""
    from celeriac.worker.reading import error_info

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
