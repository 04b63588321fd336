"""The command group, app loading and error handling shared by every command."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import click
from rich.console import Console

from celeriac.app import Celeriac
from celeriac.errors import CeleriacError, ConfigurationError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@dataclass
class Context:
    """What every command gets: how to find the app, and output preferences."""

    app_path: str | None
    broker: str | None
    debug: bool
    _app: Celeriac | None = None

    @property
    def app(self) -> Celeriac:
        """The app named by ``-A``, or a bare app on ``--broker`` / the default broker."""
        if self._app is None:
            self._app = load_app(self.app_path) if self.app_path else Celeriac("cli")
            if self.broker:
                self._app.conf.broker_url = self.broker
        return self._app


def load_app(path: str) -> Celeriac:
    """Import ``module`` or ``module:attribute`` and return the Celeriac app it holds.

    Raises:
        ConfigurationError: the module cannot be imported or holds no app (says which).
    """
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project folder is importable
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"-A {path}: no module named {module_name!r} (looked in {os.getcwd()} and "
                "the installed packages). Run from your project folder or install it."
            ) from exc
        raise ConfigurationError(f"-A {path}: importing it failed: {exc}") from exc
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, Celeriac):
            raise ConfigurationError(f"-A {path}: {module_name}.{attr} is not a Celeriac app")
        return app
    apps = [v for v in vars(module).values() if isinstance(v, Celeriac)]
    if not apps:
        raise ConfigurationError(
            f"-A {path}: module {module_name} has no Celeriac app. Create one there "
            "(app = Celeriac(...)) or name it: -A module:attribute"
        )
    if len(apps) > 1 and not isinstance(getattr(module, "app", None), Celeriac):
        raise ConfigurationError(
            f"-A {path}: several apps in {module_name}; name one with -A {module_name}:NAME"
        )
    app = getattr(module, "app", None)
    return app if isinstance(app, Celeriac) else apps[0]


class _Group(click.Group):
    """Turns celeriac errors into one readable line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CeleriacError as exc:
            _fail(ctx, exc)
        except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, not a traceback
            _fail(ctx, exc, unexpected=True)


def _fail(ctx: click.Context, exc: BaseException, unexpected: bool = False) -> NoReturn:
    debug = bool(ctx.obj and ctx.obj.debug) or "--debug" in sys.argv
    if debug:
        err.print_exception()
    kind = f"{type(exc).__name__}: " if unexpected else ""
    err.print(f"[bold red]error:[/] {kind}{exc}", markup=True, soft_wrap=True)
    if not debug:
        err.print("(run with --debug for the traceback)", style="dim")
    sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_path",
    metavar="MODULE[:APP]",
    help="Module that defines your Celeriac app, e.g. shop.tasks",
)
@click.option(
    "-b",
    "--broker",
    metavar="URL",
    envvar="CELERIAC_BROKER_URL",
    help="Broker URL (overrides the app's); env CELERIAC_BROKER_URL",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, broker: str | None, debug: bool) -> None:
    """celeriac: run and manage background tasks."""
    ctx.obj = Context(app_path, broker, debug)


#: ``-l/--loglevel`` for every command that runs a long-lived process.
loglevel_option = click.option(
    "-l",
    "--loglevel",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level (default: worker_log_level).",
)


def print_json(data: Any) -> None:
    """Write machine-readable output to stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def setup_logging(level: str) -> None:
    """Log lines for people: time, level, process and the message."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s [%(process)d] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def parse_json_option(name: str, raw: str | None, kind: type) -> Any:
    """Decode a ``--args``/``--kwargs`` value, with an error that shows what was wrong."""
    if raw is None:
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc.msg} at column {exc.colno}): {raw}", param_hint=name
        ) from exc
    if not isinstance(value, kind):
        example = "'[1, 2]'" if kind is list else "'{\"user_id\": 42}'"
        raise click.BadParameter(f"must be a JSON {kind.__name__}, e.g. {example}", param_hint=name)
    return value


# Commands register themselves on `cli` when their modules are imported.
from celeriac.cli import beat_cmd, check_cmd, commands, control_cmd, demo, worker_cmd  # noqa: E402, F401
