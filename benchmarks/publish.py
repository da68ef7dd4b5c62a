"""The SDK's publish rate into a real JetStream stream, and the publishing side of the pipeline.

Run: ``.venv/bin/python benchmarks/publish.py [--events N] [--repeat R]`` (starts its own
nats-server). The rate counts from the first ``publish`` until every ack is back (``flush``),
with batch size 1 and, when the Publisher takes ``batch_size``, 100 events per message.

``python benchmarks/publish.py child ...`` is the publisher process of ``pipeline.py`` and
``latency.py``: services publish from their own processes, so the daemon under test gets its
own interpreter. It writes a JSON report (start and end on the system-wide monotonic clock,
the last stream sequence, and with ``--rate`` the send time of every event) to ``--report``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import run

from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, ensure_stream, stream_info
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Publisher

ENVELOPE = 100  # events per message when the Publisher batches
BURST = 0.010  # a paced publisher sends a burst every 10 ms


def batching() -> bool:
    """Whether this Publisher packs several events per message (``batch_size=``)."""
    return "batch_size" in inspect.signature(Publisher.__init__).parameters


def batch_sizes() -> list[int]:
    return [1, ENVELOPE] if batching() else [1]


def log_config(url: str, stream: str) -> LogConfig:
    return LogConfig(servers=(url,), stream=stream, subject_prefix=stream.lower())


def publisher(config: LogConfig, batch_size: int) -> Publisher:
    """The SDK's Publisher, msgpack on the wire, batching only when asked (and supported)."""
    options: dict[str, Any] = {"encoding": "msgpack", "max_in_flight": 4096}
    if batch_size > 1:
        options["batch_size"] = batch_size
    return Publisher(config, **options)


async def create_stream(config: LogConfig) -> None:
    client = await connect(config)
    try:
        await ensure_stream(client.jetstream(), config)
    finally:
        await client.close()


async def last_seq(config: LogConfig) -> int:
    client = await connect(config)
    try:
        return int((await stream_info(client.jetstream(), config)).state.last_seq)
    finally:
        await client.close()


async def publish_all(config: LogConfig, items: Sequence[ev.Event], batch_size: int) -> float:
    """Seconds from the first publish until every event is acknowledged."""
    async with publisher(config, batch_size) as pub:
        began = time.perf_counter()
        for event in items:
            await pub.publish(event)
        await pub.flush()
        return time.perf_counter() - began


def bench_publish(url: str, items: Sequence[ev.Event], repeat: int) -> dict[str, float]:
    """Events/s per batch size, the median of ``repeat`` runs, each into a fresh stream."""
    figures: dict[str, float] = {}
    for size in batch_sizes():
        rates = []
        for i in range(repeat):
            config = log_config(url, f"PUB{size}X{i}")
            asyncio.run(create_stream(config))
            rates.append(len(items) / asyncio.run(publish_all(config, items, size)))
        figures[f"publish b{size}"] = statistics.median(rates)
    return figures


# --- the publisher process of pipeline.py and latency.py ----------------------------------


async def _paced(pub: Publisher, items: Sequence[ev.Event], rate: float) -> list[int]:
    """Bursts every 10 ms at ``rate`` events/s on average; a late burst is not skipped, so
    falling behind shows as a lower achieved rate. Returns each event's send time (ns)."""
    sent = []
    per_burst = max(1, round(rate * BURST))
    began = time.monotonic()
    for n, start in enumerate(range(0, len(items), per_burst)):
        delay = began + n * BURST - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for event in items[start : start + per_burst]:
            sent.append(time.monotonic_ns())
            await pub.publish(event)
    return sent


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    config = log_config(args.url, args.stream)
    items = list(itertools.islice(run.events(args.seed), args.events))
    async with publisher(config, args.batch_size) as pub:
        started = time.monotonic_ns()
        if args.rate:
            sent = await _paced(pub, items, args.rate)
        else:
            sent = []
            for event in items:
                await pub.publish(event)
        await pub.flush()
        ended = time.monotonic_ns()
    return {
        "started_ns": started,
        "ended_ns": ended,
        "events": len(items),
        "last_seq": await last_seq(config),
        "sent": [[e.id, t] for e, t in zip(items, sent, strict=False)],
    }


def child_argv(
    url: str, stream: str, events: int, report: Path, *, batch_size: int = 1, rate: float = 0
) -> list[str]:
    """The command line of a publisher process (see the module docstring)."""
    return [
        sys.executable,
        str(Path(__file__)),
        "child",
        f"--url={url}",
        f"--stream={stream}",
        f"--events={events}",
        f"--batch-size={batch_size}",
        f"--rate={rate}",
        f"--report={report}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", nargs="?", choices=["bench", "child"], default="bench")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", help="child: the NATS server")
    parser.add_argument("--stream", help="child: an existing stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="child: events/s, 0 = flat out")
    parser.add_argument("--report", type=Path, help="child: where to write the JSON report")
    args = parser.parse_args(argv)
    if args.mode == "child":
        args.report.write_text(json.dumps(asyncio.run(_child(args))))
        return
    items = run.history(args.events)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp)) as server:
        for name, rate in bench_publish(server.url, items, args.repeat).items():
            print(f"  {name:<12} {rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
