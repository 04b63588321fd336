"""task_routes, Celery's setting: which queue (and priority) a task goes to, from one
place; what a call or the task itself says still wins; every malformed route refused
where it is set, saying which."""

from __future__ import annotations

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
        (["shop"], "setting task_routes must be a dict of task names or patterns"),
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
