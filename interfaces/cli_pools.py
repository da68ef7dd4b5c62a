"""``workledger pools``: every pool and queue with READY / NOT_READY / PAUSED, and the
``--api-token`` option every query command shares.

A module of its own: ``cli`` registers the command and imports the option, so this module must
not import ``cli`` back. The token is kept in the click context rather than passed to each
command function, so adding it changed no command's signature.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from workledger.client import DEFAULT_API, TOKEN_ENV, Client
from workledger.core.errors import WorkledgerError
from workledger.readiness import PoolStatus, QueueStatus, Readiness
from workledger.render import print_json

__all__ = ["api_options", "api_token", "api_token_option", "pools_command"]

_F = TypeVar("_F", bound=Callable[..., Any])
_META = "workledger.api_token"
_STYLE = {Readiness.READY: "green", Readiness.NOT_READY: "red", Readiness.PAUSED: "yellow"}


def _remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_META] = value


def api_token_option(func: _F) -> _F:
    """``--api-token`` (or ``WORKLEDGER_API_TOKEN``): the daemon's bearer token, if it has one."""
    return click.option(
        "--api-token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        expose_value=False,
        callback=_remember,
        help="Bearer token of a daemon started with one. Prefer the environment variable.",
    )(func)


def api_options(func: _F) -> _F:
    """``--api`` and ``--api-token``: which daemon to ask, and its bearer token if it has one.
    A command reads the token with :func:`api_token`."""
    func = api_token_option(func)
    return click.option(
        "--api",
        default=DEFAULT_API,
        envvar="WORKLEDGER_API",
        show_default=True,
        help="Base URL of a running daemon.",
    )(func)


def api_token() -> str | None:
    """The running command's ``--api-token``, if given."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_META) if ctx is not None else None


@click.command("pools")
@click.option("--pool", help="Only this pool (and its queues).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@api_options
def pools_command(*, pool: str | None, as_json: bool, api: str) -> None:
    """Pools and queues: READY (a worker ONLINE), NOT_READY or PAUSED; workers and slots."""
    try:
        with Client(api, token=api_token()) as client:
            pools = [p for p in client.pools() if pool is None or p.pool == pool]
            queues = client.queues(pool=pool)
    except WorkledgerError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        print_json({"pools": pools, "queues": queues})
        return
    _print(pools, queues)


def _print(pools: Sequence[PoolStatus], queues: Sequence[QueueStatus]) -> None:
    table = Table("POOL", "QUEUE", "STATUS", "ONLINE", "HELD", "LIMIT", "PRIORITY")
    for p in pools:
        table.add_row(
            p.pool,
            "(pool)",
            _status(p.status),
            f"{p.workers_online}/{p.workers}",
            f"{p.slots_held}/{p.slots_online}",
            _or_dash(p.concurrency_limit),
            "-",
        )
        for q in (q for q in queues if q.pool == p.pool):
            table.add_row(
                "",
                q.queue,
                _status(q.status),
                str(q.workers_online),
                str(q.slots_held),
                _or_dash(q.concurrency_limit),
                _or_dash(q.priority),
            )
    console = Console(width=None if sys.stdout.isatty() else 200)  # wide when piped
    console.print(table)
    console.print(f"{len(pools)} pools, {len(queues)} queues")


def _status(status: Readiness) -> str:
    return f"[{_STYLE[status]}]{status}[/{_STYLE[status]}]"


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
