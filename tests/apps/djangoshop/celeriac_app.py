"""The project's celeriac app, as Celery's Django guide writes its own."""

from __future__ import annotations

import os

from celeriac import Celeriac

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.djangoshop.settings")

app = Celeriac("djangoshop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

if os.environ.get("DJANGOSHOP_QUERY_AT_IMPORT"):  # opens a connection in the supervisor
    import django

    django.setup()
    from tests.apps.djangoshop.orders.models import Order

    Order.objects.count()
