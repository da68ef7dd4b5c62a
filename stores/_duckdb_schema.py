"""The DuckDB read model's tables and views, each column declared once for SQL and Arrow.

Tables that mirror a view Struct (``tasks``, ``workers``, ``slot_intervals``, ...) use its field
names as column names, so Python and SQL share one vocabulary. ``docs/duckdb.md`` describes
every column for analysts.

No table has a PRIMARY KEY: its ART index costs on every insert, delete and checkpoint, and
DuckDB never uses it to find the rows a derivation replaces (a semi-join on the key scans the
key column). Derived tables end with ``batch_seq``, the checkpoint of the derivation that last
wrote the row, so analysts can ask what changed since a checkpoint.
"""

from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

__all__ = [
    "BATCH_SEQ",
    "CHECKPOINT",
    "EVENTS",
    "POOLS",
    "QUARANTINED",
    "QUEUES",
    "RETAINED",
    "SCHEMA_VERSION",
    "SLOT_INTERVALS",
    "TABLES",
    "TASKS",
    "TASK_SPANS",
    "VIEWS",
    "WORKERS",
    "WORKER_SESSIONS",
    "Table",
]

# 2: workers.lost; 3: events.idx, batch_seq, no primary keys; 4: checkpoint.materialized, folded;
# 5: tables derived in SQL, ``retained`` instead of ``fold_state`` (and checkpoint.folded);
# 6: no task events in ``retained`` (a task's rows are derived from ``events``);
# 7: ``task_spans`` (where each task's events begin, so a derivation reads only the log since)
SCHEMA_VERSION = 7


class _Type(NamedTuple):
    sql: str
    arrow: pa.DataType
    compression: str = ""  # DuckDB's choice unless set

    @property
    def ddl(self) -> str:
        return f"{self.sql} USING COMPRESSION {self.compression}" if self.compression else self.sql


_TEXT = _Type("VARCHAR", pa.string())
_TIME = _Type("TIMESTAMPTZ", pa.timestamp("us", tz="UTC"))
_INT = _Type("INTEGER", pa.int32())
_BIGINT = _Type("BIGINT", pa.int64())
_DOUBLE = _Type("DOUBLE", pa.float64())
_BOOL = _Type("BOOLEAN", pa.bool_())
_TEXTS = _Type("VARCHAR[]", pa.list_(pa.string()))
_BIGINTS = _Type("BIGINT[]", pa.list_(pa.int64()))
_LABELS = _Type("MAP(VARCHAR, VARCHAR)", pa.map_(pa.string(), pa.string()))
# Arrow's JSON extension type (pyarrow 19+) tells DuckDB the text is JSON already, sparing it a
# validating parse of every payload (msgspec wrote it); plain strings are parsed on insert.
_JSON = _Type("JSON", pa.json_() if hasattr(pa, "json_") else pa.string())
_BLOB = _Type("BLOB", pa.binary())
# Long or unique values (payloads, ids): zstd at a checkpoint costs about half of
# DuckDB's trial of every method and, on payloads, gives a file half the size
# (benchmarks/duckdb_apply.py). Short repeated values (status, pool, ...) keep dictionaries.
_ID = _TEXT._replace(compression="zstd")
_PAYLOAD = _JSON._replace(compression="zstd")


BATCH_SEQ = "batch_seq"


class Table(NamedTuple):
    """A table: its columns in order (name → type).

    A derived table has an ``entity``: the columns naming the task, worker, pool or queue a row
    belongs to. A batch replaces every row of each entity it touched, and the table ends with
    a ``batch_seq`` column, which SQL fills (it is not in the Arrow batches).
    """

    name: str
    columns: dict[str, _Type]
    entity: tuple[str, ...] = ()

    @property
    def derived(self) -> bool:
        """Rewritten per entity (else appended to, like ``events``)."""
        return bool(self.entity)

    @property
    def ddl(self) -> str:
        """``CREATE TABLE IF NOT EXISTS`` with every column quoted (``at`` is reserved)."""
        columns = [f'"{name}" {kind.ddl}' for name, kind in self.columns.items()]
        if self.derived:
            columns.append(f"{BATCH_SEQ} {_BIGINT.sql}")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(columns)})"

    @property
    def arrow_schema(self) -> pa.Schema:
        """The Arrow schema batches for this table are built with."""
        return pa.schema([(name, kind.arrow) for name, kind in self.columns.items()])


EVENTS = Table(
    "events",
    {
        "seq": _BIGINT,
        "idx": _INT,
        "id": _ID,
        "type": _TEXT,
        "at": _TIME,
        "worker": _TEXT,
        "task": _TEXT,
        "pool": _TEXT,
        "queue": _TEXT,
        "subject": _TEXT,
        "payload": _PAYLOAD,
    },
)

TASKS = Table(
    "tasks",
    {
        "task": _TEXT,
        "status": _TEXT,
        "pool": _TEXT,
        "queue": _TEXT,
        "task_key": _TEXT,
        "stage": _TEXT,
        "priority": _BIGINT,
        "item": _TEXT,
        "worker": _TEXT,
        "submitted_at": _TIME,
        "slot_acquired_at": _TIME,
        "started_at": _TIME,
        "finished_at": _TIME,
        "updated_at": _TIME,
        "retries": _INT,
        "progress": _DOUBLE,
        "message": _TEXT,
        "error": _TEXT,
    },
    entity=("task",),
)

# Per task, where its events begin in ``events`` and the sequences of those its rows depend
# on (all but superseded progress reports): a live derivation reads a touched task's events
# by range from its first, or for a task begun long ago by those sequences, so both reads
# skip row groups by their min and max seq (``_duckdb_derive._known_task_events``).
TASK_SPANS = Table(
    "task_spans", {"task": _TEXT, "first_seq": _BIGINT, "kept": _BIGINTS}, entity=("task",)
)

WORKERS = Table(
    "workers",
    {
        "worker": _TEXT,
        "pool": _TEXT,
        "queues": _TEXTS,
        "task_keys": _TEXTS,
        "slots": _INT,
        "heartbeat_interval": _DOUBLE,
        "labels": _LABELS,
        "host": _TEXT,
        "pid": _BIGINT,
        "started_at": _TIME,
        "stopped_at": _TIME,
        "stop_reason": _TEXT,
        "last_seen": _TIME,
        "stopped": _BOOL,
        "lost": _BOOL,
    },
    entity=("worker",),
)

SLOT_INTERVALS = Table(
    "slot_intervals",
    {
        "task": _TEXT,
        "attempt": _INT,
        "worker": _TEXT,
        "pool": _TEXT,
        "queue": _TEXT,
        "task_key": _TEXT,
        "stage": _TEXT,
        "acquired_at": _TIME,
        "started_at": _TIME,
        "released_at": _TIME,
        "ended": _TEXT,
    },
    entity=("task",),
)

WORKER_SESSIONS = Table(
    "worker_sessions",
    {
        "worker": _TEXT,
        "pool": _TEXT,
        "queues": _TEXTS,
        "task_keys": _TEXTS,
        "slots": _INT,
        "heartbeat_interval": _DOUBLE,
        "started_at": _TIME,
        "stopped_at": _TIME,
        "next_started_at": _TIME,
        "last_seen": _TIME,
    },
    entity=("worker",),
)

POOLS = Table(
    "pools",
    {
        "pool": _TEXT,
        "concurrency_limit": _BIGINT,
        "paused": _BOOL,
        "created_at": _TIME,
        "updated_at": _TIME,
    },
    entity=("pool",),
)

QUEUES = Table(
    "queues",
    {
        "pool": _TEXT,
        "queue": _TEXT,
        "priority": _BIGINT,
        "concurrency_limit": _BIGINT,
        "paused": _BOOL,
        "created_at": _TIME,
        "updated_at": _TIME,
    },
    entity=("pool", "queue"),
)

QUARANTINED = Table(
    "quarantined",
    {"seq": _BIGINT, "subject": _TEXT, "reason": _TEXT, "data": _BLOB, "size": _BIGINT},
)

RETAINED = Table(
    "retained",
    {"kind": _TEXT, **EVENTS.columns},
    entity=("kind", "task", "worker", "pool", "queue"),
)

CHECKPOINT = Table(
    "checkpoint",
    {
        "id": _INT,
        "checkpoint": _BIGINT,
        "applied": _BIGINT,
        "quarantined": _BIGINT,
        "schema_version": _INT,
        "materialized": _BIGINT,
    },
)

TABLES = (
    EVENTS,
    TASKS,
    TASK_SPANS,
    WORKERS,
    SLOT_INTERVALS,
    WORKER_SESSIONS,
    POOLS,
    QUEUES,
    QUARANTINED,
    RETAINED,
    CHECKPOINT,
)

# Views answer the common questions; none reads the clock, so each means the same at any time.
VIEWS = {
    "active_slot_holders": """
        SELECT t.task, t.status, COALESCE(t.pool, w.pool) AS pool, t.queue, t.worker,
               t.slot_acquired_at AS since
        FROM tasks t LEFT JOIN workers w ON t.pool IS NULL AND w.worker = t.worker
        WHERE t.status IN ('PENDING', 'RUNNING')""",
    "slot_counts": """
        SELECT pool, NULL::VARCHAR AS queue, count(*) AS held
        FROM active_slot_holders GROUP BY pool
        UNION ALL
        SELECT pool, queue, count(*) AS held
        FROM active_slot_holders WHERE queue IS NOT NULL GROUP BY pool, queue""",
    "worker_slots": """
        SELECT w.worker, w.pool, w.slots,
               coalesce(len(h.tasks), 0)::INTEGER AS held,
               greatest(w.slots - coalesce(len(h.tasks), 0), 0)::INTEGER AS free_slots,
               coalesce(h.tasks, []::VARCHAR[]) AS tasks,
               w.stopped, w.lost, w.last_seen, w.heartbeat_interval,
               w.last_seen + to_microseconds((w.heartbeat_interval * 3e6)::BIGINT)
                   AS online_until
        FROM workers w LEFT JOIN (
            SELECT worker, list(task ORDER BY task) AS tasks FROM tasks
            WHERE status IN ('PENDING', 'RUNNING') AND worker IS NOT NULL GROUP BY worker
        ) h USING (worker)""",
    "task_durations": """
        SELECT task, status, pool, queue, task_key, stage, worker, retries,
               submitted_at, started_at, finished_at,
               epoch(started_at - submitted_at) AS wait_seconds,
               epoch(finished_at - started_at) AS run_seconds,
               epoch(finished_at - submitted_at) AS total_seconds
        FROM tasks WHERE finished_at IS NOT NULL""",
    "pool_occupancy": """
        SELECT p.pool, p.concurrency_limit, p.paused, coalesce(c.held, 0) AS held,
               p.concurrency_limit - coalesce(c.held, 0) AS headroom
        FROM pools p LEFT JOIN slot_counts c ON c.pool = p.pool AND c.queue IS NULL""",
}
