"""The daemon's reliability options: the reaper, the event size limit, gaps in the stream.

A module of their own so ``workledger project`` and ``workledger up`` share them, and the CLI
module gains two lines instead of a screenful.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from workledger.core.events import MAX_EVENT_BYTES
from workledger.projections.reaper import ReaperConfig

__all__ = ["projector_settings", "reaper_config", "reliability_options"]

_F = TypeVar("_F", bound=Callable[..., Any])


def reliability_options(func: _F) -> _F:
    """--lost-after, --forget-after, --reap-interval, --max-event-bytes and --allow-gap."""
    options = [
        click.option(
            "--lost-after",
            type=float,
            default=None,
            envvar="WORKLEDGER_LOST_AFTER",
            help="Declare a worker lost (and crash its tasks, freeing their slots) once it "
            "has been OFFLINE this many seconds. Off unless given.",
        ),
        click.option(
            "--forget-after",
            type=float,
            default=None,
            envvar="WORKLEDGER_FORGET_AFTER",
            help="Drop a worker from the live view once it has been gone (offline, lost or "
            "stopped) this many seconds; its history stays. Off unless given.",
        ),
        click.option(
            "--reap-interval",
            type=float,
            default=5.0,
            envvar="WORKLEDGER_REAP_INTERVAL",
            show_default=True,
            help="Seconds between the reaper's passes.",
        ),
        click.option(
            "--max-event-bytes",
            type=int,
            default=MAX_EVENT_BYTES,
            envvar="WORKLEDGER_MAX_EVENT_BYTES",
            show_default=True,
            help="Quarantine bigger messages without decoding them.",
        ),
        click.option(
            "--allow-gap",
            is_flag=True,
            envvar="WORKLEDGER_ALLOW_GAP",
            help="Carry on when messages the read models lack are gone from the stream "
            "(its age or size limit), counting them as `missed`, instead of stopping.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def reaper_config(opts: dict[str, Any]) -> ReaperConfig:
    """The reaper those options describe (it also needs the liveness multiplier)."""
    return ReaperConfig(
        lost_after=opts["lost_after"],
        forget_after=opts["forget_after"],
        interval=opts["reap_interval"],
        multiplier=opts["liveness_multiplier"],
    )


def projector_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The ProjectorConfig fields those options set."""
    return {"max_event_bytes": opts["max_event_bytes"], "allow_gap": opts["allow_gap"]}
