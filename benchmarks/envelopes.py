"""Envelopes: events per second by events per NATS message (issue 6).

Run: ``.venv/bin/python benchmarks/envelopes.py [--events N] [--repeat R] [--sizes 1,10,100,500]``.
For each batch size (1 = one event per message, today's default wire) it prints

- ``publish batch N``: ``Publisher.publish`` of every event until the last ack (no daemon);
- ``pipeline batch N``: publish -> JetStream -> daemon -> MemoryStore, from the first publish
  until the daemon's store covers the last sequence (publisher and daemon share one process
  and one event loop, as in ``run.py``).

Each figure is the median of R runs, each on a fresh stream of an embedded nats-server, msgpack
encoded, ``max_in_flight = max(1024, 8 x batch size)``. ``make bench`` calls
:func:`bench_envelopes`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, ensure_stream
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Publisher
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.stores.memory import MemoryStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import history

SIZES = (1, 10, 100, 500)


def _config(server: EmbeddedNats, stream: str) -> LogConfig:
    return LogConfig(servers=(server.url,), stream=stream, subject_prefix=stream.lower())


def _publisher(config: LogConfig, size: int) -> Publisher:
    return Publisher(config, encoding="msgpack", batch_size=size, max_in_flight=max(1024, 8 * size))


async def _publish_all(pub: Publisher, items: Sequence[ev.Event]) -> int:
    """Publish every event; the last one waits for its ack and gives the last sequence."""
    for event in items[:-1]:
        await pub.publish(event)
    last = await pub.publish_and_wait(items[-1])
    await pub.flush()
    return last


async def _publish(
    items: Sequence[ev.Event], server: EmbeddedNats, stream: str, size: int
) -> float:
    config = _config(server, stream)
    client = await connect(config)
    await ensure_stream(client.jetstream(), config)
    await client.close()
    async with _publisher(config, size) as pub:
        began = time.perf_counter()
        await _publish_all(pub, items)
        return len(items) / (time.perf_counter() - began)


async def _pipeline(
    items: Sequence[ev.Event], server: EmbeddedNats, stream: str, size: int
) -> float:
    config = _config(server, stream)
    store = MemoryStore()
    projector = Projector(ProjectorConfig(log=config), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        began = time.perf_counter()
        async with _publisher(config, size) as pub:
            last = await _publish_all(pub, items)
        await projector.wait_for(last)
        seconds = time.perf_counter() - began
        tg.cancel_scope.cancel()
    if store.stats().applied != len(items):
        raise AssertionError(f"applied {store.stats().applied} of {len(items)} events")
    return len(items) / seconds


def bench_envelopes(
    items: Sequence[ev.Event], repeat: int, sizes: Sequence[int] = SIZES
) -> dict[str, float]:
    """``{"publish batch N": events/s, "pipeline batch N": events/s}`` for each size N."""
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp)) as server:
        for size in sizes:
            for name, run in (("publish", _publish), ("pipeline", _pipeline)):
                runs = [
                    anyio.run(run, items, server, f"ENV_{name.upper()}_{size}_{i}", size)
                    for i in range(repeat)
                ]
                rates[f"{name} batch {size}"] = statistics.median(runs)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    items = history(args.events)
    print(f"{args.events} events, median of {args.repeat} runs, msgpack")
    for name, rate in bench_envelopes(items, args.repeat, sizes).items():
        print(f"  {name:<20} {rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
