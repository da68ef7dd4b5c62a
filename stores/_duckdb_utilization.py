"""Utilization computed in DuckDB's SQL, over the ``slot_intervals`` and ``worker_sessions`` tables.

The semantics are written once, in :mod:`workledger.projections.utilization`; this is the same
computation as one query, so the DuckDB store never loads intervals into Python. It relies only on
the two tables' columns, which carry the names of the ``SlotInterval`` and ``WorkerSession``
fields (TIMESTAMPTZ times, VARCHAR ids and statuses, VARCHAR[] lists).

How the query is built, step by step (CTE names in brackets):

1. ``iv``: intervals as epoch microseconds, a missing pool taken from the worker's session in
   force at ``acquired_at``; ``sess``: sessions with their effective end ``fin``. Both keep
   only what can touch the window (everything for ``by="queue"``).
2. ``ivk``/``sessk``: each interval and session keyed by its group(s) ``(kpool, kgroup)``.
3. ``segs`` -> ``spread``: busy, slot and capacity stretches clipped to the window, with the
   first and last bucket each covers. Those two are cut; the buckets between are covered
   whole, so a stretch adds a step up and a step down there, summed over the buckets in
   ``dense``: a row per stretch, not per bucket it covers (100k sessions over a day in
   minute buckets would be 144M).
4. ``facts`` -> ``cells``: spans and interval endings summed per group and bucket.
5. The groups with anything to report, crossed with every bucket, for dense series.

Integer microseconds keep the sums exact; ``//`` truncates in DuckDB, which equals flooring here
because every offset from the window's ``origin`` is non-negative.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb

from workledger.projections.liveness import DEFAULT_MULTIPLIER
from workledger.projections.utilization import GROUPINGS, Grouping, UtilizationRow, Window

__all__ = ["utilization_sql"]

# (kpool, kgroup) of an interval, by grouping.
_INTERVAL_KEYS: dict[Grouping, tuple[str, str]] = {
    "worker": ("NULL::VARCHAR", "worker"),
    "pool": ("pool", "pool"),
    "queue": ("pool", "queue"),
    "task_key": ("NULL::VARCHAR", "task_key"),
    "stage": ("NULL::VARCHAR", "stage"),
}

# The groups each session gives capacity to, by grouping (columns kpool, kgroup, slots, st, fin).
_SESSION_KEYS: dict[Grouping, str] = {
    "worker": "SELECT NULL::VARCHAR, worker, slots, st, fin FROM sess",
    "pool": "SELECT pool, pool, slots, st, fin FROM sess",
    "queue": """
        SELECT pool, unnest(queues), slots, st, fin FROM sess WHERE len(queues) > 0
        UNION ALL
        SELECT s.pool, k.queue, s.slots, s.st, s.fin
        FROM sess AS s JOIN known_queues AS k ON k.pool = s.pool
        WHERE len(s.queues) = 0""",
    "task_key": "SELECT NULL::VARCHAR, unnest(task_keys), slots, st, fin FROM sess",
    "stage": "SELECT NULL::VARCHAR, NULL::VARCHAR, slots, st, fin FROM sess WHERE false",
}

_QUERY = """
WITH
iv AS (
    SELECT i.worker, coalesce(i.pool, s.pool) AS pool, i.queue, i.task_key, i.stage, i.ended,
           epoch_us(i.acquired_at) AS acq, epoch_us(i.started_at) AS st,
           epoch_us(i.released_at) AS rel
    FROM slot_intervals AS i
    LEFT JOIN worker_sessions AS s
      ON i.pool IS NULL AND s.worker = i.worker AND s.started_at <= i.acquired_at
     AND (s.next_started_at IS NULL OR i.acquired_at < s.next_started_at)
    WHERE {interval_in_window}
),
sess AS (
    SELECT worker, pool, list_distinct(queues) AS queues, list_distinct(task_keys) AS task_keys,
           slots, epoch_us(started_at) AS st,
           CASE
               WHEN stopped_at IS NOT NULL THEN epoch_us(stopped_at)
               WHEN next_started_at IS NOT NULL THEN epoch_us(next_started_at)
               WHEN last_seen IS NULL THEN epoch_us(started_at)
               ELSE least($now, epoch_us(last_seen)
                   + CAST(round(heartbeat_interval * $multiplier * 1e6) AS BIGINT))
           END AS fin
    FROM worker_sessions
    WHERE {session_in_window}
),
known_queues AS (
    SELECT DISTINCT pool, queue FROM (
        SELECT pool, queue FROM iv WHERE pool IS NOT NULL AND queue IS NOT NULL
        UNION ALL
        SELECT pool, unnest(queues) AS queue FROM sess
    )
),
ivk AS (SELECT {interval_pool} AS kpool, {interval_group} AS kgroup, * FROM iv),
sessk (kpool, kgroup, slots, st, fin) AS ({session_keys}),
segs AS (
    SELECT kpool, kgroup, 'slot' AS kind, 1 AS weight, acq AS s, coalesce(rel, $now) AS e
    FROM ivk
    UNION ALL
    SELECT kpool, kgroup, 'busy', 1, st, coalesce(rel, $now) FROM ivk WHERE st IS NOT NULL
    UNION ALL
    SELECT kpool, kgroup, 'capacity', slots, st, fin FROM sessk
),
spread AS (
    SELECT kpool, kgroup, kind, weight, s, e,
           (s - $origin) // $width AS first, (e - 1 - $origin) // $width AS last
    FROM (SELECT * REPLACE (greatest(s, $since) AS s, least(e, $until) AS e) FROM segs)
    WHERE e > s
),
facts AS (
    -- The buckets a stretch covers in part: the one it starts in (to its end, if it ends
    -- there too) and the one it ends in.
    SELECT kpool, kgroup, first AS b, kind,
           weight * (least(e, $origin + (first + 1) * $width) - s) AS span, 0 AS step,
           NULL::VARCHAR AS ended, NULL::DOUBLE AS run
    FROM spread
    UNION ALL
    SELECT kpool, kgroup, last, kind, weight * (e - ($origin + last * $width)), 0, NULL, NULL
    FROM spread WHERE last > first
{step_facts}
    UNION ALL
    SELECT kpool, kgroup, (rel - $origin) // $width, NULL, 0, 0, ended,
           CASE WHEN ended = 'COMPLETED' AND st IS NOT NULL THEN greatest(rel - st, 0) / 1e6 END
    FROM ivk
    WHERE ended IS NOT NULL AND rel >= $since AND rel < $until
),
cells AS (
    SELECT kpool, kgroup, b,
           coalesce(sum(span) FILTER (WHERE kind = 'busy'), 0) AS busy,
           coalesce(sum(span) FILTER (WHERE kind = 'slot'), 0) AS slot,
           coalesce(sum(span) FILTER (WHERE kind = 'capacity'), 0) AS capacity,
{step_sums}           count(*) FILTER (WHERE ended = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE ended = 'FAILED') AS failed,
           count(*) FILTER (WHERE ended = 'RETRYING') AS retried,
           count(*) FILTER (WHERE ended = 'CRASHED') AS crashed,
           count(*) FILTER (WHERE ended = 'CANCELLED') AS cancelled,
           count(ended) AS ends,
           quantile_cont(run, [0.5, 0.95]) AS runs  -- one sorted state for both
    FROM facts
    GROUP BY kpool, kgroup, b
),
grps AS (
    SELECT DISTINCT kpool, kgroup FROM cells
    WHERE busy > 0 OR slot > 0 OR capacity > 0 OR ends > 0
),
buckets AS (SELECT unnest(generate_series(0, $count - 1)) AS b),
dense AS (
    SELECT g.kpool, g.kgroup, k.b,
           least($origin + (k.b + 1) * $width, $until)
               - greatest($origin + k.b * $width, $since) AS covered,
           coalesce(c.busy, 0){busy_whole} AS busy,
           coalesce(c.slot, 0){slot_whole} AS slot,
           coalesce(c.capacity, 0){capacity_whole} AS capacity,
           coalesce(c.completed, 0) AS completed, coalesce(c.failed, 0) AS failed,
           coalesce(c.retried, 0) AS retried, coalesce(c.crashed, 0) AS crashed,
           coalesce(c.cancelled, 0) AS cancelled,
           c.runs[1] AS p50, c.runs[2] AS p95
    FROM grps AS g CROSS JOIN buckets AS k
    LEFT JOIN cells AS c
      ON c.kpool IS NOT DISTINCT FROM g.kpool AND c.kgroup IS NOT DISTINCT FROM g.kgroup
     AND c.b = k.b
    {whole_window}
)
SELECT kgroup, kpool, b,
       busy / 1e6, slot / 1e6,
       CASE WHEN $with_capacity THEN capacity / 1e6 END,
       CASE WHEN $with_capacity AND capacity > 0 THEN busy::DOUBLE / capacity::DOUBLE END,
       completed, failed, retried, crashed, cancelled,
       completed * 3600e6 / covered,
       p50, p95,
       CASE WHEN completed + failed + crashed > 0
            THEN completed::DOUBLE / (completed + failed + crashed) END
FROM dense
ORDER BY kpool NULLS LAST, kgroup NULLS LAST, b
"""


def utilization_sql(
    conn: duckdb.DuckDBPyConnection,
    *,
    by: Grouping,
    since: datetime,
    until: datetime,
    now: datetime,
    bucket: timedelta | None = None,
    multiplier: float = DEFAULT_MULTIPLIER,
) -> list[UtilizationRow]:
    """The rows :func:`workledger.projections.utilization.utilization` gives, computed in SQL.

    Reads the tables through ``conn`` (inside the caller's transaction, if any).

    :raises ValueError: for an unknown ``by`` or a bad window.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    window = Window.of(since=since, until=until, now=now, bucket=bucket)
    params = _params(window, multiplier, with_capacity=by != "stage")
    found = conn.execute(_query(by, window.count), params).fetchall()
    buckets = window.buckets()
    return [_row(buckets[record[2]], record) for record in found]


# What can add to a window's rows: a stretch acquired before its end and not released before
# its start (a release in it is an ending), a session giving capacity in it. ``by="queue"``
# reads them all: a pool's queues are those any of its stretches or sessions ever named.
_INTERVAL_IN_WINDOW = (
    "epoch_us(i.acquired_at) < $until AND coalesce(epoch_us(i.released_at), $now) >= $since"
)
_SESSION_IN_WINDOW = "st < $until AND fin > $since"


# Buckets covered whole (only with more than two buckets: between a first and a last one):
# each stretch steps its weight up at the first of them and down after the last, rather than
# adding a row per bucket; ``dense`` adds the steps up along each group's buckets.
_KINDS = ("busy", "slot", "capacity")
_WHOLE_BUCKETS = {
    "step_facts": """
    UNION ALL
    SELECT kpool, kgroup, first + 1, kind, 0, weight, NULL, NULL FROM spread WHERE last > first + 1
    UNION ALL
    SELECT kpool, kgroup, last, kind, 0, -weight, NULL, NULL FROM spread WHERE last > first + 1""",
    "step_sums": "".join(
        f"           coalesce(sum(step) FILTER (WHERE kind = '{kind}'), 0) AS {kind}_step,\n"
        for kind in _KINDS
    ),
    **{
        f"{kind}_whole": f" + $width * sum(coalesce(c.{kind}_step, 0)) OVER whole"
        for kind in _KINDS
    },
    "whole_window": "WINDOW whole AS "
    "(PARTITION BY g.kpool, g.kgroup ORDER BY k.b ROWS UNBOUNDED PRECEDING)",
}
_NO_WHOLE_BUCKETS = dict.fromkeys(_WHOLE_BUCKETS, "")


def _query(by: Grouping, buckets: int) -> str:
    interval_pool, interval_group = _INTERVAL_KEYS[by]
    windowed = by != "queue"
    return _QUERY.format(
        interval_pool=interval_pool,
        interval_group=interval_group,
        session_keys=_SESSION_KEYS[by],
        interval_in_window=_INTERVAL_IN_WINDOW if windowed else "true",
        session_in_window=_SESSION_IN_WINDOW if windowed else "true",
        **(_WHOLE_BUCKETS if buckets > 2 else _NO_WHOLE_BUCKETS),
    )


def _params(window: Window, multiplier: float, *, with_capacity: bool) -> dict[str, Any]:
    return {
        "since": window.since,
        "until": window.until,
        "now": window.now,
        "origin": window.origin,
        "width": window.width,
        "count": window.count,
        "multiplier": multiplier,
        "with_capacity": with_capacity,
    }


def _row(bucket: tuple[datetime, datetime, int], record: tuple[Any, ...]) -> UtilizationRow:
    group, pool, _, busy, slot, capacity, ratio, *counts = record
    completed, failed, retried, crashed, cancelled, throughput, p50, p95, success = counts
    start, end, _ = bucket
    return UtilizationRow(
        group=group,
        pool=pool,
        bucket_start=start,
        bucket_end=end,
        busy_seconds=busy,
        slot_seconds=slot,
        capacity_seconds=capacity,
        utilization=ratio,
        completed=completed,
        failed=failed,
        retried=retried,
        crashed=crashed,
        cancelled=cancelled,
        throughput_per_hour=throughput,
        run_p50_seconds=p50,
        run_p95_seconds=p95,
        success_rate=success,
    )
