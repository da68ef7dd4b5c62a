"""The one liveness rule, used by every store and interface.

A worker is ONLINE while ``now - last_seen <= heartbeat_interval * multiplier``, OFFLINE after,
STOPPED once its latest registration is followed by ``worker.stopped``, and LOST once a
reaper's ``worker.lost`` covers it (both final until it starts again).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from workledger.projections.views import WorkerStatus, WorkerView

__all__ = ["DEFAULT_MULTIPLIER", "liveness"]

DEFAULT_MULTIPLIER = 3.0


def liveness(
    worker: WorkerView, now: datetime, multiplier: float = DEFAULT_MULTIPLIER
) -> WorkerStatus:
    """The worker's status as seen at ``now``."""
    if worker.stopped:
        return WorkerStatus.STOPPED
    if worker.lost:
        return WorkerStatus.LOST
    if worker.last_seen is None:
        return WorkerStatus.OFFLINE
    grace = timedelta(seconds=worker.heartbeat_interval * multiplier)
    return WorkerStatus.ONLINE if now - worker.last_seen <= grace else WorkerStatus.OFFLINE
