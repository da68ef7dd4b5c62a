"""The in-memory store: the reference implementation every other store is held to.

It keeps the fold's state plus the indexes live queries need. It can save itself to a snapshot
file (written atomically, with its checkpoint) so a restarted daemon catches up from there
instead of replaying the whole stream.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import chain, groupby, islice
from operator import itemgetter
from pathlib import Path

import msgspec

from workledger.core.errors import StoreError
from workledger.core.events import EventType
from workledger.projections.fold import Ledger, retain
from workledger.projections.liveness import DEFAULT_MULTIPLIER, liveness
from workledger.projections.utilization import Grouping, UtilizationRow, Window, utilization
from workledger.projections.views import (
    HOLDING_SLOT,
    TERMINAL,
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
from workledger.stores._memory_indexes import (
    FleetCounts,
    LiveTally,
    SeenIndex,
    SeenKey,
    SlotTally,
    SortedKeys,
    TaskKeys,
    TimeIndex,
    seen_key,
)
from workledger.stores.base import Batch, ReadModel, StoreStats

__all__ = ["FleetCounts", "MemoryStore", "write_snapshot"]

_Pair = tuple[str | None, str | None]
_FINAL = frozenset({WorkerStatus.STOPPED, WorkerStatus.LOST})  # no clock changes these
_BY_CLOCK = frozenset({WorkerStatus.ONLINE, WorkerStatus.OFFLINE})  # the clock decides these
_WINDOWED = frozenset({"worker", "pool", "task_key", "stage"})  # see MemoryStore._touching

_EPOCH = datetime.min
_WALK_PER_CANDIDATE = 2  # see MemoryStore.tasks


class _Snapshot(msgspec.Struct, kw_only=True):
    """Format 2 holds the events as ``parts``, each a msgpack list of events encoded in a step
    of its own (:meth:`MemoryStore.dump_in_steps`); format 1 held them as one ``events`` list.
    ``parts`` comes last, so its bytes can follow the rest without being copied into it."""

    format: int = 2
    checkpoint: int
    applied: int
    quarantined_total: int
    events: list[EventType] = []
    quarantine: list[Quarantined]
    parts: list[msgspec.Raw] = []


# A snapshot step reads and encodes this many records: ~5 ms of the loop.
_PER_STEP = 3_000
_EVENTS = msgspec.msgpack.Decoder(list[EventType])
_EMPTY_ARRAY = b"\x90"


class MemoryStore:
    """Fast live queries over the fold; ``quarantine_limit`` bounds the set-aside list kept."""

    def __init__(self, *, quarantine_limit: int = 10_000) -> None:
        self._ledger = Ledger()
        self._tasks: dict[str, TaskView] = {}
        self._workers: dict[str, WorkerView] = {}
        # Newest-updated first per status, so `tasks(limit=...)` reads only what it returns
        # instead of sorting every task on each query; without a status it merges these.
        self._by_status: dict[TaskStatus, SortedKeys] = {s: SortedKeys() for s in TaskStatus}
        self._task_keys = TaskKeys()  # so a pool, queue or worker matching few reads those few
        self._held_by: dict[str, set[str]] = {}  # worker -> tasks holding one of its slots
        # Holding tasks with no pool of their own count in their worker's: redo them when it moves.
        self._borrowing: dict[str, set[str]] = {}
        self._slots = SlotTally()
        self._seen = SeenIndex()
        self._live = LiveTally()
        self._untallied: set[str] = set()  # workers the clock decides that it does not list
        self._worker_pairs: Counter[_Pair] = Counter()  # (pool, None | queue) workers name
        self._unfinished_pairs: Counter[_Pair] = Counter()  # (pool, queue) unfinished tasks name
        # Slot stretches and sessions are derived only when asked for (utilization, the read
        # model): most batches touch entities nobody asks about before they change again.
        self._intervals: dict[str, list[SlotInterval]] = {}
        self._sessions: dict[str, list[WorkerSession]] = {}
        self._stale_tasks: set[str] = set()
        self._stale_workers: set[str] = set()
        self._interval_times = TimeIndex()  # task -> the hours its stretches touch
        self._session_times = TimeIndex()  # worker -> the hours its sessions touch
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
        """Re-index what the batch touched: workers first, so tasks see their pools as now."""
        changes = self._ledger.changes
        for worker_id in changes.workers:
            self._index_worker(worker_id)
        for task_id in changes.tasks:
            self._index_task(task_id)
        self._seen.flush()
        for ordered in self._by_status.values():
            ordered.flush()
        self._stale_workers |= changes.workers
        self._stale_tasks |= changes.tasks
        changes.clear()

    def _index_worker(self, worker_id: str) -> None:
        """Each index moves only if what it keys on changed (a sign of life moves last_seen)."""
        old = self._workers.get(worker_id)
        new = self._ledger.worker(worker_id)  # None once forgotten: out of the live view
        if old == new:
            return
        self._seen.move(old, new)
        self._live.move(old, new)
        if new is not None and _untallied(new):
            self._untallied.add(worker_id)
        else:
            self._untallied.discard(worker_id)
        if old is None or new is None or old.pool != new.pool or old.queues != new.queues:
            if old is not None:
                _tally(self._worker_pairs, _worker_pairs(old), -1)
            if new is not None:
                _tally(self._worker_pairs, _worker_pairs(new), 1)
        if new is not None:
            self._workers[worker_id] = new
        else:
            del self._workers[worker_id]
        if _pool(old) != _pool(new):
            for task_id in self._borrowing.get(worker_id, ()):
                self._place(self._tasks[task_id])

    def _index_task(self, task_id: str) -> None:
        """Each index moves only if what it keys on changed: most changes move a task's
        update time (its place in its status list) and little else."""
        new = self._ledger.task(task_id)
        if new is None:
            return
        old = self._tasks.get(task_id)
        self._tasks[task_id] = new
        self._task_keys.move(old, new)
        status = new.status
        if old is None:
            self._by_status[status].add(_newest_first(new))
        elif old.updated_at != new.updated_at or old.status is not status:
            self._by_status[old.status].discard(_newest_first(old))
            self._by_status[status].add(_newest_first(new))
        was, now = _holder(old), _holder(new)
        if was != now:
            if was is not None:
                self._held_by[was[0]].discard(task_id)
                self._borrowing.get(was[0], set()).discard(task_id)
            if now is not None:
                self._held_by.setdefault(now[0], set()).add(task_id)
                if now[1]:
                    self._borrowing.setdefault(now[0], set()).add(task_id)
        if was is not None or now is not None:
            self._place(new)
        before, after = _unfinished_pair(old), _unfinished_pair(new)
        if before != after:
            _tally(self._unfinished_pairs, before, -1)
            _tally(self._unfinished_pairs, after, 1)

    def _place(self, view: TaskView) -> None:
        pool = self._pool_of(view)
        holder = SlotHolder(
            task=view.task,
            status=view.status,
            pool=pool,
            queue=view.queue,
            worker=view.worker,
            since=view.slot_acquired_at,
        )
        self._slots.place(holder, (pool, view.queue) if view.status in HOLDING_SLOT else None)

    def _settle(self) -> None:
        """Derive the slot stretches and sessions of what changed since they were last asked."""
        ledger = self._ledger
        for task_id in self._stale_tasks:
            intervals = self._intervals[task_id] = ledger.intervals(task_id)
            self._interval_times.put(task_id, [(i.acquired_at, i.released_at) for i in intervals])
        for worker_id in self._stale_workers:
            sessions = self._sessions[worker_id] = ledger.sessions(worker_id)
            self._session_times.put(worker_id, map(_session_span, sessions))
        self._stale_tasks.clear()
        self._stale_workers.clear()

    # --- reads ---------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        return StoreStats(
            checkpoint=self._checkpoint,
            applied=self._applied,
            quarantined=self._quarantined_total,
        )

    def task(self, task: str) -> TaskView | None:
        return self._tasks.get(task)

    def task_ids(self) -> list[str]:
        return list(self._tasks)

    def tasks(
        self,
        *,
        status: TaskStatus | None = None,
        pool: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        """Walks the newest-updated-first list until ``limit`` match, unless the filters'
        tasks (:class:`TaskKeys`) are fewer than the walk would read: then sorts those."""
        if limit <= 0:
            return []
        lists = [self._by_status[status]] if status is not None else self._by_status.values()
        ordered = heapq.merge(*(keys for keys in lists if len(keys)))
        candidates = self._task_keys.candidates(pool, queue, worker)
        if candidates is None:
            return [self._tasks[task_id] for _, task_id in islice(ordered, limit)]
        # Walk while that costs at most a few times reading the candidates: a filter matching
        # many finds its newest soon; one matching few would walk (nearly) every task.
        budget = _WALK_PER_CANDIDATE * sum(map(len, candidates))
        walked = map(itemgetter(1), islice(ordered, budget))
        found = list(islice(self._matching(walked, None, pool, queue, worker), limit))
        if len(found) == limit or sum(map(len, lists)) <= budget:  # enough, or every task
            return found
        listed = dict.fromkeys(chain.from_iterable(candidates))
        chosen = self._matching(listed, status, pool, queue, worker)
        return heapq.nsmallest(limit, chosen, key=_newest_first)

    def _matching(
        self,
        task_ids: Iterable[str],
        status: TaskStatus | None,
        pool: str | None,
        queue: str | None,
        worker: str | None,
    ) -> Iterator[TaskView]:
        """The tasks that pass the filters, tested inline: a call per task walked would take
        a fifth of the walk."""
        tasks = self._tasks
        for task_id in task_ids:
            view = tasks[task_id]
            if (
                (status is None or view.status is status)
                and (queue is None or view.queue == queue)
                and (worker is None or view.worker == worker)
                and (
                    pool is None
                    or view.pool == pool
                    or (view.pool is None and self._pool_of(view) == pool)
                )
            ):
                yield view

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
        """Walks the shortest newest-seen-first index the filters allow and stops at ``limit``
        matches: the order is the answer's, so that is exact whatever ``now`` says."""
        keys, wanted = frozenset(task_keys), tuple((labels or {}).items())
        if limit is not None and limit <= 0:
            return []
        found = []
        final = status if status in _FINAL else None
        by_clock = status in _BY_CLOCK and queue is None and not keys and not wanted
        candidates: Iterable[SeenKey] = (
            self._by_clock(now, multiplier, pool, online=status is WorkerStatus.ONLINE)
            if by_clock
            else self._seen.candidates(
                pool=pool, queue=queue, task_keys=keys, labels=wanted, final=final
            )
        )
        for _, worker_id in candidates:
            view = self._workers[worker_id]
            if not _matches(view, pool, queue, keys, wanted):
                continue
            state = liveness(view, now, multiplier)
            if status is None or state == status:
                found.append(self._with_status(view, state))
                if limit is not None and len(found) >= limit:
                    break
        return found

    def _by_clock(
        self, now: datetime, multiplier: float, pool: str | None, *, online: bool
    ) -> Iterator[SeenKey]:
        """A superset of the workers (of ``pool``, or of any) ONLINE at ``now``, or OFFLINE,
        newest-seen first and read only as far as the caller reads: those :class:`LiveTally`
        lists as seen within their grace or before it, and those it does not list (no pool,
        or never seen). Walking the workers newest-seen first would read every ONLINE one
        before the first OFFLINE (the reaper asks for those of the whole fleet each pass), or
        every OFFLINE one when few are ONLINE."""
        untallied = sorted(seen_key(self._workers[worker]) for worker in self._untallied)
        runs = self._live.runs(now, multiplier, online=online, pool=pool)
        merged = heapq.merge(*runs, untallied, key=itemgetter(0))
        for _, same_moment in groupby(merged, key=itemgetter(0)):  # ties: by id, as walks are
            yield from sorted(same_moment)

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
        """Kept in order per (pool, queue) as tasks change: read, not sorted, per query."""
        return self._slots.holders(pool=pool, queue=queue)

    def slot_counts(self, *, pool: str | None = None) -> list[SlotCount]:
        """Kept per (pool, queue) as tasks change: one pass over pools and queues."""
        return self._slots.counts(pool=pool)

    def fleet_counts(
        self, *, now: datetime, multiplier: float = DEFAULT_MULTIPLIER, pool: str | None = None
    ) -> FleetCounts:
        """What readiness needs from the fleet at ``now`` (in ``pool``), counted from indexes:
        see :func:`workledger.readiness.store_readiness`."""
        pairs = (*self._worker_pairs, *self._unfinished_pairs)
        named = frozenset(p for p in pairs if pool is None or p[0] == pool)
        return self._live.count(now=now, multiplier=multiplier, pool=pool, named=named)

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
        self._settle()
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
        self._settle()
        for intervals in self._intervals.values():
            yield from intervals

    def worker_sessions(self) -> Iterable[WorkerSession]:
        """Every session of every worker (for utilization)."""
        self._settle()
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
        """Runs the reference computation over the stretches and sessions that can touch the
        window (by an hourly index), or over all of them for ``by="queue"``, whose groups
        depend on every queue a pool ever had."""
        intervals, sessions = self._touching(by, since=since, until=until, now=now, bucket=bucket)
        return utilization(
            intervals,
            sessions,
            by=by,
            since=since,
            until=until,
            now=now,
            bucket=bucket,
            multiplier=multiplier,
        )

    def _touching(
        self,
        by: Grouping,
        *,
        since: datetime,
        until: datetime,
        now: datetime,
        bucket: timedelta | None,
    ) -> tuple[Iterable[SlotInterval], Iterable[WorkerSession]]:
        """Stretches and sessions a window's rows can depend on.

        Those that neither overlap the window nor end in it add nothing, except to the
        pool a pool-less stretch takes from its worker's sessions (so those workers keep all
        of theirs) and to the queues a pool is known to have (``by="queue"`` reads all).
        """
        if by not in _WINDOWED:
            return self.slot_intervals(), self.worker_sessions()
        Window.of(since=since, until=until, now=now, bucket=bucket)  # the reference's errors
        self._settle()
        tasks = self._interval_times.touching(since, until)
        intervals = [i for t in tasks for i in self._intervals[t]]
        workers = self._session_times.touching(since, until)
        if by == "pool":
            workers |= {i.worker for i in intervals if i.pool is None and i.worker is not None}
        sessions = [s for w in workers for s in self._sessions.get(w, ())]
        return intervals, sessions

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
        """The snapshot's bytes, taken at once (the daemon's last one, as it stops)."""
        *_, chunks = self.dump_in_steps()
        assert chunks is not None
        return b"".join(chunks)

    def dump_in_steps(self, *, per_step: int = _PER_STEP) -> Iterator[list[bytes] | None]:
        """The snapshot, last, as chunks of bytes to write one after another
        (:func:`write_snapshot`), after a None between each two steps of ``per_step`` records
        read and encoded: the daemon folds batches and answers queries between them, where
        one pass over a million tasks held its loop for seconds.

        It is taken at the checkpoint of its first step, and the records are listed then. A
        record read after more batches were folded gives the events of its later state; that
        is still exact, because a restart replays the stream from the snapshot's checkpoint
        and the fold is order-free and idempotent: an event folded twice changes nothing.
        """
        head = _Snapshot(
            checkpoint=self._checkpoint,
            applied=self._applied,
            quarantined_total=self._quarantined_total,
            quarantine=list(self._quarantine),
        )
        records, parts = self._ledger.records(), []
        for start in range(0, len(records), per_step):
            # An event two records keep (a claim is its task's and its worker's sign of
            # life) is written once per step: read in two steps, it is folded twice.
            kept: dict[str, EventType] = {}
            retain(records[start : start + per_step], kept)  # type: ignore[arg-type]
            parts.append(msgspec.msgpack.encode(list(kept.values())))
            yield None
        yield _with_parts(msgspec.msgpack.encode(head), parts)

    @classmethod
    def load(cls, path: Path, *, quarantine_limit: int = 10_000) -> MemoryStore:
        """Rebuild a store from a snapshot written by :meth:`save`."""
        try:
            snapshot = msgspec.msgpack.decode(path.read_bytes(), type=_Snapshot)
        except (OSError, msgspec.DecodeError) as exc:
            raise StoreError(f"cannot read snapshot {path}: {exc}") from exc
        store = cls(quarantine_limit=quarantine_limit)
        try:
            parts = [_EVENTS.decode(part) for part in snapshot.parts]
        except msgspec.DecodeError as exc:
            raise StoreError(f"cannot read snapshot {path}: {exc}") from exc
        for events in [snapshot.events, *parts]:
            for event in events:
                store._ledger.apply(event)
        store._refresh()
        store._quarantine.extend(snapshot.quarantine)
        store._checkpoint = snapshot.checkpoint
        store._applied = snapshot.applied
        store._quarantined_total = snapshot.quarantined_total
        return store


def _with_parts(head: bytes, parts: list[bytes]) -> list[bytes]:
    """A snapshot encoded with no ``parts`` (its last field, so its last byte is msgpack's
    empty array), and the parts: the chunks of the same snapshot with them, uncopied."""
    assert head.endswith(_EMPTY_ARRAY)
    count = len(parts)
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 1 << 16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return [head[:-1], header, *parts]


def write_snapshot(path: Path, data: bytes | Sequence[bytes]) -> None:
    """Write snapshot bytes (or its chunks, in order) atomically: temp file, fsync, rename.

    :raises StoreError: naming the path, if the disk refuses.
    """
    # One fixed temp name (one writer per snapshot): what a killed save left behind is
    # overwritten by the next one instead of piling up.
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as file:
            file.writelines([data] if isinstance(data, bytes) else data)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write snapshot {path}: {exc}") from exc


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("-inf")


def _newest_first(view: TaskView) -> tuple[float, str]:
    return (-_timestamp(view.updated_at), view.task)


def _matches(
    view: WorkerView,
    pool: str | None,
    queue: str | None,
    keys: frozenset[str],
    wanted: tuple[tuple[str, str], ...],
) -> bool:
    """The ``workers`` filters, as :meth:`Store.workers` defines them."""
    if pool is not None and view.pool != pool:
        return False
    if queue is not None and view.queues and queue not in view.queues:
        return False
    if keys and keys.isdisjoint(view.task_keys):
        return False
    return not (wanted and any(view.labels.get(k) != v for k, v in wanted))


def _session_span(session: WorkerSession) -> tuple[datetime, datetime | None]:
    """Capacity from start to stop or next start; an open one ends at query time (None)."""
    end = session.stopped_at or session.next_started_at
    if end is None and session.last_seen is None:
        end = session.started_at  # never seen: no capacity at all
    return session.started_at, end


def _untallied(view: WorkerView) -> bool:
    """Not in :class:`LiveTally`'s lists, yet ONLINE or OFFLINE by the clock: neither stopped
    nor lost, and with no pool or never seen."""
    return not view.stopped and not view.lost and (view.pool is None or view.last_seen is None)


def _pool(view: WorkerView | None) -> str | None:
    return view.pool if view is not None else None


def _worker_pairs(view: WorkerView) -> list[_Pair]:
    """The pool and the (pool, queue)s a worker names, whatever its status."""
    return [(view.pool, None), *((view.pool, q) for q in set(view.queues))]


def _unfinished_pair(view: TaskView | None) -> list[_Pair]:
    """An unfinished task naming its pool names its (pool, queue) too."""
    if view is None or view.status in TERMINAL or view.pool is None:
        return []
    return [(view.pool, view.queue)]


def _holder(view: TaskView | None) -> tuple[str, bool] | None:
    """The worker whose slot the task holds, and whether it borrows that worker's pool."""
    if view is None or view.worker is None or view.status not in HOLDING_SLOT:
        return None
    return view.worker, view.pool is None


def _tally(counter: Counter[_Pair], pairs: Iterable[_Pair], step: int) -> None:
    for pair in pairs:
        counter[pair] += step
        if counter[pair] <= 0:
            del counter[pair]
