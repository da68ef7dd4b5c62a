"""Instrumentation: a few lines that make an existing worker visible to workledger.

Adopting workledger should take minutes, so this wraps the two things every worker has::

    info = WorkerInfo(worker="render-7", pool="gpu", queues=("render",), slots=2)
    async with Publisher(config) as pub:
        worker = AsyncWorker(pub, info)
        async with worker.running():              # worker.started, heartbeats, worker.stopped
            async with worker.task("job-1", queue="render") as job:
                ...                               # task.claimed + task.started before,
                await job.progress(0.5)           # task.completed or task.failed after

        @worker.tracked(task_key="thumbnail")     # the same around every call
        async def thumbnail(path: str) -> None: ...

:class:`SyncWorker` does the same for threads and plain scripts, over a
:class:`~workledger.core.publisher.SyncPublisher`, with the heartbeat in a thread.

Every task event carries the worker's ``pool`` (and the queue when known), so it routes under
that pool's subject: without it a task event routes under ``<prefix>._``, which every daemon
partitioned by pool reads and sorts out (see ``docs/scaling.md``). Event times are taken when
the work starts and ends, not when the publisher gets to send them, so durations in the read
model are the work's own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, Self, TypeVar

import anyio
import msgspec

from workledger.core import events as ev
from workledger.core.errors import WorkledgerError
from workledger.core.publisher import Publisher, SyncPublisher

__all__ = [
    "AsyncWorker",
    "SyncTaskHandle",
    "SyncWorker",
    "TaskHandle",
    "WorkerInfo",
    "describe_error",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_log = logging.getLogger(__name__)
_MAX_TEXT = 4096
TaskIdOf = Callable[..., str]


def _now() -> datetime:
    return datetime.now(UTC)


def describe_error(exc: BaseException) -> str:
    """``"ValueError: bad input"``, cut to the 4096 characters an event's text may hold."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_TEXT]


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Who the worker is and what it can take: the fields of its ``worker.started``.

    ``host`` and ``pid`` default to this process's, so two copies of a script on two machines
    are told apart without configuration.
    """

    worker: str
    pool: str
    queues: tuple[str, ...] = ()
    task_keys: tuple[str, ...] = ()
    slots: int = 1
    heartbeat_interval: float = 30.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    host: str | None = msgspec.field(default_factory=socket.gethostname)
    pid: int | None = msgspec.field(default_factory=os.getpid)

    def started(self) -> ev.WorkerStarted:
        """The registration event."""
        fields = msgspec.structs.asdict(self)
        return ev.WorkerStarted(**fields, at=_now())

    def heartbeat(self) -> ev.WorkerHeartbeat:
        """One heartbeat, now."""
        return ev.WorkerHeartbeat(worker=self.worker, pool=self.pool, at=_now())

    def stopped(self, exc: BaseException | None = None) -> ev.WorkerStopped:
        """The shutdown event; an exception that ended the worker becomes its reason."""
        reason = describe_error(exc) if exc is not None else None
        return ev.WorkerStopped(worker=self.worker, pool=self.pool, reason=reason, at=_now())


class _UnitOfWork:
    """The events of one unit of work on one worker; both the async and sync helpers use it."""

    def __init__(
        self,
        info: WorkerInfo,
        task: str | None,
        *,
        queue: str | None,
        task_key: str | None,
        submit: bool,
    ) -> None:
        self.info = info
        self.task = task or ev.new_event_id()
        self.queue = queue or (info.queues[0] if len(info.queues) == 1 else None)
        self.task_key = task_key
        self.submit = submit

    def opening(self) -> list[ev.Event]:
        """Optionally submitted, then claimed and started at one instant: it holds a slot."""
        at, route = _now(), self._route()
        opened: list[ev.Event] = []
        if self.submit:
            queue = self.queue or "default"
            opened.append(ev.TaskSubmitted(**route, queue=queue, task_key=self.task_key, at=at))
        opened.append(ev.TaskClaimed(**route, worker=self.info.worker, queue=self.queue, at=at))
        opened.append(ev.TaskStarted(**route, worker=self.info.worker, queue=self.queue, at=at))
        return opened

    def closing(self, exc: BaseException | None) -> ev.Event:
        """Completed, or how it ended: failed (an error), cancelled, or crashed (an exit)."""
        route, at = self._route(), _now()
        if exc is None:
            return ev.TaskCompleted(**route, at=at)
        if isinstance(exc, Exception):
            return ev.TaskFailed(**route, error=describe_error(exc), at=at)
        if isinstance(exc, anyio.get_cancelled_exc_class() | asyncio.CancelledError):
            return ev.TaskCancelled(**route, at=at)
        return ev.TaskCrashed(**route, reason=describe_error(exc), at=at)

    def progress(self, fraction: float | None, message: str | None) -> ev.TaskProgress:
        """How far along it is."""
        return ev.TaskProgress(**self._route(), progress=fraction, message=message, at=_now())

    def _route(self) -> dict[str, Any]:
        return {"task": self.task, "pool": self.info.pool}


def _task_id(task_id: TaskIdOf | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return task_id(*args, **kwargs) if task_id is not None else ev.new_event_id()


# --- asyncio ---------------------------------------------------------------------------------


class TaskHandle:
    """The unit of work in progress (async): its task id, and a way to report progress."""

    def __init__(self, publisher: Publisher, unit: _UnitOfWork) -> None:
        self._publisher = publisher
        self._unit = unit

    @property
    def task(self) -> str:
        """The task id its events carry."""
        return self._unit.task

    async def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Publish ``task.progress`` (a fraction in [0, 1], a message, or both)."""
        await self._publisher.publish(self._unit.progress(fraction, message))


class AsyncWorker:
    """One worker's instrumentation on an asyncio :class:`Publisher` (see the module doc)."""

    def __init__(self, publisher: Publisher, info: WorkerInfo) -> None:
        self.publisher = publisher
        self.info = info
        self.heartbeats = 0  # sent so far; tests and health checks read it

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        """``worker.started`` now, a heartbeat every interval, ``worker.stopped`` on the way out.

        The final event is published even when the block is cancelled (shielded), so a worker
        that is shut down is seen to stop rather than go silent.
        """
        await self.publisher.publish(self.info.started())
        beating = asyncio.create_task(self._beat(), name=f"heartbeat {self.info.worker}")
        error: BaseException | None = None
        try:
            yield self
        except BaseException as exc:
            error = exc
            raise
        finally:
            beating.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(beating, return_exceptions=True)
                await self.publisher.publish(self.info.stopped(error))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.info.heartbeat_interval)
            try:
                await self.publisher.publish(self.info.heartbeat())
            except WorkledgerError as exc:
                _log.warning("heartbeat of %s stopped: %s", self.info.worker, exc)
                return
            self.heartbeats += 1

    @asynccontextmanager
    async def task(
        self,
        task: str | None = None,
        *,
        queue: str | None = None,
        task_key: str | None = None,
        submit: bool = False,
    ) -> AsyncIterator[TaskHandle]:
        """Claimed and started on entry; completed, failed (with the error), cancelled or
        crashed on exit. The exception, if any, propagates unchanged.

        ``task`` defaults to a fresh id. ``submit=True`` also publishes ``task.submitted``
        first, for work that no producer announced (it then needs a queue: the one given, the
        worker's only queue, or ``default``); leave it off when a producer already did, so its
        fields (priority, item) are not overwritten.
        """
        unit = _UnitOfWork(self.info, task, queue=queue, task_key=task_key, submit=submit)
        for event in unit.opening():
            await self.publisher.publish(event)
        error: BaseException | None = None
        try:
            yield TaskHandle(self.publisher, unit)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._publish_closing(unit, error)

    async def _publish_closing(self, unit: _UnitOfWork, error: BaseException | None) -> None:
        """The work's own exception wins over a failure to report it."""
        try:
            await self.publisher.publish(unit.closing(error))
        except WorkledgerError:
            if error is None:
                raise
            _log.exception("could not publish the end of task %s", unit.task)

    def tracked(
        self,
        *,
        task_key: str | None = None,
        queue: str | None = None,
        task_id: TaskIdOf | None = None,
        submit: bool = False,
    ) -> Callable[[Callable[_P, Awaitable[_R]]], Callable[_P, Coroutine[Any, Any, _R]]]:
        """A decorator: every call of the coroutine function is one :meth:`task`.

        ``task_id(*args, **kwargs)`` names the task from the call's arguments (default: a
        fresh id per call).
        """

        def decorate(func: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
            @functools.wraps(func)
            async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                name = _task_id(task_id, args, kwargs)
                async with self.task(name, queue=queue, task_key=task_key, submit=submit):
                    return await func(*args, **kwargs)

            return wrapper

        return decorate


# --- threads ---------------------------------------------------------------------------------


class SyncTaskHandle:
    """The unit of work in progress (sync): its task id, and a way to report progress."""

    def __init__(self, publisher: SyncPublisher, unit: _UnitOfWork) -> None:
        self._publisher = publisher
        self._unit = unit

    @property
    def task(self) -> str:
        """The task id its events carry."""
        return self._unit.task

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Publish ``task.progress`` (a fraction in [0, 1], a message, or both)."""
        self._publisher.publish(self._unit.progress(fraction, message))


class SyncWorker:
    """:class:`AsyncWorker` for threads and plain scripts, on a :class:`SyncPublisher`.

    The heartbeat runs in a daemon thread, so it keeps beating while the main thread is busy
    in code that never yields.
    """

    def __init__(self, publisher: SyncPublisher, info: WorkerInfo) -> None:
        self.publisher = publisher
        self.info = info
        self.heartbeats = 0

    @contextmanager
    def running(self) -> Iterator[Self]:
        """See :meth:`AsyncWorker.running`."""
        self.publisher.publish(self.info.started())
        stop = threading.Event()
        beating = threading.Thread(
            target=self._beat, args=(stop,), name=f"heartbeat {self.info.worker}", daemon=True
        )
        beating.start()
        error: BaseException | None = None
        try:
            yield self
        except BaseException as exc:
            error = exc
            raise
        finally:
            stop.set()
            beating.join()
            self.publisher.publish(self.info.stopped(error))

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.info.heartbeat_interval):
            try:
                self.publisher.publish(self.info.heartbeat())
            except WorkledgerError as exc:
                _log.warning("heartbeat of %s stopped: %s", self.info.worker, exc)
                return
            self.heartbeats += 1

    @contextmanager
    def task(
        self,
        task: str | None = None,
        *,
        queue: str | None = None,
        task_key: str | None = None,
        submit: bool = False,
    ) -> Iterator[SyncTaskHandle]:
        """See :meth:`AsyncWorker.task`."""
        unit = _UnitOfWork(self.info, task, queue=queue, task_key=task_key, submit=submit)
        for event in unit.opening():
            self.publisher.publish(event)
        error: BaseException | None = None
        try:
            yield SyncTaskHandle(self.publisher, unit)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._publish_closing(unit, error)

    def _publish_closing(self, unit: _UnitOfWork, error: BaseException | None) -> None:
        try:
            self.publisher.publish(unit.closing(error))
        except WorkledgerError:
            if error is None:
                raise
            _log.exception("could not publish the end of task %s", unit.task)

    def tracked(
        self,
        *,
        task_key: str | None = None,
        queue: str | None = None,
        task_id: TaskIdOf | None = None,
        submit: bool = False,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """See :meth:`AsyncWorker.tracked`; for plain functions."""

        def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
            @functools.wraps(func)
            def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                name = _task_id(task_id, args, kwargs)
                with self.task(name, queue=queue, task_key=task_key, submit=submit):
                    return func(*args, **kwargs)

            return wrapper

        return decorate
