"""Periodic tasks: cron and intervals, with no single point of failure.

Define entries in code (``@app.periodic(cron="*/5 * * * *", tz="Europe/Kyiv")``), in
configuration (``beat_schedule``, Celery's format) or at run time (``app.beat.add(...)``,
``celeriac beat add``). Run ``celeriac -A proj beat`` — or ``worker --beat`` — as many
times as you like: every tick fires exactly once (see :mod:`celeriac.beat.scheduler`).

Entry state lives in the broker's small store (:mod:`celeriac.beat.entries`), so
``celeriac beat list`` shows every entry and its next run from anywhere.

Example:
    >>> from datetime import timedelta
    >>> from celeriac import Celeriac
    >>> app = Celeriac("doc", broker="memory://")
    >>> @app.periodic(every=timedelta(seconds=30))
    ... def refresh_rates() -> None:
    ...     '''Runs every 30 seconds, on :00 and :30.'''
"""

from celeriac.beat.api import Beat, EntryInfo, PeriodicDecorator
from celeriac.beat.entries import Entry, tick_id
from celeriac.beat.process import SchedulerProcess, fork_scheduler, stop_scheduler
from celeriac.beat.scheduler import Scheduler
from celeriac.beat.schedules import Cron, Every, Schedule, crontab, parse_schedule

__all__ = [
    "Beat",
    "Cron",
    "Entry",
    "EntryInfo",
    "Every",
    "PeriodicDecorator",
    "Schedule",
    "Scheduler",
    "SchedulerProcess",
    "crontab",
    "fork_scheduler",
    "parse_schedule",
    "stop_scheduler",
    "tick_id",
]
