"""The daemon writes the DuckDB file; a rebuild of the stream equals it, even after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import anyio
import duckdb
import pytest

from workledger.core import events as ev
from workledger.core.errors import StreamNotFoundError
from workledger.core.log import LogConfig
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.rebuild import rebuild
from workledger.stores.base import ReadModel, StoreStats
from workledger.stores.duckdb import DuckDBStore

from .histories import fleet_history
from .test_daemon_process import WORKLEDGER, _publish_all, daemon
from .test_fold import fold
from .test_scale_out import _fleet
from .test_store_contract import batch


def opened(path: Path) -> tuple[ReadModel, StoreStats]:
    """The model and stats in a DuckDB file, read after its writer stopped."""
    with DuckDBStore(path, read_only=True) as store:
        return store.read_model(), store.stats()


def committed(path: Path) -> int:
    """The checkpoint row: the last batch committed, derived tables written or not."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return int(con.execute("SELECT checkpoint FROM checkpoint").fetchone()[0])  # type: ignore[index]
    finally:
        con.close()


def event_seqs(path: Path) -> list[int]:
    """Every sequence in the events table, as an analyst would count them."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [row[0] for row in con.execute("SELECT seq FROM events ORDER BY seq").fetchall()]
    finally:
        con.close()


def listing(folder: Path) -> list[str]:
    """The names in a folder (none if it does not exist)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def rebuild_with_cli(config: LogConfig, path: Path, *options: str) -> str:
    """`workledger rebuild` as a user runs it; returns its summary line."""
    argv = [WORKLEDGER, "rebuild", "--duckdb", str(path), "--no-progress", *options]
    argv += ["--nats", config.servers[0], "--stream", config.stream]
    argv += ["--subject-prefix", config.subject_prefix]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_after_a_kill_mid_stream_the_daemons_duckdb_file_equals_a_rebuild(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """SIGKILL while events stream in, restart: every event once, and the rebuild agrees."""
    history = fleet_history(20_000, seed=11)
    live = tmp_path / "state" / f"{log_stream.stream}.duckdb"
    publisher = threading.Thread(target=_publish_all, args=(log_stream, history))
    with daemon(log_stream, tmp_path / "state") as (proc, client):
        publisher.start()
        client.health(wait_for=4000, timeout=30)  # both stores hold at least this much
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = committed(live)
    assert opened(live)[1].checkpoint <= killed_at, "read-only: the tables as last written"
    publisher.join(timeout=60)
    with daemon(log_stream, tmp_path / "state") as (proc, client):
        assert client.health(wait_for=len(history), timeout=60).checkpoint == len(history)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert 4000 <= killed_at < len(history), "the kill landed mid-stream"
    assert event_seqs(live) == list(range(1, len(history) + 1)), "nothing lost, nothing twice"
    summary = rebuild_with_cli(log_stream, tmp_path / "rebuilt.duckdb")
    assert f"{len(history)} events up to stream sequence {len(history)}" in summary
    assert opened(live) == opened(tmp_path / "rebuilt.duckdb")
    assert opened(live)[0] == fold(history).read_model()


@pytest.mark.anyio
async def test_rebuild_replaces_an_existing_file_only_once_the_new_one_is_complete(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """A rebuild over an old file swaps in the whole new model and leaves no temporary file."""
    history = fleet_history(300, seed=2)
    target = tmp_path / "out" / "ledger.duckdb"
    with DuckDBStore(target) as old:
        old.apply(batch([ev.TaskCompleted(task="stale", at=history[0].at, id="x")]))
    await anyio.to_thread.run_sync(_publish_all, log_stream, history)
    stats = await rebuild(log_stream, target, progress=False)
    assert (stats.checkpoint, stats.applied) == (len(history), len(history))
    assert opened(target)[0] == fold(history).read_model()
    assert listing(target.parent) == ["ledger.duckdb"]


@pytest.mark.anyio
async def test_rebuild_of_a_missing_stream_fails_clearly_and_creates_nothing(
    log_config: LogConfig, tmp_path: Path
) -> None:
    """No stream: an error naming it, and no file left behind."""
    with pytest.raises(StreamNotFoundError, match=log_config.stream):
        await rebuild(log_config, tmp_path / "out" / "x.duckdb", progress=False)
    assert listing(tmp_path / "out") == []


@pytest.mark.slow
def test_a_pool_daemons_file_equals_a_rebuild_of_its_pools(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """`rebuild --pools` reads what the pool daemon read, the task events without a pool of
    its tasks included, up to its pools' last message: the same file, and not the whole's."""
    history = _fleet(900, pool_less=0.5)
    _publish_all(log_stream, history)
    live = tmp_path / "etl.duckdb"
    pool_of = {e.task: e.pool for e in history if isinstance(e, ev.TaskSubmitted)}
    etl = sum(1 for e in history if (e.pool_key or pool_of[e.entity_key]) == "etl")

    async def project() -> None:
        settings = ProjectorConfig(log=log_stream, pools=("etl",))
        with DuckDBStore(live) as store:
            projector = Projector(settings, [store])
            async with anyio.create_task_group() as tg:
                await tg.start(projector.run)
                with anyio.fail_after(30):
                    while store.stats().applied < etl:
                        await projector.wait_for(projector.checkpoint + 1)
                tg.cancel_scope.cancel()

    anyio.run(project, backend="asyncio")
    summary = rebuild_with_cli(log_stream, tmp_path / "rebuilt.duckdb", "--pools", "etl")
    model, stats = opened(live)
    assert f"{etl} events up to stream sequence {stats.checkpoint}" in summary
    assert (model, stats) == opened(tmp_path / "rebuilt.duckdb")
    assert model.tasks == [t for t in fold(history).read_model().tasks if t.pool == "etl"]
    assert len({t.pool for t in fold(history).read_model().tasks}) == 3
