"""``celeriac peek QUEUE``: what waits in a queue, read without taking it: the next tasks
to run, or how many of each task, and their ids for ``celeriac revoke -``."""

from __future__ import annotations

import difflib
import time
from collections import Counter
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from celeriac.brokers.records import PEEK_LIMIT, QueueStats, Waiting
from celeriac.cli.main import NAME, Context, cli, err, out, print_json
from celeriac.message import peek_identity, ready_at
from celeriac.text import cut, duration, printable

#: Bytes of a message's body ``peek --json`` shows.
_SHOWN_BODY = 2048
#: What a message whose task cannot be read is listed as.
_UNREAD = "?"


class _Seen:
    """One waiting message as peek shows it: its task read from its bytes."""

    def __init__(self, waiting: Waiting, now: float) -> None:
        self.waiting = waiting
        self.task = peek_identity(waiting.body)[1] or _UNREAD
        self.ready = waiting.due is None or waiting.due <= now
        self.ready_since = ready_at(waiting.body) if waiting.due is None else waiting.due

    def when(self, now: float) -> str:
        """The table's cell: how long a ready one has waited, when a delayed one is due."""
        due = self.waiting.due
        if not self.ready and due is not None:
            return f"due in {duration(due - now)}"
        if self.ready_since is None:
            return "?"
        return duration(max(now - self.ready_since, 0.0))

    def as_json(self) -> dict[str, Any]:
        """The message for ``--json``: its body readable, cut at ``_SHOWN_BODY`` bytes."""
        w = self.waiting
        return {
            "id": w.id or None,
            "task": None if self.task == _UNREAD else self.task,
            "state": "ready" if self.ready else "delayed",
            "priority": w.priority,
            "deliveries": w.deliveries,
            "due": w.due,
            "ready_since": self.ready_since if self.ready else None,
            "body": w.body[:_SHOWN_BODY].decode("utf-8", "replace"),
            "body_bytes": len(w.body),
        }


@cli.command()
@click.argument("queue", type=NAME)
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(1, PEEK_LIMIT),
    default=20,
    show_default=True,
    help="Tasks listed.",
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
@click.option("--ids", is_flag=True, help="Print only the ids, one a line: | celeriac revoke -")
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
    time. Running tasks are not listed (celeriac inspect active shows them).

    Example: celeriac peek emails --by-task, then
             celeriac peek emails --task shop.reindex --ids -n 10000 | celeriac revoke -
    """
    if ids and (by_task or as_json):
        raise click.UsageError("--ids prints ids only: use it without --by-task and --json")
    broker = obj.app.broker
    every = broker.stats()
    stats = next((s for s in every if s.queue == queue), None)
    if stats is None:  # a typo at 3 a.m. should not read as an empty queue
        known = sorted(s.queue for s in every)
        close = difflib.get_close_matches(queue, known, n=1, cutoff=0.6)
        raise click.BadParameter(
            printable(
                f"no queue {queue!r} has been used on this broker"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (queues: {', '.join(known) or 'none yet'})"
            ),
            param_hint="'QUEUE'",
        )
    now = time.time()
    read = broker.peek(queue, PEEK_LIMIT if tasks or by_task else lines)
    seen = [_Seen(w, now) for w in read]
    chosen = [s for s in seen if _matches(s.task, tasks)]
    if by_task:
        _print_counts(queue, stats, chosen, len(read), tasks=tasks, as_json=as_json)
        return
    chosen = chosen[:lines]
    if ids:
        for s in chosen:
            if s.waiting.id:  # bytes pushed by hand have none until a fetch
                click.echo(s.waiting.id)
        return
    if as_json:
        print_json([s.as_json() for s in chosen])
        return
    _print_list(queue, stats, chosen, now, tasks)


def _matches(task: str, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatchcase(task, p) for p in patterns)


def _summary(queue: str, stats: QueueStats) -> str:
    return (
        f"queue {queue}: {stats.ready:,} ready, {stats.delayed:,} delayed, "
        f"{stats.in_flight:,} in flight"
    )


def _print_list(
    queue: str, stats: QueueStats, chosen: list[_Seen], now: float, tasks: Sequence[str]
) -> None:
    which = f" of task {' or '.join(tasks)}" if tasks else ""
    if not chosen:
        out.print(escape(printable(f"{_summary(queue, stats)}; none waiting{which}")))
        return
    out.print(escape(printable(f"{_summary(queue, stats)}; the next {len(chosen):,}{which}:")))
    # No borders, and ids never folded: an id is copied into `celeriac result` or `revoke`.
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("priority", justify="right")
    table.add_column("waited", justify="right")
    # Only when one was handed out before (its worker died, it was put back): 80 columns
    # leave the task name little room beside a 36-character id.
    handed_out = any(s.waiting.deliveries for s in chosen)
    if handed_out:
        table.add_column("deliveries", justify="right")
    for s in chosen:
        row = [
            escape(printable(s.waiting.id or "(bytes pushed by hand)")),
            escape(printable(cut(s.task, 80))),
            str(s.waiting.priority),
            s.when(now),
        ]
        table.add_row(*row, *([str(s.waiting.deliveries)] if handed_out else []))
    out.print(table)
    if any(s.task == _UNREAD for s in chosen):
        err.print(
            "[yellow]note:[/] a task shown as ? is bytes that are not a celeriac message: "
            "the worker that takes it dead-letters it (celeriac dlq list)"
        )


def _print_counts(
    queue: str,
    stats: QueueStats,
    chosen: list[_Seen],
    read: int,
    *,
    tasks: Sequence[str],
    as_json: bool,
) -> None:
    ready = Counter(s.task for s in chosen if s.ready)
    delayed = Counter(s.task for s in chosen if not s.ready)
    names = sorted(ready.keys() | delayed.keys(), key=lambda t: (-ready[t] - delayed[t], t))
    waiting = stats.ready + stats.delayed
    if as_json:
        print_json(
            {
                "queue": queue,
                "read": read,
                "waiting": waiting,
                "tasks": [{"task": t, "ready": ready[t], "delayed": delayed[t]} for t in names],
            }
        )
        return
    if not names:
        which = f" of task {' or '.join(tasks)}" if tasks else ""
        out.print(escape(printable(f"{_summary(queue, stats)}; none waiting{which}")))
        return
    part = f"the first {read:,} read" if read < waiting else f"all {read:,}"
    out.print(escape(printable(f"{_summary(queue, stats)}; by task, of {part}:")))
    table = Table(box=None, pad_edge=False)
    for column in ("task", "ready", "delayed"):
        table.add_column(column, justify="left" if column == "task" else "right", overflow="fold")
    for t in names:
        table.add_row(escape(printable(t)), f"{ready[t]:,}", f"{delayed[t]:,}")
    out.print(table)
