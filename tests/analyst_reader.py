"""An analyst in another process: open the published copy again and again, check each one.

Run by ``tests/test_analysts_live.py`` as ``python analyst_reader.py DATA_DIR STREAM FINAL KEEP``
while a daemon ingests. Each read opens the copy the documented way
(``workledger.analysis.connect``), checks that it is internally consistent, and prints one JSON
line: ``{"t": wall time, "checkpoint": n, "problems": [...]}``, or ``{"t", "error"}`` if the
open or a query failed. Now and then it also keeps a byte copy of the published file (read
through a file descriptor, so a rename during the copy cannot mix two copies) in KEEP, for the
test to compare with a fold of the same events. It stops once it has seen FINAL.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from workledger import analysis
from workledger.core.errors import StoreError

# Each query returns a count of rows that break one rule; all must be 0.
CHECKS = {
    "checkpoint is the highest sequence stored": """
        SELECT (SELECT checkpoint FROM checkpoint) <> coalesce(
            (SELECT max(seq) FROM (SELECT seq FROM events UNION ALL SELECT seq FROM quarantined)),
            0)""",
    "applied counts the events": """
        SELECT (SELECT applied FROM checkpoint) <> (SELECT count(*) FROM events)""",
    "every sequence up to the checkpoint, once": """
        SELECT (SELECT checkpoint FROM checkpoint) <>
            (SELECT count(DISTINCT seq) FROM events) + (SELECT count(*) FROM quarantined)""",
    "tasks are exactly the tasks the events name": """
        SELECT count(*) FROM (
            (SELECT task FROM tasks EXCEPT SELECT task FROM events WHERE task IS NOT NULL)
            UNION ALL
            (SELECT task FROM events WHERE task IS NOT NULL EXCEPT SELECT task FROM tasks))""",
    "a completed task has its completion event": """
        SELECT count(*) FROM tasks t WHERE status = 'COMPLETED' AND NOT EXISTS (
            SELECT 1 FROM events e WHERE e.task = t.task AND e.type = 'task.completed')""",
    "every slot interval belongs to a task": """
        SELECT count(*) FROM slot_intervals i ANTI JOIN tasks t USING (task)""",
}


def read_once(data_dir: str, stream: str) -> dict[str, object]:
    """One read: open the latest copy, run every check on that one copy."""
    con = analysis.connect(data_dir, stream)
    try:
        problems = [name for name, sql in CHECKS.items() if con.execute(sql).fetchone() != (0,)]
        return {"checkpoint": analysis.freshness(con).checkpoint, "problems": problems}
    finally:
        con.close()


def keep(data_dir: str, stream: str, folder: Path, n: int) -> None:
    """Copy the published file's bytes through one descriptor: one inode, one whole copy."""
    with analysis.analyst_path(data_dir, stream).open("rb") as published:
        (folder / f"copy-{n}.duckdb").write_bytes(published.read())


def main(data_dir: str, stream: str, final: int, folder: Path) -> None:
    deadline, reads, kept = time.monotonic() + 90, 0, 0
    while time.monotonic() < deadline:
        if not analysis.analyst_path(data_dir, stream).exists():
            time.sleep(0.01)  # the daemon has not published its first copy yet
            continue
        try:
            line = {"t": time.time(), **read_once(data_dir, stream)}
        except StoreError as exc:
            line = {"t": time.time(), "error": str(exc)}
        print(json.dumps(line), flush=True)
        reads += 1
        if reads % 10 == 0 and kept < 8:
            keep(data_dir, stream, folder, kept)
            kept += 1
        if line.get("checkpoint") == final:
            return


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
