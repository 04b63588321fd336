"""The examples are real: run them as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Ledger, WorkerProcesses

SHOP = ROOT / "examples" / "shop"


@pytest.mark.slow
def test_quickstart_runs_against_a_real_worker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shop.db"
    env = {**os.environ, "CELERIAC_BROKER_URL": url, "PYTHONPATH": str(SHOP)}
    procs = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start("-c", "1", "-Q", "emails,default", app="tasks", env={"PYTHONPATH": str(SHOP)})
        done = subprocess.run(
            [sys.executable, "send.py"],
            cwd=SHOP,
            env=env,
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr + procs.log_text()
        assert done.stdout.splitlines() == [
            "welcome e-mail sent to user 42",
            "receipt for order 1001 sent (copy to accounting)",
            "state: SUCCESS",
            "welcome e-mail sent to user 7",
        ]
    finally:
        procs.kill_all()


def test_the_testing_example_passes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tasks.py"],
        cwd=SHOP,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(SHOP)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
