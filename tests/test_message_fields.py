"""Messages whose fields decode but are wrong, pushed into the broker by another producer.

Another language, an older version or a person pushing by hand can write a message of the
right types and the wrong values: a negative ``retries``, an ``eta`` of 1e300, an
``expires`` of 0 or of a time to live, a NaN time limit, an empty task name. Each must end
in the dead-letter queue with a reason naming the field, its value and the task, while the
worker keeps serving; odd values that harm nothing (a priority out of 0..9, a newer
producer's extra field) still run. Real workers on SQLite and Redis (``broker_url``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import redis
from celeriac import Celeriac, Task
from celeriac.brokers.records import Outgoing
from celeriac.testing import run_queued, wait_for
from tests.apps.core import record
from tests.conftest import Ledger, WorkerProcesses
from tests.redis_server import RedisServer

app = Celeriac("message-fields-tests")
ECHO = "tests.test_message_fields.echo"
FAILS = "tests.test_message_fields.fails"
NAPS = "tests.test_message_fields.naps"


@app.bound_task()
def echo(self: Task[Any, Any], *args: Any) -> list[Any]:
    record("run", self.request.id)
    return list(args)


@app.bound_task(autoretry_for=(ValueError,), max_retries=2, retry_backoff=0.01)
def fails(self: Task[Any, Any]) -> None:
    record("run", self.request.id)
    raise ValueError("always")


@app.bound_task()
def naps(self: Task[Any, Any], seconds: float) -> str:
    record("run", self.request.id)
    time.sleep(seconds)
    return "rested"


@pytest.fixture
def fields_app(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celeriac]:
    """This module's app on the test's broker."""
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    yield app
    app.broker.close()


@pytest.fixture
def procs(broker_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Real worker processes of this module's app; all killed by PID at the end."""
    started = WorkerProcesses(broker_url, Ledger(tmp_path / "ledger.txt"))
    yield started
    started.kill_all()


def _json(task_id: str, **fields: Any) -> bytes:
    return json.dumps({"id": task_id, "task": ECHO, "sent_at": time.time(), **fields}).encode()


def _msgpack(task_id: str, **fields: Any) -> bytes:
    # msgpack carries NaN and infinity, which JSON cannot: every worker accepts it.
    body = {"id": task_id, "task": ECHO, "sent_at": time.time(), **fields}
    return msgspec.msgpack.encode(body)


def _send_raw(target: Celeriac, bodies: dict[str, bytes]) -> None:
    """Put bytes into the broker as they are, the way another producer can."""
    assert all(target.broker.send([Outgoing(i, "default", b) for i, b in bodies.items()]))


def _letters(target: Celeriac, ids: list[str]) -> dict[str, Any]:
    return {x.id: x for x in target.broker.find_dead_letters(ids)}


LONG_NAME = "shop." + "x" * 50_000


def _wrong() -> dict[str, tuple[bytes, str]]:
    """Bodies by delivery id, each with what its dead letter's reason must say."""
    return {
        # Retried without end: max_retries counts up from here.
        "retries": (_json("retries", task=FAILS, retries=-1000), "retries=-1000 is negative"),
        "eta-far": (_json("eta-far", eta=1e300), "eta=1e+300 is not a time"),
        "eta-nan": (_msgpack("eta-nan", eta=float("nan")), "eta=nan is not a time"),
        # EXPIRED at once, unrun: 0 for "none", a time to live for an absolute time.
        "expires-0": (_json("expires-0", expires=0), "expires=0.0 is 1970-01-01T00:00:00Z"),
        "expires-ttl": (_json("expires-ttl", expires=3600), "expires=3600.0 is 1970-01-01"),
        "expires-nan": (_msgpack("expires-nan", expires=float("nan")), "expires=nan is no time"),
        # Killed as soon as the supervisor looked; a NaN limit was no limit at all.
        "hard-0": (_json("hard-0", task=NAPS, args=[1.5], hard_limit=0), "hard_limit=0.0 is not"),
        "hard-nan": (_msgpack("hard-nan", hard_limit=float("nan")), "hard_limit=nan is not"),
        "soft-neg": (_json("soft-neg", soft_limit=-1), "soft_limit=-1.0 is not"),
        # Put back for an hour (task_unknown_max_age), though no task has such a name.
        "no-name": (_json("no-name", task=""), "task is empty"),
        "long-name": (_json("long-name", task=LONG_NAME), "50,005 characters long"),
        "no-id": (_json("", task=ECHO), "id is empty"),
    }


def _harmless() -> dict[str, bytes]:
    """Odd but harmless: each runs once."""
    return {
        "priority-100": _json("priority-100", priority=100),  # the broker's priority rules
        "eta-past": _json("eta-past", eta=-5.0),
        "older-v": _json("older-v", v=0),
        "newer-field": _json("newer-field", trace="x9"),  # a newer producer's extra field
        "expires-far": _json("expires-far", expires=1e300),  # never: apply_async sends it
        "expires-inf": _msgpack("expires-inf", expires=float("inf")),
    }


def test_a_message_with_a_wrong_field_is_dead_lettered_naming_it_and_the_worker_keeps_running(
    fields_app: Celeriac, procs: WorkerProcesses
) -> None:
    wrong, harmless = _wrong(), _harmless()
    _send_raw(fields_app, {k: body for k, (body, _) in wrong.items()} | harmless)
    proc = procs.start("-c", "1", app="tests.test_message_fields")
    for task_id in harmless:
        assert fields_app.AsyncResult(task_id).get(timeout=60) == [], procs.log_text()
    assert wait_for(lambda: len(_letters(fields_app, list(wrong))) == len(wrong), timeout=60), (
        sorted(set(wrong) - set(_letters(fields_app, list(wrong)))),
        procs.log_text(),
    )
    assert echo.delay("behind").get(timeout=30) == ["behind"]
    assert proc.poll() is None
    text = "\n".join(p.read_text() for p in procs.logs)
    assert "crashed" not in text
    assert max(len(line) for line in text.splitlines()) < 5_000  # a long name is cut
    letters = _letters(fields_app, list(wrong))
    for task_id, (body, fragment) in wrong.items():
        letter = letters[task_id]
        assert letter.body == body, task_id  # kept as sent: fix the producer, then replay
        assert fragment in letter.reason, (task_id, letter.reason)
        assert letter.reason.startswith("malformed message: task "), letter.reason
        assert "Fix the producer that sent it" in letter.reason
    for task_id in ("retries", "eta-far", "hard-0", "soft-neg"):
        name = json.loads(wrong[task_id][0])["task"]
        assert f"task {name}[{task_id}]: " in letters[task_id].reason
    runs = procs.ledger.count("run")
    assert not set(runs) & set(wrong)  # none ran, not even once
    assert all(runs[task_id] == 1 for task_id in harmless), runs


def test_a_message_without_a_send_time_to_count_from_is_dead_lettered_in_the_end(
    fields_app: Celeriac, procs: WorkerProcesses
) -> None:
    """An unknown task, or a newer protocol version, waits task_unknown_max_age from its
    ``sent_at``: NaN or a time far ahead never got there, and it was put back for ever."""
    bodies = {
        "unknown-nan": _msgpack("unknown-nan", task="shop.nobody", sent_at=float("nan")),
        "unknown-future": _json("unknown-future", task="shop.nobody", sent_at=1e12),
        "newer-nan": _msgpack("newer-nan", v=99, sent_at=float("nan")),
        "newer-future": _json("newer-future", v=99, sent_at=1e12),
    }
    _send_raw(fields_app, bodies)
    env = {"CELERIAC_TASK_UNKNOWN_MAX_AGE": "0.5", "CELERIAC_TASK_UNKNOWN_RETRY_DELAY": "0.1"}
    proc = procs.start("-c", "1", app="tests.test_message_fields", env=env)
    assert wait_for(lambda: len(_letters(fields_app, list(bodies))) == 4, timeout=60), (
        procs.log_text()
    )
    letters = _letters(fields_app, list(bodies))
    for task_id in ("unknown-nan", "unknown-future"):
        assert letters[task_id].reason.startswith("unknown task: no worker that knows shop.nobody")
    for task_id in ("newer-nan", "newer-future"):
        assert f"{ECHO}[{task_id}] uses message protocol v99" in letters[task_id].reason
    assert proc.poll() is None


def test_a_message_over_the_size_limit_from_another_producer_runs_and_is_logged(
    fields_app: Celeriac, procs: WorkerProcesses
) -> None:
    """Refusing it would lose the task (or dead-letter it) while its bytes already sit in
    the broker: it runs, and the log names the task and the setting."""
    big = "x" * 5_000
    _send_raw(fields_app, {"big": _json("big", args=[big])})
    procs.start(
        "-c", "1", app="tests.test_message_fields", env={"CELERIAC_TASK_PAYLOAD_MAX_BYTES": "1000"}
    )
    assert fields_app.AsyncResult("big").get(timeout=30) == [big]
    assert procs.ledger.count("run")["big"] == 1
    text = "\n".join(p.read_text() for p in procs.logs)
    assert f"task {ECHO}[big]: its message is 5," in text, text[-3000:]
    assert "over task_payload_max_bytes (1,000)" in text


def test_a_send_that_would_start_after_the_year_9999_is_refused(tmp_path: Path) -> None:
    # The broker would hold it delayed for ever, and a worker dead-letters such an eta.
    local = Celeriac("far", broker=f"sqlite:///{tmp_path / 'far.db'}")

    @local.task
    def ping() -> None:
        return None

    for option in ({"countdown": 1e300}, {"eta": 1e300}):
        with pytest.raises(ValueError, match="after the year 9999"):
            ping.apply_async(**option)  # type: ignore[arg-type]
    ping.apply_async(expires=1e300)  # an expiry that far ahead means never
    local.broker.close()


def test_a_message_pushed_into_a_redis_queue_by_hand_runs_under_its_own_id(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another language's producer may push a message into the list itself. Held under an
    id the broker made up, it ran and stored its result under that id, so a get() of its
    own id waited for ever; it is sent again under its own id (one task per id)."""
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    monkeypatch.setattr(app.conf, "broker_url", f"{redis_server.url}?prefix=t{uuid.uuid4().hex}")
    client = redis.Redis(port=redis_server.port)
    try:
        app.broker.fetch(["default"], "w", limit=1, lease_seconds=30, timeout=0)  # registers
        ready = app.broker.keys.queue("default").ready[0]  # type: ignore[attr-defined]
        client.rpush(ready, _json("from-node-1", args=[1, 2]), _json("from-node-1", args=[3]))
        run_queued(app)
        assert app.AsyncResult("from-node-1").get(timeout=5) == [1, 2]
        assert ledger.count("run") == {"from-node-1": 1}  # the second copy was dropped
        assert app.broker.stats()[0].ready == 0 and app.broker.dead_letters() == []
    finally:
        client.close()
        app.broker.close()
