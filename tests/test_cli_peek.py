"""``celeriac peek``: what waits in a queue, on SQLite and Redis, read without taking it."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from click.testing import CliRunner

import redis
from celeriac import Celeriac
from celeriac.brokers.records import Delivery, Outgoing
from celeriac.cli import cli
from celeriac.message import Message, encode_message
from celeriac.result import AsyncResult
from celeriac.worker.executor import Executor
from tests.apps import core
from tests.redis_server import RedisServer


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
        core.fail.delay(f"boom {i}")
    core.fail.apply_async(("later",), countdown=600)
    core.add.delay(1, 1)
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--by-task")
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == "queue default: 6 ready, 1 delayed, 0 in flight; by task, of all 7:"
    assert [line.split() for line in lines[1:]] == [  # most first, not by name
        ["task", "ready", "delayed"],
        ["tests.apps.core.fail", "5", "1"],
        ["tests.apps.core.add", "1", "0"],
    ]
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--by-task", "--json")
    assert json.loads(stdout)["tasks"] == [
        {"task": "tests.apps.core.fail", "ready": 5, "delayed": 1, "revoked": 0},
        {"task": "tests.apps.core.add", "ready": 1, "delayed": 0, "revoked": 0},
    ]
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--task", "*.add", "--json")
    assert [m["task"] for m in json.loads(stdout)] == ["tests.apps.core.add"]
    code, stdout, _ = invoke(
        "-b", broker_url, "peek", "default", "--task", "*.add", "--task", "*.fail", "--json"
    )
    shown = json.loads(stdout)
    assert len(shown) == 7 and shown[-1]["state"] == "delayed"
    assert shown[-1]["ready_since"] is None and shown[-1]["due"] > time.time()
    code, stdout, stderr = invoke("-b", broker_url, "peek", "default", "--task", "shop.*")
    assert stdout.strip().endswith("none waiting of task shop.*")
    code, stdout, stderr = invoke("-b", broker_url, "peek", "default", "--task", "core.fail")
    assert "note: no task 'core.fail' read; did you mean 'tests.apps.core.fail'?" in stderr


def test_peek_filters_all_it_reads_not_only_the_lines_it_shows(
    core_app: Celeriac, broker_url: str
) -> None:
    for i in range(25):
        core.add.delay(i, i)
    wanted = [core.fail.delay("flood") for _ in range(2)]
    _, stdout, _ = invoke("-b", broker_url, "peek", "default", "--task", "*.fail", "--ids")
    assert stdout.split() == [r.id for r in wanted]
    _, stdout, stderr = invoke("-b", broker_url, "peek", "default", "--ids")
    assert len(stdout.split()) == 20
    assert "note: printed the first 20 of 27; -n 10000 for more" in stderr


def test_peek_says_when_the_queue_holds_more_than_one_read(
    core_app: Celeriac, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeriac.cli import peek_cmd

    monkeypatch.setattr(peek_cmd, "PEEK_LIMIT", 5)
    for i in range(8):
        core.add.delay(i, i)
    core.fail.delay("past the read")
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--task", "*.fail")
    assert code == 0
    said = " ".join(stdout.split())  # rich wraps at 80 columns
    assert "none of task *.fail among the first 5 read (a peek reads at most" in said
    code, stdout, _ = invoke("-b", broker_url, "peek", "default", "--by-task")
    assert "by task, of the first 5 read" in " ".join(stdout.split())


def test_peeked_ids_can_be_revoked_through_a_pipe(core_app: Celeriac, broker_url: str) -> None:
    # The 3 a.m. case: one task floods a queue; revoke it and leave the rest to run.
    flood = [core.fail.delay("flood") for _ in range(3)]
    keep = core.add.delay(1, 2)
    spaced = core.fail.apply_async(("flood",), task_id="has space")
    _, ids, stderr = invoke("-b", broker_url, "peek", "default", "--task", "*.fail", "--ids")
    assert ids.split() == [r.id for r in flood]  # white space cannot pass through a pipe
    assert "note: id 'has space' holds white space" in stderr
    assert "celeriac revoke 'has space'" in stderr
    code, _, _ = invoke("-b", broker_url, "revoke", "-", stdin=ids)
    assert code == 0
    assert [AsyncResult(r.id, app=core_app).state for r in flood] == ["REVOKED"] * 3
    assert AsyncResult(keep.id, app=core_app).state == "PENDING"
    assert AsyncResult(spaced.id, app=core_app).state == "PENDING"
    # They wait until a worker drops them; peek says so, and --ids leaves them out.
    _, ids, stderr = invoke("-b", broker_url, "peek", "default", "--task", "*.fail", "--ids")
    assert ids == "" and "note: 3 already revoked, left out" in stderr
    _, stdout, _ = invoke("-b", broker_url, "peek", "default", "--task", "*.fail", "--json")
    assert [m["revoked"] for m in json.loads(stdout)] == [True, True, True, False]
    _, stdout, _ = invoke("-b", broker_url, "peek", "default", "--task", "*.fail")
    shown = {line.split()[0]: line.split()[-1] for line in stdout.splitlines()[2:]}
    assert [shown[r.id] for r in flood] == ["revoked"] * 3 and shown["has"] != "revoked"


def test_peek_marks_bytes_that_are_not_a_message_and_refuses_bad_input(
    core_app: Celeriac, broker_url: str
) -> None:
    core_app.broker.send([Outgoing("garbled", "default", b"\x00\xff not a message")])
    code, stdout, stderr = invoke("-b", broker_url, "peek", "default")
    assert code == 0 and stdout.splitlines()[2].split()[:3] == ["garbled", "?", "0"]
    assert "a task shown as ? is bytes that are not a celeriac message" in stderr
    assert "dead-letters it" in stderr
    pickled = b"\x80\x05\x95pickled bytes"
    core_app.broker.send([Outgoing("pickled", "default", pickled)])
    code, stdout, stderr = invoke("-b", broker_url, "peek", "default")
    assert stdout.splitlines()[3].split()[:2] == ["pickled", "(pickled)"]
    assert "a pickled message's task is not read here" in stderr
    _, stdout, _ = invoke("-b", broker_url, "peek", "default", "--json")
    assert json.loads(stdout)[1]["body_base64"] == base64.b64encode(pickled).decode()
    code, _, stderr = invoke("-b", broker_url, "peek", "defualt")
    assert code == 2
    assert "no queue 'defualt' has been used on this broker; did you mean 'default'?" in stderr
    assert "(queues: default)" in stderr
    code, _, stderr = invoke("-b", broker_url, "peek", "default", "--ids", "--json")
    assert code == 2 and "--ids prints ids only" in stderr
    code, _, stderr = invoke("-b", broker_url, "peek", "default", "-n", "0")
    assert code == 2 and "0 is not in the range 1<=x<=10000" in stderr


def test_peek_on_redis_counts_no_id_for_bytes_pushed_by_hand(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{redis_server.url}?prefix=t{uuid.uuid4().hex[:12]}"
    monkeypatch.setattr(core.app.conf, "broker_url", url)
    try:
        sent = [core.add.delay(i, i) for i in range(3)]
        raw = redis.Redis(port=redis_server.port)
        ready = core.app.broker.keys.queue("default").ready[0]  # type: ignore[attr-defined]
        raw.rpush(ready, b'{"task": "tests.apps.core.add", "args": [1]}', b"\x80\x05\x95pickle")
        raw.lpush(ready, b"pushed at the head")
        raw.close()
        code, stdout, stderr = invoke("-b", url, "peek", "default", "--ids", "-n", "3")
        assert stdout.splitlines() == [r.id for r in sent] and stderr == ""
        # Pushed by hand, a message has no id until a fetch gives it one: none to print,
        # none to count among what --ids printed, and a placeholder matches no --task.
        code, stdout, stderr = invoke("-b", url, "peek", "default", "--task", "*add", "--ids")
        assert code == 0 and stdout.splitlines() == [r.id for r in sent]
        assert "note" not in stderr
        _, stdout, _ = invoke("-b", url, "peek", "default", "--task", "(pickled)", "--json")
        assert json.loads(stdout) == []
        _, stdout, stderr = invoke("-b", url, "peek", "default", "--task", "*add")
        assert "a row with no id is bytes pushed into the queue by hand" in stderr
        # Piped, a row is one line however long its task's name: grep finds each one.
        long_name = "shop.billing.tasks.reconcile_invoices_for_account_and_notify_owner"
        message = Message(id=str(uuid.uuid4()), task=long_name, sent_at=time.time())
        core.app.broker.send([Outgoing(message.id, "default", encode_message(message))])
        _, stdout, _ = invoke("-b", url, "peek", "default")
        assert [line.split()[:2] for line in stdout.splitlines() if long_name in line] == [
            [message.id, long_name]
        ]
    finally:
        core.app.broker.close()


def test_peek_says_why_a_delayed_task_waits(core_app: Celeriac, broker_url: str) -> None:
    # A backlog over its rate limit waits in the delayed store: status showed 0 ready and
    # every task delayed, and peek "due in 2s", with nothing saying a limit held them.
    sent = core_app.send_many([core.limited.message((n,)) for n in range(60)])
    later = core.add.apply_async((1, 1), countdown=600)
    executor = Executor(core_app, "w")
    fetched: list[Delivery] = []
    while len(fetched) < len(sent):  # the countdown is not due: only the limited ones
        fetched += core_app.broker.fetch(["default"], "w", limit=60, lease_seconds=30, timeout=1)
    for delivery in fetched:  # as a worker would: run now, or defer to the limit
        job, skip = executor.prepare(delivery)
        assert skip is None
        executor.settle(job, executor.execute(job))
    _, stdout, _ = invoke("-b", broker_url, "peek", "default", "--json", "-n", "100")
    reasons = {m["id"]: m["delayed_for"] for m in json.loads(stdout)}
    assert reasons[later.id] is None  # a countdown: nothing more to say
    assert {"rate limit: its slot", "rate limit: waiting its turn"} <= set(reasons.values())
    _, stdout, _ = invoke("-b", broker_url, "peek", "default", "-n", "100")
    assert "(rate limit: waiting its turn)" in " ".join(stdout.split())
