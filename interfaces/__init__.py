"""workledger: an event-sourced ledger of workers, slots and utilization on NATS JetStream.

The names most users need, in one place::

    from workledger import Publisher, LogConfig, WorkerStarted

Everything else lives in ``workledger.core`` (events, codecs, the log), ``workledger.projections``
(the fold and the daemon) and ``workledger.stores`` (read models).
"""

from workledger.core.errors import (
    DaemonUnavailableError,
    InvalidEventError,
    LogError,
    PublishError,
    StoreError,
    StreamNotFoundError,
    WorkledgerError,
)
from workledger.core.events import (
    Event,
    PoolCreated,
    PoolUpdated,
    QueueCreated,
    QueueUpdated,
    TaskCancelled,
    TaskClaimed,
    TaskCompleted,
    TaskCrashed,
    TaskFailed,
    TaskProgress,
    TaskRetrying,
    TaskStarted,
    TaskSubmitted,
    WorkerHeartbeat,
    WorkerStarted,
    WorkerStopped,
    WorkerSubscribed,
)
from workledger.core.log import LogConfig
from workledger.core.publisher import Publisher, SyncPublisher
from workledger.projections.views import TaskStatus, WorkerStatus
from workledger.stores.memory import MemoryStore

__all__ = [
    "DaemonUnavailableError",
    "Event",
    "InvalidEventError",
    "LogConfig",
    "LogError",
    "MemoryStore",
    "PoolCreated",
    "PoolUpdated",
    "PublishError",
    "Publisher",
    "QueueCreated",
    "QueueUpdated",
    "StoreError",
    "StreamNotFoundError",
    "SyncPublisher",
    "TaskCancelled",
    "TaskClaimed",
    "TaskCompleted",
    "TaskCrashed",
    "TaskFailed",
    "TaskProgress",
    "TaskRetrying",
    "TaskStarted",
    "TaskStatus",
    "TaskSubmitted",
    "WorkerHeartbeat",
    "WorkerStarted",
    "WorkerStatus",
    "WorkerStopped",
    "WorkerSubscribed",
    "WorkledgerError",
]
