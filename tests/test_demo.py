"""The demo workload against a real nats-server: read the stream back and replay it.

The demo is what new users see first, and its fleet claims to keep its own rules, so these tests
fold its log by hand: slots and limits respected, paused pools idle, task stories in order.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.demo import DemoStats, demo_workload, run_demo
from workledger.workload import Fleet

ReadStream = Callable[[LogConfig], Awaitable[list[Any]]]

# Which event may follow which in one task's story; ``None`` is "nothing yet".
_HOLDING = {"task.claimed", "task.started", "task.progress"}
_TERMINAL = {"task.completed", "task.failed", "task.cancelled", "task.crashed"}
_NEXT: dict[str | None, set[str]] = {
    None: {"task.submitted"},
    "task.submitted": {"task.claimed", "task.cancelled"},
    "task.claimed": {"task.started", "task.cancelled", "task.crashed"},
    "task.started": {"task.progress", "task.retrying", *_TERMINAL},
    "task.progress": {"task.progress", "task.retrying", *_TERMINAL},
    "task.retrying": {"task.claimed", "task.cancelled"},
}


@dataclasses.dataclass
class _Replay:
    """The demo's log folded in stream order, checking the fleet's rules as it goes."""

    slots: dict[str, int] = dataclasses.field(default_factory=dict)
    held: dict[str, set[str]] = dataclasses.field(default_factory=lambda: defaultdict(set))
    holder: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> worker
    task_pool: dict[str, str] = dataclasses.field(default_factory=dict)
    pool_limit: dict[str, int | None] = dataclasses.field(default_factory=dict)
    pool_held: Counter[str] = dataclasses.field(default_factory=Counter)
    task_queue: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    queue_limit: dict[tuple[str, str], int | None] = dataclasses.field(default_factory=dict)
    queue_held: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    paused: set[str] = dataclasses.field(default_factory=set)
    last: dict[str, str | None] = dataclasses.field(
        default_factory=lambda: defaultdict(lambda: None)
    )
    stopped: set[str] = dataclasses.field(default_factory=set)
    progress: dict[str, float] = dataclasses.field(default_factory=dict)

    def apply(self, event: ev.Event) -> None:
        match event:
            case ev.WorkerStarted():
                self.slots[event.worker] = event.slots
                self.stopped.discard(event.worker)
            case ev.WorkerHeartbeat() | ev.WorkerSubscribed():
                assert event.worker in self.slots
                assert event.worker not in self.stopped
            case ev.WorkerStopped():
                assert not self.held[event.worker], "a worker stopped while holding tasks"
                self.stopped.add(event.worker)
            case ev.PoolCreated() | ev.PoolUpdated():
                self._pool(event)
            case ev.QueueCreated() | ev.QueueUpdated():
                if event.concurrency_limit is not msgspec.UNSET:
                    self.queue_limit[event.pool, event.queue] = event.concurrency_limit
            case ev.TaskSubmitted() | ev.TaskClaimed() | ev.TaskStarted() | ev.TaskProgress():
                self._task(event)
            case ev.TaskRetrying() | ev.TaskCompleted() | ev.TaskFailed():
                self._task(event)
            case ev.TaskCancelled() | ev.TaskCrashed():
                self._task(event)

    def _pool(self, event: ev.PoolCreated | ev.PoolUpdated) -> None:
        if event.concurrency_limit is not msgspec.UNSET:
            self.pool_limit[event.pool] = event.concurrency_limit
        if event.paused is not msgspec.UNSET:
            (self.paused.add if event.paused else self.paused.discard)(event.pool)

    def _task(self, event: ev.Event) -> None:
        task = event.entity_key
        assert event.type in _NEXT.get(self.last[task], set()), (task, self.last[task], event)
        self.last[task] = event.type
        match event:
            case ev.TaskSubmitted():
                self.task_pool[task] = event.pool
                self.task_queue[task] = (event.pool, event.queue)
            case ev.TaskClaimed():
                self._claim(task, event)
            case ev.TaskStarted():
                assert self.holder[task] == event.worker, "started on another worker"
                self.progress[task] = 0.0
            case ev.TaskProgress():
                assert event.progress is not None
                assert event.progress >= self.progress[task]
                self.progress[task] = event.progress
            case _:  # retrying or terminal: the slot, if any, is free again
                self._release(task)

    def _claim(self, task: str, event: ev.TaskClaimed) -> None:
        pool = self.task_pool[task]
        assert pool not in self.paused, f"claimed in paused pool {pool!r}"
        assert event.worker in self.slots
        assert event.worker not in self.stopped
        self.held[event.worker].add(task)
        self.holder[task] = event.worker
        self.pool_held[pool] += 1
        assert len(self.held[event.worker]) <= self.slots[event.worker], "more tasks than slots"
        limit = self.pool_limit.get(pool)
        assert limit is None or self.pool_held[pool] <= limit, f"pool {pool!r} over its limit"
        queue = self.task_queue[task]
        self.queue_held[queue] += 1
        limit = self.queue_limit.get(queue)
        assert limit is None or self.queue_held[queue] <= limit, f"queue {queue} over its limit"

    def _release(self, task: str) -> None:
        worker = self.holder.pop(task, None)
        if worker is not None:
            self.held[worker].discard(task)
            self.pool_held[self.task_pool[task]] -= 1
            self.queue_held[self.task_queue[task]] -= 1


@pytest.mark.anyio
async def test_the_demo_fleet_keeps_its_rules_in_every_event_it_publishes(
    log_config: LogConfig, read_stream: ReadStream
) -> None:
    """A seeded run publishes every event family, within slots and limits, in sane order."""
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            seen: DemoStats = await tg.start(
                lambda task_status: run_demo(
                    log_config, seed=7, speed=40, duration=3, task_status=task_status
                )
            )
            announced = Counter(seen.counts)
        stats = seen  # the same object, final once the demo returned
        messages = await read_stream(log_config)

    events = [message.event for message in messages]  # read_stream decodes every one
    assert len(events) == stats.total
    assert Counter(e.type for e in events) == stats.counts
    assert set(announced) == {"pool.created", "queue.created", "worker.started"}
    verdicts = {"worker.lost", "worker.forgotten"}  # the daemon's reaper sends these, not producers
    assert set(stats.counts) == set(ev.event_types()) - verdicts, "every producer event appears"
    assert {e.pool for e in events if isinstance(e, ev.PoolCreated)} == {
        "etl",
        "ml.gpu",
        "web hooks",
    }

    replay = _Replay()
    for event in events:
        replay.apply(event)
    assert not replay.holder, "the wind-down leaves no task holding a slot"
    assert all(state in _TERMINAL for state in replay.last.values())
    silent = set(replay.slots) - replay.stopped
    assert silent, "some worker went silent without stopping"


@pytest.mark.anyio
async def test_the_same_seed_tells_the_same_story(
    log_config: LogConfig, read_stream: ReadStream
) -> None:
    """Two runs with one seed publish the same events but for ids, times and task ids."""
    other = msgspec.structs.replace(
        log_config, stream=f"{log_config.stream}_2", subject_prefix=f"{log_config.subject_prefix}2"
    )
    with anyio.fail_after(10):
        for config in (log_config, other):
            await run_demo(config, workers=6, seed=11, speed=40, duration=0.75)
        first, second = [[m.event for m in await read_stream(c)] for c in (log_config, other)]

    assert len(first) > 100
    assert _story(first) == _story(second)


def _story(events: list[ev.Event]) -> list[dict[str, Any]]:
    """The events without what legitimately differs per run; task ids by first appearance."""
    tasks: dict[str, str] = {}
    story = []
    for event in events:
        fields = msgspec.structs.asdict(event)
        del fields["id"], fields["at"]
        if "task" in fields:
            fields["task"] = tasks.setdefault(fields["task"], f"task-{len(tasks)}")
        story.append({"type": event.type, **fields})
    return story


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32), workers=st.integers(8, 40))
def test_two_demo_minutes_show_every_producer_event_whatever_the_seed(
    seed: int, workers: int
) -> None:
    """The demo's churn is paced so that a short run (as in `make run`'s first look) has it all,
    and its wind-down leaves every task ended."""
    fleet = Fleet(demo_workload(workers=workers, seed=seed))
    events = fleet.start()
    while (due := fleet.next_due()) is not None and due <= 120:
        events += fleet.step()
    events += fleet.wind_down()
    verdicts = {"worker.lost", "worker.forgotten"}
    assert {e.type for e in events} == set(ev.event_types()) - verdicts
    replay = _Replay()
    for event in events:
        replay.apply(event)
    assert not replay.holder
