"""The SQLite broker's results, dead letters and administration (live workers, stats,
purge).

A mixin of :class:`~celeriac.brokers.sqlite.SQLiteBroker`, kept apart so each module stays
small, as :mod:`~celeriac.brokers.sqlite_store` is. Every write is one transaction on the
broker's own file; the tables are created with the rest of the schema in ``sqlite.py``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from celeriac.brokers.records import (
    DeadLetter,
    QueueStats,
    ReadyAt,
    Renew,
    Waiting,
    WorkerInfo,
    peek_bounds,
    queue_stats,
    replayed,
    within_bytes,
)
from celeriac.brokers.sqlite_store import id_chunks
from celeriac.brokers.sqlite_wait import CommitWatch

WAIT_STEP = 0.004  # seconds between data_version checks while waiting
REPLAY_STEP = 1_000  # dead letters per replay transaction, so writers never wait long


class SQLiteResults:
    """Results (with waiting on them), dead letters, live workers, stats and purge on
    SQLite."""

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by SQLiteBroker

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError  # provided by SQLiteBroker

    def _changed(self) -> bool:
        raise NotImplementedError  # provided by SQLiteBroker

    _watch: CommitWatch  # provided by SQLiteBroker

    # -- results ------------------------------------------------------------------------

    def store_result(self, task_id: str, result: bytes, ttl: float) -> None:
        """Store a non-final state unless a final one exists."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO results VALUES (?, ?, 0, ?) ON CONFLICT (id) DO UPDATE SET "
                "body = excluded.body, expires_at = excluded.expires_at WHERE final = 0",
                (task_id, result, time.time() + ttl),
            )

    def get_result(self, task_id: str) -> tuple[bytes, bool] | None:
        """The stored result and whether it is final."""
        rows = self._read(
            "SELECT body, final FROM results WHERE id = ? AND expires_at > ?",
            (task_id, time.time()),
        )
        return (rows[0][0], bool(rows[0][1])) if rows else None

    def get_results(self, task_ids: Sequence[str]) -> list[tuple[bytes, bool] | None]:
        """What :meth:`get_result` says of each id: one query per 500 distinct ids."""
        now = time.time()
        found: dict[str, tuple[bytes, bool]] = {}
        for chunk, marks in id_chunks(task_ids):
            rows = self._read(
                f"SELECT id, body, final FROM results WHERE id IN ({marks}) AND expires_at > ?",  # noqa: S608 - placeholders only
                (*chunk, now),
            )
            found.update((task_id, (body, bool(final))) for task_id, body, final in rows)
        return [found.get(task_id) for task_id in task_ids]

    def wait_result(self, task_id: str, timeout: float) -> bytes | None:
        """Block until a final result exists or ``timeout`` passes.

        Many threads waiting at once (a web server's) share one look at the file, as
        fetches do (:mod:`celeriac.brokers.sqlite_wait`).
        """
        deadline = time.monotonic() + timeout
        while True:
            self._changed()  # before the read, as in fetch: a commit after it wakes us
            seen = self._watch.seen()
            stored = self.get_result(task_id)
            if stored is not None and stored[1]:
                return stored[0]
            if time.monotonic() >= deadline:
                return None
            self._watch.wait(seen, deadline, self._changed)

    def wait_results(
        self, task_ids: Sequence[str], timeout: float, wake: threading.Event
    ) -> dict[str, bytes]:
        """Block until one of ``task_ids`` has a final result, ``timeout`` passes or
        ``wake`` is set; the final results found, by id. Reads them again only after a
        commit (by any process) on the file: one query per 500 ids, not one per id."""
        deadline = time.monotonic() + timeout
        self._changed()
        while True:
            stored = self.get_results(task_ids)
            found = {i: s[0] for i, s in zip(task_ids, stored, strict=True) if s and s[1]}
            if found or time.monotonic() >= deadline:
                return found
            while time.monotonic() < deadline and not self._changed():
                if wake.wait(WAIT_STEP):
                    return found

    def forget_result(self, task_id: str) -> None:
        """Delete a stored result."""
        with self._transaction() as db:
            db.execute("DELETE FROM results WHERE id = ?", (task_id,))

    # -- workers ------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        """Record a live worker."""
        now = time.time()
        info = msgspec.json.encode(msgspec.structs.asdict(_WorkerRow.from_info(worker, now)))
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers VALUES (?, ?, ?)", (worker.id, info, now + ttl)
            )

    def heartbeat_all(self, workers: Sequence[WorkerInfo], ttl: float) -> None:
        """Record several live workers in one transaction."""
        now = time.time()
        rows = [
            (
                w.id,
                msgspec.json.encode(msgspec.structs.asdict(_WorkerRow.from_info(w, now))),
                now + ttl,
            )
            for w in workers
        ]
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO workers VALUES (?, ?, ?)", rows)

    def forget_worker(self, worker_id: str) -> None:
        """Drop a worker that stopped cleanly."""
        with self._transaction() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired."""
        rows = self._read("SELECT info FROM workers WHERE expires_at > ?", (time.time(),))
        return [msgspec.json.decode(row[0], type=_WorkerRow).to_info() for row in rows]

    # -- administration -----------------------------------------------------------------

    def stats(self, ready_at: ReadyAt | None = None) -> list[QueueStats]:
        """Counts per queue, and since when its longest-waiting ready message has been
        ready (a row keeps that time: ``ready_at`` is not needed)."""
        now = time.time()
        counts: dict[str, list[int]] = {
            row[0]: [0, 0, 0, 0] for row in self._read("SELECT name FROM queues")
        }
        since: dict[str, float] = {}
        # A held message whose lease ran out counts as ready, as a due one does: a fetch
        # hands it out. Counted in flight, the work of a worker killed with -9 read
        # "in flight" for as long as no worker was left to fetch it. It has been ready
        # since its lease's deadline; a waiting row since its due time.
        for queue, ready, delayed, held, oldest in self._read(
            "SELECT queue, SUM(token IS NULL AND due <= ? OR token IS NOT NULL AND "
            "lease_deadline <= ?), SUM(token IS NULL AND due > ?), "
            "SUM(token IS NOT NULL AND lease_deadline > ?), "
            "MIN(CASE WHEN token IS NULL AND due <= ? THEN due "
            "WHEN token IS NOT NULL AND lease_deadline <= ? THEN lease_deadline END) "
            "FROM messages GROUP BY queue",
            (now,) * 6,
        ):
            counts[queue] = [ready, delayed, held, 0]
            if oldest is not None:
                since[queue] = oldest
        for queue, dead in self._read("SELECT queue, COUNT(*) FROM dead_letters GROUP BY queue"):
            counts.setdefault(queue, [0, 0, 0, 0])[3] = dead
        return [queue_stats(q, row, since.get(q)) for q, row in sorted(counts.items())]

    def peek(self, queue: str, limit: int) -> list[Waiting]:
        """Waiting messages of ``queue`` in the order the next fetches take them (see
        :meth:`Broker.peek`): ready rows in the fetch's index order, each priority's rows
        under a lapsed lease after them (a reclaim makes them due now), then the delayed."""
        now, limit = time.time(), peek_bounds(limit)
        ready = self._read(
            "SELECT id, body, priority, deliveries, NULL, 0, due, seq FROM messages "
            "WHERE queue = ? AND token IS NULL AND due <= ? "
            "ORDER BY priority DESC, due, seq LIMIT ?",
            (queue, now, limit),
        )
        lapsed = self._read(
            "SELECT id, body, priority, deliveries, NULL, 1, lease_deadline, seq FROM messages "
            "WHERE queue = ? AND token IS NOT NULL AND lease_deadline <= ? "
            "ORDER BY priority DESC, lease_deadline, seq LIMIT ?",
            (queue, now, limit),
        )
        first = sorted(ready + lapsed, key=lambda row: (-row[2], row[5], row[6], row[7]))
        rows = [row[:5] for row in first[:limit]]
        if len(rows) < limit:  # the delayed only when the ready ones leave room
            rows += self._read(
                "SELECT id, body, priority, deliveries, due FROM messages WHERE queue = ? "
                "AND token IS NULL AND due > ? ORDER BY due, seq LIMIT ?",
                (queue, now, limit - len(rows)),
            )
        return within_bytes([Waiting(*row) for row in rows])

    def _purge_waiting(self, queue: str) -> int:
        """Delete ready and delayed messages of ``queue``."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM messages WHERE queue = ? AND token IS NULL", (queue,)
            ).rowcount

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Newest dead letters first."""
        rows = self._read("SELECT * FROM dead_letters ORDER BY dead_at DESC LIMIT ?", (limit,))
        return [DeadLetter(*row) for row in rows]

    def find_dead_letters(self, ids: Sequence[str]) -> list[DeadLetter]:
        """The dead letters with these ids, by primary key."""
        rows: list[Any] = []
        for chunk, marks in id_chunks(ids):
            rows += self._read(f"SELECT * FROM dead_letters WHERE id IN ({marks})", chunk)  # noqa: S608 - placeholders only
        return [DeadLetter(*row) for row in rows]

    def replay_dead_letters(
        self, ids: Sequence[str] | None = None, task: str | None = None, renew: Renew | None = None
    ) -> int:
        """Send chosen dead letters back to their queues with a fresh delivery count.

        ``REPLAY_STEP`` letters per transaction, oldest first, each step read and renewed
        before its transaction begins: one transaction for every letter held the file's
        write lock for 7 s at 200,000 letters (every send and every worker's commit
        waited, and failed past the 30 s busy timeout) and read 200 MB into the CLI.
        Without ``ids``, the letters are those dead when it starts (their ids read first,
        without bodies): one that dies again during the replay is not replayed again.
        """
        if ids is None:
            where, params = ("WHERE task = ? ", [task]) if task is not None else ("", [])
            sql = f"SELECT id FROM dead_letters {where}ORDER BY dead_at"  # noqa: S608 - fixed text
            ids = [row[0] for row in self._read(sql, params)]
        unique = list(dict.fromkeys(ids))
        return sum(
            self._replay_letters(self.find_dead_letters(unique[i : i + REPLAY_STEP]), task, renew)
            for i in range(0, len(unique), REPLAY_STEP)
        )

    def _replay_letters(
        self, letters: Sequence[DeadLetter], task: str | None, renew: Renew | None
    ) -> int:
        """Replay ``letters`` (those of ``task``, if given) in one transaction."""
        oldest_first = sorted(letters, key=lambda d: d.dead_at)  # queued in that order
        sends = [
            (d, *replayed(d.body, renew)) for d in oldest_first if task is None or d.task == task
        ]
        now, count = time.time(), 0
        with self._transaction() as db:
            for index, (letter, body, priority) in enumerate(sends):
                # The letter as read: one replayed meanwhile (by another replay) is not
                # sent twice, and one that died again since is not sent with its old body.
                taken = db.execute(
                    "DELETE FROM dead_letters WHERE id = ? AND dead_at = ?",
                    (letter.id, letter.dead_at),
                ).rowcount
                if not taken:
                    continue
                count += 1
                db.execute("DELETE FROM results WHERE id = ?", (letter.id,))
                db.execute(
                    "INSERT INTO messages (id, queue, priority, due, seq, body) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (letter.id, letter.queue, priority, now, time.time_ns() + index, body),
                )
        return count

    def purge_dead_letters(self) -> int:
        """Delete every dead letter."""
        with self._transaction() as db:
            return db.execute("DELETE FROM dead_letters").rowcount


class _WorkerRow(msgspec.Struct):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    heartbeat_at: float
    extra: dict[str, Any]

    @classmethod
    def from_info(cls, info: WorkerInfo, now: float) -> _WorkerRow:
        return cls(
            info.id,
            info.host,
            info.pid,
            list(info.queues),
            info.concurrency,
            info.started_at,
            now,
            dict(info.extra),
        )

    def to_info(self) -> WorkerInfo:
        return WorkerInfo(
            self.id,
            self.host,
            self.pid,
            tuple(self.queues),
            self.concurrency,
            self.started_at,
            self.heartbeat_at,
            self.extra,
        )
