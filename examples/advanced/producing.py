"""Sending, below delay(): built messages, batches, sends by name, and asyncio.

    task.check_arguments(args, kwargs)  the check delay() makes, without sending
    task.message(args, kwargs, **opts)  the message apply_async would send, unsent
    app.publish(message)                send one built message; its AsyncResult
    await app.apublish(message)         the same from asyncio code
    app.publish_many(messages)          many messages in one broker round trip (a sync job
    app.send_many(messages)             that enqueues thousands: 10-50x faster than a loop
                                        of delay()); send_many is the same call
    app.task_named(name)                a task known by name only (its code lives in
                                        another service): build its messages here
    signature(name, args, app=app)      the same as a workflow piece (celeriac.canvas)
    task.ignores_result                 whether a success stores no value

Run it, in this folder:  python producing.py
It runs the tasks in this process on the in-memory broker (celeriac.testing.run_queued).
"""

from __future__ import annotations

import asyncio

from celeriac import Celeriac
from celeriac.canvas import signature
from celeriac.testing import run_queued

app = Celeriac("newsletter")
app.conf.broker_url = "memory://"  # in this process (an assignment overrides the env)


@app.task(queue="mail", expires=3600)
def send_issue(subscriber_id: int, issue: int) -> str:
    """Send one issue of the newsletter to one subscriber."""
    return f"issue {issue} sent to {subscriber_id}"


@app.task(ignore_result=True)
def count_open(subscriber_id: int) -> None:
    """Count an opened e-mail (no caller reads this: its result is not stored)."""


def main() -> None:
    """Build, check and send messages in the ways above."""
    try:
        send_issue.check_arguments((1,), {})  # what delay(1) would raise, nothing sent
    except TypeError as exc:
        print("not sent:", exc)

    # One issue to 1,000 subscribers: build the messages, send them in one round trip.
    messages = [send_issue.message((s, 7), priority=3) for s in range(1000)]
    results = app.publish_many(messages)
    print(len(results), "sent; first on queue", messages[0].queue, "priority", messages[0].priority)

    # A task of another service, by name: the message carries only the name.
    billing = app.task_named("billing.tasks.invoice")
    invoice = app.publish(billing.message((7,), queue="billing"))
    print("sent by name:", billing.name, invoice.state)  # PENDING: no worker of billing here
    # The same as a signature, to put in a chain or group, or to send alone.
    remind = signature("billing.tasks.remind", (7,), app=app, queue="billing")
    print("signature:", remind, remind.delay().state)

    # send_many: the same as publish_many.
    app.send_many([count_open.message((s,)) for s in (1, 2)])
    print("count_open.ignores_result:", count_open.ignores_result)

    async def from_asyncio() -> str:
        sent = await app.apublish(send_issue.message((2000, 7), task_id="issue-7-to-2000"))
        return sent.id

    print("apublish:", asyncio.run(from_asyncio()))
    ran = run_queued(app, queues=["mail", "default"])  # billing's queue is another service's
    last = app.AsyncResult("issue-7-to-2000")  # a handle from an id alone
    print("ran:", ran, "|", results[0].get(timeout=5), "|", last.get(timeout=5))


if __name__ == "__main__":
    main()
