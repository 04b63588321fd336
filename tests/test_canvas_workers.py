"""Issue 6 under real worker processes, on SQLite and Redis: the ETL example, and a chord
whose worker children are SIGKILLed at random while its header runs."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.canvas import chord
from tests.apps import canvas as tasks
from tests.apps.canvas import collect, square
from tests.conftest import ROOT, Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

ETL = ROOT / "examples" / "etl"


@pytest.fixture
def canvas_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.canvas's app on this test's broker (the one `workers` use)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(tasks.app.conf, "broker_url", broker_url)
    yield tasks.app
    tasks.app.broker.close()


def test_the_etl_example_runs_against_a_real_worker(
    workers: WorkerProcesses, broker_url: str, tmp_path: Path
) -> None:
    workers.start("-c", "1", app="tasks", env={"PYTHONPATH": str(ETL)})
    db_path = tmp_path / "warehouse.db"
    done = subprocess.run(
        [sys.executable, "run.py", "sales.csv", str(db_path)],
        cwd=ETL,
        env={**os.environ, "CELERIAC_BROKER_URL": broker_url, "PYTHONPATH": str(ETL)},
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr + workers.log_text()
    assert done.stdout.splitlines() == [
        f"loaded 6 rows into {db_path}",
        "CH: 1 orders, 9.90",
        "GB: 2 orders, 61.98",
        "US: 3 orders, 378.95",
    ]
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        names = [r[0] for r in db.execute("SELECT customer FROM sales ORDER BY order_id")]
    assert names == [
        "Ada Lovelace",
        "Grace Hopper",
        "Alan Turing",
        "Barbara Liskov",
        "Donald Knuth",
        "Tim Berners-Lee",
    ]


def test_a_chord_survives_sigkilled_children_and_calls_back_exactly_once(
    canvas_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    members = 200
    # Each task waits 10 ms after continuing its workflow and before committing: kills
    # often land there, so members join, die, and join again.
    proc = workers.start(
        "-c", "2", app="tests.apps.canvas", env={"CELERIAC_TEST_ACK_DELAY": "0.01"}
    )
    result = chord([square.s(i, 0.01) for i in range(members)], collect.s()).apply_async()
    rng = random.Random(6)
    kills = 0
    # Kill only while most of the header is still to run: the callback itself is never
    # killed, so a second callback execution could only come from a double join.
    while kills < 4 and len(ledger.count("run")) < members * 0.6:
        time.sleep(rng.uniform(0.1, 0.3))
        children = workers.children(proc)
        if children and len(ledger.count("run")) < members * 0.6:
            os.kill(rng.choice(children), signal.SIGKILL)
            kills += 1
    assert kills >= 2, "the header finished before the test could kill anything"
    assert result.get(timeout=60) == [i * i for i in range(members)], workers.log_text()
    assert ledger.count("callback") == {result.id: 1}
    runs = ledger.count("run")
    assert set(runs) == {f"{result.id}:h:{i}" for i in range(members)}
    assert any(count > 1 for count in runs.values()), "no member was delivered again"
