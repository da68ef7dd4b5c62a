"""The ``workers`` and ``worker_sessions`` tables derived in SQL from the raw ``events``.

A bulk rebuild derives them set-based in DuckDB instead of folding millions of heartbeats and
task events through Python. Each SELECT gives exactly the rows of the fold's
``Ledger.worker(w)`` (none for a forgotten worker) and ``Ledger.sessions(w)``:
:class:`workledger.projections.fold._WorkerRecord` is the reference, and every CTE below names
the rule of it that it mirrors.

Events are ordered by ``(at, id)``. Every record field is a max or min by that order, or a
union, so duplicates change nothing; only starts are counted (one session each), and they are
deduplicated by id. A payload field left out is its Struct default (the JSON omits defaults).
"""

from __future__ import annotations

__all__ = ["worker_sessions_select", "workers_select"]

# The WorkerStarted fields a row takes, as DuckDB types: one parse of each start's payload.
_STARTED = (
    '{"queues": ["VARCHAR"], "task_keys": ["VARCHAR"], "slots": "INTEGER", '
    '"heartbeat_interval": "DOUBLE", "labels": "MAP(VARCHAR, VARCHAR)", "host": "VARCHAR", '
    '"pid": "BIGINT"}'
)


def _ctes(events: str) -> str:
    """The CTEs both selects share; ``events`` is a table name or a parenthesised subquery."""
    return f"""
WITH
-- Ledger.apply and _apply_task: the worker-family events and the claims and starts of tasks
-- naming a worker (saw) are every event a worker record reads; other rows name none.
signs AS (
    SELECT e.worker, e.type, e."at", e.id, e.pool
    FROM {events} AS e
    WHERE e.worker IS NOT NULL
      AND (e.type LIKE 'worker.%' OR e.type IN ('task.claimed', 'task.started'))
),
-- _WorkerRecord.latest (any worker event, for the pool), .seen (not lost or forgotten: the
-- last sign of life) and .forgotten: each the latest by (at, id), a struct max.
marks AS (
    SELECT
        worker,
        max({{'at': "at", 'id': id, 'pool': pool}})
            FILTER (WHERE type LIKE 'worker.%') AS latest,
        max({{'at': "at", 'id': id}})
            FILTER (WHERE type NOT IN ('worker.lost', 'worker.forgotten')) AS seen,
        max({{'at': "at", 'id': id}}) FILTER (WHERE type = 'worker.forgotten') AS forgotten
    FROM signs
    GROUP BY worker
),
-- _WorkerRecord.starts in (at, id) order, as sessions() walks them, each with the following
-- start's time; the one with none following is .started. Keyed by id, as the fold keys them:
-- of equal copies (adjacent in that order) only the last is kept. The payload is parsed once;
-- a field it leaves out is the WorkerStarted default.
starts AS (
    SELECT
        worker,
        "at",
        id,
        pool,
        next_at,
        latest,
        coalesce(f.queues, []::VARCHAR[]) AS queues,
        coalesce(f.task_keys, []::VARCHAR[]) AS task_keys,
        coalesce(f.slots, 1) AS slots,
        coalesce(f.heartbeat_interval, 30.0) AS heartbeat_interval,
        coalesce(f.labels, MAP {{}}::MAP(VARCHAR, VARCHAR)) AS labels,
        f.host,
        f.pid
    FROM (
        SELECT
            e.worker,
            e."at",
            e.id,
            e.pool,
            lead(e."at") OVER w AS next_at,
            lead(e.id) OVER w IS NULL AS latest,
            from_json(e.payload, '{_STARTED}') AS f
        FROM {events} AS e
        WHERE e.type = 'worker.started'
        WINDOW w AS (PARTITION BY e.worker ORDER BY e."at", e.id)
        QUALIFY lead(e.id) OVER w IS DISTINCT FROM e.id
    )
),
-- _WorkerRecord.stops: the latest (.stopped) gives stopped_at and stop_reason.
stops AS (
    SELECT e.worker, e."at", e.id, e.payload->>'reason' AS reason
    FROM {events} AS e
    WHERE e.type = 'worker.stopped'
),
last_stop AS (
    SELECT worker, max({{'at': "at", 'id': id, 'reason': reason}}) AS stop
    FROM stops
    GROUP BY worker
),
-- Starts, stops, subscriptions and losses in one order: a stop or subscription by (at, id), a
-- loss by its last_seen after every start at that instant (last_seen >= start.at).
bounds AS (
    SELECT worker, 'start' AS kind, "at" AS t, 0 AS k, id, "at", NULL::VARCHAR[] AS keys
    FROM starts
    UNION ALL
    SELECT worker, 'stop', "at", 0, id, "at", NULL FROM stops
    UNION ALL
    SELECT e.worker, 'sub', e."at", 0, e.id, e."at", CAST(e.payload->'task_keys' AS VARCHAR[])
    FROM {events} AS e
    WHERE e.type = 'worker.subscribed'
    UNION ALL
    SELECT e.worker, 'lost', CAST(e.payload->>'last_seen' AS TIMESTAMPTZ), 1, e.id, e."at", NULL
    FROM {events} AS e
    WHERE e.type = 'worker.lost'
),
-- ... so each belongs to the latest start before it (start_id NULL: before any start). Per
-- start: sessions() ends it at its first stop strictly between it and the following start,
-- else at the latest loss whose last_seen is in [start.at, following.at) (_loss). For the
-- latest start they are the view's: stopped (_later(reg, stop)), lost (_loss(reg, None)) and
-- the subscriptions still kept (apply drops those not after the latest start).
ends AS (
    SELECT
        worker,
        start_id,
        min("at") FILTER (WHERE kind = 'stop') AS stop_at,
        max("at") FILTER (WHERE kind = 'lost') AS lost_at,
        flatten(list(keys) FILTER (WHERE kind = 'sub')) AS sub_keys
    FROM (
        SELECT
            *,
            last_value(CASE WHEN kind = 'start' THEN id END IGNORE NULLS) OVER (
                PARTITION BY worker ORDER BY t, k, id ROWS UNBOUNDED PRECEDING
            ) AS start_id
        FROM bounds
    )
    WHERE kind <> 'start'
    GROUP BY worker, start_id
),
-- _WorkerRecord._task_keys: the latest start's keys and every kept subscription's, sorted.
current AS (
    SELECT
        m.worker,
        m.latest,
        m.seen,
        m.forgotten,
        s.id AS start_id,
        x.stop_at IS NOT NULL AS stopped,
        x.lost_at IS NOT NULL AS lost,
        list_sort(
            list_distinct(
                list_concat(
                    coalesce(s.task_keys, []::VARCHAR[]), coalesce(x.sub_keys, []::VARCHAR[])
                )
            )
        ) AS task_keys
    FROM marks AS m
    LEFT JOIN starts AS s ON s.worker = m.worker AND s.latest
    LEFT JOIN ends AS x ON x.worker = m.worker AND x.start_id IS NOT DISTINCT FROM s.id
)"""  # noqa: S608 (our SQL around a table name)


def workers_select(events: str) -> str:
    """The ``workers`` rows (``schema.WORKERS`` columns, no ``batch_seq``) of ``events``."""
    return f"""{_ctes(events)}
-- _WorkerRecord.view, for every worker not hidden by is_forgotten: forgotten after its latest
-- start (or with none) and after its last sign of life (or with none).
SELECT
    c.worker,
    coalesce(s.pool, c.latest.pool) AS pool,
    coalesce(s.queues, []::VARCHAR[]) AS queues,
    c.task_keys,
    coalesce(s.slots, 1)::INTEGER AS slots,
    coalesce(s.heartbeat_interval, 30.0)::DOUBLE AS heartbeat_interval,
    coalesce(s.labels, MAP {{}}::MAP(VARCHAR, VARCHAR)) AS labels,
    s.host,
    s.pid,
    s."at" AS started_at,
    l.stop."at" AS stopped_at,
    l.stop.reason AS stop_reason,
    c.seen."at" AS last_seen,
    c.stopped,
    c.lost
FROM current AS c
LEFT JOIN starts AS s ON s.worker = c.worker AND s.id = c.start_id
LEFT JOIN last_stop AS l ON l.worker = c.worker
WHERE c.forgotten IS NULL
   OR (c.start_id IS NOT NULL AND c.forgotten <= {{'at': s."at", 'id': s.id}})
   OR (c.seen IS NOT NULL AND c.forgotten <= c.seen)"""  # noqa: S608


def worker_sessions_select(events: str) -> str:
    """The ``worker_sessions`` rows (``schema.WORKER_SESSIONS`` columns, no ``batch_seq``)."""
    return f"""{_ctes(events)}
-- _WorkerRecord.sessions: one per start, forgotten or not. The latest takes the worker's
-- whole task_keys and its last sign of life; the others their start's own keys. In the fold's
-- order: a table filled in it breaks ties of started_at by rowid as the fold does (by id).
SELECT
    s.worker,
    s.pool,
    s.queues,
    CASE WHEN s.latest THEN c.task_keys ELSE s.task_keys END AS task_keys,
    s.slots,
    s.heartbeat_interval,
    s."at" AS started_at,
    coalesce(x.stop_at, x.lost_at) AS stopped_at,
    s.next_at AS next_started_at,
    CASE WHEN s.latest THEN c.seen."at" END AS last_seen
FROM starts AS s
JOIN current AS c ON c.worker = s.worker
LEFT JOIN ends AS x ON x.worker = s.worker AND x.start_id = s.id
ORDER BY s.worker, s."at", s.id"""  # noqa: S608
