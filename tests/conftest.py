"""Shared fixtures: a real nats-server per test, and a log of its own for each test.

Async tests use anyio's plugin on asyncio (nats-py is asyncio-only)::

    @pytest.mark.anyio
    async def test_something(log_stream, read_stream): ...
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
from hypothesis import settings

from workledger.core import codec
from workledger.core.events import Event
from workledger.core.log import LogConfig, connect, ensure_stream, stream_info
from workledger.core.nats_server import EmbeddedNats

_T = TypeVar("_T")

# Hypothesis' per-example deadline measures the machine's load as much as our code: on 2 shared
# cores it fails healthy tests. Speed is measured in benchmarks/, not here.
settings.register_profile("workledger", deadline=None)
settings.load_profile("workledger")


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
