"""What operators see, checked after load and faults: ``events -f`` under a burst of
events (and none, with events off), ``status`` after a worker was killed with -9,
``ping`` and ``inspect`` with a frozen worker, and tables 80 columns wide."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from typing import Any, cast

import msgspec
import pytest
from click.testing import CliRunner

from celeriac import Celeriac
from celeriac.brokers.records import WorkerInfo
from celeriac.cli import cli
from celeriac.control import broadcast
from celeriac.middleware.events import STREAM, Event
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses, run_celeriac, table_cells
from tests.test_cli_edges import Cli, clis

__all__ = ["clis"]  # a fixture: pytest finds it by its name in this module


def _event(task_id: str) -> bytes:
    return msgspec.json.encode(Event("succeeded", task_id, "shop.add", "w-1", 1.0e9, 0.01))


def _shown(output: str) -> list[str]:
    return [json.loads(line)["id"] for line in output.splitlines() if line.startswith("{")]


def test_events_follow_keeps_up_with_a_burst_or_says_what_it_missed(
    broker_url: str, clis: list[Cli]
) -> None:
    # A follower paused 0.2 s after every page of 1,000: it printed at most 5,000 events a
    # second, fell behind a busy worker (~8,000 outcomes a second from -c 2), and skipped
    # what the stream had trimmed meanwhile without a word: 37,000 of 180,000 shown.
    app = Celeriac("burst", broker=broker_url)
    try:
        app.broker.stream_append(STREAM, [_event("first")], 10_000)
        follow = Cli("-b", broker_url, "events", "-f", "--json")
        clis.append(follow)
        follow.wait_for_line('"first"')
        # Under the stream's length: all of it is shown, and no loss is reported.
        calm = [f"calm-{i}" for i in range(3_000)]
        app.broker.stream_append(STREAM, [_event(i) for i in calm], 10_000)
        follow.wait_for_line('"calm-2999"')
        # Two bursts back to back, trimmed as workers trim: the second pushes the first out.
        burst = [f"burst-{i}" for i in range(20_000)]
        for start in (0, 10_000):
            chunk = burst[start : start + 10_000]
            app.broker.stream_append(STREAM, [_event(i) for i in chunk], 10_000)
        follow.wait_for_line('"burst-19999"')
        code, output = follow.interrupt()
    finally:
        app.broker.close()
    assert code == 0, output
    shown = _shown(output)
    assert shown[: 1 + len(calm)] == ["first", *calm]  # in order, none twice
    after_calm = shown[1 + len(calm) :]
    assert after_calm == sorted(after_calm, key=lambda i: int(i.split("-")[1]))
    assert after_calm[-10_000:] == burst[10_000:]  # the events the stream still holds
    if after_calm != burst:  # what it could not read in time is said on stderr
        assert "some events may have been dropped before they could be shown" in output
    elif broker_url.startswith("sqlite"):
        # The first burst trimmed the last event shown, not the one after it: nothing was
        # missed (SQLite numbers events one by one; Redis's numbers cannot tell).
        assert "dropped" not in output


SHORT_LEASE = {"CELERIAC_WORKER_LEASE_SECONDS": "1", "CELERIAC_WORKER_HEARTBEAT_SECONDS": "0.5"}
#: A frozen worker stays live by its heartbeat for 5 of these: however slow the machine.
SLOW_HEARTBEAT = {"CELERIAC_WORKER_HEARTBEAT_SECONDS": "12"}


def _status(broker_url: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["-b", broker_url, "status", "--json"])
    assert result.exit_code == 0, result.output
    return cast("dict[str, Any]", json.loads(result.stdout))


def _counts(status: dict[str, Any]) -> tuple[int, int]:
    default = next(q for q in status["queues"] if q["queue"] == "default")
    return default["ready"], default["in_flight"]


def test_status_stops_showing_the_work_of_a_killed_worker_in_flight(
    core_app: Celeriac, broker_url: str, workers: WorkerProcesses, ledger: Ledger
) -> None:
    # A worker killed with -9 (the supervisor and its child), and none left to reap: its
    # task read "in flight" in `status` for ever, beside "no live workers", though nothing
    # ran it. Its lease has run out: the next worker to fetch takes it, so it is ready.
    proc = workers.start("-c", "1", env=SHORT_LEASE)
    sent = core.work.delay(60, "long")
    assert wait_for(lambda: ledger.count("start")[sent.id] == 1, timeout=20), workers.log_text()

    def running() -> bool:  # by the worker's next heartbeat
        status = _status(broker_url)
        return [w["extra"]["active"] for w in status["workers"]] == [[sent.id]]

    assert wait_for(running, timeout=20), _status(broker_url)
    assert _counts(_status(broker_url)) == (0, 1)
    workers.kill_all()
    assert proc.poll() is not None

    def gone() -> bool:
        status = _status(broker_url)
        return not status["workers"] and _counts(status) == (1, 0)

    assert wait_for(gone, timeout=20), _status(broker_url)


def test_ping_and_inspect_name_a_live_worker_that_did_not_answer(
    core_app: Celeriac, broker_url: str, workers: WorkerProcesses
) -> None:
    # One worker of two frozen (SIGSTOP; a debugger, a paused VM): ping listed the other
    # and said nothing of it, and inspect active showed the other's tasks only, read as
    # "the frozen one is idle". Its heartbeat still said it was live (for 10 s by default).
    live = workers.start("-c", "1")
    frozen = workers.start("-c", "1", env=SLOW_HEARTBEAT)
    ids = {w.pid: w.id for w in core_app.broker.workers() if "child_of" not in w.extra}
    _freeze_outside_a_write(frozen.pid, broker_url)
    # A long wait for the live one's sake (a busy machine); the frozen one uses it all.
    ping = ["-b", broker_url, "ping", "--timeout", "5"]
    inspect = ["-b", broker_url, "inspect", "active", "--json", "--timeout", "5"]
    try:
        pinged = CliRunner().invoke(cli, ping)
        inspected = CliRunner().invoke(cli, inspect)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert pinged.exit_code == 0, pinged.output  # one answered, as before
    assert pinged.stdout == f"{ids[live.pid]}: pong\n"
    silent = f"no answer within 5s from {ids[frozen.pid]}, live by its heartbeat: frozen"
    assert silent in pinged.stderr
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.stdout) == {ids[live.pid]: []}  # still well-formed JSON
    assert silent in inspected.stderr


def _freeze_outside_a_write(pid: int, broker_url: str) -> None:
    """SIGSTOP ``pid`` at a moment it holds no SQLite write lock.

    A process stopped inside one of its (short) transactions locks every other one out of
    the file until it runs again: the "database is locked" error a person then gets says
    so, and is not what this test is about (seen once in a whole run: ping could not send).
    """
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        if not broker_url.startswith("sqlite:"):
            return
        probe = sqlite3.connect(broker_url.removeprefix("sqlite:///"), timeout=1.0)
        try:
            probe.execute("BEGIN IMMEDIATE")  # waits out the other processes' transactions
            probe.rollback()
            return
        except sqlite3.OperationalError:  # the stopped one holds it: let it finish
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError(f"process {pid} held the SQLite write lock at every stop")


def test_status_and_inspect_show_names_and_ids_whole_at_80_columns(
    core_app: Celeriac,
    broker_url: str,
    workers: WorkerProcesses,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not a terminal (a pipe, a log, kubectl exec without -t), rich draws 80 columns and
    # cut what did not fit with "…": a running task's id (which `revoke` takes), two
    # queues named alike, a worker's id (which `shutdown -w` takes) and its queue list.
    monkeypatch.setenv("COLUMNS", "80")
    queues = ("shop.billing.invoice-reminders.high", "shop.billing.invoice-reminders.low")
    for queue in queues:
        core.add.apply_async((1, 2), queue=queue)
    pod = WorkerInfo(
        "shop-worker-7d9f8b6c5-x2x4q:1:a30293",
        "shop-worker-7d9f8b6c5-x2x4q",
        1,
        (*queues, "default", "emails", "reports"),
        4,
        time.time(),
    )
    core_app.broker.heartbeat(pod, 600)
    workers.start("-c", "1")
    sent = core.work.delay(60, "long")
    assert wait_for(lambda: ledger.count("start")[sent.id] == 1, timeout=20), workers.log_text()
    here = ledger.path.parent
    status = run_celeriac("-b", broker_url, "status", cwd=here)
    inspected = run_celeriac("-b", broker_url, "inspect", "active", cwd=here)
    assert status.returncode == 0 and inspected.returncode == 0, status.stderr + inspected.stderr
    assert "…" not in status.stdout + inspected.stdout
    shown = table_cells(status.stdout)
    assert {row[0] for row in shown} >= {*queues, "default", pod.id}
    listed = [row[1].replace(" ", "") for row in shown if row[0] == pod.id]
    assert listed == [",".join(pod.queues)]  # wrapped at its spaces, or folded
    # Its concurrency, headed "-c": it was headed "children" (a threads worker has one).
    assert [row[2] for row in shown if row[0] == pod.id] == ["4"]
    assert "┃ -c " in status.stdout and "children" not in status.stdout
    assert [row[:2] for row in table_cells(inspected.stdout)] == [[sent.id, "tests.apps.core.work"]]


def test_events_on_a_broker_without_any_says_whether_this_app_turns_them_off(
    sqlite_url: str,
) -> None:
    # "no events yet on this broker" alone, when workers run with events off, read as "no
    # task has run".
    runner = CliRunner()
    off = {"CELERIAC_WORKER_SEND_TASK_EVENTS": "false"}
    result = runner.invoke(cli, ["-b", sqlite_url, "events"], env=off)
    assert result.exit_code == 0 and result.stdout == ""
    assert "this app's configuration turns them off (worker_send_task_events=False)" in (
        result.stderr
    )
    result = runner.invoke(cli, ["-b", sqlite_url, "events"])
    assert "no events yet on this broker (workers write one per task, unless" in result.stderr


def test_a_worker_answers_shutdown_with_what_it_does_not_an_unknown_command(
    core_app: Celeriac, workers: WorkerProcesses
) -> None:
    # The supervisor stopped, but its answer was {"error": "unknown command 'shutdown'"}:
    # a script or admin page that sent shutdown through broadcast() read it as refused.
    proc = workers.start("-c", "1")
    (answer,) = broadcast(core_app, "shutdown", timeout=10)
    assert answer.data == "stopping warmly: running tasks finish, the rest go back to their queue"
    assert proc.wait(timeout=30) == 0


def test_status_names_a_queue_that_holds_tasks_no_live_worker_consumes(
    core_app: Celeriac, broker_url: str, workers: WorkerProcesses
) -> None:
    # A producer's queue name that no worker's -Q has: its tasks wait for ever, and status
    # showed its count like any backlog a worker is eating.
    workers.start("-c", "1")  # consumes default
    core.add.apply_async((1, 2), queue="nobody-serves-this")
    core.add.apply_async((1, 3), queue="nobody-serves-this", countdown=600)
    assert core.add.delay(2, 2).get(timeout=30) == 4
    core.add.apply_async((1, 4), queue="nobody-serves-this", countdown=600)
    status = _status(broker_url)
    assert status["unserved_queues"] == ["nobody-serves-this"]
    assert status["notes"] == [
        "queue 'nobody-serves-this' holds 1 ready and 2 delayed task(s) and no live worker "
        "consumes it (theirs: default): start one with -Q nobody-serves-this, or check that "
        "the producer's queue name is right"
    ]
    result = CliRunner().invoke(cli, ["-b", broker_url, "status"])
    assert "note: queue 'nobody-serves-this' holds 1 ready and 2 delayed" in " ".join(
        result.stdout.split()
    )
