"""The DuckDB store: the durable read model analysts query with SQL.

Batches are folded by the same :class:`~workledger.projections.fold.Ledger` as the in-memory
store (one implementation of the rules); the rows it produces for the touched tasks, workers,
pools and queues replace the old ones, and the raw events, the fold's retained events and the
checkpoint are written in the same DuckDB transaction. Reopening the file restores the Ledger
from the ``fold_state`` table, so a restart replays nothing it already has.

Queries are SQL over the tables and views of :mod:`workledger.stores._duckdb_schema`; worker
liveness is the one rule of :mod:`workledger.projections.liveness`, applied to the fetched rows.

DuckDB lets one process hold a file open for writing, and no other process can open it, not
even read-only, meanwhile. Each thread reads through its own cursor, so a read sees the last
committed batch and never blocks the writer. Other processes read a copy: ``publish`` writes
one between two batches (see :mod:`workledger.stores._duckdb_copy` and ``docs/analysts.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import duckdb
import msgspec
import pyarrow as pa

from workledger.core.errors import StoreError
from workledger.core.events import EventType
from workledger.projections.fold import Ledger
from workledger.projections.liveness import DEFAULT_MULTIPLIER, liveness
from workledger.projections.utilization import Grouping, UtilizationRow
from workledger.projections.views import (
    PoolView,
    Quarantined,
    QueueView,
    SlotCount,
    SlotHolder,
    SlotInterval,
    TaskStatus,
    TaskView,
    WorkerSession,
    WorkerStatus,
    WorkerView,
    WorkerWithStatus,
)
from workledger.stores import _duckdb_rows as rows
from workledger.stores import _duckdb_schema as schema
from workledger.stores._duckdb_copy import publish_copy
from workledger.stores._duckdb_utilization import utilization_sql
from workledger.stores.base import Batch, ReadModel, Sequenced, StoreStats

__all__ = ["DuckDBStore", "check_unlocked"]

_S = TypeVar("_S")
_events = msgspec.msgpack.Decoder(list[EventType])


class DuckDBStore:
    """A read model in one DuckDB file; ``read_only`` opens it for queries alone."""

    blocking = True  # the daemon runs ``apply`` in a worker thread

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._db = _connect(self.path, read_only)
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # a batch and a published copy never overlap
        self._ledger = Ledger()
        self._closed = False
        try:
            with self._translated("open"):
                if not read_only:
                    _create_schema(self._cursor())
                self._stats = self._read_stats()
                self._restore()
        except BaseException:
            self._release()
            raise

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Fold the write-ahead log into the file, then close it (releasing its lock).

        After ``close`` the file alone holds everything, so it can be copied or renamed.
        """
        if self._closed:
            return
        try:
            if not self.read_only:
                with self._translated("checkpoint"):
                    self._cursor().execute("CHECKPOINT")
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        with self._lock:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
        self._db.close()

    def __enter__(self) -> DuckDBStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- writes ------------------------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Fold, then write everything the batch changed in one transaction.

        Events at or below the checkpoint are skipped. If the write fails, the fold's record
        of touched entities is kept, so the next batch rewrites them too.
        """
        if self.read_only:
            raise StoreError(f"DuckDB file {self.path} is open read-only")
        with self._writing:
            self._apply(batch)

    def _apply(self, batch: Batch) -> None:
        done = self._stats.checkpoint
        if batch.last_seq <= done:
            return
        fresh = [item for item in batch.events if item.seq > done]
        held = [q for q in batch.quarantined if q.seq > done]
        for item in fresh:
            self._ledger.apply(item.event)
        tables = self._batch_tables(fresh, held)
        with self._translated(f"write the batch up to sequence {batch.last_seq}"):
            _write(self._cursor(), tables, batch.last_seq, len(fresh), len(held))
        self._ledger.changes.clear()
        s = self._stats
        self._stats = StoreStats(
            checkpoint=batch.last_seq,
            applied=s.applied + len(fresh),
            quarantined=s.quarantined + len(held),
        )

    def publish(self, target: Path) -> StoreStats:
        """Write a copy of the file as of the last committed batch to ``target``, atomically.

        Runs between two batches (a batch waits for it), so the copy holds whole batches only;
        readers in other processes open the copy, never the locked file. Returns the stats the
        copy holds.

        :raises StoreError: if the copy cannot be written (``target`` is then unchanged).
        """
        if self.read_only:
            raise StoreError(f"DuckDB file {self.path} is open read-only")
        action = f"publish a copy to {target}"
        with self._writing, self._translated(action):
            stats = self._stats
            try:
                publish_copy(self._cursor(), self.path, target)
            except OSError as exc:
                raise StoreError(f"DuckDB file {self.path}: cannot {action}: {exc}") from exc
            return stats

    def _batch_tables(
        self, fresh: Sequence[Sequenced], held: Sequence[Quarantined]
    ) -> dict[str, pa.Table]:
        """What the batch writes, as Arrow tables, keyed by the name SQL refers to them by."""
        ledger, changes = self._ledger, self._ledger.changes
        tasks = [v for v in map(ledger.task, changes.tasks) if v is not None]
        workers = [v for v in map(ledger.worker, changes.workers) if v is not None]
        pools = [v for v in map(ledger.pool, changes.pools) if v is not None]
        queues = [v for v in (ledger.queue(*k) for k in changes.queues) if v is not None]
        return {
            "new_events": rows.event_table(fresh),
            "new_quarantined": rows.quarantined_table(held),
            "new_tasks": rows.struct_table(schema.TASKS, tasks),
            "new_workers": rows.struct_table(schema.WORKERS, workers),
            "new_pools": rows.struct_table(schema.POOLS, pools),
            "new_queues": rows.struct_table(schema.QUEUES, queues),
            "new_slot_intervals": rows.struct_table(
                schema.SLOT_INTERVALS, [i for t in changes.tasks for i in ledger.intervals(t)]
            ),
            "new_worker_sessions": rows.struct_table(
                schema.WORKER_SESSIONS, [s for w in changes.workers for s in ledger.sessions(w)]
            ),
            "new_fold_state": rows.fold_state_table(ledger, changes),
            "touched_tasks": pa.table({"task": pa.array(list(changes.tasks), pa.string())}),
            "touched_workers": pa.table({"worker": pa.array(list(changes.workers), pa.string())}),
        }

    # --- reads -------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        return self._stats

    def task(self, task: str) -> TaskView | None:
        found = self._select(TaskView, "SELECT * FROM tasks WHERE task = ?", [task])
        return found[0] if found else None

    def tasks(
        self,
        *,
        status: TaskStatus | None = None,
        pool: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        where, params = _where(
            ("t.status = ?", status),
            ("coalesce(t.pool, w.pool) = ?", pool),
            ("t.queue = ?", queue),
            ("t.worker = ?", worker),
        )
        sql = f"""
            SELECT t.* FROM tasks t
            LEFT JOIN workers w ON t.pool IS NULL AND w.worker = t.worker {where}
            ORDER BY t.updated_at DESC NULLS LAST, t.task LIMIT ?"""  # noqa: S608 (fixed clauses)
        return self._select(TaskView, sql, [*params, max(limit, 0)])

    def workers(
        self,
        *,
        now: datetime,
        pool: str | None = None,
        queue: str | None = None,
        task_keys: Sequence[str] = (),
        status: WorkerStatus | None = None,
        multiplier: float = DEFAULT_MULTIPLIER,
        limit: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[WorkerWithStatus]:
        where, params = _where(
            ("w.pool = ?", pool),
            ("(len(w.queues) = 0 OR list_contains(w.queues, ?))", queue),
            ("list_has_any(w.task_keys, ?::VARCHAR[])", list(task_keys) or None),
            *(("w.labels[?] = ?", pair) for pair in (labels or {}).items()),
        )
        sql = f"""
            SELECT w.*, s.tasks AS held FROM workers w JOIN worker_slots s USING (worker)
            {where} ORDER BY w.last_seen DESC NULLS LAST, w.worker"""  # noqa: S608
        found = []
        for row in self._dicts(sql, params):
            held = tuple(row.pop("held"))
            view = msgspec.convert(row, WorkerView)
            state = liveness(view, now, multiplier)
            if status is None or state == status:
                free = max(view.slots - len(held), 0)
                found.append(
                    WorkerWithStatus(worker=view, status=state, tasks=held, free_slots=free)
                )
        return found if limit is None else found[:limit]

    def slot_holders(
        self, *, pool: str | None = None, queue: str | None = None
    ) -> list[SlotHolder]:
        where, params = _where(("pool = ?", pool), ("queue = ?", queue))
        sql = f"""
            SELECT * FROM active_slot_holders {where}
            ORDER BY pool NULLS FIRST, queue NULLS FIRST, since NULLS FIRST, task"""  # noqa: S608
        return self._select(SlotHolder, sql, params)

    def slot_counts(self, *, pool: str | None = None) -> list[SlotCount]:
        where, params = _where(("pool = ?", pool))
        sql = f"SELECT * FROM slot_counts {where} ORDER BY pool NULLS FIRST, queue NULLS FIRST"  # noqa: S608
        return self._select(SlotCount, sql, params)

    def pools(self) -> list[PoolView]:
        return self._select(PoolView, "SELECT * FROM pools ORDER BY pool")

    def queues(self, *, pool: str | None = None) -> list[QueueView]:
        where, params = _where(("pool = ?", pool))
        return self._select(QueueView, f"SELECT * FROM queues {where} ORDER BY pool, queue", params)  # noqa: S608

    def quarantined(self, *, limit: int = 100) -> list[Quarantined]:
        sql = "SELECT * FROM quarantined ORDER BY seq DESC LIMIT ?"
        return self._select(Quarantined, sql, [max(limit, 0)])

    def read_model(self) -> ReadModel:
        return ReadModel(
            tasks=self._select(TaskView, "SELECT * FROM tasks ORDER BY task"),
            workers=self._select(WorkerView, "SELECT * FROM workers ORDER BY worker"),
            pools=self.pools(),
            queues=self.queues(),
            quarantined=self._select(Quarantined, "SELECT * FROM quarantined ORDER BY seq"),
            intervals=list(self.slot_intervals()),
            sessions=list(self.worker_sessions()),
        )

    def slot_intervals(self) -> Iterable[SlotInterval]:
        """Every slot stretch of every task (for utilization), by task and attempt."""
        sql = "SELECT * FROM slot_intervals ORDER BY task, attempt"
        return self._select(SlotInterval, sql)

    def worker_sessions(self) -> Iterable[WorkerSession]:
        """Every session of every worker (for utilization), in each worker's order.

        A worker's sessions are always rewritten together, in order, so ``rowid`` breaks ties
        between two starts at the same instant the way the fold does (by event id).
        """
        sql = "SELECT * FROM worker_sessions ORDER BY worker, started_at, rowid"
        return self._select(WorkerSession, sql)

    def utilization(
        self,
        *,
        by: Grouping,
        since: datetime,
        until: datetime,
        now: datetime,
        bucket: timedelta | None = None,
        multiplier: float = DEFAULT_MULTIPLIER,
    ) -> list[UtilizationRow]:
        """One SQL query over ``slot_intervals`` and ``worker_sessions``; nothing loaded."""
        with self._translated("compute utilization"):
            return utilization_sql(
                self._cursor(),
                by=by,
                since=since,
                until=until,
                now=now,
                bucket=bucket,
                multiplier=multiplier,
            )

    # --- plumbing ----------------------------------------------------------------------------

    def _select(self, kind: type[_S], sql: str, params: Sequence[object] = ()) -> list[_S]:
        return msgspec.convert(self._dicts(sql, params), list[kind])  # type: ignore[valid-type]

    def _dicts(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        with self._translated("query"):
            cursor = self._cursor().execute(sql, list(params))
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor: DuckDB connections must not be shared between threads."""
        cursor: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._db.cursor()
            cursor.execute("SET TimeZone = 'UTC'")
            with self._lock:
                self._cursors.append(cursor)
            self._local.cursor = cursor
        return cursor

    def _read_stats(self) -> StoreStats:
        found = self._dicts("SELECT * FROM checkpoint WHERE id = 1")
        if not found:  # a file opened read-only before any daemon wrote it
            return StoreStats(checkpoint=0, applied=0, quarantined=0)
        row = found[0]
        if row["schema_version"] != schema.SCHEMA_VERSION:
            raise StoreError(
                f"DuckDB file {self.path} has schema version {row['schema_version']}, this "
                f"workledger writes {schema.SCHEMA_VERSION}: rebuild it (`workledger rebuild`)"
            )
        return StoreStats(
            checkpoint=row["checkpoint"], applied=row["applied"], quarantined=row["quarantined"]
        )

    def _restore(self) -> None:
        """Fold the retained events back into the Ledger: the state without the stream."""
        for (blob,) in self._cursor().execute("SELECT events FROM fold_state").fetchall():
            for event in _events.decode(blob):
                self._ledger.apply(event)
        self._ledger.changes.clear()

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except duckdb.Error as exc:
            raise StoreError(f"DuckDB file {self.path}: cannot {action}: {exc}") from exc


def check_unlocked(path: Path) -> None:
    """Check no other process holds ``path`` open (e.g. a running daemon).

    :raises StoreError: if it is locked or is not a DuckDB file.
    """
    if path.exists():
        _connect(path, read_only=True).close()


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    if read_only and not path.exists():
        raise StoreError(f"no DuckDB file at {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise StoreError(
                f"cannot open DuckDB file {path}: it is locked by another process (the "
                "daemon?); stop it, or query a copy of the file"
            ) from exc
        raise StoreError(f"cannot open DuckDB file {path}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"cannot open DuckDB file {path}: {exc}") from exc


def _create_schema(cursor: duckdb.DuckDBPyConnection) -> None:
    for table in schema.TABLES:
        cursor.execute(table.ddl)
    for name, body in schema.VIEWS.items():
        cursor.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    cursor.execute(
        "INSERT INTO checkpoint VALUES (1, 0, 0, 0, ?) ON CONFLICT DO NOTHING",
        [schema.SCHEMA_VERSION],
    )


# Each derived table: the rows a batch replaces are found through these key tables.
_REPLACE = (
    ("tasks", "touched_tasks", ("task",)),
    ("slot_intervals", "touched_tasks", ("task",)),
    ("workers", "touched_workers", ("worker",)),
    ("worker_sessions", "touched_workers", ("worker",)),
    ("pools", "new_pools", ("pool",)),
    ("queues", "new_queues", ("pool", "queue")),
    ("fold_state", "new_fold_state", ("kind", "key")),
)
_APPEND = (("events", "new_events"), ("quarantined", "new_quarantined"))


def _write(
    cursor: duckdb.DuckDBPyConnection,
    tables: dict[str, pa.Table],
    last_seq: int,
    applied: int,
    quarantined: int,
) -> None:
    """One transaction: replace touched rows, append events, move the checkpoint."""
    for name, table in tables.items():
        cursor.register(name, table)
    try:
        cursor.begin()
        try:
            _write_rows(cursor)
            cursor.execute(
                "UPDATE checkpoint SET checkpoint = ?, applied = applied + ?, "
                "quarantined = quarantined + ? WHERE id = 1",
                [last_seq, applied, quarantined],
            )
            cursor.commit()
        except BaseException:
            # A failed commit may have ended the transaction already; the first error is the
            # one to report, never "cannot rollback - no transaction is active".
            with suppress(duckdb.Error):
                cursor.rollback()
            raise
    finally:
        for name in tables:
            cursor.unregister(name)


def _write_rows(cursor: duckdb.DuckDBPyConnection) -> None:
    for table, keys, columns in _REPLACE:
        match = " AND ".join(f"{table}.{c} = k.{c}" for c in columns)
        cursor.execute(f"DELETE FROM {table} USING {keys} k WHERE {match}")  # noqa: S608
        cursor.execute(f"INSERT INTO {table} BY NAME SELECT * FROM new_{table}")  # noqa: S608
    for table, source in _APPEND:
        cursor.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {source}")  # noqa: S608


def _where(*clauses: tuple[str, object | None]) -> tuple[str, list[object]]:
    """A WHERE clause from the filters that are set (``None`` means "any")."""
    chosen = [(sql, value) for sql, value in clauses if value is not None]
    if not chosen:
        return "", []
    params: list[object] = []
    for _, value in chosen:  # a tuple fills as many placeholders as it holds, in order
        if isinstance(value, tuple):
            params.extend(value)
        else:
            params.append(value)
    return "WHERE " + " AND ".join(sql for sql, _ in chosen), params
