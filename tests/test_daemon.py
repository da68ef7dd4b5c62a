"""The daemon end to end on a real nats-server: stream in, read model out."""

from __future__ import annotations

import gc
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import anyio
import nats.aio.subscription
import pytest
from nats.aio.msg import Msg

from workledger.core import codec
from workledger.core import events as ev
from workledger.core.errors import LogError
from workledger.core.log import LogConfig, connect, subject_for
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Publisher
from workledger.projections import _position
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.projections.views import TaskStatus, WorkerStatus
from workledger.queries import Queries
from workledger.stores.base import Store
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

from .conftest import read_raw
from .histories import BASE, fleet_history
from .test_fold import at, fold

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def projecting(config: LogConfig, store: MemoryStore) -> AsyncIterator[Projector]:
    """A projector running on ``store`` for the duration of the block."""
    projector = Projector(ProjectorConfig(log=config), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        yield projector
        tg.cancel_scope.cancel()


async def publish(config: LogConfig, events: list[ev.Event]) -> int:
    """Publish through the SDK; returns the last stream sequence."""
    async with Publisher(config) as pub:
        for event in events[:-1]:
            await pub.publish(event)
        return await pub.publish_and_wait(events[-1])


async def publish_raw(config: LogConfig, payloads: list[tuple[str, bytes]]) -> int:
    """Publish bytes as a foreign producer would: no SDK, no dedupe header."""
    nc = await connect(config)
    try:
        js = nc.jetstream()
        seq = 0
        for subject, data in payloads:
            seq = (await js.publish(subject, data, stream=config.stream)).seq
        return seq
    finally:
        await nc.close()


def one_of_each() -> list[ev.Event]:
    """A short history that uses every event type."""
    return [
        ev.PoolCreated(pool="etl", concurrency_limit=4, **at(0)),
        ev.QueueCreated(pool="etl", queue="fast lane", priority=1, **at(0.5)),
        ev.WorkerStarted(
            worker="w.1",
            pool="etl",
            queues=("fast lane",),
            task_keys=("a",),
            slots=2,
            heartbeat_interval=10,
            labels={"zone": "eu"},
            host="h1",
            pid=42,
            **at(1),
        ),
        ev.WorkerSubscribed(worker="w.1", pool="etl", task_keys=("b",), **at(2)),
        ev.WorkerHeartbeat(worker="w.1", pool="etl", **at(3)),
        ev.TaskSubmitted(
            task="t 1",
            pool="etl",
            queue="fast lane",
            task_key="a",
            priority=2,
            stage="parse",
            item="file.csv",
            **at(4),
        ),
        ev.TaskClaimed(task="t 1", worker="w.1", **at(5)),
        ev.TaskStarted(task="t 1", worker="w.1", **at(6)),
        ev.TaskProgress(task="t 1", progress=0.5, message="halfway", **at(7)),
        ev.TaskRetrying(task="t 1", attempt=1, error="timeout", **at(8)),
        ev.TaskClaimed(task="t 1", worker="w.1", **at(9)),
        ev.TaskStarted(task="t 1", worker="w.1", **at(10)),
        ev.TaskCompleted(task="t 1", **at(11)),
        ev.TaskSubmitted(task="t2", pool="etl", queue="fast lane", **at(12)),
        ev.TaskClaimed(task="t2", worker="w.1", **at(13)),
        ev.TaskFailed(task="t2", error="bad input", **at(14)),
        ev.TaskSubmitted(task="t3", pool="etl", queue="fast lane", **at(15)),
        ev.TaskCancelled(task="t3", **at(16)),
        ev.TaskSubmitted(task="t4", pool="etl", queue="fast lane", **at(17)),
        ev.TaskStarted(task="t4", worker="w.1", **at(18)),
        ev.TaskCrashed(task="t4", reason="segfault", **at(19)),
        ev.TaskSubmitted(task="t5", pool="etl", queue="fast lane", **at(20)),
        ev.TaskClaimed(task="t5", worker="w.1", **at(21)),
        ev.PoolUpdated(pool="etl", paused=True, **at(22)),
        ev.QueueUpdated(pool="etl", queue="fast lane", concurrency_limit=None, **at(23)),
        ev.WorkerStopped(worker="w.1", pool="etl", reason="deploy", **at(24)),
        ev.WorkerLost(worker="w 2", pool="etl", last_seen=BASE, reason="silent", **at(25)),
        ev.WorkerForgotten(worker="w 2", pool="etl", **at(26)),
    ]


async def test_every_event_type_flows_from_the_stream_into_the_read_model(
    log_stream: LogConfig,
) -> None:
    """What the daemon builds from the stream equals folding the same events directly."""
    history = one_of_each()
    assert {e.type for e in history} == set(ev.event_types())
    last = await publish(log_stream, history)
    store = MemoryStore()
    async with projecting(log_stream, store) as projector:
        assert await projector.wait_for(last, timeout=10)
    assert store.read_model() == fold(history).read_model()
    task = store.task("t 1")
    assert task is not None
    assert (task.status, task.retries, task.stage, task.worker) == (
        TaskStatus.COMPLETED,
        1,
        "parse",
        "w.1",
    )
    statuses = {t: store.task(t).status for t in ("t2", "t3", "t4", "t5")}  # type: ignore[union-attr]
    assert statuses == {
        "t2": TaskStatus.FAILED,
        "t3": TaskStatus.CANCELLED,
        "t4": TaskStatus.CRASHED,
        "t5": TaskStatus.PENDING,
    }
    worker = store.workers(now=BASE + timedelta(seconds=25))[0]
    assert (worker.status, worker.worker.task_keys, worker.tasks, worker.free_slots) == (
        WorkerStatus.STOPPED,
        ("a", "b"),
        ("t5",),
        1,
    )
    assert (store.pools()[0].paused, store.queues()[0].concurrency_limit) == (True, None)


async def test_out_of_order_and_duplicate_delivery_gives_the_same_read_model(
    log_stream: LogConfig,
) -> None:
    """Producers racing each other, and a producer that resends, change nothing."""
    history = fleet_history(600, seed=7)
    rng = random.Random(1)
    shuffled = rng.sample(history, len(history)) + rng.choices(history, k=150)
    payloads = [(subject_for(log_stream.subject_prefix, e), codec.encode_json(e)) for e in shuffled]
    last = await publish_raw(log_stream, payloads)
    store = MemoryStore()
    async with projecting(log_stream, store) as projector:
        assert await projector.wait_for(last, timeout=10)
    assert store.stats().applied == len(shuffled)
    assert store.read_model() == fold(history).read_model()


async def test_malformed_and_unknown_messages_are_set_aside_and_the_daemon_goes_on(
    log_stream: LogConfig,
) -> None:
    """Each bad message is quarantined with its sequence and reason; good ones still apply."""
    prefix = log_stream.subject_prefix
    good = ev.WorkerStarted(worker="w", pool="p", **at(1))
    bad = [
        b"not json at all",
        b'{"type": "worker.exploded", "worker": "w"}',
        b'{"type": "worker.started", "pool": "p"}',
        b'{"type": "task.progress", "task": "t", "progress": 7}',
        b'{"type": "worker.started", "worker": "w", "pool": "p", "at": "2026-01-01T00:00:00"}',
        b"\xff\xfe\x00",
        b"",
    ]
    payloads = [(f"{prefix}.x.worker.w.junk", data) for data in bad]
    payloads.append((subject_for(prefix, good), codec.encode_msgpack(good)))
    last = await publish_raw(log_stream, payloads)
    store = MemoryStore()
    async with projecting(log_stream, store) as projector:
        assert await projector.wait_for(last, timeout=10)
        assert projector.metrics.quarantined == len(bad)
    set_aside = sorted(store.quarantined(), key=lambda q: q.seq)
    assert [q.seq for q in set_aside] == list(range(1, len(bad) + 1))
    assert [q.data for q in set_aside] == bad
    reasons = [q.reason for q in set_aside]
    assert "unknown event type 'worker.exploded'" in reasons[1]
    assert "missing required field `worker`" in reasons[2]
    assert "$.progress" in reasons[3]
    assert "timezone" in reasons[4]
    assert reasons[6] == "empty message"
    assert (store.stats().applied, store.stats().quarantined) == (1, len(bad))
    assert store.read_model().workers == fold([good]).read_model().workers


async def test_events_without_id_or_time_get_them_from_the_stream_deterministically(
    log_stream: LogConfig,
) -> None:
    """A minimal foreign producer may omit id and at; two rebuilds still agree exactly."""
    data = b'{"type": "worker.heartbeat", "worker": "go-worker", "pool": "p"}'
    last = await publish_raw(log_stream, [(f"{log_stream.subject_prefix}.p.worker.g.hb", data)])
    models = []
    for _ in range(2):
        store = MemoryStore()
        async with projecting(log_stream, store) as projector:
            assert await projector.wait_for(last, timeout=10)
        models.append(store.read_model())
    assert models[0] == models[1]
    assert models[0].workers[0].last_seen is not None


async def test_liveness_follows_the_one_rule_with_a_configurable_multiplier(
    log_stream: LogConfig,
) -> None:
    """ONLINE within interval x multiplier of the last event from the worker, then OFFLINE."""
    history = [
        ev.WorkerStarted(worker="w", pool="p", heartbeat_interval=10, **at(0)),
        ev.WorkerHeartbeat(worker="w", pool="p", **at(20)),
        ev.TaskStarted(task="t", worker="w", **at(25)),  # any event from the worker counts
    ]
    last = await publish(log_stream, history)
    store = MemoryStore()
    async with projecting(log_stream, store) as projector:
        assert await projector.wait_for(last, timeout=10)

    def status(seconds: float, multiplier: float = 3) -> WorkerStatus:
        clock = lambda: BASE + timedelta(seconds=seconds)  # noqa: E731
        return Queries(store, multiplier=multiplier, clock=clock).workers()[0].status

    assert status(55) is WorkerStatus.ONLINE
    assert status(55.001) is WorkerStatus.OFFLINE
    assert status(45, multiplier=2) is WorkerStatus.ONLINE
    assert status(46, multiplier=2) is WorkerStatus.OFFLINE


@pytest.mark.slow
async def test_the_daemon_reconnects_after_a_nats_restart_and_misses_nothing(
    log_stream: LogConfig, nats_server: EmbeddedNats
) -> None:
    """The stream outlives the server process; the daemon resumes from where it was."""
    history = fleet_history(2000, seed=11)
    store = MemoryStore()
    async with projecting(log_stream, store) as projector:
        first = await publish(log_stream, history[:1000])
        assert await projector.wait_for(first, timeout=10)
        await anyio.to_thread.run_sync(nats_server.restart)
        last = await publish(log_stream, history[1000:])
        assert await projector.wait_for(last, timeout=30)
    assert store.stats().applied == len(history)
    assert store.read_model() == fold(history).read_model()


def test_querying_unknown_names_does_not_grow_the_store() -> None:
    """Lookups of pools, queues, keys, statuses and tasks that do not exist allocate nothing."""
    store = fold(fleet_history(300, seed=2))
    before = {name: len(value) for name, value in vars(store).items() if hasattr(value, "__len__")}
    now = BASE + timedelta(hours=1)
    for i in range(2000):
        name = f"unknown-{i}"
        store.workers(now=now, pool=name, queue=name, task_keys=[name, f"{name}-b"])
        store.tasks(pool=name, queue=name, worker=name)
        store.slot_holders(pool=name, queue=name)
        store.slot_counts(pool=name)
        store.queues(pool=name)
        assert store.task(name) is None
    after = {name: len(value) for name, value in vars(store).items() if hasattr(value, "__len__")}
    assert after == before


async def _catch_up_on_envelopes(
    config: ProjectorConfig, history: list[ev.Event], store: Store
) -> tuple[Projector, int]:
    """Publish ``history`` in envelopes of 100, then start a daemon on the backlog and let it
    catch up into ``store``: the daemon and the stream's last sequence."""
    async with Publisher(config.log, batch_size=100, linger=60) as pub:
        for event in history:
            await pub.publish(event)
        await pub.flush()
    projector = Projector(config, [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        nc = await connect(config.log)
        try:
            last = int((await nc.jetstream().stream_info(config.log.stream)).state.last_seq)
        finally:
            await nc.close()
        assert await projector.wait_for(last, timeout=60)
        tg.cancel_scope.cancel()
    return projector, last


async def test_batches_are_budgeted_in_bytes_so_envelopes_cannot_make_huge_ones(
    log_stream: LogConfig,
) -> None:
    """A batch stops at ``max_batch_bytes``: each of these envelopes is bigger than the budget,
    so the daemon applies one message per batch, and still folds every event."""
    history = fleet_history(600, seed=5)
    config, store = ProjectorConfig(log=log_stream, max_batch_bytes=1), MemoryStore()
    projector, last = await _catch_up_on_envelopes(config, history, store)
    assert last < len(history), "the events travelled in envelopes"
    assert projector.metrics.batches == last, "one message per batch"
    assert store.read_model() == fold(history).read_model()


async def test_a_daemon_behind_the_stream_folds_more_than_a_flow_control_window_a_batch(
    log_stream: LogConfig,
) -> None:
    """JetStream sends a push consumer ~256 KiB (~20 of these envelopes), then waits for its
    flow-control reply: a daemon far behind gathers several such windows into each batch
    instead of folding each alone (it did: ~20 envelopes a batch, whatever the backlog)."""
    history, store = fleet_history(30_000, seed=6), MemoryStore()
    config = ProjectorConfig(log=log_stream)
    projector, last = await _catch_up_on_envelopes(config, history, store)
    assert last >= 250, "a backlog of many flow-control windows"
    assert projector.metrics.batches <= last / 40, "at least two windows a batch on average"
    assert store.stats().applied == len(history)


async def test_a_daemon_with_no_in_memory_store_never_waits_for_more_windows(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """Waiting for windows pays only for an in-memory store: a DuckDB store's lane joins what
    waits for it by itself, and a rebuild, bound by its event loop, was slower for the wait.
    So the same backlog as above goes in about one window a batch (~15; ~3 if it waited)."""
    history = fleet_history(30_000, seed=6)
    with DuckDBStore(tmp_path / "lane.duckdb") as store:
        config = ProjectorConfig(log=log_stream)
        projector, last = await _catch_up_on_envelopes(config, history, store)
        assert store.stats().applied == len(history)
    assert last >= 250, "a backlog of many flow-control windows"
    assert projector.metrics.batches > last / 60, "no batch gathered many windows"


async def test_the_subscription_has_no_pending_limits_so_nats_py_never_drops_a_message(
    log_stream: LogConfig,
) -> None:
    """nats-py drops messages past a subscription's pending limits ("slow consumer") after
    noting their sequence, so an ordered consumer never fetches them again. The daemon's
    subscription has none (0); back-pressure is its inbox's bound and flow control."""
    projector = Projector(ProjectorConfig(log=log_stream), [MemoryStore()])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        subscriptions = list(projector._client._subs.values())  # type: ignore[union-attr]
        tg.cancel_scope.cancel()
    consumers = [s for s in subscriptions if s._jsi is not None]  # not the request inbox
    assert len(consumers) == 1
    assert (consumers[0]._pending_msgs_limit, consumers[0]._pending_bytes_limit) == (0, 0)
    assert nats.aio.subscription.DEFAULT_SUB_PENDING_MSGS_LIMIT > 0, "the default would drop"


async def test_the_gc_thresholds_are_raised_while_daemons_run_and_restored_after(
    log_stream: LogConfig,
) -> None:
    """The first daemon to start raises them, the last to stop restores them; None leaves
    them alone."""
    before = gc.get_threshold()
    relaxed = ProjectorConfig().gc_thresholds
    assert relaxed is not None
    assert relaxed[0] > before[0]
    async with projecting(log_stream, MemoryStore()):
        assert gc.get_threshold() == relaxed
        async with projecting(log_stream, MemoryStore()):
            assert gc.get_threshold() == relaxed
        assert gc.get_threshold() == relaxed  # the first one still runs
    assert gc.get_threshold() == before
    untouched = Projector(ProjectorConfig(log=log_stream, gc_thresholds=None), [MemoryStore()])
    async with anyio.create_task_group() as tg:
        await tg.start(untouched.run)
        assert gc.get_threshold() == before
        tg.cancel_scope.cancel()
    assert gc.get_threshold() == before


async def test_the_stream_sequence_is_read_from_the_reply_as_nats_py_reads_it(
    log_stream: LogConfig,
) -> None:
    """The daemon reads each sequence from the reply subject alone (``metadata`` parses
    everything): the same number, for both reply layouts, and ``metadata`` without a reply."""
    await publish(log_stream, fleet_history(2, seed=5))
    for msg in await read_raw(log_stream):
        assert _position.stream_seq(msg) == msg.metadata.sequence.stream
    with_domain = Msg(None, "s", "$JS.ACK.hub.ACCHASH.S.c.1.42.7.1700000000000000000.3.tok", b"")
    assert _position.stream_seq(with_domain) == with_domain.metadata.sequence.stream == 42
    no_reply = SimpleNamespace(metadata=SimpleNamespace(sequence=SimpleNamespace(stream=9)))
    assert _position.stream_seq(no_reply) == 9


async def test_a_hole_the_stream_still_holds_stops_the_daemon_instead_of_counting_a_loss(
    log_stream: LogConfig,
) -> None:
    """Messages a client lost on the way (nats-py drops a 'slow consumer's') must never pass for
    messages gone from the stream: even with allow_gap, such a hole is an error. A hole the
    stream really lacks is counted as missed, as before."""
    last = await publish(log_stream, fleet_history(5, seed=3))
    nc = await connect(log_stream)
    try:
        messages = await read_raw(log_stream)
        assert len(messages) == last
        holey = [(m.metadata.sequence.stream, m) for m in messages[:2] + messages[3:]]
        # message 3 skipped, though the stream has it
        projector = Projector(ProjectorConfig(log=log_stream, allow_gap=True), [MemoryStore()])
        projector._js = nc.jetstream()
        with pytest.raises(LogError, match="holds message 3 but it was not delivered"):
            await projector._apply(holey)
        assert projector.metrics.missed == 0
        await nc.jetstream().delete_msg(log_stream.stream, 3)
        await projector._apply(holey)
        assert projector.metrics.missed == 1
        assert projector.checkpoint == last
    finally:
        await nc.close()
