"""The HTTP API, endpoint by endpoint: in-process over a scripted fleet, and against a real daemon
where the answer depends on NATS (health, metrics, the token a process is started with)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.nats_server import EmbeddedNats
from workledger.http import MAX_LIMIT, create_app
from workledger.projections.views import Quarantined, TaskStatus
from workledger.queries import Queries
from workledger.stores.base import Batch
from workledger.stores.memory import MemoryStore

from .test_cli import workledger
from .test_daemon_process import _publish_all, daemon
from .test_fold import at
from .test_store_contract import batch, fleet, t

Api = TestClient[Any]

# The live feed's routes (workledger.feed, another module) still declare a parameter in a style
# Litestar 2.25 deprecates; this module's own routes do not. Building the app must not fail here.
pytestmark = [
    pytest.mark.filterwarnings(r"ignore:Deprecated '\w+' parameter:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning"),
]


def _history() -> list[ev.Event]:
    """The contract suite's fleet, plus labelled workers and a pool only a waiting task names."""
    return [
        *fleet(),
        ev.WorkerStarted(worker="eu", pool="cpu", labels={"zone": "eu", "gpu": "a"}, **at(26)),
        ev.WorkerStarted(worker="us", pool="cpu", labels={"zone": "us"}, **at(27)),
        ev.TaskSubmitted(task="z", pool="idle", queue="later", **at(28)),
    ]


def _store() -> MemoryStore:
    store = MemoryStore()
    store.apply(batch(_history()))
    bad = [
        Quarantined(seq=100 + s, subject="s", reason=f"bad {s}", data=b"", size=0) for s in range(5)
    ]
    store.apply(Batch(quarantined=bad, last_seq=200))
    return store


@pytest.fixture
def clock() -> list[datetime]:
    """The API's clock, which a test moves by assigning ``clock[0]``."""
    return [t(31)]


@pytest.fixture
def api(clock: list[datetime]) -> Iterator[Api]:
    """An in-process API over the scripted fleet, its clock at 31 s."""
    with TestClient(create_app(Queries(_store(), clock=lambda: clock[0]))) as client:
        yield client


def _names(found: list[dict[str, Any]]) -> list[str]:
    return [w["worker"]["worker"] for w in found]


# --- workers ---------------------------------------------------------------------------------


def test_workers_are_newest_seen_first_and_filter_by_pool_queue_keys_labels_and_status(
    api: Api,
) -> None:
    """Each filter narrows; task keys match ANY, labels must ALL match."""
    get = lambda query="": api.get(f"/v1/workers{query}").json()  # noqa: E731
    assert _names(get()) == ["g2", "us", "eu", "g1", "c1"]
    assert _names(get("?pool=gpu")) == ["g2", "g1"]
    assert _names(get("?queue=bulk&pool=cpu")) == ["us", "eu", "c1"]
    assert _names(get("?task_key=train&task_key=etl")) == ["g1", "c1"]
    assert _names(get("?label=zone:eu")) == ["eu"]
    assert _names(get("?label=zone:eu&label=gpu:a")) == ["eu"]
    assert _names(get("?label=zone:eu&label=gpu:b")) == []
    assert _names(get("?status=STOPPED")) == ["g1"]
    assert _names(get("?limit=2")) == ["g2", "us"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (f"/v1/workers?limit={MAX_LIMIT + 1}", f"limit: Expected `int` <= {MAX_LIMIT}"),
        ("/v1/workers?limit=0", "limit: Expected `int` >= 1"),
        ("/v1/workers?limit=many", "limit: Expected `int`"),
        ("/v1/workers?status=ASLEEP", "status: Invalid enum value 'ASLEEP'"),
        ("/v1/workers?label=zone", "'zone' must be key:value"),
        ("/v1/workers?pool=", "pool: Expected `str` of length >= 1"),
        ("/v1/tasks?status=DONE", "status: Invalid enum value 'DONE'"),
        (f"/v1/tasks/recent?limit={MAX_LIMIT + 1}", "limit"),
        ("/v1/quarantine?after_seq=-1", "after_seq: Expected `int` >= 0"),
        ("/v1/utilization?bucket=5x", "bad span '5x'"),
        ("/v1/checkpoint?timeout=61", "timeout"),
    ],
)
def test_every_invalid_parameter_is_a_422_naming_it(api: Api, path: str, message: str) -> None:
    """One rule for every route: 422, the problem body, and a detail a person can act on."""
    reply = api.get(path)
    assert reply.status_code == 422, reply.text
    assert reply.json()["status_code"] == 422
    assert message in reply.json()["detail"]


def test_the_openapi_document_promises_422_on_every_route_that_takes_input(
    api: Api,
) -> None:
    """Clients and fuzzers learn the rule from the schema."""
    paths = api.get("/schema/openapi.json").json()["paths"]
    for path, methods in paths.items():
        for method, operation in methods.items():
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in operation["responses"], (method, path)


def test_repeatable_parameters_are_documented_as_arrays_and_take_one_value_too(
    api: Api,
) -> None:
    """``task_key`` and ``label`` are plain arrays (not ``oneOf`` array/null, which fuzzers read
    as "a single value is invalid"), and a single ``task_key=x`` is a one-element array."""
    parameters = api.get("/schema/openapi.json").json()["paths"]["/v1/workers"]["get"]
    schemas = {p["name"]: p["schema"] for p in parameters["parameters"]}
    for name in ("task_key", "label"):
        assert schemas[name]["type"] == "array", name
        assert "oneOf" not in schemas[name], name
    one = api.get("/v1/workers", params={"task_key": "etl"})
    assert one.status_code == 200
    assert _names(one.json()) == ["c1"]


# --- Prefect's task-worker filter ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/workers/filter", "/v1/workers/filter"])
def test_prefects_filter_body_selects_workers_with_any_of_the_keys(api: Api, path: str) -> None:
    """Same semantics as task_key, in Prefect's body and answer shape."""
    body = {"task_worker_filter": {"task_keys": ["train", "etl"]}}
    reply = api.post(path, json=body)
    assert reply.status_code == 200
    assert [(w["identifier"], w["task_keys"]) for w in reply.json()] == [
        ("g1", ["train"]),
        ("c1", ["etl"]),
    ]
    first = reply.json()[0]
    assert set(first) == {"identifier", "task_keys", "timestamp", "pool", "status"}
    assert first["timestamp"] == t(25).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "body",
    [None, {}, {"task_worker_filter": None}, {"task_worker_filter": {"task_keys": []}}],
)
def test_prefects_filter_without_keys_lists_every_worker(api: Api, body: Any) -> None:
    """An absent filter, or no keys, means all workers (then ?status= narrows)."""
    reply = (
        api.post("/workers/filter", json=body) if body is not None else api.post("/workers/filter")
    )
    assert len(reply.json()) == 5
    online = api.post("/workers/filter?status=ONLINE", json=body)
    assert {w["status"] for w in online.json()} == {"ONLINE"}


def test_a_malformed_prefect_body_is_a_4xx_with_a_message(api: Api) -> None:
    """Wrong types are 422 naming the field; text that is not JSON is a 400."""
    wrong = api.post("/workers/filter", json={"task_worker_filter": {"task_keys": "train"}})
    assert wrong.status_code == 422
    assert "task_worker_filter.task_keys: Expected `array`" in wrong.json()["detail"]
    garbled = api.post("/workers/filter", content=b"{nope")
    assert garbled.status_code == 400
    assert "malformed" in garbled.json()["detail"]


# --- tasks, slots, pools, queues, quarantine -----------------------------------------------------


def test_a_task_is_found_by_id_and_an_unknown_one_is_a_404_saying_so(api: Api) -> None:
    """Ids with slashes and spaces work; the 404 names the id."""
    assert api.get("/v1/tasks/a").json()["status"] == "RUNNING"
    missing = api.get("/v1/tasks/no%2Fsuch%20task")
    assert missing.status_code == 404
    assert "no task 'no/such task'" in missing.json()["detail"]


def test_tasks_filter_by_status_and_recent_lists_finished_ones_newest_first(
    api: Api,
) -> None:
    """/v1/tasks?status= uses the fold's status; /v1/tasks/recent only terminal tasks."""
    pending = api.get("/v1/tasks?status=PENDING").json()
    assert sorted(task["task"] for task in pending) == ["b", "orphan"]
    assert [task["task"] for task in api.get("/v1/tasks/recent").json()] == ["c"]


def test_recent_tasks_mix_every_terminal_status_by_finish_time_with_a_limit() -> None:
    """Completed, failed and cancelled tasks interleave by when they finished."""
    store = MemoryStore()
    store.apply(
        batch(
            [
                ev.TaskCompleted(task="done", **at(5)),
                ev.TaskFailed(task="failed", **at(9)),
                ev.TaskCancelled(task="cancelled", **at(7)),
                ev.TaskStarted(task="running", worker="w", **at(10)),
            ]
        )
    )
    with TestClient(create_app(Queries(store))) as client:
        found = client.get("/v1/tasks/recent?limit=2").json()
    assert [(task["task"], task["status"]) for task in found] == [
        ("failed", "FAILED"),
        ("cancelled", "CANCELLED"),
    ]


def test_slots_give_holders_and_bulk_counts_per_pool_and_queue(api: Api) -> None:
    """Every holder with its worker, and each pool's total before its queues."""
    found = api.get("/v1/slots").json()
    assert sorted(h["task"] for h in found["holders"]) == ["a", "b", "e", "orphan"]
    counts = [(c["pool"], c["queue"], c["held"]) for c in found["counts"]]
    assert counts == [
        ("cpu", None, 1),
        ("gpu", None, 3),
        ("gpu", "fast", 1),
        ("gpu", "slow", 1),
    ]


def test_pools_and_queues_are_ready_not_ready_or_paused_by_the_api_clock(
    api: Api, clock: list[datetime]
) -> None:
    """READY with an ONLINE worker serving it, PAUSED when paused, NOT_READY otherwise."""
    pools = {p["pool"]: p["status"] for p in api.get("/v1/pools").json()}
    assert pools == {"cpu": "READY", "gpu": "PAUSED", "idle": "NOT_READY"}
    queues = {(q["pool"], q["queue"]): q["status"] for q in api.get("/v1/queues").json()}
    assert queues == {
        ("cpu", "bulk"): "READY",
        ("gpu", "fast"): "PAUSED",  # its pool is paused
        ("gpu", "slow"): "PAUSED",
        (
            "idle",
            "later",
        ): "NOT_READY",  # named only by a waiting task: nobody serves it
    }
    clock[0] = t(31 + 30 * 3 + 1)  # every worker's heartbeat grace is over
    pools = {p["pool"]: p["status"] for p in api.get("/v1/pools").json()}
    assert pools == {"cpu": "NOT_READY", "gpu": "PAUSED", "idle": "NOT_READY"}


def test_pool_status_counts_workers_online_and_slots(api: Api) -> None:
    """cpu: c1, eu and us online with 3 + 1 + 1 slots, one held."""
    cpu = next(p for p in api.get("/v1/pools").json() if p["pool"] == "cpu")
    assert (cpu["workers"], cpu["workers_online"], cpu["slots_online"]) == (3, 3, 5)
    assert cpu["slots_held"] == 1
    assert [q["queue"] for q in api.get("/v1/queues?pool=gpu").json()] == [
        "fast",
        "slow",
    ]


def test_quarantined_messages_page_by_sequence_newest_first(api: Api) -> None:
    """limit, after_seq (newer than) and before_seq (older than)."""
    seqs = lambda query: [q["seq"] for q in api.get(f"/v1/quarantine{query}").json()]  # noqa: E731
    assert seqs("") == [104, 103, 102, 101, 100]
    assert seqs("?limit=2") == [104, 103]
    assert seqs("?before_seq=103&limit=2") == [102, 101]
    assert seqs("?after_seq=102") == [104, 103]


# --- operations: metrics, health, token ----------------------------------------------------------


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_are_prometheus_text_with_store_and_http_series(api: Api) -> None:
    """Parsed by prometheus_client's own parser; request counts by route template."""
    api.get("/v1/tasks/a")
    reply = api.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = _families(reply.text)
    assert families["workledger_store_checkpoint"].samples[0].labels == {"store": "memory"}
    assert families["workledger_store_checkpoint"].samples[0].value == 200
    routes = {s.labels["route"] for s in families["workledger_http_requests"].samples}
    assert "/v1/tasks/{task_id}" in routes
    assert {"workledger_fold_seconds", "workledger_consumer_lag"} <= set(families)


def test_a_token_is_required_on_every_route_but_healthz_when_configured() -> None:
    """401 with a WWW-Authenticate challenge without it or with another; 200 with it."""
    app = create_app(Queries(_store()), api_token="s3cret")
    with TestClient(app) as client:
        refused = client.get("/v1/workers")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/schema/openapi.json").status_code == 401
        ok = client.get("/v1/workers", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 503  # public, and no NATS here


def test_the_page_signs_in_once_for_a_cookie_that_admits_it_in_place_of_the_header() -> None:
    """``POST /v1/session`` with the right token sets an HttpOnly, same-site cookie that is not
    the token and admits every route (the feed too); a wrong token or a forged cookie does
    not; ``DELETE /v1/session`` signs out."""
    app = create_app(Queries(_store()), api_token="s3cret")
    with TestClient(app) as client:
        wrong = client.post("/v1/session", headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, "set-cookie" in wrong.headers) == (401, False)
        client.cookies.set("workledger_session", "forged")
        assert client.get("/v1/workers").status_code == 401
        client.cookies.clear()
        signed = client.post("/v1/session", headers={"Authorization": "Bearer s3cret"})
        assert signed.status_code == 204
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        assert "s3cret" not in cookie
        assert client.get("/v1/workers").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.delete("/v1/session").status_code == 204
        assert client.get("/v1/workers").status_code == 401


def test_without_a_token_signing_in_sets_no_cookie() -> None:
    """Nothing to sign in to: 204, and every route answers without a cookie anyway."""
    with TestClient(create_app(Queries(_store()))) as client:
        signed = client.post("/v1/session")
        assert (signed.status_code, "set-cookie" in signed.headers) == (204, False)
        assert client.get("/v1/workers").status_code == 200


def _metric(base_url: str, name: str, headers: dict[str, str]) -> float:
    text = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10).text
    return float(_families(text)[name].samples[0].value)


def test_a_real_daemon_reports_health_metrics_and_wants_its_token(
    log_stream: LogConfig,
    tmp_path: Path,
    nats_server: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connected: 200 with the checkpoint; the events counted; 401 without the token; then
    NATS goes away and /healthz turns 503 while the daemon keeps answering queries."""
    history = _history()
    _publish_all(log_stream, history)
    stored = len({e.id for e in history})  # two events share an id: the stream keeps one
    monkeypatch.setenv("WORKLEDGER_API_TOKEN", "t0ken")  # the daemon's, and the Client's
    auth = {"Authorization": "Bearer t0ken"}
    with daemon(log_stream, tmp_path) as (_, client):
        client.health(wait_for=stored, timeout=5)
        health = httpx.get(f"{client.base_url}/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json()["nats_connected"] is True
        assert health.json()["store_checkpoints"]["memory"] == stored
        assert _metric(client.base_url, "workledger_events_applied", auth) == stored
        assert _metric(client.base_url, "workledger_nats_connected", auth) == 1
        assert httpx.get(f"{client.base_url}/v1/pools", timeout=10).status_code == 401
        assert {p.pool for p in client.pools()} == {"cpu", "gpu", "idle"}
        nats_server.stop()
        assert _eventually_503(f"{client.base_url}/healthz")
        assert client.workers(labels={"zone": "eu"})[0].worker.worker == "eu"


def test_a_pool_daemon_counts_the_pool_less_events_it_skips(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """`project --pools cpu`: a completion without a pool completes its cpu task; the gpu
    task's is another partition's, skipped and counted in /metrics."""
    history = [
        ev.TaskSubmitted(id="s1", at=t(1), task="t1", pool="cpu", queue="q"),
        ev.TaskSubmitted(id="s2", at=t(1), task="t2", pool="gpu", queue="q"),
        ev.TaskCompleted(id="c2", at=t(1), task="t2"),
        ev.TaskCompleted(id="c1", at=t(1), task="t1"),
    ]
    _publish_all(log_stream, history)
    with daemon(log_stream, tmp_path, "--pools", "cpu") as (_, client):
        assert client.health(wait_for=4, timeout=10).checkpoint == 4
        assert _metric(client.base_url, "workledger_events_skipped", {}) == 1
        assert _metric(client.base_url, "workledger_events_applied", {}) == 2
        completed = client.task("t1")
        assert completed is not None
        assert completed.status is TaskStatus.COMPLETED
        assert client.task("t2") is None


def _eventually_503(url: str, within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if httpx.get(url, timeout=5).status_code == 503:
            return True
        time.sleep(0.1)
    return False


def test_the_cli_shows_pools_and_queues_with_status_and_sends_the_token(
    log_stream: LogConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`workledger pools` as a table and as JSON; without the token it says what to do."""
    history = _history()
    _publish_all(log_stream, history)
    monkeypatch.setenv("WORKLEDGER_API_TOKEN", "t0ken")
    with daemon(log_stream, tmp_path) as (_, client):
        client.health(wait_for=len({e.id for e in history}), timeout=5)
        table = workledger("pools", "--api", client.base_url)
        assert table.returncode == 0, table.stderr
        assert "PAUSED" in table.stdout
        assert "NOT_READY" in table.stdout
        monkeypatch.delenv("WORKLEDGER_API_TOKEN")
        refused = workledger("pools", "--api", client.base_url)
        assert refused.returncode == 1
        assert "wants an API token" in refused.stderr
        labelled = workledger(
            "workers",
            "--label",
            "zone:us",
            "--json",
            "--api",
            client.base_url,
            "--api-token",
            "t0ken",
        )
        assert '"worker": "us"' in labelled.stdout, labelled.stderr
        for argv in (("utilization", "--by", "pool", "--json"), ("pools", "--json")):
            answered = workledger(*argv, "--api", client.base_url, "--api-token", "t0ken")
            assert answered.returncode == 0, answered.stderr  # every API command takes it
    assert "WORKLEDGER_API_TOKEN" not in os.environ


def test_the_api_benchmark_runs_on_a_tiny_fleet() -> None:
    """benchmarks/api.py prints a row per endpoint; timings are its business, not a test's."""
    script = Path(__file__).parent.parent / "benchmarks" / "api.py"
    result = subprocess.run(
        [sys.executable, str(script), "--workers", "40", "--tasks", "200", "--requests", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GET /v1/pools" in result.stdout
