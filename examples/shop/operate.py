"""Operate the queue from Python: what `celeriac ping`, `inspect`, `revoke` and `purge` do,
for a script, a health check or an admin page.

Start a worker first, in this folder: celeriac -A tasks worker -c 2 -Q emails,default
Then:                                 python operate.py

It sends its own tasks to the queue "operate-example" (no worker serves it) and purges only
that queue, so it leaves the shop's queues alone.
"""

from __future__ import annotations

import socket

from tasks import app, send_welcome

from celeriac.control import ask, ask_each, broadcast, live_workers, revoke_many
from celeriac.middleware.dedupe import release_dedupe_key
from celeriac.testing import wait_for

PARKED = "operate-example"  # a queue no worker serves: its tasks wait until purged


def main() -> None:
    """Find the workers, ask them questions, revoke tasks, free a purged task's dedupe key."""
    # `celeriac ping`: each live worker answers within the timeout. A worker that has just
    # started is listed a moment before it reads commands, so wait until one answers:
    # wait_for polls a condition until it holds or the timeout passes (False then). Each
    # reply's data is "pong", or "unhealthy: ..." (why) while the worker's children keep
    # dying: a health check looks at it, as `celeriac ping` does.
    if not wait_for(lambda: broadcast(app, "ping", timeout=1), timeout=30):
        raise SystemExit(
            "no worker answered: start celeriac -A tasks worker -c 2 -Q emails,default"
        )
    workers = live_workers(app)  # `celeriac status`: supervisors, from their heartbeats
    print("queues served:", sorted({q for w in workers for q in w.queues}))

    # `celeriac inspect registered`: the task names the workers' code defines. ask() is
    # broadcast() that also names the live workers that gave no reply in time (frozen).
    registered, silent = ask(app, "registered", timeout=2)
    print("registered:", sorted({name for r in registered for name in r.data}))
    if silent:
        print("no reply from:", silent)

    # `celeriac ping -w HOST`, a container's health check: one command per worker of
    # this host, all sent at once, so frozen ones cost one timeout between them.
    here = [w.id for w in workers if w.host == socket.gethostname()]
    pongs, _ = ask_each(app, "ping", here, timeout=2)
    print("healthy here:", sum(r.data == "pong" for r in pongs), "of", len(here))

    # `celeriac revoke ID ID`: tasks that have not started read REVOKED at once and never run.
    later = [send_welcome.apply_async((u,), queue=PARKED, countdown=600) for u in (1, 2)]
    revoke_many(app, [r.id for r in later])
    print("revoked:", [r.state for r in later])

    # A dedupe key stands for its task until the task starts. Purge that task and the key
    # would hand every send the purged task (which never runs) until its TTL: free it.
    parked = send_welcome.apply_async((3,), queue=PARKED, dedupe_key="user:3")
    again = send_welcome.apply_async((3,), dedupe_key="user:3")
    print("second send handed the first:", again.id == parked.id)
    print("purged:", app.broker.purge(PARKED))  # `celeriac purge operate-example --yes`
    print(
        "key was held by the purged task:",
        release_dedupe_key(app, send_welcome, "user:3") == parked.id,
    )
    print(send_welcome.apply_async((3,), dedupe_key="user:3").get(timeout=30))


if __name__ == "__main__":
    main()
