"""DuckDB write path: the whole ``DuckDBStore.apply`` per batch size, where its time goes, and
the append paths it chose between.

Run: ``.venv/bin/python benchmarks/duckdb_apply.py [--events 100000] [--repeat 3] [--profile]``

- **apply**: events/s of ``DuckDBStore.apply`` into a fresh file in batches of 5000 (the
  daemon's ``max_batch``), 50000 and 122,880 (``DuckDBStore.bulk_events``: what a daemon under
  a heavy load gathers for it), over whole batches only (at least two), everything included:
  the events' Arrow table, each batch's transaction with its checkpoint row, deriving the
  tables (at most once a second, and at close) and ``close()`` (DuckDB's CHECKPOINT of what
  the write-ahead log still holds). Median of R runs.
- **once**: the same as a rebuild writes (``materialize_every=math.inf``) in batches of 50000:
  the batches append their events, and ``close()`` derives every table from them at once.
- **--profile**: CPU microseconds per event by phase (Arrow table, appending it, deriving the
  tables, commit, close), CPU rather than wall so that a busy machine skews it less. It is the
  process's CPU, so DuckDB's threads count in it; the tables are derived once, at close.
- **appends**: rows/s of the ways to put events into a table (row-by-row ``executemany``, LIST
  parameters, Arrow from row dicts, the store's JSON lines), each with a committed checkpoint row.

Events come from ``benchmarks/run.py`` (the workload generator), so figures compare with
``make bench``, which calls :func:`figures`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import run

from workledger.stores import _duckdb_rows as rows
from workledger.stores import duckdb as duckdb_store
from workledger.stores._duckdb_schema import CHECKPOINT, EVENTS
from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore

# The daemon's max_batch; larger batches; what a daemon under load gathers for the store.
BATCHES = (5000, 50_000, DuckDBStore.bulk_events)
_json = msgspec.json.Encoder()
Writer = Callable[[duckdb.DuckDBPyConnection, Sequence[Sequenced]], None]


def history(size: int, seed: int = 0) -> list[Sequenced]:
    """``size`` events of the shared benchmark stream, numbered from 1."""
    events = run.history(size, seed)
    return [Sequenced(i + 1, f"workledger.{e.type}", e) for i, e in enumerate(events)]


def apply_all(path: Path, items: Sequence[Sequenced], batch: int, once: bool = False) -> None:
    """What is measured: every batch applied to a fresh file, then the file closed."""
    store = DuckDBStore(path, materialize_every=math.inf if once else 1.0)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        store.apply(Batch(events=chunk, last_seq=chunk[-1].seq))
    store.close()


def apply_rate(items: Sequence[Sequenced], batch: int, repeat: int, once: bool = False) -> float:
    """Median events/s of :func:`apply_all` over ``repeat`` fresh files."""
    rates = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            apply_all(Path(tmp) / "apply.duckdb", items, batch, once)
            rates.append(len(items) / (time.perf_counter() - began))
    return statistics.median(rates)


def figures(events: int = 100_000, repeat: int = 3, seed: int = 0) -> dict[str, float]:
    """``DuckDBStore.apply`` events/s (checkpoints and close included) per batch size."""
    items = history(events, seed)
    _warm()
    found = {
        f"apply b{batch}": apply_rate(_batches(items, batch, seed), batch, repeat)
        for batch in BATCHES
    }
    return found | {"once b50000": apply_rate(items, 50_000, repeat, once=True)}


def _batches(items: Sequence[Sequenced], batch: int, seed: int) -> Sequence[Sequenced]:
    """Whole batches only, and at least two when ``items`` hold one (with one, nothing
    overlaps the appending: the store derives the tables only at close); all of ``items``
    when they do not fill one (a quick run)."""
    if batch <= len(items) < 2 * batch:
        items = history(2 * batch, seed)
    return items[: len(items) // batch * batch or len(items)]


def _warm() -> None:
    """DuckDB imports pandas on its first Arrow scan (~0.4 s): not part of any figure."""
    with duckdb.connect() as con:
        table = pa.table({"x": [1]})
        con.register("warm", table)
        con.execute("SELECT * FROM warm").fetchall()


# --- where the time goes -----------------------------------------------------------------------


def profile(items: Sequence[Sequenced], batch: int) -> dict[str, float]:
    """CPU microseconds per event of each phase of :func:`apply_all` (one run), the tables
    derived once, at close: the store's own thread derives them otherwise, and the CPU time
    of two threads at once cannot be split by phase."""
    spent: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp, _timed(spent):
        began = time.process_time()
        apply_all(Path(tmp) / "profile.duckdb", items, batch, once=True)
        total = time.process_time() - began
    phases = {
        "events' Arrow table": spent["events"],
        "appending it": spent["statements"],
        "deriving the tables (SQL)": spent["derive"],
        "commit": spent["write"],
        "close (CHECKPOINT)": spent["close"],
    }
    phases["other (open, ...)"] = total - sum(phases.values())
    phases["total"] = total
    return {name: seconds / len(items) * 1e6 for name, seconds in phases.items()}


@contextmanager
def _timed(spent: Counter[str]) -> Iterator[None]:
    """Count CPU time in the store's phases by wrapping them (module attributes, restored).

    Each phase's time excludes the wrapped phases it calls (``close`` derives the tables
    first, which count as theirs), so the phases add up.
    """
    targets: list[tuple[Any, str, str]] = [
        (rows, "event_table", "events"),
        (rows, "quarantined_table", "events"),
        (duckdb_store, "derive", "derive"),
        (duckdb_store, "_write", "write"),
        (duckdb_store, "_write_rows", "statements"),
        (DuckDBStore, "close", "close"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    children: list[float] = []  # per open phase: CPU time of the phases it called
    for owner, name, label in targets:
        setattr(owner, name, _clock(getattr(owner, name), label, spent, children))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _clock(
    function: Callable[..., Any], label: str, spent: Counter[str], children: list[float]
) -> Callable[..., Any]:
    def clocked(*args: Any, **kwargs: Any) -> Any:
        began = time.process_time()
        children.append(0.0)
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.process_time() - began
            spent[label] += elapsed - children.pop()
            if children:
                children[-1] += elapsed

    return clocked


# --- append paths ------------------------------------------------------------------------------


def _values(items: Sequence[Sequenced]) -> list[tuple[Any, ...]]:
    return [
        (
            i.seq,
            0,
            i.event.id,
            i.event.type,
            i.event.at,
            getattr(i.event, "worker", None),
            getattr(i.event, "task", None),
            i.event.pool_key,
            getattr(i.event, "queue", None),
            i.subject,
            _json.encode(i.event).decode(),
        )
        for i in items
    ]


def row_by_row(con: duckdb.DuckDBPyConnection, items: Sequence[Sequenced]) -> None:
    """``executemany``: one INSERT per row."""
    marks = ", ".join("?" * len(EVENTS.columns))
    con.executemany(f"INSERT INTO events VALUES ({marks})", _values(items))


def arrow_columns(con: duckdb.DuckDBPyConnection, items: Sequence[Sequenced]) -> None:
    """The events' JSON as Arrow (what the store does), its columns parsed by the INSERT."""
    batch_rows = rows.event_table(items)  # noqa: F841 (DuckDB reads the local by its name)
    con.execute(f"INSERT INTO events BY NAME {rows.EVENTS_SELECT}")


def arrow_pylist(con: duckdb.DuckDBPyConnection, items: Sequence[Sequenced]) -> None:
    """Arrow built from row dicts (``Table.from_pylist``)."""
    names = list(EVENTS.columns)
    schema = pa.schema([(n, EVENTS.arrow_schema.field(n).type) for n in names])
    batch = pa.Table.from_pylist(  # noqa: F841 (DuckDB reads the local by its name)
        [dict(zip(names, v, strict=True)) for v in _values(items)], schema=schema
    )
    con.execute("INSERT INTO events BY NAME SELECT * FROM batch")


def list_params(con: duckdb.DuckDBPyConnection, items: Sequence[Sequenced]) -> None:
    """No Arrow: each column as one LIST parameter, unnested by DuckDB."""
    columns = list(zip(*_values(items), strict=True))
    unnest = ", ".join(f"unnest(${n + 1})" for n in range(len(columns)))
    con.execute(f"INSERT INTO events SELECT {unnest}", [list(c) for c in columns])


def append_rate(writer: Writer, items: Sequence[Sequenced], repeat: int) -> float:
    """Median rows/s of ``writer`` into a fresh table, checkpoint row in the same transaction."""
    rates = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            con = duckdb.connect(str(Path(tmp) / "bench.duckdb"))
            con.execute(EVENTS.ddl)
            con.execute(CHECKPOINT.ddl)
            con.execute(
                "INSERT INTO checkpoint BY NAME SELECT 1 AS id, 0 AS checkpoint, 0 AS applied, "
                "0 AS quarantined, 1 AS schema_version"
            )
            began = time.perf_counter()
            con.begin()
            writer(con, items)
            con.execute("UPDATE checkpoint SET checkpoint = ? WHERE id = 1", [items[-1].seq])
            con.commit()
            rates.append(len(items) / (time.perf_counter() - began))
            con.close()
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="CPU per phase, per batch size")
    parser.add_argument("--appends", action="store_true", help="also compare the append paths")
    args = parser.parse_args()
    items = history(args.events)
    _warm()
    print(f"{args.events} events ({run.source()}), median of {args.repeat} runs")
    for name, rate in figures(args.events, args.repeat).items():
        print(f"  DuckDBStore.apply {name}, close included: {rate:>10,.0f} events/s")
    if args.profile:
        for batch in BATCHES:
            print(f"CPU us/event by phase, batches of {batch}, derived at close:")
            for phase, micros in profile(items, batch).items():
                print(f"  {phase:<28} {micros:6.2f}")
    if args.appends:
        print("append paths, rows/s (executemany on a tenth of the events):")
        paths: dict[str, tuple[Writer, Sequence[Sequenced]]] = {
            "executemany, row by row": (row_by_row, items[: max(len(items) // 10, 1)]),
            "LIST parameters + unnest": (list_params, items),
            "Arrow from row dicts": (arrow_pylist, items),
            "JSON lines, columns parsed by DuckDB (the store's)": (arrow_columns, items),
        }
        for name, (writer, chosen) in paths.items():
            print(f"  {name:<32} {append_rate(writer, chosen, args.repeat):>12,.0f}")


if __name__ == "__main__":
    main()
