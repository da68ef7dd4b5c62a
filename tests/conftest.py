"""Shared fixtures: a real nats-server per test, and a log of its own for each test.

Async tests use anyio's plugin on asyncio (nats-py is asyncio-only)::

    @pytest.mark.anyio
    async def test_something(log_stream, read_stream): ...
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
from hypothesis import settings

from workledger.core import codec
from workledger.core import nats_server as embedded_nats
from workledger.core.events import Event
from workledger.core.log import LogConfig, connect, ensure_stream, stream_info
from workledger.core.nats_server import EmbeddedNats

_T = TypeVar("_T")

# Hypothesis' per-example deadline measures the machine's load as much as our code: on 2 shared
# cores it fails healthy tests. Speed is measured in benchmarks/, not here.
settings.register_profile("workledger", deadline=None)
settings.load_profile("workledger")


# --- ports ----------------------------------------------------------------------------------
# A test picks a port first and starts a server on it later (EmbeddedNats, a cluster's routes, a
# daemon restarted on its old port). A port the kernel hands out (bind to port 0) can be taken
# by anyone in between: another bind to port 0 (other servers, xdist's other worker) or the
# local end of an outgoing connection. Once a cluster node failed with "bind: address already in
# use" on its route port. So tests take ports below the kernel's ephemeral range, which the
# kernel never hands out, each xdist worker from its own slice, never the same one twice.

_FIRST_PORT = 10_000


def _ports_of_this_worker() -> range:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        ephemeral = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32_768  # Linux's default; macOS starts at 49152
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    size = (ephemeral - _FIRST_PORT) // workers
    return range(_FIRST_PORT + worker * size, _FIRST_PORT + (worker + 1) * size)


_port_lock = threading.Lock()


@functools.cache
def _port_cycle() -> tuple[range, Iterator[int]]:
    ports = _ports_of_this_worker()
    return ports, itertools.cycle(ports)


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on, that no other test of this run is given."""
    ports, cycle = _port_cycle()
    if len(ports) < 100:  # an unusual kernel setting: let the kernel choose
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    with _port_lock:
        for _ in range(len(ports)):
            port = next(cycle)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue  # in use, or still in TIME_WAIT
            return port
    raise RuntimeError(f"no free port in {ports}")


@pytest.fixture(autouse=True, scope="session")
def _servers_take_ports_from_free_port() -> Iterator[None]:
    """EmbeddedNats and EmbeddedCluster pick their ports (client, route, monitor) here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded_nats, "_free_port", free_port)
        yield


class StoredMessage(NamedTuple):
    """One message as the stream holds it."""

    seq: int
    subject: str
    msg_id: str | None
    event: Event


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Libraries under test may reconfigure logging (a Celery worker sets the root logger to
    ERROR); put it back so one test cannot silence the logs another asserts on."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture
def anyio_backend() -> str:
    """nats-py runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A JetStream nats-server on a free 127.0.0.1 port with a store in ``tmp_path``."""
    with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """The test server's client URL."""
    return nats_server.url


@pytest.fixture
def log_config(nats_url: str) -> LogConfig:
    """A LogConfig on the test server with a stream name and subject prefix unique to the test."""
    suffix = uuid.uuid4().hex[:12]
    return LogConfig(
        servers=(nats_url,), stream=f"WL_{suffix}", subject_prefix=f"wl{suffix}", reconnect_wait=0.1
    )


@pytest.fixture
def log_stream(log_config: LogConfig) -> LogConfig:
    """``log_config``, with its stream created (usable from sync and async tests)."""
    run_in_thread(_create_stream, log_config)
    return log_config


@pytest.fixture
def read_stream() -> Callable[[LogConfig], Awaitable[list[StoredMessage]]]:
    """An async function returning every message in a config's stream, in sequence order."""
    return read_all


def run_in_thread(func: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
    """Run a coroutine function on a fresh event loop in its own thread, from sync code.

    A thread keeps it clear of whatever loop anyio's runner has set in the test's thread.
    """
    result: list[_T] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(func(*args))))
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError(f"{func.__name__} failed in its thread; see the log above")
    return result[0]


async def _create_stream(config: LogConfig) -> None:
    client = await connect(config)
    try:
        await ensure_stream(client.jetstream(), config)
    finally:
        await client.close()


async def read_raw(config: LogConfig) -> list[Any]:
    """Every message of the stream as nats-py delivers it to a daemon (ordered consumer)."""
    client = await connect(config)
    try:
        js = client.jetstream()
        total = (await stream_info(js, config)).state.messages
        sub = await js.subscribe(config.subjects, ordered_consumer=True, stream=config.stream)
        messages = [await sub.next_msg(timeout=5) for _ in range(total)]
        await sub.unsubscribe()
        return messages
    finally:
        await client.close()


async def read_all(config: LogConfig) -> list[StoredMessage]:
    """Read the whole stream, one event per message."""
    return [_stored(msg) for msg in await read_raw(config)]


def _stored(msg: Any) -> StoredMessage:
    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
    return StoredMessage(msg.metadata.sequence.stream, msg.subject, msg_id, codec.decode(msg.data))
