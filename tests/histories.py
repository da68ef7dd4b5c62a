"""Hypothesis strategies for event histories: few ids, so events collide on the same entities."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import strategies as st

from workledger.core import events as ev

BASE = datetime(2026, 1, 1, tzinfo=UTC)
WORKERS = ("w1", "w.2", "w 3")
TASKS = ("t1", "t2", "t3", "t.4", "t 5")
POOLS = ("p1", "p.2")
QUEUES = ("q1", "q 2")
KEYS = ("k1", "k2", "k.3")

times = st.integers(min_value=0, max_value=600).map(lambda s: BASE + timedelta(seconds=s))
workers, tasks, pools = st.sampled_from(WORKERS), st.sampled_from(TASKS), st.sampled_from(POOLS)
queues, keys = st.sampled_from(QUEUES), st.sampled_from(KEYS)


def _task_events() -> st.SearchStrategy[ev.Event]:
    text = st.none() | st.sampled_from(["boom", "oom"])
    return st.one_of(
        st.builds(
            ev.TaskSubmitted,
            task=tasks,
            pool=pools,
            queue=queues,
            task_key=st.none() | keys,
            priority=st.none() | st.integers(0, 3),
            stage=st.none() | st.sampled_from(["fetch", "parse"]),
        ),
        st.builds(ev.TaskClaimed, task=tasks, worker=workers, pool=st.none() | pools),
        st.builds(ev.TaskStarted, task=tasks, worker=workers),
        st.builds(ev.TaskProgress, task=tasks, progress=st.none() | st.floats(0, 1), message=text),
        st.builds(ev.TaskRetrying, task=tasks, attempt=st.none() | st.integers(1, 3), error=text),
        st.builds(ev.TaskCompleted, task=tasks),
        st.builds(ev.TaskFailed, task=tasks, error=text),
        st.builds(ev.TaskCancelled, task=tasks),
        st.builds(ev.TaskCrashed, task=tasks, reason=text),
    )


def _worker_events() -> st.SearchStrategy[ev.Event]:
    key_sets = st.lists(keys, max_size=2, unique=True).map(tuple)
    return st.one_of(
        st.builds(
            ev.WorkerStarted,
            worker=workers,
            pool=pools,
            task_keys=key_sets,
            queues=st.lists(queues, max_size=2, unique=True).map(tuple),
            slots=st.integers(0, 3),
            heartbeat_interval=st.sampled_from([5.0, 30.0]),
            labels=st.dictionaries(st.sampled_from(["zone", "gpu"]), st.sampled_from(["a", "b"])),
        ),
        st.builds(ev.WorkerHeartbeat, worker=workers, pool=pools),
        st.builds(ev.WorkerSubscribed, worker=workers, pool=pools, task_keys=key_sets),
        st.builds(
            ev.WorkerStopped, worker=workers, pool=pools, reason=st.none() | st.just("shutdown")
        ),
        st.builds(ev.WorkerLost, worker=workers, pool=pools, last_seen=times),
        st.builds(ev.WorkerForgotten, worker=workers, pool=pools),
    )


def _settings_events() -> st.SearchStrategy[ev.Event]:
    limits = st.none() | st.integers(0, 5)
    return st.one_of(
        st.builds(ev.PoolCreated, pool=pools, concurrency_limit=limits),
        st.builds(ev.PoolUpdated, pool=pools, paused=st.booleans()),
        st.builds(ev.PoolUpdated, pool=pools, concurrency_limit=limits),
        st.builds(
            ev.QueueCreated, pool=pools, queue=queues, priority=st.none() | st.integers(0, 9)
        ),
        st.builds(
            ev.QueueUpdated,
            pool=pools,
            queue=queues,
            paused=st.booleans(),
            concurrency_limit=limits,
        ),
    )


@st.composite
def histories(draw: st.DrawFn, max_size: int = 60, reused_ids: bool = False) -> list[ev.Event]:
    """A list of stamped events with unique ids and colliding entities and times.

    ``reused_ids``: ids from a pool of four instead, so different events share an id (only a
    faulty or hostile producer sends that), and times from a few seconds, so they share both.
    """
    bodies = draw(
        st.lists(_task_events() | _worker_events() | _settings_events(), max_size=max_size)
    )
    moments = st.sampled_from([BASE, BASE + timedelta(seconds=1)]) if reused_ids else times
    stamps = draw(st.lists(moments, min_size=len(bodies), max_size=len(bodies)))
    ids = (
        draw(
            st.lists(
                st.sampled_from(["r0", "r1", "r2", "r3"]),
                min_size=len(bodies),
                max_size=len(bodies),
            )
        )
        if reused_ids
        else [f"e{i:05d}" for i in range(len(bodies))]
    )
    return [
        msgspec.structs.replace(body, id=i, at=at)
        for i, body, at in zip(ids, bodies, stamps, strict=True)
    ]


def fleet_history(size: int, seed: int = 0) -> list[ev.Event]:
    """A deterministic, plausible history of ``size`` events (for end-to-end and kill tests).

    Times are shuffled a little so the stream order is not the event-time order.
    """
    rng = random.Random(seed)
    out: list[ev.Event] = [ev.PoolCreated(pool=p, concurrency_limit=8) for p in POOLS]
    out += [
        ev.WorkerStarted(worker=f"w{i}", pool=POOLS[i % 2], slots=2, task_keys=(KEYS[i % 3],))
        for i in range(12)
    ]
    lifecycle = [ev.TaskClaimed, ev.TaskStarted, ev.TaskProgress, ev.TaskRetrying]
    terminal = [ev.TaskCompleted, ev.TaskCompleted, ev.TaskFailed, ev.TaskCancelled, ev.TaskCrashed]
    task = 0
    while len(out) < size:
        task += 1
        name, worker, pool = f"task-{task}", f"w{rng.randrange(12)}", rng.choice(POOLS)
        out.append(ev.TaskSubmitted(task=name, pool=pool, queue=rng.choice(QUEUES)))
        for kind in lifecycle[: rng.randrange(1, 5)]:
            fields = {"worker": worker} if kind in (ev.TaskClaimed, ev.TaskStarted) else {}
            out.append(kind(task=name, **fields))  # type: ignore[call-arg]
        if rng.random() < 0.8:
            out.append(rng.choice(terminal)(task=name))
        out.append(ev.WorkerHeartbeat(worker=worker, pool=POOLS[int(worker[1:]) % 2]))
    return [
        msgspec.structs.replace(
            e, id=f"f{seed}-{i:07d}", at=BASE + timedelta(seconds=i + rng.uniform(-3, 3))
        )
        for i, e in enumerate(out[:size])
    ]
