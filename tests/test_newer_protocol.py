"""A newer producer's message at an older worker, and unknown tasks sent without a send time.

A rolling deploy that upgrades producers first must lose nothing: an older worker puts a
message of a newer protocol back for an upgraded worker, as it does for a task it does not
know, and dead-letters it with advice only once none took it within
``task_unknown_max_age``. Both run on SQLite and Redis (``broker_url``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac import message as wire
from celeriac.brokers.records import Outgoing
from celeriac.testing import run_queued

NEWER = wire.PROTOCOL_VERSION + 1


@pytest.fixture
def app(broker_url: str) -> Iterator[Celeriac]:
    app = Celeriac("newer-protocol", broker=broker_url)
    yield app
    app.broker.close()


def _send_raw(app: Celeriac, task_id: str, fields: dict[str, Any]) -> None:
    body = json.dumps({"id": task_id, **fields}).encode()
    app.broker.send([Outgoing(task_id, "default", body)])


def test_an_older_worker_puts_a_newer_message_back_for_an_upgraded_one(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []

    @app.task(name="newer.add")
    def add(x: int, y: int) -> int:
        ran.append(x + y)
        return x + y

    # "args" changed shape in the newer protocol: this worker cannot even read it.
    fields = {"task": "newer.add", "args": {"x": 1, "y": 2}, "v": NEWER, "sent_at": time.time()}
    _send_raw(app, "n1", fields)
    _send_raw(app, "n2", {"task": "newer.add", "args": [3, 4], "v": NEWER, "sent_at": time.time()})
    app.conf.task_unknown_retry_delay = 0.2
    run_queued(app, fail_fast=False)
    assert ran == [] and app.broker.dead_letters() == []  # not run, not dead-lettered
    assert sum(s.delayed for s in app.broker.stats()) == 2  # put back, to come due again

    # An upgraded worker (this process, reading the newer version) takes them as sent.
    monkeypatch.setattr(wire, "PROTOCOL_VERSION", NEWER)
    assert run_queued(app, fail_fast=False, include_delayed=True) == 2
    assert app.AsyncResult("n2").get(timeout=5) == 7
    assert ran == [7]  # n1's args are the newer shape: this test's task cannot take them
    (letter,) = app.broker.dead_letters()
    assert letter.id == "n1" and letter.body == json.dumps({"id": "n1", **fields}).encode()


def test_a_newer_message_nobody_upgraded_took_is_dead_lettered_with_advice(app: Celeriac) -> None:
    sent_at = time.time() - 2 * app.conf.task_unknown_max_age
    _send_raw(app, "old1", {"task": "newer.add", "args": [1, 2], "v": NEWER, "sent_at": sent_at})
    run_queued(app, fail_fast=False)
    (letter,) = app.broker.dead_letters()
    assert f"newer.add[old1] uses message protocol v{NEWER}" in letter.reason
    assert "Upgrade this worker" in letter.reason
    assert "no upgraded worker took it within task_unknown_max_age=3600s" in letter.reason


def test_an_unknown_task_sent_without_a_send_time_is_dead_lettered_in_the_end(
    app: Celeriac,
) -> None:
    # Its age was counted from sent_at, which it does not have: it was put back for ever.
    app.conf.task_unknown_max_age = 0.3
    app.conf.task_unknown_retry_delay = 0.05
    _send_raw(app, "u1", {"task": "nobody.knows", "args": [1]})
    run_queued(app, fail_fast=False, include_delayed=True, max_tasks=200)
    (letter,) = app.broker.dead_letters()
    assert letter.id == "u1" and letter.reason.startswith("unknown task")
    assert json.loads(letter.body)["args"] == [1]  # its age was written into it, nothing else
