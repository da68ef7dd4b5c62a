"""The fold: how each event changes worker, task, pool and queue state.

Deterministic and order-free: every record is a join of the events seen so far (latest by
``(at, id)``, sets keyed by event id), so the same *set* of events, in any order and with any
duplicates, gives the same state. No clock is read here; liveness is decided at query time.

Precedence rules, after celery's ``events/state.py`` but made order-free:

- a terminal event (completed, failed, cancelled, crashed) wins over anything else;
- ``task.retrying`` closes the current slot stretch; claims and starts before it no longer count;
- within the current stretch, started beats claimed whatever their times say (producer clocks
  drift), so a late ``claimed`` never turns RUNNING back into PENDING and never undoes a terminal.

Workers: ``worker.lost`` (a reaper's verdict) ends the session its ``last_seen`` falls in and
makes the worker LOST until a ``worker.started`` after that ``last_seen``; ``worker.forgotten``
hides the worker from the live view until it starts or shows life again. Neither is a sign of
life, and neither touches its history (sessions, slot stretches).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from workledger.core import events as ev
from workledger.projections.views import (
    HOLDING_SLOT,
    PoolView,
    QueueView,
    SlotInterval,
    TaskStatus,
    TaskView,
    WorkerSession,
    WorkerView,
)

__all__ = ["Changes", "Ledger", "Record", "retain"]

OrderKey = tuple[datetime, str]
_json = msgspec.json.Encoder()

_TERMINAL_STATUS: dict[type[ev.Event], TaskStatus] = {
    ev.TaskCompleted: TaskStatus.COMPLETED,
    ev.TaskFailed: TaskStatus.FAILED,
    ev.TaskCancelled: TaskStatus.CANCELLED,
    ev.TaskCrashed: TaskStatus.CRASHED,
}


def _later(current: ev.Event | None, candidate: ev.Event) -> bool:
    """Is ``candidate`` after ``current`` by ``(at, id)``? The hottest line of the fold: it
    compares fields in place rather than building two ``order_key`` tuples."""
    if current is None:
        return True
    a, b = candidate.at, current.at
    return a > b or (a == b and candidate.id > current.id)  # type: ignore[operator]


def _newer(current: ev.Event | None, candidate: ev.Event) -> bool:
    """Should ``candidate`` replace ``current`` in a register (the latest of a kind)?

    By ``(at, id)``, and for two events sharing both (an id reused for another event, which
    only a faulty or hostile producer sends) by their JSON, so that every register, and the
    fold, is order-free on any input; the DuckDB store's SQL orders by the same three keys.
    """
    if current is None:
        return True
    a, b = candidate.at, current.at
    return a > b or (a == b and _tied(current, candidate))  # type: ignore[operator]


def _tied(current: ev.Event, candidate: ev.Event) -> bool:
    """:func:`_newer` for two events at the same instant (off the hot path)."""
    i, j = candidate.id, current.id
    return i > j or (i == j and _json.encode(candidate) > _json.encode(current))


def _put(events: dict[str, Any], event: ev.Event) -> None:
    """Keep ``event`` under its id; of two sharing an id, the one :func:`_newer` picks."""
    kept = events.get(event.id)
    if kept is None or (kept is not event and _newer(kept, event)):
        events[event.id] = event


def _key(event: ev.Event) -> OrderKey:
    return event.at, event.id  # type: ignore[return-value]


Mark = ev.TaskClaimed | ev.TaskStarted  # the events that give a task its slot


@dataclass(slots=True)
class _TaskRecord:
    task: str
    submitted: ev.TaskSubmitted | None = None
    terminal: ev.Event | None = None
    progress: ev.TaskProgress | None = None
    hint: ev.Event | None = None  # latest event carrying a pool hint
    last_retry: ev.TaskRetrying | None = None
    retries: dict[str, ev.TaskRetrying] = field(default_factory=dict)
    marks: dict[str, Mark] = field(default_factory=dict)  # every claim and start, by id
    updated_at: datetime | None = None

    def apply(self, event: ev.Event) -> None:
        kind = type(event)
        if self.submitted is None:  # the hint stands in for it until then, and never after
            hint = self.hint
            if event.pool is not None and (hint is None or _newer(hint, event)):  # type: ignore[attr-defined]
                self.hint = event
        at = event.at
        if self.updated_at is None or at > self.updated_at:  # type: ignore[operator]
            self.updated_at = at
        if kind is ev.TaskClaimed or kind is ev.TaskStarted:
            marks, key = self.marks, event.id  # _put, inlined: most task events are marks
            kept = marks.get(key)
            if kept is None or (kept is not event and _newer(kept, event)):
                marks[key] = event  # type: ignore[assignment]
        elif kind is ev.TaskSubmitted:
            if _newer(self.submitted, event):
                self.submitted = event  # type: ignore[assignment]
        elif kind is ev.TaskRetrying:
            _put(self.retries, event)
            if _newer(self.last_retry, event):
                self.last_retry = event  # type: ignore[assignment]
        elif kind is ev.TaskProgress:
            if _newer(self.progress, event):
                self.progress = event  # type: ignore[assignment]
        elif kind in _TERMINAL_STATUS and _newer(self.terminal, event):
            self.terminal = event

    def _ordered(self) -> list[Mark]:
        """Every claim and start, in order (most tasks have one of each, already in order)."""
        marks = list(self.marks.values())
        if len(marks) > 1:
            first, second = marks[0], marks[1]
            if len(marks) > 2 or not (
                first.at < second.at or (first.at == second.at and first.id < second.id)  # type: ignore[operator]
            ):
                marks.sort(key=_key)
        return marks

    def _stretch(self) -> list[Mark]:
        """Claims and starts since the last retry, in order: the current slot stretch."""
        if not self.marks:
            return []
        marks = self._ordered()
        retry = self.last_retry
        if retry is not None:
            marks = marks[bisect_right(marks, _key(retry), key=_key) :]
        return marks

    def view(self) -> TaskView:
        """The task as it stands. A store builds one per task a batch touched, so this is on
        the fold's hot path: the view is built positionally (a Struct takes 18 arguments ~4x
        faster by position than by name), in :class:`TaskView`'s field order."""
        marks = self._stretch()
        # The stretch's first start; its latest start, else its latest claim.
        first_start: ev.TaskStarted | None = None
        latest: Mark | None = None
        for mark in marks:
            if type(mark) is ev.TaskStarted:
                latest = mark
                if first_start is None:
                    first_start = mark
        if latest is None and marks:
            latest = marks[-1]
        status = self._status(marks, first_start is not None)
        sub, prog, terminal = self.submitted, self.progress, self.terminal
        pool, queue, task_key, stage = self._placement()
        return TaskView(
            self.task,
            status,
            pool,
            queue,
            task_key,
            stage,
            sub.priority if sub else None,
            sub.item if sub else None,
            latest.worker if latest else None,  # worker
            sub.at if sub else None,  # submitted_at
            marks[0].at if marks and status in HOLDING_SLOT else None,  # slot_acquired_at
            first_start.at if first_start else None,  # started_at
            terminal.at if terminal else None,  # finished_at
            self.updated_at,
            len(self.retries),
            prog.progress if prog else None,
            prog.message if prog else None,
            self._error(),
        )

    def intervals(self) -> list[SlotInterval]:
        """Every slot stretch of the task, split by its retries, in order."""
        if not self.marks:
            return []
        ordered = self._ordered()
        placement = self._placement()
        if not self.retries:  # most tasks: one stretch
            return [self._interval(placement, 0, ordered, None)]
        retries = sorted(self.retries.values(), key=_key)
        bounds = [_key(r) for r in retries]
        stretches: list[list[Mark]] = [[] for _ in range(len(bounds) + 1)]
        for mark in ordered:
            stretches[bisect_left(bounds, _key(mark))].append(mark)
        return [
            self._interval(
                placement, attempt, marks, retries[attempt] if attempt < len(bounds) else None
            )
            for attempt, marks in enumerate(stretches)
            if marks
        ]

    def _placement(self) -> tuple[str | None, str | None, str | None, str | None]:
        """Pool, queue, task key and stage: from task.submitted, else the latest hint."""
        sub = self.submitted
        if sub is not None:
            return sub.pool, sub.queue, sub.task_key, sub.stage
        return self._hint("pool"), self._hint("queue"), None, None

    def _interval(
        self,
        placement: tuple[str | None, str | None, str | None, str | None],
        attempt: int,
        marks: list[Mark],
        retry: ev.TaskRetrying | None,
    ) -> SlotInterval:
        starts = [m for m in marks if type(m) is ev.TaskStarted]
        acquired: datetime = marks[0].at  # type: ignore[assignment]
        released, ended = self._release(retry)
        pool, queue, task_key, stage = placement
        return SlotInterval(
            task=self.task,
            attempt=attempt + 1,
            worker=(starts or marks)[-1].worker,
            pool=pool,
            queue=queue,
            task_key=task_key,
            stage=stage,
            acquired_at=acquired,
            started_at=starts[0].at if starts else None,
            released_at=max(released, acquired) if released is not None else None,
            ended=ended,
        )

    def _release(self, retry: ev.TaskRetrying | None) -> tuple[datetime | None, TaskStatus | None]:
        """A stretch ends at its retry or at the terminal event, whichever is first."""
        terminal = self.terminal
        if retry is not None and (terminal is None or _later(retry, terminal)):
            return retry.at, TaskStatus.RETRYING
        if terminal is not None:
            return terminal.at, _TERMINAL_STATUS[type(terminal)]
        return None, None

    def _status(self, stretch: list[Mark], started: bool) -> TaskStatus:
        if self.terminal is not None:
            return _TERMINAL_STATUS[type(self.terminal)]
        if started:
            return TaskStatus.RUNNING
        if stretch:  # claims only
            return TaskStatus.PENDING
        if self.last_retry is not None:
            return TaskStatus.RETRYING
        return TaskStatus.SUBMITTED if self.submitted else TaskStatus.UNKNOWN

    def retained(self) -> list[ev.Event]:
        """The events this record still depends on; folding them alone rebuilds it.

        The pool hint counts only without a ``task.submitted``, and is kept once.
        """
        sub, end, prog, hint = self.submitted, self.terminal, self.progress, self.hint
        kept: list[ev.Event] = [*self.marks.values(), *self.retries.values()]
        if sub is not None:
            kept.append(sub)
        if end is not None:
            kept.append(end)
        if prog is not None:
            kept.append(prog)
        others = hint is prog or hint is end
        if sub is None and hint is not None and not others and hint.id not in self.marks:
            kept.append(hint)
        return kept

    def _hint(self, name: str) -> str | None:
        return getattr(self.hint, name, None) if self.hint else None

    def _error(self) -> str | None:
        terminal = self.terminal
        if type(terminal) is ev.TaskFailed:
            return terminal.error
        if type(terminal) is ev.TaskCrashed:
            return terminal.reason
        return self.last_retry.error if self.last_retry else None


@dataclass(slots=True)
class _WorkerRecord:
    worker: str
    latest: ev.Event | None = None  # any worker event: the pool it reports under
    started: ev.WorkerStarted | None = None
    stopped: ev.WorkerStopped | None = None
    starts: dict[str, ev.WorkerStarted] = field(default_factory=dict)
    stops: dict[str, ev.WorkerStopped] = field(default_factory=dict)
    subscriptions: dict[str, ev.WorkerSubscribed] = field(default_factory=dict)
    seen: ev.Event | None = None  # the latest event naming the worker: its last sign of life
    losts: dict[str, ev.WorkerLost] = field(default_factory=dict)
    forgotten: ev.WorkerForgotten | None = None

    def apply(self, event: ev.Event) -> None:
        """A worker event (task claims and starts only go through :meth:`saw`)."""
        kind = type(event)
        if kind is not ev.WorkerLost and kind is not ev.WorkerForgotten:
            self.saw(event)
        if _newer(self.latest, event):
            self.latest = event
        if kind is ev.WorkerHeartbeat:
            return
        if kind is ev.WorkerStarted:
            _put(self.starts, event)
            if _newer(self.started, event):
                self.started = event  # type: ignore[assignment]
                subs = self.subscriptions
                self.subscriptions = {i: s for i, s in subs.items() if _later(event, s)}
        elif kind is ev.WorkerStopped:
            _put(self.stops, event)
            if _newer(self.stopped, event):
                self.stopped = event  # type: ignore[assignment]
        elif kind is ev.WorkerSubscribed:
            if self._current(event):
                _put(self.subscriptions, event)
        elif kind is ev.WorkerLost:
            _put(self.losts, event)
        elif kind is ev.WorkerForgotten and _newer(self.forgotten, event):
            self.forgotten = event  # type: ignore[assignment]

    def saw(self, event: ev.Event) -> None:
        """A sign of life: any event from the worker, or a task it claims or starts."""
        seen = self.seen
        if seen is None or _newer(seen, event):
            self.seen = event

    def retained(self) -> list[ev.Event]:
        """The events this record still depends on; folding them alone rebuilds it."""
        kept = [self.latest, self.seen, self.forgotten, *self.starts.values()]
        kept += [*self.stops.values(), *self.losts.values()]
        return [e for e in kept if e is not None] + list(self.subscriptions.values())

    @property
    def is_forgotten(self) -> bool:
        """Forgotten after its latest start and its last sign of life: out of the live view."""
        gone = self.forgotten
        return gone is not None and _later(self.started, gone) and _later(self.seen, gone)

    def _loss(
        self, start: ev.WorkerStarted | None, following: ev.WorkerStarted | None
    ) -> ev.WorkerLost | None:
        """The latest verdict whose ``last_seen`` falls in the session from ``start``."""
        since = start.order_key[0] if start else None
        until = following.order_key[0] if following else None
        losses = [
            lost
            for lost in self.losts.values()
            if (since is None or lost.last_seen >= since)
            and (until is None or lost.last_seen < until)
        ]
        return max(losses, key=lambda lost: lost.order_key, default=None)

    def sessions(self) -> list[WorkerSession]:
        """Each run of the worker, from each ``worker.started``, in order."""
        starts = sorted(self.starts.values(), key=lambda e: e.order_key)
        stops = sorted(self.stops.values(), key=lambda e: e.order_key)
        keys = self._task_keys()
        sessions = []
        for i, start in enumerate(starts):
            following = starts[i + 1] if i + 1 < len(starts) else None
            limit = following.order_key if following else None
            stop: ev.Event | None = next(
                (
                    s
                    for s in stops
                    if s.order_key > start.order_key and (limit is None or s.order_key < limit)
                ),
                None,
            )
            stop = stop or self._loss(start, following)
            sessions.append(
                WorkerSession(
                    worker=self.worker,
                    pool=start.pool,
                    queues=start.queues,
                    task_keys=keys if following is None else start.task_keys,
                    slots=start.slots,
                    heartbeat_interval=start.heartbeat_interval,
                    started_at=start.order_key[0],
                    stopped_at=stop.order_key[0] if stop else None,
                    next_started_at=following.order_key[0] if following else None,
                    last_seen=self.seen.order_key[0] if self.seen and not following else None,
                )
            )
        return sessions

    def _current(self, event: ev.Event) -> bool:
        return _later(self.started, event)

    def _task_keys(self) -> tuple[str, ...]:
        """Those it started with, plus every subscription since."""
        keys = set(self.started.task_keys if self.started else ())
        for sub in self.subscriptions.values():
            keys.update(sub.task_keys)
        return tuple(sorted(keys))

    def view(self) -> WorkerView:
        reg, stop = self.started, self.stopped
        keys = self._task_keys()
        return WorkerView(
            worker=self.worker,
            pool=reg.pool if reg else getattr(self.latest, "pool", None),
            queues=reg.queues if reg else (),
            task_keys=keys,
            slots=reg.slots if reg else 1,
            heartbeat_interval=reg.heartbeat_interval if reg else 30.0,
            labels=dict(reg.labels) if reg else {},
            host=reg.host if reg else None,
            pid=reg.pid if reg else None,
            started_at=reg.at if reg else None,
            stopped_at=stop.at if stop else None,
            stop_reason=stop.reason if stop else None,
            last_seen=self.seen.at if self.seen else None,
            stopped=stop is not None and _later(reg, stop),
            lost=self._loss(reg, None) is not None,
        )


class _Setting(msgspec.Struct):
    """A last-writer-wins register for one field of a pool or queue."""

    event: ev.Event
    value: object


@dataclass(slots=True)
class _SettingsRecord:
    """Pools and queues: each field is its own register, so partial updates commute."""

    settings: dict[str, _Setting] = field(default_factory=dict)
    created: ev.Event | None = None  # the earliest created event
    last: ev.Event | None = None

    def apply(self, event: ev.Event, names: tuple[str, ...]) -> None:
        creates = isinstance(event, ev.PoolCreated | ev.QueueCreated)
        if creates and (self.created is None or _newer(event, self.created)):
            self.created = event
        if _newer(self.last, event):
            self.last = event
        for name in names:
            value = getattr(event, name)
            current = self.settings.get(name)
            if value is not msgspec.UNSET and (current is None or _newer(current.event, event)):
                self.settings[name] = _Setting(event, value)

    def get(self, name: str) -> object:
        setting = self.settings.get(name)
        return None if setting is None else setting.value

    @property
    def created_at(self) -> datetime | None:
        return self.created.at if self.created else None

    @property
    def updated_at(self) -> datetime | None:
        return self.last.at if self.last else None

    def retained(self) -> list[ev.Event]:
        """The events this record still depends on; folding them alone rebuilds it."""
        kept = [self.created, self.last] + [s.event for s in self.settings.values()]
        return [e for e in kept if e is not None]


Record = _TaskRecord | _WorkerRecord | _SettingsRecord
"""One entity's fold state (see :meth:`Ledger.records`)."""


def retain(records: Iterable[Record], kept: dict[str, ev.Event]) -> None:
    """Add the events these records still depend on to ``kept``, by id: a claim is both its
    task's and its worker's."""
    for record in records:
        for event in record.retained():
            kept[event.id] = event


_POOL_FIELDS = ("concurrency_limit", "paused")
_QUEUE_FIELDS = ("priority", "concurrency_limit", "paused")


@dataclass(slots=True)
class Changes:
    """Which entities an applied batch touched, so stores refresh only those."""

    tasks: set[str] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    pools: set[str] = field(default_factory=set)
    queues: set[tuple[str, str]] = field(default_factory=set)

    def clear(self) -> None:
        """Start collecting the next batch."""
        for touched in (self.tasks, self.workers, self.pools, self.queues):
            touched.clear()


class Ledger:
    """The whole fold state. ``apply`` records what changed in ``changes``."""

    def __init__(self) -> None:
        self._tasks: dict[str, _TaskRecord] = {}
        self._workers: dict[str, _WorkerRecord] = {}
        self._pools: dict[str, _SettingsRecord] = {}
        self._queues: dict[tuple[str, str], _SettingsRecord] = {}
        self.changes = Changes()

    def apply(self, event: ev.Event) -> None:
        """Fold one stamped event (``id`` and ``at`` set) into the state."""
        family = event.family
        if family == "task":
            self._apply_task(event)
        elif family == "worker":
            worker: str = event.worker  # type: ignore[attr-defined]
            self._worker(worker).apply(event)
            self.changes.workers.add(worker)
        elif family == "pool":
            pool: str = event.pool  # type: ignore[attr-defined]
            self._pools.setdefault(pool, _SettingsRecord()).apply(event, _POOL_FIELDS)
            self.changes.pools.add(pool)
        elif family == "queue":
            key = (event.pool, event.queue)  # type: ignore[attr-defined]
            self._queues.setdefault(key, _SettingsRecord()).apply(event, _QUEUE_FIELDS)
            self.changes.queues.add(key)

    def _apply_task(self, event: ev.Event) -> None:
        key: str = event.task  # type: ignore[attr-defined]
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = _TaskRecord(key)
        task.apply(event)
        self.changes.tasks.add(key)
        kind = type(event)
        if kind is ev.TaskClaimed or kind is ev.TaskStarted:
            worker: str = event.worker  # type: ignore[attr-defined]
            self._worker(worker).saw(event)
            self.changes.workers.add(worker)

    def _worker(self, worker: str) -> _WorkerRecord:
        record = self._workers.get(worker)
        if record is None:
            record = self._workers[worker] = _WorkerRecord(worker)
        return record

    def task(self, task: str) -> TaskView | None:
        """The task's current view, or None if no event named it."""
        record = self._tasks.get(task)
        return record.view() if record else None

    def worker(self, worker: str) -> WorkerView | None:
        """The worker's current view, or None if no event named it or it was forgotten."""
        record = self._workers.get(worker)
        return record.view() if record and not record.is_forgotten else None

    def pool(self, pool: str) -> PoolView | None:
        """The pool's settings, or None if no pool event named it."""
        record = self._pools.get(pool)
        if record is None:
            return None
        return PoolView(
            pool=pool,
            concurrency_limit=record.get("concurrency_limit"),  # type: ignore[arg-type]
            paused=bool(record.get("paused")),
            created_at=record.created_at,
            updated_at=record.updated_at,
        )

    def queue(self, pool: str, queue: str) -> QueueView | None:
        """The queue's settings, or None if no queue event named it."""
        record = self._queues.get((pool, queue))
        if record is None:
            return None
        return QueueView(
            pool=pool,
            queue=queue,
            priority=record.get("priority"),  # type: ignore[arg-type]
            concurrency_limit=record.get("concurrency_limit"),  # type: ignore[arg-type]
            paused=bool(record.get("paused")),
            created_at=record.created_at,
            updated_at=record.updated_at,
        )

    def records(self) -> list[Record]:
        """Every record as of now. The events they retain (:func:`retain`) fold back into
        exactly this state, in any order, since the fold is order-free and keeps only the
        latest event of each kind it needs: a snapshot keeps those, read a few at a time."""
        return [
            *self._tasks.values(),
            *self._workers.values(),
            *self._pools.values(),
            *self._queues.values(),
        ]

    def intervals(self, task: str) -> list[SlotInterval]:
        """The task's slot stretches, or [] if no event named it."""
        record = self._tasks.get(task)
        return record.intervals() if record else []

    def sessions(self, worker: str) -> list[WorkerSession]:
        """The worker's sessions, or [] if it never sent ``worker.started``."""
        record = self._workers.get(worker)
        return record.sessions() if record else []

    def task_ids(self) -> list[str]:
        """Every task named so far."""
        return list(self._tasks)

    def worker_ids(self) -> list[str]:
        """Every worker named so far."""
        return list(self._workers)

    def pool_ids(self) -> list[str]:
        """Every pool with a pool event."""
        return list(self._pools)

    def queue_ids(self) -> list[tuple[str, str]]:
        """Every (pool, queue) with a queue event."""
        return list(self._queues)
