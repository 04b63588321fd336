"""Serialization and signing: formats, refusal of untrusted bytes, key rotation."""

from __future__ import annotations

import math
import pickle
import time

import pytest

from celeriac import Celeriac, ConfigurationError
from celeriac.brokers.records import Outgoing
from celeriac.codec import Codec, UntrustedMessage
from celeriac.errors import MalformedMessage
from celeriac.message import PROTOCOL_VERSION, Message, encode_message
from celeriac.testing import run_queued


def make_app(**settings: object) -> Celeriac:
    app = Celeriac("codec", broker="memory://", **settings)

    @app.task(name="codec.add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def test_msgpack_producer_and_a_json_worker_interoperate() -> None:
    app = make_app(task_serializer="msgpack")
    assert app.codec.encode(Message(id="x", task="codec.add"))[:1] != b"{"  # msgpack on the wire
    r = app.send_task("codec.add", args=(2, 3))
    app.conf.task_serializer = "json"  # a worker on the default settings reads it
    run_queued(app)
    assert r.get(timeout=1) == 5


def test_pickle_is_refused_unless_accepted() -> None:
    app = make_app()
    raw = pickle.dumps(Message(id="p1", task="codec.add", args=[1, 1]), protocol=5)
    app.broker.send([Outgoing("p1", "default", raw)])
    run_queued(app)
    (letter,) = app.broker.dead_letters()
    assert letter.reason.startswith("refused: content type pickle is not in accept_content")
    trusting = make_app(task_serializer="pickle", accept_content=["json", "pickle"])
    r = trusting.send_task("codec.add", args=(1, 1))
    run_queued(trusting)
    assert r.get(timeout=1) == 2


def test_signing_app_dead_letters_unsigned_and_forged_messages() -> None:
    app = make_app(task_signing_key="s3cret")
    good = app.send_task("codec.add", args=(1, 2))
    unsigned = encode_message(Message(id="u1", task="codec.add", args=[1, 1]))
    forged = Codec("json", ("json",), (b"not-the-key",)).encode(
        Message(id="f1", task="codec.add", args=[1, 1])
    )
    app.broker.send([Outgoing("u1", "default", unsigned), Outgoing("f1", "default", forged)])
    run_queued(app)
    assert good.get(timeout=1) == 3
    reasons = {x.id: x.reason for x in app.broker.dead_letters()}
    assert reasons["u1"].startswith("refused: unsigned message")
    assert reasons["f1"].startswith("refused: bad signature")


def test_key_rotation_accepts_messages_signed_with_the_old_key() -> None:
    old = make_app(task_signing_key="old-key")
    r = old.send_task("codec.add", args=(4, 4))
    old.conf.task_signing_key = ["new-key", "old-key"]  # deploy: sign new, still verify old
    run_queued(old)
    assert r.get(timeout=1) == 8


def test_tampered_payload_is_detected() -> None:
    codec = Codec("json", ("json",), (b"k",))
    raw = codec.encode(Message(id="a", task="t", args=[1]))
    with pytest.raises(UntrustedMessage, match="bad signature"):
        codec.decode(raw.replace(b"[1]", b"[2]"))


def test_serializer_must_be_accepted() -> None:
    with pytest.raises(ConfigurationError, match="could not read its own messages"):
        Codec("msgpack", ("json",))
    with pytest.raises(ConfigurationError, match="unknown serializer"):
        Codec("yaml", ("yaml",))


def test_accept_content_from_the_environment() -> None:
    from celeriac.config import Settings

    s = Settings.from_environment(
        {"CELERIAC_ACCEPT_CONTENT": "json, msgpack", "CELERIAC_LIMITS": '{"smtp": "10/s"}'}
    )
    assert s.accept_content == ["json", "msgpack"] and s.limits == {"smtp": "10/s"}


def test_a_signing_app_dead_letters_an_unsigned_message_in_a_real_broker(
    broker_url: str,
) -> None:
    app = Celeriac("codec-real", broker=broker_url, task_signing_key="s3cret")

    @app.task(name="codec.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        unsigned = encode_message(Message(id="by-hand", task="codec.add", args=[1, 1]))
        app.broker.send([Outgoing("by-hand", "default", unsigned)])  # not through the app
        signed = add.delay(2, 2)
        run_queued(app, queues=["default"])
        assert signed.get(timeout=5) == 4
        (letter,) = app.broker.dead_letters()
        assert letter.id == "by-hand" and letter.reason.startswith("refused: unsigned")
        assert letter.body == unsigned
    finally:
        app.broker.close()


NEWER = PROTOCOL_VERSION + 1


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_a_newer_protocol_version_is_refused_in_every_format(serializer: str) -> None:
    codec = Codec(serializer, ("json", "msgpack", "pickle"))
    raw = codec.encode(Message(id="n1", task="codec.add", v=NEWER))
    with pytest.raises(MalformedMessage, match=f"protocol v{NEWER}.*Upgrade this worker"):
        codec.decode(raw)


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_a_worker_dead_letters_a_newer_message_instead_of_running_it(serializer: str) -> None:
    app = make_app(task_serializer=serializer, accept_content=["json", "msgpack", "pickle"])
    ran: list[int] = []

    @app.task(name="codec.record")
    def record(x: int) -> None:
        ran.append(x)

    message = Message(id="new1", task="codec.record", args=[1], v=NEWER)
    app.broker.send([Outgoing("new1", "default", app.codec.encode(message))])
    run_queued(app, fail_fast=False)
    assert ran == []
    (letter,) = app.broker.dead_letters()
    assert letter.id == "new1"
    assert f"uses message protocol v{NEWER}" in letter.reason


class NewerPickled:
    """A Message as a newer celeriac pickles it: ``Message(**fields)``, with a field this
    version does not have (what msgspec's pickling of a keyword-only Struct writes)."""

    def __init__(self, **fields: object) -> None:
        self.fields = fields

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        from msgspec._utils import rebuild

        return rebuild, (Message, self.fields)


@pytest.mark.parametrize("version", [PROTOCOL_VERSION, NEWER])
def test_a_newer_pickle_producers_added_field_does_not_dead_letter_its_message(
    version: int,
) -> None:
    # Unpickled as Message(**fields), it failed with "Unexpected keyword argument
    # 'trace'": dead-lettered at once as "not a celeriac message", even when its newer
    # protocol should have put it back for an upgraded worker.
    app = make_app(accept_content=["json", "msgpack", "pickle"])
    fields = {"id": "np1", "task": "codec.add", "args": [2, 3], "trace": "x9"}
    raw = pickle.dumps(NewerPickled(**fields, sent_at=time.time(), v=version), protocol=5)
    app.broker.send([Outgoing("np1", "default", raw)])
    run_queued(app, fail_fast=False)
    assert app.broker.dead_letters() == []
    if version == PROTOCOL_VERSION:
        assert app.AsyncResult("np1").get(timeout=1) == 5
    else:  # put back, unchanged, for an upgraded worker
        assert [s.delayed for s in app.broker.stats()] == [1]


# -- renewing a dead letter for replay ---------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_renewed_message_gets_its_time_to_live_and_retries_back(serializer: str) -> None:
    codec = Codec(serializer)
    old = Message(
        id="a", task="t", args=[1], sent_at=100.0, eta=130.0, expires=190.0, retries=3,
        priority=8, options={"first_error": "ValueError: x", "dedupe_key": "k"},
    )  # fmt: skip
    renewed = codec.renewed(codec.encode(old), now=10_000.0)
    assert renewed is not None
    body, priority = renewed
    new = codec.decode(body)
    assert (new.sent_at, new.expires, new.eta, new.retries) == (10_000.0, 10_060.0, None, 0)
    assert priority == 8 and new.args == [1]
    assert new.options == {"dedupe_key": "k", "replayed_at": 10_000.0}  # marked as a re-run


def test_renewing_keeps_fields_this_version_does_not_know() -> None:
    newer = b'{"id":"a","task":"t","sent_at":1.0,"expires":2.0,"trace":{"span":"x9"}}'
    renewed = Codec().renewed(newer, now=50.0)
    assert renewed is not None and b'"trace":{"span":"x9"}' in renewed[0]


def test_a_signed_message_is_signed_again_and_one_this_app_cannot_sign_is_left_alone() -> None:
    signing = Codec(keys=(b"new", b"old"))
    by_old_key = Codec(keys=(b"old",)).encode(Message(id="a", task="t", sent_at=1.0))
    renewed = signing.renewed(by_old_key, now=2.0)
    assert renewed is not None and signing.decode(renewed[0]).sent_at == 2.0
    assert Codec(keys=(b"new",)).decode(renewed[0]).id == "a"  # signed with the first key
    assert Codec().renewed(by_old_key, now=2.0) is None  # no key here: cannot sign again
    assert signing.renewed(Codec().encode(Message(id="a", task="t")), now=2.0) is None


@pytest.mark.parametrize("raw", [b"", b"\x00garbage", b"[1, 2]", b'{"task": "no id"}'])
def test_bytes_that_are_not_a_message_are_not_renewed(raw: bytes) -> None:
    assert Codec().renewed(raw, now=1.0) is None


def test_pickle_is_never_read_to_renew_it() -> None:
    codec = Codec("pickle", ("json", "pickle"))
    assert codec.renewed(codec.encode(Message(id="a", task="t")), now=1.0) is None


def test_nan_reaches_the_task_in_msgpack_and_a_nan_result_reads_none() -> None:
    # The README's word: JSON has no NaN (msgspec writes null, as JSON.stringify does);
    # msgpack carries it; results are JSON whatever the serializer.
    got: list[float] = []
    for serializer in ("msgpack", "json"):
        app = Celeriac("nan", broker="memory://")
        app.conf.task_serializer = serializer

        @app.task(name="shop.keep")
        def keep(x: float) -> float:
            got.append(x)
            return x

        handle = keep.delay(math.nan)
        assert run_queued(app) == 1
        assert handle.get(timeout=1) is None
    assert math.isnan(got[0]) and got[1] is None
