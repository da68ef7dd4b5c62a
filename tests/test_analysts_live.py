"""Analysts query the DuckDB data from another process while the daemon writes it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from workledger import analysis
from workledger.core import events as ev
from workledger.core.errors import StoreError
from workledger.core.log import LogConfig
from workledger.core.publisher import SyncPublisher
from workledger.stores.base import ReadModel
from workledger.stores.duckdb import DuckDBStore

from .histories import fleet_history
from .test_daemon_process import _publish_all, daemon
from .test_fold import fold

READER = Path(__file__).with_name("analyst_reader.py")


def start_reader(state: Path, stream: str, final: int, keep: Path) -> subprocess.Popen[str]:
    """The analyst: a separate Python process reading the published copy in a loop."""
    keep.mkdir()
    argv = [sys.executable, str(READER), str(state), stream, str(final), str(keep)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reads_of(reader: subprocess.Popen[str]) -> list[dict[str, object]]:
    """Every read the analyst reported, once it finished."""
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def trickle(config: LogConfig, events: list[ev.Event], chunks: int = 20) -> None:
    """Publish as a live fleet would: in bursts over a few seconds, not all at once."""
    size = -(-len(events) // chunks)
    with SyncPublisher(config) as pub:
        for start in range(0, len(events), size):
            for event in events[start : start + size]:
                pub.publish(event)
            pub.flush()
            time.sleep(0.15)


def model_of(copy: Path) -> tuple[int, ReadModel, set[str]]:
    """A kept copy's checkpoint, read model and the ids of the events it holds."""
    with DuckDBStore(copy, read_only=True) as store:
        ids = {row[0] for row in store._cursor().execute("SELECT id FROM events").fetchall()}
        return store.stats().checkpoint, store.read_model(), ids


@pytest.mark.slow
def test_an_analyst_process_reads_consistent_fresh_copies_while_the_daemon_ingests(
    log_stream: LogConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read succeeds and is whole; the copy catches up in seconds; the daemon never waits."""
    monkeypatch.setenv("WORKLEDGER_ANALYST_INTERVAL", "0.5")
    history = fleet_history(20_000, seed=17)
    state = tmp_path / "state"
    with daemon(log_stream, state) as (_, client):
        reader = start_reader(state, log_stream.stream, len(history), tmp_path / "kept")
        publisher = threading.Thread(target=trickle, args=(log_stream, history))
        publisher.start()
        publisher.join(timeout=90)
        assert client.health(wait_for=len(history), timeout=30).checkpoint == len(history)
        applied_at = time.time()  # the daemon never waited for a reader: it got here
        reads = reads_of(reader)
    errors = [r["error"] for r in reads if "error" in r]
    assert not errors, f"reads failed: {errors[:3]}"
    assert [r for r in reads if r["problems"]] == [], "a copy was inconsistent"
    seen = [int(r["checkpoint"]) for r in reads]  # type: ignore[call-overload]
    assert seen == sorted(seen), "a newer copy never goes back"
    assert len(set(seen)) >= 4, f"copies advanced while events streamed in: {sorted(set(seen))}"
    caught_up = next(float(r["t"]) for r in reads if r["checkpoint"] == len(history))  # type: ignore[arg-type]
    print(f"reads {len(reads)}, copies {sorted(set(seen))}, lag {caught_up - applied_at:.2f}s")
    assert caught_up - applied_at < 5, "the copy caught up within seconds of the daemon"
    for copy in sorted((tmp_path / "kept").iterdir()):
        checkpoint, model, ids = model_of(copy)
        assert model == fold([e for e in history if e.id in ids]).read_model(), copy.name
        assert len(ids) == checkpoint, "a kept copy holds whole batches, up to its checkpoint"


@pytest.mark.slow
def test_the_final_copy_equals_the_live_file_after_a_graceful_stop(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """On SIGTERM the daemon publishes once more: the copy then holds exactly the live model."""
    history = fleet_history(2_000, seed=4)
    _publish_all(log_stream, history)
    state = tmp_path / "state"
    with daemon(log_stream, state) as (proc, client):
        client.health(wait_for=len(history), timeout=30)
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    live = state / f"{log_stream.stream}.duckdb"
    copy = analysis.analyst_path(state, log_stream.stream)
    with DuckDBStore(live, read_only=True) as a, DuckDBStore(copy, read_only=True) as b:
        assert (a.read_model(), a.stats()) == (b.read_model(), b.stats())
    assert sorted(p.name for p in state.iterdir() if "analyst" in p.name) == [copy.name]


def test_connect_without_a_published_copy_says_what_to_run(tmp_path: Path) -> None:
    """No copy yet: a StoreError naming the path and the daemon command, not a DuckDB error."""
    with pytest.raises(StoreError, match=r"no analyst copy at .*S\.analyst\.duckdb.*project"):
        analysis.connect(tmp_path, "S")


def test_a_new_connection_sees_the_newest_copy_even_while_an_old_one_is_open(
    tmp_path: Path,
) -> None:
    """DuckDB caches databases by path; connect must not hand back the old copy."""
    target = analysis.analyst_path(tmp_path, "S")
    with DuckDBStore(tmp_path / "S.duckdb") as live:
        live.publish(target)
        old = analysis.connect(tmp_path, "S")
        live._cursor().execute("UPDATE checkpoint SET checkpoint = 7")
        live.publish(target)
        new = analysis.connect(tmp_path, "S")
    assert (analysis.freshness(old).checkpoint, analysis.freshness(new).checkpoint) == (0, 7)
    old.close()
    new.close()


def test_connect_reads_the_environment_like_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WORKLEDGER_DATA_DIR and WORKLEDGER_STREAM choose the copy, as they configure the daemon."""
    monkeypatch.setenv("WORKLEDGER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("WORKLEDGER_STREAM", "ENV")
    assert analysis.analyst_path() == tmp_path / "ENV.analyst.duckdb"
    with DuckDBStore(tmp_path / "ENV.duckdb") as live:
        live.publish(analysis.analyst_path())
    con = analysis.connect()
    try:
        assert con.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM events")
    finally:
        con.close()
