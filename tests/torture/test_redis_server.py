"""Scenarios 8, 9 and 10: the Redis server itself is killed, flushed of scripts, or full.

Each runs its own private redis-server (tests.redis_server.start_redis) so that killing,
flushing or filling it touches no other test; each is stopped by PID in ``finally``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import redis
from celeriac.errors import BrokerConnectionError, BrokerError
from celeriac.testing import wait_for
from tests.redis_server import start_redis
from tests.torture.conftest import Rig, RigFactory
from tests.torture.harness import LONG, Producer, scaled, summary_line

pytestmark = [pytest.mark.slow, pytest.mark.torture, pytest.mark.timeout(1800 if LONG else 120)]


class Load:
    """A producer thread: batches of jobs until stopped, retrying a failed batch with the
    same ids (idempotent enqueue) — as a producer that recovers by itself would."""

    def __init__(self, producer: Producer, prefix: str, batch: int = 10) -> None:
        self.producer = producer
        self.prefix = prefix
        self.batch = batch
        self.sent = 0
        self.failed_attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tests.torture.app import job

        n = 0
        while not self._stop.is_set() and n < 1_000_000:
            ids = [f"{self.prefix}-{n + i}" for i in range(self.batch)]
            messages = [job.message((0.002,), None, task_id=i) for i in ids]
            self.failed_attempts += self.producer.send_retrying(messages, attempts=400)
            n += self.batch
            self.sent = n
            time.sleep(0.02)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the producer thread did not stop"


@pytest.mark.parametrize("fsync", ["everysec", "always"])
def test_8_redis_killed_and_restarted_under_load(
    fsync: str, tmp_path: Path, rig_factory: RigFactory
) -> None:
    """Scenario 8: ``kill -9`` redis-server (AOF on, ``appendfsync`` everysec or always)
    while producers send and workers run, then restart it on the same port and files.

    Proves: workers and the producer recover by themselves (same processes, same broker
    objects). With ``always``: nothing acknowledged is lost, never two commits. With
    ``everysec``: what is lost is bounded by the last second (two when the disk is slow:
    Redis then delays the write) of acknowledged sends before the kill, and reported
    separately; a commit in that window may be undone, so the task may run and commit
    again — also reported. (A killed process loses nothing Redis already wrote to the
    page cache: everysec's loss window is a machine crash, which this cannot simulate.)
    """
    folder = tmp_path / "redis"
    options = ("--appendfsync", fsync)
    server = start_redis(folder, appendonly=True, extra=options)
    try:
        rig = rig_factory(f"{server.url}?prefix=s8")
        for _ in range(2):
            rig.workers.start("-c", "2", wait=False)
        for proc in rig.workers.started:
            rig.workers.wait_ready(proc)
        kills = scaled(1, 5)
        kill_times: list[float] = []
        with Load(rig.producer, "s8") as load:
            for _ in range(kills):
                time.sleep(1.5)
                kill_times.append(time.time())
                server.kill()
                time.sleep(0.5)
                server = start_redis(folder, port=server.port, appendonly=True, extra=options)
            time.sleep(1.5)
        assert all(p.poll() is None for p in rig.workers.started), "a worker died"
        report = rig.oracle.report(timeout=scaled(60, 300))
        acked_at = {x["id"]: x["t"] for x in rig.ledger.phase("sendack")}
        in_window = _within_window(report.lost, acked_at, kill_times)
        undone = _within_window(list(report.double_commits), _first_commit(rig), kill_times)
        summary_line(
            f"8 redis kill -9 ({fsync})",
            report,
            kills=kills,
            sent=load.sent,
            failed_send_attempts=load.failed_attempts,
            lost_acked=len(report.lost),
            undone_commits=len(report.double_commits),
        )
        assert load.failed_attempts > 0, "the producer never saw the outage"
        assert not report.unexpected and not report.foreign_tokens
        if fsync == "always":
            report.assert_safe()
        else:
            assert in_window == report.lost, "a loss older than AOF everysec's window"
            assert undone == sorted(report.double_commits), "a second commit outside the window"
        assert len(report.terminal) >= len(report.acked) - len(report.lost)
    finally:
        server.stop()


def _first_commit(rig: Rig) -> dict[str, float]:
    first: dict[str, float] = {}
    for line in rig.ledger.phase("commit"):
        first.setdefault(line["id"], line["t"])
    return first


def _within_window(ids: list[str], times: dict[str, float], kills: list[float]) -> list[str]:
    """The ids whose time falls in the 2 s before a kill (everysec's window, slow disk)."""
    return sorted(i for i in ids if any(k - 2.0 <= times.get(i, 0) <= k for k in kills))


def test_9_script_flush_mid_load(tmp_path: Path, rig_factory: RigFactory) -> None:
    """Scenario 9: ``SCRIPT FLUSH`` repeatedly while tasks flow.

    Proves: every client reloads its scripts on NOSCRIPT (also inside pipelines) and the
    operation it was doing happens exactly once: nothing lost, nothing run twice.
    """
    server = start_redis(tmp_path / "redis")
    client = redis.Redis(port=server.port)
    try:
        rig = rig_factory(f"{server.url}?prefix=s9")
        for _ in range(2):
            rig.workers.start("-c", "2", wait=False)
        for proc in rig.workers.started:
            rig.workers.wait_ready(proc)
        tasks, flushes = scaled(600, 6000), scaled(8, 40)
        rig.producer.jobs((f"s9-{i}" for i in range(tasks)), pause=0.005, batch=20)
        for _ in range(flushes):
            time.sleep(0.25)
            client.script_flush()
        report = rig.oracle.report(timeout=scaled(60, 300))
        noscript = client.info("commandstats").get("cmdstat_evalsha", {}).get("failed_calls", 0)
        summary_line("9 script flush", report, flushes=flushes, noscript_replies=noscript)
        report.assert_safe()
        assert noscript > 0, "no client ever met NOSCRIPT"
        assert report.duplicates == {1: tasks}
    finally:
        client.close()
        server.stop()


def test_10_redis_at_maxmemory_with_noeviction(tmp_path: Path, rig_factory: RigFactory) -> None:
    """Scenario 10: fill Redis to ``maxmemory`` (``noeviction``) with queued work while
    workers run tasks longer than their lease.

    Proves: a send that does not fit fails with an error naming the cause (not a
    connection error, not silence); workers keep running and finish their tasks; no key
    is evicted; once memory is freed everything completes — nothing lost.
    """

    server = start_redis(tmp_path / "redis", extra=("--maxmemory-policy", "noeviction"))
    client = redis.Redis(port=server.port)
    try:
        rig = rig_factory(f"{server.url}?prefix=s10")
        rig.workers.start("-c", "2")
        long_ids = rig.producer.jobs([f"s10-long-{i}" for i in range(2)], pause=5.0)
        assert wait_for(lambda: len(rig.ledger.count("start")) == 2, timeout=20)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 2 * 1024 * 1024)
        # Ballast: queued work on a queue nobody consumes yet, 20 kB each, until refused
        # three times in a row (memory hovers at the limit: a refusal is decided by the
        # memory in use when the command arrives).
        refused = _fill(rig.producer, limit=600)
        assert len(refused) >= 3, "Redis never refused a send"
        for error in refused.values():
            assert not isinstance(error, BrokerConnectionError)
            assert "maxmemory" in str(error) and "is full" in str(error), str(error)
            assert "raise maxmemory" in str(error), str(error)  # says what to do
        # The workers keep running their tasks (longer than a lease) while Redis is full.
        assert wait_for(lambda: len(rig.ledger.count("end")) == 2, timeout=20)
        starts_while_full = dict(rig.ledger.count("start"))
        client.config_set("maxmemory", 0)
        rig.workers.start("-c", "2", "-Q", "ballast")
        report = rig.oracle.report(timeout=60)
        evicted = int(client.info("stats")["evicted_keys"])
        summary_line(
            "10 maxmemory",
            report,
            ballast_sent=sum(1 for i in report.acked if i.startswith("s10-ballast")),
            refused=len(refused),
            evicted_keys=evicted,
            error=str(next(iter(refused.values())))[:120],
        )
        assert evicted == 0
        assert not set(refused) & (report.acked | set(report.terminal)), "half a send"
        report.assert_safe()
        assert all(n == 1 for n in starts_while_full.values()), starts_while_full
        assert report.executions[long_ids[0]] == 1 and report.executions[long_ids[1]] == 1
        assert set(report.duplicates) == {1}, report.duplicates
    finally:
        client.close()
        server.stop()


def _fill(producer: Producer, limit: int) -> dict[str, BrokerError]:
    """Send ballast until three sends in a row are refused; the refused ids and errors."""
    from tests.torture.app import job

    pad = "x" * 20_000
    refused: dict[str, BrokerError] = {}
    streak = 0
    for n in range(limit):
        task_id = f"s10-ballast-{n}"
        try:
            producer.send([job.message((0.0, pad), None, task_id=task_id, queue="ballast")])
            streak = 0
        except BrokerError as exc:
            refused[task_id] = exc
            streak += 1
            if streak == 3:
                break
    return refused
