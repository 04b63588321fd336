"""Scenario 11: malformed and oversized input, written into the broker by hand."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from celeriac import PayloadTooLarge, ResultTimeout
from celeriac.brokers.records import Outgoing
from celeriac.message import Message
from celeriac.testing import wait_for
from tests.torture.conftest import Rig
from tests.torture.harness import LONG, summary_line

pytestmark = [pytest.mark.slow, pytest.mark.torture, pytest.mark.timeout(1800 if LONG else 120)]

JOB = "tests.torture.app.job"
MALFORMED = {
    "m-truncated": b'{"id": "m-truncated", "task": "tests.torture.app.job", "args": [',
    "m-utf8": b'{"id": "m-utf8", "task": "tests.torture.app.\xff\xfe"}',
    "m-binary": b"\x00\x01\x02\xff\xfe binary \x00",
    "m-empty": b"",
    "m-shape": b"[1, 2, 3]",
    "m-no-id": b'{"task": "tests.torture.app.job", "args": []}',
    "m-wrong-types": b'{"id": "m-wrong-types", "task": 42, "args": {"a": 1}}',
}
MB = 1024 * 1024


def _send_raw(rig: Rig, outgoing: list[Outgoing]) -> None:
    """Write bytes into the broker by hand, logging the sends as the producer does."""
    rig.ledger.write([{"phase": "sendcall", "id": o.id, "t": time.time()} for o in outgoing])
    rig.app.broker.send(outgoing)
    rig.ledger.write([{"phase": "sendack", "id": o.id, "t": time.time()} for o in outgoing])


def test_11_malformed_input_is_dead_lettered_and_the_worker_keeps_serving(rig: Rig) -> None:
    """Scenario 11: truncated JSON, invalid UTF-8, binary, empty, wrong shape, missing
    id, wrong types, an unknown task, a disallowed content type (pickle), a 10 MB
    argument and a 50 MB result, among normal tasks.

    Proves: each bad message ends in the dead-letter queue with a reason naming what was
    wrong (and its raw bytes kept); a 10 MB argument is refused at enqueue under the
    default size limit, and runs exactly once when the limit allows it; the 50 MB result
    ends FAILURE naming task_result_max_bytes; the worker serves normal tasks throughout.
    """
    from tests.torture.app import big_argument, big_result

    big = "y" * (10 * MB)
    with pytest.raises(PayloadTooLarge, match=r"big_argument.*positional argument 0"):
        big_argument.delay(big)
    env = {
        "CELERIAC_TASK_UNKNOWN_RETRY_DELAY": "0.2",
        "CELERIAC_TASK_UNKNOWN_MAX_AGE": "1",
        "CELERIAC_ACCEPT_CONTENT": "json,msgpack",
        "CELERIAC_TASK_PAYLOAD_MAX_BYTES": str(16 * MB),
    }
    rig.workers.start("-c", "2", env=env)
    rig.producer.jobs(f"m-before-{i}" for i in range(10))
    _send_raw(rig, [Outgoing(i, "default", body) for i, body in MALFORMED.items()])
    pickled = pickle.dumps(Message(id="m-pickle", task=JOB), protocol=5)
    _send_raw(rig, [Outgoing("m-pickle", "default", pickled)])
    unknown = rig.app.send_task("tests.torture.app.not_deployed", task_id="m-unknown")
    rig.ledger.write(
        [{"phase": f, "id": unknown.id, "t": time.time()} for f in ("sendcall", "sendack")]
    )
    rig.app.conf.task_payload_max_bytes = 16 * MB  # within configured limits
    rig.producer.send([big_argument.message((big,), None, task_id="m-big-argument")])
    rig.producer.send([big_result.message((50,), None, task_id="m-big-result")])
    rig.producer.jobs(f"m-after-{i}" for i in range(10))
    report = rig.oracle.report(timeout=60)
    summary_line("11 malformed", report)
    report.assert_safe()
    terminal = report.terminal
    for task_id in MALFORMED:
        assert terminal[task_id].state == "DEAD", (task_id, terminal.get(task_id))
        assert "malformed message" in terminal[task_id].reason, terminal[task_id]
    assert terminal["m-pickle"].state == "DEAD"
    assert "content type pickle is not in accept_content" in terminal["m-pickle"].reason
    assert terminal["m-unknown"].state == "DEAD"
    assert "unknown task" in terminal["m-unknown"].reason
    letters = {d.id: d for d in rig.oracle.dead_letters()}
    assert {i: letters[i].body for i in MALFORMED} == MALFORMED  # raw bytes kept
    assert terminal["m-big-argument"].state == "SUCCESS"
    assert report.executions["m-big-argument"] == 1
    assert rig.app.AsyncResult("m-big-argument").get(timeout=5)["length"] == 10 * MB
    # Over task_result_max_bytes (16 MiB by default): a clear FAILURE, never a 50 MB value
    # in broker memory.
    assert terminal["m-big-result"].state == "FAILURE"
    assert "over task_result_max_bytes" in terminal["m-big-result"].reason
    assert report.executions["m-big-result"] == 1
    normal = [i for i in terminal if i.startswith(("m-before", "m-after"))]
    assert len(normal) == 20 and all(terminal[i].state == "SUCCESS" for i in normal)
    assert set(report.duplicates) == {1}
    assert all(p.poll() is None for p in rig.workers.started), "a worker died"


def test_11_a_waiter_wakes_for_a_result_larger_than_the_pubsub_buffer(redis_rig: Rig) -> None:
    """Scenario 11, the 50 MB result seen by a client that is already waiting for it.

    Proves: a committed result wakes its waiter whatever its size (the wake-up is one
    byte; the waiter reads the key).
    """
    from tests.torture.app import big_result

    rig = redis_rig
    result = big_result.apply_async((40,), task_id="m-big-wait")
    waited: dict[str, object] = {}

    def wait() -> None:
        try:
            waited["value"] = result.get(timeout=8)
        except ResultTimeout as exc:
            waited["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()  # subscribed long before the worker below has started
    try:
        # Allow a result bigger than Redis's 32 MB pub/sub buffer: the case under test.
        rig.workers.start("-c", "1", env={"CELERIAC_TASK_RESULT_MAX_BYTES": str(64 * MB)})
        assert wait_for(lambda: rig.app.broker.get_result(result.id) is not None, timeout=20)
    finally:
        waiter.join(timeout=30)
    assert rig.app.broker.get_result(result.id)[1], "the result is committed (final)"
    if "error" in waited:
        raise waited["error"]  # type: ignore[misc]
    assert len(waited["value"]["blob"]) == 40 * MB  # type: ignore[index]
