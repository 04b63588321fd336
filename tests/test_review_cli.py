"""Bad input at the surface: the CLI, task options, send options and settings each say
what is wrong in one line, and nothing is sent that no worker could read."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from celeriac import Celeriac
from celeriac.cli import cli
from celeriac.errors import ConfigurationError
from celeriac.testing import run_queued


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder to run the CLI from; modules written there are importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    return tmp_path


def write_module(folder: Path, source: str) -> str:
    """A module with a unique name (imports are cached per process)."""
    name = f"review_{uuid.uuid4().hex[:10]}"
    (folder / f"{name}.py").write_text(source)
    return name


APP = """
from celeriac import Celeriac
app = Celeriac("review", broker="sqlite:///{db}")

@app.task
def echo(x):
    return x

@app.task
def boom(x):
    raise ValueError(f"bad row [{{x}}]")
"""


def test_brackets_in_ids_results_and_errors_are_printed_as_text(project: Path) -> None:
    name = write_module(project, APP.format(db=project / "broker.db"))
    code, output = invoke("-A", name, "call", f"{name}.echo", "--args", "[1]", "--wait",
                          "--timeout", "0", "--id", "/x")  # fmt: skip
    assert code == 1
    assert f"task {name}.echo[/x] did not finish" in output  # not a rich MarkupError

    module = sys.modules[name]
    module.echo.apply_async(("[red]alert[/red] disk full",), task_id="done-1")
    module.boom.apply_async(("/tmp",), task_id="failed-1")
    with pytest.raises(ValueError, match="bad row"):
        run_queued(module.app)
    run_queued(module.app)
    code, output = invoke("-A", name, "result", "done-1")
    assert code == 0
    assert f"{name}.echo[done-1]" in output  # the id, which rich took for a style
    assert "'[red]alert[/red] disk full'" in output
    code, output = invoke("-A", name, "result", "failed-1")
    assert code == 1
    assert "ValueError: bad row [/tmp]" in output
    code, output = invoke("-A", name, "call", f"{name}.boom", "--args", '["/tmp"]', "--wait",
                          "--id", "failed-1")  # fmt: skip
    assert code == 1
    assert f"FAILURE task {name}.boom[failed-1]" in output
    assert "builtins.ValueError: bad row [/tmp]" in output


def test_a_module_whose_import_is_missing_names_the_missing_import(project: Path) -> None:
    missing = f"notinstalled_{uuid.uuid4().hex[:8]}"
    name = f"{missing}_tasks"  # starts with the missing module's name
    (project / f"{name}.py").write_text(f"import {missing}\n")
    code, output = invoke("-A", name, "status")
    assert code == 1
    assert f"No module named '{missing}'" in output
    assert f"no module named '{name}'" not in output


def test_an_app_path_given_as_a_file_or_a_missing_attribute_says_what_to_write(
    project: Path,
) -> None:
    name = write_module(project, APP.format(db=project / "broker.db"))
    code, output = invoke("-A", f"./{name}.py", "status")
    assert code == 1
    assert f"not its file: -A {name} " in output
    code, output = invoke("-A", f"{name}:application", "status")
    assert code == 1
    assert f"{name}.application does not exist (apps there: app)" in output


@pytest.mark.parametrize(
    "args",
    [
        ("ping", "--timeout", "nan"),
        ("call", "x.y", "--countdown", "nan"),
        ("result", "some-id", "--timeout", "nan"),  # waited forever, at full CPU
    ],
)
def test_nan_seconds_are_usage_errors(project: Path, args: tuple[str, ...]) -> None:
    code, output = invoke("-b", "memory://", *args)
    assert code == 2
    assert "nan is not a number of seconds" in output


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Celeriac:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    return Celeriac("review", broker="memory://")


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"task_id": 42}, TypeError, "task_id must be a str, got int 42"),
        ({"queue": 5}, TypeError, "queue must be a str"),
        ({"headers": "urgent"}, TypeError, "headers must be a dict"),
        ({"priority": 5.5}, ValueError, "priority must be a whole number from 0 to 9"),
        ({"priority": True}, ValueError, "priority must be a whole number from 0 to 9"),
        ({"priority": "5"}, ValueError, "priority must be a whole number from 0 to 9"),
        ({"soft_time_limit": "abc"}, ValueError, "soft_time_limit must be a number of seconds"),
        ({"time_limit": -1}, ValueError, "time_limit must be a number of seconds over 0"),
        ({"countdown": float("inf")}, ValueError, "countdown=inf is not a finite number"),
        ({"countdown": "soon"}, TypeError, "countdown must be seconds"),
        ({"eta": dt.timedelta(hours=1)}, TypeError, "eta is a point in time.*pass countdown="),
        ({"eta": "2030-01-01"}, TypeError, "eta must be an aware datetime or a Unix time"),
        ({"eta": dt.datetime(2030, 1, 1)}, ValueError, "eta=.* has no timezone"),
        ({"expires": float("nan")}, ValueError, "expires=nan is not a finite number"),
    ],
)
def test_send_options_no_worker_could_read_are_refused_at_send(
    app: Celeriac, options: dict[str, object], error: type[Exception], says: str
) -> None:
    @app.task(name="shop.add")
    def add(x: int) -> int:
        return x

    with pytest.raises(error, match=f"task shop.add: {says}"):
        add.apply_async((1,), **options)
    assert app.broker.stats() == []  # nothing was sent (it would have been dead-lettered)


def test_good_send_options_still_run(app: Celeriac) -> None:
    @app.task(name="shop.add")
    def add(x: int) -> int:
        return x

    soon = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    results = [
        add.apply_async((1,), task_id="order-1", queue="default", headers={"a": 1}, priority=9),
        add.apply_async((2,), eta=soon, expires=dt.timedelta(minutes=5), soft_time_limit=5),
        add.apply_async((3,), countdown=-1, expires=float("inf"), time_limit=10),
    ]
    run_queued(app)
    assert [r.get(timeout=1) for r in results] == [1, 2, 3]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"soft_time_limit": "abc"}, "soft_time_limit must be a number of seconds over 0"),
        ({"time_limit": -5}, "time_limit must be a number of seconds over 0"),
        ({"ignore_result": "no"}, "ignore_result must be True or False"),
        ({"queue": ""}, "queue must be a queue name"),
        ({"priority": 12}, "priority must be a whole number from 0 to 9"),
        ({"max_deliveries": 0}, "max_deliveries must be a whole number of at least 1"),
        ({"name": 5}, "name must be a str"),
    ],
)
def test_task_options_are_checked_when_the_task_is_defined(
    app: Celeriac, options: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"task .*: {says}"):

        @app.task(**options)
        def job() -> None: ...


def test_task_durations_may_be_timedeltas_or_unbounded(app: Celeriac) -> None:
    @app.task(expires=dt.timedelta(minutes=5), time_limit=float("inf"))
    def job() -> None: ...

    assert (job.options.expires, job.options.time_limit) == (300.0, float("inf"))


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"task_default_queue": None}, "task_default_queue must be str, got None"),
        ({"task_default_queue": ""}, "task_default_queue must be a queue name"),
        ({"broker_url": None}, "broker_url must be str, got None"),
        ({"worker_concurrency": 2.7}, "worker_concurrency must be int, got 2.7"),
        ({"worker_log_level": "verbose"}, "worker_log_level must be one of debug, info"),
    ],
)
def test_settings_of_the_wrong_kind_are_refused(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, object], says: str
) -> None:
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    with pytest.raises(ConfigurationError, match=f"setting {says}"):
        Celeriac("review", broker="memory://", **settings)


def test_an_empty_default_queue_in_the_environment_stops_a_send(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERIAC_TASK_DEFAULT_QUEUE", "")
    code, output = invoke("-b", "memory://", "call", "shop.add")
    assert code == 1
    assert "environment variable CELERIAC_TASK_DEFAULT_QUEUE" in output


def test_an_unknown_log_level_in_the_environment_names_the_variable(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = write_module(project, APP.format(db=project / "broker.db"))
    monkeypatch.setenv("CELERIAC_WORKER_LOG_LEVEL", "verbose")
    code, output = invoke("-A", name, "worker")
    assert code == 1
    assert "environment variable CELERIAC_WORKER_LOG_LEVEL: setting worker_log_level" in output
