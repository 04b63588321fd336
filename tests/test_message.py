"""The wire format: round trips, compatibility across versions, bad input."""

from __future__ import annotations

import os
import re
import time
import uuid

import msgspec
import pytest

from celeriac import message as message_module
from celeriac.errors import MalformedMessage, SerializationError
from celeriac.message import (
    PROTOCOL_VERSION,
    ErrorInfo,
    Message,
    ResultRecord,
    decode_message,
    decode_result,
    encode_message,
    encode_result,
    new_task_id,
    peek_identity,
    ready_at,
)


def test_round_trip_keeps_every_field() -> None:
    m = Message(
        id="a",
        task="t",
        args=[1, "x"],
        kwargs={"k": [1]},
        queue="q",
        priority=7,
        eta=1.5,
        expires=2.5,
        retries=2,
        headers={"h": 1},
        options={"o": 2},
    )
    assert decode_message(encode_message(m)) == m


def test_defaults_are_not_written() -> None:
    raw = encode_message(Message(id="a", task="t"))
    assert raw == b'{"id":"a","task":"t"}'


def test_fields_from_a_newer_producer_are_ignored() -> None:
    raw = b'{"id":"a","task":"t","args":[1],"brand_new_field":{"x":1}}'
    assert decode_message(raw).args == [1]


def test_a_newer_protocol_version_is_refused_with_advice() -> None:
    raw = msgspec.json.encode({"id": "a", "task": "t", "v": PROTOCOL_VERSION + 1})
    with pytest.raises(MalformedMessage, match="Upgrade this worker"):
        decode_message(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"\x00\xff\xfe",
        b"[1,2,3]",
        b'{"task":"t"}',
        b'{"id":1,"task":"t"}',
        b'"just a string"',
        b'{"id":"a","task":"t","args":"notalist"}',
    ],
)
def test_malformed_bytes_raise_malformed_message(raw: bytes) -> None:
    with pytest.raises(MalformedMessage, match="not a celeriac message"):
        decode_message(raw)


def test_unserializable_argument_is_named() -> None:
    m = Message(id="a", task="shop.send", args=[1], kwargs={"user": object()})
    with pytest.raises(SerializationError, match=r"shop.send: argument 'user' \(object\)"):
        encode_message(m)
    m = Message(id="a", task="shop.send", args=[1, Exception("x")])
    with pytest.raises(SerializationError, match=r"positional argument 1 \(Exception\)"):
        encode_message(m)


def test_unserializable_result_becomes_a_failure_record() -> None:
    raw = encode_result(ResultRecord(state="SUCCESS", task="t", result=object()))
    record = decode_result(raw)
    assert record.state == "FAILURE"
    assert record.error is not None and "not JSON-serializable" in record.error.message


SURROGATE = b"report-\xff.csv".decode("utf-8", "surrogateescape")  # as os.listdir gives it


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize(
    ("options", "named", "advice"),
    [
        ({"args": (SURROGATE,)}, "positional argument 0 (str)", "pass the bytes instead"),
        ({"kwargs": {"b": [1, SURROGATE]}}, "argument 'b' (list)", "pass the bytes instead"),
        ({"task_id": SURROGATE}, "its task_id", "give it text that is valid UTF-8"),
        ({"queue": SURROGATE}, "its queue", "give it text that is valid UTF-8"),
        ({"headers": {"h": SURROGATE}}, "a header", "give it text that is valid UTF-8"),
    ],
)
def test_a_send_with_text_that_is_not_utf8_says_which_part_and_sends_nothing(
    serializer: str, options: dict[str, object], named: str, advice: str
) -> None:
    # A file name from os.listdir that is not UTF-8 reached the encoder as a bare
    # UnicodeEncodeError, naming neither the task nor the argument.
    from celeriac import Celeriac

    app = Celeriac("t", broker="memory://", task_serializer=serializer)
    task = app.task(name="t.files")(lambda a=None, b=None: None)
    with pytest.raises(SerializationError) as raised:
        task.apply_async(**options)  # type: ignore[arg-type]
    said = str(raised.value)
    assert said.startswith(f"cannot send task t.files: {named} holds text that is not valid")
    assert f"which {serializer if serializer == 'msgpack' else 'JSON'} cannot carry" in said
    assert advice in said
    said.encode("utf-8")  # printable: the message itself holds no lone surrogate
    assert app.broker.stats() == []


def test_an_int_msgpack_cannot_carry_is_named() -> None:
    # msgpack's OverflowError reached the caller bare.
    from celeriac import Celeriac

    app = Celeriac("t", broker="memory://", task_serializer="msgpack")
    task = app.task(name="t.big")(lambda n: None)
    with pytest.raises(SerializationError, match=r"t.big: positional argument 0 \(int\) is not "):
        task.delay(2**70)
    assert app.broker.stats() == []


def test_an_error_with_a_lone_surrogate_is_stored_escaped() -> None:
    error = ErrorInfo(type="builtins.OSError", message=f"missing {SURROGATE}", traceback=SURROGATE)
    record = decode_result(encode_result(ResultRecord(state="FAILURE", task="t", error=error)))
    assert record.state == "FAILURE" and record.error is not None
    assert record.error.type == "builtins.OSError"  # the task's own error, escaped
    assert record.error.message == "missing report-\\udcff.csv"
    assert record.error.traceback == "report-\\udcff.csv"


CONTAINS_ITSELF: list[object] = []
CONTAINS_ITSELF.append(CONTAINS_ITSELF)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (SURROGATE, r"returned a str, .*\(a string in it is not valid UTF-8: .*surrogates"),
        ({"rows": [1, 2], "name": SURROGATE}, r"returned a dict, .*not valid UTF-8"),
        (CONTAINS_ITSELF, r"returned a list, .*\(it contains itself, or nests too deeply\)"),
    ],
)
def test_a_value_that_cannot_be_encoded_becomes_a_failure_that_says_why(
    value: object, why: str
) -> None:
    record = decode_result(encode_result(ResultRecord(state="SUCCESS", task="t", result=value)))
    assert record.state == "FAILURE" and record.error is not None
    assert record.error.type == "celeriac.errors.SerializationError"
    assert re.search(why, record.error.message), record.error.message
    assert record.error.message.endswith("Return simple values such as ids.")


def test_peek_identity_reads_what_it_can() -> None:
    assert peek_identity(b'{"id":"x","task":"y","args":"bad"}') == ("x", "y")
    assert peek_identity(b"\x00") == (None, None)
    assert peek_identity(b"[1]") == (None, None)
    packed = msgspec.msgpack.encode({"id": "m", "task": "t", "v": 99})
    assert peek_identity(packed) == ("m", "t")  # a newer msgpack message names itself
    assert peek_identity(b"sig1:k:00:" + packed) == ("m", "t")
    assert peek_identity(b"\x80\x05garbage") == (None, None)  # pickle: never unpickled


def test_ready_at_reads_json_msgpack_and_signed_messages_and_only_real_times() -> None:
    sent = time.time() - 60
    message = Message(id="m", task="t", sent_at=sent)
    packed = msgspec.msgpack.encode(message)
    assert ready_at(encode_message(message)) == sent
    assert ready_at(packed) == sent
    assert ready_at(b"sig1:k:00:" + packed) == sent  # the signature is not checked here
    later = msgspec.structs.replace(message, eta=sent + 30)
    assert ready_at(msgspec.msgpack.encode(later)) == sent + 30
    # Times that cannot be a send time: none is read, so no wait is made up from them.
    for sent_at in (float("nan"), 0.0, -5.0, sent * 1000, time.time() + 3 * 86_400):
        assert ready_at(msgspec.msgpack.encode({"id": "m", "sent_at": sent_at})) is None
    # An ETA that cannot be a time is left out; the send time still counts.
    odd_eta = {"id": "m", "sent_at": sent, "eta": float("nan")}
    assert ready_at(msgspec.msgpack.encode(odd_eta)) == sent
    assert ready_at(b"\x80\x05garbage") is None  # pickle: never unpickled


def test_new_task_ids_are_uuid4_and_never_repeat() -> None:
    # Made many at a time from one os.urandom call: each is still a version 4 UUID of its
    # own 16 random bytes, past a refill too.
    ids = [new_task_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert (str(parsed), parsed.version, parsed.variant) == (task_id, 4, uuid.RFC_4122)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_reuse_its_parents_task_ids() -> None:
    new_task_id()
    if not message_module._ids:  # that was the last one made in advance: make more
        new_task_id()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only reports its id
        try:
            os.write(write, new_task_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read, "rb") as pipe:
        from_child = pipe.read().decode()
    assert uuid.UUID(from_child).version == 4
    assert from_child != new_task_id()  # the parent's next id is not the child's
