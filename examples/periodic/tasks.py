"""Periodic tasks: cron in a named zone, intervals, and Celery-style configuration.

Run a worker with a scheduler inside:  celeriac -A tasks worker --beat -c 2
or schedulers alone (run several):     celeriac -A tasks beat
See every entry and its next run:      celeriac -A tasks beat list
Add one at run time (no restart):
    celeriac -A tasks beat add hi tasks.say --every 10s --args '["hi"]'
Pause it, then remove it:
    celeriac -A tasks beat pause hi && celeriac -A tasks beat remove hi
"""

from __future__ import annotations

import time
from datetime import timedelta

from celeriac import Celeriac
from celeriac.beat import crontab

# No broker given: a SQLite file in the working directory; CELERIAC_BROKER_URL overrides it.
app = Celeriac("periodic-example")

# Configuration, as Celery users write it: name -> task, schedule, args, kwargs, options.
app.conf.beat_schedule = {
    "heartbeat-every-30s": {"task": "tasks.heartbeat", "schedule": 30.0},
    "weekday-digest": {
        "task": "tasks.say",
        "schedule": "0 9 * * 1-5",
        "tz": "America/New_York",
        "args": ("good morning",),
        "options": {"priority": 5},
    },
    # Celery's crontab(...), imported from celeriac.beat: a cron string in beat_timezone.
    "month-closed": {
        "task": "tasks.say",
        "schedule": crontab(minute=0, hour=6, day_of_month=1),
        "args": ("month closed",),
    },
}


@app.periodic(every=timedelta(seconds=10))
@app.task(soft_time_limit=5, time_limit=8, expires=10)  # done before the next tick
def refresh_rates() -> str:
    """Every 10 seconds, on :00, :10, :20... whichever scheduler gets there first."""
    return f"rates refreshed at {time.strftime('%H:%M:%S')}"


# missed="run_once": if every scheduler was down at 03:00, run the report once on recovery.
@app.periodic(cron="0 3 * * *", tz="Europe/Kyiv", missed="run_once")
@app.task(soft_time_limit=1800, time_limit=2400, expires=6 * 3600)
def nightly_report() -> str:
    """03:00 in Kyiv, daylight-saving changes included."""
    return "nightly report built"


@app.task(soft_time_limit=5, time_limit=10, expires=30)
def heartbeat() -> str:
    """Scheduled from beat_schedule above."""
    return "alive"


@app.task(soft_time_limit=5, time_limit=10, expires=3600)
def say(text: str) -> str:
    """Scheduled from beat_schedule, or at run time with `celeriac beat add`."""
    return text
