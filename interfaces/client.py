"""A Python client of a running daemon's HTTP API; the CLI's query commands use it."""

from __future__ import annotations

from collections.abc import Sequence
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

__all__ = ["DEFAULT_API", "Client"]

DEFAULT_API = "http://127.0.0.1:8765"
_T = TypeVar("_T")


class Client:
    """Blocking client; every method raises :class:`DaemonUnavailableError` if none answers."""

    def __init__(self, base_url: str = DEFAULT_API, *, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

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
    ) -> list[WorkerWithStatus]:
        """See :meth:`workledger.queries.Queries.workers`."""
        params = _params(pool=pool, queue=queue, task_key=list(task_keys), status=status)
        return self._get("/v1/workers", list[WorkerWithStatus], params | {"limit": limit})

    def slots(self, *, pool: str | None = None, queue: str | None = None) -> Slots:
        """Slot holders and counts."""
        return self._get("/v1/slots", Slots, _params(pool=pool, queue=queue))

    def tasks(self, *, status: TaskStatus | None = None, limit: int = 100) -> list[TaskView]:
        """Tasks, most recently updated first."""
        return self._get("/v1/tasks", list[TaskView], _params(status=status) | {"limit": limit})

    def task(self, task: str) -> TaskView | None:
        """One task, or None if the daemon has never seen it."""
        try:
            return self._get(f"/v1/tasks/{quote(task, safe='')}", TaskView, {})
        except _NotFoundError:
            return None

    def quarantined(self, *, limit: int = 100) -> list[Quarantined]:
        """Messages set aside, newest first."""
        return self._get("/v1/quarantine", list[Quarantined], {"limit": limit})

    def utilization(
        self,
        *,
        by: Grouping = "pool",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        bucket: timedelta | str | None = None,
    ) -> list[UtilizationRow]:
        """See :meth:`workledger.queries.Queries.utilization`; text times use the daemon's clock.

        :raises WorkledgerError: with the daemon's message when a parameter is bad (HTTP 400).
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
        if response.status_code >= 400:
            raise WorkledgerError(f"{path}: HTTP {response.status_code}: {response.text}")
        return msgspec.json.decode(response.content, type=kind)


class _NotFoundError(WorkledgerError):
    pass


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
