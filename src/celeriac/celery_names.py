"""What celeriac says for Celery's names it does not have: options of ``@app.task`` and of
a send, settings, and the command line's options, pools, commands and inspections.

Code, configuration and Procfiles carried over from Celery met a bare "unknown option",
"unknown setting" or "No such option", or a did-you-mean that pointed at something else
(``task_acks_late`` -> ``task_track_started``). Each table maps a Celery name to what to
write instead; a phrase said of several names is written once, here. Imports nothing:
``options``, ``config`` and the CLI each read their table.
"""

from __future__ import annotations

_DROP = "drop it"
_ACKED = f"a message is always acked after its task ends (at-least-once): {_DROP}"
_ROUTE = "route with queue=..."
_ROUTE_SETTINGS = (
    "route with task_routes, or queue= on @app.task or apply_async (celeriac has no exchanges)"
)
_UNCOMPRESSED = "messages are not compressed; pass ids, not data"
_NO_BACKEND = f"results are stored in the broker, which needs no separate backend: {_DROP}"
_RECONNECT = (
    "workers reconnect with backoff for ever; a producer raises BrokerConnectionError at "
    f"once: {_DROP}"
)
_IMPORTS = "list the modules of the app's tasks in its imports setting: -A imports them"
_SCHEDULE_STATE = f"the schedule's state is kept in the broker: {_DROP}"
_ENTRIES = f"entries come from beat_schedule and celeriac beat add: {_DROP}"
_DAEMON = f"run it under systemd, supervisord or a container, which keep it running: {_DROP}"
_NAMED = f"a worker names itself <host>:<pid>:<random> (celeriac status lists them): {_DROP}"
_EVENTS = f"task events are on by default (worker_send_task_events; celeriac events): {_DROP}"
_LOGS = "logs go to standard error: redirect it (2>>FILE), or let systemd or Docker collect it"
_NO_GREEN = (
    "celeriac has no green threads: -P asyncio runs async def tasks, -P threads blocking ones"
)

#: Options of a send (``apply_async``) and of ``@app.task(...)``.
OPTIONS = {
    "retry": "a send is not retried: a failed one raises BrokerConnectionError, whose "
    "maybe_done says if it may be queued (send again under the same task_id)",
    "retry_policy": "a send is not retried (see retry)",
    "routing_key": _ROUTE,
    "exchange": _ROUTE,
    "serializer": "set task_serializer on the app",
    "compression": _UNCOMPRESSED,
    "shadow": "logs name a task by its registered name",
    # @app.task(...) options
    "acks_late": _ACKED,
    "reject_on_worker_lost": "a task whose worker died runs again, up to max_deliveries, "
    f"then is dead-lettered: {_DROP}",
    "default_retry_delay": "set retry_backoff (seconds), or raise self.retry(countdown=...)",
    "retry_kwargs": "pass max_retries=... itself",
    "base": "shared behaviour goes in a Middleware (Celeriac(..., middleware=[...]))",
    "typing": "arguments are always checked at send",
}

#: Settings (``Celeriac(name=...)``, ``app.conf``).
SETTINGS = {
    "result_backend": _NO_BACKEND,
    "backend": _NO_BACKEND,  # Celery("proj", backend=...)
    "result_backend_transport_options": _NO_BACKEND,
    "task_acks_late": _ACKED,
    "task_reject_on_worker_lost": "a task whose worker died runs again, up to "
    f"task_max_deliveries: {_DROP}",
    "task_queues": _ROUTE_SETTINGS,
    "task_default_exchange": _ROUTE_SETTINGS,
    "task_default_routing_key": _ROUTE_SETTINGS,
    "task_create_missing_queues": f"a queue exists once something is sent to it: {_DROP}",
    "timezone": "times are kept in UTC; beat_timezone is the zone of cron entries",
    "enable_utc": f"times are always kept in UTC: {_DROP}",
    "include": "list the modules of its tasks in imports=[...]: celeriac -A imports them",
    "broker_transport_options": "give Redis options in the broker URL's query "
    "(?socket_timeout=5); a lease's length (Celery's visibility_timeout) is "
    "worker_lease_seconds",
    "broker_connection_retry": _RECONNECT,
    "broker_connection_retry_on_startup": _RECONNECT,
    "broker_connection_max_retries": _RECONNECT,
    "broker_pool_limit": f"a producer keeps the connections it needs: {_DROP}",
    "task_compression": _UNCOMPRESSED,
    "task_annotations": "set options on @app.task, or shared behaviour in a Middleware",
    "task_default_rate_limit": "name a limit per task: @app.task(limit=NAME) with "
    'limits={NAME: "10/s"}',
    "beat_scheduler": _ENTRIES,
    "beat_schedule_filename": _SCHEDULE_STATE,
    "task_send_sent_event": f"events are written by workers: {_DROP}",
    "result_serializer": f"results are stored as JSON, whatever task_serializer is: {_DROP}",
    "result_accept_content": f"results are stored as JSON: {_DROP}",
    "result_compression": _UNCOMPRESSED,
}

#: Options of a Redis broker URL's query that are Celery's (kombu's transport options).
URL_OPTIONS = {
    "visibility_timeout": "a lease's length is the worker_lease_seconds setting (30 s, "
    "renewed while the task runs), not a URL option",
    "fanout_prefix": f"celeriac has no fanout exchanges: {_DROP}",
    "fanout_patterns": f"celeriac has no fanout exchanges: {_DROP}",
    "global_keyprefix": "use prefix= (every key starts with it)",
    "queue_order_strategy": "priorities are strict, 0 to 9, per queue: set priority= on "
    f"the task or the send: {_DROP}",
}

#: Command-line options, per command.
CLI_OPTIONS: dict[str, dict[str, str]] = {
    "worker": {
        "-n": _NAMED,
        "--hostname": _NAMED,
        "-E": _EVENTS,
        "--task-events": _EVENTS,
        "-O": "a child keeps nothing waiting behind a slow task (messages it took with it go "
        f"back to the queue after 50 ms): {_DROP}",
        "--autoscale": "a worker runs -c children, a fixed number: set -c, and start more "
        "workers to scale out",
        "-B": "use --beat",
        "--prefetch-multiplier": "set worker_prefetch_multiplier on the app",
        "--time-limit": "set task_time_limit on the app, or time_limit= on @app.task",
        "--soft-time-limit": "set task_soft_time_limit on the app, or soft_time_limit= on "
        "@app.task",
        "--without-gossip": f"celeriac has no gossip: {_DROP}",
        "--without-mingle": f"celeriac has no mingle: {_DROP}",
        "--without-heartbeat": "heartbeats are how a dead worker's tasks come back within "
        f"seconds: {_DROP}",
        "--purge": "run celeriac purge QUEUE before the worker",
        "-X": "name the queues to consume with -Q",
        "--exclude-queues": "name the queues to consume with -Q",
        "--statedb": f"revokes are kept in the broker: {_DROP}",
        "-I": _IMPORTS,
        "--include": _IMPORTS,
        "-s": f"with --beat, {_SCHEDULE_STATE}",
        "--schedule": f"with --beat, {_SCHEDULE_STATE}",
        "-f": _LOGS,
        "--logfile": _LOGS,
        "-D": _DAEMON,
        "--detach": _DAEMON,
        "--pidfile": _DAEMON,
        "--uid": _DAEMON,
        "--gid": _DAEMON,
    },
    "beat": {
        "-s": _SCHEDULE_STATE,
        "--schedule": _SCHEDULE_STATE,
        "-S": _ENTRIES,
        "--scheduler": _ENTRIES,
        "-f": _LOGS,
        "--logfile": _LOGS,
        "--detach": _DAEMON,
        "--pidfile": _DAEMON,
    },
}

#: Commands: what to run instead.
COMMANDS = {
    "control": "celeriac revoke (--terminate), ping and shutdown are its commands here",
    "multi": "start each worker with celeriac worker (-c N runs N children) under systemd, "
    "supervisord or a container",
    "report": "celeriac --version names the version, celeriac -A MODULE check each task's limits",
    "flower": "there is no dashboard yet: celeriac status, inspect and events -f show the "
    "queues, the workers and each task's outcome",
    "shell": "run python -i and import your tasks module: the app and its tasks are plain objects",
}

#: ``inspect`` commands: what tells the same.
INSPECTIONS = {
    "ping": "use celeriac ping",
    "reserved": "what waits is in the broker: celeriac peek QUEUE lists it; what a worker "
    "prefetched is held under its lease, counted in flight by celeriac status, and "
    "celeriac inspect active shows what runs",
    "scheduled": "tasks with a countdown or an eta wait in the broker, not in a worker: "
    "celeriac peek QUEUE lists them with when each is due, celeriac status counts them",
    "revoked": "revokes are kept in the broker: celeriac result ID says REVOKED at once "
    "(a task already running: how it ends)",
    "active_queues": "celeriac status lists each live worker's queues",
    "query_task": "use celeriac result ID",
}

#: Worker pools (``-P``): what to pass instead.
POOLS = {
    "prefork": "-P process, the default, is the same: a child process per task slot",
    "solo": "use -c 1 (one task at a time, in one child process)",
    "gevent": _NO_GREEN,
    "eventlet": _NO_GREEN,
    "custom": "celeriac's pools are process, threads and asyncio",
}

_HOOKS = (
    "a Middleware's after_execute (the outcome) or after_settle (once committed) does what "
    "it did: Celeriac(..., middleware=[*default_middleware(), Yours()])"
)
_RUN_WORKER = "start a worker with the command line: celeriac -A MODULE worker"
_PERIODIC = (
    "define periodic tasks where the task is: @app.periodic(every=60) or "
    "@app.periodic(cron='0 7 * * *') above it, app.beat.periodic(task, every=...), or "
    "Celery's beat_schedule setting; no signal handler is needed"
)

#: Attributes of Celery's app, tasks and result handles: what to use instead, by the
#: class that lacks them.
ATTRIBUTES = {
    "Celeriac": {
        "control": "use celeriac.control: revoke(app, task_id), broadcast(app, 'ping'), "
        "ask(app, 'active'); or app.AsyncResult(task_id).revoke()",
        "backend": "results are stored in the broker: app.AsyncResult(task_id) reads one "
        "and .forget() deletes it",
        "Task": f"there are no task base classes: {_HOOKS}",
        "signature": "use celeriac.signature(name, args, kwargs), or the task's .s(...)",
        "worker_main": _RUN_WORKER,
        "start": _RUN_WORKER,
        "add_periodic_task": _PERIODIC,
        "on_after_configure": _PERIODIC,
        "on_after_finalize": _PERIODIC,
        "on_configure": "configure the app where it is made: Celeriac(name, **settings), or "
        "app.config_from_object(...)",
    },
    "Task": {
        "apply": "run what is queued in this process with celeriac.testing.run_queued(app), "
        "or set task_always_eager=True",
        "subtask": "use .s(...) or .signature(...)",
        "on_success": _HOOKS,
        "on_failure": _HOOKS,
        "on_retry": _HOOKS,
        "after_return": _HOOKS,
        "default_retry_delay": "the task's retry_backoff option sets its retries' waits",
    },
    "AsyncResult": {
        "wait": "use get(timeout=...): wait() is Celery's old name for it",
        "then": "chain the next task instead: (first.s(x) | then.s()).delay()",
    },
}


class _CelerysName:
    """A class attribute for a name of Celery's that the class lacks: reading it raises
    AttributeError saying what to use instead. A descriptor per name, not ``__getattr__``:
    a class with ``__getattr__`` loses CPython's fast attribute reads, and delay() was
    2.5 µs slower for it."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name

    def __get__(self, owner: object, owner_type: type | None = None) -> None:
        raise AttributeError(
            f"{self.kind!r} object has no attribute {self.name!r}: it is Celery's; "
            f"{ATTRIBUTES[self.kind][self.name]}",
            name=self.name,
            obj=owner,
        )


def explain_celerys_names(cls: type) -> None:
    """Give ``cls`` Celery's attribute names from :data:`ATTRIBUTES`, each raising an
    AttributeError that says what to use instead (``hasattr`` stays False).

    Example:
        >>> class Celeriac: ...
        >>> explain_celerys_names(Celeriac)
        >>> Celeriac().backend  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        AttributeError: 'Celeriac' object has no attribute 'backend': it is Celery's; results
        are stored in the broker: app.AsyncResult(task_id) reads one and .forget() deletes it
        >>> hasattr(Celeriac(), "control")
        False
    """
    for name in ATTRIBUTES[cls.__name__]:
        setattr(cls, name, _CelerysName(cls.__name__, name))
