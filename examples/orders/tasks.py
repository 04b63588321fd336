"""Charging orders: bound tasks, retries, rejects, progress, a soft limit's clean-up and a
middleware of your own. The tasks are thin: they take order ids and call orders.py.

Run a worker:   celeriac -A tasks worker -c 2 -Q payments,default
Send work:      python run.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orders

from celeriac import UNBOUNDED, Celeriac, Middleware, Reject, SoftTimeLimitExceeded, Task
from celeriac.middleware import Job, Outcome, default_middleware


class Audit(Middleware):
    """Appends a line to ORDERS_AUDIT (audit.log) for each outcome the broker committed of
    a task defined with ``audit=True``: RETRY, then SUCCESS, FAILURE or DEAD."""

    options = frozenset({"audit"})  # the task option it understands; unknown ones are refused

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Runs in the worker once the outcome is committed (not when the lease was lost)."""
        if committed and job.task is not None and job.task.options.extra.get("audit"):
            with open(os.environ.get("ORDERS_AUDIT", "audit.log"), "a", encoding="utf-8") as log:
                log.write(f"{outcome.state} {job.label}\n")


# No broker given: a SQLite file in the working directory. CELERIAC_BROKER_URL overrides it.
app = Celeriac("orders", middleware=[*default_middleware(), Audit()])


# expires=UNBOUNDED: a payment waits however long the queue is (`celeriac check` says so).
@app.bound_task(
    queue="payments",
    audit=True,
    max_retries=3,
    retry_backoff=0.2,
    soft_time_limit=20,
    time_limit=30,
    expires=UNBOUNDED,
)
def charge_order(self: Task[Any, Any], order_id: int) -> str:
    """Charge one order; orders.charge never charges an order twice, so a rerun is safe."""
    try:
        return orders.charge(order_id)
    except orders.PaymentGatewayDown as exc:
        # Due after 0.2 s * 2**self.request.retries at most (full jitter); after max_retries
        # the task fails with this exception, re-raised by get().
        raise self.retry(exc=exc) from exc
    except orders.OrderNotFound as exc:
        raise Reject(str(exc)) from exc  # no retry can help: dead-letter it, bytes and all


@app.task(queue="payments", soft_time_limit=10, time_limit=15, expires=3600)
def total_charged(receipts: list[str], order_ids: list[int]) -> int:
    """A chord's callback: gets the receipts of its members, returns the cents charged."""
    return orders.charged_total(order_ids)


@app.bound_task(soft_time_limit=5, time_limit=10, expires=3600)
def export_orders(self: Task[Any, Any], order_ids: list[int]) -> str:
    """Write the charged orders to a CSV file named by this task's id, reporting progress;
    return its path. A rerun rewrites the same file."""
    folder = Path(os.environ.get("ORDERS_EXPORTS", "exports")).resolve()
    folder.mkdir(exist_ok=True)
    final = folder / f"{self.request.id}.csv"
    partial = final.with_suffix(".part")
    try:
        with partial.open("w", encoding="utf-8") as out:
            for done, line in enumerate(orders.export_lines(order_ids), 1):
                out.write(line)
                self.progress(done, len(order_ids))  # AsyncResult.info: {"done": .., "total": ..}
    except SoftTimeLimitExceeded:
        partial.unlink(missing_ok=True)  # clean up, then fail: the hard limit comes next
        raise
    partial.replace(final)
    return str(final)
