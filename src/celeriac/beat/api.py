"""``app.beat``: periodic entries from code, configuration and run time, in one view.

* Code: ``@app.periodic(...)`` (this module's :meth:`Beat.periodic`).
* Configuration: ``app.conf.beat_schedule``, Celery's format.
* Run time: :meth:`Beat.add`, :meth:`Beat.change`, :meth:`Beat.pause`, :meth:`Beat.resume`,
  :meth:`Beat.remove` — stored in the broker, so running schedulers pick them up without a
  restart (each looks at least every ``beat_max_interval`` seconds).

Concurrent changes to the *same* entry are last-writer-wins; entries never interfere with
one another (each has its own key).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, overload

from celeriac.beat.entries import (
    BeatStore,
    Entry,
    EntryRecord,
    EntrySpec,
    EntryState,
    Loaded,
    entry_from_config,
    tick_id,
)
from celeriac.beat.schedules import Cron, Schedule, format_seconds, parse_schedule
from celeriac.errors import ConfigurationError, PayloadTooLarge, UnknownEntry
from celeriac.task import Task

if TYPE_CHECKING:
    from celeriac.app import Celeriac

P = ParamSpec("P")
R = TypeVar("R")


class PeriodicDecorator(Protocol):
    """What ``@app.periodic(...)`` returns: registers a function (as a task) or a task."""

    @overload
    def __call__(self, fn: Task[P, R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


@dataclass(frozen=True)
class EntryInfo:
    """One line of ``celeriac beat list``: an entry, its schedule and what it last did."""

    name: str
    task: str
    schedule: str
    origin: str  # code | config | runtime | changed | elsewhere
    paused: bool
    missed: str
    next_run: float | None
    last_run: float | None  # fire time of the last tick sent
    last_task_id: str | None
    last_state: str | None  # the last tick's task state (PENDING, SUCCESS, FAILURE...)
    sent_by: str | None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    last_error: str | None = None  # why the last tick could not be sent (None: it was)
    #: Why this process cannot schedule the stored definition (None: it can).
    problem: str | None = None
    #: The task the last tick was sent as, when not ``task`` (None: the same): a
    #: scheduler of other code defines the entry differently, or did before a deploy.
    last_sent_as: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 in UTC.

        Example:
            >>> info = EntryInfo("e", "t", "every 5s", "code", False, "skip", 5.0, None,
            ...                  None, None, None)
            >>> info.as_dict()["next_run"]
            '1970-01-01T00:00:05+00:00'
        """
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("next_run", "last_run"):
            value = data[key]
            data[key] = dt.datetime.fromtimestamp(value, dt.UTC).isoformat() if value else None
        data["args"] = list(self.args)
        return data


class Beat:
    """The app's periodic entries (``app.beat``): define, change and list them.

    Example:
        >>> from datetime import timedelta
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.periodic(every=timedelta(seconds=30), name="refresh-rates")
        ... def refresh_rates() -> None: ...
        >>> app.beat.add("cleanup", "doc.cleanup", cron="0 3 * * *", tz="Europe/Kyiv").name
        'cleanup'
        >>> sorted(e.name for e in app.beat.entries())
        ['cleanup', 'refresh-rates']
    """

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        self.store = BeatStore(app)
        #: Stamps run-time changes; tests replace it to match a scheduler's fake clock.
        self.clock: Callable[[], float] = time.time
        self._code: dict[str, Entry] = {}

    # -- code ------------------------------------------------------------------------------

    def periodic(
        self,
        task: Task[Any, Any] | None = None,
        /,
        *,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        tz: str | None = None,
        name: str | None = None,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> Any:
        """Schedule a task from code; see :meth:`celeriac.app.Celeriac.periodic`.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> @app.task
            ... def cleanup(days: int) -> None: ...
            >>> _ = app.beat.periodic(cleanup, cron="0 3 * * *", args=(30,), name="cleanup")
            >>> app.beat.static_entries()["cleanup"][0].args
            (30,)

        Raises:
            ConfigurationError: a bad schedule or option, or the entry name is taken.
        """
        schedule = _schedule(cron, every, tz, self.app.conf.beat_timezone)

        def register(target: Any) -> Task[Any, Any]:
            registered = target if isinstance(target, Task) else self.app.task(target)
            entry = Entry(
                name or registered.name,
                registered.name,
                schedule,
                tuple(args),
                dict(kwargs or {}),
                options,
                missed,
            )
            if entry.name in self._code:
                raise ConfigurationError(
                    f"periodic entry {entry.name!r} is defined twice; give one a name=..."
                )
            self._check_arguments(entry)  # at import: the earliest a mistake can show
            self._code[entry.name] = entry
            return registered

        return register(task) if task is not None else register

    def static_entries(self) -> dict[str, tuple[Entry, str]]:
        """Entries from code and from ``beat_schedule``, with their origin.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://",
            ...                beat_schedule={"tick": {"task": "t.tick", "schedule": 5}})
            >>> app.beat.static_entries()["tick"][1]
            'config'

        Raises:
            ConfigurationError: a bad ``beat_schedule`` item, a name in both places, or
                arguments that do not fit a task registered here.
        """
        entries = {name: (entry, "code") for name, entry in self._code.items()}
        conf = self.app.conf
        for name, item in conf.beat_schedule.items():
            if name in entries:
                raise ConfigurationError(
                    f"periodic entry {name!r} is in beat_schedule and in code (@app.periodic)"
                )
            entries[name] = (entry_from_config(name, item, conf.beat_timezone), "config")
        for entry, _ in entries.values():
            self._check_arguments(entry)
        return entries

    def _check_arguments(self, entry: Entry) -> None:
        """Refuse an entry whose ticks could never be sent or run: arguments that cannot fit
        its task's function (when that task is registered here), send options no message
        can carry (``priority=10``, ``queue=5``), or arguments over
        ``task_payload_max_bytes``. Found when the entry is defined, not by the scheduler
        at every tick."""
        try:
            self.app.check_call(entry.task, entry.args, entry.kwargs)
            task = self.app.task_named(entry.task)
            following = entry.schedule.next_after(self.clock())
            message = task.message(
                entry.args,
                entry.kwargs,
                task_id=tick_id(entry.name, following),
                **entry.send_options(following, following),
            )
            self.app.check_size(message)
        except (TypeError, ValueError, PayloadTooLarge) as exc:
            raise ConfigurationError(f"periodic entry {entry.name!r}: {exc}") from None

    # -- the merged view -------------------------------------------------------------------

    def load(self) -> dict[str, Loaded]:
        """Every entry with its run-time changes and state (three broker round trips).

        Example:
            >>> from celeriac import Celeriac
            >>> Celeriac("doc", broker="memory://").beat.load()
            {}
        """
        static = self.static_entries()
        names = sorted(set(static) | self.store.names())
        records, states = self.store.read(names)
        loaded: dict[str, Loaded] = {}
        for name in names:
            record, state = records.get(name), states.get(name)
            entry, origin = static.get(name, (None, "elsewhere"))
            problem = None
            if record is not None and record.spec is not None:
                try:
                    entry = Entry.from_spec(name, record.spec)
                except ConfigurationError as exc:
                    # A newer version's entry, or a zone this host does not have: shown,
                    # and said by the scheduler, not scheduled here (it was skipped in
                    # silence: the startup line said "none yet", `beat list` "active").
                    entry, problem = None, str(exc)
                origin = "runtime" if name not in static else "changed"
            elif entry is None and state is None and record is None:
                continue  # removed at run time: only its name is left in the index
            loaded[name] = Loaded(
                name,
                entry,
                origin,
                paused=record.paused if record else False,
                changed_at=record.changed_at if record else 0.0,
                state=state,
                problem=problem,
                spec=record.spec if record else None,
            )
        return loaded

    def entries(self, now: float | None = None) -> list[EntryInfo]:
        """Every entry, its next run and its last tick's outcome, sorted by name.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> _ = app.beat.add("ping", "doc.ping", every=60)
            >>> [(e.name, e.schedule, e.origin) for e in app.beat.entries()]
            [('ping', 'every 1m', 'runtime')]
        """
        now = self.clock() if now is None else now
        return [_info(self.app, item, now) for item in self.load().values()]

    def get(self, name: str) -> EntryInfo:
        """One entry as :meth:`entries` shows it.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> _ = app.beat.add("ping", "doc.ping", every=60, paused=True)
            >>> app.beat.get("ping").paused
            True

        Raises:
            UnknownEntry: no entry of that name.
        """
        for info in self.entries():
            if info.name == name:
                return info
        raise UnknownEntry(self._unknown(name))

    # -- run-time changes ------------------------------------------------------------------

    def add(
        self,
        name: str,
        task: str | Task[Any, Any],
        *,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        tz: str | None = None,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        missed: str = "skip",
        paused: bool = False,
        replace: bool = False,
        **options: Any,
    ) -> Entry:
        """Add an entry at run time; running schedulers start it within a second.

        ``options`` are the ticks' send options: ``queue``, ``priority``, ``expires``,
        ``soft_time_limit``, ``time_limit``, ``headers``.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> app.beat.add("report", "shop.report", cron="0 9 * * 1-5",
            ...              tz="Europe/Kyiv", queue="reports").schedule.describe()
            'cron 0 9 * * 1-5 (Europe/Kyiv)'

        Raises:
            ConfigurationError: a bad schedule or option, arguments that do not fit a task
                registered here, or the name exists (pass ``replace=True`` to overwrite it).
        """
        entry = Entry(
            name,
            task.name if isinstance(task, Task) else task,
            _schedule(cron, every, tz, self.app.conf.beat_timezone),
            tuple(args),
            dict(kwargs or {}),
            options,
            missed,
        )
        self._check_arguments(entry)
        if not replace and name in self.load():
            raise ConfigurationError(
                f"periodic entry {name!r} exists; change it with app.beat.change() or add "
                "it with replace=True (celeriac beat add --replace)"
            )
        self.store.register(name)
        self.store.write_record(
            name, EntryRecord(spec=entry.to_spec(), paused=paused, changed_at=self.clock())
        )
        return entry

    def change(
        self,
        name: str,
        *,
        task: str | None = None,
        cron: str | None = None,
        every: float | dt.timedelta | None = None,
        tz: str | None = None,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        missed: str | None = None,
        **options: Any,
    ) -> Entry:
        """Change an entry (from code, configuration or run time); only what is given.

        Changing an entry from code stores the changed definition in the broker, where
        it overrides the code until :meth:`remove` drops the change.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> _ = app.beat.add("ping", "doc.ping", every=60)
            >>> app.beat.change("ping", every=30).schedule.describe()
            'every 30s'

        Raises:
            UnknownEntry: no entry of that name here.
            ConfigurationError: a bad schedule or option, or a stored definition this
                process cannot read (redefine it with :meth:`add` and ``replace=True``).
        """
        item = self.load().get(name)
        if item is None:
            raise UnknownEntry(self._unknown(name))
        if item.problem is not None:
            raise ConfigurationError(
                f"periodic entry {name!r} is stored but cannot be read here: {item.problem}. "
                f"Redefine it: celeriac beat add {name} TASK --cron/--every ... --replace"
            )
        if item.entry is None:  # listed from a scheduler's state; its definition is not here
            raise UnknownEntry(
                f"periodic entry {name!r} is defined in code this process does not load: "
                f"pass -A with that code, or redefine it here (celeriac beat add {name} "
                "TASK --cron/--every ... --replace)"
            )
        entry = item.entry
        schedule = _changed_schedule(entry.schedule, cron, every, tz, self.app.conf.beat_timezone)
        changed = replace(
            entry,
            task=task or entry.task,
            schedule=schedule,
            args=tuple(args) if args is not None else entry.args,
            kwargs=kwargs if kwargs is not None else entry.kwargs,
            options={**entry.options, **options},
            missed=missed or entry.missed,
        )
        self._check_arguments(changed)
        self.store.register(name)
        self.store.write_record(
            name, EntryRecord(spec=changed.to_spec(), paused=item.paused, changed_at=self.clock())
        )
        return changed

    def pause(self, name: str) -> str:
        """Stop an entry's ticks until :meth:`resume`; schedulers see it within a second.

        Returns what happened, in words (pausing a paused entry changes nothing).

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> _ = app.beat.add("ping", "doc.ping", every=60)
            >>> app.beat.pause("ping")
            'paused ping'
            >>> app.beat.get("ping").paused
            True

        Raises:
            UnknownEntry: no entry of that name.
        """
        return self._set_paused(name, paused=True)

    def resume(self, name: str) -> str:
        """Start a paused entry's ticks again, from the next one (missed ones never run).

        Returns what happened, in words (resuming an active entry changes nothing).

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> _ = app.beat.add("ping", "doc.ping", every=60, paused=True)
            >>> app.beat.resume("ping")
            'resumed ping'
            >>> app.beat.resume("ping")
            'ping was not paused; nothing changed'

        Raises:
            UnknownEntry: no entry of that name.
        """
        return self._set_paused(name, paused=False)

    def remove(self, name: str) -> str:
        """Remove an entry added at run time, or drop the run-time changes of one from code.

        Returns what happened, in words. An entry defined in this app's code cannot be
        removed at run time (the next start would bring it back): pause it, and delete it
        from the code. One known only from another process's state (say, deleted from the
        code since) is forgotten.

        Example:
            >>> from celeriac import Celeriac
            >>> app = Celeriac("doc", broker="memory://")
            >>> _ = app.beat.add("ping", "doc.ping", every=60)
            >>> app.beat.remove("ping")
            'removed ping'

        Raises:
            UnknownEntry: no entry of that name.
            ConfigurationError: the entry is defined in code and was not changed at run time.
        """
        item = self.load().get(name)
        if item is None:
            raise UnknownEntry(self._unknown(name))
        if item.origin == "runtime":
            self.store.forget(name)
            return f"removed {name}"
        if item.origin == "elsewhere":  # e.g. deleted from the code: forget what is left
            self.store.forget(name)
            return (
                f"removed {name} from the list (no code here defines it; a scheduler whose "
                "code still does will list it again)"
            )
        where = "beat_schedule" if item.origin == "config" else "code"
        if item.origin != "changed":
            raise ConfigurationError(
                f"periodic entry {name!r} is defined in {where}, so it cannot be removed at "
                "run time (the next start would bring it back). Pause it (celeriac beat "
                f"pause {name}) and delete it from the {where}."
            )
        self.store.write_record(name, EntryRecord(paused=item.paused, changed_at=self.clock()))
        return f"dropped the run-time changes of {name}; its definition in {where} applies again"

    # -- helpers ---------------------------------------------------------------------------

    def _set_paused(self, name: str, *, paused: bool) -> str:
        item = self.load().get(name)
        if item is None:
            raise UnknownEntry(self._unknown(name))
        if item.paused == paused:
            # Writing anyway would move changed_at and so drop a tick that is due but not
            # yet sent: a no-op must stay one.
            return f"{name} was {'already paused' if paused else 'not paused'}; nothing changed"
        records, _ = self.store.read([name])
        record = records.get(name, EntryRecord())
        self.store.register(name)
        # changed_at moves on resume too: ticks that fell due while paused are never due.
        self.store.write_record(
            name, EntryRecord(spec=record.spec, paused=paused, changed_at=self.clock())
        )
        return f"{'paused' if paused else 'resumed'} {name}"

    def _unknown(self, name: str) -> str:
        known = ", ".join(sorted(self.load())) or "none"
        return f"no periodic entry {name!r} (known: {known}; see celeriac beat list)"


def _schedule(
    cron: str | None, every: float | dt.timedelta | None, tz: str | None, default_tz: str
) -> Schedule:
    if (cron is None) == (every is None):
        raise ConfigurationError("give exactly one of cron='...' or every=...")
    if cron is not None:
        # An empty zone (--tz "$TZ" with TZ unset) is a mistake to report, not the default.
        return parse_schedule(cron, default_tz if tz is None else tz)
    return parse_schedule(every, tz)


def _changed_schedule(
    schedule: Schedule,
    cron: str | None,
    every: float | dt.timedelta | None,
    tz: str | None,
    default_tz: str,
) -> Schedule:
    if cron is not None and every is not None:
        raise ConfigurationError("give one of cron='...' or every=..., not both")
    if every is not None:
        return parse_schedule(every, tz)
    zone = tz if tz is not None else (schedule.tz if isinstance(schedule, Cron) else None)
    if cron is not None:
        return parse_schedule(cron, default_tz if zone is None else zone)
    if tz is None:
        return schedule
    if not isinstance(schedule, Cron):
        raise ConfigurationError(f"tz={tz!r} only applies to cron schedules")
    return parse_schedule(Cron(schedule.expr, tz))


def _info(app: Celeriac, item: Loaded, now: float) -> EntryInfo:
    entry, state = item.entry, item.state or EntryState()
    last_state = None
    if state.last_task_id:
        stored = app.broker.get_result(state.last_task_id)
        if stored is not None:
            from celeriac.message import decode_result

            last_state = decode_result(stored[0]).state
        else:
            last_state = "PENDING"
    next_run = None
    if entry is not None and not item.paused:
        next_run = entry.schedule.next_after(now)
    elif entry is None:
        next_run = state.next_run
    spec = item.spec
    task = entry.task if entry else spec.task if spec else state.task
    return EntryInfo(
        name=item.name,
        task=task,
        schedule=entry.schedule.describe() if entry else _stored(spec) or state.schedule,
        origin=item.origin,
        paused=item.paused,
        missed=entry.missed if entry else "?",
        next_run=next_run,
        last_run=state.last_tick,
        last_task_id=state.last_task_id,
        last_state=last_state,
        sent_by=state.sent_by,
        args=entry.args if entry else (),
        kwargs=entry.kwargs if entry else None,
        options=entry.options if entry else None,
        last_error=state.last_error,
        problem=item.problem,
        last_sent_as=state.task if state.last_task_id and state.task not in ("", task) else None,
    )


def _stored(spec: EntrySpec | None) -> str:
    """A stored schedule as written, for an entry this process cannot rebuild."""
    if spec is None:
        return ""
    if spec.cron is not None:
        return f"cron {spec.cron} ({spec.tz or 'UTC'})"
    return f"every {format_seconds(spec.every)}" if spec.every is not None else ""
