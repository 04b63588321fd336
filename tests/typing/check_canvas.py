"""Typing checks of the canvas API, run by mypy (not pytest)."""

from __future__ import annotations

from typing import Any, assert_type

from celeriac import AsyncResult, Celeriac
from celeriac.canvas import Canvas, Chain, Chord, Group, Signature, chain, chord, group
from celeriac.group_result import GroupResult

app = Celeriac("typing-canvas", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def label(value: int) -> str:
    return f"#{value}"


def check() -> None:
    assert_type(add.s(1, 2), Signature[int])
    assert_type(add.si(1, 2), Signature[int])
    assert_type(add.s(1).delay(2), AsyncResult[int])
    assert_type(add.map([1, 2]), Group)
    assert_type(group(add.s(i, i) for i in range(3)).apply_async(), GroupResult)
    assert_type(group(add.s(1, 1)).apply_async().get(timeout=1), list[Any])
    chord([add.s(1, 1)], total.s(), on_error="ignore")  # type: ignore[arg-type]


def check_chain_result_is_its_last_steps() -> None:
    assert_type(add.s(1, 2) | label.s(), Chain[AsyncResult[str]])
    assert_type((add.s(1, 2) | label.s()).apply_async(), AsyncResult[str])
    assert_type((add.s(1, 2) | label.s()).delay(), AsyncResult[str])
    assert_type((add.s(1, 2) | add.s(3) | label.s()).apply_async(), AsyncResult[str])
    assert_type((label.s() | add.map([1, 2])).apply_async(), GroupResult)
    assert_type((add.s(1, 2) | chord([add.s(1)], label.s())).apply_async(), AsyncResult[str])
    assert_type((add.map([1, 2]) | total.s()).apply_async(), AsyncResult[int])
    assert_type((chain(add.s(1, 2)) | label.s()).apply_async(), AsyncResult[str])
    assert_type((add.s(1, 2) | (add.s(3) | label.s())).apply_async(), AsyncResult[str])
    assert_type(chain(add.s(1, 2), add.s(3)).apply_async().get(timeout=5) + 1, int)
    assert_type(chain(add.s(1, 2)).apply_async(), AsyncResult[int])
    assert_type(
        chain(label.si(1), add.s(1), add.s(2), add.s(3), label.s()).delay(), AsyncResult[str]
    )
    assert_type(chain(add.s(1, 2), add.map([1])).apply_async(), GroupResult)
    assert_type(chain(add.s(1, 2), chord([add.s(1)], label.s())).apply_async(), AsyncResult[str])
    assert_type(chain(add.s(1, 2), chain(add.s(3), label.s())).apply_async(), AsyncResult[str])
    assert_type(chain([add.s(1, 2), add.s(3)]).apply_async(), AsyncResult[int])


def check_chain_of_uncounted_steps() -> None:
    steps = [add.s(1, 2), add.s(3)]
    assert_type(chain(*steps).apply_async(), AsyncResult[int])  # every step's is the last's
    mixed = [add.s(1, 2), add.map([3])]
    assert_type(chain(mixed).apply_async(), AsyncResult[Any] | GroupResult)
    assert_type(chain(*mixed).delay(), AsyncResult[Any] | GroupResult)
    anything: Canvas = add.s(1, 2)
    assert_type(chain(add.s(1, 2), anything).apply_async(), AsyncResult[Any] | GroupResult)
    assert_type((add.s(1, 2) | anything).apply_async(), AsyncResult[Any] | GroupResult)


def check_mixed_collections_are_still_canvases() -> None:
    # mypy joins Canvas[AsyncResult[int]] and Canvas[GroupResult] to Canvas[object]: each
    # still goes wherever a canvas does, and sends as either result.
    pieces = [add.s(1, 2), add.map([3]), add.s(1) | label.s(), chord([add.s(1)], total.s())]
    group(pieces).delay()
    chord(pieces, total.s()).delay()
    add.s(1, 2).link(pieces[0])
    flows = [add.s(1) | add.s(2), add.s(1) | label.s()]
    for flow in flows:
        assert_type(flow.apply_async(), AsyncResult[Any] | GroupResult)
    group(flows).delay()
    fan_ins = [chord([add.s(1)], total.s()), chord([add.s(1)], add.map([1]))]
    assert_type(fan_ins[0].delay(), AsyncResult[Any] | GroupResult)
    chain(fan_ins).delay()


def check_chord_result_is_its_bodys() -> None:
    assert_type(chord([add.s(1, 1)], total.s()), Chord[AsyncResult[int]])
    assert_type(chord([add.s(1, 1)], total.s()).apply_async(), AsyncResult[int])
    assert_type(chord(group(add.s(1, 1)), label.si(1)).delay(), AsyncResult[str])
    assert_type(chord([add.s(1, 1)], total.s()).apply_async().get(timeout=1) + 1, int)
    assert_type(chord([add.s(1, 1)], add.map([1])).apply_async(), GroupResult)
    assert_type(chord([add.s(1, 1)], total.s() | label.s()).apply_async(), AsyncResult[str])


def check_bare_annotations_still_mean_either() -> None:
    # Code written before the classes were generic: a bare name means "any result".
    flow: Chain = add.s(1, 2) | label.s()
    assert_type(flow.apply_async(), AsyncResult[Any] | GroupResult)
    fan_in: Chord = chord([add.s(1, 1)], total.s())
    assert_type(fan_in.apply_async(), AsyncResult[Any] | GroupResult)
    pieces: list[Canvas] = [add.s(1, 2), flow, fan_in, add.map([1])]
    assert isinstance(pieces[1], Chain)
    assert isinstance(pieces[2], Chord)
    add.s(1, 2).link(flow).link_error(fan_in)
