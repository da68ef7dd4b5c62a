"""A store that writes to disk applies in its own thread (a lane): what waits for it is
applied together, and the in-memory stores are not held back by it."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher
from workledger.feed import open_feed
from workledger.projections.daemon import _QUIET_SECONDS, Projector, ProjectorConfig, _Bulk
from workledger.projections.feed import FeedFilter
from workledger.queries import Queries
from workledger.stores.base import Batch
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

from .test_fold import at

pytestmark = pytest.mark.anyio


class _Gated(MemoryStore):
    """A MemoryStore applied in a lane whose first ``apply`` waits until the test opens it:
    a disk write that takes as long as the test wants."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[Batch] = []

    def apply(self, batch: Batch) -> None:
        self.entered.set()
        self.gate.wait(timeout=30)
        self.batches.append(batch)
        super().apply(batch)


def _started(worker: int) -> ev.WorkerStarted:
    return ev.WorkerStarted(worker=f"w{worker}", pool="etl", slots=1, **at(worker))


async def _entered(store: _Gated) -> None:
    """Until the slow store is inside its first write."""
    with anyio.fail_after(10):
        while not store.entered.is_set():  # noqa: ASYNC110 (set in the lane's thread)
            await anyio.sleep(0.01)


async def _applied(store: MemoryStore, seq: int) -> None:
    with anyio.fail_after(10):
        while store.stats().checkpoint < seq:  # noqa: ASYNC110 (no event for one store)
            await anyio.sleep(0.01)


async def test_batches_waiting_for_a_slow_store_are_applied_as_one_while_memory_goes_on(
    log_stream: LogConfig,
) -> None:
    memory, slow = MemoryStore(), _Gated()
    projector = Projector(ProjectorConfig(log=log_stream), [memory, slow])
    async with Publisher(log_stream) as pub, anyio.create_task_group() as tg:
        await tg.start(projector.run)
        try:
            first = await pub.publish_and_wait(_started(0))
            await _entered(slow)
            for worker in range(1, 5):
                seq = await pub.publish_and_wait(_started(worker))
                await _applied(memory, seq)
            assert slow.stats().checkpoint == 0
            assert projector.checkpoint == 0  # nothing is in every store yet
        finally:
            slow.gate.set()
        assert await projector.wait_for(seq, timeout=10)
        tg.cancel_scope.cancel()
    assert [b.last_seq for b in slow.batches] == [first, seq]
    assert [i.seq for i in slow.batches[1].events] == list(range(first + 1, seq + 1))
    assert slow.read_model() == memory.read_model()


async def test_the_fold_waits_once_the_backlog_for_a_slow_store_is_full(
    log_stream: LogConfig,
) -> None:
    memory, slow = MemoryStore(), _Gated()
    config = ProjectorConfig(log=log_stream, lane_backlog=2)
    projector = Projector(config, [memory, slow])
    async with Publisher(log_stream) as pub, anyio.create_task_group() as tg:
        await tg.start(projector.run)
        try:
            await pub.publish_and_wait(_started(0))
            await _entered(slow)
            # Two events wait for the slow store (the backlog is full); the fold applies a
            # third to memory, then waits to hand it on, and so never takes a fourth.
            for worker in range(1, 4):
                seq = await pub.publish_and_wait(_started(worker))
                await _applied(memory, seq)
            held = await pub.publish_and_wait(_started(4))
            await anyio.sleep(0.5)
            assert memory.stats().checkpoint == seq
        finally:
            slow.gate.set()
        assert await projector.wait_for(held, timeout=10)
        tg.cancel_scope.cancel()
    assert memory.read_model() == slow.read_model()


async def test_the_live_feed_and_live_listeners_are_told_before_a_slow_store_has_written(
    log_stream: LogConfig,
) -> None:
    """What the in-memory store holds is live at once; ``listeners`` (every store holds it)
    hear of it only after the slow store's write."""
    memory, slow = MemoryStore(), _Gated()
    projector = Projector(ProjectorConfig(log=log_stream), [memory, slow])
    everywhere: list[int] = []
    projector.listeners.append(lambda batch: everywhere.append(batch.last_seq))
    feed = open_feed(Queries(memory, projector=projector))
    assert feed is not None
    sub = feed.subscribe(FeedFilter())
    async with Publisher(log_stream) as pub, anyio.create_task_group() as tg:
        await tg.start(projector.run)
        try:
            seq = await pub.publish_and_wait(_started(0))
            got = await sub.next(10)
            assert [item.seq for item in got] == [seq]
            assert feed.item(got[0]).view is not None  # the worker, from the in-memory store
            assert everywhere == []
        finally:
            slow.gate.set()
        assert await projector.wait_for(seq, timeout=10)
        tg.cancel_scope.cancel()
    assert everywhere == [seq]


class _Bulky(DuckDBStore):
    """A real DuckDB store whose bulk is small enough for a test, recording its batches."""

    bulk_events = 500

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[Batch] = []

    def apply(self, batch: Batch) -> None:
        self.batches.append(batch)
        super().apply(batch)


async def test_under_a_heavy_load_a_store_that_names_its_bulk_gets_that_many_at_a_time(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    memory, bulky = MemoryStore(), _Bulky(tmp_path / "bulky.duckdb")
    projector = Projector(ProjectorConfig(log=log_stream, lane_hold=30), [memory, bulky])
    async with Publisher(log_stream) as pub, anyio.create_task_group() as tg:
        await tg.start(projector.run)
        # The file's first transaction is slow (its schema, the deriver thread): out of the way.
        assert await projector.wait_for(await pub.publish_and_wait(_started(0)), timeout=10)
        # 30 bursts of 100, 10 ms apart: each is a batch, which the lane alone would write
        # at once, in one transaction each (or a few together, while one is written).
        for burst in range(30):
            for worker in range(burst * 100 + 1, burst * 100 + 101):
                await pub.publish(_started(worker))
            await pub.flush()
            await anyio.sleep(0.01)
        assert await projector.wait_for(3001, timeout=30)
        tg.cancel_scope.cancel()
    sizes = [len(batch.events) for batch in bulky.batches[1:]]
    assert sum(sizes) == 3000
    # Until 500 events were handed over, the lane cannot tell a heavy load; from then on it
    # waits for 500 (a pause of more than 50 ms, on a busy machine, would end a wait early).
    assert sum(size for size in sizes if size >= _Bulky.bulk_events) >= 1500, sizes
    with bulky:
        assert bulky.read_model() == memory.read_model()


async def test_at_a_light_load_the_lane_never_waits_for_a_bulk(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    memory, bulky = MemoryStore(), _Bulky(tmp_path / "bulky.duckdb")
    config = ProjectorConfig(log=log_stream, lane_hold=60)  # a wait would outlast the test
    projector = Projector(config, [memory, bulky])
    async with Publisher(log_stream) as pub, anyio.create_task_group() as tg:
        await tg.start(projector.run)
        for worker in range(3):
            seq = await pub.publish_and_wait(_started(worker))
            assert await projector.wait_for(seq, timeout=10)
        tg.cancel_scope.cancel()
    bulky.close()
    assert [len(batch.events) for batch in bulky.batches] == [1, 1, 1]


def test_a_lane_waits_for_a_bulk_only_while_the_load_lasts() -> None:
    bulk = _Bulk(events=100, hold=2.0)
    bulk.handed(10.0, 60)
    assert bulk.until(10.0, waiting=60) is None  # 60 events in 2 s: a light load
    bulk.handed(10.1, 60)
    assert bulk.until(10.1, waiting=120) is None  # a bulk waits: write it
    # The lane took the 120. With 150 handed over in 2 s, 30 waiting wait for more, until
    # twice the gap between the last two batches after the last: then the load is over.
    bulk.handed(10.2, 30)
    assert bulk.until(10.2, waiting=30) == pytest.approx(10.4)
    assert bulk.until(10.4, waiting=30) is None
    bulk.handed(10.21, 30)  # 10 ms after the last: a pause that short never ends a wait
    assert bulk.until(10.21, waiting=60) == pytest.approx(10.21 + _QUIET_SECONDS)
    assert bulk.until(10.27, waiting=60) is None


def test_a_lane_stops_waiting_when_the_heavy_load_leaves_its_window() -> None:
    bulk = _Bulk(events=100, hold=2.0)
    bulk.handed(0.0, 150)  # written at once
    bulk.handed(1.5, 10)  # 1.5 s later: no pause yet, but the 150 leave the window at 2 s
    assert bulk.until(1.5, waiting=10) == pytest.approx(2.0)
    assert bulk.until(2.0, waiting=10) is None


def test_a_store_without_a_bulk_is_never_held() -> None:
    bulk = _Bulk(events=0, hold=2.0)
    bulk.handed(1.0, 1_000_000)
    assert bulk.until(1.0, waiting=0) is None


def test_a_lane_remembers_only_the_batches_of_the_last_hold_seconds() -> None:
    """A daemon runs for months: what the lane counts must not grow with what it handed."""
    bulk = _Bulk(events=100, hold=2.0)
    for second in range(10_000):
        bulk.handed(float(second), 1000)  # never asked: the lane was always behind
    assert len(bulk._handed) == 2  # its whole memory
