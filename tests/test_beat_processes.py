"""Issue 7's acceptance with real processes on SQLite: schedulers, workers, kills.

Every tick appends a ledger line with its entry and scheduled time (tests.apps.periodic),
so the tests count runs per tick exactly. Every process is stopped by PID.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.apps import periodic
from tests.conftest import ROOT, Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

APP = "tests.apps.periodic"
DURATION = 30  # the acceptance: three schedulers, a 1-s interval, for 30 s


@dataclass
class Schedulers:
    """`celeriac beat` processes, each stopped by PID."""

    broker_url: str
    ledger: Ledger
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, broker_url: str | None = None) -> subprocess.Popen[bytes]:
        """Start one; ``broker_url`` when it differs from the others' (a proxy's)."""
        log = self.ledger.path.with_name(f"beat-{len(self.started)}.log")
        env = {
            **os.environ,
            "CELERIAC_BROKER_URL": broker_url or self.broker_url,
            "CELERIAC_TEST_LEDGER": str(self.ledger.path),
            "PYTHONPATH": str(ROOT),
        }
        with log.open("wb") as output:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celeriac", "-A", APP, "beat", "-l", "info"],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.started.append(proc)
        self.logs.append(log)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[self.started.index(proc)].read_text()

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Ready once it has read its entries from the broker (its first pass)."""
        if not wait_for(lambda: "beat: scheduling" in self.log_of(proc) or proc.poll(), timeout=20):
            raise AssertionError(f"scheduler not ready:\n{self.log_of(proc)}")
        assert proc.poll() is None, self.log_of(proc)

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=20)

    def text(self) -> str:
        """Every scheduler's whole log."""
        return "\n".join(p.read_text() for p in self.logs)

    def all_logs(self) -> str:
        """The end of each log, for an assertion's message."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in self.logs)

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a test may have paused it
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def periodic_app(
    sqlite_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.periodic's app on this test's SQLite file (created here, before any
    process starts, so no two processes create it at once)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(periodic.app.conf, "broker_url", sqlite_url)
    _ = periodic.app.broker
    yield periodic.app


@pytest.fixture
def schedulers(sqlite_url: str, ledger: Ledger, periodic_app: Celeriac) -> Iterator[Schedulers]:
    procs = Schedulers(sqlite_url, ledger)
    yield procs
    procs.kill_all()


@pytest.fixture
def workers(sqlite_url: str, ledger: Ledger, periodic_app: Celeriac) -> Iterator[WorkerProcesses]:
    procs = WorkerProcesses(sqlite_url, ledger)
    yield procs
    procs.kill_all()


def ticks(ledger: Ledger, entry: str = "every-second") -> list[float]:
    """Scheduled times of the runs of ``entry``'s ticks, one per run."""
    runs = []
    for parts in ledger.lines():
        name, tick = parts[4].split(" ")
        if parts[0] == "tick" and name == entry:
            runs.append(float(tick))
    return runs


def beat_child_pid(workers: WorkerProcesses, worker: subprocess.Popen[bytes]) -> int:
    """The embedded scheduler's PID, once it has read its entries (its first pass): an
    entry added before that pass is among the first entries, not logged as added."""
    log = workers.logs[workers.started.index(worker)]
    ready = ("started scheduler process", "beat: scheduling")
    assert wait_for(lambda: all(s in log.read_text() for s in ready), timeout=20), log.read_text()
    match = re.search(r"beat: started scheduler process (\d+)", log.read_text())
    assert match is not None
    return int(match.group(1))


def test_three_schedulers_send_every_tick_exactly_once(
    workers: WorkerProcesses, schedulers: Schedulers, ledger: Ledger
) -> None:
    workers.start("-c", "2", app=APP)
    procs = [schedulers.start() for _ in range(3)]
    for proc in procs:
        schedulers.wait_ready(proc)
    begin = time.time()
    time.sleep(DURATION)
    end = time.time()
    assert [schedulers.stop(p) for p in procs] == [0, 0, 0]
    last = float(int(end))
    assert wait_for(lambda: last in ticks(ledger), timeout=10), workers.log_text()
    runs = Counter(ticks(ledger))
    assert max(runs.values()) == 1, f"a tick ran twice: {runs.most_common(3)}"
    in_window = sorted(t for t in runs if begin <= t <= end)
    assert abs(len(in_window) - DURATION) <= 1  # runs = duration ± 1
    sends = sum(schedulers.log_of(p).count("beat: sent tick of every-second") for p in procs)
    assert sends == len(runs), "some tick was sent by two schedulers"
    assert all("stopped" in schedulers.log_of(p) for p in procs)  # warm shutdown on SIGTERM


def test_killing_the_sending_scheduler_leaves_no_gap(
    periodic_app: Celeriac, workers: WorkerProcesses, schedulers: Schedulers, ledger: Ledger
) -> None:
    worker = workers.start("-c", "1", "--beat", app=APP)  # one scheduler inside a worker
    embedded = beat_child_pid(workers, worker)
    standalone = schedulers.start()  # and one on its own
    schedulers.wait_ready(standalone)
    assert wait_for(lambda: len(ticks(ledger)) >= 3, timeout=15), workers.log_text()
    sent_by = periodic_app.beat.get("every-second").sent_by
    assert sent_by is not None
    sender = int(sent_by.rsplit(":", 1)[1])
    assert sender in {embedded, standalone.pid}
    os.kill(sender, signal.SIGKILL)  # mid-run: whatever it was doing
    killed_at = time.time()
    assert wait_for(lambda: sum(t > killed_at for t in ticks(ledger)) >= 4, timeout=15), (
        workers.log_text() + schedulers.log_of(standalone)
    )
    runs = sorted(ticks(ledger))
    assert len(set(runs)) == len(runs), "a tick ran twice"
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert max(gaps) <= 1.0, f"a gap longer than one interval: {gaps}"
    assert workers.stop(worker) == 0
    assert not psutil.pid_exists(embedded), "worker --beat left its scheduler running"


def test_worker_beat_starts_its_scheduler_again_when_it_dies(
    workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The OOM killer, a crash: the worker went on with no scheduler, said in one log line,
    # and every periodic task stopped until someone restarted the worker.
    worker = workers.start("-c", "1", "--beat", app=APP)
    first = beat_child_pid(workers, worker)
    os.kill(first, signal.SIGKILL)
    killed_at = time.time()
    log = workers.logs[workers.started.index(worker)]

    def second() -> int | None:
        found = re.findall(r"beat: started scheduler process (\d+)", log.read_text())
        return int(found[-1]) if len(found) > 1 else None

    assert wait_for(lambda: second() is not None, timeout=20), log.read_text()
    assert f"scheduler process {first} ended (killed by SIGKILL)" in log.read_text()
    assert wait_for(lambda: sum(t > killed_at for t in ticks(ledger)) >= 2, timeout=15), (
        log.read_text()
    )
    again = second()
    assert again is not None and psutil.pid_exists(again)
    assert workers.stop(worker) == 0
    assert not psutil.pid_exists(again), "worker --beat left its scheduler running"


def test_an_entry_added_at_run_time_fires_and_a_paused_one_does_not(
    periodic_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    worker = workers.start("-c", "1", "--beat", app=APP)
    embedded = beat_child_pid(workers, worker)
    beat = periodic_app.beat
    beat.add("runtime-entry", "tests.apps.periodic.tick", every=1, kwargs={"label": "run-time"})
    beat.add("held", "tests.apps.periodic.tick", every=1, paused=True)
    assert wait_for(lambda: len(ticks(ledger, "runtime-entry")) >= 2, timeout=15), (
        workers.log_text()
    )
    beat.pause("runtime-entry")
    paused_at = time.time()
    time.sleep(2.5)  # more than a tick interval plus the scheduler's look at the broker
    assert [t for t in ticks(ledger, "runtime-entry") if t > paused_at + 1] == []
    assert ticks(ledger, "held") == []
    assert "beat: entry runtime-entry added (every 1s)" in workers.log_text()
    assert "beat: entry runtime-entry paused" in workers.log_text()
    assert workers.stop(worker) == 0
    assert not psutil.pid_exists(embedded), "worker --beat left its scheduler running"
