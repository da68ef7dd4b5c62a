"""Rebuild: replay the stream into a fresh DuckDB file, then swap it in.

The log is the only source of truth, so a rebuilt file equals the one a live daemon wrote (same
events, same store); a partition's daemon (``--pools``, ``--filter-subject``) is rebuilt from
the same partition. Nobody reads the file while it is built, so the store derives its tables
once, at the end, from ``events`` alone. It is built beside the target under a temporary name
and renamed over it only when complete, so a half-built file never replaces a good one. A
target held open by a running daemon is refused before any work: stop the daemon, or rebuild
to another path.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from workledger._options import log_config, log_options, partition_options
from workledger.core.errors import StoreError, WorkledgerError
from workledger.core.log import LogConfig, connect, last_sequence
from workledger.projections.daemon import Projector, ProjectorConfig, fewer_collections
from workledger.projections.partitions import split_pools
from workledger.stores.base import StoreStats
from workledger.stores.duckdb import DuckDBStore, check_unlocked

__all__ = ["catch_up_config", "rebuild", "rebuild_command"]

_log = logging.getLogger(__name__)

# Nobody queries a file being rebuilt, so its transactions can be far bigger than the live
# daemon's: one appending more than a row group (122,880 rows) has DuckDB write compressed row
# groups straight to the file, on all cores, where smaller ones go through the write-ahead log
# and are written again at a checkpoint (10M events rebuilt 1.25x faster, into a file a third
# smaller, with ~500k events a transaction than with ~125k). The DuckDB lane applies what has
# waited for it as one transaction, so the size comes from its backlog, not from the batches
# decoded: those stay small (the daemon's 4 MiB), because decoding one holds the event loop,
# and the lane can hand its thread the next transaction only from the loop. With 64 MiB
# batches (~500k events, a second to decode) the lane sat idle for each one: 48 s of replay
# against 38 s with 4 MiB (benchmarks/HISTORY.md, session 16).
_MAX_BATCH, _MAX_BATCH_BYTES = 250_000, 4 * 1024 * 1024
_DUCKDB_BATCH = 500_000
_BUFFER_BYTES = 256 * 1024 * 1024


async def rebuild(
    log_config: LogConfig,
    duckdb_path: Path,
    *,
    progress: bool = True,
    pools: tuple[str, ...] = (),
    filter_subjects: tuple[str, ...] = (),
) -> StoreStats:
    """Replay the stream, up to its last sequence when called, into a new file at ``duckdb_path``:
    the part of it ``pools`` and ``filter_subjects`` select, as a daemon given them reads it.

    :raises StreamNotFoundError: if the stream does not exist.
    :raises StoreError: if the target is locked or the file cannot be written.
    """
    check_unlocked(duckdb_path)
    catch_up = catch_up_config(log_config, pools=pools, filter_subjects=filter_subjects)
    last = await _last_seq(catch_up)
    building = duckdb_path.with_name(f".{duckdb_path.name}.rebuild-{os.getpid()}")
    try:
        gc = fewer_collections(catch_up.gc_thresholds)
        with gc, DuckDBStore(building, materialize_every=math.inf) as store:
            began = time.perf_counter()
            await _replay(catch_up, store, last, progress)
            stats = store.stats()
            _log.info("replayed %d messages in %.1f s", last, time.perf_counter() - began)
            began = time.perf_counter()
            with _status(progress, f"deriving the tables of {stats.applied:,} events"):
                store.close()  # derives every table from the events, then checkpoints
            _log.info(
                "derived the tables and wrote the file in %.1f s", time.perf_counter() - began
            )
        _swap(building, duckdb_path)
    finally:
        for leftover in (building, _wal(building)):
            leftover.unlink(missing_ok=True)
    return stats


async def _last_seq(catch_up: ProjectorConfig) -> int:
    """The last sequence the rebuild reads: the stream's, or the last its filters select."""
    client = await connect(catch_up.log)
    try:
        return await last_sequence(client.jetstream(), catch_up.log, catch_up.subjects)
    finally:
        await client.close()


def catch_up_config(
    config: LogConfig, *, pools: tuple[str, ...] = (), filter_subjects: tuple[str, ...] = ()
) -> ProjectorConfig:
    """How a rebuild reads the stream: big transactions, and from whatever the stream still holds
    (a stream with an age or size limit has lost its oldest messages by design, so that gap
    is expected, not an error)."""
    return ProjectorConfig(
        log=config,
        pools=pools,
        filter_subjects=filter_subjects,
        allow_gap=True,
        max_batch=_MAX_BATCH,
        max_batch_bytes=_MAX_BATCH_BYTES,
        buffer=2 * _MAX_BATCH,
        buffer_bytes=_BUFFER_BYTES,
        lane_backlog=_DUCKDB_BATCH,
    )


async def _replay(catch_up: ProjectorConfig, store: DuckDBStore, last: int, progress: bool) -> None:
    """Run the daemon's own projector on the one store until it covers ``last``."""
    projector = Projector(catch_up, [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        with _progress_bar(progress, last) as advance:
            while projector.checkpoint < last:
                await projector.wait_for(projector.checkpoint + 1)
                advance(projector.checkpoint)
        tg.cancel_scope.cancel()


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A bar on stderr (stdout stays for the summary), or nothing."""
    if not enabled:
        yield lambda _: None
        return
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("events", total=total)
        yield lambda done: bar.update(task, completed=min(done, total))


@contextmanager
def _status(enabled: bool, doing: str) -> Iterator[None]:
    """A spinner on stderr while the bar has nothing to show (the tables' one derivation)."""
    if not enabled:
        yield
        return
    with Console(stderr=True).status(doing):
        yield


def _swap(built: Path, target: Path) -> None:
    """Rename the finished file over the target; the old file's WAL must not outlive it."""
    if _wal(built).exists():
        raise StoreError(f"{built} still has a write-ahead log after closing; not swapping it in")
    try:
        _wal(target).unlink(missing_ok=True)
        built.replace(target)
    except OSError as exc:
        raise StoreError(f"cannot move the rebuilt file to {target}: {exc}") from exc


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


@click.command()
@click.option(
    "--duckdb",
    "duckdb_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    envvar="WORKLEDGER_DUCKDB",
    help="The DuckDB file to (re)create; replaced only once the rebuild is complete.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@partition_options
@log_options
def rebuild_command(
    servers: tuple[str, ...],
    stream: str,
    subject_prefix: str,
    duckdb_path: Path,
    progress: bool,
    **partition: Any,
) -> None:
    """Replay the stream into a fresh DuckDB file (stop the daemon that writes it first); give
    a partition's daemon's --pools and --filter-subject to rebuild that daemon's file."""
    config = log_config(servers, stream, subject_prefix)
    run = functools.partial(
        rebuild,
        config,
        duckdb_path,
        progress=progress,
        pools=split_pools(partition["pools"]),
        filter_subjects=tuple(partition["filter_subjects"]),
    )
    try:
        stats = anyio.run(run, backend="asyncio")
    except WorkledgerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"rebuilt {duckdb_path}: {stats.applied} events up to stream sequence "
        f"{stats.checkpoint}, {stats.quarantined} set aside"
    )
