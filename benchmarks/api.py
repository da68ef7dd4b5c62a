"""Latency of each HTTP API endpoint over a large fleet, in process (ASGI, no sockets).

Run: ``.venv/bin/python benchmarks/api.py [--workers 5000] [--tasks 50000] [--requests 200]``

A MemoryStore holds W workers in 20 pools (4 queues, 3 task keys and a zone label each, one in
ten stopped) and T tasks, 10% of them still holding a slot; the rest finished. Each endpoint is
asked R times, one request at a time, through httpx's ASGI transport, so the figures are the
app's own time (routing, validation, the query, JSON) without the network. Prints p50 and p99
in milliseconds and the size of one answer.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from workledger.core import events as ev
from workledger.http import create_app
from workledger.queries import Queries
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore

BASE = datetime(2026, 1, 1, tzinfo=UTC)
POOLS = 20
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/workers?limit=100", None),
    ("GET", "/v1/workers", None),  # the default limit: 1000 workers
    ("GET", "/v1/workers?pool=pool-3&limit=100", None),
    ("GET", "/v1/workers?task_key=key-1&label=zone:eu&status=ONLINE&limit=100", None),
    ("POST", "/v1/workers/filter?limit=100", {"task_worker_filter": {"task_keys": ["key-2"]}}),
    ("GET", "/v1/slots?pool=pool-3", None),
    ("GET", "/v1/slots", None),
    ("GET", "/v1/tasks?status=RUNNING&limit=100", None),
    ("GET", "/v1/tasks/recent?limit=100", None),
    ("GET", "/v1/tasks/task-123", None),
    ("GET", "/v1/pools", None),
    ("GET", "/v1/queues", None),
    ("GET", "/v1/quarantine", None),
    ("GET", "/v1/utilization?by=pool", None),
    ("GET", "/healthz", None),
    ("GET", "/metrics", None),
]


def fleet(workers: int, tasks: int, rng: random.Random) -> list[ev.Event]:
    """Workers registering and beating, then tasks claimed, run and mostly finished."""
    out: list[ev.Event] = []
    for w in range(workers):
        at = BASE + timedelta(seconds=w % 600)
        out.append(
            ev.WorkerStarted(
                worker=f"w-{w}",
                pool=f"pool-{w % POOLS}",
                queues=(f"q-{w % 4}",),
                task_keys=(f"key-{w % 3}",),
                labels={"zone": "eu" if w % 2 else "us"},
                slots=4,
                at=at,
            )
        )
        out.append(ev.WorkerHeartbeat(worker=f"w-{w}", pool=f"pool-{w % POOLS}", at=at + _H))
        if w % 10 == 0:
            out.append(ev.WorkerStopped(worker=f"w-{w}", pool=f"pool-{w % POOLS}", at=at + _H))
    for t in range(tasks):
        out.extend(_task(t, workers, rng))
    return out


_H = timedelta(hours=1)


def _task(t: int, workers: int, rng: random.Random) -> list[ev.Event]:
    w = rng.randrange(workers)
    start = BASE + timedelta(seconds=rng.uniform(0, 3000))
    common = {"task": f"task-{t}"}
    steps: list[ev.Event] = [
        ev.TaskSubmitted(pool=f"pool-{w % POOLS}", queue=f"q-{w % 4}", at=start, **common),
        ev.TaskClaimed(worker=f"w-{w}", at=start + timedelta(seconds=1), **common),
        ev.TaskStarted(worker=f"w-{w}", at=start + timedelta(seconds=2), **common),
    ]
    if t % 10:  # nine in ten finished
        end = start + timedelta(seconds=rng.uniform(3, 600))
        done = ev.TaskCompleted if t % 7 else ev.TaskFailed
        steps.append(done(at=end, **common))
    return steps


def store_of(events: list[ev.Event]) -> MemoryStore:
    store = MemoryStore()
    for start in range(0, len(events), 5000):
        chunk = events[start : start + 5000]
        items = [Sequenced(start + i + 1, "s", e) for i, e in enumerate(chunk)]
        store.apply(Batch(events=items, last_seq=start + len(chunk)))
    return store


async def measure(app: Any, requests: int) -> list[tuple[str, float, float, int]]:
    transport = httpx.ASGITransport(app=app)
    rows = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for method, path, body in ENDPOINTS:
            times, size = [], 0
            for _ in range(requests):
                began = time.perf_counter()
                reply = await client.request(method, path, json=body)
                times.append(time.perf_counter() - began)
                assert reply.status_code in (200, 503), (path, reply.status_code, reply.text)
                size = len(reply.content)
            q = statistics.quantiles(times, n=100)
            rows.append((f"{method} {path}", q[49] * 1e3, q[98] * 1e3, size))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    began = time.perf_counter()
    store = store_of(fleet(args.workers, args.tasks, random.Random(7)))
    print(
        f"{args.workers} workers, {args.tasks} tasks folded in {time.perf_counter() - began:.1f}s"
    )
    now = BASE + _H + timedelta(minutes=10)  # most workers ONLINE, the stopped ones STOPPED
    with warnings.catch_warnings():  # the feed's routes use a style Litestar deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        app = create_app(Queries(store, clock=lambda: now))
    rows = asyncio.run(measure(app, max(args.requests, 2)))
    width = max(len(name) for name, *_ in rows)
    print(f"{'endpoint':<{width}}  {'p50 ms':>8}  {'p99 ms':>8}  {'bytes':>9}")
    for name, p50, p99, size in rows:
        print(f"{name:<{width}}  {p50:8.2f}  {p99:8.2f}  {size:9d}")


if __name__ == "__main__":
    main()
