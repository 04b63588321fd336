"""Rate limits and dedupe under conditions a deployment meets: a broker that stops
answering while a worker holds tasks, and backlogs far over their limit.

Each test runs real components: the broker under test (a private redis-server, a SQLite
file) and, where it says so, worker processes importing this module as their app.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, Task
from celeriac.brokers.records import Delivery, Outgoing
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.message import Message
from celeriac.middleware import default_middleware
from celeriac.middleware.base import Job, Middleware, Outcome
from celeriac.testing import wait_for
from celeriac.worker.executor import Executor
from tests.apps.core import record
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer


class LedgerDeferrals(Middleware):
    """Writes each deferral of a message that had already been given a slot to the ledger:
    it came back at its slot and the limit's window was still full."""

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        if outcome.state == "DEFERRED" and b'"rate_slot"' in job.delivery.body:
            record("again", job.delivery.id)


app = Celeriac("limits-audit", middleware=[*default_middleware(), LedgerDeferrals()])
ran: list[str] = []


@app.bound_task(rate_limit="1/m")
def once_a_minute(self: Task[Any, Any], n: int) -> int:
    ran.append(self.request.id)
    return n


@app.bound_task(rate_limit="50/s")
def paced(self: Task[Any, Any], n: int) -> int:
    record("start", self.request.id, n)
    return n


@app.bound_task(debounce=0.05)
def reindex(self: Task[Any, Any], version: int) -> int:
    ran.append(self.request.id)
    return version


def _fetch(app: Celeriac, count: int) -> list[Delivery]:
    fetched: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(fetched) < count and time.monotonic() < deadline:
        fetched += app.broker.fetch(["default"], "w", limit=count, lease_seconds=30, timeout=0.2)
    assert len(fetched) == count
    return fetched


# -- the broker stops answering while a worker holds tasks -------------------------------


def test_a_rate_limited_task_is_not_run_unlimited_while_the_broker_is_unreachable(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limiter's failed call raised out of the hook, which the stack logs and skips:
    # every task a child held during a failover ran at once, with no limit at all.
    monkeypatch.setattr(app.conf, "broker_url", private_redis.url)
    ran.clear()
    first, second = once_a_minute.delay(1), once_a_minute.delay(2)
    executor = Executor(app, "w")
    try:
        held = {d.id: d for d in _fetch(app, 2)}
        job, skip = executor.prepare(held[first.id])
        assert skip is None and executor.execute(job).state == "SUCCESS"
        private_redis.stop()
        job, skip = executor.prepare(held[second.id])
        assert skip is None
        outcome = executor.execute(job)
        assert outcome.state == "DEFERRED"  # was SUCCESS: the second start in a minute
        assert "rate limit" in outcome.reason
        assert ran == [first.id]
    finally:
        app.broker.close()


def test_a_superseded_debounced_send_does_not_run_while_the_broker_is_unreachable(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.conf, "broker_url", private_redis.url)
    ran.clear()
    superseded = reindex.delay(1)
    reindex.delay(2)
    executor = Executor(app, "w")
    try:
        held = {d.id: d for d in _fetch(app, 2)}
        private_redis.stop()
        job, skip = executor.prepare(held[superseded.id])
        assert skip is None
        outcome = executor.execute(job)
        assert outcome.state == "DEFERRED"  # was SUCCESS: the burst ran twice
        assert ran == []
    finally:
        app.broker.close()


# -- a backlog far over its limit --------------------------------------------------------


@pytest.mark.slow
def test_a_backlog_at_its_limit_comes_back_at_its_slots_without_waking_again(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slots were reserved 1/rate apart, but admission counts starts over the period plus
    # its guard (1% + 5 ms): each slot came back a little before the window had room, and
    # the gap grew by the guard every period. Late tasks were deferred again, all to the
    # moment the window next had room, where one started and the rest were deferred
    # again: 400 tasks at 20/s on 2 workers x 2 children came back 1,475 extra times (one
    # 41 times), and the herd grows with the backlog. On Redis the backlog came back at
    # its slots up to 100 ms late, in clumps (a BLPOP's timeout ends on Redis's timer
    # tick), and a clump's tasks were deferred again one after another: 433-476 times
    # for these 300 tasks (one task 13 times), where SQLite's came back 2-9 times.
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    sent = app.send_many([paced.message((n,)) for n in range(300)])
    procs = WorkerProcesses(broker_url, ledger)
    try:
        for _ in range(2):
            procs.start("-c", "2", app="tests.test_limits_audit", wait=False)
        assert wait_for(lambda: len(ledger.count("start")) == len(sent), timeout=60), (
            procs.log_text()
        )
    finally:
        procs.kill_all()
        app.broker.close()
    starts = sorted(float(line[3]) for line in ledger.lines() if line[0] == "start")
    most = max(sum(1 for t in starts[i:] if t < s + 1.0) for i, s in enumerate(starts))
    assert most <= 52  # 50/s, on stamps a task writes a little after its admission
    deferred = ledger.count("again")  # per task, the deferrals after its first
    again = sum(deferred.values())
    # The drift made ~1 per task, with a herd deferred again and again (one task 9 to 16
    # times here). A few come back early by a scheduling hiccup: 1-7 on a quiet machine
    # or beside two CPU hogs, 65 once beside the rest of the suite on two processes.
    assert again < len(sent) * 2 / 3, f"{again} deferrals of tasks that came back at their slot"
    # One task's own count: 5 beside two CPU hogs (1 run in 3) and 7 beside the suite on
    # three processes, where the herd made 9 to 16 (41 at 400 tasks) on top of the total.
    assert max(deferred.values(), default=0) <= 8, f"deferred again and again: {deferred}"


def test_a_purge_starts_the_rate_limits_waiting_lines_afresh(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tasks over a limit wait for their turn in their priority's line. The tasks a purge
    # deletes held places in it, so fresh tasks queued up behind them and waited for the
    # purged backlog's turn (98 s in an operator's run, or expired unrun).
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    executor = Executor(app, "w")

    def handle(count: int) -> list[float]:
        """Run or defer each message as a worker would; the deferrals' waits."""
        waits = []
        for delivery in _fetch(app, count):
            job, skip = executor.prepare(delivery)
            assert skip is None
            outcome = executor.execute(job)
            executor.settle(job, outcome)
            if outcome.state == "DEFERRED":
                waits.append(outcome.delay or 0.0)
        return waits

    try:
        app.send_many([paced.message((n,)) for n in range(1000)])
        assert max(handle(1000)) > 15  # 50/s: the backlog's line reaches ~20 s ahead
        assert app.broker.purge("default") > 900
        time.sleep(1.1)  # a process reads the lines' name once a second
        app.send_many([paced.message((n,)) for n in range(100)])
        fresh = handle(100)
        assert fresh, "the fresh tasks were over the limit too"
        assert max(fresh) < 6, f"fresh tasks wait behind the purged backlog: {max(fresh):.1f}s"
    finally:
        app.broker.close()


def _outcomes(messages: list[Message]) -> dict[str, Outcome]:
    """Send ``messages``, then fetch and run each through the middleware (unsettled)."""
    executor = Executor(app, "w")
    app.send_many(messages)
    outcomes = {}
    for delivery in _fetch(app, len(messages)):
        job, skip = executor.prepare(delivery)
        assert skip is None
        outcomes[delivery.id] = executor.execute(job)
    return outcomes


def _past_its_turn(n: int, priority: int = 0) -> Message:
    """A task back from its line whose turn came two minutes ago."""
    message = paced.message((n,), priority=priority)
    message.options["rate_line"] = time.time() - 120
    return message


def test_a_task_long_past_its_turn_in_line_takes_a_slot_however_far(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Back from its line, a task reserves only within its reach, so a lower priority
    # gives way to a higher one. But what fills the slots may ignore the lines (an older
    # worker reserving first come, first served, in a deploy): a task that only waited
    # for the slots to come within its reach starved for as long as that went on.
    monkeypatch.setattr(app.conf, "broker_url", sqlite_url)
    try:
        for _ in range(150):  # an older worker's reservations: 3 s of slots at 50/s
            app.broker.rate_reserve(f"rate:task:{paced.name}:slots", 50)
        waiting, late = paced.message((1,)), _past_its_turn(2)
        outcomes = _outcomes([waiting, late])
        # Both deferred; the one just come waits in its line for the slots to come
        # within its reach, the one long past its turn reserved the slot after them.
        assert [o.state for o in outcomes.values()] == ["DEFERRED", "DEFERRED"]
        assert b'"rate_line"' in (outcomes[waiting.id].body or b"")
        assert b'"rate_slot"' not in (outcomes[waiting.id].body or b"")
        assert b'"rate_slot"' in (outcomes[late.id].body or b"")
        assert (outcomes[late.id].delay or 0.0) > 2.5
    finally:
        app.broker.close()


def test_a_purge_that_cannot_restart_the_lines_still_purges_and_says_so(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The lines' new name is written after the purge: a broker refusing that write (a
    # failover to a read-only server) raised from purge(), and the count of what was
    # deleted was lost.
    broker = SQLiteBroker(sqlite_url)
    try:
        broker.send([Outgoing(f"m{i}", "q", b"{}") for i in range(3)])
        with sqlite3.connect(tmp_path / "broker.db") as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.key = 'rate-lines' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        assert broker.purge("q") == 3
    finally:
        broker.close()
    assert "purged 3 task(s) from queue q, but could not start the rate limits'" in caplog.text
    assert "refused by the test" in caplog.text


def _beyond_priority_0s_reach(*, line: int, seconds: float) -> None:
    """Take the slots of ``paced`` 3 s ahead at 50/s, beyond priority 0's reach, and
    ``seconds`` of tickets in the line of priority ``line``."""
    key = f"rate:task:{paced.name}"
    for _ in range(150):
        app.broker.rate_reserve(f"{key}:slots", 50)
    for _ in range(round(seconds * 50)):
        app.broker.rate_reserve(f"{key}:line:{line}", 50)


def test_a_task_long_past_its_turn_still_gives_way_to_a_higher_line_waiting(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past its patience, a lower task took a slot however far even in the middle of a
    # long flood of higher priority: the lower backlog then ran as one block while the
    # higher one waited (404 priority-0 tasks alone while 400 of priority 1 waited).
    monkeypatch.setattr(app.conf, "broker_url", sqlite_url)
    try:
        _beyond_priority_0s_reach(line=1, seconds=2)  # and priority 1 has tasks waiting
        (outcome,) = _outcomes([_past_its_turn(2, priority=0)]).values()
        assert outcome.state == "DEFERRED"
        assert b'"rate_slot"' not in (outcome.body or b"")  # no slot: it still waits
        assert b'"rate_line"' in (outcome.body or b"")
    finally:
        app.broker.close()


def test_a_task_bumped_in_its_line_is_not_judged_by_the_back_of_it_for_expiry(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Back at its turn, a task finding the slots beyond its reach takes a ticket at the
    # back of its line. When that ticket was past its expiry, the task ended EXPIRED,
    # though the slots came within its reach long before its expiry.
    monkeypatch.setattr(app.conf, "broker_url", sqlite_url)
    try:
        _beyond_priority_0s_reach(line=0, seconds=10)  # and 10 s of tickets in its own line
        back = paced.message((1,), expires=5.0)
        back.options["rate_line"] = time.time() - 0.5  # its turn has just come
        (outcome,) = _outcomes([back]).values()
        assert outcome.state == "DEFERRED", outcome
        assert b'"rate_line"' in (outcome.body or b"")
        assert 1.0 < (outcome.delay or 0.0) < 2.5  # when the slots come within its reach
    finally:
        app.broker.close()
