"""Django: its apps' task modules found, and its database connections kept sound in workers.

Active when ``DJANGO_SETTINGS_MODULE`` is set and Django is installed, as Celery's Django
fix-up is; nothing here imports Django before that, and nothing needs it otherwise.

- **Set-up.** A command given ``-A`` runs ``django.setup()`` before it imports the modules
  of the ``imports`` setting or of ``app.autodiscover_tasks()``: those import models, which
  fail with ``AppRegistryNotReady`` before it.
- **Task modules.** ``app.autodiscover_tasks()`` without packages reads ``INSTALLED_APPS``.
- **Connections** (:class:`DjangoConnections`, in :func:`~celeriac.middleware.default_middleware`).
  A connection the supervisor opened (a query when the app was imported) is copied into
  every child it forks: each child drops its copy unused, without telling the server
  (closing it would end the supervisor's too). Around each task, connections past
  ``CONN_MAX_AGE`` or broken (a database restart) are closed, as Django does around each
  request: without it, a child kept a connection the database had dropped, and every later
  task of that child failed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac.errors import ConfigurationError
from celeriac.middleware.base import Job, Middleware, Outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac


def in_use() -> bool:
    """Whether this process runs beside Django: ``DJANGO_SETTINGS_MODULE`` is set and Django
    can be imported (it is not imported here)."""
    return bool(os.environ.get("DJANGO_SETTINGS_MODULE")) and (
        importlib.util.find_spec("django") is not None
    )


def set_up() -> None:
    """``django.setup()``, once: its apps and models are ready to be imported after it.

    Raises:
        ConfigurationError: Django's settings could not be loaded (says why).
    """
    from django.apps import apps

    if apps.ready:
        return
    import django

    try:
        django.setup()
    except Exception as exc:  # ImproperlyConfigured, the settings module raising...
        raise ConfigurationError(
            f"django.setup() failed (DJANGO_SETTINGS_MODULE="
            f"{os.environ.get('DJANGO_SETTINGS_MODULE')!r}): {type(exc).__name__}: {exc}"
        ) from exc


def installed_apps() -> list[str]:
    """The import names of Django's installed apps (``django.setup()`` first if needed).

    Raises:
        ConfigurationError: Django is not in use here, or its settings cannot be loaded.
    """
    if not in_use():
        raise ConfigurationError(
            "app.autodiscover_tasks() with no packages reads Django's INSTALLED_APPS, but "
            + (
                "Django is not installed"
                if importlib.util.find_spec("django") is None
                else "DJANGO_SETTINGS_MODULE is not set: set it before the app is created "
                "(os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings'))"
            )
            + ". Otherwise name the packages: app.autodiscover_tasks(['shop.orders'])."
        )
    set_up()
    from django.apps import apps

    return [config.name for config in apps.get_app_configs()]


def on_commit(send: Callable[[], object], using: str | None) -> None:
    """Call ``send`` once the transaction of database ``using`` commits (Django's
    ``transaction.on_commit``): at once outside a transaction, never after a rollback.

    Raises:
        ConfigurationError: Django is not installed.
    """
    try:
        from django.db import transaction
    except ImportError:
        raise ConfigurationError(
            "delay_on_commit() and apply_async_on_commit() wait for a Django transaction, and "
            "Django is not installed: use delay() or apply_async()"
        ) from None
    transaction.on_commit(send, using=using)


class DjangoConnections(Middleware):
    """Keeps Django's database connections sound in a worker (see the module's text).

    In the default middleware when Django is in use. The hooks run in the thread that runs
    the task for ``-P process`` and ``-P threads`` (Django's connections are per thread);
    under ``-P asyncio``, call the ORM through ``sync_to_async`` as Django says.
    """

    #: Set in a worker child only: tasks run in the caller's process (run_queued in a
    #: test, eager mode) share the caller's connection, often inside its transaction (a
    #: Django TestCase), and closing it there failed the task with "Cannot operate on a
    #: closed database" (Celery's fix-up skips eager tasks for the same reason).
    in_worker_child = False

    def on_child_start(self, app: Celeriac) -> None:
        """Drop the connections copied from the supervisor, without closing them for it."""
        from django.db import connections

        self.in_worker_child = True

        for connection in _opened(connections):
            raw = connection.connection
            fileno = getattr(raw, "fileno", None)
            if callable(fileno):
                # This process's copy of the socket goes; the driver's close below then
                # cannot send the server a goodbye on the supervisor's connection.
                with contextlib.suppress(Exception):
                    os.close(fileno())
            with contextlib.suppress(Exception):
                connection.close()

    def before_execute(self, job: Job) -> Outcome | None:
        """Close connections too old or broken to use, as Django does before a request."""
        if self.in_worker_child:
            _close_old()
        return None

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """The same after the task: ``CONN_MAX_AGE = 0`` (the default) closes it now."""
        if self.in_worker_child:
            _close_old()
        return outcome


def _opened(connections: Any) -> list[Any]:
    """The connections this process has opened (or inherited) so far."""
    return [c for c in connections.all(initialized_only=True) if c.connection is not None]


def _close_old() -> None:
    from django.db import close_old_connections

    close_old_connections()
