"""The daemon's HTTP API (Litestar: msgspec-native, with an OpenAPI document at /schema).

Read-only JSON over the query service; docs/http.md lists every endpoint. The rules every
route follows (422 for any invalid parameter, the optional bearer token) live in
:mod:`workledger.http_rules`; ``/metrics`` in :mod:`workledger.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Annotated, Any

import anyio
from litestar import Litestar, Response, Router, get, post
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import RequestBody
from litestar.params import Body, FromPath, FromQuery, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CollectorRegistry

from workledger.feed import feed_router
from workledger.http_rules import ERROR_RESPONSES, PUBLIC, bearer_guard, unprocessable
from workledger.metrics import DaemonCollector, HttpMetrics, metrics_route
from workledger.page import page_router, session_router
from workledger.prefect_compat import TaskWorker, TaskWorkerFilterBody, task_worker
from workledger.projections.utilization import Grouping, UtilizationRow
from workledger.projections.views import (
    Quarantined,
    TaskStatus,
    TaskView,
    WorkerStatus,
    WorkerWithStatus,
)
from workledger.queries import Health, Queries, Slots
from workledger.readiness import PoolStatus, QueueStatus

__all__ = ["DEFAULT_WORKERS", "MAX_LIMIT", "create_app"]

MAX_LIMIT = 10_000  # the hard maximum of every ``limit``: above it, 422
DEFAULT_WORKERS = 1000
# Every query parameter is declared with its constraints, which Litestar checks (422 if not met)
# and writes into the OpenAPI document.
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"1 to {MAX_LIMIT}")]
OptionalText = Annotated[str | None, QueryParameter(min_length=1, max_length=512)]
Seq = Annotated[int | None, QueryParameter(ge=0, description="a stream sequence")]
# Repeatable query parameters are tuples defaulting to (): the document then says "an array"
# plainly. Optional lists became oneOf(array, null), which fuzzers read as "one value is invalid".
TaskKeys = Annotated[tuple[str, ...], QueryParameter(description="repeatable: ANY of these")]
Labels = Annotated[
    tuple[str, ...],
    QueryParameter(description="repeatable `key:value`: ALL must match"),
]


def create_app(queries: Queries, *, api_token: str | None = None) -> Litestar:
    """The API for one query service; the routes close over it.

    With ``api_token``, every route but ``/healthz`` requires ``Authorization: Bearer <token>``
    (or the live page's session cookie for it).
    """
    registry = CollectorRegistry()
    registry.register(DaemonCollector(queries))
    http_metrics = HttpMetrics(registry)
    v1 = Router(
        path="/v1",
        route_handlers=[
            *_worker_routes(queries),
            *_task_routes(queries),
            *_fleet_routes(queries),
            _checkpoint_route(queries),
        ],
    )
    app = Litestar(
        route_handlers=[
            v1,
            _workers_filter_route(queries, "/workers/filter"),  # Prefect's path, unversioned
            _health_route(queries),
            metrics_route(registry),
            feed_router(queries),
            page_router(),
            session_router(api_token),
        ],
        openapi_config=OpenAPIConfig(title="workledger", version="1"),
        exception_handlers={ValidationException: unprocessable},
        guards=[bearer_guard(api_token)] if api_token else [],
        middleware=[http_metrics.middleware],
        debug=False,
        logging_config=None,  # the CLI configures logging; a library must not
    )
    _document_optional_bodies(app, ["/workers/filter", "/v1/workers/filter"])
    return app


def _document_optional_bodies(app: Litestar, paths: Iterable[str]) -> None:
    """Litestar documents every request body as required; Prefect's filter body is optional.

    The document is built once and cached, so amending it here amends what /schema serves.
    """
    documented = app.openapi_schema.paths or {}
    for path in paths:
        item = documented.get(path)
        operation = getattr(item, "post", None)
        body = getattr(operation, "request_body", None)
        if isinstance(body, RequestBody):
            body.required = False


def _worker_routes(queries: Queries) -> list[Any]:
    @get(
        "/workers",
        summary="Workers with status, newest seen first",
        responses=ERROR_RESPONSES,
    )
    async def workers(
        *,
        pool: OptionalText = None,
        queue: OptionalText = None,
        task_key: TaskKeys = (),
        label: Labels = (),
        status: FromQuery[WorkerStatus | None] = None,
        limit: Limit = DEFAULT_WORKERS,
    ) -> list[WorkerWithStatus]:
        return queries.workers(
            pool=pool,
            queue=queue,
            task_keys=task_key or (),
            labels=_labels(label or ()),
            status=status,
            limit=limit,
        )

    return [workers, _workers_filter_route(queries, "/workers/filter")]


def _workers_filter_route(queries: Queries, path: str) -> Any:
    @post(
        path,
        summary="Workers by Prefect's task-worker filter (ANY of task_keys; none: all)",
        status_code=HTTP_200_OK,
        responses=ERROR_RESPONSES,
    )
    async def workers_filter(
        data: Annotated[TaskWorkerFilterBody | None, Body(title="Prefect's filter body")] = None,
        status: FromQuery[WorkerStatus | None] = None,
        limit: Limit = DEFAULT_WORKERS,
    ) -> list[TaskWorker]:
        wanted = data.task_worker_filter if data is not None else None
        keys = wanted.task_keys if wanted is not None else []
        found = queries.workers(task_keys=keys, status=status, limit=limit)
        return [task_worker(w) for w in found]

    return workers_filter


def _task_routes(queries: Queries) -> list[Any]:
    @get(
        "/tasks",
        summary="Tasks by filter, newest updated first",
        responses=ERROR_RESPONSES,
    )
    async def tasks(
        status: FromQuery[TaskStatus | None] = None,
        pool: OptionalText = None,
        queue: OptionalText = None,
        worker: OptionalText = None,
        limit: Limit = 100,
    ) -> list[TaskView]:
        return queries.tasks(status=status, pool=pool, queue=queue, worker=worker, limit=limit)

    @get(
        "/tasks/recent",
        summary="Finished tasks, newest first",
        responses=ERROR_RESPONSES,
    )
    async def recent(limit: Limit = 100) -> list[TaskView]:
        return queries.recent(limit=limit)

    @get(
        "/tasks/{task_id:path}",
        summary="One task by id",
        raises=[NotFoundException],
        responses=ERROR_RESPONSES,
    )
    async def task(task_id: FromPath[str]) -> TaskView:
        found = queries.task(task_id.removeprefix("/"))
        if found is None:
            raise NotFoundException(f"no task {task_id.removeprefix('/')!r}")
        return found

    return [tasks, recent, task]


def _fleet_routes(queries: Queries) -> list[Any]:
    @get(
        "/slots",
        summary="Slot holders and counts per pool and queue",
        responses=ERROR_RESPONSES,
    )
    async def slots(pool: OptionalText = None, queue: OptionalText = None) -> Slots:
        return queries.slots(pool=pool, queue=queue)

    @get("/pools", summary="Pools: settings and READY / NOT_READY / PAUSED now")
    async def pools() -> list[PoolStatus]:
        return queries.pool_status()

    @get(
        "/queues",
        summary="Queues: settings and READY / NOT_READY / PAUSED now",
        responses=ERROR_RESPONSES,
    )
    async def queues(pool: OptionalText = None) -> list[QueueStatus]:
        return queries.queue_status(pool=pool)

    @get(
        "/quarantine",
        summary="Messages set aside with their reasons, newest first",
        responses=ERROR_RESPONSES,
    )
    async def quarantine(
        limit: Limit = 100, after_seq: Seq = None, before_seq: Seq = None
    ) -> list[Quarantined]:
        return queries.quarantined(limit=limit, after_seq=after_seq, before_seq=before_seq)

    @get(
        "/utilization",
        summary="Busy over capacity, throughput and run times per group",
        responses=ERROR_RESPONSES,
    )
    async def utilization(
        by: FromQuery[Grouping] = "pool",
        since: Annotated[str | None, QueryParameter(description="RFC 3339 or -1h")] = None,
        until: Annotated[str | None, QueryParameter(description="RFC 3339 or -10m")] = None,
        bucket: Annotated[str | None, QueryParameter(description="1m, 5m, 1h, 1d...")] = None,
    ) -> list[UtilizationRow]:
        ask = partial(queries.utilization, by=by, since=since, until=until, bucket=bucket)
        try:
            # From the history store, in a thread: a day of intervals never stalls the fold.
            return await anyio.to_thread.run_sync(ask) if queries.history else ask()
        except ValueError as exc:
            raise ValidationException(str(exc)) from None

    return [slots, pools, queues, quarantine, utilization]


def _checkpoint_route(queries: Queries) -> Any:
    @get(
        "/checkpoint",
        summary="Wait until the read model covers a stream sequence",
        responses=ERROR_RESPONSES,
    )
    async def checkpoint(
        wait_for: Annotated[int, QueryParameter(ge=0)] = 0,
        timeout: Annotated[float, QueryParameter(ge=0, le=60)] = 0,  # noqa: ASYNC109 (an HTTP parameter)
    ) -> Health:
        if queries.projector is not None and wait_for:
            await queries.projector.wait_for(wait_for, timeout)
        return queries.health()

    return checkpoint


def _health_route(queries: Queries) -> Any:
    @get(
        "/healthz",
        summary="NATS connected, checkpoint and lag; 503 while NATS is disconnected",
        opt=PUBLIC,
        responses={503: ResponseSpec(data_container=Health, description="NATS disconnected")},
    )
    async def healthz() -> Response[Health]:
        health = queries.health()
        status = HTTP_200_OK if health.ok else HTTP_503_SERVICE_UNAVAILABLE
        return Response(health, status_code=status)

    return healthz


def _labels(pairs: Iterable[str]) -> dict[str, str]:
    """``zone:eu`` pairs as a dict; a pair without a key or a colon is a 422."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, colon, value = pair.partition(":")
        if not key or not colon:
            raise ValidationException(
                f"label {pair!r} must be key:value",
                extra=[
                    {
                        "key": "label",
                        "message": f"{pair!r} must be key:value like zone:eu",
                    }
                ],
            )
        labels[key] = value
    return labels
