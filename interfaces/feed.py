"""``GET /v1/feed``: the live change feed as Server-Sent Events.

What a client receives, in order:

- ``event: ready`` once subscribed (data: ``{"after": N|null, "last_seq": N}``), with a
  ``retry`` hint; a client that publishes after this sees its events.
- ``event: gap`` (data: ``{"after": A, "until": U}``) when resuming after a sequence the ring
  no longer holds: events in ``(A, U]`` were missed, so re-query the JSON API.
- One message per applied event, data = a :class:`~workledger.projections.feed.FeedItem` as
  JSON; ``id`` = its stream sequence, set on the last event of each sequence only (the events
  of an envelope share one), so resuming never skips part of an envelope.
- ``: keep-alive`` comments every ``heartbeat`` seconds, so proxies keep the stream open
  (and a vanished client is noticed when the write fails).
- ``event: lagged`` (data: ``{"last_seq": N}``) and the end of the stream, when the client fell
  too far behind; reconnecting with ``Last-Event-ID`` (browsers do it themselves) resumes.

Resuming: ``Last-Event-ID`` or ``?after=seq``, the later of the two. The feed is left out of
the OpenAPI document: it never ends, which a schema-driven fuzzer cannot test.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import msgspec
from litestar import Router, get
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from workledger.projections.feed import Feed, FeedFilter, FeedViews, Subscription
from workledger.queries import Queries

__all__ = ["feed_router", "open_feed"]

_log = logging.getLogger(__name__)
_RETRY_MS = 1000
_Id = Annotated[str | None, QueryParameter(min_length=1, max_length=512)]


def open_feed(queries: Queries) -> Feed | None:
    """A feed over the query service's store (the in-memory one), told of every batch its
    projector applies as soon as that store holds it, not after the DuckDB store's write.

    None when the store cannot look one worker up (only the in-memory store can), or no
    projector feeds it.
    """
    store, projector = queries.store, queries.projector
    if projector is None or not callable(getattr(store, "worker", None)):
        return None
    views: FeedViews = store  # type: ignore[assignment]  # checked just above
    feed = Feed(views, clock=queries.clock, multiplier=queries.multiplier)
    projector.live_listeners.append(feed.publish)
    return feed


def feed_router(queries: Queries) -> Router:
    """The ``/v1/feed`` route over a feed opened on ``queries`` (404 when none can be)."""
    feed = open_feed(queries)

    @get("/feed", include_in_schema=False, summary="Live change feed (Server-Sent Events)")
    async def live(
        *,
        pool: _Id = None,
        worker: _Id = None,
        task: _Id = None,
        queue: _Id = None,
        event_type: Annotated[list[str] | None, QueryParameter(name="type", max_items=64)] = None,
        after: Annotated[int | None, QueryParameter(ge=0)] = None,
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
        heartbeat: Annotated[float, QueryParameter(ge=0.1, le=300)] = 15.0,
    ) -> ServerSentEvent:
        if feed is None:
            raise NotFoundException("this daemon has no live feed (its store cannot serve one)")
        try:
            where = FeedFilter(
                pool=pool, worker=worker, task=task, queue=queue, types=tuple(event_type or ())
            )
        except ValueError as exc:
            raise ValidationException(str(exc)) from None
        start = _resume_point(after, last_event_id)
        return ServerSentEvent(_stream(feed, where, start, heartbeat))

    return Router(path="/v1", route_handlers=[live])


def _resume_point(after: int | None, last_event_id: str | None) -> int | None:
    """The later of ``?after`` and ``Last-Event-ID``; None means live events only."""
    points = [after] if after is not None else []
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise ValidationException(
                f"Last-Event-ID {last_event_id!r} is not a stream sequence (a whole number)"
            )
        points.append(int(last_event_id))
    return max(points, default=None)


async def _stream(
    feed: Feed, where: FeedFilter, after: int | None, heartbeat: float
) -> AsyncIterator[ServerSentEventMessage]:
    """Subscribe on first iteration (so a client gone before that leaves nothing behind),
    unsubscribe however the stream ends (a disconnect cancels it)."""
    sub = feed.subscribe(where, after=after)
    try:
        ready = {"after": after, "last_seq": feed.last_seq}
        yield _message("ready", ready, retry=_RETRY_MS)
        if sub.gap is not None:
            yield _message("gap", sub.gap)
        async for message in _items(feed, sub, heartbeat):
            yield message
    finally:
        feed.unsubscribe(sub)


async def _items(
    feed: Feed, sub: Subscription, heartbeat: float
) -> AsyncIterator[ServerSentEventMessage]:
    last = None
    while True:
        events = await sub.next(heartbeat)
        if sub.lagged:
            _log.info("dropped a feed subscriber that fell behind after sequence %s", last)
            yield _message("lagged", {"last_seq": last})
            return
        if not events:
            yield ServerSentEventMessage(comment="keep-alive", data=None)
            continue
        for i, event in enumerate(events):
            data = msgspec.json.encode(feed.item(event)).decode()
            # The events of one envelope share a sequence: only the last one carries the id, so
            # a browser resuming from Last-Event-ID never skips the rest of an envelope.
            whole = i + 1 == len(events) or events[i + 1].seq != event.seq
            yield ServerSentEventMessage(data=data, id=event.seq if whole else None)
        last = events[-1].seq
        await anyio.lowlevel.checkpoint()  # let the fold run between chunks of a backlog


def _message(kind: str, payload: object, *, retry: int | None = None) -> ServerSentEventMessage:
    data = msgspec.json.encode(payload).decode()
    return ServerSentEventMessage(event=kind, data=data, retry=retry)
