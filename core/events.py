"""The event model: one tagged union of frozen msgspec Structs.

A tag in the log is permanent. New fields come with defaults; a field never changes type; a
breaking change gets a new ``v`` and an upcaster in :mod:`workledger.core.codec` (there is none
yet: every type is at v1, and an event with a newer ``v`` than the daemon knows is set aside
with that reason, so upgrading the daemon and rebuilding applies it later).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, ClassVar

import msgspec
import uuid_utils

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_EVENT_BYTES",
    "SCHEMA_VERSION",
    "TERMINAL_TYPES",
    "Event",
    "EventType",
    "PoolCreated",
    "PoolUpdated",
    "QueueCreated",
    "QueueUpdated",
    "TaskCancelled",
    "TaskClaimed",
    "TaskCompleted",
    "TaskCrashed",
    "TaskFailed",
    "TaskProgress",
    "TaskRetrying",
    "TaskStarted",
    "TaskSubmitted",
    "WorkerForgotten",
    "WorkerHeartbeat",
    "WorkerLost",
    "WorkerStarted",
    "WorkerStopped",
    "WorkerSubscribed",
    "event_types",
    "new_event_id",
]

SCHEMA_VERSION = 1

# Limits keep one bad producer from exhausting a daemon's memory, and keep every value inside
# what the stores can hold (DuckDB BIGINT, Python datetime arithmetic): a value a store would
# refuse must be refused here, where it quarantines one message, not in the store, where it
# would fail the whole batch again on every retry. docs/wire.md lists them.
MAX_EVENT_BYTES = 256 * 1024  # the default; the daemon and the Publisher take their own
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # event times outside [EARLIEST, LATEST) are
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # a broken clock, not history
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Names = Annotated[tuple[Name, ...], msgspec.Meta(max_length=1024)]
Labels = Annotated[dict[Name, Text], msgspec.Meta(max_length=128)]
Slots = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


def new_event_id() -> str:
    """A globally unique, time-ordered id (UUIDv7); also the JetStream ``Nats-Msg-Id``."""
    return str(uuid_utils.uuid7())


class Event(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True, gc=False
):
    """Fields every event carries. ``id`` and ``at`` are filled at publish time when missing.

    ``gc=False``: an event refers to no event, so it can be in no reference cycle, and the
    millions a daemon keeps are not walked by every garbage collection.
    """

    family: ClassVar[str]
    id: Annotated[str, msgspec.Meta(max_length=128)] = ""
    at: UtcTime | None = None
    v: Annotated[int, msgspec.Meta(ge=1)] = SCHEMA_VERSION

    def __post_init__(self) -> None:
        """Refuse a time no clock should give (msgspec reports it as a validation error).

        Every decoded event passes here: the usual UTC time is checked inline, which made
        decoding ~10% faster than a call per event (benchmarks/HISTORY.md, session 16)."""
        at = self.at
        if at is not None and (at.tzinfo is not UTC or not EARLIEST <= at < LATEST):
            _check_time("at", at)

    @property
    def type(self) -> str:
        """The wire tag, e.g. ``worker.started``."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    @property
    def pool_key(self) -> str | None:
        """The pool this event routes under, if it names one."""
        return getattr(self, "pool", None)

    @property
    def entity_key(self) -> str:
        """The id of the entity the event is about (worker, task, pool or queue)."""
        return str(getattr(self, self.family))

    @property
    def order_key(self) -> tuple[datetime, str]:
        """The total order folds use to pick the latest of two events: event time, then id."""
        assert self.at is not None, "events are stamped before they are folded"
        return (self.at, self.id)


def _check_time(name: str, moment: datetime | None) -> None:
    if moment is None:
        return
    try:
        utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = LATEST  # 9999-12-31T23:59-05:00 is in year 10000 in UTC
    if not EARLIEST <= utc < LATEST:
        raise ValueError(
            f"`{name}` {moment.isoformat()} is outside {EARLIEST.year}-{LATEST.year - 1} "
            "(is the producer's clock set?)"
        )


# --- workers ---------------------------------------------------------------------------------


class _WorkerEvent(Event, frozen=True, kw_only=True):
    family: ClassVar[str] = "worker"
    worker: Name
    pool: Name


class WorkerStarted(_WorkerEvent, frozen=True, kw_only=True, tag="worker.started"):
    """A worker came online and says what it can take."""

    queues: Names = ()
    task_keys: Names = ()
    slots: Slots = 1
    heartbeat_interval: Seconds = 30.0
    labels: Labels = msgspec.field(default_factory=dict)
    host: Name | None = None
    pid: Count | None = None


class WorkerHeartbeat(_WorkerEvent, frozen=True, kw_only=True, tag="worker.heartbeat"):
    """The worker is still alive."""


class WorkerSubscribed(_WorkerEvent, frozen=True, kw_only=True, tag="worker.subscribed"):
    """The worker now also takes these task keys (added to those it started with)."""

    task_keys: Names


class WorkerStopped(_WorkerEvent, frozen=True, kw_only=True, tag="worker.stopped"):
    """The worker shut down on purpose."""

    reason: Text | None = None


class WorkerLost(_WorkerEvent, frozen=True, kw_only=True, tag="worker.lost"):
    """A reaper declared the worker dead: no sign of life since ``last_seen``.

    It ends the session that ``last_seen`` falls in; the worker is LOST until a
    ``worker.started`` after ``last_seen``. Its tasks get their own ``task.crashed``.
    """

    last_seen: UtcTime
    reason: Text | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_time("last_seen", self.last_seen)


class WorkerForgotten(_WorkerEvent, frozen=True, kw_only=True, tag="worker.forgotten"):
    """A reaper dropped a long-gone worker from the live view; its history stays."""


# --- tasks -----------------------------------------------------------------------------------


class _TaskEvent(Event, frozen=True, kw_only=True):
    family: ClassVar[str] = "task"
    task: Name
    pool: Name | None = None  # a routing hint; the fold takes the pool from task.submitted


class TaskSubmitted(_TaskEvent, frozen=True, kw_only=True, tag="task.submitted"):
    """A task entered a queue."""

    pool: Name
    queue: Name
    task_key: Name | None = None
    priority: Int64 | None = None
    stage: Name | None = None
    item: Text | None = None


class TaskClaimed(_TaskEvent, frozen=True, kw_only=True, tag="task.claimed"):
    """A worker claimed the task: it now holds a slot (PENDING)."""

    worker: Name
    queue: Name | None = None


class TaskStarted(_TaskEvent, frozen=True, kw_only=True, tag="task.started"):
    """The task is running on the worker; it holds a slot."""

    worker: Name
    queue: Name | None = None


class TaskProgress(_TaskEvent, frozen=True, kw_only=True, tag="task.progress"):
    """How far along a running task is."""

    progress: Fraction | None = None
    message: Text | None = None


class TaskRetrying(_TaskEvent, frozen=True, kw_only=True, tag="task.retrying"):
    """The attempt failed and the task will run again: its slot is released until reclaimed."""

    attempt: Count | None = None
    error: Text | None = None


class TaskCompleted(_TaskEvent, frozen=True, kw_only=True, tag="task.completed"):
    """Terminal: the task succeeded."""


class TaskFailed(_TaskEvent, frozen=True, kw_only=True, tag="task.failed"):
    """Terminal: the task failed for good."""

    error: Text | None = None


class TaskCancelled(_TaskEvent, frozen=True, kw_only=True, tag="task.cancelled"):
    """Terminal: the task was cancelled."""


class TaskCrashed(_TaskEvent, frozen=True, kw_only=True, tag="task.crashed"):
    """Terminal: the task died with its worker or process."""

    reason: Text | None = None


# --- pools and queues ------------------------------------------------------------------------


class _PoolEvent(Event, frozen=True, kw_only=True):
    """A field left out changes nothing; ``null`` clears it (e.g. lifts a concurrency limit)."""

    family: ClassVar[str] = "pool"
    pool: Name
    concurrency_limit: Limit | msgspec.UnsetType | None = msgspec.UNSET
    paused: bool | msgspec.UnsetType = msgspec.UNSET


class PoolCreated(_PoolEvent, frozen=True, kw_only=True, tag="pool.created"):
    """A pool exists; fields left out stay unset."""


class PoolUpdated(_PoolEvent, frozen=True, kw_only=True, tag="pool.updated"):
    """Change the fields given; fields left out keep their value."""


class _QueueEvent(Event, frozen=True, kw_only=True):
    """A field left out changes nothing; ``null`` clears it."""

    family: ClassVar[str] = "queue"
    pool: Name
    queue: Name
    priority: Int64 | msgspec.UnsetType | None = msgspec.UNSET
    concurrency_limit: Limit | msgspec.UnsetType | None = msgspec.UNSET
    paused: bool | msgspec.UnsetType = msgspec.UNSET


class QueueCreated(_QueueEvent, frozen=True, kw_only=True, tag="queue.created"):
    """A queue exists in a pool; fields left out stay unset."""


class QueueUpdated(_QueueEvent, frozen=True, kw_only=True, tag="queue.updated"):
    """Change the fields given; fields left out keep their value."""


EventType = (
    WorkerStarted
    | WorkerHeartbeat
    | WorkerSubscribed
    | WorkerStopped
    | WorkerLost
    | WorkerForgotten
    | TaskSubmitted
    | TaskClaimed
    | TaskStarted
    | TaskProgress
    | TaskRetrying
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
    | TaskCrashed
    | PoolCreated
    | PoolUpdated
    | QueueCreated
    | QueueUpdated
)

TERMINAL_TYPES: frozenset[type[Event]] = frozenset(
    {TaskCompleted, TaskFailed, TaskCancelled, TaskCrashed}
)


def event_types() -> dict[str, type[Event]]:
    """Every event class by its wire tag."""
    return {cls.__struct_config__.tag: cls for cls in EventType.__args__}
