"""Safe by default, against hostile or broken input: bytes pushed into the broker (nested
too deeply to decode, copies of signed messages, every wrong shape), results that cannot be
stored, control characters in what logs and the command line print, and secrets in broker
URLs.

Worker processes import this module (``-A tests.test_review_safety``) for its tasks.
"""

from __future__ import annotations

import json
import logging
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from celeriac import Celeriac, chain
from celeriac.brokers import redacted
from celeriac.brokers.records import Outgoing
from celeriac.cli import cli
from celeriac.codec import Codec
from celeriac.errors import SerializationError
from celeriac.message import Message
from celeriac.middleware import Job, Middleware, Outcome, default_middleware
from celeriac.testing import run_queued, wait_for
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer


class SettledStates(Middleware):
    """Remembers the state each task was settled with, as events and workflows see it."""

    settled: dict[str, str] = {}

    def after_settle(self, job: Job, outcome: Outcome, committed: bool) -> None:
        self.settled[job.delivery.id] = outcome.state


app = Celeriac("review-safety", middleware=[*default_middleware(), SettledStates()])

ECHO = "tests.test_review_safety.echo"
DEEP = 100_000  # levels of nesting, far past msgspec's (and Python's) recursion limit


@app.task
def echo(*args: Any) -> list[Any]:
    return list(args)


@app.task
def unstorable() -> object:
    return object()  # not JSON


@app.task
def big(size: int) -> str:
    return "x" * size


@app.task
def fails_with(text: str) -> None:
    raise ValueError(text)


@pytest.fixture
def safety_app(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """This module's app on the test's broker; unknown tasks dead-lettered at once."""
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    monkeypatch.setattr(app.conf, "task_unknown_max_age", 0.0)
    SettledStates.settled.clear()
    yield app
    app.broker.close()


def _send_raw(target: Celeriac, queue: str, bodies: dict[str, bytes]) -> None:
    """Put bytes into the broker as they are, the way a hand-made or hostile producer can."""
    sent = target.broker.send([Outgoing(id=i, queue=queue, body=b) for i, b in bodies.items()])
    assert all(sent)


def _letters(target: Celeriac, ids: list[str]) -> dict[str, Any]:
    return {x.id: x for x in target.broker.find_dead_letters(ids)}


# -- messages nested too deeply to decode ----------------------------------------------------


def _deep_bodies() -> dict[str, bytes]:
    nested = b"[" * DEEP + b"]" * DEEP
    return {
        "deep-everywhere": nested,  # not even a peek at its id and task name can read it
        "deep-args": b'{"id":"deep-args","task":"%s","args":[%s]}' % (ECHO.encode(), nested),
    }


@pytest.mark.slow
def test_a_message_nested_too_deeply_is_dead_lettered_and_the_worker_keeps_running(
    broker_url: str, safety_app: Celeriac, tmp_path: Path
) -> None:
    # msgspec raises RecursionError (no DecodeError) for it: uncaught, the child died at
    # every delivery, also while dead-lettering it, so the message never left the queue
    # and the tasks behind it never ran.
    bodies = _deep_bodies()
    _send_raw(safety_app, "default", bodies)
    behind = echo.delay("behind")
    procs = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    try:
        proc = procs.start("-c", "1", app="tests.test_review_safety")
        assert behind.get(timeout=60) == ["behind"], procs.log_text()
        assert wait_for(lambda: len(_letters(safety_app, list(bodies))) == 2, timeout=30), (
            procs.log_text()
        )
        assert proc.poll() is None
        assert "crashed" not in procs.log_text()
    finally:
        procs.kill_all()
    letters = _letters(safety_app, list(bodies))
    for task_id, body in bodies.items():
        assert letters[task_id].body == body
        assert "malformed message" in letters[task_id].reason
    assert "nested too deeply to decode" in letters["deep-args"].reason


# -- every wrong shape: a dead letter with its bytes and a reason, and the next task runs ---


def _hostile_bodies(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Bodies by id, each with a fragment of the reason its dead letter must give."""

    class WritesAFile:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    def body(**fields: Any) -> bytes:
        return json.dumps({"id": "m", "task": ECHO, **fields}).encode()

    return {
        "truncated": (body()[:12], "Input data was truncated"),
        "empty": (b"", "malformed message"),
        "binary": (b"\xff\xfe\x00garbage", "malformed message"),
        "nan": (b'{"id":"nan","task":"%s","args":[NaN]}' % ECHO.encode(), "malformed"),
        "wrong-args": (body(args="not a list"), "at `$.args`"),
        "wrong-eta": (body(eta="tomorrow"), "at `$.eta`"),
        "no-task": (body(task=None), "at `$.task`"),
        "not-an-object": (b"[1, 2, 3]", "Expected `object`, got `array`"),
        "newer": (body(v=99), "protocol v99"),
        "dangerous-name": (body(task="os.system", args=["true"]), "unknown task"),
        "pickle": (pickle.dumps(WritesAFile(), protocol=5), "refused without reading it"),
        **{k: (v, "malformed message") for k, v in _deep_bodies().items()},
    }


def test_every_hostile_message_is_dead_lettered_with_its_bytes_and_a_reason(
    safety_app: Celeriac, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    hostile = _hostile_bodies(marker)
    _send_raw(safety_app, "default", {k: body for k, (body, _) in hostile.items()})
    after = echo.delay("after")
    run_queued(safety_app, ["default"], fail_fast=False)
    assert after.get(timeout=10) == ["after"]
    letters = _letters(safety_app, list(hostile))
    for task_id, (body, reason) in hostile.items():
        assert task_id in letters, f"{task_id} was not dead-lettered"
        assert letters[task_id].body == body
        assert reason in letters[task_id].reason, (task_id, letters[task_id].reason)
    assert not marker.exists()  # a JSON worker never unpickles what it is sent


def test_a_signing_worker_refuses_unsigned_retired_altered_and_copied_messages(
    safety_app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safety_app.conf, "task_signing_key", ["new-key", "old-key"])

    def signed(key: bytes, task_id: str) -> bytes:
        return Codec("json", ("json",), (key,)).encode(Message(id=task_id, task=ECHO, args=[1]))

    good = signed(b"new-key", "good")
    bodies = {
        "unsigned": json.dumps({"id": "unsigned", "task": ECHO, "args": [1]}).encode(),
        "retired": signed(b"retired-key", "retired"),
        "altered": good.replace(b"[1]", b"[2]"),
        # The same signed bytes, pushed again under another id: a replay. It ran again.
        "copy": good,
        "good": good,
        "rotated": signed(b"old-key", "rotated"),  # a key still accepted: runs
    }
    _send_raw(safety_app, "default", bodies)
    run_queued(safety_app, ["default"], fail_fast=False)
    letters = _letters(safety_app, list(bodies))
    assert set(letters) == {"unsigned", "retired", "altered", "copy"}
    assert "unsigned message refused" in letters["unsigned"].reason
    assert "bad signature" in letters["retired"].reason
    assert "bad signature" in letters["altered"].reason
    assert "delivered under another id (copy)" in letters["copy"].reason
    assert letters["copy"].body == good
    assert safety_app.AsyncResult("good").get(timeout=5) == [1]
    assert safety_app.AsyncResult("rotated").get(timeout=5) == [1]


# -- results that cannot be stored -----------------------------------------------------------


def test_a_result_that_cannot_be_stored_is_a_failure_in_logs_and_hooks(
    safety_app: Celeriac, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The caller's get() raised, but the worker logged "succeeded" and after_settle hooks
    # (events: `celeriac events`, the dashboard) were told SUCCESS.
    monkeypatch.setattr(safety_app.conf, "task_result_max_bytes", 10_000)
    caplog.set_level(logging.INFO, logger="celeriac.worker")
    not_json, too_big = unstorable.delay(), big.delay(20_000)
    workflow = chain(unstorable.s(), echo.s()).apply_async()
    run_queued(safety_app, fail_fast=False)
    with pytest.raises(SerializationError, match="unstorable returned an object"):
        not_json.get(timeout=5)
    with pytest.raises(Exception, match="over task_result_max_bytes"):
        too_big.get(timeout=5)
    with pytest.raises(SerializationError, match=r"of type object is not JSON-serializable"):
        workflow.get(timeout=5)  # the next step is not sent: the workflow says why
    for result in (not_json, too_big):
        assert SettledStates.settled[result.id] == "FAILURE"
        assert f"[{result.id}] succeeded" not in caplog.text
        assert f"[{result.id}] failed" in caplog.text
    unstorable.delay()
    with pytest.raises(SerializationError):  # the testing helper fails the test, too
        run_queued(safety_app)


# -- control characters: shown, never obeyed ------------------------------------------------

FORGED = "boom\n04:00:00 INFO    [1] task shop.refund[1] succeeded\x1b[2J\x1b]0;pwned\x07"


def test_worker_log_lines_show_control_characters_escaped(
    safety_app: Celeriac, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="celeriac.worker")
    fails_with.delay(FORGED)
    safety_app.send_task(f"evil\x1b[31m\n{FORGED}")  # unknown: dead-lettered at once
    run_queued(safety_app, fail_fast=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "celeriac.worker"]
    assert any("failed" in line for line in lines) and any(
        "dead-lettered" in line for line in lines
    )
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\x07" not in line, line
    assert any("boom\\n04:00:00 INFO" in line and "\\x1b[2J" in line for line in lines)


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_the_command_line_shows_control_characters_from_the_broker_escaped(
    safety_app: Celeriac, broker_url: str
) -> None:
    failed = fails_with.delay(FORGED)
    safety_app.send_task(f"evil\x1b[31m{FORGED}", task_id="evil-letter")
    run_queued(safety_app, fail_fast=False)
    outputs = [
        _invoke("-b", broker_url, "dlq", "list")[1],
        _invoke("-b", broker_url, "result", failed.id)[1],
        _invoke("-b", broker_url, "call", "nothing.here", "--id", failed.id, "--wait")[1],
        _invoke("-b", broker_url, "dlq", "show", "no-such\x1b[2J")[1],  # the error line
        _invoke("-b", broker_url, "events")[1],  # the failure's event: name and error
    ]
    for output in outputs:
        assert "\x1b" not in output and "\x07" not in output, output
        assert "\\x1b" in output, output
    # The JSON forms are exact: escaped by JSON itself.
    code, shown = _invoke("-b", broker_url, "dlq", "show", "evil-letter")
    assert code == 0 and json.loads(shown)["task"] == f"evil\x1b[31m{FORGED}"


# -- secrets ---------------------------------------------------------------------------------


def test_no_password_in_a_broker_url_is_ever_printed(redis_server: RedisServer) -> None:
    base = f"127.0.0.1:{redis_server.port}/0"
    prefix = f"t{uuid.uuid4().hex[:12]}"
    # redis-py reads ?password= and ?ssl_password= too, and a password left unencoded may
    # hold "/" (base64): each was printed whole by status, errors and worker logs.
    accepted = f"redis://{base}?password=s3cret&prefix={prefix}"  # no password set: ignored
    Celeriac("producer", broker=accepted).send_task("shop.refund")  # status lists a queue
    for args in (("status",), ("status", "--json")):
        code, output = _invoke("-b", accepted, *args)
        assert code == 0 and "password=***" in output and "s3cret" not in output, output
    for url in (
        f"rediss://{base}?ssl_password=s3cret&sokcet_timeout=1",
        f"redis://:s3/cr+et=@{base}?sokcet_timeout=1",
        f"redis://s3cret@{base}?sokcet_timeout=1",  # the password without its colon
    ):
        code, output = _invoke("-b", url, "status")
        assert code == 1 and "error:" in output and "***" in output, output
        assert "s3" not in output and "cr+et" not in output, output
    assert redacted(f"redis://alice:s3cret@{base}") == f"redis://alice:***@{base}"
    assert (
        redacted("sqlite:////var/lib/app@2/celeriac.db") == "sqlite:////var/lib/app@2/celeriac.db"
    )


def test_a_signing_key_never_reaches_the_dead_letter_or_the_result(
    safety_app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safety_app.conf, "task_signing_key", ["k3y-s3cret"])
    _send_raw(safety_app, "default", {"unsigned": b'{"id":"unsigned","task":"%s"}' % ECHO.encode()})
    run_queued(safety_app, ["default"], fail_fast=False)
    (letter,) = safety_app.broker.find_dead_letters(["unsigned"])
    stored = safety_app.broker.get_result("unsigned")
    assert stored is not None
    for text in (letter.reason, letter.error, stored[0].decode(), repr(safety_app)):
        assert "k3y-s3cret" not in text


def test_a_job_label_shows_control_characters_escaped() -> None:
    # Middleware log lines name tasks by Job.label: a task name with a newline forged lines.
    from celeriac.brokers.records import Delivery, Lease
    from celeriac.message import Message
    from celeriac.middleware.base import Job

    delivery = Delivery(Lease("id\r", "q", "1"), b"", 1)
    job = Job(delivery, "w", message=Message(id="id\r", task=f"t{FORGED}"))
    assert "\n" not in job.label and "\x1b" not in job.label and "\\r" in job.label


def test_a_signing_key_of_the_wrong_kind_is_refused_without_showing_it() -> None:
    # bytes printed the key in the error; a list holding bytes was accepted, then failed
    # in the codec with "'bytes' object has no attribute 'encode'".
    from celeriac import ConfigurationError

    local = Celeriac("keys", broker="memory://")
    for bad in (b"k3y-s3cret", ["old-key", b"k3y-s3cret"]):
        with pytest.raises(ConfigurationError, match="not shown: it is a secret") as refused:
            local.conf.task_signing_key = bad
        assert "k3y" not in str(refused.value)
    with pytest.raises(ConfigurationError, match="must be a list of str, got an item 5"):
        local.conf.accept_content = ["json", 5]


def test_a_password_with_a_slash_is_named_as_the_cause_of_a_bad_port() -> None:
    from celeriac import ConfigurationError

    with pytest.raises(ConfigurationError, match="percent-encode the password") as refused:
        Celeriac("url", broker="redis://:ab/c+d=@127.0.0.1:6379/0").broker  # noqa: B018
    assert "c+d" not in str(refused.value)


def test_arguments_nested_too_deeply_are_a_serialization_error_at_send() -> None:
    # They reached the caller as a bare RecursionError.
    from celeriac.errors import SerializationError
    from celeriac.message import peek_identity

    local = Celeriac("deep", broker="memory://")

    @local.task
    def echo(value: Any) -> Any:
        return value

    deep: list[Any] = []
    for _ in range(20_000):  # Python 3.13 encodes 5,000 levels (its C recursion limit rose)
        deep = [deep]
    with pytest.raises(SerializationError, match="positional argument 0"):
        echo.delay(deep)
    assert peek_identity(b"[" * 100_000) == (None, None)  # best effort, never raises


@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
def test_the_supervisor_log_shows_control_characters_in_task_ids_escaped(
    workers: WorkerProcesses, core_app: Celeriac
) -> None:
    # The supervisor names running tasks from its children's slots (a child that died, a
    # hard limit, a shutdown): the id is the sender's text, and it was written as it came.
    from tests.apps import core

    forged = "\n04:00:00 INFO    [1] task shop.refund[1] succeeded\x1b[2J"
    proc = workers.start("-c", "1")
    stuck = core.stuck.apply_async(task_id=f"stuck{forged}")
    dies = core.dies.apply_async(task_id=f"dies{forged}")
    with pytest.raises(Exception, match="hard time limit"):
        stuck.get(timeout=30)
    assert wait_for(lambda: core_app.broker.find_dead_letters([dies.id]), timeout=30)
    workers.stop(proc)
    log = workers.log_text()
    assert "passed its hard time limit" in log and "died" in log, log
    assert "\x1b" not in log and "\n04:00:00 INFO    [1]" not in log, log
    assert "stuck\\n04:00:00 INFO" in log and "dies\\n04:00:00 INFO" in log, log
