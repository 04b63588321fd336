"""``celeriac check``: limits every task runs under, and deploy-safety manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from celeriac import manifest
from celeriac.cli.main import Context, cli, out, print_json
from celeriac.errors import ConfigurationError
from celeriac.options import soft_limits_that_never_fire

_COLUMNS = ("task", "soft_time_limit", "time_limit", "expires")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--export",
    "export_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the tasks and their signatures to this file.",
)
@click.option(
    "--against",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Compare with a manifest exported from the code now running.",
)
@click.pass_obj
def check(obj: Context, as_json: bool, export_to: Path | None, against: Path | None) -> None:
    """List the limits each task runs under; export or compare task manifests.

    Example: celeriac -A shop.tasks check --against deployed.json   (before a deploy)
    """
    if obj.app_path is None:
        raise ConfigurationError("check needs your tasks: celeriac -A MODULE check")
    obj.app.codec  # noqa: B018 - a task_serializer outside accept_content fails here too
    if export_to is not None:
        export_to.write_text(json.dumps(manifest.build(obj.app), indent=2) + "\n")
        click.echo(f"wrote {len(obj.app.tasks)} task(s) to {export_to}")
        return
    if against is not None:
        _compare(obj, against)
        return
    rows = [_limits(obj, name) for name in sorted(obj.app.tasks)]
    if as_json:
        print_json(rows)
        return
    table = Table(title=escape(f"{len(rows)} task(s) in app {obj.app.name}"))
    for column in _COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(row[c]) for c in _COLUMNS))  # a name is text, not markup
    out.print(table)
    relying = sum("default" in v or "UNBOUNDED" in v for r in rows for v in r.values())
    if relying:
        out.print(
            f"{relying} limit(s) rely on app defaults or are opted out; set them on "
            "the task where the default does not fit."
        )
    silent = soft_limits_that_never_fire(obj.app)
    if silent:
        out.print(
            escape(
                f"{len(silent)} task(s) have a soft_time_limit not below their time_limit: "
                "the hard limit stops them first, so their SoftTimeLimitExceeded cleanup "
                f"never runs: {', '.join(silent)}. Set soft_time_limit below time_limit."
            )
        )


def _limits(obj: Context, name: str) -> dict[str, str]:
    conf, opts = obj.app.conf, obj.app.tasks[name].options
    row = {"task": name}
    for label, own, default in (
        ("soft_time_limit", opts.soft_time_limit, conf.task_soft_time_limit),
        ("time_limit", opts.time_limit, conf.task_time_limit),
        ("expires", opts.expires, conf.task_expires),
    ):
        row[label] = (
            "UNBOUNDED (opted out)"
            if own == math.inf
            else f"{own:g}s"
            if own is not None
            else f"{default:g}s (app default)"
        )
    return row


def _compare(obj: Context, against: Path) -> None:
    try:
        data: Any = json.loads(against.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{against} is not a manifest (cannot read it: {exc})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{against} is not a manifest (invalid JSON: {exc})") from exc
    old = manifest.validate(data, str(against))
    problems = manifest.breaking_changes(old, manifest.build(obj.app))
    if not problems:
        click.echo(f"no breaking changes against {against}")
        return
    click.echo(f"{len(problems)} change(s) would break messages already queued:")
    for problem in problems:
        click.echo(f"  - {problem}")
    raise SystemExit(1)
