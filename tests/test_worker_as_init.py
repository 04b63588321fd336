"""A worker run as PID 1 (a container's first process, ``docker run`` without ``--init``)
reaps the orphans the kernel hands it. Each stayed a zombie for as long as the worker ran,
holding a pid, until the container's pid limit made every fork fail.

A real worker started as the init of a PID namespace of its own (``unshare``), on SQLite;
skipped where this user may not make one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import celeriac
from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)]

_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _may_unshare() -> bool:
    try:
        probe = subprocess.run([*_NAMESPACE, "true"], check=False, capture_output=True)
    except OSError:
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _may_unshare(), reason="no PID namespace for this user (unshare)")
def test_as_pid_1_the_supervisor_reaps_the_orphans_handed_to_it(
    core_app: Celeriac, broker_url: str, tmp_path: Path
) -> None:
    src = str(Path(celeriac.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "CELERIAC_BROKER_URL": broker_url,
        "PYTHONPATH": os.pathsep.join([src, str(ROOT)]),
    }
    worker = [sys.executable, "-m", "celeriac", "-A", "tests.apps.core", "worker", "-c", "1"]
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        namespace = subprocess.Popen(
            [*_NAMESPACE, *worker, "-l", "info"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    supervisor = 0
    try:
        assert wait_for(lambda: bool(psutil.Process(namespace.pid).children()), timeout=20)
        supervisor = psutil.Process(namespace.pid).children()[0].pid

        def orphans() -> list[psutil.Process]:
            found = []
            for child in psutil.Process(supervisor).children():
                try:
                    if child.name() == "sleep":
                        found.append(child)
                except psutil.NoSuchProcess:  # reaped between the listing and the read
                    pass
            return found

        for _ in range(5):
            core.daemonizes.delay().get(timeout=20)
        assert orphans()  # handed to the supervisor as their shells ended
        assert wait_for(lambda: not orphans(), timeout=20), (
            [(p.pid, p.status()) for p in orphans()],
            log.read_text(),
        )
        assert "runs as PID 1" in log.read_text()
    finally:
        if supervisor:  # the namespace ends with its init
            os.kill(supervisor, signal.SIGTERM)
        namespace.wait(timeout=30)
