"""Hot-path benchmarks: decode, fold into each store, and the events every benchmark uses.

Run: ``.venv/bin/python benchmarks/run.py [--events N] [--repeat R]`` for these figures alone;
``make bench`` (``benchmarks/bench.py``) runs them with every other section and a summary table.
Each figure is the median of R runs; compare ratios across commits, not absolute numbers
across machines.

Events come from the workload generator (``workledger.workload``) when it is installed, else
from :func:`stream_history` below: both are endless, deterministic and already stamped (id and
time), so a benchmark takes as many as it needs with ``itertools.islice`` and never holds more.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from workledger.core import codec
from workledger.core import events as ev
from workledger.projections.daemon import ProjectorConfig, fewer_collections
from workledger.projections.fold import Ledger
from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

BASE = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 5000  # the daemon's max_batch (messages): a store's batch under load, one event a message
# A daemon folds under these collector thresholds (ProjectorConfig.gc_thresholds): the folds
# are timed under them too, not under CPython's default of a collection every 700 objects.
DAEMON_GC = ProjectorConfig().gc_thresholds
WORKERS = 200  # the fallback history's fleet


def stream_history(seed: int = 0, workers: int = WORKERS) -> Iterator[ev.Event]:
    """Endless: ``workers`` starts, then task lifecycles and heartbeats, 1 ms apart."""
    rng = random.Random(seed)

    def raw() -> Iterator[ev.Event]:
        for i in range(workers):
            yield ev.WorkerStarted(
                worker=f"w{i}", pool=f"p{i % 5}", slots=4, task_keys=(f"k{i % 7}",)
            )
        for task in itertools.count(1):
            worker, name = f"w{rng.randrange(workers)}", f"t{task}"
            yield ev.TaskSubmitted(task=name, pool=f"p{task % 5}", queue="default", task_key="k1")
            yield ev.TaskClaimed(task=name, worker=worker)
            yield ev.TaskStarted(task=name, worker=worker)
            yield ev.TaskCompleted(task=name) if rng.random() < 0.9 else ev.TaskFailed(task=name)
            yield ev.WorkerHeartbeat(worker=worker, pool="p0")

    for i, event in enumerate(raw()):
        yield msgspec.structs.replace(event, id=f"{i:012d}", at=BASE + timedelta(milliseconds=i))


def _generator() -> tuple[Any, Callable[..., Iterator[ev.Event]]] | None:
    """``(Workload, generate)`` from ``workledger.workload``, or None until it exists."""
    try:
        from workledger.workload import Workload, generate  # noqa: PLC0415 (optional)
    except ImportError:
        return None
    return Workload, generate


def source() -> str:
    """Which generator :func:`events` uses, for the report's header."""
    return "workledger.workload" if _generator() else "benchmarks/run.py stream_history"


def events(seed: int = 0) -> Iterator[ev.Event]:
    """The endless benchmark stream: the workload generator's default fleet, or the fallback."""
    found = _generator()
    if found is None:
        return stream_history(seed)
    workload, generate = found
    return generate(workload(seed=seed))


def history(size: int, seed: int = 0) -> list[ev.Event]:
    """The first ``size`` events of :func:`events`, as a list (for sizes that fit in memory)."""
    return list(itertools.islice(events(seed), size))


def sequenced(items: list[ev.Event]) -> list[Sequenced]:
    return [Sequenced(i + 1, "", e) for i, e in enumerate(items)]


def batches(items: list[Sequenced], size: int = BATCH) -> list[Batch]:
    return [
        Batch(events=items[i : i + size], last_seq=items[i : i + size][-1].seq)
        for i in range(0, len(items), size)
    ]


def median_rate(count: int, repeat: int, run: Callable[[], object]) -> float:
    """Events per second, the median of ``repeat`` runs."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - began)
    return count / statistics.median(seconds)


def load_batch(items: list[ev.Event], per_message: int = 100) -> int:
    """The events of a daemon's batch under a heavy load of msgpack envelopes of
    ``per_message`` events: messages are taken until ``max_batch_bytes`` is reached
    (``Projector._take``), so it depends on the events' size."""
    config = ProjectorConfig()
    sizes = [
        len(codec.encode_envelope(items[i : i + per_message], "msgpack"))
        for i in range(0, len(items), per_message)
    ]
    taken, messages = 0, 0
    while taken < config.max_batch_bytes and messages < config.max_batch:
        taken += sizes[messages % len(sizes)]
        messages += 1
    return messages * per_message


def bench_decode(items: list[ev.Event], repeat: int) -> dict[str, float]:
    """Bytes to Event, as the daemon decodes each message (events/s)."""
    as_json = [codec.encode_json(e) for e in items]
    as_msgpack = [codec.encode_msgpack(e) for e in items]
    return {
        "decode json": median_rate(len(items), repeat, lambda: [codec.decode(b) for b in as_json]),
        "decode msgpack": median_rate(
            len(items), repeat, lambda: [codec.decode(b) for b in as_msgpack]
        ),
    }


def bench_fold_ledger(items: list[ev.Event], repeat: int) -> dict[str, float]:
    """The fold alone, ``Ledger.apply`` per event: the rules without a store's indexes."""

    def fold() -> None:
        ledger = Ledger()
        for event in items:
            ledger.apply(event)

    with fewer_collections(DAEMON_GC):
        return {"fold ledger": median_rate(len(items), repeat, fold)}


def bench_fold_memory(
    items: list[ev.Event], repeat: int, size: int = BATCH, name: str = "fold memory"
) -> dict[str, float]:
    """``MemoryStore.apply`` in batches of ``size`` events, daemon-sized by default
    (events/s). A task or worker is re-indexed once per batch it is in, so bigger batches
    cost less per event."""
    chunks = batches(sequenced(items), size)

    def fold() -> None:
        store = MemoryStore()
        for batch in chunks:
            store.apply(batch)

    with fewer_collections(DAEMON_GC):
        return {name: median_rate(len(items), repeat, fold)}


def bench_fold_duckdb(items: list[ev.Event], repeat: int) -> dict[str, float]:
    """``DuckDBStore.apply`` in daemon-sized batches, each one transaction with its checkpoint
    row, then ``close()`` (a DuckDB CHECKPOINT folding the WAL into the file) (events/s)."""
    chunks = batches(sequenced(items))
    rates = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp, fewer_collections(DAEMON_GC):
            store = DuckDBStore(Path(tmp) / "fold.duckdb")
            began = time.perf_counter()
            for batch in chunks:
                store.apply(batch)
            store.close()
            rates.append(len(items) / (time.perf_counter() - began))
    return {"fold duckdb": statistics.median(rates)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    items = history(args.events)
    print(f"{args.events} events from {source()}, median of {args.repeat} runs")
    for bench in (bench_decode, bench_fold_ledger, bench_fold_memory, bench_fold_duckdb):
        for name, rate in bench(items, args.repeat).items():
            print(f"  {name:<16} {rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
