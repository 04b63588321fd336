"""task_routes, Celery's setting: which queue (and priority) a task goes to, from one
place; what a call or the task itself says still wins; every malformed route refused
where it is set, saying which."""

from __future__ import annotations

import copy
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, chain
from celeriac.config import Settings
from celeriac.errors import ConfigurationError
from celeriac.testing import run_queued


def _app(routes: Any, **settings: Any) -> Celeriac:
    app = Celeriac("routes", broker="memory://", task_routes=routes, **settings)

    @app.task(name="shop.emails.welcome")
    def welcome(user_id: int) -> int:
        return user_id

    @app.task(name="shop.emails.bounce", queue="bounces", priority=1)
    def bounce(user_id: int) -> int:
        return user_id

    @app.task(name="shop.reports.build")
    def build(day: str) -> str:
        return day

    @app.task(name="shop.charge")
    def charge(order_id: int) -> int:
        return order_id

    return app


def _where(app: Celeriac, name: str, *args: Any, **options: Any) -> tuple[str, int]:
    message = app.tasks[name].message(args, **options)
    return message.queue, message.priority


def test_a_route_gives_the_queue_and_priority_nothing_more_specific_gave() -> None:
    app = _app(
        {
            "shop.emails.*": "emails",
            "shop.reports.build": {"queue": "reports", "priority": 2},
        },
        task_default_priority=5,
    )
    assert _where(app, "shop.emails.welcome", 1) == ("emails", 5)
    assert _where(app, "shop.reports.build", "mon") == ("reports", 2)
    assert _where(app, "shop.charge", 1) == ("default", 5)  # no route: the defaults
    # The task's own queue= and priority= beat the route; the call's beat both.
    assert _where(app, "shop.emails.bounce", 1) == ("bounces", 1)
    assert _where(app, "shop.emails.welcome", 1, queue="now", priority=9) == ("now", 9)
    assert _where(app, "shop.reports.build", "mon", priority=7) == ("reports", 7)


def test_exact_names_first_then_patterns_in_order_then_the_next_map_and_routers() -> None:
    seen: list[tuple[str, list[Any], dict[str, Any]]] = []

    def by_size(name: str, args: Any, kwargs: Any, options: Any, task: Any = None) -> Any:
        seen.append((name, args, kwargs))
        return "big" if args and args[0] > 100 else None

    app = _app(
        [
            {
                "shop.*": "shop",
                "shop.emails.*": "never",  # after shop.*, which matches first
                "shop.reports.build": "reports",  # exact: before every pattern
            },
            {re.compile(r"shop\.charg.$"): "charges"},
            by_size,
        ]
    )
    assert _where(app, "shop.emails.welcome", 1)[0] == "shop"
    assert _where(app, "shop.reports.build", "mon")[0] == "reports"
    app.conf.task_routes = [{"other.*": "x"}, by_size, {"shop.charge": "fallback"}]
    assert _where(app, "shop.charge", 500)[0] == "big"
    assert _where(app, "shop.charge", 5)[0] == "fallback"  # the router said None: not mine
    assert seen == [("shop.charge", [500], {}), ("shop.charge", [5], {})]


def test_send_task_and_a_chains_later_steps_are_routed_too() -> None:
    app = _app({"shop.emails.*": "emails", "shop.reports.*": "reports"})
    app.send_task("shop.emails.welcome", (1,))  # by name: no task object at the call
    flow = chain(app.tasks["shop.charge"].s(1), app.tasks["shop.reports.build"].si("mon"))
    handle = flow.apply_async()
    ready = {s.queue: s.ready for s in app.broker.stats() if s.ready}
    assert ready == {"emails": 1, "default": 1}
    run_queued(app, queues=["default"])  # the chain's first step sends the next one
    ready = {s.queue: s.ready for s in app.broker.stats() if s.ready}
    assert ready == {"emails": 1, "reports": 1}
    run_queued(app)
    assert handle.get(timeout=5) == "mon"


@pytest.mark.parametrize(
    ("routes", "error"),
    [
        ({"shop.*": {"queue": "shop", "routing_key": "shop"}}, "'routing_key' is Celery's"),
        ({"shop.*": {"queue": "shop", "exchange": "shop"}}, "'exchange' is Celery's"),
        ({"shop.*": {"queue": "shop", "speed": 2}}, "unknown key 'speed'"),
        ({"shop.*": "reports, nightly"}, "queue must be a queue name a worker can be given"),
        ({"shop.*": {"priority": 12}}, "priority must be a whole number from 0 to 9"),
        ({"shop.*": 3}, "a route is a queue name or a dict with 'queue'"),
        ({"": "shop"}, "a key must be a task name, a glob"),
        (["shop"], "setting task_routes: 'shop' names no router function"),
        ([3], "setting task_routes must be a dict of task names or patterns"),
        ("{shop: 1", "is not JSON"),
    ],
)
def test_a_bad_route_is_refused_where_it_is_set(routes: Any, error: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(error)) as caught:
        Celeriac("bad-routes", broker="memory://", task_routes=routes)
    assert "task_routes" in str(caught.value)
    with pytest.raises(ConfigurationError, match=re.escape(error)):
        Settings().task_routes = routes


def test_a_router_that_returns_no_route_fails_the_send_naming_it() -> None:
    def sloppy(name: str, *args: Any, **kwargs: Any) -> Any:
        return {"queue": "x", "routing_key": "x"}

    app = _app([sloppy])
    named = re.escape("router 'sloppy', for task 'shop.charge'")
    with pytest.raises(ConfigurationError, match=named):
        app.tasks["shop.charge"].delay(1)
    assert app.broker.stats() == []  # nothing sent


def test_routes_from_the_environment_and_from_django_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CELERIAC_TASK_ROUTES", '{"shop.emails.*": {"queue": "emails"}}')
    assert Settings.from_environment().routing is not None
    app = _app(Settings.from_environment().task_routes)
    assert _where(app, "shop.emails.welcome", 1)[0] == "emails"
    monkeypatch.delenv("CELERIAC_TASK_ROUTES")

    class DjangoSettings:
        CELERY_TASK_ROUTES = {"shop.reports.*": "reports"}

    app = _app({})
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert _where(app, "shop.reports.build", "mon")[0] == "reports"
    app.conf.task_routes = {}  # routes nothing again
    assert app.conf.routing is None
    assert _where(app, "shop.reports.build", "mon")[0] == "default"


def test_a_change_in_place_is_refused_saying_how_to_set_the_table() -> None:
    # It showed in the setting and routed nothing: the table is read when it is set.
    app = _app({"shop.emails.*": "emails"})
    for change in (
        lambda: app.conf.task_routes.__setitem__("shop.reports.*", "reports"),
        lambda: app.conf.task_routes.update({"shop.reports.*": "reports"}),
        lambda: Celeriac("plain", broker="memory://").conf.task_routes.update({"a": "b"}),
    ):
        with pytest.raises(ConfigurationError, match=r"set it whole, e.g. app.conf.task_routes"):
            change()
    app.conf.task_routes = {**app.conf.task_routes, "shop.reports.*": "reports"}
    assert _where(app, "shop.reports.build", "mon") == ("reports", 0)
    assert copy.deepcopy(app.conf.task_routes) == pickle.loads(pickle.dumps(app.conf.task_routes))
    # |= and += set the setting again (so the table is read again): they still work.
    app.conf.task_routes |= {"shop.charge": "payments"}
    assert _where(app, "shop.charge", 1)[0] == "payments"
    listed = _app([{"shop.emails.*": "emails"}])
    listed.conf.task_routes += [{"shop.charge": "payments"}]
    assert _where(listed, "shop.charge", 1)[0] == "payments"
    assert listed.conf.task_routes == [{"shop.emails.*": "emails"}, {"shop.charge": "payments"}]
    for change in (  # inside the setting too: a list's dict, a route's dict
        lambda: listed.conf.task_routes.append({"a": "b"}),
        lambda: listed.conf.task_routes[0].__setitem__("shop.charge", "x"),
        lambda: _app({"a": {"queue": "q"}}).conf.task_routes["a"].__setitem__("queue", "r"),
    ):
        with pytest.raises(ConfigurationError, match="set it whole"):
            change()
    copied = pickle.loads(pickle.dumps(listed.conf.task_routes))
    assert copied == listed.conf.task_routes and type(copied) is type(listed.conf.task_routes)


def route_by_region(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> Any:
    """A router, importable by name: an order from Europe to its own queue; the task it is
    given recorded."""
    seen_tasks.append(task)
    return "orders-eu" if name == "shop.charge" and args and args[0] >= 1000 else None


seen_tasks: list[Any] = []


def test_celerys_other_forms_an_ordered_list_of_pairs_and_routers_by_import_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ordered = [("shop.*", "shop"), ("shop.emails.*", "emails"), ("shop.reports.build", "r")]
    app = _app(([*ordered],))  # Celery's ordered form: a list of pairs in the tuple
    assert _where(app, "shop.emails.welcome", 1)[0] == "shop"  # the first pattern that matches
    assert _where(app, "shop.reports.build", "mon")[0] == "r"  # exact names before patterns
    seen_tasks.clear()
    app = _app(("tests.test_routes.route_by_region", {"shop.*": "shop"}))
    assert _where(app, "shop.charge", 1000) == ("orders-eu", 0)
    assert _where(app, "shop.charge", 7) == ("shop", 0)  # the router said None: the map
    assert [t.name for t in seen_tasks] == ["shop.charge", "shop.charge"]  # the Task, as Celery
    # The whole setting as one router's name, as CELERIAC_TASK_ROUTES can give it.
    monkeypatch.setenv("CELERIAC_TASK_ROUTES", "tests.test_routes:route_by_region")
    assert Celeriac("env", broker="memory://").conf.routing is not None
    env_app = _app(None)
    env_app.conf.task_routes = "tests.test_routes.route_by_region"
    assert _where(env_app, "shop.charge", 5000)[0] == "orders-eu"
    cannot = r"router 'shop\.nowhere\.route' cannot be imported"
    with pytest.raises(ConfigurationError, match=cannot):
        _app(("shop.nowhere.route",))


def _modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **sources: str) -> None:
    """Write each module's source into ``tmp_path``, importable for this test."""
    for name, source in sources.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_router_given_as_a_config_modules_attribute_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skipped with the module's functions, it routed nothing without a word.
    _modules(
        tmp_path,
        monkeypatch,
        routing_conf="from tests.test_routes import route_by_region\n"
        "task_routes = route_by_region\ntask_default_priority = 3\n",
    )
    app = _app(None)
    app.config_from_object("routing_conf")
    assert _where(app, "shop.charge", 1000) == ("orders-eu", 3)


def test_a_routers_answer_is_asked_each_send_after_the_maps_answer_is_kept() -> None:
    # The maps' answer for a name is kept (a table of hundreds of globs took 30 µs a
    # send); a router after them still sees each send's arguments.
    app = _app(({"shop.emails.*": "emails"}, route_by_region))
    for _ in range(2):
        assert _where(app, "shop.emails.welcome", 1)[0] == "emails"
        assert _where(app, "shop.charge", 1)[0] == "default"
        assert _where(app, "shop.charge", 1000)[0] == "orders-eu"


def test_routes_as_text_json_a_routers_name_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for empty in ("", "null", "{}"):
        monkeypatch.setenv("CELERIAC_TASK_ROUTES", empty)
        assert Celeriac("env", broker="memory://").conf.routing is None, empty
    monkeypatch.setenv("CELERIAC_TASK_ROUTES", "shop.*: emails")
    with pytest.raises(ConfigurationError, match=r"'shop\.\*: emails' is not JSON"):
        Celeriac("env", broker="memory://")


def test_a_router_whose_module_is_still_being_imported_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router's module imports the module that sets task_routes: "names no router
    # function" sent the reader looking for a typo.
    _modules(
        tmp_path,
        monkeypatch,
        circ_routers="import circ_settings\n\n"
        "def route(name, args, kwargs, options, task=None):\n    return None\n",
        circ_settings="from celeriac import Celeriac\n"
        "app = Celeriac('circ', broker='memory://')\n"
        "app.conf.task_routes = 'circ_routers.route'\n",
    )
    with pytest.raises(ConfigurationError, match="circ_routers is still being imported"):
        importlib.import_module("circ_routers")


def test_a_router_that_cannot_take_what_a_send_gives_is_refused_where_it_is_set() -> None:
    # It was accepted, and failed every send of every task: "got an unexpected keyword
    # argument 'task'".
    def no_task(name: str, args: Any, kwargs: Any, options: Any) -> Any:
        return None

    def two(name: str, args: Any) -> Any:
        return None

    for router in (no_task, two):
        with pytest.raises(ConfigurationError, match=rf"router '{router.__name__}' cannot be"):
            _app((router,))
    assert _app((route_by_region, lambda *a, **kw: None)).conf.routing is not None
