"""Indexes the in-memory store keeps beside the fold, so a live query reads about what it returns.

Each is updated per touched entity when a batch is applied, and answers exactly what a scan of
every worker or task would (the property tests in ``tests/test_memory_indexes.py`` compare them
with brute force). Liveness depends on the query's clock, so nothing here stores a status:
workers are kept newest-seen first, or by their last sign of life, and the clock is applied at
query time.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import chain, groupby
from typing import Any

import msgspec
from sortedcontainers import SortedList

from workledger.projections.utilization import micros
from workledger.projections.views import (
    SlotCount,
    SlotHolder,
    TaskView,
    WorkerStatus,
    WorkerView,
)

__all__ = [
    "FleetCounts",
    "LiveTally",
    "SeenIndex",
    "SeenKey",
    "SlotTally",
    "SortedKeys",
    "TaskKeys",
    "TimeIndex",
    "seen_key",
]

SeenKey = tuple[float, str]  # (-last seen timestamp, worker): the order ``workers`` answers in
_Term = tuple[Hashable, ...]
_ALL: _Term = ("all",)
_ANY_QUEUE: _Term = ("any queue",)  # workers listing no queue serve every queue


_LOAD = 500  # keys per chunk; a chunk splits past twice this


class SortedKeys:
    """Distinct keys in ascending order, in chunks as in ``sortedcontainers.SortedList``,
    whose additions wait in a buffer until :meth:`flush` sorts them in all at once.

    The store keeps things newest first, and what a batch changes becomes the newest: a
    batch's additions are then one sorted run before every kept key, put in front whole
    instead of bisected in one at a time (about a tenth of ``SortedList.add`` per key).
    Iterating flushes first; the store flushes at the end of each batch so reads need not.

    A key can also be *replaced* lazily: the old one is left in place but no longer counted,
    for an owner that knows which of its keys still stand (see :class:`SeenIndex`). That costs
    nothing per key, where :meth:`discard` finds and deletes it; :meth:`compact` drops the
    retired ones in one pass.
    """

    __slots__ = ("_chunks", "_fresh", "_maxes", "_size", "stale")

    def __init__(self) -> None:
        self._chunks: list[list[Any]] = []
        self._maxes: list[Any] = []  # the last key of each chunk
        self._fresh: list[Any] = []
        self._size = 0  # keys held, retired ones included
        self.stale = 0  # retired keys still held

    def __len__(self) -> int:
        """Keys that count: those held less those retired."""
        return self._size - self.stale

    def __iter__(self) -> Iterator[Any]:
        self.flush()
        return chain.from_iterable(self._chunks)

    def add(self, key: Any) -> None:
        """Add ``key``, which must not be here already."""
        self._fresh.append(key)
        self._size += 1

    def discard(self, key: Any) -> None:
        """Remove ``key`` if it is here, kept or waiting."""
        chunks, maxes = self._chunks, self._maxes
        i = bisect_left(maxes, key)
        if i < len(maxes):
            chunk = chunks[i]
            j = bisect_left(chunk, key)
            if chunk[j] == key:
                del chunk[j]
                self._size -= 1
                if not chunk:
                    del chunks[i], maxes[i]
                    return
                if j == len(chunk):
                    maxes[i] = chunk[-1]
                if len(chunk) < _LOAD // 4 and i + 1 < len(chunks):  # no trail of tiny chunks
                    chunk += chunks[i + 1]
                    maxes[i] = maxes[i + 1]
                    del chunks[i + 1], maxes[i + 1]
                return
        try:
            self._fresh.remove(key)
        except ValueError:
            return
        self._size -= 1

    def replace(self, key: Any) -> None:
        """Add ``key`` and retire the one it replaces: that key stays held but no longer
        counts, and the owner skips it when reading."""
        self._fresh.append(key)
        self._size += 1
        self.stale += 1

    def compact(self, current: Mapping[Any, Any]) -> None:
        """Keep only the keys that stand: ``(order, id)`` pairs that are ``current[id]``."""
        get = current.get
        kept = [key for key in self if get(key[1]) == key]
        self._chunks = [kept[i : i + _LOAD] for i in range(0, len(kept), _LOAD)]
        self._maxes = [chunk[-1] for chunk in self._chunks]
        self._size, self.stale = len(kept), 0

    def flush(self) -> None:
        """Sort the waiting keys in: those before every kept key as whole chunks in front."""
        fresh = self._fresh
        if not fresh:
            return
        self._fresh = []
        fresh.sort()
        chunks, maxes = self._chunks, self._maxes
        ahead = bisect_left(fresh, chunks[0][0]) if chunks else len(fresh)
        if ahead:
            if chunks and len(chunks[0]) + ahead <= 2 * _LOAD:
                chunks[0][:0] = fresh[:ahead]
            else:
                front = [fresh[i : min(i + _LOAD, ahead)] for i in range(0, ahead, _LOAD)]
                chunks[:0] = front
                maxes[:0] = [chunk[-1] for chunk in front]
        for key in fresh[ahead:]:
            i = min(bisect_left(maxes, key), len(maxes) - 1)
            chunk = chunks[i]
            insort(chunk, key)
            maxes[i] = chunk[-1]
            if len(chunk) > 2 * _LOAD:
                chunks.insert(i + 1, chunk[_LOAD:])
                del chunk[_LOAD:]
                maxes.insert(i, chunk[-1])


def seen_key(view: WorkerView) -> SeenKey:
    """Most recently seen first (never seen last), then by id."""
    seen = view.last_seen
    return (-seen.timestamp() if seen is not None else float("inf"), view.worker)


class SeenIndex:
    """Workers newest-seen first, overall and per pool, queue, task key and label.

    A filtered query walks the shortest list its filters allow, so with a ``limit`` it stops
    after about as many workers as it returns (more when many are filtered out by status).

    A sign of life re-keys a worker in each of its lists (a dozen, with queues, task keys and
    labels), and most events are signs of life. So the new key is only added, to the lists
    the worker is known to be in, and the old one retired where it lies: a key that is not
    its worker's current one is skipped when read, and a list is compacted once its retired
    keys outnumber the others (and a few dozen). A worker's key only grows newer
    (``last_seen`` is the latest sign of life), so a retired key never comes back.
    """

    def __init__(self) -> None:
        self._lists: dict[_Term, SortedKeys] = {}
        self._current: dict[str, SeenKey] = {}  # each worker's key now
        self._in: dict[str, tuple[SortedKeys, ...]] = {}  # the lists each worker's key is in

    def _is_current(self, key: SeenKey) -> bool:
        return self._current.get(key[1]) == key

    def add(self, view: WorkerView) -> None:
        key = self._current[view.worker] = seen_key(view)
        lists = []
        for term in _terms(view):
            found = self._lists.get(term)
            if found is None:
                found = self._lists[term] = SortedKeys()
            found.add(key)
            lists.append(found)
        self._in[view.worker] = tuple(lists)  # smaller than a list, for every worker

    def discard(self, view: WorkerView) -> None:
        key = seen_key(view)
        del self._current[view.worker], self._in[view.worker]
        for term in _terms(view):
            found = self._lists[term]
            found.discard(key)
            if not found:
                del self._lists[term]

    def move(self, old: WorkerView | None, new: WorkerView | None) -> None:
        """Replace ``old`` by ``new`` (None: absent); a sign of life only re-keys it in the
        lists it is in, without working out its terms twice."""
        if old is None or new is None or not _same_terms(old, new):
            if old is not None:
                self.discard(old)
            if new is not None:
                self.add(new)
            return
        after = seen_key(new)
        if after == seen_key(old):
            return
        self._current[new.worker] = after
        for found in self._in[new.worker]:
            found.replace(after)

    def candidates(
        self,
        *,
        pool: str | None,
        queue: str | None,
        task_keys: Iterable[str],
        labels: Sequence[tuple[str, str]],
        final: WorkerStatus | None = None,
    ) -> Iterator[SeenKey]:
        """A superset of the matching workers, newest-seen first, each once.

        ``final`` (STOPPED or LOST: statuses no clock changes) narrows it to workers marked so.
        """
        options: list[list[_Term]] = [[_ALL]]
        if pool is not None:
            options.append([("pool", pool)])
        if queue is not None:
            options.append([("queue", queue), _ANY_QUEUE])
        if pool is not None and queue is not None:  # queue names are per pool
            options.append([("pool queue", pool, queue), ("pool any queue", pool)])
        if final is not None:
            options.append([("final", final)])
        keys = list(task_keys)
        if keys:
            options.append([("key", k) for k in keys])
        options += [[("label", k, v)] for k, v in labels]
        empty = SortedKeys()
        shortest = min(
            ([self._lists.get(term, empty) for term in terms] for terms in options),
            key=lambda lists: sum(map(len, lists)),
        )
        return filter(self._is_current, _merged(shortest))

    def flush(self) -> None:
        """Sort in what the batch added (see :class:`SortedKeys`); compact where due."""
        for found in self._lists.values():
            found.flush()
            if found.stale > max(len(found), _LOAD // 8):
                found.compact(self._current)


def _same_terms(old: WorkerView, new: WorkerView) -> bool:
    """Do both give the same :func:`_terms`? (Cheaper than building them.)"""
    return (
        old.pool == new.pool
        and old.queues == new.queues
        and old.task_keys == new.task_keys
        and old.stopped == new.stopped
        and old.lost == new.lost
        and old.labels == new.labels
    )


def _terms(view: WorkerView) -> set[_Term]:
    terms: set[_Term] = {_ALL, ("pool", view.pool)}
    terms.update(("queue", q) for q in view.queues)
    terms.update(("pool queue", view.pool, q) for q in view.queues)
    terms.update(("key", k) for k in view.task_keys)
    terms.update(("label", k, v) for k, v in view.labels.items())
    if not view.queues:
        terms.update((_ANY_QUEUE, ("pool any queue", view.pool)))
    if view.stopped:
        terms.add(("final", WorkerStatus.STOPPED))
    if view.lost:
        terms.add(("final", WorkerStatus.LOST))
    return terms


def _merged(lists: list[SortedKeys]) -> Iterator[SeenKey]:
    """Several sorted lists as one, without repeats (equal keys meet side by side)."""
    if len(lists) == 1:
        yield from lists[0]
        return
    last = None
    for key in heapq.merge(*lists):
        if key != last:
            yield key
        last = key


class FleetCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What pool and queue readiness needs from the fleet at one instant, counted.

    ``named`` holds the (pool, queue or None) pairs the workers in the live view name (any
    status) and those unfinished tasks name. ``members`` counts ONLINE or OFFLINE workers per
    pool; ``online_any_queue`` those ONLINE listing no queue; ``online_listing`` those ONLINE
    per (pool, queue) they list.
    """

    named: frozenset[tuple[str | None, str | None]]
    members: dict[str, int]
    online: dict[str, int]
    slots_online: dict[str, int]
    online_any_queue: dict[str, int]
    online_listing: dict[tuple[str, str], int]


_Shape = tuple[float, int, tuple[str, ...]]  # heartbeat interval, slots, distinct queues


class LiveTally:
    """Per pool, workers that may still work (neither stopped nor lost), by shape.

    Within one heartbeat interval the ONLINE ones are exactly those seen since ``now - grace``,
    so counting them is a bisection per (pool, shape); a pool has few shapes in practice.
    """

    def __init__(self) -> None:
        self._members: Counter[str] = Counter()
        self._seen: dict[str, dict[_Shape, SortedList]] = {}

    def add(self, view: WorkerView) -> None:
        pool = _counted_pool(view)
        if pool is None:
            return
        self._members[pool] += 1
        if view.last_seen is not None:
            shapes = self._seen.setdefault(pool, {})
            shapes.setdefault(_shape(view), SortedList()).add((view.last_seen, view.worker))

    def discard(self, view: WorkerView) -> None:
        pool = _counted_pool(view)
        if pool is None:
            return
        _decrement(self._members, pool)
        if view.last_seen is not None:
            shapes = self._seen[pool]
            seen = shapes[_shape(view)]
            seen.discard((view.last_seen, view.worker))
            if not seen:
                del shapes[_shape(view)]
                if not shapes:
                    del self._seen[pool]

    def move(self, old: WorkerView | None, new: WorkerView | None) -> None:
        """Replace ``old`` by ``new`` (None: absent), unless nothing counted here changed."""
        if old is not None and new is not None:
            before, after = _live_facts(old), _live_facts(new)
            if before == after:
                return
            pool = _counted_pool(new)
            seen_again = old.last_seen is not None and new.last_seen is not None
            if seen_again and pool is not None and before[1:] == after[1:]:  # re-key in place
                seen = self._seen[pool][_shape(new)]
                seen.remove((old.last_seen, old.worker))
                seen.add((new.last_seen, new.worker))
                return
        if old is not None:
            self.discard(old)
        if new is not None:
            self.add(new)

    def runs(
        self, now: datetime, multiplier: float, *, online: bool, pool: str | None = None
    ) -> list[Iterator[SeenKey]]:
        """The workers listed here (in ``pool``, or in any) that are ONLINE at ``now``, or
        OFFLINE, as runs newest-seen first: per pool and shape, one bisection splits those
        seen within its grace from those seen before, and only what is read is read. Workers
        seen at the same moment may come in any order."""
        runs: list[Iterator[SeenKey]] = []
        pools = self._seen.values() if pool is None else [self._seen.get(pool, {})]
        for shapes in pools:
            for (beat, _, _), seen in shapes.items():
                gone = len(seen) - _online(seen, now, timedelta(seconds=beat * multiplier))
                start, stop = (gone, len(seen)) if online else (0, gone)
                if start < stop:
                    runs.append(map(_seen_key, seen.islice(start, stop, reverse=True)))
        return runs

    def count(
        self,
        *,
        now: datetime,
        multiplier: float,
        pool: str | None,
        named: frozenset[tuple[str | None, str | None]],
    ) -> FleetCounts:
        """The counts at ``now`` for every pool, or for ``pool`` alone."""
        pools = list(self._members) if pool is None else [pool]
        online: Counter[str] = Counter()
        slots: Counter[str] = Counter()
        any_queue: Counter[str] = Counter()
        listing: Counter[tuple[str, str]] = Counter()
        for name in pools:
            for (beat, slot_count, queues), seen in self._seen.get(name, {}).items():
                live = _online(seen, now, timedelta(seconds=beat * multiplier))
                if not live:
                    continue
                online[name] += live
                slots[name] += live * slot_count
                if not queues:
                    any_queue[name] += live
                for queue in queues:
                    listing[name, queue] += live
        members = {p: self._members[p] for p in pools if self._members[p]}
        return FleetCounts(
            named=named,
            members=members,
            online=dict(online),
            slots_online=dict(slots),
            online_any_queue=dict(any_queue),
            online_listing=dict(listing),
        )


def _live_facts(view: WorkerView) -> tuple[object, ...]:
    """All that :class:`LiveTally` keys a worker on, ``last_seen`` first."""
    return (
        view.last_seen,
        view.pool,
        view.stopped,
        view.lost,
        view.heartbeat_interval,
        view.slots,
        view.queues,
    )


def _seen_key(entry: tuple[datetime, str]) -> SeenKey:
    return (-entry[0].timestamp(), entry[1])


def _counted_pool(view: WorkerView) -> str | None:
    """The pool :class:`LiveTally` counts the worker in; None if it is in none, or stopped
    or lost."""
    return None if view.stopped or view.lost else view.pool


def _shape(view: WorkerView) -> _Shape:
    return (view.heartbeat_interval, view.slots, tuple(sorted(set(view.queues))))


def _online(seen: SortedList, now: datetime, grace: timedelta) -> int:
    """How many were seen at or after ``now - grace``: ``now - last_seen <= grace``, the rule."""
    try:
        since = now - grace
    except OverflowError:  # past the calendar's ends: all of them, or none for a negative grace
        return len(seen) if grace >= timedelta(0) else 0
    first: int = seen.bisect_left((since, ""))
    return len(seen) - first


_Place = tuple[str | None, str | None]  # (pool, queue) a slot is held in
_Since = tuple[float, str]  # (when the slot was taken, task): the order holders are listed in


class SlotTally:
    """Tasks holding a slot, by the (pool, queue) they hold it in, each place's in order.

    The store says where each task holds one, and as whom (or None), whenever the task or its
    worker's pool changes. So counts for every pool cost one pass over the places, and a
    place's holders are read in order, not sorted per query (a pool can hold thousands).
    """

    def __init__(self) -> None:
        self._place: dict[str, _Place] = {}
        self._holder: dict[str, SlotHolder] = {}
        self._held: dict[_Place, SortedList] = {}  # of _Since

    def place(self, holder: SlotHolder, where: _Place | None) -> None:
        """Record that ``holder.task`` holds a slot at ``where``, as ``holder`` (None: none)."""
        task = holder.task
        before = self._place.get(task)
        if before == where and (where is None or self._holder[task] == holder):
            return
        if before is not None:
            held = self._held[before]
            held.remove(_since(self._holder.pop(task)))
            if not held:
                del self._held[before]
            del self._place[task]
        if where is not None:
            self._place[task] = where
            self._holder[task] = holder
            held = self._held.get(where)
            if held is None:
                held = self._held[where] = SortedList()
            held.add(_since(holder))

    def holders(self, *, pool: str | None, queue: str | None) -> list[SlotHolder]:
        """Holders in ``pool`` and ``queue`` (None: any), by pool, queue, since and task."""
        places = sorted(
            (
                p
                for p in self._held
                if (pool is None or p[0] == pool) and (queue is None or p[1] == queue)
            ),
            key=_holder_place,
        )
        found = []
        for _, alike in groupby(places, key=_holder_place):  # None and "" list as one
            held = [self._held[p] for p in alike]
            keys = held[0] if len(held) == 1 else heapq.merge(*held)
            found += [self._holder[task] for _, task in keys]
        return found

    def counts(self, *, pool: str | None) -> list[SlotCount]:
        """Per pool (queue None) and per (pool, queue), each pool's total first."""
        counts: Counter[_Place] = Counter()
        for (p, q), holders in self._held.items():
            if pool is None or p == pool:
                counts[p, None] += len(holders)
                if q is not None:
                    counts[p, q] += len(holders)
        ordered = sorted(counts.items(), key=lambda kv: _count_order(*kv[0]))
        return [SlotCount(pool=p, queue=q, held=n) for (p, q), n in ordered]


def _since(holder: SlotHolder) -> _Since:
    since = holder.since
    return (since.timestamp() if since is not None else float("-inf"), holder.task)


def _holder_place(place: _Place) -> tuple[str, str]:
    return (place[0] or "", place[1] or "")


def _count_order(pool: str | None, queue: str | None) -> tuple[str, bool, str]:
    """Each pool's total first, then its queues."""
    return (pool or "", queue is not None, queue or "")


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


_HOUR = 3_600_000_000  # microseconds
_LONGEST = 24 * 62  # a span over more hours than this is looked at by every query instead


class TimeIndex:
    """Which entities (tasks, workers) have a stretch of time touching each hour.

    Utilization over a window needs only the stretches that overlap it (or end in it), so a
    query over a day reads the entities of about 25 hours plus those still open, whose end is
    decided at query time, and those too long to spread over hours.
    """

    def __init__(self) -> None:
        self._hours: dict[int, set[str]] = {}
        self._at: dict[str, range] = {}
        self._always: set[str] = set()  # open or very long: a candidate for every window

    def put(self, key: str, spans: Iterable[tuple[datetime, datetime | None]]) -> None:
        """Replace what ``key`` covers: ``(start, end)`` spans, ``end`` None while open."""
        self._drop(key)
        lows, highs, always = [], [], False
        for start, end in spans:
            lows.append(micros(start) // _HOUR)
            if end is None:
                always = True
            else:
                highs.append(micros(max(start, end)) // _HOUR)
        if not lows:
            return
        hours = range(min(lows), max(highs, default=min(lows)) + 1)
        if always or len(hours) > _LONGEST:
            self._always.add(key)
            return
        self._at[key] = hours
        for hour in hours:
            self._hours.setdefault(hour, set()).add(key)

    def _drop(self, key: str) -> None:
        self._always.discard(key)
        for hour in self._at.pop(key, ()):
            found = self._hours[hour]
            found.discard(key)
            if not found:
                del self._hours[hour]

    def touching(self, since: datetime, until: datetime) -> set[str]:
        """Every key with a span touching ``[since, until]`` (a superset of those that count)."""
        first, last = micros(since) // _HOUR, micros(until) // _HOUR
        found = set(self._always)
        if last - first + 1 <= len(self._hours):
            hours: Iterable[int] = range(first, last + 1)
        else:
            hours = [h for h in self._hours if first <= h <= last]
        for hour in hours:
            found |= self._hours.get(hour, set())
        return found


class TaskKeys:
    """Which tasks have named each pool, queue and worker.

    A filter that matches few tasks then reads those few instead of walking every task to
    find that few match. A task is listed under a key when it comes to name it: its pool and
    queue when submitted, its worker on each claim, so most touches list nothing. Lists only
    grow (a task that moved on stays listed, so readers check each one), as appending is the
    cheapest thing a batch can do per task; ``pool_less`` is exact, for every pool reads it.
    """

    __slots__ = ("pool_less", "pools", "queues", "workers")

    def __init__(self) -> None:
        self.pools: defaultdict[str, list[str]] = defaultdict(list)
        self.queues: defaultdict[str, list[str]] = defaultdict(list)
        self.workers: defaultdict[str, list[str]] = defaultdict(list)
        self.pool_less: set[str] = set()  # may count in their worker's pool

    def move(self, old: TaskView | None, new: TaskView) -> None:
        task, pool, queue, worker = new.task, new.pool, new.queue, new.worker
        if old is None or old.pool != pool:
            if pool is None:
                self.pool_less.add(task)
            else:
                self.pools[pool].append(task)
                if old is not None and old.pool is None:
                    self.pool_less.discard(task)
        if queue is not None and (old is None or old.queue != queue):
            self.queues[queue].append(task)
        if worker is not None and (old is None or old.worker != worker):
            self.workers[worker].append(task)

    def candidates(
        self, pool: str | None, queue: str | None, worker: str | None
    ) -> list[Collection[str]] | None:
        """The fewest tasks listed under every filter given (in parts to read one after
        another, maybe more than once), or None without a filter."""
        options: list[list[Collection[str]]] = []
        if pool is not None:
            options.append([self.pools.get(pool, ()), self.pool_less])
        if queue is not None:
            options.append([self.queues.get(queue, ())])
        if worker is not None:
            options.append([self.workers.get(worker, ())])
        return min(options, key=lambda parts: sum(map(len, parts))) if options else None
