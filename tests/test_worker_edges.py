"""The worker's edges, with real worker processes on SQLite: a soft limit only ever lands
in the task's own code, tasks that raise SystemExit or KeyboardInterrupt, results that
cannot be encoded, async tasks past their soft limit, and a stop signal in a fresh child's
first instant."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from celeriac import Celeriac, SoftTimeLimitExceeded, Task, TaskFailed
from celeriac.canvas import chain
from celeriac.testing import wait_for
from tests.apps import edges
from tests.conftest import Ledger, WorkerProcesses

pytestmark = pytest.mark.slow

APP = "tests.apps.edges"


@pytest.fixture
def broker_url(sqlite_url: str) -> str:
    """SQLite only: what is tested here is the worker, the same on every broker."""
    return sqlite_url


@pytest.fixture
def edges_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.edges's app on this test's broker (the one `workers` use)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(edges.app.conf, "broker_url", broker_url)
    yield edges.app
    edges.app.broker.close()


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_soft_limit_never_lands_in_middleware_and_survives_a_slow_hook(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # Each hook takes 0.3 s, three times the tasks' soft limit. The limit used to fire
    # inside a hook: swallowed there (a chain's next step unsent when the hook is Canvas),
    # and when it fired before the task, the task ran with no limit at all.
    workers.start("-P", pool, "-c", "1", app=APP, env={"CELERIAC_TEST_SLOW_HOOKS": "0.3"})
    result = chain(edges.quick.s(), edges.add.si(1, 1)).apply_async()
    assert result.get(timeout=20) == 2
    assert edges.sleeps.delay(3.0).get(timeout=20) == "cut short"
    assert not [p for p in ledger.lines() if p[0] == "hook-interrupted"]
    assert len([p for p in ledger.lines() if p[0] == "hook-done"]) == 6  # 3 tasks x 2 hooks


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_system_exit_and_keyboard_interrupt_in_a_task_are_its_failure(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # No batches: one consumer must not take both meet tasks below at once.
    workers.start("-P", pool, "-c", "2", app=APP, env={"CELERIAC_WORKER_BATCH_MAX": "1"})
    exits, interrupts = edges.exits.delay(), edges.interrupts.delay()
    with pytest.raises(TaskFailed, match=r"builtins.SystemExit: the task raised SystemExit\(3\)"):
        exits.get(timeout=20)
    with pytest.raises(TaskFailed, match=r"builtins.KeyboardInterrupt: the task raised"):
        interrupts.get(timeout=20)
    assert ledger.count("run") == {exits.id: 1, interrupts.id: 1}  # once: not a crash
    # Both consumers still serve: two tasks that wait for each other meet.
    meeting = [edges.meet.delay(1), edges.meet.delay(1)]
    assert [r.get(timeout=20) for r in meeting] == ["met", "met"]
    assert "died" not in workers.log_text()


@pytest.mark.parametrize("pool", ["process", "threads", "asyncio"])
def test_any_base_exception_in_a_task_is_its_failure_run_once(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # Only SystemExit and KeyboardInterrupt were contained. Any other BaseException (an
    # asyncio.CancelledError from asyncio.run, a library's own) killed the process and
    # threads children, and the asyncio pool left the job unsettled and unlogged: each
    # way the task ran again and again, then was dead-lettered as a crash.
    workers.start("-P", pool, "-c", "2", app=APP)
    sent = {
        "asyncio.exceptions.CancelledError": edges.cancelled.delay(),
        "asyncio.exceptions.CancelledError: the task raised": edges.cancels_itself.delay(),
        "tests.apps.edges.OwnBaseException: the task raised": (edges.raises_base_exception.delay()),
    }
    for error, result in sent.items():
        with pytest.raises(TaskFailed, match=error):
            result.get(timeout=20)
    assert ledger.count("run") == {r.id: 1 for r in sent.values()}
    assert edges.add.delay(1, 1).get(timeout=20) == 2
    assert "died" not in workers.log_text()


def test_soft_limits_fire_after_a_task_cancelled_the_soft_limit_timer(
    edges_app: Celeriac, workers: WorkerProcesses
) -> None:
    # The child arms SIGALRM once for several tasks and trusted it to be armed: after a
    # task cancelled it (its own SIGALRM timer, as timeout libraries use), every later
    # task whose soft deadline came after the stale one ran without a soft limit.
    workers.start("-c", "1", app=APP)
    assert edges.times_itself_with_sigalrm.delay().get(timeout=20) == "timed"
    # Soft limit 1.5 s: its deadline is after the 1 s of the task before.
    assert edges.sleeps_longer.delay(6.0).get(timeout=20) == "cut short"


@pytest.mark.parametrize(
    ("pool", "task"),
    [("process", edges.ignores_sigterm), ("asyncio", edges.ignores_sigterm_async)],
    ids=["process", "asyncio"],
)
def test_a_warm_shutdown_ends_after_a_task_that_ignored_sigterm(
    edges_app: Celeriac,
    workers: WorkerProcesses,
    ledger: Ledger,
    pool: str,
    task: Task[Any, Any],
) -> None:
    # The task set SIGTERM to SIG_IGN in its child: the warm shutdown's SIGTERM, sent while
    # it ran, was lost, and so was every later one; the supervisor waited for ever.
    proc = workers.start("-P", pool, "-c", "1", app=APP)
    result = task.delay(1.0)
    assert wait_for(lambda: ledger.count("run")[result.id] == 1, timeout=20)
    proc.send_signal(signal.SIGTERM)  # once: a second one is a cold shutdown
    assert proc.wait(timeout=30) == 0
    assert result.get(timeout=5) == "slept", workers.log_text()
    assert f"task {task.name}[{result.id}] replaced this child's handler of SIGTERM" in (
        workers.log_text()
    )


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_task_that_closes_stderr_leaves_the_log_working(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    # The next log line ("succeeded") raised ValueError in the child's own code: it died
    # after committing, and the supervisor said it died while running the task.
    workers.start("-P", pool, "-c", "1", app=APP)
    closer = edges.closes_stderr.delay()
    assert closer.get(timeout=20) == "closed"
    after = edges.closes_stderr.delay()  # the same child: still logging
    assert after.get(timeout=20) == "closed"
    assert wait_for(lambda: f"closes_stderr[{after.id}] succeeded" in workers.log_text())
    log = workers.log_text()
    assert "died" not in log, log
    assert ledger.count("run") == {closer.id: 1, after.id: 1}


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_a_child_that_dies_of_its_own_error_names_the_task_and_gives_it_back(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    workers.start("-P", pool, "-c", "1", app=APP)
    result = edges.breaks_its_child.delay()  # a hook raises SystemExit on the first run
    assert result.get(timeout=20) == 2  # put back from the slot, counted as a delivery
    # Exit code 1, as a crash: a threads child exited 0 after its consumer thread
    # crashed, and the log blamed the task ("os._exit(0) in the task?").
    assert (
        f"died (exit code 1) while running: tests.apps.edges.breaks_its_child[{result.id}]"
        in workers.log_text()
    )


def test_results_and_errors_that_cannot_be_encoded_fail_the_task_once(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    workers.start("-c", "1", app=APP)
    missing = edges.missing_file.delay()
    name = edges.returns_file_name.delay()
    loop = edges.returns_itself.delay()
    with pytest.raises(FileNotFoundError, match=r"missing report-\\udcff.csv"):
        missing.get(timeout=20)
    with pytest.raises(
        Exception, match=r"returned a str, which is not JSON-serializable \(a string in it"
    ) as info:
        name.get(timeout=20)
    assert type(info.value).__name__ == "SerializationError"
    with pytest.raises(Exception, match=r"returned a list, .* \(it contains itself"):
        loop.get(timeout=20)
    assert ledger.count("run") == {missing.id: 1, name.id: 1, loop.id: 1}
    assert not edges_app.broker.dead_letters()
    assert "died" not in workers.log_text()


@pytest.mark.parametrize("pool", ["process", "threads"])
def test_an_async_task_stops_at_its_soft_limit_outside_the_asyncio_pool(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, pool: str
) -> None:
    workers.start("-P", pool, "-c", "1", app=APP)
    overrun = edges.overruns.delay()
    with pytest.raises(SoftTimeLimitExceeded):
        overrun.get(timeout=20)
    # The next async task in the same child gives the old coroutine time to resume.
    assert edges.nap.delay(0.8).get(timeout=20) == "rested"
    phases = [p[0] for p in ledger.lines()]
    assert "cleanup" in phases  # cancelled at its await, as in the asyncio pool
    assert "after-limit" not in phases


@pytest.mark.parametrize("pool", ["process", "asyncio"])
def test_a_stop_signal_in_a_fresh_childs_first_instant_is_honoured(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, tmp_path: Path, pool: str
) -> None:
    # The first child sends itself SIGTERM right after fork, before celeriac's child code
    # runs: it must stop (and the supervisor start another), not consume on regardless.
    marker = tmp_path / "terminated-once"
    workers.start("-P", pool, "-c", "1", app=APP, env={"CELERIAC_TEST_TERM_AT_FORK": str(marker)})
    assert wait_for(lambda: ledger.count("forked"), timeout=20)
    (forked,) = [int(p[4]) for p in ledger.lines() if p[0] == "forked"]
    assert wait_for(lambda: not _alive(forked), timeout=10), "the child ignored its SIGTERM"
    assert edges.add.delay(2, 3).get(timeout=20) == 5  # its replacement serves


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
