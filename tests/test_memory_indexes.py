"""The in-memory store's indexes answer exactly what a scan of the fold would, for any history.

Each test folds a random history into a :class:`MemoryStore` in random batches, then compares its
indexed answers with a brute-force computation over a fresh :class:`Ledger`'s views: the worker
filters and limits at any clock, slot holders and counts (a task without a pool counts in its
worker's, which can move), readiness, and the lazily derived slot stretches and sessions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.projections.fold import Ledger
from workledger.projections.liveness import liveness
from workledger.projections.utilization import GROUPINGS, utilization
from workledger.projections.views import (
    SlotCount,
    SlotHolder,
    TaskView,
    WorkerStatus,
    WorkerView,
    WorkerWithStatus,
)
from workledger.readiness import readiness, store_readiness
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore

from .histories import BASE, KEYS, POOLS, QUEUES, WORKERS, histories

_PROPERTY = settings(max_examples=150, deadline=None)

nows = st.sampled_from([-100, 0, 20, 100, 300, 590, 700, 2000]).map(
    lambda s: BASE + timedelta(seconds=s)
) | st.just(datetime(1, 1, 1, tzinfo=UTC))
multipliers = st.sampled_from([0.5, 1.0, 3.0])
pools = st.sampled_from([None, *POOLS, "p.x", "nope"])
queues = st.sampled_from([None, *QUEUES, "qx"])
statuses = st.none() | st.sampled_from(WorkerStatus)
limits = st.none() | st.integers(0, 4)
label_sets = st.dictionaries(st.sampled_from(["zone", "gpu"]), st.sampled_from(["a", "b", "x"]))


@st.composite
def folded(draw: st.DrawFn, stretch: int = 1) -> tuple[list[ev.Event], MemoryStore]:
    """A history applied in random batches, with reads between some of them.

    ``stretch`` multiplies every time's distance from ``BASE`` (600 makes ten minutes 100 hours).
    """
    history = draw(histories(max_size=80)) + draw(_bystanders())
    history = [_stretched(e, stretch) for e in history]
    cuts = sorted(draw(st.sets(st.integers(1, max(len(history), 1)), max_size=5)))
    store, start = MemoryStore(), 0
    for cut in [*cuts, len(history)]:
        chunk = history[start:cut]
        items = [Sequenced(start + i + 1, "s", e) for i, e in enumerate(chunk)]
        store.apply(Batch(events=items, last_seq=max(cut, 1)))
        if draw(st.booleans()):  # derive stretches and sessions now, so later ones go stale
            store.read_model()
        start = cut
    return history, store


def _stretched(event: ev.Event, factor: int) -> ev.Event:
    changes = {
        name: BASE + (value - BASE) * factor
        for name in ("at", "last_seen")
        if isinstance(value := getattr(event, name, None), datetime)
    }
    return msgspec.structs.replace(event, **changes)


def _moments(last: int) -> st.SearchStrategy[datetime]:
    """Whole seconds from ``BASE`` to ``last`` seconds after it."""
    return st.integers(0, last).map(lambda s: BASE + timedelta(seconds=s))


def _registration(
    draw: st.DrawFn, *, id: str, at: datetime, worker: str, pool: str
) -> ev.WorkerStarted:
    """A start with drawn queues, task keys, labels and heartbeat interval: the worker's terms."""
    names = lambda pool: st.lists(st.sampled_from(pool), max_size=2, unique=True).map(tuple)  # noqa: E731
    return ev.WorkerStarted(
        id=id,
        at=at,
        worker=worker,
        pool=pool,
        queues=draw(names([*QUEUES, "qx"])),
        task_keys=draw(names([*KEYS, "kx"])),
        labels=draw(label_sets),
        heartbeat_interval=draw(st.sampled_from([5.0, 30.0])),
    )


@st.composite
def _bystanders(draw: st.DrawFn) -> list[ev.Event]:
    """More workers, some stopped or lost, so each index list is shorter than the fleet."""
    seconds = _moments(600)
    events: list[ev.Event] = []
    for i in range(draw(st.integers(0, 10))):
        worker, pool, started = (
            f"bystander {i}",
            draw(st.sampled_from([*POOLS, "p.x"])),
            draw(seconds),
        )
        events.append(_registration(draw, id=f"b{i}", at=started, worker=worker, pool=pool))
        end = draw(st.sampled_from([None, ev.WorkerStopped, ev.WorkerLost, ev.WorkerHeartbeat]))
        later = started + timedelta(seconds=draw(st.integers(0, 100)))
        if end is ev.WorkerLost:
            events.append(
                ev.WorkerLost(id=f"l{i}", at=later, worker=worker, pool=pool, last_seen=started)
            )
        elif end is not None:
            events.append(end(id=f"x{i}", at=later, worker=worker, pool=pool))  # type: ignore[call-arg]
    return events


def _edges(history: Sequence[ev.Event], multiplier: float) -> list[datetime]:
    """Clocks one microsecond either side of, and exactly at, each worker's grace running out."""
    brute = Brute(history)
    tick = timedelta(microseconds=1)
    return [
        view.last_seen + timedelta(seconds=view.heartbeat_interval * multiplier) + d * tick
        for view in brute.workers.values()
        if view.last_seen is not None
        for d in (-1, 0, 1)
    ]


class Brute:
    """Every answer recomputed from the fold's views by scanning them all."""

    def __init__(self, history: Sequence[ev.Event]) -> None:
        self.ledger = ledger = Ledger()
        for event in history:
            ledger.apply(event)
        self.tasks = {t: v for t in ledger.task_ids() if (v := ledger.task(t)) is not None}
        self.workers = {w: v for w in ledger.worker_ids() if (v := ledger.worker(w)) is not None}

    def pool_of(self, view: TaskView) -> str | None:
        if view.pool is not None or view.worker is None:
            return view.pool
        worker = self.workers.get(view.worker)
        return worker.pool if worker else None

    def workers_(
        self,
        *,
        now: datetime,
        multiplier: float = 3.0,
        pool: str | None = None,
        queue: str | None = None,
        task_keys: Sequence[str] = (),
        labels: dict[str, str] | None = None,
        status: WorkerStatus | None = None,
        limit: int | None = None,
    ) -> list[WorkerWithStatus]:
        found = []
        for view in self.workers.values():
            if pool is not None and view.pool != pool:
                continue
            if queue is not None and view.queues and queue not in view.queues:
                continue
            if task_keys and not set(task_keys) & set(view.task_keys):
                continue
            if any(view.labels.get(k) != v for k, v in (labels or {}).items()):
                continue
            state = liveness(view, now, multiplier)
            if status is None or state == status:
                found.append(self.with_status(view, state))
        found.sort(key=lambda w: (-_timestamp(w.worker.last_seen), w.worker.worker))
        return found if limit is None else found[:limit]

    def with_status(self, view: WorkerView, state: WorkerStatus) -> WorkerWithStatus:
        held = tuple(sorted(t for t, v in self.tasks.items() if self._holds(v, view.worker)))
        free = max(view.slots - len(held), 0)
        return WorkerWithStatus(worker=view, status=state, tasks=held, free_slots=free)

    @staticmethod
    def _holds(view: TaskView, worker: str) -> bool:
        return view.status.holds_slot and view.worker == worker

    def holders(self, *, pool: str | None, queue: str | None) -> list[SlotHolder]:
        found = [
            SlotHolder(
                task=v.task,
                status=v.status,
                pool=self.pool_of(v),
                queue=v.queue,
                worker=v.worker,
                since=v.slot_acquired_at,
            )
            for v in self.tasks.values()
            if v.status.holds_slot
        ]
        chosen = [
            h
            for h in found
            if (pool is None or h.pool == pool) and (queue is None or h.queue == queue)
        ]
        return sorted(chosen, key=lambda h: (h.pool or "", h.queue or "", _ts(h.since), h.task))

    def counts(self, *, pool: str | None) -> list[SlotCount]:
        counts: Counter[tuple[str | None, str | None]] = Counter()
        for holder in self.holders(pool=pool, queue=None):
            counts[holder.pool, None] += 1
            if holder.queue is not None:
                counts[holder.pool, holder.queue] += 1
        ordered = sorted(
            counts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] is not None, kv[0][1] or "")
        )
        return [SlotCount(pool=p, queue=q, held=n) for (p, q), n in ordered]

    def readiness(self, *, now: datetime, multiplier: float, pool: str | None) -> object:
        ledger = self.ledger
        named = [
            (v.pool, v.queue)
            for v in self.tasks.values()
            if not v.status.terminal and v.pool is not None and (pool is None or v.pool == pool)
        ]
        settings = [p for p in map(ledger.pool, sorted(ledger.pool_ids())) if p is not None]
        queue_keys = sorted(k for k in ledger.queue_ids() if pool is None or k[0] == pool)
        return readiness(
            pools=[p for p in settings if pool is None or p.pool == pool],
            queues=[q for q in (ledger.queue(*k) for k in queue_keys) if q is not None],
            workers=self.workers_(now=now, multiplier=multiplier, pool=pool),
            counts=self.counts(pool=pool),
            named=named,
        )


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


def _ts(moment: datetime | None) -> float:
    return _timestamp(moment)


_QUERIES = st.fixed_dictionaries(
    {
        "now": nows,
        "multiplier": multipliers,
        "pool": pools,
        "queue": queues,
        "task_keys": st.lists(st.sampled_from([*KEYS, "kx"]), max_size=3, unique=True),
        "labels": label_sets,
        "status": statuses,
        "limit": limits,
    }
)


@_PROPERTY
@given(case=folded(), query=_QUERIES, data=st.data())
def test_workers_walked_newest_seen_first_equal_a_scan_for_any_filters_clock_and_limit(
    case: tuple[list[ev.Event], MemoryStore], query: dict[str, Any], data: st.DataObject
) -> None:
    """Stopping after ``limit`` matches in newest-seen order gives the sorted scan's prefix."""
    history, store = case
    edges = _edges(history, query["multiplier"])
    if edges and data.draw(st.booleans()):
        query["now"] = data.draw(st.sampled_from(edges))
    assert store.workers(**query) == Brute(history).workers_(**query)


@_PROPERTY
@given(case=folded())
def test_slot_holders_and_counts_kept_per_place_equal_a_scan_of_every_task(
    case: tuple[list[ev.Event], MemoryStore],
) -> None:
    """A task claimed before submission counts in its worker's pool, wherever that moved."""
    history, store = case
    brute = Brute(history)
    for pool in (None, *POOLS, "nope"):
        assert store.slot_counts(pool=pool) == brute.counts(pool=pool)
        for queue in (None, *QUEUES):
            assert store.slot_holders(pool=pool, queue=queue) == brute.holders(
                pool=pool, queue=queue
            )


@_PROPERTY
@given(case=folded(), now=nows, multiplier=multipliers, pool=pools, data=st.data())
def test_readiness_from_the_stores_counts_equals_readiness_from_every_worker(
    case: tuple[list[ev.Event], MemoryStore],
    now: datetime,
    multiplier: float,
    pool: str | None,
    data: st.DataObject,
) -> None:
    """Counting ONLINE workers by bisection per pool and shape is the liveness rule, exactly."""
    history, store = case
    edges = _edges(history, multiplier)
    if edges and data.draw(st.booleans()):
        now = data.draw(st.sampled_from(edges))
    found = store_readiness(store, now=now, multiplier=multiplier, pool=pool)
    assert found == Brute(history).readiness(now=now, multiplier=multiplier, pool=pool)


@_PROPERTY
@given(case=folded())
def test_stretches_and_sessions_derived_late_equal_those_of_one_fold(
    case: tuple[list[ev.Event], MemoryStore],
) -> None:
    """Deferring them to the first read loses no change, whatever was read in between."""
    history, store = case
    brute = Brute(history)
    intervals = [i for t in sorted(brute.ledger.task_ids()) for i in brute.ledger.intervals(t)]
    sessions = [s for w in sorted(brute.ledger.worker_ids()) for s in brute.ledger.sessions(w)]
    model = store.read_model()
    assert (model.intervals, model.sessions) == (intervals, sessions)
    assert sorted(store.slot_intervals(), key=_interval_order) == intervals
    assert sorted(store.worker_sessions(), key=lambda s: s.worker) == sessions
    whole = MemoryStore()
    items = [Sequenced(i + 1, "s", e) for i, e in enumerate(history)]
    whole.apply(Batch(events=items, last_seq=max(len(items), 1)))
    assert model == whole.read_model()


def _interval_order(interval: object) -> tuple[str, int]:
    return (interval.task, interval.attempt)  # type: ignore[attr-defined]


def test_a_worker_moving_pools_moves_the_slots_its_poolless_tasks_hold() -> None:
    """Given a task claimed before any submission, its slot follows its worker's pool."""
    at = {"at": BASE}
    events: list[ev.Event] = [
        ev.WorkerStarted(id="a", worker="w", pool="p1", **at),
        ev.TaskClaimed(id="b", task="t", worker="w", at=BASE + timedelta(seconds=1)),
    ]
    store = MemoryStore()
    store.apply(Batch(events=[Sequenced(i + 1, "s", e) for i, e in enumerate(events)], last_seq=2))
    assert store.slot_counts() == [SlotCount(pool="p1", queue=None, held=1)]
    moved = ev.WorkerStarted(id="c", worker="w", pool="p2", at=BASE + timedelta(seconds=2))
    store.apply(Batch(events=[Sequenced(3, "s", moved)], last_seq=3))
    assert store.slot_counts() == [SlotCount(pool="p2", queue=None, held=1)]
    forgotten = ev.WorkerForgotten(id="d", worker="w", pool="p2", at=BASE + timedelta(seconds=3))
    store.apply(Batch(events=[Sequenced(4, "s", forgotten)], last_seq=4))
    assert store.slot_counts() == [SlotCount(pool=None, queue=None, held=1)]


def test_a_worker_with_several_of_the_asked_task_keys_is_listed_once() -> None:
    """Given the per-key lists are merged, a worker found in two of them comes once."""
    events = [
        ev.WorkerStarted(
            id=f"s{i}",
            at=BASE + timedelta(seconds=i),
            worker=f"w{i}",
            pool="p1",
            task_keys=("k1", "k2") if i in {0, 5} else ("kx",),
        )
        for i in range(8)
    ]
    store = MemoryStore()
    store.apply(Batch(events=[Sequenced(i + 1, "s", e) for i, e in enumerate(events)], last_seq=8))
    found = store.workers(now=BASE, task_keys=["k1", "k2"])
    assert [w.worker.worker for w in found] == ["w5", "w0"]


_MINUTES = st.integers(-300, 6600).map(lambda m: BASE + timedelta(minutes=m))


@st.composite
def _timeline(draw: st.DrawFn) -> MemoryStore:
    """Workers starting and stopping, tasks claimed and run, some still open, over ~100 hours."""
    events: list[ev.Event] = []

    def add(kind: type[ev.Event], minute: int, **fields: object) -> None:
        at = BASE + timedelta(minutes=minute)
        events.append(kind(id=f"e{len(events)}", at=at, **fields))  # type: ignore[arg-type]

    for _ in range(draw(st.integers(0, 12))):
        worker, minute = draw(st.sampled_from(WORKERS)), draw(st.integers(0, 6000))
        kind = draw(st.sampled_from([ev.WorkerStarted, ev.WorkerStopped, ev.WorkerHeartbeat]))
        add(kind, minute, worker=worker, pool=draw(st.sampled_from(POOLS)))
    for task in range(draw(st.integers(0, 15))):
        name, worker = f"t{task}", draw(st.sampled_from(WORKERS))
        begin, run, end = (draw(st.integers(0, 6000)) for _ in range(3))
        if draw(st.booleans()):
            add(ev.TaskSubmitted, begin, task=name, pool=draw(st.sampled_from(POOLS)), queue="q")
        add(ev.TaskClaimed, begin, task=name, worker=worker)
        if draw(st.booleans()):
            add(ev.TaskStarted, begin + run // 10, task=name, worker=worker)
        ending = draw(st.sampled_from([None, ev.TaskCompleted, ev.TaskFailed, ev.TaskRetrying]))
        if ending is not None:
            add(ending, begin + end // draw(st.sampled_from([1, 20])), task=name)
    store = MemoryStore()
    items = [Sequenced(i + 1, "s", e) for i, e in enumerate(events)]
    store.apply(Batch(events=items, last_seq=max(len(items), 1)))
    return store


_WINDOWS = st.fixed_dictionaries(
    {
        "by": st.sampled_from(GROUPINGS),
        "since": _MINUTES,
        "until": _MINUTES,
        "now": _MINUTES,
        "bucket": st.sampled_from([None, timedelta(minutes=30), timedelta(hours=7)]),
        "multiplier": multipliers,
    }
).filter(lambda q: q["since"] < q["until"])


@_PROPERTY
@given(store=_timeline() | folded(stretch=600).map(lambda case: case[1]), query=_WINDOWS)
def test_utilization_over_the_stretches_touching_the_window_equals_it_over_all(
    store: MemoryStore, query: dict[str, Any]
) -> None:
    """Stretches and sessions the hourly index leaves out would have added nothing."""
    everything = utilization(list(store.slot_intervals()), list(store.worker_sessions()), **query)
    assert store.utilization(**query) == everything


def test_a_poolless_stretch_takes_its_pool_from_a_session_that_ended_before_the_window() -> None:
    """Given a worker stopped before the window, a claim it made later still counts in its pool."""
    hour = timedelta(hours=1)
    events: list[ev.Event] = [
        ev.WorkerStarted(id="a", at=BASE, worker="w", pool="p1"),
        ev.WorkerStopped(id="b", at=BASE + hour, worker="w", pool="p1"),
        ev.TaskClaimed(id="c", at=BASE + 2 * hour, task="t", worker="w"),
        ev.TaskCompleted(id="d", at=BASE + 9 * hour, task="t"),
    ]
    store = MemoryStore()
    store.apply(Batch(events=[Sequenced(i + 1, "s", e) for i, e in enumerate(events)], last_seq=4))
    rows = store.utilization(by="pool", since=BASE + 8 * hour, until=BASE + 10 * hour, now=BASE)
    assert [(r.pool, r.slot_seconds) for r in rows] == [("p1", 3600.0)]


@_PROPERTY
@given(case=folded(), now=nows, limit=limits)
def test_workers_by_every_status_pool_and_queue_equal_a_scan(
    case: tuple[list[ev.Event], MemoryStore], now: datetime, limit: int | None
) -> None:
    """Every status (STOPPED and LOST have their own lists) with every pool and queue."""
    history, store = case
    brute = Brute(history)
    for status in (None, *WorkerStatus):
        for pool in (None, *POOLS, "p.x"):
            for queue in (None, *QUEUES, "qx"):
                query = {"now": now, "status": status, "pool": pool, "queue": queue}
                assert store.workers(**query, limit=limit) == brute.workers_(**query, limit=limit)


@st.composite
def _lively(draw: st.DrawFn) -> list[ev.Event]:
    """A few workers showing life many times, some re-registering or stopping in between."""
    seconds = _moments(700)
    events: list[ev.Event] = []
    for i in range(draw(st.integers(1, 80))):
        worker, at, pool = (
            draw(st.sampled_from(WORKERS)),
            draw(seconds),
            draw(st.sampled_from(POOLS)),
        )
        kind = draw(st.sampled_from(["beat"] * 6 + ["start", "stop", "forget", "claim"]))
        if kind == "start":  # its terms may change: new pool, queues, keys or labels
            events.append(_registration(draw, id=f"s{i}", at=at, worker=worker, pool=pool))
        elif kind == "stop":
            events.append(ev.WorkerStopped(id=f"x{i}", at=at, worker=worker, pool=pool))
        elif kind == "forget":
            events.append(ev.WorkerForgotten(id=f"f{i}", at=at, worker=worker, pool=pool))
        elif kind == "claim":
            events.append(ev.TaskClaimed(id=f"c{i}", at=at, task=f"t{i}", worker=worker))
        else:
            events.append(ev.WorkerHeartbeat(id=f"h{i}", at=at, worker=worker, pool=pool))
    return events


@_PROPERTY
@given(history=_lively(), data=st.data(), query=_QUERIES)
def test_workers_seen_again_and_again_in_small_batches_equal_a_scan(
    history: list[ev.Event], data: st.DataObject, query: dict[str, Any]
) -> None:
    """Each sign of life retires the worker's old key in every list it is in; reads skip
    retired keys and lists are compacted when those outnumber the rest, batch after batch."""
    store, start = MemoryStore(), 0
    while start < len(history):
        end = start + data.draw(st.integers(1, 4))
        chunk = [Sequenced(start + i + 1, "s", e) for i, e in enumerate(history[start:end])]
        store.apply(Batch(events=chunk, last_seq=start + len(chunk)))
        start = end
        if data.draw(st.booleans()):
            brute = Brute(history[:start])
            assert store.workers(**query) == brute.workers_(**query)
    assert store.workers(**query) == Brute(history).workers_(**query)
