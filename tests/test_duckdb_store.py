"""What only the DuckDB store promises: its file, its tables and views, its errors."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.core.errors import StoreError
from workledger.core.events import EventType
from workledger.projections.views import (
    PoolView,
    Quarantined,
    QueueView,
    SlotInterval,
    TaskView,
    WorkerSession,
    WorkerView,
)
from workledger.stores import _duckdb_derive as derive_module
from workledger.stores import duckdb as duckdb_store
from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore, check_unlocked
from workledger.stores.memory import MemoryStore

from .histories import fleet_history, histories
from .test_fold import at
from .test_store_contract import batch, batched, fleet, reference, t


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the test's DuckDB file lives."""
    return tmp_path / "ledger.duckdb"


@pytest.fixture
def sql(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The fleet written to ``path`` and closed, then the file opened as an analyst would."""
    with DuckDBStore(path) as store:
        store.apply(batch(fleet()))
    con = duckdb.connect(str(path), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


@pytest.mark.parametrize(
    ("table", "struct"),
    [
        ("tasks", TaskView),
        ("workers", WorkerView),
        ("slot_intervals", SlotInterval),
        ("worker_sessions", WorkerSession),
        ("pools", PoolView),
        ("queues", QueueView),
        ("quarantined", Quarantined),
    ],
)
def test_tables_name_their_columns_after_the_view_fields(
    sql: duckdb.DuckDBPyConnection, table: str, struct: type[msgspec.Struct]
) -> None:
    """Python and SQL share one vocabulary: column names are the Struct's field names (then
    ``batch_seq`` on the tables a batch rewrites per entity)."""
    columns = [row[0] for row in sql.execute(f"DESCRIBE {table}").fetchall()]
    derived = [] if table == "quarantined" else ["batch_seq"]
    assert columns == [*struct.__struct_fields__, *derived]


def test_the_events_table_keeps_every_event_with_its_sequence_and_payload(
    sql: duckdb.DuckDBPyConnection,
) -> None:
    """Raw events are there for questions nobody planned; the payload is the wire JSON."""
    found = sql.execute('SELECT seq, type, "at", task, payload FROM events ORDER BY seq').fetchall()
    assert [row[0] for row in found] == list(range(1, len(fleet()) + 1))
    for (_, kind, moment, task, payload), event in zip(found, fleet(), strict=True):
        assert (kind, moment, task) == (event.type, event.at, getattr(event, "task", None))
        assert msgspec.json.decode(payload, type=EventType) == event


_ANY_TEXT = st.text(min_size=1, max_size=12)  # newlines, quotes, backslashes, any script
_ANY_TIME = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=UTC).astimezone(
        timezone(timedelta(minutes=minutes))
    ),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2199, 12, 30)),
    st.integers(-14 * 60, 14 * 60),
)


@st.composite
def _odd_events(draw: st.DrawFn) -> ev.Event:
    """Any event type's key fields (and its free text) with odd values: what the events
    table's columns are read back from its JSON with."""
    common = {"id": st.text(max_size=20), "at": st.none() | _ANY_TIME}
    name, text = _ANY_TEXT, st.none() | st.text(max_size=20)
    return draw(
        st.one_of(
            st.builds(ev.WorkerStarted, worker=name, pool=name, host=text, **common),
            st.builds(ev.WorkerHeartbeat, worker=name, pool=name, **common),
            st.builds(ev.TaskSubmitted, task=name, pool=name, queue=name, item=text, **common),
            st.builds(ev.TaskClaimed, task=name, worker=name, pool=st.none() | name, **common),
            st.builds(ev.TaskProgress, task=name, message=text, **common),
            st.builds(ev.TaskFailed, task=name, error=text, **common),
            st.builds(ev.PoolCreated, pool=name, **common),
            st.builds(ev.QueueUpdated, pool=name, queue=name, **common),
        )
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=st.lists(_odd_events(), min_size=1, max_size=30), per_message=st.integers(1, 4))
def test_each_events_row_holds_its_event_whatever_its_text_and_time(
    tmp_path: Path, events: list[ev.Event], per_message: int
) -> None:
    """The key columns come out of the event's JSON in DuckDB: each must equal the event's
    own field, and the payload its JSON, for any text (newlines included) and any offset."""
    items = [Sequenced(1 + i // per_message, "s", e) for i, e in enumerate(events)]
    path = tmp_path / f"odd-{uuid.uuid4()}.duckdb"
    with DuckDBStore(path, materialize_every=math.inf) as store:
        store.apply(Batch(events=items, last_seq=items[-1].seq))
    with duckdb.connect(str(path), read_only=True) as con:
        found = con.execute(
            'SELECT seq, idx, id, type, "at", worker, task, pool, queue, subject, payload::VARCHAR '
            "FROM events ORDER BY seq, idx"
        ).fetchall()
    assert found == [
        (
            item.seq,
            i % per_message,
            item.event.id,
            item.event.type,
            item.event.at,
            getattr(item.event, "worker", None),
            getattr(item.event, "task", None),
            getattr(item.event, "pool", None),
            getattr(item.event, "queue", None),
            "s",
            msgspec.json.encode(item.event).decode(),
        )
        for i, item in enumerate(items)
    ]


def test_the_views_answer_the_common_questions_like_the_queries(
    sql: duckdb.DuckDBPyConnection,
) -> None:
    """active_slot_holders, slot_counts and worker_slots agree with the store's answers."""
    reference = MemoryStore()
    reference.apply(batch(fleet()))
    holders = sql.execute(
        "SELECT task, pool, queue, worker FROM active_slot_holders ORDER BY task"
    ).fetchall()
    expected = sorted((h.task, h.pool, h.queue, h.worker) for h in reference.slot_holders())
    assert holders == expected
    counts = sql.execute("SELECT pool, queue, held FROM slot_counts").fetchall()
    assert sorted(counts, key=str) == sorted(
        [(c.pool, c.queue, c.held) for c in reference.slot_counts()], key=str
    )
    slots = dict(sql.execute("SELECT worker, free_slots FROM worker_slots").fetchall())
    assert slots == {w.worker.worker: w.free_slots for w in reference.workers(now=t(0))}
    online_until = sql.execute("SELECT online_until FROM worker_slots WHERE worker = 'c1'")
    assert online_until.fetchone() == (t(19) + timedelta(seconds=15),)


def test_task_durations_measure_wait_and_run_of_finished_tasks(
    sql: duckdb.DuckDBPyConnection,
) -> None:
    """Only finished tasks; run time is started to finished (NULL if it never started)."""
    rows = sql.execute("SELECT task, status, wait_seconds, total_seconds FROM task_durations")
    assert rows.fetchall() == [("c", "COMPLETED", None, 5.0)]


def test_a_failed_write_changes_nothing_and_the_next_attempt_catches_up(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing: a failure after the rows, before the checkpoint, leaves the old state."""
    history = fleet()
    store = DuckDBStore(path)
    store.apply(batch(history[:10]))
    before = (store.read_model(), store.stats())
    real = duckdb_store._write_rows

    def fail_after_rows(cursor: duckdb.DuckDBPyConnection, write: object) -> None:
        real(cursor, write)
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(duckdb_store, "_write_rows", fail_after_rows)
    with pytest.raises(StoreError, match="disk full"):
        store.apply(batch(history[10:], 11))
    assert (store.read_model(), store.stats()) == before
    monkeypatch.undo()
    store.apply(batch(history[10:], 11))
    store.close()
    reference = MemoryStore()
    reference.apply(batch(history))
    with DuckDBStore(path) as reopened:
        assert (reopened.read_model(), reopened.stats()) == (
            reference.read_model(),
            reference.stats(),
        )


def test_a_failure_while_deriving_the_tables_undoes_the_batch_with_them(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tables are derived in the batch's transaction: a failure half way through leaves
    the file as it was, events and tables, and a retry applies cleanly."""
    history = fleet()
    first, second = batch(history[:10]), batch(history[10:], 11)
    store = DuckDBStore(path, materialize_every=0)
    store.apply(first)
    real = duckdb_store.derive

    def fail_half_way(
        cursor: duckdb.DuckDBPyConnection, since: int, batch_seq: int, *, alone: bool
    ) -> None:
        real(cursor, since, batch_seq, alone=alone)  # every table rewritten, then:
        raise duckdb.OutOfMemoryException("no room for the rows")

    monkeypatch.setattr(duckdb_store, "derive", fail_half_way)
    with pytest.raises(StoreError, match="no room"):
        store.apply(second)
    monkeypatch.undo()
    assert _checkpoint_row(store) == (10, 10)
    assert (store.read_model(), store.stats()) == (
        reference([first]).read_model(),
        reference([first]).stats(),
    )
    store.apply(second)
    assert store.read_model() == reference([batch(history)]).read_model()
    store.close()


_ORDERED = "SELECT current_setting('preserve_insertion_order')"


@pytest.mark.parametrize("fails", [False, True])
def test_a_derivation_leaves_the_batches_writes_keeping_their_order(
    path: Path, monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    """Deriving drops DuckDB's insertion order for itself only: after it succeeds, and after
    it fails half way (its transaction aborted, which refuses to restore the setting), the
    connection's next writes keep their order (an envelope's set-aside events are read back
    by rowid)."""
    history = fleet()
    store = DuckDBStore(path, materialize_every=0)
    store.apply(batch(history[:10]))
    real = derive_module._derive

    def abort_half_way(cursor: duckdb.DuckDBPyConnection, since: int, batch_seq: int) -> None:
        real(cursor, since, batch_seq)
        cursor.execute("SELECT 'not a number'::INTEGER")  # aborts the transaction

    if fails:
        monkeypatch.setattr(derive_module, "_derive", abort_half_way)
        with pytest.raises(StoreError, match="not a number"):
            store.apply(batch(history[10:], 11))
    else:
        store.apply(batch(history[10:], 11))
    assert store._cursor().execute(_ORDERED).fetchall() == [(True,)]
    store.close()


def test_only_a_derivation_that_writes_alone_drops_the_insertion_order(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's insertion order is a setting of the whole database: a derivation in the
    store's own thread, while batches (and their set-aside messages, read back in insertion
    order) go on being written from other threads, keeps it; one that holds the store's
    writes (here at close) may drop it."""
    seen: list[tuple[str, bool]] = []
    real = derive_module._derive

    def recording(cursor: duckdb.DuckDBPyConnection, since: int, batch_seq: int) -> None:
        ((ordered,),) = cursor.execute(_ORDERED).fetchall()
        seen.append((threading.current_thread().name, ordered))
        real(cursor, since, batch_seq)

    monkeypatch.setattr(derive_module, "_derive", recording)
    history = fleet()
    with DuckDBStore(path, materialize_every=0.05) as store:
        store.apply(batch(history[:5]))
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        store.apply(batch(history[5:], 6))
        store._stop_deriver()  # so that close derives the second batch itself
    in_thread = [ordered for name, ordered in seen if name.startswith("workledger-derive")]
    at_close = [ordered for name, ordered in seen if not name.startswith("workledger-derive")]
    assert in_thread == [True]
    assert at_close == [False]


def test_a_file_held_by_another_process_is_refused_with_a_clear_message(path: Path) -> None:
    """DuckDB's lock error becomes a StoreError that says what to do."""
    DuckDBStore(path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,sys; c = duckdb.connect({str(path)!r}); "
            "print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="locked by another process"):
            DuckDBStore(path, read_only=True)
        with pytest.raises(StoreError, match="locked by another process"):
            check_unlocked(path)
    finally:
        holder.communicate("")


def test_a_file_that_is_not_a_duckdb_database_is_a_store_error(path: Path) -> None:
    """Any DuckDB failure reaches callers as StoreError, never a duckdb type."""
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(StoreError, match=str(path)):
        DuckDBStore(path)


def test_a_copy_is_published_from_another_thread_right_after_opening(
    path: Path, tmp_path: Path
) -> None:
    """Opening leaves no transaction open in its thread's cursor: one would make the copy's
    CHECKPOINT, run from the daemon's worker threads, fail every time."""
    store = DuckDBStore(path)
    with ThreadPoolExecutor(1) as writer, ThreadPoolExecutor(1) as publisher:
        writer.submit(store.apply, batch(fleet())).result()
        copy = tmp_path / "copy.duckdb"
        assert publisher.submit(store.publish, copy).result().checkpoint == len(fleet())
    store.close()
    with DuckDBStore(copy, read_only=True) as reader:
        assert reader.read_model() == reference([batch(fleet())]).read_model()


def test_read_only_opens_an_existing_file_for_queries_and_refuses_writes(path: Path) -> None:
    """Analysts open a stopped daemon's file read-only; it restores the same model."""
    with pytest.raises(StoreError, match="no DuckDB file"):
        DuckDBStore(path, read_only=True)
    with DuckDBStore(path) as store:
        store.apply(batch(fleet()))
        model = store.read_model()
    with DuckDBStore(path, read_only=True) as reader:
        assert reader.read_model() == model
        with pytest.raises(StoreError, match="read-only"):
            reader.apply(batch(fleet(), 100))


def _checkpoint_row(store: DuckDBStore) -> tuple[int, int]:
    """The file's (checkpoint, materialized), read beside the store's own queries."""
    found = store._cursor().execute("SELECT checkpoint, materialized FROM checkpoint")
    return found.fetchone()  # type: ignore[return-value]


def test_derived_tables_are_written_behind_and_before_any_read(path: Path) -> None:
    """A batch commits its events at once; the tables catch up when due or when read."""
    history = fleet()
    with DuckDBStore(path, materialize_every=3600) as store:
        store.apply(batch(history[:5]))  # not due for an hour: no tables written yet
        store.apply(batch(history[5:], 6))
        assert _checkpoint_row(store) == (len(history), 0)
        raw = store._cursor().execute("SELECT count(*) FROM events").fetchone()
        assert raw == (len(history),), "every event is committed with its batch"
        assert store.read_model() == reference([batch(history)]).read_model()
        assert _checkpoint_row(store) == (len(history), len(history))


def test_the_tables_are_derived_in_the_background_once_due(path: Path) -> None:
    """Nothing reads the store, yet its own thread derives the tables within the interval."""
    history = fleet()
    with DuckDBStore(path, materialize_every=0.05) as store:
        store.apply(batch(history[:5]))
        store.apply(batch(history[5:], 6))
        deadline = time.monotonic() + 10
        while _checkpoint_row(store)[1] != len(history) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _checkpoint_row(store) == (len(history), len(history))
        assert store.read_model() == reference([batch(history)]).read_model()


def test_a_failed_background_derivation_stops_the_next_batch_with_its_reason(
    path: Path,
) -> None:
    """The derivation fails in the store's thread (a table dropped under it); the next batch
    raises that reason and is not committed, so a restart reads it again."""
    history = fleet()
    store = DuckDBStore(path, materialize_every=0.05)
    try:
        # Dropped before the first batch: its thread starts with that batch and cannot have
        # derived it already (which would leave it nothing to fail on).
        store._cursor().execute("DROP TABLE slot_intervals")
        store.apply(batch(history[:5]))
        assert store._deriver is not None
        store._deriver.join(timeout=10)  # it ends on its failure
        assert not store._deriver.is_alive()
        with pytest.raises(StoreError, match=r"cannot derive the tables: .*slot_intervals"):
            store.apply(batch(history[5:], 6))
        assert store._cursor().execute("SELECT count(*) FROM events").fetchone() == (5,)
        assert _checkpoint_row(store) == (5, 0)
    finally:
        store._release()


def test_a_batch_is_committed_while_a_derivation_is_running(path: Path) -> None:
    """Batches do not wait for a derivation: while one holds the store's derivation (here
    the test holds it, as a long one would), a batch from another thread commits."""
    history = fleet()
    with DuckDBStore(path, materialize_every=3600) as store:
        store.apply(batch(history[:5]))
        with store._deriving:
            writer = threading.Thread(target=store.apply, args=(batch(history[5:], 6),))
            writer.start()
            writer.join(timeout=10)
            assert not writer.is_alive()
            assert _checkpoint_row(store) == (len(history), 0)
        assert store.read_model() == reference([batch(history)]).read_model()


_KILLS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_KILLS
@given(case=batched(), data=st.data())
def test_a_store_killed_between_writes_of_its_tables_loses_nothing(
    case: tuple[list[object], list[Batch]],
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Killed with events the tables do not show yet: read-only it shows the tables as last
    written, whole batches; reopened for writing it derives the rest from its own events, and
    carries on alike."""
    _, batches = case
    path = tmp_path_factory.mktemp("killed") / "store.duckdb"
    reads = data.draw(st.sets(st.integers(0, max(len(batches) - 1, 0))), label="reads after")
    store = DuckDBStore(path, materialize_every=3600)
    shown = 0  # how many batches the tables hold
    for i, each in enumerate(batches):
        store.apply(each)
        if i in reads:
            store.pools()  # a read writes the tables
        if i in reads:
            shown = i + 1
    store._release()  # as a kill would: no last write of the tables
    with DuckDBStore(path, read_only=True) as reader:
        assert (reader.read_model(), reader.stats()) == (
            reference(batches[:shown]).read_model(),
            reference(batches[:shown]).stats(),
        )
    reopened = DuckDBStore(path, materialize_every=3600)
    assert (reopened.read_model(), reopened.stats()) == (
        reference(batches).read_model(),
        reference(batches).stats(),
    )
    last = reopened.stats().checkpoint
    more = batch([e for e in fleet() if hasattr(e, "task") or hasattr(e, "worker")], last + 1)
    reopened.apply(more)
    reopened.pools()
    reopened._release()  # killed again: what the reopened store wrote replaced the old rows
    with DuckDBStore(path) as again:
        assert again.read_model() == reference([*batches, more]).read_model()


@_KILLS
@given(case=batched(), every=st.sampled_from([0.0, math.inf]))
def test_tables_derived_with_every_batch_or_once_at_the_end_are_the_same(
    case: tuple[list[object], list[Batch]],
    every: float,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Derived a batch at a time (from the touched entities' events) or once from the whole
    of ``events`` (a rebuild), the tables are what the reference folds."""
    _, batches = case
    path = tmp_path_factory.mktemp("every") / "store.duckdb"
    with DuckDBStore(path, materialize_every=every) as store:
        for each in batches:
            store.apply(each)
        assert (store.read_model(), store.stats()) == (
            reference(batches).read_model(),
            reference(batches).stats(),
        )


@settings(max_examples=60, deadline=None)
@given(case=batched(), reused=histories(reused_ids=True))
def test_tasks_begun_long_ago_are_derived_from_the_events_their_rows_depend_on(
    case: tuple[list[object], list[Batch]],
    reused: list[ev.Event],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Every known task read by its kept sequences, as one begun over a million events ago
    is (not by range): a batch at a time, the tables are the reference's, reused ids too."""
    _, batches = case
    seq = batches[-1].last_seq + 1 if batches else 1
    halves = (reused[: len(reused) // 2], reused[len(reused) // 2 :])
    for part in halves:
        if part:
            batches.append(batch(part, seq))
            seq += len(part)
    path = tmp_path_factory.mktemp("kept") / "store.duckdb"
    with (
        mock.patch.object(derive_module, "_YOUNG", -1),
        DuckDBStore(path, materialize_every=0) as store,
    ):
        for each in batches:
            store.apply(each)
        assert store.read_model() == reference(batches).read_model()


def test_a_task_begun_long_ago_without_a_submission_keeps_its_pool_hint(path: Path) -> None:
    """Without ``task.submitted`` the task's pool is the newest event carrying one, which a
    newer progress report without a pool does not replace: that hint is kept with the newest
    report, for a derivation that reads the task by its kept sequences."""
    history = [
        [ev.TaskProgress(task="x", pool="p1", progress=0.1, **at(1))],
        [ev.TaskProgress(task="x", progress=0.2, **at(2))],
        [ev.TaskClaimed(task="x", worker="w", **at(3))],
    ]
    batches = [batch(events, i) for i, events in enumerate(history, 1)]
    with (
        mock.patch.object(derive_module, "_YOUNG", -1),
        DuckDBStore(path, materialize_every=0) as store,
    ):
        for each in batches:
            store.apply(each)
        assert store.task("x") == reference(batches).task("x")
        assert store.task("x").pool == "p1"  # type: ignore[union-attr]


@_KILLS
@given(history=histories(reused_ids=True), cut=st.integers(0, 60))
def test_events_sharing_an_id_give_the_tables_the_fold_gives(
    history: list[ev.Event], cut: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Different events under one id (a faulty producer's): the SQL picks, for every register
    and every id, the event the fold picks, derived at once or a batch at a time."""
    path = tmp_path_factory.mktemp("reused") / "store.duckdb"
    first, second = batch(history[:cut]), batch(history[cut:], len(history[:cut]) + 1)
    batches = [b for b in (first, second) if b.events]
    with DuckDBStore(path, materialize_every=0) as store:
        for each in batches:
            store.apply(each)
        assert store.read_model() == reference(batches).read_model()


@_KILLS
@given(history=histories(), data=st.data())
def test_an_event_delivered_again_in_a_later_batch_changes_no_table(
    history: list[ev.Event], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A redelivered event (the same event at a later sequence, in a later derivation) is
    counted once, as the fold counts it."""
    cut = data.draw(st.integers(0, len(history)))
    again = data.draw(st.lists(st.sampled_from(history), max_size=4)) if history else []
    batches, seq = [], 1
    for part in (history[:cut], history[cut:], again):
        if part:
            batches.append(batch(part, seq))
            seq += len(part)
    path = tmp_path_factory.mktemp("again") / "store.duckdb"
    with DuckDBStore(path, materialize_every=0) as store:
        for each in batches:
            store.apply(each)
        once = reference(batches[:-1] if again else batches).read_model()
        assert store.read_model() == reference(batches).read_model() == once


def test_a_retry_and_a_claim_delivered_again_count_once(path: Path) -> None:
    """The task's retries and slot intervals are over event ids, whichever batch brings a
    copy."""
    history = [
        ev.TaskSubmitted(task="a", pool="p", queue="q", **at(0)),
        ev.TaskClaimed(task="a", worker="w", **at(1)),
        ev.TaskRetrying(task="a", error="boom", **at(2)),
        ev.TaskClaimed(task="a", worker="w", **at(3)),
    ]
    batches = [batch(history), batch(history[1:3], 5)]
    with DuckDBStore(path, materialize_every=0) as store:
        for each in batches:
            store.apply(each)
        assert store.task("a") == reference(batches[:1]).task("a")
        assert store.task("a").retries == 1  # type: ignore[union-attr]
        assert store.read_model() == reference(batches[:1]).read_model()


@pytest.mark.parametrize("version", [3, 4, 5, 6])
def test_an_older_file_is_read_as_it_is_and_upgraded_when_written(path: Path, version: int) -> None:
    """Version 3 lacked ``checkpoint.materialized``; 4 kept the Python fold's ``fold_state``
    (and ``checkpoint.folded``) instead of ``retained``: written, their tables are derived
    again from ``events``. 5 also kept task events in ``retained``: they are dropped. None
    had ``task_spans``: 5 and 6 get theirs from ``events``. All read as they are."""
    with DuckDBStore(path) as store:
        store.apply(batch(fleet()))
        model = store.read_model()
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE task_spans")
        if version == 5:
            con.execute("INSERT INTO retained BY NAME SELECT *, 'task' AS kind FROM events")
        else:
            con.execute("DROP TABLE retained")
        if version == 3:
            con.execute("ALTER TABLE checkpoint DROP COLUMN materialized")
        elif version == 4:
            con.execute("CREATE TABLE fold_state (kind VARCHAR, key VARCHAR, events BLOB)")
            con.execute("ALTER TABLE checkpoint ADD COLUMN folded BIGINT")
        con.execute("UPDATE checkpoint SET schema_version = ?", [version])
    with DuckDBStore(path, read_only=True) as reader:
        assert reader.read_model() == model
    with DuckDBStore(path) as writer:
        assert writer.read_model() == model
        assert _checkpoint_row(writer) == (len(fleet()), len(fleet()))
        more = batch(fleet_history(40), len(fleet()) + 1)
        writer.apply(more)
        assert writer.read_model() == reference([batch(fleet()), more]).read_model()
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT schema_version FROM checkpoint").fetchone() == (7,)
        spans, firsts = _spans_and_first_seqs(con)
        assert spans == firsts != []
        tables = {
            name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        assert "fold_state" not in tables
        kept = con.execute("SELECT count(*) FROM retained WHERE kind = 'task'").fetchone()
        assert kept == (0,)


def test_a_schema_6_file_killed_before_its_last_derivation_gets_its_spans_and_carries_on(
    path: Path,
) -> None:
    """Schema 6 had no ``task_spans``: a file whose daemon died with events its tables do not
    show yet gets spans for what they show, each with the ``batch_seq`` of its task's rows
    (task-1's were written at 30, the file's tables at 60), so a later event for a task finds
    its rows; the derivation of the rest, and of later batches, gives the reference's tables
    and every task's first sequence."""
    tasks = [e for e in fleet() if hasattr(e, "task")]  # none of them in fleet_history's
    history = fleet_history(60)  # task-1 .. task-3 only in its first 30 events
    first = [batch(history[:30]), batch(history[30:], 31)]
    second = batch(tasks[:6], 61)
    store = DuckDBStore(path, materialize_every=3600)
    for each in first:
        store.apply(each)
        store.pools()  # a read writes the tables: task-1's rows at 30, the last ones at 60
    store.apply(second)
    store._release()  # killed: the second batch, new tasks only, is in ``events`` only
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE task_spans")
        con.execute("UPDATE checkpoint SET schema_version = 6")
    late = ev.TaskProgress(task="task-1", progress=1.0, **at(100))
    more = [batch([*tasks[6:9], late], 67), batch(tasks[9:], 71)]  # those tasks again
    with DuckDBStore(path, materialize_every=0) as writer:
        assert writer.read_model() == reference([*first, second]).read_model()
        for each in more:
            writer.apply(each)
        assert writer.read_model() == reference([*first, second, *more]).read_model()
    with duckdb.connect(str(path), read_only=True) as con:
        spans, firsts = _spans_and_first_seqs(con)
    assert spans == firsts != []


def _spans_and_first_seqs(con: duckdb.DuckDBPyConnection) -> tuple[list[Any], list[Any]]:
    """``task_spans``' rows, and each task's first sequence in ``events``, both by task."""
    spans = con.execute("SELECT task, first_seq FROM task_spans ORDER BY task").fetchall()
    firsts = con.execute(
        "SELECT task, min(seq) FROM events WHERE task IS NOT NULL "
        "AND starts_with(type, 'task.') GROUP BY task ORDER BY task"
    ).fetchall()
    return spans, firsts


DOC = Path(__file__).resolve().parent.parent / "docs" / "duckdb.md"


def test_docs_describe_every_table_and_view_column(sql: duckdb.DuckDBPyConnection) -> None:
    """docs/duckdb.md names every table, view and column an analyst will meet."""
    text = DOC.read_text()
    columns = sql.execute("SELECT table_name, column_name FROM information_schema.columns")
    missing = [
        (t, c) for t, c in columns.fetchall() if f"`{t}`" not in text or f"`{c}`" not in text
    ]
    assert missing == []


def test_the_sql_examples_in_the_docs_run(sql: duckdb.DuckDBPyConnection) -> None:
    """Every statement of every ```sql block of docs/duckdb.md runs against a real file."""
    blocks = re.findall(r"^```sql\n(.*?)^```", DOC.read_text(), re.MULTILINE | re.DOTALL)
    statements = [s for block in blocks for s in block.split(";") if s.strip()]
    assert statements
    for statement in statements:
        sql.execute(statement).fetchall()


def test_events_of_one_envelope_share_a_seq_and_keep_their_order(path: Path) -> None:
    """Several events (or bad events) of one message share its seq; ``idx`` orders them."""
    history = fleet()
    items = [Sequenced(1 + i // 3, "subject", event) for i, event in enumerate(history)]
    last = items[-1].seq + 1
    bad = [
        Quarantined(seq=last, subject="s", reason=f"event {i} is bad", data=b"x", size=1)
        for i in range(2)
    ]
    reference = MemoryStore()
    with DuckDBStore(path) as store:
        for each in (
            Batch(events=items[:6], last_seq=2),
            Batch(events=items[6:], last_seq=last - 1),
            Batch(quarantined=bad, last_seq=last),
        ):
            store.apply(each)
            reference.apply(each)
        assert store.quarantined() == reference.quarantined() == bad
    with duckdb.connect(str(path), read_only=True) as con:
        found = con.execute("SELECT seq, idx, id FROM events ORDER BY seq, idx").fetchall()
    assert found == [(item.seq, i % 3, item.event.id) for i, item in enumerate(items)]
    with DuckDBStore(path) as reopened:
        assert (reopened.read_model(), reopened.stats()) == (
            reference.read_model(),
            reference.stats(),
        )


def test_a_batch_replaces_only_the_rows_of_what_it_touched(path: Path) -> None:
    """Each entity keeps one current row, written by the last batch that touched it."""
    history = fleet()
    with DuckDBStore(path, materialize_every=0) as store:  # the derived rows on every batch
        for i, event in enumerate(history, 1):  # one event per batch: every row rewritten often
            store.apply(batch([event], i))
    with duckdb.connect(str(path), read_only=True) as con:
        retained = ("retained", "kind, id, type")  # an event once per entity kept for
        for table, key in (("tasks", "task"), ("workers", "worker"), retained):
            counts = con.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM {table}")
            total, distinct = counts.fetchone() or (0, 0)
            assert total == distinct > 0
        last = con.execute("SELECT max(batch_seq) FROM tasks").fetchone()
    assert last == (max(i for i, e in enumerate(history, 1) if hasattr(e, "task")),)


def test_a_task_named_again_long_after_is_derived_from_all_its_events(path: Path) -> None:
    """A live derivation reads a known task's events from its first one (``task_spans``),
    and replaces its rows however many derivations ago they were written; a task first named
    in a batch beside it reads only the batch."""
    old = [
        ev.TaskSubmitted(task="old", pool="p", queue="q", **at(0)),
        ev.TaskClaimed(task="old", worker="w", **at(1)),
    ]
    later = [[ev.TaskSubmitted(task=f"t{i}", pool="p", queue="q", **at(10 + i))] for i in range(20)]
    last = [
        ev.TaskCompleted(task="old", **at(40)),
        ev.TaskSubmitted(task="new", pool="p", queue="q", **at(41)),
    ]
    batches, seq = [], 1
    for events in [old, *later, last]:
        batches.append(batch(events, seq))
        seq += len(events)
    with DuckDBStore(path, materialize_every=0) as store:  # derived with every batch
        for each in batches:
            store.apply(each)
        assert store.read_model() == reference(batches).read_model()
        assert store.task("old") == reference(batches).task("old")
    with duckdb.connect(str(path), read_only=True) as con:
        spans = dict(con.execute("SELECT task, first_seq FROM task_spans").fetchall())
        assert (spans["old"], spans["t0"], spans["new"]) == (1, 3, seq - 1)
        for table in ("tasks", "task_spans"):
            counted = con.execute(f"SELECT count(*), count(DISTINCT task) FROM {table}")
            assert counted.fetchone() == (22, 22)
        intervals = con.execute("SELECT count(*) FROM slot_intervals WHERE task = 'old'")
        assert intervals.fetchone() == (1,)


@pytest.mark.parametrize("bulk", [True, False])
def test_a_batch_of_bulk_events_is_written_straight_to_the_file(path: Path, bulk: bool) -> None:
    """Why a daemon under load gathers ``bulk_events`` for the DuckDB store: that many in one
    transaction skip the write-ahead log (and the checkpoint that writes them again)."""
    count = DuckDBStore.bulk_events if bulk else DuckDBStore.bulk_events // 2
    events = [
        Sequenced(
            i + 1,
            "workledger.worker.heartbeat",
            ev.WorkerHeartbeat(worker=f"w{i % 97}", pool="etl", **at(i)),
        )
        for i in range(count)
    ]
    store = DuckDBStore(path, materialize_every=math.inf)
    try:
        store.apply(Batch(events=events, last_seq=count))
        wal = path.with_name(path.name + ".wal").stat().st_size
        assert (wal < 1_000_000) is bulk, wal  # ~14 KB, against ~8 MB for half as many
        assert store.stats().applied == count
    finally:
        store.close()
    with duckdb.connect(str(path), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (count,)
