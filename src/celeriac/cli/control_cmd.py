"""Commands that talk to live workers through the broker: revoke, ping, inspect and
shutdown."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from celeriac.celery_names import INSPECTIONS
from celeriac.cli.celery_flags import CeleryChoice
from celeriac.cli.main import NAME, Context, Seconds, cli, out, print_json
from celeriac.control import (
    Reply,
    ask,
    ask_each,
    is_revoke_mark,
    live_workers,
    revoke_many,
)
from celeriac.errors import MalformedMessage
from celeriac.message import decode_result
from celeriac.text import duration, printable

if TYPE_CHECKING:
    from celeriac.group_result import GroupResult

#: Seconds a Redis gets to answer each call of ping, inspect and shutdown beyond their
#: own wait for replies: a live one answers in milliseconds, a frozen one fails the
#: command soon after instead of at the broker's 30 s socket timeout.
_REDIS_SLACK = 2.0

#: Seconds ``shutdown`` waits for the workers' answers.
_SHUTDOWN_WAIT = 2.0


@cli.command("revoke")
@click.argument("task_ids", nargs=-1, required=True, type=NAME, metavar="TASK_ID... | -")
@click.option("--terminate", is_flag=True, help="Also stop the task if it is running.")
@click.pass_obj
def revoke_cmd(obj: Context, task_ids: tuple[str, ...], terminate: bool) -> None:
    """Revoke tasks by id: they will not start (with --terminate, running ones stop too).

    Each id reaches that one task. A chain's id is its last step's and a chord's is its
    body's: revoking it stops that step only, and the steps before it still run. Revoke a
    whole workflow with the handle that sending it returned (result.revoke()), or give
    every step's id. A group's id (group(...).apply_async().id) revokes its members. A
    task that already finished keeps its outcome (they are listed).
    With - the ids are read from standard input, separated by spaces or newlines.

    \b
    Example: celeriac revoke 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --terminate
    Example: celeriac revoke - < ids.txt
    """
    ids = _ids_given(task_ids)
    before = dict(zip(ids, obj.app.broker.get_results(ids), strict=True))
    _refuse_task_names(obj, [i for i in ids if before[i] is None])
    groups = _saved_groups(obj, ids)
    for group in groups:
        # The group's members: revoking its id alone marked that id REVOKED, which no task
        # has, and every member still ran.
        group.revoke(terminate=terminate)
        click.echo(
            f"revoked group {printable(group.id)}: its {len(group)} member(s)"
            + (" (terminate)" if terminate else "")
            + "; those that had finished keep their outcome (celeriac result shows them)"
        )
    ids = [i for i in ids if i not in {g.id for g in groups}]
    if not ids:
        return
    held = revoke_many(obj.app, ids, terminate=terminate)
    click.echo(f"revoked {len(ids)} task(s)" + (" (terminate)" if terminate else ""))
    if held:
        click.echo(_held_note(held, terminate), err=True)
    unknown = [i for i in ids if before[i] is None and i not in held]  # held: said above
    if unknown:
        click.echo(_nothing_stored_note(unknown, terminate), err=True)
    finished = _already_finished(obj, ids)
    if finished:
        shown = ", ".join(f"{printable(i)} ({state})" for i, state in finished[:10])
        more = f" and {len(finished) - 10} more" if len(finished) > 10 else ""
        click.echo(
            f"note: {len(finished)} had already finished and keep their outcome: {shown}{more}",
            err=True,
        )


def _held_note(held: list[str], terminate: bool) -> str:
    """What becomes of the revoked tasks a worker held (running, or taken to run).

    Example:
        >>> print(_held_note(["a1"], terminate=False))  # doctest: +ELLIPSIS
        note: 1 was in a worker's hands: a1. One not started yet is dropped...
    """
    shown = ", ".join(printable(i) for i in held[:10])
    more = f" and {len(held) - 10} more" if len(held) > 10 else ""
    was = "was" if len(held) == 1 else "were"
    then = (
        "Their workers stop them; each reads REVOKED once stopped (celeriac result ID)."
        if terminate
        else "One not started yet is dropped and reads REVOKED; one already running goes "
        "on to its end, and its result says how it ended. To stop them: celeriac revoke "
        "--terminate ID"
    )
    return f"note: {len(held)} {was} in a worker's hands: {shown}{more}. {then}"


def _ids_given(task_ids: tuple[str, ...]) -> list[str]:
    """The ids to revoke: as typed, and those on standard input for ``-``, each once.

    Read as an id, ``-`` revoked a task named "-" and said "revoked 1 task(s)".
    """
    ids: list[str] = []
    for task_id in task_ids:
        if task_id == "-":
            from_stdin = sys.stdin.read().split()
            if not from_stdin:
                raise click.UsageError("revoke -: no task ids on standard input")
            ids.extend(from_stdin)
        else:
            ids.append(task_id)
    return list(dict.fromkeys(ids))


def _refuse_task_names(obj: Context, ids: list[str]) -> None:
    """A usage error for an id that is a task name of the ``-A`` app (and no task's id):
    ``revoke tasks.send_welcome`` said "revoked 1 task(s)" and stopped nothing."""
    names = [i for i in ids if i in obj.app.tasks]
    if names:
        raise click.UsageError(
            f"{printable(names[0])} is a task name; revoke takes task ids (delay() and "
            "celeriac call print them; celeriac events and inspect active show them). "
            "Nothing was revoked."
        )


def _saved_groups(obj: Context, ids: list[str]) -> list[GroupResult]:
    """The ids that are groups sent with ``group(...).apply_async()`` (saved for ``celeriac
    result GROUP_ID``), as their results; a chord's id is its body's, a task's."""
    from celeriac.group_result import GroupResult
    from celeriac.result import group_key

    saved = obj.app.broker.kv_get([group_key(i) for i in ids])  # one round trip for all
    groups = []
    for group_id, raw in zip(ids, saved, strict=True):
        group = GroupResult.restore(obj.app, group_id) if raw is not None else None
        if group is not None and group.id == group_id:  # a chord's restores its header
            groups.append(group)
    return groups


def _nothing_stored_note(ids: list[str], terminate: bool = False) -> str:
    """What to say of revoked ids that had no state stored: a mistyped id was revoked as
    silently as a queued task's (and the broker cannot tell them apart by id). A running
    task has nothing stored either: the note said only "still queued", and a task revoked
    without --terminate then finished and stored SUCCESS.

    Example:
        >>> print(_nothing_stored_note(["no-such-id"]))  # doctest: +NORMALIZE_WHITESPACE
        note: nothing is stored for no-such-id: it is still queued, was never sent (a
        mistyped id?), or its result expired, or it is running. Revoked anyway: it will not
        run if it is queued or sent later; if it is running, it finishes (--terminate stops
        it).
        >>> print(_nothing_stored_note(["a", "b"], terminate=True))  # doctest: +ELLIPSIS
        note: nothing is stored for 2 of them (a, b): ... if it is running, it is stopped.
    """
    if len(ids) == 1:
        which, later = f"{printable(ids[0])}: it is", "it will not run"
    else:
        shown = ", ".join(printable(i) for i in ids[:10])
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        which, later = f"{len(ids)} of them ({shown}{more}): each is", "none will run"
    running = "it is stopped" if terminate else "it finishes (--terminate stops it)"
    return (
        f"note: nothing is stored for {which} still queued, was never sent (a mistyped id?), "
        f"or its result expired, or it is running. Revoked anyway: {later} if it is queued "
        f"or sent later; if it is running, {running}."
    )


def _already_finished(obj: Context, ids: list[str]) -> list[tuple[str, str]]:
    """The ids whose stored outcome is not REVOKED after the revoke: they had finished
    before it (a revoke never replaces a final result), so it changed nothing for them."""
    finished = []
    for task_id, stored in zip(ids, obj.app.broker.get_results(ids), strict=True):
        if stored is not None and stored[1] and not is_revoke_mark(stored[0]):
            try:
                state = decode_result(stored[0]).state
            except MalformedMessage:
                state = "an unreadable result"
            finished.append((task_id, printable(state)))
    return finished


@cli.command()
@click.option(
    "-w",
    "--worker",
    "target",
    default=None,
    metavar="ID|HOST",
    help="Ask one worker (its id), or every worker on a host (its host name, as in the id).",
)
@click.option(
    "--timeout", type=Seconds(0.1, 60), default=1.0, show_default=True, help="Seconds to wait."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def ping(obj: Context, target: str | None, timeout: float, as_json: bool) -> None:
    """Ask every live worker to answer; exit 1 when none answers healthy. With -w, exit 1
    unless each worker it names answers healthy: a container's health check (a worker's id
    ends in its pid and a random part, so the probe names its host). Live workers that did
    not answer in time (frozen, stopping) are named on stderr. A worker answers
    "unhealthy: ..." instead of "pong" while it runs nothing because its children keep
    dying: 5 in a row within 5 minutes, the latest within a minute, no task finished since.

    \b
    Example: celeriac ping --timeout 5
    Example: celeriac ping -w "$(hostname)" --timeout 5   (this host's or pod's workers)
    """
    obj.wait_at_most(timeout + _REDIS_SLACK)
    if target is None:
        (replies, silent), named = ask(obj.app, "ping", timeout=timeout), []
    else:
        named = _named(obj, target)
        replies, silent = ask_each(obj.app, "ping", named, timeout=timeout)
    if as_json:
        print_json({r.worker: r.data for r in replies})
    else:
        for r in replies:
            click.echo(f"{r.worker}: {r.data}")
    if not replies and not named:  # none live, or none -w names
        click.echo(_nobody_answered(obj, target), err=True)
        raise SystemExit(1)
    _say_silent(silent, timeout)
    # A crash-looping worker answers, but runs nothing: a liveness probe must fail for it,
    # or the orchestrator never restarts it.
    unhealthy = [r for r in replies if r.data != "pong"]
    if named and (silent or unhealthy):  # -w: every worker it names must answer healthy
        raise SystemExit(1)
    if not named and len(unhealthy) == len(replies):
        raise SystemExit(1)


def _named(obj: Context, target: str) -> list[str]:
    """The live workers ``-w`` names: the one with that id, else every one on that host.

    A worker's id is ``host:pid:random``: a health check cannot know it, but it knows its
    host (``$(hostname)``; a Kubernetes pod's is its name, a container's its id).
    """
    live = live_workers(obj.app)
    return [w.id for w in live if w.id == target] or sorted(w.id for w in live if w.host == target)


@cli.command()
@click.argument(
    "what",
    type=CeleryChoice(["active", "registered", "stats", "memory"], INSPECTIONS, "inspect command"),
)
@click.option("-w", "--worker", "target", default=None, help="Ask one worker (its id).")
@click.option(
    "--timeout", type=Seconds(0.1, 60), default=1.0, show_default=True, help="Seconds to wait."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def inspect(obj: Context, what: str, target: str | None, timeout: float, as_json: bool) -> None:
    """Ask live workers: running tasks, registered tasks, counters, memory growth by task.
    Live workers that did not answer in time are named on stderr: their tasks are not shown.

    Example: celeriac inspect memory   (which task makes children grow)
    """
    obj.wait_at_most(timeout + _REDIS_SLACK)
    replies, silent = ask(obj.app, what, target=target, timeout=timeout)
    if as_json:
        print_json({r.worker: r.data for r in replies})
    if not replies:
        # Exit 1 with --json too (as ping does): a script read "{}" and exit 0 as "all
        # workers are idle" when none was running.
        click.echo(_nobody_answered(obj, target), err=True)
        raise SystemExit(1)
    if not as_json:
        _print_replies(what, replies)
    _say_silent(silent, timeout)


def _print_replies(what: str, replies: list[Reply]) -> None:
    """The replies to ``inspect WHAT`` as tables (a record, or rows) or one line each."""
    for r in replies:
        if isinstance(r.data, dict):
            # One record (stats): a line per field. As a one-row table its columns were cut
            # at 80 columns ("concurren…") and its children folded a word per line.
            table = Table(title=escape(printable(f"{what} on {r.worker}")), show_header=False)
            table.add_column("field", style="bold")
            table.add_column("value", overflow="fold")
            for k, v in r.data.items():
                table.add_row(escape(printable(str(k))), escape(printable(_cell(k, v), lines=True)))
            out.print(table)
            continue
        rows = r.data if isinstance(r.data, list) else [r.data]
        if rows and isinstance(rows[0], dict):
            # Replies are data (task names, arguments): escaped, never read as markup.
            # ... and their control characters are shown, not obeyed (celeriac.text).
            table = Table(title=escape(printable(f"{what} on {r.worker}")))
            # Folded onto more lines, never cut, and a task id whole on one line: at 80
            # columns (a pipe, kubectl exec without -t) `inspect active` showed
            # "91cb4e44-5d42-44db-a3b1-5e92b39827…", which `revoke` cannot take.
            id_width = _whole_width([printable(str(row.get("id", ""))) for row in rows])
            for column in rows[0]:
                whole = id_width if column == "id" else None
                table.add_column(
                    escape(printable(str(column))),
                    overflow="fold",
                    min_width=whole,
                    no_wrap=whole is not None,  # without it, rich let the table overflow
                )
            for row in rows:
                table.add_row(*(escape(printable(_cell(k, v), lines=True)) for k, v in row.items()))
            out.print(table)
        else:
            listed = ", ".join(map(str, rows)) or "nothing"
            shown = escape(printable(f"{r.worker}")), escape(printable(listed))
            out.print(f"[bold]{shown[0]}[/]: {shown[1]}", markup=True)


def _whole_width(values: list[str]) -> int | None:
    """The width a table column needs to show each of ``values`` (ids: one copies them
    into other commands) on one line; None when there are none, or one is longer than 48
    characters (the column is then folded like the others: kept on one line, it took the
    whole width and squeezed the other columns to a letter a line).

    Example:
        >>> _whole_width(["9b2c7a4e-0d1f-4c3b-8a5e-6f7a8b9c0d1e", "order-42"]), _whole_width([])
        (36, None)
    """
    longest = max(map(len, values), default=0)
    return longest if 0 < longest <= 48 else None


def _cell(column: str, value: Any) -> str:
    """A reply value as a person reads it: durations in s/m/h, lists joined, each child
    of a stats reply on its own line (not Python's reprs; --json has the raw data).

    Example:
        >>> _cell("uptime", 3725.4), _cell("queues", ["emails", "default"])
        ('1h 2m', 'emails, default')
        >>> _cell("children", {"41": {"rss_mb": 27, "done": 2}})
        '41: rss_mb 27, done 2'
    """
    if column in ("uptime", "runtime") and isinstance(value, int | float):
        return duration(float(value))
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        if all(isinstance(v, dict) for v in value.values()):
            return "\n".join(f"{k}: {_cell(str(k), v)}" for k, v in value.items())
        return ", ".join(f"{k} {_cell(str(k), v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@cli.command()
@click.option("-w", "--worker", "target", default=None, help="Stop one worker (its id).")
@click.pass_obj
def shutdown(obj: Context, target: str | None) -> None:
    """Ask workers to stop warmly (running tasks finish; nothing is lost); exit 1 when none
    answers.

    Example: celeriac shutdown -w web-1:4242:9f86d0   (one worker; ids: celeriac status)
    """
    obj.wait_at_most(_SHUTDOWN_WAIT + _REDIS_SLACK)
    replies, silent = ask(obj.app, "shutdown", target=target, timeout=_SHUTDOWN_WAIT)
    if not replies:
        click.echo(_nobody_answered(obj, target), err=True)
        raise SystemExit(1)
    click.echo(f"{len(replies)} worker(s) are shutting down")
    _say_silent(silent, _SHUTDOWN_WAIT)


def _say_silent(silent: list[str], timeout: float) -> None:
    """Name, on stderr, the live workers that did not answer within ``timeout``."""
    if silent:
        click.echo(_silent_note(silent, timeout), err=True)


def _silent_note(silent: list[str], timeout: float) -> str:
    """What to say of live workers that did not answer, and what to do.

    Example:
        >>> print(_silent_note(["web-1:4242:9f86d0"], 1.0))  # doctest: +ELLIPSIS
        no answer within 1s from web-1:4242:9f86d0, live by its heartbeat: frozen ...
    """
    which = ", ".join(printable(w) for w in sorted(silent))
    its = "its" if len(silent) == 1 else "their"
    return (
        f"no answer within {timeout:g}s from {which}, live by {its} heartbeat: frozen "
        "(SIGSTOP, a debugger, a paused VM), stopping, or slowed by its broker calls. Try "
        "again with a longer --timeout; a worker that stays frozen drops out of celeriac "
        "status once its heartbeat expires, and its tasks go back to their queue."
    )


def _nobody_answered(obj: Context, target: str | None) -> str:
    """Why no worker answered, naming the live ones when ``target`` is none of them (a typo
    read as "no worker is running")."""
    live = sorted(w.id for w in live_workers(obj.app))
    if not live:
        return "no worker answered: none is running on this broker (celeriac status)"
    if target is not None and target not in live:
        what = "id or host" if obj.command == "ping" else "id"  # ping -w takes a host too
        return f"no live worker has the {what} {target!r}; the live ones: {', '.join(live)}"
    return (
        f"no worker answered in time; live by their heartbeats: {', '.join(live)}. A busy or "
        "stopping worker may answer late: try again with a longer --timeout"
    )
