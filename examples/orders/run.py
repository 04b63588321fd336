"""Charge three orders, export them, and see what get() tells about failures.

Start a worker first, in this folder: celeriac -A tasks worker -c 2 -Q payments,default
"""

from __future__ import annotations

import orders
from tasks import charge_order, export_orders, total_charged

from celeriac import Reject, ResultTimeout, TaskRevoked, chord, group


def main() -> None:
    """Run each step and print what it returned."""
    # Order 2's gateway times out twice: its task retries, then succeeds.
    for order_id, cents, gateway_failures in [(1, 1999, 0), (2, 25000, 2), (3, 550, 0)]:
        orders.create_order(order_id, cents, gateway_failures)
    ids = [1, 2, 3]

    # A chord: charge the orders in parallel, then add up what was charged, once.
    total = chord((charge_order.s(i) for i in ids), total_charged.s(ids)).apply_async()
    print(f"charged {total.get(timeout=30)} cents in total")

    # The same group again: new task ids, but each order is charged once (idempotent).
    # Followed by .si(), a step that ignores the group's results; .set() gives options.
    charges = group(charge_order.s(i).set(priority=9) for i in ids)
    print(charges.apply_async().get(timeout=30))
    export = (charges | export_orders.si(ids)).apply_async()
    with open(export.get(timeout=30), encoding="utf-8") as csv:
        print("exported:", csv.read().split())

    # Reject: the task said no retry can help; the message is in `celeriac dlq list`.
    try:
        charge_order.delay(99).get(timeout=30)
    except Reject as exc:
        print("rejected:", exc)

    # get() gives up after its timeout (the task may still run); a revoke stops it.
    later = export_orders.apply_async((ids,), countdown=2)
    try:
        later.get(timeout=0.5)
    except ResultTimeout:
        print("not finished within 0.5s: state", later.state)
    later.revoke()
    try:
        later.get(timeout=30)
    except TaskRevoked:
        print("revoked: state", later.state)


if __name__ == "__main__":
    main()
