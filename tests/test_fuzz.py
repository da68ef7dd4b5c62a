"""Hostile input: malformed and adversarial messages never crash the daemon's path or grow it.

Hypothesis drives a fast mutator (``st.randoms``): each example is a batch of a thousand
messages built from valid events by breaking them in the ways producers and networks do (wrong
types, huge strings, deep nesting, unknown types, invalid UTF-8, absurd times and integers,
random bytes, truncation). Every batch goes through ``to_batch`` and into both stores, exactly
as the daemon does. Every message must come out either applied or set aside with its sequence
and a reason, and the two stores must still agree.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.core.codec import encode_json, encode_msgpack
from workledger.core.errors import PublishError
from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher
from workledger.projections.daemon import to_batch
from workledger.projections.utilization import utilization
from workledger.stores.base import Batch
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

from .conftest import read_all
from .test_daemon import one_of_each

PER_EXAMPLE = 1000
EXAMPLES = 100  # 100 x 1000 = 100k messages
STREAM = "FUZZ"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
_json = msgspec.json.Encoder()


class _Sequence(NamedTuple):
    stream: int


class _Meta(NamedTuple):
    sequence: _Sequence
    timestamp: datetime
    num_pending: int


class FakeMsg(NamedTuple):
    """What ``to_batch`` reads from a nats-py JetStream message."""

    subject: str
    data: bytes
    metadata: _Meta
    headers: dict[str, str] | None = None


def message(seq: int, data: bytes) -> FakeMsg:
    """A message at stream sequence ``seq``."""
    return FakeMsg(f"fuzz.subject.{seq}", data, _Meta(_Sequence(seq), NOW, 0))


# --- the mutator ---------------------------------------------------------------------------------

TEMPLATES = [msgspec.to_builtins(e) for e in one_of_each()]
WEIRD_VALUES: list[Callable[[random.Random], Any]] = [
    lambda r: None,
    lambda r: r.choice([True, False]),
    lambda r: r.randint(-(2**70), 2**70),
    lambda r: r.choice([2**63, -(2**63) - 1, 2**64, -1, 0]),
    lambda r: r.uniform(-1e308, 1e308),
    lambda r: "x" * r.choice([0, 511, 513, 4097, 70_000]),
    lambda r: (
        "".join(chr(r.randint(1, 0x10FFFF)) for _ in range(r.randint(0, 40)))
        .encode("utf-8", "replace")
        .decode("utf-8", "replace")
    ),
    lambda r: [r.random()] * r.randint(0, 2000),
    lambda r: {f"k{i}": "v" for i in range(r.randint(0, 300))},
    lambda r: r.choice(
        ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z"]
    ),
    lambda r: r.choice(["2199-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "2026-01-01T00:00:00"]),
    lambda r: f"2026-{r.randint(0, 13):02d}-{r.randint(0, 32):02d}T25:61:61Z",
]


def _tweak(r: random.Random) -> dict[str, Any]:
    """A valid event with one or more fields replaced by something it should not be."""
    body = dict(r.choice(TEMPLATES))
    for _ in range(r.randint(1, 3)):
        key = r.choice([*body, "type", "at", "id", "v", "task", "worker", "extra"])
        body[key] = r.choice(WEIRD_VALUES)(r)
    return body


def _valid(r: random.Random) -> dict[str, Any]:
    """A valid event about entities nobody announced, at a time near NOW."""
    body = dict(r.choice(TEMPLATES))
    for key in ("task", "worker", "pool", "queue"):
        if key in body:
            body[key] = f"{key}-{r.randint(0, 50)}"
    body["id"] = f"fz-{r.getrandbits(64):x}"
    body["at"] = (NOW - timedelta(seconds=r.randint(0, 86_400))).isoformat()
    if body["type"] == "worker.lost":
        body["last_seen"] = body["at"]
    return body


def _nested(r: random.Random) -> bytes:
    depth = r.choice([10, 1000, 100_000])
    return b'{"type":"task.completed","task":"t","x":' + b"[" * depth + b"]" * depth + b"}"


def _bad_utf8(r: random.Random) -> bytes:
    data = encode_json(ev.TaskSubmitted(task="t-utf", pool="p", queue="q"))
    cut = data.index(b"t-utf") + 1
    return data[:cut] + r.choice([b"\xff", b"\xed\xa0\x80", b"\xc3", b"\\ud800"]) + data[cut:]


def _encode(r: random.Random, body: dict[str, Any]) -> bytes:
    try:
        return msgspec.msgpack.encode(body) if r.random() < 0.4 else _json.encode(body)
    except (TypeError, ValueError, OverflowError):  # e.g. an int too big for msgpack
        return _json.encode(body)


def _damage(r: random.Random, data: bytes) -> bytes:
    match r.randint(0, 3):
        case 0:
            return data[: r.randint(0, len(data))]  # truncated
        case 1:
            buf = bytearray(data)
            for _ in range(r.randint(1, 5)):
                buf[r.randrange(len(buf))] = r.randrange(256)
            return bytes(buf)
        case 2:
            return r.randbytes(r.randint(0, 300))
        case _:
            return data + r.randbytes(r.randint(1, 20))


def _oversized(r: random.Random) -> bytes:
    return b'{"a":"' + b"y" * r.choice([300_000, 1_100_000]) + b'"}'


def _truncated_msgpack(r: random.Random) -> bytes:
    return encode_msgpack(ev.TaskCompleted(task="x", id="m"))[: r.randint(0, 20)]


def _broken(r: random.Random) -> bytes:
    return _damage(r, _encode(r, _tweak(r) if r.random() < 0.5 else _valid(r)))


# (weight, maker): the mix of one batch.
_MIX: list[tuple[int, Callable[[random.Random], bytes]]] = [
    (25, lambda r: _encode(r, _valid(r))),
    (40, lambda r: _encode(r, _tweak(r))),
    (5, _nested),
    (5, _bad_utf8),
    (2, _oversized),
    (3, _truncated_msgpack),
    (20, _broken),
]


def hostile(r: random.Random) -> bytes:
    """One message: valid, tweaked, encoded oddly or broken outright."""
    (maker,) = r.choices([m for _, m in _MIX], weights=[w for w, _ in _MIX])
    return maker(r)


# --- the property ------------------------------------------------------------------------------


class _Fleet:
    """Both stores for the whole run (a daemon's lifetime) and the next stream sequence."""

    def __init__(self, path: Path) -> None:
        self.memory = MemoryStore()
        self.duck = DuckDBStore(path)
        self.seq = 0
        self.messages = 0
        self.quarantined = 0

    def feed(self, payloads: list[bytes]) -> Batch:
        msgs = [message(self.seq + 1 + i, data) for i, data in enumerate(payloads)]
        self.seq += len(msgs)
        batch = to_batch(msgs, STREAM)
        self.memory.apply(batch)
        self.duck.apply(batch)
        self.messages += len(msgs)
        self.quarantined += len(batch.quarantined)
        return batch


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[_Fleet]:
    """A memory store and a DuckDB store fed the same batches."""
    made = _Fleet(tmp_path / "fuzz.duckdb")
    yield made
    made.duck.close()


def test_a_hundred_thousand_hostile_messages_are_applied_or_set_aside_never_raised(
    fleet: _Fleet,
) -> None:
    """Each message is an event or a quarantine entry with its sequence; stores agree after."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(seed=st.integers(min_value=0, max_value=2**64))
    def one_batch(seed: int) -> None:
        r = random.Random(seed)  # hypothesis picks the seed; the mutator is fast
        first = fleet.seq + 1
        batch = fleet.feed([hostile(r) for _ in range(PER_EXAMPLE)])
        seqs = sorted([e.seq for e in batch.events] + [q.seq for q in batch.quarantined])
        assert seqs == list(range(first, fleet.seq + 1)), "every message accounted for once"
        assert all(q.reason and len(q.reason) <= 1024 for q in batch.quarantined)
        assert all(
            len(q.data) <= 4096 <= q.size or len(q.data) == q.size for q in batch.quarantined
        )
        assert fleet.memory.stats().checkpoint == fleet.duck.stats().checkpoint == fleet.seq

    one_batch()
    assert fleet.messages >= EXAMPLES * PER_EXAMPLE
    assert 0 < fleet.quarantined < fleet.messages
    _queries_answer(fleet.memory)
    _queries_answer(fleet.duck)
    memory, duck = fleet.memory.read_model(), fleet.duck.read_model()
    kept = len(memory.quarantined)  # the memory store keeps the latest 10,000; DuckDB keeps all
    assert memory.quarantined == duck.quarantined[-kept:]
    assert msgspec.structs.replace(memory, quarantined=[]) == msgspec.structs.replace(
        duck, quarantined=[]
    )


def _queries_answer(store: MemoryStore | DuckDBStore) -> None:
    """Every query runs on what the hostile input left behind."""
    store.workers(now=NOW)
    store.slot_holders()
    store.slot_counts()
    store.tasks(limit=10)
    store.quarantined(limit=10)
    store.utilization(by="pool", since=NOW - timedelta(days=2), until=NOW, now=NOW)


def test_set_aside_messages_keep_bounded_memory_however_big_they_are() -> None:
    """20k messages of 200 KB (4 GB in all) set aside: only their first 4 KiB are kept."""
    store = MemoryStore(quarantine_limit=10_000)
    junk = b"\x00" + b"z" * 200_000
    tracemalloc.start()
    try:
        for start in range(0, 20_000, 1000):
            msgs = [message(start + i + 1, junk) for i in range(1000)]
            store.apply(to_batch(msgs, STREAM))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.stats().quarantined == 20_000
    assert peak < 96 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b'{"type":"task.completed","task":"t","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "not a JSON",
        ),
        (b'{"type":"task.completed","task":"t\xff"}', "can't decode byte 0xff"),
        (
            b'{"type":"task.submitted","task":"t","pool":"p","queue":"q","priority":18446744073709551615}',
            "<= 9223372036854775807",
        ),
        (
            b'{"type":"task.completed","task":"t","at":"9999-12-31T23:59:59-05:00"}',
            "outside 1970-2199",
        ),
        (b'{"type":"task.completed","task":"t","at":"1969-12-31T23:59:59Z"}', "outside 1970-2199"),
        (b'{"type":"' + b"q" * 100_000 + b'"}', "unknown event type"),
        (b"{" + b" " * 300_000 + b"}", "exceeds the maximum event size of 262144 bytes"),
    ],
)
def test_each_kind_of_hostile_message_is_set_aside_with_a_reason_that_says_why(
    data: bytes, reason: str
) -> None:
    """The reason names the problem, and stays short whatever the input."""
    (held,) = to_batch([message(7, data)], STREAM).quarantined
    assert (held.seq, held.size) == (7, len(data))
    assert reason in held.reason
    assert len(held.reason) <= 1024


def test_utilization_runs_over_fuzzed_stores() -> None:
    """The pure utilization function accepts what the fold produced from hostile input."""
    store = MemoryStore()
    r = random.Random(1)
    store.apply(to_batch([message(i + 1, hostile(r)) for i in range(2000)], STREAM))
    since = NOW - timedelta(days=1)
    utilization(
        store.slot_intervals(),
        store.worker_sessions(),
        by="worker",
        since=since,
        until=NOW,
        now=NOW,
    )


@pytest.mark.anyio
async def test_the_publisher_refuses_an_event_over_the_size_limit_before_sending(
    log_stream: LogConfig,
) -> None:
    """PublishError at once, listed in .failed, and nothing reaches the stream."""
    big = ev.TaskSubmitted(task="t", pool="p", queue="q", item="x" * 2000)
    async with Publisher(log_stream) as pub:
        pub.max_event_bytes = 1000
        with pytest.raises(PublishError, match="exceeds the maximum event size"):
            await pub.publish(big)
        (failure,) = pub.failed
        size, _, reason = failure.reason.partition(" bytes ")
        assert (int(size) > 2000, reason) == (True, "exceeds the maximum event size")
    assert await read_all(log_stream) == []
