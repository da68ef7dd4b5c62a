"""The projection daemon: read the log from the checkpoint, fold batches into stores.

Structured concurrency (anyio on asyncio, since nats-py is asyncio-only): an ordered JetStream
consumer's callback appends each message to a bounded inbox; the folder task takes whatever has
arrived as one batch, decodes it, sets malformed messages aside, and applies the batch to every
store with its checkpoint. While a batch is applied the next one accumulates, so batches grow
with load (up to ``max_batch``) and an idle daemon applies a message as soon as it arrives;
a daemon behind the stream also waits out a few flow-control round trips (``_gather``).
(A memory object stream between the two cost one event-loop hop per message: 5x slower.)
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeGuard

import anyio
import msgspec
import nats.js.errors
from anyio.abc import TaskStatus
from nats.js.api import ConsumerConfig, DeliverPolicy

from workledger.core.codec import (
    MAX_ENVELOPE_BYTES,
    Invalid,
    Message,
    encode_json,
    stamp,
    unpack,
)
from workledger.core.errors import InvalidEventError, LogError
from workledger.core.events import MAX_EVENT_BYTES, Event
from workledger.core.log import LogConfig, connect, encode_token, ensure_stream, envelope_pool
from workledger.core.signing import Verifier, load_verifier
from workledger.projections import _groups, _position
from workledger.projections.partitions import KnownTasks, partition_subjects
from workledger.projections.views import Quarantined
from workledger.stores.base import Batch, Sequenced, Store

__all__ = [
    "DaemonMetrics",
    "Listener",
    "Projector",
    "ProjectorConfig",
    "fewer_collections",
    "to_batch",
]

_log = logging.getLogger(__name__)
_QUARANTINE_KEEP_BYTES = 4096
_REASON_KEEP_CHARS = 1024  # a reason quotes the input; a hostile one must not grow it
_LOGGED_PER_BATCH = 10  # quarantined messages logged one by one; the rest are counted
# Every event type has a ``pool`` field (tests/test_codec.py), so reading it in C gives what
# the ``pool_key`` property would, without a Python call per event.
_ID, _ZONE, _POOL = map(operator.attrgetter, ("id", "at.tzinfo", "pool"))
_UTC_ONLY = {UTC}

Listener = Callable[[Batch], None]
"""Told of a batch once stores have applied it (see ``Projector.listeners`` and
``live_listeners``). It runs on the fold's path, so it must only hand the batch on and
return: no I/O, no waiting."""


class ProjectorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the daemon reads the log.

    ``pools`` partitions the stream between daemons by pool: one serving them reads their
    events, and of the task events without a pool those of tasks its pools named
    (:class:`~workledger.projections.partitions.KnownTasks`). ``filter_subjects`` adds raw
    subject filters. With neither, the daemon reads the whole stream. An event bigger than
    ``max_event_bytes`` is quarantined undecoded, as is an envelope bigger than
    :data:`~workledger.core.codec.MAX_ENVELOPE_BYTES` (1 MiB).
    ``allow_gap``: carry on (counting ``missed``) when messages the read models lack are gone
    from the stream, instead of stopping with :class:`~workledger.core.errors.GapError`.
    ``watch_interval``: how often the stream is checked for deletion and gaps.
    ``gc_thresholds``: CPython's garbage collector thresholds while the daemon runs (restored
    when the last running daemon stops), or None to leave them alone. A fold keeps millions
    of new objects alive, so the default (700, 10, 10) runs a collection every few hundred
    events and traverses the read model again and again: a quarter of the daemon's CPU at
    high rates, and full collections that pause it longer than a young one of 100,000.

    A batch is at most ``max_batch`` messages and about ``max_batch_bytes``; the inbox holds at
    most ``buffer`` messages and ``buffer_bytes``. Bytes, because one message may be an envelope
    of thousands of events: counted in messages alone, a batch could hold millions of events and
    keep the loop from the API and the stream watch for seconds. A store that writes to disk
    (DuckDB) applies in its own thread what has waited for it as one batch; meanwhile the
    daemon goes on folding into the in-memory stores, which live queries read, until
    ``lane_backlog`` events wait for that store. Under a heavy load (``bulk_events`` handed
    over in ``lane_hold`` seconds), such a store that names its ``bulk_events`` (DuckDB: a row
    group, which it writes straight to the file instead of through its write-ahead log) gets
    that many at a time, waiting up to ``lane_hold`` seconds for them; at a lighter load
    nothing waits.
    """

    log: LogConfig = msgspec.field(default_factory=LogConfig)
    pools: tuple[str, ...] = ()
    filter_subjects: tuple[str, ...] = ()
    max_batch: int = 5000
    max_batch_bytes: int = 4 * 1024 * 1024
    buffer: int = 20_000
    buffer_bytes: int = 64 * 1024 * 1024
    lane_backlog: int = 150_000
    lane_hold: float = 2.0
    max_event_bytes: int = MAX_EVENT_BYTES
    allow_gap: bool = False
    watch_interval: float = 2.0
    gc_thresholds: tuple[int, int, int] | None = (100_000, 50, 100)

    @property
    def subjects(self) -> tuple[str, ...]:
        """The consumer's filter subjects, the pools' and the raw ones (none: the whole stream)."""
        pools = partition_subjects(self.log.subject_prefix, self.pools) if self.pools else ()
        return tuple(dict.fromkeys((*pools, *self.filter_subjects)))


# Projector._gather: an inbox holding this much came in a flow-control window, so more is on
# its way; how long to wait for each next window, and for all of them together.
_BEHIND_BYTES = 128 * 1024
_WINDOW_SECONDS, _GATHER_SECONDS = 0.0005, 0.01
# _Bulk: a pause between batches shorter than this never ends a lane's wait for more.
_QUIET_SECONDS = 0.05


class DaemonMetrics(msgspec.Struct, kw_only=True):
    """What health checks and /metrics report."""

    connected: bool = False
    last_seq: int = 0
    lag: int = 0
    batches: int = 0
    applied: int = 0
    quarantined: int = 0
    fold_seconds_total: float = 0.0
    fold_seconds_max: float = 0.0
    missed: int = 0  # messages gone from the stream before they were applied (allow_gap)
    skipped: int = 0  # task events without a pool, of other partitions' tasks (pools)


def to_batch(
    messages: Sequence[Any],
    stream: str,
    *,
    max_bytes: int = MAX_EVENT_BYTES,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
    verifier: Verifier | None = None,
) -> Batch:
    """Decode JetStream messages into a batch; a bad one is quarantined, never raised.

    An envelope gives several events that share its stream sequence (stores apply whole
    messages, so the checkpoint stays exact); an event of it that cannot be applied is
    quarantined alone, the reason naming its index. With a ``verifier``, a message not signed
    by a trusted key is quarantined with the reason (an envelope whole: one signature covers it).
    """
    sequenced = [(_position.stream_seq(msg), msg) for msg in messages]
    return _to_batch(sequenced, stream, max_bytes, max_envelope_bytes, verifier)


def _to_batch(
    messages: Sequence[tuple[int, Any]],
    stream: str,
    max_bytes: int,
    max_envelope_bytes: int,
    verifier: Verifier | None,
) -> Batch:
    """:func:`to_batch` of messages whose stream sequences the daemon has already read."""
    events: list[Sequenced] = []
    quarantined: list[Quarantined] = []
    last_seq = 0
    for seq, msg in messages:
        last_seq = max(last_seq, seq)
        subject = msg.subject
        refused = verifier.check(subject, msg.data, msg.headers) if verifier else None
        if refused is not None:
            quarantined.append(_quarantine(seq, subject, refused, msg.data))
            continue
        try:
            message = _decode(msg, max_bytes, max_envelope_bytes)
        except InvalidEventError as exc:
            quarantined.append(_quarantine(seq, subject, str(exc), msg.data))
            continue
        items = message.events
        first = items[0]
        if len(items) == 1 and _stamped_one(first):  # the usual cases: nothing to set aside
            events.append(Sequenced(seq, subject, first))  # or to fill in
            continue
        if len(items) > 1 and _stamped(items):
            events.extend(map(functools.partial(Sequenced, seq, subject), items))
            continue
        now = _utc(msg.metadata.timestamp)
        for index, item in enumerate(items):
            if isinstance(item, Invalid):
                quarantined.append(_quarantine(seq, subject, item.reason, item.data))
                continue
            default = f"{stream}:{seq}:{index}" if message.envelope else f"{stream}:{seq}"
            events.append(Sequenced(seq, subject, stamp(item, default_id=default, now=now)))
    return Batch(events=events, quarantined=quarantined, last_seq=last_seq)


def _stamped(items: Sequence[Event | Invalid]) -> bool:
    """Every item is an event with an id and a time in UTC, which :func:`stamp` would leave as
    it is. Checked in C (``map``), since per event in Python it cost as much as the decoding."""
    try:
        return all(map(_ID, items)) and set(map(_ZONE, items)) == _UTC_ONLY
    except AttributeError:  # an Invalid has no id; an event without a time, no tzinfo
        return False


def _stamped_one(item: Event | Invalid) -> TypeGuard[Event]:
    """:func:`_stamped` of a lone item, without the set-up that pays off over many."""
    return not isinstance(item, Invalid) and bool(item.id) and _utc_time(item.at)


def _utc_time(moment: datetime | None) -> bool:
    return moment is not None and moment.tzinfo == UTC


def _decode(msg: Any, max_bytes: int, max_envelope_bytes: int) -> Message:
    """One message's events; an envelope's must be on its pool's envelope subject.

    :raises InvalidEventError: when nothing of the message can be applied.
    """
    message = unpack(msg.data, max_event_bytes=max_bytes, max_envelope_bytes=max_envelope_bytes)
    if not message.envelope:
        return message
    pool = envelope_pool(msg.subject)
    if pool is None:
        raise InvalidEventError(
            "an envelope must be published to <prefix>.<pool>.envelope (docs/wire.md#envelopes)"
        )
    items = message.events
    try:
        keys = set(map(_POOL, items))
    except AttributeError:  # an Invalid has no pool
        keys = {item.pool_key for item in items if not isinstance(item, Invalid)}
    if all(encode_token(key) == pool for key in keys):
        return message  # the usual case, checked once per pool rather than once per event
    count = len(message.events)
    checked = [_in_pool(item, pool, index, count) for index, item in enumerate(message.events)]
    return Message(checked, envelope=True)


def _in_pool(item: Event | Invalid, pool: str, index: int, count: int) -> Event | Invalid:
    """An envelope holds one pool's events: one of another pool would escape the partition
    that serves its pool, so it is set aside, naming both."""
    if isinstance(item, Invalid) or encode_token(item.pool_key) == pool:
        return item
    reason = (
        f"event {index} of {count} in the envelope: its pool {item.pool_key!r} is not the "
        f"envelope's (subject token {pool!r})"
    )
    return Invalid(reason, encode_json(item))


def _quarantine(seq: int, subject: str, reason: str, data: bytes) -> Quarantined:
    return Quarantined(
        seq=seq,
        subject=subject[:_REASON_KEEP_CHARS],
        reason=reason[:_REASON_KEEP_CHARS],
        data=bytes(data[:_QUARANTINE_KEEP_BYTES]),
        size=len(data),
    )


def _verifier(config: LogConfig) -> Verifier | None:
    """The trusted keys, when the daemon verifies signatures (``verify_keys_dir``)."""
    return load_verifier(config.verify_keys_dir) if config.verify_keys_dir else None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Projector:
    """Feeds one stream into stores; ``run`` until cancelled.

    Reading resumes after the lowest checkpoint of the stores; every store is given the whole
    batch and, by the store contract, skips what its own checkpoint covers, so a store restored
    from an older snapshot catches up while the others skip what they already have.

    ``listeners`` are called with each batch once every store holds it; ``live_listeners`` as
    soon as the in-memory stores hold it (what live queries and the live feed read), while a
    store that writes to disk may still be writing it (see :data:`Listener`). One that raises
    is logged and the fold goes on.
    """

    def __init__(self, config: ProjectorConfig, stores: Sequence[Store]) -> None:
        self.config = config
        self.stores = list(stores)
        self.metrics = DaemonMetrics()
        self._progress = anyio.Event()
        self._inbox: deque[tuple[int, Any]] = deque()  # (stream sequence, message)
        self._inbox_bytes = 0
        self._arrived = anyio.Event()
        self._drained = anyio.Event()
        self._verifier = _verifier(config.log)
        self._subjects = config.subjects
        self._known: KnownTasks | None = None  # while running, if the daemon serves pools
        self._client: Any = None  # the NATS client while running
        self._js: Any = None
        self._received = 0  # the highest stream sequence delivered so far
        self._stream_last = 0  # the stream's last sequence when last looked at
        self._missed_upto = 0  # gaps up to here are already counted (allow_gap)
        self._dispatched = 0  # the highest stream sequence handed to the stores
        self._inline = [s for s in self.stores if not getattr(s, "blocking", False)]
        self._lanes: list[_Lane] = []  # one per store that does I/O, while running
        self._unsettled: deque[_Dispatched] = deque()  # handed on, not yet in every store
        self.listeners: list[Listener] = []
        self.live_listeners: list[Listener] = []

    @property
    def checkpoint(self) -> int:
        """The last stream sequence applied to every store."""
        return min(store.stats().checkpoint for store in self.stores)

    @property
    def connected(self) -> bool:
        """Connected to NATS at this moment: False while the client is reconnecting."""
        return self.metrics.connected and bool(self._client and self._client.is_connected)

    @property
    def caught_up(self) -> bool:
        """Applied everything the stream held when last looked at (every ``watch_interval``),
        or, filtered, everything the consumer had pending: the model is current."""
        if not self.connected or self._inbox:
            return False
        drained = self.metrics.batches > 0 and self.metrics.lag == 0
        return drained or self.checkpoint >= self._stream_last

    async def wait_for(self, seq: int, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the stores cover stream sequence ``seq``; False on timeout."""
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while self.checkpoint < seq:
                await self._progress.wait()
            return True
        return False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, ensure the stream, and fold until cancelled."""
        nc = self._client = await connect(self.config.log)
        try:
            _collector.relax(self.config.gc_thresholds)
            js = self._js = nc.jetstream()
            await ensure_stream(js, self.config.log)
            self._received = self._dispatched = self.checkpoint
            if self.config.pools:
                self._known = KnownTasks(self._resumed().task_ids())
            await self._check_stream(js)
            self.metrics.connected = True
            backlog, hold = self.config.lane_backlog, self.config.lane_hold
            self._lanes = [_Lane(s, backlog, hold) for s in self.stores if s not in self._inline]
            async with _groups.plain_errors(), anyio.create_task_group() as tg:
                for lane in self._lanes:
                    tg.start_soon(lane.run, self._settle)
                tg.start_soon(self._fold)
                await self._subscribe(js)
                tg.start_soon(self._watch, js)
                task_status.started()
        finally:
            _collector.restore(self.config.gc_thresholds)
            self.metrics.connected = False
            for lane in self._lanes:
                lane.close()
            with anyio.CancelScope(shield=True):
                await nc.close()

    def _resumed(self) -> Store:
        """The store the daemon resumes from (the lowest checkpoint): what it holds is what
        the stream named up to there, so the partition's known tasks restart from its tasks."""
        return min(self.stores, key=lambda store: store.stats().checkpoint)

    async def _check_stream(self, js: Any) -> None:
        """Is the stream still there, and does it still hold what the stores lack?"""
        # The checkpoint from before the request: the fold goes on while we wait, and a
        # checkpoint past the stream state we got would look like a recreated stream.
        checkpoint = self.checkpoint
        state = await _position.stream_state(js, self.config.log)
        _position.check_not_behind(state, checkpoint, self.config.log.stream)
        self._stream_last = int(state.last_seq)
        if not self._subjects:  # filtered, sequences skip by design
            self._gap(_position.expired(state, self._received))

    async def _watch(self, js: Any) -> None:
        """Notice a stream deleted under us, or messages expiring before we read them."""
        while True:
            await anyio.sleep(self.config.watch_interval)
            await self._check_stream(js)

    def _gap(self, gap: tuple[int, int] | None) -> None:
        """Stop with a clear error, or with ``allow_gap`` count it and carry on."""
        if gap is None:
            return
        error = _position.gap_error(self.config.log.stream, *gap)
        if not self.config.allow_gap:
            raise error
        self.metrics.missed += gap[1] - gap[0] + 1
        self._received = max(self._received, gap[1])
        self._missed_upto = max(self._missed_upto, gap[1])
        _log.error("%s; carrying on (--allow-gap)", error)

    async def _subscribe(self, js: Any) -> None:
        """An ordered consumer from the checkpoint; nats-py resets it from the last sequence
        it delivered whenever it notices a gap or a lost consumer."""
        start = self.checkpoint + 1
        policy = DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL
        consumer = ConsumerConfig(
            deliver_policy=policy,
            opt_start_seq=start if start > 1 else None,
            idle_heartbeat=1.0,  # a lost consumer (server restart) is noticed in seconds
        )
        subjects = self._subjects
        if len(subjects) > 1:
            consumer.filter_subjects = list(subjects)
        subject = subjects[0] if len(subjects) == 1 else ""
        await js.subscribe(
            subject or f"{self.config.log.subject_prefix}.>",
            stream=self.config.log.stream,
            ordered_consumer=True,
            config=consumer,
            cb=self._receive,
            # nats-py drops messages past its pending limits ("slow consumer") *after* noting
            # their sequence, so the ordered consumer never re-fetches them: a catch-up of
            # envelopes lost messages that way while the fold was busy. Without limits nothing
            # is dropped; the inbox's bound and JetStream flow control hold the rest back.
            pending_msgs_limit=0,
            pending_bytes_limit=0,
        )

    async def _receive(self, msg: Any) -> None:
        """Called by nats-py for each message, in order. Appending is all it does, so messages
        pile up into large batches while a batch is being applied; a full inbox makes it wait,
        which stops delivery (flow control then holds the rest on the server)."""
        seq = _position.stream_seq(msg)
        self._inbox.append((seq, msg))
        self._inbox_bytes += len(msg.data)
        self._received = max(self._received, seq)
        self._arrived.set()
        config = self.config
        while len(self._inbox) >= config.buffer or self._inbox_bytes >= config.buffer_bytes:
            await self._drained.wait()

    async def _fold(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived = anyio.Event()
            while self._inbox:
                await self._gather()
                await self._apply(self._take())
                drained, self._drained = self._drained, anyio.Event()
                drained.set()
                await anyio.lowlevel.checkpoint()  # the API and the stream watch run between

    async def _gather(self) -> None:
        """A daemon behind the stream lets the backlog pile up into one bigger batch first.

        JetStream sends a push consumer ~256 KiB, then waits for nats-py to answer its flow
        control, so a daemon far behind still saw ~20 envelopes a batch; and the in-memory
        store costs far more per event in small batches (a worker or task is re-indexed once
        per batch it is in: 74k events/s in batches of 1000 against 154k in 5000). So while an
        inbox that big still grows, wait for the next window (a round trip, well under a
        millisecond), for at most ``_GATHER_SECONDS``; a daemon that keeps up never waits, nor
        does one with no in-memory store (a rebuild: its DuckDB lane joins batches itself)."""
        config, inbox = self.config, self._inbox
        if self._inbox_bytes < _BEHIND_BYTES or not self._inline:
            return
        until = anyio.current_time() + _GATHER_SECONDS
        while len(inbox) < config.max_batch and self._inbox_bytes < config.max_batch_bytes:
            held = len(inbox)
            await anyio.sleep(_WINDOW_SECONDS)
            if len(inbox) == held or anyio.current_time() >= until:
                return

    def _take(self) -> list[tuple[int, Any]]:
        """The next batch from the inbox: up to ``max_batch`` messages and about
        ``max_batch_bytes`` (at least one message, however big)."""
        inbox, size = self._inbox, 0
        batch: list[tuple[int, Any]] = []
        max_batch, max_bytes = self.config.max_batch, self.config.max_batch_bytes
        while inbox and len(batch) < max_batch and size < max_bytes:
            item = inbox.popleft()
            batch.append(item)
            size += len(item[1].data)
        self._inbox_bytes -= size
        return batch

    async def _apply(self, messages: list[tuple[int, Any]]) -> None:
        """Decode the batch, fold it into the in-memory stores, and hand it to each blocking
        store's lane: DuckDB writes batch N in its thread while the loop folds N + 1."""
        done = self._dispatched
        fresh = [item for item in messages if item[0] > done]
        if not fresh:
            return  # a redelivery after a consumer reset: already applied
        if not self._subjects:
            after = max(done, self._missed_upto)
            gaps = _position.skipped(after, [seq for seq, _ in fresh])
            if gaps:
                await self._not_dropped(gaps[0])
            for gap in gaps:
                self._gap(gap)
        config = self.config
        batch = _to_batch(
            fresh, config.log.stream, config.max_event_bytes, MAX_ENVELOPE_BYTES, self._verifier
        )
        if self._known is not None:
            batch, skipped = self._known.admit(batch)
            self.metrics.skipped += skipped
        self._dispatched = batch.last_seq
        began = time.perf_counter()
        for store in self._inline:
            store.apply(batch)  # each store skips what it already has
        if self._inline:
            _tell(self.live_listeners, batch)
        self._unsettled.append(_Dispatched(batch, fresh[-1][1], began))
        for lane in self._lanes:
            await lane.send(batch)
        self._settle()

    async def _not_dropped(self, gap: tuple[int, int]) -> None:
        """A hole in the delivered sequences must be messages gone from the stream. If the
        stream still has them, the client lost them on the way: stop, never count them as
        missed (a restart resumes from the checkpoint, before the hole)."""
        try:
            await self._js.get_msg(self.config.log.stream, gap[0])
        except nats.js.errors.NotFoundError:
            return
        raise LogError(
            f"stream {self.config.log.stream!r} holds message {gap[0]} but it was not delivered "
            f"(messages {gap[0]}..{gap[1]} skipped by the client); restart the daemon: it "
            "resumes from its checkpoint"
        )

    def _settle(self) -> None:
        """Account for, announce and wake waiters on every batch all stores now hold, in order."""
        pending = self._unsettled
        settled = False
        while pending and all(lane.applied >= pending[0].batch.last_seq for lane in self._lanes):
            done = pending.popleft()
            self._account(done.batch, done.last, time.perf_counter() - done.began)
            self._notify(done.batch)
            settled = True
        if settled:
            progress, self._progress = self._progress, anyio.Event()
            progress.set()

    def _notify(self, batch: Batch) -> None:
        _tell(self.listeners, batch)
        if not self._inline:  # no in-memory store: the batch is live once it is everywhere
            _tell(self.live_listeners, batch)

    def _account(self, batch: Batch, last: Any, seconds: float) -> None:
        m = self.metrics
        m.last_seq = batch.last_seq
        m.lag = int(last.metadata.num_pending)
        m.batches += 1
        m.applied += len(batch.events)
        m.quarantined += len(batch.quarantined)
        m.fold_seconds_total += seconds
        m.fold_seconds_max = max(m.fold_seconds_max, seconds)
        for q in batch.quarantined[:_LOGGED_PER_BATCH]:
            _log.warning("set aside message %d on %s: %s", q.seq, q.subject, q.reason)
        if len(batch.quarantined) > _LOGGED_PER_BATCH:
            more = len(batch.quarantined) - _LOGGED_PER_BATCH
            _log.warning("set aside %d more messages in this batch (`workledger quarantine`)", more)


def _tell(listeners: list[Listener], batch: Batch) -> None:
    for listener in listeners:
        try:
            listener(batch)
        except Exception:
            _log.exception("listener %r failed on a batch; the fold goes on", listener)


class _Dispatched(msgspec.Struct):
    """A batch handed to the stores, and what its accounting needs once all hold it."""

    batch: Batch
    last: Any  # its last message (for the consumer's pending count)
    began: float


class _Lane:
    """A store that does I/O (``blocking = True``) applies batches in its own thread, in order.

    Batches that arrive while it writes wait, and it applies them together as one: a DuckDB
    transaction costs milliseconds whatever it holds (10-19 ms under a steady load), so one
    at a time held every batch, and the in-memory stores with them, behind the slowest write.
    The daemon waits only once ``backlog`` events wait (one batch is always taken, however
    big), so a slow disk still slows the daemon down instead of piling batches up in memory.
    Under a heavy load, a store that names its ``bulk_events`` gets that many at a time
    (:class:`_Bulk`).
    """

    def __init__(self, store: Store, backlog: int, hold: float) -> None:
        self.store = store
        self.applied = store.stats().checkpoint  # the last sequence this lane applied
        self._backlog = backlog
        # Never more than the backlog, or the lane and the fold would wait for each other.
        self._bulk = _Bulk(min(getattr(store, "bulk_events", 0), backlog), hold)
        self._waiting: list[Batch] = []
        self._waiting_events = 0
        self._arrived = anyio.Event()
        self._taken = anyio.Event()

    async def send(self, batch: Batch) -> None:
        while self._waiting and self._waiting_events >= self._backlog:
            await self._taken.wait()
        events = len(batch.events) + len(batch.quarantined)
        self._bulk.handed(anyio.current_time(), events)
        self._waiting.append(batch)
        self._waiting_events += events
        self._arrived.set()

    async def run(self, settled: Callable[[], None]) -> None:
        while True:
            while not self._waiting:
                await self._arrived.wait()
                self._arrived = anyio.Event()
            await self._gather()
            batch = _joined(self._waiting)
            self._waiting, self._waiting_events = [], 0
            taken, self._taken = self._taken, anyio.Event()
            taken.set()
            await anyio.to_thread.run_sync(self.store.apply, batch)
            self.applied = max(self.applied, batch.last_seq)
            settled()

    async def _gather(self) -> None:
        """Wait for more batches while :class:`_Bulk` says to."""
        while True:
            until = self._bulk.until(anyio.current_time(), self._waiting_events)
            if until is None:
                return
            with anyio.move_on_after(until - anyio.current_time()):
                await self._arrived.wait()
                self._arrived = anyio.Event()

    def close(self) -> None:
        """Once the daemon's tasks are done: what still waits was never applied, and the
        checkpoint says so (a restart reads it again)."""
        self._waiting, self._waiting_events = [], 0


class _Bulk:
    """When a lane waits for more batches, to write ``events`` or more at once.

    DuckDB writes a transaction of a row group or more straight to the file, and a smaller one
    through its write-ahead log and again at a checkpoint: end to end into both stores ran
    1.37-1.45x faster when its lane gathered row groups (benchmarks/HISTORY.md, session 22). So
    while ``events`` or more were handed over in the last ``hold`` seconds (a heavy load), the
    lane waits for that many, as long as batches keep coming (none for twice the time between
    the last two, and at least :data:`_QUIET_SECONDS`: the load is over). At a lighter load
    they would take longer than ``hold`` to gather, so the lane never waits, and neither does
    one whose store has no preference (``events`` 0).
    """

    def __init__(self, events: int, hold: float) -> None:
        self.events = events
        self.hold = hold
        self._handed: deque[tuple[float, int]] = deque()  # (when, events) in the last hold s
        self._handed_events = 0

    def handed(self, now: float, events: int) -> None:
        """A batch of ``events`` was handed over at ``now``."""
        self._forget(now)
        self._handed.append((now, events))
        self._handed_events += events

    def until(self, now: float, waiting: int) -> float | None:
        """Until when to wait for more, with ``waiting`` events waiting; None: write now.
        (Asked again after each batch handed over, and at that time.)"""
        if waiting >= self.events:
            return None
        self._forget(now)
        if self._handed_events < self.events:
            return None
        # Two batches at least: the window holds more than the waiting ones, the last of them.
        handed = self._handed
        before, last = handed[-2][0], handed[-1][0]
        quiet = last + max(2 * (last - before), _QUIET_SECONDS)
        until = min(quiet, handed[0][0] + self.hold)  # or when the load may drop
        return until if now < until else None

    def _forget(self, now: float) -> None:
        """Batches handed over more than ``hold`` seconds ago no longer count."""
        handed = self._handed
        while handed and handed[0][0] <= now - self.hold:
            self._handed_events -= handed.popleft()[1]


def _joined(batches: list[Batch]) -> Batch:
    """Consecutive batches as one (they are in stream order)."""
    if len(batches) == 1:
        return batches[0]
    return Batch(
        events=[item for batch in batches for item in batch.events],
        quarantined=[item for batch in batches for item in batch.quarantined],
        last_seq=batches[-1].last_seq,
    )


class _Collector:
    """The garbage collector's thresholds, shared by the daemons of one process: the first to
    start sets them, the last to stop restores what was there before."""

    def __init__(self) -> None:
        self._users = 0
        self._before = gc.get_threshold()

    def relax(self, thresholds: tuple[int, int, int] | None) -> None:
        if thresholds is None:
            return
        if not self._users:
            self._before = gc.get_threshold()
        self._users += 1
        gc.set_threshold(*thresholds)

    def restore(self, thresholds: tuple[int, int, int] | None) -> None:
        if thresholds is None:
            return
        self._users -= 1
        if not self._users:
            gc.set_threshold(*self._before)


_collector = _Collector()


@contextmanager
def fewer_collections(thresholds: tuple[int, int, int] | None) -> Iterator[None]:
    """The collector's ``thresholds`` inside the block (None: left alone), counted with the
    daemons' own, so whoever leaves last restores what was there before."""
    _collector.relax(thresholds)
    try:
        yield
    finally:
        _collector.restore(thresholds)
