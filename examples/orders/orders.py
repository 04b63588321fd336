"""The shop's own code, which knows nothing of celeriac: orders, a payment gateway, exports.

The tasks in tasks.py are thin: they take an order id and call these functions. Every
function here can run twice for the same order without harm (celeriac runs a task again
after a crash): a charge is recorded under its order id, and a second call returns the
first charge instead of charging again.

The database is ORDERS_DB (default: orders.db in the working directory).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


class OrderNotFound(LookupError):
    """No order has this id: retrying cannot help."""


class PaymentGatewayDown(ConnectionError):
    """The payment gateway did not answer: worth retrying later."""


@contextmanager
def database() -> Iterator[sqlite3.Connection]:
    """A connection to the shop's database, committed on success."""
    db = sqlite3.connect(os.environ.get("ORDERS_DB", "orders.db"), timeout=30)
    try:
        with db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total_cents INTEGER,"
                " gateway_failures INTEGER DEFAULT 0)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS charges"
                " (order_id INTEGER PRIMARY KEY, total_cents INTEGER)"
            )
            yield db
    finally:
        db.close()


def create_order(order_id: int, total_cents: int, gateway_failures: int = 0) -> None:
    """Store an order; ``gateway_failures`` makes the fake gateway fail that many times."""
    with database() as db:
        db.execute(
            "INSERT OR REPLACE INTO orders VALUES (?, ?, ?)",
            (order_id, total_cents, gateway_failures),
        )


def charge(order_id: int) -> str:
    """Charge an order once, however many times this is called; return the receipt.

    Raises:
        OrderNotFound: no such order.
        PaymentGatewayDown: the gateway failed; nothing was charged.
    """
    with database() as db:
        done = db.execute("SELECT total_cents FROM charges WHERE order_id = ?", (order_id,))
        charged = done.fetchone()
        if charged is not None:  # an earlier run of the task charged it: never charge twice
            return _receipt(order_id, charged[0])
        order = db.execute(
            "SELECT total_cents, gateway_failures FROM orders WHERE id = ?", (order_id,)
        ).fetchone()
        if order is None:
            raise OrderNotFound(f"order {order_id} does not exist")
        total_cents, failures = order
        if failures > 0:  # the fake gateway is down for this order's next `failures` calls
            failures_left = (failures - 1, order_id)
            db.execute("UPDATE orders SET gateway_failures = ? WHERE id = ?", failures_left)
            db.commit()
            raise PaymentGatewayDown(f"the gateway timed out charging order {order_id}")
        # A real gateway call goes here, with the order id as its idempotency key. OR IGNORE:
        # a run that raced this one (a worker that lost its lease) charged it already.
        db.execute("INSERT OR IGNORE INTO charges VALUES (?, ?)", (order_id, total_cents))
        return _receipt(order_id, total_cents)


def _receipt(order_id: int, total_cents: int) -> str:
    return f"order {order_id}: charged {total_cents / 100:.2f}"


def charged_total(order_ids: list[int]) -> int:
    """The sum in cents of these orders' charges."""
    with database() as db:
        marks = ",".join("?" * len(order_ids))
        (total,) = db.execute(
            f"SELECT COALESCE(SUM(total_cents), 0) FROM charges WHERE order_id IN ({marks})",  # noqa: S608 - only '?' marks are formatted in
            order_ids,
        ).fetchone()
        return int(total)


def export_lines(order_ids: list[int]) -> Iterator[str]:
    """One CSV line per charged order."""
    with database() as db:
        for order_id in order_ids:
            row = db.execute(
                "SELECT total_cents FROM charges WHERE order_id = ?", (order_id,)
            ).fetchone()
            if row is not None:
                yield f"{order_id},{row[0]}\n"
