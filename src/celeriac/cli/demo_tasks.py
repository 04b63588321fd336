"""The tasks ``celeriac demo`` runs: thin launchers, as real tasks should be."""

from __future__ import annotations

import time

from celeriac import Celeriac

app = Celeriac("demo")  # the demo sets CELERIAC_BROKER_URL to a temporary SQLite file


@app.task(soft_time_limit=5, time_limit=10, expires=300)
def resize_image(image_id: int) -> str:
    """Pretend to make a thumbnail."""
    time.sleep(0.002)
    return f"thumbnails/{image_id}.jpg"


@app.task(soft_time_limit=5, time_limit=10)
def send_reminder(user_id: int) -> float:
    """Runs later (countdown); returns when it ran."""
    return time.time()


@app.task(soft_time_limit=5, time_limit=10)
def charge_card(order_id: int) -> None:
    """Always fails, to show how an error comes back."""
    raise ValueError(f"card declined for order {order_id}")


@app.task(soft_time_limit=5, time_limit=10)
def nightly_report(row: int) -> float:
    """Low-priority backlog work; returns when it finished."""
    time.sleep(0.01)
    return time.time()


@app.task(soft_time_limit=5, time_limit=10)
def page_on_call(alert: int) -> float:
    """Urgent work sent behind the backlog; returns when it finished."""
    return time.time()
