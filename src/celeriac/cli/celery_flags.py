"""What to write instead of a Celery command-line option, pool or command that celeriac
lacks, and of celeriac's own option given after the command (Celery 4's order).

A worker's command line is copied from a Procfile or a systemd unit written for Celery
(``celery -A proj worker -l INFO -n w1@%h -E -O fair``): each option celeriac does not
have was "No such option", with nothing on what to write instead.
"""

from __future__ import annotations

import shlex
from typing import Any

import click

_DROP = "drop it"
_DAEMON = "run it under systemd, supervisord or a container, which keep it running: drop it"
_NAMED = f"a worker names itself <host>:<pid>:<random> (celeriac status lists them): {_DROP}"
_EVENTS = f"task events are on by default (worker_send_task_events; celeriac events): {_DROP}"
_IMPORTS = "list the modules of the app's tasks in its imports setting: -A imports them"
_LOGS = "logs go to standard error: redirect it (2>>FILE), or let systemd or Docker collect it"

#: Celery's options per command: what celeriac does instead.
_OPTIONS: dict[str, dict[str, str]] = {
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
        "-s": f"with --beat, the schedule's state is kept in the broker: {_DROP}",
        "--schedule": f"with --beat, the schedule's state is kept in the broker: {_DROP}",
        "-f": _LOGS,
        "--logfile": _LOGS,
        "-D": _DAEMON,
        "--detach": _DAEMON,
        "--pidfile": _DAEMON,
        "--uid": _DAEMON,
        "--gid": _DAEMON,
    },
    "beat": {
        "-s": f"the schedule's state is kept in the broker: {_DROP}",
        "--schedule": f"the schedule's state is kept in the broker: {_DROP}",
        "-S": f"entries come from beat_schedule and celeriac beat add: {_DROP}",
        "--scheduler": f"entries come from beat_schedule and celeriac beat add: {_DROP}",
        "-f": _LOGS,
        "--logfile": _LOGS,
        "--detach": _DAEMON,
        "--pidfile": _DAEMON,
    },
}

#: Celery's commands celeriac does not have: what to run instead.
COMMANDS = {
    "control": "celeriac revoke (--terminate), ping and shutdown are its commands here",
    "multi": "start each worker with celeriac worker (-c N runs N children) under systemd, "
    "supervisord or a container",
    "report": "celeriac --version names the version, celeriac -A MODULE check each task's limits",
    "flower": "there is no dashboard yet: celeriac status, inspect and events -f show the "
    "queues, the workers and each task's outcome",
    "shell": "run python -i and import your tasks module: the app and its tasks are plain objects",
}

#: Celery's inspect commands celeriac does not have: what tells the same.
INSPECTIONS = {
    "ping": "use celeriac ping",
    "reserved": "a worker keeps no backlog of its own: what waits is counted by celeriac "
    "status (ready), and celeriac inspect active shows what runs",
    "scheduled": "tasks with a countdown or an eta wait in the broker, not in a worker: "
    "celeriac status counts them (delayed)",
    "revoked": "revokes are kept in the broker: celeriac result ID says REVOKED at once",
    "active_queues": "celeriac status lists each live worker's queues",
    "query_task": "use celeriac result ID",
}

#: Celery's worker pools: what to pass to -P instead.
POOLS = {
    "prefork": "-P process, the default, is the same: a child process per task slot",
    "solo": "use -c 1 (one task at a time, in one child process)",
    "gevent": "celeriac has no green threads: -P asyncio runs async def tasks, -P threads "
    "blocking ones",
    "eventlet": "celeriac has no green threads: -P asyncio runs async def tasks, -P threads "
    "blocking ones",
    "custom": "celeriac's pools are process, threads and asyncio",
}


def celery_option_advice(command: str, option: str | None) -> str:
    """What ``command`` (``worker``, ``beat``) does instead of Celery's ``option``; empty
    when the option is not one of Celery's.

    Example:
        >>> celery_option_advice("worker", "-B")
        "-B is Celery's: use --beat"
        >>> celery_option_advice("worker", "--no-such")
        ''
    """
    advice = _OPTIONS.get(command, {}).get(option or "")
    return f"{option} is Celery's: {advice}" if advice else ""


class CeleryChoice(click.Choice):  # type: ignore[type-arg]  # generic from click 8.2 only
    """A choice among celeriac's values; one of Celery's (a ``-P`` pool, an ``inspect``
    command) says what to use instead.

    Example:
        >>> CeleryChoice(["process"], POOLS, "pool").convert("process", None, None)
        'process'
    """

    def __init__(self, choices: list[str], celery: dict[str, str], noun: str) -> None:
        super().__init__(choices)
        self.celery, self.noun = celery, noun

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The value chosen, or a usage error that says what replaces Celery's."""
        advice = self.celery.get(value) if isinstance(value, str) else None
        if advice:
            self.fail(f"{value!r} is Celery's {self.noun}: {advice}", param, ctx)
        return super().convert(value, param, ctx)


#: celeriac's own options, which go before the command, with their value's metavar.
_GROUP_OPTIONS = {"-A": "MODULE", "--app": "MODULE", "-b": "URL", "--broker": "URL", "--debug": ""}


def misplaced_option(option: str | None, argv: list[str], command: str | None) -> str:
    """What to type instead when ``option``, one of celeriac's own, follows ``command``:
    ``celeriac worker -A shop.tasks`` (Celery 4's order; Celery 5 says where it goes) was
    only "No such option: -A". ``argv`` is the line after ``celeriac``. Empty for an
    option that is not celeriac's own.

    Example:
        >>> print(misplaced_option("-A", ["worker", "-A", "shop.tasks", "-c", "2"], "worker"))
        -A is an option of celeriac itself: give it before the command, as in:
          celeriac -A shop.tasks worker -c 2
        >>> misplaced_option("--colour", ["status", "--colour"], "status")
        ''
    """
    if option not in _GROUP_OPTIONS:
        return ""
    said = f"{option} is an option of celeriac itself: give it before the command"
    spelled = [i for i, arg in enumerate(argv) if arg == option or arg.startswith(f"{option}=")]
    if not spelled or command is None or command not in argv[: spelled[-1]]:
        return said
    at, metavar = spelled[-1], _GROUP_OPTIONS[option]
    if metavar and "=" not in argv[at]:  # the option and its value, or where it goes
        given = at + 1 < len(argv) and not argv[at + 1].startswith("-")
        moved = argv[at : at + 2] if given else [option, metavar]
        rest = argv[:at] + argv[at + (2 if given else 1) :]
    else:
        moved, rest = argv[at : at + 1], argv[:at] + argv[at + 1 :]
    first = rest.index(command)
    line = " ".join(shlex.quote(arg) for arg in [*rest[:first], *moved, *rest[first:]])
    return f"{said}, as in:\n  celeriac {line}"
