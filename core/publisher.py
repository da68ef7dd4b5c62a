"""The publisher SDK: services append events to the log, fast, and never lose one silently.

Publishing is asynchronous with a bounded number of events in flight (accepted but not yet
acknowledged by JetStream). Each event is published with ``Nats-Msg-Id = event.id``; an event
whose ack does not come (timeout, disconnect, server restart) is published again, byte for byte,
with the same id, until JetStream acknowledges it. JetStream's duplicate window makes those
retries exactly-once. Only a definitive answer from the server ends the retries: the event is
then listed in :attr:`Publisher.failed` and :meth:`Publisher.flush` raises.

**Envelopes** (``batch_size > 1``): events are buffered per pool and sent many to a message
(docs/wire.md#envelopes), each keeping its own id. An envelope is retried like an event, byte
for byte, with a ``Nats-Msg-Id`` derived from its events' ids, and settles all of them at once:
its ack gives each event the envelope's stream sequence; a refusal lists each in
:attr:`Publisher.failed`.

Acks come back on our own reply inbox (``<inbox>.<key>.<attempt>``) rather than through
nats-py's ``publish_async``, whose futures have no timeout and never resolve when JetStream
answers with an error (see :mod:`workledger.core._acks`).

The wire format is documented in :mod:`workledger.core.codec`; a service in another language
can do the same with its own NATS client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from workledger.core import codec
from workledger.core._acks import Verdict, read_reply
from workledger.core._batching import Buffers, Item, Sealed
from workledger.core._nats_errors import describe
from workledger.core.errors import LogError, PublishError, StreamNotFoundError
from workledger.core.events import MAX_EVENT_BYTES, Event
from workledger.core.log import LogConfig, connect, stream_info
from workledger.core.signing import HEADER, Signer, load_signer

__all__ = ["Encoding", "Failure", "Publisher", "SyncPublisher"]

Encoding = codec.Encoding
_T = TypeVar("_T")

_log = logging.getLogger(__name__)
_MSG_ID = "Nats-Msg-Id"
_RETRY_BACKOFF = 0.2
_LINGER = 0.005  # seconds a partly filled envelope waits for more events


class Failure(NamedTuple):
    """An event JetStream refused for good, and why."""

    event_id: str
    reason: str


class _Pending:
    """One sent message (an event or an envelope) until it is acknowledged or refused for good."""

    __slots__ = ("attempt", "due", "headers", "message", "no_stream_since")

    def __init__(self, message: Sealed) -> None:
        self.message = message
        self.headers = {_MSG_ID: message.msg_id}  # and the signature, when signing
        self.attempt = 0  # numbers the sends; only the latest one's error counts
        self.due = 0.0  # monotonic time at which to publish (again)
        self.no_stream_since: float | None = None


class _Slots:
    """The in-flight bound: a FIFO counting semaphore whose free take is a plain call, and
    whose release frees many slots at once (an envelope's ack settles all its events).

    ``asyncio.Semaphore`` costs a coroutine per take and a wake-up check per release, which
    was a fifth of the publisher's time with envelopes of 100; ``anyio.Semaphore`` (even with
    ``fast_acquire``) frees one slot a call too. Taking 100 slots and freeing them, per slot:
    120-195 ns here, 650 ns with asyncio's, 1.6 µs with anyio's.
    """

    __slots__ = ("_waiters", "free")

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits before us."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting in line for one."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(1)  # handed a slot, then cancelled: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, count: int) -> None:
        """Free ``count`` slots, handing them to waiters in the order they came."""
        self.free += count
        waiters = self._waiters
        while self.free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.free -= 1
                waiter.set_result(None)


class Publisher:
    """Publish events to the log with bounded in-flight acks and retries.

    ::

        async with Publisher(LogConfig()) as pub:
            await pub.publish(TaskStarted(task="t-1", worker="w-1"))
        # leaving the block flushes: every event is acknowledged, or an error was raised

    ``max_in_flight`` bounds the events accepted but not yet acknowledged. ``ack_timeout`` is
    how long a send waits for its ack before it is sent again (a slow ack is not a failure).
    ``encoding`` picks the wire format; consumers accept both.

    **Envelopes**: with ``batch_size > 1``, events wait in a buffer per pool and go out up to
    ``batch_size`` to a message, when the buffer is full, ``linger`` seconds after its first
    event, or on :meth:`flush` / :meth:`close`: far fewer messages for NATS and the daemons to
    handle (see ``benchmarks/envelopes.py``), for up to ``linger`` more latency. Give
    ``max_in_flight`` room for several envelopes (it must be at least ``batch_size``). The
    default, ``batch_size=1``, sends each event as its own message.

    **When the buffer is full** (``max_in_flight`` events accepted but not yet acknowledged),
    :meth:`publish` waits until an ack frees a slot: that is the backpressure a fast producer
    feels when NATS is slow or away. While NATS is unreachable, publish therefore blocks once
    the buffer fills; wrap it in your own timeout if you must not wait.

    **Signing**: with ``config.sign_key_file`` (or :attr:`signer` set), every message carries a
    ``Wl-Signature`` header over its subject and exact bytes (:mod:`workledger.core.signing`),
    so a daemon that verifies knows which service wrote it; one signature covers an envelope.
    Retries resend the same signature.

    **Size**: an encoded event bigger than :attr:`max_event_bytes` (the daemons' default
    limit, 256 KiB; set the attribute to match theirs) or the server's max payload is refused
    at once with :class:`PublishError`, before anything is sent: a daemon would only set it
    aside. An envelope is sealed before it would exceed :attr:`max_envelope_bytes` (1 MiB) or
    the server's max payload.

    One event loop only; from threads or synchronous code use :class:`SyncPublisher`.
    """

    max_event_bytes: int = MAX_EVENT_BYTES
    max_envelope_bytes: int = codec.MAX_ENVELOPE_BYTES

    def __init__(
        self,
        config: LogConfig,
        *,
        max_in_flight: int = 1024,
        ack_timeout: float = 5.0,
        encoding: Encoding = "json",
        batch_size: int = 1,
        linger: float = _LINGER,
    ) -> None:
        if max_in_flight < 1 or ack_timeout <= 0:
            raise ValueError("max_in_flight must be >= 1 and ack_timeout > 0")
        if not 1 <= batch_size <= max_in_flight or linger < 0:
            raise ValueError("batch_size must be 1 to max_in_flight, and linger >= 0")
        self.config = config
        self.ack_timeout = ack_timeout
        self._encode = codec.encode_json if encoding == "json" else codec.encode_msgpack
        self.signer: Signer | None = (
            load_signer(config.sign_key_file) if config.sign_key_file else None
        )
        self._slots = _Slots(max_in_flight)
        self._buffers = Buffers(
            config.subject_prefix,
            encoding,
            batch_size=batch_size,
            linger=linger,
            on_linger=self._linger_over,
        )
        self._pending: dict[int, _Pending] = {}
        self._unsettled = 0  # events accepted, buffered or sent, not yet acknowledged
        self._next_key = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed: list[Failure] = []
        self._unreported: list[LogError] = []
        self._nc: Client | None = None
        self._inbox = ""
        self._retrier: asyncio.Task[None] | None = None
        self._shipping: set[asyncio.Task[None]] = set()
        self._reconnects = 0

    @classmethod
    async def connect(
        cls,
        config: LogConfig,
        *,
        max_in_flight: int = 1024,
        ack_timeout: float = 5.0,
        encoding: Encoding = "json",
        batch_size: int = 1,
        linger: float = _LINGER,
    ) -> Publisher:
        """Connect and check the stream exists.

        :raises LogError: if NATS cannot be reached.
        :raises StreamNotFoundError: naming the stream and server, if it does not exist.
        """
        pub = cls(
            config,
            max_in_flight=max_in_flight,
            ack_timeout=ack_timeout,
            encoding=encoding,
            batch_size=batch_size,
            linger=linger,
        )
        await pub.open()
        return pub

    async def open(self) -> None:
        """Connect (see :meth:`connect`); called by ``async with``."""
        if self._nc is not None:
            return
        nc = await connect(self.config)
        try:
            await self._check_stream(nc)
            self._inbox = nc.new_inbox()
            await nc.subscribe(f"{self._inbox}.*.*", cb=self._on_reply)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc
        self._buffers.max_bytes = min(self.max_envelope_bytes, nc.max_payload)
        self._retrier = asyncio.create_task(self._retry_loop(), name="workledger-publisher-retry")

    async def _check_stream(self, nc: Client) -> None:
        try:
            await stream_info(nc.jetstream(), self.config)
        except StreamNotFoundError:
            raise StreamNotFoundError(
                f"stream {self.config.stream!r} does not exist on "
                f"{', '.join(self.config.servers)}; create it first (`workledger up`, or "
                "workledger.core.log.ensure_stream)"
            ) from None

    @property
    def failed(self) -> list[Failure]:
        """Every event JetStream refused for good, in the order it happened."""
        return list(self._failed)

    @property
    def in_flight(self) -> int:
        """Events accepted by :meth:`publish` and not yet acknowledged (buffered or sent)."""
        return self._unsettled

    async def publish(self, event: Event) -> str:
        """Accept one event into the buffer and return its id; the ack comes later.

        Fills a missing ``id`` and ``at``. Waits while the buffer is full (backpressure).

        :raises PublishError: at once if the encoded event exceeds the server's max payload.
        """
        item = self._prepare(event)
        await self._accept(item)
        return item.event.id

    async def publish_many(self, events: Iterable[Event]) -> list[str]:
        """:meth:`publish` each event, in order; return their ids.

        Every event is stamped, encoded and checked before any is accepted, so an oversized
        one raises :class:`PublishError` with nothing of the call sent.
        """
        items = [self._prepare(event) for event in events]
        for item in items:
            await self._accept(item)
        return [item.event.id for item in items]

    async def publish_and_wait(self, event: Event) -> int:
        """Publish one event and wait for its ack; return its stream sequence.

        Retries like :meth:`publish`, so this waits as long as NATS is away. In an envelope,
        the event waits for it to be sent (at most ``linger``) and gets its sequence.

        :raises StreamNotFoundError: if no stream stores the event's subject.
        :raises PublishError: if JetStream refused the event.
        """
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        item = self._prepare(event, waiter)
        await self._accept(item)
        return await waiter

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (mirrors SyncPublisher)
        """Send what waits in envelope buffers, then wait until every accepted event is
        acknowledged.

        :raises PublishError: if events are still unacknowledged after ``timeout`` seconds
            (they stay in flight and keep being retried), or if JetStream refused events since
            the last flush (then :attr:`failed` lists them).
        :raises StreamNotFoundError: if every refusal since the last flush was "no stream".
        """
        await self._ship_all()
        if not await self._wait_idle(timeout):
            raise PublishError(
                f"{self._unsettled} events still unacknowledged after {timeout}s; "
                "they are kept and retried"
            )
        self._raise_unreported()

    async def close(self, timeout: float | None = 30.0) -> None:  # noqa: ASYNC109 (as flush)
        """Flush (up to ``timeout`` seconds), then disconnect.

        :raises PublishError: if events could not be acknowledged in time (they are listed in
            :attr:`failed`) or were refused; the connection is closed either way.
        """
        if self._nc is None:
            return
        try:
            await self._ship_all()
            if not await self._wait_idle(timeout):
                lost = self._abandon_pending()
                raise PublishError(
                    f"{lost} events not acknowledged within {timeout}s of close; "
                    "they are listed in .failed"
                )
            self._raise_unreported()
        finally:
            self._abandon_pending()  # only if cancelled while waiting
            await self._disconnect()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- accepting -----------------------------------------------------------------------------

    def _prepare(self, event: Event, waiter: asyncio.Future[int] | None = None) -> Item:
        if self._nc is None:
            raise LogError("the publisher is not connected; use `await Publisher.connect(...)`")
        event = codec.stamp(event)
        item = Item(event, self._encode(event), waiter)
        self._check_size(item)
        return item

    def _check_size(self, item: Item) -> None:
        """Refuse here what the server or the daemons would refuse, with the reason."""
        assert self._nc is not None
        size = len(item.data)
        if size <= self.max_event_bytes and size <= self._nc.max_payload:
            return
        for limit, whose in (
            (self._nc.max_payload, "the server's max payload"),
            (self.max_event_bytes, "the maximum event size"),
        ):
            if len(item.data) > limit:
                reason = f"{len(item.data)} bytes exceeds {whose}"
                self._failed.append(Failure(item.event.id, reason))
                raise PublishError(f"event {item.event.id}: {reason} ({limit})")

    async def _accept(self, item: Item) -> None:
        """Take a slot (waiting while none is free), then buffer the event or send it."""
        if not self._slots.try_take():
            await self._slots.take()
        if self._nc is None:
            self._slots.release(1)
            raise LogError("the publisher was closed while this event waited for a slot")
        self._unsettled += 1
        if self._unsettled == 1:  # it is set only when the count falls to 0
            self._idle.clear()
        for message in self._buffers.add(item):
            await self._ship(message)

    def _linger_over(self, pool: str | None) -> None:
        """A buffer's first event has waited ``linger``: send what it holds now."""
        message = self._buffers.seal(pool)
        if message is not None:
            task = asyncio.create_task(self._ship(message))
            self._shipping.add(task)
            task.add_done_callback(self._shipping.discard)

    async def _ship_all(self) -> None:
        for message in self._buffers.seal_all():
            await self._ship(message)

    async def _ship(self, message: Sealed) -> None:
        await self._send(*self._track(message))

    def _track(self, message: Sealed) -> tuple[int, _Pending]:
        """Sign a sealed message and keep it until its ack."""
        entry = _Pending(message)
        if self.signer is not None:
            entry.headers[HEADER] = self.signer.header(message.subject, message.data)
        key, self._next_key = self._next_key, self._next_key + 1
        self._pending[key] = entry
        return key, entry

    # --- sending and retrying ------------------------------------------------------------------

    async def _send(self, key: int, entry: _Pending) -> None:
        """Publish the entry's bytes (again); the reply comes to ``<inbox>.<key>.<attempt>``."""
        assert self._nc is not None
        if not self._nc.is_connected:
            entry.due = 0.0  # the retry loop sends it once we are back
            return
        entry.attempt += 1
        entry.due = time.monotonic() + self.ack_timeout
        reply = f"{self._inbox}.{key}.{entry.attempt}"
        sent = entry.message
        try:
            await self._nc.publish(sent.subject, sent.data, reply=reply, headers=entry.headers)
        except nats.errors.Error as exc:
            _log.debug("publish of %s deferred: %s", sent.describe(), describe(exc))
            entry.due = time.monotonic() + _RETRY_BACKOFF

    async def _retry_loop(self) -> None:
        """Resend what is overdue; resend everything at once after a reconnect."""
        tick = min(0.1, self.ack_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            assert self._nc is not None
            if not self._nc.is_connected:
                continue
            reconnects = self._nc.stats["reconnects"]
            if reconnects != self._reconnects:
                self._reconnects = reconnects
                for entry in self._pending.values():
                    entry.due = 0.0
            await self._resend_due()

    async def _resend_due(self) -> None:
        now = time.monotonic()
        due = [(key, entry) for key, entry in self._pending.items() if entry.due <= now]
        if due:
            _log.debug("resending %d unacknowledged events", len(due))
        for key, entry in due:
            if key in self._pending:
                await self._send(key, entry)

    # --- acks ----------------------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        """JetStream's answer to one send: settle its events, or schedule another try."""
        key, attempt = (int(part) for part in msg.subject.rsplit(".", 2)[1:])
        entry = self._pending.get(key)
        if entry is None:
            return  # already settled; this is the answer to an earlier or later send
        status = msg.headers.get("Status") if msg.headers else None
        reply = read_reply(msg.data, status)
        if reply.verdict is Verdict.STORED:
            self._settle(key, entry, reply.seq)  # whichever send it answers, it is stored
        elif attempt != entry.attempt:
            return  # a superseded send's error; the latest send decides
        elif reply.verdict is Verdict.NO_STREAM:
            self._on_no_stream(key, entry)
        elif reply.verdict is Verdict.RETRY:
            entry.due = time.monotonic() + _RETRY_BACKOFF
        else:
            error = PublishError(f"{entry.message.describe()}: {reply.reason}")
            self._settle(key, entry, error)

    def _on_no_stream(self, key: int, entry: _Pending) -> None:
        """No stream answered: normal for a moment while a server restarts, final after that."""
        now = time.monotonic()
        entry.no_stream_since = entry.no_stream_since or now
        if now - entry.no_stream_since < self.ack_timeout:
            entry.due = now + _RETRY_BACKOFF
            return
        error = StreamNotFoundError(
            f"{entry.message.describe()}: no stream stores subject {entry.message.subject!r} "
            f"(expected stream {self.config.stream!r})"
        )
        self._settle(key, entry, error)

    def _settle(self, key: int, entry: _Pending, outcome: int | LogError) -> None:
        """The message's fate is known: free its events' slots and tell whoever waits."""
        del self._pending[key]
        items = entry.message.items
        self._slots.release(len(items))
        self._unsettled -= len(items)
        if not self._unsettled:
            self._idle.set()
        for item in items:
            if isinstance(outcome, LogError):
                self._record_failure(item, outcome)
            elif item.waiter is not None and not item.waiter.done():
                item.waiter.set_result(outcome)

    def _record_failure(self, item: Item, error: LogError) -> None:
        self._failed.append(Failure(item.event.id, str(error)))
        if item.waiter is not None and not item.waiter.done():
            item.waiter.set_exception(error)  # raised to its caller, so not again by flush
            return
        if not self._unreported:  # one line per burst; flush() raises with the details
            _log.error("events were not stored: %s (see Publisher.failed)", error)
        self._unreported.append(error)

    def _raise_unreported(self) -> None:
        errors, self._unreported = self._unreported, []
        if not errors:
            return
        summary = "; ".join(str(error) for error in errors[:3])
        message = f"{len(errors)} events were not stored: {summary}"
        if all(isinstance(error, StreamNotFoundError) for error in errors):
            raise StreamNotFoundError(message)
        raise PublishError(message)

    async def _wait_idle(self, timeout: float | None) -> bool:  # noqa: ASYNC109
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- closing -------------------------------------------------------------------------------

    def _abandon_pending(self) -> int:
        """Closing with events unacknowledged: list them as failed, never drop them silently."""
        for message in self._buffers.seal_all():  # only if cancelled before they were sent
            self._track(message)
        abandoned = list(self._pending.items())
        for key, entry in abandoned:
            error = PublishError(f"{entry.message.describe()}: not acknowledged before close")
            self._settle(key, entry, error)
        if abandoned:
            self._unreported.clear()  # the caller is told by close()
        return sum(len(entry.message.items) for _, entry in abandoned)

    async def _disconnect(self) -> None:
        tasks = [*self._shipping, *([self._retrier] if self._retrier else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retrier = None
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await nc.close()
            except (OSError, nats.errors.Error) as exc:
                _log.debug("closing the NATS connection: %s", describe(exc))


class SyncPublisher:
    """:class:`Publisher` for threads and synchronous code: same semantics, same arguments.

    It runs an asyncio event loop in a background thread and connects on construction::

        with SyncPublisher(LogConfig()) as pub:
            pub.publish(WorkerHeartbeat(worker="w-1", pool="gpu"))

    Each call hands the work to that loop and waits for it, so :meth:`publish` blocks while the
    buffer is full, exactly like the async version. Safe to call from several threads.
    """

    def __init__(
        self,
        config: LogConfig,
        *,
        max_in_flight: int = 1024,
        ack_timeout: float = 5.0,
        encoding: Encoding = "json",
        batch_size: int = 1,
        linger: float = _LINGER,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="workledger-publisher", daemon=True
        )
        self._thread.start()
        connecting = Publisher.connect(
            config,
            max_in_flight=max_in_flight,
            ack_timeout=ack_timeout,
            encoding=encoding,
            batch_size=batch_size,
            linger=linger,
        )
        try:
            self._publisher: Publisher = self._run(connecting)
        except BaseException:
            self._stop_loop()
            raise

    @property
    def failed(self) -> list[Failure]:
        """See :attr:`Publisher.failed`."""
        return self._publisher.failed

    def publish(self, event: Event) -> str:
        """See :meth:`Publisher.publish`."""
        return self._run(self._publisher.publish(event))

    def publish_many(self, events: Iterable[Event]) -> list[str]:
        """See :meth:`Publisher.publish_many`: one hand-over to the loop for all of them."""
        return self._run(self._publisher.publish_many(list(events)))

    def publish_and_wait(self, event: Event) -> int:
        """See :meth:`Publisher.publish_and_wait`."""
        return self._run(self._publisher.publish_and_wait(event))

    def flush(self, timeout: float | None = None) -> None:
        """See :meth:`Publisher.flush`."""
        self._run(self._publisher.flush(timeout))

    def close(self, timeout: float | None = 30.0) -> None:
        """See :meth:`Publisher.close`; also stops the background thread."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._publisher.close(timeout))
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, work: Coroutine[Any, Any, _T]) -> _T:
        if self._loop.is_closed():
            work.close()
            raise LogError("the publisher is closed")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
