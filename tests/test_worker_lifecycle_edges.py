"""A worker's start and stop at the edges: stopped while Redis is down, stopped twice, the
start-up warnings of a worker with a scheduler, and how a threads child waits for its
consumer threads. Real workers, real redis-servers stopped and restarted by PID."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.testing import wait_for
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.slow

#: Worker subprocesses import celeriac from the caller's PYTHONPATH first, when it sets one
#: (an old source tree, to check that these tests fail on the code they guard).
PYTHONPATH = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
#: A lease far longer than any wait below: a worker that waits for its lease to run out
#: before it stops cannot pass these tests by being merely slow.
# A lease the old code's wait could not outlast; heartbeats close together, so a second
# worker's reaper takes the stopped worker's message seconds after Redis is back (the
# default, 5 missed beats of 2 s, made each of these tests wait 10 s for it).
LONG_LEASE = {
    "CELERIAC_WORKER_LEASE_SECONDS": "600",
    "CELERIAC_WORKER_HEARTBEAT_SECONDS": "0.3",
    "PYTHONPATH": PYTHONPATH,
}


def _log(workers: WorkerProcesses, index: int) -> str:
    return workers.logs[index].read_text(errors="replace")


def _restart(server: RedisServer, folder: Path) -> RedisServer:
    """The same server again, same port and folder, its AOF read back."""
    server.stop()
    return start_redis(folder, port=server.port, appendonly=True)


@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_a_warm_stop_while_redis_is_down_is_prompt_and_the_task_runs_again(
    tmp_path: Path, pool: str
) -> None:
    folder = tmp_path / "redis"
    server = start_redis(folder, appendonly=True)
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = WorkerProcesses(server.url, ledger)
    sender = Celeriac("sender", broker=server.url)
    try:
        first = workers.start("-c", "1", "-P", pool, env=LONG_LEASE)
        result = sender.send_task("tests.apps.core.work", args=(1.0, "done"))
        assert wait_for(lambda: ledger.count("start")[result.id] == 1, timeout=30)
        sender.broker.close()
        server.stop()  # by PID; its AOF keeps the message, leased to the first worker
        first.send_signal(signal.SIGTERM)
        # The task ends a second later; its result cannot be stored. The worker gives up
        # on it after a few seconds, not after its 600 s lease.
        assert first.wait(timeout=90) == 0, workers.log_text()
        assert ledger.count("end")[result.id] == 1
        log = _log(workers, 0)
        assert "gave up on the broker" in log, log
        assert "(shutting down)" in log, log
        assert "stopped without reaching the broker" in log, log
        assert "runs again" in log, log

        server = _restart(server, folder)
        workers.start("-c", "1", "-P", pool, env={"PYTHONPATH": PYTHONPATH})
        assert result.get(timeout=90) == "done", workers.log_text()
        assert ledger.count("start")[result.id] == 2  # ran again: nothing was lost
    finally:
        sender.broker.close()
        workers.kill_all()
        server.stop()


def test_a_second_signal_during_a_slow_warm_shutdown_is_cold(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    server = start_redis(folder, appendonly=True)
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = WorkerProcesses(server.url, ledger)
    sender = Celeriac("sender", broker=server.url)
    try:
        first = workers.start("-c", "1", env=LONG_LEASE)
        # Sleeps 10 minutes on its first delivery only: the warm shutdown cannot end by itself.
        result = sender.send_task("tests.apps.core.slow_first_time", args=(600,))
        assert wait_for(lambda: ledger.count("start")[result.id] == 1, timeout=30)
        sender.broker.close()
        server.stop()
        first.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "warm shutdown" in _log(workers, 0), timeout=30)
        assert "slow_first_time" in _log(workers, 0)  # it names what it waits for
        first.send_signal(signal.SIGINT)  # Ctrl-C a second time
        assert first.wait(timeout=90) == 0, workers.log_text()
        log = _log(workers, 0)
        assert "cold shutdown" in log, log
        assert f"could not put back tests.apps.core.slow_first_time[{result.id}]" in log, log

        server = _restart(server, folder)
        workers.start("-c", "1", env={"PYTHONPATH": PYTHONPATH})
        assert result.get(timeout=90) == 2, workers.log_text()  # its second delivery
    finally:
        sender.broker.close()
        workers.kill_all()
        server.stop()


def test_a_worker_with_beat_warns_once_that_redis_persistence_is_off(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")  # --save '' --appendonly no
    workers = WorkerProcesses(server.url, Ledger(tmp_path / "ledger.txt"))
    try:
        proc = workers.start("-c", "3", "--beat", env={"PYTHONPATH": PYTHONPATH})
        workers.wait_children(proc, 4)  # three consumers and the scheduler
        # The scheduler has reached the broker (and checked it) once it reports its entries.
        assert wait_for(lambda: "beat: scheduling" in _log(workers, 0), timeout=30)
        assert wait_for(lambda: "recycle above" in _log(workers, 0), timeout=30)
        assert workers.stop(proc) == 0
        log = _log(workers, 0)
        assert log.count("has persistence off") == 1, log
    finally:
        workers.kill_all()
        server.stop()


def test_an_idle_threads_child_waits_for_its_threads_without_polling(
    tmp_path: Path,
) -> None:
    """Its main thread blocks until the consumer threads end, so a recycle (or a stop)
    goes on the moment they do. A poll (sleep 0.1 s, look again) woke it ten times a
    second and made every recycle wait for the poll."""
    server = start_redis(tmp_path / "redis")
    ledger = Ledger(tmp_path / "ledger.txt")
    workers = WorkerProcesses(server.url, ledger)
    sender = Celeriac("sender", broker=server.url)
    try:
        proc = workers.start("-c", "2", "-P", "threads", env={"PYTHONPATH": PYTHONPATH})
        (child,) = workers.wait_children(proc, 1)
        # Settled: its threads have started and run a task (start-up wakes the main thread).
        assert sender.send_task("tests.apps.core.add", args=(1, 2)).get(timeout=30) == 3
        before = _voluntary_switches(child)
        time.sleep(3)  # idle: the consumer threads wait on the broker, the main thread on them
        woken = _voluntary_switches(child) - before
        assert woken < 10, f"the main thread woke {woken} times in 3 s while idle"
        assert workers.stop(proc) == 0  # and a stop signal still reaches it
    finally:
        sender.broker.close()
        workers.kill_all()
        server.stop()


def _voluntary_switches(pid: int) -> int:
    """How often a process's main thread has gone to sleep (Linux /proc)."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("voluntary_ctxt_switches"))
    return int(line.split()[1])
