"""The ``tasks`` and ``slot_intervals`` tables in SQL, straight from the raw ``events``.

A rebuild folds millions of task events; deriving these two tables set-based in DuckDB (hash
aggregates, a window over claims, starts and retries) spares it a Python view per task. The
reference is the fold's ``_TaskRecord`` (:mod:`workledger.projections.fold`): each CTE below
names the rule it mirrors, and tests/test_duckdb_derive_tasks.py holds the rows to
``Ledger.task`` and ``Ledger.intervals``.

Both tables read four temporary tables :func:`stage` makes from the events once: per task
its registers and placement, its claims and starts, its retries, and its stretches (the claims
and starts between two retries).

Order-free and idempotent like the fold: every register (the latest of a kind) is a ``max``
over a struct leading with ``("at", id, JSON)`` (fold._newer: the JSON text breaks a tie on
``("at", id)``, which only different events sharing an id can make), every "first" a ``min``;
claims and starts, and retries, are kept one per id, the greatest by that key (fold._put),
so a repeated event (same id, another ``seq``) changes nothing and the counts are over ids.
Comparisons across kinds (a mark or the terminal against a retry) are on ``("at", id)``
alone, as the fold's ``_later`` and bisects are.
"""

from __future__ import annotations

from workledger.core import events as ev
from workledger.projections.views import TaskStatus
from workledger.stores import _duckdb_schema as schema

__all__ = ["slot_intervals_select", "stage", "task_spans_select", "tasks_select"]


def _tag(kind: type[ev.Event]) -> str:
    return f"'{kind.__struct_config__.tag}'"


_SUBMITTED, _CLAIMED, _STARTED = _tag(ev.TaskSubmitted), _tag(ev.TaskClaimed), _tag(ev.TaskStarted)
_PROGRESS, _RETRYING = _tag(ev.TaskProgress), _tag(ev.TaskRetrying)
_COMPLETED, _FAILED = _tag(ev.TaskCompleted), _tag(ev.TaskFailed)
_CANCELLED, _CRASHED = _tag(ev.TaskCancelled), _tag(ev.TaskCrashed)
_TERMINALS = f"{_COMPLETED}, {_FAILED}, {_CANCELLED}, {_CRASHED}"
# The payload fields read, as json_transform structures (one parse per payload).
_SUBMITTED_FIELDS = (
    '{"task_key": "VARCHAR", "stage": "VARCHAR", "item": "VARCHAR", "priority": "BIGINT"}'
)
_PROGRESS_FIELDS = '{"progress": "DOUBLE", "message": "VARCHAR"}'
# fold._newer: a register is the greatest event by ("at", id), then by its JSON text (the
# payload as VARCHAR is msgspec's JSON of the event). A max over a struct that leads with
# those fields is that event; the fields after them come from the same event.
_NEWER = """'at': "at", 'id': id, 'json': payload::VARCHAR"""
# fold._TERMINAL_STATUS: a terminal event's tag -> its status.
_TERMINAL_STATUS = f"""CASE {{tag}}
    WHEN {_COMPLETED} THEN '{TaskStatus.COMPLETED}' WHEN {_FAILED} THEN '{TaskStatus.FAILED}'
    WHEN {_CANCELLED} THEN '{TaskStatus.CANCELLED}' WHEN {_CRASHED} THEN '{TaskStatus.CRASHED}'
    END"""
# The task events among ``{events}``: only those reach a _TaskRecord (Ledger.apply).
_TASK_EVENTS = "(SELECT * FROM {events} AS e WHERE task IS NOT NULL AND starts_with(type, 'task.'))"

PLACED, MARKS, RETRIES = "wl_task_placed", "wl_task_marks", "wl_task_retries"
STRETCHES = "wl_task_stretches"


def _placed(events: str, keep: bool) -> str:
    """Per task: its registers and placement, where its events begin and (``keep``) the
    sequences of those its rows depend on."""
    task_events = _TASK_EVENTS.format(events=events)
    # What the rows depend on: every event but the progress reports before the newest, and
    # the newest report, and without a submission the newest hint (list_distinct drops the
    # NULL of either missing).
    # Not kept, none of it is carried (a rebuild's registers are smaller for it).
    kept, all_kept, seq, report_seq = "NULL::BIGINT[]", "NULL::BIGINT[]", "", "NULL::BIGINT"
    if keep:
        kept = f"coalesce(list(seq) FILTER (WHERE type <> {_PROGRESS}), [])"
        all_kept = "list_distinct(kept || [report_seq, CASE WHEN unsubmitted THEN hint.seq END])"
        seq, report_seq = ", 'seq': seq", "report.seq"
    return f"""
WITH newest AS (
    -- _TaskRecord.apply: the newest submitted, terminal, progress report and retry, and the
    -- latest time. The newest retry of all is the newest of those kept one per id (_put keeps
    -- the newest of an id's), so it is read here, in the one scan of the payloads.
    SELECT task,
        max({{{_NEWER}, 'pool': pool, 'queue': queue}}) FILTER (WHERE type = {_SUBMITTED}) AS sub,
        max({{{_NEWER}, 'type': type}}) FILTER (WHERE type IN ({_TERMINALS})) AS term,
        max({{{_NEWER}{seq}}}) FILTER (WHERE type = {_PROGRESS}) AS report,
        max({{{_NEWER}}}) FILTER (WHERE type = {_RETRYING}) AS retry,
        max("at") AS updated_at,
        min(seq) AS first_seq,
        {kept} AS kept
    FROM {task_events}
    GROUP BY task
),
registers AS (
    -- What the view reads of each register's JSON, read once here: the rest of it is not
    -- carried further. _TaskRecord._error: failed.error, crashed.reason, else the latest
    -- retry's error.
    SELECT task, updated_at, first_seq, kept, {report_seq} AS report_seq,
        sub IS NULL AS unsubmitted, sub.at AS submitted_at, sub.pool, sub.queue,
        json_transform(sub.json, '{_SUBMITTED_FIELDS}') AS submitted,
        CASE WHEN term IS NOT NULL THEN {{'at': term.at, 'id': term.id, 'type': term.type}} END
            AS term,
        CASE term.type WHEN {_FAILED} THEN term.json::JSON->>'error'
            WHEN {_CRASHED} THEN term.json::JSON->>'reason' END AS term_error,
        json_transform(report.json, '{_PROGRESS_FIELDS}') AS progress,
        retry.json::JSON->>'error' AS retry_error
    FROM newest
),
hints AS (
    -- _TaskRecord.apply: the newest pool hint (any event with a pool), read only without a
    -- task.submitted: so only for those few tasks (most task events carry a pool).
    SELECT task, max({{{_NEWER}, 'pool': pool, 'queue': queue{seq}}}) AS hint
    FROM {task_events}
    WHERE pool IS NOT NULL AND type <> {_SUBMITTED}
        AND task IN (SELECT task FROM registers WHERE unsubmitted)
    GROUP BY task
)
-- _TaskRecord._placement: pool, queue, task key and stage from task.submitted, else pool and
-- queue from the latest hint (no key, no stage); the terminal's status; the progress.
SELECT task, submitted_at, term, term_error, retry_error, updated_at, first_seq,
    {all_kept} AS kept,
    CASE WHEN unsubmitted THEN hint.pool ELSE pool END AS pool,
    CASE WHEN unsubmitted THEN hint.queue ELSE queue END AS queue,
    submitted,
    {_TERMINAL_STATUS.format(tag="term.type")} AS term_status,
    progress
FROM registers LEFT JOIN hints USING (task)"""  # noqa: S608 (our SQL around a table name)


def _marks(events: str) -> str:
    """_TaskRecord.apply (fold._put): the claims and starts, one per id (a claim and a start
    sharing an id are one mark): of those sharing it, the newest by ("at", JSON).

    Nearly every id names one event, which is its own newest: only the ids of several are
    grouped again with their JSON, so the JSON of the rest is never read (reading it is
    most of the work: the payload column is decompressed whole).
    """
    task_events = _TASK_EVENTS.format(events=events)
    marks = f"{task_events} AS e WHERE type IN ({_CLAIMED}, {_STARTED})"
    return f"""
WITH by_id AS MATERIALIZED (
    SELECT task, id, max({{'at': "at", 'type': type, 'worker': worker}}) AS m, count(*) AS n
    FROM {marks}
    GROUP BY task, id
)
SELECT task, id, m.type, m."at", m.worker FROM by_id WHERE n = 1
UNION ALL
SELECT task, id, m.type, m."at", m.worker
FROM (
    SELECT task, id, max({{{_NEWER}, 'type': type, 'worker': worker}}) AS m
    FROM {marks} AND (task, id) IN (SELECT (task, id) FROM by_id WHERE n > 1)
    GROUP BY task, id
)"""  # noqa: S608 (our SQL around a table name)


def _retries(events: str) -> str:
    """_TaskRecord.apply (fold._put): the retries, one per id, at the newest one's time (its
    JSON is read only for the newest retry of all: :func:`_placed`)."""
    return f"""
SELECT task, id, max("at") AS "at"
FROM {_TASK_EVENTS.format(events=events)}
WHERE type = {_RETRYING}
GROUP BY task, id"""  # noqa: S608 (our SQL around a table name)


def _stretches() -> str:
    """intervals(): each task's claims and starts cut into stretches by its retries, each
    reduced to _interval's (and view()'s) first mark, first start, latest start's worker and
    latest mark's worker. Empty stretches have no row; the last is the task's current one."""
    return f"""
WITH retried AS (SELECT DISTINCT task FROM {RETRIES}),
timeline AS (
    -- intervals(): a claim or start falls in the stretch after the retries sorted before it
    -- (bisect_left: a retry with the mark's own key is not before it, so retries sort after
    -- marks of equal key); its stretch is how many there are. Most tasks have no retry:
    -- their marks are all in stretch 0, without a window.
    SELECT task, type, worker, "at", id, is_retry,
        sum(is_retry) OVER (
            PARTITION BY task ORDER BY "at", id, is_retry ROWS UNBOUNDED PRECEDING
        ) AS stretch
    FROM (
        SELECT task, type, worker, "at", id, 0 AS is_retry
        FROM {MARKS} SEMI JOIN retried USING (task)
        UNION ALL
        SELECT task, NULL, NULL, "at", id, 1 FROM {RETRIES}
    )
    UNION ALL
    SELECT task, type, worker, "at", id, 0, 0 FROM {MARKS} ANTI JOIN retried USING (task)
)
SELECT task, stretch,
    min("at") AS acquired_at,
    min("at") FILTER (WHERE type = {_STARTED}) AS started_at,
    arg_max(worker, ("at", id)) FILTER (WHERE type = {_STARTED}) AS start_worker,
    arg_max(worker, ("at", id)) AS mark_worker
FROM timeline
WHERE is_retry = 0
GROUP BY task, stretch"""  # noqa: S608 (our table names)


def stage(events: str, keep: bool = True) -> dict[str, str]:
    """The temporary tables :func:`tasks_select` and :func:`slot_intervals_select` read, each
    computed once from ``events`` (a table name or a parenthesised subquery), in order (the
    stretches read the marks and retries): name -> select. Not ``keep`` (deriving a long log
    from 0), no task gets its kept sequences (a list per task of the whole log costs a
    quarter of a rebuild's derivation): each is read by range until a live derivation
    touches it."""
    return {
        PLACED: _placed(events, keep),
        MARKS: _marks(events),
        RETRIES: _retries(events),
        STRETCHES: _stretches(),
    }


def _select(table: schema.Table, expressions: dict[str, str]) -> str:
    """The table's columns, in order, each cast to its SQL type."""
    return ",\n    ".join(
        f'CAST({expressions[name]} AS {kind.sql}) AS "{name}"'
        for name, kind in table.columns.items()
    )


_TASK_COLUMNS = {
    "task": "p.task",
    # _TaskRecord._status: terminal > RUNNING (a start in the stretch) > PENDING (claims
    # only) > RETRYING (any retry) > SUBMITTED > UNKNOWN.
    "status": f"""CASE
        WHEN p.term IS NOT NULL THEN p.term_status
        WHEN s.started_at IS NOT NULL THEN '{TaskStatus.RUNNING}'
        WHEN s.task IS NOT NULL THEN '{TaskStatus.PENDING}'
        WHEN r.task IS NOT NULL THEN '{TaskStatus.RETRYING}'
        WHEN p.submitted_at IS NOT NULL THEN '{TaskStatus.SUBMITTED}'
        ELSE '{TaskStatus.UNKNOWN}' END""",
    "pool": "p.pool",
    "queue": "p.queue",
    "task_key": "p.submitted.task_key",
    "stage": "p.submitted.stage",
    "priority": "p.submitted.priority",
    "item": "p.submitted.item",
    # view(): the stretch's latest start, else its latest claim.
    "worker": "coalesce(s.start_worker, s.mark_worker)",
    "submitted_at": "p.submitted_at",
    # view(): the stretch's first mark, while the task holds a slot (PENDING or RUNNING).
    "slot_acquired_at": "CASE WHEN p.term IS NULL THEN s.acquired_at END",
    "started_at": "s.started_at",
    "finished_at": "p.term.at",
    "updated_at": "p.updated_at",
    "retries": "coalesce(r.retries, 0)",
    "progress": "p.progress.progress",
    "message": "p.progress.message",
    # _TaskRecord._error: failed.error, crashed.reason, else the latest retry's error.
    "error": f"""CASE WHEN p.term.type IN ({_FAILED}, {_CRASHED}) THEN p.term_error
        ELSE p.retry_error END""",
}


def tasks_select() -> str:
    """The ``tasks`` table's rows (no ``batch_seq``): ``Ledger.task`` of every task, from the
    tables :func:`stage` made."""
    return f"""
WITH retried AS (
    -- _TaskRecord.apply: how many retries there are (one per id); few tasks have any.
    SELECT task, count(*) AS retries FROM {RETRIES} GROUP BY task
)
SELECT
    {_select(schema.TASKS, _TASK_COLUMNS)}
FROM {PLACED} AS p
LEFT JOIN retried AS r USING (task)
-- _TaskRecord._stretch: the claims and starts strictly after the latest retry by ("at", id)
-- (bisect_right) are the last stretch, the one after every retry. No row: it is empty.
LEFT JOIN {STRETCHES} AS s ON s.task = p.task AND s.stretch = coalesce(r.retries, 0)"""  # noqa: S608


def task_spans_select() -> str:
    """The ``task_spans`` table's rows (no ``batch_seq``): where each task's events begin, and
    the sequences of those its rows depend on."""
    return f"SELECT task, first_seq, kept FROM {PLACED}"  # noqa: S608 (our table name)


# _release: the stretch's retry when there is no terminal or the terminal is after it.
_BY_RETRY = 'r.id IS NOT NULL AND (p.term IS NULL OR (p.term.at, p.term.id) > (r."at", r.id))'
_INTERVAL_COLUMNS = {
    "task": "s.task",
    # intervals(): the stretch's index among all stretches, empty ones counted, from 1.
    "attempt": "s.stretch + 1",
    # _interval: the stretch's latest start, else its latest mark.
    "worker": "coalesce(s.start_worker, s.mark_worker)",
    "pool": "p.pool",
    "queue": "p.queue",
    "task_key": "p.submitted.task_key",
    "stage": "p.submitted.stage",
    "acquired_at": "s.acquired_at",
    "started_at": "s.started_at",
    # _release: released at the retry, else at the terminal; never before acquired_at.
    "released_at": f"""CASE
        WHEN {_BY_RETRY} THEN greatest(r."at", s.acquired_at)
        WHEN p.term IS NOT NULL THEN greatest(p.term.at, s.acquired_at) END""",
    "ended": f"""CASE
        WHEN {_BY_RETRY} THEN '{TaskStatus.RETRYING}'
        WHEN p.term IS NOT NULL THEN p.term_status END""",
}


def slot_intervals_select() -> str:
    """The ``slot_intervals`` table's rows (no ``batch_seq``): ``Ledger.intervals`` of every
    task, from the tables :func:`stage` made."""
    return f"""
WITH retries AS (
    -- intervals(): the task's retries (one per id) sorted by ("at", id), numbered from 1.
    SELECT task, "at", id, row_number() OVER (PARTITION BY task ORDER BY "at", id) AS n
    FROM {RETRIES}
)
SELECT
    {_select(schema.SLOT_INTERVALS, _INTERVAL_COLUMNS)}
FROM {STRETCHES} AS s
JOIN {PLACED} AS p USING (task)
-- intervals(): stretch i (from 0) ends at retry i + 1; the last stretch has none.
LEFT JOIN retries AS r ON r.task = s.task AND r.n = s.stretch + 1"""  # noqa: S608 (our names)
