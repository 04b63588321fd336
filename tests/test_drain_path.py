"""The per-task path of a worker draining short tasks: what it skips must not change what
it does (see "Where celeriac's time goes" in docs/benchmarks.md)."""

from __future__ import annotations

import logging

import pytest

from celeriac import Celeriac
from celeriac.brokers.records import Delivery, Lease
from celeriac.middleware.base import Job, Outcome
from celeriac.worker.executor import Executor


def _job(app: Celeriac) -> Job:
    executor = Executor(app, "w1")
    task_id = app.tasks["drain.noop"].message((1,)).id
    # An unreadable body: the job is only labelled in the lines, never run.
    job, _ = executor.prepare(Delivery(Lease(task_id, "default", "t1"), b"{}", 1))
    return job


@pytest.fixture
def app() -> Celeriac:
    made = Celeriac("drain", broker="memory://")

    @made.task(name="drain.noop")
    def noop(i: int) -> None:
        """Nothing."""

    return made


def test_outcome_lines_are_written_exactly_as_the_level_allows(
    app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    # Executor._log returns before building a line the logger would drop: the lines that
    # are written must be the same as before, at every level.
    executor, job = Executor(app, "w1"), _job(app)
    success = Outcome("SUCCESS", runtime=0.5)
    failure = Outcome("FAILURE", runtime=0.5)
    with caplog.at_level(logging.WARNING, logger="celeriac.worker"):
        executor._log(job, success, committed=True)
        executor._log(job, Outcome("DEFERRED"), committed=True)
        executor._log(job, failure, committed=True)
        executor._log(job, Outcome("DEAD", reason="why"), committed=True)
        executor._log(job, success, committed=False)
    assert [r.levelno for r in caplog.records] == [logging.ERROR] * 2 + [logging.WARNING]
    assert "failed in 0.5000s" in caplog.records[0].getMessage()
    assert "dead-lettered: why" in caplog.records[1].getMessage()
    assert "lease lost before settling (SUCCESS)" in caplog.records[2].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="celeriac.worker"):
        executor._log(job, success, committed=True)
        executor._log(job, Outcome("DEFERRED"), committed=True)
        executor._log(job, Outcome("EXPIRED", reason="late"), committed=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].endswith("succeeded in 0.5000s")
    assert lines[1].endswith("expired: late")
