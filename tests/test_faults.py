"""Faults with real processes: SIGKILLed daemons, a NATS restart, full disks, lost streams, gaps.

``WORKLEDGER_FAULT_KILLS`` sets how many SIGKILLs the kill test deals in total across its five
runs (default 50; a nightly run can ask for 500).
"""

from __future__ import annotations

import functools
import math
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from workledger.core import events as ev
from workledger.core.errors import GapError, StreamNotFoundError
from workledger.core.log import LogConfig, connect
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import SyncPublisher
from workledger.projections._groups import plain_errors
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.rebuild import rebuild
from workledger.stores.memory import MemoryStore

from .conftest import read_all
from .histories import fleet_history
from .test_daemon_process import WORKLEDGER, _publish_all, daemon
from .test_duckdb_daemon import event_seqs, opened
from .test_fold import fold

KILLS = int(os.environ.get("WORKLEDGER_FAULT_KILLS", "50"))
RUNS = 5
EVENTS = 20_000


class _Checkpoint(msgspec.Struct):
    checkpoint: int


def snapshot_checkpoint(state: Path, stream: str) -> int:
    """The in-memory store's checkpoint as its last snapshot recorded it (0 if none)."""
    path = state / f"{stream}.memory.snapshot"
    return (
        msgspec.msgpack.decode(path.read_bytes(), type=_Checkpoint).checkpoint
        if path.exists()
        else 0
    )


# --- SIGKILL at random points -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("run", range(RUNS))
def test_sigkill_at_random_points_loses_nothing_and_applies_nothing_twice(
    run: int, log_stream: LogConfig, tmp_path: Path
) -> None:
    """Kill the daemon again and again while events stream in; the end equals a rebuild."""
    rng = random.Random(run)
    history = fleet_history(EVENTS, seed=100 + run)
    state = tmp_path / "state"
    producer = threading.Thread(target=_publish_paced, args=(log_stream, history))
    producer.start()
    points = [_kill_once(log_stream, state, rng) for _ in range(math.ceil(KILLS / RUNS))]
    producer.join(timeout=120)
    with daemon(log_stream, state) as (proc, client):
        health = client.health(wait_for=EVENTS, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert (health.checkpoint, health.applied) == (EVENTS, EVENTS), "every event exactly once"
    assert any(0 < p < EVENTS for p in points), f"no kill landed mid-stream: {points}"
    live = state / f"{log_stream.stream}.duckdb"
    assert event_seqs(live) == list(range(1, EVENTS + 1)), "nothing lost, nothing twice"
    expected = fold(history).read_model()
    memory = MemoryStore.load(state / f"{log_stream.stream}.memory.snapshot")
    assert memory.read_model() == expected
    assert opened(live)[0] == expected
    anyio.run(functools.partial(rebuild, log_stream, tmp_path / "rebuilt.duckdb", progress=False))
    assert opened(tmp_path / "rebuilt.duckdb")[0] == expected
    assert not list(state.glob("*.tmp")), "killed snapshot writes leave no temporary files"


def _kill_once(config: LogConfig, state: Path, rng: random.Random) -> int:
    """Start the daemon, SIGKILL it after a random moment; return where its snapshot stood."""
    with daemon(config, state) as (proc, _):
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    return snapshot_checkpoint(state, config.stream)


def _publish_paced(config: LogConfig, events: list[ev.Event]) -> None:
    """Publish in bursts, so the daemon's lives overlap with events still arriving."""
    with SyncPublisher(config) as pub:
        for i, event in enumerate(events):
            pub.publish(event)
            if i % 1000 == 999:
                time.sleep(0.25)


# --- NATS stops and starts under load -----------------------------------------------------------


@pytest.mark.slow
def test_a_nats_restart_under_load_loses_no_event_and_stores_none_twice(
    nats_server: EmbeddedNats, log_stream: LogConfig, tmp_path: Path
) -> None:
    """Producers block while NATS is down (bounded buffer), retry after; the daemon resumes."""
    history = fleet_history(6000, seed=7)
    halves = [history[: len(history) // 2], history[len(history) // 2 :]]
    counts = [0, 0]
    in_flight = 64
    producers = [
        threading.Thread(target=_produce, args=(log_stream, part, counts, i, in_flight))
        for i, part in enumerate(halves)
    ]
    with daemon(log_stream, tmp_path / "state") as (_, client):
        for producer in producers:
            producer.start()
        _wait(lambda: sum(counts) >= 1500)
        nats_server.stop()
        # Until the buffer fills, publishes still return (and acks read before the stop still
        # free slots); once full, a producer must stay blocked for as long as NATS is down.
        time.sleep(0.5)
        blocked = list(counts)
        time.sleep(1.5)
        during = list(counts)
        nats_server.start()
        for producer in producers:
            producer.join(timeout=120)
        health = client.health(wait_for=len(history), timeout=60)
    assert during == blocked, (
        f"publish blocks once {in_flight} events wait for acks: {blocked} -> {during}"
    )
    assert counts == [len(part) for part in halves]
    stored = anyio.run(read_all, log_stream)
    assert sorted(m.event.id for m in stored) == sorted(e.id for e in history), "each once"
    assert (health.checkpoint, health.applied) == (len(history), len(history))


def _produce(
    config: LogConfig, events: list[ev.Event], counts: list[int], slot: int, in_flight: int
) -> None:
    with SyncPublisher(config, max_in_flight=in_flight, ack_timeout=1.0) as pub:
        for event in events:
            pub.publish(event)
            counts[slot] += 1
            if counts[slot] % 200 == 0:
                time.sleep(0.05)  # a steady producer, not a flood: the outage lands mid-run
        pub.flush(timeout=60)


def _wait(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- storage that refuses writes ----------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    argv = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]
    if shutil.which("mount") is None or subprocess.run(argv, check=False).returncode:
        pytest.skip("cannot mount a tmpfs here; test_an_unusable_data_dir covers the code path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_daemon(
    config: LogConfig, data_dir: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`workledger project` to its end (it should end by itself, with an error)."""
    argv = [WORKLEDGER, "project", "--nats", config.servers[0], "--stream", config.stream]
    argv += ["--subject-prefix", config.subject_prefix, "--port", "0", "--data-dir", str(data_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def one_clear_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 1 and an `Error:` line naming the problem; no traceback."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, done.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.mark.slow
def test_a_full_disk_stops_the_daemon_with_one_clear_error(
    log_stream: LogConfig, tiny_disk: Path
) -> None:
    """The DuckDB write fails: the daemon stops and says why, instead of retrying forever."""
    # All stored before the daemon starts, so one hand-over (publish_many) does: 40k separate
    # publish calls cost about 8 s of CPU and change nothing here.
    with SyncPublisher(log_stream) as pub:
        pub.publish_many(fleet_history(40_000, seed=9))
    done = run_daemon(log_stream, tiny_disk / "state", timeout=120)
    one_clear_error(done, "No space left on device")


def test_an_unusable_data_dir_stops_the_daemon_with_one_clear_error(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """A data dir that cannot be created (under a file) fails at once, naming the path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    one_clear_error(run_daemon(log_stream, blocker / "state"), str(blocker))


def test_a_read_only_data_dir_stops_the_daemon_with_one_clear_error(
    log_stream: LogConfig, tiny_disk: Path
) -> None:
    """A read-only file system: one line naming it, at start."""
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    one_clear_error(run_daemon(log_stream, tiny_disk / "state"), "Read-only file system")


# --- the stream goes away, or forgets what the daemon still needs -------------------------------


@pytest.mark.anyio
async def test_a_stream_deleted_under_the_daemon_stops_it_with_a_clear_error(
    log_stream: LogConfig,
) -> None:
    """No hang, no retry loop: StreamNotFoundError saying what happened."""
    await anyio.to_thread.run_sync(_publish_all, log_stream, fleet_history(200, seed=1))
    projector = Projector(ProjectorConfig(log=log_stream, watch_interval=0.1), [MemoryStore()])
    with anyio.fail_after(20), pytest.raises(StreamNotFoundError, match="no longer exists"):
        await _delete_while_running(projector, log_stream)


async def _delete_while_running(projector: Projector, config: LogConfig) -> None:
    async with plain_errors(), anyio.create_task_group() as tg:
        await tg.start(projector.run)
        await projector.wait_for(200)
        await _delete_stream(config)
        await anyio.sleep(10)


@pytest.mark.anyio
async def test_a_stream_recreated_behind_the_read_models_is_refused(
    log_stream: LogConfig,
) -> None:
    """Restarting on a fresh stream with an old checkpoint: GapError, not a silent mix."""
    await anyio.to_thread.run_sync(_publish_all, log_stream, fleet_history(100, seed=1))
    store = MemoryStore()
    await _fold_until(log_stream, store, 100)
    await _delete_stream(log_stream)
    with pytest.raises(GapError, match="deleted and recreated"):
        await Projector(ProjectorConfig(log=log_stream), [store]).run()


@pytest.mark.anyio
async def test_a_consumer_behind_retention_stops_or_counts_what_it_missed(
    log_stream: LogConfig,
) -> None:
    """Messages it needs expired: GapError names them; --allow-gap counts them and carries on."""
    history = fleet_history(300, seed=4)
    await anyio.to_thread.run_sync(_publish_all, log_stream, history[:100])
    store = MemoryStore()
    await _fold_until(log_stream, store, 100)
    await anyio.to_thread.run_sync(_publish_all, log_stream, history[100:])
    await _purge_before(log_stream, 151)  # what a max_age or max_bytes limit does
    with pytest.raises(GapError, match=r"messages 101\.\.150 \(50 messages"):
        await Projector(ProjectorConfig(log=log_stream), [store]).run()
    lenient = Projector(ProjectorConfig(log=log_stream, allow_gap=True), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(lenient.run)
        assert await lenient.wait_for(300, timeout=20)
        tg.cancel_scope.cancel()
    assert (lenient.metrics.missed, store.stats().applied) == (50, 250)


async def _fold_until(config: LogConfig, store: MemoryStore, seq: int) -> None:
    projector = Projector(ProjectorConfig(log=config), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        assert await projector.wait_for(seq, timeout=20)
        tg.cancel_scope.cancel()


async def _delete_stream(config: LogConfig) -> None:
    client = await connect(config)
    try:
        await client.jetstream().delete_stream(config.stream)
    finally:
        await client.close()


async def _purge_before(config: LogConfig, seq: int) -> None:
    client = await connect(config)
    try:
        await client.jetstream().purge_stream(config.stream, seq=seq)
    finally:
        await client.close()
