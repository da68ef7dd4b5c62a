"""The SQL that derives ``workers`` and ``worker_sessions`` from the raw ``events`` gives exactly
the rows the Python fold gives, however the history is batched or duplicated.

Each history is applied to a real DuckDB file by :class:`DuckDBStore` (which writes ``events``)
and folded by a :class:`Ledger`, the reference: its views go through the tables' Arrow types
into the same connection, so values compare exactly. The store's own derived tables are not
the reference: it derives them with this very SQL.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.projections.fold import Ledger
from workledger.stores import _duckdb_schema as schema
from workledger.stores._duckdb_derive_workers import worker_sessions_select, workers_select
from workledger.stores._duckdb_rows import struct_table
from workledger.stores.base import Batch, Sequenced
from workledger.stores.duckdb import DuckDBStore

from .histories import BASE, histories, keys, pools, queues, tasks
from .test_store_contract import fleet

# Each example opens a DuckDB file (~0.1 s): modest counts keep the file well under a minute.
_PROPERTY = settings(
    max_examples=35, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
Rows = list[tuple[Any, ...]]


def _plain(value: Any) -> Any:
    """A MAP as its (key, value) pairs in order, so key order is compared too."""
    return tuple(value.items()) if isinstance(value, dict) else value


def _fetch(relation: duckdb.DuckDBPyRelation | duckdb.DuckDBPyConnection) -> Rows:
    return [tuple(map(_plain, row)) for row in relation.fetchall()]


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> Rows:
    return sorted(_fetch(con.execute(sql)), key=repr)


class Applied:
    """A history in a DuckDB file and in the reference fold."""

    def __init__(self, con: duckdb.DuckDBPyConnection, ledger: Ledger) -> None:
        self.con, self.ledger = con, ledger

    def fold(self, table: schema.Table) -> Rows:
        """The fold's rows of ``table``: workers by name, each one's sessions in its order."""
        ledger, names = self.ledger, sorted(self.ledger.worker_ids())
        views: list[Any]
        if table is schema.WORKERS:
            views = [v for v in map(ledger.worker, names) if v is not None]
        else:
            views = [s for w in names for s in ledger.sessions(w)]
        return _fetch(self.con.from_arrow(struct_table(table, views)))

    def check(self, events: str = "events") -> None:
        """The SQL gives the fold's rows: the same multiset of workers; the same sessions in
        the same order (by worker, then the fold's (at, id) order of their starts), so a table
        filled from the SQL breaks ties of ``started_at`` by rowid as the fold does."""
        con = self.con
        assert _rows(con, workers_select(events)) == sorted(self.fold(schema.WORKERS), key=repr)
        sessions = _fetch(con.execute(worker_sessions_select(events)))
        assert sessions == self.fold(schema.WORKER_SESSIONS)


@contextmanager
def _applied(tmp_path: Path, batches: Sequence[Sequence[ev.Event]]) -> Iterator[Applied]:
    """Each batch applied in turn to a fresh file, numbered on from the last, and folded; then
    a second connection to the open file (DuckDB shares one database between the connections
    of a process)."""
    seq, ledger = itertools.count(1), Ledger()
    with DuckDBStore(_fresh(tmp_path), materialize_every=math.inf) as store:
        for events in batches:
            items = [Sequenced(next(seq), "s", e) for e in events]
            if items:
                store.apply(Batch(events=items, last_seq=items[-1].seq))
            for event in events:
                ledger.apply(event)
        con = duckdb.connect(str(store.path))
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield Applied(con, ledger)
        finally:
            con.close()


def _fresh(tmp_path: Path) -> Path:
    """A new file in ``tmp_path`` (hypothesis runs many examples in one test's directory)."""
    for i in itertools.count():
        candidate = tmp_path / f"derive-{i}.duckdb"
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


# --- properties ------------------------------------------------------------------------------

_INSTANTS = st.integers(0, 20).map(lambda s: BASE + timedelta(seconds=s))  # many ties
_FEW_INSTANTS = st.integers(0, 2).map(lambda s: BASE + timedelta(seconds=s))
_NAMES = st.sampled_from(("w1", "w 2"))


def _lives_events() -> st.SearchStrategy[ev.Event]:
    """Every event a worker record reads, for two workers (histories() has them rarer)."""
    key_sets = st.lists(keys, max_size=2, unique=True).map(tuple)
    text = st.none() | st.sampled_from(["bye", 'a "quoted" \\ reason', "été"])
    return st.one_of(
        st.builds(
            ev.WorkerStarted,
            worker=_NAMES,
            pool=pools,
            task_keys=key_sets,
            queues=st.lists(queues, max_size=2, unique=True).map(tuple),
            slots=st.integers(0, 3),
            heartbeat_interval=st.sampled_from([0.1, 5.0, 30.0, 1e-300]),
            labels=st.dictionaries(st.sampled_from(["zone", "gpu", "ré"]), st.sampled_from("ab")),
            host=st.none() | st.just("h-1"),
            pid=st.none() | st.sampled_from([0, 42, 2**63 - 1]),
        ),
        st.builds(ev.WorkerHeartbeat, worker=_NAMES, pool=pools),
        st.builds(ev.WorkerSubscribed, worker=_NAMES, pool=pools, task_keys=key_sets),
        st.builds(ev.WorkerStopped, worker=_NAMES, pool=pools, reason=text),
        st.builds(ev.WorkerLost, worker=_NAMES, pool=pools, last_seen=_INSTANTS, reason=text),
        st.builds(ev.WorkerForgotten, worker=_NAMES, pool=pools),
        st.builds(ev.TaskClaimed, task=tasks, worker=_NAMES),
        st.builds(ev.TaskStarted, task=tasks, worker=_NAMES),
        st.builds(ev.TaskCompleted, task=tasks),
    )


@st.composite
def _lives(draw: st.DrawFn, reused_ids: bool = False) -> list[ev.Event]:
    """Worker lives in 20 seconds: times collide, and ids are in no particular time order.

    ``reused_ids``: ids from a pool of four and times from three instants, so different events
    share an id, and often both id and time (a faulty producer's)."""
    bodies = draw(st.lists(_lives_events(), max_size=30))
    n = len(bodies)
    instants = _FEW_INSTANTS if reused_ids else _INSTANTS
    stamps = draw(st.lists(instants, min_size=n, max_size=n))
    ids: list[str] = (
        draw(st.lists(st.sampled_from(["r0", "r1", "r2", "r3"]), min_size=n, max_size=n))
        if reused_ids
        else [f"e{i:03d}" for i in draw(st.permutations(range(n)))]
    )
    return [
        msgspec.structs.replace(body, id=i, at=at)
        for body, at, i in zip(bodies, stamps, ids, strict=True)
    ]


@st.composite
def _redelivered(
    draw: st.DrawFn, history: st.SearchStrategy[list[ev.Event]]
) -> list[list[ev.Event]]:
    """A history cut into batches, some of its events applied again (the same id at another
    sequence), all in any order."""
    events = draw(history)
    again = draw(st.lists(st.sampled_from(events), max_size=10)) if events else []
    stream = draw(st.permutations([*events, *again]))
    cuts = sorted(draw(st.sets(st.integers(0, len(stream)), max_size=5)) | {len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts])]


@_PROPERTY
@given(history=histories())
def test_one_batch(tmp_path: Path, history: list[ev.Event]) -> None:
    """Any history folded at once (the shared strategy: every family, few ids)."""
    with _applied(tmp_path, [history]) as applied:
        applied.check()


@_PROPERTY
@given(batches=_redelivered(histories()))
def test_batched_and_duplicated(tmp_path: Path, batches: list[list[ev.Event]]) -> None:
    """The fold is idempotent by event id and order-free; so is the SQL."""
    with _applied(tmp_path, batches) as applied:
        applied.check()


@settings(_PROPERTY, max_examples=50)
@given(batches=_redelivered(_lives()))
def test_worker_lives(tmp_path: Path, batches: list[list[ev.Event]]) -> None:
    """Dense lives of two workers: several sessions each, stops, losses and verdicts at the
    same instants as starts, subscriptions on either side of a start."""
    with _applied(tmp_path, batches) as applied:
        applied.check()


@_PROPERTY
@given(batches=_redelivered(histories(reused_ids=True)))
def test_reused_ids(tmp_path: Path, batches: list[list[ev.Event]]) -> None:
    """Different events sharing an id (a faulty producer), and often its time too: the fold
    keeps one per id in each set and breaks exact ties of (at, id) by the JSON; so does the
    SQL, in any batching and with redeliveries."""
    with _applied(tmp_path, batches) as applied:
        applied.check()


@_PROPERTY
@given(batches=_redelivered(_lives(reused_ids=True)))
def test_worker_lives_with_reused_ids(tmp_path: Path, batches: list[list[ev.Event]]) -> None:
    """Dense lives of two workers whose events share ids and times: starts, stops,
    subscriptions and losses replaced by a newer event of the same id, or tied with one."""
    with _applied(tmp_path, batches) as applied:
        applied.check()


# --- the tricky rules, by example ------------------------------------------------------------


def test_the_columns_are_the_tables_with_their_types(tmp_path: Path) -> None:
    """The same names and types in the same order (no ``batch_seq``), from a table name or a
    parenthesised subquery, the way a rebuild may hand the events over."""
    subquery = "(SELECT * FROM events WHERE seq > 0 ORDER BY seq DESC)"
    with _applied(tmp_path, [fleet()]) as applied:
        con = applied.con
        for table, select in (
            (schema.WORKERS, workers_select),
            (schema.WORKER_SESSIONS, worker_sessions_select),
        ):
            columns = con.execute(f"DESCRIBE {table.name}").fetchall()
            assert columns[-1][0] == schema.BATCH_SEQ
            for events in ("events", subquery):
                derived = con.execute(f"DESCRIBE {select(events)}").fetchall()
                assert [c[:2] for c in derived] == [c[:2] for c in columns[:-1]]
                assert [c[0] for c in derived] == list(table.columns)
        applied.check(subquery)
        assert len(applied.fold(schema.WORKERS)) == 3


def at(seconds: float, name: str | None = None) -> dict[str, Any]:
    """Stamps: ``seconds`` after BASE, with an id in time order unless named."""
    return {"at": BASE + timedelta(seconds=seconds), "id": name or f"id-{seconds:08.2f}"}


def t(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def _start(seconds: float, name: str | None = None, **fields: Any) -> ev.WorkerStarted:
    return ev.WorkerStarted(**{"worker": "w", "pool": "p", **fields, **at(seconds, name)})


def _derived(tmp_path: Path, events: list[ev.Event]) -> tuple[Rows, Rows]:
    """``workers`` and ``worker_sessions`` as the SQL derives them, checked against the fold's."""
    with _applied(tmp_path, [events]) as applied:
        applied.check()
        con = applied.con
        return _rows(con, workers_select("events")), con.execute(
            f"SELECT * FROM ({worker_sessions_select('events')}) ORDER BY started_at"
        ).fetchall()


def _columns(table: schema.Table, row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(table.columns, row, strict=True))


def test_a_loss_ends_the_session_its_last_seen_falls_in(tmp_path: Path) -> None:
    """The verdict at 50 with last_seen 5 ends the first session, not the second."""
    workers, sessions = _derived(
        tmp_path,
        [
            _start(0),
            _start(10),
            ev.WorkerLost(worker="w", pool="p", last_seen=t(5), **at(50)),
        ],
    )
    first, second = (_columns(schema.WORKER_SESSIONS, s) for s in sessions)
    assert (first["stopped_at"], first["next_started_at"]) == (t(50), t(10))
    assert second["stopped_at"] is None
    assert _columns(schema.WORKERS, workers[0])["lost"] is False


def test_a_loss_at_a_start_instant_belongs_to_the_last_start_then(tmp_path: Path) -> None:
    """Two starts at one instant: the first's session is empty, [10, 10)."""
    _, sessions = _derived(
        tmp_path,
        [
            _start(10, "a"),
            _start(10, "b"),
            ev.WorkerLost(worker="w", pool="p", last_seen=t(10), **at(50, "c")),
        ],
    )
    stops = [_columns(schema.WORKER_SESSIONS, s)["stopped_at"] for s in sessions]
    assert sorted(stops, key=repr) == sorted([None, t(50)], key=repr)


def test_forgotten_hides_the_worker_until_it_shows_life_again(tmp_path: Path) -> None:
    """Forgotten after its latest start and last sign of life: no row, but its sessions stay.
    Any later sign of life brings it back: a heartbeat, a start, a task claim naming it."""
    base: list[ev.Event] = [
        _start(0),
        ev.WorkerHeartbeat(worker="w", pool="p", **at(5)),
        ev.WorkerForgotten(worker="w", pool="p", **at(20)),
    ]
    workers, sessions = _derived(tmp_path, base)
    assert (workers, len(sessions)) == ([], 1)
    for later in (
        ev.WorkerHeartbeat(worker="w", pool="p2", **at(30)),
        _start(30, pool="p2"),
        ev.TaskClaimed(task="x", worker="w", pool="p3", **at(30)),
    ):
        workers, _ = _derived(tmp_path, [*base, later])
        row = _columns(schema.WORKERS, workers[0])
        # The pool is the latest start's (a heartbeat's or a task's pool never overrides it).
        pool = "p2" if isinstance(later, ev.WorkerStarted) else "p"
        assert (row["last_seen"], row["pool"]) == (t(30), pool)
    # Neither a start before the verdict nor a verdict on life (lost) is a sign of life.
    lost = ev.WorkerLost(worker="w", pool="p", last_seen=t(5), **at(40))
    workers, _ = _derived(tmp_path, [*base, _start(1, "earlier"), lost])
    assert workers == []


def test_a_worker_named_only_by_task_events_has_no_pool(tmp_path: Path) -> None:
    """Claims and starts of tasks are signs of life of the worker they name."""
    workers, sessions = _derived(
        tmp_path,
        [ev.TaskStarted(task="x", worker="w", **at(3)), ev.TaskCompleted(task="x", **at(4))],
    )
    row = _columns(schema.WORKERS, workers[0])
    assert (row["pool"], row["last_seen"], row["slots"], sessions) == (None, t(3), 1, [])


def test_without_a_start_the_pool_is_the_latest_worker_events(tmp_path: Path) -> None:
    """Even a verdict's: lost and forgotten are not signs of life, but they are worker events.
    Forgotten with no start and no sign of life before it: no row."""
    workers, _ = _derived(
        tmp_path,
        [
            ev.WorkerHeartbeat(worker="w", pool="p1", **at(1)),
            ev.WorkerLost(worker="w", pool="p2", last_seen=t(0), **at(5)),
            ev.WorkerForgotten(worker="v", pool="p1", **at(5)),
            ev.WorkerStopped(worker="u", pool="p1", **at(5)),
        ],
    )
    rows = {r[0]: _columns(schema.WORKERS, r) for r in workers}
    assert set(rows) == {"w", "u"}
    assert (rows["w"]["pool"], rows["w"]["lost"], rows["w"]["last_seen"]) == ("p2", True, t(1))
    assert (rows["u"]["stopped"], rows["u"]["started_at"]) == (True, None)


def test_subscriptions_count_only_after_the_latest_start(tmp_path: Path) -> None:
    """One before the latest start is dropped; the last session's keys include the later one."""
    workers, sessions = _derived(
        tmp_path,
        [
            _start(0, task_keys=("b",)),
            ev.WorkerSubscribed(worker="w", pool="p", task_keys=("old",), **at(5)),
            _start(10, task_keys=("z", "a")),
            ev.WorkerSubscribed(worker="w", pool="p", task_keys=("m", "a"), **at(15)),
        ],
    )
    assert _columns(schema.WORKERS, workers[0])["task_keys"] == ["a", "m", "z"]
    first, last = (_columns(schema.WORKER_SESSIONS, s) for s in sessions)
    assert (first["task_keys"], last["task_keys"]) == (["b"], ["a", "m", "z"])


def test_a_stop_between_two_starts_ends_the_first_session(tmp_path: Path) -> None:
    """Not the worker: its latest start came after the stop."""
    workers, sessions = _derived(
        tmp_path,
        [
            _start(0),
            ev.WorkerStopped(worker="w", pool="p", reason="bye", **at(5)),
            _start(10),
        ],
    )
    row = _columns(schema.WORKERS, workers[0])
    assert (row["stopped"], row["stopped_at"], row["stop_reason"]) == (False, t(5), "bye")
    first, last = (_columns(schema.WORKER_SESSIONS, s) for s in sessions)
    assert (first["stopped_at"], last["stopped_at"]) == (t(5), None)


def test_ties_on_time_are_broken_by_id(tmp_path: Path) -> None:
    """A stop at the start's instant with a larger id is after it; with a smaller, before."""
    workers, _ = _derived(
        tmp_path,
        [
            _start(10, "m", slots=3, labels={"zone": "b", "gpu": "a"}),
            ev.WorkerStopped(worker="w", pool="p", **at(10, "n")),
        ],
    )
    row = _columns(schema.WORKERS, workers[0])
    assert (row["stopped"], row["slots"], row["labels"]) == (True, 3, (("zone", "b"), ("gpu", "a")))
    workers, _ = _derived(
        tmp_path, [_start(10, "m"), ev.WorkerStopped(worker="w", pool="p", **at(10, "l"))]
    )
    assert _columns(schema.WORKERS, workers[0])["stopped"] is False


def test_a_later_start_clears_a_loss(tmp_path: Path) -> None:
    """Lost until a start after the verdict's last_seen; a payload default stays a default."""
    lost = ev.WorkerLost(worker="w", pool="p", last_seen=t(5), **at(50))
    workers, _ = _derived(tmp_path, [_start(0, heartbeat_interval=5.0), lost])
    row = _columns(schema.WORKERS, workers[0])
    assert (row["lost"], row["heartbeat_interval"]) == (True, 5.0)
    workers, _ = _derived(tmp_path, [_start(0), lost, _start(6)])
    row = _columns(schema.WORKERS, workers[0])
    assert (row["lost"], row["heartbeat_interval"], row["labels"]) == (False, 30.0, ())


def test_a_duplicated_start_is_one_session(tmp_path: Path) -> None:
    """The same start applied twice at two sequences: still one session."""
    start = _start(0, pid=2**63 - 1, host="h")
    with _applied(tmp_path, [[start], [msgspec.structs.replace(start)]]) as applied:
        applied.check()
        sql = f"SELECT count(*) FROM ({worker_sessions_select('events')})"
        assert applied.con.execute(sql).fetchall() == [(1,)]


def test_of_starts_sharing_an_id_the_newest_is_the_one_session(tmp_path: Path) -> None:
    """A faulty producer reusing an id: one start per id, the latest by time, then by JSON."""
    workers, sessions = _derived(tmp_path, [_start(10, "s", slots=2), _start(0, "s", slots=3)])
    assert [_columns(schema.WORKER_SESSIONS, s)["slots"] for s in sessions] == [2]
    workers, sessions = _derived(tmp_path, [_start(5, "s", pool="q"), _start(5, "s", pool="p")])
    row = _columns(schema.WORKERS, workers[0])
    assert (row["pool"], len(sessions)) == ("q", 1)  # '..."pool":"q"...' > '..."pool":"p"...'
    workers, _ = _derived(
        tmp_path,
        [
            ev.WorkerHeartbeat(worker="w", pool="q", **at(5, "h")),
            ev.WorkerHeartbeat(worker="w", pool="p", **at(5, "h")),
        ],
    )
    assert _columns(schema.WORKERS, workers[0])["pool"] == "q"


def test_a_stop_with_a_starts_time_and_id_ends_no_session(tmp_path: Path) -> None:
    """Neither after that start nor before it; still the latest stop, for stopped_at."""
    workers, sessions = _derived(
        tmp_path,
        [
            _start(0, "a"),
            _start(10, "m"),
            ev.WorkerStopped(worker="w", pool="p", reason="bye", **at(10, "m")),
        ],
    )
    row = _columns(schema.WORKERS, workers[0])
    assert (row["stopped"], row["stopped_at"], row["stop_reason"]) == (False, t(10), "bye")
    assert [_columns(schema.WORKER_SESSIONS, s)["stopped_at"] for s in sessions] == [None, None]


def test_of_subscriptions_or_losses_sharing_an_id_the_newest_counts(tmp_path: Path) -> None:
    """The older subscription of an id adds no keys; the older loss of an id ends nothing."""
    workers, sessions = _derived(
        tmp_path,
        [
            _start(0, task_keys=("a",)),
            ev.WorkerSubscribed(worker="w", pool="p", task_keys=("y",), **at(4, "s")),
            _start(6, task_keys=("b",)),
            ev.WorkerSubscribed(worker="w", pool="p", task_keys=("x",), **at(8, "s")),
            ev.WorkerLost(worker="w", pool="p", last_seen=t(5), **at(50, "l")),
            ev.WorkerLost(worker="w", pool="p", last_seen=t(7), **at(40, "l")),
        ],
    )
    row = _columns(schema.WORKERS, workers[0])
    assert (row["task_keys"], row["lost"]) == (["b", "x"], False)
    stops = [_columns(schema.WORKER_SESSIONS, s)["stopped_at"] for s in sessions]
    assert stops == [t(50), None]
