"""Tasks and entries the periodic-task tests run in real scheduler and worker processes.

Each tick appends a ledger line (see :func:`tests.apps.core.record`) with the entry's name
and the tick's scheduled time, taken from the headers beat puts on every tick.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celeriac import Celeriac, Task
from tests.apps.core import record

app = Celeriac("periodic-tests")


# ignore_result: no stored result, so the broker's idempotent enqueue cannot hide a second
# send of a finished tick — only beat's own claim keeps each tick to one run.
@app.periodic(every=timedelta(seconds=1), name="every-second")
@app.bound_task(ignore_result=True)
def tick(self: Task[Any, Any], label: str = "") -> None:
    headers = self.request.headers
    record("tick", self.request.id, f"{headers.get('beat_entry')} {headers.get('beat_tick')}")
