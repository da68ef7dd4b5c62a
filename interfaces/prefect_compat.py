"""Prefect's task-worker filter, spoken by ``POST /workers/filter``.

Prefect's server answers ``POST /task_workers/filter`` with body
``{"task_worker_filter": {"task_keys": [...]}}`` (filter and keys optional) and a list of
``{"identifier", "task_keys", "timestamp"}``. workledger takes the same body with the same
semantics (workers subscribed to ANY of the keys; none or an empty list means every worker) and
answers with the same three fields, plus ``pool`` and ``status`` (a Prefect client ignores
fields it does not know). Differences, documented in docs/http.md:

- Prefect lists only the workers connected to that server now; workledger lists every worker
  the log knows, with its status: add ``?status=ONLINE`` for Prefect's meaning.
- ``timestamp`` is the worker's last sign of life in event time, not when the server last heard
  from it; it is null for a worker only ever named by task events.
- The answer is ordered (last seen, newest first) and bounded by ``limit``, like ``/v1/workers``.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from workledger.projections.views import WorkerStatus, WorkerWithStatus

__all__ = ["TaskWorker", "TaskWorkerFilter", "TaskWorkerFilterBody", "task_worker"]


class TaskWorkerFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Prefect's filter: workers subscribed to ANY of ``task_keys`` (empty: all)."""

    task_keys: list[str] = msgspec.field(default_factory=list)


class TaskWorkerFilterBody(msgspec.Struct, frozen=True, kw_only=True):
    """The request body; Prefect embeds the filter under this key."""

    task_worker_filter: TaskWorkerFilter | None = None


class TaskWorker(msgspec.Struct, frozen=True, kw_only=True):
    """Prefect's ``TaskWorkerResponse`` fields, then workledger's own."""

    identifier: str
    task_keys: list[str]
    timestamp: datetime | None
    pool: str | None
    status: WorkerStatus


def task_worker(found: WorkerWithStatus) -> TaskWorker:
    """One worker in Prefect's shape."""
    view = found.worker
    return TaskWorker(
        identifier=view.worker,
        task_keys=list(view.task_keys),
        timestamp=view.last_seen,
        pool=view.pool,
        status=found.status,
    )
