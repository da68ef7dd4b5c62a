"""Utilization: how busy the fleet was, per group and time bucket, from slot stretches and sessions.

Every number here is a function of event times and the query's ``now`` alone, so a rebuild of
the read model gives the same answer. This module is the reference; the DuckDB store computes
the same numbers in SQL (``workledger.stores._duckdb_utilization``) and a property test holds
the two together.

Window and buckets
    The window is ``[since, until)`` in event time (UTC). With a bucket width (``5m``, ``1h``,
    ``1d``...) buckets are aligned to the Unix epoch and the first and last may be cut by the
    window; each row's ``bucket_start``/``bucket_end`` are the cut bounds, so rates divide by
    the time actually covered. Without a bucket there is one row per group for the whole window.
    Every group that has anything to report in the window (busy, slot or capacity time, or an
    interval ending) gets one row per bucket, zeros included, so series are dense.

Time (all clipped to the bucket and the window)
    - ``busy_seconds``: each slot interval's ``[started_at, released_at or now)``: RUNNING time.
    - ``slot_seconds``: each slot interval's ``[acquired_at, released_at or now)``: held time.
    - ``capacity_seconds``: each worker session's ``slots x [started_at, end)`` where ``end`` is
      ``stopped_at``, else ``next_started_at``, else ``min(now, last_seen + heartbeat_interval x
      multiplier)``: the instant the liveness rule (``projections/liveness.py``) turns the worker
      OFFLINE. A session with no ``last_seen`` has no capacity.
    - ``utilization = busy_seconds / capacity_seconds``; None when capacity is 0 or undefined.

Events (intervals whose ``released_at`` falls in the bucket and the window)
    ``completed``, ``failed``, ``retried`` (ended RETRYING), ``crashed``, ``cancelled``;
    ``throughput_per_hour = completed / hours covered by the bucket``;
    ``success_rate = completed / (completed + failed + crashed)``, None when that is 0.
    ``run_p50_seconds``/``run_p95_seconds``: percentiles of ``max(0, released_at - started_at)``
    over completed intervals that ran, by linear interpolation between closest ranks (DuckDB's
    ``quantile_cont``, numpy's default): position ``(n - 1) x q`` in the sorted durations.

Groups (``by``)
    An interval belongs to its own ``worker``, ``pool``, ``queue``, ``task_key`` or ``stage``;
    None groups hold intervals lacking that field. An interval without a pool (its task was
    claimed before it was submitted) takes the pool of its worker's session in force when it was
    acquired (started at or before ``acquired_at``, not yet superseded by a later start).

    A session gives capacity to: its worker (``worker``); its pool (``pool``); each queue it
    lists, or, listing none, every queue of its pool, where a pool's queues are those any slot
    interval names in that pool or any session of that pool lists (``queue``); each of its task
    keys, none if it lists none (``task_key``). Stages have no capacity: ``capacity_seconds``
    and ``utilization`` are None for ``by="stage"``.

    Queue names are per pool, so ``by="queue"`` groups by (pool, queue) and fills the row's
    ``pool``; ``by="pool"`` fills it too. Rows are ordered by pool, group (None last), bucket.

Times are kept as integer epoch microseconds throughout, so sums are exact and both stores agree
to the microsecond; only the final divisions are floating point.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal, get_args

import msgspec

from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.views import SlotInterval, TaskStatus, WorkerSession

__all__ = [
    "GROUPINGS",
    "MAX_BUCKETS",
    "Grouping",
    "UtilizationRow",
    "Window",
    "micros",
    "parse_bucket",
    "parse_time",
    "utilization",
]

Grouping = Literal["worker", "pool", "queue", "task_key", "stage"]
GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)

MAX_BUCKETS = 20_000
"""A window cut into more buckets than this is refused: the answer would be too big to read."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPAN = re.compile(r"(\d+)([smhdw])")

_Key = tuple[str | None, str | None]  # (pool, group)


class UtilizationRow(msgspec.Struct, frozen=True, kw_only=True):
    """One group in one bucket; see the module docstring for what each number means."""

    group: str | None
    pool: str | None  # the pool of a queue (``by="queue"``) or the pool itself (``by="pool"``)
    bucket_start: datetime
    bucket_end: datetime
    busy_seconds: float
    slot_seconds: float
    capacity_seconds: float | None
    utilization: float | None
    completed: int
    failed: int
    retried: int
    crashed: int
    cancelled: int
    throughput_per_hour: float
    run_p50_seconds: float | None
    run_p95_seconds: float | None
    success_rate: float | None


# --- parsing query parameters ---------------------------------------------------------------


def parse_bucket(text: str) -> timedelta:
    """A span like ``30s``, ``5m``, ``1h``, ``1d`` or ``2w``.

    :raises ValueError: when it is not a positive whole number followed by one of s m h d w.
    """
    match = _SPAN.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise ValueError(
            f"bad span {text!r}: expected a positive whole number and a unit "
            "(s, m, h, d or w), like 30s, 5m, 1h or 1d"
        )
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def parse_time(text: str, now: datetime) -> datetime:
    """An RFC 3339 time (no offset means UTC), ``now``, or a span before now like ``-1h``.

    :raises ValueError: when it is none of those.
    """
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("-"):
        return now - parse_bucket(text[1:])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"bad time {text!r}: expected RFC 3339 (2026-01-01T12:00:00Z), 'now' "
            "or a span before now (-1h, -30m)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- the window -----------------------------------------------------------------------------


def micros(moment: datetime) -> int:
    """Epoch microseconds of an aware datetime: exact, unlike ``timestamp()``."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no timezone; utilization uses UTC")
    return (moment - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class Window:
    """A query's window and buckets in epoch microseconds; every store uses it so edges agree.

    Bucket ``i`` (from 0) covers ``[origin + i*width, origin + (i+1)*width)`` cut to
    ``[since, until)``; ``origin`` is the epoch-aligned start of the bucket holding ``since``
    (or ``since`` itself when there are no buckets), so offsets from it are never negative.
    """

    since: int
    until: int
    now: int
    origin: int
    width: int
    count: int

    @classmethod
    def of(
        cls, *, since: datetime, until: datetime, now: datetime, bucket: timedelta | None
    ) -> Window:
        """Validate and convert a query's times.

        :raises ValueError: for naive times, an empty window, a non-positive or sub-microsecond
            bucket, or more than :data:`MAX_BUCKETS` buckets.
        """
        lo, hi = micros(since), micros(until)
        if lo >= hi:
            raise ValueError(f"since ({since.isoformat()}) must be before until")
        width = hi - lo if bucket is None else bucket // _MICROSECOND
        if width <= 0:
            raise ValueError(f"bucket must be positive, not {bucket}")
        origin = lo if bucket is None else lo - lo % width
        count = -(-(hi - origin) // width)
        if count > MAX_BUCKETS:
            raise ValueError(f"{count} buckets of {bucket}: at most {MAX_BUCKETS}; widen them")
        return cls(lo, hi, micros(now), origin, width, count)

    def index(self, at: int) -> int:
        """The bucket holding ``at`` (which must lie in the window)."""
        return (at - self.origin) // self.width

    def bounds(self, index: int) -> tuple[int, int]:
        """A bucket's start and end, cut to the window."""
        start = self.origin + index * self.width
        return max(start, self.since), min(start + self.width, self.until)

    def contains(self, at: int) -> bool:
        """Whether an instant falls in ``[since, until)``."""
        return self.since <= at < self.until

    def moment(self, at: int) -> datetime:
        """Back from epoch microseconds to an aware UTC datetime."""
        return _EPOCH + at * _MICROSECOND

    def buckets(self) -> list[tuple[datetime, datetime, int]]:
        """Each bucket's start and end (cut to the window) as times, and the microseconds it
        covers: made once per query, not once per row (100k rows in a per-worker day)."""
        spans = map(self.bounds, range(self.count))
        return [(self.moment(start), self.moment(end), end - start) for start, end in spans]


# --- the computation --------------------------------------------------------------------------


def utilization(
    intervals: Iterable[SlotInterval],
    sessions: Iterable[WorkerSession],
    *,
    by: Grouping,
    since: datetime,
    until: datetime,
    now: datetime,
    bucket: timedelta | None = None,
    multiplier: float = DEFAULT_MULTIPLIER,
) -> list[UtilizationRow]:
    """Rows per group and bucket, ordered by pool, group (None last) and bucket.

    Pure: no clock and no I/O; the same arguments always give the same rows.

    :raises ValueError: for an unknown ``by`` or a bad window (see :meth:`Window.of`).
    """
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    window = Window.of(since=since, until=until, now=now, bucket=bucket)
    intervals, sessions = list(intervals), list(sessions)
    pools = _PoolOfInterval(sessions) if by in ("pool", "queue") else None
    cells = _Cells(window)
    for interval in intervals:
        pool = interval.pool if pools is None else pools.of(interval)
        cells.add_interval(_interval_key(interval, by, pool), interval)
    if by != "stage":
        queues = (
            _queues_by_pool(intervals, sessions, pools)
            if pools is not None and by == "queue"
            else {}
        )
        for session in sessions:
            end = _session_end(session, window.now, multiplier)
            for key in _session_keys(session, by, queues):
                cells.add_capacity(key, session, end)
    return cells.rows(with_capacity=by != "stage")


def _session_end(session: WorkerSession, now: int, multiplier: float) -> int:
    """When the session stopped giving capacity (see the module docstring)."""
    for end in (session.stopped_at, session.next_started_at):
        if end is not None:
            return micros(end)
    if session.last_seen is None:
        return micros(session.started_at)
    grace = timedelta(seconds=session.heartbeat_interval * multiplier)
    return min(now, micros(session.last_seen + grace))


class _PoolOfInterval:
    """An interval's pool, or failing that its worker's session pool when it was acquired."""

    def __init__(self, sessions: list[WorkerSession]) -> None:
        self._by_worker: dict[str, list[WorkerSession]] = {}
        for session in sessions:
            self._by_worker.setdefault(session.worker, []).append(session)

    def of(self, interval: SlotInterval) -> str | None:
        if interval.pool is not None or interval.worker is None:
            return interval.pool
        acquired = interval.acquired_at
        for session in self._by_worker.get(interval.worker, ()):
            following = session.next_started_at
            if session.started_at <= acquired and (following is None or acquired < following):
                return session.pool
        return None


def _interval_key(interval: SlotInterval, by: Grouping, pool: str | None) -> _Key:
    match by:
        case "worker":
            return None, interval.worker
        case "pool":
            return pool, pool
        case "queue":
            return pool, interval.queue
        case "task_key":
            return None, interval.task_key
    return None, interval.stage


def _queues_by_pool(
    intervals: list[SlotInterval], sessions: list[WorkerSession], pools: _PoolOfInterval
) -> dict[str, set[str]]:
    """Every queue a pool is known to have: named by its intervals or listed by its workers."""
    known: dict[str, set[str]] = {}
    for interval in intervals:
        pool = pools.of(interval)
        if pool is not None and interval.queue is not None:
            known.setdefault(pool, set()).add(interval.queue)
    for session in sessions:
        known.setdefault(session.pool, set()).update(session.queues)
    return known


def _session_keys(session: WorkerSession, by: Grouping, queues: dict[str, set[str]]) -> list[_Key]:
    match by:
        case "worker":
            return [(None, session.worker)]
        case "pool":
            return [(session.pool, session.pool)]
        case "queue":
            served = set(session.queues) or queues.get(session.pool, set())
            return [(session.pool, queue) for queue in served]
        case "task_key":
            return [(None, key) for key in set(session.task_keys)]
    return []


_BUSY, _SLOT, _CAPACITY = 0, 1, 2  # a cell's sums of time
_NO_ENDS: Counter[TaskStatus] = Counter()


class _Cell:
    """The sums of one group in one bucket: busy, slot and capacity time in microseconds, and
    the stretches that ended in it (made when the first one does: most cells have none)."""

    __slots__ = ("ends", "runs", "times")

    def __init__(self) -> None:
        self.times = [0, 0, 0]
        self.ends: Counter[TaskStatus] | None = None
        self.runs: list[float] = []  # seconds

    def __bool__(self) -> bool:
        return any(self.times) or self.ends is not None


class _Cells:
    """Accumulates intervals and sessions into cells, then lays them out as dense rows.

    A span's partly covered buckets are added to their cells at once; the buckets it covers
    whole are kept as steps (the weight it adds per bucket, up at the first, down after the
    last) and added bucket by bucket only once, when the rows are laid out.
    """

    def __init__(self, window: Window) -> None:
        self._window = window
        self._cells: dict[tuple[_Key, int], _Cell] = {}
        self._steps: dict[tuple[_Key, int], Counter[int]] = {}  # (key, sum) -> bucket: step

    def _cell(self, key: _Key, index: int) -> _Cell:
        cell = self._cells.get((key, index))
        if cell is None:
            cell = self._cells[key, index] = _Cell()
        return cell

    def _spread(self, key: _Key, what: int, start: int, end: int, weight: int = 1) -> None:
        """Add ``weight`` x the time of ``[start, end)`` in each bucket to the ``what`` sum:
        the first and last bucket it covers in part now, those between as steps."""
        window = self._window
        lo, hi = max(start, window.since), min(end, window.until)
        if hi <= lo:
            return
        first, last = window.index(lo), window.index(hi - 1)
        if first == last:  # most spans
            self._cell(key, first).times[what] += weight * (hi - lo)
            return
        head, tail = window.bounds(first)[1] - lo, hi - window.bounds(last)[0]
        self._cell(key, first).times[what] += weight * head
        self._cell(key, last).times[what] += weight * tail
        if last > first + 1:  # whole buckets between: a bucket covers 1 minute, a session days
            steps = self._steps.get((key, what))
            if steps is None:
                steps = self._steps[key, what] = Counter()
            steps[first + 1] += weight
            steps[last] -= weight

    def _add_steps(self) -> None:
        """Add the whole buckets the steps stand for to their cells."""
        width = self._window.width
        for (key, what), steps in self._steps.items():
            level = 0
            for here, there in pairwise(sorted(steps)):
                level += steps[here]
                if level:
                    for index in range(here, there):
                        self._cell(key, index).times[what] += level * width
        self._steps.clear()

    def add_interval(self, key: _Key, interval: SlotInterval) -> None:
        window = self._window
        released = None if interval.released_at is None else micros(interval.released_at)
        end = window.now if released is None else released
        self._spread(key, _SLOT, micros(interval.acquired_at), end)
        started = None if interval.started_at is None else micros(interval.started_at)
        if started is not None:
            self._spread(key, _BUSY, started, end)
        ended = interval.ended
        if released is not None and ended is not None and window.contains(released):
            self._ended(self._cell(key, window.index(released)), ended, released, started)

    @staticmethod
    def _ended(cell: _Cell, ended: TaskStatus, released: int, started: int | None) -> None:
        if cell.ends is None:
            cell.ends = Counter()
        cell.ends[ended] += 1
        if ended is TaskStatus.COMPLETED and started is not None:
            cell.runs.append(max(0, released - started) / 1e6)

    def add_capacity(self, key: _Key, session: WorkerSession, end: int) -> None:
        self._spread(key, _CAPACITY, micros(session.started_at), end, session.slots)

    def rows(self, *, with_capacity: bool) -> list[UtilizationRow]:
        self._add_steps()
        groups = sorted({key for (key, _), cell in self._cells.items() if cell}, key=_order)
        empty, window = _Cell(), self._window
        buckets = list(enumerate(window.buckets()))
        return [
            self._row(key, bucket, self._cells.get((key, index), empty), with_capacity)
            for key in groups
            for index, bucket in buckets
        ]

    @staticmethod
    def _row(
        key: _Key, bucket: tuple[datetime, datetime, int], cell: _Cell, with_capacity: bool
    ) -> UtilizationRow:
        start, end, covered = bucket
        busy, slot, capacity_time = cell.times
        ends, runs = cell.ends or _NO_ENDS, sorted(cell.runs)
        judged = ends[TaskStatus.COMPLETED] + ends[TaskStatus.FAILED] + ends[TaskStatus.CRASHED]
        capacity = capacity_time if with_capacity else None
        return UtilizationRow(
            group=key[1],
            pool=key[0],
            bucket_start=start,
            bucket_end=end,
            busy_seconds=busy / 1e6,
            slot_seconds=slot / 1e6,
            capacity_seconds=None if capacity is None else capacity / 1e6,
            utilization=busy / capacity if capacity else None,
            completed=ends[TaskStatus.COMPLETED],
            failed=ends[TaskStatus.FAILED],
            retried=ends[TaskStatus.RETRYING],
            crashed=ends[TaskStatus.CRASHED],
            cancelled=ends[TaskStatus.CANCELLED],
            throughput_per_hour=ends[TaskStatus.COMPLETED] * 3_600e6 / covered,
            run_p50_seconds=_quantile(runs, 0.5),
            run_p95_seconds=_quantile(runs, 0.95),
            success_rate=ends[TaskStatus.COMPLETED] / judged if judged else None,
        )


def _order(key: _Key) -> tuple[bool, str, bool, str]:
    """Pool then group, None last: the order SQL's ``NULLS LAST`` gives."""
    pool, group = key
    return (pool is None, pool or "", group is None, group or "")


def _quantile(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, as DuckDB's ``quantile_cont`` computes it."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return ordered[low]
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])
