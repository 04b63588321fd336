"""Shared fixtures: brokers in temporary folders, and real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

import celeriac
from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import core
from tests.redis_server import RedisServer, redis_cluster, redis_server, start_redis

__all__ = ["redis_cluster", "redis_server"]

ROOT = Path(__file__).resolve().parent.parent

#: Not collected (its doctests would import it): the Django project's modules need
#: django.setup() first, and its app module sets DJANGO_SETTINGS_MODULE, which every worker
#: a later test starts would inherit (tests/test_django.py runs it in subprocesses only).
collect_ignore_glob = ["apps/djangoshop/*"]


def pytest_configure(config: pytest.Config) -> None:
    """Give the processes the tests start Ctrl-C and Ctrl-\\ back when the suite itself was
    started with them ignored (``bash scripts/test &`` in a script, ``nohup``: a shell's
    background job ignores SIGINT and SIGQUIT, and every process it starts inherits that).
    A celeriac command rightly keeps a signal it was started ignoring, so the tests that
    press Ctrl-C on a worker, ``events -f`` or ``call --wait`` waited 30 s on a process
    that never heard it, and failed. A Python handler, unlike SIG_IGN, is reset by exec."""
    for signum, handler in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGQUIT, signal.SIG_DFL),
    ):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, handler)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Captured output with a lone surrogate (tests log unencodable task errors on purpose)
    is escaped in the report: pytest-xdist sends reports between processes as UTF-8 and
    stops the whole run on one it cannot encode.

    A failed test that started workers gets their logs in its report: they live in the
    test's temporary folder, which pytest prunes after a few runs, and a flaky failure
    (a ResultTimeout says nothing of why the task did not run) is seen once in a CI log."""
    report = yield
    workers = getattr(item, "funcargs", {}).get("workers")
    if report.failed and isinstance(workers, WorkerProcesses) and workers.logs:
        report.sections.append(("worker logs", workers.log_text()))
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, text in report.sections
    ]
    return report


def run_celeriac(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A ``celeriac`` command as its own process (start-up warnings are said once per
    process), importing the celeriac this test process runs (an older tree's, when
    PYTHONPATH points there), with no CELERIAC_BROKER_URL from the environment."""
    src = str(Path(celeriac.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(ROOT)])}
    env.pop("CELERIAC_BROKER_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "celeriac", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Ledger:
    """Reads the execution ledger the test tasks append to."""

    path: Path

    def lines(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        return [line.split(" ", 4) for line in self.path.read_text().splitlines()]

    def count(self, phase: str) -> Counter[str]:
        return Counter(parts[1] for parts in self.lines() if parts[0] == phase)


@dataclass
class WorkerProcesses:
    """Starts `celeriac worker` processes and stops every one by PID at teardown."""

    broker_url: str
    ledger: Ledger
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(
        self,
        *args: str,
        app: str = "tests.apps.core",
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = self.ledger.path.with_name(f"worker-{len(self.started)}.log")
        # The celeriac this test process runs, as run_celeriac does: with ROOT alone, the
        # workers imported the installed tree's, whatever PYTHONPATH the tests ran under.
        src = str(Path(celeriac.__file__).resolve().parents[1])
        environ = {
            **os.environ,
            "CELERIAC_BROKER_URL": self.broker_url,
            "CELERIAC_TEST_LEDGER": str(self.ledger.path),
            "PYTHONPATH": os.pathsep.join([src, str(ROOT)]),
            **(env or {}),
        }
        with log.open("wb") as output:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", app, "worker", "-l", "info", *args],
                cwd=ROOT,
                env=environ,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        self.logs.append(log)
        if wait:
            self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        app = Celeriac("probe", broker=self.broker_url)
        try:
            while not any(w.pid == proc.pid for w in app.broker.workers()):
                if proc.poll() is not None:
                    raise AssertionError(f"worker exited at start-up:\n{self.log_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not ready in {timeout}s:\n{self.log_text()}")
                time.sleep(0.02)
        finally:
            app.broker.close()

    def children(self, proc: subprocess.Popen[bytes]) -> list[int]:
        return [c.pid for c in psutil.Process(proc.pid).children()]

    def wait_children(self, proc: subprocess.Popen[bytes], count: int) -> list[int]:
        """The supervisor's ``count`` children, once forked: a worker is ready (its
        heartbeat) before it forks them."""
        assert wait_for(lambda: len(self.children(proc)) == count, timeout=20), self.log_text()
        return self.children(proc)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def log_text(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.logs if p.exists())

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                children = self.children(proc)
                _kill(proc.pid)  # the supervisor first: it can no longer respawn a child
                for pid in children:
                    _kill(pid)
                proc.wait(timeout=10)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop (an outage)."""
    server = start_redis(tmp_path / "private-redis")
    yield server
    server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A broker URL for a fresh SQLite file in this test's folder."""
    return f"sqlite:///{tmp_path}/broker.db"


@pytest.fixture(params=["sqlite", "redis"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each broker that runs real workers: a fresh SQLite file, and the session's private
    redis-server isolated by a key prefix unique to this test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """The execution ledger of this test."""
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def core_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.core's app, pointed at this test's broker and ledger."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(core.app.conf, "broker_url", broker_url)
    yield core.app
    core.app.broker.close()


@pytest.fixture
def workers(broker_url: str, ledger: Ledger, core_app: Celeriac) -> Iterator[WorkerProcesses]:
    """Start real worker processes; all are killed by PID when the test ends."""
    procs = WorkerProcesses(broker_url, ledger)
    yield procs
    procs.kill_all()


def table_cells(output: str) -> list[list[str]]:
    """The rows of the tables in ``output``, each cell's text whole: a row's first line
    fills every cell, and the lines a folded cell goes on add to it."""
    rows: list[list[str]] = []
    for line in output.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if all(cells) or not rows:
            rows.append(cells)
        else:
            rows[-1] = [whole + more for whole, more in zip(rows[-1], cells, strict=True)]
    return rows
