"""Analysts' access to the DuckDB read model while the daemon writes it.

The daemon holds ``<data-dir>/<stream>.duckdb`` open for writing, and DuckDB then lets no other
process open it. So the daemon publishes a consistent copy, ``<stream>.analyst.duckdb``, every
few seconds (``--analyst-interval``), and this module opens that copy::

    from workledger import analysis

    con = analysis.connect()              # $WORKLEDGER_DATA_DIR, $WORKLEDGER_STREAM
    con.sql("SELECT status, count(*) FROM tasks GROUP BY ALL").df()
    analysis.freshness(con)               # which stream sequence these answers are as of
    analysis.utilization(con, by="pool", since=..., until=..., bucket=timedelta(minutes=5))

A connection sees one copy for as long as it is open: every query agrees with every other, and
with whole batches only. Call ``connect`` again for newer data. ``docs/analysts.md`` has the why.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import msgspec

from workledger.core.errors import StoreError
from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.utilization import Grouping, UtilizationRow
from workledger.stores._duckdb_utilization import utilization_sql

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_STREAM",
    "Freshness",
    "analyst_path",
    "connect",
    "freshness",
    "utilization",
]

DEFAULT_DATA_DIR = Path(".workledger")  # as ``workledger project --data-dir``
DEFAULT_STREAM = "WORKLEDGER"  # as ``--stream``
_ALIAS = "ledger"


class Freshness(msgspec.Struct, frozen=True, kw_only=True):
    """How far an analyst copy is: its checkpoint row, and the newest event time in it."""

    checkpoint: int  # last stream sequence applied (valid or set aside)
    applied: int  # valid events in ``events``
    quarantined: int  # messages in ``quarantined``
    latest_event_at: datetime | None  # event time of the newest event, in the producer's clock


def analyst_path(data_dir: Path | str | None = None, stream: str | None = None) -> Path:
    """Where the daemon publishes the copy: ``<data_dir>/<stream>.analyst.duckdb``.

    Unset arguments come from ``WORKLEDGER_DATA_DIR`` and ``WORKLEDGER_STREAM`` (the daemon's
    own variables), then the daemon's defaults.
    """
    folder = data_dir or os.environ.get("WORKLEDGER_DATA_DIR") or DEFAULT_DATA_DIR
    name = stream or os.environ.get("WORKLEDGER_STREAM") or DEFAULT_STREAM
    return Path(folder) / f"{name}.analyst.duckdb"


def connect(
    data_dir: Path | str | None = None, stream: str | None = None, *, path: Path | str | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the latest published copy read-only, times shown in UTC.

    ``path`` opens a given copy (or any stopped daemon's DuckDB file) instead. The copy is
    attached to a fresh in-memory database rather than opened directly: DuckDB caches databases
    by path within a process, so a second ``duckdb.connect(path)`` would return the copy the
    first one opened, however old.

    :raises StoreError: if there is no copy yet (is the daemon running with that data dir and
        stream?) or it cannot be opened.
    """
    target = Path(path) if path is not None else analyst_path(data_dir, stream)
    if not target.exists():
        raise StoreError(
            f"no analyst copy at {target} yet: a running `workledger project --data-dir "
            f"{target.parent}` publishes one within seconds (set WORKLEDGER_DATA_DIR and "
            "WORKLEDGER_STREAM, or pass data_dir= and stream=)"
        )
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS " + _ALIAS + " (READ_ONLY)", [str(target)])
        con.execute(f"USE {_ALIAS}")
        con.execute("SET TimeZone = 'UTC'")
    except duckdb.Error as exc:
        con.close()
        raise StoreError(f"cannot open the analyst copy {target}: {exc}") from exc
    return con


def freshness(con: duckdb.DuckDBPyConnection) -> Freshness:
    """The checkpoint row of the copy ``con`` reads, and its newest event time.

    :raises StoreError: if ``con`` is not a workledger DuckDB database.
    """
    try:
        row = con.execute(
            'SELECT c.checkpoint, c.applied, c.quarantined, (SELECT max("at") FROM events) '
            "FROM checkpoint c WHERE c.id = 1"
        ).fetchone()
    except duckdb.Error as exc:
        raise StoreError(f"not a workledger DuckDB database: {exc}") from exc
    if row is None:
        return Freshness(checkpoint=0, applied=0, quarantined=0, latest_event_at=None)
    checkpoint, applied, quarantined, latest = row
    return Freshness(
        checkpoint=checkpoint, applied=applied, quarantined=quarantined, latest_event_at=latest
    )


def utilization(
    con: duckdb.DuckDBPyConnection,
    *,
    by: Grouping,
    since: datetime,
    until: datetime,
    now: datetime | None = None,
    bucket: timedelta | None = None,
    multiplier: float = DEFAULT_MULTIPLIER,
) -> list[UtilizationRow]:
    """The store's utilization rows (as ``workledger utilization``) over the copy ``con`` reads.

    ``now`` ends open slot stretches and sessions; it defaults to the newest event time in the
    copy rather than the clock, so a copy gives the same answer whenever it is asked.
    Arguments and semantics: :meth:`workledger.stores.base.Store.utilization`.

    :raises ValueError: for an unknown ``by``, naive times, ``since >= until`` or too many
        buckets.
    """
    if now is None:
        now = freshness(con).latest_event_at or until
    return utilization_sql(
        con, by=by, since=since, until=until, now=now, bucket=bucket, multiplier=multiplier
    )
