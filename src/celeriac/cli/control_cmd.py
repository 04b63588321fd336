"""Commands that talk to live workers through the broker: revoke, ping, inspect,
shutdown, events."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click
import msgspec
from rich.markup import escape
from rich.table import Table

from celeriac.cli.main import Context, Seconds, cli, out, print_json
from celeriac.control import broadcast, live_workers, revoke_many
from celeriac.middleware.events import STREAM, Event
from celeriac.text import printable


@cli.command("revoke")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the task if it is running.")
@click.pass_obj
def revoke_cmd(obj: Context, task_ids: tuple[str, ...], terminate: bool) -> None:
    """Revoke tasks: they will not start (and, with --terminate, running ones stop).

    Example: celeriac revoke 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --terminate
    """
    revoke_many(obj.app, task_ids, terminate=terminate)  # one broker call
    click.echo(f"revoked {len(task_ids)} task(s)" + (" (terminate)" if terminate else ""))


@cli.command()
@click.option("--timeout", type=Seconds(0.1, 60), default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def ping(obj: Context, timeout: float, as_json: bool) -> None:
    """Ask every live worker to answer; exit 1 when none does."""
    replies = broadcast(obj.app, "ping", timeout=timeout)
    if as_json:
        print_json({r.worker: r.data for r in replies})
    else:
        for r in replies:
            click.echo(f"{r.worker}: {r.data}")
    if not replies:
        click.echo(_nobody_answered(obj, None), err=True)
        raise SystemExit(1)


@cli.command()
@click.argument("what", type=click.Choice(["active", "registered", "stats", "memory"]))
@click.option("-w", "--worker", "target", default=None, help="Ask one worker (its id).")
@click.option("--timeout", type=Seconds(0.1, 60), default=1.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def inspect(obj: Context, what: str, target: str | None, timeout: float, as_json: bool) -> None:
    """Ask live workers: running tasks, registered tasks, counters, memory growth by task.

    Example: celeriac inspect memory   (which task makes children grow)
    """
    replies = broadcast(obj.app, what, target=target, timeout=timeout)
    if as_json:
        print_json({r.worker: r.data for r in replies})
        return
    if not replies:
        out.print(escape(_nobody_answered(obj, target)))
        raise SystemExit(1)
    for r in replies:
        rows = r.data if isinstance(r.data, list) else [r.data]
        if rows and isinstance(rows[0], dict):
            # Replies are data (task names, arguments): escaped, never read as markup.
            # ... and their control characters are shown, not obeyed (celeriac.text).
            table = Table(title=escape(printable(f"{what} on {r.worker}")))
            for column in rows[0]:
                table.add_column(escape(printable(str(column))))
            for row in rows:
                table.add_row(*(escape(printable(_cell(k, v), lines=True)) for k, v in row.items()))
            out.print(table)
        else:
            listed = ", ".join(map(str, rows)) or "nothing"
            shown = escape(printable(f"{r.worker}")), escape(printable(listed))
            out.print(f"[bold]{shown[0]}[/]: {shown[1]}", markup=True)


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
        return _duration(float(value))
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        if all(isinstance(v, dict) for v in value.values()):
            return "\n".join(f"{k}: {_cell(str(k), v)}" for k, v in value.items())
        return ", ".join(f"{k} {_cell(str(k), v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, hours = int(seconds // 60), int(seconds // 3600)
    return f"{hours}h {minutes % 60}m" if hours else f"{minutes}m {int(seconds % 60)}s"


@cli.command()
@click.option("-w", "--worker", "target", default=None, help="Stop one worker (its id).")
@click.pass_obj
def shutdown(obj: Context, target: str | None) -> None:
    """Ask workers to stop warmly (running tasks finish; nothing is lost)."""
    replies = broadcast(obj.app, "shutdown", target=target, timeout=2.0)
    if not replies:
        click.echo(_nobody_answered(obj, target), err=True)
        raise SystemExit(1)
    click.echo(f"{len(replies)} worker(s) are shutting down")


def _nobody_answered(obj: Context, target: str | None) -> str:
    """Why no worker answered, naming the live ones when ``target`` is none of them (a typo
    read as "no worker is running")."""
    live = sorted(w.id for w in live_workers(obj.app))
    if not live:
        return "no worker answered: none is running on this broker (celeriac status)"
    if target is not None and target not in live:
        return f"no live worker has the id {target!r}; the live ones: {', '.join(live)}"
    return (
        f"no worker answered in time; live by their heartbeats: {', '.join(live)}. A busy or "
        "stopping worker may answer late: try again with a longer --timeout"
    )


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("-n", "--lines", type=click.IntRange(1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event.")
@click.pass_obj
def events(obj: Context, follow: bool, lines: int, as_json: bool) -> None:
    """Show task events (received, started, succeeded, failed, retried, ...)."""
    broker = obj.app.broker
    items = broker.stream_read(STREAM, 0, 1_000_000)
    after = items[-1][0] if items else 0
    for _, raw in items[-lines:]:
        _print_event(raw, as_json)
    while follow:
        time.sleep(0.2)
        for seq, raw in broker.stream_read(STREAM, after, 1000):
            after = seq
            _print_event(raw, as_json)


def _print_event(raw: bytes, as_json: bool) -> None:
    if as_json:
        click.echo(raw.decode())
        return
    e = msgspec.json.decode(raw, type=Event)
    at = dt.datetime.fromtimestamp(e.at).strftime("%H:%M:%S.%f")[:-3]
    runtime = f" in {e.runtime:.4f}s" if e.runtime else ""  # 0: decided without running
    detail = f": {e.detail}" if e.detail else ""
    line = f"{at} {e.type:<13} {e.task}[{e.id}]{runtime} ({e.worker}){detail}"
    click.echo(printable(line))  # names and errors are the sender's text (celeriac.text)
