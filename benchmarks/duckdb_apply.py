"""How to get rows into DuckDB fastest: the options for the store's appends, measured.

Run: ``.venv/bin/python benchmarks/duckdb_apply.py [--events 100000] [--repeat 5]``

Each approach writes the same events (from ``Sequenced`` items, conversion included) into a
fresh ``events`` table of a file database, with the checkpoint row updated in the same
transaction, and reports the median rows/s of R runs. Row-by-row ``executemany`` runs on a
tenth of the events (it is that slow). Then the whole ``DuckDBStore.apply`` (fold, every
table, fold state, checkpoint) in daemon-sized batches, next to ``MemoryStore.apply``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from workledger.core import events as ev
from workledger.stores import _duckdb_rows as rows
from workledger.stores._duckdb_schema import CHECKPOINT, EVENTS
from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

BASE = datetime(2026, 1, 1, tzinfo=UTC)
_json = msgspec.json.Encoder()
Writer = Callable[[duckdb.DuckDBPyConnection, Sequence[Sequenced]], None]


def history(size: int, seed: int = 0) -> list[Sequenced]:
    """Task lifecycles and heartbeats over 200 workers, stamped and numbered."""
    rng = random.Random(seed)
    out: list[ev.Event] = [ev.WorkerStarted(worker=f"w{i}", pool="p", slots=4) for i in range(200)]
    task = 0
    while len(out) < size:
        task += 1
        name, worker = f"task-{task}", f"w{rng.randrange(200)}"
        out += [
            ev.TaskSubmitted(task=name, pool="p", queue=f"q{task % 3}"),
            ev.TaskClaimed(task=name, worker=worker),
            ev.TaskStarted(task=name, worker=worker),
            ev.TaskCompleted(task=name),
            ev.WorkerHeartbeat(worker=worker, pool="p"),
        ]
    stamped = [
        msgspec.structs.replace(e, id=f"e{i:08d}", at=BASE + timedelta(milliseconds=i))
        for i, e in enumerate(out[:size])
    ]
    return [Sequenced(i + 1, "workledger.p.task.x.y", e) for i, e in enumerate(stamped)]


def _values(items: Sequence[Sequenced]) -> list[tuple[Any, ...]]:
    return [
        (
            i.seq,
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
    con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _values(items))


def arrow_columns(con: duckdb.DuckDBPyConnection, items: Sequence[Sequenced]) -> None:
    """Arrow built column by column (what the store does), then INSERT ... SELECT."""
    con.register("batch", rows.event_table(items))
    con.execute("INSERT INTO events BY NAME SELECT * FROM batch")
    con.unregister("batch")


def arrow_pylist(con: duckdb.DuckDBPyConnection, items: Sequence[Sequenced]) -> None:
    """Arrow built from row dicts (``Table.from_pylist``)."""
    names = list(EVENTS.columns)
    table = pa.Table.from_pylist(
        [dict(zip(names, v, strict=True)) for v in _values(items)], schema=EVENTS.arrow_schema
    )
    con.register("batch", table)
    con.execute("INSERT INTO events BY NAME SELECT * FROM batch")
    con.unregister("batch")


def list_params(con: duckdb.DuckDBPyConnection, items: Sequence[Sequenced]) -> None:
    """No Arrow: each column as one LIST parameter, unnested by DuckDB."""
    columns = list(zip(*_values(items), strict=True))
    unnest = ", ".join(f"unnest(${n + 1})" for n in range(len(columns)))
    con.execute(f"INSERT INTO events SELECT {unnest}", [list(c) for c in columns])


def _create(con: duckdb.DuckDBPyConnection, *, key: bool) -> None:
    ddl = EVENTS.ddl if key else EVENTS.ddl.replace(", PRIMARY KEY (seq)", "")
    con.execute(ddl)
    con.execute(CHECKPOINT.ddl)
    con.execute("INSERT INTO checkpoint VALUES (1, 0, 0, 0, 1)")


def measure(writer: Writer, items: Sequence[Sequenced], repeat: int, *, key: bool = True) -> float:
    """Median rows/s of ``writer`` into a fresh table, checkpoint in the same transaction."""
    rates = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            con = duckdb.connect(str(Path(tmp) / "bench.duckdb"))
            _create(con, key=key)
            began = time.perf_counter()
            con.begin()
            writer(con, items)
            con.execute("UPDATE checkpoint SET checkpoint = ? WHERE id = 1", [items[-1].seq])
            con.commit()
            rates.append(len(items) / (time.perf_counter() - began))
            con.close()
    return statistics.median(rates)


def measure_store(make: Callable[[Path], Any], items: Sequence[Sequenced], repeat: int) -> float:
    """Median events/s of a whole store's ``apply`` in batches of 5000, as the daemon sends."""
    rates = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            store = make(Path(tmp) / "store.duckdb")
            began = time.perf_counter()
            for start in range(0, len(items), 5000):
                chunk = items[start : start + 5000]
                store.apply(Batch(events=chunk, last_seq=chunk[-1].seq))
            rates.append(len(items) / (time.perf_counter() - began))
            if isinstance(store, DuckDBStore):
                store.close()
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    items = history(args.events)
    print(f"{args.events} events, median of {args.repeat} runs, rows/s (higher is better)")
    figures = {
        "executemany, row by row (1/10 of the events)": measure(
            row_by_row, items[: max(args.events // 10, 1)], args.repeat
        ),
        "LIST parameters + unnest": measure(list_params, items, args.repeat),
        "Arrow from row dicts": measure(arrow_pylist, items, args.repeat),
        "Arrow by column (the store's path)": measure(arrow_columns, items, args.repeat),
        "Arrow by column, no PRIMARY KEY on seq": measure(
            arrow_columns, items, args.repeat, key=False
        ),
        "DuckDBStore.apply, whole batches (fold + all tables)": measure_store(
            DuckDBStore, items, args.repeat
        ),
        "MemoryStore.apply, for comparison": measure_store(
            lambda _: MemoryStore(), items, args.repeat
        ),
    }
    width = max(map(len, figures))
    for name, rate in figures.items():
        print(f"  {name:<{width}}  {rate:>12,.0f}")


if __name__ == "__main__":
    main()
