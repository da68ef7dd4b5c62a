"""Scale-out: daemons on partitions of one stream answer together what one daemon answers.

Three daemons, one pool each (``--pools`` in the CLI), read one
replicas-3 stream on a local three-node cluster; the union of their read models equals the
read model of a daemon over the whole stream, for workers, slots, tasks and utilization.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from workledger.core import events as ev
from workledger.core.errors import StreamNotFoundError
from workledger.core.log import LogConfig, connect, ensure_stream, last_sequence
from workledger.core.nats_server import EmbeddedCluster
from workledger.core.publisher import Publisher
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.projections.partitions import UNPOOLED, partition_subjects, pool_subjects
from workledger.projections.views import TaskStatus
from workledger.stores.base import Store
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore

from .conftest import read_all
from .histories import BASE
from .ledger import projecting

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

POOLS = ("etl", "ml.gpu", "web hooks")
NOW = BASE + timedelta(minutes=30)


def _fleet(size: int, seed: int = 11, pool_less: float = 0.0) -> list[ev.Event]:
    """Workers in three pools and task lifecycles; a task event after the submission leaves
    its pool out with probability ``pool_less``."""
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
        name = f"t{task}"
        out += [
            ev.TaskSubmitted(task=name, pool=pool, queue=rng.choice("ab")),
            ev.TaskClaimed(task=name, pool=_hint(rng, pool, pool_less), worker=worker),
        ]
        if rng.random() < 0.8:
            out.append(ev.TaskStarted(task=name, pool=_hint(rng, pool, pool_less), worker=worker))
        ending = rng.random()
        if ending < 0.6:
            out.append(ev.TaskCompleted(task=name, pool=_hint(rng, pool, pool_less)))
        elif ending < 0.7:
            out.append(ev.TaskFailed(task=name, pool=_hint(rng, pool, pool_less), error="boom"))
        out.append(ev.WorkerHeartbeat(worker=worker, pool=pool))
    return [
        msgspec.structs.replace(e, id=f"e{i}", at=BASE + timedelta(milliseconds=300 * i))
        for i, e in enumerate(out)
    ]


def _hint(rng: random.Random, pool: str, pool_less: float) -> str | None:
    """A task event's pool hint: left out with probability ``pool_less``."""
    return None if rng.random() < pool_less else pool


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
    parts = await _partitioned(tmp_path, history, lambda pool: {"filter_subjects": _only(pool)})
    assert sum(store.stats().applied for _, store in parts) == len(history)


async def test_pool_daemons_keep_the_task_events_without_a_pool_of_their_own_tasks(
    tmp_path: Path,
) -> None:
    """Half the task events after a submission leave their pool out (they route under
    ``wl._``): each pool daemon keeps those of its own tasks, and skips the others', so each
    event is folded exactly once and the union still equals the whole."""
    history = _fleet(3000, pool_less=0.5)
    unpooled = sum(1 for e in history if e.family == "task" and e.pool_key is None)
    assert unpooled > 300
    parts = await _partitioned(tmp_path, history, lambda pool: {"pools": (pool,)})
    assert sum(store.stats().applied for _, store in parts) == len(history)
    assert sum(projector.metrics.skipped for projector, _ in parts) == 2 * unpooled


def _only(pool: str) -> tuple[str, ...]:
    return pool_subjects("wl", [pool])


async def _partitioned(
    tmp_path: Path, history: list[ev.Event], settings: Callable[[str], dict[str, Any]]
) -> list[tuple[Projector, MemoryStore]]:
    """Publish ``history``, project it whole and by pool (``settings`` of each pool's daemon),
    check every answer of the union against the whole, and return the pool daemons."""
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
                pool: await stack.enter_async_context(projecting(config, **settings(pool)))
                for pool in POOLS
            }
            assert await whole[0].wait_for(max(last.values()), timeout=30)
            for pool, (projector, _) in parts.items():
                assert await projector.wait_for(last[pool], timeout=30), pool
    for name, answer in ANSWERS.items():
        union = sorted((_key(i) for _, store in parts.values() for i in answer(store)))
        assert union == sorted(_key(i) for i in answer(whole[1])), name
        assert union, f"{name}: an empty answer proves nothing"
    return list(parts.values())


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
        token = message.subject.split(".")[1]
        for pool in POOLS if token == UNPOOLED else [tokens[token]]:  # every pool daemon reads _
            last[pool] = max(last.get(pool, 0), message.seq)
    return last


@pytest.mark.parametrize("kind", ["memory", "duckdb"])
async def test_a_restarted_pool_daemon_still_keeps_the_pool_less_events_of_its_tasks(
    log_stream: LogConfig, tmp_path: Path, kind: str
) -> None:
    """The tasks it knows come back from its store: a completion without a pool, published
    while it was down, still completes its task, and another pool's is still skipped."""
    path = tmp_path / "etl.duckdb"

    def opened() -> Store:
        return DuckDBStore(path) if kind == "duckdb" else memory

    memory = MemoryStore()
    settings = ProjectorConfig(log=log_stream, pools=("etl",))
    async with Publisher(log_stream) as pub:
        await pub.publish(ev.TaskSubmitted(task="t1", pool="etl", queue="q"))
        await pub.publish(ev.TaskSubmitted(task="t2", pool="gpu", queue="q"))
    store = opened()
    async with _running(Projector(settings, [store])) as projector:
        assert await projector.wait_for(1, timeout=10)  # 2 is in pool gpu: not read
    _close(store)
    async with Publisher(log_stream) as pub:
        await pub.publish(ev.TaskCompleted(task="t2"))
        await pub.publish(ev.TaskCompleted(task="t1"))
    store = opened()
    async with _running(Projector(settings, [store])) as projector:
        assert await projector.wait_for(4, timeout=10)
        assert projector.metrics.skipped == 1
    view = store.task("t1")
    assert view is not None
    assert view.status is TaskStatus.COMPLETED
    assert store.task("t2") is None
    _close(store)


@asynccontextmanager
async def _running(projector: Projector) -> AsyncIterator[Projector]:
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        yield projector
        tg.cancel_scope.cancel()


def _close(store: Store) -> None:
    if isinstance(store, DuckDBStore):
        store.close()


async def test_the_last_sequence_of_a_partition_is_that_of_its_subjects_last_message(
    log_stream: LogConfig,
) -> None:
    """What a partition's rebuild stops at: the last message on its subjects (wildcards), 0
    when none holds one, the stream's last without subjects; a missing stream is named."""
    prefix = log_stream.subject_prefix
    async with Publisher(log_stream) as pub:
        await pub.publish(ev.WorkerHeartbeat(worker="w", pool="etl"))  # 1
        await pub.publish(ev.TaskCompleted(task="t"))  # 2, without a pool
        await pub.publish(ev.WorkerHeartbeat(worker="v", pool="gpu"))  # 3
    nc = await connect(log_stream)
    try:
        js = nc.jetstream()
        assert await last_sequence(js, log_stream) == 3
        assert await last_sequence(js, log_stream, partition_subjects(prefix, ["etl"])) == 2
        assert await last_sequence(js, log_stream, pool_subjects(prefix, ["etl"])) == 1
        assert await last_sequence(js, log_stream, pool_subjects(prefix, ["none"])) == 0
        missing = msgspec.structs.replace(log_stream, stream="NOPE")
        with pytest.raises(StreamNotFoundError, match="NOPE"):
            await last_sequence(js, missing, pool_subjects(prefix, ["etl"]))
    finally:
        await nc.close()
