"""Result handles, part 2, against a real redis-server and real worker processes: what
waiting on a group costs Redis, what revoking and forgetting a workflow's handle reaches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import celeriac
import redis
from celeriac import Celeriac, Task
from celeriac.canvas import chain, chord, group
from celeriac.errors import ResultTimeout
from celeriac.group_result import GroupResult
from celeriac.result import AsyncResult
from celeriac.testing import wait_for
from tests.apps.core import record
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.slow

# Workers import the celeriac this test imported (an old tree's, when PYTHONPATH says so).
WORKER_PATH = os.pathsep.join([str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)])

# Tasks of this file, run by a worker started with ``-A tests.test_result_handles_more``.
app = Celeriac("result-handles-more")


@app.bound_task(name="handles.step")
def step(self: Task[Any, Any], *values: Any) -> int:
    """Records that it ran, then returns how many values it was given plus one."""
    record("run", self.request.id, "step")
    return len(values) + 1


@app.bound_task(name="handles.nap")
def nap(self: Task[Any, Any], seconds: float) -> float:
    """Sleeps, so that a group takes a while and a waiter has to wait for it."""
    record("run", self.request.id, "nap")
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server: its command counts are this test's alone."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """The execution ledger the worker's tasks append to."""
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    return ledger


@pytest.fixture
def url(own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This file's app on the private server."""
    url = f"{own_redis.url}?prefix=h"
    monkeypatch.setattr(app.conf, "broker_url", url)
    yield url
    app.broker.close()


@pytest.fixture
def procs(url: str, ledger: Ledger) -> Iterator[WorkerProcesses]:
    """Starts real workers serving this file's tasks; all killed by PID at the end."""
    procs = WorkerProcesses(url, ledger)
    yield procs
    procs.kill_all()


def _start_worker(procs: WorkerProcesses) -> None:
    procs.start("-c", "1", app="tests.test_result_handles_more", env={"PYTHONPATH": WORKER_PATH})


def _gets(server: RedisServer) -> int:
    """How many GET commands the server ran since its stats were last reset."""
    client = redis.Redis(port=server.port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


def _reset_stats(server: RedisServer) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.config_resetstat()
    finally:
        client.close()


def _drained() -> bool:
    """Nothing ready, delayed or held on any queue: every message sent was settled (a
    workflow's next step is sent before its previous one commits, so this means done)."""
    return all(s.ready == 0 and s.delayed == 0 and s.in_flight == 0 for s in app.broker.stats())


# -- GroupResult.iter_completed: reads only what it has not seen, woken by commits ---------


def test_iter_completed_reads_each_member_a_few_times_not_once_per_pass(
    own_redis: RedisServer, url: str, procs: WorkerProcesses
) -> None:
    """One worker child runs the members one after another; the waiter yields each as it
    finishes. It read every unfinished member every 50 ms: for 40 members of 50 ms, about
    40 passes of 20 reads. Now a commit wakes it and it reads a member a few times."""
    _start_worker(procs)
    size = 40
    g = group(nap.s(0.05) for _ in range(size)).apply_async()
    _reset_stats(own_redis)
    seen = [m.id for m in g.iter_completed(timeout=120)]
    reads = _gets(own_redis)
    assert sorted(seen) == sorted(m.id for m in g.results)
    # The worker reads nothing with GET. The waiter: a first look at every member, then two
    # reads per wait (before it sleeps, after the commit woke it): 3 per member. Before:
    # ~40 per member. 6 leaves room for a slow run (a look at the others after a quiet
    # second, and the broker's own read per quiet second).
    assert reads <= 6 * size, f"{reads} GETs to wait for {size} members"


def test_iter_completed_yields_a_member_that_finishes_out_of_order(
    url: str, procs: WorkerProcesses
) -> None:
    """A member that finished is yielded while an earlier one never finishes."""
    _start_worker(procs)
    done = step.s().apply_async()
    never = AsyncResult[Any](f"{done.id}-never", app, "never.sent")
    g = GroupResult("g-out-of-order", [never, done], app)
    first = next(iter(g.iter_completed(timeout=60)))
    assert first.id == done.id


def test_iter_completed_timeout_says_what_an_unfinished_member_can_mean(url: str) -> None:
    g = GroupResult(
        "g-never", [AsyncResult(f"g-never:{i}", app, "never.sent") for i in range(2)], app
    )
    with pytest.raises(ResultTimeout) as raised:
        list(g.iter_completed(timeout=0.2))
    text = str(raised.value)
    assert text.startswith("group g-never: 2 of 2 members did not finish within 0.2s"), text
    assert "may still be queued or running" in text, text


# -- revoking a workflow's handle reaches every task of the workflow ---------------------


def test_revoking_a_chains_handle_revokes_its_earlier_steps(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    r = (step.s() | step.s() | step.s()).apply_async()
    r.revoke()
    _start_worker(procs)
    assert wait_for(_drained, timeout=60), procs.log_text()
    assert not ledger.count("run"), f"steps ran after the chain was revoked: {ledger.lines()}"
    assert r.state in ("REVOKED", "FAILURE")


def test_revoking_a_chords_handle_revokes_its_header_and_body(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    r = chord([step.s(), step.s(), chain(step.s(), step.s())], step.s()).apply_async()
    r.revoke()
    _start_worker(procs)
    assert wait_for(_drained, timeout=60), procs.log_text()
    assert not ledger.count("run"), f"tasks ran after the chord was revoked: {ledger.lines()}"


def test_revoking_a_group_reaches_the_earlier_steps_of_its_chain_members(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    g = group(chain(step.s(), step.s()), step.s()).apply_async()
    after_a_step = chain(step.s(), group(step.s(), step.s())).apply_async()
    g.revoke()
    after_a_step.revoke()
    _start_worker(procs)
    assert wait_for(_drained, timeout=60), procs.log_text()
    assert not ledger.count("run"), f"tasks ran after their group was revoked: {ledger.lines()}"


def test_a_running_chain_revoked_runs_none_of_its_later_steps(
    url: str, procs: WorkerProcesses, ledger: Ledger
) -> None:
    """The step running when revoked finishes (no terminate); the ones after it do not run."""
    _start_worker(procs)
    r = (nap.si(1.0) | step.s() | step.s()).apply_async()
    assert wait_for(lambda: bool(ledger.count("run")), timeout=30), procs.log_text()
    r.revoke()
    assert wait_for(_drained, timeout=60), procs.log_text()
    assert set(ledger.count("run")) == {f"{r.id}:s0"}, ledger.lines()


# -- forgetting a workflow's handle ------------------------------------------------------


def test_forgetting_a_chords_handle_deletes_its_saved_header_and_member_results(
    url: str, procs: WorkerProcesses
) -> None:
    _start_worker(procs)
    r = chord([step.s(), step.s()], step.s()).apply_async()
    assert r.get(timeout=60) == 2
    header = GroupResult.restore(app, r.id)
    assert header is not None and header.get(timeout=10) == [1, 1]
    r.forget()
    assert GroupResult.restore(app, r.id) is None, "the chord's header is still saved"
    assert r.state == "PENDING"
    assert [m.state for m in header.results] == ["PENDING", "PENDING"]


def test_forgetting_a_chord_found_by_id_alone_deletes_its_saved_header(
    url: str, procs: WorkerProcesses
) -> None:
    _start_worker(procs)
    r = chord([step.s(), step.s()], step.s()).apply_async()
    assert r.get(timeout=60) == 2
    app.AsyncResult(r.id).forget()
    assert GroupResult.restore(app, r.id) is None, "the chord's header is still saved"
