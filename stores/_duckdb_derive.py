"""Every derived table in SQL, from the raw ``events``: how the DuckDB store writes them.

The Python fold (:class:`~workledger.projections.fold.Ledger`) is the reference; these
statements give the same rows set-based, in DuckDB's threads, rather than one Python view per
task (tests/test_duckdb_derive_*.py and the store contract suite hold them to the fold).

:func:`derive` brings the tables from one checkpoint to another. It rewrites the rows of each
task, worker, pool and queue named by an event after the first, from that entity's events.
A task's are read from ``events`` (nearly every task event counts, so a copy would be most of
the log again), from where its events begin (``task_spans``). A worker's are mostly
heartbeats, claims and starts that no longer count, so workers, and pools and queues, keep
``retained``: per entity, the events its rows still depend on. For a worker that is every
event but its earlier heartbeats, claims and starts. A superset of what the fold keeps, it
folds into the same state, because the fold is a join over sets of events. From checkpoint 0
it derives everything from ``events`` alone (a rebuild, an upgrade).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import NamedTuple

import duckdb

from workledger.stores import _duckdb_derive_tasks as tasks
from workledger.stores import _duckdb_schema as schema
from workledger.stores._duckdb_derive_workers import worker_sessions_select, workers_select

__all__ = [
    "FAMILIES",
    "derive",
    "fill_task_spans",
    "pools_select",
    "queues_select",
    "restore_settings",
]

Select = Callable[[str], str]


def _settings_select(events: str, family: str, keys: str, fields: tuple[str, ...]) -> str:
    """Pools or queues: each field is a last-writer-wins register, set by the latest event
    that carries it, by ``(at, id)`` and then its JSON, as the fold's ``_newer`` (JSON ``null``
    clears it; a field left out changes nothing); created at the earliest ``*.created``,
    updated at the latest event."""
    kinds = {"concurrency_limit": "BIGINT", "priority": "BIGINT", "paused": "BOOLEAN"}
    registers = ",\n".join(
        f"arg_max_null((payload->>'{name}')::{kinds[name]}, (\"at\", id, payload::VARCHAR)) "
        f"FILTER (WHERE json_exists(payload, '$.{name}')) AS {name}"
        for name in fields
    )
    columns = ", ".join(
        f"coalesce({name}, false) AS {name}" if kinds[name] == "BOOLEAN" else name
        for name in fields
    )
    return f"""
        WITH registers AS (
            SELECT {keys},
                {registers},
                min("at") FILTER (WHERE type = '{family}.created') AS created_at,
                max("at") AS updated_at
            FROM {events} AS e
            WHERE type IN ('{family}.created', '{family}.updated')
            GROUP BY {keys}
        )
        SELECT {keys}, {columns}, created_at, updated_at FROM registers"""  # noqa: S608


def pools_select(events: str) -> str:
    """The ``pools`` table's rows."""
    return _settings_select(events, "pool", "pool", ("concurrency_limit", "paused"))


def queues_select(events: str) -> str:
    """The ``queues`` table's rows."""
    fields = ("priority", "concurrency_limit", "paused")
    return _settings_select(events, "queue", "pool, queue", fields)


def _worker_retained(events: str) -> str:
    """A worker's events but its heartbeats, claims and starts other than its latest event
    and its latest sign of life."""
    return f"""
        WITH latest AS (
            SELECT worker,
                arg_max(id, ("at", id)) FILTER (WHERE starts_with(type, 'worker.')) AS latest_id,
                arg_max(id, ("at", id))
                    FILTER (WHERE type NOT IN ('worker.lost', 'worker.forgotten')) AS seen_id
            FROM {events} AS e GROUP BY worker
        )
        SELECT e.* FROM {events} AS e JOIN latest USING (worker)
        WHERE (starts_with(type, 'worker.') AND type <> 'worker.heartbeat')
            OR id = latest_id OR id = seen_id"""  # noqa: S608


def _everything(events: str) -> str:
    return f"SELECT * FROM {events} AS e"  # noqa: S608


class Family(NamedTuple):
    """One kind of entity: the events it reads, its key columns, its tables, its retained,
    and the temporary tables its tables' selects share (name -> select of the events)."""

    name: str
    reads: str  # SQL condition on an event row
    keys: str
    tables: tuple[tuple[schema.Table, Select], ...]
    retained: Select | None  # None: its entities' events are read from ``events``
    stage: Callable[[str, bool], dict[str, str]] = lambda _events, _keep: {}


_TASK_READS = "task IS NOT NULL AND starts_with(type, 'task.')"
# A task begun within this many events of a derivation's start has its events read by range;
# one begun before, by the sequences its rows depend on (_known_task_events). A range of a million
# events is ~8 row groups.
_YOUNG = 1_000_000

FAMILIES = (
    Family(
        "task",
        _TASK_READS,
        "task",
        (
            (schema.TASKS, lambda _events: tasks.tasks_select()),
            (schema.SLOT_INTERVALS, lambda _events: tasks.slot_intervals_select()),
            (schema.TASK_SPANS, lambda _events: tasks.task_spans_select()),
        ),
        None,
        tasks.stage,
    ),
    Family(  # claims and starts are a worker's signs of life
        "worker",
        "worker IS NOT NULL AND (starts_with(type, 'worker.') "
        "OR type IN ('task.claimed', 'task.started'))",
        "worker",
        ((schema.WORKERS, workers_select), (schema.WORKER_SESSIONS, worker_sessions_select)),
        _worker_retained,
    ),
    Family(
        "pool",
        "type IN ('pool.created', 'pool.updated')",
        "pool",
        ((schema.POOLS, pools_select),),
        _everything,
    ),
    Family(
        "queue",
        "type IN ('queue.created', 'queue.updated')",
        "pool, queue",
        ((schema.QUEUES, queues_select),),
        _everything,
    ),
)


def derive(
    cursor: duckdb.DuckDBPyConnection, since: int, batch_seq: int, *, alone: bool = False
) -> None:
    """Bring every derived table and ``retained`` from checkpoint ``since`` to ``batch_seq``
    (``since=0``: derive them all again from ``events``). Runs in the caller's transaction;
    the rows it writes get ``batch_seq``, a task's in every table alike (:func:`_known_task_events`
    finds them by it).

    ``alone``: nothing else writes to the database meanwhile. Only then is DuckDB's
    ``preserve_insertion_order`` dropped while deriving (12-14% less CPU deriving 10M events):
    the setting is global to the database, and other writes (a batch's set-aside messages) are
    read back in insertion order. No row written here is, but a worker's sessions, whose
    select ends in an ORDER BY, which DuckDB keeps regardless. An aborted transaction refuses
    to restore the setting: :func:`restore_settings` after its rollback.
    """
    if not alone:
        _derive(cursor, since, batch_seq)
        return
    cursor.execute("SET preserve_insertion_order = false")
    try:
        _derive(cursor, since, batch_seq)
    finally:
        with suppress(duckdb.TransactionException):  # aborted: restored after the rollback
            restore_settings(cursor)


def restore_settings(cursor: duckdb.DuckDBPyConnection) -> None:
    """Undo what :func:`derive` sets when ``alone``: the database's other writes (the events
    of a batch, its set-aside messages) are read back in insertion order."""
    cursor.execute("RESET preserve_insertion_order")


def _derive(cursor: duckdb.DuckDBPyConnection, since: int, batch_seq: int) -> None:
    if since > 0:
        cursor.execute(f"CREATE OR REPLACE TEMP TABLE wl_fresh AS FROM events WHERE seq > {since}")
    for family in FAMILIES:
        if since > 0:
            found = _touched(cursor, family, since)
            if found is None:
                continue  # nothing of the family changed (pools and queues, mostly)
            source, touched = found
        else:
            source, touched = _all_of(cursor, family), "true"
        # From 0 over a long log (a rebuild), tasks keep no seqs: a list per task costs a
        # quarter of its derivation (_known_task_events reads them by range until touched again).
        staged = family.stage(source, since > 0 or batch_seq <= _YOUNG)
        for name, statement in staged.items():
            cursor.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {statement}")
        for table, select in family.tables:
            cursor.execute(f"DELETE FROM {table.name} WHERE {touched}")  # noqa: S608
            cursor.execute(
                f"INSERT INTO {table.name} BY NAME "  # noqa: S608
                f"SELECT *, {batch_seq}::BIGINT AS {schema.BATCH_SEQ} FROM ({select(source)})"
            )
        if family.retained is not None:
            cursor.execute(
                f"DELETE FROM retained WHERE kind = '{family.name}' AND {touched}"  # noqa: S608
            )
            cursor.execute(
                f"INSERT INTO retained BY NAME SELECT *, '{family.name}' AS kind, "  # noqa: S608
                f"{batch_seq}::BIGINT AS {schema.BATCH_SEQ} FROM ({family.retained(source)})"
            )
        for name in staged:
            cursor.execute(f"DROP TABLE {name}")
    for name in ("wl_fresh", "wl_touched", "wl_events", "wl_known"):  # free what they hold now
        cursor.execute(f"DROP TABLE IF EXISTS {name}")


def fill_task_spans(cursor: duckdb.DuckDBPyConnection) -> None:
    """``task_spans`` for a file of schema 5 or 6 (the caller checks), whose tables are
    derived but had none: from its events up to the checkpoint they were derived to (a later
    event is fresh to the next derivation, which writes its task's span). Each task keeps
    every one of its events (more than its rows depend on, which folds the same) and its
    ``tasks`` row's ``batch_seq``, the derivation that wrote its rows."""
    cursor.execute(
        f"""INSERT INTO {schema.TASK_SPANS.name} BY NAME
        SELECT e.task, min(e.seq) AS first_seq, list(DISTINCT e.seq) AS kept,
            coalesce(any_value(t.{schema.BATCH_SEQ}), any_value(c.materialized))
                AS {schema.BATCH_SEQ}
        FROM events AS e CROSS JOIN checkpoint AS c LEFT JOIN tasks AS t USING (task)
        WHERE e.seq <= c.materialized AND {_TASK_READS}
        GROUP BY e.task"""  # noqa: S608
    )


def _all_of(cursor: duckdb.DuckDBPyConnection, family: Family) -> str:
    """Every event of the family (deriving from checkpoint 0), as a relation.

    A scan of ``events`` that reads payloads decompresses nearly the whole payload column,
    however few rows pass its filter. A family that keeps ``retained`` (its events are a small
    part of the log) is copied out once by row id, which reads only their payloads, and its
    selects read the copy. The task family's events are most of the log (so it keeps no
    ``retained``): its selects read ``events`` itself.
    """
    if family.retained is None:
        return f"(FROM events WHERE {family.reads})"
    _copy_events(cursor, family.reads)
    return "wl_events"


def _copy_events(cursor: duckdb.DuckDBPyConnection, *where: str) -> None:
    """``wl_events``: the events matching any of ``where`` (one scan each, so that each can
    skip row groups by its own bounds), fetched by row id. A scan that reads payloads
    decompresses nearly the whole column however few rows it keeps; this one reads the
    payloads of the rows it keeps (a live derivation of 5,000 events on a 10M-event file
    copies the touched tasks' events in 0.07 CPU-s rather than 0.25)."""
    scans = " UNION ALL ".join(f"SELECT rowid FROM events WHERE {w}" for w in where)  # noqa: S608
    cursor.execute(
        f"CREATE OR REPLACE TEMP TABLE wl_events AS FROM events WHERE rowid IN ({scans})"
    )


def _touched(
    cursor: duckdb.DuckDBPyConnection, family: Family, since: int
) -> tuple[str, str] | None:
    """The family's entities named by ``wl_fresh``, and their events: all of them in
    ``events`` (tasks: :func:`_known_task_events`), or those retained for them and the fresh ones
    (retained ones are all at or before the last derivation's checkpoint, so no row is in
    both). An event delivered twice is two rows, which the selects, like the fold, count once.
    Returns that relation and the condition naming the entities' rows, or None when
    ``wl_fresh`` names none: a derivation's cost is mostly per statement, and most
    derivations change no pool or queue."""
    keys, reads = family.keys, family.reads
    created = cursor.execute(
        f"CREATE OR REPLACE TEMP TABLE wl_touched AS "  # noqa: S608
        f"SELECT DISTINCT {keys} FROM wl_fresh WHERE {reads}"
    ).fetchone()
    if created is not None and created[0] == 0:  # CREATE TABLE AS returns its row count
        return None
    touched = f"({keys}) IN (SELECT ({keys}) FROM wl_touched)"  # noqa: S608
    if family.retained is None:
        return "wl_events", _known_task_events(cursor, reads, touched, since)
    cursor.execute(
        f"""CREATE OR REPLACE TEMP TABLE wl_events AS
        SELECT * EXCLUDE (kind, {schema.BATCH_SEQ}) FROM retained
        WHERE kind = '{family.name}' AND {touched}
        UNION ALL BY NAME
        SELECT * FROM wl_fresh WHERE {reads}"""  # noqa: S608
    )
    return "wl_events", touched


def _known_task_events(
    cursor: duckdb.DuckDBPyConnection, reads: str, touched: str, since: int
) -> str:
    """``wl_events`` for the touched tasks, and the condition naming their rows to replace.

    A task id (a uuid's) leaves DuckDB no row group to skip by its min and max, so a read by
    id alone scans a table whole, and grew with the log. ``task_spans`` tells, per known task,
    where its events begin, the sequences of those its rows depend on, and which derivation
    last wrote its rows (in ``tasks``, ``slot_intervals`` and ``task_spans`` alike). Its
    events are then read

    - by range from the earliest first sequence, for tasks begun in the last ``_YOUNG``
      events (most), and those a derivation from 0 wrote last (it keeps no sequences);
    - by their kept sequences, for a task begun before (a long one reporting progress, a
      late event for one long done): a short list, which DuckDB finds by row groups' bounds;
    - not at all for a task not known yet: all its events are fresh, and it has no rows.

    and its rows are found by their ``batch_seq``, a short list too.
    """
    cursor.execute(
        "CREATE OR REPLACE TEMP TABLE wl_known AS SELECT first_seq, kept, "  # noqa: S608
        f"{schema.BATCH_SEQ} FROM {schema.TASK_SPANS.name} WHERE {touched}"
    )
    found = cursor.execute(
        "SELECT count(*), min(first_seq) FILTER "  # noqa: S608
        f"(WHERE first_seq >= {since - _YOUNG} OR kept IS NULL) FROM wl_known"
    ).fetchone()
    known, young = found if found else (0, None)
    if not known:  # every task the fresh events name is new
        cursor.execute(f"CREATE OR REPLACE TEMP TABLE wl_events AS FROM wl_fresh WHERE {reads}")
        return "false"
    start = min(young, since + 1) if young is not None else since + 1
    kept = f"SELECT unnest(kept) FROM wl_known WHERE first_seq < {start}"  # noqa: S608
    _copy_events(
        cursor,
        f"seq >= {start} AND {reads} AND {touched}",
        f"seq < {start} AND seq IN ({kept}) AND {reads} AND {touched}",
    )
    written = f"SELECT {schema.BATCH_SEQ} FROM wl_known"  # noqa: S608
    return f"{schema.BATCH_SEQ} IN ({written}) AND {touched}"
