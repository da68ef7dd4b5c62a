"""The DuckDB store: the durable read model analysts query with SQL.

Batches are folded by the same :class:`~workledger.projections.fold.Ledger` as the in-memory
store (one implementation of the rules). Each batch commits its raw events and the checkpoint:
that is what makes it durable. The derived tables (the rows of every task, worker, pool and
queue) are written behind, at most once a ``materialize_every`` seconds and before any read,
copy or close: an entity touched by many events between two of those is written once, which is
most of what a write used to cost. The fold's retained events (``fold_state``, what a restart
folds instead of the whole log) are written less often still, once a ``fold_state_every``
seconds and on close. Reopening the file restores the Ledger from ``fold_state`` and folds the
events committed after it (``checkpoint.folded``) from the file's own ``events``, so a restart
replays nothing from the stream it already has.

Queries are SQL over the tables and views of :mod:`workledger.stores._duckdb_schema`; worker
liveness is the one rule of :mod:`workledger.projections.liveness`, applied to the fetched rows.

DuckDB lets one process hold a file open for writing, and no other process can open it, not
even read-only, meanwhile. Each thread reads through its own cursor, so a read sees the last
committed batch and never blocks the writer. Other processes read a copy: ``publish`` writes
one between two batches (see :mod:`workledger.stores._duckdb_copy` and ``docs/analysts.md``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
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
from workledger.projections.fold import Changes, Ledger
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
from workledger.stores.base import Batch, ReadModel, StoreStats

__all__ = ["DuckDBStore", "check_unlocked"]

_S = TypeVar("_S")
_C = TypeVar("_C", dict[Any, int], set[Any])
_events = msgspec.msgpack.Decoder(list[EventType])
_payload = msgspec.json.Decoder(EventType)
_queue_key = msgspec.json.Decoder(tuple[str, str])


class DuckDBStore:
    """A read model in one DuckDB file; ``read_only`` opens it for queries alone."""

    blocking = True  # the daemon runs ``apply`` in a worker thread

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        materialize_every: float = 1.0,
        fold_state_every: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.materialize_every = materialize_every
        self.fold_state_every = fold_state_every
        self._db = _connect(self.path, read_only)
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # a batch and a published copy never overlap
        self._ledger = Ledger()
        # The batch_seq of each entity's rows in the file, by family: where deletes look; of its
        # fold_state row; and the entities whose fold_state row is older than the Ledger.
        self._written: dict[str, dict[Any, int]] = _by_family(dict)
        self._saved: dict[str, dict[Any, int]] = _by_family(dict)
        self._unsaved: dict[str, set[Any]] = _by_family(set)
        self._closed = False
        self._due = 0.0  # time.monotonic() when the derived tables are next written
        self._save_due = time.monotonic() + fold_state_every  # and fold_state
        try:
            with self._translated("open"):
                if not read_only:
                    _create_schema(self._cursor())
                self._stats, self._materialized, self._folded = self._read_stats()
                if not read_only:  # read-only queries read the tables, never the Ledger
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
                with self._writing:
                    self._materialize(save=True)
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
        """Fold, then commit the batch's events and checkpoint (and the derived rows when due).

        Events at or below the checkpoint are skipped. If the write fails, the file is as it
        was and the Ledger is folded again from it, so a retried batch applies cleanly.
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
        write = _Write(batch.last_seq, applied=len(fresh), quarantined=len(held))
        started = time.monotonic()
        due = started >= self._due
        try:
            for item in fresh:
                self._ledger.apply(item.event)
            write.insert(schema.EVENTS, rows.event_table(fresh))
            write.insert(schema.QUARANTINED, rows.quarantined_table(held))
            if due:
                self._derive(write, save=started >= self._save_due)
            with self._translated(f"write the batch up to sequence {batch.last_seq}"):
                _write(self._cursor(), write)
        except BaseException:
            self._refold()  # the Ledger may hold what the file does not
            raise
        if due:
            self._derived(write, started)
        s = self._stats
        self._stats = StoreStats(
            checkpoint=batch.last_seq,
            applied=s.applied + len(fresh),
            quarantined=s.quarantined + len(held),
        )

    def _materialize(self, *, save: bool = False) -> None:
        """Write the derived rows of everything folded since they were last written, and
        ``fold_state`` if ``save`` or it is due.

        The caller holds ``_writing``. On failure the Ledger keeps its record of what changed,
        so the next attempt writes it all.
        """
        checkpoint = self._stats.checkpoint
        if self._materialized == checkpoint and (self._folded == checkpoint or not save):
            return
        write = _Write(checkpoint, applied=0, quarantined=0)
        started = time.monotonic()
        self._derive(write, save=save or started >= self._save_due)
        with self._translated(f"write the tables up to sequence {write.last_seq}"):
            _write(self._cursor(), write)
        self._derived(write, started)

    def _current(self) -> None:
        """Before a read: bring the derived tables up to the checkpoint."""
        if not self.read_only and self._materialized != self._stats.checkpoint:
            with self._writing:
                self._materialize()

    def _derived(self, write: _Write, started: float) -> None:
        """Record a committed write of the derived rows; schedule the next.

        The next comes ``materialize_every`` seconds later, or three times as long as this one
        took (building the rows and writing them) if that is longer, so writing behind never
        takes more than about a quarter of the time however much changes (a rebuild's
        catch-up). ``materialize_every=0`` writes them with every batch.
        """
        now = time.monotonic()
        seq = write.last_seq
        for family, keys in self._touched().items():
            self._written[family].update(dict.fromkeys(keys, seq))
            if write.saved is None:
                self._unsaved[family].update(keys)
        if write.saved is not None:
            for family, keys in write.saved.items():
                self._saved[family].update(dict.fromkeys(keys, seq))
            self._unsaved = _by_family(set)
            self._folded = seq
            self._save_due = now + max(self.fold_state_every, 3 * (now - started))
        self._ledger.changes.clear()
        self._materialized = seq
        if self.materialize_every > 0:
            self._due = now + max(self.materialize_every, 3 * (now - started))

    def _refold(self) -> None:
        """After a failed write the Ledger is ahead of the file: fold it again from the file."""
        self._ledger = Ledger()
        self._written, self._saved = _by_family(dict), _by_family(dict)
        self._unsaved = _by_family(set)
        self._restore()

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
            self._materialize()
            stats = self._stats
            try:
                publish_copy(self._cursor(), self.path, target)
            except OSError as exc:
                raise StoreError(f"DuckDB file {self.path}: cannot {action}: {exc}") from exc
            return stats

    def _derive(self, write: _Write, *, save: bool) -> None:
        """Add to ``write`` the derived rows of every entity changed since the last time, and
        with ``save`` the ``fold_state`` rows of every entity changed since they were written.

        Each touched entity's old rows are deleted through the ``batch_seq`` that wrote them
        (kept in ``_written`` and ``_saved``), so a delete reads only those writes' row groups.
        """
        write.materialized = write.last_seq
        ledger, changes = self._ledger, self._ledger.changes
        for family, keys in self._touched().items():
            old = _old(self._written[family], family, keys)
            if old.num_rows:
                for table in _FAMILY_TABLES[family]:
                    write.replace(table, old)
        if save:
            self._save(write)
        tasks = [v for v in map(ledger.task, changes.tasks) if v is not None]
        workers = [v for v in map(ledger.worker, changes.workers) if v is not None]
        pools = [v for v in map(ledger.pool, changes.pools) if v is not None]
        queues = [v for v in (ledger.queue(*k) for k in changes.queues) if v is not None]
        intervals = [i for t in changes.tasks for i in ledger.intervals(t)]
        sessions = [s for w in changes.workers for s in ledger.sessions(w)]
        for table, views in (
            (schema.TASKS, tasks),
            (schema.WORKERS, workers),
            (schema.POOLS, pools),
            (schema.QUEUES, queues),
            (schema.SLOT_INTERVALS, intervals),
            (schema.WORKER_SESSIONS, sessions),
        ):
            write.insert(table, rows.struct_table(table, views))

    def _save(self, write: _Write) -> None:
        """Add to ``write`` the ``fold_state`` rows of every entity changed since they were."""
        touched = self._touched()
        write.saved = {f: self._unsaved[f] | set(touched[f]) for f in _FAMILY_TABLES}
        write.folded = write.last_seq
        old_state: list[pa.Table] = []
        for family, keys in write.saved.items():
            old = _old(self._saved[family], family, keys)
            if old.num_rows:
                kinds = pa.array([family] * old.num_rows, pa.string())
                names = old.column(0) if family != "queue" else _queue_keys(old)
                old_state.append(pa.table({"kind": kinds, "key": names, "prev": old["prev"]}))
        if old_state:
            write.replace(schema.FOLD_STATE, pa.concat_tables(old_state))
        saved = write.saved
        changed = Changes(
            tasks=saved["task"], workers=saved["worker"], pools=saved["pool"], queues=saved["queue"]
        )
        write.insert(schema.FOLD_STATE, rows.fold_state_table(self._ledger, changed))

    def _touched(self) -> dict[str, Collection[Any]]:
        changes = self._ledger.changes
        return {
            "task": changes.tasks,
            "worker": changes.workers,
            "pool": changes.pools,
            "queue": changes.queues,
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

    def _read_stats(self) -> tuple[StoreStats, int, int]:
        """The checkpoint row, and the sequences the derived tables and ``fold_state`` are
        written up to.

        Read-only, the stats are those the derived tables hold: a daemon that died between
        two writes of them left events after ``materialized`` that only a writer folds.
        """
        cursor = self._cursor().execute("SELECT * FROM checkpoint WHERE id = 1")
        names = [column[0] for column in cursor.description or ()]
        found = cursor.fetchone()
        if found is None:  # a file opened read-only before any daemon wrote it
            return StoreStats(checkpoint=0, applied=0, quarantined=0), 0, 0
        row = dict(zip(names, found, strict=True))
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
        folded = row.get("folded", stats.checkpoint)
        if materialized == stats.checkpoint or not self.read_only:
            return stats, materialized, folded
        later = (
            "SELECT (SELECT count(*) FROM events WHERE seq > $1), "
            "(SELECT count(*) FROM quarantined WHERE seq > $1)"
        )
        events, held = self._cursor().execute(later, [materialized]).fetchone() or (0, 0)
        return (
            StoreStats(
                checkpoint=materialized,
                applied=stats.applied - events,
                quarantined=stats.quarantined - held,
            ),
            materialized,
            folded,
        )

    def _restore(self) -> None:
        """Fold the retained events back into the Ledger: the state without the stream.

        Also recalls which write last wrote each entity's rows and its ``fold_state`` row, for
        the next deletes. Then folds the events committed after ``fold_state`` was written:
        what they change stays in ``changes``, for the next writes.
        """
        cursor = self._cursor()
        sql = "SELECT kind, key, batch_seq, events FROM fold_state"
        for kind, key, seq, blob in cursor.execute(sql).fetchall():
            for event in _events.decode(blob):
                self._ledger.apply(event)
            self._saved[kind][_queue_key.decode(key) if kind == "queue" else key] = seq
        self._ledger.changes.clear()
        for family, sql in _WRITTEN.items():
            found = cursor.execute(sql).fetchall()
            if family == "queue":
                found = [((pool, queue), seq) for pool, queue, seq in found]
            self._written[family].update(found)
        later = "SELECT payload FROM events WHERE seq > ? ORDER BY seq, idx"
        for (payload,) in cursor.execute(later, [self._folded]).fetchall():
            self._ledger.apply(_payload.decode(payload))

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
    # DuckDB checkpoints when its write-ahead log passes 16 MiB by default, re-compressing the
    # row groups batches keep appending to (and rows rewritten since): 64 MiB cut DuckDB's
    # share of a 5000-event batch by ~30%, for a log that replays in about a second on reopening.
    # (A SET, not a connect option: other connections to the file need not repeat it.)
    cursor.execute("SET checkpoint_threshold = '64MiB'")
    for table in schema.TABLES:
        cursor.execute(table.ddl)
    for name, body in schema.VIEWS.items():
        cursor.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    # Schema 3 differs by two columns: add them, with the derived tables then up to date.
    cursor.execute("ALTER TABLE checkpoint ADD COLUMN IF NOT EXISTS materialized BIGINT")
    cursor.execute("ALTER TABLE checkpoint ADD COLUMN IF NOT EXISTS folded BIGINT")
    cursor.execute(
        "UPDATE checkpoint SET materialized = checkpoint, folded = checkpoint, "
        "schema_version = ? WHERE schema_version = 3",
        [schema.SCHEMA_VERSION],
    )
    cursor.execute(
        "INSERT INTO checkpoint BY NAME SELECT 1 AS id, 0 AS checkpoint, 0 AS applied, "
        "0 AS quarantined, ? AS schema_version, 0 AS materialized, 0 AS folded "
        "WHERE NOT EXISTS (FROM checkpoint)",
        [schema.SCHEMA_VERSION],
    )


# Which write last wrote each entity's rows, by family (a forgotten worker has sessions only).
_WRITTEN = {
    "task": "SELECT task, max(batch_seq) FROM tasks GROUP BY task",
    "worker": """SELECT worker, max(batch_seq) FROM (
        SELECT worker, batch_seq FROM workers UNION ALL
        SELECT worker, batch_seq FROM worker_sessions) GROUP BY worker""",
    "pool": "SELECT pool, max(batch_seq) FROM pools GROUP BY pool",
    "queue": "SELECT pool, queue, max(batch_seq) FROM queues GROUP BY pool, queue",
}

# Schema 3 files are read as they are and upgraded when opened for writing.
_READABLE_VERSIONS = frozenset({3, schema.SCHEMA_VERSION})


# The derived tables holding each family's rows, besides its ``fold_state`` rows.
_FAMILY_TABLES: dict[str, tuple[schema.Table, ...]] = {
    "task": (schema.TASKS, schema.SLOT_INTERVALS),
    "worker": (schema.WORKERS, schema.WORKER_SESSIONS),
    "pool": (schema.POOLS,),
    "queue": (schema.QUEUES,),
}


class _Write:
    """One batch's transaction: each statement with the Arrow table it reads as ``batch_rows``."""

    def __init__(self, last_seq: int, *, applied: int, quarantined: int) -> None:
        self.last_seq = last_seq
        self.statements: list[tuple[str, pa.Table]] = []
        self.checkpoint = (last_seq, applied, quarantined)
        self.materialized: int | None = None  # set when it writes the derived rows
        self.folded: int | None = None  # set when it writes fold_state, for ``saved``
        self.saved: dict[str, set[Any]] | None = None

    def replace(self, table: schema.Table, old: pa.Table) -> None:
        """Delete the rows of the entities in ``old`` (their key columns and ``prev``).

        Listing the ``batch_seq`` values lets DuckDB skip every row group whose min-max index
        holds none of them; the join then matches each entity to the batch that wrote it.
        """
        seqs = ", ".join(map(str, sorted(set(old["prev"].to_pylist()))))
        match = " AND ".join(f't."{c}" = k."{c}"' for c in table.entity)
        sql = (
            f"DELETE FROM {table.name} AS t USING batch_rows AS k "  # noqa: S608 (our names)
            f"WHERE t.{schema.BATCH_SEQ} IN ({seqs}) AND t.{schema.BATCH_SEQ} = k.prev AND {match}"
        )
        self.statements.append((sql, old))

    def insert(self, table: schema.Table, rows: pa.Table) -> None:
        """Append ``rows``; a derived table's get this batch's ``batch_seq``."""
        if not rows.num_rows:
            return
        extra = f", {self.last_seq}::BIGINT AS {schema.BATCH_SEQ}" if table.derived else ""
        sql = f"INSERT INTO {table.name} BY NAME SELECT *{extra} FROM batch_rows"  # noqa: S608
        self.statements.append((sql, rows))


def _write(cursor: duckdb.DuckDBPyConnection, write: _Write) -> None:
    """One transaction: append events, replace touched rows, move the checkpoint."""
    cursor.begin()
    try:
        _write_rows(cursor, write)
        cursor.execute(
            "UPDATE checkpoint SET checkpoint = ?, applied = applied + ?, "
            "quarantined = quarantined + ?, materialized = coalesce(?, materialized), "
            "folded = coalesce(?, folded) WHERE id = 1",
            [*write.checkpoint, write.materialized, write.folded],
        )
        cursor.commit()
    except BaseException:
        # A failed commit may have ended the transaction already; the first error is the
        # one to report, never "cannot rollback - no transaction is active".
        with suppress(duckdb.Error):
            cursor.rollback()
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


def _by_family(kind: type[_C]) -> dict[str, _C]:
    """One empty ``dict`` or ``set`` per family (task, worker, pool, queue)."""
    return {family: kind() for family in _FAMILY_TABLES}


def _old(written: Mapping[Any, int], family: str, keys: Collection[Any]) -> pa.Table:
    """Those of ``keys`` that have rows in the file, with the write (``prev``) that wrote them."""
    found = [(key, written[key]) for key in keys if key in written]
    prev = pa.array([seq for _, seq in found], pa.int64())
    if family == "queue":
        pools, queues = [k[0] for k, _ in found], [k[1] for k, _ in found]
        return pa.table({"pool": pools, "queue": queues, "prev": prev})
    names = pa.array([key for key, _ in found], pa.string())
    return pa.table({family: names, "prev": prev})


def _queue_keys(old: pa.Table) -> pa.Array:
    """``fold_state.key`` of each (pool, queue) in ``old``."""
    pairs = zip(old["pool"].to_pylist(), old["queue"].to_pylist(), strict=True)
    return pa.array([rows.queue_key(p, q) for p, q in pairs], pa.string())


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
