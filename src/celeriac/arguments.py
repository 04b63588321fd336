"""Argument types: a task's arguments turned back into the types its parameters are
annotated with, when the message carried them as something else.

JSON (the default serializer) has no bytes, datetimes, UUIDs, decimals, tuples, sets,
enums or dataclasses: msgspec writes bytes as base64 text, a datetime as ISO 8601 text,
a tuple or a set as an array, a dataclass as an object. Without this module a task
declared ``def save(payload: bytes, when: datetime)`` ran with two *strings*, and wrote
base64 text to its file or failed deep inside comparing a str with a datetime.

The rule, per parameter, worked out once per task from its annotations:

* Converted (with ``msgspec.convert``): ``bytes``, ``bytearray``, ``datetime``, ``date``,
  ``time``, ``timedelta``, ``UUID``, ``Decimal``, enums, ``tuple[...]`` (named tuples
  too), ``set[...]``, ``frozenset[...]``, dataclasses and msgspec Structs, ``list[...]``
  and ``dict[...]`` of any of these, and ``X | None`` of any of these.
* Only a value in the form JSON gives that type is converted (a str for a datetime, a
  list for a tuple, a dict for a dataclass). A value that already has the type (msgpack
  carries bytes and aware datetimes, pickle everything), None, or any other value is
  passed as it came.
* Everything else is passed as it came: unannotated parameters, ``Any``, ``object``,
  ``str``, ``int``, ``float``, ``bool``, plain ``list`` / ``dict``, other unions, and an
  annotation that cannot be resolved or that msgspec cannot convert to.
* A value in the JSON form that does not convert (a str that is no datetime, for a
  datetime) fails the task with a TypeError naming the task, the parameter, the type and
  what arrived. ``delay()`` refuses such a call before sending, when it can tell.

Example:
    >>> import datetime as dt
    >>> def report(when: dt.datetime, payload: bytes, note: str) -> None: ...
    >>> conversions = conversions_for(report, bound=False)
    >>> sent = ["2026-12-01T09:30:00Z", "AAE="]  # as JSON carries them
    >>> args, kwargs = conversions.apply("shop.report", sent, {"note": "hi"})
    >>> args
    [datetime.datetime(2026, 12, 1, 9, 30, tzinfo=datetime.timezone.utc), b'\\x00\\x01']
    >>> conversions_for(lambda x, y: None, bound=False) is None  # nothing to convert
    True
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import inspect
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import msgspec

from celeriac.errors import ArgumentsRefused

#: Types JSON writes as text, converted back from a str.
_TEXT_TYPES: tuple[type, ...] = (
    bytes,
    bytearray,
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
    uuid.UUID,
    Decimal,
)
_BINARY = (bytes, bytearray)
_NONE = type(None)
_AS_LIST, _AS_DICT = frozenset({list}), frozenset({dict})
#: What a value of each of these classes arrives as, when not as itself.
_FORMS: dict[type, frozenset[type]] = {
    **dict.fromkeys(_TEXT_TYPES, frozenset({str})),
    bytearray: frozenset({str, bytes}),  # msgpack carries it as bytes
    **dict.fromkeys((tuple, set, frozenset), _AS_LIST),
}
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


class Conversion(msgspec.Struct, frozen=True):
    """How one parameter's value is converted: to ``annotation``, from a value whose type
    is one of ``wire`` (the forms JSON gives it)."""

    name: str
    annotation: Any
    wire: frozenset[type]
    #: the one class a value of the right type has (None for generics): a value of
    #: exactly this class needs no look at send
    exact: type | None

    def convert(self, task: str, value: Any) -> Any:
        """``value`` as the annotation's type; TypeError when it cannot be."""
        if value.__class__ not in self.wire:
            return value  # None, already the right type, or not ours to judge
        try:
            return msgspec.convert(value, self.annotation)
        except msgspec.ValidationError as exc:
            raise ArgumentsRefused(
                f"task {task}: argument {self.name!r} should be {_described(self.annotation)} "
                f"but arrived as a {type(value).__name__} that is not one ({exc}). Send "
                f"{_described(self.annotation)}, or annotate the parameter Any to take the "
                "value as it comes."
            ) from None
        except TypeError:  # a type msgspec cannot build (a field of an unsupported type)
            return value

    def refusal(self, value: Any) -> str | None:
        """Why the worker could not read ``value`` back as the annotation's type, when a
        caller passes it; None when it can (or when it is not ours to judge)."""
        if value is None or value.__class__ is self.exact:
            return None  # the common case: a datetime for a datetime
        if isinstance(value, str) and self.exact in _BINARY:
            # The worker cannot tell this text from bytes sent as base64: "abcd" would
            # arrive as b"i\xb7\x1d".
            return (
                f"{self.name!r} is {_described(self.annotation)}, given a str (the worker "
                "would read it as base64): pass bytes, e.g. text.encode()"
            )
        problem = self._unreadable(value)
        if problem is None:
            return None
        return (
            f"{self.name!r} is {_described(self.annotation)}, given a "
            f"{type(value).__name__} the worker could not read back as one ({problem})"
        )

    def _unreadable(self, value: Any) -> str | None:
        """What goes wrong when the worker converts ``value`` as JSON carries it."""
        try:
            sent = _json_decode(_json_encode(value))
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
            return None  # not encodable at all: the encoder says so, naming the argument
        if sent.__class__ not in self.wire:
            return None  # passed as it came
        try:
            msgspec.convert(sent, self.annotation)
        except msgspec.ValidationError as exc:
            return str(exc)
        except TypeError:  # a type msgspec cannot build: passed as it came
            return None
        return None


class Conversions:
    """The conversions of one task's parameters, by position and by name."""

    __slots__ = ("by_name", "extra_keywords", "extra_positional", "positional")

    def __init__(
        self,
        positional: list[Conversion | None],
        extra_positional: Conversion | None,
        by_name: dict[str, Conversion],
        extra_keywords: Conversion | None,
    ) -> None:
        self.positional = positional
        self.extra_positional = extra_positional  # *args: every extra positional value
        self.by_name = by_name
        self.extra_keywords = extra_keywords  # **kwargs: every keyword not named above

    def apply(
        self, task: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """New argument lists with the values converted; the given ones are left as they
        are (a retry re-sends the message as it came).

        Raises:
            ArgumentsRefused: a value in its JSON form that is not of its parameter's type
                (a TypeError).
        """
        converted, named = list(args), dict(kwargs) if kwargs else kwargs
        for where, conversion, value in self._each(args, kwargs):
            if isinstance(where, int):
                converted[where] = conversion.convert(task, value)
            else:
                named[where] = conversion.convert(task, value)
        return converted, named

    def check(self, task: str, args: Sequence[Any], kwargs: dict[str, Any] | None) -> None:
        """Raise ArgumentsRefused (a TypeError) when a value given could not be read back by
        the worker as its parameter's type (a str that is no datetime, for a datetime)."""
        for _, conversion, value in self._each(args, kwargs or {}):
            _refuse_if(task, conversion.refusal(value))

    def _each(
        self, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Iterator[tuple[int | str, Conversion, Any]]:
        """(position or name, its conversion, the value) of each value that has one."""
        for index, value in enumerate(args):
            conversion = self._at(index)
            if conversion is not None:
                yield index, conversion, value
        for name, value in kwargs.items():
            conversion = self.by_name.get(name, self.extra_keywords)
            if conversion is not None:
                yield name, conversion, value

    def _at(self, index: int) -> Conversion | None:
        if index < len(self.positional):
            return self.positional[index]
        return self.extra_positional


def _refuse_if(task: str, why: str | None) -> None:
    if why is not None:
        raise ArgumentsRefused(f"cannot send task {task}: argument {why}")


def conversions_for(fn: Callable[..., Any], bound: bool) -> Conversions | None:
    """The conversions ``fn``'s parameters need; None when none needs one (the worker
    then passes the arguments as they came, at no cost). Never raises: a signature or an
    annotation that cannot be read means "pass as it came"."""
    try:
        return _planned(fn, bound)
    except Exception:  # noqa: BLE001 - raised here, it would fail every run of the task
        return None


def _planned(fn: Callable[..., Any], bound: bool) -> Conversions | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if bound and params:
        params = params[1:]  # the task itself
    hints = _hints(fn, params)
    kinds = inspect.Parameter
    positional: list[Conversion | None] = []
    extra_positional = extra_keywords = None
    by_name: dict[str, Conversion] = {}
    for param in params:
        conversion = _conversion(param.name, hints.get(param.name))
        if param.kind == kinds.VAR_POSITIONAL:
            extra_positional = conversion
        elif param.kind == kinds.VAR_KEYWORD:
            extra_keywords = conversion
        else:
            if param.kind != kinds.KEYWORD_ONLY:
                positional.append(conversion)
            if conversion is not None and param.kind != kinds.POSITIONAL_ONLY:
                by_name[param.name] = conversion
    if not (by_name or extra_keywords or extra_positional or any(positional)):
        return None
    return Conversions(positional, extra_positional, by_name, extra_keywords)


def _hints(fn: Callable[..., Any], params: list[inspect.Parameter]) -> dict[str, Any]:
    """The parameters' annotations resolved (``from __future__ import annotations`` makes
    them strings), in the function's module; one that cannot be resolved is left out."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - any error of the user's annotations: one by one
        return _hints_one_by_one(fn, params)


def _hints_one_by_one(fn: Callable[..., Any], params: list[inspect.Parameter]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    for param in params:  # one bad annotation spoils only itself
        if param.annotation is param.empty:
            continue
        holder = types.SimpleNamespace(__annotations__={param.name: param.annotation})
        holder.__globals__ = namespace
        try:
            hints.update(typing.get_type_hints(holder))
        except Exception:  # noqa: BLE001, S112 - as above: passed as it came
            continue
    return hints


def _conversion(name: str, annotation: Any) -> Conversion | None:
    wire = _wire_forms(annotation) if annotation is not None else None
    if not wire:
        return None
    import msgspec.inspect

    try:
        msgspec.inspect.type_info(annotation)  # refuses what msgspec cannot convert to
    except Exception:  # noqa: BLE001 - an annotation msgspec cannot build: as it came
        return None
    # A value of exactly a scalar type always reads back; a dataclass's or a container's
    # contents are looked at by the send check.
    member = _optional_member(annotation)
    scalar = isinstance(member, type) and (member in _TEXT_TYPES or issubclass(member, enum.Enum))
    return Conversion(name, annotation, wire, member if scalar else None)


def _wire_forms(annotation: Any) -> frozenset[type] | None:
    """The types a value of ``annotation`` arrives as in JSON, when that is not itself;
    None when it needs no conversion."""
    annotation = _optional_member(annotation)
    while isinstance(annotation, typing.NewType):
        annotation = annotation.__supertype__
    origin = typing.get_origin(annotation)
    if origin in (tuple, set, frozenset):
        return _AS_LIST
    if origin in (list, dict):  # only when they hold a type JSON changes
        held = any(_wire_forms(member) for member in typing.get_args(annotation))
        return frozenset({origin}) if held else None
    if origin is not None or not isinstance(annotation, type):
        return None  # Any, a TypeVar, an unresolved string, another union or generic
    return _class_wire_forms(annotation)


def _class_wire_forms(cls: type) -> frozenset[type] | None:
    forms = _FORMS.get(cls)
    if forms is not None:
        return forms
    if issubclass(cls, enum.Enum):
        return frozenset({type(member.value) for member in cls})
    if issubclass(cls, tuple):
        return _AS_LIST  # a named tuple
    if dataclasses.is_dataclass(cls):
        return _AS_DICT
    if issubclass(cls, msgspec.Struct):
        return _AS_LIST if cls.__struct_config__.array_like else _AS_DICT
    return None  # str, int, float, bool, list, dict, object, any other class


def _optional_member(annotation: Any) -> Any:
    """``X`` for ``X | None`` (or ``Optional[X]``); the annotation itself otherwise, and
    also for any other union (left as it came: msgspec cannot tell two text types apart)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not _NONE]
        if len(members) == 1:
            return members[0]
    return annotation


def _described(annotation: Any) -> str:
    """``annotation`` for a person: "a datetime", "a tuple[int, str] or None"."""
    member = _optional_member(annotation)
    if member is not annotation:
        return f"{_described(member)} or None"
    if isinstance(annotation, type):
        return f"a {annotation.__qualname__}"
    return f"a {annotation!r}".replace("typing.", "").replace("datetime.", "")
