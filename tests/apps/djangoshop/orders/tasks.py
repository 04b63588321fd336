"""Found by app.autodiscover_tasks(): nothing else imports this module in a worker."""

from __future__ import annotations

import os
from typing import Any

from django.db import connection

from tests.apps.djangoshop.celeriac_app import app
from tests.apps.djangoshop.orders.models import Order


@app.task
def place_order(number: int) -> dict[str, Any]:
    """Store an order; say whether this thread's connection was open when the task began."""
    open_at_start = connection.connection is not None
    Order.objects.create(number=number)
    return {"pid": os.getpid(), "open_at_start": open_at_start, "orders": Order.objects.count()}
