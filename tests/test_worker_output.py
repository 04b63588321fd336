"""What a task prints reaches the worker's standard output at once, and none of it is lost
when the worker stops. Its output is a file here, as under Docker, Kubernetes or systemd
(a pipe or a file, never a terminal), and PYTHONUNBUFFERED is off: with it, Python buffered
standard output in 8 KiB blocks, and a child's os._exit dropped what was left."""

from __future__ import annotations

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import WorkerProcesses

pytestmark = pytest.mark.slow

#: Empty is off (Python reads a non-empty value as -u): the tests' own environment sets it.
BUFFERED = {"PYTHONUNBUFFERED": ""}


@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_a_tasks_print_is_in_the_output_at_once_and_a_partial_line_after_a_stop(
    workers: WorkerProcesses, core_app: Celeriac, pool: str
) -> None:
    proc = workers.start("-c", "1", "-P", pool, env=BUFFERED)
    core.prints.delay("a line the task printed").get(timeout=30)
    # A line a task printed is there while the worker runs (it waited for 8 KiB more).
    assert wait_for(lambda: "a line the task printed\n" in workers.log_text(), 10), (
        workers.log_text()
    )
    core.prints.delay("no newline after this", end="").get(timeout=30)
    assert workers.stop(proc) == 0
    # Printed without a newline, it stayed in the child's buffer: lost at its os._exit.
    assert "no newline after this" in workers.log_text(), workers.log_text()
