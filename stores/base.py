"""The read-model store protocol: the one place its contract is written down.

A store receives batches from the daemon and answers queries. Every store must give the same
answers for the same log (the shared contract suite in ``tests/test_store_contract.py`` holds each
store to the in-memory reference implementation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import msgspec

from workledger.core.events import Event
from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.utilization import Grouping, UtilizationRow
from workledger.projections.views import (
    PoolView,
    Quarantined,
    QueueView,
    SlotCount,
    SlotHolder,
    SlotInterval,
    TaskStatus,
    TaskView,
    WorkerSession,
    WorkerStatus,
    WorkerView,
    WorkerWithStatus,
)

__all__ = ["Batch", "ReadModel", "Sequenced", "Store", "StoreStats"]


class Sequenced(msgspec.Struct, frozen=True, gc=False):
    """An event with its position in the stream."""

    seq: int
    subject: str
    event: Event


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """What the daemon hands a store at once: applied together with its checkpoint.

    ``last_seq`` is the stream sequence of the last message the batch covers, valid or not.
    """

    events: Sequence[Sequenced] = ()
    quarantined: Sequence[Quarantined] = ()
    last_seq: int


class StoreStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for health and metrics."""

    checkpoint: int
    applied: int
    quarantined: int


class ReadModel(msgspec.Struct, frozen=True, kw_only=True):
    """The whole read model in a canonical order: two equal models answer every query alike."""

    tasks: list[TaskView]
    workers: list[WorkerView]
    pools: list[PoolView]
    queues: list[QueueView]
    quarantined: list[Quarantined]
    intervals: list[SlotInterval]
    sessions: list[WorkerSession]


@runtime_checkable
class Store(Protocol):
    """A read model fed by the daemon.

    Writes: ``apply`` is atomic with its checkpoint: after a crash a store resumes from
    ``stats().checkpoint`` with nothing lost and nothing applied twice. Applying the same events
    again, or in another order, leaves the same model (folds are order-free).

    Reads never block writes for long and never see half a batch. Queries that depend on time
    take ``now`` explicitly; nothing in a store reads the clock.

    Two optional class attributes tell the daemon how to feed a store: ``blocking = True``
    (its ``apply`` does I/O, so it runs in a thread of its own, behind the in-memory stores)
    and ``bulk_events`` (how many events it writes best at once: under a heavy load its
    thread waits for that many; :class:`~workledger.stores.duckdb.DuckDBStore` names a row
    group). A store without them is applied inline, batch by batch.

    :raises StoreError: when the backing storage fails.
    """

    def apply(self, batch: Batch) -> None:
        """Fold a batch and move the checkpoint to ``batch.last_seq``, all or nothing."""
        ...

    def stats(self) -> StoreStats:
        """Checkpoint and counters."""
        ...

    def task(self, task: str) -> TaskView | None:
        """One task by id, or None if the log never named it."""
        ...

    def task_ids(self) -> list[str]:
        """Every task the log named, in no order (a pool partition resumes from them)."""
        ...

    def tasks(
        self,
        *,
        status: TaskStatus | None = None,
        pool: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        """Tasks matching every given filter, most recently updated first (then by id)."""
        ...

    def workers(
        self,
        *,
        now: datetime,
        pool: str | None = None,
        queue: str | None = None,
        task_keys: Sequence[str] = (),
        status: WorkerStatus | None = None,
        multiplier: float = DEFAULT_MULTIPLIER,
        limit: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[WorkerWithStatus]:
        """Workers matching every given filter, most recently seen first (then by id).

        ``queue`` matches workers listing that queue or listing none (they serve every queue).
        ``task_keys`` matches workers subscribed to ANY of them; empty matches all.
        ``labels`` matches workers carrying ALL of those key/value pairs; empty matches all.
        """
        ...

    def slot_holders(
        self, *, pool: str | None = None, queue: str | None = None
    ) -> list[SlotHolder]:
        """Tasks holding a slot, ordered by pool, queue, since, task."""
        ...

    def slot_counts(self, *, pool: str | None = None) -> list[SlotCount]:
        """Slots held per pool (``queue`` None) and per queue, in one call, ordered."""
        ...

    def pools(self) -> list[PoolView]:
        """Pools with settings, by name."""
        ...

    def queues(self, *, pool: str | None = None) -> list[QueueView]:
        """Queues with settings, by pool then name."""
        ...

    def quarantined(self, *, limit: int = 100) -> list[Quarantined]:
        """Messages set aside, newest first."""
        ...

    def read_model(self) -> ReadModel:
        """Everything, canonically ordered, for comparing stores and rebuilds."""
        ...

    def utilization(
        self,
        *,
        by: Grouping,
        since: datetime,
        until: datetime,
        now: datetime,
        bucket: timedelta | None = None,
        multiplier: float = DEFAULT_MULTIPLIER,
    ) -> list[UtilizationRow]:
        """Busy, slot and capacity time, endings, throughput and run percentiles per group.

        The semantics (window ``[since, until)`` in event time, epoch-aligned ``bucket``s or one
        row per group, group membership, the percentile method) are defined once in
        :mod:`workledger.projections.utilization`; every store returns exactly the rows of its
        pure ``utilization`` function over the store's slot intervals and worker sessions, with
        floats equal to within 1e-6 relative. Open intervals and sessions run to ``now``; a
        session's end after its last sign of life follows the liveness rule with ``multiplier``.

        :raises ValueError: for an unknown ``by``, naive times, ``since >= until`` or too many
            buckets.
        """
        ...
