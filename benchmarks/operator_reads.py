"""What the operator's reads cost Redis: ``status``/the exporter's queue stats with the
longest wait, and ``peek``, beside the plain counts.

Usage::

    python -m benchmarks.operator_reads [--queues 300] [--body-kb 200] [--reps 5]

On a private Redis (loopback, no persistence, stopped by PID):

- ``stats()`` (counts only) and ``stats(ready_at)`` (the longest wait too) over
  ``--queues`` queues whose one ready message has a body of ``--body-kb`` KB, and of 200
  bytes: the first call with the wait reads each head's message; the calls after it, as an
  exporter makes at every scrape, send no body for a head that stayed first.
- ``peek`` of one queue of such messages, with every message read (limit 10,000): one
  read stops at 16 MB of bodies; the script's own time comes from Redis's SLOWLOG.

Prints a table and writes ``benchmarks/results/<date>-operator-reads.json``. Medians of
``--reps`` calls; compare rows of one run, not runs on different machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from benchmarks.redis_server import redis_server
from celeriac.brokers.records import Outgoing
from celeriac.brokers.redis import RedisBroker
from celeriac.message import Message, encode_message, ready_at

RESULTS = Path(__file__).parent / "results"


def _median_ms(call: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _message(body_bytes: int) -> tuple[str, bytes]:
    task_id = str(uuid.uuid4())
    message = Message(id=task_id, task="bench.t", args=["x" * body_bytes], sent_at=time.time())
    return task_id, encode_message(message)


def _fill(broker: RedisBroker, queues: int, body_bytes: int, prefix: str) -> None:
    for start in range(0, queues, 50):
        out = []
        for q in range(start, min(start + 50, queues)):
            task_id, body = _message(body_bytes)
            out.append(Outgoing(task_id, f"{prefix}{q}", body))
        broker.send(out)


def _stats_rows(url: str, queues: int, body_bytes: int, reps: int) -> list[dict[str, Any]]:
    broker = RedisBroker(f"{url}?prefix=s{body_bytes}")
    try:
        _fill(broker, queues, body_bytes, "q")
        counts = _median_ms(broker.stats, reps)
        fresh = RedisBroker(f"{url}?prefix=s{body_bytes}")  # no head read yet
        start = time.perf_counter()
        fresh.stats(ready_at)
        first = (time.perf_counter() - start) * 1000
        again = _median_ms(lambda: fresh.stats(ready_at), reps)
        fresh.close()
    finally:
        broker.close()
    label = f"{queues} queues, heads of {body_bytes:,} B"
    return [
        {"read": "stats() counts", "case": label, "ms": counts},
        {"read": "stats(ready_at), first call", "case": label, "ms": first},
        {"read": "stats(ready_at), next calls", "case": label, "ms": again},
    ]


def _peek_row(url: str, port: int, messages: int, body_bytes: int, reps: int) -> dict[str, Any]:
    broker = RedisBroker(f"{url}?prefix=p{body_bytes}")
    raw = redis.Redis(port=port)
    try:
        for start in range(0, messages, 50):
            made = [_message(body_bytes) for _ in range(min(50, messages - start))]
            broker.send([Outgoing(task_id, "big", body) for task_id, body in made])
        raw.slowlog_reset()
        raw.config_set("slowlog-log-slower-than", 0)
        read = len(broker.peek("big", 10_000))
        wall = _median_ms(lambda: broker.peek("big", 10_000), reps)
        scripts = [e["duration"] / 1000 for e in raw.slowlog_get(128) if b"EVALSHA" in e["command"]]
    finally:
        raw.config_set("slowlog-log-slower-than", 10_000)
        raw.close()
        broker.close()
    return {
        "read": "peek(limit 10,000)",
        "case": f"{messages} messages of {body_bytes:,} B: {read} read",
        "ms": wall,
        "script_ms": statistics.median(scripts) if scripts else None,
    }


def main() -> None:
    """Run the measurements, print the table, write the result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=300)
    parser.add_argument("--body-kb", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    body = args.body_kb * 1024
    with redis_server() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        rows = _stats_rows(url, args.queues, 200, args.reps)
        rows += _stats_rows(url, args.queues, body, args.reps)
        rows.append(_peek_row(url, port, 500, body, args.reps))
        rows.append(_peek_row(url, port, 500, 200, args.reps))
    width = max(len(r["case"]) for r in rows)
    print(f"{'read':30} {'case':{width}} {'median ms':>10} {'script ms':>10}")
    for r in rows:
        script = r.get("script_ms")
        shown = f"{script:10.1f}" if script is not None else f"{'':10}"
        print(f"{r['read']:30} {r['case']:{width}} {r['ms']:10.1f} {shown}")
    RESULTS.mkdir(exist_ok=True)
    name = f"{dt.date.today().isoformat()}-operator-reads.json"
    (RESULTS / name).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"written: benchmarks/results/{name}")


if __name__ == "__main__":
    main()
