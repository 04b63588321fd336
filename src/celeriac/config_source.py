"""Settings read from a module, an object or a dict: what ``app.config_from_object`` (Celery's
name) takes. A ``celeryconfig``-style module of lowercase names, a class of settings, or
Django's settings, whose names carry a namespace (``CELERY_BROKER_URL`` with
``namespace="CELERY"``).
"""

from __future__ import annotations
import __future__

import importlib
import os
import types
from collections.abc import Mapping
from typing import Any

from celeriac.errors import ConfigurationError


def read_settings(source: object, namespace: str | None = None) -> list[tuple[str, str, Any]]:
    """``(name in the source, setting, value)`` for each setting ``source`` holds: a module
    or an object (``"module"`` or ``"module:attribute"`` to import), or a dict.

    Without ``namespace``, a module's or object's settings are its lowercase public names
    that hold values (its imports, functions and classes are left out), and every key of a
    dict is one. With ``namespace="CELERY"``, the names that start with ``CELERY_`` are,
    the rest of each name lowercased (``CELERY_BROKER_URL``: ``broker_url``). Whether each
    is a setting, and its value a good one, is for the settings to check.

    Example:
        >>> class Config:
        ...     broker_url = "redis://localhost:6379/0"
        ...     DEBUG = True  # not lowercase: not a setting
        >>> read_settings(Config)
        [('broker_url', 'broker_url', 'redis://localhost:6379/0')]
        >>> read_settings({"CELERY_TASK_DEFAULT_QUEUE": "shop", "DEBUG": True}, "CELERY")
        [('CELERY_TASK_DEFAULT_QUEUE', 'task_default_queue', 'shop')]

    Raises:
        ConfigurationError: a source to import that cannot be, or one that holds no
            setting at all (a Django settings module read without its namespace).
    """
    where = label(source)
    resolved = _resolve(source) if isinstance(source, str) else source
    try:
        found = _items(resolved, namespace)
    except Exception as exc:  # Django's settings load when first read: their module may fail
        module = os.environ.get("DJANGO_SETTINGS_MODULE")
        django = f" (DJANGO_SETTINGS_MODULE={module!r})" if "django" in where and module else ""
        raise ConfigurationError(
            f"config_from_object({where!r}): reading its settings raised "
            f"{type(exc).__name__}: {exc}{django}"
        ) from exc
    if not found:
        wanted = (
            f"no name starting with {namespace}_"
            if namespace
            else "no lowercase name holding a value (broker_url = ...)"
        )
        hint = (
            ""
            if namespace
            else "; for Django's settings, add namespace='CELERY' or the one yours use"
        )
        raise ConfigurationError(f"config_from_object({where!r}): found {wanted}{hint}")
    return found


def _items(source: object, namespace: str | None) -> list[tuple[str, str, Any]]:
    if isinstance(source, Mapping):
        pairs = [(str(key), value) for key, value in source.items()]
    else:
        pairs = [(name, getattr(source, name)) for name in dir(source) if not name.startswith("_")]
    if namespace:
        prefix = f"{namespace}_"
        return [(n, n[len(prefix) :].lower(), v) for n, v in pairs if n.startswith(prefix)]
    if isinstance(source, Mapping):
        return [(n, n, v) for n, v in pairs]
    # A router function is a value of task_routes: skipped with the module's functions, a
    # ``task_routes = route_task`` in celeryconfig.py routed nothing, without a word.
    return [
        (n, n, v)
        for n, v in pairs
        if n.islower() and (_holds_a_value(v) or (n == "task_routes" and callable(v)))
    ]


def _holds_a_value(value: object) -> bool:
    """Not an import, a function, a class or ``from __future__ import annotations``."""
    return not (isinstance(value, types.ModuleType | type | __future__._Feature) or callable(value))


def _resolve(path: str) -> object:
    """The object ``"module"`` or ``"module:attribute"`` names, imported."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"config_from_object({path!r}): no module named {module_name!r}"
            ) from exc
        raise ConfigurationError(
            f"config_from_object({path!r}): importing it failed: {exc}"
        ) from exc
    if not attribute:
        return module
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"config_from_object({path!r}): module {module_name!r} has no {attribute!r}"
        ) from None


def label(source: object) -> str:
    """How an error names ``source``: its import path, a module's or a class's name, or
    an object's type.

    Example:
        >>> label("django.conf:settings"), label(types), label({})
        ('django.conf:settings', 'types', 'dict')
    """
    if isinstance(source, str):
        return source
    if isinstance(source, types.ModuleType):
        return source.__name__
    if isinstance(source, type):
        return source.__qualname__
    return type(source).__name__
