"""``workledger tail``: the live change feed in a terminal, one line per event.

It follows ``GET /v1/feed`` and keeps following: when the daemon restarts or the connection
drops it reconnects, resuming after the last sequence it printed, so nothing is printed twice
and nothing is skipped silently (a ``gap`` the daemon can no longer fill is reported). Notices
go to stderr, so ``--json`` output stays one JSON object per line.

The events of one envelope share a stream sequence; a daemon that gives the SSE ``id`` only
to the last of them has the group sent again after a reconnect in its middle, and the events
already printed from it are skipped (by event id).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, NamedTuple

import click
import httpx
import msgspec

from workledger.cli_pools import api_options, api_token
from workledger.client import auth_headers
from workledger.core.events import event_types

__all__ = ["tail_command"]

_HEARTBEAT = 5.0  # asked of the daemon; four missed ones mean the connection is dead
_MAX_BACKOFF = 5.0
_SETTINGS = ("concurrency_limit", "paused", "priority")
# The status each task event leaves behind; a view that has moved on since says "now ...".
_IMPLIES = {
    "task.submitted": "SUBMITTED",
    "task.claimed": "PENDING",
    "task.started": "RUNNING",
    "task.progress": "RUNNING",
    "task.retrying": "RETRYING",
    "task.completed": "COMPLETED",
    "task.failed": "FAILED",
    "task.cancelled": "CANCELLED",
    "task.crashed": "CRASHED",
}
_STYLE = {
    "task.completed": "green",
    "task.failed": "red",
    "task.crashed": "red",
    "task.retrying": "yellow",
    "task.cancelled": "magenta",
    "worker.stopped": "yellow",
    "worker.lost": "red",
}


class _Message(NamedTuple):
    event: str
    data: str
    id: str | None


class _Refused(Exception):
    """The daemon answered with an error: a bad filter, not an outage (never retried)."""


def _messages(lines: Iterable[str]) -> Iterator[_Message]:
    """Server-Sent Events from a stream of lines (comments and retry hints dropped)."""
    event, seq = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield _Message(event, "\n".join(data), seq)
            event, seq, data = "message", None, []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            seq = value


def _clock(at: str | None) -> str:
    if not at:
        return "--:--:--.---"
    return datetime.fromisoformat(at).astimezone().strftime("%H:%M:%S.%f")[:-3]


def _details(item: dict[str, Any]) -> list[str]:
    """The fields worth a glance for this kind of event."""
    event, view = item["event"], item.get("view") or {}
    out = [f"{key}={item[key]}" for key in ("pool", "queue", "worker") if item.get(key)]
    if item["entity"] == "task":
        out.append(_task_status(item["type"], view.get("status")))
        out += [f"{k}={event[k]}" for k in ("progress", "attempt") if event.get(k) is not None]
        out += [f"{k}={event[k]!r}" for k in ("error", "reason", "message") if event.get(k)]
    elif item["entity"] == "worker" and view:
        out.append(f"{view['status']} {len(view['tasks'])}/{view['worker']['slots']} slots")
        out += [f"reason={event['reason']!r}"] if event.get("reason") else []
    else:
        out += [f"{k}={event[k]}" for k in _SETTINGS if k in event]
    return out


def _task_status(kind: str, status: str | None) -> str:
    """The task's status; marked when it has moved on since this event (a replay)."""
    if status is None:
        return "?"
    return status if _IMPLIES.get(kind, status) == status else f"(now {status})"


def format_line(item: dict[str, Any], *, color: bool = True) -> str:
    """One readable line: time, sequence, type, entity, key fields."""
    kind = item["type"]
    entity = f"{item['entity']} {item.get(item['entity']) or '?'}"
    styled = click.style(f"{kind:<17}", fg=_STYLE.get(kind)) if color else f"{kind:<17}"
    parts = [_clock(item.get("at")), f"#{item['seq']:<7}", styled, entity, *_details(item)]
    return "  ".join(parts)


class _Follower:
    """One ``tail``: where it is in the stream, and whether it has said the daemon is away."""

    def __init__(self, api: str, params: dict[str, Any], after: int | None, as_json: bool):
        self.api, self.params, self.after, self.as_json = api, params, after, as_json
        self.headers = auth_headers(api_token())
        self.connected = True  # until the first failure says otherwise
        self.printed: set[str] = set()  # event ids printed since the last SSE id

    def run(self) -> None:
        """Print the feed until interrupted, reconnecting after the last sequence printed."""
        backoff = 0.5
        while True:
            try:
                self._stream()
                backoff = 0.5
                continue  # the daemon ended the stream (lagged): resume at once
            except httpx.TransportError as exc:
                self._lost(exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _lost(self, exc: Exception) -> None:
        """Say so once per outage, not once per attempt."""
        if self.connected:
            click.echo(f"no daemon at {self.api} ({exc}); reconnecting…", err=True)
            self.connected = False

    def _stream(self) -> None:
        query = self.params | ({"after": self.after} if self.after is not None else {})
        timeout = httpx.Timeout(10.0, read=_HEARTBEAT * 4)
        url = f"{self.api}/v1/feed"
        with httpx.stream(
            "GET", url, params=query, headers=self.headers, timeout=timeout
        ) as response:
            if response.status_code >= 500:  # a proxy in front of a restarting daemon
                raise httpx.NetworkError(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                body = response.read().decode(errors="replace")
                raise _Refused(f"{response.status_code}: {body}")
            for message in _messages(response.iter_lines()):
                self._handle(message)

    def _handle(self, message: _Message) -> None:
        if message.event == "message":
            self._item(message)
        elif message.event == "ready":
            self.connected = True
            _notice(self.api, message)
        else:
            _notice(self.api, message)

    def _item(self, message: _Message) -> None:
        """Print an event once; a message with an ``id`` ends its stream sequence's group."""
        item = msgspec.json.decode(message.data)
        if item["id"] not in self.printed:
            click.echo(message.data if self.as_json else format_line(item))
        if message.id:
            self.after = int(message.id)
            self.printed.clear()
        else:
            self.printed.add(item["id"])


def _notice(api: str, message: _Message) -> None:
    body = msgspec.json.decode(message.data) if message.data else {}
    if message.event == "ready":
        click.echo(f"following {api}/v1/feed (daemon at sequence {body['last_seq']})", err=True)
    elif message.event == "gap":
        click.echo(
            f"missed events {body['after'] + 1}..{body['until']}: the daemon no longer holds them",
            err=True,
        )
    elif message.event == "lagged":
        click.echo("fell behind the daemon; resuming", err=True)


def _types(_ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Reject a type prefix that matches nothing before connecting, with the known types."""
    known = tuple(event_types())
    for prefix in value:
        if not any(t.startswith(prefix) for t in known):
            raise click.BadParameter(f"{prefix!r} matches no event type: {', '.join(known)}")
    return value


@click.command("tail")
@click.option("--pool", help="Only events in this pool.")
@click.option("--worker", help="Only events about this worker (and the tasks it holds).")
@click.option("--task", help="Only events about this task.")
@click.option("--queue", help="Only events in this queue.")
@click.option(
    "--type",
    "types",
    multiple=True,
    callback=_types,
    help="Only event types starting with this, like task. or task.failed (repeatable).",
)
@click.option("--after", type=click.IntRange(min=0), help="First replay events after this seq.")
@click.option("--json", "as_json", is_flag=True, help="Raw feed items, one JSON per line.")
@api_options
def tail_command(
    *,
    pool: str | None,
    worker: str | None,
    task: str | None,
    queue: str | None,
    types: tuple[str, ...],
    after: int | None,
    as_json: bool,
    api: str,
) -> None:
    """Print events as the daemon applies them, until Ctrl-C; reconnects if it restarts."""
    given = {"pool": pool, "worker": worker, "task": task, "queue": queue}
    params: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    params |= {"type": list(types), "heartbeat": _HEARTBEAT}
    # Started in the background of a script, a process inherits SIGINT ignored, and Python then
    # never raises KeyboardInterrupt; the daemon stops on SIGINT however it was started, and so
    # does tail.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _Follower(api.rstrip("/"), params, after, as_json).run()
    except KeyboardInterrupt:
        pass
    except _Refused as exc:
        raise click.ClickException(f"the daemon refused the feed: {exc}") from None
