"""Every setting in one place: a production configuration, and the ways to give one.

Precedence, lowest first: the defaults (celeriac.config.Settings), ``CELERIAC_<NAME>``
environment variables (``CELERIAC_TASK_SOFT_TIME_LIMIT=60``; lists and dicts as JSON),
keyword arguments to ``Celeriac(...)``, then assignments to ``app.conf`` at run time
(``app.conf.update(...)``, and ``app.config_from_object(...)``: a module of settings, a
class, a dict, or Django's settings with ``namespace="CELERY"``).
A misspelt name is refused with the closest real one, never silently ignored.

Run it, in this folder:  python settings.py   (it builds the app and prints; no broker)
"""

from __future__ import annotations

from typing import Any

from celeriac import Celeriac, ConfigurationError

PRODUCTION: dict[str, Any] = {
    # -- where tasks go, and where they are defined -----------------------------------
    "broker_url": "redis://localhost:6379/0",
    "imports": ["shop.orders.tasks", "shop.billing.tasks"],  # celeriac -A imports them too
    "task_default_queue": "default",  # a task with no queue= goes here
    "task_default_priority": 0,  # 0..9, higher runs first
    "task_routes": {"shop.billing.*": "billing"},  # names or globs; a task's queue= wins
    # -- limits every task gets unless it sets its own --------------------------------
    "task_soft_time_limit": 120.0,  # s; SoftTimeLimitExceeded is raised inside the task
    "task_time_limit": 150.0,  # s; then the child is stopped and the task fails
    "task_expires": 3600.0,  # s after sending; a task not started by then is EXPIRED
    "task_max_deliveries": 5,  # hand-outs (crashes included) before the dead-letter queue
    "task_unknown_retry_delay": 10.0,  # s before a task no worker knows is offered again
    "task_unknown_max_age": 3600.0,  # then it is dead-lettered (a deploy took too long)
    "task_strict_kwargs": False,  # True: fail a task given keywords it does not take
    # -- results ----------------------------------------------------------------------
    "task_ignore_result": False,  # True: successes store no value (saves a write)
    "task_track_started": False,  # True: store STARTED too (one more write per task)
    "result_expires": 86_400.0,  # s a result is kept
    "task_result_max_bytes": 16 * 1024 * 1024,  # a bigger result is stored as a FAILURE
    # -- message size -----------------------------------------------------------------
    "task_payload_warn_bytes": 16 * 1024,  # log a warning: pass ids, not objects
    "task_payload_max_bytes": 256 * 1024,  # refuse the send with PayloadTooLarge
    # -- format and trust (examples/advanced/signing.py) ------------------------------
    "task_serializer": "msgpack",  # json (default) | msgpack | pickle (opt-in)
    "accept_content": ["json", "msgpack"],  # what workers read; pickle only if named
    "task_signing_key": ["key-2026", "key-2025"],  # first signs, all verify (rotation)
    # -- workers ----------------------------------------------------------------------
    "worker_concurrency": 4,  # children (or threads, or tasks for -P asyncio); -c wins
    "worker_prefetch_multiplier": 1,  # messages a child takes per free slot
    "worker_batch_max": 64,  # short tasks committed per broker call (1: no batching)
    "worker_batch_window": 0.005,  # s; a batch runs in about this long
    "worker_max_memory_per_child": 512,  # MiB of RSS, then the child recycles
    "worker_max_tasks_per_child": None,  # recycle a child after this many tasks
    "worker_lease_seconds": 30.0,  # a task's lease; renewed every third of it
    "worker_heartbeat_seconds": 2.0,  # a worker is dead after 5 missed heartbeats
    "worker_log_level": "INFO",  # -l wins
    "worker_send_task_events": True,  # outcomes for `celeriac events` (a bounded stream)
    "worker_send_started_events": False,  # also "received" and "started" per task
    # -- rate limits (@app.task(limit="smtp")): global, shared by every host -----------
    "limits": {"smtp": "10/s", "partner-api": "100/m"},
    # -- periodic tasks (examples/periodic/) -------------------------------------------
    "beat_schedule": {"cleanup": {"task": "shop.cleanup", "schedule": "0 3 * * *"}},
    "beat_timezone": "Europe/Kyiv",  # zone of cron entries that name none
    "beat_max_interval": 1.0,  # s between looks for run-time changes
    "beat_missed_after": 30.0,  # a tick this late (at most half its interval) was missed
    # -- tests only -------------------------------------------------------------------
    "task_always_eager": False,  # True: delay() runs the task in the caller
}


def main() -> None:
    """Build an app from the settings above, then change and read some."""
    app = Celeriac("shop", **PRODUCTION)  # keywords win over CELERIAC_* variables
    print("broker:", app.conf.broker_url, "| soft limit:", app.conf.task_soft_time_limit)

    app.conf.task_soft_time_limit = 90  # at run time; converted and checked
    print("soft limit now:", app.conf.task_soft_time_limit)
    print("chosen, not default:", app.conf.was_set("worker_max_memory_per_child"))
    try:
        app.conf.update(task_soft_time_limt=60)
    except ConfigurationError as exc:
        print(exc)
    try:
        app.conf.worker_concurrency = 0
    except ConfigurationError as exc:
        print(exc)

    class DjangoSettings:  # what django.conf:settings holds: CELERY_* names are celeriac's
        DEBUG = False
        CELERY_TASK_DEFAULT_QUEUE = "shop"
        CELERY_TASK_SOFT_TIME_LIMIT = "45"

    app.config_from_object(DjangoSettings, namespace="CELERY")  # "django.conf:settings"
    print("from Django's settings:", app.conf.task_default_queue, app.conf.task_soft_time_limit)
    every = set(app.conf.as_dict())
    print(len(every), "settings; all given here:", set(PRODUCTION) == every)


if __name__ == "__main__":
    main()
