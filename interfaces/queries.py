"""The query service: one read model, one clock and one liveness multiplier for every interface."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from workledger.projections.daemon import DaemonMetrics, Projector
from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.utilization import (
    Grouping,
    UtilizationRow,
    parse_bucket,
    parse_time,
)
from workledger.projections.views import (
    PoolView,
    Quarantined,
    QueueView,
    SlotCount,
    SlotHolder,
    TaskStatus,
    TaskView,
    WorkerStatus,
    WorkerWithStatus,
)
from workledger.readiness import PoolStatus, QueueStatus, store_readiness
from workledger.stores.base import Store

__all__ = ["Health", "Queries", "Slots", "store_name"]

_ALL = sys.maxsize  # a limit that keeps everything
_FINISHED = [s for s in TaskStatus if s.terminal]


class Slots(msgspec.Struct, frozen=True, kw_only=True):
    """Slot holders with the per-pool and per-queue counts, in one answer."""

    holders: list[SlotHolder]
    counts: list[SlotCount]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """Is the daemon connected, and how far behind the stream is it."""

    ok: bool
    nats_connected: bool
    checkpoint: int
    lag: int
    applied: int
    quarantined: int
    store_checkpoints: dict[str, int] = msgspec.field(default_factory=dict)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Queries:
    """Answers questions from a store; the clock lives here, never in a store or fold.

    ``history``, when given, is a store that reads safely from other threads (DuckDB) and
    answers the heavy historical question, utilization, off the event loop; live questions
    stay on ``store`` (in memory). Both hold the same model, so the numbers are the same.
    """

    def __init__(
        self,
        store: Store,
        *,
        projector: Projector | None = None,
        multiplier: float = DEFAULT_MULTIPLIER,
        clock: Callable[[], datetime] = _utcnow,
        history: Store | None = None,
    ) -> None:
        self.store = store
        self.projector = projector
        self.multiplier = multiplier
        self.clock = clock
        self.history = history

    def workers(
        self,
        *,
        pool: str | None = None,
        queue: str | None = None,
        task_keys: Sequence[str] = (),
        status: WorkerStatus | None = None,
        limit: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[WorkerWithStatus]:
        """Workers with their status now; see :meth:`Store.workers`."""
        return self.store.workers(
            now=self.clock(),
            pool=pool,
            queue=queue,
            task_keys=task_keys,
            status=status,
            multiplier=self.multiplier,
            limit=limit,
            labels=labels,
        )

    def slots(self, *, pool: str | None = None, queue: str | None = None) -> Slots:
        """Who holds slots, and how many per pool and queue."""
        counts = self.store.slot_counts(pool=pool)
        if queue is not None:
            counts = [c for c in counts if c.queue == queue]
        return Slots(holders=self.store.slot_holders(pool=pool, queue=queue), counts=counts)

    def tasks(
        self,
        *,
        status: TaskStatus | None = None,
        pool: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        """Tasks by filter, most recently updated first."""
        return self.store.tasks(status=status, pool=pool, queue=queue, worker=worker, limit=limit)

    def task(self, task: str) -> TaskView | None:
        """One task, or None."""
        return self.store.task(task)

    def recent(self, *, limit: int = 100) -> list[TaskView]:
        """Finished tasks (any terminal status), the most recently finished first.

        Each status's most recently updated tasks are merged: for a finished task the last
        update is its ending, unless a late event (progress, say) came after it.
        """
        found = [t for s in _FINISHED for t in self.store.tasks(status=s, limit=limit)]
        found.sort(key=lambda t: (-_timestamp(t.finished_at or t.updated_at), t.task))
        return found[:limit]

    def pools(self) -> list[PoolView]:
        """Pools and their settings."""
        return self.store.pools()

    def queues(self, *, pool: str | None = None) -> list[QueueView]:
        """Queues and their settings."""
        return self.store.queues(pool=pool)

    def pool_status(self) -> list[PoolStatus]:
        """Every pool the log names, with READY / NOT_READY / PAUSED now."""
        return self._readiness(pool=None)[0]

    def queue_status(self, *, pool: str | None = None) -> list[QueueStatus]:
        """Every queue the log names (in ``pool``), with READY / NOT_READY / PAUSED now."""
        return self._readiness(pool=pool)[1]

    def _readiness(self, *, pool: str | None) -> tuple[list[PoolStatus], list[QueueStatus]]:
        """See :mod:`workledger.readiness` (the in-memory store answers from its indexes)."""
        return store_readiness(self.store, now=self.clock(), multiplier=self.multiplier, pool=pool)

    def quarantined(
        self, *, limit: int = 100, after_seq: int | None = None, before_seq: int | None = None
    ) -> list[Quarantined]:
        """Messages set aside, newest first; ``after_seq``/``before_seq`` page by sequence."""
        if after_seq is None and before_seq is None:
            return self.store.quarantined(limit=limit)
        kept = self.store.quarantined(limit=_ALL)
        low, high = after_seq or 0, before_seq if before_seq is not None else _ALL
        return [q for q in kept if low < q.seq < high][:limit]

    def utilization(
        self,
        *,
        by: Grouping = "pool",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        bucket: timedelta | str | None = None,
    ) -> list[UtilizationRow]:
        """Utilization per group and bucket; see :meth:`Store.utilization`.

        ``until`` defaults to now and ``since`` to an hour before ``until``. Text is parsed
        here, against this service's clock: RFC 3339, ``now``, or a span before now like
        ``-1h``; buckets like ``5m``.

        :raises ValueError: for a bad time, bucket, grouping or window, with what is expected.
        """
        now = self.clock()
        end = _moment(until, now) if until is not None else now
        start = _moment(since, now) if since is not None else end - timedelta(hours=1)
        width = parse_bucket(bucket) if isinstance(bucket, str) else bucket
        return (self.history or self.store).utilization(
            by=by, since=start, until=end, now=now, bucket=width, multiplier=self.multiplier
        )

    def health(self) -> Health:
        """Connected and caught up enough to answer."""
        stats = self.store.stats()
        projector = self.projector
        metrics = projector.metrics if projector else DaemonMetrics()
        connected = projector is not None and projector.connected
        stores = projector.stores if projector else [self.store]
        return Health(
            ok=connected,
            nats_connected=connected,
            checkpoint=stats.checkpoint,
            lag=metrics.lag,
            applied=stats.applied,
            quarantined=stats.quarantined,
            store_checkpoints={store_name(s): s.stats().checkpoint for s in stores},
        )


def store_name(store: Store) -> str:
    """``memory`` for MemoryStore, ``duckdb`` for DuckDBStore: the label health and metrics use."""
    return type(store).__name__.removesuffix("Store").lower()


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


def _moment(value: datetime | str, now: datetime) -> datetime:
    return parse_time(value, now) if isinstance(value, str) else value
