"""The quickstart's tasks: thin launchers that call the real code with ids.

Run a worker:   celeriac -A tasks worker -c 2 -Q emails,default
                (-Q emails: these tasks go to queue emails, not to default)
Send work:      python send.py
"""

from __future__ import annotations

from celeriac import Celeriac

# No broker given: a SQLite file in the working directory. CELERIAC_BROKER_URL overrides it
# (e.g. redis://localhost:6379/0 in production).
app = Celeriac("shop")


@app.task(queue="emails", soft_time_limit=10, time_limit=20, expires=300)
def send_welcome(user_id: int) -> str:
    """Send the welcome e-mail to one user."""
    return f"welcome e-mail sent to user {user_id}"


@app.task(queue="emails", soft_time_limit=10, time_limit=20, expires=3600)
def send_receipt(order_id: int, copy_to_accounting: bool = False) -> str:
    """E-mail the receipt of one order."""
    return f"receipt for order {order_id} sent" + (" (copy to accounting)" * copy_to_accounting)
