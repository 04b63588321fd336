"""@shared_task: @app.task of the one app the process made (Celery's name, for modules that
cannot import their app). A worker runs such tasks in tests/test_django.py: the Django
project's tasks.py uses it."""

from __future__ import annotations

import weakref

import pytest

import celeriac.app
from celeriac import Celeriac, ConfigurationError, shared_task
from celeriac.testing import run_queued


@pytest.fixture
def apps(monkeypatch: pytest.MonkeyPatch) -> weakref.WeakSet[Celeriac]:
    """This test's own record of the apps made: none yet (the suite has made many)."""
    made: weakref.WeakSet[Celeriac] = weakref.WeakSet()
    monkeypatch.setattr(celeriac.app, "_APPS", made)
    return made


def test_a_shared_task_belongs_to_the_one_app(apps: weakref.WeakSet[Celeriac]) -> None:
    app = Celeriac("shop", broker="memory://")

    @shared_task
    def add(x: int, y: int) -> int:
        return x + y

    @shared_task(bind=True, queue="emails", max_retries=5)
    def welcome(self: object, user_id: int) -> str:
        return f"{user_id}: {type(self).__name__}"

    assert add.app is app and app.tasks[add.name] is add
    assert welcome.options.queue == "emails" and welcome.max_retries == 5
    first, second = add.delay(2, 3), welcome.apply_async((7,), queue="default")
    run_queued(app)
    assert (first.get(timeout=1), second.get(timeout=1)) == (5, "7: Task")


def test_with_no_app_or_several_it_says_so_rather_than_guess(
    apps: weakref.WeakSet[Celeriac],
) -> None:
    def nightly() -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        shared_task(nightly)
    assert str(caught.value).startswith(
        "@shared_task on test_with_no_app_or_several_it_says_so_rather_than_guess.<locals>."
        "nightly: no Celeriac app exists yet in this process. Import the module that makes it"
    )
    kept = [Celeriac("shop", broker="memory://"), Celeriac("billing", broker="memory://")]
    with pytest.raises(ConfigurationError, match=r"has 2 Celeriac apps \('billing', 'shop'\)"):
        shared_task(queue="x")(nightly)
    del kept  # the two are gone (collected), and a third is made: one left
    only = Celeriac("orders", broker="memory://")
    assert shared_task(nightly).app is only


def test_an_app_dropped_with_its_tasks_is_not_counted(apps: weakref.WeakSet[Celeriac]) -> None:
    # An app and its tasks refer to each other: dropped (a test's app fixture), it waits
    # for the collector, which only_app ran while holding a list of every app, the
    # dropped one included: "this process has 2 Celeriac apps" for ever after.
    def a_test_of_its_own() -> None:
        dropped = Celeriac("test", broker="memory://")
        dropped.task(name="t.noop")(lambda: None)

    a_test_of_its_own()
    only = Celeriac("proj", broker="memory://")

    @shared_task
    def charge(order_id: int) -> int:
        return order_id

    assert charge.app is only


def test_async_result_from_an_id_alone_uses_the_one_app(apps: weakref.WeakSet[Celeriac]) -> None:
    # Celery's AsyncResult(id), which from-celery.md calls "the same", raised "missing 1
    # required positional argument: 'app'".
    from celeriac import AsyncResult

    with pytest.raises(ConfigurationError, match=r"AsyncResult\('t-1'\): no Celeriac app"):
        AsyncResult("t-1")
    app = Celeriac("shop", broker="memory://")
    add = app.task(name="shop.add")(lambda x, y: x + y)
    sent = add.delay(2, 3)
    run_queued(app)
    assert AsyncResult(sent.id).get(timeout=1) == 5
    other = Celeriac("billing", broker="memory://")
    with pytest.raises(ConfigurationError, match=r"2 Celeriac apps.*use app.AsyncResult\(id\)"):
        AsyncResult(sent.id)
    assert AsyncResult(sent.id, app=app).get(timeout=1) == 5
    assert AsyncResult(sent.id, app=other).state == "PENDING"
