"""SQLite-only behaviour the conformance suite cannot state: upgrading older files, and
its own transactions."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import pytest

from celeriac.brokers import sqlite as sqlite_broker
from celeriac.brokers import sqlite_results
from celeriac.brokers.records import DeadLetter, Outgoing
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.brokers.sqlite_file import WAL_TRIM_BYTES
from celeriac.errors import BrokerConnectionError


def test_a_file_from_before_whole_join_expiry_keeps_its_joins(tmp_path: Path) -> None:
    # Files made before a join's expiry moved onto its join_counts row: each member row
    # had its own expiry and join_counts had no expiry column.
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    now = time.time()
    old.executescript(
        "CREATE TABLE join_counts (key TEXT PRIMARY KEY, members INTEGER NOT NULL);"
        "CREATE TABLE joins (key TEXT NOT NULL, member TEXT NOT NULL, value BLOB NOT NULL,"
        " expires_at REAL NOT NULL, PRIMARY KEY (key, member));"
    )
    old.executemany(
        "INSERT INTO joins VALUES (?, ?, ?, ?)",
        [("live", "m1", b"r1", now + 60), ("live", "m2", b"r2", now + 30), ("gone", "m1", b"x", 1)],
    )
    old.executemany("INSERT INTO join_counts VALUES (?, ?)", [("live", 2), ("gone", 1)])
    old.commit()
    old.close()

    broker = SQLiteBroker(f"sqlite:///{path}")
    assert broker.join_values("live") == {"m1": b"r1", "m2": b"r2"}
    assert broker.join_add("live", "m3", b"r3", 60) == 3
    assert broker.join_values("gone") == {}
    assert broker.join_add("gone", "m2", b"y", 60) == 1
    SQLiteBroker(f"sqlite:///{path}").close()  # opening it again changes nothing
    assert broker.join_values("gone") == {"m2": b"y"}
    broker.close()


def test_a_transaction_left_open_by_an_interruption_is_rolled_back_on_next_use(
    tmp_path: Path,
) -> None:
    # A soft limit firing between two of the broker's statements (inside a task's own
    # delay()) once left the connection in a write transaction: every later call here
    # failed and every other process found the file locked.
    url = f"sqlite:///{tmp_path / 'b.db'}"
    broker, other = SQLiteBroker(url), SQLiteBroker(url)
    try:
        broker.send([Outgoing("a", "q", b"a")])
        broker._db().execute("BEGIN IMMEDIATE")  # the state the interruption left
        broker._db().execute("DELETE FROM messages")  # half done, never committed
        assert broker.send([Outgoing("b", "q", b"b")]) == [True]
        assert other.send([Outgoing("c", "q", b"c")]) == [True]  # the file is not locked
        taken = other.fetch(["q"], "w", limit=10, lease_seconds=30, timeout=0)
        assert sorted(d.id for d in taken) == ["a", "b", "c"]  # the half-done delete undone
    finally:
        broker.close()
        other.close()


def test_the_wal_file_shrinks_back_after_a_burst(tmp_path: Path) -> None:
    # A reader holding checkpoints back lets the log grow past 4 MiB; once it is gone and
    # the log resets, the file is cut back (it used to stay at its high-water mark for as
    # long as any connection of the worker was open).
    path = tmp_path / "b.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    wal = Path(f"{path}-wal")
    reader = sqlite3.connect(path)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM results").fetchone()
        for i in range(40):
            broker.store_result(f"big-{i}", b"x" * 256 * 1024, 60)
        peak = wal.stat().st_size
        assert peak > 8 * 1024 * 1024
    finally:
        reader.close()
    deadline = time.monotonic() + 30
    while wal.stat().st_size >= peak and time.monotonic() < deadline:
        broker.store_result("small", b"x", 60)  # checkpoints, then resets the log
    size = wal.stat().st_size
    broker.close()
    assert size <= 4 * 1024 * 1024 + 64 * 1024, f"the WAL file stayed at {size:,} bytes"


def test_a_wal_file_grown_past_the_trim_size_is_cut_back_and_a_reader_keeping_it_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite resets its log only when no process is reading at the moment a write starts,
    # and celeriac's processes read every few milliseconds: under a sustained load the log
    # of a 149 MB file grew to 574 MB, and past 1.8 GB behind an sqlite3 shell left in a
    # read transaction, without a word. The reaper now cuts it back and names the cause.
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    broker = SQLiteBroker(url)
    wal = Path(f"{path}-wal")
    reader = sqlite3.connect(path)
    try:
        reader.execute("BEGIN")  # an sqlite3 shell left inside a read transaction
        reader.execute("SELECT count(*) FROM results").fetchone()
        chunk = b"x" * 1024 * 1024
        for i in range(WAL_TRIM_BYTES // len(chunk) + 4):
            broker.store_result(f"big-{i}", chunk, 60)
        assert wal.stat().st_size > WAL_TRIM_BYTES
        monkeypatch.setattr(sqlite_broker, "_WAL_RETRY_EVERY", 0.0)  # tries not 10 s apart
        with caplog.at_level(logging.WARNING, logger="celeriac.brokers.sqlite"):
            broker.reap()  # one failed try may have met another process's checkpoint
            assert not caplog.records
            broker.reap()
            broker.reap()  # said once, not at every try
    finally:
        reader.close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert said[0].startswith(f"the SQLite broker's log {path}-wal has grown to ")
    assert f"fuser -v {path}" in said[0]
    other = SQLiteBroker(url)  # another process's reaper, the reader gone meanwhile
    try:
        other.reap()  # no write needed: the sweep itself cuts the log back
        assert wal.stat().st_size == 0
        assert None not in other.get_results([f"big-{i}" for i in range(3)])  # data kept
    finally:
        other.close()
        broker.close()


def _descriptors_on(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path`` itself."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            count += os.readlink(fd) == str(path)
    return count


def test_close_closes_the_connection_of_every_thread_that_used_the_broker(
    tmp_path: Path,
) -> None:
    # close() closed only the calling thread's connection: one opened by a pool thread
    # (the async faces use four) stayed open until that thread ended.
    path = tmp_path / "b.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    with ThreadPoolExecutor(1) as pool:  # its thread lives until the block ends
        pool.submit(broker.stats).result()
        broker.stats()
        assert _descriptors_on(path) == 2
        broker.close()
        assert _descriptors_on(path) == 0
        assert pool.submit(broker.stats).result() == []  # a later call opens a new one
    broker.close()
    assert _descriptors_on(path) == 0


def _open_connections() -> int:
    """How many sqlite3 connections in this process are open."""
    count = 0
    for thing in gc.get_objects():
        if isinstance(thing, sqlite3.Connection):
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed
                count += thing.total_changes >= 0
    return count


def test_a_thread_or_a_broker_that_goes_away_closes_its_connection(tmp_path: Path) -> None:
    # Each connection is closed by a finalizer (Python 3.13 warns of one the collector
    # closes): the finalizer must go with the thread, or every short-lived thread that
    # sent a task would leave a connection open for the life of the process. (Descriptors
    # are no measure here: SQLite keeps a closed connection's one for reuse while another
    # connection of the process holds a lock on the file.)
    gc.collect()  # earlier tests' garbage brokers, else collected below and counted
    before = _open_connections()
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 'b.db'}")
    assert _open_connections() == before + 1  # the constructor's, on this thread
    for _ in range(5):
        thread = threading.Thread(target=broker.send, args=([Outgoing(uuid4().hex, "q", b"")],))
        thread.start()
        thread.join()
    assert _open_connections() == before + 1
    assert broker.stats()[0].ready == 5
    cycle: list[object] = [broker]
    cycle.append(cycle)
    del broker, cycle
    gc.collect()
    assert _open_connections() == before


def test_a_connection_that_fails_its_set_up_is_closed_at_once(tmp_path: Path) -> None:
    # A file that is not a database fails at the first statement, after connect(): that
    # connection was left to the collector (the raise kept it alive in the traceback).
    path = tmp_path / "notes.txt"
    path.write_text("shopping list: celeriac, leeks\n" * 20)
    before = _open_connections()
    with pytest.raises(BrokerConnectionError, match="is not a SQLite database"):
        SQLiteBroker(f"sqlite:///{path}")
    assert _open_connections() == before


def test_idle_fetching_threads_share_one_look_at_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each waiting thread asked SQLite for data_version every 4 ms: an idle -P threads
    # -c 100 worker used 1.6 cores. One thread now looks for all of them.
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/idle.db")
    looks: list[None] = []
    real = broker._changed

    def counted() -> bool:
        looks.append(None)  # list.append is atomic under the GIL
        return real()

    monkeypatch.setattr(broker, "_changed", counted)
    waiting = 20
    with ThreadPoolExecutor(waiting) as pool:
        fetches = [
            pool.submit(broker.fetch, ["idle"], f"c{i}", limit=1, lease_seconds=5, timeout=1.0)
            for i in range(waiting)
        ]
        assert [f.result() for f in fetches] == [[]] * waiting
    # One looker: ~250 looks in the second, and one per query (each thread re-reads the
    # queue at least every 0.25 s). Each thread looking on its own: ~20 x 250 = 5,000.
    assert len(looks) < 1_000, len(looks)
    broker.close()


def test_a_commit_wakes_every_thread_waiting_in_fetch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/wake.db"
    broker, producer = SQLiteBroker(url), SQLiteBroker(url)
    waiting = 8
    with ThreadPoolExecutor(waiting) as pool:
        fetches = [
            pool.submit(broker.fetch, ["wake"], f"c{i}", limit=1, lease_seconds=5, timeout=30)
            for i in range(waiting)
        ]
        producer.send([Outgoing(f"m{i}", "wake", b"{}") for i in range(waiting)])
        taken = sorted(d.id for f in fetches for d in f.result(timeout=60))
    assert taken == sorted(f"m{i}" for i in range(waiting))  # each taken once, none left
    broker.close()
    producer.close()


def test_many_threads_waiting_for_results_share_one_look_and_all_wake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A web server's threads each in get(): each asked SQLite every 4 ms on its own.
    url = f"sqlite:///{tmp_path}/results.db"
    broker, worker = SQLiteBroker(url), SQLiteBroker(url)
    looks: list[None] = []
    real = broker._changed

    def counted() -> bool:
        looks.append(None)
        return real()

    monkeypatch.setattr(broker, "_changed", counted)
    waiting = 12
    with ThreadPoolExecutor(waiting + 1) as pool:
        # One waits without a limit (get(timeout=inf)): a condition wait that long raised.
        results = [pool.submit(broker.wait_result, "r0", math.inf)]
        results += [pool.submit(broker.wait_result, f"r{i}", 60.0) for i in range(1, waiting)]
        results.append(pool.submit(broker.wait_result, "never", 1.0))
        assert results[-1].result(timeout=60) is None  # a second of waiting, nothing stored
        in_that_second = len(looks)
        # Final results, committed by another connection: every waiter wakes with its own.
        worker.mark_revoked([f"r{i}" for i in range(waiting)], b'{"state":"REVOKED"}', 60)
        assert [r.result(timeout=60) for r in results[:-1]] == [b'{"state":"REVOKED"}'] * waiting
    assert in_that_second < 1_000, in_that_second  # each on its own: ~12 x 250 = 3,000
    broker.close()
    worker.close()


def test_an_error_while_looking_is_raised_as_itself_and_another_thread_looks_next() -> None:
    # A Ctrl-C in the looking thread's sleep read "UnboundLocalError: found".
    from celeriac.brokers.sqlite_wait import CommitWatch

    watch = CommitWatch()

    def fails() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        watch.wait(watch.seen(), time.monotonic() + 5, changed=fails)
    seen = watch.seen()  # no longer "looking": the next waiter looks, and sees the commit
    assert watch.wait(seen, time.monotonic() + 5, changed=lambda: True)
    assert watch.seen() == seen + 1


def test_the_reaper_drops_rate_limiters_that_no_longer_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One limiter per rate_limit_key value (per user, per account): each left a row in
    # limiters, and its admissions, for good; Redis expires both keys.
    broker = SQLiteBroker(f"sqlite:///{tmp_path}/broker.db")
    try:
        for n in range(200):
            assert broker.rate_reserve(f"user:{n}:slots", per_second=1000) == 0
            assert broker.rate_admit(f"user:{n}", limit=3, period=0.001) == 0
        assert broker.rate_reserve("busy:slots", per_second=1 / 60) == 0  # next slot: 60 s
        time.sleep(0.01)  # every user's next slot has come
        broker.reap()
        db = sqlite3.connect(f"{tmp_path}/broker.db")
        try:
            limiters = [r[0] for r in db.execute("SELECT key FROM limiters")]
            assert limiters == ["busy:slots"]  # still limiting: kept
            assert db.execute("SELECT count(*) FROM admissions").fetchone()[0] == 200
            later = time.time() + 3 * 86_400  # past any window a rate can name (N/d)
            monkeypatch.setattr(time, "time", lambda: later)
            broker.reap()
            assert db.execute("SELECT count(*) FROM admissions").fetchone()[0] == 0
            assert db.execute("SELECT count(*) FROM limiters").fetchone()[0] == 0
        finally:
            db.close()
    finally:
        broker.close()


def test_a_big_replay_lets_other_writers_in_between_its_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every letter was replayed in one transaction: at 200,000 letters `dlq replay --all`
    # held the file's write lock for 7 s (every send and every worker's commit waited,
    # and past the 30 s busy timeout failed) and read 200 MB of bodies at once.
    monkeypatch.setattr(sqlite_results, "REPLAY_STEP", 2, raising=False)  # none before steps
    path = tmp_path / "broker.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    broker.send([Outgoing(f"t{i}", "q", f"t{i}".encode()) for i in range(6)])
    held = broker.fetch(["q"], "w1", limit=6, lease_seconds=30, timeout=0)
    for n, d in enumerate(reversed(held)):  # dead oldest first: t5 ... t0
        task = "t.other" if d.id == "t5" else "t.x"
        letter = DeadLetter(d.id, d.queue, task, "unknown task", d.body, 1, "", 1000.0 + n)
        assert broker.dead_letter(d.lease, letter, None)
    producer = sqlite3.connect(path, timeout=0, isolation_level=None)  # no patience at all
    queued: list[int] = []

    def renew(body: bytes) -> None:  # called for each letter, as the app renews it
        producer.execute("BEGIN IMMEDIATE")  # "database is locked" inside one transaction
        producer.execute("ROLLBACK")
        queued.append(producer.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    try:
        assert broker.replay_dead_letters(task="t.x", renew=renew) == 5
        assert queued == [0, 0, 2, 2, 4]  # each step committed before the next is read
        assert [x.id for x in broker.dead_letters()] == ["t5"]
        got = broker.fetch(["q"], "w1", limit=6, lease_seconds=30, timeout=0)
        assert [d.id for d in got] == ["t4", "t3", "t2", "t1", "t0"]  # the oldest first
    finally:
        producer.close()
        broker.close()


def test_what_ran_out_while_the_file_was_locked_is_not_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a write lock held elsewhere for longer than a heartbeat's life (a backup, an
    # sqlite3 shell in BEGIN), every heartbeat had run out, and the first process to reap
    # took back the tasks the others were running: each ran twice at once.
    from celeriac.brokers.records import WorkerInfo

    monkeypatch.setattr(sqlite_broker, "_HELD_UP_GRACE", 1.5, raising=False)
    path = tmp_path / "b.db"
    holder, reaper = SQLiteBroker(f"sqlite:///{path}"), SQLiteBroker(f"sqlite:///{path}")
    holder.heartbeat(WorkerInfo("w-busy", "h", 1, ("q",), 1, time.time()), ttl=1.0)
    holder.send([Outgoing("a", "q", b"a")])
    (held,) = holder.fetch(["q"], "w-busy", limit=1, lease_seconds=60, timeout=0)
    assert reaper.reap() == 0  # the reaper's clock starts
    locked = threading.Event()

    def lock_the_file() -> None:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(4)
            db.execute("COMMIT")

    locker = threading.Thread(target=lock_the_file)
    locker.start()
    try:
        assert locked.wait(10)
        assert reaper.reap() == 0  # waits for the lock: w-busy's heartbeat runs out meanwhile
    finally:
        locker.join()
    assert reaper.reap() == 0  # was 1: taken back from a worker that could not heartbeat
    holder.heartbeat(WorkerInfo("w-busy", "h", 1, ("q",), 1, time.time()), ttl=60)
    time.sleep(1.6)
    assert reaper.reap() == 0 and holder.complete(held.lease, None, 60)
    # A worker that does not come back is reaped once the grace is over.
    holder.heartbeat(WorkerInfo("w-gone", "h", 2, ("q",), 1, time.time()), ttl=0.2)
    holder.send([Outgoing("b", "q", b"b")])
    holder.fetch(["q"], "w-gone", limit=1, lease_seconds=60, timeout=0)
    time.sleep(0.3)
    assert reaper.reap() == 1
    holder.close()
    reaper.close()
