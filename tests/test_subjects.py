"""Subject layout: every name becomes one valid NATS token, and plain names stay readable."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.core.log import LogConfig, decode_token, encode_token, subject_for

_NOT_IN_TOKENS = set(". *>\t\r\n")
# Names whose encoding fits under the digest threshold: 95 UTF-8 bytes -> 127 base64 chars.
_short_names = st.text(max_size=23)


def _is_single_token(token: str) -> bool:
    """What NATS accepts as one subject token (printable ASCII, no separators or wildcards)."""
    printable = all(33 <= ord(char) < 127 for char in token)
    return bool(token) and printable and not (_NOT_IN_TOKENS & set(token))


@given(_short_names)
@example("")
@example("a.b")
@example("*")
@example(">")
@example("gpu pool")
@example("ünïcødé")
@example("\ud800")  # a lone surrogate, which msgspec can decode from JSON escapes
@example("_")
@example("~x")
def test_any_short_name_round_trips_through_a_token(name: str) -> None:
    """decode_token inverts encode_token for every name short enough not to be digested."""
    assert decode_token(encode_token(name)) == name


@given(st.text(max_size=600))
def test_every_name_becomes_one_valid_subject_token(name: str) -> None:
    """Whatever the name, the token is a single, non-wildcard NATS subject token."""
    token = encode_token(name)
    assert _is_single_token(token)
    assert len(token) <= 128


@given(_short_names, _short_names)
def test_different_names_get_different_tokens(first: str, second: str) -> None:
    """Encoding is injective, so filters built from a name never catch another name."""
    if first != second:
        assert encode_token(first) != encode_token(second)


@pytest.mark.parametrize("name", ["gpu", "pool-1", "task_42", "A9", "0abc"])
def test_plain_names_pass_through_unchanged(name: str) -> None:
    """Names that already are tokens stay readable in subjects."""
    assert encode_token(name) == name


def test_none_is_the_underscore_token() -> None:
    """An event with no pool routes under ``_``, and ``_`` decodes back to None."""
    assert encode_token(None) == "_"
    assert decode_token("_") is None


def test_names_that_only_look_plain_are_encoded() -> None:
    """A leading ``_``, ``-`` or ``~`` would collide with our markers, so it is encoded."""
    for name in ["_", "-x", "_x", "~", ""]:
        assert encode_token(name).startswith("~")


def test_a_very_long_name_becomes_a_stable_digest() -> None:
    """Long names are digested so no subject can exceed NATS's protocol line limit."""
    name = "ü" * 400
    token = encode_token(name)
    assert token.startswith("~~")
    assert token == encode_token(name)
    assert token != encode_token(name + "x")
    with pytest.raises(ValueError, match="digest"):
        decode_token(token)


def test_text_no_encoder_produced_is_refused_by_decode() -> None:
    """decode_token says so rather than guessing."""
    with pytest.raises(ValueError, match="not a workledger subject token"):
        decode_token("a.b")


def _one_of_each() -> list[ev.Event]:
    """One event of every type with the fewest fields it needs."""
    return [
        ev.WorkerStarted(worker="w1", pool="gpu"),
        ev.WorkerHeartbeat(worker="w1", pool="gpu"),
        ev.WorkerSubscribed(worker="w1", pool="gpu", task_keys=("k",)),
        ev.WorkerStopped(worker="w1", pool="gpu"),
        ev.WorkerLost(worker="w1", pool="gpu", last_seen=datetime(2026, 1, 1, tzinfo=UTC)),
        ev.WorkerForgotten(worker="w1", pool="gpu"),
        ev.TaskSubmitted(task="t1", pool="gpu", queue="q"),
        ev.TaskClaimed(task="t1", worker="w1"),
        ev.TaskStarted(task="t1", worker="w1"),
        ev.TaskProgress(task="t1"),
        ev.TaskRetrying(task="t1"),
        ev.TaskCompleted(task="t1"),
        ev.TaskFailed(task="t1"),
        ev.TaskCancelled(task="t1"),
        ev.TaskCrashed(task="t1"),
        ev.PoolCreated(pool="gpu"),
        ev.PoolUpdated(pool="gpu"),
        ev.QueueCreated(pool="gpu", queue="q"),
        ev.QueueUpdated(pool="gpu", queue="q"),
    ]


@pytest.mark.parametrize("event", _one_of_each(), ids=lambda event: event.type)
def test_subjects_are_prefix_pool_family_entity_verb(event: ev.Event) -> None:
    """Each event type routes under ``<prefix>.<pool>.<family>.<entity>.<verb>``."""
    prefix, pool, family, entity, verb = subject_for("wl", event).split(".")
    assert (prefix, family, verb) == ("wl", event.family, event.type.split(".")[1])
    assert decode_token(pool) == event.pool_key
    assert decode_token(entity) == event.entity_key


def test_every_event_type_has_a_subject_test() -> None:
    """The table above covers the whole union, so a new event type cannot slip by."""
    assert {event.type for event in _one_of_each()} == set(ev.event_types())


def test_a_dotted_prefix_adds_tokens_in_front() -> None:
    """A prefix like ``acme.ledger`` is allowed and kept as is."""
    subject = subject_for("acme.ledger", ev.TaskCompleted(task="t.1", pool="p 1"))
    assert subject == f"acme.ledger.{encode_token('p 1')}.task.{encode_token('t.1')}.completed"


@pytest.mark.parametrize("stream", ["has.dot", "", "a b", "*"])
def test_log_config_refuses_a_stream_name_nats_would_reject(stream: str) -> None:
    """A stream name NATS cannot use fails at construction, with the reason."""
    with pytest.raises(ValueError, match="may use only"):
        LogConfig(stream=stream)


@pytest.mark.parametrize("prefix", ["a.>", "a..b", "*", ""])
def test_log_config_refuses_a_subject_prefix_nats_would_reject(prefix: str) -> None:
    """A prefix with wildcards or empty tokens fails at construction, with the reason."""
    with pytest.raises(ValueError, match="must be dot-separated"):
        LogConfig(subject_prefix=prefix)
