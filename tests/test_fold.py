"""The fold's rules, checked without I/O: the same set of events gives the same read model."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.projections.fold import Ledger, retain
from workledger.projections.views import TaskStatus, TaskView
from workledger.stores.base import Batch, ReadModel, Sequenced
from workledger.stores.memory import MemoryStore

from .histories import BASE, histories


def fold(events: list[ev.Event], store: MemoryStore | None = None) -> MemoryStore:
    """Apply ``events`` as the next stream sequences after the store's checkpoint."""
    store = store or MemoryStore()
    first = store.stats().checkpoint + 1
    items = [Sequenced(first + i, "", e) for i, e in enumerate(events)]
    store.apply(Batch(events=items, last_seq=first + len(items) - 1))
    return store


def model(events: list[ev.Event]) -> ReadModel:
    return fold(events).read_model()


def at(seconds: float) -> dict[str, object]:
    """Keyword arguments stamping an event ``seconds`` after BASE with an id in time order."""
    return {"at": BASE + timedelta(seconds=seconds), "id": f"id-{seconds:08.2f}"}


@settings(max_examples=300)
@given(history=histories(), data=st.data())
def test_any_shuffle_or_duplication_of_a_history_gives_the_same_read_model(
    history: list[ev.Event], data: st.DataObject
) -> None:
    """Order and redelivery never change the answer."""
    shuffled = data.draw(st.permutations(history))
    repeats = data.draw(st.lists(st.sampled_from(history), max_size=20)) if history else []
    assert model(shuffled + repeats) == model(history)


@settings(max_examples=300)
@given(history=histories(reused_ids=True), data=st.data())
def test_events_sharing_an_id_give_the_same_read_model_in_any_order(
    history: list[ev.Event], data: st.DataObject
) -> None:
    """Different events under one id (a faulty producer's) are folded order-free too: of two
    contenders for a register or for one id, the later by ``(at, id)``, then by JSON, wins."""
    shuffled = data.draw(st.permutations(history))
    assert model(shuffled) == model(history)


@settings(max_examples=200)
@given(history=histories(), cut=st.integers(min_value=0, max_value=60))
def test_folding_in_two_halves_with_a_snapshot_between_equals_folding_at_once(
    history: list[ev.Event], cut: int, tmp_path_factory: object
) -> None:
    """A restart from a snapshot loses nothing: save, load, continue equals one pass."""
    path = Path(str(tmp_path_factory.mktemp("snap"))) / "state.snapshot"  # type: ignore[attr-defined]
    fold(history[:cut]).save(path)
    resumed = fold(history[cut:], MemoryStore.load(path))
    assert resumed.read_model() == model(history)


def test_a_claimed_task_holds_a_slot_until_it_completes() -> None:
    """claimed -> PENDING with a slot; started -> RUNNING, same slot; completed releases it."""
    sub = ev.TaskSubmitted(task="t", pool="p", queue="q", **at(0))
    claim = ev.TaskClaimed(task="t", worker="w", **at(1))
    start = ev.TaskStarted(task="t", worker="w", **at(2))
    done = ev.TaskCompleted(task="t", **at(9))
    store = fold([sub, claim])
    assert store.task("t").status is TaskStatus.PENDING  # type: ignore[union-attr]
    assert [h.task for h in store.slot_holders(pool="p", queue="q")] == ["t"]
    store = fold([sub, claim, start])
    view = store.task("t")
    assert view is not None
    assert (view.status, view.slot_acquired_at) == (TaskStatus.RUNNING, claim.at)
    assert fold([sub, claim, start, done]).slot_holders() == []


def test_a_retry_releases_the_slot_and_the_next_claim_starts_a_new_stretch() -> None:
    """slot_acquired_at counts from the claim after the retry."""
    history = [
        ev.TaskSubmitted(task="t", pool="p", queue="q", **at(0)),
        ev.TaskClaimed(task="t", worker="w", **at(1)),
        ev.TaskStarted(task="t", worker="w", **at(2)),
        ev.TaskRetrying(task="t", attempt=1, error="boom", **at(3)),
    ]
    store = fold(history)
    view = store.task("t")
    assert view is not None
    assert (view.status, view.retries, view.error) == (TaskStatus.RETRYING, 1, "boom")
    assert store.slot_holders() == []
    reclaim = ev.TaskClaimed(task="t", worker="w2", **at(5))
    view = fold([*history, reclaim]).task("t")
    assert view is not None
    assert (view.status, view.worker, view.slot_acquired_at) == (
        TaskStatus.PENDING,
        "w2",
        reclaim.at,
    )


def test_a_view_takes_each_field_from_its_own_event() -> None:
    """Every field of a running task that retried once differs from the others, so a view
    built with one field in another's place (the fold builds it by position) fails."""
    sub = ev.TaskSubmitted(
        task="t", pool="p", queue="q", task_key="k", priority=7, stage="s", item="i", **at(0)
    )
    history = [
        sub,
        ev.TaskClaimed(task="t", worker="w1", **at(1)),
        ev.TaskRetrying(task="t", attempt=1, error="boom", **at(2)),
        claim := ev.TaskClaimed(task="t", worker="w2", **at(3)),
        start := ev.TaskStarted(task="t", worker="w2", **at(4)),
        report := ev.TaskProgress(task="t", progress=0.5, message="half", **at(5)),
    ]
    running = TaskView(
        task="t",
        status=TaskStatus.RUNNING,
        pool="p",
        queue="q",
        task_key="k",
        stage="s",
        priority=7,
        item="i",
        worker="w2",
        submitted_at=sub.at,
        slot_acquired_at=claim.at,
        started_at=start.at,
        finished_at=None,
        updated_at=report.at,
        retries=1,
        progress=0.5,
        message="half",
        error="boom",
    )
    assert fold(history).task("t") == running
    failed = ev.TaskFailed(task="t", error="bad", **at(9))
    assert fold([*history, failed]).task("t") == msgspec.structs.replace(
        running,
        status=TaskStatus.FAILED,
        slot_acquired_at=None,
        finished_at=failed.at,
        updated_at=failed.at,
        error="bad",
    )


def test_a_late_started_never_undoes_a_terminal_state() -> None:
    """A started event delivered (or stamped) after completion leaves the task COMPLETED."""
    done = ev.TaskCompleted(task="t", **at(5))
    late = ev.TaskStarted(task="t", worker="w", **at(9))
    assert fold([done, late]).task("t").status is TaskStatus.COMPLETED  # type: ignore[union-attr]


def test_started_beats_claimed_in_one_stretch_whatever_the_clocks_say() -> None:
    """A worker's clock behind the scheduler's must not turn RUNNING back into PENDING."""
    start = ev.TaskStarted(task="t", worker="w", **at(1))
    claim = ev.TaskClaimed(task="t", worker="w", **at(2))
    view = fold([claim, start]).task("t")
    assert view is not None
    assert (view.status, view.slot_acquired_at) == (TaskStatus.RUNNING, start.at)


def test_pool_updates_change_only_the_fields_they_carry_and_null_clears() -> None:
    """Partial updates commute: each field is its own latest-wins register."""
    store = fold(
        [
            ev.PoolCreated(pool="p", concurrency_limit=4, **at(0)),
            ev.PoolUpdated(pool="p", paused=True, **at(1)),
        ]
    )
    assert msgspec.structs.asdict(store.pools()[0]) | {} == {
        "pool": "p",
        "concurrency_limit": 4,
        "paused": True,
        "created_at": BASE,
        "updated_at": BASE + timedelta(seconds=1),
    }
    cleared = fold(
        [
            ev.PoolCreated(pool="p", concurrency_limit=4, **at(0)),
            ev.PoolUpdated(pool="p", concurrency_limit=None, **at(1)),
        ]
    )
    assert cleared.pools()[0].concurrency_limit is None


def _retained(ledger: Ledger) -> list[ev.Event]:
    """What a snapshot keeps of the ledger: the events its records retain."""
    kept: dict[str, ev.Event] = {}
    retain(ledger.records(), kept)
    return list(kept.values())


@settings(max_examples=200)
@given(history=histories())
def test_the_retained_events_of_a_state_fold_back_into_that_state(
    history: list[ev.Event],
) -> None:
    """Snapshots keep only the events the state still depends on, and lose nothing by it."""
    store = fold(history)
    retained = _retained(store._ledger)
    assert model(retained).tasks == store.read_model().tasks
    assert model(retained).workers == store.read_model().workers


def test_the_pool_hint_is_retained_only_while_no_submission_is_known() -> None:
    """A task's pool hint (its latest event naming a pool) stands in for ``task.submitted``
    until one is known: a snapshot keeps it until then, and not after."""
    hinting = ev.TaskProgress(task="t", pool="p", progress=0.5, **at(1))
    later = ev.TaskProgress(task="t", progress=0.9, **at(2))  # the progress kept: no pool

    unsubmitted = fold([hinting, later])
    assert hinting in _retained(unsubmitted._ledger)
    view = unsubmitted.task("t")
    assert view is not None
    assert view.pool == "p"

    history = [ev.TaskSubmitted(task="t", pool="s", queue="r", **at(0)), hinting, later]
    submitted = fold(history)
    retained = _retained(submitted._ledger)
    assert hinting not in retained
    assert model(retained).tasks == submitted.read_model().tasks
    view = submitted.task("t")
    assert view is not None
    assert (view.pool, view.queue) == ("s", "r")


def test_slot_intervals_split_at_retries_and_end_at_the_terminal_event() -> None:
    """Each stretch runs from its first claim to the retry or terminal event that ends it."""
    store = fold(
        [
            ev.TaskSubmitted(task="t", pool="p", queue="q", stage="load", **at(0)),
            ev.TaskClaimed(task="t", worker="w1", **at(1)),
            ev.TaskStarted(task="t", worker="w1", **at(2)),
            ev.TaskRetrying(task="t", **at(3)),
            ev.TaskClaimed(task="t", worker="w2", **at(5)),
            ev.TaskStarted(task="t", worker="w2", **at(6)),
            ev.TaskCompleted(task="t", **at(9)),
            ev.TaskClaimed(task="open", worker="w2", **at(7)),
        ]
    )
    spans = [
        (i.task, i.attempt, i.worker, i.acquired_at, i.started_at, i.released_at, i.ended)
        for i in store.read_model().intervals
    ]
    t = lambda s: BASE + timedelta(seconds=s)  # noqa: E731
    assert spans == [
        ("open", 1, "w2", t(7), None, None, None),
        ("t", 1, "w1", t(1), t(2), t(3), TaskStatus.RETRYING),
        ("t", 2, "w2", t(5), t(6), t(9), TaskStatus.COMPLETED),
    ]


def test_worker_sessions_end_at_their_stop_or_the_next_start() -> None:
    """A restart without a stop closes the previous session; only the last is open-ended."""
    store = fold(
        [
            ev.WorkerStarted(worker="w", pool="p", slots=2, **at(0)),
            ev.WorkerStarted(worker="w", pool="p", slots=4, **at(10)),
            ev.WorkerStopped(worker="w", pool="p", **at(20)),
            ev.WorkerStarted(worker="w", pool="p", slots=1, **at(30)),
            ev.WorkerHeartbeat(worker="w", pool="p", **at(35)),
        ]
    )
    t = lambda s: BASE + timedelta(seconds=s)  # noqa: E731
    sessions = [
        (s.slots, s.started_at, s.stopped_at, s.next_started_at, s.last_seen)
        for s in store.read_model().sessions
    ]
    assert sessions == [
        (2, t(0), None, t(10), None),
        (4, t(10), t(20), t(30), None),
        (1, t(30), None, None, t(35)),
    ]
