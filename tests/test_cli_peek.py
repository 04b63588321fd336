"""``celeriac peek``: what waits in a queue, on SQLite and Redis, read without taking it."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from celeriac import Celeriac
from celeriac.brokers.records import Outgoing
from celeriac.cli import cli
from celeriac.result import AsyncResult
from tests.apps import core


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_peek_lists_the_next_tasks_in_the_order_workers_take_them(
    core_app: Celeriac, broker_url: str
) -> None:
    before = time.time()
    first = core.add.delay(1, 1)
    urgent = core.add.apply_async((2, 2), priority=7)
    failing = core.fail.delay("boom")
    later = core.add.apply_async((3, 3), countdown=600)
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--ids")
    assert code == 0
    assert stdout.split() == [urgent.id, first.id, failing.id, later.id]
    code, stdout, _ = invoke("-b", broker_url, "peek", "default")
    lines = stdout.splitlines()
    assert lines[0] == "queue default: 3 ready, 1 delayed, 0 in flight; the next 4:"
    assert lines[1].split() == ["id", "task", "priority", "waited"]  # no one put back
    # 80 columns here: a task's name may fold onto a second line, an id never does.
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line[:1] != " "}
    assert list(rows) == [urgent.id, first.id, failing.id, later.id]
    assert rows[urgent.id][0].startswith("tests.apps.core") and rows[urgent.id][1] == "7"
    assert rows[later.id][1:4] == ["0", "due", "in"]
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--json", "-n", "1")
    (shown,) = json.loads(stdout)
    read = time.time()
    assert shown["id"] == urgent.id and shown["task"] == "tests.apps.core.add"
    assert (shown["state"], shown["priority"], shown["deliveries"]) == ("ready", 7, 0)
    assert before <= shown["ready_since"] <= read and shown["due"] is None
    assert json.loads(shown["body"])["args"] == [2, 2]
    # Reading took nothing: all four still wait.
    assert [s.ready + s.delayed for s in core_app.broker.stats()] == [4]


def test_peek_counts_by_task_and_filters_by_name(core_app: Celeriac, broker_url: str) -> None:
    for i in range(5):
        core.add.delay(i, i)
    core.add.apply_async((9, 9), countdown=600)
    core.fail.delay("boom")
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--by-task")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == "queue default: 6 ready, 1 delayed, 0 in flight; by task, of all 7:"
    assert [line.split() for line in lines[1:]] == [
        ["task", "ready", "delayed"],
        ["tests.apps.core.add", "5", "1"],
        ["tests.apps.core.fail", "1", "0"],
    ]
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--by-task", "--json")
    assert json.loads(stdout)["tasks"] == [
        {"task": "tests.apps.core.add", "ready": 5, "delayed": 1},
        {"task": "tests.apps.core.fail", "ready": 1, "delayed": 0},
    ]
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--task", "*.fail", "--json")
    assert [m["task"] for m in json.loads(stdout)] == ["tests.apps.core.fail"]
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--task", "shop.*")
    assert stdout.strip().endswith("none waiting of task shop.*")


def test_peeked_ids_can_be_revoked_through_a_pipe(core_app: Celeriac, broker_url: str) -> None:
    # The 3 a.m. case: one task floods a queue; revoke it and leave the rest to run.
    flood = [core.fail.delay("flood") for _ in range(3)]
    keep = core.add.delay(1, 2)
    _, ids, _ = invoke("-b", broker_url, "peek", "default", "--task", "*.fail", "--ids")
    code, _, _ = invoke("-b", broker_url, "revoke", "-", stdin=ids)
    assert code == 0
    assert [AsyncResult(r.id, app=core_app).state for r in flood] == ["REVOKED"] * 3
    assert AsyncResult(keep.id, app=core_app).state == "PENDING"


def test_peek_marks_bytes_that_are_not_a_message_and_refuses_bad_input(
    core_app: Celeriac, broker_url: str
) -> None:
    core_app.broker.send([Outgoing("garbled", "default", b"\x00\xff not a message")])
    code, stdout, stderr = invoke("-b", broker_url, "peek", "default")
    assert code == 0 and stdout.splitlines()[2].split()[:3] == ["garbled", "?", "0"]
    assert "a task shown as ? is bytes that are not a celeriac message" in stderr
    assert "dead-letters it" in stderr
    code, _, stderr = invoke("-b", broker_url, "peek", "defualt")
    assert code == 2
    assert "no queue 'defualt' has been used on this broker; did you mean 'default'?" in stderr
    assert "(queues: default)" in stderr
    code, _, stderr = invoke("-b", broker_url, "peek", "default", "--ids", "--json")
    assert code == 2 and "--ids prints ids only" in stderr
    code, _, stderr = invoke("-b", broker_url, "peek", "default", "-n", "0")
    assert code == 2 and "0 is not in the range 1<=x<=10000" in stderr
