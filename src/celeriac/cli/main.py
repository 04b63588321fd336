"""The command group, app loading and error handling shared by every command."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO
from urllib.parse import parse_qsl, urlsplit

import click
import msgspec

from celeriac.app import Celeriac
from celeriac.brokers import REDIS_SCHEMES
from celeriac.config import check_import_names
from celeriac.errors import CeleriacError, ConfigurationError
from celeriac.integrations import django
from celeriac.text import printable

if TYPE_CHECKING:
    from rich.console import Console

    # Made on first use by __getattr__ below: ``rich.console`` costs ~1 MiB of RSS, and a
    # worker (whose forked children inherit every module it imports) never prints with it.
    out: Console
    err: Console

#: The module that defines each command (it registers itself on ``cli`` when imported).
#: Commands are imported on first use: a worker then never loads the beat scheduler
#: (croniter, dateutil), rich's tables and progress bars or the demo, ~4 MiB of RSS in the
#: supervisor and again in each forked child. A command missing here is still found: see
#: :meth:`_Group.get_command`.
_COMMAND_MODULES = {
    "beat": "beat_cmd",
    "call": "commands",
    "check": "check_cmd",
    "demo": "demo",
    "dlq": "commands",
    "events": "events_cmd",
    "inspect": "control_cmd",
    "metrics": "metrics_cmd",
    "peek": "peek_cmd",
    "ping": "control_cmd",
    "purge": "commands",
    "result": "commands",
    "revoke": "control_cmd",
    "shutdown": "control_cmd",
    "status": "commands",
    "worker": "worker_cmd",
}

#: Commands that run until stopped. The others are one-shot: the broker's start-up
#: warnings (a Redis without persistence) are for the processes that hold tasks, and were
#: printed again by every status, result or dlq list. ``beat`` runs a scheduler; its
#: subcommands (``beat list``, ``beat add``...) are one-shot: see :func:`one_shot`.
_LONG_LIVED = frozenset({"worker", "beat", "demo"})  # not metrics, which holds no task

#: Commands whose first use of a SQLite broker is expected to create its file: the others
#: (status, result, revoke...) look at what is there, and say when nothing was.
_MAKE_THE_BROKER = _LONG_LIVED | {"call"}

#: The logger of the Redis broker's start-up check (celeriac.brokers.redis.startup).
_STARTUP_LOGGER = "celeriac.brokers.redis.startup"


_consoles: dict[str, Console] = {}


def __getattr__(name: str) -> Console:
    """``out`` and ``err``: the rich consoles, made (and rich imported) on first use."""
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def _console(name: str) -> Console:
    if name not in _consoles:
        from rich.console import Console

        # emoji=False: an id or name with ":ghost:" in it (beat:ghost:2026...) was printed
        # with an emoji in its place, and could not be copied back.
        _consoles[name] = Console(stderr=name == "err", highlight=False, emoji=False)
        globals()[name] = _consoles[name]  # later lookups skip __getattr__
    return _consoles[name]


class Context(msgspec.Struct):
    """What every command gets: how to find the app, and output preferences."""

    app_path: str | None
    broker: str | None
    debug: bool
    command: str | None = None  # the subcommand run: worker, status, ...
    _app: Celeriac | None = None
    _missing_db: Path | None = None  # the SQLite file the broker URL names, if absent

    @property
    def app(self) -> Celeriac:
        """The app named by ``-A``, or a bare app on ``--broker`` / the default broker."""
        if self._app is None:
            self._app = load_app(self.app_path) if self.app_path else Celeriac("cli")
            if self.broker:
                self._app.conf.broker_url = self.broker
            # Looked at before the broker opens it, which creates the file: see fresh_db_note.
            self._missing_db = _missing_sqlite_file(self._app.conf.broker_url)
        return self._app

    def missing_broker_file(self) -> Path | None:
        """The SQLite file the broker URL names, when it did not exist as this command
        started (None: it did, or the broker is not SQLite). A long-lived command that
        only reads (``metrics``) refuses to start on it: opened, it would be made empty.

        Example:
            >>> Context(None, "sqlite:////no/such/folder/celeriac.db", False).missing_broker_file()
            PosixPath('/no/such/folder/celeriac.db')
        """
        self.app  # noqa: B018 - loading the app is what looks at the file
        return self._missing_db

    def fresh_db_note(self) -> str | None:
        """What to say when this command created the SQLite broker's file: a command run
        from another folder than the worker's opens a new, empty ./celeriac.db, and its
        "no queues yet ... no live workers" read as "the worker died".

        Example:
            >>> import os, tempfile
            >>> folder = tempfile.mkdtemp()
            >>> obj = Context(None, f"sqlite:///{folder}/celeriac.db", False, "status")
            >>> obj.app.broker.stats()
            []
            >>> print(obj.fresh_db_note())  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
            celeriac.db did not exist in /...: this command created it, empty. ...
        """
        path = self._missing_db
        if path is None or not path.exists() or self.command in _MAKE_THE_BROKER:
            return None  # it existed, the command did not open it, or it is a first use
        created = f"{path.name} did not exist in {path.parent}: this command created it, empty."
        if _names_absolute_path(self.app.conf.broker_url):  # the folder is not the cause
            return (
                f"{created} Check the path for a typo: the worker and every command must "
                "name the same file (compare with the broker URL in the worker's first log "
                "line), then delete this empty one."
            )
        return (
            f"{created} Each process opens a relative SQLite path (sqlite:///celeriac.db, the "
            "default) in its own folder: run from the worker's folder, or give every process "
            f"the same absolute path: -b sqlite:///{path} (or CELERIAC_BROKER_URL)."
        )

    def wait_at_most(self, seconds: float) -> None:
        """Let a Redis that accepts connections but answers nothing fail this command after
        ``seconds``, not the broker's 30 s socket timeout: ``ping --timeout 1`` against a
        stopped server (SIGSTOP, a paused VM, a long-blocking script) printed nothing for
        30 s. A ``socket_timeout=`` the URL gives is kept.

        Example:
            >>> obj = Context(None, "redis://db:6379/0", False, "ping")
            >>> obj.wait_at_most(3)
            >>> obj.app.conf.broker_url
            'redis://db:6379/0?socket_timeout=3'
        """
        url = self.app.conf.broker_url
        query = urlsplit(url).query
        if url.startswith(REDIS_SCHEMES) and "socket_timeout" not in dict(parse_qsl(query)):
            self.app.conf.broker_url = f"{url}{'&' if query else '?'}socket_timeout={seconds:g}"


def _names_absolute_path(url: str) -> bool:
    """Whether the SQLite broker URL ``url`` names its file by an absolute path."""
    from celeriac.brokers.sqlite_file import path_from_url

    try:
        return os.path.isabs(path_from_url(url)[0])
    except CeleriacError:
        return False


def _missing_sqlite_file(url: str) -> Path | None:
    """The absolute path of the SQLite file ``url`` names when it does not exist yet."""
    if not url.startswith("sqlite:"):
        return None
    from celeriac.brokers.sqlite_file import path_from_url  # the broker's own reading of it

    try:
        path = Path(path_from_url(url)[0]).absolute()
    except CeleriacError:
        return None  # a bad URL: the broker says what is wrong when it opens
    return None if path.exists() else path


def load_app(path: str) -> Celeriac:
    """Import ``module`` or ``module:attribute`` and return the Celeriac app it holds, with
    the modules its ``imports`` setting lists imported too (see :func:`import_listed`).

    Raises:
        ConfigurationError: the module cannot be imported or holds no app (says which).
    """
    module_name, _, attr = path.partition(":")
    if module_name.endswith(".py") or "/" in module_name:  # a file, not a module
        file = module_name.removesuffix(".py")
        dotted = os.path.basename(file) if os.path.isabs(file) else file.strip("./")
        dotted = dotted.replace("/", ".")
        raise ConfigurationError(
            f"-A {path}: give the module's import name, not its file: -A {dotted}"
            f"{':' + attr if attr else ''} (run from the folder that holds it)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the project folder is importable
    module = _import(
        module_name,
        f"-A {path}",
        lambda: (
            _attribute_as_module(path, module_name, attr)
            or f"-A {path}: no module named {module_name!r} (looked in {os.getcwd()} and the "
            "installed packages). Run from your project folder or install it."
        ),
    )
    if not attr and hasattr(module, "__path__") and not _apps_of(module):
        # A package whose app is in a submodule, where Celery's -A finds it (proj/celery.py)
        # or where the Django layout puts it (proj/celeriac_app.py).
        module, module_name = _app_module_of(module, module_name)
    app = _app_in(module, path, module_name, attr)
    import_listed(app)
    return app


def _apps_of(module: ModuleType) -> list[Celeriac]:
    return [v for v in vars(module).values() if isinstance(v, Celeriac)]


def _app_module_of(package: ModuleType, name: str) -> tuple[ModuleType, str]:
    """The submodule of ``package`` that holds its app (``celeriac_app``, then ``celery``),
    and its name; the package itself when none does."""
    for sub in ("celeriac_app", "celery"):
        found = f"{name}.{sub}"
        if importlib.util.find_spec(found) is None:
            continue
        module = _import(found, f"-A {name} (its app module {found})", f"no module {found!r}")
        if _apps_of(module):
            return module, found
    return package, name


def import_listed(app: Celeriac) -> None:
    """Import each module the app's ``imports`` setting lists: the modules that define its
    tasks, which a worker started with ``-A`` (one module) knew nothing of otherwise. Its
    tasks' messages were put back as "not registered in this worker", then dead-lettered.

    Example:
        >>> app = Celeriac("doc", broker="memory://", imports=["json"])
        >>> import_listed(app)  # -A does this after importing the app's module

    Then the ``tasks`` module of each package :meth:`Celeriac.autodiscover_tasks` named.
    Beside Django (``DJANGO_SETTINGS_MODULE`` set), ``django.setup()`` runs first: these
    modules import models.

    Raises:
        ConfigurationError: a module cannot be imported (says which, and why).
    """
    if django.in_use():
        django.set_up()
    where = f"looked in {os.getcwd()} and the installed packages"
    for name in app.conf.imports:  # each an import name: the setting checks them
        label = f"imports setting, module {name!r}"
        _import(name, label, f"{label}: no module named {name!r} ({where})")
    for given, related in app.discovered:
        packages = _listed(given) if callable(given) else given
        for package in django.installed_apps() if packages is None else packages:
            label = f"autodiscover_tasks, package {package!r}"
            found = _import(package, label, f"{label}: no module named {package!r} ({where})")
            name = f"{package}.{related}"
            if hasattr(found, "__path__") and importlib.util.find_spec(name) is not None:
                _import(name, f"autodiscover_tasks, module {name!r}", f"no module {name!r}")


def _listed(packages: Callable[[], Any]) -> tuple[str, ...]:
    """The packages a function given to ``autodiscover_tasks`` returns, checked."""
    what = f"autodiscover_tasks({getattr(packages, '__qualname__', packages)!r})"
    try:
        listed = packages()
    except Exception as exc:
        raise ConfigurationError(
            f"{what}: the function raised {type(exc).__name__}{_where(exc)}: {exc}"
        ) from exc
    if isinstance(listed, str) or not isinstance(listed, Iterable):
        raise ConfigurationError(
            f"{what}: the function returned {type(listed).__name__} {listed!r}, not a list "
            "of package names"
        )
    names: list[str] = list(listed)
    check_import_names(names, what)
    return tuple(_app_package(name) for name in names)


def _app_package(name: str) -> str:
    """The package an ``INSTALLED_APPS`` entry stands for: itself, or for an AppConfig's
    path (``"polls.apps.PollsConfig"``, Django's tutorial) the config's ``name``, as
    Celery's autodiscovery reads it ("no module named 'polls.apps.PollsConfig'")."""
    try:
        if importlib.util.find_spec(name) is not None:
            return name
    except ImportError:  # its parent is not a package (a module, or a class's path)
        pass
    module, _, attr = name.rpartition(".")
    try:
        config = getattr(importlib.import_module(module), attr, None) if module else None
    except Exception:  # noqa: BLE001 - not an AppConfig's path: the import says what is wrong
        return name
    package = getattr(config, "name", None)
    return package if isinstance(config, type) and isinstance(package, str) else name


def _import(name: str, label: str, missing: str | Callable[[], str]) -> ModuleType:
    """Import module ``name``; an error that says which import failed, and where
    (``missing``: what to say when the module itself is not found, or a function that
    works it out)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # The module itself (or a package on its path) is missing, not something it
        # imports: "celery_tasks" importing a missing "celery" is the module's problem.
        if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
            raise ConfigurationError(missing if isinstance(missing, str) else missing()) from exc
        raise ConfigurationError(f"{label}: importing it failed{_where(exc)}: {exc}") from exc
    except CeleriacError:
        raise  # celeriac's own errors (a bad setting in the environment) say what to fix
    except Exception as exc:  # the user's module raised: say where
        # A syntax error's text repeats its place, "(broken.py, line 3)": _where says it.
        said = exc.msg if isinstance(exc, SyntaxError) and exc.filename else exc
        raise ConfigurationError(
            f"{label}: importing it raised {type(exc).__name__}{_where(exc)}: {said} "
            "(--debug shows the whole traceback)"
        ) from exc


def _app_in(module: ModuleType, path: str, module_name: str, attr: str) -> Celeriac:
    """The app ``-A path`` names in ``module``."""
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, Celeriac):
            what = "is not a Celeriac app" if hasattr(module, attr) else "does not exist"
            names = [k for k, v in vars(module).items() if isinstance(v, Celeriac)]
            hint = f" (apps there: {', '.join(names)})" if names else ""
            raise ConfigurationError(f"-A {path}: {module_name}.{attr} {what}{hint}")
        return app
    apps = _apps_of(module)
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


def _attribute_as_module(path: str, module_name: str, attr: str) -> str | None:
    """The error for ``-A tasks.app``, an app written with a dot where ``-A`` takes a
    colon, when ``tasks`` imports and has ``app``: "no module named 'tasks.app' ... Run
    from your project folder" sent a user who was in it looking elsewhere."""
    parent, _, last = module_name.rpartition(".")
    if attr or not parent:
        return None
    try:
        module = importlib.import_module(parent)
    except Exception:  # noqa: BLE001 - not the case we can help with: the usual message
        return None
    if not hasattr(module, last):
        return None
    said = f"-A {path}: {parent} is a module with no submodule {last!r};"
    if isinstance(getattr(module, last), Celeriac):
        return f"{said} its app {last!r} is named with a colon: -A {parent}:{last}"
    return f"{said} {last!r} in it is not an app. Name the module that holds the app: -A {parent}"


def _where(exc: BaseException) -> str:
    """`` at file:line``: the innermost frame an import error came from; for a syntax
    error, the file and line that hold it (its traceback ends in importlib's machinery,
    which left the CLI's own frame as the culprit).

    Example:
        >>> try:
        ...     compile("def f(:\\n", "broken.py", "exec")
        ... except SyntaxError as exc:
        ...     print(_where(exc))
         at broken.py:1
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    every = list(traceback.extract_tb(exc.__traceback__))
    frames = [f for f in every if "importlib" not in f.filename] or every  # not the machinery
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


_ARGV = "celeriac.argv"


class _Group(click.Group):
    """Turns celeriac errors into one readable line and an exit code; loads commands lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        _import_commands(set(_COMMAND_MODULES.values()))
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            module = _COMMAND_MODULES.get(cmd_name)
            _import_commands({module} if module else set(_COMMAND_MODULES.values()))
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            from celeriac.celery_names import COMMANDS

            advice = COMMANDS.get(args[0]) if args else None
            if advice:  # `celeriac flower`: "No such command 'flower'." said no more
                exc.message = f"{exc.message.rstrip('.')}: {args[0]} is Celery's; {advice}"
            raise

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGV] = list(args)  # for a misplaced -A/-b (invoke): the line as typed
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as exc:
            command = exc.ctx
            while command is not None and command.parent is not ctx:
                command = command.parent  # `beat add -A x`: the command typed first, beat
            name = command.info_name if command else None
            from celeriac.cli.celery_flags import celery_option_advice, misplaced_option

            hint = misplaced_option(exc.option_name, ctx.meta.get(_ARGV, []), name)
            if not hint and exc.ctx is not None and exc.ctx.parent is ctx:
                hint = celery_option_advice(exc.ctx.info_name or "", exc.option_name)
            if hint:  # click ends its message with a period (8.2+) or not (8.1)
                exc.message = f"{exc.message.rstrip('.')}. {hint}"
            raise
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # The reader left (`celeriac events | head`): click's main() exits 1 quietly,
            # as rich's tables do. Caught below, it printed "error: BrokenPipeError" under
            # the output the reader had asked for, as if the command had failed.
            raise
        except KeyboardInterrupt:
            # Ctrl-C: the shell's code for it, and no "Aborted!" (click's word for a refused
            # prompt) after a wait the user chose to end.
            click.echo("interrupted", err=True)
            sys.exit(130)
        except CeleriacError as exc:
            _fail(ctx, exc)
        except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line, not a traceback
            _fail(ctx, exc, unexpected=True)


def _fail(ctx: click.Context, exc: BaseException, unexpected: bool = False) -> NoReturn:
    debug = bool(ctx.obj and ctx.obj.debug) or "--debug" in sys.argv
    err = _console("err")
    if debug:
        err.print_exception()
    from rich.markup import escape

    kind = f"{type(exc).__name__}: " if unexpected else ""
    # Escaped: error text is data. As markup, "task shop.add[e3b0...]" lost its id and a
    # bracket such as "[/tmp]" made rich raise, printing a traceback instead of the error.
    text = escape(printable(f"{kind}{exc}", lines=True))
    err.print(f"[bold red]error:[/] {text}", markup=True, soft_wrap=True)
    if unexpected and not debug:  # celeriac's own errors say what to do; a traceback won't
        err.print("(run with --debug for the traceback)", style="dim")
    sys.exit(1)


class Name(click.types.StringParamType):
    """A task, queue or entry name or a task id: any text but the empty string.

    An empty one is what ``"$QUEUE"`` gives when QUEUE is unset: it was taken as "not
    given" (``call --queue ''`` sent to the default queue) or looked up as a name no task
    has (``result ''`` said PENDING, ``purge ''`` purged nothing), without a word.

    Example:
        >>> NAME.convert("emails", None, None)
        'emails'
        >>> NAME.convert("", None, None)
        Traceback (most recent call last):
        click.exceptions.BadParameter: is empty (an unset shell variable?).
        >>> NAME.convert(" ", None, None)
        Traceback (most recent call last):
        click.exceptions.BadParameter: is only white space (' '): no task, queue or id is.
    """

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The text itself, or a usage error when it is empty."""
        value = super().convert(value, param, ctx)
        if value == "":
            self.fail("is empty (an unset shell variable?).", param, ctx)
        if not value.strip():  # `revoke ' '` said "revoked 1 task(s)"; `result ' '` PENDING
            self.fail(f"is only white space ({value!r}): no task, queue or id is.", param, ctx)
        return value


#: The one :class:`Name` every command uses.
NAME = Name()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_path",
    metavar="MODULE[:APP]",
    type=NAME,
    help="Module that defines your Celeriac app, e.g. shop.tasks",
)
@click.option(
    "-b",
    "--broker",
    metavar="URL",
    type=NAME,
    envvar="CELERIAC_BROKER_URL",
    help="Broker URL (overrides the app's); env CELERIAC_BROKER_URL",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, broker: str | None, debug: bool) -> None:
    """celeriac: run and manage background tasks.

    \b
    Example: celeriac -A shop.tasks worker
             celeriac -b redis://localhost:6379/0 status

    \b
    Exit codes:
      0    done
      1    an error, said in one line (--debug adds the traceback); a task that did not
           succeed (result, call --wait); no worker answered (ping, inspect, shutdown);
           an id that names no dead letter (dlq show, dlq replay); breaking changes
           found (check --against)
      2    a usage error: an unknown command, option or argument
      130  interrupted by Ctrl-C (a worker, beat and events -f exit 0: Ctrl-C is how
           they stop)
    """
    ctx.obj = obj = Context(app_path, broker, debug, ctx.invoked_subcommand)
    if obj.command not in _LONG_LIVED:
        one_shot(ctx)
    ctx.call_on_close(lambda: _note_fresh_db(obj))


def one_shot(ctx: click.Context) -> None:
    """Run the command of ``ctx`` as a one-shot command: the Redis start-up check's
    warnings (persistence off) are left to the processes that hold tasks, and ``--debug``
    shows them. ``beat list`` counted as ``beat``, the scheduler: every listing, ``beat
    add`` and ``beat pause`` on a Redis without persistence printed the warning.

    Example:
        >>> import click, logging
        >>> with click.Context(cli, obj=Context(None, "memory://", False, "beat")) as ctx:
        ...     one_shot(ctx)
        ...     logging.getLevelName(logging.getLogger(_STARTUP_LOGGER).level)
        'ERROR'
    """
    obj: Context = ctx.obj
    if obj.debug:
        return
    startup = logging.getLogger(_STARTUP_LOGGER)
    level = startup.level
    startup.setLevel(logging.ERROR)  # see _LONG_LIVED
    ctx.call_on_close(lambda: startup.setLevel(level))  # tests run many commands


def _note_fresh_db(obj: Context) -> None:
    """Say, after the command's own output (and its error, if any), that it created the
    SQLite file: see :meth:`Context.fresh_db_note`."""
    note = obj.fresh_db_note()
    if note is not None:
        from rich.markup import escape

        text = escape(printable(note))  # a path is text, not markup
        _console("err").print(f"[yellow]note:[/] {text}", markup=True, soft_wrap=True)


class Seconds(click.FloatRange):
    """A number of seconds of at least ``min``; refuses NaN, which every range check
    lets through (a ``--timeout nan`` waited forever at full CPU).

    Example:
        >>> Seconds(0).convert("2.5", None, None)
        2.5
        >>> Seconds(0).convert("nan", None, None)
        Traceback (most recent call last):
        click.exceptions.BadParameter: nan is not a number of seconds.
    """

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The value as float seconds, or a usage error."""
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value} is not a number of seconds.", param, ctx)
        return seconds


def did_you_mean(name: str, app: Celeriac) -> str:
    """`` (did you mean 'x'?)`` when ``app`` has a task named close to ``name``, else "".
    Names share their module's prefix, so only a close match is worth suggesting.

    Example:
        >>> app = Celeriac("doc", broker="memory://")
        >>> _ = app.task(name="shop.tasks.send_welcome")(lambda: None)
        >>> did_you_mean("shop.tasks.send_welcom", app)
        " (did you mean 'shop.tasks.send_welcome'?)"
    """
    close = closest(name, app.tasks, cutoff=0.8)
    return f" (did you mean {close!r}?)" if close else ""


def closest(name: str, names: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The one of ``names`` closest to ``name``, when it is close enough to be the one
    meant (a queue, a task name typed at 3 a.m.), else None.

    Example:
        >>> closest("emials", ["emails", "default"]), closest("x", ["emails"])
        ('emails', None)
    """
    import difflib  # a typo's path only

    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=cutoff)
    return close[0] if close else None


def misspelt(patterns: Iterable[str], names: Collection[str]) -> tuple[str, str] | None:
    """The first of ``--task`` ``patterns`` that is a plain name (no ``*``) none of
    ``names`` is, with the name it is close to: `--task shop.chrage` read as "no such
    task ran" or "none waiting".

    Example:
        >>> misspelt(["shop.*", "shop.chrage"], {"shop.charge", "shop.refund"})
        ('shop.chrage', 'shop.charge')
    """
    for pattern in patterns:
        if "*" in pattern or pattern in names:
            continue
        close = closest(pattern, names)
        if close:
            return pattern, close
    return None


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
        stream=_log_stream(),
    )


def _log_stream() -> TextIO:
    """A stream of the log's own on standard error's file descriptor.

    A task that closed ``sys.stderr`` (a library daemonizing, a misguided cleanup) made
    the next log line raise in the worker's own code: its child died after committing the
    task, and the log said it died while running it. Closing ``sys.stderr`` leaves the
    descriptor open; this stream is not the task's to close.

    Example:
        >>> _log_stream().writable()
        True
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without one
        return sys.stderr
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return open(  # the log's, for the life of the process: never closed
        fd, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1
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


def _import_commands(modules: set[str]) -> None:
    """Import command modules (each registers its commands on ``cli`` when imported)."""
    for module in sorted(modules):
        importlib.import_module(f"celeriac.cli.{module}")
