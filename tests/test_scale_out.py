"""Scale-out: daemons on partitions of one stream answer together what one daemon answers.

Three daemons, one pool each (``--pools`` in the CLI, ``filter_subjects`` here), read one
replicas-3 stream on a local three-node cluster; the union of their read models equals the
read model of a daemon over the whole stream, for workers, slots, tasks and utilization.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, ensure_stream
from workledger.core.nats_server import EmbeddedCluster
from workledger.core.publisher import Publisher
from workledger.projections.partitions import pool_subjects
from workledger.stores.memory import MemoryStore

from .conftest import read_all
from .histories import BASE
from .ledger import projecting

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

POOLS = ("etl", "ml.gpu", "web hooks")
NOW = BASE + timedelta(minutes=30)


def _fleet(size: int, seed: int = 11) -> list[ev.Event]:
    """Workers in three pools and task lifecycles; every task event carries its pool."""
    rng = random.Random(seed)
    workers = [(f"w{i}", POOLS[i % 3]) for i in range(15)]
    out: list[ev.Event] = [
        ev.WorkerStarted(worker=w, pool=p, slots=3, queues=("a", "b"), heartbeat_interval=60)
        for w, p in workers
    ]
    task = 0
    while len(out) < size:
        task += 1
        worker, pool = rng.choice(workers)
        route = {"task": f"t{task}", "pool": pool}
        out += [
            ev.TaskSubmitted(**route, queue=rng.choice("ab")),
            ev.TaskClaimed(**route, worker=worker),
        ]
        out += [ev.TaskStarted(**route, worker=worker)] if rng.random() < 0.8 else []
        ending = rng.random()
        if ending < 0.6:
            out.append(ev.TaskCompleted(**route))
        elif ending < 0.7:
            out.append(ev.TaskFailed(**route, error="boom"))
        out.append(ev.WorkerHeartbeat(worker=worker, pool=pool))
    return [
        msgspec.structs.replace(e, at=BASE + timedelta(milliseconds=300 * i))
        for i, e in enumerate(out)
    ]


ANSWERS: dict[str, Callable[[MemoryStore], list[Any]]] = {
    "workers": lambda s: s.workers(now=NOW),
    "slot holders": lambda s: s.slot_holders(),
    "slot counts": lambda s: s.slot_counts(),
    "tasks": lambda s: s.tasks(limit=100_000),
    "utilization by pool": lambda s: s.utilization(by="pool", since=BASE, until=NOW, now=NOW),
    "utilization by worker": lambda s: s.utilization(by="worker", since=BASE, until=NOW, now=NOW),
}


def _key(item: Any) -> str:
    return msgspec.json.encode(item).decode()


async def test_three_pool_daemons_together_answer_what_one_daemon_answers(
    tmp_path: Path,
) -> None:
    """Workers, slots, tasks and utilization: the union of the partitions equals the whole."""
    history = _fleet(3000)
    with EmbeddedCluster(tmp_path) as cluster:
        config = LogConfig(servers=cluster.urls, stream="SCALE", subject_prefix="wl", replicas=3)
        await _create(config)
        async with Publisher(config) as pub:
            for event in history:
                await pub.publish(event)
        last = await _last_seq_per_pool(config)
        async with AsyncExitStack() as stack:
            whole = await stack.enter_async_context(projecting(config))
            parts = {
                pool: await stack.enter_async_context(
                    projecting(config, pool_subjects(config.subject_prefix, [pool]))
                )
                for pool in POOLS
            }
            assert await whole[0].wait_for(max(last.values()), timeout=30)
            for pool, (projector, _) in parts.items():
                assert await projector.wait_for(last[pool], timeout=30), pool
    assert sum(store.stats().applied for _, store in parts.values()) == len(history)
    for name, answer in ANSWERS.items():
        union = sorted((_key(i) for _, store in parts.values() for i in answer(store)))
        assert union == sorted(_key(i) for i in answer(whole[1])), name
        assert union, f"{name}: an empty answer proves nothing"


async def _create(config: LogConfig) -> None:
    """The stream, with three replicas, as the first daemon would create it."""
    nc = await connect(config)
    try:
        await ensure_stream(nc.jetstream(), config)
    finally:
        await nc.close()


async def _last_seq_per_pool(config: LogConfig) -> dict[str, int]:
    """Each pool's last stream sequence: what its daemon must reach."""
    tokens = {f.split(".")[1]: pool for pool in POOLS for f in pool_subjects("wl", [pool])}
    last: dict[str, int] = {}
    for message in await read_all(config):
        pool = tokens[message.subject.split(".")[1]]
        last[pool] = max(last.get(pool, 0), message.seq)
    return last
