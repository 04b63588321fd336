"""The schedule from Python: what `celeriac beat add|pause|resume|remove|list` do, and more.

``app.beat`` reads and changes the entries kept in the broker, so running schedulers pick
a change up within ``beat_max_interval`` (1 s), with no restart; an admin page or a
deploy script calls these instead of the command line.

    app.beat.add(name, task, every=.. | cron=.., tz=.., args=.., paused=..)
    app.beat.change(name, every=.. | cron=.., ...)   changes a run-time entry, or
                                                     overrides one from code or config
    app.beat.pause(name), app.beat.resume(name), app.beat.remove(name)
    app.beat.entries(), app.beat.get(name)           EntryInfo: schedule, next run, the
                                                     last tick's task and state
    app.beat.static_entries()                        the entries of code and beat_schedule

Run it, in this folder:  python manage.py
It uses this folder's tasks.py on the in-memory broker, so it changes no real schedule;
with CELERIAC_BROKER_URL pointing at your broker, the same calls change the real one.
"""

from __future__ import annotations

from tasks import app

app.conf.broker_url = "memory://"  # remove this line to manage the real schedule


def main() -> None:
    """Add, change, pause, resume and remove an entry; list what is scheduled."""
    print("from code and config:", sorted(app.beat.static_entries()))

    added = app.beat.add("hello", "tasks.say", every=60, args=["hello"])
    print("added:", added.name, added.schedule.describe())
    changed = app.beat.change("hello", cron="0 8 * * *", tz="Europe/Kyiv")
    print("changed:", changed.name, changed.schedule.describe())

    print(app.beat.pause("hello"), "| paused:", app.beat.get("hello").paused)
    print(app.beat.resume("hello"), "| paused:", app.beat.get("hello").paused)

    for info in app.beat.entries():  # what `celeriac beat list` prints
        row = info.as_dict()  # JSON-ready, times in ISO 8601 (`beat list --json`)
        print(f"{row['name']:20} {row['origin']:8} {row['schedule']}")

    print(app.beat.remove("hello"), "| left:", len(app.beat.entries()))


if __name__ == "__main__":
    main()
