"""The reaper: dead workers release their slots, and long-gone workers leave the live view.

A worker that dies without ``worker.stopped`` leaves its tasks holding slots forever. The
reaper turns "OFFLINE for longer than ``lost_after``" into events, published through the
ordinary :class:`~workledger.core.publisher.Publisher`: ``worker.lost`` and a ``task.crashed``
for every task the worker still holds. The decision is then part of the log, so every read
model, every other daemon and every rebuild agrees on it, and it can be audited.

Exactly once, even with several daemons reaping the same stream: each event's ``id`` and
``at`` are derived from what the decision is about (the worker's current registration, the
task's current slot stretch), never from the daemon or its clock. Daemons that reap at once
publish the same ids, which JetStream's duplicate window stores once; the fold keys what it
keeps by event id, so a copy published after the window changes nothing either.

The reaper only decides on a caught-up read model (no lag): a lagging daemon might not yet
have seen a heartbeat that proves the worker alive.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
from anyio.abc import TaskStatus

from workledger.core import events as ev
from workledger.core.errors import LogError
from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher
from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.views import WorkerStatus, WorkerWithStatus
from workledger.stores.base import Store

__all__ = ["LOST_REASON", "Reaper", "ReaperConfig", "plan"]

_log = logging.getLogger(__name__)
LOST_REASON = "worker lost"
_NAMESPACE = uuid.UUID("6f1e3a52-8d0b-4f43-9c36-2b7a0e51c9d4")  # workledger reaper ids
_MAX_SECONDS = 10 * 365 * 86_400  # keeps `last_seen + grace` inside datetime's range
_SENT_MEMORY = 100_000  # ids remembered to skip republishing; forgetting one only costs a dup
_GONE = (WorkerStatus.OFFLINE, WorkerStatus.LOST, WorkerStatus.STOPPED)

Seconds = float | None


class ReaperConfig(msgspec.Struct, frozen=True, kw_only=True):
    """When workers are declared lost and forgotten; ``None`` turns that step off.

    ``lost_after``: seconds a worker stays OFFLINE (past its heartbeat grace) before it is
    declared lost and its tasks crashed. ``forget_after``: seconds a worker has been gone
    (OFFLINE, LOST or STOPPED) before it leaves the live view. ``interval``: seconds between
    passes. ``multiplier``: the liveness rule's, so OFFLINE means what the queries say.
    """

    lost_after: Seconds = None
    forget_after: Seconds = None
    interval: float = 5.0
    multiplier: float = DEFAULT_MULTIPLIER

    def __post_init__(self) -> None:
        for name in ("lost_after", "forget_after"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= _MAX_SECONDS:
                raise ValueError(f"{name} must be between 0 and {_MAX_SECONDS} seconds")
        if self.interval <= 0:
            raise ValueError("the reaper's interval must be > 0")

    @property
    def enabled(self) -> bool:
        """Whether there is anything to do."""
        return self.lost_after is not None or self.forget_after is not None


def plan(store: Store, now: datetime, config: ReaperConfig) -> list[ev.Event]:
    """The events a reaper publishes at ``now``, given the store's current read model.

    Pure apart from reading the store: two daemons with the same model and configuration
    plan the same events, ids and times included. It asks the store for the gone workers
    alone (OFFLINE, LOST, STOPPED), which an index answers without reading the ONLINE ones.
    """
    events: list[ev.Event] = []
    for status in _GONE:
        for found in store.workers(now=now, multiplier=config.multiplier, status=status):
            if found.worker.pool is not None:
                events += _verdicts(store, found, now, config)
    return events


def _verdicts(
    store: Store, found: WorkerWithStatus, now: datetime, config: ReaperConfig
) -> list[ev.Event]:
    events: list[ev.Event] = []
    offline = _offline_since(found, config.multiplier)
    if config.lost_after is not None and offline is not None:
        declared = offline + timedelta(seconds=config.lost_after)
        if found.status is WorkerStatus.OFFLINE and now >= declared:
            events.append(_lost(found, declared))
        if found.status in (WorkerStatus.OFFLINE, WorkerStatus.LOST) and now >= declared:
            events += _crashes(store, found, declared)
    gone = _gone_since(found, offline)
    if config.forget_after is not None and gone is not None:
        forgotten_at = gone + timedelta(seconds=config.forget_after)
        if now >= forgotten_at:
            events.append(_forgotten(found, forgotten_at))
    return events


def _offline_since(found: WorkerWithStatus, multiplier: float) -> datetime | None:
    view = found.worker
    if view.last_seen is None:
        return None
    return view.last_seen + timedelta(seconds=view.heartbeat_interval * multiplier)


def _gone_since(found: WorkerWithStatus, offline: datetime | None) -> datetime | None:
    if found.status is WorkerStatus.STOPPED:
        return found.worker.stopped_at or offline
    return offline


def _lost(found: WorkerWithStatus, declared: datetime) -> ev.WorkerLost:
    view = found.worker
    assert view.pool is not None
    assert view.last_seen is not None
    return ev.WorkerLost(
        id=_lost_id(found),
        at=declared,
        worker=view.worker,
        pool=view.pool,
        last_seen=view.last_seen,
        reason=f"no sign of life since {view.last_seen.isoformat()}",
    )


def _crashes(store: Store, found: WorkerWithStatus, declared: datetime) -> list[ev.Event]:
    crashes: list[ev.Event] = []
    for task_id in found.tasks:
        task = store.task(task_id)
        if task is None or not task.status.holds_slot:
            continue
        since = task.slot_acquired_at
        crashes.append(
            ev.TaskCrashed(
                id=_id("task.crashed", task_id, _iso(since), _lost_id(found)),
                at=max(declared, since) if since else declared,
                task=task_id,
                pool=task.pool or found.worker.pool,
                reason=LOST_REASON,
            )
        )
    return crashes


def _forgotten(found: WorkerWithStatus, at: datetime) -> ev.WorkerForgotten:
    view = found.worker
    assert view.pool is not None
    return ev.WorkerForgotten(
        id=_id("worker.forgotten", view.worker, _iso(view.started_at), _iso(view.last_seen)),
        at=at,
        worker=view.worker,
        pool=view.pool,
    )


def _lost_id(found: WorkerWithStatus) -> str:
    """One verdict per registration: the same whoever reaps, whenever."""
    return _id("worker.lost", found.worker.worker, _iso(found.worker.started_at))


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""


class Reaper:
    """Runs :func:`plan` every ``interval`` and publishes what it finds, until cancelled.

    ``ready`` says whether the read model is caught up (the daemon's lag is 0); until it is,
    the reaper waits. ``clock`` is for tests.
    """

    def __init__(
        self,
        config: ReaperConfig,
        store: Store,
        log: LogConfig,
        *,
        ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.store = store
        self.log = log
        self.published = 0
        self._ready = ready
        self._clock = clock
        self._sent: set[str] = set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect a publisher, then reap every ``interval`` seconds."""
        publisher = await Publisher.connect(self.log)
        try:
            task_status.started()
            while True:
                await anyio.sleep(self.config.interval)
                if self._ready():
                    await self.reap(publisher)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await _close(publisher)

    async def reap(self, publisher: Publisher) -> int:
        """One pass: publish what :func:`plan` finds and was not sent yet; wait for the acks."""
        fresh = [e for e in plan(self.store, self._clock(), self.config) if e.id not in self._sent]
        for event in fresh:
            await publisher.publish(event)
        if fresh:
            await publisher.flush()
            self._remember(e.id for e in fresh)
            self.published += len(fresh)
            _log.info("reaper published %d events: %s", len(fresh), _summary(fresh))
        return len(fresh)

    def _remember(self, ids: Iterable[str]) -> None:
        if len(self._sent) > _SENT_MEMORY:
            self._sent.clear()
        self._sent.update(ids)


async def _close(publisher: Publisher) -> None:
    try:
        await publisher.close(timeout=1.0)
    except LogError as exc:
        _log.warning("reaper: %s (the next pass of any daemon publishes them again)", exc)


def _summary(events: list[ev.Event]) -> str:
    counts: dict[str, int] = {}
    for event in events:
        counts[event.type] = counts.get(event.type, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
