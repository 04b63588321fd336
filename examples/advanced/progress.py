"""Progress and custom states: what a running task tells its caller before it finishes.

A bound task (``@app.bound_task``) reports with ``self.update_state(state, meta)`` (any
state name and a JSON-ready dict) or ``self.progress(done, total)`` (state PROGRESS, meta
``{"done": .., "total": ..}``). The caller reads ``AsyncResult.state`` and
``AsyncResult.info`` (the meta while the task runs; the value once it succeeded; the
error once it failed), and ``ready()``, ``successful()``, ``failed()``.

Each report is one broker write: report per step of work that takes a while, not per row.

Start a worker first, in this folder:  celeriac -A progress worker -Q imports
Then:                                  python progress.py
(Both use CELERIAC_BROKER_URL, else ./celeriac.db in the folder they run in.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from celeriac import Celeriac, Task
from celeriac.testing import wait_for

app = Celeriac("imports")


@app.bound_task(queue="imports", soft_time_limit=60, time_limit=90, expires=600)
def import_file(self: Task[Any, Any], path: str) -> int:
    """Import a file of numbers, one per line, once it has been uploaded; return the sum."""
    upload = Path(path)
    deadline = time.monotonic() + 50  # under the soft limit: give up with a clear error
    while not upload.exists():
        # A custom state and its meta, visible to the caller at once.
        self.update_state("WAITING_FOR_UPLOAD", {"path": path})
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"{path} was not uploaded within 50 s")
        time.sleep(0.2)
    lines = upload.read_text().split()
    total = 0
    for done, line in enumerate(lines, 1):
        total += int(line)  # a line that is no number fails the task: a ValueError
        self.progress(done, len(lines))  # state PROGRESS, info {"done": .., "total": ..}
    return total


def main() -> None:
    """Watch one import wait for its upload, then finish; and one fail."""
    with tempfile.TemporaryDirectory() as folder:
        upload = Path(folder) / "numbers.txt"
        result = import_file.delay(str(upload))
        # The task reports while it waits; a web page would poll this and show it.
        assert wait_for(lambda: result.state == "WAITING_FOR_UPLOAD", timeout=30), result.state
        print(result.state, result.info == {"path": str(upload)}, "ready:", result.ready())

        upload.write_text("10\n20\n12\n")  # the upload arrives: the task goes on
        print("sum:", result.get(timeout=30))
        print(result.state, "successful:", result.successful(), "info:", result.info)

        broken = Path(folder) / "broken.txt"
        broken.write_text("1\ntwo\n")
        failed = import_file.delay(str(broken))
        error = failed.get(timeout=30, propagate=False)  # the exception, not raised
        print(failed.state, "failed:", failed.failed(), type(error).__name__)


if __name__ == "__main__":
    main()
