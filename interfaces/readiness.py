"""Are pools and queues able to make progress right now? READY, NOT_READY or PAUSED.

Readiness depends on the clock (a worker is ONLINE only while its heartbeats keep coming), so it
is never stored: :class:`~workledger.queries.Queries` computes it per request from the stores'
answers with :func:`readiness`, a pure function that tests can feed directly.

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
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime

import msgspec

from workledger.projections.views import (
    PoolView,
    QueueView,
    SlotCount,
    WorkerStatus,
    WorkerWithStatus,
)

__all__ = ["PoolStatus", "QueueStatus", "Readiness", "readiness"]

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
    settings = {p.pool: p for p in pools}
    queue_settings = {(q.pool, q.queue): q for q in queues}
    pairs: set[tuple[str | None, str | None]] = set(named)
    pairs |= {(w.worker.pool, q) for w in workers for q in w.worker.queues}
    pairs |= {(c.pool, c.queue) for c in counts}
    pairs |= {(w.worker.pool, None) for w in workers} | set(queue_settings)
    pool_names = set(settings) | {p for p, _ in pairs if p is not None}
    queue_keys = {(p, q) for p, q in pairs if p is not None and q is not None}
    held = {(c.pool, c.queue): c.held for c in counts}
    members = _members(workers)
    pool_rows = [_pool(p, settings.get(p), members.get(p, []), held) for p in pool_names]
    queue_rows = [
        _queue(key, queue_settings.get(key), settings.get(key[0]), members.get(key[0], []), held)
        for key in queue_keys
    ]
    pool_rows.sort(key=lambda p: p.pool)
    queue_rows.sort(key=lambda q: (q.pool, q.queue))
    return pool_rows, queue_rows


def _members(workers: Sequence[WorkerWithStatus]) -> dict[str, list[WorkerWithStatus]]:
    """Each pool's workers that may still work: ONLINE, or OFFLINE (late, not declared gone)."""
    found: dict[str, list[WorkerWithStatus]] = {}
    for w in workers:
        if w.worker.pool is not None and w.status in _MEMBERS:
            found.setdefault(w.worker.pool, []).append(w)
    return found


def _pool(
    name: str,
    view: PoolView | None,
    members: Sequence[WorkerWithStatus],
    held: dict[tuple[str | None, str | None], int],
) -> PoolStatus:
    view = view or PoolView(pool=name)
    online = [w for w in members if w.status is WorkerStatus.ONLINE]
    return PoolStatus(
        pool=name,
        status=_status(paused=view.paused, online=len(online)),
        concurrency_limit=view.concurrency_limit,
        paused=view.paused,
        created_at=view.created_at,
        updated_at=view.updated_at,
        workers=len(members),
        workers_online=len(online),
        slots_online=sum(w.worker.slots for w in online),
        slots_held=held.get((name, None), 0),
    )


def _queue(
    key: tuple[str, str],
    view: QueueView | None,
    pool: PoolView | None,
    members: Sequence[WorkerWithStatus],
    held: dict[tuple[str | None, str | None], int],
) -> QueueStatus:
    view = view or QueueView(pool=key[0], queue=key[1])
    serving = Counter(
        w.status for w in members if not w.worker.queues or view.queue in w.worker.queues
    )
    paused = view.paused or (pool is not None and pool.paused)
    return QueueStatus(
        pool=view.pool,
        queue=view.queue,
        status=_status(paused=paused, online=serving[WorkerStatus.ONLINE]),
        priority=view.priority,
        concurrency_limit=view.concurrency_limit,
        paused=view.paused,
        created_at=view.created_at,
        updated_at=view.updated_at,
        workers_online=serving[WorkerStatus.ONLINE],
        slots_held=held.get(key, 0),
    )


def _status(*, paused: bool, online: int) -> Readiness:
    if paused:
        return Readiness.PAUSED
    return Readiness.READY if online else Readiness.NOT_READY
