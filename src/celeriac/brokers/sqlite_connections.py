"""The SQLite broker's connections: one per thread, held while used, closed safely from
another thread, and let go of in a forked child.

A mixin of :class:`~celeriac.brokers.sqlite.SQLiteBroker`, kept apart so each module stays
small: the broker's operations go through :meth:`SQLiteConnections._transaction` and
:meth:`SQLiteConnections._read`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from celeriac import pid
from celeriac.brokers.sqlite_file import (
    WAL_KEEP_BYTES,
    add_expiry_indexes,
    advice,
    check_layout,
    create_file,
    enable_wal,
    failure,
    file_id,
    lay_out,
)
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError

_FILE_CHECK_EVERY = 0.5  # seconds between two reads' checks that the file is still there

#: The broker's logger: what happens to its connections is the broker's news.
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
_BROKERS: weakref.WeakSet[SQLiteConnections] = weakref.WeakSet()
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


class SQLiteConnections:
    """Each thread's connection to the broker's file (see the module docstring)."""

    path: str
    _synchronous: str
    _local: threading.local
    _closers: list[weakref.finalize[Any, Any]]
    _closers_lock: threading.Lock
    _opened: bool

    def _track(self) -> None:
        """Let a forked child find this broker's connections, to let go of them (see
        _let_go_of_inherited_connections)."""
        _BROKERS.add(self)

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
            add_expiry_indexes(db)
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
