"""The SQLite broker under what happens to a file on a real host: deleted or replaced
under running processes, a file that is not a database, a lock held by another program."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.brokers.records import Outgoing
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.brokers.sqlite_file import (
    APPLICATION_ID,
    NETWORK_FILESYSTEMS,
    SCHEMA_VERSION,
    filesystem,
    network_warning,
)
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError
from tests.conftest import ROOT, Ledger, WorkerProcesses


def _remove(path: Path) -> None:
    """Delete a broker file the way a person cleaning up does: with its -wal and -shm."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_a_running_worker_takes_tasks_from_the_new_file_once_its_file_is_deleted(
    sqlite_url: str, ledger: Ledger, tmp_path: Path
) -> None:
    # SQLite kept the worker on the deleted file through its open descriptor: producers
    # created a new file at the path, and the worker waited forever without a word.
    procs = WorkerProcesses(sqlite_url, ledger)
    producer = Celeriac("producer", broker=sqlite_url)
    try:
        # The worker imports celeriac from where this test does (the source under test).
        source = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
        procs.start("-c", "1", env={"PYTHONPATH": source})
        assert producer.send_task("tests.apps.core.add", args=(1, 2)).get(timeout=20) == 3
        producer.broker.close()
        _remove(tmp_path / "broker.db")

        fresh = Celeriac("fresh-producer", broker=sqlite_url)  # as a process started now
        try:
            sent = fresh.send_task("tests.apps.core.add", args=(2, 3))
            assert sent.get(timeout=20) == 5, procs.log_text()
        finally:
            fresh.broker.close()
        assert ledger.count("run")[sent.id] == 1
        assert f"the SQLite broker file {tmp_path / 'broker.db'} is no longer" in procs.log_text()
    finally:
        procs.kill_all()
        producer.broker.close()


@pytest.mark.parametrize("how", ["deleted", "restored from a backup"])
def test_a_producer_that_kept_the_file_open_sends_into_the_file_now_at_its_path(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Its sends were committed into the old file, which vanished with its last
    # connection: tasks lost without an error. A thread it started later opened the new
    # file, which had no tables ("no such table: messages").
    path = tmp_path / "broker.db"
    url = f"sqlite:///{path}"
    producer = SQLiteBroker(url)
    producer.send([Outgoing("before", "q", b"x")])
    if how == "deleted":
        _remove(path)
        expected = ["after", "from-thread"]
    else:  # a proper backup (SQLite's backup API), put in place with its stale logs gone
        backup, live = sqlite3.connect(tmp_path / "backup.db"), sqlite3.connect(path)
        live.backup(backup)
        backup.close()
        live.close()
        producer.send([Outgoing("lost-in-restore", "q", b"x")])
        _remove(path)
        os.replace(tmp_path / "backup.db", path)
        expected = ["after", "before", "from-thread"]
    thread_said: list[object] = []

    def send_from_a_new_thread() -> None:
        try:
            thread_said.append(producer.send([Outgoing("from-thread", "q", b"x")]))
        except BrokerError as exc:
            thread_said.append(exc)

    with caplog.at_level(logging.ERROR, logger="celeriac.brokers.sqlite"):
        assert producer.send([Outgoing("after", "q", b"x")]) == [True]
        worker_thread = threading.Thread(target=send_from_a_new_thread)
        worker_thread.start()
        worker_thread.join(timeout=30)
    assert thread_said == [[True]]

    consumer = SQLiteBroker(url)
    try:
        taken = consumer.fetch(["q"], "c", limit=10, lease_seconds=30, timeout=0)
        assert sorted(d.id for d in taken) == expected
    finally:
        consumer.close()
        producer.close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1  # once, by the thread that noticed; the other opened the new file
    assert f"{path} is no longer the file process {os.getpid()} opened" in said[0]


def test_a_file_that_is_not_a_database_is_named_with_what_to_do(tmp_path: Path) -> None:
    # It said "file is not a database. Check that the folder exists and is writable by
    # this user": both were true, and the remedy was elsewhere.
    path = tmp_path / "notes.txt"
    path.write_text("shopping list: celeriac, leeks\n" * 20)
    with pytest.raises(BrokerConnectionError) as raised:
        SQLiteBroker(f"sqlite:///{path}")
    said = str(raised.value)
    assert f"{path} is not a SQLite database" in said
    assert "Point the broker URL at a new file name" in said
    assert "writable" not in said


def test_a_lock_held_by_another_program_names_the_file_and_where_to_look(tmp_path: Path) -> None:
    # "database is locked." was all a producer read after 30 s of waiting.
    path = tmp_path / "broker.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # an sqlite3 shell left inside a transaction
        broker._db().execute("PRAGMA busy_timeout=50")  # not 30 s of waiting in a test
        with pytest.raises(BrokerError) as raised:
            broker.send([Outgoing("t1", "q", b"x")])
    finally:
        holder.close()
        broker.close()
    said = str(raised.value)
    assert said.startswith(f"SQLite broker at {path} failed: database is locked.")
    assert f"fuser -v {path}" in said
    assert "workers retry" in said


def test_a_damaged_file_fails_a_fetch_with_a_broker_error_not_a_driver_error(
    tmp_path: Path,
) -> None:
    # fetch read its candidates outside a transaction, untranslated: a child got
    # sqlite3.DatabaseError, which its outage handling does not catch, and crash-looped
    # with a traceback per restart instead of waiting and saying what to do.
    path = tmp_path / "broker.db"
    url = f"sqlite:///{path}"
    broker = SQLiteBroker(url)
    broker.send([Outgoing(f"t{i}", "q", b"x" * 200) for i in range(300)])
    broker._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file
    broker.close()
    with path.open("r+b") as file:  # a disk fault: every page after the schema's
        size = file.seek(0, os.SEEK_END)
        file.seek(4096)
        file.write(b"\xa5" * (size - 4096))
    damaged = SQLiteBroker(url)
    try:
        # The first fetch starts with the expired-lease sweep, a transaction (translated);
        # a fetch within the next second goes straight to the read, as a child's does.
        for _ in range(2):
            with pytest.raises(BrokerError) as raised:
                damaged.fetch(["q"], "c", limit=10, lease_seconds=30, timeout=0)
    finally:
        damaged.close()
    said = str(raised.value)
    assert said.startswith(f"SQLite broker at {path} failed: database disk image is malformed.")
    assert ".recover" in said


def test_a_file_from_a_newer_schema_is_refused_and_a_new_file_is_stamped(tmp_path: Path) -> None:
    # The file had no schema version: a newer celeriac's layout would have been read (and
    # "upgraded") as this one's, in whatever way that went wrong.
    path = tmp_path / "broker.db"
    SQLiteBroker(f"sqlite:///{path}").close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(
        ConfigurationError, match=r"was made by a newer celeriac \(schema version 2"
    ):
        SQLiteBroker(f"sqlite:///{path}")


def _layout(path: Path) -> tuple[list[str], str, int, int]:
    """A file's tables, journal mode, user_version and application_id, read without
    changing it."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master ORDER BY name")]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        return (
            tables,
            mode,
            db.execute("PRAGMA user_version").fetchone()[0],
            db.execute("PRAGMA application_id").fetchone()[0],
        )


@pytest.mark.parametrize(
    ("setup", "named"),
    [
        # A chat program's table that shares celeriac's name: "no such column: queue".
        ("CREATE TABLE messages (id INTEGER PRIMARY KEY, sender TEXT, text TEXT)", "messages"),
        # A web app's database with its own migrations in user_version: "made by a newer
        # celeriac (schema version 7)", after celeriac had added its tables to it.
        ("CREATE TABLE auth_user (id INTEGER PRIMARY KEY); PRAGMA user_version = 7", "auth_user"),
        # The same without a user_version: celeriac took it over, silently.
        ("CREATE TABLE auth_user (id INTEGER PRIMARY KEY)", "auth_user"),
        ("PRAGMA application_id = 1234; CREATE TABLE t (x)", "application_id 0x4d2"),
    ],
)
def test_another_programs_database_is_refused_and_left_as_it_was(
    tmp_path: Path, setup: str, named: str
) -> None:
    path = tmp_path / "db.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(setup)
    before = _layout(path)
    with pytest.raises(ConfigurationError) as raised:
        SQLiteBroker(f"sqlite:///{path}")
    said = str(raised.value)
    assert said.startswith(f"{path} is another program's SQLite database ("), said
    assert named in said
    assert "Point the broker URL at a file of its own" in said
    assert _layout(path) == before  # no tables added, not switched to WAL, not stamped


def test_a_newer_celeriacs_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # A newer layout without a "messages" table got this version's tables (and WAL) from
    # the connection's set-up before the version check refused the file.
    path = tmp_path / "broker.db"
    SQLiteBroker(f"sqlite:///{path}").close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            f"DROP TABLE messages; CREATE TABLE messages_v2 (id); "
            f"PRAGMA user_version = {SCHEMA_VERSION + 1}"
        )
    before = _layout(path)
    with pytest.raises(ConfigurationError, match="was made by a newer celeriac"):
        SQLiteBroker(f"sqlite:///{path}")
    assert _layout(path) == before


def test_a_file_from_before_the_stamp_is_opened_and_stamped(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    SQLiteBroker(f"sqlite:///{path}").send([Outgoing("kept", "q", b"x")])
    with contextlib.closing(sqlite3.connect(path)) as db:  # as celeriac left it before
        db.executescript("PRAGMA application_id = 0; PRAGMA user_version = 0")
    broker = SQLiteBroker(f"sqlite:///{path}")
    try:
        taken = broker.fetch(["q"], "c", limit=10, lease_seconds=30, timeout=0)
        assert [d.id for d in taken] == ["kept"]
    finally:
        broker.close()
    assert _layout(path)[2:] == (SCHEMA_VERSION, APPLICATION_ID)


def test_a_file_swapped_for_another_programs_under_a_running_process_is_a_broker_error(
    tmp_path: Path,
) -> None:
    # A worker must wait it out and say why (a BrokerError), not crash on a setting error.
    path = tmp_path / "broker.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    try:
        broker.send([Outgoing("a", "q", b"x")])
        _remove(path)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE auth_user (id INTEGER PRIMARY KEY)")
        with pytest.raises(BrokerError, match="is another program's SQLite database"):
            broker.send([Outgoing("b", "q", b"x")])
    finally:
        broker.close()
    assert _layout(path)[0] == ["auth_user"]


_MOUNTS = "\n".join(
    [
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw",
        "40 22 0:40 / /srv/shared rw,relatime - nfs4 files:/export rw,vers=4.2",
        "41 40 8:2 / /srv/shared/local rw,relatime - ext4 /dev/sdb1 rw",
        r"42 22 0:41 / /mnt/my\040drive rw,relatime - 9p drvfs rw,aname=drvfs",
        "43 22 0:42 / /mnt/c rw - 9p C: rw",
        "44 22 0:43 / /mnt/c rw - ext4 /dev/sdc1 rw",  # mounted over the one before
    ]
)


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("/srv/shared/app", ("nfs4", "/srv/shared")),
        ("/srv/shared", ("nfs4", "/srv/shared")),
        ("/srv/shared/local/app", ("ext4", "/srv/shared/local")),
        ("/srv/sharedx", ("ext4", "/")),  # a name that only starts like a mount point
        ("/mnt/my drive/app", ("9p", "/mnt/my drive")),
        ("/mnt/c/app", ("ext4", "/mnt/c")),
    ],
)
def test_the_filesystem_holding_a_path_is_read_from_the_mount_table(
    folder: str, expected: tuple[str, str]
) -> None:
    assert filesystem(folder, _MOUNTS) == expected


def test_a_broker_file_on_a_network_filesystem_is_warned_of_with_what_to_do() -> None:
    # Nothing was said: SQLite's WAL on NFS (or WSL 2's /mnt/c) loses locks and the
    # shared-memory index, and the file ends up damaged or tasks run twice.
    said = network_warning("/srv/shared/app/broker.db", _MOUNTS)
    assert said is not None
    assert said.startswith(
        "the SQLite broker file /srv/shared/app/broker.db is on a network filesystem "
        "(nfs4 at /srv/shared)."
    )
    assert "Put the file on a local disk" in said
    assert "use the Redis broker" in said
    assert network_warning("/srv/shared/local/broker.db", _MOUNTS) is None


def test_a_broker_file_on_this_hosts_disk_opens_without_a_network_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    found = filesystem(str(tmp_path))
    assert found is not None  # Linux: read from /proc/self/mountinfo
    assert found[0] not in NETWORK_FILESYSTEMS
    with caplog.at_level(logging.WARNING, logger="celeriac.brokers.sqlite"):
        SQLiteBroker(f"sqlite:///{tmp_path / 'broker.db'}").close()
    assert not [r for r in caplog.records if "network filesystem" in r.getMessage()]


@pytest.mark.parametrize("trailing", ["", "/"])
def test_a_url_naming_a_folder_says_so_and_which_url_to_write(
    tmp_path: Path, trailing: str
) -> None:
    # It said "unable to open database file. Check that the folder exists and is writable
    # by this user": it did and it was.
    with pytest.raises(ConfigurationError) as raised:
        SQLiteBroker(f"sqlite:///{tmp_path}{trailing}")
    said = str(raised.value)
    assert f"names the folder {tmp_path}, not a file" in said
    assert f"sqlite:///{tmp_path / 'celeriac.db'}" in said
    assert "writable" not in said


def test_a_new_broker_file_and_its_wal_and_shm_are_not_readable_by_other_users(
    tmp_path: Path,
) -> None:
    # SQLite creates a file 0644 less the umask: under the usual umask 022 every user of
    # the host could read queued arguments and results (under umask 0, also send tasks).
    # Its -wal and -shm take the file's mode, and the -wal holds the latest writes.
    path = tmp_path / "broker.db"
    before = os.umask(0o022)
    try:
        broker = SQLiteBroker(f"sqlite:///{path}")
        broker.send([Outgoing(id="t1", queue="default", body=b"{}")])
    finally:
        os.umask(before)
    try:
        for suffix in ("", "-wal", "-shm"):
            mode = os.stat(f"{path}{suffix}").st_mode & 0o777
            assert mode & 0o007 == 0, (suffix, oct(mode))
            assert mode & 0o600 == 0o600, (suffix, oct(mode))  # its owner reads and writes
    finally:
        broker.close()


def test_the_reaper_deletes_expired_rows_by_an_index_on_files_old_and_new(tmp_path: Path) -> None:
    # Each reap (every 2 s per worker, under the write lock) read every result kept: 81 ms
    # per reap at 1,000,000 of them. A file made before the indexes gets them on open.
    path = tmp_path / "b.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    broker.send([Outgoing("a", "q", b"a")])
    broker.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        for name in ("results_by_expiry", "kv_by_expiry", "join_counts_by_expiry"):
            db.execute(f"DROP INDEX {name}")  # as an older celeriac made the file
        db.commit()
    broker = SQLiteBroker(f"sqlite:///{path}")
    try:
        assert broker.reap() == 0
    finally:
        broker.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        for table in ("results", "kv", "join_counts"):
            plan = " ".join(
                str(row[-1])
                for row in db.execute(
                    f"EXPLAIN QUERY PLAN DELETE FROM {table} WHERE expires_at <= ?", (0.0,)
                )
            )
            assert f"USING INDEX {table}_by_expiry" in plan, plan
