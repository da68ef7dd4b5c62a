"""The live change feed: every applied event, with the view of the entity it changed.

The :class:`~workledger.projections.daemon.Projector` calls :meth:`Feed.publish` after each
batch it applied. That call is on the fold's path, so it only appends references: to a ring
of recent events (for clients that resume after a sequence) and to each subscriber's bounded
buffer. Turning an event into a :class:`FeedItem` (looking views up, encoding) happens later,
in the subscriber's own task.

A subscriber that falls more than its buffer behind is not waited for: it is dropped and told
so (``lagged``), and resumes from the ring by the last sequence it saw, or learns of a ``gap``
when even the ring has moved past it. So no client can slow the daemon down.

An item's ``view`` is the entity as the read model holds it when the item is built, which is
at least as new as the event: a dashboard that applies views in order ends up current.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import NamedTuple, Protocol

import anyio
import msgspec

from workledger.core.events import Event, event_types
from workledger.projections.views import (
    PoolView,
    QueueView,
    TaskView,
    WorkerWithStatus,
)
from workledger.stores.base import Batch, Sequenced, StoreStats

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_RING",
    "EntityIds",
    "Feed",
    "FeedFilter",
    "FeedItem",
    "FeedViews",
    "Gap",
    "Subscription",
]

DEFAULT_RING = 20_000  # events kept for resuming: a few seconds of a busy fleet, minutes of most
DEFAULT_BUFFER = 10_000  # per subscriber; at least the daemon's largest batch (5000)

View = TaskView | WorkerWithStatus | PoolView | QueueView


class FeedViews(Protocol):
    """What the feed reads from the live store (the daemon's MemoryStore) to build items."""

    def stats(self) -> StoreStats:
        """The checkpoint the feed starts after."""
        ...

    def task(self, task: str) -> TaskView | None:
        """One task."""
        ...

    def worker(self, worker: str, *, now: datetime, multiplier: float) -> WorkerWithStatus | None:
        """One worker with its status at ``now``."""
        ...

    def pools(self) -> list[PoolView]:
        """Every pool's settings."""
        ...

    def queues(self, *, pool: str | None = None) -> list[QueueView]:
        """A pool's queues."""
        ...


class EntityIds(NamedTuple):
    """The ids an event concerns, completed from the read model (a ``task.completed`` names
    neither worker nor queue; its task view does)."""

    worker: str | None
    task: str | None
    pool: str | None
    queue: str | None


class FeedItem(msgspec.Struct, frozen=True, kw_only=True):
    """One applied event as the feed sends it."""

    seq: int
    type: str
    at: datetime | None
    id: str
    entity: str  # worker, task, pool or queue: which kind ``view`` is
    worker: str | None
    task: str | None
    pool: str | None
    queue: str | None
    event: Event
    view: View | None


class Gap(msgspec.Struct, frozen=True, kw_only=True):
    """Events after ``after`` up to ``until`` are no longer in the ring: re-query instead."""

    after: int
    until: int


_TYPES = tuple(event_types())


class FeedFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which items a subscriber wants; every given field must match, ``types`` by prefix.

    :raises ValueError: when a type prefix matches no event type.
    """

    pool: str | None = None
    worker: str | None = None
    task: str | None = None
    queue: str | None = None
    types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for prefix in self.types:
            if not any(name.startswith(prefix) for name in _TYPES):
                known = ", ".join(_TYPES)
                raise ValueError(f"type {prefix!r} is no event type nor a prefix of one: {known}")

    def matches(self, ids: EntityIds, event_type: str) -> bool:
        """Does an event with these ids and type pass?"""
        return (
            (self.pool is None or ids.pool == self.pool)
            and (self.worker is None or ids.worker == self.worker)
            and (self.task is None or ids.task == self.task)
            and (self.queue is None or ids.queue == self.queue)
            and (not self.types or event_type.startswith(self.types))
        )


class Subscription:
    """One client's place in the feed: a backlog from the ring, then a bounded live buffer."""

    def __init__(self, where: FeedFilter, *, limit: int, backlog: Iterable[Sequenced]) -> None:
        self.filter = where
        self.lagged = False
        self.gap: Gap | None = None
        self._limit = limit
        self._backlog = deque(backlog)
        self._pending: deque[Sequenced] = deque()
        self._wake = anyio.Event()

    def offer(self, events: list[Sequenced]) -> None:
        """Take matching events from the fold; past the limit, give up (``lagged``)."""
        if not events:
            return
        if len(self._pending) + len(events) > self._limit:
            self.lagged = True
            self._pending.clear()
        else:
            self._pending.extend(events)
        self._wake.set()

    async def next(self, timeout: float, most: int = 500) -> list[Sequenced]:  # noqa: ASYNC109
        """Up to ``most`` events, waiting up to ``timeout``; [] on timeout or once lagged.

        The events of one stream sequence (an envelope's) come in the same call, even past
        ``most``: a client resuming after a sequence then has all of it or none of it.
        """
        if not (self._backlog or self._pending or self.lagged):
            self._wake = anyio.Event()  # offer() sets whichever is current: no lost wake-up
            with anyio.move_on_after(timeout):
                await self._wake.wait()
        if self.lagged:
            return []
        source = self._backlog or self._pending
        taken = [source.popleft() for _ in range(min(most, len(source)))]
        while taken and source and source[0].seq == taken[-1].seq:
            taken.append(source.popleft())
        return taken


class Feed:
    """Fans applied batches out to subscribers; ``publish`` is the Projector's listener."""

    def __init__(
        self,
        views: FeedViews,
        *,
        clock: Callable[[], datetime],
        multiplier: float,
        ring: int = DEFAULT_RING,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self._views = views
        self._clock = clock
        self._multiplier = multiplier
        self._ring: deque[Sequenced] = deque()
        self._ring_size = ring
        self._buffer = buffer
        self._last = views.stats().checkpoint  # the store had these before the feed existed
        self._covered = self._last  # the ring holds every event after this sequence
        self._subscribers: set[Subscription] = set()

    @property
    def last_seq(self) -> int:
        """The last sequence published."""
        return self._last

    @property
    def subscribers(self) -> int:
        """How many clients are attached now."""
        return len(self._subscribers)

    def publish(self, batch: Batch) -> None:
        """Called on the fold's path: append references, never wait or encode."""
        events = [e for e in batch.events if e.seq > self._last]
        self._last = max(self._last, batch.last_seq)
        self._remember(events)
        if events and self._subscribers:
            self._fan_out(events)

    def _remember(self, events: list[Sequenced]) -> None:
        self._ring.extend(events)
        while len(self._ring) > self._ring_size:
            self._covered = self._ring.popleft().seq

    def _fan_out(self, events: list[Sequenced]) -> None:
        tagged = [(e, self.ids(e.event)) for e in events]
        for sub in list(self._subscribers):
            sub.offer([e for e, ids in tagged if sub.filter.matches(ids, e.event.type)])
            if sub.lagged:
                self._subscribers.discard(sub)

    def subscribe(self, where: FeedFilter, *, after: int | None = None) -> Subscription:
        """Attach a client: live events from now on, and with ``after`` those since then that
        the ring still holds (``gap`` is set when it no longer holds them all)."""
        backlog = self._since(after, where) if after is not None else ()
        sub = Subscription(where, limit=self._buffer, backlog=backlog)
        if after is not None and after < self._covered:
            sub.gap = Gap(after=after, until=self._covered)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Detach a client (it disconnected); safe to call twice."""
        self._subscribers.discard(sub)

    def _since(self, after: int, where: FeedFilter) -> list[Sequenced]:
        return [
            e
            for e in self._ring
            if e.seq > after and where.matches(self.ids(e.event), e.event.type)
        ]

    def ids(self, event: Event) -> EntityIds:
        """The worker, task, pool and queue an event concerns."""
        if event.family != "task":
            return EntityIds(
                worker=getattr(event, "worker", None),
                task=None,
                pool=getattr(event, "pool", None),
                queue=getattr(event, "queue", None),
            )
        view = self._views.task(event.entity_key)
        worker = getattr(event, "worker", None) or (view.worker if view else None)
        return EntityIds(
            worker=worker,
            task=event.entity_key,
            pool=event.pool_key or (view.pool if view else None) or self._pool_of(worker),
            queue=getattr(event, "queue", None) or (view.queue if view else None),
        )

    def _pool_of(self, worker: str | None) -> str | None:
        """A task claimed before it was submitted has only its worker's pool."""
        if worker is None:
            return None
        found = self._views.worker(worker, now=self._clock(), multiplier=self._multiplier)
        return found.worker.pool if found else None

    def item(self, sequenced: Sequenced) -> FeedItem:
        """The item for an event, with the current view of its entity."""
        event, ids = sequenced.event, self.ids(sequenced.event)
        return FeedItem(
            seq=sequenced.seq,
            type=event.type,
            at=event.at,
            id=event.id,
            entity=event.family,
            worker=ids.worker,
            task=ids.task,
            pool=ids.pool,
            queue=ids.queue,
            event=event,
            view=self._view(event.family, ids),
        )

    def _view(self, family: str, ids: EntityIds) -> View | None:
        match family:
            case "task":
                return self._views.task(ids.task) if ids.task else None
            case "worker":
                return self._worker(ids.worker)
            case "pool":
                return next((p for p in self._views.pools() if p.pool == ids.pool), None)
            case _:
                queues = self._views.queues(pool=ids.pool)
                return next((q for q in queues if q.queue == ids.queue), None)

    def _worker(self, worker: str | None) -> WorkerWithStatus | None:
        if worker is None:
            return None
        return self._views.worker(worker, now=self._clock(), multiplier=self._multiplier)
