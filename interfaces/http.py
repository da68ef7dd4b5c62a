"""The daemon's HTTP API (Litestar: msgspec-native, with an OpenAPI document at /schema).

Read-only JSON over the query service. Bad parameters get a 4xx with a message, never a 500.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Litestar, Router, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.params import Parameter

from workledger.projections.utilization import Grouping, UtilizationRow
from workledger.projections.views import (
    PoolView,
    Quarantined,
    QueueView,
    TaskStatus,
    TaskView,
    WorkerStatus,
    WorkerWithStatus,
)
from workledger.queries import Health, Queries, Slots

__all__ = ["MAX_LIMIT", "create_app"]

MAX_LIMIT = 10_000
Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")]
OptionalText = Annotated[str | None, Parameter(min_length=1, max_length=512)]


def create_app(queries: Queries) -> Litestar:
    """The API for one query service; the routes close over it."""

    @get("/workers", summary="Workers with status, newest seen first")
    async def workers(
        pool: OptionalText = None,
        queue: OptionalText = None,
        task_key: Annotated[list[str] | None, Parameter(query="task_key")] = None,
        status: WorkerStatus | None = None,
        limit: Limit = 1000,
    ) -> list[WorkerWithStatus]:
        return queries.workers(
            pool=pool, queue=queue, task_keys=task_key or (), status=status, limit=limit
        )

    @get("/slots", summary="Slot holders and counts per pool and queue")
    async def slots(pool: OptionalText = None, queue: OptionalText = None) -> Slots:
        return queries.slots(pool=pool, queue=queue)

    @get("/tasks", summary="Tasks by filter, most recently updated first")
    async def tasks(
        status: TaskStatus | None = None,
        pool: OptionalText = None,
        queue: OptionalText = None,
        worker: OptionalText = None,
        limit: Limit = 100,
    ) -> list[TaskView]:
        return queries.tasks(status=status, pool=pool, queue=queue, worker=worker, limit=limit)

    @get("/tasks/{task_id:path}", summary="One task by id")
    async def task(task_id: str) -> TaskView:
        found = queries.task(task_id.removeprefix("/"))
        if found is None:
            raise NotFoundException(f"no task {task_id.removeprefix('/')!r}")
        return found

    @get("/pools", summary="Pools and their settings")
    async def pools() -> list[PoolView]:
        return queries.pools()

    @get("/queues", summary="Queues and their settings")
    async def queues(pool: OptionalText = None) -> list[QueueView]:
        return queries.queues(pool=pool)

    @get("/quarantine", summary="Messages set aside with their reasons, newest first")
    async def quarantine(limit: Limit = 100) -> list[Quarantined]:
        return queries.quarantined(limit=limit)

    @get("/utilization", summary="Busy over capacity, throughput and run times per group")
    async def utilization(
        by: Grouping = "pool",
        since: Annotated[str | None, Parameter(description="RFC 3339 or -1h")] = None,
        until: Annotated[str | None, Parameter(description="RFC 3339 or -10m")] = None,
        bucket: Annotated[str | None, Parameter(description="1m, 5m, 1h, 1d...")] = None,
    ) -> list[UtilizationRow]:
        try:
            return queries.utilization(by=by, since=since, until=until, bucket=bucket)
        except ValueError as exc:
            raise ValidationException(str(exc)) from None

    @get("/checkpoint", summary="Wait until the read model covers a stream sequence")
    async def checkpoint(
        wait_for: Annotated[int, Parameter(ge=0)] = 0,
        timeout: Annotated[float, Parameter(ge=0, le=60)] = 0,  # noqa: ASYNC109 (an HTTP parameter)
    ) -> Health:
        if queries.projector is not None and wait_for:
            await queries.projector.wait_for(wait_for, timeout)
        return queries.health()

    @get("/healthz", summary="NATS connected, checkpoint and lag", include_in_schema=True)
    async def healthz() -> Health:
        return queries.health()

    v1 = Router(
        path="/v1",
        route_handlers=[
            workers,
            slots,
            tasks,
            task,
            pools,
            queues,
            quarantine,
            checkpoint,
            utilization,
        ],
    )
    return Litestar(
        route_handlers=[v1, healthz],
        openapi_config=OpenAPIConfig(title="workledger", version="1"),
        debug=False,
        logging_config=None,  # the CLI configures logging; a library must not
    )
