"""End to end: publish -> JetStream -> daemon -> queryable in both stores, events/s sustained.

Run: ``.venv/bin/python benchmarks/pipeline.py [--events N] [--repeat R]`` (starts its own
nats-server). A publisher process (``publish.py child``) sends N events flat out into a fresh
stream while a :class:`Projector` here folds them into a MemoryStore and a DuckDBStore. The
time runs from the publisher's first ``publish`` until a batch covering the stream's last
sequence has been applied to both stores (the projector's listeners are told exactly then);
both clocks are the system-wide monotonic one. Batch size 1, and the envelope size when the
Publisher batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import publish
import run

from workledger.core.nats_server import EmbeddedNats
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.stores.base import Batch, Store
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore


class Applied:
    """A projector listener: when (monotonic ns) each batch became visible in every store."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, Batch]] = []

    def __call__(self, batch: Batch) -> None:
        self.batches.append((time.monotonic_ns(), batch))

    def visible_at(self, seq: int) -> int:
        """When the first batch covering ``seq`` was applied."""
        return next(t for t, batch in self.batches if batch.last_seq >= seq)


async def project_while(
    argv: list[str], stores: Sequence[Store], url: str, stream: str
) -> tuple[dict[str, Any], Applied]:
    """Run a Projector on ``stores`` while the publisher process ``argv`` runs, until the
    stores cover everything it published; return its report and the listener's record."""
    projector = Projector(ProjectorConfig(log=publish.log_config(url, stream)), stores)
    applied = Applied()
    projector.listeners.append(applied)
    report = Path(argv[-1].removeprefix("--report="))
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)  # the stream exists before the publisher connects
        await anyio.run_process(argv, stdout=None, stderr=None)
        result: dict[str, Any] = json.loads(await anyio.Path(report).read_text())
        await projector.wait_for(result["last_seq"])
        tg.cancel_scope.cancel()
    return result, applied


async def _once(url: str, stream: str, events: int, batch_size: int, tmp: Path) -> float:
    argv = publish.child_argv(url, stream, events, tmp / f"{stream}.json", batch_size=batch_size)
    with DuckDBStore(tmp / f"{stream}.duckdb") as duck:
        result, applied = await project_while(argv, [MemoryStore(), duck], url, stream)
    seconds: float = (applied.visible_at(result["last_seq"]) - result["started_ns"]) / 1e9
    return events / seconds


def bench_end_to_end(
    events: int, repeat: int, sizes: Sequence[int] | None = None, suffix: str = ""
) -> dict[str, float]:
    """Events/s per batch size (default: 1, and the envelope size when the Publisher batches),
    the median of ``repeat`` runs, each on a fresh stream; ``suffix`` ends each figure's name."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        for size in sizes or publish.batch_sizes():
            rates = [
                anyio.run(_once, server.url, f"E2E{size}X{i}", events, size, Path(tmp))
                for i in range(repeat)
            ]
            figures[f"end to end b{size}{suffix}"] = statistics.median(rates)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="", help="batch sizes, e.g. 1,100")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size]
    print(f"{args.events} events from {run.source()}, median of {args.repeat} runs")
    for name, rate in bench_end_to_end(args.events, args.repeat, sizes).items():
        print(f"  {name:<16} {rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
