"""The live change feed: the broadcaster in-process, then ``GET /v1/feed`` and ``workledger tail``
against a real daemon and nats-server."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import pytest
import uvicorn

from workledger.cli_tail import _messages
from workledger.core import events as ev
from workledger.core.log import LogConfig
from workledger.core.publisher import SyncPublisher
from workledger.http import create_app
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.projections.feed import Feed, FeedFilter, Gap
from workledger.queries import Queries
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore

from .conftest import free_port
from .histories import fleet_history
from .test_daemon_process import WORKLEDGER

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> dict[str, Any]:
    return {"at": BASE + timedelta(seconds=seconds), "id": f"e{seconds}"}


def story() -> list[ev.Event]:
    """Two pools; a task that completes naming neither pool nor worker (its view does)."""
    return [
        ev.WorkerStarted(worker="w1", pool="etl", slots=2, **at(1)),
        ev.WorkerStarted(worker="g1", pool="gpu", **at(2)),
        ev.TaskSubmitted(task="t1", pool="etl", queue="ingest", **at(3)),
        ev.TaskClaimed(task="t1", worker="w1", **at(4)),
        ev.TaskSubmitted(task="t2", pool="gpu", queue="train", **at(5)),
        ev.TaskClaimed(task="t2", worker="g1", **at(6)),
        ev.TaskCompleted(task="t1", **at(7)),
        ev.PoolUpdated(pool="etl", paused=True, **at(8)),
    ]


class Fed:
    """A MemoryStore and a Feed over it, fed the way the Projector feeds them."""

    def __init__(self, *, ring: int = 100, buffer: int = 100) -> None:
        self.store = MemoryStore()
        self.feed = Feed(
            self.store, clock=lambda: BASE + timedelta(seconds=10), multiplier=3.0, ring=ring,
            buffer=buffer,
        )  # fmt: skip
        self.seq = 0

    def apply(self, events: Sequence[ev.Event]) -> None:
        items = [Sequenced(self.seq + i + 1, "subject", e) for i, e in enumerate(events)]
        self.seq += len(items)
        batch = Batch(events=items, last_seq=self.seq)
        self.store.apply(batch)
        self.feed.publish(batch)


async def drain(feed: Feed, where: FeedFilter, after: int | None = None) -> list[tuple[int, str]]:
    """Every item a new subscriber gets at once: (seq, type)."""
    sub = feed.subscribe(where, after=after)
    got = await sub.next(0.01, most=10_000)
    feed.unsubscribe(sub)
    return [(e.seq, e.event.type) for e in got]


# --- the broadcaster ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_subscriber_gets_every_applied_event_in_order_with_its_entitys_view() -> None:
    """Items carry seq, type, ids completed from the read model, and the entity's view."""
    fed = Fed()
    sub = fed.feed.subscribe(FeedFilter())
    fed.apply(story())
    items = [fed.feed.item(e) for e in await sub.next(0.01)]
    assert [i.seq for i in items] == list(range(1, 9))
    done = items[6]
    assert (done.type, done.task, done.worker, done.pool, done.queue) == (
        "task.completed", "t1", "w1", "etl", "ingest"
    )  # fmt: skip
    assert done.view is not None
    assert done.view.status == "COMPLETED"  # type: ignore[union-attr]
    worker = items[0].view
    assert worker.status == "ONLINE"  # type: ignore[union-attr]
    assert worker.free_slots == 2  # type: ignore[union-attr]
    assert items[7].view.paused is True  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_filters_match_by_pool_worker_task_queue_and_type_prefix() -> None:
    """Every given filter must match; a type matches by prefix; missing ids come from the
    views as they are now (t1's submission counts as w1's: w1 holds it)."""
    fed = Fed()
    fed.apply(story())

    async def seqs(**where: Any) -> list[int]:
        return [seq for seq, _ in await drain(fed.feed, FeedFilter(**where), after=0)]

    assert await seqs(pool="etl") == [1, 3, 4, 7, 8]
    assert await seqs(worker="w1") == [1, 3, 4, 7]
    assert await seqs(task="t2") == [5, 6]
    assert await seqs(queue="train") == [5, 6]
    assert await seqs(types=("task.",), pool="gpu") == [5, 6]
    assert await seqs(types=("worker.", "pool.updated")) == [1, 2, 8]
    assert await seqs(types=("task.completed",), worker="g1") == []


def test_a_type_that_is_no_event_type_nor_a_prefix_is_refused_with_the_known_ones() -> None:
    """A typo is an error that lists what exists, not a silent empty feed."""
    with pytest.raises(ValueError, match=r"'tsak\.' is no event type .*task\.claimed"):
        FeedFilter(types=("tsak.",))


@pytest.mark.anyio
async def test_resuming_after_a_sequence_replays_what_the_ring_holds_then_goes_live() -> None:
    """After seq N: the ring's events past N first, then live events, nothing twice."""
    fed = Fed()
    fed.apply(story()[:4])
    sub = fed.feed.subscribe(FeedFilter(), after=2)
    fed.apply(story()[4:6])
    got = [e.seq for e in await sub.next(0.01)] + [e.seq for e in await sub.next(0.01)]
    assert got == [3, 4, 5, 6]
    assert sub.gap is None


@pytest.mark.anyio
async def test_resuming_from_before_the_ring_reports_the_gap_then_sends_what_it_has() -> None:
    """Events evicted from the ring are reported as a gap, never silently skipped."""
    fed = Fed(ring=3)
    fed.apply(story())
    sub = fed.feed.subscribe(FeedFilter(), after=1)
    assert sub.gap == Gap(after=1, until=5)
    assert [e.seq for e in await sub.next(0.01)] == [6, 7, 8]


@pytest.mark.anyio
async def test_a_subscriber_that_falls_behind_is_dropped_not_waited_for() -> None:
    """Past its buffer it is marked lagged and detached; publishing stays O(batch)."""
    fed = Fed(buffer=5)
    sub = fed.feed.subscribe(FeedFilter())
    fed.apply(story()[:4])
    assert not sub.lagged
    fed.apply(story()[4:])
    assert sub.lagged
    assert fed.feed.subscribers == 0
    assert await sub.next(0.01) == []


@pytest.mark.anyio
async def test_events_the_store_had_before_the_feed_existed_are_not_sent_again() -> None:
    """A daemon catching a second store up re-reads old events: the feed skips them."""
    fed = Fed()
    fed.apply(story()[:4])
    late = Feed(fed.store, clock=lambda: BASE, multiplier=3.0)
    sub = late.subscribe(FeedFilter(), after=0)
    assert sub.gap == Gap(after=0, until=4)
    late.publish(Batch(events=[Sequenced(4, "s", story()[3])], last_seq=4))
    fed.apply(story()[4:5])
    late.publish(Batch(events=[Sequenced(5, "s", story()[4])], last_seq=5))
    assert [e.seq for e in await sub.next(0.01)] == [5]


# --- the HTTP route in-process -------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_route_sends_keep_alives_and_unsubscribes_a_client_that_hangs_up() -> None:
    """Comments keep an idle stream open; a disconnect leaves no subscriber behind."""
    store = MemoryStore()
    projector = Projector(ProjectorConfig(), [store])
    app = create_app(Queries(store, projector=projector))
    (publish_to_feed,) = projector.live_listeners
    live: Feed = publish_to_feed.__self__  # type: ignore[attr-defined]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/feed"
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        async with httpx.AsyncClient(timeout=10) as client:
            await _until_answered(client, url)
            async with client.stream("GET", url, params={"heartbeat": 0.1}) as response:
                lines = response.aiter_lines()
                assert await anext(lines) == "event: ready"
                assert live.subscribers == 1
                with anyio.fail_after(5):
                    while await anext(lines) != ": keep-alive":
                        pass
        await _eventually(lambda: live.subscribers == 0)
        server.should_exit = True


async def _until_answered(client: httpx.AsyncClient, url: str) -> None:
    """The server is up once a request (a cheap refused one) gets any answer."""

    async def answered() -> bool:
        try:
            await client.get(url, params={"type": "nope"})
        except httpx.TransportError:
            return False
        return True

    with anyio.fail_after(10):
        while not await answered():  # noqa: ASYNC110 (polling another server)
            await anyio.sleep(0.02)


async def _eventually(condition: Callable[[], bool], timeout: float = 5) -> None:  # noqa: ASYNC109
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 (nothing to wait on from outside)
            await anyio.sleep(0.01)


# --- the daemon's /v1/feed -----------------------------------------------------------------------


@contextmanager
def daemon(
    config: LogConfig, data_dir: Path, port: int = 0, api_token: str | None = None
) -> Iterator[tuple[Any, str]]:
    """`workledger project` on ``port``; yields the process and its API's base URL."""
    argv = [WORKLEDGER, "project", "--nats", config.servers[0], "--stream", config.stream]
    argv += ["--subject-prefix", config.subject_prefix, "--port", str(port)]
    argv += ["--data-dir", str(data_dir), "--snapshot-interval", "0.2"]
    env = os.environ | ({"WORKLEDGER_API_TOKEN": api_token} if api_token else {})
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "API http://" in line, proc.stderr.read()  # type: ignore[union-attr]
        yield proc, line.split("API ")[1].split(",")[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def _until(lines: Iterable[str], deadline: float) -> Iterator[str]:
    """Lines, failing the test at the deadline (keep-alives arrive every 0.2 s)."""
    for line in lines:
        assert time.monotonic() < deadline, "the feed did not deliver in time"
        yield line


@contextmanager
def feed(api: str, timeout: float = 20, **params: Any) -> Iterator[Iterator[Any]]:
    """Subscribe; yields the messages after ``ready`` (so what is published next arrives)."""
    query = {"heartbeat": 0.2} | params
    with httpx.stream("GET", f"{api}/v1/feed", params=query, timeout=10) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = _messages(_until(response.iter_lines(), time.monotonic() + timeout))
        assert next(messages).event == "ready"
        yield messages


def take(messages: Iterator[Any], count: int) -> list[dict[str, Any]]:
    """The next ``count`` items (notices skipped)."""
    items = []
    for message in messages:
        if message.event == "message":
            item = json.loads(message.data)
            assert message.id == str(item["seq"])
            items.append(item)
            if len(items) == count:
                break
    return items


def publish(config: LogConfig, events: Sequence[ev.Event]) -> list[int]:
    """Publish in order; the stream sequences."""
    with SyncPublisher(config) as pub:
        return [pub.publish_and_wait(e) for e in events]


def test_the_daemon_streams_filtered_events_in_order_as_server_sent_events(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """pool= and type= filter the live stream; items come in stream order with their views."""
    with daemon(log_stream, tmp_path) as (_, api), feed(api, pool="etl", type="task.") as got:
        seqs = publish(log_stream, story())
        items = take(got, 3)
    assert [(i["seq"], i["type"], i["task"]) for i in items] == [
        (seqs[2], "task.submitted", "t1"),
        (seqs[3], "task.claimed", "t1"),
        (seqs[6], "task.completed", "t1"),
    ]
    assert items[2]["view"]["status"] == "COMPLETED"
    assert (items[2]["worker"], items[2]["queue"]) == ("w1", "ingest")


def test_only_the_last_event_of_an_envelope_carries_the_sse_id(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """Events of one envelope share a sequence; an id on the first would let a client that
    resumes from it skip the rest, so only the last one has it."""
    story = [
        ev.WorkerStarted(worker=f"w{i}", pool="etl", at=datetime(2026, 1, 1, tzinfo=UTC))
        for i in range(3)
    ]
    with daemon(log_stream, tmp_path) as (_, api), feed(api, pool="etl") as got:
        with SyncPublisher(log_stream, batch_size=3, linger=60) as pub:
            for event in story:
                pub.publish(event)
            pub.flush()
        messages = list(islice((m for m in got if m.event == "message"), len(story)))
    seqs = {json.loads(m.data)["seq"] for m in messages}
    assert len(seqs) == 1, "one envelope, one sequence"
    assert [m.id for m in messages] == [None, None, str(seqs.pop())]


def test_a_client_resumes_after_a_sequence_with_last_event_id_or_after(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """The later of ?after and Last-Event-ID wins; what follows it is replayed, then live."""
    seqs = publish(log_stream, story())
    with daemon(log_stream, tmp_path) as (_, api):
        httpx.get(f"{api}/v1/checkpoint", params={"wait_for": seqs[-1], "timeout": 10})
        with feed(api, after=seqs[5]) as got:
            assert [i["seq"] for i in take(got, 2)] == seqs[6:8]
        headers = {"Last-Event-ID": str(seqs[6])}
        with httpx.stream(
            "GET", f"{api}/v1/feed", params={"after": 1}, headers=headers, timeout=10
        ) as response:
            messages = _messages(_until(response.iter_lines(), time.monotonic() + 20))
            assert next(messages).event == "ready"
            assert [i["seq"] for i in take(messages, 1)] == seqs[7:8]


BAD_REQUESTS = [
    ({"type": "nope"}, {}, "'nope' is no event type"),
    ({"after": "-1"}, {}, "after"),
    ({"after": "soon"}, {}, "after"),
    ({"heartbeat": "0"}, {}, "heartbeat"),
    ({"pool": ""}, {}, "pool"),
    ({}, {"Last-Event-ID": "x1"}, "Last-Event-ID 'x1' is not a stream sequence"),
]


def test_bad_feed_parameters_get_a_4xx_with_a_message(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """Never a 500, and never a stream that silently matches nothing."""
    with daemon(log_stream, tmp_path) as (_, api):
        for params, headers, message in BAD_REQUESTS:
            response = httpx.get(f"{api}/v1/feed", params=params, headers=headers, timeout=10)
            assert 400 <= response.status_code < 500, (params, headers, response.status_code)
            assert message in response.text, (params, headers, response.text)


@pytest.mark.slow
def test_a_subscriber_that_never_reads_does_not_stall_the_daemon(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """The checkpoint keeps advancing while one client reads nothing; that client is told it
    lagged once it reads again."""
    # More than the subscriber's buffer (10,000 events) plus what the kernel holds for it: the
    # server's send buffer grows up to 4 MiB (net.ipv4.tcp_wmem), ~27k events of ~150 bytes.
    history = fleet_history(60_000, seed=7)
    with (
        daemon(log_stream, tmp_path) as (_, api),
        closing(_silent_subscriber(api)) as stuck,  # closed even when the test fails
    ):
        # Subscribed before anything is published: a feed joined late, after the last batch,
        # would have nothing to fall behind on.
        assert b"event: ready" in _read_until(stuck, b"event: ready", time.monotonic() + 20)
        with SyncPublisher(log_stream) as pub:
            for event in history:
                pub.publish(event)
        health = httpx.get(
            f"{api}/v1/checkpoint", params={"wait_for": len(history), "timeout": 60}, timeout=70
        ).json()
        assert health["checkpoint"] == len(history)
        assert b"event: lagged" in _read_until(stuck, b"event: lagged", time.monotonic() + 60)


def _silent_subscriber(api: str) -> socket.socket:
    """A raw connection with a tiny receive window that asks for the feed and then waits."""
    host, port = api.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /v1/feed HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, marker: bytes, deadline: float) -> bytes:
    sock.settimeout(5)
    tail = b""
    while marker not in tail:
        assert time.monotonic() < deadline, f"no {marker!r}"
        chunk = sock.recv(1 << 16)
        assert chunk, "the daemon closed the stream without a lagged notice"
        tail = tail[-64:] + chunk
    return tail


# --- workledger tail -----------------------------------------------------------------------------


class Lines:
    """A pipe read by a thread, so a test waits for a line with a deadline, never forever."""

    def __init__(self, pipe: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._pipe = pipe
        self._reader = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Once the process has exited: the pipe is at its end, so the reader stops."""
        self._reader.join(timeout=10)
        self._pipe.close()

    def _pump(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 20) -> str:
        return self._lines.get(timeout=timeout)

    def rest(self) -> list[str]:
        """Whatever has arrived and not been read."""
        found = []
        while not self._lines.empty():
            found.append(self._lines.get())
        return found

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(deadline - time.monotonic(), 0.01))
            if text in line:
                return line


@contextmanager
def tail(*args: str) -> Iterator[tuple[subprocess.Popen[str], Lines, Lines]]:
    """`workledger tail` with its stdout and stderr read line by line, started as a script's
    background job starts it: with SIGINT ignored, which Ctrl-C (SIGINT) must stop anyway."""
    proc = subprocess.Popen(
        [WORKLEDGER, "tail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    )
    out, err = Lines(proc.stdout), Lines(proc.stderr)  # type: ignore[arg-type]
    try:
        yield proc, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        out.close()
        err.close()


def test_tail_prints_a_readable_line_per_event_or_json_with_the_same_filters(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """--json prints the feed's items; without it, time, type, entity and key fields."""
    with daemon(log_stream, tmp_path) as (_, api):
        with tail("--api", api, "--json", "--type", "task.", "--pool", "gpu") as (_, out, err):
            err.wait_for("following")
            seqs = publish(log_stream, story())
            items = [json.loads(out.next()) for _ in range(2)]
            assert [(i["seq"], i["type"]) for i in items] == [
                (seqs[4], "task.submitted"),
                (seqs[5], "task.claimed"),
            ]
        with tail("--api", api, "--task", "t1", "--after", "0") as (_, out, _err):
            lines = [out.next() for _ in range(3)]
    assert "task.claimed" in lines[1]
    assert "task t1" in lines[1]
    assert "worker=w1" in lines[1]
    assert "(now COMPLETED)" in lines[1]
    assert lines[2].endswith("COMPLETED")


@pytest.mark.slow
def test_tail_reconnects_when_the_daemon_restarts_and_stops_cleanly_on_ctrl_c(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """Nothing twice, nothing lost across a restart; Ctrl-C exits 0 without a traceback."""
    port = free_port()
    first, second = story()[:4], story()[4:]
    with tail("--api", f"http://127.0.0.1:{port}", "--json") as (tailing, out, err):
        with daemon(log_stream, tmp_path, port) as (proc, _):
            err.wait_for("following")
            before = publish(log_stream, first)
            assert [json.loads(out.next())["seq"] for _ in first] == before
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        err.wait_for("reconnecting")
        with daemon(log_stream, tmp_path, port):
            err.wait_for("following")
            after = publish(log_stream, second)
            assert [json.loads(out.next())["seq"] for _ in second] == after
        tailing.send_signal(signal.SIGINT)
        assert tailing.wait(timeout=10) == 0
    assert not any("Traceback" in line for line in err.rest())
