"""The event model: one tagged union of frozen msgspec Structs.

A tag in the log is permanent. New fields come with defaults; a field never changes type; a
breaking change gets a new ``v`` and an upcaster in :mod:`workledger.core.codec` (there is none
yet: every type is at v1, and an event with a newer ``v`` than the daemon knows is set aside
with that reason, so upgrading the daemon and rebuilding applies it later).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

import msgspec
import uuid_utils

__all__ = [
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
    "WorkerHeartbeat",
    "WorkerStarted",
    "WorkerStopped",
    "WorkerSubscribed",
    "event_types",
    "new_event_id",
]

SCHEMA_VERSION = 1

# Limits keep one bad producer from exhausting a daemon's memory.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Names = Annotated[tuple[Name, ...], msgspec.Meta(max_length=1024)]
Labels = Annotated[dict[Name, Text], msgspec.Meta(max_length=128)]
Slots = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


def new_event_id() -> str:
    """A globally unique, time-ordered id (UUIDv7); also the JetStream ``Nats-Msg-Id``."""
    return str(uuid_utils.uuid7())


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    """Fields every event carries. ``id`` and ``at`` are filled at publish time when missing."""

    family: ClassVar[str]
    id: Annotated[str, msgspec.Meta(max_length=128)] = ""
    at: UtcTime | None = None
    v: Annotated[int, msgspec.Meta(ge=1)] = SCHEMA_VERSION

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
    pid: Annotated[int, msgspec.Meta(ge=0)] | None = None


class WorkerHeartbeat(_WorkerEvent, frozen=True, kw_only=True, tag="worker.heartbeat"):
    """The worker is still alive."""


class WorkerSubscribed(_WorkerEvent, frozen=True, kw_only=True, tag="worker.subscribed"):
    """The worker now also takes these task keys (added to those it started with)."""

    task_keys: Names


class WorkerStopped(_WorkerEvent, frozen=True, kw_only=True, tag="worker.stopped"):
    """The worker shut down on purpose."""

    reason: Text | None = None


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
    priority: int | None = None
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

    attempt: Annotated[int, msgspec.Meta(ge=0)] | None = None
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
    priority: int | msgspec.UnsetType | None = msgspec.UNSET
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
