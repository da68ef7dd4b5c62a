"""Publish -> visible latency under a steady load: p50/p99, and whether the load was sustained.

Run: ``.venv/bin/python benchmarks/latency.py [--rate 10000] [--seconds 20]`` (starts its own
nats-server). A publisher process (``publish.py child --rate``) sends bursts every 10 ms,
``rate`` events/s on average, recording the monotonic time just before each ``publish``. A
:class:`Projector` here folds into a MemoryStore and a DuckDBStore; its listener is called once
every store has applied a batch (``Projector._notify``), which is exactly "visible in a query
of both stores", and records that time. Latency = visible - sent, for every event; the first
second is left out as warm-up. "load" is the rate the publisher achieved, "drained" the rate
at which events became visible (first send to last visible): below the load, the daemon fell
behind and the latency grows with the run's length. "memory" figures are the same for the
MemoryStore alone (what live queries read), noted as it applies each batch: the DuckDB store
applies in its own thread, behind it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pipeline
import publish

from workledger.core.nats_server import EmbeddedNats
from workledger.stores.base import Batch
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

WARMUP = 1.0  # seconds of publishing left out of the percentiles


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: the value q% of samples do not exceed."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class _TimedMemoryStore(MemoryStore):
    """A MemoryStore that notes when (monotonic ns) each batch became queryable in it."""

    def __init__(self) -> None:
        super().__init__()
        self.applied = pipeline.Applied()

    def apply(self, batch: Batch) -> None:
        super().apply(batch)
        self.applied(batch)


def _latencies(applied: pipeline.Applied, result: dict[str, Any]) -> list[float]:
    """Milliseconds from send to visible of each event sent after the warm-up (of every event
    in a run shorter than that)."""
    visible = {i.event.id: t for t, batch in applied.batches for i in batch.events}
    warm = result["started_ns"] + WARMUP * 1e9
    samples = [(visible[id_] - t) / 1e6 for id_, t in result["sent"] if t >= warm]
    return samples or [(visible[id_] - t) / 1e6 for id_, t in result["sent"]]


async def _run(url: str, rate: float, seconds: float, tmp: Path) -> dict[str, float]:
    events = max(1, round(rate * seconds))
    argv = publish.child_argv(url, "LATENCY", events, tmp / "latency.json", rate=rate)
    memory = _TimedMemoryStore()
    with DuckDBStore(tmp / "latency.duckdb") as duck:
        result, applied = await pipeline.project_while(argv, [memory, duck], url, "LATENCY")
    samples = _latencies(applied, result)
    in_memory = _latencies(memory.applied, result)
    visible = [t for t, _ in applied.batches]
    span = (result["sent"][-1][1] - result["started_ns"]) / 1e9 if events > 1 else 0.0
    return {
        "latency p50": percentile(samples, 50),
        "latency p99": percentile(samples, 99),
        "latency max": max(samples),
        "latency mean": statistics.fmean(samples),
        "latency p50 memory": percentile(in_memory, 50),
        "latency p99 memory": percentile(in_memory, 99),
        "latency load": (events - 1) / span if span > 0 else 0.0,
        "latency target load": rate,
        "latency drained": events / ((max(visible) - result["started_ns"]) / 1e9),
        "latency samples": float(len(samples)),
    }


def bench_latency(rate: float, seconds: float) -> dict[str, float]:
    """Milliseconds for the latencies; events/s for the load offered and achieved."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        return anyio.run(_run, server.url, rate, seconds, Path(tmp))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=10_000.0, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to publish")
    args = parser.parse_args(argv)
    for name, value in bench_latency(args.rate, args.seconds).items():
        print(f"  {name:<20} {value:>12,.2f}")


if __name__ == "__main__":
    main()
