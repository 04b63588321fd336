"""The SQLite broker's small store: keys, joins, rate limiters, streams, revoke marks.

A mixin of :class:`~celeriac.brokers.sqlite.SQLiteBroker`, kept apart so each module stays
small. Every method is one transaction on the broker's own file; the tables are created
with the rest of the schema in ``sqlite.py``.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

# Ids (or keys) per "IN (...)": well under SQLite's bound-variable limit, which is 32,766
# since SQLite 3.32 and 999 before it (a list over it fails the whole query).
IDS_PER_QUERY = 500


def id_chunks(ids: Sequence[str]) -> Iterator[tuple[list[str], str]]:
    """The distinct ``ids`` in chunks of IDS_PER_QUERY, each with its placeholders for
    ``IN (...)``.

    Example:
        >>> list(id_chunks(["a", "b", "a"]))
        [(['a', 'b'], '?,?')]
    """
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), IDS_PER_QUERY):
        chunk = unique[start : start + IDS_PER_QUERY]
        yield chunk, ",".join("?" * len(chunk))


# Admissions kept by the reaper: two days, over the longest window a rate names (N/d).
ADMISSIONS_KEPT = 2 * 86_400.0


class SQLiteStore:
    """kv, joins, rate limiters and bounded streams on SQLite."""

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by SQLiteBroker

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError  # provided by SQLiteBroker

    def mark_revoked(self, task_ids: Sequence[str], result: bytes, ttl: float) -> list[bool]:
        """Store a revoke mark for each id without a final result (or a mark), in one
        transaction: ``final = 2``, which readers take as final and a send does not (it
        refuses only ``final = 1``), and which a complete replaces."""
        now = time.time()
        with self._transaction() as db:
            return [
                db.execute(
                    "INSERT INTO results VALUES (?, ?, 2, ?) ON CONFLICT (id) DO UPDATE SET "
                    "body = excluded.body, final = 2, expires_at = excluded.expires_at "
                    "WHERE final = 0 OR expires_at <= ?",
                    (task_id, result, now + ttl, now),
                ).rowcount
                == 1
                for task_id in task_ids
            ]

    def forget_results(self, task_ids: Sequence[str]) -> None:
        """Delete the stored results of many ids, in one transaction (one statement per
        500 distinct ids)."""
        if not task_ids:
            return
        with self._transaction() as db:
            for chunk, marks in id_chunks(task_ids):
                db.execute(f"DELETE FROM results WHERE id IN ({marks})", chunk)  # noqa: S608 - placeholders only

    def kv_set(self, key: str, value: bytes, ttl: float, *, only_if_absent: bool = False) -> bool:
        """Set a key for ``ttl`` seconds (only when unset, if asked)."""
        now = time.time()
        with self._transaction() as db:
            if only_if_absent:
                held = db.execute(
                    "SELECT 1 FROM kv WHERE key = ? AND expires_at > ?", (key, now)
                ).fetchone()
                if held:
                    return False
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, now + ttl))
            return True

    def kv_get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of keys, None where unset or expired: one query per 500 distinct keys
        (one list of them all failed past SQLite's bound-variable limit)."""
        now = time.time()
        found: dict[str, bytes] = {}
        for chunk, marks in id_chunks(keys):
            rows = self._read(
                f"SELECT key, value FROM kv WHERE key IN ({marks}) AND expires_at > ?",  # noqa: S608 - placeholders only
                (*chunk, now),
            )
            found.update(rows)
        return [found.get(k) for k in keys]

    def kv_delete(self, key: str) -> None:
        """Unset a key."""
        with self._transaction() as db:
            db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def kv_delete_if(self, key: str, value: bytes) -> bool:
        """Unset a key only while it holds ``value`` (and has not expired)."""
        with self._transaction() as db:
            deleted = db.execute(
                "DELETE FROM kv WHERE key = ? AND value = ? AND expires_at > ?",
                (key, value, time.time()),
            )
            return deleted.rowcount > 0

    def join_add(self, key: str, member: str, value: bytes, ttl: float) -> int:
        """Add a member once; return the number of distinct members.

        As on Redis, the whole join lives ``ttl`` seconds from its latest add: the expiry
        is one per join, on its ``join_counts`` row, renewed here on every add. A join
        whose members arrive further apart in total than ``ttl`` stays whole; one that
        saw no add for ``ttl`` seconds is gone, and the next add starts a new one.
        """
        now = time.time()
        with self._transaction() as db:
            expired = db.execute(
                "SELECT 1 FROM join_counts WHERE key = ? AND expires_at <= ?", (key, now)
            ).fetchone()
            if expired:  # not reaped yet, but gone all the same (Redis dropped the key)
                db.execute("DELETE FROM joins WHERE key = ?", (key,))
                db.execute("DELETE FROM join_counts WHERE key = ?", (key,))
            added = db.execute(
                "INSERT INTO joins VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (key, member, value, now + ttl),
            ).rowcount
            # A running count in the same transaction: COUNT(*) per add is quadratic, and so
            # would be renewing every member row; the join's one expiry lives beside it.
            row = db.execute(
                "INSERT INTO join_counts (key, members, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET members = members + excluded.members, "
                "expires_at = excluded.expires_at RETURNING members",
                (key, added, now + ttl),
            ).fetchone()
            return int(row[0])

    def join_values(self, key: str) -> dict[str, bytes]:
        """Every member of a join and its value (none once the join expired)."""
        rows = self._read(
            "SELECT j.member, j.value FROM joins AS j JOIN join_counts AS c ON c.key = j.key "
            "WHERE j.key = ? AND c.expires_at > ?",
            (key, time.time()),
        )
        return dict(rows)

    def join_delete(self, key: str) -> None:
        """Drop a join, members and count."""
        with self._transaction() as db:
            db.execute("DELETE FROM joins WHERE key = ?", (key,))
            db.execute("DELETE FROM join_counts WHERE key = ?", (key,))

    @staticmethod
    def _reap_joins(db: sqlite3.Connection, now: float) -> None:
        """Drop expired joins, each whole (inside the reaper's transaction)."""
        db.execute(
            "DELETE FROM joins WHERE key IN (SELECT key FROM join_counts WHERE expires_at <= ?)",
            (now,),
        )
        db.execute("DELETE FROM join_counts WHERE expires_at <= ?", (now,))

    @staticmethod
    def _reap_limiters(db: sqlite3.Connection, now: float) -> None:
        """Drop rate limiters nothing remembers any more (inside the reaper's transaction).

        Each limiter key (one per ``rate_limit_key`` value: per user, per account) left a
        row for good, and its last ``limit`` admissions: a million users' limits left a
        million rows. Redis expires both keys. A limiter whose next slot has passed reads
        as absent (``max(tat, now)``), so its row goes; admissions older than any window
        (N/d, plus the middleware's 1 % margin) count for nothing.
        """
        db.execute("DELETE FROM limiters WHERE tat <= ?", (now,))
        db.execute("DELETE FROM admissions WHERE at <= ?", (now - ADMISSIONS_KEPT,))

    def rate_reserve(
        self, key: str, per_second: float, burst: int = 1, max_wait: float = math.inf
    ) -> float:
        """Reserve the next free slot, unless it is more than ``max_wait`` ahead (then
        nothing changes); return the seconds until it."""
        interval = 1.0 / per_second
        with self._transaction() as db:
            now = time.time()
            row = db.execute("SELECT tat FROM limiters WHERE key = ?", (key,)).fetchone()
            tat = max(row[0] if row else now, now)
            slot = max(now, tat - (burst - 1) * interval)
            if slot - now <= max_wait:
                db.execute("INSERT OR REPLACE INTO limiters VALUES (?, ?)", (key, tat + interval))
            return slot - now

    def rate_admit(self, key: str, limit: int, period: float) -> float:
        """Admit a start if the window has room; else the seconds until it will."""
        with self._transaction() as db:
            now = time.time()
            row = db.execute(
                "SELECT at FROM admissions WHERE key = ? ORDER BY at DESC LIMIT 1 OFFSET ?",
                (key, limit - 1),
            ).fetchone()
            if row is not None and row[0] > now - period:
                return float(row[0]) + period - now
            db.execute("INSERT INTO admissions VALUES (?, ?)", (key, now))
            db.execute("DELETE FROM admissions WHERE key = ? AND at <= ?", (key, now - period))
            return 0.0

    def stream_append(self, key: str, items: Sequence[bytes], maxlen: int) -> None:
        """Append to a bounded stream."""
        with self._transaction() as db:
            last = db.execute("SELECT MAX(seq) FROM streams WHERE key = ?", (key,)).fetchone()[0]
            seq = last or 0
            db.executemany(
                "INSERT INTO streams VALUES (?, ?, ?)",
                [(key, seq + i + 1, item) for i, item in enumerate(items)],
            )
            db.execute(
                "DELETE FROM streams WHERE key = ? AND seq <= ?", (key, seq + len(items) - maxlen)
            )

    def stream_read(self, key: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Items after a sequence number, oldest first."""
        rows = self._read(
            "SELECT seq, item FROM streams WHERE key = ? AND seq > ? ORDER BY seq LIMIT ?",
            (key, after, limit),
        )
        return [(int(r[0]), r[1]) for r in rows]
