"""``celeriac beat``: run the periodic scheduler, and list or change its entries.

``celeriac -A proj beat`` runs a scheduler (run several: each tick is sent once).
``celeriac beat list|add|pause|resume|remove`` work on the entries stored in the broker;
running schedulers pick changes up within ``beat_max_interval`` (a second by default).
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from typing import Any

import click
from rich.markup import escape

from celeriac.beat import EntryInfo, Scheduler
from celeriac.cli.main import (
    NAME,
    Context,
    cli,
    did_you_mean,
    err,
    loglevel_option,
    one_shot,
    out,
    parse_json_option,
    print_json,
    setup_logging,
)
from celeriac.errors import ConfigurationError
from celeriac.text import printable

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


@cli.group(invoke_without_command=True)
@loglevel_option
@click.option(
    "--max-interval",
    type=click.FloatRange(0.05),
    default=None,
    metavar="SECONDS",
    help="Look for run-time changes at least this often (default: beat_max_interval).",
)
@click.pass_context
def beat(ctx: click.Context, loglevel: str | None, max_interval: float | None) -> None:
    """Run the periodic scheduler until SIGTERM/Ctrl-C; or manage entries (see below).

    Run as many schedulers as you like, on any hosts: every tick is sent exactly once.

    Example: celeriac -A shop.tasks beat
    """
    if ctx.invoked_subcommand is not None:
        one_shot(ctx)  # list, add, pause...: not the scheduler
        # Nor do they make the broker: `beat list` from another folder than the
        # scheduler's made an empty ./celeriac.db and said only "no periodic entries".
        ctx.obj.command = f"beat {ctx.invoked_subcommand}"
        return
    obj: Context = ctx.obj
    if obj.app_path is None:
        raise ConfigurationError(
            "the scheduler needs your entries: pass -A MODULE, e.g. celeriac -A shop.tasks beat"
        )
    app = obj.app
    setup_logging(loglevel or app.conf.worker_log_level)
    if max_interval is not None:
        app.conf.beat_max_interval = max_interval
    app.beat.static_entries()  # a bad beat_schedule fails here, with its message, not later
    sys.exit(Scheduler(app).run())


@beat.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def beat_list(obj: Context, as_json: bool) -> None:
    """Every entry: schedule, next run, last tick and its outcome.

    Example: celeriac -A shop.tasks beat list --json
    """
    entries = obj.app.beat.entries()
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    if not entries:
        out.print("no periodic entries (define them with @app.periodic or celeriac beat add)")
        return
    # Lines, not a table: seven columns at 80 characters folded every name and date
    # ("2026-12-0" / "1"). The name first and whole, as `dlq list` does.
    out.print(f"{len(entries)} periodic entr{'y' if len(entries) == 1 else 'ies'}")
    for e in entries:
        # Names and ids are data, not markup: "[x]" must show as typed.
        out.print(f"{escape(e.name)}  {escape(e.schedule)}  {_status(e)}", soft_wrap=True)
        task = "" if e.task == e.name else f"task {escape(e.task)}, "
        last = _when(e.last_run)
        if e.last_task_id:
            last += f": task {escape(e.last_task_id)} ({escape(e.last_state or '?')})"
        if e.last_sent_as:  # what ran is not what this code would send: say which ran
            last += f", sent as task {escape(e.last_sent_as)} by {escape(e.sent_by or '?')}"
        out.print(f"    {task}next {_when(e.next_run, 'not planned')}, last {last}", soft_wrap=True)
        if e.problem:  # stored, but this process cannot rebuild it: no scheduler like it runs it
            out.print(f"    [red]cannot be scheduled here:[/] {escape(e.problem)}", soft_wrap=True)
        if e.last_error:  # the last tick was not sent: say why, or nobody would know
            out.print(f"    [red]last tick not sent:[/] {escape(e.last_error)}", soft_wrap=True)


@beat.command("add")
@click.argument("name", type=NAME)
@click.argument("task", type=NAME)
@click.option("--cron", default=None, metavar="EXPR", help="Cron expression: '*/5 * * * *'.")
@click.option("--tz", default=None, metavar="ZONE", help="Zone of --cron: 'Europe/Kyiv'.")
@click.option("--every", default=None, metavar="N[s|m|h|d]", help="Interval: 30, 30s, 5m, 1h.")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments: '[1, 2]'")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments: '{\"x\": 1}'")
@click.option("-q", "--queue", default=None, help="Queue (default: the task's own).")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0..9, 9 runs first.")
@click.option(
    "--missed",
    type=click.Choice(["skip", "run_once"]),
    default="skip",
    show_default=True,
    help="Ticks missed while no scheduler ran: drop them, or run the latest once.",
)
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.option("--replace", is_flag=True, help="Overwrite an entry of the same name.")
@click.pass_obj
def beat_add(
    obj: Context,
    *,
    name: str,
    task: str,
    cron: str | None,
    tz: str | None,
    every: str | None,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    priority: int | None,
    missed: str,
    paused: bool,
    replace: bool,
) -> None:
    """Add entry NAME that sends TASK on a schedule; running schedulers start it at once.

    Example: celeriac beat add nightly-report shop.tasks.report --cron '0 3 * * *' --tz Europe/Kyiv
    """
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron EXPR or --every INTERVAL")
    options: dict[str, Any] = {
        k: v for k, v in {"queue": queue, "priority": priority}.items() if v is not None
    }
    entry = obj.app.beat.add(
        name,
        task,
        cron=cron,
        tz=tz,
        every=_interval(every) if every is not None else None,
        args=parse_json_option("--args", args_json, list),
        kwargs=parse_json_option("--kwargs", kwargs_json, dict),
        missed=missed,
        paused=paused,
        replace=replace,
        **options,
    )
    if obj.app_path is not None and task not in obj.app.tasks:
        # The name is the user's text, never markup: "[red]" in it restyled the line.
        said = printable(f"no task {task!r} is registered in {obj.app_path}")
        err.print(
            f"[yellow]warning:[/] {escape(said + did_you_mean(task, obj.app))}: check the "
            "name (workers that do not know it put its ticks back, then dead-letter them)",
            markup=True,
        )
    upcoming = entry.schedule.format(entry.schedule.next_after(dt.datetime.now().timestamp()))
    click.echo(
        f"added {name}: {task} {entry.schedule.describe()}"
        + (" (paused)" if paused else f"; next run {upcoming}")
    )


@beat.command("pause")
@click.argument("name", type=NAME)
@click.pass_obj
def beat_pause(obj: Context, name: str) -> None:
    """Stop NAME's ticks until resumed (schedulers see it within a second).

    Example: celeriac beat pause nightly-report
    """
    click.echo(obj.app.beat.pause(name))


@beat.command("resume")
@click.argument("name", type=NAME)
@click.pass_obj
def beat_resume(obj: Context, name: str) -> None:
    """Start NAME's ticks again from the next one (ticks missed while paused never run).

    Example: celeriac beat resume nightly-report
    """
    click.echo(obj.app.beat.resume(name))


@beat.command("remove")
@click.argument("name", type=NAME)
@click.pass_obj
def beat_remove(obj: Context, name: str) -> None:
    """Remove NAME (added at run time), or drop the run-time changes of an entry from code.

    Example: celeriac beat remove nightly-report
    """
    click.echo(obj.app.beat.remove(name))


def _interval(text: str) -> float:
    """``30``, ``30s``, ``1.5m``, ``2h``, ``1d`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if match is None:
        raise click.BadParameter(
            f"{text!r}: use seconds or N with s, m, h or d", param_hint="--every"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def _when(ts: float | None, none: str = "never") -> str:
    if not ts:
        return none
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _status(entry: EntryInfo) -> str:
    if entry.problem:
        status = "[red]unreadable here[/]"
    elif entry.paused:
        status = "[yellow]paused[/]"
    elif entry.origin == "elsewhere":
        status = "defined elsewhere"
    else:
        status = f"active ({entry.origin})"
    return status
