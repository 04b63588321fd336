"""Found by app.autodiscover_tasks(): nothing else imports this module in a worker. Written
as Celery's Django guide writes a reusable app's tasks: @shared_task, no app imported."""

from __future__ import annotations

import os
from typing import Any

from django.db import connection

from celeriac import shared_task
from tests.apps.djangoshop.orders.models import Order


@shared_task
def place_order(number: int) -> dict[str, Any]:
    """Store an order; say whether this thread's connection was open when the task began."""
    open_at_start = connection.connection is not None
    Order.objects.create(number=number)
    return {"pid": os.getpid(), "open_at_start": open_at_start, "orders": Order.objects.count()}
