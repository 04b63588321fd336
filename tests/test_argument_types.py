"""A task's arguments arrive with the types its parameters are annotated with, though JSON
carried them as text and lists (bytes as base64, datetimes as ISO text, tuples and sets as
arrays, dataclasses as objects): real workers on SQLite and Redis, msgpack messages, the
in-process runner, and the check at send."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from celeriac import ArgumentsRefused, Celeriac
from celeriac.arguments import conversions_for
from celeriac.testing import run_queued
from tests.apps import argtypes, core
from tests.conftest import Ledger, WorkerProcesses

APP = "tests.apps.argtypes"
WHEN = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
NAIVE = dt.datetime(2026, 12, 1, 9, 30, 15, 250)


@pytest.fixture
def argtypes_app(
    broker_url: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celeriac]:
    """tests.apps.argtypes's app on this test's broker (the one `workers` use)."""
    monkeypatch.setattr(argtypes.app.conf, "broker_url", broker_url)
    yield argtypes.app
    argtypes.app.broker.close()


def _received(values: list[Any]) -> list[list[str]]:
    """What a task of tests.apps.argtypes returns when it received ``values``."""
    return [[type(v).__name__, repr(v)] for v in values]


def _send_every_kind() -> list[tuple[Any, list[Any]]]:
    """One call of each task, with what it must receive."""
    point = argtypes.Point(1, 2, WHEN)
    box = argtypes.Box("b", (3, 4))
    scalars = [b"\x00\x01", NAIVE, dt.date(2026, 12, 1), dt.time(9, 30)]
    scalars += [dt.timedelta(seconds=90), uuid.UUID(int=5), Decimal("1.10")]
    containers: list[Any] = [(1, "a"), {"x"}, frozenset({2}), (1, 2, 3)]
    return [
        (argtypes.scalars.delay(*scalars), scalars),
        (argtypes.containers.delay(*containers), containers),
        (
            argtypes.structured.delay(argtypes.Colour.RED, argtypes.Level.HIGH, point, box),
            [argtypes.Colour.RED, argtypes.Level.HIGH, point, box],
        ),
        (argtypes.optional.delay(WHEN, payload=b"hi"), [WHEN, b"hi"]),
        (argtypes.optional.delay(), [None, None]),
        (argtypes.bound.delay(bytearray(b"\xff")), [argtypes.bound.name, bytearray(b"\xff")]),
        (argtypes.in_a_coroutine.delay(WHEN), [WHEN]),
    ]


def test_a_worker_passes_arguments_as_their_annotated_types(
    argtypes_app: Celeriac, workers: WorkerProcesses
) -> None:
    # JSON carried each of these as a str, a list or a dict; the task used to receive
    # exactly that (writes_bytes measured 4 bytes of base64 text, not the 3 bytes sent).
    workers.start("-c", "1", app=APP)
    for result, sent in _send_every_kind():
        assert result.get(timeout=20) == _received(sent)
    assert argtypes.writes_bytes.delay(b"\x00\x01\x02").get(timeout=20) == 3


def test_values_of_other_types_and_other_annotations_arrive_as_sent(
    argtypes_app: Celeriac, workers: WorkerProcesses
) -> None:
    workers.start("-c", "1", app=APP)
    # Text that looks like a datetime stays text where the parameter is not a datetime.
    iso, b64 = "2026-12-01T09:30:00Z", "AAE="
    sent = [iso, 3, 1.5, [iso, [1, 2]], {"a": b64}, b64, iso]
    assert argtypes.plain.delay(*sent).get(timeout=20) == _received(sent)
    # None for a datetime parameter, and text given for a datetime (read as one).
    assert argtypes.optional.delay(None).get(timeout=20) == _received([None, None])
    assert argtypes.optional.delay(iso).get(timeout=20) == _received([WHEN, None])


def test_a_value_that_is_not_of_its_parameters_type_fails_the_task_clearly(
    argtypes_app: Celeriac, workers: WorkerProcesses
) -> None:
    # send_task is not checked at send (another producer, another language): the worker
    # must fail the task once, naming the task, the parameter, the type and what came.
    workers.start("-c", "1", app=APP)
    result = argtypes_app.send_task(argtypes.optional.name, ["next tuesday"])
    with pytest.raises(TypeError) as failure:
        result.get(timeout=20)
    message = str(failure.value)
    assert argtypes.optional.name in message
    assert "argument 'when' should be a datetime" in message
    assert "arrived as a str" in message
    assert result.state == "FAILURE"
    # The worker is fine: the next task runs.
    assert argtypes.optional.delay(WHEN).get(timeout=20) == _received([WHEN, None])


@pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)
def test_msgpack_messages_convert_the_same_and_keep_what_already_fits(
    argtypes_app: Celeriac, workers: WorkerProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msgpack carries bytes and aware datetimes as themselves (passed as they came), naive
    # datetimes, dates, UUIDs... as text, and tuples as lists (converted).
    monkeypatch.setattr(argtypes_app.conf, "task_serializer", "msgpack")
    workers.start("-c", "1", app=APP)
    for result, sent in _send_every_kind():
        assert result.get(timeout=20) == _received(sent)


def test_the_in_process_runner_converts_as_a_worker_does() -> None:
    app = Celeriac("argtypes-inline", broker="memory://")

    @app.task
    def stamp(when: dt.datetime, payload: bytes, pair: tuple[int, int]) -> str:
        assert isinstance(when, dt.datetime) and isinstance(payload, bytes)
        assert pair == (1, 2)
        return f"{when:%H:%M} {len(payload)}"

    result = stamp.delay(WHEN, b"\x00\x01\x02", (1, 2))
    assert run_queued(app) == 1
    assert result.get(timeout=5) == "09:30 3"
    app.broker.close()


def test_arguments_that_do_not_fit_are_never_retried() -> None:
    # autoretry_for=(Exception,) covered the TypeError: the same message failed the same
    # way max_retries more times, with backoff, before it was given up.
    app = Celeriac("argtypes-retry", broker="memory://")
    runs: list[int] = []

    @app.task(name="argtypes.retried", autoretry_for=(Exception,), max_retries=3,
              retry_backoff=0.01, retry_jitter=False)  # fmt: skip
    def retried(when: dt.datetime) -> None:
        runs.append(1)

    result = app.send_task("argtypes.retried", args=["next tuesday"])  # not checked at send
    assert run_queued(app, fail_fast=False, include_delayed=True) == 1  # one attempt
    with pytest.raises(ArgumentsRefused, match="argument 'when' should be a datetime"):
        result.get(timeout=5)
    assert runs == []
    app.broker.close()


@pytest.mark.parametrize(
    ("task", "args", "why"),
    [
        (argtypes.optional, ["next tuesday"], "'when' is a datetime or None, given a str"),
        (argtypes.writes_bytes, ["abcd"], "'payload' is a bytes, given a str"),
        (argtypes.scalars, [b"", NAIVE, NAIVE], "'day' is a date, given a datetime"),
        (argtypes.containers, [(1, 2)], r"'pair' is a tuple\[int, str\], given a tuple"),
        (argtypes.structured, [argtypes.Colour.RED, 7], "'level' is a Level, given a int"),
    ],
)
def test_delay_refuses_a_value_the_worker_could_not_read_as_its_type(
    task: Any, args: list[Any], why: str
) -> None:
    with pytest.raises(TypeError, match=f"cannot send task {task.name}: argument {why}"):
        task.conversions.check(task.name, args, {})


def test_delay_sends_nothing_when_a_value_is_refused(sqlite_url: str) -> None:
    app = Celeriac("argtypes-refused", broker=sqlite_url)

    @app.task
    def remind(when: dt.datetime) -> None: ...

    with pytest.raises(TypeError, match="argument 'when' is a datetime, given a str"):
        remind.delay("next tuesday")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="argument 'when'"):
        remind.apply_async(kwargs={"when": "soon"})
    assert run_queued(app) == 0
    remind.delay(WHEN)
    remind.apply_async(["2026-12-01T09:30:00+02:00"])  # ISO text: read as a datetime
    assert run_queued(app) == 2
    app.broker.close()


def test_tasks_without_such_parameters_have_no_conversions() -> None:
    # The worker's hot path then does nothing more than before.
    assert core.add.conversions is None
    assert core.work.conversions is None
    assert argtypes.plain.conversions is None
    assert argtypes.bound.conversions is not None


def test_an_annotation_that_cannot_be_resolved_is_passed_as_it_came() -> None:
    def save(  # type: ignore[no-untyped-def]
        path: Undefined,  # type: ignore[name-defined]  # noqa: F821 - the point
        when: dt.datetime,
        *more: bytes,
        **flags: Decimal,
    ): ...

    conversions = conversions_for(save, bound=False)
    assert conversions is not None  # the datetime still is converted
    args, kwargs = conversions.apply(
        "shop.save", ["a/b", "2026-12-01T09:30:00Z", "AAE="], {"rate": "0.5"}
    )
    assert args == ["a/b", WHEN, b"\x00\x01"]
    assert kwargs == {"rate": Decimal("0.5")}

    def broken(when: "dt.datetime[", other: int) -> None: ...  # noqa: F722

    assert conversions_for(broken, bound=False) is None


def test_unions_other_than_optional_and_unsupported_types_are_passed_as_they_came() -> None:
    class Opaque:
        pass

    def odd(a: dt.datetime | uuid.UUID, b: int | str, c: Opaque, d: list[int]) -> None: ...

    assert conversions_for(odd, bound=False) is None


class Pair(msgspec.Struct, array_like=True):
    left: int
    right: bytes


def test_a_struct_sent_as_an_array_is_converted() -> None:
    def pair(p: Pair) -> None: ...

    conversions = conversions_for(pair, bound=False)
    assert conversions is not None
    sent = msgspec.json.decode(msgspec.json.encode([Pair(1, b"x")]))
    assert sent == [[1, "eA=="]]
    assert conversions.apply("t", sent, {}) == ([Pair(1, b"x")], {})
