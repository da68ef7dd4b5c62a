"""Live-query latency over a big in-memory fleet: p50/p99 per query (issue 6).

Run: ``.venv/bin/python benchmarks/queries.py --workers 100000 --tasks 1000000``. The store is
built once from a synthetic stamped history (workers spread over pools, queues and task keys,
seen over the last few minutes; tasks over a week, a few still holding slots), then each query
runs ``--samples`` times with rotating arguments. :func:`figures` returns the same numbers as a
dict so ``make bench`` can call it. Compare ratios between commits on the same machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from workledger.core import events as ev
from workledger.projections.views import WorkerStatus
from workledger.queries import Queries
from workledger.readiness import store_readiness
from workledger.stores.base import Batch, Sequenced, Store
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

__all__ = ["build", "figures", "main"]

NOW = datetime(2026, 1, 8, tzinfo=UTC)
_WEEK = timedelta(days=7)
_POOLS, _QUEUES, _KEYS = 20, 8, 50
_MINUTE = timedelta(minutes=1)
_BATCH = 5000


def _workers(count: int, rng: random.Random) -> Iterator[ev.Event]:
    """Each worker starts a week ago and was last seen within the last ~3 minutes."""
    for i in range(count):
        name, pool = f"w{i}", f"p{i % _POOLS}"
        queues = () if i % 4 == 0 else (f"q{i % _QUEUES}", f"q{(i + 3) % _QUEUES}")
        yield ev.WorkerStarted(
            id=f"ws{i}",
            at=NOW - _WEEK,
            worker=name,
            pool=pool,
            queues=queues,
            task_keys=(f"k{i % _KEYS}", f"k{(i * 7) % _KEYS}"),
            slots=4,
            heartbeat_interval=30.0 if i % 10 else 10.0,
        )
        seen = NOW - timedelta(seconds=rng.uniform(0, 180))
        yield ev.WorkerHeartbeat(id=f"wh{i}", at=seen, worker=name, pool=pool)


def _tasks(count: int, workers: int, rng: random.Random) -> Iterator[ev.Event]:
    """Submitted, started and (but for the last 2%) finished, spread over the week."""
    for i in range(count):
        name, w = f"t{i}", rng.randrange(workers)
        start = NOW - _WEEK + _WEEK * (i / count)
        pool, queue = f"p{w % _POOLS}", f"q{w % _QUEUES}"
        yield ev.TaskSubmitted(
            id=f"ts{i}", at=start, task=name, pool=pool, queue=queue, task_key=f"k{w % _KEYS}"
        )
        yield ev.TaskStarted(id=f"tr{i}", at=start, worker=f"w{w}", task=name)
        if i < count * 0.98:
            end = start + timedelta(seconds=rng.uniform(1, 120))
            yield ev.TaskCompleted(id=f"tc{i}", at=end, task=name)


def build(workers: int, tasks: int, seed: int = 0) -> tuple[MemoryStore, float]:
    """A store holding the synthetic fleet, and the rate (events/s) it was folded at."""
    store = MemoryStore()
    return store, _fold(store, workers, tasks, seed)


def _fold(store: Store, workers: int, tasks: int, seed: int) -> float:
    """Fold the synthetic fleet into ``store`` in batches; the rate, events/s."""
    rng = random.Random(seed)
    seq, batch, seconds = 0, [], 0.0
    pools = [ev.PoolCreated(id=f"pc{i}", at=NOW - _WEEK, pool=f"p{i}") for i in range(_POOLS)]
    for event in [*pools, *_workers(workers, rng), *_tasks(tasks, workers, rng)]:
        seq += 1
        batch.append(Sequenced(seq, "", event))
        if len(batch) == _BATCH:
            seconds += _apply(store, batch)
            batch = []
    if batch:
        seconds += _apply(store, batch)
    return seq / seconds


def _duckdb_utilization(workers: int, tasks: int, seed: int, samples: int) -> dict[str, float]:
    """Utilization per worker over a day from a DuckDB file of the same fleet (SQL, not
    Python: what the daemon answers it from), p50 and p99 of ``samples`` calls."""
    day = {"since": NOW - timedelta(days=1), "until": NOW, "now": NOW}
    with tempfile.TemporaryDirectory() as tmp, DuckDBStore(Path(tmp) / "q.duckdb") as store:
        rate = _fold(store, workers, tasks, seed)
        p50, p99 = _latency(samples, lambda i: store.utilization(by="worker", **day))  # type: ignore[arg-type]
        by_minute = _latency(samples, lambda i: store.utilization(by="pool", bucket=_MINUTE, **day))  # type: ignore[arg-type]
    return {
        "build: DuckDBStore.apply events/s": rate,
        "utilization per worker over a day (DuckDB): p50 ms": p50,
        "utilization per worker over a day (DuckDB): p99 ms": p99,
        "utilization per pool in minute buckets over a day (DuckDB): p50 ms": by_minute[0],
        "utilization per pool in minute buckets over a day (DuckDB): p99 ms": by_minute[1],
    }


def _snapshot(store: MemoryStore) -> dict[str, float]:
    """What a snapshot of this store costs the daemon's loop: all its steps, and the longest
    one (queries and batches wait at most that long for it)."""
    steps, chunks = [], None
    taking = store.dump_in_steps()
    while chunks is None:
        began = time.perf_counter()
        chunks = next(taking)
        steps.append(time.perf_counter() - began)
    return {
        "snapshot: loop seconds": sum(steps),
        "snapshot: longest step ms": max(steps) * 1e3,
        "snapshot: bytes": sum(map(len, chunks)),
    }


def _apply(store: Store, batch: list[Sequenced]) -> float:
    began = time.perf_counter()
    store.apply(Batch(events=batch, last_seq=batch[-1].seq))
    return time.perf_counter() - began


def _heartbeats(store: MemoryStore, count: int) -> float:
    """Heartbeats/s folded when each names another worker: what re-indexing a worker costs."""
    seq = store.stats().checkpoint
    beats = [
        Sequenced(
            seq + i + 1,
            "",
            ev.WorkerHeartbeat(
                id=f"hb{i}",
                at=NOW + timedelta(milliseconds=i),
                worker=f"w{i}",
                pool=f"p{i % _POOLS}",
            ),
        )
        for i in range(count)
    ]
    seconds = sum(_apply(store, beats[i : i + _BATCH]) for i in range(0, count, _BATCH))
    return count / seconds


def _latency(samples: int, query: Callable[[int], object]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of ``samples`` calls (sample i gets argument i)."""
    query(0)  # warm: a lazy store may compute what it deferred on the first read
    took = []
    for i in range(samples):
        began = time.perf_counter()
        query(i)
        took.append((time.perf_counter() - began) * 1e3)
    took.sort()
    p99 = took[min(len(took) - 1, round(0.99 * (len(took) - 1)))]
    return statistics.median(took), p99


def _queries(store: MemoryStore) -> dict[str, tuple[Callable[[int], object], int]]:
    """Each query with its share of samples (1 = all, n = 1/n of them)."""
    service = Queries(store, clock=lambda: NOW)
    online = WorkerStatus.ONLINE
    day = {"since": NOW - timedelta(days=1), "until": NOW, "now": NOW}
    return {
        "active workers by task key (limit 100)": (
            lambda i: store.workers(now=NOW, task_keys=[f"k{i % _KEYS}"], status=online, limit=100),
            1,
        ),
        "workers by pool (limit 100)": (
            lambda i: store.workers(now=NOW, pool=f"p{i % _POOLS}", limit=100),
            1,
        ),
        "workers by pool and queue (limit 100)": (
            lambda i: store.workers(now=NOW, pool=f"p{i % _POOLS}", queue="q1", limit=100),
            1,
        ),
        "OFFLINE workers, whole fleet (limit 100)": (
            lambda i: store.workers(now=NOW, status=WorkerStatus.OFFLINE, limit=100),
            1,
        ),
        "tasks of one worker (limit 100)": (lambda i: store.tasks(worker=f"w{i}"), 1),
        "tasks of one pool (limit 100)": (lambda i: store.tasks(pool=f"p{i % _POOLS}"), 1),
        "slot counts, all pools": (lambda i: store.slot_counts(), 1),
        "slot holders, one pool": (lambda i: store.slot_holders(pool=f"p{i % _POOLS}"), 1),
        "pools readiness (Queries.pool_status)": (lambda i: service.pool_status(), 20),
        "pools and queues readiness (store_readiness)": (
            lambda i: store_readiness(store, now=NOW),
            1,
        ),
        "utilization per worker over a day": (
            lambda i: store.utilization(by="worker", **day),  # type: ignore[arg-type]
            200,
        ),
        "utilization per pool in minute buckets over a day": (
            lambda i: store.utilization(by="pool", bucket=_MINUTE, **day),  # type: ignore[arg-type]
            200,
        ),
    }


def figures(
    workers: int = 100_000,
    tasks: int = 1_000_000,
    samples: int = 200,
    seed: int = 0,
    duckdb: bool = True,
) -> dict[str, float]:
    """Build the fleet, then ``p50 ms``/``p99 ms`` per query and the build's fold rate; with
    ``duckdb``, utilization from a DuckDB file of the same fleet too."""
    store, rate = build(workers, tasks, seed)
    found = {"build: MemoryStore.apply events/s": rate}
    for name, (query, share) in _queries(store).items():
        p50, p99 = _latency(max(samples // share, 3), query)
        found[f"{name}: p50 ms"] = p50
        found[f"{name}: p99 ms"] = p99
    found["apply: heartbeats of distinct workers/s"] = _heartbeats(store, min(workers, 20_000))
    found |= _snapshot(store)
    if duckdb:
        del store  # its memory back before the second fleet is built
        found |= _duckdb_utilization(workers, tasks, seed, max(samples // 40, 3))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--no-duckdb", action="store_true", help="skip utilization from a DuckDB file (minutes)"
    )
    args = parser.parse_args(argv)
    found = figures(args.workers, args.tasks, args.samples, duckdb=not args.no_duckdb)
    if args.json:
        print(msgspec.json.encode(found).decode())
        return
    print(f"{args.workers} workers, {args.tasks} tasks, Python {sys.version.split()[0]}")
    for name, value in found.items():
        print(f"  {name:<60} {value:>12,.3f}")


if __name__ == "__main__":
    main()
