"""Commands that send, inspect and manage tasks: call, result, status, purge, dlq, check."""

from __future__ import annotations

import base64
import codecs
import contextlib
import datetime as dt
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from celeriac.brokers import redacted
from celeriac.brokers.records import MADE_UP_ID
from celeriac.cli.main import (
    NAME,
    Context,
    Seconds,
    cli,
    closest,
    did_you_mean,
    err,
    out,
    parse_json_option,
    print_json,
)
from celeriac.control import live_workers, supervisors
from celeriac.errors import ConfigurationError
from celeriac.message import continues_workflow, decode_result, ready_at
from celeriac.middleware.expiry import expired_key
from celeriac.options import queue_name_problem
from celeriac.result import FINAL_STATES, AsyncResult
from celeriac.text import cut, duration, printable

if TYPE_CHECKING:
    from celeriac import Celeriac
    from celeriac.brokers.records import DeadLetter, QueueStats, WorkerInfo
    from celeriac.group_result import GroupResult
    from celeriac.message import ErrorInfo, ResultRecord


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _queue_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a ``--queue`` the send would refuse, as a usage error naming the option:
    raised by the send, the error spoke Python ("leave queue out (or None)")."""
    problem = queue_name_problem(value) if value is not None else ""
    if problem:
        raise click.BadParameter(f"must be {problem}, got {cut(repr(value), 80)}")
    return value


@cli.command()
@click.argument("name", type=NAME)
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments: '[1, 2]'")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments: '{\"x\": 1}'")
@click.option(
    "-q",
    "--queue",
    default=None,
    type=NAME,
    callback=_queue_option,
    help="Queue (default: the task's own with -A, else task_default_queue).",
)
@click.option(
    "--countdown", type=Seconds(0), default=None, help="Start it no sooner than SECONDS from now."
)
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0..9, 9 runs first.")
@click.option(
    "--id",
    "task_id",
    default=None,
    type=NAME,
    help="Task id (sending an id twice runs once).",
)
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option(
    "--timeout",
    type=Seconds(0),
    default=60.0,
    show_default=True,
    help="Seconds --wait waits.",
)
@click.pass_obj
def call(
    obj: Context,
    *,
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    countdown: float | None,
    priority: int | None,
    task_id: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Send task NAME; print its id (or, with --wait, its result).

    Example: celeriac -A shop.tasks call shop.tasks.send_welcome --args '[42]' --wait
    """
    args = parse_json_option("--args", args_json, list)
    kwargs = parse_json_option("--kwargs", kwargs_json, dict)
    options = {
        k: v
        for k, v in {
            "queue": queue,
            "countdown": countdown,
            "priority": priority,
            "task_id": task_id,
        }.items()
        if v is not None
    }
    try:
        obj.app.check_call(name, args, kwargs)  # with -A the task's code is here
    except TypeError as exc:
        raise click.UsageError(str(exc)) from None
    result = obj.app.send_task(name, args=args, kwargs=kwargs, **options)
    if obj.app_path and name not in obj.app.tasks:  # a typo would wait an hour, then dead-letter
        _note(unregistered_note(name, obj.app_path, obj.app))
    elif not obj.app_path and queue is None:
        # Without the task's code its own queue is unknown: a worker on -Q emails only
        # never sees it, and --wait times out with nothing said.
        _note(
            f"sent to queue {obj.app.conf.task_default_queue!r} (without -A the task's own "
            "queue is unknown); pass -A MODULE or -q QUEUE if its worker consumes another queue"
        )
    if not wait:
        click.echo(result.id)
        return
    value = result.get(timeout=timeout, propagate=False)
    _show_result(result, value)


def unregistered_note(name: str, app_path: str, app: Celeriac) -> str:
    """The warning ``call`` prints when ``-A`` names an app that has no task ``name``.

    The task is still sent: a producer may send tasks whose code lives only on the workers.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> @app.task(name="shop.tasks.send_welcome")
        ... def send_welcome(user_id: int) -> None: ...
        >>> note = unregistered_note("shop.tasks.send_welcom", "shop.tasks", app)
        >>> print(note)  # doctest: +NORMALIZE_WHITESPACE
        shop.tasks has no task named 'shop.tasks.send_welcom'
        (did you mean 'shop.tasks.send_welcome'?). Sent anyway: a worker that has it will run
        it; a worker that does not offers it again every 10 s and dead-letters it after 3600 s
        (celeriac dlq list).
    """
    hint = did_you_mean(name, app)
    conf = app.conf
    return (
        f"{app_path} has no task named {name!r}{hint}. Sent anyway: a worker "
        f"that has it will run it; a worker that does not offers it again every "
        f"{conf.task_unknown_retry_delay:g} s and dead-letters it after "
        f"{conf.task_unknown_max_age:g} s (celeriac dlq list)."
    )


def _show_result(result: AsyncResult[Any], value: Any) -> None:
    stored = result.app.broker.get_result(result.id)
    record = decode_result(stored[0]) if stored else None
    if record is None or record.state == "SUCCESS":
        print_json(value)
        return
    error = record.error
    # Task names, ids and error text are data, never markup (see cli.main._fail).
    # ... and their control characters are shown, not obeyed (see celeriac.text).
    what = escape(printable(f"task {record.task}[{result.id}]"))
    out.print(f"[bold red]{escape(printable(record.state))}[/] {what}", markup=True)
    if error is not None:
        out.print(printable(f"{error.type}: {error.message}", lines=True), markup=False)
        if _adds_to_the_error(error):
            tb = printable(error.traceback.rstrip(), lines=True)
            out.print(tb, style="dim", markup=False)
    sys.exit(1)


def _adds_to_the_error(error: ErrorInfo) -> bool:
    """Whether a stored traceback says more than the error line printed above it. An error
    decided outside the task (revoked and stopped, a time limit) stores only its own line
    as its traceback, and it was printed twice.

    Example:
        >>> from celeriac.message import ErrorInfo
        >>> said = "task shop.add[t-1] was revoked and stopped"
        >>> kind = "celeriac.errors.TaskRevoked"
        >>> _adds_to_the_error(ErrorInfo(type=kind, message=said, traceback=f"{kind}: {said}"))
        False
        >>> _adds_to_the_error(ErrorInfo(type=kind, message=said, traceback="Traceback (..."))
        True
    """
    tb = error.traceback.strip()
    short = error.type.rpartition(".")[2]
    return bool(tb) and tb not in {
        f"{kind}: {error.message}".strip() for kind in (error.type, short)
    }


@cli.command()
@click.argument("task_id", type=NAME)
@click.option("--wait", is_flag=True, help="Wait until the task finishes.")
@click.option(
    "--timeout", type=Seconds(0), default=60.0, show_default=True, help="Seconds --wait waits."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def result(obj: Context, task_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Show a task's state and result; for a group or chord, a progress bar while waiting.

    Example: celeriac result 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --wait
    """
    import time

    from rich.progress import Progress

    from celeriac.group_result import GroupResult

    deadline = time.monotonic() + timeout
    group = GroupResult.restore(obj.app, task_id)  # a group's id, or a chord's (its header)
    if wait and group is not None:
        with Progress(console=out, transient=True) as progress:
            bar = progress.add_task(f"{len(group)} tasks", total=len(group))
            for _ in group.iter_completed(timeout=timeout):
                progress.advance(bar)
    only_group = group if group is not None and group.id == task_id else None  # no own result
    if wait and only_group is None:
        # The timeout as given when nothing was waited for before (a chord's header): what
        # was left of it read "did not finish within 1.98277s" for --timeout 2.
        left = timeout if group is None else round(max(deadline - time.monotonic(), 0), 1)
        # A chord's handle is named so: "task ?[id] did not finish" read as an unknown task.
        name = "chord" if group is not None else ""
        handle: AsyncResult[Any] = AsyncResult(task_id, obj.app, name)
        handle.get(timeout=left, propagate=False)
    stored = obj.app.broker.get_result(task_id)
    summary = only_group.summary() if only_group is not None else None
    record = decode_result(stored[0]) if stored else summary
    if record is None and group is not None:  # a chord whose body has no result yet
        _say_chord_pending(obj, task_id, group, as_json)
        return
    if record is None:
        _say_pending(obj, task_id, as_json)
        return
    if as_json:
        import msgspec

        print_json(
            {
                "id": task_id,
                **msgspec.structs.asdict(record),
                "error": msgspec.structs.asdict(record.error) if record.error else None,
            }
        )
        return
    out.print(_record_table(task_id, record))
    if record.error and _adds_to_the_error(record.error):
        tb = printable(record.error.traceback.rstrip(), lines=True)
        out.print(tb, style="dim", markup=False)
    if record.state in FINAL_STATES - {"SUCCESS"}:
        sys.exit(1)


#: The worker of a revoked task no worker has taken since.
_UNTAKEN = "- (none took it since: the one that does drops it)"


#: Characters of a result shown in `result`'s table: a group of 20,000 members printed
#: 2,011 lines of numbers. --json prints it whole.
_VALUE_SHOWN = 2_000


def _value_shown(value: object) -> str:
    """``repr(value)``, cut to :data:`_VALUE_SHOWN` characters with how much more there is.

    Example:
        >>> _value_shown(list(range(1000)))[-60:]
        '... (4,890 characters in all; --json prints the whole value)'
    """
    text = repr(value)
    if len(text) <= _VALUE_SHOWN:
        return text
    return (
        f"{text[:_VALUE_SHOWN]}... ({len(text):,} characters in all; --json prints the whole value)"
    )


def _record_table(task_id: str, record: ResultRecord) -> Table:
    """A stored result as rows for a person; every value escaped, since a result, an
    error or an id may hold ``[...]`` that rich would take for a style, or control
    characters that the terminal would obey."""
    # A revoke mark (stored by `celeriac revoke` before any worker saw the task) names no
    # task and no worker: it read "task [id]" and "worker -".
    mark = record.state == "REVOKED" and not record.task and not record.worker
    name = record.task or "?"
    rows = [("task", f"{name}[{task_id}]"), ("state", record.state)]
    if record.state == "SUCCESS":
        rows.append(("result", _value_shown(record.result)))
    if record.meta:
        rows.append(("progress", _value_shown(record.meta)))
    if record.error:
        rows.append(("error", f"{record.error.type}: {record.error.message}"))
    rows += [
        ("retries", str(record.retries)),
        ("revoked" if mark else "finished", _when(record.date_done)),
        ("worker", _UNTAKEN if mark else record.worker or "-"),
    ]
    table = Table(show_header=False, box=None)
    for label, value in rows:
        table.add_row(label, escape(printable(value, lines=label == "error")))
    return table


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(obj: Context, as_json: bool) -> None:
    """Each queue's ready, delayed, in-flight, dead and expired-today counts, how long its
    longest-waiting ready task has waited, and the live workers. Ready counts what the next
    fetch can take: delayed tasks that came due, and held ones whose lease ran out (a
    worker killed with -9); in flight is under a lease. Delayed are countdowns and ETAs,
    retries waiting out their backoff, and tasks over a rate limit (celeriac peek QUEUE
    says which).

    Example: celeriac -A shop.tasks status --json
    """
    broker = obj.app.broker
    stats, heartbeats = broker.stats(ready_at), broker.workers()
    workers = supervisors(heartbeats)
    now = time.time()
    expired = {s.queue: len(broker.join_values(expired_key(s.queue))) for s in stats}
    # Children heartbeating alone (their supervisor gone) still drain their queues.
    served = {q for w in heartbeats for q in w.queues}
    unserved = _unserved(stats, served) if heartbeats else []
    notes = broker.notes() + _unserved_notes(unserved, served)
    if as_json:
        print_json(
            {
                "broker": redacted(obj.app.conf.broker_url),
                "queues": [
                    {
                        **_asdict(s),
                        "waited_seconds": _rounded(s.waited(now)),
                        "expired_today": expired[s.queue],
                    }
                    for s in stats
                ],
                "workers": [_asdict(w) for w in workers],
                "unserved_queues": [s.queue for s in unserved],
                "notes": notes,
            }
        )
        return
    for note in notes:  # first: a replica's counts read like a healthy broker's
        out.print(f"[yellow]note:[/] {escape(printable(note))}")
    # Names are folded onto more lines, never cut: at 80 columns (a pipe, kubectl exec
    # without -t) "shop.billing.invoice-reminders.high" and "...low" both read
    # "shop.billing.invoice-r…"; a worker's id and its queue list lost their tails.
    table = Table(title=f"queues on {redacted(obj.app.conf.broker_url)}")
    columns = ("queue", "ready", "longest wait", "delayed", "in flight", "dead", "expired today")
    for column in columns:
        table.add_column(column, justify="left" if column == "queue" else "right", overflow="fold")
    for s in stats:
        table.add_row(
            escape(printable(s.queue)),
            str(s.ready),
            _longest_wait(s, now),
            str(s.delayed),
            str(s.in_flight),
            f"[red]{s.dead}[/]" if s.dead else "0",
            str(expired[s.queue]),
        )
    out.print(table if stats else "no queues yet: nothing has been sent to this broker")
    out.print(
        _workers_table(workers)
        if workers
        else "[yellow]no live workers[/]: queued tasks wait until "
        "one starts (celeriac -A MODULE worker)"
    )
    for w in workers:  # live by their heartbeats, but running nothing: said in full
        unhealthy = w.extra.get("unhealthy")
        if isinstance(unhealthy, str):
            out.print(f"[red]unhealthy:[/] {escape(printable(unhealthy))}")


def _workers_table(workers: list[WorkerInfo]) -> Table:
    """The live workers, a row each, every value folded onto more lines, never cut."""
    table = Table(title="live workers")
    # "-c", as the worker was started: it read "children", and a threads or asyncio
    # worker with -c 8 has one child.
    for column in ("worker", "queues", "-c", "running", "up since"):
        table.add_column(column, overflow="fold", no_wrap=column in ("-c", "running"))
    for w in workers:
        table.add_row(
            escape(printable(w.id)),
            escape(printable(", ".join(w.queues))),
            str(w.concurrency),
            str(len(_active(w))),
            _when(w.started_at),
        )
    return table


def _say_pending(obj: Context, task_id: str, as_json: bool) -> None:
    """No result stored: say which live workers run the task (their heartbeats list the
    ids they run), else what PENDING may mean. A task running for an hour read "queued or
    running, unknown, or its result expired", and finding it took `inspect active`."""
    running = [w.id for w in live_workers(obj.app) if task_id in _active(w)]
    if as_json:
        print_json({"id": task_id, "state": "PENDING", "running_on": running})
    elif running:
        out.print(
            f"PENDING: {printable(task_id)} is running on {printable(', '.join(running))} "
            "(no result stored yet; --wait waits for it)",
            markup=False,
        )
    else:
        # A running task has no result stored either: the line named only "queued".
        out.print(
            f"PENDING: no result stored for {printable(task_id)} (queued or running, "
            "unknown, or its result expired; celeriac inspect active lists running ids)",
            markup=False,
        )


def _say_chord_pending(obj: Context, chord_id: str, header: GroupResult, as_json: bool) -> None:
    """PENDING for a chord, with what its body waits on: it read "no result stored ...
    (queued or running, unknown, or its result expired)", though the header's members are
    saved under the chord's id, and a stuck chord's missing member was found by hand."""
    waiting = header.unfinished()
    running = [] if waiting else [w.id for w in live_workers(obj.app) if chord_id in _active(w)]
    if as_json:
        print_json(
            {
                "id": chord_id,
                "state": "PENDING",
                "running_on": running,
                "chord": {"members": len(header.results), "waiting_on": waiting},
            }
        )
        return
    if not waiting:
        where = f"running on {', '.join(running)}" if running else "queued or running"
        text = (
            f"PENDING: chord {chord_id}: all {len(header.results):,} members finished; its "
            f"body is {where} (celeriac result --wait waits for it)"
        )
    else:
        more = f" and {len(waiting) - 5:,} more" if len(waiting) > 5 else ""
        text = (
            f"PENDING: chord {chord_id}: its body runs once its {len(header.results):,} "
            f"members have finished; {len(waiting):,} task(s) have not: "
            f"{', '.join(waiting[:5])}{more} (celeriac result ID for one; celeriac peek "
            "QUEUE lists what waits in a queue)"
        )
    out.print(printable(text), markup=False, soft_wrap=True)  # ids whole, to copy


def _active(worker: WorkerInfo) -> list[Any]:
    """The ids of the tasks a worker's heartbeat says it runs (a list; other data: none)."""
    active = worker.extra.get("active", [])
    return active if isinstance(active, list) else []


#: Queues :func:`_unserved_notes` names one by one; past them, how many more.
_UNSERVED_NAMED = 10
#: The live workers' queues a note lists at most.
_NAMES_SHOWN = 20


def _unserved(stats: list[QueueStats], served: set[str]) -> list[QueueStats]:
    """The queues that hold tasks while live workers run and none consumes them (none
    lists them in ``served``): their tasks wait for ever, and their counts alone read like
    a backlog a worker is eating. With no live worker at all, the workers line says so."""
    return [s for s in stats if (s.ready or s.delayed) and s.queue not in served]


def _unserved_notes(unserved: list[QueueStats], served: set[str]) -> list[str]:
    """A note per queue :func:`_unserved` found, the first ``_UNSERVED_NAMED`` of them."""
    listed = sorted(served)
    theirs = ", ".join(listed[:_NAMES_SHOWN]) or "none"
    if len(listed) > _NAMES_SHOWN:
        theirs += f", and {len(listed) - _NAMES_SHOWN:,} more"
    notes = [
        f"queue {s.queue!r} holds {s.ready:,} ready and {s.delayed:,} delayed task(s) and no "
        f"live worker consumes it (theirs: {theirs}): start one with -Q {shlex.quote(s.queue)}, "
        "or check that the producer's queue name is right"
        for s in unserved[:_UNSERVED_NAMED]
    ]
    if len(unserved) > _UNSERVED_NAMED:
        notes.append(f"and {len(unserved) - _UNSERVED_NAMED:,} more such queues")
    return notes


def _longest_wait(stats: QueueStats, now: float) -> str:
    """The status table's cell: "-" with no task ready; "?" when Redis cannot tell (the
    messages first in its lists do not say when they were sent: pickled, or not
    messages, which a fetch dead-letters)."""
    if not stats.ready:
        return "-"
    waited = stats.waited(now)
    return "?" if waited is None else duration(waited)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


@cli.command()
@click.argument("queue", type=NAME)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(obj: Context, queue: str, yes: bool) -> None:
    """Delete every ready and delayed task of QUEUE (running ones are left alone).

    Example: celeriac purge emails --yes
    """
    if not yes and not sys.stdin.isatty():
        raise ConfigurationError(f"refusing to purge queue {queue!r} without --yes")
    every = obj.app.broker.stats()  # for the question, and the note on an unknown queue
    if not yes:
        counts = next((s for s in every if s.queue == queue), None)
        held = f" ({counts.ready:,} ready, {counts.delayed:,} delayed)" if counts else ""
        click.confirm(printable(f"Delete every waiting task in queue {queue!r}{held}?"), abort=True)
    count = obj.app.broker.purge(queue)
    click.echo(printable(f"purged {count} task(s) from queue {queue}"))  # a name is data
    known = sorted(s.queue for s in every)
    if queue not in known:  # a typo at 3 a.m. should not look like an empty queue
        listed = escape(
            printable(
                f"no queue {queue!r} has been used on this broker "
                f"(queues: {', '.join(known) or 'none yet'})"
            )
        )
        err.print(f"[yellow]note:[/] {listed}", markup=True)


@cli.group()
def dlq() -> None:
    """Dead letters: messages that will not run again unless replayed.

    Example: celeriac dlq list, then celeriac dlq show ID, then celeriac dlq replay ID
    """


@dlq.command("list")
@click.option(
    "--limit", type=click.IntRange(1), default=50, show_default=True, help="Letters shown."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: the bodies too, each cut at 8,192 bytes (dlq show --full: whole).",
)
@click.pass_obj
def dlq_list(obj: Context, limit: int, as_json: bool) -> None:
    """The newest dead letters, with their reasons (and the task's error, when it failed):
    two or three lines each, the id first.

    Example: celeriac dlq list --limit 10
    """
    letters = obj.app.broker.dead_letters(limit)
    if as_json:
        print_json([letter_json(x, SHOWN_BODY_BYTES) for x in letters])
        return
    if not letters:
        out.print("the dead-letter queue is empty")
        return
    total = sum(s.dead for s in obj.app.broker.stats())
    more = f" of {total:,}; --limit N shows more" if total > len(letters) else ""
    click.echo(f"dead letters (newest {len(letters)}{more})")
    for x in letters:
        click.echo(_letter_lines(x))


#: How much of a dead letter's error `dlq list` shows on its line (`dlq show`: all of it).
LISTED_ERROR_CHARS = 200


def _letter_lines(letter: DeadLetter) -> str:
    """A dead letter as two lines: its id, task, queue, time and deliveries; then its
    reason, indented. A table folded a 36-character id over four lines at 80 columns,
    where it could not be copied into ``dlq show``, and its reason over twenty. A task
    that failed (its retries spent) has a third line, its error: the reason alone, "failed
    after 3 retries", did not say what had happened.

    Example:
        >>> from celeriac.brokers.base import DeadLetter
        >>> reason = "malformed message: task shop.add[t-1]: retries=-1 is negative"
        >>> letter = DeadLetter("t-1", "default", "shop.add", reason, b"", 2, "", 0.0)
        >>> print(_letter_lines(letter))
        t-1  shop.add  queue default  dead at -  2 deliveries
            malformed message: retries=-1 is negative
        >>> error = "builtins.OSError: disk gone"
        >>> letter = DeadLetter("t-2", "default", "shop.add", "failed after 3 retries", b"",
        ...                     1, error, 0.0)
        >>> print(_letter_lines(letter))
        t-2  shop.add  queue default  dead at -  1 delivery
            failed after 3 retries
            builtins.OSError: disk gone
    """
    deliveries = f"{letter.deliveries} deliver{'y' if letter.deliveries == 1 else 'ies'}"
    # The id and task are on the first line: a reason's "task NAME[ID]: " would repeat them.
    reason = letter.reason
    for task, task_id in {(letter.task, letter.id), (printable(letter.task), shown_id(letter.id))}:
        reason = reason.replace(f"task {task}[{task_id}]: ", "", 1)  # as stored, or escaped
    # What a dead letter holds came from the broker: control characters are shown.
    first = (
        f"{shown_id(letter.id)}  {printable(letter.task)}  queue {printable(letter.queue)}  "
        f"dead at {_when(letter.dead_at)}  {deliveries}"
    )
    lines = f"{first}\n    {printable(reason)}"
    if letter.error:  # one line: printable escapes a traceback's newlines
        error = printable(letter.error)
        if len(error) > LISTED_ERROR_CHARS:
            error = f"{error[:LISTED_ERROR_CHARS]}... (celeriac dlq show {shown_id(letter.id)})"
        lines += f"\n    {error}"
    return lines


def shown_id(task_id: str) -> str:
    """An id as a listing prints it: escaped when it has characters a terminal cannot show
    (bytes pushed into a Redis queue by hand get ids such as ``\\x00raw-7``), so it can be
    copied into ``dlq show`` / ``dlq replay``, which read it back with :func:`given_ids`.

    Example:
        >>> shown_id("order-42"), shown_id("\\x00raw-7")
        ('order-42', '\\\\x00raw-7')
    """
    return task_id if task_id.isprintable() else task_id.encode("unicode_escape").decode("ascii")


def given_ids(ids: Sequence[str]) -> list[str]:
    """The ids typed on the command line, each also read back from :func:`shown_id`'s
    escaped form when it has a backslash.

    Example:
        >>> given_ids(["order-42", "\\\\x00raw-7"])
        ['order-42', '\\\\x00raw-7', '\\x00raw-7']
    """
    out = []
    for task_id in ids:
        out.append(task_id)
        if "\\" in task_id and task_id.isascii():  # shown_id escapes to ASCII
            with contextlib.suppress(UnicodeError):  # not an escaped id: as typed only
                out.append(codecs.decode(task_id, "unicode_escape"))
    return list(dict.fromkeys(out))


def made_up_ids(ids: Sequence[str]) -> list[str]:
    """``raw-7`` and ``x00raw-7`` as the id ``\\x00raw-7`` that Redis gives bytes pushed
    by hand: looked up when no letter has the id as typed (a task's own id ``raw-7`` is
    not the made-up one). An unquoted ``\\x00raw-7`` reaches the command as ``x00raw-7``
    (the shell eats the backslash), and ``raw-7`` is how it reads once the terminal hid
    its zero byte: both said "no dead letter" of a letter listed a line above.

    Example:
        >>> made_up_ids(["order-42", "x00raw-8", "raw-9"])
        ['\\x00raw-8', '\\x00raw-9']
    """
    typed = (_MADE_UP_TYPED.fullmatch(task_id) for task_id in ids)
    return [MADE_UP_ID + m.group(1) for m in typed if m]


def _spellings(task_id: str) -> list[str]:
    """Every id ``task_id`` as typed may stand for (see :func:`_letters`)."""
    return [*given_ids([task_id]), *made_up_ids([task_id])]


def _letters(obj: Context, ids: Sequence[str]) -> tuple[list[str], list[DeadLetter]]:
    """The ids to act on for ``ids`` as typed, and their letters: each id as typed (or
    unescaped), else the made-up id it may stand for."""
    wanted = given_ids(ids)
    letters = obj.app.broker.find_dead_letters(wanted) if wanted else []
    found = {x.id for x in letters}
    unfound = [t for t in ids if not found.intersection(given_ids([t]))]
    stand_ins = made_up_ids(unfound)
    if stand_ins:
        more = obj.app.broker.find_dead_letters(stand_ins)
        letters += more
        wanted += [x.id for x in more]
    return wanted, letters


#: ``\\x00raw-7`` as typed without its zero byte: ``raw-7``, or ``x00raw-7`` unquoted.
_MADE_UP_TYPED = re.compile(r"(?:x00)?raw-(\d+)")


# What `dlq show` prints of a body unless --full: a dead letter of a megabyte printed 2.4 MB
# of JSON into the terminal, the reason and the task name scrolled out of sight.
SHOWN_BODY_BYTES = 8192


@dlq.command("show")
@click.argument("task_id", type=NAME)
@click.option(
    "--full", is_flag=True, help=f"The whole body, not its first {SHOWN_BODY_BYTES:,} bytes."
)
@click.pass_obj
def dlq_show(obj: Context, task_id: str, full: bool) -> None:
    """One dead letter as JSON: its body readable and exact in base64.

    A body over 8,192 bytes is cut there unless --full ("body_bytes" is its whole length).

    Example: celeriac dlq show 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --full > letter.json
    """
    _, matches = _letters(obj, [task_id])
    if not matches:
        raise ConfigurationError(f"no dead letter with id {task_id} (see celeriac dlq list)")
    letter = matches[0]
    limit = None if full else SHOWN_BODY_BYTES
    print_json(letter_json(letter, limit))
    if limit is not None and len(letter.body) > limit:
        size = len(letter.body)
        _note(f"the body is {size:,} bytes; shown are its first {limit:,} (--full for all)")


def letter_json(letter: DeadLetter, limit: int | None = None) -> dict[str, Any]:
    """A dead letter for JSON: the body readable (bytes that are not UTF-8 replaced) and
    exact in base64, since a malformed message's bytes are the evidence; cut to its first
    ``limit`` bytes when given, "body_bytes" saying how long it is.

    Example:
        >>> from celeriac.brokers.base import DeadLetter
        >>> letter = DeadLetter("t1", "q", "shop.add", "malformed", b"not json", 1, "", 0.0)
        >>> shown = letter_json(letter, limit=3)
        >>> shown["body"], shown["body_base64"], shown["body_bytes"]
        ('not', 'bm90', 8)
    """
    body = letter.body if limit is None else letter.body[:limit]
    return {
        **_asdict(letter),
        "body": body.decode("utf-8", "replace"),
        "body_base64": base64.b64encode(body).decode("ascii"),
        "body_bytes": len(letter.body),
    }


@dlq.command("replay")
@click.argument("ids", nargs=-1, type=NAME)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--task", "task_name", default=None, type=NAME, help="Replay those of one task name.")
@click.pass_obj
def dlq_replay(obj: Context, ids: tuple[str, ...], replay_all: bool, task_name: str | None) -> None:
    """Send dead letters back to their queues: IDS, --task NAME, or --all.

    Example: celeriac dlq replay --task shop.tasks.send_welcome
    """
    if not ids and not replay_all and not task_name:
        raise click.UsageError("say which: one or more IDS, --task NAME, or --all")
    # Looked up first: once replayed, a letter is gone, like an id that never was one.
    wanted, letters = _letters(obj, ids)
    found = {x.id for x in letters}
    replaying = letters if wanted else _newest_letters(obj, task_name)  # for the notes
    steps = sum(continues_workflow(letter.body) for letter in replaying)
    count = obj.app.replay_dead_letters(wanted or None, task_name)
    click.echo(f"replayed {count} dead letter(s)")
    if count and steps:  # "replayed 3", and the chain they were steps of stayed FAILURE
        _note(
            f"{steps} of them were steps of workflows (a chain, group or chord), which "
            "ended when they were dead-lettered: they run again, but their workflows stay "
            "as they ended (the steps after them and a chord's body do not run again). To "
            "run a whole workflow again, send it again"
        )
    unreadable = sum(x.reason.startswith((_MALFORMED, _REFUSED)) for x in replaying)
    if count and unreadable:  # "replayed 1", and it was back in the queue a moment later
        _note(
            f"{unreadable} of them had been dead-lettered as malformed or refused (bytes no "
            "worker could read, or would trust: unsigned, signed with another key): unless "
            "the workers now read them (a fixed producer's bytes do not change; a codec or "
            "signing setting may have), they come back here. A replay is never signed anew"
        )
    missing = [t for t in dict.fromkeys(ids) if not found.intersection(_spellings(t))]
    if count and missing:  # "replayed 2" for three ids hid the one mistyped
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10:,} more" if len(missing) > 10 else ""
        )
        _note(f"no dead letter with id {shown} (see celeriac dlq list)")
    if not count and (ids or task_name):  # a typo should not look like an empty queue
        which = f"task {task_name}" if task_name and not ids else "those ids"
        hint = _tasks_hint(obj, task_name) if task_name and not ids else ""
        _note(f"no dead letter of {which}{hint} (see celeriac dlq list)")
    if missing:  # as `dlq show` of an unknown id: a runbook's script must not read "done"
        raise SystemExit(1)


def _newest_letters(obj: Context, task: str | None) -> list[DeadLetter]:
    """The newest :data:`_HINT_READS` dead letters of ``task`` (or of all): what a replay
    by --task or --all is told about (its notes count among them)."""
    letters = obj.app.broker.dead_letters(_HINT_READS)
    return [x for x in letters if task is None or x.task == task]


#: How a dead letter's reason begins when its bytes could not be read (worker/reading.py).
_MALFORMED = "malformed message"
#: ... and when a worker would not trust them (unsigned, another key, a copy).
_REFUSED = "refused: "


def _note(text: str) -> None:
    """Print ``note: text`` on stderr (text is printed as it is, never as markup)."""
    err.print(f"[yellow]note:[/] {escape(printable(text))}", markup=True, soft_wrap=True)


def _tasks_hint(obj: Context, task_name: str) -> str:
    """``; did you mean 'x' (3 letters)?``, or the tasks the newest dead letters are of:
    a typo'd --task said only "none", and the right name had to be found by hand."""
    counts = Counter(x.task for x in obj.app.broker.dead_letters(_HINT_READS))
    if not counts:
        return ""
    # Counted among the newest only: "(10 letters)" read as all of them when there were more.
    capped = counts.total() >= _HINT_READS
    close = closest(task_name, counts)
    if close:
        among = f" among the newest {_HINT_READS:,}" if capped else ""
        return f"; did you mean {close!r} ({counts[close]:,} letter(s){among})?"
    listed = ", ".join(f"{name} ({n:,})" for name, n in counts.most_common(5))
    newest = f"newest {_HINT_READS:,}" if capped else "newest"
    return f"; the {newest} dead letters are of {listed}"


_HINT_READS = 1000  # dead letters a mistyped --task is matched against


@dlq.command("purge")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def dlq_purge(obj: Context, yes: bool) -> None:
    """Delete every dead letter.

    Example: celeriac dlq purge --yes
    """
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigurationError("refusing to purge dead letters without --yes")
        click.confirm("Delete every dead letter?", abort=True)
    click.echo(f"deleted {obj.app.broker.purge_dead_letters()} dead letter(s)")
