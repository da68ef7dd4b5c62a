"""What the read models answer with: plain frozen Structs, the same from every store."""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

__all__ = [
    "HOLDING_SLOT",
    "TERMINAL",
    "PoolView",
    "Quarantined",
    "QueueView",
    "SlotCount",
    "SlotHolder",
    "SlotInterval",
    "TaskStatus",
    "TaskView",
    "WorkerSession",
    "WorkerStatus",
    "WorkerView",
    "WorkerWithStatus",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. PENDING and RUNNING hold a slot."""

    UNKNOWN = "UNKNOWN"  # only progress seen so far
    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"

    @property
    def holds_slot(self) -> bool:
        """PENDING (claimed) and RUNNING tasks occupy one of their worker's slots."""
        return self in HOLDING_SLOT

    @property
    def terminal(self) -> bool:
        """A terminal status is never undone by a later or late event."""
        return self in TERMINAL


# The same as sets, for hot loops: a set lookup costs less than a property call.
HOLDING_SLOT = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})
TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.CRASHED}
)


class WorkerStatus(enum.StrEnum):
    """Computed at query time from the last event seen and the query's clock.

    STOPPED and LOST are final until the worker starts again: STOPPED by the worker's own
    ``worker.stopped``, LOST by a reaper's ``worker.lost``.
    """

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    STOPPED = "STOPPED"
    LOST = "LOST"


class TaskView(msgspec.Struct, frozen=True, gc=False):
    """One task as the log tells it. ``slot_acquired_at`` starts the current slot stretch.

    Not keyword-only, unlike the other views: the fold builds one per task each batch touches,
    and by position that is ~4x cheaper (tests/test_fold.py holds it to the field order).
    """

    task: str
    status: TaskStatus
    pool: str | None = None
    queue: str | None = None
    task_key: str | None = None
    stage: str | None = None
    priority: int | None = None
    item: str | None = None
    worker: str | None = None
    submitted_at: datetime | None = None
    slot_acquired_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    retries: int = 0
    progress: float | None = None
    message: str | None = None
    error: str | None = None


class WorkerView(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One worker's registration and liveness facts, before a clock is applied."""

    worker: str
    pool: str | None = None  # None only for a worker named by task events alone
    queues: tuple[str, ...] = ()
    task_keys: tuple[str, ...] = ()
    slots: int = 1
    heartbeat_interval: float = 30.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    host: str | None = None
    pid: int | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    last_seen: datetime | None = None
    stopped: bool = False
    lost: bool = False  # declared dead by ``worker.lost`` since its latest start


class WorkerWithStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A worker with what a clock says about it and the tasks it holds now."""

    worker: WorkerView
    status: WorkerStatus
    tasks: tuple[str, ...]
    free_slots: int


class SlotHolder(msgspec.Struct, frozen=True, kw_only=True):
    """A task holding a slot: claimed (PENDING) or RUNNING."""

    task: str
    status: TaskStatus
    pool: str | None
    queue: str | None
    worker: str | None
    since: datetime | None


class SlotCount(msgspec.Struct, frozen=True, kw_only=True):
    """How many slots are held in one pool (``queue`` None) or one queue of a pool."""

    pool: str | None
    queue: str | None
    held: int


class PoolView(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's settings; ``None`` means never set."""

    pool: str
    concurrency_limit: int | None = None
    paused: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class QueueView(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's settings within its pool; ``None`` means never set."""

    pool: str
    queue: str
    priority: int | None = None
    concurrency_limit: int | None = None
    paused: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Quarantined(msgspec.Struct, frozen=True, kw_only=True):
    """A message that could not be applied, set aside with the reason; nothing is lost."""

    seq: int
    subject: str
    reason: str
    data: bytes
    size: int


class SlotInterval(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One stretch of a task holding a slot: from its first claim or start after a retry
    (or ever) to the next retry or its terminal event. ``released_at`` None: still held.

    ``started_at`` is when it began RUNNING in this stretch (None if it never did); busy time
    is ``started_at`` to ``released_at``.
    """

    task: str
    attempt: int
    worker: str | None
    pool: str | None
    queue: str | None
    task_key: str | None
    stage: str | None
    acquired_at: datetime
    started_at: datetime | None
    released_at: datetime | None
    ended: TaskStatus | None  # RETRYING or a terminal status; None while held


class WorkerSession(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One run of a worker, from a ``worker.started``.

    It ends at its ``worker.stopped``, or at the ``worker.lost`` that declared it dead;
    failing that, at the worker's next start; failing that (the latest session), when it went
    OFFLINE: ``last_seen`` plus the liveness grace, which
    depends on the query's multiplier and so is decided at query time.
    """

    worker: str
    pool: str
    queues: tuple[str, ...]
    task_keys: tuple[str, ...]
    slots: int
    heartbeat_interval: float
    started_at: datetime
    stopped_at: datetime | None
    next_started_at: datetime | None
    last_seen: datetime | None
