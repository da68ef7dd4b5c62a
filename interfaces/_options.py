"""Command-line options shared by every command that talks to NATS (``cli`` and ``rebuild``).

A module of its own so that commands defined outside ``cli`` reuse them without importing the
CLI (which registers those commands: the import would be circular).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from workledger.core.log import LogConfig

__all__ = ["log_config", "log_options"]

_F = TypeVar("_F", bound=Callable[..., Any])


def log_options(func: _F) -> _F:
    """--nats, --stream and --subject-prefix, shared by every command that talks to NATS."""
    options = [
        click.option(
            "--nats",
            "servers",
            multiple=True,
            envvar="WORKLEDGER_NATS",
            help="NATS server URL (repeat for a cluster).",
        ),
        click.option(
            "--stream",
            default="WORKLEDGER",
            envvar="WORKLEDGER_STREAM",
            show_default=True,
            help="JetStream stream name.",
        ),
        click.option(
            "--subject-prefix",
            default="workledger",
            show_default=True,
            envvar="WORKLEDGER_SUBJECT_PREFIX",
            help="First token of every subject.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def log_config(servers: tuple[str, ...], stream: str, subject_prefix: str) -> LogConfig:
    """The LogConfig those options describe (no --nats: the local default server)."""
    defaults = LogConfig()
    return LogConfig(
        servers=servers or defaults.servers, stream=stream, subject_prefix=subject_prefix
    )
