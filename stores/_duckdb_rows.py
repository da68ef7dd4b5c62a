"""Batches as Arrow tables: one columnar insert per table per batch, never row by row.

``benchmarks/duckdb_apply.py`` measures this against the alternatives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import pyarrow as pa

from workledger.core.events import Event
from workledger.projections.fold import Changes, Ledger
from workledger.projections.views import Quarantined
from workledger.stores._duckdb_schema import EVENTS, FOLD_STATE, QUARANTINED, Table
from workledger.stores.base import Sequenced

__all__ = ["event_table", "fold_state_table", "quarantined_table", "queue_key", "struct_table"]

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()


def struct_table(table: Table, rows: Sequence[Any]) -> pa.Table:
    """Rows of a view Struct whose fields are the table's columns."""
    return _table(table, {name: [getattr(row, name) for row in rows] for name in table.columns})


def quarantined_table(rows: Sequence[Quarantined]) -> pa.Table:
    """Set-aside messages, as they came."""
    return struct_table(QUARANTINED, rows)


def event_table(items: Sequence[Sequenced]) -> pa.Table:
    """Raw events: the ids they concern as columns, the whole event as JSON."""
    events = [item.event for item in items]
    columns: dict[str, list[Any]] = {
        "seq": [item.seq for item in items],
        "id": [e.id for e in events],
        "type": [e.type for e in events],
        "at": [e.at for e in events],
        "worker": [getattr(e, "worker", None) for e in events],
        "task": [getattr(e, "task", None) for e in events],
        "pool": [e.pool_key for e in events],
        "queue": [getattr(e, "queue", None) for e in events],
        "subject": [item.subject for item in items],
        "payload": [_json.encode(e) for e in events],
    }
    return _table(EVENTS, columns)


def queue_key(pool: str, queue: str) -> str:
    """A queue's ``fold_state.key``: a JSON array, unambiguous whatever the names hold."""
    return _json.encode([pool, queue]).decode()


def fold_state_table(ledger: Ledger, changes: Changes) -> pa.Table:
    """The retained events (msgpack) of every record the batch touched."""
    keyed: list[tuple[str, str, Iterable[Event]]] = [
        *(("task", t, ledger.retained("task", t)) for t in changes.tasks),
        *(("worker", w, ledger.retained("worker", w)) for w in changes.workers),
        *(("pool", p, ledger.retained("pool", p)) for p in changes.pools),
        *(("queue", queue_key(*q), ledger.retained("queue", q)) for q in changes.queues),
    ]
    columns: dict[str, list[Any]] = {
        "kind": [kind for kind, _, _ in keyed],
        "key": [key for _, key, _ in keyed],
        "events": [_msgpack.encode(list(events)) for _, _, events in keyed],
    }
    return _table(FOLD_STATE, columns)


def _table(table: Table, columns: dict[str, list[Any]]) -> pa.Table:
    arrays = {
        name: pa.array(columns[name], type=kind.arrow) for name, kind in table.columns.items()
    }
    return pa.table(arrays, schema=table.arrow_schema)
