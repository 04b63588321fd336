"""Task options: the values each may take, checked once (for ``@app.task`` and per call),
and the due times, expiries and time limits they give, as a message carries them.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import math
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.celery_names import OPTIONS
from celeriac.message import LATEST_TIME, unix_time_as_seconds
from celeriac.text import cut

if TYPE_CHECKING:
    from celeriac.app import Celeriac

#: Pass as a time limit or expiry to opt a task out of it explicitly (``celeriac check``
#: lists such tasks). Anything left unset takes the app's default instead.
UNBOUNDED = math.inf

#: How a message carries a per-call time limit of UNBOUNDED: 100 years, longer than any
#: task runs. JSON has no infinity (it wrote null, "the task's own limit", so the opt-out
#: was lost), and every worker, older ones too, arms this as a plain timer: it is within
#: ``signal.setitimer``'s and ``threading.TIMEOUT_MAX``'s range.
NO_LIMIT_SECONDS = 3_153_600_000.0

#: Options given in seconds: over 0, UNBOUNDED to opt out, or a timedelta.
DURATIONS = frozenset({"soft_time_limit", "time_limit", "expires"})


class TaskOptions(msgspec.Struct, frozen=True):
    """A task's options; None means "the app's default"."""

    queue: str | None = None
    priority: int | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None
    expires: float | None = None
    max_deliveries: int | None = None
    ignore_result: bool | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)  # options that middleware declared


def absolute_time(
    when: float | dt.datetime | dt.timedelta, now: float, option: str, task: str
) -> float:
    """``when`` as a Unix time: an aware datetime as it is, seconds or a timedelta after
    ``now``. Anything else fails here, naming the task and the option: a value that slipped
    through would stop the send with a bare ``ValueError`` (NaN, a typo'd string), or put a
    due time in the message that no worker can read.

    Example:
        >>> absolute_time(dt.timedelta(seconds=5), 100.0, "countdown", "shop.add")
        105.0
        >>> absolute_time(float("nan"), 100.0, "countdown", "shop.add")
        Traceback (most recent call last):
        ValueError: task shop.add: countdown=nan is not a finite number of seconds
        >>> absolute_time(1e300, 100.0, "countdown", "shop.add")
        Traceback (most recent call last):
        ValueError: task shop.add: countdown=1e+300 puts its start after the year 9999; ...
        >>> absolute_time(1_800_000_060, 1_800_000_000.0, "countdown", "shop.add")
        Traceback (most recent call last):
        ValueError: task shop.add: countdown=1800000060 looks like a Unix time (2027-01-15T08:...
    """
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError(
                f"task {task}: {option}={when!r} has no timezone (celeriac cannot tell "
                "which zone it is in): use datetime.now(timezone.utc) or .astimezone()"
            )
        return when.timestamp()
    seconds = when.total_seconds() if isinstance(when, dt.timedelta) else when
    if seconds.__class__ is not float and (seconds.__class__ is bool or not _is_real(seconds)):
        kinds = (
            "an aware datetime or a Unix time"
            if option == "eta"
            else "seconds (a number), a timedelta or an aware datetime"
        )
        raise TypeError(
            f"task {task}: {option} must be {kinds}, got {type(when).__name__} {when!r}"
        )
    if seconds is when and now and (wrong := unix_time_as_seconds(option, seconds, now)):
        # eta (now=0) takes a Unix time; the others take a datetime for one
        raise ValueError(
            f"task {task}: {wrong}, or datetime.fromtimestamp({when!r}, timezone.utc) for that time"
        )
    at = now + float(seconds)
    if not math.isfinite(at):
        raise ValueError(f"task {task}: {option}={when!r} is not a finite number of seconds")
    if at > LATEST_TIME and option == "expires":
        # That far ahead means never; kept at the year 9999, where a message can carry it
        # (expires=1e306 failed the send: "cannot convert float infinity to integer").
        return LATEST_TIME
    if at > LATEST_TIME:
        # The broker would hold it delayed for ever, and a worker dead-letters such an eta.
        raise ValueError(
            f"task {task}: {option}={when!r} puts its start after the year 9999; pass "
            "a Unix time in seconds, or a timedelta"
        )
    return at


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: Options a signature takes with ``.set()``, as ``apply_async`` does.
CALL_OPTIONS = frozenset(
    {
        "queue",
        "priority",
        "countdown",
        "eta",
        "expires",
        "task_id",
        "headers",
        "soft_time_limit",
        "time_limit",
    }
)


def unknown_options(unknown: set[str] | list[str], known: set[str] | frozenset[str]) -> str:
    """``unknown option(s) x``, naming the known option each one is closest to: a typo
    (``prority=9``) was named with no hint, or beside a list of 25 options.

    Example:
        >>> unknown_options({"prority"}, {"priority", "queue", "countdown"})
        "unknown option(s) prority (did you mean 'priority'?)"
        >>> unknown_options(["zzz"], {"priority"})
        'unknown option(s) zzz'
        >>> unknown_options(["routing_key"], {"queue"})
        "unknown option(s) routing_key (routing_key is Celery's: route with queue=...)"
    """
    names = sorted(unknown)
    # Celery's own options get what to write instead: a close spelling would mislead.
    celery = [f"{n} is Celery's: {OPTIONS[n]}" for n in names if n in OPTIONS]
    typos = [n for n in names if n not in OPTIONS]
    close = {n: m[0] for n in typos if (m := difflib.get_close_matches(n, sorted(known), 1, 0.7))}
    text = f"unknown option(s) {', '.join(names)}"
    if celery:
        meant = [f"did you mean {m!r} for {n!r}?" for n, m in close.items()]
        return f"{text} ({'; '.join(celery + meant)})"
    if len(names) == 1 and close:
        return f"{text} (did you mean {close[names[0]]!r}?)"
    if close:
        return f"{text} (did you mean {', '.join(f'{m!r} for {n!r}' for n, m in close.items())}?)"
    return text


#: Longer queue names are refused: a name travels in every message and is part of every
#: broker key of its queue.
QUEUE_NAME_MAX = 200


def queue_name_problem(name: object) -> str:
    """What a queue name must be instead; empty when ``name`` is fine.

    A worker is given its queues as ``-Q a,b``, split at commas and stripped: a task sent
    to ``"reports, nightly"`` or ``"emails "`` went to a queue no worker could be started
    on, and waited there for ever.

    Example:
        >>> queue_name_problem("emails")
        ''
        >>> print(queue_name_problem("reports,nightly"))  # doctest: +NORMALIZE_WHITESPACE
        a queue name a worker can be given with -Q (no comma, no space at either end,
        no control or invisible character)
    """
    if not (isinstance(name, str) and name):
        return "a queue name (a non-empty str)"
    if len(name) > QUEUE_NAME_MAX:
        return f"a queue name of at most {QUEUE_NAME_MAX} characters"
    if "," in name or name != name.strip() or (not name.isprintable() and _invisible(name)):
        return (
            "a queue name a worker can be given with -Q (no comma, no space at either end, "
            "no control or invisible character)"
        )
    return ""


def _invisible(text: str) -> bool:
    """Whether ``text`` holds a character no terminal shows (a control character, a
    zero-width or non-breaking space). A lone surrogate is left to the encoder, whose
    error says the text is not UTF-8 and what to pass instead."""
    return any(not c.isprintable() and not "\ud800" <= c <= "\udfff" for c in text)


def option_problem(option: str, value: Any) -> str:
    """What ``value`` of a core task option should be instead; empty when it is fine.
    The one check of these options, for ``@app.task`` and for ``apply_async``.

    Example:
        >>> option_problem("priority", 12)
        'a whole number from 0 to 9 (9 runs first)'
        >>> option_problem("time_limit", dt.timedelta(minutes=1))
        ''
    """
    whole = isinstance(value, int) and not isinstance(value, bool)
    if option == "queue":
        return queue_name_problem(value)
    if option == "priority" and not (whole and 0 <= value <= 9):
        return "a whole number from 0 to 9 (9 runs first)"
    if option == "max_deliveries" and not (whole and value >= 1):
        return "a whole number of at least 1"
    if option == "ignore_result" and not isinstance(value, bool):
        return "True or False"
    if option in DURATIONS:
        seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
        if not (_is_real(seconds) and seconds > 0):  # NaN is never > 0
            return "a number of seconds over 0 or a timedelta (UNBOUNDED: no limit)"
    return ""


#: The longest task id a send takes (a workflow's own ids, built from the ids given to it
#: with a suffix per level, may be a little longer).
ID_MAX = 1_000


def check_send_options(
    who: str,
    *,
    task_id: object,
    queue: object,
    headers: object,
    soft_time_limit: object,
    time_limit: object,
) -> None:
    """Refuse per-call options of a type the message cannot carry. The encoder writes any
    type, but every worker reads the message against its schema: a ``task_id=42`` or a
    ``queue=5`` would be sent, then dead-lettered as malformed, and the task never run.
    ``who`` starts the error: what the options were given to ("task shop.add", "chain").

    Example:
        >>> check_send_options(
        ...     "task shop.add", task_id=42, queue="q", headers={}, soft_time_limit=None,
        ...     time_limit=5,
        ... )
        Traceback (most recent call last):
        TypeError: task shop.add: task_id must be a str, got int 42; pass task_id=str(42)
    """
    for option, value in (("task_id", task_id), ("queue", queue)):
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"{who}: {option} must be a str, got {type(value).__name__} {value!r}; "
                f"pass {option}=str({value!r})"
            )
        if value == "":
            # Was taken as "not given": an id built from an empty field (f"{order.ref}")
            # got a random one instead, and two sends of it both ran; an empty queue from
            # an unset environment variable went to the default queue without a word.
            default = "a new random id" if option == "task_id" else "the task's own queue"
            raise ValueError(
                f"{who}: {option} is an empty string; pass a non-empty {option}, or "
                f"leave {option} out (or None) for {default}"
            )
    if isinstance(task_id, str) and not task_id.strip():
        # Sent and run, such a task could not be named on the command line, which
        # refuses an id of only white space (`revoke ' '` revoked nothing).
        raise ValueError(
            f"{who}: task_id is only white space ({task_id!r}); pass an id with "
            "something in it, or leave task_id out (or None) for a new random id"
        )
    if isinstance(task_id, str) and len(task_id) > ID_MAX:
        # Each is written into every log line, key and worker slot that names the task: a
        # worker running 1,000 tasks of 5,000-character ids could not list them in its
        # slot, and the leases it could not renew were taken back and run twice.
        raise ValueError(
            f"{who}: task_id is {len(task_id):,} characters long, over {ID_MAX:,}: derive a "
            f"short one from a long key (hashlib.sha256(key.encode()).hexdigest()); "
            f"it began {cut(repr(task_id), 60)}"
        )
    problem = queue_name_problem(queue) if queue is not None else ""
    if problem:
        raise ValueError(f"{who}: queue must be {problem}, got {cut(repr(queue), 80)}")
    if headers and not isinstance(headers, dict):
        raise TypeError(f"{who}: headers must be a dict, got {type(headers).__name__}")
    for option, limit in (("soft_time_limit", soft_time_limit), ("time_limit", time_limit)):
        problem = "" if limit is None else option_problem(option, limit)
        if problem:
            raise ValueError(f"{who}: {option} must be {problem}, got {limit!r}")


def warn_if_soft_limit_never_fires(
    task: str, soft: float, hard: float, soft_given: bool, hard_given: bool
) -> bool:
    """Warn, once per task in this process, when the limits a send gives (``soft`` and
    ``hard``: the call's, else the task's, else the app's) leave a soft limit that the
    hard one ends first; return True when it does.

    ``apply_async(time_limit=10)`` under the app's default soft limit of 300 s was taken
    silently: the task was killed at 10 s with no SoftTimeLimitExceeded before, so its
    cleanup never ran. The worker's start-up check (:func:`soft_limits_that_never_fire`)
    sees only the tasks' own options, not a call's.

    Example:
        >>> warn_if_soft_limit_never_fires("doc.add", 0.5, 1.0, False, True)
        False
    """
    if not math.isfinite(soft) or soft >= NO_LIMIT_SECONDS or soft < hard:
        return False
    if task in _SAID_NEVER_FIRES:  # per task: a limit computed per call varies
        return True
    _SAID_NEVER_FIRES.add(task)
    given = [
        f"{name}={value:g}"
        for name, value, set_here in (
            ("soft_time_limit", soft, soft_given),
            ("time_limit", hard, hard_given),
        )
        if set_here
    ]
    logging.getLogger("celeriac").warning(
        "task %s sent with %s: its soft time limit (%gs) is not below its hard time limit "
        "(%gs), so the hard limit kills it first: SoftTimeLimitExceeded never fires and its "
        "cleanup never runs. Pass a soft_time_limit below time_limit in the same call. "
        "(Said once per task in this process.)",
        task,
        " and ".join(given),
        soft,
        hard,
    )
    return True


#: The tasks already warned of by :func:`warn_if_soft_limit_never_fires`.
_SAID_NEVER_FIRES: set[str] = set()


def wire_limit(limit: float | dt.timedelta | None) -> float | None:
    """A per-call time limit as the message carries it: seconds, UNBOUNDED as
    :data:`NO_LIMIT_SECONDS` (JSON would carry it as null: the task's own limit).

    Example:
        >>> wire_limit(dt.timedelta(minutes=2)), wire_limit(UNBOUNDED), wire_limit(None)
        (120.0, 3153600000.0, None)
    """
    if limit is None:
        return None
    seconds = float(limit.total_seconds() if isinstance(limit, dt.timedelta) else limit)
    return NO_LIMIT_SECONDS if seconds == UNBOUNDED else seconds


def to_ms(when: float | None, *, up: bool = False) -> float | None:
    """A time to whole milliseconds (rounded, or up for a due time, never early): its JSON
    is 14 characters instead of 18, in every queued message."""
    if when is None:
        return None
    return math.ceil(when * 1000) / 1000 if up else nearest_ms(when)


def nearest_ms(when: float) -> float:
    """``round(when, 3)`` for a Unix time, in a quarter of its time (paid per message): the
    nearest double to k / 1000 prints with at most three decimals."""
    return int(when * 1000 + 0.5) / 1000


def soft_limits_that_never_fire(app: Celeriac) -> list[str]:
    """The tasks whose soft time limit (their own, else the app's) is not below their hard
    limit: the hard limit stops them first, so the soft one never fires and an ``except
    SoftTimeLimitExceeded`` cleanup never runs. ``time_limit=60`` alone, under the app's
    default soft limit of 300 s, does that.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task(name="shop.export", time_limit=60)
        ... def export() -> None: ...
        >>> soft_limits_that_never_fire(app)
        ['shop.export']
    """
    conf, found = app.conf, []
    for name in sorted(app.tasks):
        own = app.tasks[name].options
        soft = conf.task_soft_time_limit if own.soft_time_limit is None else own.soft_time_limit
        hard = conf.task_time_limit if own.time_limit is None else own.time_limit
        if math.isfinite(soft) and soft >= hard:
            found.append(name)
    return found
