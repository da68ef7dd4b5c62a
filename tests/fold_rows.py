"""The Python fold's rows of a DuckDB file's events: what the store's SQL is held to.

The DuckDB store derives its tables in SQL; these are the rows the reference fold
(:class:`~workledger.projections.fold.Ledger`) gives for the same events, converted to the
table's Arrow types and read back through the same connection, so values compare exactly.
"""

from __future__ import annotations

from typing import Any

import duckdb
import msgspec

from workledger.core.events import EventType
from workledger.projections.fold import Ledger
from workledger.stores import _duckdb_schema as schema
from workledger.stores._duckdb_rows import struct_table

__all__ = ["fold_rows"]

_payload = msgspec.json.Decoder(EventType)


def _views(ledger: Ledger, table: schema.Table) -> list[Any]:
    tasks, workers = ledger.task_ids(), ledger.worker_ids()
    match table.name:
        case "tasks":
            return [ledger.task(t) for t in tasks]
        case "slot_intervals":
            return [i for t in tasks for i in ledger.intervals(t)]
        case "workers":
            return [v for v in map(ledger.worker, workers) if v is not None]
        case "worker_sessions":
            return [s for w in workers for s in ledger.sessions(w)]
        case "pools":
            return [ledger.pool(p) for p in ledger.pool_ids()]
        case "queues":
            return [ledger.queue(*q) for q in ledger.queue_ids()]
    raise ValueError(f"{table.name} is not derived by the fold")


def fold_rows(
    con: duckdb.DuckDBPyConnection, table: schema.Table, events: str = "events"
) -> list[tuple[Any, ...]]:
    """The fold's rows of ``table`` for the events of ``events`` (a table or subquery), sorted."""
    ledger = Ledger()
    for (payload,) in con.execute(f"SELECT payload FROM {events}").fetchall():
        ledger.apply(_payload.decode(payload))
    folded = struct_table(table, _views(ledger, table))  # noqa: F841 (read by name below)
    return sorted(con.execute("SELECT * FROM folded").fetchall(), key=repr)
