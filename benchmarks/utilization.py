"""How long a utilization query takes over N slot intervals, in Python and in DuckDB's SQL.

Run: ``.venv/bin/python benchmarks/utilization.py [--intervals 100000] [--repeat 5]``

A simulated day: 200 workers in 4 pools (8 queues, 3 task keys, 2 stages), restarted now and
then, and N slot intervals (10% retried, some failed or still running). ``python`` is the
reference function ``MemoryStore.utilization`` runs; ``duckdb`` is ``utilization_sql`` over
the two tables in a file database, as ``DuckDBStore.utilization`` runs it. Each figure is the
median of R runs; the two answers are checked to agree first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from workledger.projections.utilization import utilization
from workledger.projections.views import SlotInterval, TaskStatus, WorkerSession
from workledger.stores._duckdb_utilization import utilization_sql

BASE = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
WORKERS = 200


def sessions(rng: random.Random) -> list[WorkerSession]:
    """Each worker runs once or twice in the day; some stop, the rest are still beating."""
    out = []
    for w in range(WORKERS):
        pool, starts = f"pool-{w % 4}", sorted(rng.uniform(0, 3600) for _ in range(1))
        if rng.random() < 0.3:
            starts.append(rng.uniform(40_000, 60_000))
        for i, start in enumerate(starts):
            following = starts[i + 1] if i + 1 < len(starts) else None
            stopped = None if following or rng.random() < 0.8 else start + rng.uniform(1e4, 5e4)
            out.append(
                WorkerSession(
                    worker=f"w{w}",
                    pool=pool,
                    queues=() if w % 3 == 0 else (f"{pool}/q{w % 2}",),
                    task_keys=(f"k{w % 3}",),
                    slots=4,
                    heartbeat_interval=30.0,
                    started_at=BASE + timedelta(seconds=start),
                    stopped_at=BASE + timedelta(seconds=stopped) if stopped else None,
                    next_started_at=BASE + timedelta(seconds=following) if following else None,
                    last_seen=None if following else BASE + DAY - timedelta(seconds=20),
                )
            )
    return out


def intervals(rng: random.Random, count: int) -> list[SlotInterval]:
    """Slot stretches spread over the day, most done within minutes; 10% still running."""
    endings = [TaskStatus.COMPLETED] * 7 + [TaskStatus.RETRYING, TaskStatus.FAILED, None]
    out = []
    for i in range(count):
        w = rng.randrange(WORKERS)
        ended = rng.choice(endings)
        earliest = 85_800 if ended is None else 3600  # still running: started in the last 10m
        acquired = BASE + timedelta(seconds=rng.uniform(earliest, 86_390))
        started = acquired + timedelta(seconds=rng.expovariate(1 / 5))
        released = started + timedelta(seconds=rng.expovariate(1 / 120)) if ended else None
        out.append(
            SlotInterval(
                task=f"t{i}",
                attempt=1,
                worker=f"w{w}",
                pool=f"pool-{w % 4}",
                queue=f"pool-{w % 4}/q{rng.randrange(2)}",
                task_key=f"k{w % 3}",
                stage=rng.choice(["fetch", "parse"]),
                acquired_at=acquired,
                started_at=started,
                released_at=released,
                ended=ended,
            )
        )
    return out


def load(conn: duckdb.DuckDBPyConnection, name: str, rows: list[Any]) -> None:
    """One Arrow table per view, columns named after the Struct's fields."""
    columns = {f: [getattr(r, f) for r in rows] for f in rows[0].__struct_fields__}
    for field in ("queues", "task_keys"):
        if field in columns:
            columns[field] = [list(v) for v in columns[field]]
    if "ended" in columns:
        columns["ended"] = [None if v is None else str(v) for v in columns["ended"]]
    conn.register("incoming", pa.table(columns))
    conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
    conn.unregister("incoming")


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    ivs, sess = intervals(rng, args.intervals), sessions(rng)
    with tempfile.TemporaryDirectory() as tmp:
        conn = duckdb.connect(str(Path(tmp) / "bench.duckdb"))
        load(conn, "slot_intervals", ivs)
        load(conn, "worker_sessions", sess)
        print(f"{len(ivs)} intervals, {len(sess)} sessions; median of {args.repeat} runs")
        for by, bucket in [("pool", None), ("worker", None), ("queue", "1h"), ("pool", "5m")]:
            kwargs: dict[str, Any] = {
                "by": by,
                "since": BASE,
                "until": BASE + DAY,
                "now": BASE + DAY,
                "bucket": timedelta(hours=1) if bucket == "1h" else None,
            }
            if bucket == "5m":
                kwargs["bucket"] = timedelta(minutes=5)
            py = utilization(ivs, sess, **kwargs)
            sql = utilization_sql(conn, **kwargs)
            assert msgspec.to_builtins([r.group for r in py]) == [r.group for r in sql]
            t_py = median_seconds(lambda kw=kwargs: utilization(ivs, sess, **kw), args.repeat)
            t_sql = median_seconds(lambda kw=kwargs: utilization_sql(conn, **kw), args.repeat)
            label = f"by={by} bucket={bucket or 'none'}"
            print(f"  {label:<24} {len(py):>6} rows  python {t_py:6.3f}s  duckdb {t_sql:6.3f}s")
        conn.close()


if __name__ == "__main__":
    main()
