"""How a live derivation's cost grows with the file it derives into.

A daemon's DuckDB store derives the tables of what arrived about once a second. That cost
should follow what arrived, not how long the log is. This builds two files as a daemon does
(batches of ``STEP`` events, the tables derived with each), one ``small`` events long and one
``large``, then times deriving the last ``rebuild.LIVE_EVENTS`` events of each (rolled back,
median CPU time, DuckDB's threads included). Task ids are made random-looking (an md5 of
the generator's ordered ones), as uuid4 ids are: with ordered ids DuckDB skips row groups by
their min and max id, which hides a read of the whole log.

Run: ``.venv/bin/python benchmarks/derive_growth.py [--small N] [--large N]``, or
``make bench`` (section ``growth``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import rebuild
import run

from workledger.core import events as ev
from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore

STEP = 50_000  # events a derivation covers while building: a second of a busy daemon


def random_ids(items: Iterator[ev.Event]) -> Iterator[ev.Event]:
    """The events with each task id replaced by its md5: random order, one id per task."""
    for event in items:
        task = getattr(event, "task", None)
        if task is None:
            yield event
        else:
            yield msgspec.structs.replace(event, task=hashlib.md5(task.encode()).hexdigest())


def build(path: Path, size: int, seed: int) -> None:
    """``size`` events into ``path``, derived every ``STEP`` events as a daemon derives them."""
    events = random_ids(itertools.islice(run.events(seed), size))
    with DuckDBStore(path, materialize_every=0) as store:
        done = 0
        while chunk := list(itertools.islice(events, STEP)):
            items = [Sequenced(done + i, "", event) for i, event in enumerate(chunk, 1)]
            store.apply(Batch(events=items, last_seq=items[-1].seq))
            done += len(items)


def figures(seed: int = 0, small: int = 200_000, large: int = 2_000_000) -> dict[str, float]:
    """CPU milliseconds of one live derivation on each file, and their growth per million
    events of the file."""
    cpu = {}
    for size in (small, large):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "growth.duckdb"
            build(path, size, seed)
            cpu[size] = rebuild.live_derivation(path)[1]
    growth = (cpu[large] - cpu[small]) / ((large - small) / 1e6)
    return {
        f"live derivation at {small:,} cpu ms": 1000 * cpu[small],
        f"live derivation at {large:,} cpu ms": 1000 * cpu[large],
        "growth per million events cpu ms": 1000 * growth,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=200_000)
    parser.add_argument("--large", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    for name, value in figures(small=args.small, large=args.large).items():
        print(f"  {name:<40} {value:>8.1f}")


if __name__ == "__main__":
    main()
