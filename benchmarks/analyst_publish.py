"""How to give analysts a consistent copy of the live DuckDB file: the options, measured.

Run: ``.venv/bin/python benchmarks/analyst_publish.py [--events 1000000] [--repeat 3]``

A ``DuckDBStore`` is filled with N events in daemon-sized batches and kept open, as the daemon
keeps it. Each approach then writes a copy a reader can open read-only, from the writer's own
connection between two batches, and is timed (median of R). "steady" repeats a publish after
one more 5000-event batch, which is what the daemon does every interval; the first publish
after the fill also folds the whole WAL into the file. Also timed: how long a reader takes to
open the copy and count the events, and the sizes on disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import msgspec
from duckdb_apply import history  # type: ignore[import-not-found]  # run from benchmarks/

from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore

Publish = Callable[[duckdb.DuckDBPyConnection, Path, Path], None]


def checkpoint_only(con: duckdb.DuckDBPyConnection, live: Path, out: Path) -> None:
    """Only the CHECKPOINT: what folding each interval's WAL into the file costs."""
    con.execute("CHECKPOINT")


def checkpoint_and_copy(con: duckdb.DuckDBPyConnection, live: Path, out: Path) -> None:
    """CHECKPOINT (the file alone is then complete), copy its bytes, rename into place."""
    con.execute("CHECKPOINT")
    tmp = out.with_name(out.name + ".tmp")
    shutil.copyfile(live, tmp)
    os.replace(tmp, out)


def nothing(con: duckdb.DuckDBPyConnection, live: Path, out: Path) -> None:
    """No copy: the batch apply time without publishing, for comparison."""


def copy_from_database(con: duckdb.DuckDBPyConnection, live: Path, out: Path) -> None:
    """ATTACH a fresh file and ``COPY FROM DATABASE`` (a logical copy), rename into place."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    (name,) = con.execute("SELECT current_database()").fetchone()  # type: ignore[misc]
    con.execute(f"ATTACH '{tmp}' AS snap")
    try:
        con.execute(f'COPY FROM DATABASE "{name}" TO snap')
    finally:
        con.execute("DETACH snap")
    os.replace(tmp, out)


def export_parquet(con: duckdb.DuckDBPyConnection, live: Path, out: Path) -> None:
    """``EXPORT DATABASE`` to a Parquet folder (readers must then load or view it)."""
    tmp = out.with_name(out.name + ".dir")
    shutil.rmtree(tmp, ignore_errors=True)
    con.execute(f"EXPORT DATABASE '{tmp}' (FORMAT parquet)")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def fill(store: DuckDBStore, items: Sequence[Sequenced]) -> None:
    for start in range(0, len(items), 5000):
        chunk = items[start : start + 5000]
        store.apply(Batch(events=chunk, last_seq=chunk[-1].seq))


def renumbered(items: Sequence[Sequenced], after: int, tag: int) -> list[Sequenced]:
    """The same events again, as new tasks further along the stream."""
    out = []
    for n, item in enumerate(items, start=1):
        event = item.event
        if getattr(event, "task", None) is not None:
            event = msgspec.structs.replace(event, task=f"{event.task}-r{tag}")  # type: ignore[attr-defined]
        out.append(Sequenced(after + n, item.subject, event))
    return out


def size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size if path.exists() else 0


def reader_open(out: Path) -> float:
    began = time.perf_counter()
    if not out.exists():
        return 0.0
    if out.is_dir():
        con = duckdb.connect()
        con.execute(f"SELECT count(*) FROM read_parquet('{out}/events.parquet')").fetchone()
    else:
        con = duckdb.connect(str(out), read_only=True)
        con.execute("SELECT count(*), max(seq) FROM events").fetchone()
    con.close()
    return time.perf_counter() - began


def measure(
    name: str, publish: Publish, store: DuckDBStore, extra: list[Sequenced], repeat: int
) -> None:
    out = store.path.with_name(f"analyst-{name}")
    con = store._cursor()  # the writer's connection, as in the daemon
    began = time.perf_counter()
    publish(con, store.path, out)
    first = time.perf_counter() - began
    steady, applies = [], []
    for n in range(repeat):
        chunk = renumbered(extra, store.stats().checkpoint, hash((name, n)) & 0xFFFF)
        began = time.perf_counter()
        store.apply(Batch(events=chunk, last_seq=chunk[-1].seq))
        applies.append(time.perf_counter() - began)
        began = time.perf_counter()
        publish(con, store.path, out)
        steady.append(time.perf_counter() - began)
    print(
        f"  {name:<22} first {first:6.2f} s  steady {statistics.median(steady):6.2f} s  "
        f"(batch apply {statistics.median(applies):5.2f} s)  copy {size(out) / 2**20:7.1f} MiB  "
        f"reader open+count {reader_open(out) * 1000:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only",
        nargs="*",
        default=["none", "checkpoint", "checkpoint+copy", "copy-from-db", "parquet"],
    )
    args = parser.parse_args()
    items = history(args.events)
    approaches: dict[str, Publish] = {
        "none": nothing,
        "checkpoint": checkpoint_only,
        "checkpoint+copy": checkpoint_and_copy,
        "copy-from-db": copy_from_database,
        "parquet": export_parquet,
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = DuckDBStore(Path(tmp) / "live.duckdb")
        began = time.perf_counter()
        fill(store, items)
        print(
            f"{args.events} events applied in {time.perf_counter() - began:.1f} s; "
            f"live file {size(store.path) / 2**20:.1f} MiB + WAL "
            f"{size(store.path.with_name('live.duckdb.wal')) / 2**20:.1f} MiB"
        )
        for name in args.only:
            measure(name, approaches[name], store, items[-5000:], args.repeat)
        store.close()


if __name__ == "__main__":
    main()
