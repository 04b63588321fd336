"""Rolling deploys: old and new celeriac side by side.

A message from a newer producer must neither crash nor lose anything in an older worker,
and a signature change that breaks queued messages must be named by ``check --against``.
The last test runs a worker of an earlier commit (``git archive`` into the test's folder)
against this code, both ways round.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from celeriac import Celeriac, Task, chord
from celeriac.brokers.records import Outgoing
from celeriac.cli import cli
from celeriac.codec import Codec
from celeriac.errors import MalformedMessage, TaskFailed
from celeriac.group_result import GroupResult
from celeriac.manifest import breaking_changes, build
from celeriac.message import PROTOCOL_VERSION, Message, decode_message
from celeriac.middleware import Middleware, default_middleware
from celeriac.testing import run_queued
from tests.conftest import ROOT, Ledger, WorkerProcesses


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# -- check --against ----------------------------------------------------------------------


def manifest_of(fn: Callable[..., Any]) -> dict[str, Any]:
    app = Celeriac("deploy", broker="memory://")
    app.task(name="shop.ship")(fn)
    return build(app)


def test_check_against_flags_an_optional_parameter_that_became_required() -> None:
    # ship.delay(7) from the old code does not fit on any new worker; check said "no
    # breaking changes".
    def ship(order_id: int, carrier: str = "dhl") -> None: ...

    old = manifest_of(ship)

    def ship(order_id: int, carrier: str) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(ship)) == [
        "shop.ship: parameter 'carrier' became required: old messages that left it out do "
        "not fit, and new workers put them back for a worker of the old code, then "
        "dead-letter them after task_unknown_max_age; keep its default"
    ]


def test_check_against_flags_removed_var_kwargs() -> None:
    def ship(order_id: int, **extra: Any) -> None: ...

    old = manifest_of(ship)

    def ship(order_id: int) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(ship)) == [
        "shop.ship: **kwargs removed: old messages passing other keyword arguments lose "
        "them (dropped with a warning)"
    ]


SHIP_V1 = """
from celeriac import Celeriac
app = Celeriac("shop", broker="memory://")
@app.task(name="shop.ship")
def ship(order_id: int, carrier: str = "dhl") -> str:
    return f"{order_id} via {carrier}"
"""


def test_check_against_exits_1_for_a_default_that_was_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ship_v1.py").write_text(SHIP_V1)
    (tmp_path / "ship_v2.py").write_text(SHIP_V1.replace('carrier: str = "dhl"', "carrier: str"))
    monkeypatch.syspath_prepend(str(tmp_path))
    exported = tmp_path / "deployed.json"
    assert invoke("-A", "ship_v1", "check", "--export", str(exported))[0] == 0
    code, output = invoke("-A", "ship_v2", "check", "--against", str(exported))
    assert code == 1, output
    assert "shop.ship: parameter 'carrier' became required" in output


# -- fields a newer producer added ----------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("keys", [(), (b"k1",)], ids=["unsigned", "signed"])
def test_fields_this_version_does_not_know_are_written_back(
    serializer: str, keys: tuple[bytes, ...]
) -> None:
    codec = Codec(serializer, keys=keys)
    fmt = msgspec.msgpack if serializer == "msgpack" else msgspec.json
    newer = {"id": "a", "task": "t", "args": [1], "trace": {"span": "x9"}, "lane": 3}
    raw = codec._signed(fmt.encode(newer))
    message = codec.decode(raw)
    assert isinstance(message, Message) and message.args == [1]
    message.retries += 1  # what a retry changes before the worker encodes it again
    body = codec.encode(message)
    assert codec.decode(body).retries == 1
    payload = body.split(b":", 3)[3] if keys else body  # sig1:<key id>:<hmac>:<payload>
    written = fmt.decode(payload)
    assert (written["trace"], written["lane"], written["retries"]) == ({"span": "x9"}, 3, 1)


def test_a_known_field_of_the_wrong_type_is_still_refused() -> None:
    with pytest.raises(MalformedMessage, match="not a celeriac message"):
        decode_message(b'{"id": "a", "task": "t", "args": {"x": 1}, "trace": 1}')
    with pytest.raises(MalformedMessage, match="not a celeriac message"):
        decode_message(b'{"id": "a", "task": 7}')


def test_a_newer_protocol_that_changed_a_field_is_named_as_such() -> None:
    # v2 made args an object: "not a celeriac message" sent the operator looking for a
    # corrupt producer instead of upgrading this worker.
    raw = msgspec.json.encode({"id": "a", "task": "t", "args": {"x": 1}, "v": PROTOCOL_VERSION + 1})
    with pytest.raises(
        MalformedMessage, match=r"protocol v2; this worker reads up to v1\. Upgrade"
    ):
        decode_message(raw)
    with pytest.raises(MalformedMessage, match="protocol v2; this worker reads up to v1"):
        Codec().decode(msgspec.msgpack.encode(msgspec.json.decode(raw)))


@pytest.fixture
def deploy_app(broker_url: str) -> Iterator[Celeriac]:
    app = Celeriac("deploy-review", broker=broker_url)
    yield app
    app.broker.close()


def test_a_retry_keeps_the_fields_a_newer_producer_added(deploy_app: Celeriac) -> None:
    # The newer producer's "trace" vanished at the first retry here: the newer worker that
    # ran the retry never saw it.
    seen: list[int] = []

    @deploy_app.bound_task(
        name="deploy.flaky", max_retries=1, retry_backoff=0.01, retry_jitter=False,
        autoretry_for=(ValueError,), dead_letter_after_retries=True,
    )  # fmt: skip
    def flaky(self: Task[Any, Any]) -> None:
        seen.append(self.request.retries)
        raise ValueError("down")

    body = json.dumps(
        {"id": "n1", "task": "deploy.flaky", "sent_at": time.time(), "trace": {"span": "x9"}}
    ).encode()
    deploy_app.broker.send([Outgoing("n1", "default", body)])
    run_queued(deploy_app, fail_fast=False, include_delayed=True)
    assert seen == [0, 1]
    (letter,) = deploy_app.broker.dead_letters()
    stored = json.loads(letter.body)  # the body as the retry wrote it
    assert stored["retries"] == 1 and stored["trace"] == {"span": "x9"}


@pytest.mark.parametrize("key", [None, "k1"], ids=["unsigned", "signed"])
def test_a_json_worker_retries_a_msgpack_producers_task_with_the_same_arguments(
    sqlite_url: str, key: str | None
) -> None:
    # Producers and workers switch serializer one at a time. A JSON worker wrote the
    # retry of a msgpack message as JSON: its second run got base64 text for the bytes
    # and None for the NaN, and returned the length of the text.
    producer = Celeriac("p", broker=sqlite_url, task_serializer="msgpack", task_signing_key=key)
    worker = Celeriac("w", broker=sqlite_url, task_signing_key=key)  # JSON, reads msgpack
    seen: list[tuple[Any, Any]] = []
    for app in (producer, worker):

        @app.bound_task(
            name="deploy.measure", max_retries=1, retry_backoff=0.01, retry_jitter=False,
            autoretry_for=(ValueError,),
        )  # fmt: skip
        def measure(self: Task[Any, Any], blob: Any, ratio: Any) -> int:
            seen.append((blob, ratio))
            if self.request.retries == 0:
                raise ValueError("down")
            return len(blob)

    handle = producer.tasks["deploy.measure"].delay(b"\x00\xff", math.nan)
    try:
        run_queued(worker, fail_fast=False, include_delayed=True)
        assert handle.get(timeout=5) == 2
    finally:
        producer.broker.close()
        worker.broker.close()
    assert [blob for blob, _ in seen] == [b"\x00\xff", b"\x00\xff"]
    assert all(math.isnan(ratio) for _, ratio in seen)


class Team(Middleware):
    """A policy a newer version adds: its option rides in the message."""

    options = frozenset({"team"})


def test_an_older_worker_continues_a_workflow_whose_next_step_has_an_option_it_lacks(
    sqlite_url: str,
) -> None:
    # The older worker ran the first step, then refused to build the next one ("got
    # unknown option(s) team"): the step committed SUCCESS and the chain stopped for good.
    newer = Celeriac("newer", broker=sqlite_url, middleware=[*default_middleware(), Team()])
    older = Celeriac("older", broker=sqlite_url)
    for app in (newer, older):
        app.task(name="deploy.add")(lambda x, y: x + y)
    add = newer.tasks["deploy.add"]
    handle = (add.s(1, 2) | add.s(3).set(team="billing")).apply_async()
    try:
        assert run_queued(older) == 2
        assert handle.get(timeout=5) == 6
        assert newer.broker.dead_letters() == []
    finally:
        newer.broker.close()
        older.broker.close()


def test_a_newer_message_that_changed_a_field_is_dead_lettered_with_advice(
    deploy_app: Celeriac,
) -> None:
    @deploy_app.task(name="deploy.add")
    def add(x: int, y: int) -> int:
        return x + y

    body = json.dumps({"id": "n2", "task": "deploy.add", "args": {"x": 1, "y": 2}, "v": 2})
    deploy_app.broker.send([Outgoing("n2", "default", body.encode())])
    run_queued(deploy_app, fail_fast=False)
    (letter,) = deploy_app.broker.dead_letters()
    assert "deploy.add[n2] uses message protocol v2" in letter.reason
    assert "Upgrade this worker" in letter.reason


# -- a worker of an earlier commit --------------------------------------------------------

#: Before today's per-task dedupe keys, revokes-stream and worker changes.
OLD_COMMIT = "aa8216f"

DEPLOY_APP = """
from typing import Any

import celeriac
from celeriac import Celeriac, Task

app = Celeriac("deploy-mix")


@app.task(name="mix.where")
def where() -> str:
    return celeriac.__file__


@app.task(name="mix.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="mix.total")
def total(values: list[int]) -> int:
    return sum(values)


@app.bound_task(name="mix.once", max_retries=2, retry_backoff=0.05, retry_jitter=False)
def once(self: Task[Any, Any], x: int) -> int:
    if self.request.retries == 0:
        raise self.retry(countdown=0.05)
    return x
"""

OLD_PRODUCER = """
import json, sys
import celeriac
from deploy_app import add, once
assert "/old/" in celeriac.__file__, celeriac.__file__
keyed = once.apply_async((7,), dedupe_key="acct:7", dedupe_mode="running")
print(json.dumps({"add": add.delay(2, 3).id, "keyed": keyed.id}))
"""


def old_copy(tmp_path: Path) -> Path:
    """This repository's ``src`` at OLD_COMMIT, outside any git working tree."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("git or this repository's history is not available: no old celeriac to run")
    archive = subprocess.run(
        [git, "-C", str(ROOT), "archive", OLD_COMMIT, "src"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT} is not in this clone (shallow?): {archive.stderr!r}")
    old = tmp_path / "old"
    old.mkdir()
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    return old / "src"


def test_a_worker_of_an_earlier_commit_and_this_code_side_by_side(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_src = old_copy(tmp_path)
    (tmp_path / "deploy_app.py").write_text(DEPLOY_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    from deploy_app import add, app, once, total, where  # type: ignore[import-not-found]

    app.conf.broker_url = sqlite_url
    old_path = os.pathsep.join((str(old_src), str(tmp_path)))
    workers = WorkerProcesses(sqlite_url, Ledger(tmp_path / "ledger.txt"))
    try:
        # This code sends, the old worker runs: a retry, a chord, a per-task dedupe key.
        old_worker = workers.start("-c", "1", app="deploy_app", env={"PYTHONPATH": old_path})
        assert where.delay().get(timeout=30).startswith(str(old_src))
        assert add.delay(2, 3).get(timeout=30) == 5
        assert chord([add.s(i, i) for i in range(4)], total.s()).delay().get(timeout=30) == 12
        keyed = once.apply_async((4,), dedupe_key="acct:4", dedupe_mode="running")
        assert keyed.get(timeout=30) == 4
        # The old worker freed the key the message named (<task>:<key>): a new send runs.
        again = once.apply_async((5,), dedupe_key="acct:4", dedupe_mode="running")
        assert again.id != keyed.id and again.get(timeout=30) == 5
        assert workers.stop(old_worker) == 0
        # The old code sends, this code's worker runs.
        sent = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(OLD_PRODUCER)],
            env={**os.environ, "PYTHONPATH": old_path, "CELERIAC_BROKER_URL": sqlite_url},
            capture_output=True,
            text=True,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        ids = json.loads(sent.stdout)
        assert app.broker.kv_get(["dedupe:acct:7"]) == [ids["keyed"].encode()]  # unscoped
        run_queued(app, include_delayed=True)
        assert app.AsyncResult(ids["add"]).get(timeout=5) == 5
        assert app.AsyncResult(ids["keyed"]).get(timeout=5) == 7
        # This worker freed the old producer's unscoped key: the old code's next send runs.
        assert app.broker.kv_get(["dedupe:acct:7"]) == [None]
    finally:
        workers.kill_all()
        app.broker.close()


# -- results in a shape this version does not read -----------------------------------------


def test_a_result_with_a_field_in_another_shape_is_read_for_what_it_says() -> None:
    # A newer worker's record (or progress given to update_state as a list) raised
    # "stored result is unreadable" from state, get() and every read of its group.
    app = Celeriac("results-shape", broker="memory://")
    newer = {"state": "SUCCESS", "task": "t", "result": 5, "meta": ["a", "newer", "shape"]}
    failed = {"state": "FAILURE", "task": "t", "error": {"kind": "ValueError"}, "retries": 1}
    app.broker.send([Outgoing("g:0", "default", b"{}"), Outgoing("g:1", "default", b"{}")])
    held = app.broker.fetch(["default"], "newer-worker", limit=2, lease_seconds=30, timeout=0)
    records = {"g:0": newer, "g:1": failed}
    assert sorted(d.id for d in held) == sorted(records)
    for delivery in held:  # committed, as a newer worker would
        raw = json.dumps(records[delivery.id]).encode()
        assert app.broker.complete(delivery.lease, raw, 60.0)
    done, broken = app.AsyncResult("g:0"), app.AsyncResult("g:1")
    assert (done.state, done.get(timeout=1)) == ("SUCCESS", 5)
    assert broken.state == "FAILURE"
    with pytest.raises(TaskFailed, match="ValueError"):  # the error is shown as it came
        broken.get(timeout=1)
    members = GroupResult("g", [done, broken], app)
    assert (members.completed_count(), members.failed()) == (1, True)  # the one succeeded

    @app.bound_task(name="shape.progress")
    def progress(self: Task[Any, Any]) -> str:
        self.update_state("PROGRESS", ["step", 3])  # type: ignore[arg-type]
        return self.app.AsyncResult(self.request.id).state

    handle = progress.delay()
    run_queued(app)
    assert handle.get(timeout=1) == "PROGRESS"
