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

import logging
import math
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celeriac.brokers.base import Broker
from celeriac.brokers.records import DeadLetter, Delivery, Lease, Outgoing, clamped_priority
from celeriac.brokers.sqlite_connections import SQLiteConnections
from celeriac.brokers.sqlite_file import (
    failure,
    network_warning,
    path_from_url,
    trim_wal,
)
from celeriac.brokers.sqlite_results import SQLiteResults
from celeriac.brokers.sqlite_store import SQLiteStore, id_chunks
from celeriac.brokers.sqlite_wait import CommitWatch
from celeriac.errors import BrokerError, ConfigurationError

_RECLAIM_EVERY = 1.0  # seconds between expired-lease sweeps inside fetch
# Seconds between two reaps of one process that mean it was held up (a write lock held
# elsewhere, the process paused), and how long after that it spares what ran out then.
_HELD_UP = 3.0
_HELD_UP_GRACE = 10.0
_WAL_WARN_EVERY = 300.0  # seconds between two warnings of a -wal file kept from shrinking
_WAL_RETRY_EVERY = 10.0  # seconds before a process tries again to cut back such a file

log = logging.getLogger("celeriac.brokers.sqlite")


class SQLiteBroker(SQLiteConnections, SQLiteResults, SQLiteStore, Broker):
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
        self._held_up = (0.0, 0.0)  # the last span between two reaps past _HELD_UP
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
        self._track()
        self._link()  # refuses another program's database or a newer celeriac's file
        # From now on a refused file is one swapped in under this process: a BrokerError,
        # which workers wait out (logged) as they do a file they cannot write.
        self._opened = True
        warning = network_warning(self.path)
        if warning:  # once per process that opens the broker; its forked children share it
            log.warning(warning)

    # -- producing ----------------------------------------------------------------------

    def send(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store messages in one transaction; True for each new id."""
        now = time.time()
        base = time.time_ns()
        created: list[bool] = []
        with self._transaction() as db:
            for index, out in enumerate(messages):
                due = max(out.eta, now) if out.eta else now
                priority = clamped_priority(out.priority)
                cursor = db.execute(
                    "INSERT INTO messages (id, queue, priority, due, seq, body) "
                    "SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                    "(SELECT 1 FROM results WHERE id = ? AND final = 1 AND expires_at > ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (out.id, out.queue, priority, due, base + index, out.body, out.id, now),
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
    ) -> list[tuple[int, int, float, int, str]]:
        # Priority first; at equal priority the queue named first (as on Redis), then due
        # order within a queue.
        found: list[tuple[int, int, float, int, str]] = []
        # Each queue once: a queue named twice handed its messages out twice, the first
        # lease void before its holder saw it.
        for place, queue in enumerate(dict.fromkeys(queues)):
            found += [
                (-row[1], place, row[2], row[3], row[0])
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
        for *_, task_id in self._candidates(db, queues, limit, now):
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
        front: bool = False,
    ) -> bool:
        """Put a held message back, due after ``delay`` seconds (fenced); ``front``: where
        it was (see :meth:`Broker.requeue`)."""
        if not count_delivery:  # shutdown or deferral, the message rewritten or not
            deliveries = "MAX(deliveries - 1, 0)"
        else:  # a retry (new body) starts counting again; a failure keeps its count
            deliveries = "0" if body is not None else "deliveries"
        # Back where it was: its due time and sequence as they are. Else at the back.
        placed: tuple[float, ...] = ()
        if front and delay <= 0:
            place = "due = due, seq = seq"
        else:
            place, placed = "due = ?, seq = ?", (time.time() + delay, time.time_ns())
        with self._transaction() as db:
            sql = (  # deliveries and place are fixed fragments above, never input
                "UPDATE messages SET token = NULL, holder = NULL, lease_deadline = NULL, "  # noqa: S608
                f"{place}, body = COALESCE(?, body), deliveries = {deliveries} "
                "WHERE id = ? AND token = ?"
            )
            cursor = db.execute(sql, (*placed, body, lease.id, lease.token))
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

    def held(self, task_ids: Sequence[str]) -> list[bool]:
        """Whether a consumer holds each id's message now: one query per 500 ids."""
        found: set[str] = set()
        for chunk, marks in id_chunks(task_ids):
            rows = self._read(
                f"SELECT id FROM messages WHERE id IN ({marks}) AND token IS NOT NULL",  # noqa: S608 - placeholders only
                chunk,
            )
            found.update(row[0] for row in rows)
        return [task_id in found for task_id in task_ids]

    def reap(self) -> int:
        """Release messages of dead workers and expired leases; drop expired results.

        Heartbeats and leases that ran out while this process was held up (two of its
        reaps over ``_HELD_UP`` apart: a write lock held elsewhere, which every process
        waits on, or this process paused) are spared for ``_HELD_UP_GRACE`` seconds: the
        others could not renew them either. After a 12 s lock (a backup, an sqlite3 shell
        in BEGIN) every heartbeat had run out, and the first fetch took back the tasks the
        others were running, its own worker's siblings' too: each ran twice at once.
        """
        now = time.time()
        last, self._last_reclaim = self._last_reclaim, now
        if last and now - last > _HELD_UP:
            self._held_up = (last, now)
        began, ended = self._held_up
        cutoff = began if now - ended < _HELD_UP_GRACE else now
        with self._transaction() as db:  # its own wait for the lock is after ``now``
            cursor = db.execute(
                "UPDATE messages SET token = NULL, holder = NULL, lease_deadline = NULL, "
                "due = ?, seq = ? WHERE token IS NOT NULL AND (lease_deadline <= ? OR holder IN "
                "(SELECT id FROM workers WHERE expires_at <= ?))",
                (now, time.time_ns(), cutoff, cutoff),
            )
            released = cursor.rowcount
            db.execute("DELETE FROM workers WHERE expires_at <= ?", (cutoff,))
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
