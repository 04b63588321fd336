"""Entries (what runs when) and the records beat keeps in the broker's small store.

Keys, all under ``beat:`` in the broker's key-value store:

* ``beat:entries`` (a join set): the name of every entry ever added at run time or
  scheduled by a scheduler, so any process can list them without a key scan.
* ``beat:entry:<name>``: an :class:`EntryRecord` — run-time changes (the definition of an
  entry added or changed at run time, paused, when it changed).
* ``beat:state:<name>``: an :class:`EntryState` — what schedulers recorded: since when the
  entry exists, its last tick and task id, the next run.
* ``beat:tick:<name>:<ms>``: the claim of one tick (see :mod:`celeriac.beat.scheduler`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from celeriac.beat.schedules import Cron, Every, Schedule, parse_schedule
from celeriac.errors import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

INDEX = "beat:entries"
MISSED_POLICIES = ("skip", "run_once")
#: apply_async options an entry may set for its ticks.
SEND_OPTIONS = frozenset(
    {"queue", "priority", "expires", "soft_time_limit", "time_limit", "headers"}
)
#: What a ``beat_schedule`` item may hold (Celery's keys, plus ``tz`` and ``missed``).
CONFIG_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "tz", "missed"})
RECORD_TTL = 10 * 365 * 86_400.0  # run-time definitions stay until removed
STATE_TTL = 400 * 86_400.0  # outlives a yearly schedule's interval; refreshed on each tick


@dataclass(frozen=True)
class Entry:
    """One periodic entry: which task, with which arguments, on which schedule.

    Example:
        >>> e = Entry("cleanup", "shop.tasks.cleanup", Every(3600), args=(30,))
        >>> e.schedule.describe()
        'every 1h'

    Raises:
        ConfigurationError: a bad name, missed-tick policy or send option.
    """

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    missed: str = "skip"

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.task or not isinstance(self.task, str):
            raise ConfigurationError(f"entry {self.name!r}: task must be a task name")
        if self.missed not in MISSED_POLICIES:
            raise ConfigurationError(
                f"entry {self.name!r}: missed={self.missed!r}; use 'skip' (the default: "
                "ticks missed while no scheduler ran are dropped) or 'run_once' (the latest "
                "missed tick runs once on recovery)"
            )
        unknown = sorted(set(self.options) - SEND_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"entry {self.name!r}: unknown option(s) {', '.join(unknown)}. "
                f"Known: {', '.join(sorted(SEND_OPTIONS))}"
            )
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "options", _tick_options(self.name, self.options))
        try:  # fail when the entry is defined, not at 3 a.m. when its tick is sent
            msgspec.json.encode([self.args, self.kwargs, self.options])
        except (TypeError, msgspec.EncodeError) as exc:
            raise ConfigurationError(
                f"entry {self.name!r}: arguments and options must be JSON ({exc})"
            ) from exc

    def send_options(self, tick: float, following: float) -> dict[str, Any]:
        """The options the tick at ``tick`` is sent with, the next being due at ``following``.

        By default a tick expires when the next one is due: a stale tick never runs late.
        The headers say which entry and tick a message is (the worker's tick fence reads
        them).

        Example:
            >>> options = Entry("e", "t", Every(60)).send_options(60.0, 120.0)
            >>> options["expires"].timestamp()
            120.0
            >>> options["headers"]
            {'beat_entry': 'e', 'beat_tick': 60.0}
            >>> Entry("e", "t", Every(60), options={"expires": 10}).send_options(60, 120)["expires"]
            10
        """
        options: dict[str, Any] = dict(self.options)
        options.setdefault("expires", dt.datetime.fromtimestamp(following, dt.UTC))
        options["headers"] = {
            **options.get("headers", {}),
            "beat_entry": self.name,
            "beat_tick": tick,
        }
        return options

    def to_spec(self) -> EntrySpec:
        """The stored form of this definition.

        Example:
            >>> Entry("e", "t", Every(5)).to_spec().every
            5.0
        """
        return EntrySpec(
            task=self.task,
            args=list(self.args),
            kwargs=self.kwargs,
            options=self.options,
            missed=self.missed,
            **self.schedule.spec(),
        )

    @classmethod
    def from_spec(cls, name: str, spec: EntrySpec) -> Entry:
        """Rebuild an entry from its stored form.

        Example:
            >>> Entry.from_spec("e", EntrySpec(task="t", cron="0 3 * * *")).schedule
            Cron(expr='0 3 * * *', tz='UTC')
        """
        schedule: Schedule
        if spec.cron is not None:
            schedule = Cron(spec.cron, tz=spec.tz or "UTC")
        elif spec.every is not None:
            schedule = Every(spec.every)
        else:
            raise ConfigurationError(f"stored entry {name!r} has no schedule")
        return cls(
            name, spec.task, schedule, tuple(spec.args), spec.kwargs, spec.options, spec.missed
        )


def _tick_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` as they survive the trip through the broker's JSON, or a clear error.

    A timedelta ``expires`` becomes seconds (JSON would turn it into the string ``PT30S``,
    which no send accepts); a datetime is refused: one instant would expire every later tick.
    """
    options = dict(options)
    expires = options.get("expires")
    if isinstance(expires, dt.timedelta):
        options["expires"] = expires.total_seconds()
    elif isinstance(expires, dt.datetime):
        raise ConfigurationError(
            f"entry {name!r}: expires={expires!r} is one point in time, and would expire "
            "every tick after it; give seconds after each tick is sent (expires=300)"
        )
    headers = options.get("headers", {})
    if not isinstance(headers, dict):
        raise ConfigurationError(
            f"entry {name!r}: headers must be a dict, got {type(headers).__name__} {headers!r}"
        )
    return options


def check_name(name: str) -> str:
    """Check an entry name: 1..200 printable characters.

    Example:
        >>> check_name("nightly-report")
        'nightly-report'

    Raises:
        ConfigurationError: the name is empty, too long or has control characters.
    """
    if not isinstance(name, str) or not 0 < len(name) <= 200 or not name.isprintable():
        raise ConfigurationError(f"entry name {name!r}: use 1 to 200 printable characters")
    return name


def entry_from_config(name: str, item: Any, default_tz: str) -> Entry:
    """An entry from one ``beat_schedule`` item, as Celery users write it.

    Example:
        >>> e = entry_from_config("add", {"task": "t.add", "schedule": 30.0, "args": (1, 2)}, "UTC")
        >>> e.schedule, e.args
        (Every(seconds=30.0), (1, 2))

    Raises:
        ConfigurationError: a missing or unknown key, or a bad schedule (says which entry).
    """
    if not isinstance(item, dict):
        raise ConfigurationError(f"beat_schedule[{name!r}] must be a dict, got {item!r}")
    unknown = sorted(set(item) - CONFIG_KEYS)
    missing = sorted({"task", "schedule"} - set(item))
    if unknown or missing:
        raise ConfigurationError(
            f"beat_schedule[{name!r}]: "
            + (f"unknown key(s) {', '.join(unknown)}; " if unknown else "")
            + (f"missing {', '.join(missing)}; " if missing else "")
            + f"keys are {', '.join(sorted(CONFIG_KEYS))}"
        )
    task_name = item["task"]
    if not isinstance(task_name, str):  # a name, as in Celery: settings must stay plain data
        raise ConfigurationError(
            f"beat_schedule[{name!r}]: task must be a task name (a string), got {task_name!r}"
        )
    schedule = item["schedule"]
    tz = item.get("tz")
    if tz is None and isinstance(schedule, str):
        tz = default_tz
    try:
        return Entry(
            name,
            task_name,
            parse_schedule(schedule, tz),
            tuple(item.get("args") or ()),
            dict(item.get("kwargs") or {}),
            dict(item.get("options") or {}),
            item.get("missed", "skip"),
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"beat_schedule[{name!r}]: {exc}") from exc


class EntrySpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A stored entry definition (``cron`` + ``tz``, or ``every`` seconds)."""

    task: str
    cron: str | None = None
    tz: str | None = None
    every: float | None = None
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    missed: str = "skip"


class EntryRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Run-time changes to one entry, under ``beat:entry:<name>``."""

    spec: EntrySpec | None = None  # set when added or changed at run time; else the code's
    paused: bool = False
    changed_at: float = 0.0  # ticks before this were never due (no run_once catch-up)


class EntryState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What schedulers recorded about one entry, under ``beat:state:<name>``."""

    since: float = 0.0  # when a scheduler first saw the entry: earlier ticks were never due
    task: str = ""
    schedule: str = ""  # the schedule's description when its last tick was sent
    last_tick: float | None = None  # fire time of the last tick sent
    last_task_id: str | None = None
    last_sent_at: float | None = None
    next_run: float | None = None
    sent_by: str | None = None  # scheduler id, host:pid
    last_error: str | None = None


def entry_key(name: str) -> str:
    """Key of an entry's run-time record.

    Example:
        >>> entry_key("cleanup")
        'beat:entry:cleanup'
    """
    return f"beat:entry:{name}"


def state_key(name: str) -> str:
    """Key of an entry's state.

    Example:
        >>> state_key("cleanup")
        'beat:state:cleanup'
    """
    return f"beat:state:{name}"


def claim_key(name: str, tick: float) -> str:
    """Key of the claim of one tick.

    Example:
        >>> claim_key("cleanup", 60.0)
        'beat:tick:cleanup:60000'
    """
    return f"beat:tick:{name}:{round(tick * 1000)}"


def tick_id(name: str, tick: float) -> str:
    """The task id of an entry's tick: the same in every scheduler, readable in logs.

    Example:
        >>> tick_id("cleanup", 1711846800.0)
        'beat:cleanup:20240331T010000Z'
        >>> tick_id("fast", 0.5)
        'beat:fast:19700101T000000.500Z'
    """
    ms = round(tick * 1000)
    stamp = dt.datetime.fromtimestamp(ms // 1000, dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"beat:{name}:{stamp}{f'.{ms % 1000:03d}' if ms % 1000 else ''}Z"


@dataclass(frozen=True)
class Loaded:
    """An entry as a scheduler sees it now: definition, run-time changes and state."""

    name: str
    entry: Entry | None  # None: defined only in another process's code; known by its state
    origin: str  # code | config | runtime | changed (code or config, changed at run time)
    paused: bool = False
    changed_at: float = 0.0
    state: EntryState | None = None
    #: Why a stored definition cannot be scheduled by this process (an unknown zone on
    #: this host, a newer version's entry); None when it can.
    problem: str | None = None
    spec: EntrySpec | None = None  # the stored definition, shown when it cannot be read


_record_decoder = msgspec.json.Decoder(EntryRecord)
_state_decoder = msgspec.json.Decoder(EntryState)


class BeatStore:
    """Reads and writes beat's keys in the app's broker (reconnected after a fork).

    Example:
        >>> from celeriac import Celeriac
        >>> store = BeatStore(Celeriac("doc", broker="memory://"))
        >>> store.names()
        set()
    """

    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def names(self) -> set[str]:
        """Every name in the index.

        Example:
            >>> from celeriac import Celeriac
            >>> s = BeatStore(Celeriac("doc", broker="memory://"))
            >>> s.register("a"); s.names()
            {'a'}
        """
        return set(self.app.broker.join_values(INDEX))

    def register(self, name: str) -> None:
        """Add a name to the index (adding it twice keeps one).

        Example:
            >>> from celeriac import Celeriac
            >>> BeatStore(Celeriac("doc", broker="memory://")).register("nightly")
        """
        self.app.broker.join_add(INDEX, name, b"", RECORD_TTL)

    def read(self, names: list[str]) -> tuple[dict[str, EntryRecord], dict[str, EntryState]]:
        """The records and states of these entries, in one round trip.

        Undecodable values (a newer version's, or damage) are left out, so one bad key
        never stops a scheduler.

        Example:
            >>> from celeriac import Celeriac
            >>> BeatStore(Celeriac("doc", broker="memory://")).read(["a"])
            ({}, {})
        """
        values = self.app.broker.kv_get(
            [entry_key(n) for n in names] + [state_key(n) for n in names]
        )
        records: dict[str, EntryRecord] = {}
        states: dict[str, EntryState] = {}
        for name, raw in zip(names, values[: len(names)], strict=True):
            if raw is not None:
                try:
                    records[name] = _record_decoder.decode(raw)
                except msgspec.DecodeError:
                    continue
        for name, raw in zip(names, values[len(names) :], strict=True):
            if raw is not None:
                try:
                    states[name] = _state_decoder.decode(raw)
                except msgspec.DecodeError:
                    continue
        return records, states

    def write_record(self, name: str, record: EntryRecord) -> None:
        """Store an entry's run-time record.

        Example:
            >>> from celeriac import Celeriac
            >>> s = BeatStore(Celeriac("doc", broker="memory://"))
            >>> s.write_record("a", EntryRecord(paused=True)); s.read(["a"])[0]["a"].paused
            True
        """
        self.app.broker.kv_set(entry_key(name), msgspec.json.encode(record), RECORD_TTL)

    def forget(self, name: str) -> None:
        """Delete an entry's run-time record and state.

        Example:
            >>> from celeriac import Celeriac
            >>> BeatStore(Celeriac("doc", broker="memory://")).forget("a")
        """
        self.app.broker.kv_delete(entry_key(name))
        self.app.broker.kv_delete(state_key(name))

    def write_state(self, name: str, state: EntryState, *, only_if_absent: bool = False) -> bool:
        """Store an entry's state; True when written.

        Example:
            >>> from celeriac import Celeriac
            >>> BeatStore(Celeriac("doc", broker="memory://")).write_state("a", EntryState())
            True
        """
        body = msgspec.json.encode(state)
        return self.app.broker.kv_set(
            state_key(name), body, STATE_TTL, only_if_absent=only_if_absent
        )

    def claim(self, name: str, tick: float, owner: str, ttl: float) -> bool:
        """Claim one tick for ``ttl`` seconds; True for the one scheduler that got it.

        Example:
            >>> from celeriac import Celeriac
            >>> s = BeatStore(Celeriac("doc", broker="memory://"))
            >>> s.claim("a", 60.0, "me", 5), s.claim("a", 60.0, "you", 5)
            (True, False)
        """
        return self.app.broker.kv_set(
            claim_key(name, tick), _claimed(owner), ttl, only_if_absent=True
        )

    def reclaim(self, name: str, tick: float, owner: str, ttl: float) -> bool:
        """True when ``owner`` holds the claim of a tick: still, or again if it had lapsed.

        For a claimer that stalled past its claim's TTL: another scheduler may have taken
        the tick over meanwhile (the claim then says so, or ``sent``).

        Example:
            >>> from celeriac import Celeriac
            >>> s = BeatStore(Celeriac("doc", broker="memory://"))
            >>> s.claim("a", 60.0, "me", 5), s.reclaim("a", 60.0, "me", 5)
            (True, True)
            >>> s.reclaim("a", 60.0, "you", 5)
            False
        """
        if self.claim_value(name, tick) == _claimed(owner):
            return True
        return self.claim(name, tick, owner, ttl)

    def claim_value(self, name: str, tick: float) -> bytes | None:
        """What the claim of a tick says now (``claimed ...``, ``sent ...``) or None.

        Example:
            >>> from celeriac import Celeriac
            >>> BeatStore(Celeriac("doc", broker="memory://")).claim_value("a", 60.0) is None
            True
        """
        return self.app.broker.kv_get([claim_key(name, tick)])[0]

    def mark_sent(self, name: str, tick: float, task_id: str, ttl: float) -> None:
        """Turn a claim into a lasting "sent" mark, so no one takes the tick over.

        Example:
            >>> from celeriac import Celeriac
            >>> s = BeatStore(Celeriac("doc", broker="memory://"))
            >>> s.mark_sent("a", 60.0, "t1", 30); s.claim_value("a", 60.0)
            b'sent t1'
        """
        self.app.broker.kv_set(claim_key(name, tick), f"sent {task_id}".encode(), max(ttl, 1.0))


def _claimed(owner: str) -> bytes:
    return f"claimed {owner}".encode()


def grace(interval: float, missed_after: float) -> float:
    """How late a tick may be sent and still count as on time, not missed.

    Half the interval at most, so a 1-second entry is never "on time" a tick late.

    Example:
        >>> grace(1.0, 30.0), grace(86400.0, 30.0)
        (0.5, 30.0)
    """
    return min(interval / 2, missed_after) if math.isfinite(interval) else missed_after
