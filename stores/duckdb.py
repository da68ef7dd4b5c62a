"""The DuckDB store: the durable read model analysts query with SQL.

Each batch commits its raw events and the checkpoint: that is what makes it durable, and all
the Python it costs is building one Arrow table of them. The derived tables (the rows of every
task, worker, pool and queue) are derived from those events in SQL
(:mod:`workledger.stores._duckdb_derive`, held to the Python fold by property tests): by a
thread of the store's own, at most once a ``materialize_every`` seconds and in a transaction
of its own while batches go on being appended, and before any read, copy or close. An entity
touched by many events between two derivations is written once, from its events (a
worker's, pool's or queue's: those it ``retained`` and the new ones). Nothing is folded in
Python, so a restart restores nothing: the next derivation derives what the last one had not.

Queries are SQL over the tables and views of :mod:`workledger.stores._duckdb_schema`; worker
liveness is the one rule of :mod:`workledger.projections.liveness`, applied to the fetched rows.

DuckDB lets one process hold a file open for writing, and no other process can open it, not
even read-only, meanwhile. Each thread reads through its own cursor, so a read sees the last
committed batch and never blocks the writer. Other processes read a copy: ``publish`` writes
one between two batches (see :mod:`workledger.stores._duckdb_copy` and ``docs/analysts.md``).
"""

from __future__ import annotations

import math
import threading
import time
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
from workledger.stores._duckdb_derive import derive, fill_task_spans, restore_settings
from workledger.stores._duckdb_utilization import utilization_sql
from workledger.stores.base import Batch, ReadModel, StoreStats

__all__ = ["DuckDBStore", "check_unlocked"]

_S = TypeVar("_S")


class DuckDBStore:
    """A read model in one DuckDB file; ``read_only`` opens it for queries alone.

    ``materialize_every``: the most seconds between two derivations of the tables (0: with
    every batch; ``math.inf``: only before a read, a copy or close, as a rebuild does). In
    between, a thread of the store's own derives them on its own cursor, in its own
    transaction, while batches go on being appended: a derivation (up to a second under load)
    no longer holds back the batches behind it.
    """

    blocking = True  # the daemon runs ``apply`` in a worker thread
    # A transaction appending a row group's worth of rows (DuckDB's 122,880) has DuckDB write
    # them compressed, straight to the file; fewer go through the write-ahead log and are
    # written again at a checkpoint (~2.6 µs an event more: benchmarks/HISTORY.md, session 22).
    # A daemon under a heavy load gathers this many events for a batch (``ProjectorConfig``).
    bulk_events = 122_880

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        materialize_every: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.materialize_every = materialize_every
        self._db = _connect(self.path, read_only)
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # a batch and a published copy never overlap
        self._deriving = threading.RLock()  # one derivation at a time, and none during a copy
        self._closed = False
        self._behind = 0 < materialize_every < math.inf and not read_only  # derive in a thread
        self._deriver: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failure: StoreError | None = None  # the deriver's, raised by the next batch
        self._due = time.monotonic() + materialize_every  # when the deriver derives next
        try:
            with self._translated("open"):
                if not read_only:
                    _create_schema(self._cursor())
                self._stats, self._materialized = self._read_stats()
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
            self._stop_deriver()
            if not self.read_only:
                with self._writing:
                    self._materialize(alone=True)
                with self._translated("checkpoint"):
                    self._cursor().execute("CHECKPOINT")
        finally:
            self._release()

    def _release(self) -> None:
        self._stop_deriver()
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
        """Commit the batch's events and checkpoint (and derive the tables when due).

        Events at or below the checkpoint are skipped. If the write fails, the file is as it
        was, so a retried batch applies cleanly.
        """
        if self.read_only:
            raise StoreError(f"DuckDB file {self.path} is open read-only")
        if self._failure is not None:
            raise StoreError(f"{self._failure} (in the background)") from self._failure
        with self._writing:
            self._apply(batch)
        if self._behind and self._deriver is None:
            self._deriver = threading.Thread(
                target=self._derive_behind, name=f"workledger-derive {self.path.name}", daemon=True
            )
            self._deriver.start()

    def _apply(self, batch: Batch) -> None:
        done = self._stats.checkpoint
        if batch.last_seq <= done:
            return
        fresh = [item for item in batch.events if item.seq > done]
        held = [q for q in batch.quarantined if q.seq > done]
        write = _Write(batch.last_seq, applied=len(fresh), quarantined=len(held))
        write.insert(schema.EVENTS, rows.event_table(fresh), rows.EVENTS_SELECT)
        write.insert(schema.QUARANTINED, rows.quarantined_table(held))
        # materialize_every=0: the tables are derived in the batch's transaction, all or nothing
        since = self._materialized if self.materialize_every == 0 else None
        with self._translated(f"write the batch up to sequence {write.last_seq}"):
            _write(self._cursor(), write, since)
        if since is not None:
            self._materialized = batch.last_seq
        s = self._stats
        self._stats = StoreStats(
            checkpoint=batch.last_seq,
            applied=s.applied + len(fresh),
            quarantined=s.quarantined + len(held),
        )

    def _materialize(self, *, alone: bool) -> None:
        """Derive the tables of everything committed since they were last derived; ``alone``
        when the caller holds ``_writing``, so that no batch is written meanwhile."""
        with self._deriving:
            if self._materialized != self._stats.checkpoint:
                self._derive_committed(alone=alone)

    def _current(self) -> None:
        """Before a read: bring the derived tables up to the checkpoint (no batch meanwhile,
        so the read sees the tables of every batch it sees)."""
        if not self.read_only and self._materialized != self._stats.checkpoint:
            with self._writing:
                self._materialize(alone=True)

    def _derive_behind(self) -> None:
        """The deriver thread: once due, derive what was committed since the last time."""
        try:
            while not self._stopping.wait(max(0.0, self._due - time.monotonic())):
                self._due = time.monotonic() + self.materialize_every
                self._materialize(alone=False)  # batches go on being written
        except Exception as exc:  # the next batch raises it: the daemon stops with its reason
            why = f"DuckDB file {self.path}: cannot derive the tables: {exc}"
            self._failure = exc if isinstance(exc, StoreError) else StoreError(why)

    def _stop_deriver(self) -> None:
        self._stopping.set()
        if self._deriver is not None and self._deriver is not threading.current_thread():
            self._deriver.join()

    def _derive_committed(self, *, alone: bool) -> None:
        """One transaction of its own, on this thread's cursor: derive the tables from the
        ``materialized`` mark to the committed checkpoint, and move the mark. The batches'
        transactions append to ``events`` and update the checkpoint row's other columns, so
        they never conflict with it. The caller holds ``_deriving``."""
        cursor, started = self._cursor(), time.monotonic()
        with self._translated("derive the tables"), _transaction(cursor):
            mark = "SELECT materialized, checkpoint FROM checkpoint WHERE id = 1"
            ((since, upto),) = cursor.execute(mark).fetchall()
            if since != upto:
                derive(cursor, since, upto, alone=alone)
                cursor.execute("UPDATE checkpoint SET materialized = ? WHERE id = 1", [upto])
        self._materialized = upto
        # The next one ``materialize_every`` seconds later, or three times as long as this one
        # took if that is longer: deriving never takes more than a quarter of the time.
        now = time.monotonic()
        self._due = now + max(self.materialize_every, 3 * (now - started))

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
        with self._writing, self._deriving, self._translated(action):
            self._materialize(alone=True)  # and none until the copy is made: see publish_copy
            stats = self._stats
            try:
                publish_copy(self._cursor(), self.path, target)
            except OSError as exc:
                raise StoreError(f"DuckDB file {self.path}: cannot {action}: {exc}") from exc
            return stats

    # --- reads -------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        return self._stats

    def task(self, task: str) -> TaskView | None:
        found = self._select(TaskView, "SELECT * FROM tasks WHERE task = ?", [task])
        return found[0] if found else None

    def task_ids(self) -> list[str]:
        self._current()
        with self._translated("query"):
            found = self._cursor().execute("SELECT task FROM tasks").fetchall()
        return [task for (task,) in found]

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
        # Several bad events of one envelope share a seq; they keep the order they came in.
        # Up to the checkpoint: read-only after a kill, the stats are the derived tables'.
        sql = "SELECT * FROM quarantined WHERE seq <= ? ORDER BY seq DESC, rowid LIMIT ?"
        return self._select(Quarantined, sql, [self._stats.checkpoint, max(limit, 0)])

    def read_model(self) -> ReadModel:
        return ReadModel(
            tasks=self._select(TaskView, "SELECT * FROM tasks ORDER BY task"),
            workers=self._select(WorkerView, "SELECT * FROM workers ORDER BY worker"),
            pools=self.pools(),
            queues=self.queues(),
            quarantined=self._select(
                Quarantined,
                "SELECT * FROM quarantined WHERE seq <= ? ORDER BY seq, rowid",
                [self._stats.checkpoint],
            ),
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
        self._current()
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
        self._current()
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

    def _read_stats(self) -> tuple[StoreStats, int]:
        """The checkpoint row, and the sequence the derived tables are written up to.

        Read-only, the stats are those the derived tables hold: a daemon that died between
        two writes of them left events after ``materialized`` that only a writer derives.
        """
        cursor = self._cursor().execute("SELECT * FROM checkpoint WHERE id = 1")
        names = [column[0] for column in cursor.description or ()]
        # fetchall, not fetchone: a result left unread keeps its transaction open, and an open
        # transaction in any cursor makes every CHECKPOINT (each analysts' copy) fail.
        found = cursor.fetchall()
        if not found:  # a file opened read-only before any daemon wrote it
            return StoreStats(checkpoint=0, applied=0, quarantined=0), 0
        row = dict(zip(names, found[0], strict=True))
        version = row["schema_version"]
        if version not in _READABLE_VERSIONS:
            raise StoreError(
                f"DuckDB file {self.path} has schema version {version}, this "
                f"workledger writes {schema.SCHEMA_VERSION}: rebuild it (`workledger rebuild`)"
            )
        stats = StoreStats(
            checkpoint=row["checkpoint"], applied=row["applied"], quarantined=row["quarantined"]
        )
        materialized = row.get("materialized", stats.checkpoint)
        if materialized == stats.checkpoint or not self.read_only:
            return stats, materialized
        later = (
            "SELECT (SELECT count(*) FROM events WHERE seq > $1), "
            "(SELECT count(*) FROM quarantined WHERE seq > $1)"
        )
        ((events, held),) = self._cursor().execute(later, [materialized]).fetchall()
        return (
            StoreStats(
                checkpoint=materialized,
                applied=stats.applied - events,
                quarantined=stats.quarantined - held,
            ),
            materialized,
        )

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except duckdb.Error as exc:
            raise StoreError(f"DuckDB file {self.path}: cannot {action}: {_one_line(exc)}") from exc


def _one_line(exc: duckdb.Error) -> str:
    """DuckDB puts the cause on a later line ("database has been invalidated ... Original
    error: ... No space left on device"); an error line must show it."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


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
    # DuckDB checkpoints when its write-ahead log passes 16 MiB by default, re-compressing the
    # row groups batches keep appending to (and rows rewritten since): 64 MiB cut DuckDB's
    # share of a 5000-event batch by ~30%, for a log that replays in about a second on reopening.
    # (A SET, not a connect option: other connections to the file need not repeat it.)
    cursor.execute("SET checkpoint_threshold = '64MiB'")
    for table in schema.TABLES:
        cursor.execute(table.ddl)
    for name, body in schema.VIEWS.items():
        cursor.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    # Schemas 3 and 4 kept the Python fold's state instead of ``retained``: the next write
    # derives every table again, from ``events`` (materialized = 0). Schema 5 also kept task
    # events in ``retained``, which tasks no longer read.
    cursor.execute("ALTER TABLE checkpoint ADD COLUMN IF NOT EXISTS materialized BIGINT")
    cursor.execute("DROP TABLE IF EXISTS fold_state")
    cursor.execute("ALTER TABLE checkpoint DROP COLUMN IF EXISTS folded")
    cursor.execute("UPDATE checkpoint SET materialized = 0 WHERE schema_version < 5")
    cursor.execute(
        "DELETE FROM retained WHERE kind = 'task' AND (SELECT schema_version FROM checkpoint) < 6"
    )
    (found,) = cursor.execute("SELECT list(schema_version) FROM checkpoint").fetchall()
    if found[0] in ([5], [6]):  # had no task_spans (a new file has no checkpoint row yet)
        fill_task_spans(cursor)
    cursor.execute(
        "UPDATE checkpoint SET schema_version = ? WHERE schema_version < ?",
        [schema.SCHEMA_VERSION, schema.SCHEMA_VERSION],
    )
    cursor.execute(
        "INSERT INTO checkpoint BY NAME SELECT 1 AS id, 0 AS checkpoint, 0 AS applied, "
        "0 AS quarantined, ? AS schema_version, 0 AS materialized "
        "WHERE NOT EXISTS (FROM checkpoint)",
        [schema.SCHEMA_VERSION],
    )


# Older files are read as they are and upgraded when opened for writing.
_READABLE_VERSIONS = frozenset({3, 4, 5, 6, schema.SCHEMA_VERSION})


class _Write:
    """One batch's transaction: each statement with the Arrow table it reads as ``batch_rows``."""

    def __init__(self, last_seq: int, *, applied: int, quarantined: int) -> None:
        self.last_seq = last_seq
        self.statements: list[tuple[str, pa.Table]] = []
        self.checkpoint = (last_seq, applied, quarantined)

    def insert(
        self, table: schema.Table, rows: pa.Table, select: str = "SELECT * FROM batch_rows"
    ) -> None:
        """Append ``rows``, made into the table's by ``select`` (which reads ``batch_rows``)."""
        if not rows.num_rows:
            return
        sql = f"INSERT INTO {table.name} BY NAME {select}"
        self.statements.append((sql, rows))


def _write(cursor: duckdb.DuckDBPyConnection, write: _Write, since: int | None) -> None:
    """One transaction: append the events, derive the tables from ``since`` (unless None),
    move the checkpoint. ``materialized`` only when deriving: the deriver thread writes that
    column alone, and DuckDB lets two transactions update different columns of one row."""
    columns = "checkpoint = ?, applied = applied + ?, quarantined = quarantined + ?"
    values: list[object] = list(write.checkpoint)
    if since is not None:
        columns, values = f"{columns}, materialized = ?", [*values, write.last_seq]
    with _transaction(cursor):
        _write_rows(cursor, write)
        if since is not None:
            derive(cursor, since, write.last_seq, alone=True)  # the batch holds _writing
        cursor.execute(f"UPDATE checkpoint SET {columns} WHERE id = 1", values)  # noqa: S608


@contextmanager
def _transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN, then COMMIT, or ROLLBACK on any error."""
    cursor.begin()
    try:
        yield
        cursor.commit()
    except BaseException:
        # A failed commit may have ended the transaction already; the first error is the
        # one to report, never "cannot rollback - no transaction is active".
        with suppress(duckdb.Error):
            cursor.rollback()
        with suppress(duckdb.Error):  # what a failed derivation could not restore itself
            restore_settings(cursor)
        raise


def _write_rows(cursor: duckdb.DuckDBPyConnection, write: _Write) -> None:
    for sql, batch_rows in write.statements:
        _execute(cursor, sql, batch_rows)


def _execute(cursor: duckdb.DuckDBPyConnection, sql: str, batch_rows: pa.Table) -> None:
    """Run ``sql``, which reads ``batch_rows`` by that name.

    DuckDB finds the local variable itself (a replacement scan): registering the table
    instead creates and drops a catalog view, which costs more than most statements here.
    """
    cursor.execute(sql)


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
