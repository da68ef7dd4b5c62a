"""Readable terminal output for the query commands (rich tables) and their ``--json`` form."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from workledger.projections.utilization import UtilizationRow
from workledger.projections.views import TaskView, WorkerStatus, WorkerWithStatus
from workledger.queries import Slots

__all__ = [
    "print_json",
    "print_slots",
    "print_task",
    "print_tasks",
    "print_utilization",
    "print_workers",
]

_STATUS_STYLE = {
    WorkerStatus.ONLINE: "green",
    WorkerStatus.OFFLINE: "red",
    WorkerStatus.STOPPED: "dim",
    WorkerStatus.LOST: "magenta",
}


def _console() -> Console:
    """Wide when piped, so tables are not cut at 80 columns."""
    return Console(width=None if sys.stdout.isatty() else 200)


def print_json(value: Any) -> None:
    """Indented JSON, the same shape as the HTTP API."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def ago(moment: datetime | None, now: datetime) -> str:
    """A short human duration like ``4s ago`` or ``2h13m ago``."""
    if moment is None:
        return "-"
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "in the future"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (
        f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )
    return f"{text} ago"


def print_workers(found: Sequence[WorkerWithStatus], *, now: datetime) -> None:
    """One row per worker: status, slots in use, free, tasks, last seen."""
    table = Table("WORKER", "POOL", "STATUS", "SLOTS", "FREE", "TASKS", "TASK KEYS", "LAST SEEN")
    for w in found:
        view = w.worker
        style = _STATUS_STYLE[w.status]
        table.add_row(
            view.worker,
            view.pool or "-",
            f"[{style}]{w.status}[/{style}]",
            f"{len(w.tasks)}/{view.slots}",
            str(w.free_slots),
            ", ".join(w.tasks) or "-",
            ", ".join(view.task_keys) or "-",
            ago(view.last_seen, now),
        )
    _console().print(table)
    _console().print(f"{len(found)} workers")


def print_slots(found: Slots, *, now: datetime) -> None:
    """Holders, then the counts per pool and queue."""
    holders = Table("POOL", "QUEUE", "TASK", "STATUS", "WORKER", "SINCE")
    for h in found.holders:
        holders.add_row(
            h.pool or "-", h.queue or "-", h.task, str(h.status), h.worker or "-", ago(h.since, now)
        )
    counts = Table("POOL", "QUEUE", "HELD")
    for c in found.counts:
        counts.add_row(c.pool or "-", c.queue or "(all)", str(c.held))
    console = _console()
    console.print(holders)
    console.print(counts)


def print_tasks(found: Sequence[TaskView]) -> None:
    """One row per task."""
    table = Table("TASK", "STATUS", "POOL", "QUEUE", "KEY", "WORKER", "RETRIES", "UPDATED")
    for t in found:
        updated = t.updated_at.isoformat(timespec="seconds") if t.updated_at else "-"
        table.add_row(
            t.task,
            str(t.status),
            t.pool or "-",
            t.queue or "-",
            t.task_key or "-",
            t.worker or "-",
            str(t.retries),
            updated,
        )
    _console().print(table)


def print_task(found: TaskView) -> None:
    """Every field of one task, one per line."""
    table = Table("FIELD", "VALUE")
    for name, value in msgspec.structs.asdict(found).items():
        table.add_row(name, "-" if value is None else str(value))
    _console().print(table)


def print_utilization(rows: Sequence[UtilizationRow], *, by: str) -> None:
    """One row per group and bucket: utilization first, then the times and counts behind it."""
    columns = ["POOL"] if by == "queue" else []
    columns += [by.upper(), "FROM", "TO", "UTIL", "BUSY", "HELD", "CAPACITY"]
    columns += ["DONE", "FAILED", "RETRIED", "CRASHED", "CANCELLED", "DONE/H", "P50", "P95", "OK"]
    table = Table(*columns)
    for r in rows:
        cells = [r.pool or "-"] if by == "queue" else []
        cells += [r.group or "-", _clock(r.bucket_start), _clock(r.bucket_end)]
        cells += [_percent(r.utilization), _span(r.busy_seconds), _span(r.slot_seconds)]
        cells.append(_span(r.capacity_seconds))
        cells += [str(n) for n in (r.completed, r.failed, r.retried, r.crashed, r.cancelled)]
        cells += [f"{r.throughput_per_hour:.1f}", _span(r.run_p50_seconds)]
        cells += [_span(r.run_p95_seconds), _percent(r.success_rate)]
        table.add_row(*cells)
    _console().print(table)
    _console().print(f"{len({(r.pool, r.group) for r in rows})} groups, {len(rows)} rows")


def _clock(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.1%}"


def _span(seconds: float | None) -> str:
    """``850ms``, ``42.0s``, ``12m05s``, ``3h20m``: short enough for a table cell."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
