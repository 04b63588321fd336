"""Run the ETL pipeline and print what was loaded (start a worker first: celeriac -A tasks worker).

Usage: python run.py [sales.csv] [warehouse.db]
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path

from tasks import pipeline


def main(csv_path: str, db_path: str) -> None:
    """Send the chain, wait for the load step, and summarise the table."""
    # Absolute paths: the worker may run in another directory.
    result = pipeline(str(Path(csv_path).resolve()), str(Path(db_path).resolve())).delay()
    print(f"loaded {result.get(timeout=60)} rows into {db_path}")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        query = "SELECT country, COUNT(*), SUM(total_cents) FROM sales GROUP BY 1 ORDER BY 1"
        for country, orders, cents in db.execute(query):
            print(f"{country}: {orders} orders, {cents / 100:.2f}")


if __name__ == "__main__":
    here = Path(__file__).parent
    main(
        sys.argv[1] if len(sys.argv) > 1 else str(here / "sales.csv"),
        sys.argv[2] if len(sys.argv) > 2 else "warehouse.db",
    )
