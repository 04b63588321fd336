"""``sqlite:///path.db``: the embedded default broker — zero set-up, durable, one host.

Every worker and producer process on the host opens the same file. WAL mode lets readers
run beside the one writer; every state change is one ``BEGIN IMMEDIATE`` transaction, so a
fetch and its lease, or a result and its ack, are committed together or not at all.

Durability: ``synchronous=NORMAL`` by default — a committed send survives a killed
process, but the last transactions before a power loss may roll back. Add
``?synchronous=full`` to the URL to fsync every commit.

Waiting (fetch and ``get()``) watches ``PRAGMA data_version``, which changes whenever
another connection commits, every few milliseconds — no one-second poll.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from celeriac import pid
from celeriac.brokers.base import Broker
from celeriac.brokers.records import DeadLetter, Delivery, Lease, Outgoing
from celeriac.brokers.sqlite_file import (
    WAL_KEEP_BYTES,
    advice,
    check_layout,
    create_file,
    enable_wal,
    failure,
    file_id,
    lay_out,
    network_warning,
    path_from_url,
    trim_wal,
)
from celeriac.brokers.sqlite_results import SQLiteResults
from celeriac.brokers.sqlite_store import SQLiteStore
from celeriac.brokers.sqlite_wait import CommitWatch
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError

_RECLAIM_EVERY = 1.0  # seconds between expired-lease sweeps inside fetch
_FILE_CHECK_EVERY = 0.5  # seconds between two reads' checks that the file is still there
_WAL_WARN_EVERY = 300.0  # seconds between two warnings of a -wal file kept from shrinking
_WAL_RETRY_EVERY = 10.0  # seconds before a process tries again to cut back such a file

log = logging.getLogger("celeriac.brokers.sqlite")


class _Owner:
    """Stands for one thread's use of a connection: when it goes (the thread ended, the
    broker was dropped or closed), its finalizer closes the connection."""

    __slots__ = ("__weakref__",)


class _Link:
    """One thread's connection and the lock its thread holds while it uses it.

    ``close()`` closes every thread's connection: closing one under a statement that
    another thread was running crashed the process (a segmentation fault in CPython's
    sqlite3), e.g. a web app closing the broker at shutdown while requests still sent.
    Under the lock it waits for that statement or transaction to end; the thread then
    sees ``closed`` and opens a new connection.
    """

    __slots__ = ("closed", "db", "lock")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # Reentrant: a read inside a transaction of the same thread must not hang.
        self.lock = threading.RLock()
        self.closed = False


#: Connections of a parent process, kept unused in a forked child (see _close_own).
_PARKED: list[_Link] = []

#: Every SQLite broker of this process: a forked child lets go of their connections.
_BROKERS: weakref.WeakSet[SQLiteBroker] = weakref.WeakSet()
_settled_pid = pid.current()  # the process whose brokers hold no inherited connection
_settling = threading.Lock()


def _after_fork_in_child() -> None:
    # Locks only: no SQLite call here. A thread of the parent may have held SQLite's own
    # mutexes at the fork, and a child that never uses the broker must not hang on them.
    global _settling  # noqa: PLW0603 - one per process, by design
    _settling = threading.Lock()
    for broker in list(_BROKERS):
        broker._closers_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _let_go_of_inherited_connections() -> None:
    """In a forked child, before its first connection, close those of the parent.

    SQLite keeps its POSIX file locks in a per-process table keyed by the file, and the
    child inherits the parent's: a connection the child opened next found the parent's
    lock counted there and took none of its own (POSIX locks are not inherited). Once
    the parent let go of the file, the next process to close it saw no one else on it,
    checkpointed and deleted the -wal and -shm files, and the child committed on into a
    deleted log: its tasks reached no worker, ever. Closed first, the table empties and
    the child's own connections lock the file. Closing releases only the child's locks
    (none). Kept unused instead: one its thread was using at the fork (see
    _closed_if_idle), and one inside a write transaction, as rolling it back would touch
    the parent's shared WAL index.
    """
    global _settled_pid  # noqa: PLW0603 - one per process, by design
    with _settling:
        if _settled_pid != pid.current():
            for broker in list(_BROKERS):
                broker._let_go_of_inherited()
            _PARKED[:] = [link for link in _PARKED if not _closed_if_idle(link)]
            _settled_pid = pid.current()


def _closed_if_idle(link: _Link) -> bool:
    """Close a parent's connection in a forked child unless its thread was using it at
    the fork (its lock held: maybe inside SQLite, whose mutex then stays locked in the
    child) or it is inside a write transaction; True when closed."""
    if not link.lock.acquire(blocking=False) or link.db.in_transaction:
        return False
    with contextlib.suppress(sqlite3.Error):
        link.db.close()
    return True


def _close_own(link: _Link, opened_by: int) -> None:
    """Close a connection this process opened; a forked child never closes its parent's.

    Left to the garbage collector, a connection is closed anyway, but Python 3.13 warns of
    each one ("unclosed database"), and a test suite that turns warnings into errors fails
    whichever test the collection ran in. A finalizer (a weak reference's callback) runs
    before the collector finalizes anything, even when the broker is part of a cycle.
    """
    # os.getpid(), not the cached id: CPython drops the parent's other threads in a
    # forked child (so their connections' owners) before the fork hooks renew that id.
    if opened_by != os.getpid():
        # The parent's: never closed here (its thread may have held it, and SQLite's
        # mutex, at the fork: the child hung), and never left to the collector either,
        # which would close it all the same.
        _PARKED.append(link)
        return
    link.closed = True  # first: its thread takes a new one rather than wait here
    with link.lock:  # a statement of its thread in flight ends first
        link.db.close()


class SQLiteBroker(SQLiteResults, SQLiteStore, Broker):
    """The embedded broker: one SQLite file shared by every process on the host.

    Example:
        >>> import tempfile, os
        >>> from celeriac.brokers.base import Outgoing
        >>> b = SQLiteBroker(f"sqlite:///{tempfile.mkdtemp()}/doc.db")
        >>> b.send([Outgoing(id="t1", queue="default", body=b"{}")])
        [True]
    """

    def __init__(self, url: str) -> None:
        path, params = path_from_url(url)
        self.path = str(Path(path).absolute())
        self._synchronous = params.get("synchronous", ["normal"])[0].upper()
        if self._synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ConfigurationError(
                f"synchronous={self._synchronous.lower()} in {url!r}: use normal, full or extra"
            )
        self._local = threading.local()
        self._watch = CommitWatch()
        # One per connection this process opened (each thread has its own): close() and
        # interpreter exit run them, and so does the end of the connection's thread.
        self._closers: list[weakref.finalize[Any, Any]] = []
        self._closers_lock = threading.Lock()
        self._last_reclaim = 0.0
        self._known_queues: set[str] = set()  # queues this process has recorded already
        self._opened = False
        self._wal_warned = -math.inf
        self._wal_trim_after = 0.0
        self._wal_trim_failed = False
        folder = Path(self.path).parent
        if not folder.is_dir():  # a typo would otherwise make a fresh, empty broker elsewhere
            meant = Path("/", path)  # sqlite:///tmp/x.db is tmp/x.db, relative
            hint = (
                f" (three slashes make the path relative to {Path.cwd()}; for {meant} "
                f"write four: sqlite:///{meant})"
                if not Path(path).is_absolute() and meant.parent.is_dir()
                else ""
            )
            raise ConfigurationError(
                f"the folder of the SQLite broker {self.path} does not exist: fix the path "
                f"in the broker URL {url!r}{hint}, or create the folder (mkdir -p {folder})"
            )
        if Path(self.path).is_dir():  # SQLite says "unable to open database file"
            raise ConfigurationError(
                f"the SQLite broker URL {url!r} names the folder {self.path}, not a file: "
                f"name a file in it (sqlite:///{Path(self.path, 'celeriac.db')}; celeriac "
                "creates it)"
            )
        _BROKERS.add(self)
        self._link()  # refuses another program's database or a newer celeriac's file
        # From now on a refused file is one swapped in under this process: a BrokerError,
        # which workers wait out (logged) as they do a file they cannot write.
        self._opened = True
        warning = network_warning(self.path)
        if warning:  # once per process that opens the broker; its forked children share it
            log.warning(warning)

    # -- connections --------------------------------------------------------------------

    @contextlib.contextmanager
    def _using(self, *, check_file: bool = False) -> Iterator[sqlite3.Connection]:
        """This thread's connection, held for the block: ``close()`` from another thread
        waits for the block to end instead of closing the connection under it."""
        while True:
            link = self._link(check_file=check_file)
            with link.lock:
                if not link.closed:
                    yield link.db
                    return
            # Closed by close() between the two lines above: a new one.

    def _db(self, *, check_file: bool = False) -> sqlite3.Connection:
        """This thread's connection, not held (see :meth:`_using`): for tests."""
        return self._link(check_file=check_file).db

    def _link(self, *, check_file: bool = False) -> _Link:
        """This thread's connection; ``check_file`` makes sure it is still to the file at
        ``self.path`` (reads check at most every ``_FILE_CHECK_EVERY`` seconds)."""
        local = self._local
        if getattr(local, "pid", None) != pid.current() or local.link.closed:
            if _settled_pid != pid.current():  # forked: before the child's first connection
                _let_go_of_inherited_connections()
                local = self._local
            local.link, local.file = self._connect_recording_file()
            local.pid = pid.current()
            local.version = None
        elif check_file or time.monotonic() - local.checked > _FILE_CHECK_EVERY:
            self._follow_file(local)
        link: _Link = local.link
        return link

    def _let_go_of_inherited(self) -> None:
        """Park the parent's connections in a forked child, for
        _let_go_of_inherited_connections to close; each thread of the child opens its own."""
        with self._closers_lock:
            closers, self._closers = self._closers, []
        for closer in closers:
            found = closer.detach()  # the parent's: its finalizer would never close it
            if found is None:
                continue
            _PARKED.append(found[2][0])
        self._local = threading.local()

    def _connect_recording_file(self) -> tuple[_Link, tuple[int, int] | None]:
        # The file's identity is taken before connecting: if it is swapped in between, the
        # next check reconnects once more, which is harmless; taken after, it could bind
        # this connection to a file it is not on.
        before = file_id(self.path)
        if before is None:
            create_file(self.path)  # not readable by other users, as SQLite would make it
            before = file_id(self.path)
        link = _Link(self._connect())
        owner = _Owner()
        closer = weakref.finalize(owner, _close_own, link, pid.current())
        with self._closers_lock:
            self._closers = [c for c in self._closers if c.alive]
            self._closers.append(closer)
        self._local.owner = owner  # replaces (so closes) this thread's previous connection
        self._local.checked = time.monotonic()
        return link, before if before is not None else file_id(self.path)

    def _follow_file(self, local: threading.local) -> None:
        """Reconnect when the file at ``self.path`` is no longer the one this thread's
        connection has open (deleted, or replaced by a restore or a copy).

        SQLite keeps reading and writing a deleted file through its open descriptor, and
        nothing reaches it any more: a worker on it waited forever for tasks that
        producers, opening the path, put in the new file, and a producer on it committed
        sends into a file that vanished with its last connection.
        """
        local.checked = time.monotonic()
        now = file_id(self.path)
        if now == local.file:
            return
        # Raises: the old connection is kept and this is retried. Succeeds: the old one is
        # closed by its finalizer (its owner is replaced), which is safe: SQLite neither
        # checkpoints nor deletes the WAL of a moved file.
        local.link, local.file = self._connect_recording_file()
        local.version = None  # a new file: whatever waits reads it again
        log.error(
            "the SQLite broker file %s is no longer the file process %d opened (it was "
            "deleted or replaced); this process now uses the file at that path%s. Queued "
            "tasks, results and leases that were only in the old file are gone for this "
            "process: tasks running from it will report a lost lease, and producers that "
            "kept the old file open may have sent tasks into it. To swap the file on "
            "purpose (a restore), stop every worker and producer first and remove its -wal "
            "and -shm files with it; otherwise restore it from a backup.",
            self.path,
            os.getpid(),
            " (a new, empty one)" if now is None else "",
        )

    def _connect(self) -> sqlite3.Connection:
        try:
            # Each thread uses only its own connection; close() closes them all from one.
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._cannot_open(exc) from exc
        try:
            # Before WAL, which is written into the file: another program's is left as found.
            to_lay_out = check_layout(self.path, db)
            enable_wal(db)
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            # A burst (a big backlog, large results, a long reader holding checkpoints
            # back) grows the WAL file, and SQLite keeps it at that high-water mark for as
            # long as any connection is open: tens of MB on disk for a worker's lifetime.
            # With a limit, the file is cut back to it the next time the log is reset.
            db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
            # A new file, also one created since this broker was made (the old one deleted
            # under a running process), has no tables yet; an older one is upgraded.
            if to_lay_out:
                lay_out(self.path, db)
        except BaseException as exc:
            db.close()  # never handed out: closed here, not left to the collector
            if isinstance(exc, sqlite3.Error):
                raise self._cannot_open(exc) from exc
            if isinstance(exc, ConfigurationError) and self._opened:
                raise BrokerError(str(exc)) from exc
            raise
        return db

    def _cannot_open(self, exc: sqlite3.Error) -> BrokerConnectionError:
        remedy = advice(self.path, getattr(exc, "sqlite_errorname", ""))
        return BrokerConnectionError(
            f"cannot open the SQLite broker at {self.path}: {exc}. "
            f"{remedy or 'Check that the folder exists and is writable by this user.'}"
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._using(check_file=True) as db:  # a write into a deleted file is lost
                if db.in_transaction:
                    # Left open by an exception between two statements of ours (a task's
                    # soft limit firing inside its own delay()): it holds the write lock
                    # for every process on this file until rolled back.
                    db.execute("ROLLBACK")
                try:
                    db.execute("BEGIN IMMEDIATE")
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # a failed COMMIT (busy) leaves it open too
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise BrokerError(failure(self.path, exc)) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._using() as db:
                return db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BrokerError(failure(self.path, exc)) from exc

    def _changed(self) -> bool:
        """True when another connection committed since the last call on this thread."""
        try:
            with self._using() as db:
                version = db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise BrokerError(failure(self.path, exc)) from exc
        changed = version != self._local.version
        self._local.version = version
        return bool(changed)

    def close(self) -> None:
        """Close every connection this process opened on the file, one per thread that
        used the broker; a later call opens a new one."""
        with self._closers_lock:
            closers, self._closers = self._closers, []
        for close in closers:
            close()  # marks it closed: each thread opens a new one at its next call
        # self._local is kept: replaced, a thread between two uses of its own (a wait's
        # look at data_version) found its attributes gone and failed with AttributeError.

    # -- producing ----------------------------------------------------------------------

    def send(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store messages in one transaction; True for each new id."""
        now = time.time()
        base = time.time_ns()
        created: list[bool] = []
        with self._transaction() as db:
            for index, out in enumerate(messages):
                due = max(out.eta, now) if out.eta else now
                cursor = db.execute(
                    "INSERT INTO messages (id, queue, priority, due, seq, body) "
                    "SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM results WHERE id = ? AND final = 1 AND expires_at > ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (out.id, out.queue, out.priority, due, base + index, out.body, out.id, now),
                )
                created.append(cursor.rowcount == 1)
            for queue in {out.queue for out in messages} - self._known_queues:
                db.execute("INSERT OR IGNORE INTO queues VALUES (?)", (queue,))
        self._known_queues.update(out.queue for out in messages)
        return created

    # -- consuming ----------------------------------------------------------------------

    def fetch(
        self,
        queues: Sequence[str],
        consumer: str,
        *,
        limit: int,
        lease_seconds: float,
        timeout: float,
    ) -> list[Delivery]:
        """Take up to ``limit`` due messages, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            # Before the query: a commit after it wakes the wait below. The connection's
            # own mark too, so that this thread, looking for the others later, does not
            # take a commit they already saw for a new one.
            self._changed()
            seen = self._watch.seen()
            if time.time() - self._last_reclaim > _RECLAIM_EVERY:
                self.reap()
            try:  # a read outside any transaction: its errors are translated here
                with self._using() as db:
                    ready = self._candidates(db, queues, limit, time.time())
            except sqlite3.Error as exc:
                raise BrokerError(failure(self.path, exc)) from exc
            if ready:
                with self._transaction() as db:
                    taken = self._take(db, queues, consumer, limit, lease_seconds)
                if taken:
                    return taken
            if time.monotonic() >= deadline:
                return []
            self._wait_for_change(deadline, seen)

    def _wait_for_change(self, deadline: float, seen: int) -> None:
        # Wake on any commit by another process, on the next delayed message coming due,
        # or after a short while anyway (a delayed message may have been added meanwhile).
        rows = self._read(
            "SELECT MIN(due) FROM messages WHERE token IS NULL AND due > ?", (time.time(),)
        )
        next_due = rows[0][0]
        until = min(deadline, time.monotonic() + 0.25)
        if next_due is not None:
            until = min(until, time.monotonic() + max(next_due - time.time(), 0.0))
        # One waiting thread of this process looks at the file for all (sqlite_wait.py).
        self._watch.wait(seen, until, self._changed)

    def _candidates(
        self, db: sqlite3.Connection, queues: Sequence[str], limit: int, now: float
    ) -> list[tuple[int, float, int, str]]:
        found: list[tuple[int, float, int, str]] = []
        for queue in queues:
            found += [
                (-row[1], row[2], row[3], row[0])
                for row in db.execute(
                    "SELECT id, priority, due, seq FROM messages WHERE queue = ? AND "
                    "token IS NULL AND due <= ? ORDER BY priority DESC, due, seq LIMIT ?",
                    (queue, now, limit),
                )
            ]
        found.sort()
        return found[:limit]

    def _take(
        self,
        db: sqlite3.Connection,
        queues: Sequence[str],
        consumer: str,
        limit: int,
        lease_seconds: float,
    ) -> list[Delivery]:
        now = time.time()
        taken: list[Delivery] = []
        for _, _, _, task_id in self._candidates(db, queues, limit, now):
            token = uuid.uuid4().hex
            row = db.execute(
                "UPDATE messages SET token = ?, holder = ?, lease_deadline = ?, "
                "deliveries = deliveries + 1 WHERE id = ? "
                "RETURNING queue, body, deliveries, priority",
                (token, consumer, now + lease_seconds, task_id),
            ).fetchone()
            taken.append(Delivery(Lease(task_id, row[0], token), row[1], row[2], row[3]))
        return taken

    def complete(self, lease: Lease, result: bytes | None, result_ttl: float) -> bool:
        """Remove a held message and store its final result in one transaction (fenced)."""
        with self._transaction() as db:
            return self._complete(db, lease, result, result_ttl)

    def _complete(
        self, db: sqlite3.Connection, lease: Lease, result: bytes | None, result_ttl: float
    ) -> bool:
        cursor = db.execute(
            "DELETE FROM messages WHERE id = ? AND token = ?", (lease.id, lease.token)
        )
        if cursor.rowcount != 1:
            return False
        if result is not None:
            db.execute(
                "INSERT OR REPLACE INTO results (id, body, final, expires_at) VALUES (?, ?, 1, ?)",
                (lease.id, result, time.time() + result_ttl),
            )
        return True

    def complete_many(
        self,
        items: Sequence[tuple[Lease, bytes | None]],
        result_ttl: float,
        queues: Sequence[str] = (),
        consumer: str = "",
        *,
        limit: int = 0,
        lease_seconds: float = 0.0,
    ) -> tuple[list[bool], list[Delivery]]:
        """Commit several messages (each fenced on its own lease) and take the next ones,
        in one transaction: one write lock and one commit for a batch, where each message
        took its own (the children and producers sharing the file wait on that lock)."""
        with self._transaction() as db:
            committed = [self._complete(db, lease, result, result_ttl) for lease, result in items]
            taken = self._take(db, queues, consumer, limit, lease_seconds) if limit > 0 else []
        return committed, taken

    def complete_and_fetch(
        self,
        lease: Lease,
        result: bytes | None,
        result_ttl: float,
        queues: Sequence[str],
        consumer: str,
        *,
        limit: int,
        lease_seconds: float,
    ) -> tuple[bool, list[Delivery]]:
        """Commit one message and take the next ones in the same transaction."""
        with self._transaction() as db:
            committed = self._complete(db, lease, result, result_ttl)
            taken = self._take(db, queues, consumer, limit, lease_seconds) if limit else []
        return committed, taken

    def requeue(
        self,
        lease: Lease,
        *,
        delay: float = 0.0,
        body: bytes | None = None,
        count_delivery: bool = True,
    ) -> bool:
        """Put a held message back, due after ``delay`` seconds (fenced)."""
        if not count_delivery:  # shutdown or deferral, the message rewritten or not
            deliveries = "MAX(deliveries - 1, 0)"
        else:  # a retry (new body) starts counting again; a failure keeps its count
            deliveries = "0" if body is not None else "deliveries"
        with self._transaction() as db:
            sql = (  # deliveries is one of three fixed fragments above, never input
                "UPDATE messages SET token = NULL, holder = NULL, lease_deadline = NULL, "  # noqa: S608
                f"due = ?, seq = ?, body = COALESCE(?, body), deliveries = {deliveries} "
                "WHERE id = ? AND token = ?"
            )
            cursor = db.execute(
                sql,
                (time.time() + delay, time.time_ns(), body, lease.id, lease.token),
            )
            return cursor.rowcount == 1

    def dead_letter(self, lease: Lease, letter: DeadLetter, result: bytes | None) -> bool:
        """Move a held message to the dead-letter store (fenced)."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM messages WHERE id = ? AND token = ?", (lease.id, lease.token)
            )
            if cursor.rowcount != 1:
                return False
            db.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    letter.id,
                    letter.queue,
                    letter.task,
                    letter.reason,
                    letter.body,
                    letter.deliveries,
                    letter.error,
                    letter.dead_at,
                ),
            )
            if result is not None:
                db.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, 1, ?)",
                    (lease.id, result, time.time() + 86_400 * 7),
                )
            return True

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        """Extend held leases; return the ids that were lost."""
        lost: list[str] = []
        if not leases:
            return lost
        with self._transaction() as db:
            deadline = time.time() + lease_seconds
            for lease in leases:
                cursor = db.execute(
                    "UPDATE messages SET lease_deadline = ? WHERE id = ? AND token = ?",
                    (deadline, lease.id, lease.token),
                )
                if cursor.rowcount != 1:
                    lost.append(lease.id)
        return lost

    def reap(self) -> int:
        """Release messages of dead workers and expired leases; drop expired results."""
        now = time.time()
        self._last_reclaim = now
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE messages SET token = NULL, holder = NULL, lease_deadline = NULL, "
                "due = ?, seq = ? WHERE token IS NOT NULL AND (lease_deadline <= ? OR holder IN "
                "(SELECT id FROM workers WHERE expires_at <= ?))",
                (now, time.time_ns(), now, now),
            )
            released = cursor.rowcount
            db.execute("DELETE FROM workers WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM results WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM kv WHERE expires_at <= ?", (now,))
            self._reap_joins(db, now)
            self._reap_limiters(db, now)
        self._trim_wal()
        return released

    def _trim_wal(self) -> None:
        """Cut a -wal file grown past ``WAL_TRIM_BYTES`` back (see ``trim_wal``), and say
        what keeps it growing when two tries in a row failed (one may meet another
        process's checkpoint), at most every ``_WAL_WARN_EVERY`` seconds."""
        now = time.monotonic()
        if now < self._wal_trim_after:
            return
        try:
            with self._using() as db:
                kept = trim_wal(self.path, db)
        except sqlite3.Error as exc:
            raise BrokerError(failure(self.path, exc)) from exc
        failed_before, self._wal_trim_failed = self._wal_trim_failed, bool(kept)
        if not kept:
            return
        # Each try stalls every writer while it waits: not again for a while.
        self._wal_trim_after = now + _WAL_RETRY_EVERY
        if not failed_before or now - self._wal_warned < _WAL_WARN_EVERY:
            return
        self._wal_warned = now
        log.warning(
            "the SQLite broker's log %s-wal has grown to %d MB and cannot be cut back: a "
            "process keeps a read transaction open on %s (an sqlite3 shell inside BEGIN, a "
            "backup or copy tool; fuser -v %s lists the processes that have it open). End "
            "it: the log grows with every task until then, and with it the disk used.",
            self.path,
            kept // 1_000_000,
            self.path,
            self.path,
        )
