"""Partitions of the stream: which subjects a daemon consumes when it serves only some pools.

The subject layout (:func:`workledger.core.log.subject_for`) puts the pool second, so one pool
is one subject filter, ``<prefix>.<pool token>.>``. A deployment scales out by giving each
daemon a set of pools: configuration, not code. Task events may leave out their pool (only
``task.submitted`` must name it), so they route under ``<prefix>._``: a partition reads those
too and keeps the ones of tasks its pools' events named first (:class:`KnownTasks`). What a
partition cannot see is spelled out in ``docs/scaling.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from workledger.core.log import encode_token
from workledger.stores.base import Batch

__all__ = ["UNPOOLED", "KnownTasks", "partition_subjects", "pool_subjects", "split_pools"]

UNPOOLED = "_"
"""The subject token of events without a pool (task events that omit their ``pool`` hint)."""


def pool_subjects(prefix: str, pools: Iterable[str]) -> tuple[str, ...]:
    """The filter subjects that select exactly these pools' events, in the order given.

    Names are encoded like the publisher encodes them, so ``ml.gpu`` selects
    ``<prefix>.~bWwuZ3B1.>`` and never a pool ``ml``.
    """
    return tuple(dict.fromkeys(f"{prefix}.{encode_token(pool)}.>" for pool in pools))


def partition_subjects(prefix: str, pools: Iterable[str]) -> tuple[str, ...]:
    """What a daemon serving ``pools`` consumes: their subjects, and that of events without a
    pool (sorted out by :class:`KnownTasks`)."""
    return (*pool_subjects(prefix, pools), f"{prefix}.{UNPOOLED}.>")


class KnownTasks:
    """Which task events without a pool belong to a partition: those of a task that an event
    of its pools named earlier in the stream. The rest are other partitions' and are skipped.

    The decision depends only on the stream before the event, so a partition rebuilt from the
    log keeps the same events. A daemon resumes it from the tasks its store already holds.
    """

    def __init__(self, tasks: Iterable[str] = ()) -> None:
        self._tasks = set(tasks)

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    def admit(self, batch: Batch) -> tuple[Batch, int]:
        """The batch without other partitions' task events, and how many those were."""
        known, kept, skipped = self._tasks, [], 0
        for item in batch.events:
            event = item.event
            task: str | None = getattr(event, "task", None)  # task events alone have one
            if task is not None:
                if event.pool is not None:  # type: ignore[attr-defined]
                    known.add(task)
                elif task not in known:
                    skipped += 1
                    continue
            kept.append(item)
        if not skipped:
            return batch, 0
        return msgspec.structs.replace(batch, events=kept), skipped


def split_pools(text: str) -> tuple[str, ...]:
    """``"etl, ml.gpu"`` → ``("etl", "ml.gpu")``: the CLI's ``--pools`` value, comma-separated.

    Blank entries are dropped, so a trailing comma or an empty environment variable is harmless.
    """
    return tuple(name.strip() for name in text.split(",") if name.strip())
