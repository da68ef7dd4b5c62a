"""Envelopes: events per second by events per NATS message (issue 6).

Run: ``.venv/bin/python benchmarks/envelopes.py [--events N] [--repeat R] [--sizes 1,10,100,500]``.
For each batch size (1 = one event per message, today's default wire) it prints

- ``publish batch N``: ``Publisher.publish`` of every event until the last ack (no daemon);
- ``pipeline batch N``: publish -> JetStream -> daemon -> MemoryStore, from the first publish
  until the daemon's store covers the last sequence (publisher and daemon share one process
  and one event loop, as ``run.py`` did);
- ``catch-up batch N``: a daemon reading the stream the publish run filled into a MemoryStore,
  from its start until it covers the last sequence (the daemon alone);
- ``transport batch N``: the same into a store that only counts: the ordered consumer and the
  decoding without the fold, i.e. what nats-py and the codec allow.

Each figure is the median of R rounds, each on fresh streams of one embedded nats-server,
msgpack encoded, ``max_in_flight = max(1024, 8 x batch size)``. ``make bench`` calls
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
from typing import cast

import anyio

from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, ensure_stream
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Publisher
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.stores.base import Batch, Store, StoreStats
from workledger.stores.memory import MemoryStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import history

SIZES = (1, 10, 100, 500)
# The daemon's stream check waits on the event loop, which a long fold can hold for seconds on
# a loaded machine; the benchmark measures folding, so it checks once an hour.
_WATCH = 3600.0


class Counting:
    """A store that folds nothing: what is left is the consumer and the decoding."""

    def __init__(self) -> None:
        self.checkpoint = self.applied = 0

    def apply(self, batch: Batch) -> None:
        self.applied += len(batch.events)
        self.checkpoint = max(self.checkpoint, batch.last_seq)

    def stats(self) -> StoreStats:
        return StoreStats(checkpoint=self.checkpoint, applied=self.applied, quarantined=0)


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


async def _publish(config: LogConfig, items: Sequence[ev.Event], size: int) -> tuple[float, int]:
    """Events/s into a fresh stream (no daemon), and the last sequence."""
    client = await connect(config)
    await ensure_stream(client.jetstream(), config)
    await client.close()
    async with _publisher(config, size) as pub:
        began = time.perf_counter()
        last = await _publish_all(pub, items)
        return len(items) / (time.perf_counter() - began), last


async def _catch_up(config: LogConfig, last: int, store: MemoryStore | Counting) -> float:
    """Events/s of a daemon reading the whole stream into ``store``."""
    projector = Projector(ProjectorConfig(log=config, watch_interval=_WATCH), [cast(Store, store)])
    seconds = await caught_up(projector, last)
    return store.stats().applied / seconds  # counted after: the left operand goes first


async def caught_up(projector: Projector, last: int) -> float:
    """Seconds from starting ``projector`` until every store holds sequence ``last``."""
    async with anyio.create_task_group() as tg:
        began = time.perf_counter()
        await tg.start(projector.run)
        await projector.wait_for(last)
        seconds = time.perf_counter() - began
        tg.cancel_scope.cancel()
    return seconds


async def _pipeline(items: Sequence[ev.Event], config: LogConfig, size: int) -> float:
    """Events/s from the first publish until the daemon's MemoryStore has the last event."""
    store = MemoryStore()
    projector = Projector(ProjectorConfig(log=config, watch_interval=_WATCH), [store])
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


async def _round(
    items: Sequence[ev.Event], server: EmbeddedNats, name: str, size: int
) -> dict[str, float]:
    """Each measure once, on fresh streams."""
    filled = _config(server, f"{name}_A")
    published, last = await _publish(filled, items, size)
    return {
        f"publish batch {size}": published,
        f"pipeline batch {size}": await _pipeline(items, _config(server, f"{name}_B"), size),
        f"catch-up batch {size}": await _catch_up(filled, last, MemoryStore()),
        f"transport batch {size}": await _catch_up(filled, last, Counting()),
    }


def bench_envelopes(
    items: Sequence[ev.Event], repeat: int, sizes: Sequence[int] = SIZES
) -> dict[str, float]:
    """Events/s by name (``publish``, ``pipeline``, ``catch-up``, ``transport``, each as
    ``"<measure> batch <N>"``) for each batch size N: the medians of ``repeat`` rounds."""
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp)) as server:
        for size in sizes:
            for i in range(repeat):
                measured = anyio.run(_round, items, server, f"ENV_{size}_{i}", size)
                for name, rate in measured.items():
                    rates.setdefault(name, []).append(rate)
    return {name: statistics.median(values) for name, values in rates.items()}


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
