"""The ``workers`` and ``worker_sessions`` tables derived in SQL from the raw ``events``.

A bulk rebuild derives them set-based in DuckDB instead of folding millions of heartbeats and
task events through Python. Each SELECT gives exactly the rows of the fold's
``Ledger.worker(w)`` (none for a forgotten worker) and ``Ledger.sessions(w)``:
:class:`workledger.projections.fold._WorkerRecord` is the reference, and every CTE below names
the rule of it that it mirrors.

Events are ordered by ``(at, id)``, and where the fold picks the latest of a kind (``_newer``)
then by the JSON text, ``payload::VARCHAR``, which is the fold's ``msgspec`` encoding: two
different events may share an id (a faulty producer), even with their time. The sets the fold
keys by id (starts, stops, subscriptions, losses) keep one event per worker and id, the
greatest by ``(at, id, payload)``, as ``_put`` does. Every record field is then a max or min,
or a union, so an event delivered twice changes nothing. A payload field left out is its
Struct default (the JSON omits defaults).
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
    SELECT e.worker, e.type, e."at", e.id
    FROM {events} AS e
    WHERE e.worker IS NOT NULL
      AND (e.type LIKE 'worker.%' OR e.type IN ('task.claimed', 'task.started'))
),
-- .seen (not lost or forgotten: the last sign of life) and .forgotten: each the latest
-- (_newer). Both are read as (at, id) alone, which events tied on both share, so the payload's
-- tie-break does not show and the bulk of the events (task claims, starts) is read without
-- its payload.
marks AS (
    SELECT
        worker,
        max({{'at': "at", 'id': id}})
            FILTER (WHERE type NOT IN ('worker.lost', 'worker.forgotten')) AS seen,
        max({{'at': "at", 'id': id}}) FILTER (WHERE type = 'worker.forgotten') AS forgotten
    FROM signs
    GROUP BY worker
),
-- The worker events with their JSON text. The bounds on type are the LIKE 'worker.%' a scan
-- can filter on before it reads a payload.
worker_events AS (
    SELECT e.worker, e.type, e."at", e.id, e.pool, e.payload::VARCHAR AS payload
    FROM {events} AS e
    WHERE e.type >= 'worker.' AND e.type < 'worker/' AND e.worker IS NOT NULL
),
-- _WorkerRecord.latest (any worker event): its pool, of the greatest by (at, id, payload).
latest AS (
    SELECT worker, arg_max_null(pool, ("at", id, payload)) AS pool
    FROM worker_events
    GROUP BY worker
),
-- _WorkerRecord.starts, .stops, .subscriptions and .losts: one event per worker and id, the
-- greatest by (at, payload) as _put keeps it (an event delivered twice is one).
kept AS (
    SELECT worker, type, id, max({{'at': "at", 'payload': payload, 'pool': pool}}) AS e
    FROM worker_events
    WHERE type IN ('worker.started', 'worker.stopped', 'worker.subscribed', 'worker.lost')
    GROUP BY worker, type, id
),
-- The starts in (at, id) order, as sessions() walks them, each with the following start's
-- time; the one with none following is .started (the greatest by (at, id, payload): the kept
-- starts have distinct ids). The payload is parsed once; a field it leaves out is the
-- WorkerStarted default.
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
            worker,
            e."at",
            id,
            e.pool,
            lead(e."at") OVER w AS next_at,
            lead(id) OVER w IS NULL AS latest,
            from_json(e.payload, '{_STARTED}') AS f
        FROM kept
        WHERE type = 'worker.started'
        WINDOW w AS (PARTITION BY worker ORDER BY e."at", id)
    )
),
-- The kept stops; the latest (.stopped, by (at, id, payload)) gives stopped_at and
-- stop_reason.
stops AS (
    SELECT worker, e."at", id, e.payload, e.payload->>'reason' AS reason
    FROM kept
    WHERE type = 'worker.stopped'
),
last_stop AS (
    SELECT worker, max({{'at': "at", 'id': id, 'payload': payload, 'reason': reason}}) AS stop
    FROM stops
    GROUP BY worker
),
-- Starts, stops, subscriptions and losses in one order: a stop or subscription by (at, id), a
-- loss by its last_seen after every start at that instant (last_seen >= start.at). A stop or
-- subscription with a start's very (at, id) is after no start and before none (sessions()
-- and _current compare strictly), so it is left out: it ends no session, and it is not after
-- the latest start.
bounds AS (
    SELECT worker, 'start' AS kind, "at" AS t, 0 AS k, id, "at", NULL::VARCHAR[] AS keys
    FROM starts
    UNION ALL
    SELECT k.worker, k.kind, k."at", 0, k.id, k."at", k.keys
    FROM (
        SELECT worker, 'stop' AS kind, "at", id, NULL::VARCHAR[] AS keys FROM stops
        UNION ALL
        SELECT worker, 'sub', e."at", id, CAST(e.payload->'task_keys' AS VARCHAR[])
        FROM kept
        WHERE type = 'worker.subscribed'
    ) AS k
    ANTI JOIN starts AS s ON s.worker = k.worker AND s."at" = k."at" AND s.id = k.id
    UNION ALL
    SELECT worker, 'lost', CAST(e.payload->>'last_seen' AS TIMESTAMPTZ), 1, id, e."at", NULL
    FROM kept
    WHERE type = 'worker.lost'
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
        l.pool AS latest_pool,
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
    LEFT JOIN latest AS l ON l.worker = m.worker
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
    coalesce(s.pool, c.latest_pool) AS pool,
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
