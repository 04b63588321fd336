"""A policy of your own: a Middleware that uses every hook, and the task option it declares.

The policy: each task of a tenant-aware service is sent with its tenant in a header; the
middleware counts what each tenant has waiting, holds back the tasks of a suspended
tenant (dead-lettered, with the reason), and writes an audit line per finished task.

Hooks, in the order a task meets them (celeriac.middleware.base has the full picture):

    check_options   when @app.task defines a task, and per apply_async call: refuse a bad
                    value of this middleware's own options, at once
    before_send     in the producer, before the message is encoded (may change it)
    send_blocks     in the producer, before an async send (adelay): will before_send make
                    a blocking call for this message? Then the send runs in a thread
    send_failed     in the producer, when that message was not sent after all: undo
    before_execute  in the worker, before the task runs (return an Outcome to not run it)
    after_execute   in the worker, after it ran (return the Outcome to settle)
    before_dead_letter  in the worker, before a dead letter is committed: the only hook
                    that hears of a message dead-lettered before it could run (an unknown
                    task, too many deliveries); it may run twice for one letter
    after_settle    in the worker, once the broker committed the outcome
    on_idle         in the worker, when there is nothing to run (flush buffers here)
    on_child_start / on_child_stop  in each worker child, before its first task and as it
                    stops: what each process opens of its own (child_resources.py)
    on_loop_start / on_loop_stop  (async) the same inside a -P asyncio child's event loop

Run it, in this folder:  python middleware.py
It runs the tasks in this process on the in-memory broker (celeriac.testing.run_queued);
a worker (`celeriac -A yourmodule worker`) calls the same hooks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from celeriac import Celeriac, ConfigurationError, Middleware, PayloadTooLarge
from celeriac.message import Message
from celeriac.middleware import Job, Outcome, default_middleware
from celeriac.middleware.base import option_error
from celeriac.testing import run_queued


class Tenants(Middleware):
    """Per-tenant bookkeeping, and a switch that holds back a suspended tenant's tasks."""

    # The task options this middleware understands: @app.task(tenant_required=True).
    # @app.task refuses any option that no middleware declares.
    options = frozenset({"tenant_required"})

    def __init__(self) -> None:
        self.waiting: Counter[str] = Counter()  # sent and not yet finished, per tenant
        self.suspended: set[str] = set()
        self.audit: list[str] = []  # written out by on_idle, in batches
        self.written: list[str] = []  # what a real one would write to a file or a table

    def check_options(self, app: Celeriac, task: str, options: dict[str, Any]) -> None:
        """Refuse a tenant_required that is not a bool, when the task is defined (at import
        time): a wrong value would otherwise fail every message of the task in the worker."""
        required = options.get("tenant_required")
        if required is not None and not isinstance(required, bool):
            raise option_error(task, "tenant_required", required, "True or False")

    def before_send(self, app: Celeriac, message: Message) -> str | None:
        """Refuse a tenant-less send of a task that requires one; count the tenant's send."""
        tenant = message.headers.get("tenant")
        task = app.tasks.get(message.task)
        if tenant is None and task is not None and task.options.extra.get("tenant_required"):
            # Raised in the caller of delay(): nothing is sent.
            raise ValueError(f"task {message.task}: send it with headers={{'tenant': ...}}")
        if tenant is not None:
            self.waiting[tenant] += 1
        return None  # None: send it (an existing task id would send nothing: see dedupe)

    def send_blocks(self, app: Celeriac, message: Message) -> bool:
        """False: before_send only counts, in memory. A hook that reads a database or the
        broker returns True for the messages it calls out for: adelay() then sends those
        from a thread, so a slow call holds up that send, not the caller's event loop."""
        return False

    def send_failed(self, app: Celeriac, message: Message) -> None:
        """Undo the count: before_send counted the message, then the send failed (too
        large, not encodable, broker down); the tenant would show a task that never was."""
        tenant = message.headers.get("tenant")
        if tenant is not None:
            self.waiting[tenant] -= 1

    def before_execute(self, job: Job) -> Outcome | None:
        """Dead-letter, unrun, a suspended tenant's task; run every other one."""
        tenant = job.request.headers.get("tenant") if job.request else None
        if tenant in self.suspended:
            return Outcome("DEAD", reason=f"tenant {tenant} is suspended")  # not run
        return None  # None: run the task

    def after_execute(self, job: Job, outcome: Outcome) -> Outcome:
        """Note the tenant for after_settle (job.context is scratch space for middleware)."""
        job.context["tenant"] = job.request.headers.get("tenant") if job.request else None
        return outcome  # unchanged; a retry policy would return a RETRY outcome here

    def before_dead_letter(self, job: Job, outcome: Outcome) -> None:
        """Note the tenant of a task dead-lettered before it could run (a task this code
        does not have, too many deliveries): after_execute never saw it, and the tenant
        would show it waiting for ever. Runs again if the worker dies before the commit
        (the message comes back): it only notes, so twice is harmless."""
        job.context["tenant"] = job.message.headers.get("tenant") if job.message else None

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        """Count the task as finished and audit it, once the broker committed its outcome.

        ``committed`` is False when this worker lost the message's lease: another worker
        owns the task now, and its own after_settle counts it.
        """
        tenant = job.context.get("tenant")
        if committed and tenant is not None:
            self.waiting[tenant] -= 1
            self.audit.append(f"{tenant}: {job.label.split('[')[0]} {outcome.state}")

    def on_idle(self) -> None:
        """Write the audit lines out in one go: the worker has nothing to run."""
        self.written.extend(self.audit)
        self.audit.clear()


tenants = Tenants()
# The default policies (retries, expiry, results, canvas...) and this one after them.
app = Celeriac("tenants", middleware=[*default_middleware(), tenants])
app.conf.broker_url = "memory://"  # in this process (an assignment overrides CELERIAC_BROKER_URL)


@app.task(tenant_required=True)
def rebuild_report(report_id: int, rows: list[int] | None = None) -> str:
    """Rebuild one report of one tenant."""
    return f"report {report_id} rebuilt"


def main() -> None:
    """Send, refuse, hold back and audit tasks, and print what the middleware saw."""
    ok = rebuild_report.apply_async((1,), headers={"tenant": "acme"})
    rebuild_report.apply_async((2,), headers={"tenant": "globex"})
    print("waiting:", dict(tenants.waiting))

    try:
        rebuild_report.delay(3)  # before_send refuses it: no tenant
    except ValueError as exc:
        print("refused:", exc)

    try:  # before_send counted it, the size check refused it: send_failed undid the count
        rebuild_report.apply_async((4, [0] * 200_000), headers={"tenant": "acme"})
    except PayloadTooLarge:
        print("too large; waiting:", dict(tenants.waiting))

    try:  # check_options, when the task is defined
        app.task(name="tenants.nightly", tenant_required="yes")(rebuild_report.fn)
    except ConfigurationError as exc:
        print("definition refused:", exc)

    # Sent by name, a task this code no longer has: dead-lettered before it could run
    # (task_unknown_max_age=0: at once; by default a worker that knows it gets an hour).
    app.conf.task_unknown_max_age = 0
    app.send_task("tenants.retired_report", args=(5,), headers={"tenant": "acme"})
    print("waiting:", dict(tenants.waiting))

    tenants.suspended.add("globex")
    run_queued(app)  # runs acme's; globex's is dead-lettered by before_execute
    print("result:", ok.get(timeout=5))
    print("dead letters:", [d.reason for d in app.broker.dead_letters()])
    print("waiting:", dict(tenants.waiting))
    print("audit:", tenants.written)


if __name__ == "__main__":
    main()
