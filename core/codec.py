"""Wire codecs: JSON (always accepted) and msgpack (the fast path), decoders built once.

The format is sniffed from the first byte, so producers need no header: a JSON event is an
object (``{``), a msgpack event is a map (``0x80``-``0x8f``, ``0xde``, ``0xdf``).

One message carries one event, or an **envelope** of several (``{"type": "envelope",
"events": [...]}``, docs/wire.md#envelopes): per-message costs (NATS parsing, acks, signature
checks) are then paid once per envelope instead of once per event. :func:`unpack` reads both.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal, NamedTuple

import msgspec

from workledger.core.errors import InvalidEventError
from workledger.core.events import (
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    Event,
    EventType,
    event_types,
    new_event_id,
)

__all__ = [
    "ENVELOPE",
    "MAX_ENVELOPE_BYTES",
    "MAX_ENVELOPE_EVENTS",
    "Encoding",
    "Invalid",
    "Message",
    "decode",
    "encode",
    "encode_envelope",
    "encode_json",
    "encode_msgpack",
    "envelope_id",
    "pack",
    "stamp",
    "unpack",
]

Encoding = Literal["json", "msgpack"]

ENVELOPE = "envelope"
"""The ``type`` of an envelope: no event type, since those all have a dot."""
MAX_ENVELOPE_BYTES = 1024 * 1024  # NATS's default max_payload: no server takes a bigger message
MAX_ENVELOPE_EVENTS = 10_000  # bounds the work (and the quarantine) one message can cause
_ENVELOPE_ID_PREFIX = "env-"

_json_decoder = msgspec.json.Decoder(EventType)
_msgpack_decoder = msgspec.msgpack.Decoder(EventType)
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_KNOWN_TYPES = frozenset(event_types())
_MAX_TAG = 64  # an unknown tag is quoted in the reason, so a huge one is cut
_JSON_START = frozenset(b'{[ \t\r\n"0123456789-tfn')  # first bytes, as ints
_version = operator.attrgetter("v")  # read in C: the envelope's events are checked in one pass


# msgspec raises more than DecodeError on hostile input: invalid UTF-8 in a string gives
# UnicodeDecodeError, nesting deeper than its stack allows gives RecursionError.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_Count = msgspec.Meta(min_length=1, max_length=MAX_ENVELOPE_EVENTS)


class _TypeOnly(msgspec.Struct):
    type: str = ""


class _Envelope(msgspec.Struct, frozen=True, tag=ENVELOPE, tag_field="type"):
    """The fast path: when every event decodes, one pass over the bytes does it all."""

    events: Annotated[list[EventType], _Count]


class _RawEnvelope(msgspec.Struct, frozen=True, tag=ENVELOPE, tag_field="type"):
    """The careful path, and the encoder: each event's own bytes."""

    events: Annotated[list[msgspec.Raw], _Count]


_json_message = msgspec.json.Decoder(EventType | _Envelope)
_msgpack_message = msgspec.msgpack.Decoder(EventType | _Envelope)
_json_raw = msgspec.json.Decoder(_RawEnvelope)
_msgpack_raw = msgspec.msgpack.Decoder(_RawEnvelope)


class Invalid(NamedTuple):
    """One event of an envelope that cannot be applied: why (naming its index), its bytes."""

    reason: str
    data: bytes


class Message(NamedTuple):
    """What one NATS message carried, in order; ``envelope`` says whether it was one."""

    events: Sequence[Event | Invalid]
    envelope: bool


# --- encoding --------------------------------------------------------------------------------


def encode_json(event: Event) -> bytes:
    """The documented wire form: one JSON object with a ``type`` tag."""
    return _json_encoder.encode(event)


def encode_msgpack(event: Event) -> bytes:
    """The same object as msgpack: smaller and faster to decode."""
    return _msgpack_encoder.encode(event)


def encode(event: Event, encoding: Encoding = "json") -> bytes:
    """One event in ``encoding``."""
    return encode_json(event) if encoding == "json" else encode_msgpack(event)


def pack(encoded: Sequence[bytes], encoding: Encoding = "json") -> bytes:
    """An envelope of events already encoded in ``encoding``, in the order given.

    The publisher encodes each event once (to check its size) and packs the bytes as they are.
    """
    envelope = _RawEnvelope(events=[msgspec.Raw(data) for data in encoded])
    return (_json_encoder if encoding == "json" else _msgpack_encoder).encode(envelope)


def encode_envelope(events: Sequence[Event], encoding: Encoding = "json") -> bytes:
    """An envelope of ``events`` in ``encoding``."""
    return pack([encode(event, encoding) for event in events], encoding)


def envelope_id(event_ids: Iterable[str]) -> str:
    """An envelope's ``Nats-Msg-Id``, derived from its events' ids so that a retried envelope
    is deduplicated by JetStream like a retried event: ``env-`` and the first 16 bytes, in hex,
    of the SHA-256 of the ids joined by newlines."""
    digest = hashlib.sha256("\n".join(event_ids).encode("utf-8", "surrogatepass")).hexdigest()
    return _ENVELOPE_ID_PREFIX + digest[:32]


# --- decoding --------------------------------------------------------------------------------


def decode(data: bytes | memoryview, *, json_only: bool = False) -> Event:
    """Decode one event in either format (``json_only`` for text input such as JSON Lines).

    An envelope is refused here: read messages with :func:`unpack`.

    :raises InvalidEventError: with a reason a producer can act on.
    """
    if not len(data):
        raise InvalidEventError("empty message")
    return _decode(data, json_only or _is_json(data))


def unpack(
    data: bytes | memoryview,
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
) -> Message:
    """Decode one message: an event, or an envelope of events.

    An event of an envelope that cannot be applied (malformed, too big, too new) comes back as
    an :class:`Invalid` in its place, so the others still are.

    :raises InvalidEventError: when the message as a whole is unusable: empty, oversized (an
        event over ``max_event_bytes``, an envelope over ``max_envelope_bytes``), undecodable,
        or an envelope without a list of 1 to 10,000 events.
    """
    size = len(data)
    if not size:
        raise InvalidEventError("empty message")
    is_json = _is_json(data)
    if size > max_event_bytes:  # only an envelope may be; its events' sizes need checking
        if size > max_envelope_bytes or not _is_envelope(data, is_json):
            raise InvalidEventError(_too_big(size, max_event_bytes, max_envelope_bytes))
        return Message(_careful(data, is_json, max_event_bytes), envelope=True)
    try:
        message = (_json_message if is_json else _msgpack_message).decode(data)
    except _UNDECODABLE as exc:
        if not _is_envelope(data, is_json):
            raise InvalidEventError(_reason(data, is_json, exc)) from None
        return Message(_careful(data, is_json, max_event_bytes), envelope=True)
    if not isinstance(message, _Envelope):
        return Message([_current(message)], envelope=False)
    if max(map(_version, message.events)) > SCHEMA_VERSION:
        return Message(_careful(data, is_json, max_event_bytes), envelope=True)
    return Message(message.events, envelope=True)


def stamp(event: Event, *, default_id: str | None = None, now: datetime | None = None) -> Event:
    """Fill a missing ``id`` and ``at`` (publish time); normalise ``at`` to UTC."""
    changes: dict[str, object] = {}
    if not event.id:
        changes["id"] = default_id or new_event_id()
    if event.at is None:
        changes["at"] = now or datetime.now(UTC)
    elif event.at.tzinfo is not UTC and event.at.utcoffset():
        changes["at"] = event.at.astimezone(UTC)
    return msgspec.structs.replace(event, **changes) if changes else event


def _decode(data: bytes | memoryview, is_json: bool) -> Event:
    try:
        event: Event = (_json_decoder if is_json else _msgpack_decoder).decode(data)
    except _UNDECODABLE as exc:
        raise InvalidEventError(_reason(data, is_json, exc)) from None
    return _current(event)


def _current(event: Event) -> Event:
    if event.v > SCHEMA_VERSION:
        raise InvalidEventError(
            f"{event.type} has schema version {event.v}; this workledger understands up to "
            f"{SCHEMA_VERSION} (upgrade the daemon, then rebuild to apply it)"
        )
    return event


def _careful(data: bytes | memoryview, is_json: bool, max_bytes: int) -> list[Event | Invalid]:
    """Decode an envelope event by event, so one bad event is set aside alone."""
    try:
        envelope = (_json_raw if is_json else _msgpack_raw).decode(data)
    except _UNDECODABLE as exc:
        raise InvalidEventError(f"invalid envelope: {exc}") from None
    count = len(envelope.events)
    return [
        _one(bytes(raw), is_json, max_bytes, f"event {index} of {count} in the envelope")
        for index, raw in enumerate(envelope.events)
    ]


def _one(data: bytes, is_json: bool, max_bytes: int, where: str) -> Event | Invalid:
    if len(data) > max_bytes:
        reason = f"{len(data)} bytes exceeds the maximum event size of {max_bytes} bytes"
        return Invalid(f"{where}: {reason}", data)
    try:
        return _decode(data, is_json)
    except InvalidEventError as exc:
        return Invalid(f"{where}: {exc}", data)


def _is_json(data: bytes | memoryview) -> bool:
    return not data or data[0] in _JSON_START


def _is_envelope(data: bytes | memoryview, is_json: bool) -> bool:
    try:
        decoder = msgspec.json.decode if is_json else msgspec.msgpack.decode
        return decoder(data, type=_TypeOnly).type == ENVELOPE
    except (*_UNDECODABLE, TypeError):
        return False


def _too_big(size: int, max_event: int, max_envelope: int) -> str:
    if size > max_envelope:
        return (
            f"message of {size} bytes exceeds the maximum event size of {max_event} bytes "
            f"and the maximum envelope size of {max_envelope} bytes"
        )
    return f"message of {size} bytes exceeds the maximum event size of {max_event} bytes"


def _reason(data: bytes | memoryview, is_json: bool, exc: Exception) -> str:
    """Name an unknown type plainly; otherwise msgspec's message says what and where."""
    try:
        decoder = msgspec.json.decode if is_json else msgspec.msgpack.decode
        tag = decoder(data, type=_TypeOnly).type
    except (*_UNDECODABLE, TypeError) as not_an_object:  # say why it is none (e.g. truncated)
        return f"not a {'JSON' if is_json else 'msgpack'} event object: {not_an_object}"
    if not tag:
        return "missing event type (the `type` field)"
    if tag == ENVELOPE:
        return "an envelope where an event was expected"
    if tag not in _KNOWN_TYPES:
        return f"unknown event type {tag[:_MAX_TAG]!r}"
    return f"invalid {tag} event: {exc}"
