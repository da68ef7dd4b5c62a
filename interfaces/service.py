"""The running daemon: projector, HTTP API and snapshots in one task group.

``serve`` is what ``workledger project`` runs. SIGTERM or SIGINT stops the API first, then the
projector, and always writes a final snapshot (shielded) so a restart resumes where it stopped.
A SIGKILL loses at most the work since the last snapshot, which is replayed from the log.

With a state directory the daemon folds into two stores: the in-memory one that answers the
API, and a DuckDB file for analysts and durable history. Each restarts on its own: the memory
store from its snapshot, DuckDB from its file (checkpoint in the same transaction as its rows).
The projector resumes after the lower checkpoint and gives each store only what it lacks, so
they converge without either loading from the other: the simplest design that is correct
after a kill at any instant (a memory snapshot older than DuckDB's checkpoint just catches up).

No other process can open the DuckDB file while the daemon writes it, so every
``analyst_interval`` seconds (when it moved) the daemon publishes a consistent copy for
analysts, ``<stream>.analyst.duckdb`` (``docs/analysts.md``; opened by ``workledger.analysis``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import uvicorn
from anyio.abc import TaskStatus

from workledger.core.errors import StoreError
from workledger.http import create_app
from workledger.projections._groups import plain_errors
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.reaper import Reaper, ReaperConfig
from workledger.queries import Queries
from workledger.stores.base import Store
from workledger.stores.duckdb import DuckDBStore
from workledger.stores.memory import MemoryStore, write_snapshot

__all__ = ["ServiceConfig", "run", "serve"]

_log = logging.getLogger(__name__)
# Live-feed streams never finish on their own, and uvicorn waits for every open response
# before it stops: after this many seconds it cancels them, so a dashboard never holds a
# SIGTERM up for longer.
_GRACE_SECONDS = 1  # uvicorn takes whole seconds
_PAUSE_PER_COPY = 4.0  # analysts' copies and snapshots: pause at least 4x as long as one took


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``workledger project`` is configured with."""

    projector: ProjectorConfig = msgspec.field(default_factory=ProjectorConfig)
    host: str = "127.0.0.1"
    port: int = 8765
    state_dir: Path | None = None
    snapshot_interval: float = 5.0
    multiplier: float = DEFAULT_MULTIPLIER
    api_token: str | None = None  # the HTTP API then requires it as a bearer token
    duckdb_path: Path | None = None  # None: <state_dir>/<stream>.duckdb (see ``duckdb_file``)
    analyst_interval: float = 2.0  # seconds between analysts' copies; 0: publish none
    reaper: ReaperConfig = msgspec.field(default_factory=ReaperConfig)  # off by default

    @property
    def snapshot_path(self) -> Path | None:
        """One snapshot per stream, so two streams never share a checkpoint."""
        if self.state_dir is None:
            return None
        return self.state_dir / f"{self.projector.log.stream}.memory.snapshot"

    @property
    def duckdb_file(self) -> Path | None:
        """``duckdb_path`` if given; else one file per stream in ``state_dir`` (the snapshot's
        reason: two streams must never share a checkpoint); without either, no DuckDB store.
        """
        if self.duckdb_path is not None or self.state_dir is None:
            return self.duckdb_path
        return self.state_dir / f"{self.projector.log.stream}.duckdb"

    @property
    def analyst_file(self) -> Path | None:
        """The analysts' copy, beside the DuckDB file: ``<stream>.analyst.duckdb`` by default
        (what ``workledger.analysis.connect`` opens); None when none is published."""
        live = self.duckdb_file
        if live is None or self.analyst_interval <= 0:
            return None
        return live.with_name(f"{live.stem}.analyst{live.suffix}")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _open_store(config: ServiceConfig) -> MemoryStore:
    path = config.snapshot_path
    if path is not None and path.exists():
        store = MemoryStore.load(path)
        _log.info("resuming from snapshot %s at sequence %d", path, store.stats().checkpoint)
        return store
    return MemoryStore()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(
    config: ServiceConfig, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled; ``task_status.started`` receives the API's base URL."""
    store = _open_store(config)
    duck = DuckDBStore(config.duckdb_file) if config.duckdb_file is not None else None
    stores: list[Store] = [store] if duck is None else [store, duck]
    projector = Projector(config.projector, stores)
    queries = Queries(store, projector=projector, multiplier=config.multiplier, history=duck)
    app = create_app(queries, api_token=config.api_token)
    server = _Server(
        uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=_GRACE_SECONDS
        )
    )
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    try:
        async with plain_errors(), anyio.create_task_group() as tg:
            await tg.start(projector.run)
            tg.start_soon(_serve_http, server, sock, tg.cancel_scope)
            tg.start_soon(_snapshots, store, config)
            if duck is not None:
                tg.start_soon(_analyst_copies, duck, config)
            tg.start_soon(_stop_on_signal, server)
            if config.reaper.enabled:
                await tg.start(_reaper(config, store, projector).run)
            task_status.started(f"http://{host}:{port}")
    except BaseException:
        _shut_down(store, duck, config, failing=True)
        raise
    _shut_down(store, duck, config, failing=False)


def _shut_down(
    store: MemoryStore, duck: DuckDBStore | None, config: ServiceConfig, *, failing: bool
) -> None:
    """Final snapshot, analysts' copy and close; synchronous, so cancellation cannot cut it
    short. After a failure each step is tried and its own error only logged: the first error
    (say, a full disk) is the one the user must see, not a close that failed because of it."""
    steps: list[Callable[[], object]] = [lambda: _save(store, config)]
    if duck is not None:
        steps += [lambda: _publish(duck, config), duck.close]  # analysts see the final state
    for step in steps:
        try:
            step()
        except Exception as exc:
            if not failing:
                raise
            _log.warning("while stopping after an error: %s", exc)


def _reaper(config: ServiceConfig, store: MemoryStore, projector: Projector) -> Reaper:
    """The reaper decides on the in-memory model, and only once it is caught up."""
    ready = lambda: projector.caught_up  # noqa: E731
    return Reaper(config.reaper, store, config.projector.log, ready=ready)


async def _serve_http(
    server: uvicorn.Server, sock: socket.socket, scope: anyio.CancelScope
) -> None:
    """When the API stops (on a signal), the whole service stops."""
    await server.serve(sockets=[sock])
    scope.cancel()


async def _stop_on_signal(server: uvicorn.Server) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            _log.info("received %s, shutting down", signal.Signals(signum).name)
            server.should_exit = True
            return


async def _snapshots(store: MemoryStore, config: ServiceConfig) -> None:
    """Snapshot the in-memory store each interval if the checkpoint moved.

    The store is read on the loop (it is written there) in steps of a few milliseconds, with
    the fold and the API running between them, and written to disk in a thread. The pause
    after a snapshot is at least ``_PAUSE_PER_COPY`` times as long as the loop spent on it,
    so however many tasks the store holds, snapshots take at most a fifth of the loop.
    """
    if config.snapshot_path is None:
        return
    last, pause = store.stats().checkpoint, config.snapshot_interval
    while True:
        await anyio.sleep(pause)
        if store.stats().checkpoint == last:
            continue
        last, busy = store.stats().checkpoint, 0.0
        steps = store.dump_in_steps()
        while True:
            began = anyio.current_time()
            data = next(steps)
            busy += anyio.current_time() - began
            if data is not None:
                break
            await anyio.lowlevel.checkpoint()
        await anyio.to_thread.run_sync(write_snapshot, config.snapshot_path, data)
        pause = max(config.snapshot_interval, _PAUSE_PER_COPY * busy)


async def _analyst_copies(duck: DuckDBStore, config: ServiceConfig) -> None:
    """Publish the analysts' copy at once, then each interval if the checkpoint moved.

    A copy is made in a worker thread between two batches, so the projector waits for one copy
    at most. The pause after a copy is at least ``_PAUSE_PER_COPY`` times as long as the copy
    took, so however large the file grows, copies take at most a fifth of the writer's time.
    """
    published = -1
    while config.analyst_file is not None:
        began = anyio.current_time()
        if duck.stats().checkpoint != published:
            published = await anyio.to_thread.run_sync(_publish, duck, config)
        took = anyio.current_time() - began
        await anyio.sleep(max(config.analyst_interval, _PAUSE_PER_COPY * took))


def _publish(duck: DuckDBStore, config: ServiceConfig) -> int:
    """Publish one copy; a failure (a full disk, say) is logged and retried next time, since
    analysts' copies must never stop the daemon. Returns the checkpoint published, or -1."""
    if config.analyst_file is None:
        return -1
    try:
        return duck.publish(config.analyst_file).checkpoint
    except StoreError as exc:
        _log.warning("analysts' copy not published: %s", exc)
        return -1


def _save(store: MemoryStore, config: ServiceConfig) -> None:
    if config.snapshot_path is not None:
        store.save(config.snapshot_path)


def run(config: ServiceConfig) -> None:
    """Blocking entry point for the CLI."""
    anyio.run(serve, config, backend="asyncio")
