"""One contract for every store: the same log gives the same answers as the in-memory reference.

A new store joins by adding one parameter to ``STORES`` and a branch to ``_open``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.projections.utilization import GROUPINGS
from workledger.projections.views import Quarantined, TaskStatus, WorkerStatus
from workledger.stores.base import Batch, Sequenced, Store
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

from .histories import BASE, KEYS, POOLS, QUEUES, WORKERS, histories
from .test_fold import at

STORES = ["memory", "duckdb"]
# The reference store re-appends redelivered quarantined messages and recounts applied events;
# the daemon never redelivers to it (it hands each store only what is past its checkpoint).
MakeStore = Callable[[], Store]

# The factory fixture hands out a fresh store per call, so one per hypothesis example is safe.
_PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _open(kind: str, path: Path) -> Store:
    return MemoryStore() if kind == "memory" else DuckDBStore(path)


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """A factory of fresh, empty stores of one kind; every store it made is closed after."""
    made: list[Store] = []
    counter = itertools.count()

    def make() -> Store:
        made.append(_open(request.param, tmp_path / f"store-{next(counter)}.duckdb"))
        return made[-1]

    yield make
    for store in made:
        if isinstance(store, DuckDBStore):
            store.close()


def batch(events: Sequence[ev.Event], first_seq: int = 1) -> Batch:
    """Events numbered from ``first_seq`` in one batch."""
    items = [Sequenced(first_seq + i, "subject", e) for i, e in enumerate(events)]
    return Batch(events=items, last_seq=first_seq + len(items) - 1)


def applied(store: Store, events: Sequence[ev.Event]) -> Store:
    store.apply(batch(events))
    return store


def t(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


# --- scripted histories ------------------------------------------------------------------------


def fleet() -> list[ev.Event]:
    """Three workers in two pools; four tasks holding slots, one done, one waiting."""
    return [
        ev.PoolCreated(pool="gpu", concurrency_limit=4, **at(0)),
        ev.PoolUpdated(pool="gpu", paused=True, **at(1)),
        ev.PoolCreated(pool="cpu", **at(0.5)),
        ev.QueueCreated(pool="gpu", queue="fast", priority=5, **at(0.6)),
        ev.QueueUpdated(pool="gpu", queue="fast", concurrency_limit=2, **at(0.7)),
        ev.QueueCreated(pool="cpu", queue="bulk", **at(0.8)),
        ev.WorkerStarted(
            worker="g1", pool="gpu", queues=("fast",), task_keys=("train",), slots=2, **at(2)
        ),
        ev.WorkerStarted(worker="g2", pool="gpu", task_keys=("infer",), slots=1, **at(3)),
        ev.WorkerStarted(
            worker="c1", pool="cpu", queues=("bulk",), slots=3, heartbeat_interval=5.0, **at(4)
        ),
        ev.WorkerSubscribed(worker="c1", pool="cpu", task_keys=("etl",), **at(4.5)),
        ev.TaskSubmitted(task="a", pool="gpu", queue="fast", task_key="train", **at(10)),
        ev.TaskClaimed(task="a", worker="g1", **at(11)),
        ev.TaskStarted(task="a", worker="g1", **at(12)),
        ev.TaskSubmitted(task="b", pool="gpu", queue="slow", **at(13)),
        ev.TaskClaimed(task="b", worker="g1", **at(14)),
        ev.TaskSubmitted(task="c", pool="cpu", queue="bulk", **at(15)),
        ev.TaskClaimed(task="c", worker="c1", **at(15)),
        ev.TaskCompleted(task="c", **at(20)),
        ev.TaskClaimed(task="orphan", worker="g2", **at(16)),  # never submitted: g2's pool
        ev.TaskSubmitted(task="d", pool="cpu", queue="bulk", **at(17)),
        ev.TaskClaimed(task="e", worker="c1", **at(18)),
        ev.TaskStarted(task="e", worker="c1", **at(19)),
        ev.WorkerHeartbeat(worker="g2", pool="gpu", **at(30)),
        ev.WorkerStopped(worker="g1", pool="gpu", **at(25)),
    ]


def test_a_new_store_is_empty_at_checkpoint_zero(make_store: MakeStore) -> None:
    """Nothing applied: nothing to answer, checkpoint 0."""
    store = make_store()
    assert (store.stats().checkpoint, store.stats().applied) == (0, 0)
    assert (store.tasks(), store.slot_counts(), store.pools()) == ([], [], [])
    assert store.task("a") is None
    assert store.task_ids() == []


def test_a_task_is_found_by_id_and_an_unknown_one_is_none(make_store: MakeStore) -> None:
    """task(id) returns the fold's view, with every transition's time."""
    store = applied(make_store(), fleet())
    view = store.task("a")
    assert view is not None
    assert (view.status, view.worker, view.pool, view.queue) == (
        TaskStatus.RUNNING,
        "g1",
        "gpu",
        "fast",
    )
    assert (view.submitted_at, view.slot_acquired_at, view.started_at) == (t(10), t(11), t(12))
    assert store.task("nope") is None
    assert sorted(store.task_ids()) == sorted({e.entity_key for e in fleet() if e.family == "task"})


def test_tasks_filter_by_status_pool_queue_and_worker_newest_first(
    make_store: MakeStore,
) -> None:
    """Filters combine; order is most recently updated first, then id; limit cuts."""
    store = applied(make_store(), fleet())
    names = lambda found: [v.task for v in found]  # noqa: E731
    assert names(store.tasks()) == ["c", "e", "d", "orphan", "b", "a"]
    assert names(store.tasks(limit=2)) == ["c", "e"]
    assert names(store.tasks(status=TaskStatus.PENDING)) == ["orphan", "b"]
    assert names(store.tasks(pool="cpu")) == ["c", "e", "d"]
    assert names(store.tasks(pool="gpu", queue="fast")) == ["a"]
    assert names(store.tasks(worker="g1")) == ["b", "a"]


def test_a_task_never_submitted_is_counted_in_its_workers_pool(make_store: MakeStore) -> None:
    """Before task.submitted names a pool, the claiming worker's pool stands in."""
    store = applied(make_store(), fleet())
    assert "orphan" in [v.task for v in store.tasks(pool="gpu")]
    assert [h.pool for h in store.slot_holders() if h.task == "orphan"] == ["gpu"]


def test_workers_filter_by_pool_queue_and_any_task_key(make_store: MakeStore) -> None:
    """queue matches listing it or listing none; task_keys matches ANY of them."""
    store = applied(make_store(), fleet())
    names = lambda **f: sorted(w.worker.worker for w in store.workers(now=t(31), **f))  # noqa: E731
    assert names() == ["c1", "g1", "g2"]
    assert names(pool="gpu") == ["g1", "g2"]
    assert names(queue="fast") == ["g1", "g2"]
    assert names(queue="bulk") == ["c1", "g2"]
    assert names(task_keys=["train", "etl"]) == ["c1", "g1"]
    assert names(task_keys=["nothing"]) == []


def test_workers_filter_by_labels_all_of_which_must_match(make_store: MakeStore) -> None:
    """Every given label must be on the worker with that value; no labels matches all."""
    started = [
        ("eu1", {"zone": "eu", "gpu": "a"}),
        ("eu2", {"zone": "eu"}),
        ("us1", {"zone": "us", "gpu": "a"}),
        ("bare", {}),
    ]
    store = applied(
        make_store(),
        [
            ev.WorkerStarted(worker=name, pool="p", labels=labels, **at(i))
            for i, (name, labels) in enumerate(started, start=1)
        ],
    )
    names = lambda **f: [w.worker.worker for w in store.workers(now=t(5), **f)]  # noqa: E731
    assert names(labels={}) == ["bare", "us1", "eu2", "eu1"]
    assert names(labels={"zone": "eu"}) == ["eu2", "eu1"]
    assert names(labels={"zone": "eu", "gpu": "a"}) == ["eu1"]
    assert names(labels={"gpu": "a"}, limit=1) == ["us1"]
    assert names(labels={"zone": "mars"}) == []


def test_workers_are_most_recently_seen_first_with_a_limit(make_store: MakeStore) -> None:
    """Order by last sign of life, then id; limit applies after the status filter."""
    store = applied(make_store(), fleet())
    found = store.workers(now=t(31))
    assert [w.worker.worker for w in found] == ["g2", "g1", "c1"]
    assert [w.worker.worker for w in store.workers(now=t(31), limit=1)] == ["g2"]


def test_worker_status_is_decided_at_query_time_by_the_multiplier(
    make_store: MakeStore,
) -> None:
    """ONLINE within heartbeat_interval x multiplier of its last sign of life; STOPPED wins."""
    store = applied(make_store(), fleet())
    status = lambda now, m=3.0: {  # noqa: E731
        w.worker.worker: w.status for w in store.workers(now=now, multiplier=m)
    }
    assert status(t(40)) == {
        "g1": WorkerStatus.STOPPED,
        "g2": WorkerStatus.ONLINE,
        "c1": WorkerStatus.OFFLINE,  # 5 s heartbeat, last seen at 19 s
    }
    assert status(t(34))["c1"] is WorkerStatus.ONLINE
    assert status(t(40), m=10.0)["c1"] is WorkerStatus.ONLINE
    online = store.workers(now=t(40), status=WorkerStatus.ONLINE)
    assert [w.worker.worker for w in online] == ["g2"]


def test_free_slots_count_the_tasks_each_worker_holds(make_store: MakeStore) -> None:
    """A worker's held tasks are its PENDING and RUNNING ones, sorted; free never below 0."""
    store = applied(make_store(), fleet())
    found = {w.worker.worker: (w.tasks, w.free_slots) for w in store.workers(now=t(31))}
    assert found == {"g1": (("a", "b"), 0), "g2": (("orphan",), 0), "c1": (("e",), 2)}


def test_slot_holders_are_ordered_and_counted_per_pool_and_queue(make_store: MakeStore) -> None:
    """Ordered by pool, queue, since, task; counts give each pool's total then its queues."""
    store = applied(make_store(), fleet())
    holders = [(h.task, h.pool, h.queue, h.since) for h in store.slot_holders()]
    assert holders == [
        ("e", "cpu", None, t(18)),
        ("orphan", "gpu", None, t(16)),
        ("a", "gpu", "fast", t(11)),
        ("b", "gpu", "slow", t(14)),
    ]
    assert [h.task for h in store.slot_holders(pool="gpu", queue="fast")] == ["a"]
    counts = [(c.pool, c.queue, c.held) for c in store.slot_counts()]
    assert counts == [("cpu", None, 1), ("gpu", None, 3), ("gpu", "fast", 1), ("gpu", "slow", 1)]
    assert [(c.queue, c.held) for c in store.slot_counts(pool="cpu")] == [(None, 1)]


def test_pools_and_queues_report_their_latest_settings_by_name(make_store: MakeStore) -> None:
    """Partial updates keep the other fields; ordered by pool, then queue."""
    store = applied(make_store(), fleet())
    assert [(p.pool, p.concurrency_limit, p.paused) for p in store.pools()] == [
        ("cpu", None, False),
        ("gpu", 4, True),
    ]
    queues = [(q.pool, q.queue, q.priority, q.concurrency_limit) for q in store.queues()]
    assert queues == [("cpu", "bulk", None, None), ("gpu", "fast", 5, 2)]
    assert [q.queue for q in store.queues(pool="gpu")] == ["fast"]


def test_quarantined_messages_are_kept_newest_first(make_store: MakeStore) -> None:
    """Set-aside messages keep their sequence, subject, reason and bytes."""
    store = make_store()
    bad = [Quarantined(seq=s, subject=f"s{s}", reason="bad", data=b"\x00x", size=2) for s in (2, 5)]
    store.apply(Batch(events=[], quarantined=bad, last_seq=6))
    assert store.quarantined() == bad[::-1]
    assert store.quarantined(limit=1) == [bad[1]]
    assert (store.stats().checkpoint, store.stats().quarantined) == (6, 2)


def test_stats_count_what_was_applied_and_track_the_checkpoint(make_store: MakeStore) -> None:
    """The checkpoint is the batch's last sequence, even when it ends on a bad message."""
    store = make_store()
    history = fleet()
    store.apply(batch(history[:10]))
    bad = Quarantined(seq=11, subject="s", reason="bad", data=b"", size=0)
    store.apply(Batch(events=batch(history[10:], 12).events, quarantined=[bad], last_seq=40))
    stats = store.stats()
    assert (stats.checkpoint, stats.applied, stats.quarantined) == (40, len(history), 1)


def test_a_batch_at_or_below_the_checkpoint_changes_nothing(make_store: MakeStore) -> None:
    """A redelivered batch leaves the model and the stats as they were: nothing twice."""
    store = applied(make_store(), fleet())
    bad = Quarantined(seq=3, subject="s", reason="bad", data=b"", size=0)
    before = (store.read_model(), store.stats())
    store.apply(Batch(events=batch(fleet()[:5]).events, quarantined=[bad], last_seq=5))
    assert (store.read_model(), store.stats()) == before


# --- generated histories -----------------------------------------------------------------------


def answers(store: Store) -> dict[str, object]:
    """Every query, with every filter the generated ids allow, as plain data."""
    found: dict[str, object] = {"model": store.read_model()}
    for now, m in itertools.product((t(0), t(300), t(700)), (1.0, 3.0)):
        found[f"workers {now} {m}"] = store.workers(now=now, multiplier=m)
        for status in WorkerStatus:
            found[f"workers {now} {m} {status}"] = store.workers(now=now, status=status, limit=2)
    for pool in (None, *POOLS):
        found[f"workers {pool}"] = store.workers(now=t(100), pool=pool)
        for status in (WorkerStatus.ONLINE, WorkerStatus.OFFLINE):
            found[f"workers {pool} {status}"] = store.workers(
                now=t(300), pool=pool, status=status, limit=2
            )
        found[f"counts {pool}"] = store.slot_counts(pool=pool)
        found[f"queues {pool}"] = store.queues(pool=pool)
        for queue in (None, *QUEUES):
            found[f"holders {pool} {queue}"] = store.slot_holders(pool=pool, queue=queue)
            found[f"tasks {pool} {queue}"] = store.tasks(pool=pool, queue=queue, limit=3)
    for queue in QUEUES:
        found[f"workers q {queue}"] = store.workers(now=t(100), queue=queue)
    for keys in ((), (KEYS[0],), KEYS[1:]):
        found[f"workers k {keys}"] = store.workers(now=t(100), task_keys=keys)
    for labels in ({"zone": "a"}, {"zone": "b", "gpu": "a"}):
        found[f"workers l {labels}"] = store.workers(now=t(100), labels=labels, limit=3)
    for task_status in TaskStatus:
        found[f"tasks {task_status}"] = store.tasks(status=task_status)
    for worker in (*WORKERS, "nope"):
        found[f"tasks w {worker}"] = store.tasks(worker=worker, limit=3)
    for name in ("t1", "t 5", "nope"):
        found[f"task {name}"] = store.task(name)
    found["pools"] = store.pools()
    found["task ids"] = sorted(store.task_ids())
    found["quarantined"] = store.quarantined(limit=3)
    found["checkpoint"] = store.stats().checkpoint
    return msgspec.to_builtins(found)  # type: ignore[no-any-return]


@st.composite
def batched(draw: st.DrawFn) -> tuple[list[ev.Event], list[Batch]]:
    """A history numbered in stream order with some bad messages between, cut into batches."""
    history = draw(histories())
    bad = draw(st.sets(st.integers(0, len(history)), max_size=3))
    items: list[Sequenced | Quarantined] = []
    for i, event in enumerate([*history, None]):
        if i in bad:
            items.append(Quarantined(seq=len(items) + 1, subject="s", reason="", data=b"", size=0))
        if event is not None:
            items.append(Sequenced(len(items) + 1, "s", event))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(items), 1)), max_size=4)) | {len(items)})
    batches, start = [], 0
    for cut in cuts:
        chunk = items[start:cut]
        if chunk:
            batches.append(
                Batch(
                    events=[i for i in chunk if isinstance(i, Sequenced)],
                    quarantined=[i for i in chunk if isinstance(i, Quarantined)],
                    last_seq=cut,
                )
            )
        start = cut
    return history, batches


def reference(batches: Sequence[Batch]) -> MemoryStore:
    store = MemoryStore()
    for each in batches:
        store.apply(each)
    return store


@_PROPERTY
@given(case=batched())
def test_every_store_answers_like_the_reference_on_any_history_in_any_batches(
    make_store: MakeStore, case: tuple[list[ev.Event], list[Batch]]
) -> None:
    """Same log, same answers to every query, however the log was cut into batches."""
    _, batches = case
    store = make_store()
    for each in batches:
        store.apply(each)
    assert answers(store) == answers(reference(batches))
    assert store.stats() == reference(batches).stats()


@_PROPERTY
@given(case=batched(), data=st.data())
def test_a_store_given_a_batch_again_or_out_of_order_history_loses_nothing(
    make_store: MakeStore,
    case: tuple[list[ev.Event], list[Batch]],
    data: st.DataObject,
) -> None:
    """Redelivering an applied batch changes nothing; the model depends on the set of events."""
    history, batches = case
    store = make_store()
    for each in batches:
        store.apply(each)
        before = (store.read_model(), store.stats())
        store.apply(each)
        assert (store.read_model(), store.stats()) == before
    shuffled = make_store()
    shuffled.apply(batch(data.draw(st.permutations(history))))
    assert shuffled.read_model() == reference([batch(history)]).read_model()


@settings(_PROPERTY, max_examples=15)
@given(case=batched(), bucket=st.sampled_from([None, timedelta(minutes=2)]))
def test_every_store_gives_the_references_utilization_on_any_history(
    make_store: MakeStore, case: tuple[list[ev.Event], list[Batch]], bucket: timedelta | None
) -> None:
    """Busy, slot and capacity time and the counts agree, floats within 1e-6 relative."""
    _, batches = case
    store, expected = make_store(), reference(batches)
    for each in batches:
        store.apply(each)
    for by in GROUPINGS:
        window = {"since": t(60), "until": t(660), "now": t(700), "bucket": bucket, "by": by}
        found = [_approx(row) for row in store.utilization(**window)]
        assert found == list(map(_approx, expected.utilization(**window)))


def _approx(row: msgspec.Struct) -> dict[str, object]:
    """A row whose floats compare within 1e-6 relative, everything else exactly."""
    fields = msgspec.structs.asdict(row)
    return {k: pytest.approx(v, rel=1e-6) if isinstance(v, float) else v for k, v in fields.items()}


# --- durable stores ----------------------------------------------------------------------------

DURABLE = ["duckdb"]


@pytest.mark.parametrize("kind", DURABLE)
@settings(_PROPERTY, max_examples=20)
@given(case=batched())
def test_a_durable_store_reopened_after_any_batch_equals_the_never_closed_one(
    kind: str, case: tuple[list[ev.Event], list[Batch]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Restart = nothing lost, nothing twice: close and reopen between batches changes nothing."""
    _, batches = case
    path = tmp_path_factory.mktemp(kind) / "store.duckdb"
    steady = _open(kind, tmp_path_factory.mktemp(kind) / "steady.duckdb")
    for each in batches:
        steady.apply(each)
        restarted = _open(kind, path)
        restarted.apply(each)
        _close(restarted)
    reopened = _open(kind, path)
    try:
        assert (reopened.read_model(), reopened.stats()) == (steady.read_model(), steady.stats())
        more = batch([ev.TaskCompleted(task="t1", **at(1000))], steady.stats().checkpoint + 1)
        reopened.apply(more)
        steady.apply(more)
        assert reopened.read_model() == steady.read_model(), "the restored fold carries on alike"
    finally:
        _close(reopened)
        _close(steady)


def _close(store: Store) -> None:
    if isinstance(store, DuckDBStore):
        store.close()
