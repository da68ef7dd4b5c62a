"""A Python client of a running daemon's HTTP API; the CLI's query commands use it.

A daemon started with an API token (``--api-token`` / ``WORKLEDGER_API_TOKEN``) wants it on
every request; the client sends ``token``, or else ``WORKLEDGER_API_TOKEN`` from the
environment, so the same variable configures both ends.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from workledger.core.errors import DaemonUnavailableError, WorkledgerError
from workledger.projections.utilization import Grouping, UtilizationRow
from workledger.projections.views import (
    Quarantined,
    TaskStatus,
    TaskView,
    WorkerStatus,
    WorkerWithStatus,
)
from workledger.queries import Health, Slots
from workledger.readiness import PoolStatus, QueueStatus

__all__ = ["DEFAULT_API", "TOKEN_ENV", "Client", "auth_headers"]

DEFAULT_API = "http://127.0.0.1:8765"
TOKEN_ENV = "WORKLEDGER_API_TOKEN"  # noqa: S105 (a variable's name, not a secret)
_T = TypeVar("_T")


class Client:
    """Blocking client; every method raises :class:`DaemonUnavailableError` if none answers."""

    def __init__(
        self, base_url: str = DEFAULT_API, *, timeout: float = 10.0, token: str | None = None
    ) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers(token))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def workers(
        self,
        *,
        pool: str | None = None,
        queue: str | None = None,
        task_keys: Sequence[str] = (),
        status: WorkerStatus | None = None,
        limit: int = 1000,
        labels: Mapping[str, str] | None = None,
    ) -> list[WorkerWithStatus]:
        """See :meth:`workledger.queries.Queries.workers`; ``labels`` must ALL match."""
        label = [f"{k}:{v}" for k, v in (labels or {}).items()]
        params = _params(pool=pool, queue=queue, task_key=list(task_keys), label=label)
        params |= _params(status=status)
        return self._get("/v1/workers", list[WorkerWithStatus], params | {"limit": limit})

    def slots(self, *, pool: str | None = None, queue: str | None = None) -> Slots:
        """Slot holders and counts."""
        return self._get("/v1/slots", Slots, _params(pool=pool, queue=queue))

    def tasks(
        self,
        *,
        status: TaskStatus | None = None,
        pool: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        """Tasks, most recently updated first; each filter given must match."""
        params = _params(status=status, pool=pool, queue=queue, worker=worker)
        return self._get("/v1/tasks", list[TaskView], params | {"limit": limit})

    def task(self, task: str) -> TaskView | None:
        """One task, or None if the daemon has never seen it."""
        try:
            return self._get(f"/v1/tasks/{quote(task, safe='')}", TaskView, {})
        except _NotFoundError:
            return None

    def recent(self, *, limit: int = 100) -> list[TaskView]:
        """Finished tasks, the most recently finished first."""
        return self._get("/v1/tasks/recent", list[TaskView], {"limit": limit})

    def pools(self) -> list[PoolStatus]:
        """Pools with their settings and READY / NOT_READY / PAUSED status now."""
        return self._get("/v1/pools", list[PoolStatus], {})

    def queues(self, *, pool: str | None = None) -> list[QueueStatus]:
        """Queues with their settings and status now."""
        return self._get("/v1/queues", list[QueueStatus], _params(pool=pool))

    def quarantined(
        self, *, limit: int = 100, after_seq: int | None = None, before_seq: int | None = None
    ) -> list[Quarantined]:
        """Messages set aside, newest first; page with ``after_seq`` / ``before_seq``."""
        params = _params(after_seq=after_seq, before_seq=before_seq) | {"limit": limit}
        return self._get("/v1/quarantine", list[Quarantined], params)

    def utilization(
        self,
        *,
        by: Grouping = "pool",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        bucket: timedelta | str | None = None,
    ) -> list[UtilizationRow]:
        """See :meth:`workledger.queries.Queries.utilization`; text times use the daemon's clock.

        :raises WorkledgerError: with the daemon's message when a parameter is bad (HTTP 422).
        """
        params = _params(by=by, since=_text(since), until=_text(until), bucket=_span(bucket))
        return self._get("/v1/utilization", list[UtilizationRow], params)

    def health(self, *, wait_for: int = 0, timeout: float = 0) -> Health:
        """Checkpoint and lag; with ``wait_for``, first wait until that sequence is applied."""
        params = {"wait_for": wait_for, "timeout": timeout}
        return self._get("/v1/checkpoint", Health, params)

    def _get(self, path: str, kind: type[_T], params: dict[str, Any]) -> _T:
        try:
            response = self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise DaemonUnavailableError(
                f"no workledger daemon at {self.base_url} ({exc}); "
                "start one with `workledger up` or `workledger project`"
            ) from None
        if response.status_code == 404:
            raise _NotFoundError(path)
        if response.status_code == 401:
            raise WorkledgerError(
                f"{self.base_url} wants an API token: pass --api-token or set {TOKEN_ENV}"
            )
        if response.status_code >= 400:
            raise WorkledgerError(f"{path}: HTTP {response.status_code}: {_detail(response)}")
        return msgspec.json.decode(response.content, type=kind)


class _NotFoundError(WorkledgerError):
    pass


def auth_headers(token: str | None = None) -> dict[str, str]:
    """The Authorization header for ``token``, or ``WORKLEDGER_API_TOKEN``; none if neither."""
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _detail(response: httpx.Response) -> str:
    """The daemon's message (``detail`` of its error body), else the raw text."""
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return response.text
    return str(body.get("detail", response.text)) if isinstance(body, dict) else response.text


def _params(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v not in (None, [], ())}


def _text(moment: datetime | str | None) -> str | None:
    return moment.isoformat() if isinstance(moment, datetime) else moment


def _span(width: timedelta | str | None) -> str | None:
    """A timedelta as whole seconds (``90s``), the finest unit the API accepts."""
    if not isinstance(width, timedelta):
        return width
    seconds = width.total_seconds()
    if seconds != int(seconds) or seconds <= 0:
        raise ValueError(f"bucket {width} must be a positive whole number of seconds")
    return f"{int(seconds)}s"
