"""Result handles and workflow failure wording, against a real redis-server and real
worker processes: what a person reads when a workflow fails, and an async timeout that
must not stall the event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import celeriac
from celeriac import Celeriac
from celeriac.canvas import chain, chord, group
from celeriac.errors import ChordError, ResultTimeout
from celeriac.group_result import GroupResult
from celeriac.result import AsyncResult
from celeriac.testing import wait_for
from tests.apps import canvas as tasks
from tests.apps.canvas import add, boom, collect, tsum
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.slow

# Workers import the celeriac this test imported (an old tree's, when PYTHONPATH says so).
WORKER_PATH = os.pathsep.join([str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)])

# Tasks of this file, run by a worker started with ``-A tests.test_result_edges``.
app = Celeriac("result-edges")


@app.task(name="edges.lookup")
def lookup(key: str) -> str:
    """Raises KeyError(key), as a dict lookup of a missing key does."""
    return {"present": "yes"}[key]


@app.task(name="edges.quiet", ignore_result=True)
def quiet(fail: bool) -> str:
    """Ignores its result; fails when asked to."""
    if fail:
        raise ValueError("quiet task failed")
    return "done"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, isolated by a key prefix unique to this test."""
    return f"{redis_server.url}?prefix=t{os.urandom(6).hex()}"


@pytest.fixture
def canvas_app(
    redis_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.canvas's app on this test's Redis prefix."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(tasks.app.conf, "broker_url", redis_url)
    yield tasks.app
    tasks.app.broker.close()


@pytest.fixture
def canvas_worker(redis_url: str, ledger: Ledger, canvas_app: Celeriac) -> Iterator[None]:
    """One real worker process (two children) serving tests.apps.canvas."""
    procs = WorkerProcesses(redis_url, ledger)
    procs.start("-c", "2", app="tests.apps.canvas", env={"PYTHONPATH": WORKER_PATH})
    yield
    procs.kill_all()


def _raised(result: AsyncResult[Any]) -> BaseException:
    outcome = result.get(timeout=30, propagate=False)
    assert isinstance(outcome, BaseException), f"{result!r} succeeded: {outcome!r}"
    return outcome


# -- a chain step that fails before a chord -----------------------------------------------


def test_a_step_failing_before_a_chord_is_named_and_the_chord_never_started(
    canvas_app: Celeriac, canvas_worker: None, ledger: Ledger
) -> None:
    r = chain(boom.s("early"), chord([add.s(1), add.s(2)], tsum.s())).apply_async()
    error = _raised(r)
    text = str(error)
    assert isinstance(error, ChordError)
    # The step that failed, by task name and id, and that no member ran.
    assert f"{boom.name}[{r.id}:s0]" in text, text
    assert "never started" in text, text
    assert "ValueError: boom early" in text, text
    assert "chord member" not in text, text  # no member ran: none may be blamed
    assert set(ledger.count("run")) == {f"{r.id}:s0"}  # boom alone ran
    assert not ledger.count("callback")


def test_the_header_producing_step_failing_is_named_not_a_member(
    canvas_app: Celeriac, canvas_worker: None, ledger: Ledger
) -> None:
    # The step that feeds the header fails after an earlier one succeeded.
    r = chain(add.s(1, 1), boom.s(), chord([add.s(10), add.s(20)], tsum.s())).apply_async()
    text = str(_raised(r))
    assert f"{boom.name}[{r.id}:s1]" in text and "never started" in text, text
    assert "chord member" not in text, text
    header = GroupResult.restore(canvas_app, r.id)
    assert header is not None
    # Each member ends FAILURE unrun through the queue, sent with the body's failure: a
    # worker may settle the body first, and the chain's handle wakes at that.

    def states() -> list[str]:
        return [m.state for m in header.results]

    assert wait_for(lambda: states() == ["FAILURE"] * 2, timeout=30), states()


def test_a_chord_that_continues_on_member_errors_still_does_not_run_after_a_failed_step(
    canvas_app: Celeriac, canvas_worker: None, ledger: Ledger
) -> None:
    """on_error="continue" hands a body its members' errors; here no member ran, so the
    body ran with a list of the earlier step's error, as if its members had failed."""
    body = chord([add.s(1), add.s(2)], collect.s(), on_error="continue")
    r = chain(boom.s("first"), body).apply_async()
    text = str(_raised(r))
    assert "never started" in text and f"{boom.name}[{r.id}:s0]" in text, text
    assert not ledger.count("callback"), "the chord's body ran after the chain failed"


def test_a_group_inside_a_chain_after_a_failed_step_passes_the_steps_own_error(
    canvas_app: Celeriac, canvas_worker: None
) -> None:
    # As in a plain chain: the last step ends with the failed step's own exception.
    r = chain(boom.s("before"), group(add.s(1), add.s(2)), tsum.s()).apply_async()
    error = _raised(r)
    assert type(error) is ValueError and str(error) == "boom before"
    notes = "\n".join(getattr(error, "__notes__", []))
    assert f"{boom.name}[{r.id}:s0] failed earlier in this workflow" in notes, notes


def test_a_plain_group_member_failing_is_called_a_group_member(
    canvas_app: Celeriac, canvas_worker: None
) -> None:
    r = chain(group(add.s(1, 1), boom.s("m")), tsum.s()).apply_async()
    error = _raised(r)
    assert isinstance(error, ChordError)
    assert f"group member 1 ({boom.name}[{r.id}:s0:1]) failed" in str(error), str(error)


def test_a_chord_member_and_a_chain_inside_a_member_are_still_named_as_members(
    canvas_app: Celeriac, canvas_worker: None
) -> None:
    r = chord([add.s(1, 1), boom.s("m")], tsum.s()).apply_async()
    assert f"chord member 1 ({boom.name}[{r.id}:h:1]) failed" in str(_raised(r))
    # A member that is a chain: its failed step is part of member 0, so the member is named.
    nested = chord([chain(boom.s("inner"), add.s(1)), add.s(2, 2)], tsum.s()).apply_async()
    assert f"chord member 0 ({boom.name}[{nested.id}:h:0:s0]) failed" in str(_raised(nested))


# -- GroupResult.aget: the timeout report must not block the event loop -------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may stop (SIGSTOP) without touching others."""
    server = start_redis(tmp_path / "redis")
    yield server
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


def test_group_aget_timeout_does_not_block_the_event_loop(own_redis: RedisServer) -> None:
    """The members never finish; once the wait times out the group reads which members are
    unfinished. Those reads were sync broker calls on the loop: with the server not
    answering, every coroutine on the loop stopped until the socket timed out."""
    app = Celeriac("edges", broker=f"{own_redis.url}?socket_timeout=15")
    members: list[AsyncResult[Any] | GroupResult] = [
        AsyncResult(f"g-never:{i}", app, "never.sent") for i in range(3)
    ]
    members.append(GroupResult("inner", [AsyncResult("inner:0", app)], app))
    g = GroupResult("g-never", members, app)
    resumed = threading.Event()

    def resume_later() -> None:
        # A safety net only: wakes the server if the loop is stuck in a blocking read.
        if not finished.wait(12):
            resumed.set()
            os.kill(own_redis.process.pid, signal.SIGCONT)

    async def scenario() -> BaseException:
        await app.broker.aget_result("warm-up")  # connect while the server answers
        app.broker.get_result("warm-up")
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # the server stops answering
        try:
            await g.aget(timeout=0.2)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what is checked
            return exc
        raise AssertionError("aget returned although no member finished")

    finished = threading.Event()
    watchdog = threading.Thread(target=resume_later, daemon=True)
    watchdog.start()
    try:
        outcome = asyncio.run(scenario())
    finally:
        finished.set()
        watchdog.join()
        os.kill(own_redis.process.pid, signal.SIGCONT)
        app.broker.close()
    # It ended by itself, with the server still not answering: nothing blocked the loop.
    assert not resumed.is_set(), f"the loop was stuck until the server resumed: {outcome!r}"
    assert isinstance(outcome, ResultTimeout), repr(outcome)
    text = str(outcome)
    assert "group g-never" in text and "within 0.2s" in text, text


def test_group_aget_timeout_names_the_unfinished_members(
    own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async report reads the members' states (awaited) and names those unfinished."""
    url = f"{own_redis.url}?prefix=g"
    monkeypatch.setattr(app.conf, "broker_url", url)
    procs = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start("-c", "1", app="tests.test_result_edges", env={"PYTHONPATH": WORKER_PATH})
        done = lookup.delay("present")
        assert done.get(timeout=30) == "yes"
        waiting: list[AsyncResult[Any] | GroupResult] = [
            AsyncResult(f"never:{i}", app, "never.sent") for i in range(2)
        ]
        g = GroupResult("g-mixed", [done, *waiting], app)
        with pytest.raises(ResultTimeout) as raised:
            asyncio.run(g.aget(timeout=0.2))
        assert str(raised.value).startswith(
            "group g-mixed: 2 of 3 members did not finish within 0.2s (never:0, never:1);"
        ), str(raised.value)
    finally:
        procs.kill_all()
        app.broker.close()


# -- errors rebuilt from a result --------------------------------------------------------


@pytest.fixture
def edges_worker(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A real worker serving this file's tasks, on this test's Redis prefix."""
    monkeypatch.setattr(app.conf, "broker_url", redis_url)
    procs = WorkerProcesses(redis_url, Ledger(tmp_path / "ledger.txt"))
    procs.start("-c", "1", app="tests.test_result_edges", env={"PYTHONPATH": WORKER_PATH})
    yield
    procs.kill_all()
    app.broker.close()


def test_a_key_error_comes_back_with_its_key_not_the_keys_repr(edges_worker: None) -> None:
    r = lookup.delay("sku-1")
    with pytest.raises(KeyError) as raised:
        r.get(timeout=30)
    # As the task raised it: args[0] is the key; str() quotes it once.
    assert raised.value.args == ("sku-1",)
    assert str(raised.value) == "'sku-1'"


def test_get_on_an_ignore_result_task_still_reports_its_failure(edges_worker: None) -> None:
    """Why get() on an ignore_result task is not refused at once: failures are stored
    whatever ignore_result says, so the wait ends with the task's own error."""
    r = quiet.delay(True)
    with pytest.raises(ValueError, match="quiet task failed"):
        r.get()
    ok = quiet.delay(False)
    with pytest.raises(ResultTimeout, match="ignores its result"):
        ok.get(timeout=0.5)


def test_a_timeout_names_the_broker_and_a_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A producer started from another folder made a SQLite file of its own there: its
    # get() timed out "may still be queued or running", naming neither broker nor file.
    # (Named without a broker call: the broker may be what does not answer.)
    monkeypatch.chdir(tmp_path)
    app = Celeriac("shop", broker="sqlite:///celeriac.db")
    sent = app.task(name="shop.ping")(lambda: "pong").delay()
    with pytest.raises(ResultTimeout) as raised:
        sent.get(timeout=0.1)
    said = str(raised.value)
    assert (
        "this process's broker is sqlite:///celeriac.db, the file "
        f"{tmp_path / 'celeriac.db'}); or it finished"
    ) in said, said
    app.broker.close()
