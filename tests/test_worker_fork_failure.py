"""A child that cannot be forked (a container's process limit) is tried again later; the
supervisor and its other children work on.

``fork`` fails with EAGAIN at a cgroup's ``pids.max`` (Kubernetes' pod pid limit, ``docker
--pids-limit``, systemd's TasksMax), which the processes tasks start count against, and
with ENOMEM when the supervisor cannot be copied. The error ended the supervisor (exit 1,
"error: BlockingIOError"), and its other children finished their tasks with nobody
renewing their leases. A real worker runs here in a real cgroup v1 pids group of its own
(skipped where one cannot be made), with room for fewer children than it asks for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.cgroup_dirs import fresh_v1_group
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

#: Room for the supervisor, its hard-limit watch thread and one child of three: the second
#: fork fails.
TOO_FEW = 3


@pytest.fixture
def pids_group() -> Iterator[Path]:
    with fresh_v1_group("pids", {"pids.max": str(TOO_FEW)}) as group:
        yield group


def test_a_fork_refused_at_the_process_limit_is_tried_again_and_the_worker_runs_on(
    pids_group: Path, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core.app.conf, "broker_url", sqlite_url)
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "CELERIAC_BROKER_URL": sqlite_url,
        # The celeriac this test process runs (an older tree's, to see the test fail).
        "PYTHONPATH": os.pathsep.join(
            [str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)]
        ),
    }
    command = f'echo $$ > {pids_group}/cgroup.procs && exec "$0" -m celeriac "$@"'
    args = ["-A", "tests.apps.core", "worker", "-c", "3", "-l", "info"]
    with log.open("wb") as output:
        proc = subprocess.Popen(
            ["sh", "-c", command, sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        refused = "could not start a child in place 1: fork failed"
        assert wait_for(lambda: refused in log.read_text() or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()  # it exited 1 on the first refusal
        assert core.add.delay(1, 2).get(timeout=30) == 3  # the child it has works
        (pids_group / "pids.max").write_text("100")  # room again: the places fill up
        assert wait_for(lambda: len(psutil.Process(proc.pid).children()) == 3, 30), log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        core.app.broker.close()
