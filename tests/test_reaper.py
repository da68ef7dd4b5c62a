"""Dead workers release their slots: worker.lost, worker.forgotten and the reaper behind them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.projections.reaper import LOST_REASON, Reaper, ReaperConfig, plan
from workledger.projections.views import TaskStatus, WorkerStatus
from workledger.rebuild import rebuild
from workledger.stores.base import Store
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

from . import test_store_contract as contract
from .conftest import StoredMessage, read_all
from .histories import BASE
from .test_fold import at, model
from .test_store_contract import MakeStore, applied

make_store = contract.make_store  # the contract suite's fixture: every test runs on both stores

REAP = ReaperConfig(lost_after=60, forget_after=3600, interval=0.05)


def silent_worker() -> list[ev.Event]:
    """w1 starts with 2 slots, runs a and claims b, then goes silent at t=20."""
    return [
        ev.WorkerStarted(worker="w1", pool="gpu", slots=2, heartbeat_interval=5.0, **at(0)),
        ev.TaskSubmitted(task="a", pool="gpu", queue="q", **at(1)),
        ev.TaskClaimed(task="a", worker="w1", **at(2)),
        ev.TaskStarted(task="a", worker="w1", **at(3)),
        ev.TaskClaimed(task="b", worker="w1", **at(4)),
        ev.WorkerHeartbeat(worker="w1", pool="gpu", **at(20)),
    ]


def when(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def test_a_worker_offline_past_the_grace_is_lost_and_its_tasks_crash(
    make_store: MakeStore,
) -> None:
    """The plan: one worker.lost and one task.crashed per held task, at the grace's end."""
    store = applied(make_store(), silent_worker())
    assert plan(store, when(20 + 15 + 59), REAP) == []  # offline at 35, lost at 95
    planned = plan(store, when(95), REAP)
    assert [e.type for e in planned] == ["worker.lost", "task.crashed", "task.crashed"]
    assert {getattr(e, "task", None) for e in planned[1:]} == {"a", "b"}
    assert all(e.at == when(95) for e in planned)
    assert all(getattr(e, "reason", "") == LOST_REASON for e in planned[1:])


def test_two_planners_with_the_same_model_plan_the_same_ids(make_store: MakeStore) -> None:
    """Ids and times come from the decision, not the daemon: that is what makes it exactly once."""
    first = plan(applied(make_store(), silent_worker()), when(100), REAP)
    second = plan(applied(make_store(), silent_worker()), when(500), REAP)
    assert first == second


def test_once_applied_the_verdict_frees_the_slots_and_the_worker_is_lost(
    make_store: MakeStore,
) -> None:
    """After worker.lost and the crashes, no slot is held and the worker is LOST, not OFFLINE."""
    history = silent_worker()
    store = applied(make_store(), history + plan(applied(make_store(), history), when(95), REAP))
    assert store.slot_holders() == []
    assert {store.task(t).status for t in "ab"} == {TaskStatus.CRASHED}  # type: ignore[union-attr]
    (found,) = store.workers(now=when(200))
    assert (found.status, found.tasks, found.worker.last_seen) == (WorkerStatus.LOST, (), when(20))
    assert plan(store, when(200), REAP) == [], "nothing left to reap"


def test_a_lost_worker_is_lost_until_it_starts_again(make_store: MakeStore) -> None:
    """A heartbeat after the verdict does not revive it; a worker.started after last_seen does."""
    lost = ev.WorkerLost(worker="w1", pool="gpu", last_seen=when(20), **at(95))
    late = ev.WorkerHeartbeat(worker="w1", pool="gpu", **at(96))
    store = applied(make_store(), [*silent_worker(), lost, late])
    assert store.workers(now=when(97))[0].status is WorkerStatus.LOST
    again = ev.WorkerStarted(worker="w1", pool="gpu", **at(30))  # started after last_seen 20
    store = applied(make_store(), [*silent_worker(), lost, again])
    assert store.workers(now=when(31))[0].status is WorkerStatus.ONLINE


def test_worker_lost_ends_the_session_it_falls_in(make_store: MakeStore) -> None:
    """The session its last_seen belongs to ends at the verdict; the history keeps it."""
    lost = ev.WorkerLost(worker="w1", pool="gpu", last_seen=when(20), **at(95))
    store = applied(make_store(), [*silent_worker(), lost])
    (session,) = store.read_model().sessions
    assert (session.started_at, session.stopped_at) == (when(0), when(95))


def test_a_forgotten_worker_leaves_the_live_view_but_not_the_history(
    make_store: MakeStore,
) -> None:
    """worker.forgotten drops it from worker queries; its sessions and tasks stay."""
    gone = ev.WorkerForgotten(worker="w1", pool="gpu", **at(4000))
    store = applied(make_store(), [*silent_worker(), gone])
    assert store.workers(now=when(5000)) == []
    assert store.read_model().workers == []
    assert len(store.read_model().sessions) == 1
    back = ev.WorkerHeartbeat(worker="w1", pool="gpu", **at(4001))
    store = applied(make_store(), [*silent_worker(), gone, back])
    assert [w.worker.worker for w in store.workers(now=when(4002))] == ["w1"]


def test_the_reaper_forgets_workers_gone_longer_than_the_retention(make_store: MakeStore) -> None:
    """STOPPED, LOST or OFFLINE for forget_after: one worker.forgotten each, deterministic."""
    stopped = ev.WorkerStarted(worker="w2", pool="cpu", **at(0))
    stop = ev.WorkerStopped(worker="w2", pool="cpu", **at(10))
    store = applied(make_store(), [stopped, stop])
    assert plan(store, when(10 + 3599), REAP) == []
    (forgotten,) = plan(store, when(10 + 3600), REAP)
    assert (forgotten.type, forgotten.at) == ("worker.forgotten", when(3610))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_verdicts_fold_the_same_in_any_order(data: st.DataObject) -> None:
    """worker.lost, task.crashed and worker.forgotten are order-free like every other event."""
    history = silent_worker()
    history += plan(fold_memory(history), when(4000), REAP)
    shuffled = data.draw(st.permutations(history))
    assert model(shuffled) == model(history)


def fold_memory(history: list[ev.Event]) -> MemoryStore:
    """A memory store with ``history`` applied."""
    store = MemoryStore()
    applied(store, history)
    return store


# --- two daemons against one stream ------------------------------------------------------------


@pytest.mark.anyio
async def test_two_daemons_reaping_at_once_publish_each_verdict_exactly_once(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """A worker goes silent holding 3 tasks; two daemons reap: one worker.lost, one crash each."""
    now = datetime.now(UTC)
    history = _silent_fleet(now - timedelta(minutes=10))
    async with Publisher(log_stream) as pub:
        for event in history:
            await pub.publish(event)
    duck = DuckDBStore(tmp_path / "a.duckdb")
    stores: list[list[Store]] = [[MemoryStore(), duck], [MemoryStore()]]
    config = ReaperConfig(lost_after=1, interval=0.05)
    projectors: list[Projector] = []
    async with anyio.create_task_group() as tg:
        for group in stores:
            projector = Projector(ProjectorConfig(log=log_stream, watch_interval=0.2), group)
            await tg.start(projector.run)
            reaper = Reaper(config, group[0], log_stream, ready=lambda p=projector: p.caught_up)
            await tg.start(reaper.run)
            projectors.append(projector)
        with anyio.fail_after(20):
            while not all(_freed(group) for group in stores):  # noqa: ASYNC110
                await anyio.sleep(0.05)  # two daemons' verdicts: no single event to wait on
            # A store that has not folded the history yet holds no slots either (the DuckDB
            # lane lags the memory store): wait for all four verdicts, then for every store.
            while len(_verdicts(stored := await read_all(log_stream))) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            for projector in projectors:
                await projector.wait_for(stored[-1].seq)
        tg.cancel_scope.cancel()
    assert _verdicts(stored) == {"worker.lost": ["silent"], "task.crashed": ["t0", "t1", "t2"]}
    live = duck.read_model()
    duck.close()
    assert all(group[0].read_model() == live for group in stores), "both daemons agree"
    await rebuild(log_stream, tmp_path / "rebuilt.duckdb", progress=False)
    with DuckDBStore(tmp_path / "rebuilt.duckdb", read_only=True) as rebuilt:
        assert rebuilt.read_model() == live


def _silent_fleet(since: datetime) -> list[ev.Event]:
    stamp = {"at": since}
    events: list[ev.Event] = [ev.WorkerStarted(worker="silent", pool="p", slots=3, **stamp)]
    for i in range(3):
        events += [
            ev.TaskSubmitted(task=f"t{i}", pool="p", queue="q", **stamp),
            ev.TaskStarted(task=f"t{i}", worker="silent", **stamp),
        ]
    return events


def _freed(group: list[Store]) -> bool:
    return all(store.slot_holders() == [] for store in group)


def _verdicts(stored: list[StoredMessage]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for message in stored:
        if message.event.type in ("worker.lost", "task.crashed"):
            assert message.msg_id == message.event.id
            found.setdefault(message.event.type, []).append(message.event.entity_key)
    return {kind: sorted(names) for kind, names in found.items()}
