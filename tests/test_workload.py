"""The workload generator: seeded, stamped, streaming, and a fleet that keeps its own rules.

Benchmarks trust it to stand for a real fleet, so these tests replay its output event by event
(slots, pool and queue limits, paused pools, task stories) and fold it into the reference store,
which must agree with the replay.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import codec
from workledger.core import events as ev
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore
from workledger.workload import Fleet, Workload, generate

from .test_demo import _TERMINAL, _Replay

shapes = st.builds(
    Workload,
    seed=st.integers(0, 2**32),
    pools=st.integers(1, 8),
    queues_per_pool=st.integers(1, 5),
    workers=st.integers(1, 60),
    slots_per_worker=st.integers(1, 6),
)


def take(workload: Workload, count: int) -> list[ev.Event]:
    return list(itertools.islice(generate(workload), count))


@settings(max_examples=25)
@given(workload=shapes, size=st.integers(0, 3_000))
def test_the_same_seed_gives_the_same_events(workload: Workload, size: int) -> None:
    """Reproducible: two streams of one workload are equal event for event, ids and times too."""
    assert take(workload, size) == take(workload, size)


def test_another_seed_or_tag_tells_another_story() -> None:
    """The seed drives every choice; the tag changes ids only, so two runs never collide."""
    base = take(Workload(seed=1), 2_000)
    assert take(Workload(seed=2), 2_000) != base
    tagged = take(Workload(seed=1, tag="run2"), 2_000)
    assert [e.type for e in tagged] == [e.type for e in base]
    assert not {e.id for e in tagged} & {e.id for e in base}


@settings(max_examples=15)
@given(workload=shapes)
def test_every_event_is_stamped_unique_in_order_and_valid_on_the_wire(workload: Workload) -> None:
    """``at`` from the virtual clock, never decreasing; ids unique and within the limit; every
    event survives the codec (which enforces the field limits that construction does not)."""
    events = take(workload, 4_000)
    times = [e.at for e in events]
    assert all(at is not None and at >= workload.start for at in times)
    assert times == sorted(times)  # type: ignore[type-var]
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    assert all(0 < len(i) <= 128 for i in ids)
    assert [codec.decode(codec.encode_msgpack(e)) for e in events] == events


@settings(max_examples=20)
@given(workload=shapes, size=st.integers(1_000, 8_000))
def test_the_fleet_keeps_its_rules_and_the_reference_store_agrees(
    workload: Workload, size: int
) -> None:
    """Slots, pool and queue limits and pauses hold at every event; stopped workers held
    nothing; the folded MemoryStore sees the same slot holders as the replay."""
    events = take(workload, size)
    replay = _Replay()
    for event in events:
        replay.apply(event)

    store = fold(events)
    last = events[-1].at
    assert last is not None
    views = store.workers(now=last)
    assert {v.worker.worker for v in views} == set(replay.slots)
    for view in views:
        assert set(view.tasks) == replay.held[view.worker.worker]
        assert len(view.tasks) <= view.worker.slots
    assert {h.task for h in store.slot_holders()} == set(replay.holder)


def test_a_wind_down_closes_every_story() -> None:
    """After ``wind_down`` no task holds a slot and every task has ended."""
    fleet = Fleet(Workload(seed=3, workers=30))
    events = fleet.start()
    while len(events) < 5_000:
        events += fleet.step()
    events += fleet.wind_down()
    replay = _Replay()
    for event in events:
        replay.apply(event)
    assert not replay.holder
    assert all(state in _TERMINAL for state in replay.last.values())
    assert fleet.next_due() is None


def test_a_long_run_shows_every_kind_of_event_and_churn() -> None:
    """Claims, retries then new claims, failures, crashes, cancellations, deploys, silent
    workers, subscriptions, pauses and new priorities all happen; the fleet stays near size."""
    workload = Workload(seed=5, workers=100)
    events = take(workload, 120_000)
    kinds = Counter(e.type for e in events)
    verdicts = {"worker.lost", "worker.forgotten"}  # a reaper's, not producers'
    assert set(kinds) == set(ev.event_types()) - verdicts
    retried = {e.task for e in events if isinstance(e, ev.TaskRetrying)}
    claims = Counter(e.task for e in events if isinstance(e, ev.TaskClaimed))
    assert any(claims[t] > 1 for t in retried), "a retried task is claimed again"

    replay = _Replay()
    for event in events:
        replay.apply(event)
    last = events[-1].at
    assert last is not None
    recent = last - timedelta(seconds=workload.heartbeat_interval * 1.2)
    beating = {e.worker for e in events if isinstance(e, ev.WorkerHeartbeat) and e.at > recent}  # type: ignore[operator]
    assert 0.85 * workload.workers <= len(beating) <= 1.05 * workload.workers
    silent = set(replay.slots) - replay.stopped - beating
    assert silent, "some worker went silent without stopping"


def test_a_paused_pool_claims_nothing_until_resumed() -> None:
    """Claims in a pool stop between its pause and its resume (the replay also asserts it)."""
    events = take(Workload(seed=9, workers=60, pause_rate=20.0), 60_000)
    paused: dict[str, bool] = {}
    pauses = 0
    for event in events:
        if isinstance(event, ev.PoolUpdated) and event.paused is not msgspec.UNSET:
            paused[event.pool] = event.paused
            pauses += event.paused
        elif isinstance(event, ev.TaskClaimed):
            assert event.pool is not None
            assert not paused.get(event.pool, False)
    assert pauses >= 2


def test_task_durations_are_skewed_and_differ_by_task_key() -> None:
    """Per task key, run times are right-skewed (mean above median, a long tail), and keys of
    one stage and pool have different medians."""
    events = take(Workload(seed=11, workers=150, tail_share=0.05), 150_000)
    started: dict[str, ev.Event] = {}
    meta: dict[str, tuple[str, str, str]] = {}
    runs: defaultdict[tuple[str, str, str], list[float]] = defaultdict(list)
    for event in events:
        if isinstance(event, ev.TaskSubmitted):
            meta[event.task] = (event.pool, event.stage or "", event.task_key or "")
        elif isinstance(event, ev.TaskStarted):
            started[event.task] = event
        elif isinstance(event, ev.TaskCompleted) and event.task in started:
            began = started[event.task].at
            assert began is not None
            assert event.at is not None
            runs[meta[event.task]].append((event.at - began).total_seconds())
    big = {k: v for k, v in runs.items() if len(v) >= 200}
    assert len(big) >= 6
    for lengths in big.values():
        assert statistics.mean(lengths) > statistics.median(lengths)
        assert max(lengths) > 3 * statistics.median(lengths)
    by_stage: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    for (pool, stage, _key), lengths in big.items():
        by_stage[pool, stage].append(statistics.median(lengths))
    spreads = [max(m) / min(m) for m in by_stage.values() if len(m) > 1]
    assert spreads
    assert max(spreads) > 1.2


def test_the_fleet_runs_near_its_target_utilization() -> None:
    """Busy slots over live slots, time-weighted after a warm-up, is near ``utilization``
    (a little under: limits, pauses and workers that serve only some keys leave gaps)."""
    workload = Workload(seed=2, utilization=0.7)
    slots: dict[str, int] = {}
    holders: set[str] = set()
    busy = capacity = 0.0
    last = 0.0
    for event in take(workload, 150_000):
        assert event.at is not None
        now = (event.at - workload.start).total_seconds()
        if now > 30:  # warmed up
            busy += len(holders) * (now - last)
            capacity += sum(slots.values()) * (now - last)
        last = now
        match event:
            case ev.WorkerStarted():
                slots[event.worker] = event.slots
            case ev.WorkerStopped():
                del slots[event.worker]
            case ev.TaskClaimed():
                holders.add(event.task)
            case ev.TaskRetrying() | ev.TaskCompleted() | ev.TaskFailed():
                holders.discard(event.task)
            case ev.TaskCancelled() | ev.TaskCrashed():
                holders.discard(event.task)
    assert 0.55 <= busy / capacity <= 0.75


def test_a_hundred_thousand_workers_start_and_work() -> None:
    """The benchmark fleet: 100k distinct workers are announced, then tasks flow."""
    events = take(Workload(workers=100_000), 130_000)
    started = [e for e in events if isinstance(e, ev.WorkerStarted)]
    assert len(started) == 100_000
    assert len({e.worker for e in started}) == 100_000
    kinds = Counter(e.type for e in events)
    assert kinds["task.completed"] > 0
    assert kinds["task.claimed"] > 1_000


@pytest.mark.parametrize(
    "bad",
    [
        {"workers": 0},
        {"pools": 0},
        {"utilization": 0.0},
        {"heartbeat_interval": -1.0},
        {"retry_rate": 0.5, "failure_rate": 0.5},
        {"tail_alpha": 1.0},
        {"seed": -1},
        {"tag": "x" * 33},
        {"start": datetime(2026, 1, 1)},  # naive
    ],
)
def test_an_impossible_workload_is_refused(bad: dict[str, object]) -> None:
    """A shape the simulation cannot honour is a ValueError naming the field."""
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        Workload(**bad)  # type: ignore[arg-type]


def test_the_stream_is_endless_and_lazy() -> None:
    """Nothing is kept but live state: the generator is an iterator, not a list."""
    stream = generate(Workload(workers=5))
    assert iter(stream) is stream
    assert math.isfinite(sum(1 for _ in itertools.islice(stream, 20_000)))


def fold(events: list[ev.Event]) -> MemoryStore:
    """Fold as the daemon does, in batches of sequenced events."""
    store = MemoryStore()
    items = [Sequenced(i + 1, "", e) for i, e in enumerate(events)]
    for start in range(0, len(items), 1_000):
        batch = items[start : start + 1_000]
        store.apply(Batch(events=batch, last_seq=batch[-1].seq))
    return store
