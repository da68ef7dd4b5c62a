"""Batches as Arrow tables: one columnar insert per table per batch, never row by row.

Building them is Python's share of a DuckDB write, so it takes the cheap conversions
(``benchmarks/duckdb_apply.py`` measures them): a time becomes an Arrow ``timestamp`` by way of
the ``timedelta`` since the epoch (pyarrow converts those ~5x faster than ``datetime`` objects);
an event's wire tag comes from a class-keyed table, not a property.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa

from workledger.core.events import event_types
from workledger.projections.views import Quarantined
from workledger.stores._duckdb_schema import EVENTS, QUARANTINED, Table
from workledger.stores.base import Sequenced

__all__ = [
    "event_table",
    "positions",
    "quarantined_table",
    "struct_table",
    "times",
]

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = pa.duration("us")
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_TAGS = {cls: tag for tag, cls in event_types().items()}


def struct_table(table: Table, rows: Sequence[Any]) -> pa.Table:
    """Rows of a view Struct whose fields are the table's columns."""
    return _table(table, {name: [getattr(row, name) for row in rows] for name in table.columns})


def quarantined_table(rows: Sequence[Quarantined]) -> pa.Table:
    """Set-aside messages, as they came."""
    return struct_table(QUARANTINED, rows)


def event_table(items: Sequence[Sequenced]) -> pa.Table:
    """Raw events: the ids they concern as columns, the whole event as JSON."""
    events = [item.event for item in items]
    seqs = [item.seq for item in items]
    columns: dict[str, list[Any]] = {
        "seq": seqs,
        "idx": positions(seqs),
        "id": [e.id for e in events],
        "type": [_TAGS[type(e)] for e in events],
        "at": [e.at for e in events],
        "worker": [getattr(e, "worker", None) for e in events],
        "task": [getattr(e, "task", None) for e in events],
        "pool": [getattr(e, "pool", None) for e in events],  # Event.pool_key, without the call
        "queue": [getattr(e, "queue", None) for e in events],
        "subject": [item.subject for item in items],
        "payload": list(map(_json.encode, events)),
    }
    return _table(EVENTS, columns)


def positions(seqs: Sequence[int]) -> list[int]:
    """Each event's index among the events of its message (an envelope shares one ``seq``).

    A message's events arrive together and in order, so equal sequences are adjacent.
    """
    found: list[int] = []
    previous, index = None, 0
    for seq in seqs:
        index = index + 1 if seq == previous else 0
        previous = seq
        found.append(index)
    return found


def times(values: Iterable[datetime | None]) -> pa.Array:
    """Aware datetimes (any offset) as UTC microseconds, by way of their distance from 1970."""
    since = [None if v is None else v - _EPOCH for v in values]
    return pa.array(since, _DURATION).view(_TIMESTAMP)


def _table(table: Table, columns: dict[str, list[Any]]) -> pa.Table:
    arrays = [_array(columns[name], kind.arrow) for name, kind in table.columns.items()]
    return pa.Table.from_arrays(arrays, schema=table.arrow_schema)


def _array(values: list[Any], kind: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(kind):
        return times(values)
    if isinstance(kind, pa.ExtensionType):  # JSON: wrap the text, which msgspec wrote valid
        return pa.ExtensionArray.from_storage(kind, pa.array(values, kind.storage_type))
    return pa.array(values, kind)
