"""Envelopes: many events per NATS message, each with its own id, nothing lost.

The codec and the daemon's decoding first (what an envelope is, what is set aside and why),
then the rule that makes envelopes safe (any split of a history into envelopes folds to the
same read model), then the publisher and the daemon against a real nats-server.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.cli_tail import _Follower
from workledger.cli_tail import _Message as _TailMessage
from workledger.core import codec
from workledger.core import events as ev
from workledger.core._batching import Buffers, Item, Sealed
from workledger.core.errors import InvalidEventError, PublishError
from workledger.core.log import (
    LogConfig,
    connect,
    encode_token,
    ensure_stream,
    envelope_pool,
    envelope_subject,
    subject_for,
)
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Encoding, Publisher, SyncPublisher
from workledger.projections.daemon import Projector, ProjectorConfig, to_batch
from workledger.projections.feed import FeedFilter, Subscription
from workledger.rebuild import rebuild
from workledger.stores.base import ReadModel, Sequenced
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

from .conftest import read_raw, run_in_thread
from .histories import fleet_history, histories
from .test_fuzz import FakeMsg, _damage, _Meta, _Sequence, _tweak, _valid
from .test_publisher import _one_of_each

STREAM = "ENV"
PREFIX = "wl"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _msg(seq: int, subject: str, data: bytes) -> FakeMsg:
    return FakeMsg(subject, data, _Meta(_Sequence(seq), NOW, 0))


def _progress(count: int, pool: str | None = "p") -> list[ev.Event]:
    return [codec.stamp(ev.TaskProgress(task=f"t{i}", pool=pool)) for i in range(count)]


# --- the codec -------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_an_envelope_unpacks_to_its_events_in_order(encoding: Encoding) -> None:
    """Both formats; the format is sniffed as for a single event."""
    events = _progress(5)
    message = codec.unpack(codec.encode_envelope(events, encoding))
    assert message == codec.Message(list(events), envelope=True)
    assert codec.unpack(codec.encode(events[0], encoding)) == ([events[0]], False)


def test_the_envelope_wire_form_is_the_documented_object() -> None:
    """``{"type": "envelope", "events": [...]}``, each event exactly as it is sent alone."""
    events = _progress(2)
    as_object = msgspec.json.decode(codec.encode_envelope(events))
    assert as_object == {
        "type": "envelope",
        "events": [msgspec.json.decode(codec.encode_json(e)) for e in events],
    }


def test_one_bad_event_is_set_aside_alone_naming_its_index() -> None:
    """The other events of the envelope are applied."""
    good = [codec.encode_json(e) for e in _progress(3)]
    bad = b'{"type": "task.progress", "task": ""}'
    message = codec.unpack(codec.pack([good[0], bad, good[1], good[2]]))
    assert message.envelope
    invalid = message.events[1]
    assert isinstance(invalid, codec.Invalid)
    assert invalid.reason.startswith("event 1 of 4 in the envelope: invalid task.progress event")
    assert invalid.data == bad
    assert [codec.encode_json(e) for e in message.events if isinstance(e, ev.Event)] == good


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (b'{"type": "task.exploded"}', "unknown event type 'task.exploded'"),
        (b'{"type": "task.completed", "task": "t", "v": 9}', "schema version 9"),
        (b"[1, 2]", "not a JSON event object"),
        (b'{"type": "envelope", "events": []}', "an envelope where an event was expected"),
        (b'{"type": "task.failed", "task": "t", "error": "' + b"x" * 300 + b'"}', "exceeds"),
    ],
)
def test_each_kind_of_bad_event_in_an_envelope_has_its_reason(item: bytes, reason: str) -> None:
    """Unknown, too new, not an object, nested envelope, over the event size limit."""
    good = codec.encode_json(_progress(1)[0])
    message = codec.unpack(codec.pack([good, item]), max_event_bytes=300)
    first, second = message.events
    assert isinstance(first, ev.TaskProgress)
    assert isinstance(second, codec.Invalid)
    assert second.reason.startswith("event 1 of 2 in the envelope: ")
    assert reason in second.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"type": "envelope"}', "invalid envelope: Object missing required field `events`"),
        (
            b'{"type": "envelope", "events": []}',
            "invalid envelope: Expected `array` of length >= 1",
        ),
        (b'{"type": "envelope", "events": {"a": 1}}', "invalid envelope: Expected `array`"),
        (b'{"type": "envelope", "events": [' + b"1," * 10_000 + b"1]}", "length <= 10000"),
        (b'{"type": "envelope", "events": [1, 2', "not a JSON event object: Input data was"),
        (msgspec.msgpack.encode({"type": "envelope", "events": 3}), "invalid envelope"),
    ],
)
def test_a_malformed_envelope_is_refused_whole(data: bytes, reason: str) -> None:
    """Nothing of it can be trusted: no list of 1 to 10,000 events, or not decodable."""
    with pytest.raises(InvalidEventError, match=reason.replace("(", r"\(").replace("`", ".")):
        codec.unpack(data)


def test_the_size_limits_are_per_event_and_per_envelope() -> None:
    """An envelope may exceed the event limit, not the envelope limit; an event neither."""
    events = _progress(40)
    data = codec.encode_envelope(events)
    single = codec.encode_json(ev.TaskFailed(task="t", error="x" * 2000))
    assert len(codec.unpack(data, max_event_bytes=500, max_envelope_bytes=len(data)).events) == 40
    with pytest.raises(InvalidEventError, match="maximum envelope size"):
        codec.unpack(data, max_event_bytes=500, max_envelope_bytes=len(data) - 1)
    with pytest.raises(InvalidEventError, match="exceeds the maximum event size of 1000 bytes"):
        codec.unpack(single, max_event_bytes=1000, max_envelope_bytes=10**6)


def test_decode_refuses_an_envelope_with_a_reason() -> None:
    """Readers of single events (JSON Lines input) say what they got."""
    with pytest.raises(InvalidEventError, match="an envelope where an event was expected"):
        codec.decode(codec.encode_envelope(_progress(2)))


def test_the_envelope_id_is_derived_from_its_event_ids_as_documented() -> None:
    """Deterministic, order-sensitive, and the recipe docs/wire.md gives."""
    ids = ["a", "b", "c"]
    expected = "env-" + hashlib.sha256(b"a\nb\nc").hexdigest()[:32]
    assert codec.envelope_id(ids) == codec.envelope_id(iter(ids)) == expected
    assert codec.envelope_id(["c", "b", "a"]) != expected


def test_an_envelope_subject_names_its_pool() -> None:
    """``<prefix>.<pool token>.envelope``, the pool read back as its token."""
    assert envelope_subject("wl.x", "ml.gpu") == "wl.x.~bWwuZ3B1.envelope"
    assert envelope_subject("wl", None) == "wl._.envelope"
    assert envelope_pool("wl.x.~bWwuZ3B1.envelope") == "~bWwuZ3B1"
    assert envelope_pool("wl._.envelope") == "_"
    for subject in ("envelope", "wl.envelope", "wl.p.task.t.started", "wl.p.envelope.x"):
        assert envelope_pool(subject) is None


# --- the daemon's decoding -------------------------------------------------------------------


def test_an_envelope_gives_events_sharing_its_sequence_with_indexed_default_ids() -> None:
    """Unstamped events get ``<stream>:<seq>:<index>`` and the message's time; a lone one
    keeps ``<stream>:<seq>``."""
    bare = [ev.TaskCompleted(task=f"t{i}", pool="p") for i in range(3)]
    subject = envelope_subject(PREFIX, "p")
    batch = to_batch(
        [
            _msg(7, subject, codec.encode_envelope(bare)),
            _msg(8, subject_for(PREFIX, bare[0]), codec.encode_json(bare[0])),
        ],
        STREAM,
    )
    assert [(s.seq, s.event.id) for s in batch.events] == [
        (7, "ENV:7:0"),
        (7, "ENV:7:1"),
        (7, "ENV:7:2"),
        (8, "ENV:8"),
    ]
    assert {s.event.at for s in batch.events} == {NOW}
    assert (batch.quarantined, batch.last_seq) == ([], 8)


def test_stamped_and_unstamped_events_of_one_envelope_are_each_stamped_as_alone() -> None:
    """Stamped events (an id, a UTC time) pass through as they are; the others are stamped:
    a default id by index, the message's time, a time normalised to UTC."""
    stamped = _progress(1)[0]
    east = timezone(timedelta(hours=2))
    local = ev.TaskProgress(
        id="local", task="t", pool="p", at=datetime(2026, 1, 1, 12, tzinfo=east)
    )
    events = [stamped, ev.TaskProgress(task="t", pool="p"), local, stamped]
    data = codec.encode_envelope(events)  # JSON keeps the +02:00 (msgpack sends UTC)
    (first, default, normalised, last) = to_batch(
        [_msg(4, envelope_subject(PREFIX, "p"), data)], STREAM
    ).events
    assert first.event == last.event == stamped
    assert (default.event.id, default.event.at) == ("ENV:4:1", NOW)
    assert normalised.event.at == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert normalised.event.at.tzinfo is UTC
    lone = [_msg(5, subject_for(PREFIX, e), codec.encode_json(e)) for e in (local, stamped)]
    assert [s.event for s in to_batch(lone, STREAM).events] == [normalised.event, stamped]


def test_an_envelope_must_be_on_an_envelope_subject() -> None:
    """Elsewhere a partitioned daemon could miss it: it is set aside whole."""
    data = codec.encode_envelope(_progress(2))
    batch = to_batch([_msg(3, f"{PREFIX}.p.task.t0.progress", data)], STREAM)
    (held,) = batch.quarantined
    assert batch.events == []
    assert (held.seq, held.size) == (3, len(data))
    assert "<prefix>.<pool>.envelope" in held.reason


def test_an_event_of_another_pool_is_set_aside_alone() -> None:
    """An envelope holds one pool's events; a stray would escape its pool's partition."""
    events = [*_progress(2, pool="p"), *_progress(1, pool="q"), *_progress(1, pool=None)]
    batch = to_batch(
        [_msg(5, envelope_subject(PREFIX, "p"), codec.encode_envelope(events))], STREAM
    )
    assert [s.event for s in batch.events] == events[:2]
    reasons = [q.reason for q in batch.quarantined]
    assert reasons == [
        "event 2 of 4 in the envelope: its pool 'q' is not the envelope's (subject token 'p')",
        "event 3 of 4 in the envelope: its pool None is not the envelope's (subject token 'p')",
    ]
    assert all(q.seq == 5 for q in batch.quarantined)


def test_a_bad_event_in_an_envelope_is_quarantined_with_its_own_bytes() -> None:
    """The others are applied; the record holds the bad event, not the whole envelope."""
    good = [codec.encode_msgpack(e) for e in _progress(2)]
    bad = msgspec.msgpack.encode({"type": "task.progress", "task": "t", "progress": 7})
    data = codec.pack([good[0], bad, good[1]], "msgpack")
    batch = to_batch([_msg(4, envelope_subject(PREFIX, "p"), data)], STREAM)
    assert len(batch.events) == 2
    (held,) = batch.quarantined
    assert (held.seq, held.data, held.size) == (4, bad, len(bad))
    assert held.reason.startswith("event 1 of 3 in the envelope: invalid task.progress event")


# --- the rule: envelopes change nothing in the read model --------------------------------------


def _fold(messages: Sequence[FakeMsg]) -> ReadModel:
    store = MemoryStore()
    store.apply(to_batch(messages, STREAM))
    return store.read_model()


def _one_per_message(events: Sequence[ev.Event]) -> list[FakeMsg]:
    return [_msg(i + 1, subject_for(PREFIX, e), codec.encode_json(e)) for i, e in enumerate(events)]


def _enveloped(events: Sequence[ev.Event], rng: random.Random) -> list[FakeMsg]:
    """Group by pool, cut each group anywhere, shuffle the envelopes, repeat a few."""
    by_pool: dict[str | None, list[ev.Event]] = {}
    for event in events:
        by_pool.setdefault(event.pool_key, []).append(event)
    chunks: list[tuple[str | None, list[ev.Event]]] = []
    for pool, group in by_pool.items():
        cuts = sorted(rng.sample(range(1, len(group)), rng.randint(0, len(group) - 1)))
        bounds = [0, *cuts, len(group)]
        chunks += [(pool, group[a:b]) for a, b in itertools.pairwise(bounds)]
    chunks += rng.sample(chunks, min(len(chunks), rng.randint(0, 2)))  # retried, not deduped
    rng.shuffle(chunks)
    encodings: list[Encoding] = ["json", "msgpack"]
    return [
        _msg(i + 1, envelope_subject(PREFIX, pool), codec.encode_envelope(c, rng.choice(encodings)))
        for i, (pool, c) in enumerate(chunks)
    ]


@settings(max_examples=200)
@given(history=histories(), rng=st.randoms(use_true_random=False))
def test_any_split_into_envelopes_folds_to_the_same_read_model(
    history: list[ev.Event], rng: random.Random
) -> None:
    """Whatever the envelopes, their order and any duplicate envelope: the same model."""
    assert _fold(_enveloped(history, rng)) == _fold(_one_per_message(history))


# --- against a real nats-server -----------------------------------------------------------------


class Stored(NamedTuple):
    """One message of the stream, unpacked."""

    seq: int
    subject: str
    msg_id: str | None
    events: list[ev.Event]


async def read_messages(config: LogConfig) -> list[Stored]:
    """Every message in the stream, each with the events it carries."""
    return [_unpacked(msg) for msg in await read_raw(config)]


def _unpacked(msg: Any) -> Stored:
    events = codec.unpack(msg.data).events
    assert all(isinstance(event, ev.Event) for event in events)
    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
    return Stored(msg.metadata.sequence.stream, msg.subject, msg_id, events)  # type: ignore[arg-type]


async def _project(config: LogConfig, last: int) -> MemoryStore:
    store = MemoryStore()
    projector = Projector(ProjectorConfig(log=config), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        assert await projector.wait_for(last, timeout=30)
        tg.cancel_scope.cancel()
    return store


async def _another_stream(config: LogConfig) -> LogConfig:
    """A second stream on the same server, created."""
    fields: dict[str, Any] = msgspec.structs.asdict(config)
    other = LogConfig(**{**fields, "stream": f"{config.stream}_B", "subject_prefix": "b"})
    client = await connect(other)
    try:
        await ensure_stream(client.jetstream(), other)
    finally:
        await client.close()
    return other


async def _publish(config: LogConfig, events: Sequence[ev.Event], **options: Any) -> int:
    async with Publisher(config, **options) as pub:
        await pub.publish_many(events[:-1])
        return await pub.publish_and_wait(events[-1])


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_envelopes_fold_through_the_daemon_like_single_events(
    log_stream: LogConfig, encoding: Encoding
) -> None:
    """The same history sent one per message and in envelopes of 50: equal read models, and
    the envelopes are what the wire doc says (subject, Nats-Msg-Id)."""
    history = fleet_history(1000)
    single, batched = log_stream, await _another_stream(log_stream)
    last_single = await _publish(single, history, encoding=encoding)
    last_batched = await _publish(batched, history, encoding=encoding, batch_size=50)
    assert last_single == len(history)
    messages = await read_messages(batched)
    assert len(messages) < len(history) / 10
    assert Counter(e.id for m in messages for e in m.events) == Counter(e.id for e in history)
    for message in messages:
        pool = message.events[0].pool_key
        assert {encode_token(e.pool_key) for e in message.events} == {encode_token(pool)}
        if len(message.events) > 1:
            assert message.subject == envelope_subject(batched.subject_prefix, pool)
            assert message.msg_id == codec.envelope_id(e.id for e in message.events)
        else:
            assert message.msg_id == message.events[0].id
    one = await _project(single, last_single)
    many = await _project(batched, last_batched)
    assert many.read_model() == one.read_model()
    assert many.stats().applied == one.stats().applied == len(history)


@pytest.mark.anyio
async def test_events_of_one_envelope_share_its_sequence(log_stream: LogConfig) -> None:
    """publish_and_wait inside an envelope returns the envelope's stream sequence."""
    events = _progress(3)
    sequences: list[int] = []

    async def wait_for(pub: Publisher, event: ev.Event) -> None:
        sequences.append(await pub.publish_and_wait(event))

    async with (
        Publisher(log_stream, batch_size=3, linger=60) as pub,
        anyio.create_task_group() as tg,
    ):
        for event in events:
            tg.start_soon(wait_for, pub, event)
    assert sequences == [1, 1, 1]


@pytest.mark.anyio
async def test_a_partly_filled_envelope_goes_after_linger_or_on_flush(
    log_stream: LogConfig,
) -> None:
    """Nothing waits for a batch that never fills: linger sends it; so does flush."""
    async with Publisher(log_stream, batch_size=100, linger=0.01) as pub:
        seq = await pub.publish_and_wait(_progress(1)[0])  # alone: sent as a plain event
        await pub.publish_many(_progress(2, pool="q"))
        assert pub.in_flight == 2
        await pub.flush(timeout=10)
        assert pub.in_flight == 0
    messages = await read_messages(log_stream)
    assert seq == 1
    assert [len(m.events) for m in messages] == [1, 2]


@pytest.mark.anyio
async def test_a_retried_envelope_is_stored_once(log_stream: LogConfig) -> None:
    """The same envelope sent again with its Nats-Msg-Id: JetStream answers duplicate."""
    events = _progress(3)
    subject, data = envelope_subject(log_stream.subject_prefix, "p"), codec.encode_envelope(events)
    headers = {"Nats-Msg-Id": codec.envelope_id(e.id for e in events)}
    client = await connect(log_stream)
    try:
        js = client.jetstream()
        first = await js.publish(subject, data, headers=headers)
        again = await js.publish(subject, data, headers=headers)
    finally:
        await client.close()
    assert (first.seq, again.seq, again.duplicate) == (1, 1, True)
    assert [m.events for m in await read_messages(log_stream)] == [events]


@pytest.mark.anyio
@pytest.mark.parametrize("fault", ["restart", "kill"])
async def test_a_server_restart_mid_stream_loses_and_duplicates_no_enveloped_event(
    nats_server: EmbeddedNats, log_stream: LogConfig, fault: str
) -> None:
    """5k events in envelopes of 100, the server restarted (or killed) halfway: each event is
    stored exactly once, and the daemon applies each once."""
    events = [codec.stamp(ev.TaskProgress(task=f"t{i}", pool=f"p{i % 3}")) for i in range(5000)]

    def fail() -> None:
        if fault == "restart":
            nats_server.restart()
        else:
            nats_server.kill()
            nats_server.start()

    async with Publisher(log_stream, ack_timeout=2.0, batch_size=100) as pub:
        async with anyio.create_task_group() as tasks:
            for index, event in enumerate(events):
                if index == len(events) // 2:
                    tasks.start_soon(anyio.to_thread.run_sync, fail)
                await pub.publish(event)
        await pub.flush(timeout=30)
        assert pub.failed == []
    messages = await read_messages(log_stream)
    assert Counter(e.id for m in messages for e in m.events) == Counter(e.id for e in events)
    store = await _project(log_stream, messages[-1].seq)
    assert store.stats().applied == len(events)


@pytest.mark.anyio
async def test_closing_with_the_server_gone_lists_buffered_and_sent_events(
    nats_server: EmbeddedNats, log_stream: LogConfig
) -> None:
    """close() cannot wait forever, but every event, in an envelope or not, is accounted for."""
    pub = await Publisher.connect(log_stream, batch_size=4, linger=60)
    nats_server.stop()
    ids = await pub.publish_many(_progress(6))  # one envelope of 4 sealed, 2 still buffered
    assert pub.in_flight == 6
    with pytest.raises(PublishError, match="6 events not acknowledged"):
        await pub.close(timeout=0.3)
    assert sorted(failure.event_id for failure in pub.failed) == sorted(ids)


@pytest.mark.anyio
async def test_an_envelope_the_stream_refuses_lists_each_of_its_events(
    log_stream: LogConfig,
) -> None:
    """A definitive refusal (over the stream's message size) fails every event it carries."""
    client = await connect(log_stream)
    js = client.jetstream()
    info = await js.stream_info(log_stream.stream)
    info.config.max_msg_size = 1000
    await js.update_stream(info.config)
    await client.close()
    events = _progress(20)
    async with Publisher(log_stream, batch_size=20) as pub:
        await pub.publish_many(events)
        with pytest.raises(PublishError, match="20 events were not stored: envelope of 20"):
            await pub.flush(timeout=5)
        assert [failure.event_id for failure in pub.failed] == [e.id for e in events]


@pytest.mark.anyio
async def test_publish_many_refuses_an_oversized_event_before_sending_any(
    log_stream: LogConfig,
) -> None:
    """All or nothing at the door: the call raises and nothing of it is in flight."""
    events = [*_progress(2), codec.stamp(ev.TaskFailed(task="t", error="x" * 300_000))]
    async with Publisher(log_stream, batch_size=10) as pub:
        with pytest.raises(PublishError, match="maximum event size"):
            await pub.publish_many(events)
        assert pub.in_flight == 0
        assert [failure.event_id for failure in pub.failed] == [events[2].id]


def test_the_sync_publisher_sends_envelopes(log_stream: LogConfig) -> None:
    """SyncPublisher takes batch_size and linger, and publish_many hands over a whole list."""
    events = _progress(250)
    # linger=1 s, not the default 5 ms: the last 49 events of publish_many must still wait in
    # their envelope when publish_and_wait hands over the 250th from this thread; on a loaded
    # machine that hand-over can take longer than 5 ms (the envelope went out alone: seq 4).
    # The 50-event envelope then goes out by linger, so the test waits about 1 s.
    with SyncPublisher(log_stream, encoding="msgpack", batch_size=100, linger=1.0) as pub:
        assert pub.publish_many(events[:-1]) == [e.id for e in events[:-1]]
        assert pub.publish_and_wait(events[-1]) == 3
        assert pub.failed == []
    messages = run_in_thread(read_messages, log_stream)
    assert [len(m.events) for m in messages] == [100, 100, 50]


def test_batch_size_must_fit_in_flight() -> None:
    """An envelope larger than the in-flight bound could never fill."""
    with pytest.raises(ValueError, match="batch_size"):
        Publisher(LogConfig(), batch_size=2000, max_in_flight=1000)


# --- readers of the live feed ----------------------------------------------------------------


@pytest.mark.anyio
async def test_the_feed_never_splits_the_events_of_one_sequence() -> None:
    """A subscriber gets an envelope's events in one chunk, even past ``most``."""
    events = [Sequenced(seq, "s", e) for seq, e in zip([1, 2, 2, 2, 3], _progress(5), strict=True)]
    sub = Subscription(FeedFilter(), limit=100, backlog=events)
    chunks = [await sub.next(0.0, most=2), await sub.next(0.0, most=2)]
    assert [[s.seq for s in chunk] for chunk in chunks] == [[1, 2, 2, 2], [3]]


def test_tail_prints_each_event_once_when_a_sequence_is_sent_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Events of one sequence carry the SSE id only on the last; a reconnect in the middle
    resends the group, and tail skips what it printed."""
    follower = _Follower("http://127.0.0.1:1", {}, None, as_json=True)

    def item(seq: int, event_id: str, *, last: bool) -> _TailMessage:
        data = msgspec.json.encode({"seq": seq, "id": event_id}).decode()
        return _TailMessage("message", data, str(seq) if last else None)

    for message in (item(4, "a", last=True), item(5, "b", last=False)):
        follower._handle(message)
    assert follower.after == 4  # the connection drops here; the daemon resends sequence 5
    for message in (item(5, "b", last=False), item(5, "c", last=True), item(6, "d", last=True)):
        follower._handle(message)
    printed = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["a", "b", "c", "d"]
    assert follower.after == 6


# --- hostile envelopes ---------------------------------------------------------------------------


def _hostile_envelope(r: random.Random) -> tuple[str, bytes, int]:
    """An envelope of valid, tweaked and garbage events, sometimes damaged whole; with its
    subject and how many events it claims."""
    bodies = [
        r.choice([_valid, _tweak, lambda _: r.choice([1, "x", [], None])])(r)
        for _ in range(r.randint(1, 40))
    ]
    as_msgpack = r.random() < 0.4
    encode = msgspec.msgpack.encode if as_msgpack else msgspec.json.encode
    try:
        data = encode({"type": "envelope", "events": bodies})
    except (TypeError, ValueError, OverflowError):  # e.g. an int too big for msgpack
        data = msgspec.json.encode({"type": "envelope", "events": bodies})
    if r.random() < 0.2:
        data = _damage(r, data)
    first = next((b for b in bodies if isinstance(b, dict) and isinstance(b.get("pool"), str)), {})
    pool = first.get("pool") if r.random() < 0.9 else "elsewhere"
    subject = envelope_subject(PREFIX, pool) if r.random() < 0.95 else f"{PREFIX}.p.task.t.x"
    return subject, data, len(bodies)


@settings(max_examples=50)
@given(r=st.randoms(use_true_random=False))
def test_hostile_envelopes_are_applied_or_set_aside_event_by_event_never_raised(
    r: random.Random,
) -> None:
    """Each envelope is set aside whole (one record) or accounts for every event it holds:
    applied or quarantined alone at its sequence; and the store takes the batch."""
    made = [_hostile_envelope(r) for _ in range(50)]
    batch = to_batch([_msg(i + 1, s, d) for i, (s, d, _) in enumerate(made)], STREAM)
    applied = Counter(s.seq for s in batch.events)
    held = Counter(q.seq for q in batch.quarantined)
    for seq, (_, _, count) in enumerate(made, start=1):
        whole = held[seq] == 1 and applied[seq] == 0
        assert whole or applied[seq] + held[seq] == count
    MemoryStore().apply(batch)


@pytest.mark.anyio
async def test_a_rebuild_from_envelopes_equals_the_live_in_memory_model(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """`workledger rebuild` replays envelopes into DuckDB: the same model as the daemon's
    MemoryStore, a bad event set aside alone in both."""
    history = fleet_history(600, seed=3)
    await _publish(log_stream, history, encoding="msgpack", batch_size=50)
    bad = b'{"type": "task.progress", "task": ""}'
    data = codec.pack([codec.encode_json(_progress(1, pool="p")[0]), bad, bad])
    client = await connect(log_stream)
    try:
        subject = envelope_subject(log_stream.subject_prefix, "p")
        last = (await client.jetstream().publish(subject, data)).seq
    finally:
        await client.close()
    live = await _project(log_stream, last)
    thresholds = gc.get_threshold()
    stats = await rebuild(log_stream, tmp_path / "rebuilt.duckdb", progress=False)
    assert gc.get_threshold() == thresholds  # raised for the rebuild only
    assert (stats.checkpoint, stats.applied, stats.quarantined) == (last, len(history) + 1, 2)
    with DuckDBStore(tmp_path / "rebuilt.duckdb", read_only=True) as rebuilt:
        assert rebuilt.read_model() == live.read_model()


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_every_event_type_travels_in_envelopes_unchanged(
    log_stream: LogConfig, encoding: Encoding
) -> None:
    """Each type, as the publisher groups it by pool: read back equal, in order per pool."""
    events = [codec.stamp(event) for event in _one_of_each()]
    await _publish(log_stream, events, encoding=encoding, batch_size=100)
    messages = await read_messages(log_stream)
    by_pool: dict[str | None, list[ev.Event]] = {}
    for event in events:
        by_pool.setdefault(event.pool_key, []).append(event)
    assert sorted((len(m.events) for m in messages), reverse=True) == sorted(
        (len(group) for group in by_pool.values()), reverse=True
    )
    for message in messages:
        assert message.events == by_pool[message.events[0].pool_key]


@settings(max_examples=100)
@given(
    history=histories(),
    batch_size=st.integers(1, 12),
    max_bytes=st.integers(400, 3000),
    encoding=st.sampled_from(["json", "msgpack"]),
)
def test_the_publisher_packs_each_event_once_in_order_within_size_and_pool(
    history: list[ev.Event], batch_size: int, max_bytes: int, encoding: Encoding
) -> None:
    """Whatever the events, batch size and byte limit: every event in exactly one message,
    each message one pool's, at most batch_size events and max_bytes bytes, order kept."""

    async def pack() -> list[Sealed]:
        buffers = Buffers(PREFIX, encoding, batch_size=batch_size, linger=60, on_linger=print)
        buffers.max_bytes = max_bytes
        sealed = [m for e in history for m in buffers.add(Item(e, codec.encode(e, encoding), None))]
        return sealed + buffers.seal_all()

    messages = asyncio.run(pack())
    unpacked = [codec.unpack(m.data, max_envelope_bytes=max_bytes) for m in messages]
    assert [e for u in unpacked for e in u.events] == [i.event for m in messages for i in m.items]
    assert Counter(e.id for u in unpacked for e in u.events) == Counter(e.id for e in history)
    for message, content in zip(messages, unpacked, strict=True):
        pools = {encode_token(item.event.pool_key) for item in message.items}
        assert len(pools) == 1
        assert len(message.items) <= batch_size
        if content.envelope:
            assert len(message.data) <= max_bytes
            assert message.subject == envelope_subject(PREFIX, message.items[0].event.pool_key)
    for pool in {e.pool_key for e in history}:
        sent = [i.event for m in messages for i in m.items if i.event.pool_key == pool]
        assert sent == [e for e in history if e.pool_key == pool]


def test_the_wire_doc_envelope_examples_decode_and_carry_the_right_id() -> None:
    """docs/wire.md's envelopes decode as envelopes; the shell example's Nats-Msg-Id is the
    recipe applied to its event ids, on the subject of its pool."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "wire.md").read_text()
    (json_example,) = [b for b in re.findall(r"```json\n(.*?)```", text, re.S) if "envelope" in b]
    assert codec.unpack(json_example.encode()).envelope
    subject, body, msg_id = re.search(
        r"nats req '([^']+\.envelope)' \\\n\s+'([^']+)' \\\n\s+-H 'Nats-Msg-Id:([^']+)'", text
    ).groups()  # type: ignore[union-attr]
    events = codec.unpack(body.encode()).events
    assert msg_id == codec.envelope_id(e.id for e in events)  # type: ignore[union-attr]
    assert subject == envelope_subject("workledger", events[0].pool_key)  # type: ignore[union-attr]
