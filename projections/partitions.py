"""Partitions of the stream: which subjects a daemon consumes when it serves only some pools.

The subject layout (:func:`workledger.core.log.subject_for`) puts the pool second, so one pool
is one subject filter, ``<prefix>.<pool token>.>``. A deployment scales out by giving each
daemon a set of pools: configuration, not code. What a partition cannot see is spelled out in
``docs/scaling.md`` (cross-pool answers, task events published without a pool).
"""

from __future__ import annotations

from collections.abc import Iterable

from workledger.core.log import encode_token

__all__ = ["UNPOOLED", "pool_subjects", "split_pools"]

UNPOOLED = "_"
"""The subject token of events without a pool (task events that omit their ``pool`` hint)."""


def pool_subjects(prefix: str, pools: Iterable[str]) -> tuple[str, ...]:
    """The filter subjects that select exactly these pools' events, in the order given.

    Names are encoded like the publisher encodes them, so ``ml.gpu`` selects
    ``<prefix>.~bWwuZ3B1.>`` and never a pool ``ml``.
    """
    return tuple(dict.fromkeys(f"{prefix}.{encode_token(pool)}.>" for pool in pools))


def split_pools(text: str) -> tuple[str, ...]:
    """``"etl, ml.gpu"`` → ``("etl", "ml.gpu")``: the CLI's ``--pools`` value, comma-separated.

    Blank entries are dropped, so a trailing comma or an empty environment variable is harmless.
    """
    return tuple(name.strip() for name in text.split(",") if name.strip())
