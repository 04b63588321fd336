"""The ``imports`` setting: the modules that define an app's tasks, imported by every
``celeriac -A`` command after the app's own module. Without it a worker started with
``-A shop.app`` knew no task defined in ``shop.orders.tasks``: each message was put back
as "not registered in this worker", then dead-lettered an hour later."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac, ConfigurationError
from celeriac.cli.main import import_listed, load_app
from celeriac.task import unimported_note
from celeriac.testing import wait_for
from tests.conftest import Ledger, WorkerProcesses


@pytest.fixture
def workers_and_sender(
    sqlite_url: str, tmp_path: Path
) -> Iterator[tuple[WorkerProcesses, Celeriac]]:
    """Workers on a fresh SQLite broker (killed by PID at the end) and an app that sends
    tasks there by name."""
    workers = WorkerProcesses(sqlite_url, Ledger(tmp_path / "ledger.txt"))
    sender = Celeriac("sender", broker=sqlite_url)
    yield workers, sender
    workers.kill_all()
    sender.broker.close()


def test_a_worker_runs_the_tasks_of_the_modules_its_app_lists(
    workers_and_sender: tuple[WorkerProcesses, Celeriac],
) -> None:
    workers, sender = workers_and_sender
    workers.start("-c", "1", app="tests.apps.split")
    r = sender.send_task("tests.apps.split_tasks.shout", ("hi",))
    assert r.get(timeout=30) == "HI!"
    assert "not registered" not in workers.log_text()


def test_load_app_imports_the_listed_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "tests.apps.split_tasks", raising=False)
    app = load_app("tests.apps.split")
    assert "tests.apps.split_tasks" in sys.modules
    assert "tests.apps.split_tasks.shout" in app.tasks


def _package(root: Path, name: str, tasks: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "tasks.py").write_text(tasks)


@pytest.mark.parametrize(
    ("listed", "said"),
    [
        (
            "{pkg}.task",
            "imports setting, module '{pkg}.task': no module named '{pkg}.task' (looked in ",
        ),
        (
            "{pkg}/tasks.py",
            "setting imports: '{pkg}/tasks.py' is a file; give its import name: '{pkg}.tasks'",
        ),
        (" {pkg}.tasks", "setting imports: ' {pkg}.tasks' is not a module's import name"),
        ("", "setting imports: '' is not a module's import name"),
        (
            "{pkg}.broken",
            "imports setting, module '{pkg}.broken': importing it failed at ",
        ),
        (
            "{pkg}.raising",
            "imports setting, module '{pkg}.raising': importing it raised RuntimeError at ",
        ),
    ],
)
def test_a_listed_module_that_does_not_import_says_which_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str, said: str
) -> None:
    pkg = f"listed_{tmp_path.name.replace('-', '_')}"
    _package(tmp_path, pkg, "")
    (tmp_path / pkg / "broken.py").write_text("import no_such_library_here\n")
    (tmp_path / pkg / "raising.py").write_text("raise RuntimeError('no database yet')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:  # where it is given, or at -A
        import_listed(Celeriac("x", broker="memory://", imports=[listed.format(pkg=pkg)]))
    assert str(caught.value).startswith(said.format(pkg=pkg)), caught.value


def test_imports_comes_from_the_environment_as_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_IMPORTS", "shop.orders.tasks, shop.billing.tasks")
    assert Celeriac("x", broker="memory://").conf.imports == [
        "shop.orders.tasks",
        "shop.billing.tasks",
    ]


def test_celery_s_include_says_to_list_the_modules_in_imports() -> None:
    with pytest.raises(
        ConfigurationError, match=r"it is Celery's; list the modules of its tasks in imports"
    ):
        Celeriac("x", broker="memory://", include=["shop.tasks"])


def test_a_worker_that_never_imported_a_task_s_module_says_to_list_it(
    workers_and_sender: tuple[WorkerProcesses, Celeriac],
) -> None:
    # tests.apps.core's worker imports tests.apps but not tests.apps.split_tasks.
    workers, sender = workers_and_sender
    workers.start("-c", "1")
    sender.send_task("tests.apps.split_tasks.shout", ("hi",))
    said = (
        "Note: module tests.apps.split_tasks is on this worker's path but was never "
        "imported, so its tasks are unknown here: list it in the app's imports setting "
        "(imports=['tests.apps.split_tasks'])."
    )
    assert wait_for(lambda: said in workers.log_text(), timeout=30), workers.log_text()


def test_the_note_looks_a_module_up_without_importing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = f"noted_{tmp_path.name.replace('-', '_')}"
    _package(tmp_path, pkg, "raise RuntimeError('imported by a log line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert unimported_note(f"{pkg}.tasks.add") == ""  # its package not imported: not looked up
    assert pkg not in sys.modules
    __import__(pkg)
    assert "list it in the app's imports setting" in unimported_note(f"{pkg}.tasks.add")
    assert f"{pkg}.tasks" not in sys.modules  # found, not imported (it would raise)
    assert unimported_note(f"{pkg}.other.add") == ""  # no such module
    assert unimported_note("tests.apps.core.add") == ""  # imported: the task is just unknown
