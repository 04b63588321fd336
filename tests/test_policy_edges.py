"""Policy edges a user hit: dedupe keys that outlived their task, and the sends they
silently dropped; retries, rate limits and expiry at their bounds.

Each test runs real components: a worker process (started by the ``workers`` fixture,
importing this tree), and the broker under test (a SQLite file, a private redis-server).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import celeriac
from celeriac import Celeriac
from celeriac.control import _revoke_mark
from celeriac.testing import wait_for
from tests.apps import core
from tests.apps.core import record
from tests.conftest import Ledger, WorkerProcesses

# Worker processes get PYTHONPATH=<repo root> from the fixture: import celeriac from the
# same tree as this process, so that the tests check the code they were run against.
_SOURCE = str(Path(celeriac.__file__).resolve().parent.parent)
_ROOT = str(Path(__file__).resolve().parent.parent)
_ENV = {"PYTHONPATH": f"{_ROOT}:{_SOURCE}"}


# The app of the retry tests' worker processes (-A tests.test_policy_edges).
app = Celeriac("policy-edges")


class Unprintable(Exception):
    """An error whose str() raises (a driver's error formatting a closed handle)."""

    def __str__(self) -> str:
        raise RuntimeError("the handle is closed")


@app.task(autoretry_for=(Unprintable,), retry_backoff=0.01, max_retries=2)
def flaky_unprintable(tag: str) -> str:
    record("run", tag)
    if len(_runs(tag)) < 3:
        raise Unprintable()
    return "done"


@app.task(autoretry_for=ValueError, retry_backoff=0.01, max_retries=2)
def flaky_one_class(tag: str) -> str:
    record("run", tag)
    if len(_runs(tag)) < 3:
        raise ValueError("not yet")
    return "done"


def _runs(tag: str) -> list[str]:
    path = os.environ["CELERIAC_TEST_LEDGER"]
    with open(path) as ledger:
        return [line for line in ledger if line.split(" ", 2)[1] == tag]


@pytest.fixture
def edges_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    yield app
    app.broker.close()


def _start(
    workers: WorkerProcesses,
    *args: str,
    env: dict[str, str] | None = None,
    module: str = "tests.apps.core",
) -> None:
    workers.start("-c", "1", *args, app=module, env={**_ENV, **(env or {})})


# -- dedupe: a key that outlived its task ---------------------------------------------------


def test_a_send_after_the_key_holder_was_revoked_is_accepted(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    first = core.add.apply_async((1, 1), dedupe_key="acct:1")
    first.revoke()  # before any worker took it: the key still names it
    again = core.add.apply_async((2, 2), dedupe_key="acct:1")
    # Was: the revoked task's handle, for the whole TTL (an hour): the work never ran.
    assert again.id != first.id
    _start(workers)
    assert again.get(timeout=30) == 4
    assert wait_for(lambda: first.state == "REVOKED", timeout=30)
    assert ledger.count("run")[first.id] == 0


def test_a_send_after_the_key_holder_expired_unrun_is_accepted(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    mode = "queued"
    first = core.add.apply_async((1, 1), dedupe_key="acct:2", dedupe_mode=mode, expires=0.5)
    first_expires = time.time() + 0.5
    # Past its expiry (and the key's grace for clocks), nothing can run the first task any
    # more: a new send must not be handed its handle.
    assert wait_for(lambda: time.time() > first_expires + 1.5, timeout=10)
    again = core.add.apply_async((2, 2), dedupe_key="acct:2", dedupe_mode=mode)
    assert again.id != first.id  # was: the expired task's handle, for the whole TTL
    _start(workers)
    assert again.get(timeout=30) == 4
    assert wait_for(lambda: first.state == "EXPIRED", timeout=30)
    assert ledger.count("run")[first.id] == 0


def test_a_running_mode_key_of_a_task_expired_unrun_is_freed_when_it_is_settled(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    """A running-mode key keeps its TTL past the message's expiry (a worker of an older
    version may run it past its expiry without holding the key again): it is freed once
    a worker settles the task EXPIRED."""
    first = core.add.apply_async((1, 1), dedupe_key="acct:3", dedupe_mode="running", expires=0.5)
    first_expires = time.time() + 0.5
    assert wait_for(lambda: time.time() > first_expires + 1.5, timeout=10)
    held = core.add.apply_async((2, 2), dedupe_key="acct:3", dedupe_mode="running")
    assert held.id == first.id
    _start(workers)
    assert wait_for(lambda: first.state == "EXPIRED", timeout=30)
    again = core.add.apply_async((2, 2), dedupe_key="acct:3", dedupe_mode="running")
    assert again.id != first.id
    assert again.get(timeout=30) == 4
    assert ledger.count("run")[first.id] == 0


def test_a_running_task_revoked_without_terminate_keeps_its_running_mode_key(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    """Without terminate a revoked task runs on: its key must hold until it ends, or a
    duplicate runs beside it. Its result is not marked REVOKED meanwhile (a worker holds
    it); an older revoker (a deploy) or one that raced its fetch marks it, and the key
    holds then too (see dedupe._may_still_run)."""
    _start(workers)
    first = core.work.apply_async((4.0, "a"), dedupe_key="w2", dedupe_mode="running")
    assert wait_for(lambda: ledger.count("start")[first.id] == 1, timeout=30)
    first.revoke()
    assert first.state == "PENDING"
    again = core.work.apply_async((0.0, "b"), dedupe_key="w2", dedupe_mode="running")
    assert again.id == first.id
    core_app.broker.mark_revoked([first.id], _revoke_mark(time.time()), 60)  # as one did
    assert first.state == "REVOKED"
    again = core.work.apply_async((0.0, "b"), dedupe_key="w2", dedupe_mode="running")
    assert again.id == first.id  # was: a second task, run beside the first
    # Its own outcome replaces the mark when it ends, and its worker frees the key.
    assert wait_for(lambda: first.state == "SUCCESS", timeout=30)
    third = core.work.apply_async((0.0, "c"), dedupe_key="w2", dedupe_mode="running")
    assert third.id != first.id
    assert third.get(timeout=30) == "c"


def test_a_running_mode_key_holds_while_the_task_runs_past_its_expiry(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    """A running-mode key keeps its TTL past the message's expiry: a task that started
    in time and runs past it still refuses a second run."""
    _start(workers)
    first = core.work.apply_async((4.0, "a"), dedupe_key="w", dedupe_mode="running", expires=1.5)
    assert wait_for(lambda: ledger.count("start")[first.id] == 1, timeout=30)
    sent_by = time.time() + 1.5
    assert wait_for(lambda: time.time() > sent_by + 1.5, timeout=10)
    if ledger.count("end")[first.id]:
        pytest.skip("the machine was too slow: the task ended before its expiry had passed")
    again = core.work.apply_async((0.0, "b"), dedupe_key="w", dedupe_mode="running")
    assert again.id == first.id
    assert first.get(timeout=30) == "a"


def test_a_key_left_by_a_worker_killed_after_its_commit_drops_no_later_send(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, tmp_path: Path
) -> None:
    """A worker killed between storing a task's result and freeing its dedupe key (OOM,
    a deploy's SIGKILL) left the key for its whole TTL: every later send was handed the
    finished task's handle and nothing ran."""
    env = {"CELERIAC_CRASH_AT": "after_commit:1", "CELERIAC_CRASH_MARKER": str(tmp_path / "m")}
    _start(workers, env=env)
    first = core.add.apply_async((1, 1), dedupe_key="acct:3", dedupe_mode="running")
    assert first.get(timeout=30) == 2
    assert wait_for((tmp_path / "m").exists, timeout=30)
    again = core.add.apply_async((2, 2), dedupe_key="acct:3", dedupe_mode="running")
    assert again.id != first.id  # was: first.id, whose result (2) every caller then read
    assert again.get(timeout=30) == 4


def test_a_dropped_send_says_why_and_who_holds_the_key(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = Celeriac("policy-edges", broker=sqlite_url)

    @app.task
    def sync(n: int) -> int:
        return n

    try:
        first = sync.apply_async((1,), dedupe_key="acct:4", dedupe_ttl=600)
        with caplog.at_level(logging.DEBUG, logger="celeriac.dedupe"):
            again = sync.apply_async((2,), dedupe_key="acct:4", dedupe_ttl=600)
        assert again.id == first.id
        (said,) = [r.getMessage() for r in caplog.records if r.name == "celeriac.dedupe"]
        assert "not sent" in said and first.id in said and "acct:4" in said
        assert "600" in said  # how long the key may still hold
    finally:
        app.broker.close()


def test_a_purged_holders_key_can_be_freed_and_the_next_send_runs(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    from celeriac.middleware.dedupe import release_dedupe_key

    first = core.add.apply_async((1, 1), dedupe_key="acct:5")
    assert core_app.broker.purge(core_app.conf.task_default_queue) == 1
    assert release_dedupe_key(core_app, core.add, "acct:5") == first.id
    assert release_dedupe_key(core_app, core.add, "acct:5") is None  # nothing held now
    again = core.add.apply_async((2, 2), dedupe_key="acct:5")
    assert again.id != first.id
    _start(workers)
    assert again.get(timeout=30) == 4


# -- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task", [flaky_unprintable, flaky_one_class], ids=["unprintable", "one_class"]
)
def test_autoretry_retries_an_unprintable_error_and_a_single_class(
    edges_app: Celeriac, workers: WorkerProcesses, ledger: Ledger, task: object
) -> None:
    """Both made the Retries hook raise (str() of the error; tuple(ValueError)): the hook
    was logged and skipped, and the task failed on its first run, never retried."""
    _start(workers, module="tests.test_policy_edges")
    sent = task.delay("t1")  # type: ignore[attr-defined]
    assert sent.get(timeout=30) == "done"
    assert ledger.count("run")["t1"] == 3
    assert "after_execute failed" not in workers.log_text()
