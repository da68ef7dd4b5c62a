"""``workledger bridge``: relay an existing tracker's events into the log.

A module of its own: ``cli`` registers it, so it must not import ``cli`` back. The tracker's
library is imported only when its bridge runs (``pip install 'workledger[bridges]'``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import click

from workledger._options import log_config, log_options
from workledger.bridges.celery import CeleryBridge, CeleryTranslator
from workledger.core.errors import WorkledgerError
from workledger.core.publisher import SyncPublisher

__all__ = ["bridge_command"]


@click.group("bridge")
def bridge_command() -> None:
    """Relay an existing tracker's events into workledger."""


@bridge_command.command("celery")
@log_options
@click.option(
    "--app",
    "app_path",
    required=True,
    envvar="WORKLEDGER_CELERY_APP",
    help="The Celery app, as for `celery -A` (module or module:attribute).",
)
@click.option(
    "--pool",
    default="celery",
    envvar="WORKLEDGER_CELERY_POOL",
    show_default=True,
    help="The workledger pool the app's workers and tasks belong to.",
)
@click.option(
    "--slots",
    default=1,
    type=click.IntRange(0),
    envvar="WORKLEDGER_CELERY_SLOTS",
    show_default=True,
    help="Slots per worker (the workers' --concurrency; Celery's events do not say it).",
)
def celery_command(
    *,
    servers: tuple[str, ...],
    stream: str,
    subject_prefix: str,
    app_path: str,
    pool: str,
    slots: int,
) -> None:
    """Publish a Celery app's worker and task events (workers need -E) until SIGTERM."""
    app = _load_celery_app(app_path)
    translator = CeleryTranslator(
        pool=pool, slots=slots, default_queue=str(app.conf.task_default_queue or "celery")
    )
    try:
        with SyncPublisher(log_config(servers, stream, subject_prefix)) as publisher:
            bridge = CeleryBridge(app, publisher, translator)
            _stop_on_signal(bridge)
            bridge.run(
                ready=lambda: click.echo(f"relaying Celery events of {app.main} to {stream}")
            )
    except WorkledgerError as exc:
        raise click.ClickException(str(exc)) from None


def _load_celery_app(path: str) -> Any:
    """The app ``celery -A path`` would run (celery ships no types: it is read duck-typed)."""
    try:
        from celery.app.utils import find_app  # noqa: PLC0415 (the bridges extra is optional)
    except ImportError:
        raise click.ClickException(
            "the Celery bridge needs celery: pip install 'workledger[bridges]'"
        ) from None
    try:
        return find_app(path)
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f"cannot load Celery app {path!r}: {exc}") from None


def _stop_on_signal(bridge: CeleryBridge) -> None:
    """SIGTERM and SIGINT end the receive loop; leaving the publisher's block flushes."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(_signum: int, _frame: FrameType | None) -> None:
        bridge.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
