"""Instrumentation helpers on a real nats-server, read back through the daemon's read model."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher, SyncPublisher
from workledger.instrument import AsyncWorker, SyncWorker, WorkerInfo
from workledger.projections.partitions import pool_subjects
from workledger.projections.views import TaskStatus, WorkerStatus

from .conftest import run_in_thread
from .ledger import caught_up, projecting

pytestmark = pytest.mark.anyio

INFO = WorkerInfo(worker="w.1", pool="ml.gpu", queues=("train",), slots=2, heartbeat_interval=0.05)


async def test_a_running_worker_starts_heartbeats_and_stops(log_stream: LogConfig) -> None:
    """worker.started on entry, heartbeats every interval, worker.stopped on exit."""
    async with projecting(log_stream) as (projector, store), Publisher(log_stream) as pub:
        worker = AsyncWorker(pub, INFO)
        async with worker.running():
            assert await projector.wait_for(4, timeout=10), "started, then three heartbeats"
            assert worker.heartbeats >= 3
            (online,) = store.workers(now=datetime.now(UTC))
            assert (online.status, online.worker.slots, online.worker.pool) == (
                WorkerStatus.ONLINE,
                2,
                "ml.gpu",
            )
            assert online.worker.last_seen > online.worker.started_at  # type: ignore[operator]
        await pub.flush()
        await caught_up(log_stream, projector)
        (stopped,) = store.workers(now=datetime.now(UTC))
        assert (stopped.status, stopped.worker.stop_reason) == (WorkerStatus.STOPPED, None)


async def test_a_unit_of_work_holds_a_slot_while_it_runs_and_completes_with_its_timing(
    log_stream: LogConfig,
) -> None:
    """Claimed and started on entry (RUNNING, one slot held), completed on exit, timed."""
    async with projecting(log_stream) as (projector, store), Publisher(log_stream) as pub:
        worker = AsyncWorker(pub, INFO)
        async with worker.task("job-1") as job:
            await pub.flush()
            await caught_up(log_stream, projector)
            running = store.task("job-1")
            assert running is not None
            assert (running.status, running.worker, running.pool, running.queue) == (
                TaskStatus.RUNNING,
                "w.1",
                "ml.gpu",
                "train",
            )
            assert [h.task for h in store.slot_holders()] == ["job-1"]
            await job.progress(0.5, "half way")
            await pub.flush()
            await caught_up(log_stream, projector)
            assert store.task("job-1").progress == 0.5  # type: ignore[union-attr]
        await pub.flush()
        await caught_up(log_stream, projector)
        done = store.task("job-1")
        assert done is not None
        assert done.status is TaskStatus.COMPLETED
        assert done.finished_at >= done.started_at  # type: ignore[operator]
        assert store.slot_holders() == []


async def test_an_exception_fails_the_task_with_its_text_and_still_propagates(
    log_stream: LogConfig,
) -> None:
    """The error text lands in the read model; the caller sees its own exception."""
    async with projecting(log_stream) as (projector, store), Publisher(log_stream) as pub:
        worker = AsyncWorker(pub, INFO)
        with pytest.raises(ValueError, match="bad shard"):
            async with worker.task("job-2"):
                raise ValueError("bad shard")
        await pub.flush()
        await caught_up(log_stream, projector)
    failed = store.task("job-2")
    assert failed is not None
    assert (failed.status, failed.error) == (TaskStatus.FAILED, "ValueError: bad shard")


async def test_a_cancelled_unit_of_work_is_recorded_as_cancelled(log_stream: LogConfig) -> None:
    """Cancellation still publishes the end (shielded), as task.cancelled."""
    async with projecting(log_stream) as (projector, store), Publisher(log_stream) as pub:
        worker = AsyncWorker(pub, INFO)
        entered = asyncio.Event()

        async def work() -> None:
            async with worker.task("job-3"):
                entered.set()
                await asyncio.Event().wait()

        running = asyncio.create_task(work())
        await entered.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await pub.flush()
        await caught_up(log_stream, projector)
    assert store.task("job-3").status is TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_the_decorator_names_tasks_from_arguments_and_submits_when_asked(
    log_stream: LogConfig,
) -> None:
    """Every call is one task; submit=True adds task.submitted with the task key."""
    async with projecting(log_stream) as (projector, store), Publisher(log_stream) as pub:
        worker = AsyncWorker(pub, INFO)

        @worker.tracked(task_key="resize", task_id=lambda n: f"img-{n}", submit=True)
        async def resize(n: int) -> int:
            return n * 2

        assert [await resize(n) for n in range(3)] == [0, 2, 4]
        await pub.flush()
        await caught_up(log_stream, projector)
    tasks = {t.task: t for t in store.tasks(limit=10)}
    assert sorted(tasks) == ["img-0", "img-1", "img-2"]
    assert {(t.status, t.task_key, t.queue) for t in tasks.values()} == {
        (TaskStatus.COMPLETED, "resize", "train")
    }


async def test_a_daemon_partitioned_by_pool_sees_every_task_event_the_helpers_publish(
    log_stream: LogConfig,
) -> None:
    """Task events carry the pool, so a pool's filter misses none of them."""
    only_gpu = pool_subjects(log_stream.subject_prefix, ["ml.gpu"])
    async with projecting(log_stream, only_gpu) as (projector, store), Publisher(log_stream) as pub:
        worker = AsyncWorker(pub, INFO)
        async with worker.running(), worker.task("job-4"):
            pass
        await pub.flush()
        await caught_up(log_stream, projector)
    assert store.task("job-4").status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    assert store.stats().applied == 5  # started, claimed, started, completed, stopped


def test_the_sync_helpers_do_the_same_from_threads(log_stream: LogConfig) -> None:
    """SyncWorker: a heartbeat thread, a task context and a decorator over a SyncPublisher."""
    with SyncPublisher(log_stream) as pub:
        worker = SyncWorker(pub, INFO)
        with worker.running():
            beaten = threading.Event()
            _wait_sync(lambda: worker.heartbeats >= 2, beaten)

            @worker.tracked(task_id=lambda name: name)
            def job(name: str) -> None:
                if name == "bad":
                    raise RuntimeError("disk full")

            job("good")
            with pytest.raises(RuntimeError):
                job("bad")
            with worker.task("manual") as handle:
                handle.progress(1.0)
    run_in_thread(_check_sync_model, log_stream)


async def _check_sync_model(config: LogConfig) -> None:
    async with projecting(config) as (projector, store):
        await caught_up(config, projector)
    statuses = {t.task: (t.status, t.error) for t in store.tasks(limit=10)}
    assert statuses == {
        "good": (TaskStatus.COMPLETED, None),
        "bad": (TaskStatus.FAILED, "RuntimeError: disk full"),
        "manual": (TaskStatus.COMPLETED, None),
    }
    (worker,) = store.workers(now=datetime.now(UTC))
    assert worker.status is WorkerStatus.STOPPED


def _wait_sync(condition: object, flag: threading.Event, timeout: float = 10) -> None:
    """Wait for a condition set by another thread, checking every 10 ms."""
    for _ in range(int(timeout / 0.01)):
        if condition():  # type: ignore[operator]
            return
        flag.wait(0.01)
    raise AssertionError("condition not met in time")
