"""The publisher against a real nats-server: every event stored once, refusals surfaced."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import nats.errors
import pytest

from workledger.core import events as ev
from workledger.core.codec import stamp
from workledger.core.errors import LogError, PublishError, StreamNotFoundError
from workledger.core.log import LogConfig, connect, subject_for
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Encoding, Publisher, SyncPublisher, _Slots

from .conftest import free_port

pytestmark = pytest.mark.anyio

ReadStream = Callable[[LogConfig], Awaitable[list[Any]]]  # list[StoredMessage]: see conftest


def _one_of_each() -> list[ev.Event]:
    """Every event type, with optional fields filled where that is cheap."""
    return [
        ev.WorkerStarted(worker="w1", pool="gpu", queues=("q",), slots=4, labels={"zone": "a"}),
        ev.WorkerHeartbeat(worker="w1", pool="gpu"),
        ev.WorkerSubscribed(worker="w1", pool="gpu", task_keys=("resize",)),
        ev.WorkerStopped(worker="w1", pool="gpu", reason="deploy"),
        ev.WorkerLost(worker="w2", pool="gpu", last_seen=datetime(2026, 1, 1, tzinfo=UTC)),
        ev.WorkerForgotten(worker="w2", pool="gpu"),
        ev.TaskSubmitted(task="t1", pool="gpu", queue="q", task_key="resize", priority=2),
        ev.TaskClaimed(task="t1", worker="w1", queue="q"),
        ev.TaskStarted(task="t1", worker="w1"),
        ev.TaskProgress(task="t1", progress=0.5, message="half"),
        ev.TaskRetrying(task="t1", attempt=1, error="flaky"),
        ev.TaskCompleted(task="t1"),
        ev.TaskFailed(task="t2", error="boom"),
        ev.TaskCancelled(task="t3"),
        ev.TaskCrashed(task="t4", reason="oom"),
        ev.PoolCreated(pool="gpu", concurrency_limit=8),
        ev.PoolUpdated(pool="gpu", paused=True),
        ev.QueueCreated(pool="gpu", queue="q", priority=1),
        ev.QueueUpdated(pool="gpu", queue="q", concurrency_limit=None),
    ]


def _progress(count: int, pool: str = "p") -> list[ev.Event]:
    return [stamp(ev.TaskProgress(task=f"t{i}", pool=pool)) for i in range(count)]


def _unused_url() -> str:
    return f"nats://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_every_event_type_is_stored_and_read_back_equal(
    log_stream: LogConfig, read_stream: ReadStream, encoding: Encoding
) -> None:
    """Publishing one event of each type and reading the stream gives the same events."""
    events = [stamp(event) for event in _one_of_each()]
    assert {event.type for event in events} == set(ev.event_types())
    async with Publisher(log_stream, encoding=encoding) as pub:
        for event in events:
            await pub.publish(event)
        await pub.flush(timeout=5)
    assert [stored.event for stored in await read_stream(log_stream)] == events


async def test_each_message_carries_its_id_header_and_routing_subject(
    log_stream: LogConfig, read_stream: ReadStream
) -> None:
    """Nats-Msg-Id is the event id, and the subject is subject_for(prefix, event)."""
    async with Publisher(log_stream) as pub:
        event_id = await pub.publish(ev.TaskStarted(task="t.1", worker="w 1", pool="gpu*"))
    (stored,) = await read_stream(log_stream)
    assert stored.msg_id == event_id == stored.event.id
    assert stored.subject == subject_for(log_stream.subject_prefix, stored.event)


async def test_names_that_are_not_subject_tokens_are_stored_not_rejected(
    log_stream: LogConfig, read_stream: ReadStream
) -> None:
    """Dots, spaces, wildcards and unicode in ids reach the stream intact."""
    names = ["a.b", "with space", "*", ">", "ünï", "", "x" * 300]
    events = [stamp(ev.TaskCompleted(task=name or "t", pool=name or None)) for name in names]
    async with Publisher(log_stream) as pub:
        for event in events:
            await pub.publish(event)
    assert [stored.event for stored in await read_stream(log_stream)] == events


async def test_publish_fills_a_missing_id_and_time(
    log_stream: LogConfig, read_stream: ReadStream
) -> None:
    """An event without id or at gets both when published, and the id is returned."""
    async with Publisher(log_stream) as pub:
        event_id = await pub.publish(ev.WorkerHeartbeat(worker="w", pool="p"))
    (stored,) = await read_stream(log_stream)
    assert stored.event.id == event_id
    assert stored.event.at is not None


async def test_the_same_event_published_twice_is_stored_once(
    log_stream: LogConfig, read_stream: ReadStream
) -> None:
    """JetStream's duplicate window dedupes by Nats-Msg-Id; the retry gets the same sequence."""
    event = stamp(ev.TaskCompleted(task="t1"))
    async with Publisher(log_stream) as pub:
        first = await pub.publish_and_wait(event)
        second = await pub.publish_and_wait(event)
        await pub.publish(event)
        await pub.publish(event)
    assert first == second
    assert [stored.event for stored in await read_stream(log_stream)] == [event]


async def test_publish_and_wait_returns_the_stream_sequence(log_stream: LogConfig) -> None:
    """Each acknowledged event has the next sequence number."""
    async with Publisher(log_stream) as pub:
        sequences = [await pub.publish_and_wait(event) for event in _progress(3)]
    assert sequences == [1, 2, 3]


async def test_connecting_without_the_stream_names_the_stream_and_server(
    log_config: LogConfig,
) -> None:
    """A publisher refuses to start when its stream does not exist, and says where it looked."""
    with pytest.raises(StreamNotFoundError, match=log_config.stream) as raised:
        await Publisher.connect(log_config)
    assert log_config.servers[0] in str(raised.value)


async def test_an_unreachable_server_is_a_clear_log_error_fast() -> None:
    """No server listening: LogError 'cannot reach NATS at ...' within the connect timeout."""
    config = LogConfig(servers=(_unused_url(),), connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(LogError, match=f"cannot reach NATS at {config.servers[0]}"):
        await Publisher.connect(config)
    assert time.monotonic() - started < 3


async def test_an_error_after_closing_on_purpose_is_no_warning(
    log_config: LogConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A task nats-py still runs after ``close`` (an ordered consumer's flow-control reply) fails
    with "connection closed": not news when we closed it, so it warns of nothing; an error
    while connected still warns."""
    caplog.set_level(logging.DEBUG, logger="workledger.core.log")
    closed, open_ = await connect(log_config), await connect(log_config)
    await closed.close()
    await closed._error_cb(nats.errors.ConnectionClosedError())  # the callback connect() set
    await open_._error_cb(nats.errors.SlowConsumerError("s", None, 1, None))
    await open_.close()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1
    assert "slow consumer" in warned[0]
    assert any("connection closed" in r.getMessage() for r in caplog.records)


async def test_a_stream_deleted_under_the_publisher_fails_flush_and_lists_the_events(
    log_stream: LogConfig,
) -> None:
    """With no stream to store them, events are retried briefly, then reported, not dropped."""
    async with Publisher(log_stream, ack_timeout=0.5) as pub:
        client = await connect(log_stream)
        await client.jetstream().delete_stream(log_stream.stream)
        await client.close()
        ids = [await pub.publish(event) for event in _progress(3)]
        with pytest.raises(StreamNotFoundError, match="no stream stores subject"):
            await pub.flush(timeout=10)
        assert [failure.event_id for failure in pub.failed] == ids
        await pub.flush(timeout=1)  # each refusal is raised once


async def test_an_event_the_stream_refuses_fails_flush_and_is_listed(
    log_stream: LogConfig, read_stream: ReadStream
) -> None:
    """A definitive JetStream error (message over the stream's size limit) is not retried."""
    client = await connect(log_stream)
    js = client.jetstream()
    info = await js.stream_info(log_stream.stream)
    info.config.max_msg_size = 300
    await js.update_stream(info.config)
    await client.close()
    small, large = stamp(ev.TaskFailed(task="ok")), stamp(ev.TaskFailed(task="t", error="x" * 400))
    async with Publisher(log_stream) as pub:
        await pub.publish(small)
        await pub.publish(large)
        with pytest.raises(PublishError, match="1 events were not stored"):
            await pub.flush(timeout=5)
        assert [failure.event_id for failure in pub.failed] == [large.id]
    assert [stored.event for stored in await read_stream(log_stream)] == [small]


async def test_an_event_over_the_servers_max_payload_is_refused_at_once(
    log_stream: LogConfig,
) -> None:
    """The server would drop the connection for it, so publish raises before sending."""
    huge = stamp(ev.TaskFailed(task="t", error="x" * 2_000_000))
    async with Publisher(log_stream) as pub:
        with pytest.raises(PublishError, match="max payload"):
            await pub.publish(huge)
        assert [failure.event_id for failure in pub.failed] == [huge.id]


async def test_a_full_buffer_makes_publish_wait_until_acks_free_a_slot(
    nats_server: EmbeddedNats, log_stream: LogConfig, read_stream: ReadStream
) -> None:
    """With the server away, max_in_flight events are accepted; the next publish waits."""
    events = _progress(3)
    async with Publisher(log_stream, max_in_flight=2, ack_timeout=0.5) as pub:
        nats_server.stop()
        await pub.publish(events[0])
        await pub.publish(events[1])
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.5):
                await pub.publish(events[2])
        assert pub.in_flight == 2
        nats_server.start()
        await pub.publish(events[2])
        await pub.flush(timeout=10)
    assert [stored.event for stored in await read_stream(log_stream)] == events


async def test_freed_slots_go_to_waiting_publishes_in_order_and_a_cancelled_one_passes_its_on() -> (
    None
):
    """The in-flight bound (an ack frees an envelope's slots at once) is fair and leaks none."""
    slots = _Slots(1)
    assert slots.try_take()
    assert not slots.try_take()
    taken: list[str] = []

    async def take(name: str) -> None:
        await slots.take()
        taken.append(name)

    first, second, third = (asyncio.create_task(take(name)) for name in "abc")
    await asyncio.sleep(0)  # all three wait now, in that order
    slots.release(2)
    second.cancel()  # handed a slot, then cancelled before it ran: the slot goes to "c"
    with anyio.fail_after(5):  # a leaked slot leaves "c" waiting for ever
        await asyncio.gather(first, second, third, return_exceptions=True)
    assert taken == ["a", "c"]
    assert second.cancelled()
    assert slots.free == 0
    assert not slots.try_take()
    slots.release(1)
    assert slots.try_take()


@pytest.mark.parametrize("fault", ["restart", "kill"])
async def test_a_server_restart_mid_stream_loses_and_duplicates_nothing(
    nats_server: EmbeddedNats, log_stream: LogConfig, read_stream: ReadStream, fault: str
) -> None:
    """5k events, the server restarted (or killed) halfway: each event is stored exactly once."""
    events = _progress(5000)
    fail = nats_server.restart if fault == "restart" else _kill_and_start(nats_server)
    async with Publisher(log_stream, ack_timeout=2.0) as pub:
        async with anyio.create_task_group() as tasks:
            for index, event in enumerate(events):
                if index == len(events) // 2:
                    tasks.start_soon(anyio.to_thread.run_sync, fail)
                await pub.publish(event)
        await pub.flush(timeout=30)
        assert pub.failed == []
    stored = await read_stream(log_stream)
    assert Counter(message.event.id for message in stored) == Counter(e.id for e in events)


def _kill_and_start(server: EmbeddedNats) -> Callable[[], None]:
    def fault() -> None:
        server.kill()
        server.start()

    return fault


async def test_a_lost_connection_is_logged_in_a_few_lines_without_tracebacks(
    nats_server: EmbeddedNats, log_stream: LogConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A second of failed reconnects says 'disconnected' and 'reconnected', nothing more."""
    async with Publisher(log_stream) as pub:
        with caplog.at_level(logging.WARNING):
            nats_server.stop()
            await anyio.sleep(1.0)  # about ten reconnect attempts at reconnect_wait=0.1
            nats_server.start()
            await pub.publish_and_wait(ev.TaskCompleted(task="t"))
    lines = [record for record in caplog.records if record.name.startswith("workledger")]
    assert 2 <= len(lines) <= 4
    assert not any(record.exc_info for record in caplog.records)
    assert any("reconnected" in record.getMessage() for record in lines)


async def test_closing_with_the_server_gone_lists_what_was_not_acknowledged(
    nats_server: EmbeddedNats, log_stream: LogConfig
) -> None:
    """close() cannot wait forever, but it never drops events silently."""
    pub = await Publisher.connect(log_stream)
    nats_server.stop()
    ids = [await pub.publish(event) for event in _progress(3)]
    with pytest.raises(PublishError, match="3 events not acknowledged"):
        await pub.close(timeout=0.3)
    assert [failure.event_id for failure in pub.failed] == ids
    with pytest.raises(LogError, match="not connected"):
        await pub.publish(_progress(1)[0])


def test_the_sync_publisher_works_from_plain_code(log_stream: LogConfig) -> None:
    """SyncPublisher publishes, waits and flushes without an event loop in the caller."""
    events = _progress(100)
    with SyncPublisher(log_stream, encoding="msgpack") as pub:
        for event in events[:-1]:
            assert pub.publish(event) == event.id
        assert pub.publish_and_wait(events[-1]) == len(events)
        pub.flush(timeout=5)
        assert pub.failed == []
    with pytest.raises(LogError, match="closed"):
        pub.publish(events[0])


def test_the_sync_publisher_reports_a_missing_stream_and_stops_its_thread(
    log_config: LogConfig,
) -> None:
    """A failed connect leaves no thread behind."""
    with pytest.raises(StreamNotFoundError):
        SyncPublisher(log_config)
    assert all(thread.name != "workledger-publisher" for thread in threading.enumerate())
