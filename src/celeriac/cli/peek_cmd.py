"""``celeriac peek QUEUE``: what waits in a queue, read without taking it: the next tasks
to run, or how many of each task, and their ids for ``celeriac revoke -``."""

from __future__ import annotations

import base64
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from celeriac.brokers.base import Broker
from celeriac.brokers.records import PEEK_BYTES, PEEK_LIMIT, QueueStats, Waiting
from celeriac.cli.main import NAME, Context, cli, closest, err, misspelt, out, print_json
from celeriac.control import is_revoke_mark
from celeriac.message import content_type, delay_reason, peek_identity, ready_at
from celeriac.text import cut, duration, printable

#: Bytes of a message's body ``peek --json`` shows.
_SHOWN_BODY = 2048
#: What a message whose task cannot be read is listed as, and a pickled one.
_UNREAD = "?"
_PICKLED = "(pickled)"
#: Columns of a table written to a pipe or a file: wide enough that no row folds.
_PIPED_WIDTH = 1_000
#: Queue names an unknown queue's error lists at most.
_NAMES_SHOWN = 20
#: What bounds one read, for the lines that say a queue holds more than was read.
_BOUND = f"a peek reads at most {PEEK_LIMIT:,} messages or {PEEK_BYTES // 2**20} MB of them"


class _Seen:
    """One waiting message as peek shows it: its task read from its bytes."""

    def __init__(self, waiting: Waiting, now: float) -> None:
        self.waiting = waiting
        pickled = content_type(waiting.body) == "pickle"
        self.task = _PICKLED if pickled else peek_identity(waiting.body)[1] or _UNREAD
        self.ready = waiting.due is None or waiting.due <= now
        self.ready_since = ready_at(waiting.body) if waiting.due is None else waiting.due
        self.revoked = False

    def when(self, now: float) -> str:
        """The table's cell: how long a ready one has waited, when a delayed one is due."""
        due = self.waiting.due
        if self.revoked:  # how long matters no more: a worker drops it when it takes it
            return "revoked"
        if not self.ready and due is not None:
            why = delay_reason(self.waiting.body)
            return f"due in {duration(due - now)}" + (f" ({why})" if why else "")
        if self.ready_since is None:
            return "?"
        return duration(max(now - self.ready_since, 0.0))

    def as_json(self) -> dict[str, Any]:
        """The message for ``--json``: its body readable, cut at ``_SHOWN_BODY`` bytes, and
        exact in base64 when it is not text (msgpack, pickle, bytes pushed by hand)."""
        w = self.waiting
        shown = w.body[:_SHOWN_BODY]
        fields = {
            "id": w.id or None,
            "task": None if self.task in (_UNREAD, _PICKLED) else self.task,
            "state": "ready" if self.ready else "delayed",
            "revoked": self.revoked,
            "priority": w.priority,
            "deliveries": w.deliveries,
            "due": w.due,
            "delayed_for": None if self.ready else delay_reason(w.body) or None,
            "ready_since": self.ready_since if self.ready else None,
            "body": shown.decode("utf-8", "replace"),
            "body_bytes": len(w.body),
        }
        try:
            shown.decode("utf-8")
        except UnicodeDecodeError:
            fields["body_base64"] = base64.b64encode(shown).decode()
        return fields


@cli.command()
@click.argument("queue", type=NAME)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(1, PEEK_LIMIT),
    default=20,
    show_default=True,
    help="Tasks listed (or ids printed).",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    metavar="NAME",
    help="Only this task; a pattern with * matches many (shop.*). Repeatable.",
)
@click.option(
    "--by-task",
    is_flag=True,
    help=f"Count the waiting tasks by name (the first {PEEK_LIMIT:,} read) instead of listing.",
)
@click.option(
    "--ids",
    is_flag=True,
    help="Print only the ids, one a line, not those revoked: | celeriac revoke -",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, the bodies too.")
@click.pass_obj
def peek(
    obj: Context,
    queue: str,
    *,
    lines: int,
    tasks: tuple[str, ...],
    by_task: bool,
    ids: bool,
    as_json: bool,
) -> None:
    """Show the tasks waiting in QUEUE, without taking them: ready ones in the order
    workers take them (highest priority first, then the oldest), then delayed ones by due
    time. Tasks a worker holds (running, or prefetched) are not listed: celeriac status
    counts them in flight, celeriac inspect active shows the running ones.

    Example: celeriac peek emails --by-task, then
             celeriac peek emails --task shop.reindex --ids -n 10000 | celeriac revoke -
    """
    if ids and (by_task or as_json):
        raise click.UsageError("--ids prints ids only: use it without --by-task and --json")
    broker = obj.app.broker
    stats = _stats_of(broker, queue)
    now = time.time()
    # Filtered, counted or cut to the rows with an id, all that one read holds is needed.
    read = broker.peek(queue, PEEK_LIMIT if tasks or by_task or ids else lines)
    view = _View(queue, stats, read, tasks)
    seen = [_Seen(w, now) for w in read]
    matching = [s for s in seen if _matches(s.task, tasks)]
    if by_task:
        _mark_revoked(broker, matching)
        _print_counts(view, matching, as_json=as_json)
        return
    if ids:  # bytes pushed by hand have no id until a fetch gives them one
        matching = [s for s in matching if s.waiting.id]
    chosen = matching[:lines]
    _mark_revoked(broker, chosen)
    if ids:
        _print_ids(view, chosen, len(matching), lines)
    elif as_json:
        print_json([s.as_json() for s in chosen])
    else:
        _print_list(view, chosen, now)
    if not chosen and not as_json:
        _suggest(view, seen)


class _View:
    """What every form of the output says of the read: the queue, its counts, and
    whether the read saw all of it."""

    def __init__(
        self, queue: str, stats: QueueStats, read: list[Waiting], tasks: Sequence[str]
    ) -> None:
        self.queue, self.stats, self.tasks = queue, stats, tasks
        self.read = len(read)
        self.waiting = stats.ready + stats.delayed
        self.partial = self.read < self.waiting and (
            self.read >= PEEK_LIMIT or sum(len(w.body) for w in read) >= PEEK_BYTES
        )

    def summary(self) -> str:
        s = self.stats
        return (
            f"queue {self.queue}: {s.ready:,} ready, {s.delayed:,} delayed, "
            f"{s.in_flight:,} in flight"
        )

    def none(self) -> str:
        """The line for a read that matched nothing, saying where it looked."""
        which = f" of task {' or '.join(self.tasks)}" if self.tasks else ""
        if self.partial:
            return f"{self.summary()}; none{which} among the first {self.read:,} read ({_BOUND})"
        return f"{self.summary()}; none waiting{which}"


def _stats_of(broker: Broker, queue: str) -> QueueStats:
    """The queue's counts; a usage error for a queue no one used (a typo at 3 a.m. should
    not read as an empty queue)."""
    every = broker.stats()
    stats = next((s for s in every if s.queue == queue), None)
    if stats is not None:
        return stats
    known = sorted(s.queue for s in every)
    close = closest(queue, known)
    listed = ", ".join(known[:_NAMES_SHOWN]) or "none yet"
    if len(known) > _NAMES_SHOWN:
        listed += f", and {len(known) - _NAMES_SHOWN:,} more (celeriac status)"
    raise click.BadParameter(
        printable(
            f"no queue {queue!r} has been used on this broker"
            + (f"; did you mean {close!r}?" if close else "")
            + f" (queues: {listed})"
        ),
        param_hint="'QUEUE'",
    )


def _shown() -> Console:
    """Where the lines go: the terminal's console, or, piped (grep, less), one as wide as
    a row is long: at rich's 80 columns a task name folded and grep missed its row."""
    if sys.stdout.isatty():  # not out.is_terminal: FORCE_COLOR makes a pipe one
        return out
    return Console(file=sys.stdout, width=_PIPED_WIDTH, highlight=False, emoji=False)


def _say(line: str) -> None:
    _shown().print(escape(printable(line)))


def _matches(task: str, patterns: Sequence[str]) -> bool:
    """Whether a task name is one ``--task`` asks for: never "?" or "(pickled)", which
    stand for a name that was not read."""
    if not patterns:
        return True
    return task not in (_UNREAD, _PICKLED) and any(fnmatchcase(task, p) for p in patterns)


def _mark_revoked(broker: Broker, seen: list[_Seen]) -> None:
    """Mark the messages of revoked tasks: they wait until a worker takes and drops them,
    and were printed again by every ``--ids`` meanwhile."""
    with_ids = [s for s in seen if s.waiting.id]
    stored = broker.get_results([s.waiting.id for s in with_ids])
    for s, result in zip(with_ids, stored, strict=True):
        s.revoked = result is not None and is_revoke_mark(result[0])


def _print_ids(view: _View, chosen: list[_Seen], matching: int, lines: int) -> None:
    """One id a line, written as it is (click.echo took escape sequences out of a piped
    id); on standard error, what was left out and why."""
    if not chosen:  # standard output stays empty for the pipe; the reason goes here
        err.print(escape(printable(view.none())))
        return
    skipped_revoked = 0
    for s in chosen:
        task_id = s.waiting.id
        if s.revoked:
            skipped_revoked += 1
        elif any(ch.isspace() for ch in task_id):
            err.print(
                escape(
                    printable(
                        f"note: id {task_id!r} holds white space, which `revoke -` splits "
                        f"on: revoke it by name, celeriac revoke {shlex.quote(task_id)}"
                    )
                )
            )
        else:
            sys.stdout.write(task_id + "\n")
    sys.stdout.flush()
    if skipped_revoked:
        err.print(
            f"note: {skipped_revoked:,} already revoked, left out: a worker drops each "
            "when it takes it"
        )
    if matching > lines:
        read = f" (of the first {view.read:,} read)" if view.partial else ""
        err.print(
            f"note: printed the first {lines:,} of {matching:,}{read}; -n {PEEK_LIMIT} for more"
        )
    elif view.partial:
        err.print(f"note: the queue holds more than was read ({_BOUND}); peek again after")


def _print_list(view: _View, chosen: list[_Seen], now: float) -> None:
    if not chosen:
        _say(view.none())
        return
    which = f" of task {' or '.join(view.tasks)}" if view.tasks else ""
    _say(f"{view.summary()}; the next {len(chosen):,}{which}:")
    # No borders, and ids never folded: an id is copied into `celeriac result` or `revoke`.
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("task", overflow="fold", min_width=12)
    table.add_column("priority", justify="right", no_wrap=True)
    table.add_column("waited", justify="right", no_wrap=True)
    # Only when one was handed out before (its worker died, it was put back): 80 columns
    # leave the task name little room beside a 36-character id.
    handed_out = any(s.waiting.deliveries for s in chosen)
    if handed_out:
        table.add_column("deliveries", justify="right", no_wrap=True)
    for s in chosen:
        row = [
            escape(printable(s.waiting.id or "(bytes pushed by hand)")),
            escape(printable(cut(s.task, 80))),
            str(s.waiting.priority),
            s.when(now),
        ]
        table.add_row(*row, *([str(s.waiting.deliveries)] if handed_out else []))
    _shown().print(table)
    if any(not s.waiting.id and s.task not in (_UNREAD, _PICKLED) for s in chosen):
        err.print(
            "[yellow]note:[/] a row with no id is bytes pushed into the queue by hand: the "
            "worker that takes them runs them only if they are a whole celeriac message "
            "(and signed, when the app signs), and dead-letters them otherwise"
        )
    if any(s.task == _UNREAD for s in chosen):
        err.print(
            "[yellow]note:[/] a task shown as ? is bytes that are not a celeriac message: "
            "the worker that takes it dead-letters it (celeriac dlq list)"
        )
    if any(s.task == _PICKLED for s in chosen):
        err.print(
            "[yellow]note:[/] a pickled message's task is not read here (unpickling runs "
            "code): --task cannot match it"
        )


def _print_counts(view: _View, chosen: list[_Seen], *, as_json: bool) -> None:
    ready = Counter(s.task for s in chosen if s.ready)
    delayed = Counter(s.task for s in chosen if not s.ready)
    revoked = Counter(s.task for s in chosen if s.revoked)
    names = sorted(ready.keys() | delayed.keys(), key=lambda t: (-ready[t] - delayed[t], t))
    if as_json:
        print_json(
            {
                "queue": view.queue,
                "read": view.read,
                "waiting": view.waiting,
                "tasks": [
                    {"task": t, "ready": ready[t], "delayed": delayed[t], "revoked": revoked[t]}
                    for t in names
                ],
            }
        )
        return
    if not names:
        _say(view.none())
        return
    part = f"the first {view.read:,} read ({_BOUND})" if view.partial else f"all {view.read:,}"
    _say(f"{view.summary()}; by task, of {part}:")
    table = Table(box=None, pad_edge=False)
    columns = ["task", "ready", "delayed"] + (["revoked"] if revoked else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "task" else "right", overflow="fold")
    for t in names:
        counts = [f"{ready[t]:,}", f"{delayed[t]:,}"] + ([f"{revoked[t]:,}"] if revoked else [])
        table.add_row(escape(printable(t)), *counts)
    _shown().print(table)


def _suggest(view: _View, seen: list[_Seen]) -> None:
    """Did you mean, for a --task that matched none of the names read: `--task
    shop.reindx` read as an empty queue."""
    found = misspelt(view.tasks, {s.task for s in seen} - {_UNREAD, _PICKLED})
    if found:
        said = f"note: no task {found[0]!r} read; did you mean {found[1]!r}?"
        err.print(escape(printable(said)))
