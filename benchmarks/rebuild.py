"""Rebuild time: replay N events from JetStream into a fresh DuckDB file (``workledger rebuild``).

Run: ``.venv/bin/python benchmarks/rebuild.py [--events 10000000] [--dir /tmp]``. It starts a
nats-server with its store in a temporary directory under ``--dir``, loads the stream with N
generated events, then times :func:`workledger.rebuild.rebuild` (the command's own code path:
a Projector on one DuckDBStore, then the swap) and checks every event was applied. Then it
replays the stream again, the same way, into a store that only counts (``rebuild transport
rate``): what consuming and decoding alone allow, the bound on any store's rebuild. Last,
the time a daemon's store takes to open the rebuilt file (``rebuild reopen seconds``), and what
one live derivation of the last ``LIVE_EVENTS`` events costs on a file that long (``rebuild
live derivation seconds``, and its CPU seconds, DuckDB's threads included; rolled back; a
daemon's store derives about once a second). Of the rebuild, ``rebuild derive seconds`` is
the part after the replay: deriving every table from the events at once, and writing the file.

Loading is streamed (never N events in memory) and reported separately. By default one event
a message (the SDK's default wire), loaded the fastest way: plain NATS publishes without a
reply, with one acknowledged publish every ``SYNC_EVERY`` messages so JetStream's ingest queue
never overflows (a core publish it cannot take is dropped silently); the stream's last
sequence is checked afterwards. ``--batch-size B`` loads through the SDK's envelopes instead
(B events a message), to time replaying those. Needs roughly ``BYTES_PER_EVENT`` of free disk
per event; the free space is printed first and a run that would not fit is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import anyio
import duckdb
import envelopes
import publish
import run

from workledger.core import codec
from workledger.core.log import LogConfig, connect, subject_for
from workledger.core.nats_server import EmbeddedNats
from workledger.projections.daemon import Projector
from workledger.rebuild import catch_up_config, rebuild
from workledger.stores._duckdb_derive import derive
from workledger.stores.base import Store
from workledger.stores.duckdb import DuckDBStore

SYNC_EVERY = 5000
BYTES_PER_EVENT = 700  # stream + DuckDB file, with room to spare (measured ~450 at 1M)
REPORT_EVERY = 1_000_000
LIVE_EVENTS, LIVE_REPEAT = 5000, 3  # the daemon's max_batch


def check_space(where: Path, events: int) -> None:
    """Print the free space; refuse a run that would not fit."""
    free = shutil.disk_usage(where).free
    need = events * BYTES_PER_EVENT
    print(f"  free disk under {where}: {free / 2**30:,.1f} GiB, need ~{need / 2**30:,.1f} GiB")
    if free < need:
        raise SystemExit(f"not enough free disk under {where} for {events:,} events")


async def load(config: LogConfig, events: int, batch_size: int = 1) -> float:
    """Publish ``events`` generated events; seconds until the stream holds them all.

    With ``batch_size`` > 1, through the SDK's batched envelopes; else plain publishes."""
    if batch_size > 1:
        return await _load_batched(config, events, batch_size)
    client = await connect(config)
    js = client.jetstream()
    began = time.perf_counter()
    prefix, encode = config.subject_prefix, codec.encode_msgpack
    try:
        for n, event in enumerate(itertools.islice(run.events(), events), 1):
            subject = subject_for(prefix, event)
            if n % SYNC_EVERY and n != events:
                await client.publish(subject, encode(event))
            else:  # acked, so everything sent before it on this connection is stored
                ack = await js.publish(subject, encode(event), timeout=60)
                if ack.seq != n:
                    raise SystemExit(f"stream holds {ack.seq} messages after {n} publishes")
            if n % REPORT_EVERY == 0:
                rate = n / (time.perf_counter() - began)
                print(f"  loaded {n:>12,} events ({rate:,.0f}/s)", flush=True)
    finally:
        await client.close()
    return time.perf_counter() - began


async def _load_batched(config: LogConfig, events: int, batch_size: int) -> float:
    began = time.perf_counter()
    async with publish.publisher(config, batch_size) as pub:
        for n, event in enumerate(itertools.islice(run.events(), events), 1):
            await pub.publish(event)
            if n % REPORT_EVERY == 0:
                rate = n / (time.perf_counter() - began)
                print(f"  loaded {n:>12,} events ({rate:,.0f}/s)", flush=True)
        await pub.flush()
    return time.perf_counter() - began


class _LanedCounting(envelopes.Counting):
    """A store that folds nothing, applied in a lane (a thread) like the DuckDBStore."""

    blocking = True


async def transport(config: LogConfig, last: int) -> tuple[float, int]:
    """Seconds and events of the rebuild's catch-up into a store that only counts."""
    store = _LanedCounting()
    projector = Projector(catch_up_config(config), [cast(Store, store)])
    return await envelopes.caught_up(projector, last), store.applied


def reopen(path: Path) -> float:
    """Seconds until a daemon's store has opened the rebuilt file for writing: the cost a
    rebuild leaves to the first start after it."""
    began = time.perf_counter()
    store = DuckDBStore(path)
    seconds = time.perf_counter() - began
    store.close()
    return seconds


def live_derivation(path: Path) -> tuple[float, float]:
    """Seconds and CPU seconds (medians) of deriving the tables of the last ``LIVE_EVENTS``
    events of the file, as a daemon's store would after they arrived; rolled back each time."""
    walls, cpus = [], []
    with duckdb.connect(str(path)) as conn:
        conn.execute("SET TimeZone = 'UTC'")  # as the store's own connections
        (upto,) = conn.execute("SELECT max(seq) FROM events").fetchone() or (0,)
        (since,) = conn.execute(
            f"SELECT min(seq) - 1 FROM (FROM events ORDER BY seq DESC LIMIT {LIVE_EVENTS})"
        ).fetchone() or (0,)
        for _ in range(LIVE_REPEAT):
            conn.begin()
            began, cpu = time.perf_counter(), time.process_time()
            derive(conn, since, upto)
            walls.append(time.perf_counter() - began)
            cpus.append(time.process_time() - cpu)
            conn.rollback()
    return statistics.median(walls), statistics.median(cpus)


class _DeriveSeconds(logging.Handler):
    """The seconds :func:`rebuild` logs for deriving the tables and writing the file."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds = math.nan

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("derived the tables"):
            self.seconds = float(record.args[0])  # type: ignore[index]


def bench_rebuild(
    events: int, where: Path | None = None, batch_size: int | None = None
) -> dict[str, float]:
    """Seconds and events/s of the rebuild; the load's seconds; the files' sizes (bytes).

    ``batch_size``: events per message in the stream (default 100: envelopes, the fast wire;
    one event a message takes minutes just to load 10M events)."""
    where = where or Path(tempfile.gettempdir())
    batch_size = batch_size or 100
    check_space(where, events)
    with tempfile.TemporaryDirectory(dir=where, prefix="wl-rebuild-") as tmp:
        root = Path(tmp)
        with EmbeddedNats(root / "nats") as server:
            config = publish.log_config(server.url, "REBUILD")
            asyncio.run(publish.create_stream(config))
            loaded = asyncio.run(load(config, events, batch_size))
            print(f"  loaded {events:,} events, {batch_size} a message, in {loaded:,.1f} s")
            target = root / "rebuilt.duckdb"
            logger, derive = logging.getLogger("workledger.rebuild"), _DeriveSeconds()
            logger.addHandler(derive)
            logger.setLevel(logging.INFO)
            began = time.perf_counter()
            try:
                stats = asyncio.run(rebuild(config, target, progress=sys.stderr.isatty()))
            finally:
                logger.removeHandler(derive)
            seconds = time.perf_counter() - began
            moved, counted = anyio.run(transport, config, stats.checkpoint)
            opened = reopen(target)
            live, live_cpu = live_derivation(target)
            stream_bytes = sum(f.stat().st_size for f in (root / "nats").rglob("*") if f.is_file())
        if stats.applied != events or counted != events:
            raise SystemExit(f"rebuild applied {stats.applied} and {counted} of {events} events")
        return {
            "rebuild seconds": seconds,
            "rebuild rate": events / seconds,
            "rebuild load seconds": loaded,
            "rebuild load rate": events / loaded,
            "rebuild transport rate": events / moved,
            "rebuild derive seconds": derive.seconds,
            "rebuild reopen seconds": opened,
            "rebuild live derivation seconds": live,
            "rebuild live derivation cpu seconds": live_cpu,
            "rebuild duckdb bytes": float(target.stat().st_size),
            "rebuild stream bytes": float(stream_bytes),
            "rebuild events per message": float(batch_size),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary files go")
    parser.add_argument("--batch-size", type=int, default=None, help="events per message")
    args = parser.parse_args(argv)
    print(f"{args.events:,} events from {run.source()}")
    for name, value in bench_rebuild(args.events, args.dir, args.batch_size).items():
        print(f"  {name:<24} {value:>16,.1f}")


if __name__ == "__main__":
    main()
