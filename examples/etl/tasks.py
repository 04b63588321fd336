"""An ETL pipeline as a chain of three tasks: extract | transform | load.

    pipeline("sales.csv", "warehouse.db")
    == extract.s("sales.csv") | transform.s() | load.s("warehouse.db")

Rows never ride in messages. Extract stores the raw rows in the broker's small store and
passes on a key; transform reads them, cleans them, and stores the clean rows the same
way; load writes them into a SQLite database. Messages stay a few hundred bytes however
large the file, and each step can be run again (at-least-once) without harm: staged rows
are keyed by the task id, and load upserts by order id.

Run a worker:      celeriac -A tasks worker
Run the pipeline:  python run.py sales.csv warehouse.db
"""

from __future__ import annotations

import contextlib
import csv
import json
import sqlite3
from decimal import Decimal, InvalidOperation
from typing import Any

from celeriac import AsyncResult, Celeriac, Task
from celeriac.canvas import Chain

# No broker given: a SQLite file in the working directory. CELERIAC_BROKER_URL overrides it.
app = Celeriac("etl")

# Staged rows expire by themselves; no step deletes them, because a step that runs again
# after a crash must still find its input. A step that waited longer than that expires too.
STAGED_TTL = 24 * 3600.0


@app.bound_task(name="etl.extract", soft_time_limit=60, time_limit=90, expires=STAGED_TTL)
def extract(self: Task[Any, Any], path: str) -> str:
    """Read the CSV file as it is; stage its rows; return their key."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    return _stage(self, "raw", rows)


@app.bound_task(name="etl.transform", soft_time_limit=60, time_limit=90, expires=STAGED_TTL)
def transform(self: Task[Any, Any], raw_key: str) -> str:
    """Clean the raw rows: trim and capitalise names, upper-case countries, compute totals
    in cents, drop rows without an id or with a bad number, keep an order's last row."""
    clean: dict[int, dict[str, Any]] = {}
    for row in _staged(self, raw_key):
        try:
            order_id = int(row["order_id"])
            quantity = int(row["quantity"])
            total = Decimal(row["unit_price"]) * quantity
        except (ValueError, InvalidOperation):
            continue
        clean[order_id] = {
            "order_id": order_id,
            "ordered_at": row["ordered_at"].strip(),
            "customer": " ".join(row["customer"].split()).title(),
            "country": row["country"].strip().upper(),
            "total_cents": int(total * 100),
        }
    return _stage(self, "clean", sorted(clean.values(), key=lambda r: r["order_id"]))


@app.bound_task(name="etl.load", soft_time_limit=60, time_limit=90, expires=STAGED_TTL)
def load(self: Task[Any, Any], clean_key: str, db_path: str) -> int:
    """Upsert the clean rows into the ``sales`` table; return how many were loaded."""
    rows = _staged(self, clean_key)
    # closing() closes the connection; a connection's own `with` only commits.
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS sales (order_id INTEGER PRIMARY KEY, ordered_at TEXT, "
            "customer TEXT, country TEXT, total_cents INTEGER)"
        )
        db.executemany(
            "INSERT OR REPLACE INTO sales VALUES "
            "(:order_id, :ordered_at, :customer, :country, :total_cents)",
            rows,
        )
    return len(rows)


def pipeline(csv_path: str, db_path: str) -> Chain[AsyncResult[int]]:
    """The whole pipeline as one chain: each step's result is the next one's input."""
    return extract.s(csv_path) | transform.s() | load.s(db_path)


def _stage(task: Task[Any, Any], stage: str, rows: list[dict[str, Any]]) -> str:
    key = f"etl:{stage}:{task.request.id}"
    task.app.broker.kv_set(key, json.dumps(rows).encode(), STAGED_TTL)
    return key


def _staged(task: Task[Any, Any], key: str) -> list[dict[str, Any]]:
    (raw,) = task.app.broker.kv_get([key])
    if raw is None:
        raise LookupError(f"staged rows {key} are gone (expired after {STAGED_TTL:g}s?)")
    rows: list[dict[str, Any]] = json.loads(raw)
    return rows
