"""``celeriac worker``: start a supervisor and its child processes."""

from __future__ import annotations

import contextlib
import difflib
import logging
import sys
from typing import TYPE_CHECKING

import click

from celeriac.celery_names import POOLS
from celeriac.cli.celery_flags import CeleryChoice
from celeriac.cli.main import Context, cli, loglevel_option, setup_logging
from celeriac.errors import BrokerError, CeleriacError, ConfigurationError
from celeriac.options import soft_limits_that_never_fire

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.cpus import Cpus


@cli.command()
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Tasks at once: child processes, threads or coroutines (default: worker_concurrency, "
    "else the CPUs the worker may use: its container's CPU limit, its CPU affinity).",
)
@click.option(
    "-P",
    "--pool",
    type=CeleryChoice(["process", "threads", "asyncio"], POOLS, "pool"),
    default="process",
    show_default=True,
    help="process: a child per task slot; threads / asyncio: one child running -c at once.",
)
@click.option(
    "-Q",
    "--queues",
    default=None,
    metavar="Q1,Q2",
    help="Queues to consume, comma-separated (default: task_default_queue).",
)
@loglevel_option
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(1),
    default=None,
    help="Recycle a child after this many tasks.",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(1),
    default=None,
    metavar="MIB",
    help="Recycle a child once its RSS passes this many MiB (Celery's counts KiB; default: "
    "what fits -c children in the container's or host's memory, at most 1024).",
)
@click.option(
    "--beat",
    "with_beat",
    is_flag=True,
    help="Also run the periodic scheduler, in one extra process (safe on every worker).",
)
@click.pass_obj
def worker(
    obj: Context,
    *,
    concurrency: int | None,
    pool: str,
    queues: str | None,
    loglevel: str | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    with_beat: bool,
) -> None:
    """Consume tasks until SIGTERM, SIGHUP or Ctrl-C (twice, or SIGQUIT: cold shutdown; no
    task is lost).

    Example: celeriac -A shop.tasks worker -c 2 -Q emails,default
    """
    if obj.app_path is None:
        raise ConfigurationError(
            "the worker needs your tasks: pass -A MODULE, e.g. celeriac -A shop.tasks worker"
        )
    app = obj.app
    conf = app.conf
    setup_logging(loglevel or conf.worker_log_level)
    if max_tasks_per_child:
        conf.worker_max_tasks_per_child = max_tasks_per_child
    if max_memory_per_child:
        conf.worker_max_memory_per_child = max_memory_per_child
    # Only a missing -Q means the default queue: -Q "$QUEUES" with QUEUES unset is a mistake,
    # and consuming the default queue instead would hide it.
    given = conf.task_default_queue if queues is None else queues
    names = [q.strip() for q in given.split(",") if q.strip()]
    if not names:
        raise click.BadParameter("give at least one queue name", param_hint="-Q")
    from celeriac.worker import Worker
    from celeriac.worker.cpus import usable_cpus

    cpus = usable_cpus()
    concurrency = concurrency or default_concurrency(app, cpus)
    warn_if_many_processes(pool, concurrency, cpus.count)
    warn_of_soft_limits_that_never_fire(app)
    warn_of_queues_no_task_is_sent_to(app, names)
    # task_serializer outside accept_content fails here, not at every message it reads.
    app.codec  # noqa: B018 - built for what it checks
    if not with_beat:
        sys.exit(Worker(app, names, concurrency, pool).run())
    from celeriac.beat import SchedulerProcess

    app.beat.static_entries()  # a bad beat_schedule fails here, before anything starts
    reach_broker_before_forking(app)
    # Forked before the worker starts its children, started again by the supervisor if it
    # dies, and stopped by PID when the worker returns.
    scheduler = SchedulerProcess(app)
    scheduler.start()
    code = 1
    try:
        code = Worker(app, names, concurrency, pool, companions=[scheduler]).run()
    finally:
        scheduler.stop()
    sys.exit(code)


def default_concurrency(app: Celeriac, cpus: Cpus) -> int:
    """``worker_concurrency`` when it was chosen, else the CPUs this worker may use (see
    :mod:`celeriac.worker.cpus`), said when fewer than the host's: the setting's own
    default counts the host's CPUs, and a container limited to 2 of 64 started 64
    children.

    Example:
        >>> from celeriac import Celeriac
        >>> from celeriac.worker.cpus import Cpus
        >>> default_concurrency(Celeriac("doc", broker="memory://"), Cpus(2, "why"))
        2
    """
    if app.conf.was_set("worker_concurrency"):
        return app.conf.worker_concurrency
    if cpus.why:
        logging.getLogger("celeriac.worker").info(
            "concurrency %d: %s (-c or worker_concurrency to choose)", cpus.count, cpus.why
        )
    return cpus.count


def reach_broker_before_forking(app: Celeriac) -> None:
    """Make the first broker call here, before the scheduler process is forked.

    The first call checks the server and logs its start-up warnings (a Redis with
    persistence off) once per process tree: the scheduler, forked after it, inherits that
    they were said. Forked first, it said them a second time. A broker that cannot be
    reached yet is left to the worker, which waits for it and says so.

    Example:
        >>> import tempfile
        >>> from celeriac import Celeriac
        >>> reach_broker_before_forking(
        ...     Celeriac("doc", broker=f"sqlite:///{tempfile.mkdtemp()}/doc.db")
        ... )
    """
    with contextlib.suppress(BrokerError):
        app.broker.workers()


def warn_of_soft_limits_that_never_fire(app: Celeriac) -> list[str]:
    """Warn of the tasks whose soft time limit is not below their hard limit (see
    :func:`~celeriac.options.soft_limits_that_never_fire`); return their names.

    Example:
        >>> from celeriac import Celeriac
        >>> warn_of_soft_limits_that_never_fire(Celeriac("doc", broker="memory://"))
        []
    """
    names = soft_limits_that_never_fire(app)
    if names:
        logging.getLogger("celeriac.worker").warning(
            "%d task(s) have a soft time limit that is not below their hard limit, so it "
            "never fires and their SoftTimeLimitExceeded cleanup never runs: %s. Set "
            "soft_time_limit below time_limit on each (celeriac check lists both).",
            len(names),
            ", ".join(names),
        )
    return names


def warn_of_queues_no_task_is_sent_to(app: Celeriac, queues: list[str]) -> str:
    """Warn when this worker's queues miss where its app's definitions send tasks (each
    task's ``queue``, a periodic entry's): a -Q name near one of them (``-Q emials``), or
    none of them at all (``worker`` alone, every task on ``emails``); return what was said
    ("" when nothing). Skipped when ``task_routes`` may choose a queue: where tasks go is
    not known then; a queue fed only by ``queue=`` at send is said to be one to ignore.

    Tasks sat in their queue until a ``get()`` timed out, the worker idle and silent.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> _ = app.task(name="doc.mail", queue="emails")(print)
        >>> warn_of_queues_no_task_is_sent_to(app, ["emials"])  # doctest: +ELLIPSIS
        "-Q queue 'emials' is named by no task defined here (did you mean 'emails'?)..."
    """
    if app.conf.routing is not None or not app.tasks:
        return ""
    default = app.conf.task_default_queue
    named = {t.options.queue or default for t in app.tasks.values()}
    # Only an app with periodic entries: app.beat loads celeriac.beat (and hmac, through
    # secrets), which a worker without them never needs. A bad beat_schedule is said
    # where it is used.
    periodic = "beat" in app.__dict__ or bool(app.conf.beat_schedule)
    with contextlib.suppress(CeleriacError):
        entries = [entry for entry, _ in app.beat.static_entries().values()] if periodic else []
        named |= {e.options["queue"] for e in entries if "queue" in e.options}
    sent_to = sorted(named)
    said = [
        f"-Q queue {q!r} is named by no task defined here (did you mean {close[0]!r}?)"
        for q in queues
        if q not in named and (close := difflib.get_close_matches(q, sent_to, n=1, cutoff=0.8))
    ]
    if not said and not named & set(queues):
        said = [f"no task defined here names a queue this worker consumes ({', '.join(queues)})"]
    if not said:
        return ""
    text = (
        f"{'; '.join(said)}: tasks defined here go to {', '.join(sent_to)}, and wait there "
        f"until a worker consumes them (-Q {','.join(sent_to)}). If this worker's queues are "
        "fed by queue= at send, ignore this"
    )
    logging.getLogger("celeriac.worker").warning("%s", text)
    return text


def warn_if_many_processes(pool: str, concurrency: int, cpus: int) -> bool:
    """Warn (and return True) when the process pool would start far more children than
    the CPUs the worker may use (see :mod:`celeriac.worker.cpus`): each child holds its
    own memory, and I/O-bound work has better pools.

    Example:
        >>> warn_if_many_processes("threads", 64, cpus=2)
        False
    """
    if pool != "process" or concurrency <= 4 * cpus:
        return False
    logging.getLogger("celeriac.worker").warning(
        "-c %d starts %d child processes where this worker may use %d CPUs; each holds its own "
        "memory (~30 MiB at rest). For tasks that mostly wait on I/O, -P threads or -P asyncio "
        "runs many at once in one child.",
        concurrency,
        concurrency,
        cpus,
    )
    return True
