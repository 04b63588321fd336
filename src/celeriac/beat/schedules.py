"""Schedules: when an entry fires. :class:`Every` for intervals, :class:`Cron` for cron
expressions in a named time zone.

Both are pure functions of time: every scheduler, on any host, computes the same fire times
from the same definition. That is what lets a tick have a deterministic id (see
:mod:`celeriac.beat`), so several schedulers sending one tick create one task.

Cron and daylight-saving time follow Vixie cron / cronie, the rules ops people know:

* A wall-clock time skipped when clocks go forward (02:30 on the spring-forward night in
  New York) fires at the change (03:00 EDT) if the job is a fixed-time job (neither its
  minute nor its hour field starts with ``*``), and not at all otherwise: ``*/5 * * * *``
  keeps its five-minute cadence in real time.
* A wall-clock time that happens twice when clocks go back fires once (the first time)
  for a fixed-time job; other jobs fire at both, so ``*/5`` keeps its cadence through the
  repeated hour.

Days follow cron's rule too: with both day fields restricted, a day matching either runs
(``0 0 1,15 * 1``: the 1st, the 15th and every Monday); if either field starts with ``*``,
a day must match both (``0 0 */2 * 1``: Mondays on odd days).
"""

from __future__ import annotations

import abc
import datetime as dt
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from celeriac.errors import ConfigurationError

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MAX_CANDIDATES = 50_000  # a valid 5-field expression matches within a few years of minutes
_HOST_ZONE = "localtime"  # zoneinfo's name for whatever zone this host is set to
_MIN_EVERY = 0.1  # seconds; a faster schedule would cost more broker calls than it is worth
# Seconds (100 years). Fire times are multiples of the interval since 1970: a longer one
# fired first past the year 9999 ("year 33658 is out of range"), or raised a bare
# OverflowError (every=1e300).
_MAX_EVERY = 100 * 365 * 86400
# croniter's extensions "R" (a random value, drawn anew at every parse) and "H" (hashed
# from an id): a field using them is not a pure function of time.
_DRAWN = re.compile(r"(?:^|,)[hr](?:\(|/|,|$)", re.IGNORECASE)


class Schedule(abc.ABC):
    """When an entry fires: a pure function of time, the same in every scheduler."""

    @abc.abstractmethod
    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t`` (Unix seconds).

        Example:
            >>> Every(30).next_after(60.0)
            90.0
        """

    @abc.abstractmethod
    def latest(self, t: float) -> float:
        """The last fire time at or before ``t`` (Unix seconds).

        Example:
            >>> Every(30).latest(89.9)
            60.0
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """A short human description, as ``celeriac beat list`` shows it.

        Example:
            >>> Cron("*/5 * * * *", tz="Europe/Kyiv").describe()
            'cron */5 * * * * (Europe/Kyiv)'
        """

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """The fields that store this schedule in the broker.

        Example:
            >>> Every(30).spec()
            {'every': 30.0}
        """

    @abc.abstractmethod
    def format(self, t: float) -> str:
        """A fire time as a person reads it in logs: the zone's wall clock.

        Example:
            >>> Cron("0 3 * * *", tz="UTC").format(0.0)
            '1970-01-01 00:00:00 UTC'
        """


@dataclass(frozen=True)
class Every(Schedule):
    """Fire every ``seconds``, at multiples of the interval since the Unix epoch.

    Alignment to the epoch (not to when a scheduler started) is what makes every scheduler
    agree on the fire times: ``Every(30)`` fires at :00 and :30 of each minute, and
    ``Every(3600)`` on the hour (UTC). Use :class:`Cron` for times of day in a zone.

    Example:
        >>> Every(60).next_after(125.0), Every(60).latest(125.0)
        (180.0, 120.0)
    """

    seconds: float

    def __post_init__(self) -> None:
        seconds = float(self.seconds)
        if not math.isfinite(seconds) or seconds < _MIN_EVERY:
            raise ConfigurationError(
                f"every={self.seconds!r}: an interval must be at least {_MIN_EVERY} seconds"
            )
        if seconds > _MAX_EVERY:
            raise ConfigurationError(
                f"every={self.seconds!r}: an interval must be at most {_MAX_EVERY} seconds "
                "(100 years); for a rare job, write a cron expression"
            )
        object.__setattr__(self, "seconds", seconds)

    @property
    def _ms(self) -> int:
        return max(round(self.seconds * 1000), 1)

    def latest(self, t: float) -> float:
        """The last multiple of the interval at or before ``t``.

        Example:
            >>> Every(0.5).latest(10.7)
            10.5
        """
        # Integer milliseconds: a fire time computed here and fed back in maps to itself,
        # whatever float rounding did on the way (+1 µs absorbs that rounding).
        ms = self._ms
        return (math.floor(t * 1000 + 0.001) // ms) * ms / 1000

    def next_after(self, t: float) -> float:
        """The first multiple of the interval strictly after ``t``.

        Example:
            >>> Every(0.5).next_after(10.5)
            11.0
        """
        ms = self._ms
        return (math.floor(t * 1000 + 0.001) // ms + 1) * ms / 1000

    def describe(self) -> str:
        """``every 30s``, ``every 5m``, ``every 1.5s``.

        Example:
            >>> Every(300).describe()
            'every 5m'
        """
        return f"every {format_seconds(self.seconds)}"

    def spec(self) -> dict[str, Any]:
        """``{"every": seconds}``.

        Example:
            >>> Every(2).spec()
            {'every': 2.0}
        """
        return {"every": self.seconds}

    def format(self, t: float) -> str:
        """The fire time on this host's clock: ``12:05:00`` (``12:05:00.500`` if fractional).

        Example:
            >>> len(Every(1).format(0.0))
            19
        """
        when = dt.datetime.fromtimestamp(t)
        text = when.strftime("%Y-%m-%d %H:%M:%S")
        return f"{text}.{when.microsecond // 1000:03d}" if when.microsecond else text


@dataclass(frozen=True)
class Cron(Schedule):
    """A five-field cron expression (``minute hour day month weekday``) in a named zone.

    ``@daily``, ``@hourly`` and the other ``@`` aliases work too. Fire times follow the
    zone's wall clock across daylight-saving changes (see the module docstring).

    Example:
        >>> c = Cron("0 9 * * *", tz="America/New_York")
        >>> c.format(c.next_after(1710000000.0))  # 2024-03-09 16:00 UTC
        '2024-03-10 09:00:00 EDT'
    """

    expr: str
    tz: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _fixed: bool = field(init=False, repr=False, compare=False)
    _day_or: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expr = " ".join(self.expr.split())
        expr = _ALIASES.get(expr.lower(), expr)
        fields = expr.split(" ")
        if any(_DRAWN.search(f) for f in fields):
            # Each scheduler, and each pass, would see other fire times: ticks sent several
            # times an hour under different ids, or never.
            raise ConfigurationError(
                f"cron {self.expr!r}: random (R) and hashed (H) fields are not supported: "
                "every scheduler must compute the same fire times; write the minute or hour "
                "you want (e.g. '17 * * * *')"
            )
        if len(fields) != 5 or not croniter.is_valid(expr):
            raise ConfigurationError(
                f"cron {self.expr!r}: not a valid five-field cron expression (minute hour "
                "day month weekday, e.g. '*/5 * * * *'); for seconds use every=..."
            )
        _check_steps(self.expr, fields)
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(
                f"cron {self.expr!r}: unknown time zone {self.tz!r} (use an IANA name such "
                "as 'Europe/Kyiv' or 'UTC')"
            ) from exc
        object.__setattr__(self, "expr", expr)
        object.__setattr__(self, "_zone", zone)
        # cronie's rule: a job is "fixed-time" unless its minute or hour field is a wildcard.
        object.__setattr__(
            self, "_fixed", not fields[0].startswith("*") and not fields[1].startswith("*")
        )
        # cronie's day rule: a day matches day-of-month OR day-of-week only when neither
        # field starts with "*"; otherwise it must match both ("0 0 */2 * 1" is the Mondays
        # that fall on odd days). croniter ORs any two restricted fields unless told.
        object.__setattr__(
            self, "_day_or", not fields[2].startswith("*") and not fields[4].startswith("*")
        )
        try:
            self.next_after(0.0)
        except CroniterError as exc:
            raise ConfigurationError(f"cron {self.expr!r}: never fires ({exc})") from exc

    # -- the two questions a scheduler asks ---------------------------------------------

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t``.

        Example:
            >>> Cron("30 2 * * *", tz="America/New_York").format(
            ...     Cron("30 2 * * *", tz="America/New_York").next_after(1710000000.0))
            '2024-03-10 03:00:00 EDT'
        """
        # A candidate whose wall time is earlier than t's can still fire after t when the
        # clocks go back in between, so the scan starts `slack` (the zone's offset swing
        # around t) earlier and keeps the smallest instant after t.
        it = croniter(self.expr, self._naive(t) - self._slack(t), day_or=self._day_or)
        best: float | None = None
        for _ in range(_MAX_CANDIDATES):
            wall: dt.datetime = it.get_next(dt.datetime)
            if best is not None and wall > self._naive(best) + self._slack(best):
                return best
            for instant in self._instants(wall):
                if instant > t and (best is None or instant < best):
                    best = instant
        raise CroniterError(f"no fire time found after {t}")

    def latest(self, t: float) -> float:
        """The last fire time at or before ``t``.

        Example:
            >>> c = Cron("0 * * * *")
            >>> c.latest(7200.0), c.latest(7199.0)
            (7200.0, 3600.0)
        """
        start = self._naive(t) + self._slack(t) + dt.timedelta(minutes=1)
        it = croniter(self.expr, start, day_or=self._day_or)
        best: float | None = None
        for _ in range(_MAX_CANDIDATES):
            wall: dt.datetime = it.get_prev(dt.datetime)
            if best is not None and wall < self._naive(best) - self._slack(best):
                return best
            for instant in self._instants(wall):
                if instant <= t and (best is None or instant > best):
                    best = instant
        raise CroniterError(f"no fire time found before {t}")

    # -- presentation --------------------------------------------------------------------

    def describe(self) -> str:
        """``cron */5 * * * * (Europe/Kyiv)``.

        Example:
            >>> Cron("@daily").describe()
            'cron 0 0 * * * (UTC)'
        """
        return f"cron {self.expr} ({self.tz})"

    def spec(self) -> dict[str, Any]:
        """``{"cron": expr, "tz": zone}``.

        Example:
            >>> Cron("0 3 * * *", tz="Europe/Kyiv").spec()
            {'cron': '0 3 * * *', 'tz': 'Europe/Kyiv'}
        """
        return {"cron": self.expr, "tz": self.tz}

    def format(self, t: float) -> str:
        """The fire time on the zone's wall clock, with the zone's abbreviation.

        Example:
            >>> Cron("0 3 * * *", tz="Europe/Kyiv").format(1711846800.0)
            '2024-03-31 04:00:00 EEST'
        """
        return dt.datetime.fromtimestamp(t, self._zone).strftime("%Y-%m-%d %H:%M:%S %Z")

    # -- wall clock <-> instants -----------------------------------------------------------

    def _naive(self, t: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, self._zone).replace(tzinfo=None, fold=0)

    def _slack(self, t: float) -> dt.timedelta:
        return _offset_swing(self.tz, math.floor(t / 3600))

    def _instants(self, wall: dt.datetime) -> list[float]:
        """The instants at which wall-clock time ``wall`` fires (0, 1 or 2 of them)."""
        first = wall.replace(tzinfo=self._zone, fold=0).timestamp()
        second = wall.replace(tzinfo=self._zone, fold=1).timestamp()
        if first == second:
            return [first]
        if self._naive(first) == wall:  # the clocks went back: this wall time happens twice
            return [first] if self._fixed else [first, second]
        # The clocks went forward over this wall time: fixed-time jobs run at the change.
        return [self._transition(min(first, second), max(first, second))] if self._fixed else []

    def _transition(self, before: float, after: float) -> float:
        """The instant the offset changes, between ``before`` and ``after`` (to the second)."""
        offset = dt.datetime.fromtimestamp(before, self._zone).utcoffset()
        lo, hi = math.floor(before), math.ceil(after)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if dt.datetime.fromtimestamp(mid, self._zone).utcoffset() == offset:
                lo = mid
            else:
                hi = mid
        return float(hi)


@functools.lru_cache(maxsize=4096)
def _offset_swing(tz: str, hour: int) -> dt.timedelta:
    """How far the zone's UTC offset moves within two days of the given hour (0 if not)."""
    zone = ZoneInfo(tz)
    offsets = {
        dt.datetime.fromtimestamp((hour + h) * 3600, zone).utcoffset() for h in range(-48, 49)
    }
    known = [o for o in offsets if o is not None]
    return max(known) - min(known) if known else dt.timedelta(0)


def crontab(
    minute: Any = "*",
    hour: Any = "*",
    day_of_week: Any = "*",
    day_of_month: Any = "*",
    month_of_year: Any = "*",
) -> str:
    """Celery's ``crontab(...)``: the cron string of these fields, each ``*`` unless given,
    for wherever a cron string goes (``beat_schedule``'s ``"schedule"``, ``cron=``). A field
    is what cron takes (``"*/15"``, ``"mon-fri"``, ``"1,15"``), a number, or numbers.

    It is a string, not a schedule: the zone stays the entry's (``tz``, else
    ``beat_timezone``), as Celery's crontab follows the app's ``timezone``.

    Example:
        >>> crontab(minute=0, hour="*/3")
        '0 */3 * * *'
        >>> crontab(minute=30, hour=7, day_of_week="mon-fri")
        '30 7 * * mon-fri'
        >>> crontab(minute=[0, 30])
        '0,30 * * * *'

    Raises:
        ConfigurationError: the fields do not make a valid cron expression (named, as
            Celery names them).
    """
    named = {
        "minute": minute,
        "hour": hour,
        "day_of_month": day_of_month,
        "month_of_year": month_of_year,
        "day_of_week": day_of_week,
    }
    fields = {}
    for name, value in named.items():
        if isinstance(value, bool) or not isinstance(value, str | int | list | tuple | set):
            raise ConfigurationError(
                f"crontab({name}={value!r}): give a cron field ('*/15', 'mon-fri'), a number "
                "or a list of numbers"
            )
        many = sorted(value) if isinstance(value, set) else value
        text = ",".join(str(v) for v in many) if isinstance(many, list | tuple) else str(many)
        if not text.strip():  # "$FIELD" with FIELD unset: not "every"
            raise ConfigurationError(f"crontab({name}=''): an empty field; give '*' for every")
        fields[name] = "".join(text.split())
    expr = " ".join(fields.values())
    try:
        Cron(expr)  # checked here, where the fields still have their names
    except ConfigurationError as exc:
        given = ", ".join(f"{n}={v!r}" for n, v in named.items() if v != "*")
        raise ConfigurationError(f"crontab({given}) is {expr!r}: {exc}") from None
    return expr


def parse_schedule(value: Any, tz: str | None = None) -> Schedule:
    """Turn what a user wrote into a :class:`Schedule`.

    A cron string (with ``tz``), seconds (int or float), a :class:`datetime.timedelta`, or a
    Schedule as it is.

    Example:
        >>> parse_schedule("*/5 * * * *", tz="Europe/Kyiv")
        Cron(expr='*/5 * * * *', tz='Europe/Kyiv')
        >>> parse_schedule(dt.timedelta(minutes=1))
        Every(seconds=60.0)

    Raises:
        ConfigurationError: the value is not a schedule, or ``tz`` came with an interval.
    """
    if isinstance(value, Schedule):
        if tz is not None and not (isinstance(value, Cron) and value.tz == tz):
            raise ConfigurationError(f"tz={tz!r} given with {value!r}: set the zone on the Cron")
        return _same_on_every_host(value)
    if isinstance(value, str):
        return _same_on_every_host(Cron(value, tz="UTC" if tz is None else tz))
    if tz is not None:
        raise ConfigurationError(f"tz={tz!r} only applies to cron schedules, not {value!r}")
    if isinstance(value, dt.timedelta):
        return Every(value.total_seconds())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Every(float(value))
    raise ConfigurationError(
        f"schedule {value!r}: give a cron string ('*/5 * * * *'), seconds, or a timedelta"
    )


def _same_on_every_host(schedule: Schedule) -> Schedule:
    """Refuse a new schedule whose fire times depend on the host it is computed on.

    Checked where entries are defined, not in :class:`Cron` itself, so an entry stored by
    an older version keeps its ticks (a scheduler that cannot rebuild an entry skips it).
    """
    if isinstance(schedule, Cron) and schedule.tz == _HOST_ZONE:
        # A link to the host's /etc/localtime: schedulers on hosts set to other zones
        # would fire the same entry at other instants, each tick under its own id.
        raise ConfigurationError(
            f"cron {schedule.expr!r}: tz={schedule.tz!r} is this host's own zone (a link to "
            "/etc/localtime), so schedulers on hosts set to other zones would send the "
            "entry's ticks at other times; name the zone ('Europe/Kyiv', 'UTC')"
        )
    return schedule


def format_seconds(seconds: float) -> str:
    """``30s``, ``5m``, ``2h``, ``1d``, or ``1.5s`` when it is not a round unit.

    Example:
        >>> format_seconds(90), format_seconds(7200)
        ('90s', '2h')
    """
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


#: Each cron field's name, how many values it spans, and its first value.
_FIELDS = (
    ("minute", 60, 0),
    ("hour", 24, 0),
    ("day-of-month", 31, 1),
    ("month", 12, 1),
    ("weekday", 7, 0),
)
_STEP = re.compile(r"/(\d+)")


def _check_steps(expr: str, fields: list[str]) -> None:
    """Refuse a step larger than its field's span (``*/61`` minutes): croniter takes it,
    and it matches the first value alone, so ``*/61 * * * *`` fired once an hour. A step
    of the span itself (``*/60``, ``*/24``) is a common way to write hourly or daily, and
    means it: taken.

    Example:
        >>> _check_steps("*/90 * * * *", ["*/90", "*", "*", "*", "*"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: cron '*/90 * * * *': a step of 90 in the minute ...
    """
    for text, (name, span, first) in zip(fields, _FIELDS, strict=True):
        for step in _STEP.findall(text):
            if int(step) > span:
                raise ConfigurationError(
                    f"cron {expr!r}: a step of {int(step)} in the {name} field, which has "
                    f"{span} values, matches one value alone (the first of its range: "
                    f"{first} for '*/{step}'); write the value you mean, or a step of at "
                    f"most {span}"
                )
