"""The in-memory store's task lists answer exactly what sorting every task of the fold would.

``MemoryStore.tasks`` walks per-status lists kept newest-updated first (merged when no status
is asked for) and stops at ``limit``, or sorts the tasks listed under the pool, queue or worker
asked for when those are fewer; these compare it, for random histories applied in random
batches, with a brute-force sort of a fresh :class:`Ledger`'s views.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.projections.fold import Ledger
from workledger.projections.views import TaskStatus, TaskView
from workledger.stores import _memory_indexes as indexes
from workledger.stores import memory
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore

from .histories import BASE, POOLS, QUEUES, WORKERS
from .test_memory_indexes import folded

_NO_FILTER = {"status": None, "pool": None, "queue": None, "worker": None, "limit": 100}
_QUERIES = st.fixed_dictionaries(
    {
        "status": st.none() | st.sampled_from(TaskStatus),
        "pool": st.sampled_from([None, *POOLS, "nope"]),
        "queue": st.sampled_from([None, *QUEUES, "qx"]),
        "worker": st.sampled_from([None, *WORKERS]),
        "limit": st.integers(0, 6),
    }
)


def _brute(history: Sequence[ev.Event], query: dict[str, Any]) -> list[TaskView]:
    ledger = Ledger()
    for event in history:
        ledger.apply(event)
    tasks = [v for t in ledger.task_ids() if (v := ledger.task(t)) is not None]
    workers = {w: v for w in ledger.worker_ids() if (v := ledger.worker(w)) is not None}

    def pool_of(view: TaskView) -> str | None:
        if view.pool is not None or view.worker is None:
            return view.pool
        worker = workers.get(view.worker)
        return worker.pool if worker else None

    found = [
        v
        for v in tasks
        if (query["status"] is None or v.status == query["status"])
        and (query["pool"] is None or pool_of(v) == query["pool"])
        and (query["queue"] is None or v.queue == query["queue"])
        and (query["worker"] is None or v.worker == query["worker"])
    ]
    found.sort(key=lambda v: (-_timestamp(v.updated_at), v.task))
    return found[: query["limit"]]


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


@pytest.mark.parametrize("walk", [0, 2, 10**9], ids=["sorting-candidates", "either", "walking"])
@settings(max_examples=200, deadline=None)
@given(case=folded(), query=_QUERIES)
def test_tasks_newest_updated_first_equal_a_sort_of_every_task(
    walk: int, case: tuple[list[ev.Event], MemoryStore], query: dict[str, Any]
) -> None:
    """With or without a status, the walk's prefix is the sorted scan's, whatever the batches;
    and so is the sort of the tasks listed under a pool, queue or worker, which a filter
    matching few reads instead (``walk``: how many tasks it walks per listed task first)."""
    history, store = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "_WALK_PER_CANDIDATE", walk)
        assert store.tasks(**query) == _brute(history, query)
    for status in (None, *TaskStatus):
        every = {"status": status, "pool": None, "queue": None, "worker": None, "limit": 100}
        assert store.tasks(**every) == _brute(history, every)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "discard", "flush", "read"]), st.integers(-30, 30)),
        min_size=40,
        max_size=400,
    ),
    load=st.sampled_from([2, 3, 8, 12, 500]),
)
def test_sorted_keys_hold_what_a_sorted_set_holds_whatever_the_adds_discards_and_flushes(
    ops: list[tuple[str, int]], load: int
) -> None:
    """Chunks split, merge and take whole runs in front; the keys read are a sorted set's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indexes, "_LOAD", load)
        _replay(ops)


def _replay(ops: list[tuple[str, int]]) -> None:
    keys, model = indexes.SortedKeys(), set[int]()
    for op, key in ops:
        if op == "add" and key not in model:
            keys.add(key)
            model.add(key)
        elif op == "discard":
            keys.discard(key)
            model.discard(key)
        elif op == "flush":
            keys.flush()
        elif op == "read":
            assert list(keys) == sorted(model)
        assert len(keys) == len(model)
    assert list(keys) == sorted(model)


def test_a_chunk_left_nearly_empty_joins_the_next() -> None:
    """Given chunks of 8, discarding most of the first leaves one chunk that still bisects."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indexes, "_LOAD", 8)
        _replay(
            [("add", k) for k in range(16)]
            + [("flush", 0)]
            + [("discard", k) for k in range(7)]
            + [("read", 0), ("discard", 15), ("discard", 15), ("discard", 3), ("add", 3)]
            + [("add", 20), ("flush", 0), ("discard", 7), ("discard", 20), ("read", 0)]
        )


@pytest.mark.parametrize("walk", [0, 10**9], ids=["sorting-candidates", "walking"])
def test_a_filter_reads_a_task_once_as_it_is_now_whatever_it_named_before(walk: int) -> None:
    """A task that moved between workers is one answer of its worker now and none of the one
    it left; a task naming no pool counts in its worker's; a key nobody names matches none."""
    history = [
        msgspec.structs.replace(e, id=f"e{i}", at=BASE + timedelta(seconds=i))
        for i, e in enumerate(
            [
                ev.WorkerStarted(worker="g1", pool="gpu", slots=2),
                *(ev.TaskSubmitted(task=f"bulk{i}", pool="cpu", queue="q") for i in range(50)),
                ev.TaskClaimed(task="orphan", worker="g1"),  # no pool, no submission seen
                ev.TaskSubmitted(task="moved", pool="cpu", queue="q"),
                ev.TaskClaimed(task="moved", worker="w1"),
                ev.TaskRetrying(task="moved"),
                ev.TaskClaimed(task="moved", worker="w2"),
                ev.TaskRetrying(task="moved"),
                ev.TaskClaimed(task="moved", worker="w1"),
                *(ev.TaskSubmitted(task=f"late{i}", pool="cpu", queue="q") for i in range(50)),
            ]
        )
    ]
    store = MemoryStore()
    for seq, event in enumerate(history, 1):  # so each worker of "moved" is indexed
        store.apply(Batch(events=[Sequenced(seq, "s", event)], last_seq=seq))
    queries: list[dict[str, Any]] = [
        {"worker": "w1"},
        {"worker": "w2"},
        {"pool": "gpu"},
        {"pool": "nope"},
        {"queue": "nope"},
        {"pool": "cpu", "worker": "w1"},
        {"status": TaskStatus.PENDING, "pool": "gpu"},
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "_WALK_PER_CANDIDATE", walk)
        found = {str(q): [v.task for v in store.tasks(**q)] for q in queries}
    assert found == {
        str(q): [v.task for v in _brute(history, {**_NO_FILTER, **q})] for q in queries
    }
    assert found[str({"worker": "w1"})] == ["moved"]
    assert found[str({"worker": "w2"})] == []
    assert found[str({"pool": "gpu"})] == ["orphan"]
    assert found[str({"pool": "nope"})] == found[str({"queue": "nope"})] == []
