"""The demo workload: a simulated fleet of workers, pools, queues and tasks, published live.

``make run`` (``workledger up --demo``) runs this so that a new user sees every view fill up
with something that looks like a real fleet: three pools with awkward names (a dot, a space),
workers that heartbeat, subscribe, stop, are replaced and sometimes just go silent, and tasks
that flow through ``fetch`` → ``parse`` → ``load`` and mostly complete, sometimes retry, fail,
are cancelled or crash.

Why one virtual clock and not one asyncio task per worker: the demo promises the same story for
the same ``seed``. Concurrent tasks sharing one random generator would interleave by wall-clock
jitter, so the story would differ from run to run. Instead :class:`_Simulation` is a small
discrete-event simulation: every action (a heartbeat, a claim, the end of a task) is scheduled
at a *demo second* on a heap and produces events; :func:`run_demo` replays that schedule in real
time, ``speed`` demo seconds per wall-clock second. Given a seed, the sequence of events is
identical on every run; only event ids, timestamps and task ids (which carry a per-run tag so
that two runs on one stream never collide) differ. The simulation never reads a clock: event
times are stamped by the :class:`~workledger.core.publisher.Publisher`.

The fleet respects its own rules, so the demo doubles as a check of the read models: a worker
never holds more tasks than its slots, a pool or queue never more than its concurrency limit,
and a paused pool claims nothing.
"""

from __future__ import annotations

import functools
import heapq
import math
import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, ensure_stream
from workledger.core.publisher import Publisher

__all__ = ["DemoStats", "run_demo"]

# --- the fleet's shape -----------------------------------------------------------------------

_STAGES = ("fetch", "parse", "load")
# Median demo seconds per stage; durations are log-normal around them (sigma below).
_STAGE_MEDIAN = {"fetch": 2.0, "parse": 1.2, "load": 3.0}
_DURATION_SIGMA = 0.5
_HEARTBEAT_SECONDS = 5.0
_TARGET_UTILIZATION = 0.7  # submission rate aims at this share of a pool's capacity
_BACKLOG_PER_SLOT = 3  # producers back off beyond this many queued tasks per slot
_QUEUE_TIMEOUT = 120.0  # a task queued this long is cancelled (nobody can take it)
_MAX_ATTEMPTS = 3
_WIND_DOWN_SECONDS = 10.0  # to flush the last events, even when cancelled
_ZONES = ("eu-west-1a", "eu-west-1b", "us-east-1c")
_ERRORS = (
    "ConnectionResetError: peer closed the connection",
    "TimeoutError: upstream did not answer in 30s",
    "ValueError: row 1182 has 7 columns, expected 9",
    "HTTP 503 from upstream",
    "CUDA error: out of memory",
)

# Outcome of one attempt, by weight; a retry on the last attempt becomes a failure.
_OUTCOMES = (
    ("completed", 86),
    ("retrying", 7),
    ("failed", 4),
    ("cancelled", 2),
    ("crashed", 1),
)


@dataclass(frozen=True, slots=True)
class _QueuePlan:
    name: str
    priority: int
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class _PoolPlan:
    name: str
    share: float  # of the fleet's workers
    queues: tuple[_QueuePlan, ...]
    task_keys: tuple[str, ...]
    worker_prefix: str
    pace: float  # task durations are multiplied by this
    labels: tuple[tuple[str, str], ...] = ()


_POOLS = (
    _PoolPlan(
        name="etl",
        share=0.45,
        queues=(_QueuePlan("ingest", 10), _QueuePlan("backfill", 1, limit=4)),
        task_keys=("etl.extract", "etl.transform", "etl.load"),
        worker_prefix="etl",
        pace=1.0,
    ),
    _PoolPlan(
        name="ml.gpu",
        share=0.25,
        queues=(_QueuePlan("infer", 8), _QueuePlan("train", 5), _QueuePlan("eval", 3, limit=2)),
        task_keys=("ml.train", "ml.infer", "ml.eval"),
        worker_prefix="gpu",
        pace=2.5,
        labels=(("gpu", "a100"),),
    ),
    _PoolPlan(
        name="web hooks",
        share=0.30,
        queues=(_QueuePlan("deliver", 0),),
        task_keys=("hooks.deliver", "hooks.verify"),
        worker_prefix="hook",
        pace=0.3,
    ),
)
_PAUSED_POOL = "web hooks"  # the pool an operator pauses now and then


# --- public API ------------------------------------------------------------------------------


@dataclass
class DemoStats:
    """What the demo has published so far: a live object, updated as events are accepted.

    ``run_demo`` hands it to ``task_status.started()`` and returns it, so a caller can watch
    the counts grow (e.g. for a status line) and read the totals at the end.
    """

    counts: Counter[str] = field(default_factory=Counter)
    demo_seconds: float = 0.0  # simulated time covered so far
    elapsed: float = 0.0  # wall-clock seconds spent publishing

    @property
    def total(self) -> int:
        """Events published, all types together."""
        return sum(self.counts.values())

    def record(self, event: ev.Event) -> None:
        """Count one published event under its wire tag."""
        self.counts[event.type] += 1


async def run_demo(
    config: LogConfig,
    *,
    workers: int = 20,
    seed: int | None = None,
    speed: float = 1.0,
    duration: float | None = None,
    task_status: TaskStatus[DemoStats] = anyio.TASK_STATUS_IGNORED,
) -> DemoStats:
    """Publish a simulated fleet to the log until ``duration`` wall-clock seconds have passed.

    :param workers: workers online at a time, spread over three pools.
    :param seed: the same seed tells the same story (see the module docstring).
    :param speed: demo seconds per wall-clock second; ``speed=10`` runs ten times faster
        (announced heartbeat intervals shrink to match, so liveness stays right).
    :param duration: wall-clock seconds of schedule to play; ``None`` runs until cancelled.
    :param task_status: ``started(stats)`` is called once pools, queues and workers are
        published and acknowledged.

    The stream is created if missing. On the way out, normal or cancelled, the fleet winds down
    (running and queued tasks cancelled, workers stopped) and every event is flushed, so the
    read models are left tidy.

    :raises ValueError: if ``workers < 1``, ``speed <= 0`` or ``duration < 0``.
    :raises LogError: if NATS cannot be reached or events cannot be acknowledged.
    """
    if workers < 1 or speed <= 0:
        raise ValueError("workers must be >= 1 and speed > 0")
    if duration is not None and duration < 0:
        raise ValueError("duration must be >= 0")
    await _ensure_stream(config)
    stats = DemoStats()
    rng = random.Random(seed)  # noqa: S311 (a simulation, not cryptography)
    sim = _Simulation(rng, workers=workers, speed=speed, run=secrets.token_hex(3))
    horizon = None if duration is None else duration * speed
    pub = Publisher(config)
    await pub.open()
    try:
        await _publish(pub, stats, sim.setup())
        await pub.flush()
        task_status.started(stats)
        await _play(sim, pub, stats, speed, horizon)
    finally:
        with anyio.move_on_after(2 * _WIND_DOWN_SECONDS, shield=True):
            try:
                await _publish(pub, stats, sim.wind_down())
            finally:
                await pub.close(timeout=_WIND_DOWN_SECONDS)
    return stats


# --- playing the schedule in real time -------------------------------------------------------


async def _ensure_stream(config: LogConfig) -> None:
    """Create the stream so the demo also runs against a bare nats-server."""
    client = await connect(config)
    try:
        await ensure_stream(client.jetstream(), config)
    finally:
        await client.close()


async def _play(
    sim: _Simulation, pub: Publisher, stats: DemoStats, speed: float, horizon: float | None
) -> None:
    """Run each scheduled action when its demo second comes; catch up at once if behind."""
    origin = anyio.current_time()
    while (due := sim.next_due()) is not None and (horizon is None or due <= horizon):
        delay = origin + due / speed - anyio.current_time()
        if delay > 0:
            await anyio.sleep(delay)
        await _publish(pub, stats, sim.step())
        stats.demo_seconds = due
        stats.elapsed = anyio.current_time() - origin
    if horizon is not None:
        await anyio.sleep(max(0.0, origin + horizon / speed - anyio.current_time()))
        stats.demo_seconds = horizon
        stats.elapsed = anyio.current_time() - origin


async def _publish(pub: Publisher, stats: DemoStats, events: list[ev.Event]) -> None:
    for event in events:
        await pub.publish(event)
        stats.record(event)


# --- the simulation --------------------------------------------------------------------------

_Action = Callable[[], list[ev.Event]]


@dataclass(eq=False, slots=True)
class _Queue:
    name: str
    priority: int
    limit: int | None
    in_use: int = 0


@dataclass(eq=False, slots=True)
class _Worker:
    name: str
    pool: _Pool
    queues: frozenset[str]
    task_keys: set[str]
    slots: int
    state: str = "active"  # active | draining | silent | stopped
    tasks: dict[str, _Task] = field(default_factory=dict)

    def accepts(self, task: _Task) -> bool:
        return (
            self.state == "active"
            and len(self.tasks) < self.slots
            and task.queue in self.queues
            and task.task_key in self.task_keys
        )


@dataclass(eq=False, slots=True)
class _Task:
    id: str
    pool: _Pool
    queue: str
    task_key: str
    priority: int
    stage: str
    item: str
    seq: int
    attempt: int = 1
    epoch: int = 0  # bumped on every move, so stale scheduled actions become no-ops
    worker: _Worker | None = None
    state: str = "queued"  # queued | claimed | running | waiting (to retry) | done


@dataclass(eq=False, slots=True)
class _Pool:
    plan: _PoolPlan
    queues: dict[str, _Queue]
    limit: int | None = None
    paused: bool = False
    in_use: int = 0
    rate: float = 1.0  # new items per demo second
    workers: list[_Worker] = field(default_factory=list)
    backlog: list[_Task] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def capacity(self) -> int:
        slots = sum(w.slots for w in self.workers if w.state == "active")
        return slots if self.limit is None else min(slots, self.limit)


class _Simulation:
    """A discrete-event model of the fleet: actions on a heap of demo seconds, yielding events.

    Each action returns the events it caused and may schedule more actions. Nothing here reads a
    clock or does I/O, so it is deterministic given its random generator.
    """

    def __init__(self, rng: random.Random, *, workers: int, speed: float, run: str) -> None:
        self._rng = rng
        self._workers = workers
        self._speed = speed
        self._run = run
        self._now = 0.0
        self._heap: list[tuple[float, int, _Action]] = []
        self._seq = 0
        self._pools: dict[str, _Pool] = {}
        self._tasks: dict[str, _Task] = {}
        self._worker_numbers: Counter[str] = Counter()
        self._hosts = 0
        self._items = 0
        self._task_count = 0
        self._closing = False  # winding down: nothing new is claimed

    # --- the schedule ----------------------------------------------------------------------

    def next_due(self) -> float | None:
        """The demo second of the next action, or ``None`` if nothing is scheduled."""
        return self._heap[0][0] if self._heap else None

    def step(self) -> list[ev.Event]:
        """Run the next action; return the events it caused."""
        self._now, _, action = heapq.heappop(self._heap)
        return action()

    def _after(self, delay: float, action: _Action) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self._now + delay, self._seq, action))

    def _every(
        self, low: float, high: float, action: _Action, *, first: tuple[float, float] | None = None
    ) -> None:
        """Run ``action`` again and again, a uniform ``low``-``high`` demo seconds apart
        (the first time within ``first``, so that short runs see it too)."""

        def repeat() -> list[ev.Event]:
            self._after(self._rng.uniform(low, high), repeat)
            return action()

        self._after(self._rng.uniform(*(first or (low, high))), repeat)

    # --- start and finish ------------------------------------------------------------------

    def setup(self) -> list[ev.Event]:
        """Plan the fleet, announce pools, queues and workers, and schedule what follows."""
        events: list[ev.Event] = []
        counts = self._spread(self._workers)
        for plan, count in zip(_POOLS, counts, strict=True):
            pool = _Pool(plan, {q.name: _Queue(q.name, q.priority, q.limit) for q in plan.queues})
            self._pools[plan.name] = pool
            started = [self._new_worker(pool) for _ in range(count)]
            pool.limit = max(2, round(0.8 * sum(w.slots for w in pool.workers)))
            pool.rate = self._rate(pool)
            events += self._announce_pool(pool)
            events += started
            self._after(self._rng.expovariate(pool.rate), self._submitter(pool))
        self._every(30, 90, self._replace_worker)
        self._after(self._rng.uniform(25, 50), self._silence_worker)
        self._after(self._rng.uniform(10, 25), self._subscribe_worker)
        self._after(self._rng.uniform(30, 60), self._subscribe_worker)
        self._after(self._rng.uniform(20, 40), self._pause_pool)
        self._every(60, 200, self._reprioritise_queue, first=(20, 50))
        return events

    def wind_down(self) -> list[ev.Event]:
        """Close every open story: cancel queued and held tasks, crash those of silent workers,
        stop the workers still running. Leaves no phantom slot holders behind."""
        self._closing = True
        events: list[ev.Event] = []
        for task in list(self._tasks.values()):
            worker = task.worker
            if worker is not None and worker.state == "silent":
                events += self._end(task, "crashed", reason=f"worker {worker.name} lost")
            else:
                events += self._end(task, "cancelled")
        for pool in self._pools.values():
            for worker in pool.workers:
                if worker.state in ("active", "draining"):
                    worker.state = "stopped"
                    events.append(self._worker_stopped(worker, "demo ended"))
        self._heap.clear()
        return events

    # --- pools and queues ------------------------------------------------------------------

    def _spread(self, total: int) -> list[int]:
        """Workers per pool by share, every pool getting one while there are enough."""
        counts = [max(1 if total >= len(_POOLS) else 0, int(total * p.share)) for p in _POOLS]
        for i in range(total - sum(counts)):
            counts[i % len(counts)] += 1
        while sum(counts) > total:
            counts[counts.index(max(counts))] -= 1
        return counts

    def _rate(self, pool: _Pool) -> float:
        """New items per demo second so that the pool runs at about the target utilization."""
        mean = sum(_STAGE_MEDIAN.values()) * math.exp(_DURATION_SIGMA**2 / 2) * pool.plan.pace
        return max(0.05, _TARGET_UTILIZATION * pool.capacity / mean)

    def _announce_pool(self, pool: _Pool) -> list[ev.Event]:
        events: list[ev.Event] = [
            ev.PoolCreated(pool=pool.name, concurrency_limit=pool.limit, paused=False)
        ]
        events += [
            ev.QueueCreated(
                pool=pool.name, queue=q.name, priority=q.priority, concurrency_limit=q.limit
            )
            for q in pool.queues.values()
        ]
        return events

    def _pause_pool(self) -> list[ev.Event]:
        pool = self._pools[_PAUSED_POOL]
        pool.paused = True
        self._after(self._rng.uniform(6, 15), lambda: self._resume_pool(pool))
        return [ev.PoolUpdated(pool=pool.name, paused=True)]

    def _resume_pool(self, pool: _Pool) -> list[ev.Event]:
        pool.paused = False
        self._after(self._rng.uniform(60, 150), self._pause_pool)
        return [ev.PoolUpdated(pool=pool.name, paused=False), *self._dispatch(pool)]

    def _reprioritise_queue(self) -> list[ev.Event]:
        pool = self._rng.choice(list(self._pools.values()))
        queue = self._rng.choice(list(pool.queues.values()))
        queue.priority = self._rng.randint(0, 12)
        update = ev.QueueUpdated(pool=pool.name, queue=queue.name, priority=queue.priority)
        return [update, *self._dispatch(pool)]

    # --- workers ---------------------------------------------------------------------------

    def _new_worker(self, pool: _Pool) -> ev.WorkerStarted:
        plan, rng = pool.plan, self._rng
        self._worker_numbers[plan.name] += 1
        self._hosts += 1
        zone = rng.choice(_ZONES)
        host = f"{plan.worker_prefix}-{zone[-2:]}-{self._hosts:03d}.internal"
        worker = _Worker(
            name=f"{plan.worker_prefix}-{self._worker_numbers[plan.name]:02d}",
            pool=pool,
            queues=frozenset(self._some(rng, [q.name for q in plan.queues])),
            task_keys=set(self._some(rng, plan.task_keys)),
            slots=rng.randint(1, 4),
        )
        pool.workers.append(worker)
        self._after(rng.uniform(0, _HEARTBEAT_SECONDS), lambda: self._heartbeat(worker))
        return ev.WorkerStarted(
            worker=worker.name,
            pool=pool.name,
            queues=tuple(sorted(worker.queues)),
            task_keys=tuple(sorted(worker.task_keys)),
            slots=worker.slots,
            heartbeat_interval=_HEARTBEAT_SECONDS / self._speed,
            labels={"zone": zone, "host": host, **dict(plan.labels)},
            host=host,
            pid=rng.randint(1_000, 65_000),
        )

    @staticmethod
    def _some(rng: random.Random, names: tuple[str, ...] | list[str]) -> list[str]:
        """Mostly all of them (so every queue and key stays served), sometimes a subset."""
        if len(names) == 1 or rng.random() < 0.6:
            return list(names)
        return rng.sample(list(names), rng.randint(1, len(names) - 1))

    def _heartbeat(self, worker: _Worker) -> list[ev.Event]:
        if worker.state not in ("active", "draining"):
            return []  # stopped, or silent: it shows OFFLINE once its interval runs out
        self._after(
            _HEARTBEAT_SECONDS * self._rng.uniform(0.95, 1.05), lambda: self._heartbeat(worker)
        )
        return [ev.WorkerHeartbeat(worker=worker.name, pool=worker.pool.name)]

    def _pick_worker(self, predicate: Callable[[_Worker], bool]) -> _Worker | None:
        candidates = [
            w
            for p in self._pools.values()
            for w in p.workers
            if w.state == "active" and predicate(w)
        ]
        return self._rng.choice(candidates) if candidates else None

    def _subscribe_worker(self) -> list[ev.Event]:
        """A worker takes on a task key of its pool it did not start with."""
        worker = self._pick_worker(lambda w: bool(set(w.pool.plan.task_keys) - w.task_keys))
        if worker is None:
            return []
        key = self._rng.choice(sorted(set(worker.pool.plan.task_keys) - worker.task_keys))
        worker.task_keys.add(key)
        subscribed = ev.WorkerSubscribed(
            worker=worker.name, pool=worker.pool.name, task_keys=(key,)
        )
        return [subscribed, *self._dispatch(worker.pool)]

    def _replace_worker(self) -> list[ev.Event]:
        """A deploy: one worker drains (stops once idle) and a new one comes up in its pool."""
        worker = self._pick_worker(lambda w: True)
        if worker is None:
            return []
        worker.state = "draining"
        self._after(self._rng.uniform(2, 6), lambda: self._start_worker(worker.pool))
        return self._stop_if_drained(worker)

    def _silence_worker(self) -> list[ev.Event]:
        """A host dies: the worker just stops heartbeating; its tasks are declared crashed once
        the reaper notices, and a replacement comes up."""
        self._after(self._rng.uniform(60, 180), self._silence_worker)
        worker = self._pick_worker(lambda w: True)
        if worker is None:
            return []
        worker.state = "silent"
        reap = 3 * _HEARTBEAT_SECONDS * self._rng.uniform(1.0, 1.5)
        for task in list(worker.tasks.values()):
            task.epoch += 1  # its progress and ending will never come
            self._after(reap, functools.partial(self._reap, task, task.epoch))
        self._after(self._rng.uniform(10, 20), lambda: self._start_worker(worker.pool))
        return []

    def _reap(self, task: _Task, epoch: int) -> list[ev.Event]:
        if task.epoch != epoch or task.worker is None:
            return []
        return self._end(task, "crashed", reason=f"worker {task.worker.name} lost")

    def _start_worker(self, pool: _Pool) -> list[ev.Event]:
        return [self._new_worker(pool), *self._dispatch(pool)]

    def _stop_if_drained(self, worker: _Worker) -> list[ev.Event]:
        if worker.state != "draining" or worker.tasks:
            return []
        worker.state = "stopped"
        return [self._worker_stopped(worker, "deploy")]

    @staticmethod
    def _worker_stopped(worker: _Worker, reason: str) -> ev.WorkerStopped:
        return ev.WorkerStopped(worker=worker.name, pool=worker.pool.name, reason=reason)

    # --- tasks -----------------------------------------------------------------------------

    def _submitter(self, pool: _Pool) -> _Action:
        """New items arrive as a Poisson stream; producers back off when the backlog is deep."""

        def submit() -> list[ev.Event]:
            self._after(self._rng.expovariate(pool.rate), submit)
            if len(pool.backlog) >= _BACKLOG_PER_SLOT * max(1, pool.capacity):
                return []
            self._items += 1
            item = f"s3://landing/{pool.plan.worker_prefix}/part-{self._items:06d}.json"
            return self._submit(pool, "fetch", item)

        return submit

    def _submit(self, pool: _Pool, stage: str, item: str) -> list[ev.Event]:
        queue = self._rng.choice(list(pool.queues.values()))
        task = _Task(
            id=self._task_id(),
            pool=pool,
            queue=queue.name,
            task_key=self._rng.choice(pool.plan.task_keys),
            priority=queue.priority + self._rng.randint(-1, 2),
            stage=stage,
            item=item,
            seq=self._task_count,
        )
        self._tasks[task.id] = task
        submitted = ev.TaskSubmitted(
            task=task.id,
            pool=pool.name,
            queue=task.queue,
            task_key=task.task_key,
            priority=task.priority,
            stage=stage,
            item=item,
        )
        self._enqueue(task)
        return [submitted, *self._dispatch(pool)]

    def _task_id(self) -> str:
        self._task_count += 1
        return f"t-{self._run}-{self._task_count:06d}"

    def _enqueue(self, task: _Task) -> None:
        task.state = "queued"
        task.epoch += 1
        task.pool.backlog.append(task)
        epoch = task.epoch
        self._after(_QUEUE_TIMEOUT, lambda: self._expire(task, epoch))

    def _expire(self, task: _Task, epoch: int) -> list[ev.Event]:
        if task.epoch != epoch or task.state != "queued":
            return []
        return self._end(task, "cancelled")

    def _dispatch(self, pool: _Pool) -> list[ev.Event]:
        """Hand queued tasks to workers with a free slot, highest priority first, within the
        pool's and queues' concurrency limits; a paused pool hands out nothing."""
        if pool.paused or self._closing:
            return []
        events: list[ev.Event] = []
        order = sorted(
            pool.backlog, key=lambda t: (-pool.queues[t.queue].priority, -t.priority, t.seq)
        )
        for task in order:
            if pool.limit is not None and pool.in_use >= pool.limit:
                break
            queue = pool.queues[task.queue]
            if queue.limit is not None and queue.in_use >= queue.limit:
                continue
            candidates = [w for w in pool.workers if w.accepts(task)]
            if candidates:
                events.append(self._claim(task, self._rng.choice(candidates)))
        return events

    def _claim(self, task: _Task, worker: _Worker) -> ev.Event:
        pool = task.pool
        pool.backlog.remove(task)
        pool.in_use += 1
        pool.queues[task.queue].in_use += 1
        worker.tasks[task.id] = task
        task.worker, task.state = worker, "claimed"
        task.epoch += 1
        epoch = task.epoch
        self._after(self._rng.uniform(0.05, 0.5), lambda: self._start(task, epoch))
        return ev.TaskClaimed(task=task.id, worker=worker.name, queue=task.queue, pool=pool.name)

    def _start(self, task: _Task, epoch: int) -> list[ev.Event]:
        """Run one attempt: its outcome and length are decided now, progress reported on the way."""
        if task.epoch != epoch or task.worker is None:
            return []
        task.state = "running"
        rng = self._rng
        length = rng.lognormvariate(math.log(_STAGE_MEDIAN[task.stage]), _DURATION_SIGMA)
        length = min(600.0, max(0.1, length * task.pool.plan.pace))
        outcome = rng.choices([o for o, _ in _OUTCOMES], [w for _, w in _OUTCOMES])[0]
        end = length if outcome == "completed" else length * rng.uniform(0.2, 1.0)
        for fraction in sorted(rng.uniform(0.1, 0.95) for _ in range(rng.randint(1, 3))):
            if fraction * length < end:
                progress = functools.partial(self._progress, task, epoch, fraction)
                self._after(fraction * length, progress)
        self._after(end, lambda: self._finish(task, epoch, outcome))
        return [
            ev.TaskStarted(
                task=task.id, worker=task.worker.name, queue=task.queue, pool=task.pool.name
            )
        ]

    def _progress(self, task: _Task, epoch: int, fraction: float) -> list[ev.Event]:
        if task.epoch != epoch:
            return []
        done = round(fraction, 2)
        message = f"{task.stage}: {int(done * 100)}% of {task.item.rsplit('/', 1)[-1]}"
        return [ev.TaskProgress(task=task.id, pool=task.pool.name, progress=done, message=message)]

    def _finish(self, task: _Task, epoch: int, outcome: str) -> list[ev.Event]:
        if task.epoch != epoch:
            return []
        if outcome == "retrying" and task.attempt >= _MAX_ATTEMPTS:
            outcome = "failed"
        if outcome == "retrying":
            return self._retry(task)
        if outcome == "crashed":
            return self._end(task, outcome, reason="process killed (OOM)")
        if outcome == "failed":
            return self._end(task, outcome, error=self._rng.choice(_ERRORS))
        events = self._end(task, outcome)
        next_stage = _STAGES.index(task.stage) + 1
        if outcome == "completed" and next_stage < len(_STAGES):
            events += self._submit(task.pool, _STAGES[next_stage], task.item)
        return events

    def _retry(self, task: _Task) -> list[ev.Event]:
        """The attempt failed; the task waits a backoff, then queues again for any worker."""
        retrying = ev.TaskRetrying(
            task=task.id, pool=task.pool.name, attempt=task.attempt, error=self._rng.choice(_ERRORS)
        )
        events = [retrying, *self._release(task)]
        task.state, task.attempt = "waiting", task.attempt + 1
        epoch = task.epoch
        backoff = self._rng.uniform(1, 4) * 2**task.attempt
        self._after(backoff, lambda: self._requeue(task, epoch))
        return events

    def _requeue(self, task: _Task, epoch: int) -> list[ev.Event]:
        if task.epoch != epoch:
            return []
        self._enqueue(task)
        return self._dispatch(task.pool)

    def _end(self, task: _Task, outcome: str, **details: Any) -> list[ev.Event]:
        """A terminal event; the slot (if any) is freed and handed on."""
        kinds: dict[str, Callable[..., ev.Event]] = {
            "completed": ev.TaskCompleted,
            "failed": ev.TaskFailed,
            "cancelled": ev.TaskCancelled,
            "crashed": ev.TaskCrashed,
        }
        terminal = kinds[outcome](task=task.id, pool=task.pool.name, **details)
        if task.state == "queued":
            task.pool.backlog.remove(task)
        events = [terminal, *self._release(task)]
        task.state = "done"
        del self._tasks[task.id]
        return events

    def _release(self, task: _Task) -> list[ev.Event]:
        task.epoch += 1
        worker, task.worker = task.worker, None
        if worker is None:
            return []
        pool = task.pool
        del worker.tasks[task.id]
        pool.in_use -= 1
        pool.queues[task.queue].in_use -= 1
        if worker.state == "silent":
            return self._dispatch(pool)
        return [*self._stop_if_drained(worker), *self._dispatch(pool)]
