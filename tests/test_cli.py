"""The command line: clear one-line errors, JSON output, and the demo."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

import redis
from celeriac import Celeriac
from celeriac.cli import cli
from celeriac.cli.worker_cmd import warn_of_soft_limits_that_never_fire
from celeriac.testing import run_queued
from tests.apps import core
from tests.conftest import ROOT, run_celeriac
from tests.redis_server import RedisServer


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_missing_module_says_which() -> None:
    code, output = invoke("-A", "no_such_project.tasks", "worker")
    assert code == 1
    assert "no module named 'no_such_project.tasks'" in output
    assert "Traceback" not in output


def test_a_module_that_raises_at_import_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "raises_at_import.py").write_text("from celeriac import Celeriac\n\n1 / 0\n")
    (tmp_path / "lacks_a_dependency.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, output = invoke("-A", "raises_at_import", "worker")
    assert code == 1 and "importing it raised ZeroDivisionError at " in output
    assert "raises_at_import.py:3: division by zero" in output and "--debug" in output
    code, output = invoke("-A", "lacks_a_dependency", "worker")
    assert code == 1 and "lacks_a_dependency.py:1: No module named 'no_such_dependency'" in output


def test_many_more_child_processes_than_cpus_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from celeriac.cli.worker_cmd import warn_if_many_processes

    assert not warn_if_many_processes("process", 8, cpus=2)
    assert not warn_if_many_processes("threads", 500, cpus=2)  # one child
    assert warn_if_many_processes("process", 9, cpus=2)
    assert "-c 9 starts 9 child processes where this worker may use 2 CPUs" in caplog.text
    assert "-P threads or -P asyncio" in caplog.text


def test_module_without_an_app_says_so() -> None:
    code, output = invoke("-A", "tests.test_message", "worker")
    assert code == 1 and "has no Celeriac app" in output


@pytest.mark.parametrize("submodule", ["celery", "celeriac_app"])
def test_a_package_whose_app_is_in_its_app_module_is_found(tmp_path: Path, submodule: str) -> None:
    # `-A proj` with the app in proj/celery.py (where Celery's -A finds it) or in
    # proj/celeriac_app.py (the README's Django layout): "module proj has no Celeriac app".
    package = tmp_path / f"pkg_{submodule}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / f"{submodule}.py").write_text(
        "from celeriac import Celeriac\n"
        f"app = Celeriac('found', broker='sqlite:///{tmp_path}/q.db')\n"
        "app.task(name='found.ping')(lambda: 'pong')\n"
    )
    done = run_celeriac("-A", package.name, "check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "found.ping" in done.stdout


def test_a_worker_that_could_not_read_its_own_messages_does_not_start(tmp_path: Path) -> None:
    # It started, then dead-lettered every message as "malformed ... fix the producer".
    (tmp_path / "serialized.py").write_text(
        "from celeriac import Celeriac\n"
        f"app = Celeriac('serialized', broker='sqlite:///{tmp_path}/q.db')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CELERIAC_ACCEPT_CONTENT": '["msgpack"]'}
    for command in (["worker", "-c", "1"], ["check"]):
        argv = [sys.executable, "-m", "celeriac", "-A", "serialized", *command]
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1, done.stderr
        assert "task_serializer=json is not in accept_content=['msgpack']" in done.stderr


def test_worker_needs_an_app() -> None:
    code, output = invoke("worker")
    assert code == 1 and "pass -A MODULE" in output


def test_a_queue_name_redis_cannot_use_stops_the_worker_at_start(
    redis_server: RedisServer,
) -> None:
    # Refused by the supervisor, before any child exists: not a crash loop of every child.
    code, output = invoke("-A", "tests.apps.core", "-b", redis_server.url, "worker", "-Q", "a,{b}")
    assert code == 1 and "queue name '{b}' cannot be used with Redis" in output


def test_call_checks_the_arguments_of_a_task_it_knows(broker_url: str) -> None:
    code, output = invoke(
        "-A", "tests.apps.core", "-b", broker_url, "call", "tests.apps.core.add", "--args", "[1]"
    )
    assert code == 2 and "missing a required argument: 'y'" in output
    code, output = invoke("-b", broker_url, "call", "tests.apps.core.add", "--args", "[1]")
    assert code == 0  # without -A the worker's code decides


def test_call_of_a_name_the_app_lacks_sends_it_and_says_what_will_happen(broker_url: str) -> None:
    code, output = invoke(
        "-A", "tests.apps.core", "-b", broker_url, "call", "tests.apps.core.ad", "--args", "[1]"
    )
    assert code == 0
    assert "tests.apps.core has no task named 'tests.apps.core.ad'" in output
    assert "did you mean 'tests.apps.core.add'?" in output and "dead-letters it after" in output
    code, output = invoke(
        "-A", "tests.apps.core", "-b", broker_url, "call", "tests.apps.core.add", "--args", "[1, 2]"
    )
    assert code == 0 and "note:" not in output
    code, output = invoke("-b", broker_url, "call", "elsewhere.task")  # no -A: nothing to compare
    assert code == 0 and "has no task named" not in output
    # ... but its own queue is unknown: where it went is said (a worker on another queue
    # never sees it, and --wait timed out with nothing said).
    assert "sent to queue 'default' (without -A the task's own queue is unknown)" in output
    code, output = invoke("-b", broker_url, "call", "elsewhere.task", "-q", "default")
    assert code == 0 and "note:" not in output
    code, output = invoke("-b", broker_url, "status", "--json")
    assert [q["ready"] for q in json.loads(output)["queues"]] == [4]  # all four were sent


@pytest.mark.parametrize(
    ("command", "names"),
    [
        (["call", "x.y", "-q", ""], "'-q' / '--queue'"),
        (["call", "x.y", "--id", ""], "'--id'"),
        (["call", ""], "'NAME'"),
        (["result", ""], "'TASK_ID'"),
        (["purge", "", "--yes"], "'QUEUE'"),
        (["dlq", "show", ""], "'TASK_ID'"),
        (["dlq", "replay", "a", ""], "'[IDS]...'"),
        (["dlq", "replay", "--task", ""], "'--task'"),
        (["revoke", ""], "'TASK_ID... | -'"),
        (["beat", "add", "", "x.y", "--every", "5"], "'NAME'"),
        (["beat", "add", "nightly", "", "--every", "5"], "'TASK'"),
    ],
)
def test_an_empty_name_or_id_is_a_usage_error_naming_it(
    broker_url: str, command: list[str], names: str
) -> None:
    # What "$QUEUE" gives when QUEUE is unset: `call --queue ''` sent to the default queue,
    # `result ''` said PENDING and `purge ''` purged nothing, each without a word.
    code, output = invoke("-b", broker_url, *command)
    assert code == 2 and f"Invalid value for {names}: is empty (an unset shell variable?)" in output
    assert Celeriac("check", broker=broker_url).broker.stats() == []  # nothing was sent


@pytest.mark.parametrize("option", ["-b", "-A"])
def test_an_empty_broker_or_app_is_a_usage_error(option: str) -> None:
    # -b "$BROKER" with BROKER unset was taken as not given: status read (and created) the
    # default SQLite file in the current folder, and said "no queues yet".
    code, output = invoke(option, "", "status")
    assert code == 2 and f"Invalid value for '{option}' / " in output
    assert "is empty (an unset shell variable?)" in output


def test_call_refuses_a_queue_name_no_worker_could_be_given(broker_url: str) -> None:
    code, output = invoke("-b", broker_url, "call", "x.y", "-q", "reports, nightly")
    assert (
        code == 2 and "Invalid value for '-q' / '--queue': must be a queue name a worker" in output
    )
    assert "got 'reports, nightly'" in output and "Traceback" not in output


def test_bad_json_arguments_are_usage_errors(broker_url: str) -> None:
    code, output = invoke("-b", broker_url, "call", "x.y", "--args", "[1,")
    assert code == 2 and "not valid JSON" in output
    code, output = invoke("-b", broker_url, "call", "x.y", "--kwargs", "[1]")
    assert code == 2 and "must be a JSON dict" in output


def test_purge_writes_a_queue_name_s_control_characters_as_escapes(broker_url: str) -> None:
    # Printed raw, a name with a newline or an escape sequence broke or restyled the line.
    code, output = invoke("-b", broker_url, "purge", "jobs\n\x1b[2Jx", "--yes")
    assert code == 0
    assert "purged 0 task(s) from queue jobs\\n\\x1b[2Jx\n" in output


MS = 0.001  # sent_at is rounded to the millisecond; Redis keeps whole milliseconds


def test_call_result_status_purge(core_app: Celeriac, broker_url: str) -> None:
    before = time.time()
    code, output = invoke("-b", broker_url, "call", "tests.apps.core.add", "--args", "[2, 3]")
    after = time.time()
    assert code == 0
    task_id = output.strip().splitlines()[-1]  # after the note on stderr: sent to 'default'
    asked = time.time()
    code, output = invoke("-b", broker_url, "status", "--json")
    read = time.time()
    status = json.loads(output)
    (queue,) = status["queues"]
    since, waited = queue.pop("ready_since"), queue.pop("waited_seconds")
    assert queue == {
        "queue": "default",
        "ready": 1,
        "delayed": 0,
        "in_flight": 0,
        "dead": 0,
        "expired_today": 0,
    }
    # Ready since it was sent (a message's sent_at is rounded to the ms): its wait is
    # counted from then to the status read.
    assert before - MS <= since <= after + MS
    assert asked - after - MS <= waited <= read - before + MS
    assert status["workers"] == []
    asked = time.time()
    code, output = invoke("-b", broker_url, "status")
    read = time.time()
    assert "no live workers" in output
    header = next(line for line in output.splitlines() if "queue" in line and "ready" in line)
    assert "longest wait" in header
    row = next(line for line in output.splitlines() if " default " in line)
    shown = re.search(r"\b1 │ +(\d+\.\d)s │", row)  # ready, then its longest wait
    assert shown, row
    assert asked - after - 0.05 <= float(shown.group(1)) <= read - before + 0.05
    run_queued(core_app)
    code, output = invoke("-b", broker_url, "result", task_id, "--json")
    assert json.loads(output)["result"] == 5 and json.loads(output)["state"] == "SUCCESS"
    code, output = invoke("-b", broker_url, "result", task_id)
    assert "SUCCESS" in output and code == 0
    core.add.delay(1, 1)
    code, output = invoke("-b", broker_url, "purge", "default", "--yes")
    assert output.strip() == "purged 1 task(s) from queue default"
    code, output = invoke("-b", broker_url, "purge", "defualt", "--yes")
    assert code == 0 and "no queue 'defualt' has been used on this broker" in output
    assert "(queues: default)" in output


def test_a_large_result_is_shown_cut_with_json_for_the_whole(
    core_app: Celeriac, broker_url: str
) -> None:
    # A group of 20,000 members printed 2,011 lines of numbers.
    r = core.add.delay(list(range(5_000)), [])
    run_queued(core_app)
    code, output = invoke("-b", broker_url, "result", r.id)
    said = " ".join(output.split())  # the table wraps the value
    assert code == 0 and "characters in all; --json prints the whole value)" in said, said
    assert "4999" not in said and len(output.splitlines()) < 60
    code, output = invoke("-b", broker_url, "result", r.id, "--json")
    assert json.loads(output)["result"] == list(range(5_000))


def test_failed_result_exits_non_zero_and_shows_the_error(
    core_app: Celeriac, broker_url: str
) -> None:
    r = core.fail.delay("disk full")
    run_queued(core_app, fail_fast=False)
    code, output = invoke("-b", broker_url, "result", r.id)
    assert code == 1 and "builtins.ValueError: disk full" in output


def test_events_show_a_run_time_only_for_what_ran(core_app: Celeriac, broker_url: str) -> None:
    from celeriac.brokers.records import Outgoing

    ran = core.add.delay(1, 2)
    core_app.broker.send([Outgoing("garbled", "default", b"not json")])
    run_queued(core_app)
    code, output = invoke("-b", broker_url, "events", "-n", "5")
    lines = {line.split("[")[1].split("]")[0]: line for line in output.splitlines()}
    assert code == 0 and " succeeded " in lines[ran.id] and "s (" in lines[ran.id]
    assert "dead-lettered" in lines["garbled"] and " in 0" not in lines["garbled"]


def test_dlq_commands(core_app: Celeriac, broker_url: str) -> None:
    from celeriac.brokers.records import Outgoing

    core_app.broker.send([Outgoing("bad", "default", b"not json")])
    core_app.broker.send([Outgoing("binary", "default", b"\x00\xff\xfe")])
    run_queued(core_app)
    code, output = invoke("-b", broker_url, "dlq", "list", "--json")
    letters = {letter["id"]: letter for letter in json.loads(output)}
    assert letters["bad"]["body"] == "not json"
    code, output = invoke("-b", broker_url, "dlq", "list", "--limit", "1")
    assert "newest 1 of 2; --limit N shows more" in output  # not "newest 1" of how many?
    code, output = invoke("-b", broker_url, "dlq", "show", "binary")
    shown = json.loads(output)
    assert shown["reason"].startswith("malformed message")
    assert base64.b64decode(shown["body_base64"]) == b"\x00\xff\xfe"  # exact, not replaced
    code, output = invoke("-b", broker_url, "dlq", "replay")
    assert code == 2 and "say which" in output
    code, output = invoke("-b", broker_url, "dlq", "replay", "--all")
    assert output.startswith("replayed 2 dead letter(s)\n")
    # Both malformed: they come back, and --all says so as a list of ids does.
    assert "2 of them had been dead-lettered as malformed or refused" in output
    run_queued(core_app)
    code, output = invoke("-b", broker_url, "dlq", "purge")
    assert code == 1 and "without --yes" in output
    assert "--debug" not in output  # celeriac's own errors say what to do: no traceback hint
    code, output = invoke("-b", broker_url, "dlq", "purge", "--yes")
    assert output.strip() == "deleted 2 dead letter(s)"


def test_no_password_is_ever_printed(redis_server: RedisServer) -> None:
    url = f"redis://alice:s3cret@127.0.0.1:{redis_server.port}/0"
    assert "s3cret" not in repr(Celeriac("shop", broker=url))
    code, output = invoke("-b", url, "status")  # this server has no user alice: refused
    assert code == 1 and "alice:***@127.0.0.1" in output and "s3cret" not in output
    assert "refused this client's credentials" in output
    code, output = invoke("-b", url.replace("redis:", "amqp:"), "status")
    assert code == 1 and "unknown broker URL" in output and "s3cret" not in output
    code, output = invoke("-b", f"{url}?sokcet_timeout=1", "status")
    assert code == 1 and "unknown option 'sokcet_timeout'" in output and "s3cret" not in output


def test_check_lists_limits(broker_url: str) -> None:
    _, output = invoke("-A", "tests.apps.core", "-b", broker_url, "check", "--json")
    rows = {row["task"]: row for row in json.loads(output)}
    assert rows["tests.apps.core.stuck"]["time_limit"] == "1s"
    assert rows["tests.apps.core.add"]["time_limit"].endswith("(app default)")


def test_check_and_the_worker_name_a_soft_limit_that_never_fires(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # tests.apps.core.stuck: soft_time_limit=10, time_limit=1. Nothing said so: the task's
    # SoftTimeLimitExceeded cleanup never ran, the hard limit stopped it first.
    code, output = invoke("-A", "tests.apps.core", "-b", broker_url, "check")
    assert code == 0
    said = " ".join(output.split())  # the table's console wraps long lines
    assert "not below their time_limit" in said and "tests.apps.core.stuck" in said
    assert "tests.apps.core.add" not in said.partition("not below")[2]
    from tests.apps import core

    with caplog.at_level("WARNING", logger="celeriac.worker"):
        assert "tests.apps.core.stuck" in warn_of_soft_limits_that_never_fire(core.app)
    assert "tests.apps.core.stuck" in caplog.text and "never fires" in caplog.text


@pytest.mark.slow
def test_demo_exits_zero_on_a_fresh_broker(tmp_path: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "demo", "-n", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 10 finished while" in done.stdout
    assert "countdown=2 task" in done.stdout
    # Its temporary broker is deleted (a folder of it was left in /tmp at every run); the
    # worker's log stays.
    found = re.search(r"Its log: (\S+worker\.log)", done.stdout.replace("\n", ""))
    assert found is not None, done.stdout
    log = Path(found.group(1))
    try:
        assert log.exists() and sorted(p.name for p in log.parent.iterdir()) == ["worker.log"]
    finally:
        shutil.rmtree(log.parent)


def test_check_export_and_against(broker_url: str, tmp_path: Path) -> None:
    exported = tmp_path / "deployed.json"
    code, output = invoke(
        "-A", "tests.apps.core", "-b", broker_url, "check", "--export", str(exported)
    )
    assert code == 0 and "task(s) to" in output
    code, output = invoke(
        "-A", "tests.apps.core", "-b", broker_url, "check", "--against", str(exported)
    )
    assert code == 0 and "no breaking changes" in output
    old = json.loads(exported.read_text())
    old["tasks"]["tests.apps.core.retired"] = {"params": []}  # a task the new code dropped
    old["tasks"]["tests.apps.core.add"]["params"] = [
        {"name": "y", "required": True},
        {"name": "x", "required": True},
    ]
    old["tasks"]["tests.apps.core.echo_kwargs"]["params"].append({"name": "c", "required": False})
    exported.write_text(json.dumps(old))
    code, output = invoke(
        "-A", "tests.apps.core", "-b", broker_url, "check", "--against", str(exported)
    )
    assert code == 1
    assert "tests.apps.core.retired: removed" in output
    assert "tests.apps.core.add: parameter 'y' moved from position 0 to 1" in output
    assert "tests.apps.core.echo_kwargs: parameter 'c' removed" in output


SHOP_V1 = """
from celeriac import Celeriac
app = Celeriac("shop", broker="memory://")
@app.task(name="shop.ship")
def ship(order_id: int, carrier: str = "dhl") -> str:
    return f"{order_id} via {carrier}"
@app.task(name="shop.charge")
def charge(order_id: int, amount: int) -> str:
    return f"{order_id}: {amount}"
"""
SHOP_V2 = SHOP_V1.replace("int, carrier", "int, priority: bool = False, carrier").replace(
    "order_id: int, amount", "order_id: int, *, amount"
)


def test_check_against_flags_changes_that_misplace_queued_positional_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shop_v1.py").write_text(SHOP_V1)
    (tmp_path / "shop_v2.py").write_text(SHOP_V2)
    monkeypatch.syspath_prepend(str(tmp_path))
    exported = tmp_path / "deployed.json"
    assert invoke("-A", "shop_v1", "check", "--export", str(exported))[0] == 0
    code, output = invoke("-A", "shop_v2", "check", "--against", str(exported))
    assert code == 1 and "3 change(s) would break messages already queued" in output
    assert "shop.ship: new parameter 'priority' inserted at position 1" in output
    assert "shop.ship: parameter 'carrier' moved from position 1 to 2" in output
    assert "shop.charge: parameter 'amount' became keyword-only" in output
    assert invoke("-A", "shop_v1", "check", "--against", str(exported))[0] == 0


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"[1,2]", "is not a celeriac manifest: the top level is an array, not an object"),
        (b'{"tasks": {"t": {"params": 3}}}', "tasks['t'].params is a number, not an array"),
        (b"{not json", "is not a manifest (invalid JSON"),
        (b"\xff\xfe\x00", "is not a manifest (cannot read it"),
    ],
)
def test_check_against_a_file_that_is_not_a_manifest_says_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, complaint: str
) -> None:
    (tmp_path / "shop_v1.py").write_text(SHOP_V1)
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    code, output = invoke("-A", "shop_v1", "check", "--against", str(bad))
    assert code == 1
    assert f"error: {bad} " in output and complaint in output
    assert "Error:" not in output and "Traceback" not in output


def test_status_counts_expired_tasks(core_app: Celeriac, broker_url: str) -> None:
    for _ in range(3):
        core.add.apply_async((1, 1), expires=0.01)
    time.sleep(0.05)
    run_queued(core_app)
    _, output = invoke("-b", broker_url, "status", "--json")
    (queue,) = json.loads(output)["queues"]
    assert queue["expired_today"] == 3 and queue["ready"] == 0


def test_dlq_ids_a_terminal_cannot_show_are_listed_escaped_and_read_back(
    redis_server: RedisServer,
) -> None:
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    app = Celeriac("escaped", broker=url)
    client = redis.Redis(port=redis_server.port)
    try:
        app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)  # registers
        client.rpush(app.broker.keys.queue("default").ready[0], b"junk pushed by hand")
        run_queued(app, fail_fast=False)  # dead-lettered under an id that starts with \x00
        code, output = invoke("-b", url, "dlq", "list")
        shown = re.search(r"\\x00raw-\d+", output)
        assert code == 0 and shown is not None, output
        code, output = invoke("-b", url, "dlq", "show", shown.group())
        assert code == 0 and json.loads(output)["body"] == "junk pushed by hand"
        # As the shell passes it unquoted (the backslash eaten), and as a terminal shows it.
        for typed in (shown.group()[1:], shown.group()[4:]):
            code, output = invoke("-b", url, "dlq", "show", typed)
            assert code == 0 and json.loads(output)["body"] == "junk pushed by hand", typed
        # A task's own id "raw-<n>" is that letter, not the made-up one.
        app.conf.task_unknown_max_age = 0
        app.send_task("shop.gone", task_id=shown.group()[4:])
        run_queued(app, fail_fast=False)
        code, output = invoke("-b", url, "dlq", "show", shown.group()[4:])
        assert code == 0 and json.loads(output)["task"] == "shop.gone"
        code, output = invoke("-b", url, "dlq", "replay", shown.group()[4:])
        assert "replayed 1 dead letter(s)" in output
        app.broker.purge("default")
        code, output = invoke("-b", url, "dlq", "replay", shown.group()[1:])
        assert code == 0 and "replayed 1 dead letter(s)" in output
        code, output = invoke("-b", url, "dlq", "replay", "no-such-id")
        assert "replayed 0" in output and "no dead letter of those ids" in output
    finally:
        client.close()
        app.broker.close()


def test_a_task_revoked_before_any_worker_took_it_reads_so(
    core_app: Celeriac, broker_url: str
) -> None:
    # Right after `celeriac revoke`, `result` showed "task [id]" and "worker -", and the
    # handle's get() raised "task ?[id] was revoked".
    from celeriac.errors import TaskRevoked

    r = core.add.delay(1, 2)
    code, _ = invoke("-b", broker_url, "revoke", r.id)
    assert code == 0
    code, output = invoke("-b", broker_url, "result", r.id)
    assert code == 1 and f"?[{r.id}]" in output and "REVOKED" in output
    assert re.search(r"revoked +\d{4}-", output), output  # when, not "finished"
    assert "none took it since: the one that does drops it" in output
    with pytest.raises(TaskRevoked, match=rf"task {re.escape(core.add.name)}\[{r.id}\] was"):
        r.get(timeout=1)


def test_an_id_of_only_white_space_is_a_usage_error(broker_url: str) -> None:
    # `revoke ' '` said "revoked 1 task(s)"; `result ' '` said PENDING.
    code, output = invoke("-b", broker_url, "revoke", " ")
    assert code == 2 and "is only white space (' '): no task, queue or id is." in output
    code, output = invoke("-b", broker_url, "result", "\t")
    assert code == 2 and "is only white space" in output


def test_purge_asks_with_how_many_tasks_it_would_delete(tmp_path: Path) -> None:
    # At a terminal purge asks first: "Delete every waiting task in queue 'emails'?" said
    # nothing of whether that was 3 tasks or 3,000.
    import os
    import pty

    url = f"sqlite:///{tmp_path}/broker.db"
    app = Celeriac("purge-prompt", broker=url)
    app.send_task("shop.mail", queue="emails")
    app.send_task("shop.mail", queue="emails")
    app.send_task("shop.mail", queue="emails", countdown=600)
    app.broker.close()
    main, terminal = pty.openpty()
    try:
        os.write(main, b"n\n")  # the answer waits in the terminal until purge reads it
        done = subprocess.run(
            [sys.executable, "-m", "celeriac", "-b", url, "purge", "emails"],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            timeout=60,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert done.returncode == 1  # declined: aborted
        said = os.read(main, 4096).decode()
    finally:
        os.close(main)
        os.close(terminal)
    assert "Delete every waiting task in queue 'emails' (2 ready, 1 delayed)? [y/N]" in said
    assert [(s.ready, s.delayed) for s in Celeriac("x", broker=url).broker.stats()] == [(2, 1)]
