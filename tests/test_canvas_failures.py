"""Canvas at its edges: chords whose members finish far apart, chunks of typed tasks.

These run in the test process (run_queued) on each broker's own store: the in-memory
broker, SQLite and the session's private redis-server.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, Task
from celeriac.brokers.memory import MemoryBroker
from celeriac.canvas import chord
from celeriac.testing import run_queued
from tests.apps import canvas as tasks
from tests.apps.canvas import async_typed, collect, identity, typed
from tests.conftest import Ledger
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "sqlite", "redis"])
def app(
    request: pytest.FixtureRequest, tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.canvas's app on a fresh broker of each kind, writing to this test's ledger
    (Redis: the session's private server, isolated by a key prefix)."""
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    if request.param == "memory":
        monkeypatch.setattr(tasks.app.conf, "broker_url", "memory://")
        tasks.app.use_broker(MemoryBroker())
    elif request.param == "sqlite":
        monkeypatch.setattr(tasks.app.conf, "broker_url", f"sqlite:///{tmp_path}/broker.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}"
        monkeypatch.setattr(tasks.app.conf, "broker_url", url)
    yield tasks.app
    tasks.app.broker.close()


def test_a_chord_whose_members_finish_further_apart_than_result_expires_still_calls_back(
    app: Celeriac, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The join lived result_expires after its latest member: with result_expires=3600 and
    # one member an hour slower than the rest, the join was gone when it finished, it
    # started a new one that never reached the header's size, and the body never ran.
    monkeypatch.setattr(app.conf, "result_expires", 0.3)
    r = chord([identity.s("fast"), identity.s("slow").set(countdown=0.5)], collect.s()).delay()
    assert run_queued(app) == 1  # the fast member; the slow one is not due yet
    time.sleep(0.6)  # longer than result_expires: what an hour is to result_expires=3600
    assert run_queued(app, include_delayed=True) == 2  # the slow member, then the body
    assert ledger.count("callback") == Counter({r.id: 1})


@pytest.mark.parametrize("task", [typed, async_typed], ids=["sync", "async"])
def test_chunks_convert_each_argument_list_as_map_does(app: Celeriac, task: Task[Any, Any]) -> None:
    # A chunk called the task with each argument list as JSON carried it: a bytes
    # parameter got its base64 text, a date its ISO text; starmap converted them.
    calls = [(dt.date(2026, 12, 25), b"\x00\x01"), (dt.date(2027, 1, 1), b"\xff")]
    one_by_one = task.starmap(calls).apply_async()
    chunked = task.chunks(calls, 2).apply_async()
    run_queued(app)
    assert one_by_one.get(timeout=5) == ["date b'\\x00\\x01'", "date b'\\xff'"]
    assert chunked.get(timeout=5) == [one_by_one.get(timeout=5)]
