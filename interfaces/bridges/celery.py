"""Celery's event stream → workledger events.

Celery workers already broadcast what they do when events are on (``celery -A app worker -E``,
or ``worker_send_task_events = True``). This bridge listens like Flower does and publishes the
same facts::

    worker-online / worker-heartbeat / worker-offline  →  worker.started / heartbeat / stopped
    task-sent, task-received                           →  task.submitted (queue, task key)
    task-started                                       →  task.started (worker: the hostname)
    task-succeeded / task-failed                       →  task.completed / task.failed (error)
    task-retried / task-revoked                        →  task.retrying / task.cancelled

Fields: ``hostname`` → worker, ``uuid`` → task, ``name`` → task key, ``queue`` or
``routing_key`` → queue, ``timestamp`` → at, ``exception`` → error, ``freq`` → heartbeat
interval. Celery has no pools, so the bridge puts everything in the pool it is given, and
every task event carries it (a pool-partitioned daemon sees them all). Celery's events do not
say a worker's concurrency either: pass ``slots``.

Event ids are derived from the Celery event (see :mod:`workledger.bridges._ids`), so two
bridges on one broker store each fact once.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from workledger.bridges._ids import stable_id
from workledger.core import events as ev
from workledger.core.publisher import SyncPublisher

__all__ = ["CeleryBridge", "CeleryTranslator"]

_log = logging.getLogger(__name__)
_MAX_TEXT = 4096
CeleryEvent = Mapping[str, Any]
_Handler = Callable[[CeleryEvent], list[ev.Event]]


class _KnownTask(msgspec.Struct):
    """What later events about a task leave out: its name, queue, and how many retries."""

    name: str | None = None
    queue: str | None = None
    retries: int = 0
    submitted: bool = False


class CeleryTranslator:
    """One Celery event (a dict) in, the workledger events it means out.

    Pure but for memory: it remembers each task's name and queue until the task ends (Celery
    says them once), up to ``max_tasks`` tasks, and which workers it has registered (a
    heartbeat from a worker it never saw online registers the worker first, so a bridge
    started after the workers still knows them). Event types it has no mapping for are
    counted in :attr:`ignored`.
    """

    def __init__(
        self,
        *,
        pool: str = "celery",
        slots: int = 1,
        default_queue: str = "celery",
        max_tasks: int = 100_000,
    ) -> None:
        self.pool = pool
        self.slots = slots
        self.default_queue = default_queue
        self.max_tasks = max_tasks
        self.ignored: Counter[str] = Counter()
        self._tasks: OrderedDict[str, _KnownTask] = OrderedDict()
        self._workers: set[str] = set()
        self._handlers: dict[str, _Handler] = {
            "worker-online": self._worker_online,
            "worker-heartbeat": self._worker_heartbeat,
            "worker-offline": self._worker_offline,
            "task-sent": self._task_sent,
            "task-received": self._task_received,
            "task-started": self._task_started,
            "task-succeeded": self._task_succeeded,
            "task-failed": self._task_failed,
            "task-retried": self._task_retried,
            "task-revoked": self._task_revoked,
        }

    def translate(self, event: CeleryEvent) -> list[ev.Event]:
        """The workledger events for one Celery event, stamped with its time and stable ids."""
        kind = str(event.get("type", ""))
        handler = self._handlers.get(kind)
        if handler is None:
            self.ignored[kind] += 1
            return []
        at = _event_time(event)
        identity = (kind, event.get("hostname"), event.get("uuid"), event.get("clock"))
        return [
            msgspec.structs.replace(
                made, at=at, id=stable_id(at, *identity, event.get("timestamp"), i)
            )
            for i, made in enumerate(handler(event))
        ]

    # --- workers -------------------------------------------------------------------------------

    def _worker_online(self, event: CeleryEvent) -> list[ev.Event]:
        self._workers.add(event["hostname"])
        return [self._registration(event)]

    def _worker_heartbeat(self, event: CeleryEvent) -> list[ev.Event]:
        beat = ev.WorkerHeartbeat(worker=event["hostname"], pool=self.pool)
        if event["hostname"] in self._workers:
            return [beat]
        return [*self._worker_online(event), beat]

    def _worker_offline(self, event: CeleryEvent) -> list[ev.Event]:
        self._workers.discard(event["hostname"])
        return [ev.WorkerStopped(worker=event["hostname"], pool=self.pool)]

    def _registration(self, event: CeleryEvent) -> ev.WorkerStarted:
        hostname: str = event["hostname"]
        labels = {
            key: str(event[key])[:_MAX_TEXT]
            for key in ("sw_ident", "sw_ver", "sw_sys")
            if event.get(key)
        }
        return ev.WorkerStarted(
            worker=hostname,
            pool=self.pool,
            slots=self.slots,
            heartbeat_interval=float(event.get("freq") or 2.0),
            labels=labels,
            host=hostname.rpartition("@")[2] or None,
            pid=event.get("pid"),
        )

    # --- tasks ---------------------------------------------------------------------------------

    def _task_sent(self, event: CeleryEvent) -> list[ev.Event]:
        known = self._learn(event)
        known.queue = event.get("queue") or event.get("routing_key") or known.queue
        return [self._submitted(event, known)]

    def _task_received(self, event: CeleryEvent) -> list[ev.Event]:
        known = self._learn(event)
        return [] if known.submitted else [self._submitted(event, known)]

    def _task_started(self, event: CeleryEvent) -> list[ev.Event]:
        known = self._learn(event)
        return [ev.TaskStarted(**self._route(event), worker=event["hostname"], queue=known.queue)]

    def _task_succeeded(self, event: CeleryEvent) -> list[ev.Event]:
        self._forget(event)
        return [ev.TaskCompleted(**self._route(event))]

    def _task_failed(self, event: CeleryEvent) -> list[ev.Event]:
        self._forget(event)
        return [ev.TaskFailed(**self._route(event), error=_text(event.get("exception")))]

    def _task_retried(self, event: CeleryEvent) -> list[ev.Event]:
        known = self._learn(event)
        known.retries += 1
        known.submitted = False  # the retry is sent (and received) again
        error = _text(event.get("exception"))
        return [ev.TaskRetrying(**self._route(event), attempt=known.retries, error=error)]

    def _task_revoked(self, event: CeleryEvent) -> list[ev.Event]:
        self._forget(event)
        return [ev.TaskCancelled(**self._route(event))]

    def _submitted(self, event: CeleryEvent, known: _KnownTask) -> ev.TaskSubmitted:
        known.submitted = True
        return ev.TaskSubmitted(
            **self._route(event),
            queue=known.queue or self.default_queue,
            task_key=known.name,
        )

    def _route(self, event: CeleryEvent) -> dict[str, Any]:
        return {"task": event["uuid"], "pool": self.pool}

    def _learn(self, event: CeleryEvent) -> _KnownTask:
        """The task's record, refreshed with what this event says, most recent last."""
        known = self._tasks.pop(event["uuid"], None) or _KnownTask()
        known.name = event.get("name") or known.name
        known.retries = max(known.retries, int(event.get("retries") or 0))
        self._tasks[event["uuid"]] = known
        while len(self._tasks) > self.max_tasks:
            self._tasks.popitem(last=False)
        return known

    def _forget(self, event: CeleryEvent) -> None:
        self._tasks.pop(event["uuid"], None)


def _event_time(event: CeleryEvent) -> datetime:
    """Celery's ``timestamp`` is the sender's ``time.time()``: seconds since the epoch, UTC."""
    stamp = event.get("timestamp")
    return datetime.fromtimestamp(float(stamp), UTC) if stamp is not None else datetime.now(UTC)


def _text(value: object) -> str | None:
    return None if value is None else str(value)[:_MAX_TEXT]


class CeleryBridge:
    """Consume a Celery app's events (``app.events.Receiver``) and publish their translation.

    Blocking, like Celery's own monitors: call :meth:`run` in a thread or a process of its
    own (``workledger bridge celery``), and :meth:`stop` from elsewhere. ``ready`` is called
    once the receiver's queue is bound, so nothing sent after it is missed.
    """

    def __init__(
        self, app: Any, publisher: SyncPublisher, translator: CeleryTranslator | None = None
    ) -> None:
        self.app = app
        self.publisher = publisher
        default_queue = str(getattr(app.conf, "task_default_queue", None) or "celery")
        self.translator = translator or CeleryTranslator(default_queue=default_queue)
        self.relayed = 0
        self._receiver: Any = None

    def handle(self, event: CeleryEvent) -> None:
        """Translate one Celery event and publish the result (buffered; acks come later)."""
        for translated in self.translator.translate(event):
            self.publisher.publish(translated)
            self.relayed += 1

    def run(self, *, ready: Callable[[], None] | None = None, limit: int | None = None) -> None:
        """Receive until :meth:`stop` (or ``limit`` events); wakes workers up on start."""
        with self.app.connection_for_read() as connection:
            receiver = self.app.events.Receiver(connection, handlers={"*": self.handle})
            if ready is not None:
                _call_when_consuming(receiver, ready)
            self._receiver = receiver
            receiver.capture(limit=limit, timeout=None, wakeup=True)

    def stop(self) -> None:
        """Ask :meth:`run` to return; it does within about a second."""
        if self._receiver is not None:
            self._receiver.should_stop = True


def _call_when_consuming(receiver: Any, ready: Callable[[], None]) -> None:
    """kombu calls ``on_consume_ready`` once the consumer is bound; chain ``ready`` after it."""
    original = receiver.on_consume_ready

    def on_consume_ready(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        ready()

    receiver.on_consume_ready = on_consume_ready
