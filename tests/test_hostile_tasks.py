"""Tasks that misbehave toward the worker process running them, in real workers: each
ends with a clear outcome, no other task is lost or run twice, and the worker consumes
on."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, Reject, Task, TaskFailed, TimeLimitExceeded
from celeriac.testing import wait_for
from tests.apps import hostile
from tests.conftest import ROOT, Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

APP = "tests.apps.hostile"


@pytest.fixture
def hostile_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.hostile's app on this test's broker (the one `workers` use)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(hostile.app.conf, "broker_url", broker_url)
    yield hostile.app
    hostile.app.broker.close()


@pytest.mark.parametrize(
    ("pool", "task"),
    [
        ("process", hostile.stops_its_helper),
        ("threads", hostile.stops_its_helper),
        ("asyncio", hostile.stops_its_helper_async),
    ],
    ids=["process", "threads", "asyncio"],
)
def test_a_helper_a_task_forks_stops_at_sigterm_and_leaves_the_child_alone(
    hostile_app: Celeriac,
    workers: WorkerProcesses,
    ledger: Ledger,
    pool: str,
    task: Task[Any, Any],
) -> None:
    # A helper forked by multiprocessing is a copy of the worker child, signal handlers
    # and all: its terminate() (SIGTERM) ran the child's warm-shutdown handler in the
    # helper, which went on running, gave back the messages the child had prefetched (the
    # child ran them all the same: twice), and renewed leases and heartbeats as an
    # orphaned child.
    helper_user = task.delay()
    prefetched = hostile.add.delay(1, 1)  # taken with it: held by the child meanwhile
    env = {"CELERIAC_WORKER_PREFETCH_MULTIPLIER": "2", "CELERIAC_WORKER_BATCH_MAX": "1"}
    workers.start("-P", pool, "-c", "1", app=APP, env=env)
    assert helper_user.get(timeout=30) == -15, workers.log_text()  # ended by its SIGTERM
    assert prefetched.get(timeout=20) == 2
    assert ledger.count("run") == {helper_user.id: 1, prefetched.id: 1}
    log = workers.log_text()
    assert "gives back" not in log and "lost" not in log, log


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_task_that_closes_its_childs_descriptors_fails_once_and_the_worker_goes_on(
    hostile_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, tmp_path: Path, pool: str
) -> None:
    # os.closerange(3, ...) closed the child's broker connection and its memory gauge: the
    # child crashed after the task, which ran 5 times and was dead-lettered as a crash (and
    # with the gauge alone fixed, a SQLite child failed every later call: "locking
    # protocol", consuming nothing ever again).
    workers.start("-P", pool, "-c", "1", app=APP)
    closer = hostile.closes_descriptors.delay(str(tmp_path / "own.log"))
    with pytest.raises(OSError, match=r"closes_descriptors\[.*\] closed file descriptors it"):
        closer.get(timeout=30)
    assert hostile.add.delay(2, 3).get(timeout=20) == 5  # a fresh child serves
    assert ledger.count("run")[closer.id] == 1
    log = workers.log_text()
    assert f"task {hostile.closes_descriptors.name}[{closer.id}] closed file" in log, log
    assert "died" not in log and "crashed" not in log, log


@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_an_error_that_cannot_be_compared_or_shown_is_the_tasks_failure_once(
    hostile_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # Storing an error compares its args with its text: for a single numpy array or
    # DataFrame argument that comparison raises ("truth value ... is ambiguous"), and a
    # BaseException's repr() was called unguarded. Either crashed the child after the task
    # (run 5 times, dead-lettered as a crash; in -P asyncio dead-lettered at once, blamed
    # on the worker).
    workers.start("-P", pool, "-c", "1", app=APP)
    is_async = pool == "asyncio"
    table = (hostile.rejects_table_async if is_async else hostile.rejects_table).delay()
    base = (hostile.raises_unshowable_async if is_async else hostile.raises_unshowable).delay()
    with pytest.raises(ValueError, match="<Table 3x2>"):
        table.get(timeout=30)
    with pytest.raises(TaskFailed, match=r"tests.apps.hostile.Unshowable: the task raised"):
        base.get(timeout=30)
    assert ledger.count("run") == {table.id: 1, base.id: 1}
    assert not hostile_app.broker.dead_letters()
    assert "died" not in workers.log_text()


def test_a_task_that_closes_replaces_stdout_or_moves_leaves_later_tasks_as_they_were(
    hostile_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, tmp_path: Path
) -> None:
    # Process-wide state one task changed stayed for every later task of its child: after
    # a closed sys.stdout, the next task that printed failed ("I/O operation on closed
    # file"); after sys.stdout = open(os.devnull), what later tasks printed was lost; after
    # os.chdir, later tasks ran in that folder (relative paths, lazy imports).
    workers.start("-c", "1", app=APP)
    assert hostile.closes_stdout.delay().get(timeout=20) == "closed"
    first = hostile.prints_where.delay("printed after a task closed stdout")
    assert first.get(timeout=20) == str(ROOT)  # the worker's folder
    assert hostile.silences_stdout.delay().get(timeout=20) == "silenced"
    assert hostile.moves_to.delay(str(tmp_path)).get(timeout=20) == str(tmp_path)
    second = hostile.prints_where.delay("printed after a task silenced stdout")
    assert second.get(timeout=20) == str(ROOT)
    assert wait_for(lambda: "printed after a task silenced stdout" in workers.log_text())
    log = workers.log_text()
    assert "printed after a task closed stdout" in log, log
    closer = f"task {hostile.closes_stdout.name}"
    assert f"{closer}" in log and "closed sys.stdout; this child's own is put back" in log, log
    assert "changed this child's working directory" in log, log


@pytest.mark.parametrize("pool", ["threads", "asyncio"])
def test_a_task_that_closes_stdout_fails_no_later_task_in_any_pool(
    hostile_app: Celeriac, workers: WorkerProcesses, pool: str
) -> None:
    workers.start("-P", pool, "-c", "1", app=APP)
    assert hostile.closes_stdout.delay().get(timeout=20) == "closed"
    assert hostile.prints_where.delay("printed after").get(timeout=20) == str(ROOT)
    assert wait_for(lambda: "printed after" in workers.log_text())


@pytest.mark.parametrize(
    ("pool", "task"),
    [("process", hostile.blocks_sigterm), ("asyncio", hostile.blocks_sigterm_async)],
    ids=["process", "asyncio"],
)
def test_a_warm_shutdown_ends_after_a_task_that_blocked_sigterm(
    hostile_app: Celeriac,
    workers: WorkerProcesses,
    ledger: Ledger,
    pool: str,
    task: Task[Any, Any],
) -> None:
    # The task blocked SIGTERM in the child's main thread (pthread_sigmask) and returned:
    # the warm shutdown's SIGTERM stayed pending for ever, the child consumed on, and the
    # supervisor waited for it for ever.
    proc = workers.start("-P", pool, "-c", "1", app=APP)
    result = task.delay(1.0)
    assert wait_for(lambda: ledger.count("run")[result.id] == 1, timeout=20)
    proc.send_signal(signal.SIGTERM)  # once: a second one is a cold shutdown
    assert proc.wait(timeout=30) == 0
    assert result.get(timeout=5) == "blocked"
    assert f"task {task.name}[{result.id}] blocked this child's SIGTERM" in workers.log_text()


def test_a_task_delivered_at_most_once_killed_at_its_hard_limit_fails_with_that_limit(
    hostile_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The hard limit's verdict is read by the delivery after the kill, which for a task
    # with max_deliveries=1 is over its limit: it was dead-lettered as "started 1 times
    # without finishing (the worker crashed...)", a Reject in a dead-letter queue that a
    # replay would run again, and the verdict was left behind in the store.
    workers.start("-c", "1", app=APP)
    result = hostile.at_most_once_hangs.delay()
    with pytest.raises(TimeLimitExceeded, match=r"ran past its hard time limit \(1s\)"):
        result.get(timeout=30)
    assert ledger.count("run") == {result.id: 1}
    assert not hostile_app.broker.dead_letters()
    # Forgotten once settled: after the commit that get() saw.
    verdict = f"verdict:{result.id}"
    assert wait_for(lambda: hostile_app.broker.kv_get([verdict]) == [None], timeout=10)


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_task_that_kills_its_child_is_dead_lettered_saying_how_it_died(
    hostile_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # Its caller's error and its dead letter said only "the worker crashed, was killed or
    # lost its lease each time"; how the child died (SIGSEGV: C code; exit code 0: the
    # task's own os._exit) was in the worker's log alone.
    workers.start("-P", pool, "-c", "1", app=APP)
    crash, exit0 = hostile.segfaults.delay(), hostile.exits_quietly.delay()
    with pytest.raises(Reject, match=r"the last time, its worker child died \(killed by SIGSEGV"):
        crash.get(timeout=40)
    with pytest.raises(Reject, match=r"died \(exit code 0: os._exit\(0\) in the task\?\)"):
        exit0.get(timeout=40)
    assert ledger.count("run") == {crash.id: 2, exit0.id: 2}
    letters = {letter.id: letter for letter in hostile_app.broker.dead_letters()}
    assert "killed by SIGSEGV" in letters[crash.id].reason
    assert hostile.add.delay(1, 2).get(timeout=20) == 3


def test_an_asyncio_child_stops_without_waiting_for_ever_on_a_thread_a_task_left(
    hostile_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # asyncio.run's end joins the loop's default executor without a time limit (Python
    # 3.11): a blocking call a task left in a thread (its to_thread cancelled at a soft
    # limit, an HTTP request without a timeout) held the warm shutdown, or a recycle,
    # until it returned: here 120 s; for a hung call, for ever.
    proc = workers.start("-P", "asyncio", "-c", "1", app=APP)
    result = hostile.leaves_work_in_a_thread.delay(120)
    assert result.get(timeout=20) == "left"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = workers.log_text()
    assert f"handed to threads by {hostile.leaves_work_in_a_thread.name}[{result.id}]" in log, log


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_program_a_task_starts_can_be_interrupted(
    hostile_app: Celeriac, workers: WorkerProcesses, pool: str
) -> None:
    # A child ignored SIGINT, SIGQUIT and SIGHUP (SIG_IGN), and an ignored signal stays
    # ignored across exec: every program a task started did too, so a task that stopped
    # its helper with SIGINT (ffmpeg finishing its file, a Python script's
    # KeyboardInterrupt) waited on it for ever.
    workers.start("-P", pool, "-c", "1", app=APP)
    assert hostile.interrupts_its_helper.delay().get(timeout=20) == -signal.SIGINT


@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_generator_exit_from_a_plain_task_is_its_failure_in_every_pool(
    hostile_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # In -P asyncio a plain task runs in a thread and its outcome comes back through an
    # await, and a GeneratorExit raised through an await skips the awaiting coroutine's
    # handlers: the job was dead-lettered at once as "the worker failed while handling
    # it", blaming the worker.
    workers.start("-P", pool, "-c", "1", app=APP)
    result = hostile.raises_generator_exit.delay()
    with pytest.raises(TaskFailed, match=r"builtins.GeneratorExit: the task raised"):
        result.get(timeout=20)
    assert ledger.count("run") == {result.id: 1}
    assert not hostile_app.broker.dead_letters()
