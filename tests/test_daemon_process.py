"""The daemon as users run it: a `workledger project` process, killed and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest

from workledger.client import Client
from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.publisher import SyncPublisher

from .histories import fleet_history
from .test_fold import fold

WORKLEDGER = str(Path(sys.executable).with_name("workledger"))


@contextmanager
def daemon(
    config: LogConfig, data_dir: Path, *options: str
) -> Iterator[tuple[subprocess.Popen[str], Client]]:
    """Start `workledger project` on a free port; yield the process and a client of its API."""
    argv = [
        WORKLEDGER,
        "project",
        "--nats",
        config.servers[0],
        "--stream",
        config.stream,
        "--subject-prefix",
        config.subject_prefix,
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--snapshot-interval",
        "0.05",
        *options,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "API http://" in line, proc.stderr.read()  # type: ignore[union-attr]
        with Client(line.split("API ")[1].split(",")[0]) as client:
            yield proc, client
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def everything(client: Client) -> dict[str, object]:
    """What a user can read back, minus the clock-dependent status."""
    workers = [w.worker for w in client.workers(limit=10_000)]
    return {
        "tasks": sorted(msgspec.to_builtins(client.tasks(limit=10_000)), key=lambda t: t["task"]),
        "workers": sorted(msgspec.to_builtins(workers), key=lambda w: w["worker"]),
        "slots": msgspec.to_builtins(client.slots()),
    }


def expected(history: list[ev.Event]) -> dict[str, object]:
    store = fold(history)
    return {
        "tasks": msgspec.to_builtins(store.read_model().tasks),
        "workers": msgspec.to_builtins(store.read_model().workers),
        "slots": msgspec.to_builtins(
            {"holders": store.slot_holders(), "counts": store.slot_counts()}
        ),
    }


@pytest.mark.slow
def test_a_daemon_killed_mid_stream_resumes_with_nothing_lost_and_nothing_applied_twice(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """SIGKILL while events stream in; after a restart the model equals one built from scratch."""
    history = fleet_history(20_000, seed=3)
    publisher = threading.Thread(target=_publish_all, args=(log_stream, history))
    with daemon(log_stream, tmp_path / "state") as (proc, client):
        publisher.start()
        _wait(lambda: client.health().checkpoint >= 4000)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = msgspec.msgpack.decode(
        (tmp_path / "state" / f"{log_stream.stream}.memory.snapshot").read_bytes()
    )["checkpoint"]
    publisher.join(timeout=60)
    with daemon(log_stream, tmp_path / "state") as (_, client):
        health = client.health(wait_for=len(history), timeout=30)
        assert health.checkpoint == len(history)
        assert health.applied == len(history), "every event applied exactly once"
        assert 0 < killed_at < len(history), "the kill landed mid-stream"
        assert everything(client) == expected(history)


def test_sigterm_stops_the_daemon_cleanly_and_it_resumes_from_its_snapshot(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """A graceful stop writes a final snapshot; the next start reads nothing twice."""
    history = fleet_history(500, seed=5)
    _publish_all(log_stream, history)
    with daemon(log_stream, tmp_path / "state") as (proc, client):
        client.health(wait_for=len(history), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    with daemon(log_stream, tmp_path / "state") as (_, client):
        health = client.health()
        assert (health.checkpoint, health.applied) == (len(history), len(history))
        assert everything(client) == expected(history)


def _publish_all(config: LogConfig, events: list[ev.Event]) -> None:
    with SyncPublisher(config) as pub:
        for event in events:
            pub.publish(event)


def _wait(condition: object, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)
