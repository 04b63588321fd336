"""A child whose supervisor was SIGKILLed keeps the task it is finishing its own."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil
import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

# Short heartbeats and leases, so that a reaper would take the task from the orphan within
# a few seconds (at the defaults: about 10 s) while it still runs.
_FAST = {"CELERIAC_WORKER_HEARTBEAT_SECONDS": "0.5", "CELERIAC_WORKER_LEASE_SECONDS": "3"}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_an_orphaned_child_keeps_its_lease_and_commits_its_task_once(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # Only the supervisor is killed (kill -9, the OOM killer): its child finishes its task
    # and exits, but nobody renewed its lease or heartbeated it any more, so another
    # worker's reaper handed the message out again and the task ran twice at once; the
    # orphan's commit was refused.
    proc = workers.start("-c", "1", "-P", pool, env=_FAST)
    (child,) = workers.wait_children(proc, 1)
    result = core.work.delay(8.0, "once")
    try:
        assert wait_for(lambda: ledger.count("start")[result.id] == 1, timeout=30)
        proc.kill()
        proc.wait(timeout=10)
        workers.start("-c", "1", "-P", pool, env=_FAST)  # its reaper runs meanwhile
        assert result.get(timeout=60) == "once", workers.log_text()
        assert wait_for(lambda: not _alive(child), timeout=30), workers.log_text()  # it exits
        assert ledger.count("start")[result.id] == 1, workers.log_text()  # and ran once
        assert ledger.count("end")[result.id] == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
