"""A store that writes to disk applies in its own thread (a lane): what waits for it is
applied together, and the in-memory stores are not held back by it."""

from __future__ import annotations

import threading

import anyio
import pytest

from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher
from workledger.feed import open_feed
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.projections.feed import FeedFilter
from workledger.queries import Queries
from workledger.stores.base import Batch
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
