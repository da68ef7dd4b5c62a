"""The in-memory store: the reference implementation every other store is held to.

It keeps the fold's state plus the indexes live queries need. It can save itself to a snapshot
file (written atomically, with its checkpoint) so a restarted daemon catches up from there
instead of replaying the whole stream.
"""

from __future__ import annotations

import heapq
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

import msgspec
from sortedcontainers import SortedList

from workledger.core.errors import StoreError
from workledger.core.events import EventType
from workledger.projections.fold import Ledger
from workledger.projections.liveness import DEFAULT_MULTIPLIER, liveness
from workledger.projections.utilization import Grouping, UtilizationRow, utilization
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
from workledger.stores.base import Batch, ReadModel, StoreStats

__all__ = ["MemoryStore", "write_snapshot"]

_EPOCH = datetime.min


class _Snapshot(msgspec.Struct, kw_only=True):
    format: int = 1
    checkpoint: int
    applied: int
    quarantined_total: int
    events: list[EventType]
    quarantine: list[Quarantined]


class MemoryStore:
    """Fast live queries over the fold; ``quarantine_limit`` bounds the set-aside list kept."""

    def __init__(self, *, quarantine_limit: int = 10_000) -> None:
        self._ledger = Ledger()
        self._tasks: dict[str, TaskView] = {}
        self._workers: dict[str, WorkerView] = {}
        # Newest-updated first, per status and overall, so `tasks(limit=...)` reads only what
        # it returns instead of sorting every task on each query.
        self._by_status: dict[TaskStatus, SortedList] = {s: SortedList() for s in TaskStatus}
        self._newest = SortedList()
        self._held_by: dict[str, set[str]] = {}  # worker -> tasks holding one of its slots
        self._intervals: dict[str, list[SlotInterval]] = {}
        self._sessions: dict[str, list[WorkerSession]] = {}
        self._quarantine: deque[Quarantined] = deque(maxlen=quarantine_limit)
        self._checkpoint = 0
        self._applied = 0
        self._quarantined_total = 0

    # --- writes --------------------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Fold what the batch holds past the checkpoint; the rest was applied already."""
        done = self._checkpoint
        events = [item for item in batch.events if item.seq > done]
        quarantined = [q for q in batch.quarantined if q.seq > done]
        ledger = self._ledger
        for item in events:
            ledger.apply(item.event)
        self._refresh()
        self._quarantine.extend(quarantined)
        self._applied += len(events)
        self._quarantined_total += len(quarantined)
        self._checkpoint = max(done, batch.last_seq)

    def _refresh(self) -> None:
        changes = self._ledger.changes
        for task_id in changes.tasks:
            self._index_task(task_id)
        for worker_id in changes.workers:
            view = self._ledger.worker(worker_id)
            if view is not None:
                self._workers[worker_id] = view
            else:  # forgotten: out of the live view, its sessions stay
                self._workers.pop(worker_id, None)
            self._sessions[worker_id] = self._ledger.sessions(worker_id)
        changes.clear()

    def _index_task(self, task_id: str) -> None:
        old = self._tasks.get(task_id)
        new = self._ledger.task(task_id)
        if new is None:
            return
        self._tasks[task_id] = new
        self._intervals[task_id] = self._ledger.intervals(task_id)
        if old is not None:
            self._by_status[old.status].discard(_newest_first(old))
            self._newest.discard(_newest_first(old))
            if old.status.holds_slot and old.worker is not None:
                self._held_by.get(old.worker, set()).discard(task_id)
        self._by_status[new.status].add(_newest_first(new))
        self._newest.add(_newest_first(new))
        if new.status.holds_slot and new.worker is not None:
            self._held_by.setdefault(new.worker, set()).add(task_id)

    # --- reads ---------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        return StoreStats(
            checkpoint=self._checkpoint,
            applied=self._applied,
            quarantined=self._quarantined_total,
        )

    def task(self, task: str) -> TaskView | None:
        return self._tasks.get(task)

    def tasks(
        self,
        *,
        status: TaskStatus | None = None,
        pool: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        ordered = self._by_status[status] if status is not None else self._newest
        views = (self._tasks[task_id] for _, task_id in ordered)
        matching = (
            v
            for v in views
            if (pool is None or self._pool_of(v) == pool)
            and (queue is None or v.queue == queue)
            and (worker is None or v.worker == worker)
        )
        return list(islice(matching, limit))

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
        """Filters first, then liveness and the held tasks for the few the limit keeps."""
        keys, wanted = frozenset(task_keys), tuple((labels or {}).items())
        found = []
        for view in self._workers.values():
            if pool is not None and view.pool != pool:
                continue
            if queue is not None and view.queues and queue not in view.queues:
                continue
            if keys and keys.isdisjoint(view.task_keys):
                continue
            if wanted and any(view.labels.get(k) != v for k, v in wanted):
                continue
            state = liveness(view, now, multiplier)
            if status is None or state == status:
                found.append((view, state))
        if limit is None:
            chosen = sorted(found, key=_seen_first)
        else:
            chosen = heapq.nsmallest(limit, found, key=_seen_first)
        return [self._with_status(view, state) for view, state in chosen]

    def worker(
        self, worker: str, *, now: datetime, multiplier: float = DEFAULT_MULTIPLIER
    ) -> WorkerWithStatus | None:
        """One worker by id, or None: a dict lookup, so the live feed can attach the view of
        every worker event it sends without scanning the fleet (``workers`` is linear)."""
        view = self._workers.get(worker)
        return None if view is None else self._with_status(view, liveness(view, now, multiplier))

    def _with_status(self, view: WorkerView, state: WorkerStatus) -> WorkerWithStatus:
        held = tuple(sorted(self._held_by.get(view.worker, ())))
        return WorkerWithStatus(
            worker=view,
            status=state,
            tasks=held,
            free_slots=max(view.slots - len(held), 0),
        )

    def slot_holders(
        self, *, pool: str | None = None, queue: str | None = None
    ) -> list[SlotHolder]:
        holders = [
            SlotHolder(
                task=v.task,
                status=v.status,
                pool=self._pool_of(v),
                queue=v.queue,
                worker=v.worker,
                since=v.slot_acquired_at,
            )
            for v in self._holding()
        ]
        chosen = [
            h
            for h in holders
            if (pool is None or h.pool == pool) and (queue is None or h.queue == queue)
        ]
        return sorted(chosen, key=_holder_order)

    def slot_counts(self, *, pool: str | None = None) -> list[SlotCount]:
        counts: dict[tuple[str | None, str | None], int] = {}
        for holder in self.slot_holders(pool=pool):
            keys: list[tuple[str | None, str | None]] = [(holder.pool, None)]
            if holder.queue is not None:
                keys.append((holder.pool, holder.queue))
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
        ordered = sorted(counts.items(), key=lambda kv: _count_order(*kv[0]))
        return [SlotCount(pool=p, queue=q, held=n) for (p, q), n in ordered]

    def pools(self) -> list[PoolView]:
        views = (self._ledger.pool(p) for p in sorted(self._ledger.pool_ids()))
        return [v for v in views if v is not None]

    def queues(self, *, pool: str | None = None) -> list[QueueView]:
        keys = sorted(k for k in self._ledger.queue_ids() if pool is None or k[0] == pool)
        views = (self._ledger.queue(p, q) for p, q in keys)
        return [v for v in views if v is not None]

    def quarantined(self, *, limit: int = 100) -> list[Quarantined]:
        return sorted(self._quarantine, key=lambda q: -q.seq)[:limit]

    def read_model(self) -> ReadModel:
        return ReadModel(
            tasks=[self._tasks[t] for t in sorted(self._tasks)],
            workers=[self._workers[w] for w in sorted(self._workers)],
            pools=self.pools(),
            queues=self.queues(),
            quarantined=sorted(self._quarantine, key=lambda q: q.seq),
            intervals=[i for t in sorted(self._intervals) for i in self._intervals[t]],
            sessions=[s for w in sorted(self._sessions) for s in self._sessions[w]],
        )

    def slot_intervals(self) -> Iterable[SlotInterval]:
        """Every slot stretch of every task (for utilization)."""
        for intervals in self._intervals.values():
            yield from intervals

    def worker_sessions(self) -> Iterable[WorkerSession]:
        """Every session of every worker (for utilization)."""
        for sessions in self._sessions.values():
            yield from sessions

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
        """Runs the reference computation over every stretch and session: linear per query."""
        return utilization(
            self.slot_intervals(),
            self.worker_sessions(),
            by=by,
            since=since,
            until=until,
            now=now,
            bucket=bucket,
            multiplier=multiplier,
        )

    def _holding(self) -> Iterable[TaskView]:
        for status in (TaskStatus.PENDING, TaskStatus.RUNNING):
            for _, task_id in self._by_status[status]:
                yield self._tasks[task_id]

    def _pool_of(self, view: TaskView) -> str | None:
        """A task names its pool when submitted; before that, its worker's pool stands in."""
        if view.pool is not None or view.worker is None:
            return view.pool
        worker = self._workers.get(view.worker)
        return worker.pool if worker else None

    # --- snapshots -------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write a snapshot with its checkpoint atomically (temp file, fsync, rename)."""
        write_snapshot(path, self.dump())

    def dump(self) -> bytes:
        """The snapshot's bytes: taken wherever the store is written (the daemon's event
        loop), so that :func:`write_snapshot` can do the slow disk part in a thread."""
        snapshot = _Snapshot(
            checkpoint=self._checkpoint,
            applied=self._applied,
            quarantined_total=self._quarantined_total,
            events=self._ledger.retained_events(),  # type: ignore[arg-type]
            quarantine=list(self._quarantine),
        )
        return msgspec.msgpack.encode(snapshot)

    @classmethod
    def load(cls, path: Path, *, quarantine_limit: int = 10_000) -> MemoryStore:
        """Rebuild a store from a snapshot written by :meth:`save`."""
        try:
            snapshot = msgspec.msgpack.decode(path.read_bytes(), type=_Snapshot)
        except (OSError, msgspec.DecodeError) as exc:
            raise StoreError(f"cannot read snapshot {path}: {exc}") from exc
        store = cls(quarantine_limit=quarantine_limit)
        for event in snapshot.events:
            store._ledger.apply(event)
        store._refresh()
        store._quarantine.extend(snapshot.quarantine)
        store._checkpoint = snapshot.checkpoint
        store._applied = snapshot.applied
        store._quarantined_total = snapshot.quarantined_total
        return store


def write_snapshot(path: Path, data: bytes) -> None:
    """Write snapshot bytes atomically: temp file, fsync, rename.

    :raises StoreError: naming the path, if the disk refuses.
    """
    # One fixed temp name (one writer per snapshot): what a killed save left behind is
    # overwritten by the next one instead of piling up.
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write snapshot {path}: {exc}") from exc


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


def _seen_first(found: tuple[WorkerView, WorkerStatus]) -> tuple[float, str]:
    return (-_timestamp(found[0].last_seen), found[0].worker)


def _newest_first(view: TaskView) -> tuple[float, str]:
    return (-_timestamp(view.updated_at), view.task)


def _count_order(pool: str | None, queue: str | None) -> tuple[str, bool, str]:
    """Each pool's total first, then its queues."""
    return (pool or "", queue is not None, queue or "")


def _holder_order(h: SlotHolder) -> tuple[str, str, float, str]:
    return (h.pool or "", h.queue or "", _timestamp(h.since), h.task)
