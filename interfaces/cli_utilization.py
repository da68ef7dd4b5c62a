"""``workledger utilization``: busy over capacity per worker, pool, queue, task key or stage.

A module of its own: ``cli`` registers it, so it must not import ``cli`` back. Times and
buckets are checked here for a quick, clear error, then sent as typed, so relative times like
``-1h`` are resolved by the daemon's clock (the one its answers use).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import click

from workledger.cli_pools import api_options, api_token
from workledger.client import Client
from workledger.core.errors import WorkledgerError
from workledger.projections.utilization import GROUPINGS, Grouping, parse_bucket, parse_time
from workledger.render import print_json, print_utilization

__all__ = ["utilization_command"]


_Callback = Callable[[click.Context, click.Parameter, str | None], str | None]


def _check(parse: Callable[[str], object]) -> _Callback:
    """A click callback that rejects text ``parse`` refuses, with its message."""

    def callback(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param=param) from None
        return value

    return callback


_time = _check(lambda text: parse_time(text, datetime.now(UTC)))


@click.command("utilization")
@click.option(
    "--by", type=click.Choice(GROUPINGS), default="pool", show_default=True, help="Group by."
)
@click.option(
    "--since", callback=_time, help="Start, RFC 3339 or before now like -6h (default: until - 1h)."
)
@click.option("--until", callback=_time, help="End, RFC 3339 or like -10m (default: now).")
@click.option(
    "--bucket",
    callback=_check(parse_bucket),
    help="A row per 1m, 5m, 1h, 1d... (default: one row for the whole window).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@api_options
def utilization_command(
    *,
    by: str,
    since: str | None,
    until: str | None,
    bucket: str | None,
    as_json: bool,
    api: str,
) -> None:
    """Busy time over capacity, throughput, run times and success rate, per group and bucket."""
    try:
        with Client(api, token=api_token()) as client:
            grouping = cast(Grouping, by)  # click.Choice allowed only these
            rows = client.utilization(by=grouping, since=since, until=until, bucket=bucket)
    except WorkledgerError as exc:
        raise click.ClickException(str(exc)) from None
    print_json(rows) if as_json else print_utilization(rows, by=grouping)
