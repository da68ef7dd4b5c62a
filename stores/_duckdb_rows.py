"""Batches as Arrow tables: one columnar insert per table per batch, never row by row.

Building them is Python's share of a DuckDB write, and it holds the GIL the daemon's decoding
needs, so it takes the cheap conversions (``benchmarks/duckdb_apply.py`` measures them). Events
are the most: msgspec writes a batch's JSON in one call, Arrow splits it into one payload per
event, and the INSERT (:data:`EVENTS_SELECT`) takes the key columns out of the JSON in DuckDB,
which does not hold the GIL. A time in another table becomes an Arrow ``timestamp`` by way of
the ``timedelta`` since the epoch (pyarrow converts those ~5x faster than ``datetime`` objects).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from workledger.projections.views import Quarantined
from workledger.stores._duckdb_schema import EVENTS, QUARANTINED, Table
from workledger.stores.base import Sequenced

__all__ = [
    "EVENTS_SELECT",
    "event_table",
    "positions",
    "quarantined_table",
    "struct_table",
    "times",
]

_json = msgspec.json.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = pa.duration("us")
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_PAYLOAD = EVENTS.columns["payload"].arrow

# The ``events`` row of each row of :func:`event_table` (read as ``batch_rows``): the columns an
# event's JSON holds, parsed once per event. The JSON leaves out fields at their default (the
# store always gets events with an id; an empty one is the default).
_KEYS = {"id": "VARCHAR", "type": "VARCHAR", "at": "TIMESTAMPTZ"} | dict.fromkeys(
    ("worker", "task", "pool", "queue"), "VARCHAR"
)
EVENTS_SELECT = f"""
    SELECT seq, idx, coalesce(k.id, '') AS id, k.type, k."at", k.worker, k.task, k.pool, k.queue,
        subject, payload
    FROM (SELECT *, json_transform(payload, '{msgspec.json.encode(_KEYS).decode()}') AS k
        FROM batch_rows)"""  # noqa: S608 (fixed text)


def struct_table(table: Table, rows: Sequence[Any]) -> pa.Table:
    """Rows of a view Struct whose fields are the table's columns."""
    return _table(table, {name: [getattr(row, name) for row in rows] for name in table.columns})


def quarantined_table(rows: Sequence[Quarantined]) -> pa.Table:
    """Set-aside messages, as they came."""
    return struct_table(QUARANTINED, rows)


def event_table(items: Sequence[Sequenced]) -> pa.Table:
    """Raw events as they are sequenced and as JSON (:data:`EVENTS_SELECT` makes the rows).

    JSON escapes a newline inside a string, so the lines of ``encode_lines`` are the events'
    JSON texts, each exactly as ``msgspec.json.encode`` writes it alone.
    """
    seqs = [item.seq for item in items]
    lines = _json.encode_lines([item.event for item in items])
    texts = pc.split_pattern(pa.array([lines], pa.binary()), pattern=b"\n").values
    payloads = texts.slice(0, len(items)).cast(pa.string())  # the last line is empty
    return pa.table(
        {
            "seq": pa.array(seqs, pa.int64()),
            "idx": pa.array(positions(seqs), pa.int32()),
            "subject": pa.array([item.subject for item in items], pa.string()),
            "payload": _as_json(payloads),
        }
    )


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
    return times(values) if pa.types.is_timestamp(kind) else pa.array(values, kind)


def _as_json(texts: pa.Array) -> pa.Array:
    """Text msgspec wrote, typed as Arrow's JSON (where pyarrow has it) so DuckDB trusts it."""
    if isinstance(_PAYLOAD, pa.ExtensionType):
        return pa.ExtensionArray.from_storage(_PAYLOAD, texts)
    return texts
