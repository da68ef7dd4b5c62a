"""The Celery bridge: real Celery event dicts in, workledger events and read model out."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from workledger.bridges.celery import CeleryBridge, CeleryTranslator
from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.publisher import SyncPublisher
from workledger.projections.views import TaskStatus, WorkerStatus

from .conftest import run_in_thread
from .ledger import caught_up, projecting
from .test_fold import fold

celery = pytest.importorskip("celery")
from celery.events import Event  # noqa: E402

T0 = 1_780_000_000.0
HOST = "celery@box-1"


def _history() -> list[dict[str, Any]]:
    """What a worker on box-1 says about three tasks, built by Celery's own ``Event``."""
    return [
        Event("worker-online", hostname=HOST, timestamp=T0, freq=2.0, pid=7, sw_ver="5.7.0"),
        Event(
            "task-sent", uuid="a", name="app.add", queue="math", hostname="client", timestamp=T0 + 1
        ),
        Event(
            "task-received", uuid="a", name="app.add", retries=0, hostname=HOST, timestamp=T0 + 2
        ),
        Event("task-started", uuid="a", hostname=HOST, timestamp=T0 + 3),
        Event("task-succeeded", uuid="a", result="3", runtime=1.0, hostname=HOST, timestamp=T0 + 4),
        Event("task-received", uuid="b", name="app.div", hostname=HOST, timestamp=T0 + 5),
        Event("task-started", uuid="b", hostname=HOST, timestamp=T0 + 6),
        Event(
            "task-failed",
            uuid="b",
            exception="ZeroDivisionError('x')",
            hostname=HOST,
            timestamp=T0 + 7,
        ),
        Event("task-received", uuid="c", name="app.slow", hostname=HOST, timestamp=T0 + 8),
        Event("task-started", uuid="c", hostname=HOST, timestamp=T0 + 9),
        Event("task-retried", uuid="c", exception="Retry in 1s", hostname=HOST, timestamp=T0 + 10),
        Event("task-revoked", uuid="c", terminated=True, hostname=HOST, timestamp=T0 + 11),
        Event("task-rejected", uuid="d", requeue=False, hostname=HOST, timestamp=T0 + 12),
        Event("worker-offline", hostname=HOST, timestamp=T0 + 13),
    ]


def _translate(
    history: list[dict[str, Any]], **kwargs: Any
) -> tuple[CeleryTranslator, list[ev.Event]]:
    translator = CeleryTranslator(pool="math-pool", slots=4, **kwargs)
    return translator, [e for raw in history for e in translator.translate(raw)]


def test_each_celery_event_type_maps_to_its_workledger_event_with_its_fields() -> None:
    """hostname → worker, uuid → task, name → task key, queue, timestamp → at, exception → error."""
    translator, events = _translate(_history())
    assert [e.type for e in events] == [
        "worker.started", "task.submitted", "task.started", "task.completed",
        "task.submitted", "task.started", "task.failed",
        "task.submitted", "task.started", "task.retrying", "task.cancelled",
        "worker.stopped",
    ]  # fmt: skip
    started, submitted = events[0], events[1]
    assert isinstance(started, ev.WorkerStarted)
    assert isinstance(submitted, ev.TaskSubmitted)
    assert (started.worker, started.pool, started.slots, started.heartbeat_interval) == (
        HOST,
        "math-pool",
        4,
        2.0,
    )
    assert (started.host, started.pid, started.labels) == ("box-1", 7, {"sw_ver": "5.7.0"})
    assert (submitted.task, submitted.queue, submitted.task_key) == ("a", "math", "app.add")
    assert submitted.at == datetime.fromtimestamp(T0 + 1, UTC)
    assert all(getattr(e, "pool", None) == "math-pool" for e in events), "pool on every event"
    assert events[6] == ev.TaskFailed(
        task="b", pool="math-pool", error="ZeroDivisionError('x')", at=events[6].at, id=events[6].id
    )
    assert translator.ignored == {"task-rejected": 1}


def test_the_translated_history_folds_into_the_read_model_celery_describes() -> None:
    """Completed, failed with its error, retried once then cancelled; the worker stopped."""
    _, events = _translate(_history(), default_queue="celery")
    store = fold(events)
    tasks = {t.task: t for t in store.tasks(limit=10)}
    assert (tasks["a"].status, tasks["a"].worker, tasks["a"].queue) == (
        TaskStatus.COMPLETED,
        HOST,
        "math",
    )
    assert (tasks["b"].status, tasks["b"].error, tasks["b"].queue) == (
        TaskStatus.FAILED,
        "ZeroDivisionError('x')",
        "celery",
    )
    assert (tasks["c"].status, tasks["c"].retries) == (TaskStatus.CANCELLED, 1)
    (worker,) = store.workers(now=datetime.fromtimestamp(T0 + 14, UTC))
    assert worker.status is WorkerStatus.STOPPED


def test_a_heartbeat_from_a_worker_never_seen_online_registers_it_first() -> None:
    """A bridge started after the workers still learns who they are."""
    _, events = _translate([Event("worker-heartbeat", hostname=HOST, timestamp=T0, freq=5.0)])
    assert [e.type for e in events] == ["worker.started", "worker.heartbeat"]
    assert events[0].heartbeat_interval == 5.0  # type: ignore[attr-defined]


def test_two_bridges_give_the_same_ids_so_jetstream_stores_each_fact_once() -> None:
    """Ids derive from the Celery event, not from the bridge that relays it."""
    _, first = _translate(_history())
    _, second = _translate(_history())
    assert [e.id for e in first] == [e.id for e in second]
    assert len({e.id for e in first}) == len(first)


# --- a real worker ---------------------------------------------------------------------------


@pytest.fixture
def celery_app() -> Any:
    """A Celery app on the in-memory broker, sending task events, polling every 20 ms."""
    app = celery.Celery(
        "wltest", broker="memory://", backend="cache+memory://", set_as_current=False
    )
    app.conf.update(
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"polling_interval": 0.02},
    )

    @app.task(bind=True, name="wltest.work", max_retries=1, default_retry_delay=0)
    def work(self: Any, x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        if x == 99 and self.request.retries == 0:
            raise self.retry(countdown=0)
        return x

    return app


class _Recording(CeleryBridge):
    """The bridge, noting when the worker said goodbye."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.offline = threading.Event()

    def handle(self, event: Any) -> None:
        super().handle(event)
        if event.get("type") == "worker-offline":
            self.offline.set()


@contextmanager
def _bridging(app: Any, config: LogConfig) -> Iterator[_Recording]:
    """A bridge thread relaying ``app``'s events into ``config``'s stream for the block."""
    with SyncPublisher(config) as publisher:
        bridge = _Recording(app, publisher, CeleryTranslator(pool="celery", slots=1))
        ready = threading.Event()
        thread = threading.Thread(target=bridge.run, kwargs={"ready": ready.set}, daemon=True)
        thread.start()
        assert ready.wait(10), "the receiver never bound its queue"
        try:
            yield bridge
        finally:
            bridge.stop()
            thread.join(10)


@pytest.mark.slow
def test_a_real_celery_worker_is_relayed_into_the_read_model(
    celery_app: Any, log_stream: LogConfig
) -> None:
    """A worker on the in-memory broker runs a success, a failure and a retry; we see them all."""
    from celery.contrib.testing.worker import start_worker

    with _bridging(celery_app, log_stream) as bridge:
        with start_worker(celery_app, perform_ping_check=False, without_heartbeat=False):
            work = celery_app.tasks["wltest.work"]
            ok, bad, retried = work.delay(1), work.delay(-1), work.delay(99)
            assert (ok.get(timeout=10), retried.get(timeout=10)) == (1, 99)
            with pytest.raises(ValueError, match="negative"):
                bad.get(timeout=10)
        assert bridge.offline.wait(10), "the worker's goodbye never arrived"
    run_in_thread(_check_real_model, log_stream, (ok.id, bad.id, retried.id))


async def _check_real_model(config: LogConfig, ids: tuple[str, str, str]) -> None:
    async with projecting(config) as (projector, store):
        await caught_up(config, projector)
    ok, bad, retried = (store.task(i) for i in ids)
    assert None not in (ok, bad, retried)
    assert (ok.status, ok.task_key, ok.queue) == (TaskStatus.COMPLETED, "wltest.work", "celery")
    assert (bad.status, bad.error) == (TaskStatus.FAILED, "ValueError('negative')")
    assert (retried.status, retried.retries) == (TaskStatus.COMPLETED, 1)
    (worker,) = store.workers(now=datetime.now(UTC))
    assert (worker.status, worker.worker.worker) == (WorkerStatus.STOPPED, ok.worker)
