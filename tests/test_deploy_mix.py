"""Rolling deploys: messages and store entries in the shape an older celeriac writes them,
read by this code's worker processes on a real broker.

Each check stands for one thing an older process does during a deploy, built by hand so
that no test depends on this repository's history:

* an older worker continues a group with join frames that carry no ``"kind"`` (only newer
  workers add ``"kind": "group"``), and, when a step before the group failed, sends every
  member aborted *with* its join frame (a newer worker fails the join at once);
* an older producer sends the values its ``apply_async`` allows: an expiry of "now"
  (``expires=0``), an eta in the past (a negative countdown) or at 0, no limits (``math.inf``
  travels as null). A newer worker dead-letters messages whose fields no worker can act
  on; none of these may be among them;
* an older worker reserves rate-limit slots with the two-argument ``rate_reserve-1.lua``
  (its text is kept below): both versions must share one limiter.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import celeriac
import redis
from celeriac import Celeriac, Task
from celeriac.brokers.records import Outgoing
from celeriac.canvas import Canvas, chain, group
from celeriac.errors import ChordError
from celeriac.middleware.flow import Flow, Frame
from celeriac.result import AsyncResult
from celeriac.testing import wait_for
from celeriac.workflow import freeze, result_of
from tests.apps.core import record
from tests.conftest import ROOT, Ledger, WorkerProcesses
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

# Workers import the celeriac this test imported (an old tree's, when PYTHONPATH says so).
WORKER_PATH = os.pathsep.join([str(Path(celeriac.__file__).resolve().parents[1]), str(ROOT)])

# Tasks of this file, run by a worker started with ``-A tests.test_deploy_mix``.
app = Celeriac("deploy-mix")


@app.bound_task(name="dmix.add")
def add(self: Task[Any, Any], x: int, y: int) -> int:
    """Records that it ran, then adds."""
    record("run", self.request.id, "add")
    return x + y


@app.bound_task(name="dmix.fails")
def fails(self: Task[Any, Any], *values: Any) -> None:
    """Records that it ran, then raises ValueError."""
    record("run", self.request.id, "fails")
    raise ValueError("fails on purpose")


@app.bound_task(name="dmix.total")
def total(self: Task[Any, Any], values: list[int]) -> int:
    """The step after a group: records that it ran, then sums the group's results."""
    record("run", self.request.id, "total")
    return sum(values)


@app.bound_task(name="dmix.errback")
def errback(self: Task[Any, Any], error: dict[str, str]) -> None:
    """Records which task's error it was given."""
    record("errback", self.request.id, f"{error['id']} {error['type']}")


@pytest.fixture
def url(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This file's app on a fresh SQLite file, or on the session's redis-server."""
    monkeypatch.setattr(app.conf, "broker_url", broker_url)
    yield broker_url
    app.broker.close()


@pytest.fixture
def mix_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """The execution ledger the worker's tasks append to."""
    ledger = Ledger(tmp_path / "ledger.txt")
    monkeypatch.setenv("CELERIAC_TEST_LEDGER", str(ledger.path))
    return ledger


@pytest.fixture
def procs(url: str, mix_ledger: Ledger) -> Iterator[WorkerProcesses]:
    """One real worker serving this file's tasks (two children); killed by PID at the end."""
    procs = WorkerProcesses(url, mix_ledger)
    procs.start("-c", "2", app="tests.test_deploy_mix", env={"PYTHONPATH": WORKER_PATH})
    yield procs
    procs.kill_all()


def _settled(procs: WorkerProcesses) -> None:
    """Wait until nothing is ready, delayed or held on any queue: every message sent was
    settled (a workflow's next message is sent before the one that sends it commits)."""

    def drained() -> bool:
        return all(s.ready == s.delayed == s.in_flight == 0 for s in app.broker.stats())

    assert wait_for(drained, timeout=60), procs.log_text()


# -- join frames as an older worker writes them ----------------------------------------------


def _without_kind(frames: list[Frame]) -> list[Frame]:
    """``frames`` as a worker from before ``"kind"`` wrote them, nested ones included."""
    older: list[Frame] = []
    for frame in frames:
        copy = {k: v for k, v in frame.items() if k != "kind"}
        if "then" in copy:
            copy["then"] = _without_kind(copy["then"])
        older.append(copy)
    return older


def _send_as_older_worker(workflow: Canvas) -> AsyncResult[Any]:
    """Start ``workflow`` as an older worker continuing it would: its join frames carry no
    ``"kind"``. Returns the handle on its last step."""
    node = freeze(workflow.to_dict(), f"w{uuid.uuid4().hex[:12]}")
    flow = Flow(app)
    flow.apply(node)
    for message in flow.messages:
        canvas = message.options.get("canvas", {})
        if "then" in canvas:
            canvas["then"] = _without_kind(canvas["then"])
    assert any("join" in f for m in flow.messages for f in m.options["canvas"]["then"])
    flow.send()
    handle = result_of(app, node)
    assert isinstance(handle, AsyncResult)
    return handle


def test_a_group_continued_by_an_older_worker_runs_the_step_after_it(
    url: str, procs: WorkerProcesses, mix_ledger: Ledger
) -> None:
    handle = _send_as_older_worker(chain(group(add.si(1, 1), add.si(2, 2)), total.s()))
    assert handle.get(timeout=60) == 6, procs.log_text()
    assert mix_ledger.count("run")[handle.id] == 1


def test_a_failed_member_of_an_older_workers_group_fails_what_follows_once(
    url: str, procs: WorkerProcesses, mix_ledger: Ledger
) -> None:
    workflow = chain(group(add.si(1, 1), fails.si()), total.s()).link_error(errback.s())
    handle = _send_as_older_worker(workflow)
    error = handle.get(timeout=60, propagate=False)
    assert isinstance(error, ChordError), (error, procs.log_text())
    assert "member 1" in str(error) and "fails on purpose" in str(error)
    assert handle.id not in mix_ledger.count("run")  # the step after the group never ran
    _settled(procs)  # a second errback would come from the other member's join
    assert sum(mix_ledger.count("errback").values()) == 1, mix_ledger.lines()


def test_members_an_older_worker_sent_aborted_with_their_join_frame_end_the_workflow(
    url: str, procs: WorkerProcesses, mix_ledger: Ledger
) -> None:
    # An older worker, after the step before a group failed, sent every member with that
    # step's error *and* its join frame; this code sends them without frames and fails the
    # join itself. The members' joins must still end what follows, with one errback.
    wid = f"w{uuid.uuid4().hex[:12]}"
    after = freeze(total.s().link_error(errback.s()).to_dict(), wid)
    frame: Frame = {"join": f"{wid}:g", "n": 2, "then": [{"chain": [after]}]}
    earlier = {
        "id": f"{wid}:s0",
        "task": "dmix.fails",
        "type": "builtins.ValueError",
        "message": "fails on purpose",
    }
    flow = Flow(app)
    for index, member in enumerate((add.si(1, 1), add.si(2, 2))):
        node = freeze(member.to_dict(), f"{wid}:g:{index}")
        flow.apply(node, [{**frame, "i": index}], abort=earlier)
    flow.send()
    error = AsyncResult(wid, app).get(timeout=60, propagate=False)
    assert isinstance(error, ChordError), (error, procs.log_text())
    assert "fails on purpose" in str(error)
    assert not mix_ledger.count("run"), mix_ledger.lines()  # no member, nor total, ran
    _settled(procs)
    assert sum(mix_ledger.count("errback").values()) == 1, mix_ledger.lines()


# -- values an older producer's apply_async sends -------------------------------------------


def _older_producers_body(task_id: str, **fields: Any) -> bytes:
    """A message as an older producer encodes it: compact JSON, absent fields omitted,
    ``math.inf`` limits as null (JSON has no infinity; the task's own limit applies)."""
    body = {"id": task_id, "task": "dmix.add", "args": [2, 3], "sent_at": time.time(), **fields}
    return json.dumps(body).encode()


def test_what_an_older_producer_sends_is_never_dead_lettered(
    url: str, procs: WorkerProcesses
) -> None:
    now = time.time()
    sent: dict[str, tuple[dict[str, Any], str | None]] = {
        # apply_async(expires=0) / expires=timedelta(0): expires at the send time
        "expires-now": ({"expires": now}, "EXPIRED"),
        # apply_async(countdown=-100): an eta in the past
        "eta-past": ({"eta": now - 100}, "SUCCESS"),
        # apply_async(eta=datetime(1970, 1, 1, tzinfo=UTC))
        "eta-zero": ({"eta": 0.0}, "SUCCESS"),
        # apply_async(time_limit=math.inf, soft_time_limit=math.inf): nulls
        "no-limits": ({"soft_limit": None, "hard_limit": None, "expires": None}, "SUCCESS"),
        # the smallest limits apply_async accepts
        "tiny-hard-limit": ({"hard_limit": 1e-9}, None),
    }
    ids = {name: f"old-{name}-{uuid.uuid4().hex[:8]}" for name in sent}
    app.broker.send(
        [
            Outgoing(ids[name], "default", _older_producers_body(ids[name], **fields))
            for name, (fields, _) in sent.items()
        ]
    )
    handles: dict[str, AsyncResult[Any]] = {name: AsyncResult(ids[name], app) for name in sent}
    assert wait_for(lambda: all(h.ready() for h in handles.values()), timeout=60), procs.log_text()
    assert app.broker.dead_letters() == [], procs.log_text()
    states = {name: handles[name].state for name in sent if sent[name][1] is not None}
    assert states == {name: state for name, (_, state) in sent.items() if state is not None}


# -- one limiter, two versions of its script ------------------------------------------------

#: rate_reserve-1.lua as workers before the optional third argument (max_wait) run it,
#: verbatim: their process loads this text, so its SHA differs from this code's script.
TWO_ARGUMENT_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local slot = math.max(now, tat - (burst - 1) * interval)
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', math.ceil((next_tat - now) / 1000) + 1000)
return math.floor(slot - now)
"""

INTERVAL = 60.0  # seconds between the limiter's slots (1/m): no test run comes near it


def test_an_older_workers_reservations_and_this_codes_share_one_limiter(
    redis_server: RedisServer,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    broker = Celeriac("deploy-mix-rate", broker=f"{redis_server.url}?prefix={prefix}").broker
    client = redis.Redis(port=redis_server.port)
    key = "rate:task:dmix.add:slots"
    interval_us = int(INTERVAL * 1_000_000)
    try:
        assert broker.rate_reserve(key, 1 / INTERVAL) == 0  # this code takes the free slot
        (stored,) = client.keys(f"*{prefix}*rate*")  # the one limiter key, as Redis has it
        older = int(client.eval(TWO_ARGUMENT_RESERVE, 1, stored, interval_us, 1))
        assert 0 < older <= interval_us, "the older script did not see this code's slot"
        # A slot past max_wait is not taken by this code: the older script's next one is
        # the slot after its own, not one further.
        assert broker.rate_reserve(key, 1 / INTERVAL, max_wait=1.0) > INTERVAL
        again = int(client.eval(TWO_ARGUMENT_RESERVE, 1, stored, interval_us, 1))
        assert interval_us < again <= 2 * interval_us
        # And this code sees the older script's reservations.
        assert 2 * INTERVAL < broker.rate_reserve(key, 1 / INTERVAL) <= 3 * INTERVAL
    finally:
        client.delete(*client.keys(f"*{prefix}*"))
        client.close()
        broker.close()


def test_no_limit_travels_as_a_number_an_older_worker_can_arm() -> None:
    # Older workers pass a message's hard_limit to setitimer and to the supervisor's
    # deadline. math.inf travelled as null (the task's own limit); it travels as a number
    # now, which must stay finite and within what setitimer takes.
    message = add.message((1, 2), time_limit=math.inf, soft_time_limit=math.inf)
    assert message.hard_limit is not None and math.isfinite(message.hard_limit)
    assert message.soft_limit is not None and math.isfinite(message.soft_limit)
    previous = signal.setitimer(signal.ITIMER_REAL, message.soft_limit)
    try:
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert remaining > 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous)
