"""A revoke lasts as long as its task can run, and reads REVOKED at once.

Real worker processes on SQLite and Redis (the ``workers`` fixture), real brokers for the
store's contract. A worker is started with this tree's ``celeriac`` first on its path, so
the same source is tested in the test process and in the worker.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import celeriac
from celeriac import Celeriac, TaskRevoked
from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.records import Outgoing
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.control import STREAM_LENGTH, is_revoke_mark, mark_given_back, revoke_many
from celeriac.message import ResultRecord, decode_result, encode_result
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisClusterNodes, RedisServer

pytestmark = pytest.mark.slow

# The worker imports celeriac from the tree the test imports it from (the fixture's
# PYTHONPATH names only the project root, for tests.apps).
_PATH = {"PYTHONPATH": f"{Path(celeriac.__file__).resolve().parents[1]}{os.pathsep}{ROOT}"}


def _others(count: int) -> list[str]:
    return [f"other-{uuid.uuid4().hex}" for _ in range(count)]


def _drained(app: Celeriac) -> bool:
    return all(s.ready == s.delayed == s.in_flight == 0 for s in app.broker.stats())


def _settled_by_a_worker(app: Celeriac, task_id: str) -> bool:
    stored = app.broker.get_result(task_id)
    return stored is not None and decode_result(stored[0]).worker is not None


def _a_new_worker_does_not_run(
    doomed: str, app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    """Start a worker, let it drain the queue past a task sent after ``doomed``, and see
    that ``doomed`` never started and reads REVOKED."""
    kept = core.work.delay(0, "kept")
    workers.start("-c", "1", env=_PATH)
    assert kept.get(timeout=30) == "kept"
    assert wait_for(lambda: _drained(app), timeout=30), workers.log_text()
    assert ledger.count("start")[doomed] == 0, "a revoked task ran"
    assert app.AsyncResult(doomed).state == "REVOKED"


def test_a_revoke_followed_by_stream_length_others_still_holds_for_a_new_worker(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    doomed = core.work.delay(0, "doomed")
    doomed.revoke()
    revoke_many(core_app, _others(STREAM_LENGTH))  # the stream no longer holds doomed's
    _a_new_worker_does_not_run(doomed.id, core_app, workers, ledger)
    with pytest.raises(TaskRevoked):
        doomed.get(timeout=5)


def test_a_running_worker_keeps_a_revoke_past_twice_the_stream_length(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The worker's own set keeps at most twice the stream's length: 2 x STREAM_LENGTH + 1
    # later revokes, read as they come, trimmed doomed's id from it.
    workers.start("-c", "1", env=_PATH)
    doomed = core.work.apply_async((0, "doomed"), countdown=6)
    doomed.revoke()
    for _ in range(2):
        revoke_many(core_app, _others(STREAM_LENGTH))
        # Let the worker read each batch (its refresh runs before each task it takes).
        assert core.add.delay(1, 1).get(timeout=30) == 2
    revoke_many(core_app, _others(1))
    assert core.add.delay(1, 1).get(timeout=30) == 2
    assert wait_for(lambda: _drained(core_app), timeout=30), workers.log_text()
    assert ledger.count("start")[doomed.id] == 0, "a revoked task ran"
    assert doomed.state == "REVOKED"


def test_a_group_larger_than_the_stream_is_revoked_whole(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    members = [core.add.delay(i, 0) for i in range(STREAM_LENGTH + 500)]
    revoke_many(core_app, [r.id for r in members])  # refused with a ValueError before
    kept = core.add.delay(2, 3)
    workers.start("-c", "1", env=_PATH)
    assert kept.get(timeout=60) == 5
    assert wait_for(lambda: _drained(core_app), timeout=120), workers.log_text()
    assert not any(ledger.count("run")[r.id] for r in members), "a revoked member ran"
    assert {members[0].state, members[-1].state} == {"REVOKED"}


def test_a_revoked_task_reads_revoked_at_once_and_its_message_is_acked_unrun(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    later = core.work.apply_async((0, "later"), countdown=86_400)
    soon = core.work.apply_async((0, "soon"), countdown=1)
    for result in (later, soon):
        result.revoke()
        assert result.state == "REVOKED"  # PENDING until a worker took the message, before
        assert result.ready()
        with pytest.raises(TaskRevoked):
            result.get(timeout=5)
    workers.start("-c", "1", env=_PATH)
    assert wait_for(lambda: _settled_by_a_worker(core_app, soon.id), timeout=30)
    assert soon.state == "REVOKED" and ledger.count("start")[soon.id] == 0
    (stats,) = core_app.broker.stats()
    assert (stats.ready, stats.delayed, stats.in_flight) == (0, 1, 0)  # only `later` waits


def test_a_revoke_never_overwrites_a_finished_task(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    workers.start("-c", "1", env=_PATH)
    done = core.add.delay(2, 2)
    assert done.get(timeout=30) == 4
    done.revoke()
    assert done.state == "SUCCESS" and done.get(timeout=5) == 4


def test_a_task_running_when_revoked_keeps_the_outcome_it_had(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    workers.start("-c", "1", env=_PATH)
    running = core.work.delay(1.5, "running")
    assert wait_for(lambda: ledger.count("start")[running.id] == 1, timeout=30)
    running.revoke()  # without terminate: it is not stopped, nor marked (a worker holds it)
    assert running.state == "PENDING"
    assert wait_for(lambda: running.state == "SUCCESS", timeout=30), workers.log_text()
    assert running.get(timeout=5) == "running" and ledger.count("end")[running.id] == 1


def test_a_task_revoked_while_held_stays_revoked_when_given_back_after_the_stream_lost_it(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # A task a worker holds is not marked REVOKED (it may be running): its revoke is kept
    # in the small store instead, for the worker that takes it after its holder gave it
    # back (a dead worker's lease), once the stream no longer holds the revoke.
    doomed = core.work.delay(0, "doomed")
    (held,) = core_app.broker.fetch(["default"], "gone", limit=1, lease_seconds=60, timeout=5)
    assert revoke_many(core_app, [doomed.id]) == [doomed.id]
    assert doomed.state == "PENDING"
    revoke_many(core_app, _others(STREAM_LENGTH))
    assert core_app.broker.requeue(held.lease, count_delivery=False)
    _a_new_worker_does_not_run(doomed.id, core_app, workers, ledger)


def test_a_task_revoked_while_held_reads_revoked_once_its_worker_gives_it_back(
    broker_url: str,
) -> None:
    # A revoke marks no task a worker holds. Handed back unstarted (a warm shutdown's
    # prefetch, a dead child's), it read PENDING, and its waiters waited, until a worker
    # took it again: for as long as none consumed its queue. The worker's give-back
    # (intake._requeue_unstarted, reaping._after_exit) marks it first.
    app = Celeriac("given-back", broker=broker_url)
    broker = app.broker
    broker.send([Outgoing(i, "q", b"{}") for i in ("kept", "doomed")])
    taken = broker.fetch(["q"], "w", limit=2, lease_seconds=30, timeout=0)
    assert revoke_many(app, ["doomed"]) == ["doomed"]
    assert broker.get_result("doomed") is None
    assert mark_given_back(app, ["kept", "doomed"]) == ["doomed"]
    for delivery in reversed(taken):
        assert broker.requeue(delivery.lease, count_delivery=False, front=True)
    stored = broker.get_result("doomed")
    assert stored is not None and is_revoke_mark(stored[0])
    assert broker.get_result("kept") is None
    assert [d.id for d in broker.fetch(["q"], "w", limit=2, lease_seconds=30, timeout=0)] == [
        "kept",
        "doomed",
    ]  # still queued: a worker drops it unrun, settling its workflow
    broker.close()


def test_an_id_revoked_before_it_is_sent_is_queued_and_settled_revoked(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # A workflow step revoked before its turn must still reach a worker, which settles it
    # REVOKED so that its chain or chord carries on: the mark does not refuse the send.
    task_id = f"future-{uuid.uuid4().hex}"
    core_app.AsyncResult(task_id).revoke()
    sent = core.work.apply_async((0, "future"), task_id=task_id)
    assert sent.id == task_id
    (stats,) = core_app.broker.stats()
    assert stats.ready == 1
    workers.start("-c", "1", env=_PATH)
    assert wait_for(lambda: _settled_by_a_worker(core_app, task_id), timeout=30)
    assert sent.state == "REVOKED" and ledger.count("start")[task_id] == 0


# -- the store's contract: every broker ------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Broker:
    kind = request.param
    if kind == "memory":
        return MemoryBroker()
    if kind == "sqlite":
        return SQLiteBroker(f"sqlite:///{tmp_path}/broker.db")
    from celeriac.brokers.redis import RedisBroker

    server: RedisServer | RedisClusterNodes = request.getfixturevalue(
        "redis_server" if kind == "redis" else "redis_cluster"
    )
    glue = "&" if "?" in server.url else "?"
    return RedisBroker(f"{server.url}{glue}prefix=t{uuid.uuid4().hex[:12]}")


def _record(state: str) -> bytes:
    return encode_result(ResultRecord(state=state))


def test_a_revoke_mark_is_final_to_readers_only(broker: Broker) -> None:
    try:
        broker.send([Outgoing("done", "q", b"{}")])
        (held,) = broker.fetch(["q"], "c", limit=1, lease_seconds=30, timeout=0)
        assert broker.complete(held.lease, _record("SUCCESS"), 60)
        broker.store_result("running", _record("STARTED"), 60)
        marked = broker.mark_revoked(["done", "running", "queued"], _record("REVOKED"), 60)
        assert marked == [False, True, True]
        assert broker.get_result("done") == (_record("SUCCESS"), True)
        assert broker.get_result("running") == (_record("REVOKED"), True)
        assert broker.wait_result("queued", 1) == _record("REVOKED")
        assert broker.mark_revoked(["queued"], _record("REVOKED"), 60) == [False]
        broker.store_result("queued", _record("RETRY"), 60)  # a mark is not overwritten
        assert broker.get_result("queued") == (_record("REVOKED"), True)
        # Not final for a send: the id is queued, and its settle replaces the mark.
        assert broker.send([Outgoing("queued", "q", b"{}")]) == [True]
        (taken,) = broker.fetch(["q"], "c", limit=1, lease_seconds=30, timeout=0)
        assert taken.id == "queued"
        assert broker.complete(taken.lease, _record("FAILURE"), 60)
        assert broker.get_result("queued") == (_record("FAILURE"), True)
        assert broker.send([Outgoing("queued", "q", b"{}")]) == [False]  # finished now
    finally:
        broker.close()
