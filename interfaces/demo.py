"""The demo workload: a simulated fleet of workers, pools, queues and tasks, published live.

``make run`` (``workledger up --demo``) runs this so that a new user sees every view fill up
with something that looks like a real fleet: pools with awkward names (a dot, a space), workers
that heartbeat, subscribe, stop, are replaced and sometimes just go silent, and tasks that flow
through ``fetch`` → ``parse`` → ``load`` and mostly complete, sometimes retry, fail, are
cancelled or crash.

The fleet is :class:`workledger.workload.Fleet`, the seeded simulation benchmarks also use,
tuned so that a few minutes show everything (churn is fleet-wide every minute or two, not per
worker-hour). Why one virtual clock and not one asyncio task per worker: the demo promises the
same story for the same ``seed``. Concurrent tasks sharing one random generator would interleave
by wall-clock jitter; instead every action is scheduled at a *demo second*, and
:func:`run_demo` replays that schedule in real time, ``speed`` demo seconds per wall-clock
second. Given a seed, the sequence of events is identical on every run; only event times (the
:class:`~workledger.core.publisher.Publisher` stamps the wall clock) and the per-run tag in
event and task ids (so that two runs on one stream never collide) differ.

The fleet respects its own rules, so the demo doubles as a check of the read models: a worker
never holds more tasks than its slots, a pool or queue never more than its concurrency limit,
and a paused pool claims nothing.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field

import anyio
import msgspec
from anyio.abc import TaskStatus

from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, ensure_stream
from workledger.core.publisher import Publisher
from workledger.workload import Fleet, Workload

__all__ = ["DemoStats", "demo_workload", "run_demo"]

_WIND_DOWN_SECONDS = 10.0  # to flush the last events, even when cancelled
# Fleet-wide events per demo hour: a deploy a minute, a dead host every two, and so on.
_REPLACES, _SILENCES, _SUBSCRIBES, _PAUSES, _REPRIORITISES = 60, 30, 30, 30, 30


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


def demo_workload(*, workers: int = 20, pools: int = 3, seed: int = 0, tag: str = "") -> Workload:
    """The demo's fleet: ``pools`` pools (``etl``, ``ml.gpu``, ``web hooks``, then more), 2-4
    slots per worker, and churn paced per fleet rather than per worker, so that every kind of
    event shows up within a couple of demo minutes whatever the fleet's size."""
    queues = pools * Workload().queues_per_pool
    return Workload(
        seed=seed,
        pools=pools,
        workers=workers,
        slots_per_worker=3,
        replace_rate=_REPLACES / workers,
        silence_rate=_SILENCES / workers,
        subscribe_rate=_SUBSCRIBES / workers,
        pause_rate=_PAUSES / pools,
        reprioritise_rate=_REPRIORITISES / queues,
        tag=tag,
    )


async def run_demo(
    config: LogConfig,
    *,
    workers: int = 20,
    pools: int = 3,
    seed: int | None = None,
    speed: float = 1.0,
    duration: float | None = None,
    task_status: TaskStatus[DemoStats] = anyio.TASK_STATUS_IGNORED,
) -> DemoStats:
    """Publish a simulated fleet to the log until ``duration`` wall-clock seconds have passed.

    :param workers: workers online at a time, spread over the pools.
    :param pools: how many pools (see :func:`demo_workload`).
    :param seed: the same seed tells the same story (see the module docstring); ``None``
        picks one.
    :param speed: demo seconds per wall-clock second; ``speed=10`` runs ten times faster
        (announced heartbeat intervals shrink to match, so liveness stays right).
    :param duration: wall-clock seconds of schedule to play; ``None`` runs until cancelled.
    :param task_status: ``started(stats)`` is called once pools, queues and workers are
        published and acknowledged.

    The stream is created if missing. On the way out, normal or cancelled, the fleet winds down
    (running and queued tasks cancelled, workers stopped) and every event is flushed, so the
    read models are left tidy.

    :raises ValueError: if ``workers < 1``, ``pools < 1``, ``speed <= 0`` or ``duration < 0``.
    :raises LogError: if NATS cannot be reached or events cannot be acknowledged.
    """
    if workers < 1 or pools < 1 or speed <= 0:
        raise ValueError("workers and pools must be >= 1 and speed > 0")
    if duration is not None and duration < 0:
        raise ValueError("duration must be >= 0")
    if seed is None:
        seed = secrets.randbelow(2**32)
    workload = demo_workload(workers=workers, pools=pools, seed=seed, tag=secrets.token_hex(3))
    await _ensure_stream(config)
    stats = DemoStats()
    fleet = Fleet(workload)
    horizon = None if duration is None else duration * speed
    pub = Publisher(config)
    await pub.open()
    try:
        await _publish(pub, stats, fleet.start(), speed)
        await pub.flush()
        task_status.started(stats)
        await _play(fleet, pub, stats, speed, horizon)
    finally:
        with anyio.move_on_after(2 * _WIND_DOWN_SECONDS, shield=True):
            try:
                await _publish(pub, stats, fleet.wind_down(), speed)
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
    fleet: Fleet, pub: Publisher, stats: DemoStats, speed: float, horizon: float | None
) -> None:
    """Run each scheduled action when its demo second comes; catch up at once if behind."""
    origin = anyio.current_time()
    while (due := fleet.next_due()) is not None and (horizon is None or due <= horizon):
        delay = origin + due / speed - anyio.current_time()
        if delay > 0:
            await anyio.sleep(delay)
        await _publish(pub, stats, fleet.step(), speed)
        stats.demo_seconds = due
        stats.elapsed = anyio.current_time() - origin
    if horizon is not None:
        await anyio.sleep(max(0.0, origin + horizon / speed - anyio.current_time()))
        stats.demo_seconds = horizon
        stats.elapsed = anyio.current_time() - origin


async def _publish(pub: Publisher, stats: DemoStats, events: list[ev.Event], speed: float) -> None:
    for event in events:
        await pub.publish(_live(event, speed))
        stats.record(event)


def _live(event: ev.Event, speed: float) -> ev.Event:
    """The event as of now: the Publisher stamps the wall clock (the fleet's virtual time would
    run ``speed`` times too fast), and heartbeat intervals shrink with the speed-up."""
    if isinstance(event, ev.WorkerStarted):
        interval = event.heartbeat_interval / speed
        return msgspec.structs.replace(event, at=None, heartbeat_interval=interval)
    return msgspec.structs.replace(event, at=None)
