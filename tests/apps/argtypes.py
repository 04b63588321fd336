"""Tasks with annotated parameters of types JSON cannot carry as themselves (bytes,
datetimes, UUIDs, decimals, tuples, sets, enums, dataclasses): each returns what it
received, as ``[type name, repr]`` per argument, so a test sees the types the worker
passed. The string annotations (``from __future__ import annotations``) are the point:
they must be resolved, not compared as text.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from celeriac import Celeriac, Task

app = Celeriac("argtypes-tests")


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Point:
    x: int
    y: int
    at: dt.datetime | None = None


class Box(msgspec.Struct):
    name: str
    size: tuple[int, int]


def _seen(*values: Any) -> list[list[str]]:
    return [[type(v).__name__, repr(v)] for v in values]


@app.task
def scalars(  # noqa: PLR0917 - one parameter per type under test
    payload: bytes,
    when: dt.datetime,
    day: dt.date,
    at: dt.time,
    span: dt.timedelta,
    ident: uuid.UUID,
    amount: Decimal,
) -> list[list[str]]:
    return _seen(payload, when, day, at, span, ident, amount)


@app.task
def containers(
    pair: tuple[int, str], tags: set[str], frozen: frozenset[int], rest: tuple[int, ...]
) -> list[list[str]]:
    return _seen(pair, tags, frozen, rest)


@app.task
def structured(colour: Colour, level: Level, point: Point, box: Box) -> list[list[str]]:
    return _seen(colour, level, point, box)


@app.task
def optional(when: dt.datetime | None = None, *, payload: bytes | None = None) -> list[list[str]]:
    return _seen(when, payload)


@app.bound_task()
def bound(self: Task[Any, Any], payload: bytearray) -> list[list[str]]:
    return _seen(self.name, payload)


@app.task
async def in_a_coroutine(when: dt.datetime) -> list[list[str]]:
    return _seen(when)


@app.task
def plain(  # type: ignore[no-untyped-def]  # noqa: PLR0917 - as scalars
    text: str,
    number: int,
    ratio: float,
    items: list[Any],
    data: dict[str, Any],
    anything: Any,
    unannotated,  # the point: no annotation, no conversion
) -> list[list[str]]:
    return _seen(text, number, ratio, items, data, anything, unannotated)


@app.task
def writes_bytes(payload: bytes) -> int:
    """What a user's task does with ``bytes``: the length of what it would write."""
    return len(payload)
