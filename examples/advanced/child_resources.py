"""Per-process resources: a database connection that each worker child opens for itself.

A worker's supervisor imports the app, then forks its children: a connection opened at
import time would be one socket shared by every child, their queries and replies mixed
up. A middleware opens it in ``on_child_start`` instead (Celery's ``worker_process_init``)
and closes it in ``on_child_stop`` (``worker_process_shutdown``: a recycled child, a warm
shutdown). A child whose ``on_child_start`` raises takes no task: the error is logged and
the supervisor starts another, so a database that is down at start-up holds tasks back
instead of failing them.

Start a worker first, in this folder:
    celeriac -A child_resources worker -Q visits -c 2 --max-tasks-per-child 3
Then:
    python child_resources.py
(Both use CELERIAC_BROKER_URL, else ./celeriac.db in the folder they run in.)
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import uuid
from pathlib import Path

from celeriac import Celeriac, Middleware
from celeriac.middleware import default_middleware

#: The "database" of this example: a file both the worker and the script can read.
DATABASE = Path(tempfile.gettempdir()) / "celeriac-child-resources.db"

#: Each process's own connection, by pid: a forked child never uses its parent's.
_opened: dict[int, sqlite3.Connection] = {}


def database() -> sqlite3.Connection:
    """This process's connection: the one its on_child_start opened, else one opened now
    (a test's ``run_queued`` or eager mode runs tasks in a process that is no worker child).
    One per process suits ``-P process``; with ``-P threads``, open a thread-safe pool."""
    found = _opened.get(os.getpid())
    if found is None:
        found = _opened[os.getpid()] = sqlite3.connect(DATABASE, timeout=30, isolation_level=None)
        found.execute("CREATE TABLE IF NOT EXISTS visits (visit TEXT, pid INTEGER)")
    return found


class Database(Middleware):
    """Opens each worker child's connection before it takes a task, and closes it."""

    def on_child_start(self, app: Celeriac) -> None:
        """In the child, after the fork: a connection of its own (raising here stops it)."""
        database()

    def on_child_stop(self, app: Celeriac) -> None:
        """The child stops of its own accord: close what on_child_start opened."""
        opened = _opened.pop(os.getpid(), None)
        if opened is not None:
            opened.close()


app = Celeriac("visits", middleware=[*default_middleware(), Database()])


@app.task(queue="visits", soft_time_limit=10, time_limit=20, expires=300)
def record_visit(visit: str) -> int:
    """Store one visit through this child's connection; return the child's pid."""
    database().execute("INSERT INTO visits VALUES (?, ?)", (visit, os.getpid()))
    return os.getpid()


def main() -> None:
    """Send six visits and check each was written by the child that ran it."""
    visits = [f"visit-{uuid.uuid4().hex}" for _ in range(6)]
    sent = {visit: record_visit.delay(visit) for visit in visits}
    ran_in = {visit: result.get(timeout=30) for visit, result in sent.items()}
    rows = database().execute("SELECT visit, pid FROM visits").fetchall()
    written = {visit: pid for visit, pid in rows if visit in ran_in}
    print("recorded:", len(written))
    print("each through its own child's connection:", written == ran_in)
    print("children:", "more than one" if len(set(ran_in.values())) > 1 else "one")


if __name__ == "__main__":
    main()
