"""Resident memory per live worker and per live task, in the MemoryStore and in the fold alone.

Run: ``.venv/bin/python benchmarks/memory.py [--workers 100000] [--tasks 1000000]``. Each
figure comes from fresh interpreters (``memory.py child ...``), so nothing measured before
weighs on it: one folds N live workers (started, then a heartbeat: ONLINE), another the same N
workers plus M live tasks (submitted, claimed, started: each holds a slot). RSS is read from
``/proc/self/statm`` after a ``gc.collect()``, once before folding (imports done, empty store)
and once after. Per worker = growth of the first / N; per task = (growth of the second -
growth of the first) / M. Events are generated and folded in daemon-sized batches, so only
what the store keeps (views, indexes, the fold's retained events) stays resident.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from workledger.core import events as ev
from workledger.projections.fold import Ledger
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore

Kind = Literal["store", "ledger"]
NOW = datetime(2026, 1, 8, tzinfo=UTC)
POOLS, QUEUES, KEYS, BATCH = 20, 8, 50, 5000


def rss() -> int:
    """Resident bytes of this process, after collecting garbage."""
    gc.collect()
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def live_workers(count: int) -> Iterator[ev.Event]:
    for i in range(count):
        name, pool = f"worker-{i:07d}", f"pool-{i % POOLS}"
        yield ev.WorkerStarted(
            id=f"ws{i}",
            at=NOW - timedelta(hours=1),
            worker=name,
            pool=pool,
            queues=(f"q{i % QUEUES}",),
            task_keys=(f"k{i % KEYS}",),
            slots=16,
            host=f"host-{i // 8}",
        )
        yield ev.WorkerHeartbeat(id=f"wh{i}", at=NOW, worker=name, pool=pool)


def live_tasks(count: int, workers: int) -> Iterator[ev.Event]:
    for i in range(count):
        name, w = f"task-{i:08d}", i % workers
        worker, pool, at = f"worker-{w:07d}", f"pool-{w % POOLS}", NOW - timedelta(seconds=i % 600)
        yield ev.TaskSubmitted(
            id=f"ts{i}",
            at=at,
            task=name,
            pool=pool,
            queue=f"q{w % QUEUES}",
            task_key=f"k{w % KEYS}",
        )
        yield ev.TaskClaimed(id=f"tc{i}", at=at, task=name, worker=worker)
        yield ev.TaskStarted(id=f"tr{i}", at=at, task=name, worker=worker)


def fold(kind: Kind, stream: Iterator[ev.Event]) -> object:
    """Fold the stream into a MemoryStore (by batches) or a bare Ledger; return it."""
    if kind == "ledger":
        ledger = Ledger()
        for event in stream:
            ledger.apply(event)
        ledger.changes.clear()
        return ledger
    store, batch, seq = MemoryStore(), [], 0
    for event in stream:
        seq += 1
        batch.append(Sequenced(seq, "", event))
        if len(batch) == BATCH:
            store.apply(Batch(events=batch, last_seq=seq))
            batch = []
    if batch:
        store.apply(Batch(events=batch, last_seq=seq))
    return store


def _child(kind: Kind, workers: int, tasks: int) -> dict[str, int]:
    before = rss()
    kept = fold(kind, _chain(live_workers(workers), live_tasks(tasks, workers)))
    after = rss()
    del kept
    return {"before": before, "after": after}


def _chain(*streams: Iterator[ev.Event]) -> Iterator[ev.Event]:
    for stream in streams:
        yield from stream


def growth(kind: Kind, workers: int, tasks: int) -> int:
    """RSS growth (bytes) of a fresh interpreter folding that many live entities."""
    argv = [sys.executable, __file__, "child", kind, str(workers), str(tasks)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    sample = json.loads(out.splitlines()[-1])
    return int(sample["after"]) - int(sample["before"])


def bench_memory(workers: int, tasks: int) -> dict[str, float]:
    """Bytes per live worker and per live task, for the MemoryStore and the bare Ledger."""
    figures = {}
    for kind in ("store", "ledger"):
        alone = growth(kind, workers, 0)
        both = growth(kind, workers, tasks)
        figures[f"memory {kind} per worker"] = alone / workers
        figures[f"memory {kind} per task"] = (both - alone) / tasks
    return figures


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["child"]:
        kind: Kind = "ledger" if args[1] == "ledger" else "store"
        print(json.dumps(_child(kind, int(args[2]), int(args[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parsed = parser.parse_args(args)
    for name, value in bench_memory(parsed.workers, parsed.tasks).items():
        print(f"  {name:<24} {value:>10,.0f} bytes")


if __name__ == "__main__":
    main()
