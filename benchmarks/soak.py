"""Soak a real worker: does anything grow with the number of tasks it has run?

Starts a private redis-server (loopback, stopped by PID) or a fresh SQLite file, a worker
(``celeriac -A benchmarks.soak_app worker --beat``) and a producer process sending a
steady stream of small tasks, retries, failures, deduped and rate-limited tasks, and
waiting on some results. Every ``--every`` seconds it samples the supervisor's and each
child's RSS, open descriptors and threads, and the broker: Redis's clients, memory and
keys (grouped by shape, with the summed length of collections), or the SQLite file,
its -wal and each table's rows. Prints a table of first vs last sample, and writes every
sample to ``benchmarks/results/soak-<broker>-<pool>-<time>.json``.

    PYTHONPATH=src python -m benchmarks.soak --broker redis --pool process --minutes 5

Results expire after ``SOAK_RESULT_EXPIRES`` (60 s here), so after the first minute a
store that keeps only what it should is flat; what still climbs grows with the tasks.
Stops every process it started by PID; never asserts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

import redis
from benchmarks.redis_server import redis_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
WORKER = [sys.executable, "-m", "celeriac", "-A", "benchmarks.soak_app", "worker", "--beat"]

PRODUCER = r"""
import itertools, sys, time
from benchmarks.soak_app import app, boom, deduped, flaky, limited, tiny, tiny_async
from celeriac.errors import CeleriacError

rate, pool = float(sys.argv[1]), sys.argv[2]
small = tiny_async if pool == "asyncio" else tiny
sent = waited = 0
for n in itertools.count():
    started = time.monotonic()
    handles = [small.delay(n * 10 + i) for i in range(6)]
    flaky.delay(n)
    boom.delay(n)
    deduped.apply_async((n,), dedupe_key=f"soak-{n}")
    limited.delay(n)
    sent += 10
    if n % 10 == 0:
        try:
            handles[0].get(timeout=30)
            waited += 1
        except CeleriacError as exc:
            print("wait failed:", exc, file=sys.stderr, flush=True)
    if n % 100 == 0:
        print(f"sent {sent} waited {waited}", flush=True)
    time.sleep(max(0.0, 10 / rate - (time.monotonic() - started)))
"""


def _proc_row(process: psutil.Process) -> dict[str, Any]:
    with process.oneshot():
        return {
            "pid": process.pid,
            "cmd": " ".join(process.cmdline()[-3:])[-40:],
            "rss_kib": process.memory_info().rss // 1024,
            "fds": process.num_fds(),
            "threads": process.num_threads(),
        }


def sample_processes(worker: psutil.Process) -> list[dict[str, Any]]:
    """The supervisor first, then every descendant (children, the scheduler)."""
    rows = []
    for process in [worker, *worker.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            rows.append(_proc_row(process))
    return rows


_SHAPES = [
    (re.compile(rb"\{[^}]*\}"), b"{*}"),
    (re.compile(rb"[^\x20-\x7e]+"), b"~"),
    (re.compile(rb"[0-9a-f]{8}-[0-9a-f-]{27}"), b"<uuid>"),
    (re.compile(rb"\d+"), b"N"),
]


def key_shape(key: bytes) -> str:
    """``celeriac:r:{<id>}`` and its kin, with ids and numbers folded."""
    for pattern, repl in _SHAPES:
        key = pattern.sub(repl, key)
    return key.decode("ascii", "replace")


_LENGTH = {b"hash": "hlen", b"list": "llen", b"set": "scard", b"zset": "zcard", b"stream": "xlen"}


def sample_redis(url: str) -> dict[str, Any]:
    """Clients, memory, and keys by shape: count, count without TTL, summed length."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info()
        shapes: Counter[str] = Counter()
        no_ttl: Counter[str] = Counter()
        length: Counter[str] = Counter()
        for key in client.scan_iter(count=1000):
            shape = key_shape(key)
            shapes[shape] += 1
            pipe = client.pipeline(transaction=False)
            pipe.type(key)
            pipe.ttl(key)
            kind, ttl = pipe.execute()
            if ttl == -1:
                no_ttl[shape] += 1
            command = _LENGTH.get(kind)
            if command:
                length[shape] += int(getattr(client, command)(key))
        return {
            "clients": info["connected_clients"],
            "used_memory_kib": info["used_memory"] // 1024,
            "keys": sum(shapes.values()),
            "shapes": dict(shapes),
            "no_ttl": dict(no_ttl),
            "lengths": dict(length),
        }
    finally:
        client.close()


def sample_sqlite(path: Path) -> dict[str, Any]:
    """The file, its -wal and each table's row count."""
    sizes = {
        suffix or "db": (path.with_name(path.name + suffix).stat().st_size // 1024)
        if path.with_name(path.name + suffix).exists()
        else 0
        for suffix in ("", "-wal")
    }
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()
    return {"db_kib": sizes["db"], "wal_kib": sizes["-wal"], "rows": rows}


@contextlib.contextmanager
def broker_url(kind: str) -> Iterator[str]:
    """A private redis-server's URL, or a fresh SQLite file's."""
    if kind == "redis":
        with redis_server() as url:
            yield url
    else:
        folder = Path(tempfile.mkdtemp(prefix="soak-sqlite-"))
        yield f"sqlite:///{folder / 'soak.db'}"


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its PID; SIGKILL after 20 s."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def soak(args: argparse.Namespace, url: str, folder: Path) -> list[dict[str, Any]]:
    """Run the worker and the producer for ``args.minutes``; return the samples."""
    env = dict(os.environ, CELERIAC_BROKER_URL=url, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    worker_log = (folder / "worker.log").open("wb")
    producer_log = (folder / "producer.log").open("wb")
    worker = subprocess.Popen(
        [*WORKER, "-P", args.pool, "-c", str(args.concurrency)],
        cwd=ROOT,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    time.sleep(3)
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(args.rate), args.pool],
        cwd=ROOT,
        env=env,
        stdout=producer_log,
        stderr=subprocess.STDOUT,
    )
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            row: dict[str, Any] = {"t": round(time.monotonic() - started, 1)}
            row["processes"] = sample_processes(psutil.Process(worker.pid))
            row["broker"] = (
                sample_redis(url)
                if args.broker == "redis"
                else sample_sqlite(Path(url.removeprefix("sqlite:///")))
            )
            row["log_bytes"] = (folder / "worker.log").stat().st_size
            samples.append(row)
            print(_brief(row), flush=True)
            if worker.poll() is not None or producer.poll() is not None:
                print("a process ended early; see", folder)
                break
    finally:
        stop(producer)
        stop(worker)
    return samples


def _brief(row: dict[str, Any]) -> str:
    sup = row["processes"][0]
    kids = " ".join(
        f"{p['rss_kib'] // 1024}M/{p['fds']}/{p['threads']}" for p in row["processes"][1:]
    )
    broker = row["broker"]
    if "clients" in broker:
        b = f"clients {broker['clients']} keys {broker['keys']} mem {broker['used_memory_kib']}K"
    else:
        b = f"db {broker['db_kib']}K wal {broker['wal_kib']}K rows {sum(broker['rows'].values())}"
    return (
        f"{row['t']:>6}s sup {sup['rss_kib'] // 1024}M/{sup['fds']}/{sup['threads']} "
        f"kids {kids} | {b} | log {row['log_bytes'] // 1024}K"
    )


def report(samples: list[dict[str, Any]]) -> str:
    """First vs last sample, per process slot and per broker measure."""
    first, last = samples[0], samples[-1]
    lines = [f"{'measure':48} {'start':>10} {'end':>10}"]
    for i, (a, b) in enumerate(zip(first["processes"], last["processes"], strict=False)):
        who = "supervisor" if i == 0 else f"child {i} ({b['cmd'][-16:]})"
        for field in ("rss_kib", "fds", "threads"):
            lines.append(f"{who + ' ' + field:48} {a[field]:>10} {b[field]:>10}")
    fb, lb = first["broker"], last["broker"]
    for field in ("clients", "used_memory_kib", "keys", "db_kib", "wal_kib"):
        if field in fb:
            lines.append(f"{field:48} {fb[field]:>10} {lb[field]:>10}")
    for group in ("shapes", "lengths", "no_ttl", "rows"):
        for name in sorted(set(fb.get(group, {})) | set(lb.get(group, {}))):
            a, b = fb.get(group, {}).get(name, 0), lb.get(group, {}).get(name, 0)
            lines.append(f"{(group + ' ' + name)[:48]:48} {a:>10} {b:>10}")
    lines.append(f"{'worker log bytes':48} {first['log_bytes']:>10} {last['log_bytes']:>10}")
    return "\n".join(lines)


def main() -> None:
    """Parse the options, soak, print the table and write the result file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--pool", choices=["process", "threads", "asyncio"], default="process")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rate", type=float, default=100.0, help="tasks sent per second")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    args = parser.parse_args()
    args.minutes = min(args.minutes, 8.0)  # a soak is bounded: the host is shared
    folder = Path(tempfile.mkdtemp(prefix=f"soak-{args.broker}-{args.pool}-"))
    with broker_url(args.broker) as url:
        samples = soak(args, url, folder)
    print(report(samples))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{args.broker}-{args.pool}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "logs": str(folder), "samples": samples}))
    print("samples:", out, "| logs:", folder)


if __name__ == "__main__":
    main()
