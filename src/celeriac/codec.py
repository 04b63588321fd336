"""Codec: how messages become bytes — serializer, accepted content types, HMAC signing.

* JSON (default) and msgpack are safe to accept; pickle runs code on decode, so a worker
  reads it only when ``accept_content`` names it, and the app warns when it does.
* Fields a newer producer added survive a retry or deferral here in JSON and msgpack
  (:class:`celeriac.message.ReadMessage`); a pickle carries only the fields this version
  knows, and one from a newer producer is read with its other fields set aside.
* The format is recognised from the first byte (``{`` JSON, a map marker msgpack, the
  pickle protocol opcode pickle), so workers read every accepted format whatever their
  own ``task_serializer`` is: producers and workers can switch format one at a time.
  A message a worker writes back (a retry, a deferral) keeps the format it came in.
  Every format then passes the same protocol-version check
  (:func:`celeriac.message.check_version`): a newer message is dead-lettered, never run.
* Signing (``task_signing_key``, a key or a list — the first signs, all verify, so keys
  rotate without downtime) wraps the encoded message as
  ``sig1:<key id>:<hex HMAC-SHA256>:<payload>``. A signing app refuses unsigned or badly
  signed messages: they are dead-lettered, never run.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import msgspec

from celeriac.errors import ConfigurationError, MalformedMessage, SerializationError
from celeriac.message import (
    UNENCODABLE,
    Message,
    check_version,
    content_type,
    decode_message,
    encode_message,
    message_from_fields,
    plain,
    unserializable,
    wire_form,
    with_unknown_fields,
)

log = logging.getLogger("celeriac")

SERIALIZERS = ("json", "msgpack", "pickle")
_SIGNED = b"sig1:"
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Message)


class UntrustedMessage(MalformedMessage):
    """A message that is unsigned, badly signed, or of a content type this worker refuses."""


# hashlib and hmac are imported by the signing code alone: loading OpenSSL's libcrypto
# costs a process ~4 MiB, and most apps sign nothing.


def _key_id(key: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(key).hexdigest()[:8].encode()


class Codec(msgspec.Struct, frozen=True):
    """Encodes and decodes messages for one app's settings.

    Example:
        >>> codec = Codec("json", ("json",), (b"secret",))
        >>> raw = codec.encode(Message(id="a", task="t"))
        >>> raw[:5]
        b'sig1:'
        >>> codec.decode(raw).id
        'a'
    """

    serializer: str = "json"
    accept: tuple[str, ...] = ("json", "msgpack")
    keys: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        unknown = {self.serializer, *self.accept} - set(SERIALIZERS)
        if unknown:
            raise ConfigurationError(f"unknown serializer(s) {sorted(unknown)}; use {SERIALIZERS}")
        if self.serializer not in self.accept:
            raise ConfigurationError(
                f"task_serializer={self.serializer} is not in accept_content={list(self.accept)}:"
                " this app could not read its own messages"
            )

    def encode(self, message: Message, like: bytes | None = None) -> bytes:
        """Serialize (and sign, when keys are set).

        ``like`` is the body ``message`` was read from, when a worker writes it back (a
        retry, a deferral): it is written in that body's format, not in this app's
        ``task_serializer``. A JSON worker wrote a msgpack producer's retry as JSON, so the
        task's second run got base64 text for its bytes and None for a NaN.

        Example:
            >>> codec = Codec("json")
            >>> read = Codec("msgpack").encode(Message(id="a", task="t", args=[b"\\xff"]))
            >>> codec.decode(codec.encode(codec.decode(read), like=read)).args
            [b'\\xff']
        """
        serializer = self.serializer if like is None else self._format_of(like)
        if serializer == "json":
            payload = encode_message(message)
        elif serializer == "msgpack":
            try:
                payload = _msgpack_encoder.encode(wire_form(message))
            except UNENCODABLE as exc:  # an int past 64 bits, a lone surrogate, ...
                raise SerializationError(
                    unserializable(message, exc, "msgpack", _msgpack_encoder.encode)
                ) from exc
        else:
            import pickle  # see _unpickle

            # A pickle names the message's class: a plain Message, which every version has.
            # (Fields a newer producer added are lost here; pickle has no place for them.)
            payload = pickle.dumps(plain(message), protocol=5)
        return self._signed(payload)

    def decode(self, raw: bytes) -> Message:
        """Verify and deserialize.

        Raises:
            UntrustedMessage: unsigned or badly signed (when signing), or a refused format.
            MalformedMessage: not a celeriac message at all, or one of a newer protocol
                version than this worker reads (in any format).
        """
        if self.keys:
            raw = self._verified(raw)
        elif raw.startswith(_SIGNED):
            raw = raw.split(b":", 3)[3] if raw.count(b":") >= 3 else raw
        kind = content_type(raw)
        if kind not in self.accept:
            raise UntrustedMessage(
                f"content type {kind} is not in accept_content "
                f"{list(self.accept)}; refused without reading it"
            )
        if kind == "json":
            return decode_message(raw)  # checks the version itself: it is public
        return check_version(_unmsgpack(raw) if kind == "msgpack" else _unpickle(raw))

    def renewed(self, raw: bytes, now: float) -> tuple[bytes, int] | None:
        """``raw`` made a fresh send at ``now``, and its priority; None when this app cannot
        rewrite it (not a message it reads, pickle, or signed while this app has no key).

        For replaying a dead letter: the expiry moves with it (the same time to live from
        ``now``), and retries, countdown and the first error start again, so a letter replayed
        a day later runs instead of expiring at once and gets its retries back, and
        ``options["replayed_at"]`` marks it as a re-run. The message is rewritten field by
        field in its own format, so fields this version does not know (a newer producer's)
        are kept.

        Example:
            >>> codec = Codec()
            >>> old = codec.encode(Message(id="a", task="t", sent_at=100.0, expires=160.0,
            ...                            retries=3, priority=7))
            >>> body, priority = codec.renewed(old, now=5000.0)
            >>> m = codec.decode(body)
            >>> m.sent_at, m.expires, m.retries, priority, m.options["replayed_at"]
            (5000.0, 5060.0, 0, 7, 5000.0)
        """
        signed = raw.startswith(_SIGNED)
        if signed != bool(self.keys):
            return None  # this app could not sign it again, or would refuse it anyway
        try:
            payload = self._verified(raw) if signed else raw
        except UntrustedMessage:
            return None
        kind = content_type(payload)
        if kind == "pickle" or kind not in self.accept:
            return None
        fmt = msgspec.msgpack if kind == "msgpack" else msgspec.json
        try:
            fields = fmt.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if not isinstance(fields, dict) or not isinstance(fields.get("id"), str):
            return None
        expires, start = fields.get("expires"), fields.get("eta") or fields.get("sent_at")
        if isinstance(expires, int | float) and isinstance(start, int | float) and start > 0:
            fields["expires"] = now + max(expires - start, 0.0)
        for stale in ("eta", "retries"):
            fields.pop(stale, None)
        options = fields.get("options")
        if not isinstance(options, dict):
            options = fields["options"] = {}
        options.pop("first_error", None)
        options["replayed_at"] = now  # a deliberate re-run: beat's tick fence lets it through
        fields["sent_at"] = now
        priority = fields.get("priority", 0)
        if not isinstance(priority, int) or not 0 <= priority <= 9:
            priority = 0
        body = fmt.encode(fields)
        return self._signed(body), priority

    def _format_of(self, raw: bytes) -> str:
        """The serializer ``raw`` (signed or not) was written with, if this app reads it;
        else this app's own."""
        if raw.startswith(_SIGNED) and raw.count(b":") >= 3:
            raw = raw.split(b":", 3)[3]
        kind = content_type(raw)
        return kind if kind in self.accept else self.serializer

    def _signed(self, payload: bytes) -> bytes:
        if not self.keys:
            return payload
        import hashlib
        import hmac

        key = self.keys[0]
        mac = hmac.new(key, payload, hashlib.sha256).hexdigest().encode()
        return b"".join((_SIGNED, _key_id(key), b":", mac, b":", payload))

    def _verified(self, raw: bytes) -> bytes:
        import hashlib
        import hmac

        if not raw.startswith(_SIGNED) or raw.count(b":") < 3:
            raise UntrustedMessage(
                "unsigned message refused: this app requires messages signed with task_signing_key"
            )
        _, key_id, mac, payload = raw.split(b":", 3)
        for key in self.keys:
            if _key_id(key) == key_id:
                expected = hmac.new(key, payload, hashlib.sha256).hexdigest().encode()
                if hmac.compare_digest(expected, mac):
                    return payload
                break
        raise UntrustedMessage(
            f"bad signature (key id {key_id.decode(errors='replace')}): the "
            "message was altered or signed with a key this app does not accept"
        )


def _unmsgpack(raw: bytes) -> Message:
    try:
        return _msgpack_decoder.decode(raw)
    except msgspec.ValidationError as exc:  # unknown fields are kept, as in JSON
        try:
            loose = msgspec.msgpack.decode(raw)
        except msgspec.DecodeError:
            loose = None
        return with_unknown_fields(loose, exc, raw)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"not a celeriac message ({exc})") from exc


def _unpickle(raw: bytes) -> Message:
    import io

    try:
        message = _unpickler()(io.BytesIO(raw)).load()  # only when accept_content names pickle
    except Exception as exc:
        raise MalformedMessage(f"not a celeriac message (unpickling failed: {exc})") from exc
    if not isinstance(message, Message):
        raise MalformedMessage(f"pickled {type(message).__name__}, not a celeriac message")
    return message


@functools.cache
def _unpickler() -> Any:
    """pickle's Unpickler with a lenient Message, made at the first use: pickle is imported
    only by apps that use it, so the default JSON/msgpack worker saves ~0.25 MiB of RSS
    per process."""
    import pickle

    class Unpickler(pickle.Unpickler):
        # A pickled Message is rebuilt as Message(**fields), and a newer producer's has
        # fields this version lacks: "Unexpected keyword argument" dead-lettered every
        # message of a newer pickle producer (even one of a newer protocol, which is put
        # back for an upgraded worker). They are set aside instead, as JSON and msgpack do.
        def find_class(self, module: str, name: str) -> Any:
            if module == "celeriac.message" and name == "Message":
                return message_from_fields
            return super().find_class(module, name)

    return Unpickler


def codec_for(serializer: str, accept: list[str], keys: str | list[str] | None) -> Codec:
    """Build the codec that an app's settings describe."""
    key_list = [keys] if isinstance(keys, str) else list(keys or [])
    if "pickle" in accept:
        log.warning(
            "accept_content includes pickle: a message in the broker can run code in "
            "this process. Use it only with a broker nobody else can write to."
        )
    return Codec(serializer, tuple(accept), tuple(k.encode() for k in key_list))
