"""Workflows with revoked, expired and dead-lettered steps, against a real redis-server and
real worker processes: what each step's result says, and that the workflow ends (its
errbacks fire once, a chord after it fails with a clear error, nothing waits for ever)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import celeriac
from celeriac import Celeriac, Task
from celeriac.canvas import chain, chord, group, signature
from celeriac.errors import ChordError, TaskRevoked
from celeriac.result import AsyncResult
from celeriac.testing import wait_for
from tests.apps.core import record
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

# Workers import the celeriac this test imported (an old tree's, when PYTHONPATH says so).
WORKER_PATH = os.pathsep.join([str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)])

# Tasks of this file, run by a worker started with ``-A tests.test_canvas_revoked``.
app = Celeriac("canvas-revoked")


@app.bound_task(name="crev.step")
def step(self: Task[Any, Any], *values: Any) -> int:
    """Records that it ran, then returns how many values it was given plus one."""
    record("run", self.request.id, "step")
    return len(values) + 1


@app.bound_task(name="crev.fails")
def fails(self: Task[Any, Any], *values: Any) -> None:
    """Records that it ran, then raises ValueError."""
    record("run", self.request.id, "fails")
    raise ValueError("fails on purpose")


@app.bound_task(name="crev.crash", max_deliveries=1)
def crash(self: Task[Any, Any], *values: Any) -> None:
    """Records that it ran, then ends its process: the task never finishes."""
    record("run", self.request.id, "crash")
    os._exit(1)


@app.bound_task(name="crev.total")
def total(self: Task[Any, Any], values: list[Any]) -> int:
    """A chord body: records that it ran, then sums its header's results."""
    record("run", self.request.id, "total")
    return sum(values)


@app.bound_task(name="crev.errback")
def errback(self: Task[Any, Any], error: dict[str, str]) -> None:
    """Records which task's error it was given."""
    record("errback", self.request.id, f"{error['id']} {error['type']}")


@app.bound_task(name="crev.callback")
def callback(self: Task[Any, Any], value: Any) -> None:
    """A link: records that it ran."""
    record("callback", self.request.id, "callback")


@pytest.fixture
def url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This file's app on the session's redis-server, under a prefix of this test's own."""
    url = f"{redis_server.url}?prefix=r{os.urandom(6).hex()}"
    monkeypatch.setattr(app.conf, "broker_url", url)
    yield url
    app.broker.close()


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """The execution ledger the worker's tasks append to."""
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    return ledger


@pytest.fixture
def procs(url: str, ledger: Ledger) -> Iterator[WorkerProcesses]:
    """Starts real workers serving this file's tasks; all killed by PID at the end."""
    procs = WorkerProcesses(url, ledger)
    yield procs
    procs.kill_all()


def _start_worker(procs: WorkerProcesses, env: dict[str, str] | None = None) -> None:
    # Two children: a step and the one after it are often taken by different processes,
    # each with its own copy of the revokes read so far.
    environ = {"PYTHONPATH": WORKER_PATH, **(env or {})}
    procs.start("-c", "2", app="tests.test_canvas_revoked", env=environ)


def _drained() -> bool:
    """Nothing ready, delayed or held on any queue: every message sent was settled (a
    workflow's next step is sent before its previous one commits, so this means done)."""
    return all(s.ready == 0 and s.delayed == 0 and s.in_flight == 0 for s in app.broker.stats())


def _settled(procs: WorkerProcesses) -> None:
    assert wait_for(_drained, timeout=60), procs.log_text()


def _state(task_id: str) -> str:
    return AsyncResult(task_id, app).state


def _error(task_id: str) -> BaseException:
    outcome = AsyncResult(task_id, app).get(timeout=30, propagate=False)
    assert isinstance(outcome, BaseException), f"{task_id} succeeded: {outcome!r}"
    return outcome


# -- a chain whose handle was revoked --------------------------------------------------------


def test_a_revoked_chains_steps_all_read_revoked(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    """Every step was revoked and none ran: each reads REVOKED, not FAILURE (the later steps
    were settled with the first step's abort, over their own revoke marks)."""
    r = (step.s() | step.s() | step.s()).apply_async()
    r.revoke()
    _start_worker(procs)
    _settled(procs)
    assert not ledger.count("run"), ledger.lines()
    assert [_state(i) for i in (f"{r.id}:s0", f"{r.id}:s1", r.id)] == ["REVOKED"] * 3
    assert r.state == "REVOKED"
    assert isinstance(_error(r.id), TaskRevoked)


def test_a_revoked_chains_errback_fires_once_with_the_revoke(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    r = (step.s() | step.s() | step.s()).link_error(errback.s()).apply_async()
    r.revoke()
    _start_worker(procs)
    _settled(procs)
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    errbacks = [line for line in ledger.lines() if line[0] == "errback"]
    assert len(errbacks) == 1, ledger.lines()
    assert errbacks[0][4] == f"{r.id}:s0 celeriac.errors.TaskRevoked", errbacks
    assert r.state == "REVOKED"


def test_steps_after_a_step_revoked_alone_fail_with_its_revoke(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    """Only the first step was revoked (by its own id): it reads REVOKED; the steps after it,
    not revoked themselves, end FAILURE with its TaskRevoked, naming it as revoked."""
    r = (step.s() | step.s() | step.s()).apply_async()
    first = f"{r.id}:s0"
    AsyncResult(first, app).revoke()
    _start_worker(procs)
    _settled(procs)
    assert not ledger.count("run"), ledger.lines()
    assert _state(first) == "REVOKED"
    assert [_state(i) for i in (f"{r.id}:s1", r.id)] == ["FAILURE", "FAILURE"]
    error = _error(r.id)
    assert isinstance(error, TaskRevoked), error
    notes = "\n".join(getattr(error, "__notes__", ()))
    assert f"not run: {step.name}[{first}] was revoked earlier in this workflow" in notes, notes


def test_a_chord_after_a_revoked_step_fails_saying_the_step_was_revoked(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    r = chain(step.s(), chord([step.s(), step.s()], total.s())).link_error(errback.s())
    handle = r.apply_async()
    first = f"{handle.id}:s0"
    AsyncResult(first, app).revoke()
    _start_worker(procs)
    _settled(procs)
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert not ledger.count("run"), ledger.lines()
    error = _error(handle.id)
    assert isinstance(error, ChordError), error
    assert str(error) == (
        "the chord never started (none of its members ran): an earlier step of its "
        f"workflow, {step.name}[{first}], was revoked: celeriac.errors.TaskRevoked: "
        "revoked before it started"
    )
    assert len(ledger.count("errback")) == 1, ledger.lines()


# -- chords and groups with a member or body revoked --------------------------------------


def test_a_chord_member_revoked_alone_fails_the_body_naming_it(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    handle = chord([step.s(), step.s(), step.s()], total.s()).link_error(errback.s()).apply_async()
    member = f"{handle.id}:h:1"
    AsyncResult(member, app).revoke()
    _start_worker(procs)
    _settled(procs)
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert set(ledger.count("run")) == {f"{handle.id}:h:0", f"{handle.id}:h:2"}, ledger.lines()
    assert _state(member) == "REVOKED"
    assert handle.state == "FAILURE"
    error = _error(handle.id)
    assert isinstance(error, ChordError), error
    assert str(error) == (
        f"chord member 1 ({step.name}[{member}]) was revoked: celeriac.errors.TaskRevoked: "
        "revoked before it started"
    )
    # It read "not run: <member> failed earlier in this workflow".
    notes = "\n".join(getattr(error, "__notes__", ()))
    assert f"not run: {step.name}[{member}] was revoked earlier in this workflow" in notes, notes
    assert len(ledger.count("errback")) == 1, ledger.lines()


def test_a_chord_whose_body_alone_was_revoked_reads_revoked(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    handle = chord([step.s(), step.s()], total.s()).link_error(errback.s()).apply_async()
    AsyncResult(handle.id, app).revoke()  # the body's id alone, not the handle's workflow
    _start_worker(procs)
    _settled(procs)
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert set(ledger.count("run")) == {f"{handle.id}:h:0", f"{handle.id}:h:1"}, ledger.lines()
    assert handle.state == "REVOKED"
    assert isinstance(_error(handle.id), TaskRevoked)
    assert len(ledger.count("errback")) == 1, ledger.lines()


def test_a_group_member_revoked_in_a_chain_fails_the_step_after_the_group(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    handle = chain(step.s(), group(step.s(), step.s()), total.s()).apply_async()
    member = f"{handle.id}:s1:0"
    AsyncResult(member, app).revoke()
    _start_worker(procs)
    _settled(procs)
    assert set(ledger.count("run")) == {f"{handle.id}:s0", f"{handle.id}:s1:1"}, ledger.lines()
    assert _state(member) == "REVOKED"
    error = _error(handle.id)
    assert isinstance(error, ChordError), error
    assert f"group member 0 ({step.name}[{member}]) was revoked" in str(error), error


def test_a_revoked_task_fires_its_errback_once_and_not_its_link(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    r = step.s().link(callback.s()).link_error(errback.s()).apply_async()
    r.revoke()
    _start_worker(procs)
    _settled(procs)
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert r.state == "REVOKED"
    errbacks = [line[4] for line in ledger.lines() if line[0] == "errback"]
    assert errbacks == [f"{r.id} celeriac.errors.TaskRevoked"], ledger.lines()
    assert not ledger.count("callback") and not ledger.count("run"), ledger.lines()


# -- steps that expire or are dead-lettered before they run --------------------------------


def test_a_step_that_expired_fails_the_rest_saying_it_expired(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    soon = time.time() + 1.0
    late = step.s().set(expires=dt.datetime.fromtimestamp(soon, dt.UTC))
    handle = chain(step.s(), late, step.s()).link_error(errback.s()).apply_async()
    assert wait_for(lambda: time.time() > soon + 0.5, timeout=10)  # let it expire unrun
    _start_worker(procs)
    _settled(procs)
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert set(ledger.count("run")) == {f"{handle.id}:s0"}, ledger.lines()
    assert _state(f"{handle.id}:s1") == "EXPIRED"
    assert handle.state == "FAILURE"
    notes = "\n".join(getattr(_error(handle.id), "__notes__", ()))
    assert f"not run: {step.name}[{handle.id}:s1] expired earlier in this workflow" in notes
    assert len(ledger.count("errback")) == 1, ledger.lines()


def test_a_step_dead_lettered_ends_its_workflow_with_a_clear_error(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    """A step no worker knows, dead-lettered at once (task_unknown_max_age=0): the chord
    after it fails naming it, its errback fires once, nothing waits."""
    missing = signature("crev.nowhere", app=app)
    flow = chain(step.s(), missing, chord([step.s(), step.s()], total.s()))
    handle = flow.link_error(errback.s()).apply_async()
    _start_worker(procs, env={"CELERIAC_TASK_UNKNOWN_MAX_AGE": "0"})
    _settled(procs)
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert set(ledger.count("run")) == {f"{handle.id}:s0"}, ledger.lines()
    error = _error(handle.id)
    assert isinstance(error, ChordError), error
    assert str(error).startswith(
        "the chord never started (none of its members ran): an earlier step of its workflow, "
        f"crev.nowhere[{handle.id}:s1], was dead-lettered: celeriac.errors.Reject: "
    ), error
    errbacks = [line[4] for line in ledger.lines() if line[0] == "errback"]
    assert errbacks == [f"{handle.id}:s1 celeriac.errors.ChordError"], ledger.lines()


# -- a step that would wait (countdown, eta) after an earlier one failed ----------------------


def test_a_delayed_step_after_a_failed_one_fails_at_once_not_after_its_delay(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    """The step will not run, so it does not wait out its countdown (an hour here) to say so:
    the workflow's handle read PENDING all that time."""
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    flow = chain(fails.s(), step.s().set(countdown=3600), step.s().set(eta=later), step.s())
    handle = flow.link_error(errback.s()).apply_async()
    _start_worker(procs)
    error = handle.get(timeout=60, propagate=False)
    assert isinstance(error, ValueError), error
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert set(ledger.count("run")) == {f"{handle.id}:s0"}, ledger.lines()
    assert [_state(f"{handle.id}:s{i}") for i in (1, 2)] == ["FAILURE", "FAILURE"]


def test_a_step_dead_lettered_after_too_many_deliveries_fails_its_workflow(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    """Its process dies each time it runs: after max_deliveries=1 it is dead-lettered unrun,
    and the chord after it fails naming it; nothing waits for it."""
    flow = chain(step.s(), crash.s(), chord([step.s(), step.s()], total.s()))
    handle = flow.link_error(errback.s()).apply_async()
    _start_worker(procs)
    error = handle.get(timeout=90, propagate=False)
    assert isinstance(error, ChordError), error
    assert str(error).startswith(
        "the chord never started (none of its members ran): an earlier step of its workflow, "
        f"{crash.name}[{handle.id}:s1], was dead-lettered: celeriac.errors.Reject: "
    ), error
    assert "task_max_deliveries" in str(error) or "max_deliveries" in str(error), error
    assert wait_for(lambda: ledger.count("errback"), timeout=30), procs.log_text()
    _settled(procs)
    assert set(ledger.count("run")) == {f"{handle.id}:s0", f"{handle.id}:s1"}, ledger.lines()
    assert len(ledger.count("errback")) == 1, ledger.lines()
