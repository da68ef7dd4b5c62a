"""Hot-path benchmarks: decode, fold, and the whole pipeline on a real nats-server.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/run.py [--events N] [--repeat R]``).
Each figure is the median of R runs; compare ratios across commits, not absolute numbers
across machines. ``--events 2000`` makes a smoke run (the test suite runs one, untimed).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import msgspec

from workledger.core import codec
from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Publisher
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def history(size: int, seed: int = 0) -> list[ev.Event]:
    """A plausible mix: heartbeats and a task lifecycle per few events, over 200 workers."""
    rng = random.Random(seed)
    out: list[ev.Event] = [
        ev.WorkerStarted(worker=f"w{i}", pool=f"p{i % 5}", slots=4, task_keys=(f"k{i % 7}",))
        for i in range(200)
    ]
    task = 0
    while len(out) < size:
        task += 1
        worker = f"w{rng.randrange(200)}"
        name = f"t{task}"
        out += [
            ev.TaskSubmitted(task=name, pool=f"p{task % 5}", queue="default", task_key="k1"),
            ev.TaskClaimed(task=name, worker=worker),
            ev.TaskStarted(task=name, worker=worker),
            ev.TaskCompleted(task=name) if rng.random() < 0.9 else ev.TaskFailed(task=name),
            ev.WorkerHeartbeat(worker=worker, pool="p0"),
        ]
    return [
        msgspec.structs.replace(e, id=f"{i:012d}", at=BASE + timedelta(milliseconds=i))
        for i, e in enumerate(out[:size])
    ]


def median_rate(count: int, repeat: int, run: Callable[[], object]) -> float:
    """Events per second, the median of ``repeat`` runs."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - began)
    return count / statistics.median(seconds)


def bench_decode(events: list[ev.Event], repeat: int) -> dict[str, float]:
    as_json = [codec.encode_json(e) for e in events]
    as_msgpack = [codec.encode_msgpack(e) for e in events]
    return {
        "decode json": median_rate(len(events), repeat, lambda: [codec.decode(b) for b in as_json]),
        "decode msgpack": median_rate(
            len(events), repeat, lambda: [codec.decode(b) for b in as_msgpack]
        ),
    }


def bench_fold(events: list[ev.Event], repeat: int) -> dict[str, float]:
    items = [Sequenced(i + 1, "", e) for i, e in enumerate(events)]
    batches = [items[i : i + 5000] for i in range(0, len(items), 5000)]

    def fold() -> None:
        store = MemoryStore()
        for batch in batches:
            store.apply(Batch(events=batch, last_seq=batch[-1].seq))

    return {"fold into MemoryStore (batches of 5000)": median_rate(len(events), repeat, fold)}


async def _pipeline(events: list[ev.Event], server: EmbeddedNats, stream: str) -> float:
    config = LogConfig(servers=(server.url,), stream=stream, subject_prefix=stream.lower())
    store = MemoryStore()
    projector = Projector(ProjectorConfig(log=config), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        began = time.perf_counter()
        async with Publisher(config, encoding="msgpack") as pub:
            for event in events[:-1]:
                await pub.publish(event)
            last = await pub.publish_and_wait(events[-1])
        await projector.wait_for(last)
        seconds = time.perf_counter() - began
        tg.cancel_scope.cancel()
    return len(events) / seconds


def bench_pipeline(events: list[ev.Event], repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp)) as server:
        rates = [anyio.run(_pipeline, events, server, f"BENCH{i}") for i in range(repeat)]
    return {"publish -> JetStream -> daemon -> MemoryStore": statistics.median(rates)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    events = history(args.events)
    print(f"{args.events} events, median of {args.repeat} runs, Python {sys.version.split()[0]}")
    for bench in (bench_decode, bench_fold, bench_pipeline):
        for name, rate in bench(events, args.repeat).items():
            print(f"  {name:<48} {rate:>12,.0f} events/s")


if __name__ == "__main__":
    main()
