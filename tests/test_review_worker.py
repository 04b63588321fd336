"""The worker's life cycle at its edges, with real worker processes on SQLite: a child that
exits with code 0 inside a task, SIGQUIT (Ctrl-\\) and SIGHUP (a closed terminal), a
supervisor killed while a child runs a task that ignores its soft limit, a memory limit below
a fresh child's size, settle hooks that outlast a finished task's hard limit, bad
``celeriac worker`` arguments, and the supervisor's remote control on a dead broker or an
unreadable message.

The worker processes import this module (``-A tests.test_review_worker``) for its tasks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from celeriac import Celeriac, ConfigurationError, Task, TimeLimitExceeded
from celeriac.errors import SoftTimeLimitExceeded
from celeriac.middleware import Job, Middleware, Outcome, default_middleware
from celeriac.testing import wait_for
from celeriac.worker import Worker
from tests.apps.core import record
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import free_port

pytestmark = pytest.mark.slow

APP = "tests.test_review_worker"


class SlowSettleHook(Middleware):
    """An after_settle hook that takes 2 s for the task ``settles_slowly`` (events or a
    dedupe release on a slow broker)."""

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        if job.message is not None and job.message.task.endswith("settles_slowly"):
            time.sleep(2)
            record("hook-done", job.delivery.id)


app = Celeriac("review-worker", middleware=[*default_middleware(), SlowSettleHook()])


@app.bound_task(max_deliveries=2)
def exits_quietly(self: Task[Any, Any]) -> None:
    record("run", self.request.id, self.request.delivery_count)
    os._exit(0)  # a library's "clean" exit: the process vanishes with code 0 mid-task


@app.bound_task()
def work(self: Task[Any, Any], seconds: float) -> str:
    record("start", self.request.id)
    time.sleep(seconds)
    record("end", self.request.id)
    return "done"


@app.bound_task(soft_time_limit=0.3, time_limit=1.5)
def ignores_its_soft_limit(self: Task[Any, Any]) -> None:
    record("start", self.request.id, os.getpid())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(SoftTimeLimitExceeded):
            time.sleep(60)


@app.task(soft_time_limit=0.5, time_limit=1)
def settles_slowly() -> str:
    return "done"


@app.task
def add(x: int, y: int) -> int:
    return x + y


@pytest.fixture
def broker_url(sqlite_url: str) -> str:
    """SQLite only: what is tested here is the worker, the same on every broker."""
    return sqlite_url


@pytest.fixture
def review_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """This module's app on this test's broker (the one `workers` use)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    yield app
    app.broker.close()


@pytest.fixture
def workers(broker_url: str, ledger: Ledger, review_app: Celeriac) -> Iterator[WorkerProcesses]:
    """Worker processes running this module's tasks; all killed by PID at the end."""
    procs = WorkerProcesses(broker_url, ledger)
    yield procs
    procs.kill_all()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_child_that_exits_with_code_0_inside_a_task_is_reported_as_died(
    review_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # os._exit(0) inside a task used to pass for a child recycling: nothing in the log,
    # then a dead letter "the worker crashed" with no crash ever reported.
    workers.start("-c", "1", app=APP)
    result = exits_quietly.delay()
    # The limit is the task's own (max_deliveries=2): it was named task_max_deliveries=2,
    # a setting this app leaves at its default of 5.
    with pytest.raises(Exception, match="limit: the task's max_deliveries=2"):
        result.get(timeout=30)
    assert ledger.count("run")[result.id] == 2
    # The reason agrees with `dlq list`'s count of 3 deliveries: 2 runs, the 3rd not run.
    (letter,) = [d for d in review_app.broker.dead_letters(10) if d.id == result.id]
    assert letter.deliveries == 3
    assert "started 2 times without finishing" in letter.reason
    assert "this delivery, the 3rd, was not run" in letter.reason
    text = workers.log_text()
    assert f"while running: {exits_quietly.name}[{result.id}]" in text, text
    assert "died (exit code 0: os._exit(0) in the task?)" in text, text


def test_sigquit_is_a_cold_shutdown_that_gives_every_task_back_at_once(
    review_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Ctrl-\ signals the whole process group. Every process used to die on the spot:
    # nothing logged, the running tasks held until their leases expired (30 s).
    proc = workers.start("-c", "2", app=APP)
    children = workers.wait_children(proc, 2)
    results = [work.delay(60) for _ in range(4)]
    assert wait_for(lambda: len(ledger.count("start")) == 2, timeout=20)
    for pid in (proc.pid, *children):
        os.kill(pid, signal.SIGQUIT)
    assert proc.wait(timeout=20) == 0, workers.log_text()
    assert not [pid for pid in children if _alive(pid)]
    (stats,) = review_app.broker.stats()
    assert (stats.ready, stats.in_flight) == (4, 0), stats
    assert "cold shutdown" in workers.log_text()
    assert all(r.state == "PENDING" for r in results)


def test_a_cold_shutdown_puts_its_tasks_back_where_they_were(
    review_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # Killed by an operator's second signal, the running task (and what its child had
    # prefetched) did nothing wrong: they go back to the head of their queue, not behind
    # every message sent meanwhile, as they did at every deploy that ended cold.
    proc = workers.start("-c", "1", app=APP)
    workers.wait_children(proc, 1)
    first = work.delay(60)
    assert wait_for(lambda: ledger.count("start")[first.id] == 1, timeout=20)
    later = [work.delay(60) for _ in range(5)]
    os.kill(proc.pid, signal.SIGQUIT)
    assert proc.wait(timeout=20) == 0, workers.log_text()
    taken = review_app.broker.fetch(["default"], "t", limit=10, lease_seconds=30, timeout=1)
    assert [d.id for d in taken] == [first.id, *(r.id for r in later)]


def test_sighup_is_a_warm_shutdown(
    review_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # A closed terminal (an SSH session dropped without nohup) signals the whole process
    # group. Every process used to die on the spot, the running tasks held until their
    # leases expired; now the running tasks finish and the waiting ones go back at once.
    proc = workers.start("-c", "2", app=APP)
    children = workers.wait_children(proc, 2)
    results = [work.delay(1) for _ in range(4)]
    assert wait_for(lambda: len(ledger.count("start")) == 2, timeout=20)
    for pid in (proc.pid, *children):
        os.kill(pid, signal.SIGHUP)
    assert proc.wait(timeout=30) == 0, workers.log_text()
    assert not [pid for pid in children if _alive(pid)]
    assert sorted(r.state for r in results) == ["PENDING", "PENDING", "SUCCESS", "SUCCESS"]
    (stats,) = review_app.broker.stats()
    assert (stats.ready, stats.in_flight) == (2, 0), stats
    assert "warm shutdown" in workers.log_text()


def test_a_child_left_without_its_supervisor_still_obeys_its_hard_limit(
    review_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The supervisor enforces hard limits; when it was SIGKILLed (the OOM killer), a child
    # whose task ignored its soft limit ran on as an orphan for ever.
    proc = workers.start("-c", "1", app=APP)
    result = ignores_its_soft_limit.delay()
    assert wait_for(lambda: ledger.count("start")[result.id] == 1, timeout=20)
    (child,) = workers.children(proc)
    try:
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: not _alive(child), timeout=20), workers.log_text()
        workers.start("-c", "1", app=APP)
        with pytest.raises(TimeLimitExceeded, match=r"hard time limit \(1\.5s\)"):
            result.get(timeout=30)
        assert ledger.count("start")[result.id] == 1  # settled by its verdict, not run again
        assert "supervisor is gone" in workers.log_text()
    finally:
        _kill(child)


def test_a_memory_limit_below_a_fresh_childs_size_is_named_and_forks_no_idle_loop(
    review_app: Celeriac, workers: WorkerProcesses
) -> None:
    # A fresh child is already over 1 MiB. The asyncio child used to recycle after every
    # empty fetch (a fork every 0.2 s while idle) and nothing said the limit could not work.
    proc = workers.start("-P", "asyncio", "-c", "2", "--max-memory-per-child", "1", app=APP)
    (first,) = workers.wait_children(proc, 1)
    time.sleep(1.5)  # several empty fetches
    assert workers.children(proc) == [first], workers.log_text()
    text = workers.log_text()
    assert "recycling" not in text, text
    assert "below what a fresh child already uses" in text, text
    assert add.delay(2, 3).get(timeout=20) == 5  # it still serves (and recycles after that)


@pytest.mark.parametrize("pool", ["process", "asyncio"])
def test_a_finished_task_is_not_killed_for_its_slow_settle_hooks(
    review_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # The slot said "running" until the commit and its hooks were over: the supervisor
    # killed the child of a task that had succeeded in microseconds, as past its hard
    # limit, and cut the rest of its settle hooks (a dedupe key never released).
    proc = workers.start("-P", pool, "-c", "1", app=APP)
    (child,) = workers.wait_children(proc, 1)
    result = settles_slowly.delay()
    assert result.get(timeout=20) == "done"
    assert wait_for(lambda: ledger.count("hook-done")[result.id] == 1, timeout=20)
    assert "hard time limit" not in workers.log_text(), workers.log_text()
    assert workers.children(proc) == [child]


def test_a_queue_named_twice_is_served_once(sqlite_url: str) -> None:
    # -Q a,b,a: the heartbeat listed a twice, and SQLite handed each of its messages out
    # twice per fetch (the broker reads each queue once now too).
    worker = Worker(Celeriac("twice", broker=sqlite_url), ["a", "b", "a"], 1, pool="threads")
    assert worker.queues == ("a", "b")


def test_the_worker_refuses_no_children(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        Worker(Celeriac("zero", broker=sqlite_url), ["default"], 0, pool="threads")


@pytest.mark.parametrize(
    "args",
    [
        ["-Q", ""],
        ["-Q", " , "],
        ["-c", "0"],
        ["-c", "-1"],
        ["-P", "gevent"],
        ["--max-memory-per-child", "0"],
        ["--max-tasks-per-child", "0"],
    ],
)
def test_bad_worker_arguments_are_a_clear_error(sqlite_url: str, args: list[str]) -> None:
    env = {**os.environ, "CELERIAC_BROKER_URL": sqlite_url, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "celeriac", "-A", APP, "worker", *args]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # it started a worker instead: stop it warm
        output, _ = proc.communicate(timeout=20)
        pytest.fail(f"{args} started a worker:\n{output.decode()}")
    assert proc.returncode == 2, output.decode()
    assert b"Error: Invalid value" in output


# -- the supervisor's remote control -------------------------------------------------------


def test_remote_control_says_an_outage_once_not_at_every_poll(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # On a Redis Cluster outage the supervisor logged "could not read remote-control
    # messages" at every poll, twice a second, for the whole outage.
    from celeriac.worker import remote

    monkeypatch.setattr(remote, "_EVERY", 0.0)
    unreachable = Celeriac("remote", broker=f"redis://127.0.0.1:{free_port()}/0")
    polls = remote.Remote(unreachable, "w-remote", answer=lambda command: None)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        polls.poll()
        time.sleep(0.02)
    said = [r for r in caplog.records if "could not read remote-control" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    unreachable.broker.close()


def test_remote_control_skips_a_message_it_cannot_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One control entry with a non-string target (written by hand, or by another tool)
    # raised out of the supervisor's loop: every live worker exited.
    from celeriac.control import CONTROL
    from celeriac.worker import remote

    monkeypatch.setattr(remote, "_EVERY", 0.0)
    local = Celeriac("remote", broker="memory://")
    polls = remote.Remote(local, "w-remote", answer=lambda command: None)
    polls.poll()  # starts at the stream's tail
    local.broker.stream_append(CONTROL, [b'{"id": "x", "command": "ping", "target": 5}'], 100)
    local.broker.stream_append(CONTROL, [b'{"id": "y", "command": "shutdown"}'], 100)
    polls.poll()
    assert polls.shutdown_requested  # the readable command after it still counts
    assert "cannot read" in caplog.text


def test_a_huge_error_is_cut_in_the_log_and_kept_whole_in_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A task failing with a megabyte of text wrote a megabyte log line per failure.
    from celeriac.testing import run_queued

    local = Celeriac("huge-error", broker="memory://")

    @local.task(max_retries=0)
    def fails_loudly() -> None:
        raise ValueError("x" * 1_000_000)

    result = fails_loudly.delay()
    run_queued(local, fail_fast=False)
    (line,) = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(line) < 3_000 and "more characters in the result" in line
    with pytest.raises(ValueError) as raised:
        result.get(timeout=5)
    assert str(raised.value) == "x" * 1_000_000


def test_a_failing_supervisor_call_is_said_once_in_words(
    caplog: pytest.LogCaptureFixture, sqlite_url: str
) -> None:
    # With the broker down during a warm shutdown, the supervisor logged an ERROR per pass
    # naming its internals ("_heartbeat failed", "<lambda> failed").
    from celeriac.errors import BrokerConnectionError

    worker = Worker(Celeriac("quiet", broker=sqlite_url), ["default"], 1)

    def unreachable() -> None:
        raise BrokerConnectionError("Redis at redis://127.0.0.1:1/0 did not answer")

    for _ in range(5):
        worker._quietly(unreachable, "send its heartbeat")
    said = [r.getMessage() for r in caplog.records if "could not" in r.getMessage()]
    assert len(said) == 1, said
    assert f"worker {worker.id} could not send its heartbeat (Redis at" in said[0]
