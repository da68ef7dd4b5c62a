"""A consistent copy of a live DuckDB file, published atomically for readers in other processes.

DuckDB lets no other process open a file while one holds it for writing, so analysts read a
copy. The writer makes it between two batches (the caller holds the store's write lock):

1. ``CHECKPOINT`` folds the write-ahead log into the file, so the file alone holds every
   committed batch, and nothing writes to it until the next batch;
2. its bytes are copied to a temporary name beside the target (a sequential copy; measured
   15-60x faster than DuckDB's logical ``COPY FROM DATABASE`` on 1M events: docs/analysts.md);
3. ``os.replace`` renames it over the target: a new reader opens the new copy, a reader that
   already opened the old one keeps reading that consistent old inode.

If the checkpoint left a write-ahead log behind, the bytes alone would miss what it holds, so
no copy is made this time. (A logical ``COPY FROM DATABASE`` would be correct but holds the
writer for seconds per million events; the next interval simply tries again.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

__all__ = ["publish_copy"]


def publish_copy(cursor: duckdb.DuckDBPyConnection, live: Path, target: Path) -> None:
    """Write a copy of ``live`` as it is now to ``target``, atomically.

    :raises duckdb.Error: or OSError, when a step fails (the target is then unchanged).
    """
    part = target.with_name(f"{target.name}.part")  # one writer per target (the live file's)
    part.unlink(missing_ok=True)  # a half copy a killed writer left
    try:
        cursor.execute("CHECKPOINT")
        if _wal_size(live):
            raise OSError(f"CHECKPOINT left a write-ahead log beside {live}; try again later")
        shutil.copyfile(live, part)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def _wal_size(live: Path) -> int:
    try:
        return live.with_name(live.name + ".wal").stat().st_size
    except FileNotFoundError:
        return 0
