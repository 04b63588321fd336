"""Beat under stress: a broker that goes away and comes back, a locked SQLite file,
schedulers stopped and killed mid-run, and zones every host must agree on.

Real `celeriac beat` processes on a real redis-server (killed and restarted on its port)
and a real SQLite file (locked by this test's own connection). Ticks an outage cost must
be reported as such, by entry, at WARNING: the scheduler knows why it did not send them.
A Redis that lost its data must list the entries again. Every process is stopped by PID.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from celeriac import Celeriac, ConfigurationError
from celeriac.beat import Cron, Scheduler, parse_schedule
from celeriac.cli import cli
from celeriac.errors import BrokerError
from celeriac.testing import wait_for
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer, start_redis
from tests.test_beat_pauses import sent_ticks
from tests.test_beat_processes import Schedulers, ticks

APP = "tests.apps.periodic"
ENTRY = "stress"  # added at run time, every 0.2 or 0.4 s


@pytest.fixture
def schedulers(tmp_path: Path) -> Iterator[Schedulers]:
    """`celeriac beat` processes; each test names each one's broker URL."""
    procs = Schedulers("", Ledger(tmp_path / "ledger.txt"))
    yield procs
    procs.kill_all()


def warned_lost(log: str, cause: str) -> bool:
    """Whether a WARNING says that ticks of ENTRY were missed or not sent, naming ``cause``."""
    return any(
        " WARNING " in line
        and f" of {ENTRY} " in line
        and cause in line
        and ("beat: missed " in line or " not sent (" in line)
        for line in log.splitlines()
    )


@pytest.mark.slow
def test_ticks_lost_while_redis_was_down_are_warned_with_the_outage_as_cause(
    tmp_path: Path, schedulers: Schedulers
) -> None:
    folder = tmp_path / "redis"
    server: RedisServer | None = start_redis(folder, appendonly=True)  # entries survive
    url = f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    app = Celeriac("probe", broker=url)
    try:
        app.beat.add(ENTRY, f"{APP}.tick", every=0.4)
        proc = schedulers.start(url)
        schedulers.wait_ready(proc)
        assert wait_for(lambda: sent_ticks(schedulers.log_of(proc), ENTRY), 20)
        port = server.port
        server.kill()
        server = None
        assert wait_for(lambda: "broker unreachable" in schedulers.log_of(proc), 20)
        down = time.monotonic()
        wait_for(lambda: time.monotonic() > down + 1.0, 5)  # some ticks fall due meanwhile
        server = start_redis(folder, port=port, appendonly=True)
        assert wait_for(lambda: warned_lost(schedulers.log_of(proc), "reach the broker"), 20), (
            "ticks lost to a Redis outage were not warned about, with the outage as cause:\n"
            + schedulers.all_logs()
        )
        assert "the broker is reachable again" in schedulers.log_of(proc)
        sends = sent_ticks(schedulers.log_of(proc), ENTRY)
        assert max(sends.values()) == 1, f"a tick was sent twice: {sends.most_common(2)}"
        assert schedulers.stop(proc) == 0
    finally:
        app.broker.close()
        if server is not None:
            server.stop()


@pytest.mark.slow
def test_ticks_lost_while_the_sqlite_file_was_locked_are_warned_with_the_stall_as_cause(
    tmp_path: Path, schedulers: Schedulers
) -> None:
    path = tmp_path / "broker.db"
    url = f"sqlite:///{path}"
    app = Celeriac("probe", broker=url)  # creates the file before any scheduler opens it
    try:
        app.beat.add(ENTRY, f"{APP}.tick", every=0.4)
        proc = schedulers.start(url)
        schedulers.wait_ready(proc)
        assert wait_for(lambda: sent_ticks(schedulers.log_of(proc), ENTRY), 20)
        # Locked right after a tick was sent, so the next write is the next tick's claim:
        # it waits on SQLite's busy timeout while three more ticks fall due.
        lock = sqlite3.connect(path, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            locked = time.monotonic()
            wait_for(lambda: time.monotonic() > locked + 1.5, 5)
            lock.execute("COMMIT")
        finally:
            lock.close()
        assert wait_for(lambda: warned_lost(schedulers.log_of(proc), " late"), 20), (
            "ticks lost to a locked SQLite file were not warned about, with the stall as "
            "cause:\n" + schedulers.all_logs()
        )
        assert proc.poll() is None, schedulers.all_logs()
        sends = sent_ticks(schedulers.log_of(proc), ENTRY)
        assert max(sends.values()) == 1, f"a tick was sent twice: {sends.most_common(2)}"
        assert schedulers.stop(proc) == 0
    finally:
        app.broker.close()


# -- zones: every scheduler must compute the same fire times ---------------------------------


def test_the_hosts_own_zone_is_refused_because_hosts_disagree_on_it(tmp_path: Path) -> None:
    # zoneinfo's "localtime" is a link to /etc/localtime: a scheduler on a host set to
    # Asia/Kolkata and one on a host set to UTC would each send an hourly entry's tick,
    # half an hour apart, under two ids.
    url = f"sqlite:///{tmp_path}/broker.db"
    app = Celeriac("zones", broker=url)
    try:
        with pytest.raises(ConfigurationError, match="this host's own zone"):
            app.beat.add("hourly", f"{APP}.tick", cron="0 * * * *", tz="localtime")
        app.beat.add("hourly", f"{APP}.tick", cron="0 * * * *", tz="UTC")
        with pytest.raises(ConfigurationError, match="this host's own zone"):
            app.beat.change("hourly", tz="localtime")
        with pytest.raises(ConfigurationError, match="this host's own zone"):
            parse_schedule("0 * * * *", "localtime")
    finally:
        app.broker.close()
    result = CliRunner().invoke(
        cli,
        ["-b", url, "beat", "add", "h2", f"{APP}.tick", "--cron", "0 * * * *", "--tz", "localtime"],
    )
    assert result.exit_code == 1, result.output
    assert "this host's own zone" in result.output and "name the zone" in result.output


def test_an_empty_zone_is_an_error_not_the_default_zone(tmp_path: Path) -> None:
    # `--tz "$TZ"` with TZ unset: a typo-sized mistake that silently meant UTC.
    url = f"sqlite:///{tmp_path}/broker.db"
    result = CliRunner().invoke(
        cli, ["-b", url, "beat", "add", "nightly", f"{APP}.tick", "--cron", "0 3 * * *", "--tz", ""]
    )
    assert result.exit_code == 1, result.output
    assert "unknown time zone ''" in result.output
    app = Celeriac("zones", broker=url, beat_timezone="Europe/Kyiv")
    try:
        assert [e.name for e in app.beat.entries()] == []
        app.beat.add("nightly", f"{APP}.tick", cron="0 3 * * *")
        with pytest.raises(ConfigurationError, match="unknown time zone ''"):
            app.beat.change("nightly", cron="0 4 * * *", tz="")
        assert app.beat.get("nightly").schedule == Cron("0 3 * * *", "Europe/Kyiv").describe()
    finally:
        app.broker.close()
    with pytest.raises(ConfigurationError, match="unknown time zone ''"):
        Celeriac(
            "cfg",
            broker="memory://",
            beat_schedule={"n": {"task": "t.n", "schedule": "0 3 * * *", "tz": ""}},
        ).beat.static_entries()


@pytest.mark.slow
def test_a_scheduler_killed_or_stopped_mid_run_loses_and_doubles_no_tick(
    tmp_path: Path, schedulers: Schedulers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three schedulers on one SQLite file: one SIGSTOPped and resumed, one SIGKILLed.

    Runs are counted (a worker's ledger), not sends: a scheduler stopped between its
    claim check and its send may send a tick taken over meanwhile; the worker runs one.
    """
    url = f"sqlite:///{tmp_path}/broker.db"
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    app = Celeriac("probe", broker=url)  # creates the file before any process opens it
    workers = WorkerProcesses(url, ledger)
    try:
        app.beat.add(ENTRY, f"{APP}.tick", every=0.2)
        workers.start("-c", "2", app=APP)
        procs = [schedulers.start(url) for _ in range(3)]
        for proc in procs:
            schedulers.wait_ready(proc)
        stopped, killed, survivor = procs
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            first = app.beat.get(ENTRY).last_run or 0.0
            assert wait_for(lambda: (app.beat.get(ENTRY).last_run or 0) >= first + 1.0, 20)
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        after_kill = app.beat.get(ENTRY).last_run or 0.0
        assert wait_for(lambda: (app.beat.get(ENTRY).last_run or 0) >= after_kill + 1.0, 20)
        app.beat.pause(ENTRY)
        assert [schedulers.stop(p) for p in (stopped, survivor)] == [0, 0]

        def drained() -> bool:  # every tick sent has run, or expired (a loaded machine)
            return all(q.ready + q.delayed + q.in_flight == 0 for q in app.broker.stats())

        assert wait_for(drained, 20), workers.log_text()
        runs = Counter(ticks(ledger, ENTRY))
        assert runs, workers.log_text()
        assert max(runs.values()) == 1, f"a tick ran twice: {runs.most_common(2)}"
    finally:
        workers.kill_all()
        app.broker.close()


def test_a_redis_that_lost_its_data_gets_the_entry_back_in_the_index(tmp_path: Path) -> None:
    """A Redis restarted without persistence lost the index of entries with the rest: the
    scheduler sends on, and must list the entry again (bare `celeriac beat list`)."""
    folder = tmp_path / "redis"
    server = start_redis(folder)
    url = f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    app, admin = Celeriac("code", broker=url), Celeriac("admin", broker=url)
    try:
        app.beat.periodic(app.task(lambda: None, name="t.ping"), every=0.2, name=ENTRY)
        scheduler = Scheduler(app)
        scheduler.step()
        assert [e.name for e in admin.beat.entries()] == [ENTRY]
        port = server.port
        server.kill()
        server = start_redis(folder, port=port)  # empty: nothing was saved
        # A first call may find its old connection dead: the scheduler retries, and so do
        # these reads.
        assert wait_for(lambda: scheduler.step() and _answers(app.beat.store.read, [ENTRY]), 10)
        assert wait_for(lambda: _answers(admin.beat.entries), 10)
        assert [e.name for e in admin.beat.entries()] == [ENTRY], (
            "an entry scheduled all along is missing from the list after the broker lost its data"
        )
    finally:
        app.broker.close()
        admin.broker.close()
        server.stop()


def _answers(call: Callable[..., object], *args: object) -> bool:
    """Whether ``call`` returns something true, not a broker error (a dead connection)."""
    try:
        return bool(call(*args))
    except BrokerError:
        return False
