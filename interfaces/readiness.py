"""Are pools and queues able to make progress right now? READY, NOT_READY or PAUSED.

Readiness depends on the clock (a worker is ONLINE only while its heartbeats keep coming), so it
is never stored: :func:`store_readiness` computes it per request from a store's answers with
:func:`readiness`, a pure function that tests can feed directly. The in-memory store counts its
fleet from indexes (:meth:`~workledger.stores.memory.MemoryStore.fleet_counts`), so a request
costs about one bisection per pool and worker shape instead of a pass over every worker.

The rules, as the API documents them:

- a pool is PAUSED while its last settings say so; otherwise READY when at least one of its
  workers is ONLINE, else NOT_READY;
- a queue is PAUSED while it or its pool is paused (nothing is taken from it either way);
  otherwise READY when at least one ONLINE worker of its pool serves it (lists it, or lists no
  queue and so serves all), else NOT_READY.

A pool or queue exists once the log names it: by its own events, a worker's registration, or a
task that is not finished yet. A queue a worker lists counts too.
"""

from __future__ import annotations

import enum
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec

from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.views import (
    PoolView,
    QueueView,
    SlotCount,
    TaskStatus,
    WorkerStatus,
    WorkerWithStatus,
)
from workledger.stores.base import Store
from workledger.stores.memory import FleetCounts, MemoryStore

__all__ = ["PoolStatus", "QueueStatus", "Readiness", "fleet_counts", "readiness", "store_readiness"]

_ALL = sys.maxsize  # a limit that keeps everything
_UNFINISHED = [s for s in TaskStatus if not s.terminal]

_MEMBERS = frozenset({WorkerStatus.ONLINE, WorkerStatus.OFFLINE})


class Readiness(enum.StrEnum):
    """Can work be taken from it now."""

    READY = "READY"
    NOT_READY = "NOT_READY"
    PAUSED = "PAUSED"


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's settings (as ``PoolView``) with its readiness and occupancy now."""

    pool: str
    status: Readiness
    concurrency_limit: int | None = None
    paused: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    workers: int = 0  # ONLINE or OFFLINE: neither stopped nor declared lost
    workers_online: int = 0
    slots_online: int = 0  # slots of its ONLINE workers
    slots_held: int = 0


class QueueStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's settings (as ``QueueView``) with its readiness and occupancy now."""

    pool: str
    queue: str
    status: Readiness
    priority: int | None = None
    concurrency_limit: int | None = None
    paused: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    workers_online: int = 0  # ONLINE workers of the pool that serve it
    slots_held: int = 0


def store_readiness(
    store: Store, *, now: datetime, multiplier: float = DEFAULT_MULTIPLIER, pool: str | None = None
) -> tuple[list[PoolStatus], list[QueueStatus]]:
    """Every pool and queue ``store`` names (in ``pool``), with its status at ``now``.

    Unfinished tasks name pools and queues too. The in-memory store answers from its indexes;
    any other store lists its workers and unfinished tasks, which :func:`readiness` counts.
    """
    pools = [p for p in store.pools() if pool is None or p.pool == pool]
    queues, counts = store.queues(pool=pool), store.slot_counts(pool=pool)
    if isinstance(store, MemoryStore):
        fleet = store.fleet_counts(now=now, multiplier=multiplier, pool=pool)
        return _rows(pools=pools, queues=queues, fleet=fleet, counts=counts)
    unfinished = [t for s in _UNFINISHED for t in store.tasks(status=s, pool=pool, limit=_ALL)]
    return readiness(
        pools=pools,
        queues=queues,
        workers=store.workers(now=now, pool=pool, multiplier=multiplier),
        counts=counts,
        named=[(t.pool, t.queue) for t in unfinished if t.pool is not None],
    )


def readiness(
    *,
    pools: Sequence[PoolView],
    queues: Sequence[QueueView],
    workers: Sequence[WorkerWithStatus],
    counts: Sequence[SlotCount],
    named: Iterable[tuple[str, str | None]] = (),
) -> tuple[list[PoolStatus], list[QueueStatus]]:
    """Every pool and queue the inputs name, by name, with its status.

    ``named`` adds (pool, queue or None) pairs seen elsewhere, e.g. on unfinished tasks.
    """
    fleet = fleet_counts(workers, named=named)
    return _rows(pools=pools, queues=queues, fleet=fleet, counts=counts)


def fleet_counts(
    workers: Sequence[WorkerWithStatus], *, named: Iterable[tuple[str, str | None]] = ()
) -> FleetCounts:
    """What readiness needs from a list of workers with their status, counted."""
    pairs: set[tuple[str | None, str | None]] = set(named)
    pairs |= {(w.worker.pool, q) for w in workers for q in w.worker.queues}
    pairs |= {(w.worker.pool, None) for w in workers}
    members: Counter[str] = Counter()
    online: Counter[str] = Counter()
    slots: Counter[str] = Counter()
    any_queue: Counter[str] = Counter()
    listing: Counter[tuple[str, str]] = Counter()
    for w in workers:
        pool = w.worker.pool
        if pool is None or w.status not in _MEMBERS:
            continue
        members[pool] += 1
        if w.status is WorkerStatus.ONLINE:
            online[pool] += 1
            slots[pool] += w.worker.slots
            any_queue[pool] += not w.worker.queues
            listing.update((pool, q) for q in set(w.worker.queues))
    return FleetCounts(
        named=frozenset(pairs),
        members=dict(members),
        online=dict(online),
        slots_online=dict(slots),
        online_any_queue=dict(any_queue),
        online_listing=dict(listing),
    )


def _rows(
    *,
    pools: Sequence[PoolView],
    queues: Sequence[QueueView],
    fleet: FleetCounts,
    counts: Sequence[SlotCount],
) -> tuple[list[PoolStatus], list[QueueStatus]]:
    settings = {p.pool: p for p in pools}
    queue_settings = {(q.pool, q.queue): q for q in queues}
    pairs = fleet.named | {(c.pool, c.queue) for c in counts} | set(queue_settings)
    pool_names = set(settings) | {p for p, _ in pairs if p is not None}
    queue_keys = {(p, q) for p, q in pairs if p is not None and q is not None}
    held = {(c.pool, c.queue): c.held for c in counts}
    pool_rows = [_pool(p, settings.get(p), fleet, held) for p in pool_names]
    queue_rows = [
        _queue(key, queue_settings.get(key), settings.get(key[0]), fleet, held)
        for key in queue_keys
    ]
    pool_rows.sort(key=lambda p: p.pool)
    queue_rows.sort(key=lambda q: (q.pool, q.queue))
    return pool_rows, queue_rows


def _pool(
    name: str,
    view: PoolView | None,
    fleet: FleetCounts,
    held: dict[tuple[str | None, str | None], int],
) -> PoolStatus:
    view = view or PoolView(pool=name)
    online = fleet.online.get(name, 0)
    return PoolStatus(
        pool=name,
        status=_status(paused=view.paused, online=online),
        concurrency_limit=view.concurrency_limit,
        paused=view.paused,
        created_at=view.created_at,
        updated_at=view.updated_at,
        workers=fleet.members.get(name, 0),
        workers_online=online,
        slots_online=fleet.slots_online.get(name, 0),
        slots_held=held.get((name, None), 0),
    )


def _queue(
    key: tuple[str, str],
    view: QueueView | None,
    pool: PoolView | None,
    fleet: FleetCounts,
    held: dict[tuple[str | None, str | None], int],
) -> QueueStatus:
    view = view or QueueView(pool=key[0], queue=key[1])
    serving = fleet.online_any_queue.get(key[0], 0) + fleet.online_listing.get(key, 0)
    paused = view.paused or (pool is not None and pool.paused)
    return QueueStatus(
        pool=view.pool,
        queue=view.queue,
        status=_status(paused=paused, online=serving),
        priority=view.priority,
        concurrency_limit=view.concurrency_limit,
        paused=view.paused,
        created_at=view.created_at,
        updated_at=view.updated_at,
        workers_online=serving,
        slots_held=held.get(key, 0),
    )


def _status(*, paused: bool, online: int) -> Readiness:
    if paused:
        return Readiness.PAUSED
    return Readiness.READY if online else Readiness.NOT_READY
