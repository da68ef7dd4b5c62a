"""A seeded, reproducible workload: a simulated fleet of pools, queues, workers and tasks.

Benchmarks need millions of realistic events, tests need the same events for the same seed, and
``workledger demo`` needs a fleet that looks alive. One discrete-event simulation serves all
three: every action (a heartbeat, a claim, the end of a task) is scheduled at a *virtual second*
and produces events stamped with that time. Nothing reads a clock or does I/O, and one
random generator decides everything, so a seed always tells the same story.

What the fleet does: pools with awkward names (a dot, a space) and queues with priorities and
concurrency limits; workers that subscribe to task keys, heartbeat at their interval, are
replaced in deploys (drain, then stop), or just go silent (a reaper would mark them lost; their
tasks crash); items that flow through ``fetch`` → ``parse`` → ``load`` tasks which are claimed,
started, report progress and mostly complete, sometimes retry (``task.retrying`` then a new
claim), fail, are cancelled or crash. Durations are skewed: log-normal around a median each
task key draws once, with a Pareto tail. Operators pause pools and reprioritise queues.

The fleet keeps its own rules, so its output doubles as a check of the read models: a worker
never holds more tasks than its slots, a pool or queue never more than its concurrency limit, a
paused pool claims nothing, and a draining worker stops only once idle.

Why it is fast enough for 10M events (~200k events per CPU second at 200 workers, 110-130k at
100k workers; ``benchmarks/workload.py``): free slots are indexed per (queue, task key) class,
so a claim costs O(1) whatever the fleet's size; backlogs are heaps per class with lazy
deletion; scheduled actions are plain tuples ``(time, tick, action, subject, epoch)`` kept in
buckets of virtual time, and a stale one (its task has moved on, the epoch no longer matches)
is a no-op; tasks and schedule entries are invisible to the cyclic garbage collector, which
otherwise walked the whole fleet again and again.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec

from workledger.core import events as ev

__all__ = ["Fleet", "Workload", "generate"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class Workload(msgspec.Struct, frozen=True, kw_only=True):
    """The shape of a simulated fleet. Times are virtual seconds; rates are per virtual hour.

    The defaults make a mid-sized, steady fleet. Every kind of churn (deploys, silent workers,
    subscriptions, pauses, reprioritised queues) happens for the first time within the first
    minute whatever its rate, so that short runs show all of them.
    """

    seed: int = 0
    pools: int = 4
    queues_per_pool: int = 3
    workers: int = 200  # live at a time; deploys and silent workers are replaced
    slots_per_worker: int = 4  # the mean; each worker has between half and 1.5 times this
    heartbeat_interval: float = 5.0
    utilization: float = 0.7  # items arrive at this share of each pool's capacity
    # What one attempt ends in; the rest complete. A retry on the last attempt fails.
    retry_rate: float = 0.07
    failure_rate: float = 0.04
    cancel_rate: float = 0.02
    crash_rate: float = 0.01
    max_attempts: int = 3
    # Attempt lengths: log-normal around ``duration_median`` (times a per-key factor drawn once,
    # a per-stage and a per-pool pace), and for ``tail_share`` of attempts a Pareto tail.
    duration_median: float = 2.0
    duration_sigma: float = 0.5
    tail_share: float = 0.01
    tail_alpha: float = 1.5
    max_duration: float = 3600.0
    progress_reports: int = 2  # each attempt reports progress 1..this many times (0: never)
    queue_timeout: float = 120.0  # a task queued this long is cancelled
    # Churn, per live worker per hour.
    replace_rate: float = 0.5  # deploys: drain, stop once idle, a new worker comes up
    silence_rate: float = 0.1  # dead hosts: no stop, no heartbeat; tasks crash when reaped
    subscribe_rate: float = 0.2  # a worker takes on another task key of its pool
    # Operators, per pool (pauses) and per queue (new priorities) per hour.
    pause_rate: float = 1.0
    pause_seconds: float = 10.0
    reprioritise_rate: float = 0.5
    tag: str = ""  # mixed into event and task ids: two runs on one stream never collide
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        """Refuse a shape the simulation cannot honour, with the reason."""
        _check(0 <= self.seed < 2**64, "seed must be in [0, 2**64)")
        _check(self.pools >= 1 and self.queues_per_pool >= 1, "pools and queues must be >= 1")
        _check(self.workers >= 1 and self.slots_per_worker >= 1, "workers and slots must be >= 1")
        _check(0 < self.heartbeat_interval <= 86_400, "heartbeat_interval must be in (0, 1 day]")
        _check(0 < self.utilization <= 1, "utilization must be in (0, 1]")
        outcomes = (self.retry_rate, self.failure_rate, self.cancel_rate, self.crash_rate)
        _check(
            min(outcomes) >= 0 and sum(outcomes) < 1,
            "retry, failure, cancel and crash rates must be >= 0, sum < 1",
        )
        _check(self.max_attempts >= 1, "max_attempts must be >= 1")
        _check(self.duration_median > 0 and self.duration_sigma >= 0, "durations must be > 0")
        _check(0 <= self.tail_share <= 1 and self.tail_alpha > 1, "tail: share <= 1, alpha > 1")
        _check(self.max_duration >= 0.1 and self.queue_timeout > 0, "max_duration, queue_timeout")
        _check(self.progress_reports >= 0, "progress_reports must be >= 0")
        churn = (self.replace_rate, self.silence_rate, self.subscribe_rate)
        _check(min(*churn, self.pause_rate, self.reprioritise_rate) >= 0, "rates must be >= 0")
        _check(self.pause_seconds > 0, "pause_seconds must be > 0")
        _check(len(self.tag) <= 32 and self.tag.isascii(), "tag: at most 32 ASCII characters")
        _check(self.start.utcoffset() is not None, "start must be timezone-aware")
        _check(ev.EARLIEST <= self.start < ev.LATEST - timedelta(days=3650), "start is too late")


def generate(workload: Workload = Workload()) -> Iterator[ev.Event]:  # noqa: B008 (frozen)
    """An endless, deterministic stream of stamped events (id and at set), ``at`` non-decreasing.

    Take what you need with ``itertools.islice(generate(w), n)``; nothing is kept but the
    fleet's live state, so 10M events stream in constant memory.
    """
    return Fleet(workload).events()


# --- the fleet's shape -----------------------------------------------------------------------


class _QueueTheme(NamedTuple):
    name: str
    priority: int
    weight: float  # share of the pool's submissions
    limit_share: float = 0.0  # concurrency limit as a share of the pool's slots; 0: none


class _Theme(NamedTuple):
    name: str
    prefix: str  # of worker names
    share: float  # of the fleet's workers
    queues: tuple[_QueueTheme, ...]
    keys: tuple[str, ...]
    pace: float  # durations are multiplied by this
    labels: tuple[tuple[str, str], ...] = ()


_THEMES = (
    _Theme(
        "etl",
        "etl",
        0.45,
        (
            _QueueTheme("ingest", 10, 4),
            _QueueTheme("backfill", 1, 1, 0.25),
            _QueueTheme("replay", 4, 1),
        ),
        ("etl.extract", "etl.transform", "etl.load"),
        1.0,
    ),
    _Theme(
        "ml.gpu",
        "gpu",
        0.25,
        (_QueueTheme("infer", 8, 3), _QueueTheme("train", 5, 2), _QueueTheme("eval", 3, 1, 0.2)),
        ("ml.train", "ml.infer", "ml.eval"),
        2.5,
        (("gpu", "a100"),),
    ),
    _Theme(
        "web hooks",
        "hook",
        0.30,
        (_QueueTheme("deliver", 0, 5), _QueueTheme("redeliver", 2, 1), _QueueTheme("bulk", 0, 1)),
        ("hooks.deliver", "hooks.verify"),
        0.3,
    ),
    _Theme(
        "reports",
        "rpt",
        0.20,
        (_QueueTheme("adhoc", 6, 2), _QueueTheme("daily", 4, 2), _QueueTheme("export", 2, 1, 0.3)),
        ("reports.render", "reports.email", "reports.export"),
        1.5,
    ),
    _Theme(
        "media transcode",
        "media",
        0.30,
        (_QueueTheme("thumbs", 7, 3), _QueueTheme("hd", 5, 2), _QueueTheme("sd", 3, 2)),
        ("media.transcode", "media.thumbnail", "media.probe"),
        4.0,
        (("gpu", "t4"),),
    ),
    _Theme(
        "search.index",
        "idx",
        0.20,
        (
            _QueueTheme("realtime", 9, 4),
            _QueueTheme("rebuild", 1, 1, 0.25),
            _QueueTheme("merge", 2, 1),
        ),
        ("search.index", "search.merge"),
        0.8,
    ),
)
_STAGES = ("fetch", "parse", "load")
_STAGE_PACE = (1.0, 0.6, 1.5)  # times the median: fetch 2 s, parse 1.2 s, load 3 s by default
_KEY_SPREAD = 2.0  # a task key's median is the pool's times 1/this..this (log-uniform)
_BACKLOG_PER_SLOT = 3  # producers back off beyond this many queued tasks per slot
_CLAIM_TO_START = (0.05, 0.5)
_ZONES = ("eu-west-1a", "eu-west-1b", "us-east-1c")
_ERRORS = (
    "ConnectionResetError: peer closed the connection",
    "TimeoutError: upstream did not answer in 30s",
    "ValueError: row 1182 has 7 columns, expected 9",
    "HTTP 503 from upstream",
    "CUDA error: out of memory",
)
_FIRST_WITHIN = (10.0, 50.0)  # every kind of churn happens once in this window
_NO_LIMIT = 1 << 62
_CHUNK = 256

# Task states, worker states and attempt outcomes, as small ints (compared on the hot path).
_QUEUED, _CLAIMED, _RUNNING, _WAITING, _DONE = range(5)
_ACTIVE, _DRAINING, _SILENT, _STOPPED = range(4)
_COMPLETED, _RETRYING, _FAILED, _CANCELLED, _CRASHED = range(5)
# Scheduled actions, by their index in ``Fleet._actions``.
(
    _K_HEARTBEAT,
    _K_SUBMIT_ITEM,
    _K_START_TASK,
    _K_PROGRESS,
    _K_FINISH,
    _K_EXPIRE,
    _K_REQUEUE,
    _K_REAP,
    _K_START_WORKER,
    _K_RESUME_POOL,
    _K_REPEAT,
) = range(11)


# --- the fleet's state -----------------------------------------------------------------------


class _Bag:
    """Workers with O(1) add, discard and uniformly random pick (a list and its index)."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list[_Worker] = []
        self.index: dict[_Worker, int] = {}

    def add(self, worker: _Worker) -> None:
        if worker not in self.index:
            self.index[worker] = len(self.items)
            self.items.append(worker)

    def discard(self, worker: _Worker) -> None:
        at = self.index.pop(worker, None)
        if at is not None:
            last = self.items.pop()
            if last is not worker:
                self.items[at] = last
                self.index[last] = at


class _Queue:
    __slots__ = ("in_use", "limit", "name", "priority")

    def __init__(self, name: str, priority: int) -> None:
        self.name = name
        self.priority = priority
        self.limit = _NO_LIMIT
        self.in_use = 0


class _Class:
    """The tasks of one (queue, task key) in a pool, and the workers with a free slot for them."""

    __slots__ = ("backlog", "free", "key", "mu", "queue")

    def __init__(self, queue: _Queue, key: str, mu: tuple[float, ...]) -> None:
        self.queue = queue
        self.key = key
        self.mu = mu  # log of the median attempt length, per stage
        self.free = _Bag()
        # (-priority, seq, epoch, task): an entry whose epoch is stale has left the queue.
        self.backlog: list[tuple[int, int, int, _Task]] = []


class _Pool:
    __slots__ = (
        "active_slots",
        "classes",
        "grid",
        "in_use",
        "keys",
        "limit",
        "name",
        "paused",
        "prefix",
        "queued",
        "queues",
        "rate",
        "theme",
        "weights",
        "workers_made",
    )

    def __init__(self, name: str, prefix: str, theme: _Theme) -> None:
        self.name = name
        self.prefix = prefix
        self.theme = theme
        self.queues: list[_Queue] = []
        self.weights: list[float] = []  # cumulative, to pick a queue per submission
        self.keys: tuple[str, ...] = theme.keys
        self.grid: list[list[_Class]] = []  # [queue][key]
        self.classes: list[_Class] = []
        self.limit = _NO_LIMIT
        self.paused = False
        self.in_use = 0
        self.queued = 0
        self.active_slots = 0
        self.rate = 1.0
        self.workers_made = 0


class _Worker:
    __slots__ = ("classes", "free", "keys", "name", "pool", "queues", "slots", "state", "tasks")

    def __init__(self, name: str, pool: _Pool, queues: list[int], keys: set[str], slots: int):
        self.name = name
        self.pool = pool
        self.queues = queues  # indexes into pool.queues
        self.keys = keys
        self.slots = slots
        self.free = slots
        self.state = _ACTIVE
        self.tasks: set[_Task] = set()
        self.classes = [
            pool.grid[q][k] for q in queues for k, key in enumerate(pool.keys) if key in keys
        ]


class _Task(msgspec.Struct, gc=False, eq=False):
    """A task's state. Untracked by the cyclic garbage collector: hundreds of thousands are
    alive at once, and the references they hold (pool, class, worker) never lead back to a
    task except through the fleet's own containers, which :meth:`Fleet.close` empties."""

    id: str
    pool: _Pool
    cls: _Class
    priority: int
    stage: int
    item: str
    attempt: int = 1
    epoch: int = 0  # bumped on every move, so stale scheduled actions become no-ops
    worker: _Worker | None = None
    state: int = _QUEUED
    began: float = 0.0
    length: float = 0.0
    outcome: int = _COMPLETED


_Action = Callable[[Any, int], None]
_Entry = tuple[float, int, int, Any, int]


# --- the simulation --------------------------------------------------------------------------


class Fleet:
    """The simulation behind :func:`generate`, for callers that pace it or must end it tidily.

    ``start()`` announces pools, queues and workers; then ``step()`` runs the action due at
    ``next_due()`` (the demo replays these in real time) or ``events()`` streams everything;
    ``wind_down()`` closes every open story (the demo's exit). All events are stamped with the
    virtual time they happen at and an id unique to the seed and tag.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._rng = random.Random(workload.seed)  # noqa: S311 (a simulation, not cryptography)
        self._random = self._rng.random
        self._now = 0.0
        self._at = workload.start
        self._origin = workload.start.timestamp()  # virtual second 0, as a POSIX time
        # The schedule: entries (time, tick, action, subject, epoch) in buckets of virtual time,
        # the current one a heap. One big heap would be the same order but slower: at 100k
        # workers it holds ~500k entries and every pop misses the cache. Entries hold plain
        # values and untracked tasks, so the cyclic garbage collector skips them (it cost 60%
        # of the time at 100k workers).
        self._soon: list[_Entry] = []  # the current bucket, a heap
        self._bucket = -1  # which bucket ``_soon`` is
        self._later: dict[int, list[_Entry]] = {}  # bucket -> entries, unordered
        self._buckets: list[int] = []  # the keys of ``_later``, a heap
        self._per_second = float(min(256, max(4, workload.workers // 20)))  # buckets
        self._periodic: list[tuple[float, _Action]] = []
        self._actions: tuple[_Action, ...] = (
            self._heartbeat,
            self._submit_item,
            self._start_task,
            self._progress,
            self._finish,
            self._expire,
            self._requeue,
            self._reap,
            self._start_worker,
            self._resume_pool,
            self._repeat,
        )
        self._tick = itertools.count().__next__
        self._out: list[ev.Event] = []
        self._emit = self._out.append
        tag = f"-{workload.tag}" if workload.tag else ""
        self._next_id = map(
            f"ev-{workload.seed}{tag}-{{:012d}}".format, itertools.count(1)
        ).__next__
        self._task_prefix = f"t{tag}-"
        self._tasks_made = 0
        self._items = 0
        self._hosts = 0
        self._pools: list[_Pool] = []
        self._live: set[_Task] = set()  # submitted and not ended
        self._up: set[_Worker] = set()  # active or draining
        self._active = _Bag()
        self._closing = False
        self._started = False
        w = workload
        self._thresholds = list(
            itertools.accumulate((w.retry_rate, w.failure_rate, w.cancel_rate, w.crash_rate))
        )
        self._tail_mean = w.tail_alpha / (w.tail_alpha - 1)

    # --- the schedule ----------------------------------------------------------------------

    def next_due(self) -> float | None:
        """The virtual second of the next action, or ``None`` if nothing is scheduled."""
        return self._soon[0][0] if self._soon or self._refill() else None

    def step(self) -> list[ev.Event]:
        """Run the next action; return the events it caused (maybe none).

        :raises IndexError: if nothing is scheduled (``next_due()`` is ``None``).
        """
        if not self._soon:
            self._refill()
        at, _, action, subject, epoch = heapq.heappop(self._soon)
        if at != self._now:
            self._now = at
            self._at = datetime.fromtimestamp(self._origin + at, UTC)
        self._actions[action](subject, epoch)
        events = self._out[:]
        self._out.clear()
        return events

    def events(self) -> Iterator[ev.Event]:
        """Everything, endlessly: ``start()``'s announcements (if not taken yet), then each
        action's events in order."""
        if not self._started:
            yield from self.start()
        soon, refill, out = self._soon, self._refill, self._out
        pop, stamp = heapq.heappop, datetime.fromtimestamp
        origin, now, actions = self._origin, self._now, self._actions
        try:
            while soon or refill():
                at, _, action, subject, epoch = pop(soon)
                if at != now:
                    now = self._now = at
                    self._at = stamp(origin + at, UTC)
                actions[action](subject, epoch)
                if len(out) >= _CHUNK:  # yielding per chunk is cheaper than per action
                    yield from out
                    out.clear()
            yield from out
        finally:
            self.close()

    def close(self) -> None:
        """Drop every task, so that the fleet can be garbage collected (tasks are invisible to
        the cycle collector; see :class:`_Task`). ``events()`` and ``wind_down()`` call it."""
        self._closing = True
        for task in self._live:
            if task.worker is not None:
                task.worker.tasks.clear()
        self._live.clear()
        self._soon.clear()
        self._later.clear()
        self._buckets.clear()
        for pool in self._pools:
            for group in pool.classes:
                group.backlog.clear()

    def _after(self, delay: float, action: int, subject: Any = None, epoch: int = 0) -> None:
        at = self._now + delay
        entry = (at, self._tick(), action, subject, epoch)
        bucket = int(at * self._per_second)
        if bucket <= self._bucket:
            heapq.heappush(self._soon, entry)
            return
        later = self._later.get(bucket)
        if later is None:
            self._later[bucket] = [entry]
            heapq.heappush(self._buckets, bucket)
        else:
            later.append(entry)

    def _refill(self) -> bool:
        """Load the next bucket into ``_soon`` (empty); False if nothing is scheduled."""
        if not self._buckets:
            return False
        self._bucket = heapq.heappop(self._buckets)
        self._soon.extend(self._later.pop(self._bucket))
        heapq.heapify(self._soon)
        return True

    def _every(self, rate_per_hour: float, action: _Action) -> None:
        """Run ``action`` as a Poisson process; the first time soon (see :class:`Workload`)."""
        if rate_per_hour <= 0:
            return
        self._periodic.append((rate_per_hour / 3600, action))
        first = min(self._rng.expovariate(rate_per_hour / 3600), self._rng.uniform(*_FIRST_WITHIN))
        self._after(first, _K_REPEAT, len(self._periodic) - 1)

    def _repeat(self, index: int, epoch: int) -> None:
        rate, action = self._periodic[index]
        self._after(self._rng.expovariate(rate), _K_REPEAT, index)
        action(None, epoch)

    # --- start and finish ------------------------------------------------------------------

    def start(self) -> list[ev.Event]:
        """Plan the fleet, announce pools, queues and workers, and schedule what follows."""
        if self._started:
            raise RuntimeError("the fleet has started already")
        self._started = True
        w = self.workload
        themes = [_THEMES[i % len(_THEMES)] for i in range(w.pools)]
        counts = _spread(w.workers, [t.share for t in themes])
        for i, (theme, count) in enumerate(zip(themes, counts, strict=True)):
            cycle = i // len(_THEMES)
            name = theme.name if cycle == 0 else f"{theme.name} {cycle + 1}"
            prefix = theme.prefix if cycle == 0 else f"{theme.prefix}{cycle + 1}"
            pool = self._plan_pool(_Pool(name, prefix, theme))
            workers = [self._new_worker(pool) for _ in range(count)]
            slots = sum(x.slots for x in workers)
            pool.limit = max(2, round(0.8 * slots))
            for queue, qt in zip(pool.queues, self._queue_themes(theme), strict=False):
                if qt.limit_share:
                    queue.limit = max(2, round(qt.limit_share * slots))
            pool.rate = self._rate(pool, slots)
            self._announce_pool(pool)
            for worker in workers:
                self._announce_worker(worker)
            self._after(self._rng.expovariate(pool.rate), _K_SUBMIT_ITEM, pool)
        n_queues = w.pools * w.queues_per_pool
        self._every(w.replace_rate * w.workers, self._replace_worker)
        self._every(w.silence_rate * w.workers, self._silence_worker)
        self._every(w.subscribe_rate * w.workers, self._subscribe_worker)
        self._every(w.pause_rate * w.pools, self._pause_pool)
        self._every(w.reprioritise_rate * n_queues, self._reprioritise_queue)
        events = self._out[:]
        self._out.clear()
        return events

    def wind_down(self, reason: str = "demo ended") -> list[ev.Event]:
        """Close every open story: cancel queued and held tasks, crash those of silent workers,
        stop the workers still up. Leaves no phantom slot holders behind; nothing follows."""
        self._closing = True
        for task in sorted(self._live, key=lambda t: t.id):
            worker = task.worker
            if worker is not None and worker.state == _SILENT:
                self._end(task, _CRASHED, f"worker {worker.name} lost")
            else:
                self._end(task, _CANCELLED)
        for worker in sorted(self._up, key=lambda x: x.name):
            self._stop(worker, reason)
        self.close()
        events = self._out[:]
        self._out.clear()
        return events

    # --- pools and queues ------------------------------------------------------------------

    def _queue_themes(self, theme: _Theme) -> list[_QueueTheme]:
        n = self.workload.queues_per_pool
        extra = [_QueueTheme(f"q{i + 1}", i % 10, 1) for i in range(len(theme.queues), n)]
        return [*theme.queues[:n], *extra]

    def _plan_pool(self, pool: _Pool) -> _Pool:
        """Queues and (queue, key) classes, each key with its own median attempt length."""
        w, rng = self.workload, self._rng
        themes = self._queue_themes(pool.theme)
        pool.queues = [_Queue(q.name, q.priority) for q in themes]
        pool.weights = list(itertools.accumulate(q.weight for q in themes))
        base = math.log(w.duration_median * pool.theme.pace)
        spread = math.log(_KEY_SPREAD)
        mus = {
            key: tuple(base + math.log(p) + rng.uniform(-spread, spread) for p in _STAGE_PACE)
            for key in pool.keys
        }
        pool.grid = [[_Class(q, key, mus[key]) for key in pool.keys] for q in pool.queues]
        pool.classes = [c for row in pool.grid for c in row]
        self._pools.append(pool)
        return pool

    def _rate(self, pool: _Pool, slots: int) -> float:
        """Items per virtual second so that the pool runs at about the target utilization."""
        w = self.workload
        retry = w.retry_rate
        done = 1 - self._thresholds[-1]  # an attempt completes
        attempts = 1 / (1 - retry)
        reach = min(1.0, done * attempts)  # a task completes, so the item goes on
        tail = 1 + w.tail_share * (self._tail_mean - 1)
        stretch = math.exp(w.duration_sigma**2 / 2) * tail
        per_stage = [
            sum(math.exp(c.mu[s]) for c in pool.classes) / len(pool.classes) * stretch
            + sum(_CLAIM_TO_START) / 2
            for s in range(len(_STAGES))
        ]
        busy = sum(reach**s * attempts * length for s, length in enumerate(per_stage))
        return max(0.01, w.utilization * slots / busy)

    def _announce_pool(self, pool: _Pool) -> None:
        at, next_id = self._at, self._next_id
        self._emit(
            ev.PoolCreated(
                pool=pool.name, concurrency_limit=pool.limit, paused=False, id=next_id(), at=at
            )
        )
        for q in pool.queues:
            limit = None if q.limit == _NO_LIMIT else q.limit
            self._emit(
                ev.QueueCreated(
                    pool=pool.name,
                    queue=q.name,
                    priority=q.priority,
                    concurrency_limit=limit,
                    id=next_id(),
                    at=at,
                )
            )

    def _pause_pool(self, _: Any, __: int) -> None:
        open_pools = [p for p in self._pools if not p.paused]
        if not open_pools or self._closing:
            return
        pool = open_pools[int(self._random() * len(open_pools))]
        pool.paused = True
        self._emit(ev.PoolUpdated(pool=pool.name, paused=True, id=self._next_id(), at=self._at))
        length = self.workload.pause_seconds * self._rng.uniform(0.6, 1.5)
        self._after(length, _K_RESUME_POOL, pool)

    def _resume_pool(self, pool: _Pool, _: int) -> None:
        pool.paused = False
        self._emit(ev.PoolUpdated(pool=pool.name, paused=False, id=self._next_id(), at=self._at))
        self._dispatch(pool)

    def _reprioritise_queue(self, _: Any, __: int) -> None:
        pool = self._pools[int(self._random() * len(self._pools))]
        queue = pool.queues[int(self._random() * len(pool.queues))]
        queue.priority = int(self._random() * 13)
        self._emit(
            ev.QueueUpdated(
                pool=pool.name,
                queue=queue.name,
                priority=queue.priority,
                id=self._next_id(),
                at=self._at,
            )
        )
        self._dispatch(pool)

    # --- workers ---------------------------------------------------------------------------

    def _new_worker(self, pool: _Pool) -> _Worker:
        pool.workers_made += 1
        s = self.workload.slots_per_worker
        slots = self._rng.randint(max(1, s - s // 2), s + s // 2)
        queues = self._some(list(range(len(pool.queues))))
        keys = set(self._some(list(pool.keys)))
        worker = _Worker(f"{pool.prefix}-{pool.workers_made:02d}", pool, queues, keys, slots)
        for c in worker.classes:
            c.free.add(worker)
        pool.active_slots += slots
        self._active.add(worker)
        self._up.add(worker)
        return worker

    def _some(self, names: list[Any]) -> list[Any]:
        """Mostly all of them (so every queue and key stays served), sometimes a subset."""
        if len(names) == 1 or self._random() < 0.6:
            return names
        return sorted(self._rng.sample(names, self._rng.randint(1, len(names) - 1)))

    def _announce_worker(self, worker: _Worker) -> None:
        rng, pool = self._rng, worker.pool
        self._hosts += 1
        zone = _ZONES[int(self._random() * len(_ZONES))]
        host = f"{pool.prefix}-{zone[-2:]}-{self._hosts:03d}.internal"
        interval = self.workload.heartbeat_interval
        self._emit(
            ev.WorkerStarted(
                worker=worker.name,
                pool=pool.name,
                queues=tuple(pool.queues[q].name for q in worker.queues),
                task_keys=tuple(sorted(worker.keys)),
                slots=worker.slots,
                heartbeat_interval=interval,
                labels={"zone": zone, "host": host, **dict(pool.theme.labels)},
                host=host,
                pid=rng.randint(1_000, 65_000),
                id=self._next_id(),
                at=self._at,
            )
        )
        self._after(interval * self._random(), _K_HEARTBEAT, worker)

    def _heartbeat(self, worker: _Worker, _: int) -> None:
        if worker.state > _DRAINING:
            return  # stopped, or silent: it shows OFFLINE once its interval runs out
        self._after(
            self.workload.heartbeat_interval * (0.95 + 0.1 * self._random()),
            _K_HEARTBEAT,
            worker,
        )
        self._emit(
            ev.WorkerHeartbeat(
                worker=worker.name, pool=worker.pool.name, id=self._next_id(), at=self._at
            )
        )

    def _start_worker(self, pool: _Pool, _: int) -> None:
        if self._closing:
            return
        worker = self._new_worker(pool)
        self._announce_worker(worker)
        self._dispatch(pool)

    def _leave(self, worker: _Worker, state: int) -> None:
        """The worker takes nothing new from now on."""
        worker.state = state
        for c in worker.classes:
            c.free.discard(worker)
        self._active.discard(worker)
        worker.pool.active_slots -= worker.slots

    def _pick_worker(self) -> _Worker | None:
        items = self._active.items
        return items[int(self._random() * len(items))] if items else None

    def _pick_lacking(self) -> _Worker | None:
        """A random active worker that does not take every key of its pool: a few random
        picks (most workers take every key), then a scan so that a short run still sees one."""
        for _attempt in range(10):
            worker = self._pick_worker()
            if worker is not None and len(worker.keys) < len(worker.pool.keys):
                return worker
        lacking = [w for w in self._active.items if len(w.keys) < len(w.pool.keys)]
        return lacking[int(self._random() * len(lacking))] if lacking else None

    def _subscribe_worker(self, _: Any, __: int) -> None:
        """A worker takes on a task key of its pool it did not start with (or, if every worker
        takes every key, one subscribes again to a key it has: subscribing is idempotent)."""
        worker = self._pick_lacking() or self._pick_worker()
        if worker is None:
            return
        pool = worker.pool
        missing = [k for k in pool.keys if k not in worker.keys] or sorted(worker.keys)
        key = missing[int(self._random() * len(missing))]
        if key not in worker.keys:
            worker.keys.add(key)
            k = pool.keys.index(key)
            added = [pool.grid[q][k] for q in worker.queues]
            worker.classes += added
            if worker.free:
                for c in added:
                    c.free.add(worker)
        self._emit(
            ev.WorkerSubscribed(
                worker=worker.name,
                pool=pool.name,
                task_keys=(key,),
                id=self._next_id(),
                at=self._at,
            )
        )
        self._dispatch(pool)

    def _replace_worker(self, _: Any, __: int) -> None:
        """A deploy: one worker drains (stops once idle) and a new one comes up in its pool."""
        worker = self._pick_worker()
        if worker is None:
            return
        self._leave(worker, _DRAINING)
        self._after(self._rng.uniform(2, 6), _K_START_WORKER, worker.pool)
        if not worker.tasks:
            self._stop(worker, "deploy")

    def _silence_worker(self, _: Any, __: int) -> None:
        """A host dies: the worker just stops heartbeating; its tasks are declared crashed once
        a reaper would notice, and a replacement comes up."""
        worker = self._pick_worker()
        if worker is None:
            return
        self._leave(worker, _SILENT)
        self._up.discard(worker)
        reap = 3 * self.workload.heartbeat_interval * self._rng.uniform(1.0, 1.5)
        for task in sorted(worker.tasks, key=lambda t: t.id):
            task.epoch += 1  # its progress and ending will never come
            self._after(reap, _K_REAP, task, task.epoch)
        self._after(self._rng.uniform(10, 20), _K_START_WORKER, worker.pool)

    def _reap(self, task: _Task, epoch: int) -> None:
        if task.epoch == epoch and task.worker is not None:
            self._end(task, _CRASHED, f"worker {task.worker.name} lost")

    def _stop(self, worker: _Worker, reason: str) -> None:
        if worker.state == _ACTIVE:
            self._leave(worker, _STOPPED)
        worker.state = _STOPPED
        self._up.discard(worker)
        self._emit(
            ev.WorkerStopped(
                worker=worker.name,
                pool=worker.pool.name,
                reason=reason,
                id=self._next_id(),
                at=self._at,
            )
        )

    # --- tasks -----------------------------------------------------------------------------

    def _submit_item(self, pool: _Pool, _: int) -> None:
        """New items arrive as a Poisson stream; producers back off when the backlog is deep."""
        self._after(self._rng.expovariate(pool.rate), _K_SUBMIT_ITEM, pool)
        if pool.queued >= _BACKLOG_PER_SLOT * max(1, pool.active_slots) or self._closing:
            return
        self._items += 1
        self._submit(pool, 0, f"s3://landing/{pool.prefix}/part-{self._items:06d}.json")

    def _submit(self, pool: _Pool, stage: int, item: str) -> None:
        random_ = self._random
        q = bisect.bisect(pool.weights, random_() * pool.weights[-1])
        row = pool.grid[min(q, len(pool.grid) - 1)]
        cls = row[int(random_() * len(row))]
        self._tasks_made += 1
        task = _Task(
            f"{self._task_prefix}{self._tasks_made:06d}",
            pool,
            cls,
            cls.queue.priority + int(random_() * 4) - 1,
            stage,
            item,
        )
        self._live.add(task)
        self._emit(
            ev.TaskSubmitted(
                task=task.id,
                pool=pool.name,
                queue=cls.queue.name,
                task_key=cls.key,
                priority=task.priority,
                stage=_STAGES[stage],
                item=item,
                id=self._next_id(),
                at=self._at,
            )
        )
        self._offer(task)

    def _offer(self, task: _Task) -> None:
        """Claim the task at once if a worker is free and limits allow, else queue it."""
        cls, pool = task.cls, task.pool
        free = cls.free.items
        if (
            free
            and not cls.backlog
            and not pool.paused
            and not self._closing
            and pool.in_use < pool.limit
            and cls.queue.in_use < cls.queue.limit
        ):
            self._claim(task, free[int(self._random() * len(free))])
            return
        task.state = _QUEUED
        task.epoch += 1
        heapq.heappush(cls.backlog, (-task.priority, self._tick(), task.epoch, task))
        pool.queued += 1
        self._after(self.workload.queue_timeout, _K_EXPIRE, task, task.epoch)
        if free:
            self._dispatch(pool)

    def _expire(self, task: _Task, epoch: int) -> None:
        if task.epoch == epoch and task.state == _QUEUED:
            self._end(task, _CANCELLED)

    @staticmethod
    def _head(group: _Class) -> tuple[int, int, int, _Task] | None:
        backlog = group.backlog
        while backlog:
            entry = backlog[0]
            if entry[3].epoch == entry[2]:
                return entry
            heapq.heappop(backlog)
        return None

    def _dispatch(self, pool: _Pool, only: _Worker | None = None) -> None:
        """Hand queued tasks to workers with a free slot, highest priority first, within the
        pool's and queues' concurrency limits; a paused pool hands out nothing. With ``only``,
        just that worker's free slots are filled (nothing else changed)."""
        while pool.queued and not pool.paused and not self._closing and pool.in_use < pool.limit:
            best: _Class | None = None
            rank: tuple[int, int, int] | None = None
            for cls in pool.classes if only is None else only.classes:
                if not cls.free.items or cls.queue.in_use >= cls.queue.limit:
                    continue
                head = self._head(cls)
                if head is not None and (rank is None or (-cls.queue.priority, *head[:2]) < rank):
                    best, rank = cls, (-cls.queue.priority, head[0], head[1])
            if best is None:
                return
            task = heapq.heappop(best.backlog)[3]
            pool.queued -= 1
            if only is not None:
                self._claim(task, only)
                if not only.free:
                    return
            else:
                free = best.free.items
                self._claim(task, free[int(self._random() * len(free))])

    def _claim(self, task: _Task, worker: _Worker) -> None:
        pool = task.pool
        pool.in_use += 1
        task.cls.queue.in_use += 1
        worker.free -= 1
        if not worker.free:
            for c in worker.classes:
                c.free.discard(worker)
        worker.tasks.add(task)
        task.worker = worker
        task.state = _CLAIMED
        task.epoch += 1
        low, high = _CLAIM_TO_START
        self._after(low + (high - low) * self._random(), _K_START_TASK, task, task.epoch)
        self._emit(
            ev.TaskClaimed(
                task=task.id,
                worker=worker.name,
                queue=task.cls.queue.name,
                pool=pool.name,
                id=self._next_id(),
                at=self._at,
            )
        )

    def _start_task(self, task: _Task, epoch: int) -> None:
        """Run one attempt: its outcome and length are decided now, progress reported on the way."""
        worker = task.worker
        if task.epoch != epoch or worker is None:
            return
        w, random_ = self.workload, self._random
        task.state = _RUNNING
        length = math.exp(task.cls.mu[task.stage] + w.duration_sigma * self._rng.gauss())
        if w.tail_share and random_() < w.tail_share:
            length *= self._rng.paretovariate(w.tail_alpha)
        length = min(w.max_duration, max(0.1, length))
        roll = random_()
        outcome = _COMPLETED
        for i, threshold in enumerate(self._thresholds):
            if roll < threshold:
                outcome = i + 1
                break
        end = length if outcome == _COMPLETED else length * (0.2 + 0.8 * random_())
        task.began, task.length, task.outcome = self._now, length, outcome
        if w.progress_reports:
            for _ in range(int(random_() * w.progress_reports) + 1):
                at = (0.1 + 0.85 * random_()) * length
                if at < end:
                    self._after(at, _K_PROGRESS, task, epoch)
        self._after(end, _K_FINISH, task, epoch)
        self._emit(
            ev.TaskStarted(
                task=task.id,
                worker=worker.name,
                queue=task.cls.queue.name,
                pool=task.pool.name,
                id=self._next_id(),
                at=self._at,
            )
        )

    def _progress(self, task: _Task, epoch: int) -> None:
        if task.epoch != epoch:
            return
        done = round((self._now - task.began) / task.length, 2)
        name = task.item[task.item.rfind("/") + 1 :]
        self._emit(
            ev.TaskProgress(
                task=task.id,
                pool=task.pool.name,
                progress=done,
                message=f"{_STAGES[task.stage]}: {int(done * 100)}% of {name}",
                id=self._next_id(),
                at=self._at,
            )
        )

    def _finish(self, task: _Task, epoch: int) -> None:
        if task.epoch != epoch:
            return
        outcome = task.outcome
        if outcome == _RETRYING and task.attempt >= self.workload.max_attempts:
            outcome = _FAILED
        if outcome == _RETRYING:
            self._retry(task)
        elif outcome == _CRASHED:
            self._end(task, outcome, "process killed (OOM)")
        elif outcome == _FAILED:
            self._end(task, outcome, _ERRORS[int(self._random() * len(_ERRORS))])
        else:
            self._end(task, outcome)
            if outcome == _COMPLETED and task.stage + 1 < len(_STAGES):
                self._submit(task.pool, task.stage + 1, task.item)

    def _retry(self, task: _Task) -> None:
        """The attempt failed; the task waits a backoff, then queues again for any worker."""
        self._emit(
            ev.TaskRetrying(
                task=task.id,
                pool=task.pool.name,
                attempt=task.attempt,
                error=_ERRORS[int(self._random() * len(_ERRORS))],
                id=self._next_id(),
                at=self._at,
            )
        )
        self._release(task)
        task.state = _WAITING
        task.attempt += 1
        backoff = (1 + 3 * self._random()) * 2**task.attempt
        self._after(backoff, _K_REQUEUE, task, task.epoch)

    def _requeue(self, task: _Task, epoch: int) -> None:
        if task.epoch == epoch:
            self._offer(task)

    def _end(self, task: _Task, outcome: int, detail: str | None = None) -> None:
        """A terminal event; the slot (if any) is freed and handed on."""
        at, eid, name, pool = self._at, self._next_id(), task.id, task.pool.name
        event: ev.Event
        if outcome == _COMPLETED:
            event = ev.TaskCompleted(task=name, pool=pool, id=eid, at=at)
        elif outcome == _FAILED:
            event = ev.TaskFailed(task=name, pool=pool, error=detail, id=eid, at=at)
        elif outcome == _CANCELLED:
            event = ev.TaskCancelled(task=name, pool=pool, id=eid, at=at)
        else:
            event = ev.TaskCrashed(task=name, pool=pool, reason=detail, id=eid, at=at)
        self._emit(event)
        if task.state == _QUEUED:
            task.pool.queued -= 1
        task.state = _DONE
        self._live.discard(task)
        self._release(task)

    def _release(self, task: _Task) -> None:
        """Free the task's slot (if it holds one) and hand it on: to the same worker's classes
        if nothing else changed, to anyone in the pool if a limit was binding."""
        task.epoch += 1
        worker, task.worker = task.worker, None
        if worker is None:
            return
        pool, queue = task.pool, task.cls.queue
        binding = pool.in_use >= pool.limit or queue.in_use >= queue.limit
        pool.in_use -= 1
        queue.in_use -= 1
        worker.tasks.discard(task)
        if worker.state == _ACTIVE:
            worker.free += 1
            if worker.free == 1:
                for c in worker.classes:
                    c.free.add(worker)
        elif worker.state == _DRAINING and not worker.tasks:
            self._stop(worker, "deploy")
        if pool.queued:
            if binding:
                self._dispatch(pool)
            elif worker.state == _ACTIVE:
                self._dispatch(pool, only=worker)


def _spread(total: int, shares: list[float]) -> list[int]:
    """Workers per pool by share, every pool getting one while there are enough."""
    weight = sum(shares)
    counts = [max(1 if total >= len(shares) else 0, int(total * s / weight)) for s in shares]
    for i in range(total - sum(counts)):
        counts[i % len(counts)] += 1
    while sum(counts) > total:
        counts[counts.index(max(counts))] -= 1
    return counts
