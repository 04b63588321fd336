"""One measurement of one system, run in that system's interpreter.

Usage (the runner does this; by hand it is handy for debugging one adapter)::

    python -m benchmarks.driver '{"system": "celery", "op": "enqueue", "n": 2000,
        "batch": false, "redis": "redis://127.0.0.1:6390/0"}'

The last line of output is ``BENCH_RESULT {json}``: the measured values, or an error.
Every wait is bounded; every worker process started here is stopped by PID in a
``finally`` block.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from benchmarks.common import Workers, percentile, redis_cpu_seconds
from benchmarks.probes import STAMPS_KEY, completion_times, completions, now, stamps_url

ROOT = Path(__file__).resolve().parent.parent
MARKER = "BENCH_RESULT "
WARMUP_TASKS = 4  # tasks run before idle memory is read: every child has started
LATENCY_WARMUP = 10  # probes sent before the timed ones, and not counted
BROKER_MEMORY_WARMUP = 100  # tasks queued before used_memory is first read


class Run:
    """The parameters of one measurement and what it needs: clients, env, workers."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.system: str = params["system"]
        self.redis_url: str = params["redis"]
        self.broker_url: str = params.get("broker") or self.redis_url
        self.stamps = redis.Redis.from_url(stamps_url(self.redis_url))
        self.server = redis.Redis.from_url(self.redis_url)
        self.log = Path(params.get("log") or Path(tempfile.gettempdir()) / "bench-worker.log")
        # The tasks count themselves here (benchmarks.probes); removed by close().
        fd, self.counter_file = tempfile.mkstemp(prefix="bench-done-")
        os.close(fd)
        self.env = {
            **os.environ,
            "BENCH_BROKER_URL": self.broker_url,
            "BENCH_COUNTER_FILE": self.counter_file,
            "BENCH_STAMPS_URL": stamps_url(self.redis_url),
            "CELERIAC_BROKER_URL": self.broker_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        os.environ.update(self.env)  # the adapter reads the broker URL when it is imported
        self.adapter = importlib.import_module(f"benchmarks.adapters.{self.system}").ADAPTER

    def flush(self) -> None:
        """Empty the private Redis (both databases) and the counter file, and remove a
        SQLite broker's files."""
        self.server.flushall(asynchronous=False)
        os.truncate(self.counter_file, 0)
        path = sqlite_path(self.broker_url)
        if path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the counter file."""
        Path(self.counter_file).unlink(missing_ok=True)

    def done(self) -> int:
        """How many tasks have counted themselves since the last flush."""
        return completions(self.counter_file)

    def workers(self, *, processes: int = 2, pool: str = "default") -> Workers:
        """The worker processes for this system (not started yet).

        ``processes`` is the 2-process budget; for celeriac's process pool it is ``-c``.
        """
        commands = self.adapter.worker_commands(processes, pool)
        return Workers(commands, self.env, self.log, ROOT)

    def wait_count(self, count: int, workers: Workers, timeout: float) -> None:
        """Wait until ``count`` tasks have counted themselves (bounded by ``timeout``)."""
        deadline = now() + timeout
        while self.done() < count:
            workers.check_alive()
            if now() > deadline:
                raise TimeoutError(
                    f"{count} warm-up tasks not done in {timeout}s:\n{workers.tail()}"
                )
            time.sleep(0.01)


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///path`` URL, or None for other brokers."""
    if not url.startswith("sqlite:///"):
        return None
    return url[len("sqlite:///") :].split("?", 1)[0]


def op_enqueue(run: Run) -> dict[str, Any]:
    """Enqueue ``n`` tasks, one call each or through the batch API; the rate."""
    p = run.params
    run.flush()
    data = "x" * p["data_size"] if p.get("data_size") else None
    task = "payload" if data else "noop"
    seconds = run.adapter.enqueue(p["n"], batch=p.get("batch", False), task=task, data=data)
    return {"rate": p["n"] / seconds, "seconds": seconds}


def op_drain(run: Run) -> dict[str, Any]:
    """Queue ``n`` tasks, start the workers, clock until the n-th completion.

    Returns:
        ``rate``: n over the time from worker start to the last completion (start-up
        included, as a deploy or an autoscaler sees it); ``steady``: the rate between the
        first and the last completion; ``startup``: seconds to the first completion.
    """
    p = run.params
    n, task = p["n"], p.get("task", "noop")
    run.flush()
    data = "x" * p["data_size"] if p.get("data_size") else None
    if data:
        task = "payload"
    # Filling the queue is not timed: use the fastest way the system has.
    run.adapter.enqueue(n, batch=run.adapter.batch is not None, task=task, data=data)
    run.adapter.close()
    workers = run.workers(processes=p.get("concurrency", 2), pool=p.get("pool", "default"))
    timeout = float(p.get("timeout", 600))
    try:
        started = workers.start()
        deadline = started + timeout
        # CPU is read once the first task is done, so start-up (imports, forks) is not
        # spread over the tasks: what is left is the cost of moving a task.
        while run.done() == 0:
            workers.check_alive()
            if now() > deadline:
                raise TimeoutError(f"drain: no task done after {timeout}s:\n{workers.tail()}")
            time.sleep(0.002)
        cpu_before = (workers.cpu_seconds(), redis_cpu_seconds(run.server))
        done_before = run.done()
        # Polled, not waited on: the times come from the records, so the poll's period
        # only delays reading the CPU counters, which stand still once the queue is empty.
        while (done := run.done()) < n:
            workers.check_alive()
            if now() > deadline:
                raise TimeoutError(f"drain: {done}/{n} done after {timeout}s:\n{workers.tail()}")
            time.sleep(0.005)
        cpu_after = (workers.cpu_seconds(), redis_cpu_seconds(run.server))
    finally:
        workers.stop(run.adapter.stop_grace)
    times = completion_times(run.counter_file)
    first, last = times[0], times[n - 1]
    measured = max(n - done_before, 1)
    return {
        "rate": n / (last - started),
        "steady": (n - 1) / (last - first) if last > first else None,
        "startup": first - started,
        "seconds": last - started,
        "cpu_us_workers": 1e6 * (cpu_after[0] - cpu_before[0]) / measured,
        "cpu_us_redis": 1e6 * (cpu_after[1] - cpu_before[1]) / measured,
    }


def op_idle(run: Run) -> dict[str, Any]:
    """Start the workers, let them settle, read their memory; then latency probes.

    Memory: RSS, PSS and USS summed over every worker process, after ``WARMUP_TASKS``
    tasks ran and a second passed. Latency: ``n`` probes sent one at a time, each after
    the previous one started, so at most one is in flight (low load); at most
    ``latency_budget`` seconds of them.
    """
    p = run.params
    run.flush()
    run.adapter.connect()
    workers = run.workers(processes=p.get("concurrency", 2))
    try:
        workers.start()
        for i in range(WARMUP_TASKS):
            run.adapter.send("noop", i)
        run.wait_count(WARMUP_TASKS, workers, timeout=120)
        time.sleep(1.0)
        memory = workers.memory()
        wait = started_waiter(run, workers)
        run.adapter.latency(LATENCY_WARMUP, wait, budget=p.get("latency_budget", 60) / 4)
        latencies = run.adapter.latency(p["n"], wait, budget=p.get("latency_budget", 60))
    finally:
        workers.stop(run.adapter.stop_grace)
        run.adapter.close()
    ms = [1000 * x for x in latencies]
    return {
        **memory,
        "p50_ms": percentile(ms, 0.50),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms),
        "probes": len(ms),
    }


def started_waiter(run: Run, workers: Workers) -> Callable[[], float]:
    """A function that waits for the next probe's start and returns its time."""

    def wait() -> float:
        deadline = now() + 30
        while True:
            item = run.stamps.blpop([STAMPS_KEY], timeout=1)
            if item is not None:
                return float(item[1])
            workers.check_alive()
            if now() > deadline:
                raise TimeoutError(f"a latency probe did not start in 30s:\n{workers.tail()}")

    return wait


def op_broker_memory(run: Run) -> dict[str, Any]:
    """Broker memory per queued task: the growth over ``n`` tasks, after a warm-up.

    The warm-up queues ``BROKER_MEMORY_WARMUP`` tasks first, so one-off costs (the queue's
    own key, cached Lua scripts, registries) are not spread over the tasks. On Redis the
    figure is ``used_memory``; on SQLite, the database file after a WAL checkpoint.
    """
    p = run.params
    run.flush()
    run.adapter.enqueue(BROKER_MEMORY_WARMUP, batch=False)
    before = broker_bytes(run)
    run.adapter.enqueue(p["n"], batch=False)
    after = broker_bytes(run)
    run.adapter.close()
    return {"bytes_per_task": (after - before) / p["n"], "keys": run.server.dbsize()}


def broker_bytes(run: Run) -> int:
    """Bytes the broker holds now: Redis ``used_memory``, or the SQLite file's size."""
    path = sqlite_path(run.broker_url)
    if path is None:
        return int(run.server.info("memory")["used_memory"])
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(path)


def op_group(run: Run) -> dict[str, Any]:
    """celeriac only: the time to send a group of ``n`` no-op tasks."""
    from benchmarks.adapters import celeriac as adapter

    run.flush()
    adapter.ADAPTER.connect()
    started = now()
    adapter.send_group(run.params["n"])
    seconds = now() - started
    return {"seconds": seconds, "rate": run.params["n"] / seconds}


def op_chord(run: Run) -> dict[str, Any]:
    """celeriac only: a chord of ``n`` no-ops and a body, sent to a running worker; the
    time from sending to the body's result."""
    from benchmarks.adapters import celeriac as adapter

    p = run.params
    run.flush()
    adapter.ADAPTER.connect()
    workers = run.workers(processes=p.get("concurrency", 2))
    try:
        workers.start()
        for i in range(WARMUP_TASKS):
            adapter.ADAPTER.send("noop", i)
        run.wait_count(WARMUP_TASKS, workers, timeout=120)
        started = now()
        count = adapter.run_chord(p["n"], timeout=float(p.get("timeout", 600)))
        seconds = now() - started
    finally:
        workers.stop(run.adapter.stop_grace)
    if count != p["n"]:
        raise RuntimeError(f"chord body got {count} results, expected {p['n']}")
    return {"seconds": seconds, "rate": p["n"] / seconds}


#: The distributions whose versions a result file pins, per system.
PACKAGES = {
    "celeriac": ("celeriac", "redis", "hiredis", "msgspec"),
    "celery": ("celery", "kombu", "redis", "hiredis"),
    "dramatiq": ("dramatiq", "redis", "hiredis"),
    "huey": ("huey", "redis", "hiredis"),
    "rq": ("rq", "redis", "hiredis"),
    "arq": ("arq", "redis", "hiredis"),
    "taskiq": ("taskiq", "taskiq-redis", "redis", "hiredis"),
}


def describe(system: str) -> dict[str, Any]:
    """The adapter's description and the versions of what it runs on (no Redis needed)."""
    os.environ.setdefault("BENCH_BROKER_URL", "redis://127.0.0.1:9/0")  # never connected
    adapter = importlib.import_module(f"benchmarks.adapters.{system}").ADAPTER
    versions: dict[str, str | None] = {}
    for name in PACKAGES[system]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "name": adapter.name,
        "results": adapter.results,
        "batch": adapter.batch,
        "pool": adapter.pool,
        "python": platform.python_version(),
        "versions": versions,
    }
    if system == "celeriac":
        from benchmarks.adapters import celeriac

        info["canvas"] = celeriac.canvas_available()
    return info


def op_floor(run: Run) -> dict[str, Any]:
    """What this Redis and this machine allow at all, in the same repetition as the
    systems: ``n`` plain redis-py ``RPUSH`` calls one at a time, and the same pipelined in
    batches of 1,000 (the issue's reference points: ~14,500/s and ~170,000/s)."""
    n = run.params["n"]
    run.flush()
    client = redis.Redis.from_url(run.redis_url)
    client.ping()
    started = time.perf_counter()
    for i in range(n):
        client.rpush("floor:single", i)
    single = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for lo in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(lo, min(lo + 1000, n)):
            pipe.rpush("floor:piped", i)
        pipe.execute()
    piped = n / (time.perf_counter() - started)
    client.close()
    return {"single": single, "piped": piped}


OPS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "floor": op_floor,
    "enqueue": op_enqueue,
    "drain": op_drain,
    "idle": op_idle,
    "broker_memory": op_broker_memory,
    "group": op_group,
    "chord": op_chord,
}


def main(argv: list[str]) -> int:
    """Run the measurement described by the JSON in ``argv[1]``; print its result."""
    params = json.loads(argv[1])
    try:
        if params["op"] == "describe":
            print(MARKER + json.dumps({"ok": True, **describe(params["system"])}), flush=True)
            return 0
        run = Run(params)
        try:
            result: dict[str, Any] = {"ok": True, **OPS[params["op"]](run)}
        finally:
            run.close()
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the runner as data
        result = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "trace": traceback.format_exc(),
        }
    print(MARKER + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
