"""Utilization through the query service, the HTTP API and the CLI of a real daemon."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.queries import Queries
from workledger.stores.memory import MemoryStore

from .test_cli import workledger
from .test_daemon_process import _publish_all, daemon
from .test_fold import fold

MINUTE = timedelta(minutes=1)


def fleet(base: datetime) -> list[ev.Event]:
    """Two workers in etl; a completes, b fails, c retries then keeps running."""

    def at(minutes: float) -> dict[str, Any]:
        return {"at": base + minutes * MINUTE}

    events: list[ev.Event] = [
        ev.WorkerStarted(worker="w1", pool="etl", slots=2, **at(0)),
        ev.WorkerStarted(worker="w2", pool="etl", slots=1, queues=("fast",), **at(0)),
        ev.TaskSubmitted(task="a", pool="etl", queue="slow", **at(1)),
        ev.TaskClaimed(task="a", worker="w1", **at(1)),
        ev.TaskStarted(task="a", worker="w1", **at(2)),
        ev.TaskCompleted(task="a", **at(12)),
        ev.TaskSubmitted(task="b", pool="etl", queue="fast", **at(5)),
        ev.TaskStarted(task="b", worker="w2", **at(5)),
        ev.TaskFailed(task="b", **at(8)),
        ev.TaskSubmitted(task="c", pool="etl", queue="slow", **at(10)),
        ev.TaskStarted(task="c", worker="w1", **at(10)),
        ev.TaskRetrying(task="c", **at(15)),
        ev.TaskStarted(task="c", worker="w1", **at(16)),
        ev.WorkerStopped(worker="w2", pool="etl", **at(20)),
        ev.WorkerHeartbeat(worker="w1", pool="etl", **at(25)),
    ]
    return [msgspec.structs.replace(e, id=f"fleet-{i:02d}") for i, e in enumerate(events)]


def test_queries_default_to_the_last_hour_of_its_own_clock_and_parse_text() -> None:
    """until = now, since = until - 1h; '-30m' and '5m' are read against the service's clock."""
    base = datetime(2026, 3, 1, 12, tzinfo=UTC)
    store = fold(fleet(base))
    now = base + 40 * MINUTE
    queries = Queries(store, clock=lambda: now)
    assert queries.utilization(by="worker") == store.utilization(
        by="worker", since=now - 60 * MINUTE, until=now, now=now
    )
    assert queries.utilization(by="queue", since="-30m", bucket="5m") == store.utilization(
        by="queue", since=now - 30 * MINUTE, until=now, now=now, bucket=5 * MINUTE
    )
    with pytest.raises(ValueError, match="bad span"):
        queries.utilization(bucket="5 minutes")


def test_the_http_api_and_the_cli_answer_utilization_from_a_running_daemon(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """Same rows over HTTP, as CLI JSON and as a table, as the store computes from the events."""
    base = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    history = fleet(base)
    _publish_all(log_stream, history)
    since, until = base, base + 30 * MINUTE  # all in the past: open stretches stop at until
    expected = fold(history).utilization(
        by="pool", since=since, until=until, now=until, bucket=10 * MINUTE
    )
    busy = (10 + 3 + 5 + 14) * 60
    capacity = 2 * 26.5 * 60 + 1 * 20 * 60  # w1 online to last seen + 3 x 30s; w2 to its stop
    assert sum(r.busy_seconds for r in expected) == busy
    assert sum(r.capacity_seconds or 0 for r in expected) == capacity
    with daemon(log_stream, tmp_path) as (_, client):
        client.health(wait_for=len(history), timeout=10)
        rows = client.utilization(by="pool", since=since, until=until, bucket="10m")
        assert rows == expected
        api = ["--api", client.base_url, "--since", since.isoformat(), "--until", until.isoformat()]
        out = workledger("utilization", "--by", "pool", "--bucket", "10m", "--json", *api)
        assert json.loads(out.stdout) == msgspec.to_builtins(expected)
        table = workledger("utilization", "--by", "queue", *api)
        assert table.returncode == 0, table.stderr
        assert "slow" in table.stdout
        assert "fast" in table.stdout
        relative = workledger("utilization", "--since", "-3h", "--json", "--api", client.base_url)
        assert [r["group"] for r in json.loads(relative.stdout)] == ["etl"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("bucket=5x", "bad span '5x'"),
        ("since=yesterday", "bad time 'yesterday'"),
        ("since=-1h&until=-2h", "must be before until"),
        ("since=-30d&bucket=1s", "at most 20000"),
        ("by=colour", "by"),
    ],
)
def test_bad_utilization_parameters_get_a_422_with_the_reason(
    log_stream: LogConfig, tmp_path: Path, query: str, message: str
) -> None:
    """Never a 500: the reply says what was wrong."""
    with daemon(log_stream, tmp_path) as (_, client):
        reply = httpx.get(f"{client.base_url}/v1/utilization?{query}", timeout=10)
        assert reply.status_code == 422
        assert message in reply.text


def test_a_bad_cli_bucket_is_refused_before_asking_the_daemon() -> None:
    """The option check names the option and the expected format; no daemon is needed."""
    result = workledger("utilization", "--bucket", "fortnight", "--api", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "Invalid value for '--bucket'" in result.stderr
    assert "like 30s, 5m, 1h or 1d" in result.stderr


def test_utilization_needs_no_events_to_answer() -> None:
    """An empty store answers with no rows rather than an error."""
    assert Queries(MemoryStore()).utilization(by="stage", bucket="1h") == []
