"""What a worker imports before its first task: every module there is start-up time.

A worker's start is part of every deploy's and autoscaler's drain (``docs/benchmarks.md``
measures the drain from worker start), and whatever the supervisor imports every forked
child carries in its memory too.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.apps import lean
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer

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


#: What a Redis producer or worker may load of lean.HEAVY: nothing. Its scripts' SHA1
#: (EVALSHA) comes from CPython's own _sha1, not hashlib's OpenSSL (~3.8 MiB a process).
_REDIS_LOADS: list[str] = []


def test_a_producer_on_redis_sends_and_waits_without_redis_py(redis_server: RedisServer) -> None:
    # send (a script), get() (pub/sub and reads) and the server check (INFO, CONFIG GET)
    # all run on celeriac's own client.
    url = f"{redis_server.url}?prefix=lean{uuid.uuid4().hex[:8]}"
    code = (
        "import sys, celeriac\n"
        f"app = celeriac.Celeriac('lean', broker={url!r})\n"
        "handle = app.send_task('lean.nothing')\n"
        "try:\n"
        "    handle.get(timeout=0.3)\n"
        "except celeriac.ResultTimeout:\n"
        "    pass\n"
        f"print(sorted(set({lean.HEAVY!r}) & set(sys.modules)))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert shown.stdout.strip() == str(_REDIS_LOADS), shown.stdout + shown.stderr


@pytest.mark.parametrize("pool", ["process", "threads"])
@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_a_task_on_a_worker_runs_in_a_process_without_them(
    broker: str,
    pool: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On Redis too: the sync face is celeriac's own client (brokers/redis/wire.py, dial.py);
    # redis-py (with asyncio and ssl) is loaded by Cluster and the async face only.
    if broker == "sqlite":
        url, expected = f"sqlite:///{tmp_path}/broker.db", []
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url, expected = f"{server.url}?prefix=lean{uuid.uuid4().hex[:8]}", _REDIS_LOADS
    workers = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    try:
        workers.start("-P", pool, "-c", "2", app="tests.apps.lean")
        monkeypatch.setattr(lean.app.conf, "broker_url", url)
        assert lean.loaded_heavy.delay().get(timeout=20) == expected
    finally:
        lean.app.broker.close()
        workers.kill_all()
