"""antflow-style status callbacks → workledger events.

antflow's ``Pipeline`` reports each item's progress through a stage to a ``StatusTracker``
callback (``on_status_change(StatusEvent)``): ``queued``, ``in_progress``, ``completed``,
``failed``, ``retrying``, ``skipped``, with the stage, the worker (``fetch-W0``) and metadata
(the error). The bridge is such a callback::

    bridge = AntflowBridge(publisher, pool="scrape")
    pipeline = Pipeline(stages=[...], status_tracker=bridge.tracker())
    async with bridge.running():          # heartbeats for its workers, stopped at the end
        await pipeline.run(items)

One item in one stage is one workledger task (``<item>@<stage>`` by default): the stage is its
queue and stage, so utilization per stage and slots per stage come out of the read model.
Statuses map as ``queued`` → submitted, ``in_progress`` → started, ``completed`` →
completed, ``failed`` → failed (with ``error_type: error``), ``retrying`` → retrying,
``skipped`` → cancelled. Each antflow worker becomes a workledger worker with one slot,
registered the first time it is seen; its name is prefixed with host and process id, since
``fetch-W0`` exists in every process that runs the pipeline.

Any object with the ``StatusEvent`` attributes works (``item_id``, ``stage``, ``status``,
``worker``, ``timestamp``, ``metadata``), so other trackers of the same shape can use it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import msgspec

from workledger.core import events as ev
from workledger.core.publisher import Publisher

__all__ = ["AntflowBridge", "StatusEventLike", "translate_status"]

_MAX_TEXT = 4096
TaskNamer = Callable[[Any, str], str]


class StatusEventLike(Protocol):
    """The attributes of ``antflow.StatusEvent`` the bridge reads."""

    item_id: Any
    stage: str | None
    status: str
    worker: str | None
    timestamp: float
    metadata: dict[str, Any]


def _default_task(item_id: Any, stage: str) -> str:
    return f"{item_id}@{stage}"


def translate_status(  # noqa: PLR0911 (one return per status reads best)
    status: StatusEventLike, *, pool: str, worker: str | None, task: str
) -> ev.Event | None:
    """The workledger event one antflow status means (None for a status it does not know)."""
    route: dict[str, Any] = {"task": task, "pool": pool}
    stage = status.stage or "default"
    meta: Mapping[str, Any] = status.metadata or {}
    match status.status:
        case "queued":
            item = str(status.item_id)[:_MAX_TEXT]
            return ev.TaskSubmitted(**route, queue=stage, stage=stage, item=item)
        case "in_progress" if worker is not None:
            return ev.TaskStarted(**route, worker=worker, queue=stage)
        case "completed":
            return ev.TaskCompleted(**route)
        case "failed":
            return ev.TaskFailed(**route, error=_error(meta))
        case "retrying":
            attempt = meta.get("attempt")
            return ev.TaskRetrying(**route, attempt=attempt, error=_error(meta))
        case "skipped":
            return ev.TaskCancelled(**route)
    return None


def _error(meta: Mapping[str, Any]) -> str | None:
    error, kind = meta.get("error"), meta.get("error_type")
    if error is None:
        return None
    return (f"{kind}: {error}" if kind else str(error))[:_MAX_TEXT]


class AntflowBridge:
    """Publishes an antflow pipeline's status changes (see the module doc)."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        pool: str,
        task_name: TaskNamer = _default_task,
        worker_prefix: str | None = None,
        heartbeat_interval: float = 30.0,
    ) -> None:
        self.publisher = publisher
        self.pool = pool
        self.task_name = task_name
        self.worker_prefix = (
            f"{socket.gethostname()}:{os.getpid()}:" if worker_prefix is None else worker_prefix
        )
        self.heartbeat_interval = heartbeat_interval
        self.workers: dict[str, str] = {}  # workledger worker id → its stage

    def tracker(self) -> Any:
        """An ``antflow.StatusTracker`` whose status callback is this bridge."""
        from antflow import StatusTracker  # noqa: PLC0415 (the bridges extra is optional)

        return StatusTracker(on_status_change=self.on_status_change)

    async def on_status_change(self, status: StatusEventLike) -> None:
        """The callback: register the worker the first time, then publish the status."""
        worker = self._worker(status)
        at = datetime.fromtimestamp(status.timestamp, UTC)
        if worker is not None and worker not in self.workers:
            await self._register(worker, status.stage or "default", at)
        task = self.task_name(status.item_id, status.stage or "default")
        event = translate_status(status, pool=self.pool, worker=worker, task=task)
        if event is not None:
            await self.publisher.publish(msgspec.structs.replace(event, at=at))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Heartbeat every worker seen so far while the block runs; stop them all after it."""
        beating = asyncio.create_task(self._beat(), name="antflow bridge heartbeats")
        try:
            yield
        finally:
            beating.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(beating, return_exceptions=True)
                for worker in self.workers:
                    await self.publisher.publish(ev.WorkerStopped(worker=worker, pool=self.pool))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            for worker in list(self.workers):
                await self.publisher.publish(ev.WorkerHeartbeat(worker=worker, pool=self.pool))

    def _worker(self, status: StatusEventLike) -> str | None:
        return f"{self.worker_prefix}{status.worker}" if status.worker else None

    async def _register(self, worker: str, stage: str, at: datetime) -> None:
        self.workers[worker] = stage
        started = ev.WorkerStarted(
            worker=worker,
            pool=self.pool,
            queues=(stage,),
            slots=1,
            heartbeat_interval=self.heartbeat_interval,
            host=socket.gethostname(),
            pid=os.getpid(),
            at=at,
        )
        await self.publisher.publish(started)
