"""``task_routes``: which queue (and priority) each task goes to, set in one place, as
Celery's setting of that name is written.

::

    app.conf.task_routes = {
        "shop.emails.*": "emails",                        # a glob: every task it matches
        "shop.reports.build": {"queue": "reports", "priority": 2},
        re.compile(r"shop\\.(images|video)\\..*"): "media",  # a compiled pattern
    }

A name is looked up exactly first, then against each pattern in the order given; the first
that matches routes it. A list (or tuple) of such dicts, of lists of ``(pattern, route)``
pairs (Celery's ordered form) and of router functions, or their dotted import names
(``"shop.routing.route_task"``), is read in its order. Each function is called as Celery
calls one, ``router(name, args, kwargs, options, task=task)``, and returns a route, a
queue name or None (not this one). What the maps say of a name is looked up once and kept.

What a route gives is used only where nothing more specific was: ``apply_async(queue=)``
beats ``@app.task(queue=)``, which beats a route, which beats ``task_default_queue``. The
queue and the priority are taken apart, as Celery merges them: a route's priority applies
to a task whose own ``queue=`` overrides the route's queue.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from celeriac.errors import ConfigurationError
from celeriac.options import option_problem, queue_name_problem
from celeriac.text import cut

#: What a route may say. Celery's exchange and routing keys have no meaning here.
_ROUTE_KEYS = frozenset({"queue", "priority"})
_CELERY_KEYS = frozenset({"exchange", "exchange_type", "routing_key", "delivery_mode"})

Router = Callable[..., Any]
_Exact = dict[str, dict[str, Any]]
_Patterns = list[tuple[re.Pattern[str], dict[str, Any]]]
#: Task names whose route (from the maps before any router function) is kept: sends by
#: name of unbounded names (a producer's bug) must not grow it for ever.
CACHED_NAMES = 10_000


_IN_PLACE = (
    "app.conf.task_routes is read when it is set, so a change in place would route nothing: "
    "set it whole, e.g. app.conf.task_routes = {**app.conf.task_routes, 'shop.reports.*': "
    "'reports'} (or |= for a dict, += for a list)"
)


def _refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise ConfigurationError(_IN_PLACE)


class FrozenRoutes(dict[Any, Any]):
    """A dict of ``app.conf.task_routes`` as the app keeps it: read once into the table
    sends use, so a change in place (``task_routes[...] = ...``, ``update``) would be shown
    by the setting and used by no send. It is refused, saying how to change the setting;
    ``|=`` makes a new table, which the setting reads again.

    Example:
        >>> routes = FrozenRoutes({"shop.emails.*": "emails"})
        >>> routes["shop.reports.*"] = "reports"  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: app.conf.task_routes is read when it is set, ...
    """

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse

    def __ior__(self, other: Any) -> FrozenRoutes:  # type: ignore[misc]
        return FrozenRoutes({**self, **dict(other)})

    def __reduce__(self) -> tuple[Any, ...]:  # copies and pickles: not item by item
        return (FrozenRoutes, (dict(self),))


class FrozenRouteList(list[Any]):
    """A list of ``app.conf.task_routes`` as the app keeps it (see :class:`FrozenRoutes`):
    ``+=`` makes a new list, which the setting reads again; other changes are refused.

    Example:
        >>> routes = FrozenRouteList([{"shop.emails.*": "emails"}])
        >>> routes.append({"shop.reports.*": "reports"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: app.conf.task_routes is read when it is set, ...
        >>> routes == [{"shop.emails.*": "emails"}]
        True
    """

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = _refuse
    sort = reverse = __imul__ = _refuse

    def __iadd__(self, other: Any) -> FrozenRouteList:  # type: ignore[misc]
        return FrozenRouteList([*self, *other])

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenRouteList, (list(self),))


def frozen(setting: Any) -> Any:
    """``setting`` (task_routes, read) as the app keeps it: its dicts and lists, those in
    it included, refuse a change in place, which would route nothing.

    Example:
        >>> type(frozen([{"shop.*": {"queue": "shop"}}])[0]["shop.*"]).__name__
        'FrozenRoutes'
    """
    if isinstance(setting, Mapping):
        return FrozenRoutes({k: frozen(v) for k, v in setting.items()})
    if isinstance(setting, list):
        return FrozenRouteList(frozen(v) for v in setting)
    if isinstance(setting, tuple):
        return tuple(frozen(v) for v in setting)
    return setting


class Routes:
    """``task_routes`` read once: exact names, patterns in order, router functions.

    Example:
        >>> routes = Routes({"shop.emails.*": "emails", "shop.report": {"queue": "slow"}})
        >>> routes.lookup("shop.emails.welcome"), routes.lookup("shop.report")
        ({'queue': 'emails'}, {'queue': 'slow'})
        >>> routes.lookup("shop.charge") is None
        True
    """

    def __init__(self, setting: Any) -> None:
        self._steps: list[_Exact | _Patterns | Router] = []
        self._cache: dict[str, dict[str, Any] | None] = {}
        maps = list(setting) if isinstance(setting, list | tuple) else [setting]
        for i, given in enumerate(maps):
            where = "setting task_routes" + (f"[{i}]" if len(maps) > 1 else "")
            part = _router_named(given, where) if isinstance(given, str) else given
            if callable(part) and not isinstance(part, Mapping):
                self._steps.append(_callable_as_celery_calls(part, where))
            elif isinstance(part, Mapping):
                self._add_map(part, where)
            elif _pairs(part):
                self._add_map(dict(part), where)
            else:
                raise ConfigurationError(
                    f"{where} must be a dict of task names or patterns to queues, a list of "
                    "(pattern, queue) pairs, or a router function (name, args, kwargs, "
                    f"options, task=None) or its import name, got {cut(repr(part), 80)}"
                )
        # Until the first router function, what a name's route is never changes: kept.
        first = next((i for i, s in enumerate(self._steps) if callable(s)), len(self._steps))
        self._fixed, self._asked = self._steps[:first], self._steps[first:]

    def _add_map(self, mapping: Mapping[Any, Any], where: str) -> None:
        exact: _Exact = {}
        patterns: _Patterns = []
        for key, value in mapping.items():
            route = checked_route(value, f"{where}, {key!r}")
            if isinstance(key, re.Pattern):
                patterns.append((key, route))
            elif isinstance(key, str) and key:
                if "*" in key or "?" in key or "[" in key:
                    patterns.append((re.compile(fnmatch.translate(key)), route))
                else:
                    exact[key] = route
            else:
                raise ConfigurationError(
                    f"{where}: a key must be a task name, a glob such as 'shop.emails.*' or "
                    f"a compiled re pattern, got {cut(repr(key), 80)}"
                )
        self._steps.append(exact)  # exact names of a map before its patterns, as in Celery
        self._steps.append(patterns)

    def lookup(
        self,
        name: str,
        args: Any = (),
        kwargs: Any = None,
        options: dict[str, Any] | None = None,
        task: Any = None,
    ) -> dict[str, Any] | None:
        """The route of task ``name``: ``{"queue": ..., "priority": ...}`` (either may be
        missing), or None when no route names it.

        Raises:
            ConfigurationError: a router function returned what is not a route.
        """
        if name in self._cache:
            fixed = self._cache[name]
        else:
            # Each pattern tried in turn: 30 µs a send with 300 of them, kept per name.
            fixed = self._from_maps(name, self._fixed)
            if len(self._cache) < CACHED_NAMES:
                self._cache[name] = fixed
        if fixed is not None:
            return fixed
        for step in self._asked:  # a router first, then what follows it, asked each send
            if callable(step):
                given = step(name, list(args), dict(kwargs or {}), dict(options or {}), task=task)
                if given is not None:
                    where = f"setting task_routes: router {getattr(step, '__name__', step)!r}"
                    return checked_route(given, f"{where}, for task {name!r}")
            else:
                found = self._from_maps(name, [step])
                if found is not None:
                    return found
        return None

    @staticmethod
    def _from_maps(name: str, steps: list[_Exact | _Patterns | Router]) -> dict[str, Any] | None:
        """What the maps among ``steps`` say of ``name``, the first that says anything."""
        for step in steps:
            if isinstance(step, dict):
                found = step.get(name)
                if found is not None:
                    return found
            elif isinstance(step, list):
                for pattern, route in step:
                    if pattern.match(name):
                        return route
        return None


#: A router function's import name, as ``task_routes`` (or CELERIAC_TASK_ROUTES) may be.
_ROUTER_NAME = re.compile(r"[A-Za-z_][\w.]*[.:][A-Za-z_]\w*")


def names_a_router(text: str) -> bool:
    """Whether the text of ``task_routes`` is a router function's import name, not JSON.

    Example:
        >>> names_a_router("shop.routing.route_task"), names_a_router('{"shop.*": "shop"}')
        (True, False)
    """
    return _ROUTER_NAME.fullmatch(text.strip()) is not None


def _pairs(part: Any) -> bool:
    """Whether ``part`` is Celery's ordered map: a list of (pattern, route) pairs."""
    return isinstance(part, list | tuple) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in part
    )


def _callable_as_celery_calls(router: Router, where: str) -> Router:
    """``router``, once it is known to take what each send gives it: a router of another
    signature failed at every send of every task, not where the setting was set."""
    try:
        signature = inspect.signature(router)
    except (TypeError, ValueError):  # a builtin, a C function: nothing to check
        return router
    try:
        signature.bind("shop.task", [], {}, {}, task=None)
    except TypeError as exc:
        raise ConfigurationError(
            f"{where}: router {getattr(router, '__name__', router)!r} cannot be called as "
            f"routers are, router(name, args, kwargs, options, task=None): {exc}; give it "
            "that signature (def route(name, args, kwargs, options, task=None, **kw))"
        ) from None
    return router


def _router_named(name: str, where: str) -> Router:
    """The router function ``"package.module.function"`` (or ``module:function``) names."""
    module_name, sep, attribute = name.partition(":")
    if not sep:
        module_name, _, attribute = name.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except Exception as exc:  # noqa: BLE001 - whatever its import raised, said as such
        raise ConfigurationError(
            f"{where}: router {name!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from None
    found = getattr(module, attribute, None)
    if module is not None and found is None and getattr(module.__spec__, "_initializing", False):
        raise ConfigurationError(
            f"{where}: router {name!r}: {module_name} is still being imported (it imports "
            "the module that sets task_routes?); set task_routes once it is imported, or "
            "give the function itself"
        )
    if not callable(found):
        raise ConfigurationError(
            f"{where}: {name!r} names no router function; give its import name, such as "
            "'shop.routing.route_task'"
        )
    return found  # type: ignore[no-any-return]


def checked_route(value: Any, where: str) -> dict[str, Any]:
    """A route as celeriac reads it (a queue name stands for ``{"queue": name}``), or an
    error saying what is wrong with it.

    Example:
        >>> checked_route("emails", "route")
        {'queue': 'emails'}
        >>> checked_route({"queue": "emails", "routing_key": "emails"}, "route 'shop.*'")
        Traceback (most recent call last):
        celeriac.errors.ConfigurationError: route 'shop.*': 'routing_key' is Celery's \
(exchanges and routing keys); celeriac routes by queue alone: give {'queue': ..., \
'priority': ...}
    """
    route = {"queue": value} if isinstance(value, str) else value
    if not isinstance(route, Mapping):
        raise ConfigurationError(
            f"{where}: a route is a queue name or a dict with 'queue' (and 'priority'), "
            f"got {cut(repr(value), 80)}"
        )
    for key in route:
        if key in _CELERY_KEYS:
            raise ConfigurationError(
                f"{where}: {key!r} is Celery's (exchanges and routing keys); celeriac routes "
                "by queue alone: give {'queue': ..., 'priority': ...}"
            )
        if key not in _ROUTE_KEYS:
            raise ConfigurationError(
                f"{where}: unknown key {key!r}; a route gives 'queue' and 'priority'"
            )
    queue = route.get("queue")
    if queue is not None:
        problem = queue_name_problem(queue)
        if problem:
            raise ConfigurationError(
                f"{where}: queue must be {problem}, got {cut(repr(queue), 80)}"
            )
    priority = route.get("priority")
    if priority is not None:
        problem = option_problem("priority", priority)
        if problem:
            raise ConfigurationError(f"{where}: priority must be {problem}, got {priority!r}")
    return {k: v for k, v in route.items() if v is not None}
