"""The wire format: one versioned msgspec Struct per message and per result.

Compatibility rules, so old and new code can run side by side during a deploy:

* Decoding sets aside fields it does not know, so a newer producer's extra fields never
  crash an older worker, and encoding writes them back: a retry or a rate-limit deferral
  by an older worker passes them on to the newer worker that runs the message next (they
  were dropped there). New fields are always optional with a default.
* ``v`` is the protocol version. A worker does not run a message whose major version is
  newer than :data:`PROTOCOL_VERSION` (:class:`~celeriac.errors.NewerProtocol`): it puts it
  back for an upgraded worker, then dead-letters it with advice after
  ``task_unknown_max_age``, as for a task it does not know. Additive changes do not bump it.
* Field names are short because every queued message sits in broker memory; each is
  spelled out in the comment beside it.

Timestamps are Unix seconds (float). ``eta`` and ``expires`` are absolute.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from celeriac.errors import MalformedMessage, NewerProtocol, SerializationError

PROTOCOL_VERSION = 1


# forbid_unknown_fields: only for decode_message to notice fields it must keep (it decodes
# such a message again, leniently); a message with none costs nothing more.
class Message(msgspec.Struct, omit_defaults=True, kw_only=True, forbid_unknown_fields=True):
    """One task invocation, as stored in the broker.

    Example:
        >>> m = Message(id="abc", task="shop.add", args=[1, 2])
        >>> decode_message(encode_message(m)).args
        [1, 2]
    """

    id: str  # task id, unique; sending the same id twice creates one task
    task: str  # registered task name
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: str = "default"
    priority: int = 0  # 0..9, higher runs first on every broker
    eta: float | None = None  # not before this time
    expires: float | None = None  # not started after this time: state EXPIRED
    retries: int = 0  # how many times this task was retried (not redelivered)
    soft_limit: float | None = None  # seconds; SoftTimeLimitExceeded inside the task
    hard_limit: float | None = None  # seconds; the task's process is stopped
    root_id: str | None = None  # first task of a workflow
    parent_id: str | None = None  # task that sent this one
    headers: dict[str, Any] = msgspec.field(default_factory=dict)  # user headers
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # for middleware
    sent_at: float = 0.0
    v: int = PROTOCOL_VERSION


class ReadMessage(Message, kw_only=True):
    """A message read with fields this version does not know, kept to be written back.

    Example:
        >>> m = decode_message(b'{"id": "a", "task": "t", "trace": "x9"}')
        >>> m.unknown_fields, decode_message(encode_message(m)).unknown_fields
        ({'trace': 'x9'}, {'trace': 'x9'})
    """

    unknown_fields: dict[str, Any] = msgspec.field(default_factory=dict)


_FIELDS = frozenset(Message.__struct_fields__)


class ErrorInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A task's exception, in a form any process can read."""

    type: str  # qualified name, e.g. "builtins.ValueError"
    message: str
    traceback: str = ""
    # The exception's args when they are not just its message and JSON carries them in
    # ERROR_ARGS_BYTES (see error_args): it is rebuilt with them, not with its text.
    args: list[Any] | None = None


class ResultRecord(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What the broker stores for a task id: its state, value or error, and progress."""

    state: str
    task: str = ""
    result: Any = None
    error: ErrorInfo | None = None
    meta: dict[str, Any] | None = None  # progress and custom state from update_state()
    retries: int = 0
    date_done: float | None = None
    worker: str | None = None


_encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)
_result_decoder = msgspec.json.Decoder(ResultRecord)


def new_task_id() -> str:
    """Return a fresh random task id (a UUID4 string).

    What ``str(uuid.uuid4())`` returns, in a sixth of its time (it is paid per message):
    ids are made 128 at a time, from one ``os.urandom`` call (not a system call each), with
    their version bits set and their text laid out for all of them at once. Each is made
    of its own 16 random bytes, as before.

    Example:
        >>> import uuid
        >>> uuid.UUID(new_task_id()).version
        4
    """
    while True:
        try:
            return _ids.pop()  # atomic: two threads never get the same id
        except IndexError:
            _ids.extend(_fresh_ids(_IDS_AT_ONCE))


#: Task ids made per ``os.urandom`` call by :func:`new_task_id`.
_IDS_AT_ONCE = 128
# Byte maps applied to every id's 7th and 9th byte at once: version 4, RFC 4122 variant.
_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))
# Where each of an id's 32 hex digits goes in its 36-character text (8-4-4-4-12, dashes).
_PLACES = [place for place in range(36) if place not in (8, 13, 18, 23)]
_ids: list[str] = []
# A forked child starts with none: its parent hands out the ids it made in advance.
os.register_at_fork(after_in_child=_ids.clear)


def _fresh_ids(count: int) -> list[str]:
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    digits = raw.hex().encode()
    # Every id's text at once, one digit position at a time: a per-id f-string of five
    # slices cost more than everything else here.
    text = bytearray(b"-" * (36 * count))
    for digit, place in enumerate(_PLACES):
        text[place::36] = digits[digit::32]
    joined = text.decode()
    return [joined[i : i + 36] for i in range(0, 36 * count, 36)]


def encode_message(message: Message) -> bytes:
    """Encode a message to compact JSON.

    Raises:
        SerializationError: an argument is not JSON-serializable; the error names the task
            and the argument so the caller can pass an id instead.
    """
    try:
        # The type check inline: this runs once per message sent.
        return _encoder.encode(message if type(message) is Message else wire_form(message))
    except UNENCODABLE as exc:
        # RecursionError: nested past Python's recursion limit (msgspec raises it, not an
        # EncodeError); it reached the caller as a bare RecursionError. UnicodeEncodeError
        # (a ValueError): a str with a lone surrogate, as an undecodable file name gives.
        raise SerializationError(unserializable(message, exc)) from exc


def wire_form(message: Message) -> Message | dict[str, Any]:
    """What to encode for ``message``: itself, or its fields and the unknown ones it was
    read with (:class:`ReadMessage`), which lose to a known field of the same name."""
    if type(message) is Message or not isinstance(message, ReadMessage):
        return message  # nearly always: one type check per send
    # Every field, defaults too, values as they are (bytes and datetimes stay themselves in
    # msgpack): a little larger, and only for a message a newer producer sent.
    fields = msgspec.structs.asdict(plain(message))
    return {**fields, **{k: v for k, v in message.unknown_fields.items() if k not in _FIELDS}}


def message_from_fields(**fields: Any) -> Message:
    """The message ``fields`` hold: a :class:`ReadMessage` keeping those this version does
    not know (a newer producer's), as a pickled message is rebuilt.

    Example:
        >>> message_from_fields(id="a", task="t", trace="x9").unknown_fields
        {'trace': 'x9'}
    """
    unknown = {k: v for k, v in fields.items() if k not in _FIELDS}
    if not unknown:
        return Message(**fields)
    message = ReadMessage(**{k: v for k, v in fields.items() if k in _FIELDS})
    message.unknown_fields = unknown
    return message


def plain(message: Message) -> Message:
    """``message`` as a plain :class:`Message`, without fields read but not known (pickle
    must name a class every version has)."""
    if type(message) is Message:
        return message
    return Message(**{name: getattr(message, name) for name in Message.__struct_fields__})


def unserializable(
    message: Message,
    exc: BaseException,
    carrier: str = "JSON",
    encode: Callable[[Any], object] | None = None,
) -> str:
    """What a :class:`SerializationError` says when ``message`` could not be encoded in
    ``carrier`` (the format's name; ``encode`` its encoder, JSON's by default): which task,
    which part of it, why, and what to pass instead.

    Example:
        >>> print(unserializable(Message(id="a", task="shop.add", args=[object()]), TypeError()))
        ... # doctest: +ELLIPSIS
        cannot send task shop.add: positional argument 0 (object) is not JSON-serializable ...
    """
    culprit, is_argument = _culprit(message, encode)
    sent = f"cannot send task {storable_text(message.task)}"
    if not isinstance(exc, UnicodeEncodeError):
        return (
            f"{sent}: {culprit} is not {carrier}-serializable ({exc}). Pass simple values "
            "such as ids, strings and numbers, and load objects inside the task."
        )
    # A str holding a lone surrogate: what bytes decoded with errors="surrogateescape" give
    # (os.listdir's name of a file whose name is not UTF-8, sys.argv, os.environ).
    instead = (
        "pass the bytes instead, or the text decoded with errors='replace'"
        if is_argument
        else "give it text that is valid UTF-8"
    )
    return (
        f"{sent}: {culprit} holds text that is not valid UTF-8 ({exc}), which {carrier} "
        "cannot carry. Such text comes from bytes decoded with errors='surrogateescape' "
        f"(a file name that is not UTF-8): {instead}."
    )


def _culprit(message: Message, encode: Callable[[Any], object] | None) -> tuple[str, bool]:
    """The first part of ``message`` that ``encode`` refuses, named for the caller, and
    whether it is an argument."""

    for index, value in enumerate(message.args):
        if not encodable(value, encode):
            return f"positional argument {index} ({type(value).__name__})", True
    for key, value in message.kwargs.items():
        if not encodable(value, encode):
            return f"argument {storable_text(key)!r} ({type(value).__name__})", True
    for field, name in (("id", "its task_id"), ("queue", "its queue"), ("headers", "a header")):
        if not encodable(getattr(message, field), encode):
            return name, False
    return "an argument", True


def encodable(value: Any, encode: Callable[[Any], object] | None = None) -> bool:
    """Whether JSON (or the format whose encoder is ``encode``) can carry ``value``, as
    messages and results are encoded.

    Example:
        >>> encodable([1, "a"]), encodable(object())
        (True, False)
    """
    try:
        (encode or _encoder.encode)(value)
    except UNENCODABLE:
        return False
    return True


def decode_message(raw: bytes) -> Message:
    """Decode bytes from the broker into a message.

    Raises:
        MalformedMessage: the bytes are not a celeriac message (truncated, binary, wrong
            shape, or a newer protocol version this worker cannot read).
    """
    try:
        message = _message_decoder.decode(raw)
    except msgspec.ValidationError as exc:  # unknown fields, or a known one of another type
        try:
            loose = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            loose = None
        message = with_unknown_fields(loose, exc, raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _not_a_message(exc, raw) from exc
    return check_version(message)


def with_unknown_fields(fields: Any, refused: msgspec.ValidationError, raw: bytes) -> Message:
    """The message in ``fields`` (decoded without a type) that the typed decoder ``refused``:
    a :class:`ReadMessage` when the refusal was only fields this version does not know.

    Raises:
        MalformedMessage: not a message, or a known field of the wrong type (a message of a
            newer protocol version says so, with advice).
    """
    if isinstance(fields, dict):
        unknown = {k: v for k, v in fields.items() if k not in _FIELDS}
        if unknown:
            try:
                message = msgspec.convert(
                    {k: v for k, v in fields.items() if k in _FIELDS}, ReadMessage
                )
            except msgspec.ValidationError as exc:
                refused = exc
            else:
                message.unknown_fields = unknown
                return message
        version = fields.get("v")
        if isinstance(version, int) and version > PROTOCOL_VERSION:
            # A newer version changed a field this one reads: say what it is, not "not a
            # celeriac message", with what this version can still read of it.
            task, sent_at = fields.get("task"), fields.get("sent_at")
            if sent_at.__class__ not in (int, float):  # bool, text, a newer shape: unknown
                sent_at = 0.0
            raise NewerProtocol(
                _newer(task, fields.get("id"), version),
                task=task if isinstance(task, str) else "?",
                sent_at=float(sent_at),
            ) from refused
    raise _not_a_message(refused, raw) from refused


def _not_a_message(exc: Exception, raw: bytes) -> MalformedMessage:
    return MalformedMessage(f"not a celeriac message ({exc}); first bytes: {raw[:60]!r}")


def check_version(message: Message) -> Message:
    """Return ``message`` if this worker can read its protocol version, else refuse it.

    Every format (JSON, msgpack, pickle) passes through here after decoding, so a message
    from a newer producer is refused with advice whatever format carried it.

    Raises:
        NewerProtocol: ``message.v`` is newer than :data:`PROTOCOL_VERSION`.

    Example:
        >>> check_version(Message(id="a", task="t")).v
        1
        >>> check_version(Message(id="a", task="t", v=PROTOCOL_VERSION + 1))
        Traceback (most recent call last):
        ...
        celeriac.errors.NewerProtocol: task t[a] uses message protocol v2; this worker ...
    """
    if message.v > PROTOCOL_VERSION:
        raise NewerProtocol(
            _newer(message.task, message.id, message.v),
            task=message.task,
            sent_at=message.sent_at,
        )
    return message


#: The latest ``eta`` a message may hold: the end of the year 9999, the last second
#: ``datetime`` can show. Past it a number is no time a producer meant.
LATEST_TIME = 253_402_300_799.0
#: The earliest ``expires``: 2000-01-01. Below it the number is a time to live written where
#: an absolute time belongs (``expires: 3600``), or 0 for "none"; the task ended EXPIRED.
EARLIEST_EXPIRY = 946_684_800.0
#: The longest task name shown whole in a reason or a log line.
NAME_SHOWN = 200
#: A number of seconds this close to the clock (20 years either way) is a Unix time.
_NEAR_NOW = 20 * 365 * 86_400.0


def unix_time_as_seconds(option: str, seconds: float, now: float) -> str | None:
    """What is wrong with ``seconds`` given as a delay, when it is in fact a Unix time.

    ``countdown=time.time() + 60`` waited 56 years; ``expires=time.time() + 60`` never
    expired. No one means a delay of 36 to 76 years, so a number that close to the clock
    is said back with the fix.

    Example:
        >>> print(unix_time_as_seconds("countdown", 1_800_000_060, 1_800_000_000.0))
        countdown=1800000060 looks like a Unix time (2027-01-15T08:01:00Z), but countdown ...
        >>> unix_time_as_seconds("countdown", 3600, 1_800_000_000.0) is None
        True
    """
    if not abs(seconds - now) < _NEAR_NOW:  # NaN is never <: said by the caller
        return None
    return (
        f"{option}={seconds!r} looks like a Unix time ({_utc(seconds)}), but {option} is "
        f"seconds from now: pass {option}={seconds - now:.0f}"
    )


def invalid_field(message: Message) -> str | None:
    """Why a decoded message cannot run as its fields say, naming the field and its value;
    None when it can.

    The decoder checks only each field's type: a producer in another language, an older
    version or a person pushing by hand can still write a value no worker can act on. Each
    refused here did harm: ``retries=-1000`` was retried a thousand times; an ``expires``
    of 0 or a time to live (3600) ended EXPIRED at once, unrun and not replayable; a
    ``hard_limit`` of 0 got the task killed at once and a NaN one gave it no limit at all;
    an empty task name was put back for an hour; an ``eta`` of 1e300 ran at once. Odd
    values that harm nothing are kept: a ``priority`` out of 0..9 (the broker orders by
    the priority it was sent with, never the body's), an ``eta`` in the past or at 0, an
    ``expires`` far ahead (never), an older ``v``, fields this version does not know (a
    newer producer's).

    Example:
        >>> invalid_field(Message(id="a", task="shop.add", retries=2)) is None
        True
        >>> print(invalid_field(Message(id="a", task="shop.add", retries=-1)))
        retries=-1 is negative (it counts the retries already made, from 0)
        >>> print(invalid_field(Message(id="a", task="shop.add", expires=3600.0)))
        ... # doctest: +NORMALIZE_WHITESPACE
        expires=3600.0 is 1970-01-01T01:00:00Z: expires is an absolute Unix time (a time
        to live must be added to the send time), and null for none
    """
    if not message.id:
        return "id is empty (every task needs one: its result is stored under it)"
    if not message.task:
        return "task is empty (no task has an empty name)"
    if message.retries < 0:
        return f"retries={message.retries} is negative (it counts the retries already made, from 0)"
    return _wrong_time(message) or _wrong_limit(message)


def _wrong_time(message: Message) -> str | None:
    eta, expires = message.eta, message.expires
    if eta is not None and not eta <= LATEST_TIME:  # NaN is never <=
        return f"eta={eta!r} is not a time before the year 10000 (a Unix time in seconds)"
    if expires is not None and not expires >= EARLIEST_EXPIRY:  # NaN is never >=
        # Far ahead (even infinite) is kept: it never expires, as apply_async may send it.
        shown = _utc(expires) if expires >= 0 else "no time"
        return (
            f"expires={expires!r} is {shown}: expires is an absolute Unix time (a time to "
            "live must be added to the send time), and null for none"
        )
    return None


def _wrong_limit(message: Message) -> str | None:
    for field, limit in (("soft_limit", message.soft_limit), ("hard_limit", message.hard_limit)):
        if limit is not None and not limit > 0:  # NaN is never > 0
            return f"{field}={limit!r} is not a number of seconds over 0 (null: the task's limit)"
    return None


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _newer(task: object, task_id: object, version: int) -> str:
    return (
        f"task {task}[{task_id}] uses message protocol v{version}; this worker "
        f"reads up to v{PROTOCOL_VERSION}. Upgrade this worker or keep an upgraded one "
        "consuming this queue."
    )


def encode_result(record: ResultRecord) -> bytes:
    """Encode a result record; it never raises for what the record holds.

    Text UTF-8 cannot carry (a lone surrogate in an error message, a task name) is kept with
    backslash escapes. A value that cannot be encoded (an object, a str with a lone
    surrogate, a list that contains itself) becomes a FAILURE record that says why.

    Example:
        >>> loop: list[object] = []
        >>> loop.append(loop)
        >>> raw = encode_result(ResultRecord(state="SUCCESS", task="t", result=loop))
        >>> record = decode_result(raw)
        >>> record.state, record.error.type
        ('FAILURE', 'celeriac.errors.SerializationError')
        >>> print(record.error.message)  # doctest: +NORMALIZE_WHITESPACE
        task t returned a list, which is not JSON-serializable (it contains itself, or nests
        too deeply). Return simple values such as ids.
    """
    try:
        return _encoder.encode(record)
    except UNENCODABLE as exc:
        failure = exc
    # First only the text this record's strings cannot carry: an error's message and
    # traceback keep what they say, escaped.
    text = msgspec.structs.replace(
        record,
        task=storable_text(record.task),
        worker=storable_text(record.worker) if record.worker else record.worker,
        error=msgspec.structs.replace(
            record.error,
            type=storable_text(record.error.type),
            message=storable_text(record.error.message),
            traceback=storable_text(record.error.traceback),
        )
        if record.error
        else None,
    )
    try:
        return _encoder.encode(text)
    except UNENCODABLE as exc:
        failure = exc
    # Then the value (or progress data) itself cannot be stored: say what and why.
    if isinstance(failure, UnicodeEncodeError):
        why = f"a string in it is not valid UTF-8: {failure}"
    elif isinstance(failure, RecursionError):
        why = "it contains itself, or nests too deeply"
    else:
        why = str(failure)
    value = record.result if record.result is not None else record.meta
    what = "returned" if record.result is not None else "reported progress as"
    kind = type(value).__name__
    kind = f"an {kind}" if kind[:1].lower() in "aeiou" else f"a {kind}"  # "an object"
    failed = ResultRecord(
        state="FAILURE",
        task=text.task,
        error=ErrorInfo(
            type="celeriac.errors.SerializationError",
            message=storable_text(
                f"task {text.task} {what} {kind}, which is not "
                f"JSON-serializable ({why}). Return simple values such as ids."
            ),
        ),
        retries=record.retries,
        date_done=record.date_done,
        worker=text.worker,
    )
    return _encoder.encode(failed)


#: What msgspec raises for a value it cannot encode (UnicodeEncodeError is a ValueError).
UNENCODABLE = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)


#: The most bytes of JSON an exception's args take in its stored error (its message and
#: traceback carry the rest): a result must stay small.
ERROR_ARGS_BYTES = 1024


def error_args(exc: BaseException, message: str) -> list[Any] | None:
    """``exc.args``, for rebuilding it, when they say more than ``message`` (its text).

    Rebuilt from its text alone, ``HTTPError(503)`` whose ``__str__`` is "HTTP 503" came
    back as ``HTTPError("HTTP 503")`` (its status the text, its message "HTTP HTTP 503"),
    and ``OSError(111, "Connection refused")`` without its errno. None when the args are
    the text itself (most exceptions, nothing to add), or not JSON, or too big.

    Example:
        >>> error_args(ConnectionRefusedError(111, "refused"), "[Errno 111] refused")
        [111, 'refused']
        >>> error_args(ValueError("bad"), "bad") is None
        True
    """
    args = list(exc.args)
    # Compared as text only: ``==`` on a numpy array or a DataFrame (``ValueError(df)``)
    # gives an object whose truth value raises, and crashed the child storing the error.
    if not args or (len(args) == 1 and type(args[0]) is str and args[0] == message):
        return None
    try:
        encoded = _encoder.encode(args)
    except UNENCODABLE:
        return None
    return args if len(encoded) <= ERROR_ARGS_BYTES else None


def storable_text(text: str) -> str:
    """``text`` as UTF-8 can carry it: lone surrogates (a file name decoded with
    ``surrogateescape``) become backslash escapes.

    Example:
        >>> print(storable_text("ok"), storable_text("bad-" + chr(0xDCFF)))
        ok bad-\\udcff
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def decode_result(raw: bytes) -> ResultRecord:
    """Decode a stored result record.

    A record with a field in another shape (written by a newer version, or progress that
    ``update_state`` was given as a list) is read for what it can say: its state, and each
    field that has this version's type; the others keep their defaults. It raised
    MalformedMessage, so ``state``, ``get()`` and a whole group's reads failed on it.

    Raises:
        MalformedMessage: not a result record at all (not JSON, or no text ``state``).

    Example:
        >>> record = decode_result(b'{"state": "PROGRESS", "meta": [3, 10], "retries": 1}')
        >>> record.state, record.meta, record.retries
        ('PROGRESS', None, 1)
    """
    try:
        return _result_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        refused: Exception = exc
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"stored result is unreadable ({exc})") from exc
    fields = msgspec.json.decode(raw)  # JSON, or the typed decoder would not have got here
    if not isinstance(fields, dict) or not isinstance(fields.get("state"), str):
        raise MalformedMessage(f"stored result is unreadable ({refused})") from refused
    readable: dict[str, Any] = {}
    for name, value in fields.items():
        try:
            readable.update(msgspec.convert({name: value}, _ResultFields, strict=False).given())
        except msgspec.ValidationError:
            if name == "error":  # a failure must not read as one "without an error"
                readable["error"] = ErrorInfo(
                    type="celeriac.errors.TaskFailed", message=f"{value!r}"[:_SHOWN_ERROR]
                )
    return ResultRecord(**readable)


class _ResultFields(msgspec.Struct, kw_only=True):
    """ResultRecord's fields, each optional: a record's fields checked one at a time."""

    state: str | msgspec.UnsetType = msgspec.UNSET
    task: str | msgspec.UnsetType = msgspec.UNSET
    result: Any = msgspec.UNSET
    error: ErrorInfo | msgspec.UnsetType | None = msgspec.UNSET
    meta: dict[str, Any] | msgspec.UnsetType | None = msgspec.UNSET
    retries: int | msgspec.UnsetType = msgspec.UNSET
    date_done: float | msgspec.UnsetType | None = msgspec.UNSET
    worker: str | msgspec.UnsetType | None = msgspec.UNSET

    def given(self) -> dict[str, Any]:
        """The fields the record had, by name."""
        return {
            name: getattr(self, name)
            for name in self.__struct_fields__
            if getattr(self, name) is not msgspec.UNSET
        }


_SHOWN_ERROR = 2000  # characters of an error in an unknown shape kept as its message


def content_type(raw: bytes) -> str:
    """The format of an encoded message, from its first byte: "pickle", "msgpack" or "json"
    (anything else is for the JSON decoder to accept or refuse).

    Example:
        >>> content_type(b'{"id": "a"}'), content_type(b"\\x82\\xa2id"), content_type(b"\\x80")
        ('json', 'msgpack', 'pickle')
    """
    first = raw[:1]
    if first == b"\x80":
        return "pickle"
    if first and (0x81 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        return "msgpack"
    return "json"


def _unsigned(raw: bytes) -> bytes:
    """The payload of signed bytes (the signature is not checked), else ``raw``."""
    if raw.startswith(b"sig1:") and raw.count(b":") >= 3:
        return raw.split(b":", 3)[3]  # sig1:<key id>:<hmac>:<payload>, as codec.py signs
    return raw


def peek_identity(raw: bytes) -> tuple[str | None, str | None]:
    """Best effort (task id, task name) from bytes that may not decode as a Message: JSON
    or msgpack, signed or not (the signature is not checked; pickle is never read here).

    Example:
        >>> peek_identity(b'sig1:k:0f:{"id": "a1", "task": "shop.add", "v": 9}')
        ('a1', 'shop.add')
    """
    raw = _unsigned(raw)
    kind = content_type(raw)
    if kind == "pickle":
        return None, None
    try:
        loose = msgspec.msgpack.decode(raw) if kind == "msgpack" else msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # nested too deeply
        return None, None
    if not isinstance(loose, dict):
        return None, None
    task_id, name = loose.get("id"), loose.get("task")
    return (task_id if isinstance(task_id, str) else None, name if isinstance(name, str) else None)


class _Options(msgspec.Struct):
    """The field :func:`continues_workflow` reads."""

    options: dict[str, Any] = msgspec.field(default_factory=dict)


_options_json = msgspec.json.Decoder(_Options)
_options_msgpack = msgspec.msgpack.Decoder(_Options)


def continues_workflow(raw: bytes) -> bool:
    """Whether a message, from its own bytes, is a step a workflow continues from (a
    chain's step, a group's or chord's member): running it sends what comes next. False
    for bytes that do not say, and for a pickle (never read here).

    Example:
        >>> continues_workflow(b'{"id": "w:s0", "options": {"canvas": {"then": [{}]}}}')
        True
        >>> continues_workflow(b'{"id": "t1", "task": "shop.add"}')
        False
    """
    raw = _unsigned(raw)
    kind = content_type(raw)
    if kind == "pickle":
        return False
    try:
        options = (_options_msgpack if kind == "msgpack" else _options_json).decode(raw).options
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    canvas = options.get("canvas")
    return isinstance(canvas, dict) and bool(canvas.get("then"))


class _Times(msgspec.Struct):
    """The two fields :func:`ready_at` reads; a typed decode skips every other one."""

    sent_at: float = 0.0
    eta: float | None = None


_times_json = msgspec.json.Decoder(_Times)
_times_msgpack = msgspec.msgpack.Decoder(_Times)


#: How far ahead of this clock a message's own times may be and still be read by
#: :func:`ready_at`: a producer's clock may run ahead; a time in milliseconds is far past.
_CLOCK_AHEAD = 86_400.0


class _Delayed(msgspec.Struct):
    """The fields :func:`delay_reason` reads."""

    options: dict[str, Any] = msgspec.field(default_factory=dict)
    retries: int = 0


_delayed_json = msgspec.json.Decoder(_Delayed)
_delayed_msgpack = msgspec.msgpack.Decoder(_Delayed)


def delay_reason(raw: bytes) -> str:
    """Why a delayed message waits, from its own bytes, for an operator: its rate limit,
    a retry's backoff, or "" (a countdown or an ETA, or bytes that do not say). A backlog
    over its rate limit waits in the delayed store, so ``celeriac status`` shows it as
    delayed, not ready: this says so per message.

    Example:
        >>> delay_reason(b'{"id": "a", "task": "t", "options": {"rate_line": 1.0}}')
        'rate limit: waiting its turn'
        >>> delay_reason(b'{"id": "a", "task": "t", "retries": 2}'), delay_reason(b"not json")
        ('retry 2', '')
    """
    raw = _unsigned(raw)
    kind = content_type(raw)
    if kind == "pickle":
        return ""
    try:
        read = (_delayed_msgpack if kind == "msgpack" else _delayed_json).decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return ""
    if "rate_line" in read.options:
        return "rate limit: waiting its turn"
    if "rate_slot" in read.options:
        return "rate limit: its slot"
    return f"retry {read.retries}" if read.retries > 0 else ""


def ready_at(raw: bytes) -> float | None:
    """When a message became ready to run, from its own bytes: its send time, or its ETA
    when that is later (Unix seconds). None for bytes that do not say: not a message, a
    pickle (never read here), or one whose send time is missing or cannot be a time (NaN,
    in milliseconds, over a day ahead of this clock).

    The broker contract's :data:`~celeriac.brokers.records.ReadyAt`: ``celeriac status``
    and the metrics exporter pass it to ``broker.stats()`` for how long tasks wait.

    Example:
        >>> ready_at(b'{"id": "a1", "task": "shop.add", "sent_at": 1000.5}')
        1000.5
        >>> ready_at(b'{"id": "a1", "task": "shop.add", "sent_at": 1000.5, "eta": 1060.0}')
        1060.0
        >>> ready_at(b"\\x00\\x01 not a message"), ready_at(b'{"sent_at": 1800000000000}')
        (None, None)
    """
    raw = _unsigned(raw)
    kind = content_type(raw)
    if kind == "pickle":
        return None
    try:
        times = (_times_msgpack if kind == "msgpack" else _times_json).decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    latest = time.time() + _CLOCK_AHEAD
    if not 0 < times.sent_at <= latest:  # none, NaN, milliseconds, a clock far ahead
        return None
    eta = times.eta if times.eta is not None and 0 < times.eta <= latest else 0.0
    return max(times.sent_at, eta)
