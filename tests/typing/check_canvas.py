"""Typing checks of the canvas API, run by mypy (not pytest)."""

from __future__ import annotations

from typing import Any, assert_type

from celeriac import AsyncResult, Celeriac
from celeriac.canvas import Chain, Group, Signature, chain, chord, group
from celeriac.result import GroupResult

app = Celeriac("typing-canvas", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(values: list[int]) -> int:
    return sum(values)


def check() -> None:
    assert_type(add.s(1, 2), Signature[int])
    assert_type(add.si(1, 2), Signature[int])
    assert_type(add.s(1).delay(2), AsyncResult[int])
    assert_type(add.s(1, 2) | add.s(3), Chain)
    assert_type(add.map([1, 2]), Group)
    assert_type(group(add.s(i, i) for i in range(3)).apply_async(), GroupResult)
    assert_type(group(add.s(1, 1)).apply_async().get(timeout=1), list[Any])
    flow = chain(add.s(1, 2), add.s(3)).apply_async()
    assert_type(flow, AsyncResult[Any] | GroupResult)
    chord([add.s(1, 1)], total.s()).apply_async().get(timeout=1)
    chord([add.s(1, 1)], total.s(), on_error="ignore")  # type: ignore[arg-type]
