"""SQLite-only behaviour the conformance suite cannot state: upgrading older files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from celeriac.brokers.sqlite import SQLiteBroker


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
