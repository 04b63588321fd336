"""Follow-ups from a review of the command line and a new user's first hour: an app module
with a syntax error, ``-A tasks.app``, revoking a task name, a mistyped id or a group's
id, ``status`` run from the wrong folder, ``result``'s timeout and a stop's error line,
the Redis persistence warning in one-shot commands, and a send with Redis down."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from celeriac import Celeriac, group
from celeriac.cli import cli
from celeriac.errors import BrokerError
from celeriac.message import decode_result
from celeriac.testing import wait_for
from tests.apps import core
from tests.conftest import Ledger, WorkerProcesses, run_celeriac
from tests.redis_server import RedisServer, free_port


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder the CLI runs from, with no broker URL in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CELERIAC_BROKER_URL", raising=False)
    return tmp_path


def _module_name() -> str:
    return f"followup_{uuid.uuid4().hex[:10]}"  # imports are cached per process


# -- -A ----------------------------------------------------------------------------------


def test_a_syntax_error_in_the_app_module_names_its_file_and_line(project: Path) -> None:
    name = _module_name()
    (project / f"{name}.py").write_text("from celeriac import Celeriac\n\ndef f(:\n    pass\n")
    result = invoke("-A", name, "status")
    assert result.exit_code == 1
    # It named the CLI's own frame: "SyntaxError at .../celeriac/cli/main.py:108".
    assert f"importing it raised SyntaxError at {project / name}.py:3: " in result.output
    assert "cli/main.py" not in result.output


def test_an_app_written_with_a_dot_is_told_to_use_a_colon(project: Path) -> None:
    name = _module_name()
    (project / f"{name}.py").write_text(
        f"from celeriac import Celeriac\napp = Celeriac('x', broker='sqlite:///{project}/b.db')"
        "\n\n@app.task\ndef send_welcome(user_id: int) -> None: ...\n"
    )
    result = invoke("-A", f"{name}.app", "status")
    assert result.exit_code == 1
    # It said "no module named ... Run from your project folder", to a user who was in it.
    assert f"its app 'app' is named with a colon: -A {name}:app" in result.output
    assert "Run from your project folder" not in result.output
    result = invoke("-A", f"{name}.send_welcome", "status")  # an attribute, not an app
    assert result.exit_code == 1
    assert f"'send_welcome' in it is not an app. Name the module that holds the app: -A {name}" in (
        result.output
    )
    assert invoke("-A", f"{name}:app", "status").exit_code == 0  # what it suggested works
    result = invoke("-A", f"{name}.nothing_here", "status")
    assert result.exit_code == 1 and "Run from your project folder" in result.output


# -- revoke ------------------------------------------------------------------------------


def test_revoke_refuses_a_task_name_and_notes_an_id_nothing_is_known_of(
    core_app: Celeriac, broker_url: str
) -> None:
    result = invoke("-A", "tests.apps.core", "-b", broker_url, "revoke", "tests.apps.core.add")
    assert result.exit_code == 2, result.output  # said "revoked 1 task(s)"
    assert "tests.apps.core.add is a task name; revoke takes task ids" in result.output
    assert core_app.broker.get_result("tests.apps.core.add") is None  # nothing was revoked
    typo = f"no-such-id-{uuid.uuid4().hex[:6]}"
    result = invoke("-A", "tests.apps.core", "-b", broker_url, "revoke", typo)
    assert result.exit_code == 0 and result.stdout.strip() == "revoked 1 task(s)"
    assert f"nothing is stored for {typo}: it is still queued, was never sent" in result.stderr
    assert "Revoked anyway" in result.stderr


def test_revoking_a_groups_id_revokes_its_members(
    core_app: Celeriac, broker_url: str, workers: WorkerProcesses, ledger: Ledger
) -> None:
    sent = group(core.add.s(1, 1), core.add.s(2, 2)).apply_async()
    result = invoke("-b", broker_url, "revoke", sent.id)
    assert result.exit_code == 0, result.output
    assert f"revoked group {sent.id}: its 2 member(s)" in result.stdout
    assert core_app.broker.get_result(sent.id) is None  # the group's id is no task's
    sentinel = core.add.delay(4, 4)
    workers.start("-c", "1")
    assert sentinel.get(timeout=30) == 8
    members = [r.id for r in sent.results]

    def settled() -> bool:
        stored = core_app.broker.get_results(members)
        return all(s is not None and decode_result(s[0]).worker for s in stored)

    assert wait_for(settled, timeout=30), workers.log_text()
    assert [core_app.AsyncResult(i).state for i in members] == ["REVOKED", "REVOKED"]
    assert not any(ledger.count("run")[i] for i in members), "a member of a revoked group ran"
    shown = invoke("-b", broker_url, "result", sent.id)
    assert "REVOKED" in shown.output


# -- status from the wrong folder --------------------------------------------------------


def test_a_command_that_creates_the_sqlite_file_says_where(project: Path) -> None:
    result = invoke("status")  # the default broker: sqlite:///celeriac.db, here
    assert result.exit_code == 0
    # It said only "no queues yet ... no live workers": at 3 a.m., "the worker died".
    assert f"celeriac.db did not exist in {project}: this command created it, empty" in (
        result.stderr
    )
    assert f"-b sqlite:///{project}/celeriac.db" in result.stderr
    again = invoke("status")  # the file exists now: nothing to say
    assert again.exit_code == 0 and "did not exist" not in again.output
    elsewhere = project / "other"
    elsewhere.mkdir()
    result = invoke("-b", f"sqlite:///{elsewhere}/jobs.db", "ping", "--timeout", "0.1")
    assert result.exit_code == 1  # no worker answered, and why that may be
    assert f"jobs.db did not exist in {elsewhere}: this command created it, empty" in (
        result.stderr
    )
    # Named by an absolute path, the folder the command ran in is not the cause: moving to
    # the worker's folder, as the note for a relative path advises, would change nothing.
    assert "Check the path for a typo" in result.stderr
    assert "relative SQLite path" not in result.stderr


# -- result ------------------------------------------------------------------------------


def test_result_wait_says_the_timeout_as_given(project: Path) -> None:
    result = invoke("-b", f"sqlite:///{project}/b.db", "result", "nope", "--wait",
                    "--timeout", "0.3")  # fmt: skip
    assert result.exit_code == 1
    # It said "within 0.29871s": what was left of it after a read.
    assert "task ?[nope] did not finish within 0.3s;" in result.output


def test_a_stopped_tasks_error_line_is_printed_once(
    core_app: Celeriac, broker_url: str, workers: WorkerProcesses, ledger: Ledger
) -> None:
    workers.start("-c", "1")
    long = core.work.delay(60)
    assert wait_for(lambda: ledger.count("start")[long.id] == 1, timeout=30), workers.log_text()
    assert invoke("-b", broker_url, "revoke", long.id, "--terminate").exit_code == 0

    def settled() -> bool:
        stored = core_app.broker.get_result(long.id)
        return stored is not None and bool(decode_result(stored[0]).worker)

    assert wait_for(settled, timeout=30), workers.log_text()
    line = "was revoked and stopped"
    shown = invoke("-b", broker_url, "result", long.id)
    assert shown.exit_code == 1 and "REVOKED" in shown.output
    assert " ".join(shown.output.split()).count(line) == 1, shown.output  # was twice
    # The same id sent again (it runs once) shows the stored outcome: that line once too.
    again = invoke("-b", broker_url, "call", "tests.apps.core.work", "--args", "[60]",
                   "--id", long.id, "--wait", "--timeout", "10")  # fmt: skip
    assert again.exit_code == 1 and f"REVOKED task tests.apps.core.work[{long.id}]" in again.stdout
    assert " ".join(again.stdout.split()).count(line) == 1, again.stdout


# -- Redis ---------------------------------------------------------------------------------


def test_one_shot_commands_leave_the_persistence_warning_to_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"  # persistence off
    for args in (("status",), ("result", "some-id"), ("dlq", "list")):
        done = run_celeriac("-b", url, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "persistence off" not in done.stderr, args  # printed by every command
    done = run_celeriac("-b", url, "--debug", "status", cwd=tmp_path)
    assert "has persistence off" in done.stderr  # still there for those who ask
    startup = logging.getLogger("celeriac.brokers.redis.startup")
    before = startup.level
    assert invoke("-b", url, "status").exit_code == 0
    assert startup.level == before  # one command run in a process leaves the rest as it was


def test_call_with_redis_down_says_the_task_was_not_sent(tmp_path: Path) -> None:
    # The wording comes from Celeriac.publish, so delay() says the same.
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens
    done = run_celeriac(
        "-b", url, "call", "shop.tasks.send_welcome", "--args", "[42]", cwd=tmp_path
    )
    assert done.returncode == 1
    first = done.stderr.splitlines()[0]
    # It began "error: could not check the server": nothing said the task was not sent.
    assert first.startswith("error: task shop.tasks.send_welcome["), first
    assert "] was not sent: " in first
    assert f"Redis at {url} did not answer" in first and "Check that redis-server" in first


def test_a_batch_send_with_redis_down_says_how_many_tasks_were_not_sent() -> None:
    app = Celeriac("down", broker=f"redis://127.0.0.1:{free_port()}/0")

    @app.task
    def ping(n: int) -> int:
        return n

    try:
        with pytest.raises(BrokerError, match=r"^task .*ping\[.*\] was not sent: "):
            ping.delay(1)
        with pytest.raises(BrokerError, match=r"^3 tasks \(.*ping\[.*\], \.\.\.\) were not sent: "):
            app.send_many([ping.message((i,)) for i in range(3)])
    finally:
        app.broker.close()


def test_a_worker_whose_queues_miss_its_tasks_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `worker -Q emials`, or `worker` alone with every task on `emails`: started without a
    # word, and the tasks waited until a get() timed out.
    from celeriac.cli.worker_cmd import warn_of_queues_no_task_is_sent_to

    app = Celeriac("shop", broker="memory://")
    app.task(name="shop.welcome", queue="emails")(lambda user: user)
    app.task(name="shop.charge", queue="payments")(lambda order: order)
    with caplog.at_level(logging.WARNING, logger="celeriac.worker"):
        typo = warn_of_queues_no_task_is_sent_to(app, ["emials", "payments"])
        none = warn_of_queues_no_task_is_sent_to(app, ["default"])
        assert warn_of_queues_no_task_is_sent_to(app, ["payments"]) == ""  # one of two: fine
    assert typo.startswith("-Q queue 'emials' is named by no task defined here (did you mean ")
    assert none.startswith("no task defined here names a queue this worker consumes (default)")
    assert "wait there until a worker consumes them (-Q emails,payments). If this " in none
    assert none.endswith("fed by queue= at send, ignore this")
    # A queue a periodic entry names is one its tasks go to.
    app.beat.periodic(app.tasks["shop.welcome"], every=60, name="nudge", args=(1,), queue="nudges")
    assert warn_of_queues_no_task_is_sent_to(app, ["nudges"]) == ""
    assert caplog.text.count("WARNING") == 2
    routed = Celeriac("shop", broker="memory://", task_routes={"shop.*": "emails"})
    routed.task(name="shop.welcome")(lambda user: user)
    assert warn_of_queues_no_task_is_sent_to(routed, ["default"]) == ""  # a router decides
    # Said by the worker command itself, before it starts.
    url = f"sqlite:///{tmp_path / 'b.db'}"
    (tmp_path / "qshop.py").write_text(
        "from celeriac import Celeriac\n"
        f"app = Celeriac('qshop', broker={url!r})\n"
        "app.task(name='qshop.welcome', queue='emails')(print)\n"
    )
    procs = WorkerProcesses(url, Ledger(tmp_path / "ledger.txt"))
    try:
        procs.start("-c", "1", "-Q", "emials", app="qshop", env={"PYTHONPATH": str(tmp_path)})
        assert "-Q queue 'emials' is named by no task defined here (did you mean " in (
            procs.log_text()
        )
    finally:
        procs.kill_all()
