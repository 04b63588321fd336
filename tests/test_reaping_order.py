"""Where the messages a dead child held go back: a crashed child's to the back of their
queue, a stopped child's where they were (in-process on SQLite); and a task its supervisor
stopped goes to the head with its verdict (a real worker)."""

from __future__ import annotations

import time

import pytest

from celeriac import Celeriac
from celeriac.brokers.records import Outgoing
from celeriac.control import is_revoke_mark, revoke_many
from celeriac.testing import wait_for
from celeriac.worker.slot import Held
from celeriac.worker.supervisor import Worker
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses


@pytest.fixture
def worker(sqlite_url: str) -> Worker:
    return Worker(Celeriac("reaping", broker=sqlite_url), ["q"], concurrency=1)


@pytest.mark.parametrize(
    ("stop_requests", "order"),
    [
        # A crash: the running task may be what killed the child (a poison message must
        # not hold the head), and its prefetch goes back behind the rest too: at the head,
        # the next child ran it in a batch and died on the killer before its commit
        # (tests/test_prepare_crash.py).
        (1, ["t3", "t4", "t0", "t1", "t2"]),
        # A cold shutdown killed it: nothing it held is to blame, all keep their place.
        (2, ["t0", "t1", "t2", "t3", "t4"]),
    ],
)
def test_a_stopped_childs_messages_go_back_where_they_were_a_crashed_ones_to_the_back(
    worker: Worker, stop_requests: int, order: list[str]
) -> None:
    broker = worker.app.broker
    broker.send([Outgoing(f"t{i}", "q", b"body") for i in range(5)])
    taken = broker.fetch(["q"], "child", limit=3, lease_seconds=30, timeout=0)
    assert [d.id for d in taken] == ["t0", "t1", "t2"]
    held = [Held(d.id, d.lease.queue, d.lease.token, "t") for d in taken]
    held[0] = Held(held[0].id, held[0].queue, held[0].token, "t", started=time.time())
    child = worker._children[0]
    child.pid = 1
    child.slot.write(held, rss=1)
    worker._stop_requests = stop_requests  # stopping: no child is started in its place
    worker._after_exit(child, -9)
    again = broker.fetch(["q"], "next", limit=10, lease_seconds=30, timeout=0)
    assert [d.id for d in again] == order


def test_a_task_stopped_at_its_hard_limit_reads_failure_before_the_backlog_behind_it(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The supervisor records the verdict and puts the message back for a child to settle
    # unrun. At the back of its queue, its caller waited for the whole backlog to read
    # FAILURE (and after a warm shutdown, for the next worker).
    workers.start("-c", "1")
    stopped = core.stuck.delay()  # hard limit 1 s
    backlog = [core.work.delay(0.3, str(i)) for i in range(15)]
    assert wait_for(lambda: stopped.state == "FAILURE", timeout=30)
    started = sum(ledger.count("start")[r.id] for r in backlog)
    assert started <= 3, started


def test_a_stopped_task_goes_back_ahead_of_what_its_child_had_prefetched(
    core_app: Celeriac, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # The verdict's message went to the head first, and the child's prefetch was pushed
    # to the head after it: on Redis both prefetched tasks ran before it was settled.
    stopped = core.stuck.delay()  # hard limit 1 s
    prefetched = [core.work.delay(1.5, str(i)) for i in range(2)]
    workers.start("-c", "1", env={"CELERIAC_WORKER_PREFETCH_MULTIPLIER": "3"})
    assert wait_for(lambda: stopped.state == "FAILURE", timeout=30)
    started = sum(ledger.count("start")[r.id] for r in prefetched)
    assert started <= 1, started


def test_a_dead_childs_task_revoked_while_it_held_it_reads_revoked_once_given_back(
    worker: Worker,
) -> None:
    # A revoke marks no task a worker holds (its worker settles it). Given back unmarked
    # when its child died, it read PENDING until a worker took it again.
    broker = worker.app.broker
    # Not one that was running: it goes back counted, and its next delivery decides (it
    # is dropped as revoked, or dead-lettered at its delivery limit: marked, its waiters
    # were told REVOKED, and then it read FAILURE).
    broker.send([Outgoing(f"t{i}", "q", b"body") for i in range(3)])
    taken = broker.fetch(["q"], "child", limit=3, lease_seconds=30, timeout=0)
    assert revoke_many(worker.app, ["t0", "t2"]) == ["t0", "t2"]
    assert broker.get_result("t2") is None
    held = [Held(d.id, d.lease.queue, d.lease.token, "t") for d in taken]
    held[0] = Held(held[0].id, held[0].queue, held[0].token, "t", started=time.time())
    child = worker._children[0]
    child.pid = 1
    child.slot.write(held, rss=1)
    worker._stop_requests = 1  # stopping: no child is started in its place
    worker._after_exit(child, -9)
    assert broker.get_result("t0") is None  # running: its next delivery settles it
    assert broker.get_result("t1") is None  # not revoked
    stored = broker.get_result("t2")
    assert stored is not None and is_revoke_mark(stored[0])
