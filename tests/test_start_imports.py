"""What a worker imports before its first task: every module there is start-up time.

A worker's start is part of every deploy's and autoscaler's drain (``docs/benchmarks.md``
measures the drain from worker start), and whatever the supervisor imports every forked
child carries in its memory too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.apps import lean
from tests.conftest import Ledger, WorkerProcesses

#: The modules a process-, threads- or asyncio-pool worker on Redis loads to start.
_WORKER_START = (
    "celeriac.cli.main",
    "celeriac.cli.worker_cmd",
    "celeriac.worker.supervisor",
    "celeriac.worker.child",
    "celeriac.worker.threads",
    "celeriac.worker.aio",
    "celeriac.brokers.redis",
)


def test_a_worker_start_leaves_psutil_until_a_child_is_killed_or_ends() -> None:
    # psutil walks a child's process tree when it is killed or ends
    # (celeriac.worker.descendants) and nothing else: ~5 ms of the start, ~0.8 MiB a process.
    code = f"import sys, {', '.join(_WORKER_START)}; print('psutil' in sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert shown.stdout.strip() == "False", "a worker's start imports psutil again"


#: What a producer or an SQLite worker loads: the app, the CLI and each sync pool's child.
_SQLITE_START = (
    "celeriac",
    "celeriac.cli.main",
    "celeriac.cli.worker_cmd",
    "celeriac.worker.supervisor",
    "celeriac.worker.child",
    "celeriac.worker.threads",
    "celeriac.brokers.sqlite",
)


def test_an_app_and_an_sqlite_worker_load_no_asyncio_openssl_or_redis_py(tmp_path: Path) -> None:
    # asyncio (with ssl, which it imports) is ~8 MiB and ~50 ms a process, OpenSSL's
    # libcrypto (hashlib) ~4 MiB; only code that awaits, or signs, or talks to Redis
    # needs them. An app that sends one task on SQLite loads none of them either.
    code = (
        f"import sys, {', '.join(_SQLITE_START)}\n"
        f"app = celeriac.Celeriac('lean', broker='sqlite:///{tmp_path}/b.db')\n"
        "app.send_task('lean.nothing').forget()\n"
        f"print(sorted(set({lean.HEAVY!r}) & set(sys.modules)))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert shown.stdout.strip() == "[]", shown.stdout + shown.stderr


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_task_on_an_sqlite_worker_runs_in_a_process_without_them(
    pool: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = WorkerProcesses(sqlite_url, Ledger(tmp_path / "ledger.txt"))
    try:
        workers.start("-P", pool, "-c", "2", app="tests.apps.lean")
        monkeypatch.setattr(lean.app.conf, "broker_url", sqlite_url)
        assert lean.loaded_heavy.delay().get(timeout=20) == []
    finally:
        lean.app.broker.close()
        workers.kill_all()
