"""``celeriac events``: the newest task events, and with -f the ones that follow, filtered
by task name and event type."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time
from collections.abc import Sequence
from fnmatch import fnmatchcase

import click
import msgspec

from celeriac.cli.main import Context, cli, misspelt
from celeriac.errors import BrokerConnectionError
from celeriac.event_feed import EventFeed
from celeriac.middleware.events import EVENT_TYPES, STREAM, Event
from celeriac.text import printable

#: Bytes of an event ``events`` cannot read that it shows.
_UNREADABLE_SHOWN = 300
#: Seconds between ``events -f``'s reads while the broker does not answer.
_UNREACHABLE_PAUSE = 1.0
#: Seconds ``events -f`` waits for new events once it has read them all.
_FOLLOW_PAUSE = 0.2


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "-n", "--lines", type=click.IntRange(1), default=20, show_default=True, help="Events shown."
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    metavar="NAME",
    help="Only this task's events; a pattern with * matches many (shop.*). Repeatable.",
)
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(EVENT_TYPES, case_sensitive=False),
    help="Only events of this type (failed, retried, ...). Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.pass_obj
def events(
    obj: Context,
    *,
    follow: bool,
    lines: int,
    tasks: tuple[str, ...],
    types: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show the newest task events: outcomes (succeeded, failed, not-run, retried, ...);
    received and started too when workers run with worker_send_started_events=True.

    With -f, keep printing new ones (through a broker outage, said once on stderr); Ctrl-C
    stops it and exits 0. The broker keeps only the newest events (10,000): when some were
    dropped before -f could print them (a broker restart), a line on stderr says so.
    --task and --type show only the events that match (-n counts those); an event that
    cannot be read matches neither, and is shown only without them.

    Example: celeriac events -f --task 'shop.*' --type failed
    """
    broker = obj.app.broker
    wanted = EventFilter(tasks, types)
    items = broker.stream_read(STREAM, 0, 1_000_000)
    after = items[-1][0] if items else 0
    shown = _in_time_order([raw for _, raw in items if wanted.matches(raw)])
    for raw in shown[-lines:]:
        _print_event(raw, as_json)
    if not as_json and not shown:  # silence read as "the command is broken"
        if not items:
            note = _no_events_note(obj.app.conf.worker_send_task_events, follow)
        else:
            note = f"none of the {len(items):,} events this broker keeps is {wanted}" + (
                ": waiting (Ctrl-C stops)" if follow else ""
            )
            note += _did_you_mean(tasks, _task_names(items) | set(obj.app.tasks))
        click.echo(note, err=True)
    try:
        if follow:
            _follow(EventFeed(broker, after), wanted, as_json)
    except KeyboardInterrupt:
        # Ctrl-C is how following ends, not a failure: it printed "Aborted!" and exited 1.
        return


class EventFilter:
    """Which events ``events`` shows: of the tasks whose names match one of ``tasks`` (glob
    patterns) and of one of ``types``; an empty one of either does not filter.

    Example:
        >>> wanted = EventFilter(["shop.*"], ["failed"])
        >>> event = b'{"type":"failed","id":"1","task":"shop.charge","worker":"w","at":0}'
        >>> wanted.matches(event)
        True
        >>> wanted.matches(event.replace(b"failed", b"succeeded"))
        False
        >>> str(wanted)
        'of task shop.* and of type failed'
    """

    def __init__(self, tasks: Sequence[str], types: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self.types = frozenset(t.lower() for t in types)  # the Choice is case-insensitive

    def matches(self, raw: bytes) -> bool:
        """Whether the event ``raw`` (as the broker holds it) is one to show."""
        if not self.tasks and not self.types:
            return True
        try:
            event = msgspec.json.decode(raw, type=Event)
        except msgspec.DecodeError:
            return False  # neither its task nor its type can be known
        if self.types and event.type not in self.types:
            return False
        return not self.tasks or any(fnmatchcase(event.task, p) for p in self.tasks)

    def __str__(self) -> str:
        parts = []
        if self.tasks:
            parts.append("of task " + " or ".join(self.tasks))
        if self.types:
            parts.append("of type " + " or ".join(sorted(self.types)))
        return printable(" and ".join(parts))


def _in_time_order(events: Sequence[bytes]) -> list[bytes]:
    """Events sorted by the time each happened; those at one time, and one that cannot
    be read or gives no time (kept after the event before it), in the order the broker
    holds them.

    Each worker writes its events in batches (every 0.25 s, or 200 events), so the
    stream holds one worker's batch, then another's: a listing jumped back and forth in
    time by up to a batch.

    Example:
        >>> late = b'{"type":"failed","id":"2","task":"t","worker":"w2","at":2.0}'
        >>> early = b'{"type":"started","id":"1","task":"t","worker":"w1","at":1.0}'
        >>> _in_time_order([late, b"?", early]) == [early, late, b"?"]
        True
    """
    keyed: list[tuple[float, bytes]] = []
    at = -math.inf
    for raw in events:
        with contextlib.suppress(msgspec.DecodeError):  # unreadable: the time before it
            told = _time_of.decode(raw).at
            at = at if told is None else told
        keyed.append((at, raw))
    keyed.sort(key=lambda pair: pair[0])  # stable: ties keep the broker's order
    return [raw for _, raw in keyed]


class _Time(msgspec.Struct):
    at: float | None = None  # None (none given): the time of the event before it


_time_of = msgspec.json.Decoder(_Time)


def _task_names(items: Sequence[tuple[int, bytes]]) -> set[str]:
    """The task names the events name (those that can be read)."""
    names = set()
    for _, raw in items:
        try:
            names.add(msgspec.json.decode(raw, type=Event).task)
        except msgspec.DecodeError:
            continue
    return names


def _did_you_mean(typed: Sequence[str], names: set[str]) -> str:
    """`` (did you mean 'x'?)`` for a --task given as a plain name close to one the events
    or the app name: `--task shop.chrage` read as "that task never failed".

    Example:
        >>> _did_you_mean(["shop.chrage"], {"shop.charge", "shop.refund"})
        " (did you mean 'shop.charge'?)"
        >>> _did_you_mean(["shop.*"], {"shop.charge"})
        ''
    """
    found = misspelt(typed, names)
    return printable(f" (did you mean {found[1]!r}?)") if found else ""


def _no_events_note(sent: bool, follow: bool) -> str:
    """What to say when the broker holds no event: workers run with events off write none,
    and "no events yet" alone read as "no task has run" (``sent``: whether this app's
    configuration, which workers started with ``-A`` share, sends them).

    Example:
        >>> print(_no_events_note(False, follow=False))  # doctest: +NORMALIZE_WHITESPACE
        no events on this broker: this app's configuration turns them off
        (worker_send_task_events=False), so its workers write none
    """
    if not sent:
        return (
            "no events on this broker: this app's configuration turns them off "
            "(worker_send_task_events=False), so its workers write none"
        )
    return (
        "no events yet on this broker (workers write one per task, unless started with "
        "worker_send_task_events=False)" + (": waiting (Ctrl-C stops)" if follow else "")
    )


def _follow(feed: EventFeed, wanted: EventFilter, as_json: bool) -> None:
    """Print the events the feed reads that ``wanted`` matches, until Ctrl-C.

    Pages follow each other without a pause while they come back full: with a pause after
    each, it printed at most 5,000 events a second, fell behind busy workers (a -c 2 worker
    settles ~8,000 tasks a second here) and, once the stream had trimmed what it had not
    read, skipped them without a word (37,000 of 180,000 events shown). When the stream
    was trimmed past the last event shown, the events in between may be lost, which is
    said on stderr (``_MISSED``).
    """
    away = False  # the broker did not answer the last read
    while True:
        try:
            page = feed.read()
        except BrokerConnectionError as exc:
            # Waited out, as workers and result waits wait it out: the follower of a
            # failover (when one watches events most) exited 1 at its first blip,
            # and the events of the minutes after it went unseen. Said once.
            if not away:
                click.echo(f"{printable(str(exc))} Still following (Ctrl-C stops).", err=True)
            away = True
            time.sleep(_UNREACHABLE_PAUSE)
            continue
        if away:
            click.echo("the broker answers again: following", err=True)
            away = False
        if page.missed:
            click.echo(_MISSED, err=True)
        for raw in _in_time_order([raw for raw in page.events if wanted.matches(raw)]):
            _print_event(raw, as_json)
        if not page.full:
            time.sleep(_FOLLOW_PAUSE)


#: What ``events -f`` says when the stream no longer holds the last event it showed: the
#: events after that one may have been trimmed before they could be read. Whether any
#: were, and how many, the sequence numbers cannot always tell (Redis's skip numbers);
#: only a follower thousands of events behind, or a burst as long as the stream, gets here.
_MISSED = (
    "some events may have been dropped before they could be shown: the broker keeps only "
    "the newest events, and they came faster than they could be read, or the broker "
    "restarted. Every task's outcome is still in its result (celeriac result ID)."
)


def _print_event(raw: bytes, as_json: bool) -> None:
    if as_json:
        click.echo(raw.decode("utf-8", "replace"))  # not UTF-8 (another tool's): it ended
        return
    try:
        e = msgspec.json.decode(raw, type=Event)
    except msgspec.DecodeError:
        # A newer celeriac's shape, or another tool's: shown as it is. Raised, it ended the
        # command, and `events` failed until newer events had pushed this one out.
        text = raw[:_UNREADABLE_SHOWN].decode("utf-8", "replace")
        click.echo(printable(f"unreadable event (a newer celeriac's?): {text}"))
        return
    at = dt.datetime.fromtimestamp(e.at).strftime("%H:%M:%S.%f")[:-3]
    runtime = f" in {e.runtime:.4f}s" if e.runtime else ""  # 0: decided without running
    detail = f": {e.detail}" if e.detail else ""
    line = f"{at} {e.type:<13} {e.task}[{e.id}]{runtime} ({e.worker}){detail}"
    click.echo(printable(line))  # names and errors are the sender's text (celeriac.text)
