"""The SQL derivation of ``tasks`` and ``slot_intervals`` gives the fold's rows.

Each history is applied to a real DuckDB file by :class:`DuckDBStore`; the SQL reads the file's
``events`` and must give the rows the Python fold gives for them (:func:`fold_rows`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.stores import _duckdb_schema as schema
from workledger.stores._duckdb_derive_tasks import slot_intervals_select, stage, tasks_select
from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore

from .fold_rows import fold_rows
from .histories import BASE, TASKS, histories

Rows = list[tuple[Any, ...]]


def t(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def stamped(*events: ev.Event) -> list[ev.Event]:
    """Events with ids e00000, e00001, ... in the order given (their times are their own)."""
    return [msgspec.structs.replace(e, id=f"e{i:05d}") for i, e in enumerate(events)]


def apply(path: Path, batches: Sequence[Sequence[ev.Event]]) -> duckdb.DuckDBPyConnection:
    """Each list of events one batch, numbered on from the last; the closed file reopened."""
    with DuckDBStore(path, materialize_every=0) as store:
        seq = 0
        for events in batches:
            if events:
                items = [Sequenced(seq + 1 + i, "s", e) for i, e in enumerate(events)]
                seq += len(items)
                store.apply(Batch(events=items, last_seq=seq))
    return duckdb.connect(str(path))


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> Rows:
    return sorted(con.execute(sql).fetchall(), key=repr)


def staged(con: duckdb.DuckDBPyConnection, events: str) -> list[tuple[schema.Table, str]]:
    """Stage ``events`` as the store does; each table with the select of its rows."""
    for name, select in stage(events).items():
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {select}")
    return [(schema.TASKS, tasks_select()), (schema.SLOT_INTERVALS, slot_intervals_select())]


def fold_and_sql(con: duckdb.DuckDBPyConnection, events: str = "events") -> dict[str, Rows]:
    """Per table: the fold's rows of every event in the file, then the SQL's of ``events``."""
    found = {}
    for table, select in staged(con, events):
        found[table.name] = fold_rows(con, table)
        found[f"sql {table.name}"] = rows(con, select)
    return found


def assert_agree(con: duckdb.DuckDBPyConnection) -> dict[str, Rows]:
    found = fold_and_sql(con)
    assert found["sql tasks"] == found["tasks"]
    assert found["sql slot_intervals"] == found["slot_intervals"]
    return found


# Reused ids: the histories' tasks folded onto two.
_TWO_TASKS = {task: TASKS[0] if i < 3 else TASKS[-1] for i, task in enumerate(TASKS)}


@st.composite
def batched(draw: st.DrawFn, reused_ids: bool = False) -> list[list[ev.Event]]:
    """A history with some events repeated elsewhere in the stream (at another sequence),
    cut into batches.

    ``reused_ids``: different events share ids and times; the task events of a few such
    histories (each is short, mostly) on two tasks, so that they collide on one often enough.
    """
    if reused_ids:
        parts = draw(st.lists(histories(reused_ids=True), min_size=2, max_size=6))
        history = [
            msgspec.structs.replace(e, task=_TWO_TASKS[e.task])  # type: ignore[attr-defined]
            for part in parts
            for e in part
            if e.family == "task"
        ]
    else:
        history = draw(histories())
    stream = list(history)
    for _ in range(draw(st.integers(0, 4 if history else 0))):
        repeat = draw(st.sampled_from(history))
        stream.insert(draw(st.integers(0, len(stream))), repeat)
    cuts = sorted(draw(st.sets(st.integers(0, len(stream)), max_size=4)) | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(cuts)]


@settings(max_examples=50, deadline=None)  # ~0.2 s each: a store per example
@given(case=batched())
def test_the_sql_gives_the_folds_rows_for_any_history_batches_and_repeats(
    tmp_path_factory: pytest.TempPathFactory, case: list[list[ev.Event]]
) -> None:
    """Any history (colliding ids and times, every family), in any batches, with repeats."""
    con = apply(tmp_path_factory.mktemp("derive") / "ledger.duckdb", case)
    with con:
        assert_agree(con)


@settings(max_examples=50, deadline=None)
@given(case=batched(reused_ids=True))
def test_the_sql_gives_the_folds_rows_when_different_events_share_ids(
    tmp_path_factory: pytest.TempPathFactory, case: list[list[ev.Event]]
) -> None:
    """Ids from a pool of four and times from two instants (a faulty producer): registers
    break (at, id) ties by the JSON, and events sharing an id count once, the newer kept."""
    con = apply(tmp_path_factory.mktemp("derive") / "ledger.duckdb", case)
    with con:
        assert_agree(con)


def test_the_sql_reads_a_subquery_and_returns_the_tables_columns(tmp_path: Path) -> None:
    """``events`` may be a parenthesised subquery; the columns are the tables', typed alike;
    payload values come through JSON unchanged."""
    message = 'é "\\\n\u2603'
    history = stamped(
        ev.TaskSubmitted(task="a", pool="p", queue="q", priority=3, at=t(0)),
        ev.TaskClaimed(task="a", worker="w", at=t(1)),
        ev.TaskSubmitted(
            task="b", pool="p", queue="q", priority=2**63 - 1, item='{"x": 1}', at=t(0)
        ),
        ev.TaskStarted(task="b", worker="w", at=t(1)),
        ev.TaskProgress(task="b", progress=5e-324, message=message, at=t(1.5)),
        ev.WorkerHeartbeat(worker="w", pool="p", at=t(2)),
    )
    with apply(tmp_path / "ledger.duckdb", [history]) as con:
        found = fold_and_sql(con, "(SELECT * FROM events WHERE task IN ('b'))")
        assert found["sql tasks"] == [r for r in found["tasks"] if r[0] == "b"]
        assert found["sql slot_intervals"] == [r for r in found["slot_intervals"] if r[0] == "b"]
        (task,) = found["sql tasks"]
        assert (task[6], task[7], task[15], task[16]) == (2**63 - 1, '{"x": 1}', 5e-324, message)
        for table, select in staged(con, "events"):
            described = con.execute(f"DESCRIBE {select}").fetchall()
            columns = con.execute(f"DESCRIBE {table.name}").fetchall()
            assert [row[:2] for row in described] == [row[:2] for row in columns[:-1]]
            assert [row[0] for row in described] == list(table.columns)


def test_retries_split_the_stretches_and_empty_ones_still_count(tmp_path: Path) -> None:
    """Each retry ends a stretch; an attempt with no claim gets no interval but its number."""
    history = stamped(
        ev.TaskSubmitted(task="a", pool="p", queue="q", at=t(0)),
        ev.TaskClaimed(task="a", worker="w1", at=t(1)),
        ev.TaskStarted(task="a", worker="w1", at=t(2)),
        ev.TaskRetrying(task="a", error="boom", at=t(3)),
        ev.TaskRetrying(task="a", error="oom", at=t(4)),
        ev.TaskClaimed(task="a", worker="w2", at=t(5)),
    )
    with apply(tmp_path / "ledger.duckdb", [history]) as con:
        found = assert_agree(con)
    intervals = [(r[1], r[2], r[7], r[8], r[9], r[10]) for r in found["sql slot_intervals"]]
    assert intervals == [
        (1, "w1", t(1), t(2), t(3), "RETRYING"),
        (3, "w2", t(5), None, None, None),
    ]
    (task,) = found["sql tasks"]
    assert task[1:2] == ("PENDING",)
    assert (task[8], task[10], task[11], task[14], task[17]) == ("w2", t(5), None, 2, "oom")


def test_started_beats_claimed_within_a_stretch_whatever_the_times(tmp_path: Path) -> None:
    """A late claim by another worker does not turn RUNNING back into PENDING."""
    history = stamped(
        ev.TaskStarted(task="a", worker="w1", at=t(5)),
        ev.TaskClaimed(task="a", worker="w2", at=t(6)),
    )
    with apply(tmp_path / "ledger.duckdb", [history]) as con:
        found = assert_agree(con)
    (task,) = found["sql tasks"]
    assert (task[1], task[8], task[10], task[11]) == ("RUNNING", "w1", t(5), t(5))
    (interval,) = found["sql slot_intervals"]
    assert (interval[2], interval[7], interval[8]) == ("w1", t(5), t(5))


def test_the_terminal_wins_and_ties_on_time_go_to_the_larger_id(tmp_path: Path) -> None:
    """A claim after the terminal changes nothing but the worker; equal times: latest id."""
    history = stamped(
        ev.TaskSubmitted(task="a", pool="p1", queue="q", at=t(0)),
        ev.TaskSubmitted(task="a", pool="p2", queue="q", stage="s", at=t(0)),
        ev.TaskFailed(task="a", error="boom", at=t(3)),
        ev.TaskCompleted(task="a", at=t(3)),
        ev.TaskClaimed(task="a", worker="w1", at=t(4)),
    )
    with apply(tmp_path / "ledger.duckdb", [history]) as con:
        found = assert_agree(con)
    (task,) = found["sql tasks"]
    assert task[1:6] == ("COMPLETED", "p2", "q", None, "s")
    assert (task[8], task[10], task[12], task[17]) == ("w1", None, t(3), None)
    (interval,) = found["sql slot_intervals"]
    assert (interval[3], interval[7], interval[9], interval[10]) == ("p2", t(4), t(4), "COMPLETED")


def test_without_a_submission_the_latest_pool_hint_places_the_task(tmp_path: Path) -> None:
    """No task.submitted: pool and queue from the latest event naming a pool, no key, no stage."""
    history = stamped(
        ev.TaskClaimed(task="a", worker="w1", pool="p1", queue="q1", at=t(2)),
        ev.TaskStarted(task="a", worker="w1", queue="q2", at=t(3)),  # no pool: no hint
        ev.TaskClaimed(task="a", worker="w2", pool="p2", at=t(1)),
        ev.TaskProgress(task="a", progress=0.5, message="half", at=t(4)),
    )
    with apply(tmp_path / "ledger.duckdb", [history]) as con:
        found = assert_agree(con)
    (task,) = found["sql tasks"]
    assert task[1:6] == ("RUNNING", "p1", "q1", None, None)
    assert (task[8], task[13], task[15], task[16]) == ("w1", t(4), 0.5, "half")
    (interval,) = found["sql slot_intervals"]
    assert interval[1:5] == (1, "w1", "p1", "q1")
