"""The antflow bridge: a real antflow pipeline's status callbacks, read back as a read model."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workledger.bridges.antflow import AntflowBridge, translate_status
from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher
from workledger.projections.views import TaskStatus, WorkerStatus

from .ledger import caught_up, projecting

antflow = pytest.importorskip("antflow")
pytestmark = pytest.mark.anyio


def test_each_antflow_status_maps_to_its_workledger_event() -> None:
    """queued → submitted (stage as queue), in_progress → started, failed carries the error."""

    def status(name: str, **meta: object) -> object:
        return antflow.StatusEvent(
            item_id=7, stage="fetch", status=name, worker="fetch-W0", timestamp=0.0, metadata=meta
        )

    route = {"pool": "p", "worker": "w", "task": "7@fetch"}
    made = {
        name: translate_status(status(name, error="boom", error_type="OSError", attempt=2), **route)  # type: ignore[arg-type]
        for name in ("queued", "in_progress", "completed", "failed", "retrying", "skipped")
    }
    assert made["queued"] == ev.TaskSubmitted(
        task="7@fetch", pool="p", queue="fetch", stage="fetch", item="7"
    )
    assert made["in_progress"] == ev.TaskStarted(
        task="7@fetch", pool="p", worker="w", queue="fetch"
    )
    assert made["failed"] == ev.TaskFailed(task="7@fetch", pool="p", error="OSError: boom")
    assert made["retrying"] == ev.TaskRetrying(
        task="7@fetch", pool="p", attempt=2, error="OSError: boom"
    )
    assert (type(made["completed"]), type(made["skipped"])) == (ev.TaskCompleted, ev.TaskCancelled)


async def _fetch(x: int) -> int:
    if x == 3:
        raise ValueError("bad item")
    return x * 10


async def _save(x: int) -> int:
    return x


async def test_a_real_pipeline_is_visible_per_item_and_stage_with_its_workers(
    log_stream: LogConfig,
) -> None:
    """Two stages, one item failing after a retry; workers registered, then stopped."""
    stages = [
        antflow.Stage(
            name="fetch", workers=2, tasks=[_fetch], retry="per_stage", stage_attempts=2,
            task_wait_seconds=0,
        ),
        antflow.Stage(name="save", workers=1, tasks=[_save]),
    ]  # fmt: skip
    async with projecting(log_stream) as (projector, store), Publisher(log_stream) as pub:
        bridge = AntflowBridge(pub, pool="scrape", worker_prefix="box:")
        pipeline = antflow.Pipeline(stages=stages, status_tracker=bridge.tracker())
        async with bridge.running():
            results = await pipeline.run([1, 2, 3])
        assert sorted(r.value for r in results) == [10, 20]
        await pub.flush()
        await caught_up(log_stream, projector)
    tasks = {t.task: t for t in store.tasks(limit=100)}
    assert {name: t.status for name, t in tasks.items()} == {
        "0@fetch": TaskStatus.COMPLETED,
        "1@fetch": TaskStatus.COMPLETED,
        "2@fetch": TaskStatus.FAILED,
        "0@save": TaskStatus.COMPLETED,
        "1@save": TaskStatus.COMPLETED,
    }
    failed = tasks["2@fetch"]
    assert (failed.error, failed.retries, failed.stage) == ("ValueError: bad item", 1, "fetch")
    assert tasks["0@save"].worker == "box:save-W0"
    workers = store.workers(now=datetime.now(UTC))
    assert {w.worker.worker for w in workers} <= {"box:fetch-W0", "box:fetch-W1", "box:save-W0"}
    assert {w.status for w in workers} == {WorkerStatus.STOPPED}
    assert {w.worker.pool for w in workers} == {"scrape"}
