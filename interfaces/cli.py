"""The ``workledger`` command line: run the daemon, publish events, ask questions.

Every option also reads an environment variable (shown in ``--help``), so a deployment
configures workledger without flags.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import click
import msgspec

from workledger._options import log_config as _log_config
from workledger._options import log_options as _log_options
from workledger._options import partition_options
from workledger._reliability_options import (
    projector_settings,
    reaper_config,
    reliability_options,
)
from workledger.cli_bridge import bridge_command
from workledger.cli_pools import api_options, api_token, pools_command
from workledger.cli_tail import tail_command
from workledger.cli_utilization import utilization_command
from workledger.client import Client
from workledger.core.codec import decode
from workledger.core.errors import InvalidEventError, WorkledgerError
from workledger.core.events import Event
from workledger.core.log import LogConfig
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Publisher
from workledger.projections._groups import plain_errors
from workledger.projections.daemon import ProjectorConfig
from workledger.projections.partitions import split_pools
from workledger.projections.views import TaskStatus, WorkerStatus
from workledger.rebuild import rebuild_command
from workledger.render import print_json, print_slots, print_task, print_tasks, print_workers
from workledger.service import ServiceConfig, serve

__all__ = ["main"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _api_option(func: _F) -> _F:
    func = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)
    return api_options(func)


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """workledger: which workers are alive, who holds a slot, how busy were we."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- running -------------------------------------------------------------------------------


def _daemon_options(func: _F) -> _F:
    options = [
        click.option(
            "--host",
            default="127.0.0.1",
            envvar="WORKLEDGER_HOST",
            show_default=True,
            help="Address the HTTP API binds.",
        ),
        click.option(
            "--port",
            default=8765,
            envvar="WORKLEDGER_PORT",
            show_default=True,
            help="Port of the HTTP API (0 picks a free one).",
        ),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path),
            default=Path(".workledger"),
            envvar="WORKLEDGER_DATA_DIR",
            show_default=True,
            help="Where snapshots (and the embedded NATS store) live.",
        ),
        click.option(
            "--liveness-multiplier",
            default=3.0,
            envvar="WORKLEDGER_LIVENESS_MULTIPLIER",
            show_default=True,
            help="A worker is ONLINE while last seen within heartbeat_interval x this.",
        ),
        click.option(
            "--snapshot-interval",
            default=5.0,
            envvar="WORKLEDGER_SNAPSHOT_INTERVAL",
            show_default=True,
            help="Seconds between snapshots of the in-memory read model.",
        ),
        click.option(
            "--analyst-interval",
            default=2.0,
            envvar="WORKLEDGER_ANALYST_INTERVAL",
            show_default=True,
            help="Seconds between the analysts' copies of the DuckDB file (0: none).",
        ),
        click.option(
            "--api-token",
            envvar="WORKLEDGER_API_TOKEN",
            help="Require this bearer token on the HTTP API (all but /healthz). "
            "Prefer the environment variable: a flag's value shows in `ps`.",
        ),
        click.option(
            "--replicas",
            default=1,
            type=click.IntRange(1, 5),
            envvar="WORKLEDGER_REPLICAS",
            show_default=True,
            help="Replicas of the stream this daemon creates or updates (3 in a cluster).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return _log_options(reliability_options(partition_options(func)))


def _service_config(log: LogConfig, **opts: Any) -> ServiceConfig:
    log = msgspec.structs.replace(log, replicas=opts["replicas"])
    return ServiceConfig(
        projector=ProjectorConfig(
            log=log,
            pools=split_pools(opts["pools"]),
            filter_subjects=tuple(opts["filter_subjects"]),
            **projector_settings(opts),
        ),
        reaper=reaper_config(opts),
        host=opts["host"],
        port=opts["port"],
        state_dir=opts["data_dir"],
        multiplier=opts["liveness_multiplier"],
        snapshot_interval=opts["snapshot_interval"],
        api_token=opts["api_token"] or None,
        analyst_interval=opts["analyst_interval"],
    )


@main.command()
@_daemon_options
def project(servers: tuple[str, ...], stream: str, subject_prefix: str, **opts: Any) -> None:
    """Run the projection daemon and its HTTP API until SIGTERM or Ctrl-C."""
    config = _service_config(_log_config(servers, stream, subject_prefix), **opts)
    _run(_project, config)


async def _project(config: ServiceConfig) -> None:
    async with plain_errors(), anyio.create_task_group() as tg:
        url = await tg.start(serve, config)
        log = config.projector.log
        click.echo(f"workledger daemon: API {url}, stream {log.stream} on {log.servers[0]}")


@main.command()
@_daemon_options
@click.option(
    "--nats-port",
    default=4222,
    envvar="WORKLEDGER_NATS_PORT",
    show_default=True,
    help="Port of the embedded NATS server (0 picks a free one).",
)
@click.option("--demo/--no-demo", default=False, help="Also run the demo workload.")
@click.option("--demo-workers", default=20, show_default=True, help="Workers in the demo.")
@click.option("--demo-pools", default=3, show_default=True, help="Pools in the demo.")
@click.option("--demo-seed", type=int, help="The same seed tells the same story.")
def up(
    *,
    servers: tuple[str, ...],
    stream: str,
    subject_prefix: str,
    nats_port: int,
    demo: bool,
    demo_workers: int,
    demo_pools: int,
    demo_seed: int | None,
    **opts: Any,
) -> None:
    """Everything on one machine: embedded NATS (unless --nats), the daemon, optionally a demo."""
    data_dir: Path = opts["data_dir"]
    embedded = None if servers else EmbeddedNats(store_dir=data_dir / "nats", port=nats_port)
    if embedded is not None:
        embedded.start()
        servers = (embedded.url,)
    config = _service_config(_log_config(servers, stream, subject_prefix), **opts)
    try:
        _run(_up, config, demo_workers if demo else 0, embedded, demo_pools, demo_seed)
    finally:
        if embedded is not None:
            embedded.stop()


async def _up(
    config: ServiceConfig,
    demo_workers: int,
    embedded: EmbeddedNats | None,
    demo_pools: int = 3,
    demo_seed: int | None = None,
) -> None:
    async with plain_errors(), anyio.create_task_group() as tg:

        async def service(*, task_status: anyio.abc.TaskStatus[str]) -> None:
            await serve(config, task_status=task_status)
            tg.cancel_scope.cancel()  # the service stopped (a signal): stop the demo too

        url = await tg.start(service)
        if demo_workers:
            from workledger.demo import run_demo  # noqa: PLC0415 (only `up --demo` needs it)

            await tg.start(
                lambda task_status: run_demo(
                    config.projector.log,
                    workers=demo_workers,
                    pools=demo_pools,
                    seed=demo_seed,
                    task_status=task_status,
                )
            )
        _print_welcome(config, url, embedded, demo_workers)


def _print_welcome(
    config: ServiceConfig, url: str, embedded: EmbeddedNats | None, demo_workers: int
) -> None:
    nats = config.projector.log.servers[0]
    where = f" (embedded, data in {embedded.store_dir})" if embedded else ""
    lines = [
        "workledger is up.",
        f"  NATS   {nats}{where}, stream {config.projector.log.stream}",
        f"  API    {url}  (OpenAPI: {url}/schema)",
        f"  fleet  {url}/  (the live page)",
    ]
    if config.analyst_file is not None:
        lines.append(f"  data   {config.analyst_file}  (for notebooks: workledger.analysis)")
    if demo_workers:
        lines.append(f"  demo   {demo_workers} workers publishing a simulated fleet")
    lines += [
        "Ask it, in another terminal:",
        f"  .venv/bin/workledger workers --api {url}",
        f"  .venv/bin/workledger slots --api {url}",
        f"  .venv/bin/workledger utilization --by pool --bucket 1m --api {url}",
        f"  .venv/bin/workledger tail --api {url}",
        "Stop with Ctrl-C.",
    ]
    click.echo("\n".join(lines))


def _run(entry: Callable[..., Any], *args: Any) -> None:
    try:
        anyio.run(entry, *args, backend="asyncio")
    except KeyboardInterrupt:
        pass
    except WorkledgerError as exc:
        raise click.ClickException(str(exc)) from None


# --- publishing ----------------------------------------------------------------------------


@main.command()
@_log_options
@click.option("--msgpack", is_flag=True, help="Publish as msgpack instead of JSON.")
def publish(servers: tuple[str, ...], stream: str, subject_prefix: str, msgpack: bool) -> None:
    """Publish JSON Lines events from stdin; bad lines are reported and skipped (exit 1)."""
    events, rejected = _read_events(sys.stdin)
    for number, reason in rejected:
        click.echo(f"line {number}: {reason}", err=True)
    config = _log_config(servers, stream, subject_prefix)
    _run(_publish_all, config, events, "msgpack" if msgpack else "json")
    click.echo(f"published {len(events)} events, rejected {len(rejected)}", err=True)
    if rejected:
        sys.exit(1)


def _read_events(lines: Iterable[str]) -> tuple[list[Event], list[tuple[int, str]]]:
    events: list[Event] = []
    rejected: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(decode(line.strip().encode(), json_only=True))
        except InvalidEventError as exc:
            rejected.append((number, str(exc)))
    return events, rejected


async def _publish_all(config: LogConfig, events: list[Event], encoding: Any) -> None:
    async with Publisher(config, encoding=encoding) as pub:
        for event in events:
            await pub.publish(event)


# --- queries -------------------------------------------------------------------------------


def _query(api: str, ask: Callable[[Client], Any]) -> Any:
    try:
        with Client(api, token=api_token()) as client:
            return ask(client)
    except WorkledgerError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@_api_option
@click.option("--pool", help="Only this pool.")
@click.option("--queue", help="Only workers serving this queue.")
@click.option("--task-key", "task_keys", multiple=True, help="Workers taking ANY of these keys.")
@click.option("--label", "labels", multiple=True, help="key:value; workers with ALL of these.")
@click.option("--status", type=click.Choice([s.value for s in WorkerStatus]), help="Only these.")
@click.option("--limit", default=1000, show_default=True)
def workers(
    *,
    api: str,
    as_json: bool,
    pool: str | None,
    queue: str | None,
    task_keys: tuple[str, ...],
    labels: tuple[str, ...],
    status: str | None,
    limit: int,
) -> None:
    """Workers: status, slots in use and free, what each is running."""
    wanted = dict(label.partition(":")[::2] for label in labels)
    found = _query(
        api,
        lambda c: c.workers(
            pool=pool,
            queue=queue,
            task_keys=task_keys,
            status=WorkerStatus(status) if status else None,
            limit=limit,
            labels=wanted,
        ),
    )
    print_json(found) if as_json else print_workers(found, now=datetime.now(UTC))


@main.command()
@_api_option
@click.option("--pool", help="Only this pool.")
@click.option("--queue", help="Only this queue.")
def slots(api: str, as_json: bool, pool: str | None, queue: str | None) -> None:
    """Who holds slots, since when, on which worker; counts per pool and queue."""
    found = _query(api, lambda c: c.slots(pool=pool, queue=queue))
    print_json(found) if as_json else print_slots(found, now=datetime.now(UTC))


@main.command()
@_api_option
@click.option("--status", type=click.Choice([s.value for s in TaskStatus]), help="Only these.")
@click.option("--pool", help="Only this pool's (a task naming none counts in its worker's).")
@click.option("--queue", help="Only this queue's.")
@click.option("--worker", help="Only those this worker holds or last held.")
@click.option("--limit", default=50, show_default=True)
def tasks(
    *,
    api: str,
    as_json: bool,
    status: str | None,
    pool: str | None,
    queue: str | None,
    worker: str | None,
    limit: int,
) -> None:
    """Tasks, most recently updated first; each filter given must match."""
    wanted = TaskStatus(status) if status else None
    found = _query(
        api, lambda c: c.tasks(status=wanted, pool=pool, queue=queue, worker=worker, limit=limit)
    )
    print_json(found) if as_json else print_tasks(found)


@main.command()
@_api_option
@click.argument("task_id")
def task(api: str, as_json: bool, task_id: str) -> None:
    """One task by id."""
    found = _query(api, lambda c: c.task(task_id))
    if found is None:
        raise click.ClickException(f"no task {task_id!r}")
    print_json(found) if as_json else print_task(found)


@main.command()
@_api_option
@click.option("--limit", default=50, show_default=True)
def quarantine(api: str, as_json: bool, limit: int) -> None:
    """Messages the daemon set aside, with stream sequence and reason."""
    found = _query(api, lambda c: c.quarantined(limit=limit))
    if as_json:
        print_json(found)
        return
    for q in found:
        click.echo(f"#{q.seq} {q.subject}: {q.reason}")


main.add_command(bridge_command, "bridge")
main.add_command(rebuild_command, "rebuild")
main.add_command(utilization_command, "utilization")
main.add_command(pools_command, "pools")
main.add_command(tail_command, "tail")
