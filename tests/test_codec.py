"""The wire codecs: what decodes, what is refused, and why."""

from __future__ import annotations

from datetime import datetime

import msgspec
import pytest
from hypothesis import given, settings

from workledger.core import codec
from workledger.core.errors import InvalidEventError
from workledger.core.events import Event, TaskCompleted, event_types

from .histories import histories


@settings(max_examples=100)
@given(history=histories(max_size=20))
def test_every_event_round_trips_through_json_and_msgpack(history: list[Event]) -> None:
    """Both formats decode back to the same event, and the format is sniffed, not declared."""
    for event in history:
        assert codec.decode(codec.encode_json(event)) == event
        assert codec.decode(codec.encode_msgpack(event)) == event


@settings(max_examples=100)
@given(history=histories(max_size=20).filter(bool))
def test_every_event_round_trips_in_an_envelope_in_both_formats(history: list[Event]) -> None:
    """An envelope gives back its events, equal and in order, whatever the format."""
    encodings: list[codec.Encoding] = ["json", "msgpack"]
    for encoding in encodings:
        unpacked = codec.unpack(codec.encode_envelope(history, encoding))
        assert unpacked == codec.Message(history, envelope=True)


def test_every_event_type_has_a_tag_in_the_union() -> None:
    """19 types, each with a family.verb tag."""
    tags = set(event_types())
    assert len(tags) == 19
    assert all(tag.count(".") == 1 for tag in tags)


@given(histories())
@settings(max_examples=30)
def test_every_event_has_a_pool_field_which_is_its_pool_key(history: list[Event]) -> None:
    """The daemon reads ``pool`` in C to check an envelope's events against its subject
    (projections/daemon.py); that must be what ``pool_key`` says, for every type."""
    for kind in event_types().values():
        assert "pool" in kind.__struct_fields__, kind
    for event in history:
        assert event.pool == event.pool_key  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty message"),
        (b'{"type": "worker.teleported"}', "unknown event type 'worker.teleported'"),
        (b'{"worker": "w"}', "missing event type"),
        (b'{"type": "worker.heartbeat", "worker": "w", "pool": "p", "v": 2}', "schema version 2"),
        (b'{"type": "worker.heartbeat", "worker": "w", "pool": 5}', "Expected `str`"),
        (b'{"type": "worker.heartbeat", "worker": "", "pool": "p"}', "length >= 1"),
        (b'{"type": "task.failed", "task": "t", "at": "yesterday"}', "datetime"),
        (b"[1, 2, 3]", "not a JSON event object"),
        (b"\x93\x01\x02\x03", "not a msgpack event object"),
    ],
)
def test_a_bad_message_is_refused_with_a_reason_a_producer_can_act_on(
    data: bytes, reason: str
) -> None:
    """The reason names the problem and where it is."""
    with pytest.raises(InvalidEventError, match=reason.replace("(", r"\(").replace("`", ".")):
        codec.decode(data)


def test_stamp_fills_id_and_time_and_normalises_to_utc() -> None:
    """A missing id becomes a UUIDv7, a missing time the publish time, any offset UTC."""
    raw = b'{"type": "task.completed", "task": "t", "at": "2026-01-01T02:00:00+02:00"}'
    event = codec.stamp(codec.decode(raw))
    assert len(event.id) == 36
    assert event.at is not None
    assert event.at.isoformat() == "2026-01-01T00:00:00+00:00"
    assert codec.stamp(event) is event
    assert msgspec.json.decode(codec.encode_json(event))["at"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("at", "accepted"),
    [
        ("1970-01-01T00:00:00Z", True),
        ("1969-12-31T23:59:59.999999Z", False),
        ("2199-12-31T23:59:59.999999Z", True),
        ("2200-01-01T00:00:00Z", False),
        # another offset is compared as UTC: 2199-12-31T23:00Z, then 2200-01-01T01:00Z
        ("2200-01-01T04:00:00+05:00", True),
        ("2199-12-31T20:00:00-05:00", False),
        ("1970-01-01T04:00:00+05:00", False),
    ],
)
def test_an_event_time_must_fall_in_1970_to_2199_in_utc(at: str, accepted: bool) -> None:
    """Both ends, in UTC (checked inline) and in another offset (converted first), decoded
    from either format and constructed directly."""
    raw = b'{"type": "task.completed", "task": "t", "at": "%s"}' % at.encode()
    if accepted:
        event = codec.decode(raw)
        assert codec.decode(codec.encode_msgpack(event)) == event
        return
    with pytest.raises(InvalidEventError, match="outside 1970-2199"):
        codec.decode(raw)
    moment = msgspec.json.decode(b'"%s"' % at.encode(), type=datetime)
    with pytest.raises(ValueError, match="outside 1970-2199"):
        TaskCompleted(task="t", at=moment)
