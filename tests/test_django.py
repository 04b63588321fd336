"""Beside Django: a project's tasks found by ``app.autodiscover_tasks()``, its settings read
with ``config_from_object(..., namespace="CELERY")``, and its database connections kept
sound in workers (celeriac.integrations.django). The project is tests/apps/djangoshop.

Django runs only in the worker processes and in subprocesses here: set up in the test
process, its settings (and DJANGO_SETTINGS_MODULE) would stay for every later test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, ConfigurationError
from celeriac.cli.main import import_listed
from tests.conftest import ROOT, Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

APP = "tests.apps.djangoshop.celeriac_app"
PLACE_ORDER = "tests.apps.djangoshop.orders.tasks.place_order"
SETTINGS = "tests.apps.djangoshop.settings"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in the repository, with ``env`` over this process's environment."""
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def shop(sqlite_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The project's environment, with its database made (``migrate --run-syncdb``)."""
    env = {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "DJANGOSHOP_DB": str(tmp_path / "shop.db"),
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p),
    }
    made = _run(["-m", "django", "migrate", "--run-syncdb", "-v", "0"], env)
    assert made.returncode == 0, made.stderr
    yield env


@pytest.fixture
def workers(sqlite_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Real workers of the Django project; all killed by PID when the test ends."""
    procs = WorkerProcesses(sqlite_url, Ledger(tmp_path / "ledger.txt"))
    yield procs
    procs.kill_all()


def _place_orders(sqlite_url: str, count: int) -> list[dict[str, Any]]:
    """Send place_order by name, one after another, and their results."""
    probe = Celeriac("probe", broker=sqlite_url)
    try:
        return [
            probe.send_task(PLACE_ORDER, args=(n,), queue="shop").get(timeout=30)
            for n in range(count)
        ]
    finally:
        probe.broker.close()


def test_a_django_projects_tasks_run_with_a_fresh_connection_each(
    shop: dict[str, str], workers: WorkerProcesses, sqlite_url: str
) -> None:
    # -Q shop: CELERY_TASK_DEFAULT_QUEUE in Django's settings, which config_from_object read.
    workers.start("-c", "1", "-Q", "shop", app=APP, env=shop)
    ran = _place_orders(sqlite_url, 3)
    assert [r["orders"] for r in ran] == [1, 2, 3]  # found by autodiscovery, run, stored
    assert len({r["pid"] for r in ran}) == 1
    # CONN_MAX_AGE = 0: closed after each task, as after each request. Kept open, a
    # connection the database dropped (a restart) failed every later task of the child.
    assert [r["open_at_start"] for r in ran] == [False, False, False], workers.log_text()


def test_a_connection_the_supervisor_opened_is_not_used_by_its_children(
    shop: dict[str, str], workers: WorkerProcesses, sqlite_url: str
) -> None:
    # The app's module queries the database when imported, in the supervisor, which then
    # forks its child. Persistent connections (CONN_MAX_AGE = None): only on_child_start
    # drops the copy, and the child's first task opens a connection of its own.
    env = {**shop, "DJANGOSHOP_QUERY_AT_IMPORT": "1", "DJANGOSHOP_PERSISTENT": "1"}
    workers.start("-c", "1", "-Q", "shop", app=APP, env=env)
    ran = _place_orders(sqlite_url, 2)
    assert [r["open_at_start"] for r in ran] == [False, True], workers.log_text()


def test_django_settings_that_cannot_load_stop_the_command_saying_why(
    shop: dict[str, str], sqlite_url: str
) -> None:
    env = {**shop, "CELERIAC_BROKER_URL": sqlite_url, "DJANGO_SETTINGS_MODULE": "shop.nope"}
    done = _run(["-m", "celeriac", "-A", APP, "status"], env)
    assert done.returncode == 1
    assert done.stderr == (
        "error: config_from_object('django.conf:settings'): reading its settings raised "
        "ModuleNotFoundError: No module named 'shop' (DJANGO_SETTINGS_MODULE='shop.nope')\n"
    )
    # An app that reads no settings meets them at django.setup(), before its task modules.
    set_up = _run(["-c", "from celeriac.integrations import django; django.set_up()"], env)
    assert (
        "celeriac.errors.ConfigurationError: django.setup() failed (DJANGO_SETTINGS_MODULE="
        "'shop.nope'): ModuleNotFoundError: No module named 'shop'" in set_up.stderr
    ), set_up.stderr


def test_autodiscovery_imports_each_packages_tasks_and_passes_by_one_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    for package, files in {
        "adisc_orders": {
            "__init__.py": "",
            "tasks.py": "from adisc_app import app\n"
            "@app.task\ndef ship(n: int) -> int:\n    return n\n",
        },
        "adisc_pages": {"__init__.py": ""},
    }.items():
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    (tmp_path / "adisc_app.py").write_text(
        "from celeriac import Celeriac\napp = Celeriac('adisc', broker='memory://')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import adisc_app  # type: ignore[import-not-found]

    app: Celeriac = adisc_app.app
    app.autodiscover_tasks(["adisc_orders", "adisc_pages"])
    import_listed(app)
    assert list(app.tasks) == ["adisc_orders.tasks.ship"]

    app.autodiscover_tasks(["adisc_missing"])
    with pytest.raises(ConfigurationError, match="autodiscover_tasks, package 'adisc_missing': no"):
        import_listed(app)


def test_autodiscovery_takes_celerys_function_of_packages_and_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # app.autodiscover_tasks(lambda: settings.INSTALLED_APPS, force=True), Celery's idiom:
    # "'function' object is not iterable" pointing into celeriac, and force= refused.
    (tmp_path / "lazy_orders").mkdir()
    (tmp_path / "lazy_orders" / "__init__.py").write_text("")
    (tmp_path / "lazy_orders" / "tasks.py").write_text(
        "from lazy_app import app\n@app.task\ndef ship(n: int) -> int:\n    return n\n"
    )
    (tmp_path / "lazy_app.py").write_text(
        "from celeriac import Celeriac\napp = Celeriac('lazy', broker='memory://')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import lazy_app  # type: ignore[import-not-found]

    installed: list[str] = []  # filled after the call, as Django's settings are
    app: Celeriac = lazy_app.app
    app.autodiscover_tasks(lambda: installed, force=True)
    installed.append("lazy_orders")
    import_listed(app)
    assert list(app.tasks) == ["lazy_orders.tasks.ship"]
    app.autodiscover_tasks(lambda: "lazy_orders")
    with pytest.raises(ConfigurationError, match="returned str 'lazy_orders', not a list"):
        import_listed(app)


def test_autodiscovery_of_a_function_of_packages_takes_appconfig_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # INSTALLED_APPS = ["polls.apps.PollsConfig"] (Django's tutorial), through Celery's
    # lambda: "no module named 'polls.apps.PollsConfig'", where Celery finds polls.tasks.
    (tmp_path / "cfg_polls").mkdir()
    (tmp_path / "cfg_polls" / "__init__.py").write_text("")
    (tmp_path / "cfg_polls" / "apps.py").write_text(
        "class PollsConfig:  # what Django's AppConfig subclasses look like to it\n"
        "    name = 'cfg_polls'\n"
    )
    (tmp_path / "cfg_polls" / "tasks.py").write_text(
        "from cfg_app import app\n@app.task\ndef vote(n: int) -> int:\n    return n\n"
    )
    (tmp_path / "cfg_app.py").write_text(
        "from celeriac import Celeriac\napp = Celeriac('cfg', broker='memory://')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import cfg_app  # type: ignore[import-not-found]

    app: Celeriac = cfg_app.app
    app.autodiscover_tasks(lambda: ["cfg_polls.apps.PollsConfig"])
    import_listed(app)
    assert list(app.tasks) == ["cfg_polls.tasks.vote"]


def test_autodiscovery_refuses_what_it_cannot_use_where_it_is_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Celeriac("adisc", broker="memory://")
    with pytest.raises(
        ConfigurationError, match=r"give a list of packages: autodiscover_tasks\(\['shop'\]\)"
    ):
        app.autodiscover_tasks("shop")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="'shop/orders' is a file; give its import name"):
        app.autodiscover_tasks(["shop/orders"])
    # Without packages, Django's apps: an error that says what is missing.
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    app.autodiscover_tasks()
    with pytest.raises(ConfigurationError, match="DJANGO_SETTINGS_MODULE is not set"):
        import_listed(app)


ON_COMMIT = """
import django
django.setup()
from django.db import transaction
from tests.apps.djangoshop.celeriac_app import app
from tests.apps.djangoshop.orders.tasks import place_order

def queued():
    return sum(q.ready for q in app.broker.stats())

with transaction.atomic():
    place_order.delay_on_commit(1)
    print("inside:", queued())
print("committed:", queued())
try:
    with transaction.atomic():
        place_order.apply_async_on_commit((2,), priority=9)
        raise RuntimeError("the view failed")
except RuntimeError:
    pass
print("rolled back:", queued())
place_order.delay_on_commit(3)
print("no transaction:", queued())
with transaction.atomic():
    try:
        place_order.delay_on_commit(4, 5)
    except TypeError as exc:
        print("refused at once:", str(exc).split(":")[0])
print("then:", queued())
"""


def test_delay_on_commit_sends_when_the_transaction_commits_and_never_on_rollback(
    shop: dict[str, str], sqlite_url: str
) -> None:
    done = _run(["-c", ON_COMMIT], {**shop, "CELERIAC_BROKER_URL": sqlite_url})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "inside: 0",  # a worker would have read the order before it was committed
        "committed: 1",
        "rolled back: 1",
        "no transaction: 2",
        f"refused at once: cannot send task {PLACE_ORDER}",
        "then: 2",
    ]


IN_PROCESS = """
import django
django.setup()
from django.db import connection, transaction
from celeriac.testing import run_queued
from tests.apps.djangoshop.celeriac_app import app
from tests.apps.djangoshop.orders.models import Order
from tests.apps.djangoshop.orders.tasks import place_order

with transaction.atomic():  # as a Django TestCase runs each test
    Order.objects.create(number=99)
    result = place_order.delay(1)
    run_queued(app)
    print("orders:", result.get(timeout=1)["orders"], "| still in it:", connection.in_atomic_block)
"""


def test_tasks_run_in_the_callers_process_keep_its_connection_and_transaction(
    shop: dict[str, str],
) -> None:
    # run_queued in a Django test: closing "old" connections around the task closed the
    # test's own, inside its transaction, and the task failed ("Cannot operate on a closed
    # database").
    done = _run(["-c", IN_PROCESS], {**shop, "CELERIAC_BROKER_URL": "memory://"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "orders: 2 | still in it: True\n"
