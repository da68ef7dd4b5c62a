"""Utilization: hand-computed cases, the SQL version agreeing with the reference, and rebuilds."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.projections.utilization import (
    GROUPINGS,
    Grouping,
    UtilizationRow,
    Window,
    parse_bucket,
    parse_time,
)
from workledger.stores._duckdb_utilization import utilization_sql
from workledger.stores.base import Store
from workledger.stores.memory import MemoryStore

from .histories import BASE, QUEUES, TASKS, WORKERS, histories
from .test_fold import at, fold


def t(seconds: float) -> datetime:
    """BASE plus ``seconds``."""
    return BASE + timedelta(seconds=seconds)


def query(
    events: list[ev.Event],
    by: Grouping,
    window: tuple[float, float],
    *,
    now: float,
    bucket: str | None = None,
    multiplier: float = 3.0,
) -> list[UtilizationRow]:
    """Fold the events and ask the memory store."""
    return fold(events).utilization(
        by=by,
        since=t(window[0]),
        until=t(window[1]),
        now=t(now),
        bucket=parse_bucket(bucket) if bucket else None,
        multiplier=multiplier,
    )


def worker(name: str, seconds: float, slots: int = 2, **fields: Any) -> ev.WorkerStarted:
    """A worker.started in pool p, heartbeat every 30s unless told."""
    fields = {"pool": "p", "heartbeat_interval": 30.0} | fields
    return ev.WorkerStarted(worker=name, slots=slots, **fields, **at(seconds))  # type: ignore[arg-type]


def run(
    task: str, claimed: float, started: float | None, ended: tuple[type[ev.Event], float] | None
) -> list[ev.Event]:
    """A task on worker w in p/q: submitted and claimed, maybe started, maybe ended."""
    out: list[ev.Event] = [
        ev.TaskSubmitted(task=task, pool="p", queue="q", **at(claimed - 0.5)),
        ev.TaskClaimed(task=task, worker="w", **at(claimed)),
    ]
    if started is not None:
        out.append(ev.TaskStarted(task=task, worker="w", **at(started)))
    if ended is not None:
        kind, seconds = ended
        out.append(kind(task=task, **at(seconds)))  # type: ignore[call-arg]
    return out


# --- hand-computed cases ----------------------------------------------------------------------


def test_busy_slot_and_capacity_time_are_clipped_to_the_window() -> None:
    """Claimed 10, running 20-100, window 30-90: 60s busy and held of 2 slots x 60s online."""
    history = [
        worker("w", 0),
        *run("t", 10, 20, (ev.TaskCompleted, 100)),
        ev.WorkerHeartbeat(worker="w", pool="p", **at(150)),
    ]
    [row] = query(history, "worker", (30, 90), now=200)
    assert (row.group, row.bucket_start, row.bucket_end) == ("w", t(30), t(90))
    assert (row.busy_seconds, row.slot_seconds, row.capacity_seconds) == (60, 60, 120)
    assert row.utilization == 0.5
    assert (row.completed, row.throughput_per_hour, row.run_p50_seconds) == (0, 0, None)


def test_open_intervals_and_the_latest_session_run_to_now() -> None:
    """Still running at now=50: busy 20-50, held 10-50; the worker is online until now."""
    history = [worker("w", 0), *run("t", 10, 20, None)]
    [row] = query(history, "pool", (0, 100), now=50)
    assert (row.group, row.pool) == ("p", "p")
    assert (row.busy_seconds, row.slot_seconds, row.capacity_seconds) == (30, 40, 100)
    assert row.utilization == pytest.approx(0.3)


def test_a_retry_ends_one_stretch_and_counts_as_retried() -> None:
    """Two stretches: 0-40 (running from 10) retried, 50-100 (running from 60) completed."""
    history = [
        worker("w", 0),
        ev.TaskSubmitted(task="t", pool="p", queue="q", **at(0)),
        ev.TaskClaimed(task="t", worker="w", **at(0.5)),
        ev.TaskStarted(task="t", worker="w", **at(10)),
        ev.TaskRetrying(task="t", **at(40)),
        ev.TaskClaimed(task="t", worker="w", **at(50)),
        ev.TaskStarted(task="t", worker="w", **at(60)),
        ev.TaskCompleted(task="t", **at(100)),
    ]
    [row] = query(history, "queue", (0, 200), now=300)
    assert (row.pool, row.group) == ("p", "q")
    assert (row.busy_seconds, row.slot_seconds) == (70, 89.5)
    assert (row.retried, row.completed, row.failed, row.run_p50_seconds) == (1, 1, 0, 40)
    assert row.success_rate == 1.0


def test_sessions_end_at_their_stop_their_next_start_or_when_they_went_offline() -> None:
    """a: stopped at 100. b: 2 slots until restarted at 50, then 3 slots until last seen + grace."""
    history = [
        worker("a", 0, slots=1),
        ev.WorkerStopped(worker="a", pool="p", **at(100)),
        worker("b", 0, slots=2),
        worker("b", 50, slots=3, heartbeat_interval=10.0),
        ev.WorkerHeartbeat(worker="b", pool="p", **at(100)),
    ]
    rows = query(history, "worker", (0, 1000), now=1000)
    assert [(r.group, r.capacity_seconds) for r in rows] == [("a", 100), ("b", 100 + 3 * 80)]
    rows = query(history, "worker", (0, 1000), now=1000, multiplier=1.0)
    assert [(r.group, r.capacity_seconds) for r in rows] == [("a", 100), ("b", 100 + 3 * 60)]
    rows = query(history, "worker", (0, 1000), now=120)
    assert rows[1].capacity_seconds == 100 + 3 * 70, "an online worker counts up to now"


def test_buckets_align_to_the_epoch_and_are_cut_by_the_window() -> None:
    """Running 30-140 with 1m buckets over 30-150: 30s, 60s, 20s; completed in the last one."""
    history = [
        worker("w", 0, slots=1),
        *run("t", 30, 30, (ev.TaskCompleted, 140)),
        ev.WorkerHeartbeat(worker="w", pool="p", **at(140)),
    ]
    rows = query(history, "worker", (30, 150), now=150, bucket="1m")
    assert [(r.bucket_start, r.bucket_end) for r in rows] == [
        (t(30), t(60)),
        (t(60), t(120)),
        (t(120), t(150)),
    ]
    assert [r.busy_seconds for r in rows] == [30, 60, 20]
    assert [r.capacity_seconds for r in rows] == [30, 60, 30]
    assert [r.completed for r in rows] == [0, 0, 1]
    assert rows[2].throughput_per_hour == 120, "one completion in half a minute"


def test_run_percentiles_interpolate_linearly_and_success_rate_ignores_cancelled() -> None:
    """Runs of 10, 20, 30, 40s: p50 25, p95 38.5; 4 completed of 6 judged (cancelled aside)."""
    history = [worker("w", 0, slots=10)]
    for i, length in enumerate([40, 10, 30, 20]):
        history += run(f"ok{i}", 1, 2, (ev.TaskCompleted, 2 + length))
    history += run("bad", 1, 2, (ev.TaskFailed, 5))
    history += run("dead", 1, 2, (ev.TaskCrashed, 5))
    history += run("gone", 1, None, (ev.TaskCancelled, 5))
    [row] = query(history, "task_key", (0, 100), now=100)
    assert row.group is None, "tasks without a key are grouped under None"
    assert row.capacity_seconds == 0, "a worker with no task keys gives no task key capacity"
    assert (row.run_p50_seconds, row.run_p95_seconds) == (25, pytest.approx(38.5))
    assert (row.completed, row.failed, row.crashed, row.cancelled) == (4, 1, 1, 1)
    assert row.success_rate == pytest.approx(4 / 6)


def test_a_window_with_nothing_in_it_has_no_rows() -> None:
    """Before any event, or with an empty log, there is nothing to report."""
    history = [worker("w", 100), *run("t", 110, 120, (ev.TaskCompleted, 130))]
    assert query(history, "worker", (0, 50), now=500, bucket="10s") == []
    assert query([], "pool", (0, 50), now=500) == []


def test_workers_listing_no_queue_give_capacity_to_every_queue_of_their_pool() -> None:
    """Queues come from tasks and listings; a listing worker serves only what it lists."""
    history = [
        worker("any", 0, slots=1),
        worker("only-r", 0, slots=2, queues=("r",)),
        *run("t", 10, 20, (ev.TaskCompleted, 30)),
        ev.WorkerStopped(worker="any", pool="p", **at(50)),
        ev.WorkerStopped(worker="only-r", pool="p", **at(50)),
    ]
    rows = query(history, "queue", (0, 100), now=100)
    assert [(r.pool, r.group, r.capacity_seconds, r.busy_seconds) for r in rows] == [
        ("p", "q", 50, 10),
        ("p", "r", 50 + 100, 0),
    ]


def test_a_task_claimed_before_it_was_submitted_takes_its_workers_pool() -> None:
    """No pool on the task: the session in force when the slot was taken decides."""
    history = [
        worker("w", 0, pool="old"),
        worker("w", 50, pool="new"),
        ev.TaskClaimed(task="early", worker="w", **at(10)),
        ev.TaskClaimed(task="late", worker="w", **at(60)),
    ]
    rows = query(history, "pool", (0, 100), now=100)
    assert [(r.group, r.slot_seconds) for r in rows] == [("new", 40), ("old", 90)]


def test_stages_have_no_capacity_so_no_utilization() -> None:
    """Busy time per stage, but capacity and utilization are undefined (None)."""
    history = [
        worker("w", 0),
        ev.TaskSubmitted(task="t", pool="p", queue="q", stage="parse", **at(0)),
        ev.TaskStarted(task="t", worker="w", **at(10)),
    ]
    [row] = query(history, "stage", (0, 100), now=40)
    assert (row.group, row.busy_seconds, row.capacity_seconds, row.utilization) == (
        "parse",
        30,
        None,
        None,
    )


def test_spans_and_times_parse_or_say_what_is_expected() -> None:
    """5m, 1h, -1h, now and RFC 3339 parse; anything else is a ValueError with the format."""
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_bucket("5m") == timedelta(minutes=5)
    assert parse_bucket("1d") == timedelta(days=1)
    assert parse_time("-1h", now) == now - timedelta(hours=1)
    assert parse_time("now", now) == now
    assert parse_time("2026-01-01T10:00:00Z", now) == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert parse_time("2026-01-01T10:00:00", now) == datetime(2026, 1, 1, 10, tzinfo=UTC)
    for bad in ("0m", "5", "m", "1y", "-5m"):
        with pytest.raises(ValueError, match="like 30s, 5m"):
            parse_bucket(bad)
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday", now)


def test_bad_windows_are_refused_with_a_reason() -> None:
    """Empty or reversed windows, naive times and too many buckets are ValueErrors."""
    with pytest.raises(ValueError, match="must be before until"):
        Window.of(since=t(10), until=t(10), now=t(0), bucket=None)
    with pytest.raises(ValueError, match="no timezone"):
        Window.of(since=datetime(2026, 1, 1), until=t(10), now=t(0), bucket=None)
    with pytest.raises(ValueError, match="at most"):
        Window.of(since=t(0), until=t(86400 * 7), now=t(0), bucket=timedelta(seconds=1))
    with pytest.raises(ValueError, match="by must be one of"):
        query([], "colour", (0, 1), now=1)  # type: ignore[arg-type]


def test_the_memory_store_implements_the_store_protocol() -> None:
    """utilization is part of the contract every store fulfils."""
    assert isinstance(MemoryStore(), Store)


# --- the SQL version agrees with the reference --------------------------------------------------

_TABLES = """
CREATE OR REPLACE TABLE slot_intervals (
    task VARCHAR, attempt INTEGER, worker VARCHAR, pool VARCHAR, queue VARCHAR,
    task_key VARCHAR, stage VARCHAR, acquired_at TIMESTAMPTZ, started_at TIMESTAMPTZ,
    released_at TIMESTAMPTZ, ended VARCHAR);
CREATE OR REPLACE TABLE worker_sessions (
    worker VARCHAR, pool VARCHAR, queues VARCHAR[], task_keys VARCHAR[], slots INTEGER,
    heartbeat_interval DOUBLE, started_at TIMESTAMPTZ, stopped_at TIMESTAMPTZ,
    next_started_at TIMESTAMPTZ, last_seen TIMESTAMPTZ);
"""


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB file for the whole module; each example replaces its tables."""
    path = Path(tmp_path_factory.mktemp("duck")) / "utilization.duckdb"
    with duckdb.connect(str(path)) as conn:
        yield conn


def load_tables(conn: duckdb.DuckDBPyConnection, store: MemoryStore) -> None:
    """Copy the store's intervals and sessions into the two tables the SQL reads."""
    conn.execute(_TABLES)
    intervals = [msgspec.structs.astuple(i) for i in store.slot_intervals()]
    sessions = [
        tuple(list(v) if isinstance(v, tuple) else v for v in msgspec.structs.astuple(s))
        for s in store.worker_sessions()
    ]
    if intervals:
        conn.executemany(f"INSERT INTO slot_intervals VALUES ({', '.join('?' * 11)})", intervals)
    if sessions:
        conn.executemany(f"INSERT INTO worker_sessions VALUES ({', '.join('?' * 10)})", sessions)


def assert_agree(expected: list[UtilizationRow], got: list[UtilizationRow]) -> None:
    """Equal rows, floats within 1e-6 relative."""
    assert [(r.pool, r.group, r.bucket_start) for r in got] == [
        (r.pool, r.group, r.bucket_start) for r in expected
    ]
    for want, have in zip(expected, got, strict=True):
        for name, value in msgspec.structs.asdict(want).items():
            other = getattr(have, name)
            if isinstance(value, float) and other is not None:
                assert other == pytest.approx(value, rel=1e-6, abs=1e-9), (name, want, have)
            else:
                assert other == value, (name, want, have)


_ENDINGS = (ev.TaskCompleted, ev.TaskFailed, ev.TaskCrashed, ev.TaskCancelled, ev.TaskRetrying)


@st.composite
def _lifecycles(draw: st.DrawFn) -> list[ev.Event]:
    """Whole task lives (claim, start, end) on started workers: what histories() rarely draws."""
    out: list[ev.Event] = []
    for name in draw(st.lists(st.sampled_from(WORKERS), min_size=1, max_size=3, unique=True)):
        slots = draw(st.sampled_from([2, 1, 3, 0]))
        queues = tuple(draw(st.lists(st.sampled_from(QUEUES), max_size=1)))
        out.append(worker(name, draw(st.sampled_from(range(300))), slots, pool="p1", queues=queues))
    for task in draw(st.lists(st.sampled_from(TASKS), min_size=1, max_size=5, unique=True)):
        name, claimed = draw(st.sampled_from(WORKERS)), draw(st.sampled_from(range(500)))
        started = claimed + draw(st.sampled_from(range(60)))
        ended, length = draw(st.sampled_from(_ENDINGS)), draw(st.sampled_from(range(120)))
        out += [
            ev.TaskClaimed(task=task, worker=name, **at(claimed)),
            ev.TaskStarted(task=task, worker=name, **at(started)),
            ended(task=task, **at(started + length)),  # type: ignore[call-arg]
        ]
    return [msgspec.structs.replace(e, id=f"life-{i}") for i, e in enumerate(out)]


# histories() alone is mostly short and rarely runs a task through; the lifecycles fill it in.
fleets = st.tuples(histories(), _lifecycles()).map(lambda parts: parts[0] + parts[1])
# Hypothesis favours small integers; sampling from ranges spreads windows over the histories.
# Whole seconds (where event times collide) or off by some microseconds.
seconds = st.sampled_from(range(-60, 700))
offsets = st.just(0) | st.integers(-999_999, 999_999)
moments = st.tuples(seconds, offsets).map(lambda m: t(m[0]) + timedelta(microseconds=m[1]))
lengths = st.tuples(st.sampled_from([1, 7, 30, 60, 200, 400, 700]), offsets.map(abs)).map(
    lambda m: timedelta(seconds=m[0], microseconds=m[1])
)
windows = st.tuples(moments, lengths).map(lambda w: (w[0], w[0] + w[1]))
nows = moments | st.sampled_from(range(700, 1000)).map(t)  # often after everything
buckets = st.none() | st.sampled_from(["1s", "7s", "1m", "5m", "1h"]).map(parse_bucket)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    history=fleets,
    window=windows,
    params=st.fixed_dictionaries(
        {
            "by": st.sampled_from(GROUPINGS),
            "now": nows,
            "bucket": buckets,
            "multiplier": st.sampled_from([1.0, 2.5, 3.0]),
        }
    ),
)
def test_the_sql_version_agrees_with_the_reference_on_any_history_and_window(
    duck: duckdb.DuckDBPyConnection,
    history: list[ev.Event],
    window: tuple[datetime, datetime],
    params: dict[str, Any],
) -> None:
    """Same rows, same numbers: DuckDB's SQL over the tables equals the pure function."""
    store = fold(history)
    load_tables(duck, store)
    kwargs = params | {"since": window[0], "until": window[1]}
    assert_agree(store.utilization(**kwargs), utilization_sql(duck, **kwargs))


def test_the_sql_version_agrees_on_the_hand_computed_cases(
    duck: duckdb.DuckDBPyConnection,
) -> None:
    """The scripted histories above, every grouping, with and without buckets."""
    history = [
        worker("any", 0, slots=1),
        worker("only-r", 0, slots=2, queues=("r",), task_keys=("k",)),
        worker("w", 5, pool="old"),
        worker("w", 50, pool="new"),
        ev.TaskClaimed(task="early", worker="w", **at(10)),
        *run("a", 10, 20, (ev.TaskCompleted, 30)),
        *run("b", 12, 14, (ev.TaskRetrying, 70)),
        *run("c", 15, 16, (ev.TaskCompleted, 95)),
        ev.WorkerStopped(worker="any", pool="p", **at(80)),
    ]
    store = fold(history)
    load_tables(duck, store)
    for by in GROUPINGS:
        for bucket in (None, timedelta(seconds=7), timedelta(minutes=1)):
            kwargs: dict[str, Any] = {"by": by, "since": t(3), "until": t(100), "now": t(90)}
            kwargs["bucket"] = bucket
            assert_agree(store.utilization(**kwargs), utilization_sql(duck, **kwargs))


def test_what_the_sql_reads_of_a_window_keeps_an_ending_at_its_start_and_nothing_at_its_end(
    duck: duckdb.DuckDBPyConnection,
) -> None:
    """The SQL reads only stretches and sessions that can touch the window: one released
    exactly at ``since`` still counts as ended in it; one acquired exactly at ``until``, and a
    session stopped before ``since``, add nothing."""
    history = [
        worker("w", 0, slots=1),
        worker("gone", 0, slots=1),
        ev.WorkerStopped(worker="gone", pool="p", **at(5)),
        *run("a", 10, 20, (ev.TaskCompleted, 30)),
        *run("b", 40, 45, (ev.TaskCompleted, 50)),
    ]
    store = fold(history)
    load_tables(duck, store)
    kwargs: dict[str, Any] = {"by": "worker", "since": t(30), "until": t(40), "now": t(100)}
    rows = utilization_sql(duck, **kwargs)
    assert [(r.group, r.completed, r.busy_seconds, r.slot_seconds) for r in rows] == [
        ("w", 1, 0.0, 0.0)
    ]
    assert rows[0].capacity_seconds == 10.0  # seen at 0, online until 0 + 30 s x 3
    assert_agree(store.utilization(**kwargs), rows)


def test_capacity_over_whole_buckets_adds_up_per_bucket_in_the_reference_and_in_sql(
    duck: duckdb.DuckDBPyConnection,
) -> None:
    """Buckets a session covers whole are added as steps, not one by one: two overlapping
    sessions in 10s buckets still give each bucket its own sum (a: 1 slot for 0-100 s,
    b: 2 slots for 25-65 s)."""
    history = [
        worker("a", 0, slots=1),
        worker("b", 25, slots=2),
        ev.WorkerStopped(worker="b", pool="p", **at(65)),
        ev.WorkerStopped(worker="a", pool="p", **at(100)),
    ]
    store = fold(history)
    load_tables(duck, store)
    kwargs: dict[str, Any] = {"by": "pool", "since": t(0), "until": t(100), "now": t(200)}
    kwargs["bucket"] = timedelta(seconds=10)
    rows = store.utilization(**kwargs)
    assert [r.capacity_seconds for r in rows] == [10, 10, 20, 30, 30, 30, 20, 10, 10, 10]
    assert_agree(rows, utilization_sql(duck, **kwargs))


# --- rebuilds -------------------------------------------------------------------------------


@settings(max_examples=100)
@given(history=histories(), data=st.data(), by=st.sampled_from(GROUPINGS))
def test_a_rebuild_from_the_same_events_in_any_order_gives_the_same_utilization(
    history: list[ev.Event], data: st.DataObject, by: Grouping
) -> None:
    """Everything is a function of event times and now, so replaying shuffled is identical."""
    shuffled = data.draw(st.permutations(history))
    kwargs: dict[str, Any] = {
        "by": by,
        "since": t(-10),
        "until": t(610),
        "now": t(400),
        "bucket": timedelta(minutes=1),
    }
    assert fold(shuffled).utilization(**kwargs) == fold(history).utilization(**kwargs)
