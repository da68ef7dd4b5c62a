"""``GET /metrics``: the daemon's state in Prometheus text format, via ``prometheus_client``.

The projector already counts what it does (:class:`~workledger.projections.daemon.DaemonMetrics`);
a custom collector reads those counters at scrape time rather than mirroring them into
prometheus_client objects on the hot path, so folding pays nothing for being observed. Each app
gets its own registry, so two apps in one process (tests) never share series.

Series (all prefixed ``workledger_``): ``events_applied_total``, ``events_quarantined_total``,
``batches_total``, ``fold_seconds`` (a summary: ``_count`` batches, ``_sum`` seconds; rate of
sum over rate of count is the mean batch latency), ``fold_seconds_max``, ``consumer_lag``
(messages the stream holds past the last batch), ``nats_connected``, ``checkpoint`` (covered
by every store) and ``store_checkpoint{store=...}``, ``store_applied_total{store=...}``, and
the API's own ``http_requests_total`` and ``http_request_seconds`` by method, route and status.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from litestar import Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from workledger.projections.daemon import DaemonMetrics
from workledger.queries import Queries, store_name

__all__ = ["DaemonCollector", "HttpMetrics", "metrics_route"]

# The classic text format every Prometheus scrapes (``generate_latest`` writes it with
# underscore escaping); Litestar adds the charset.
_MEDIA_TYPE = "text/plain; version=0.0.4"


class DaemonCollector(Collector):
    """Reads the projector's counters and every store's checkpoint at each scrape."""

    def __init__(self, queries: Queries) -> None:
        self._queries = queries

    def collect(self) -> Iterable[Any]:
        """One family per series; a store-only app (no projector) reports zeros and its store."""
        projector = self._queries.projector
        m = projector.metrics if projector is not None else DaemonMetrics()
        stores = projector.stores if projector is not None else [self._queries.store]
        yield _counter("events_applied", "Events folded into the stores.", m.applied)
        yield _counter("events_quarantined", "Messages set aside as invalid.", m.quarantined)
        yield _counter(
            "events_skipped", "Task events without a pool of another partition's tasks.", m.skipped
        )
        yield _counter("batches", "Batches applied.", m.batches)
        yield SummaryMetricFamily(
            "workledger_fold_seconds",
            "Seconds to apply one batch to every store.",
            count_value=m.batches,
            sum_value=m.fold_seconds_total,
        )
        yield _gauge("fold_seconds_max", "Slowest batch so far, seconds.", m.fold_seconds_max)
        yield _gauge("consumer_lag", "Messages in the stream past the last batch.", m.lag)
        connected = projector is not None and projector.connected
        yield _gauge("nats_connected", "1 while connected to NATS.", int(connected))
        checkpoint = min(s.stats().checkpoint for s in stores)
        yield _gauge("checkpoint", "Last stream sequence every store covers.", checkpoint)
        yield from _per_store(stores)


def _per_store(stores: Iterable[Any]) -> Iterable[Any]:
    checkpoints = GaugeMetricFamily(
        "workledger_store_checkpoint", "Last stream sequence a store covers.", labels=["store"]
    )
    applied = CounterMetricFamily(
        "workledger_store_applied", "Events a store has folded.", labels=["store"]
    )
    for store in stores:
        stats = store.stats()
        checkpoints.add_metric([store_name(store)], stats.checkpoint)
        applied.add_metric([store_name(store)], stats.applied)
    yield checkpoints
    yield applied


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"workledger_{name}", documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"workledger_{name}", documentation, value=value)


class HttpMetrics:
    """Request counts and latency per route template (never per raw path: bounded labels).

    ``middleware`` is a Litestar middleware factory; Litestar runs middleware after routing,
    so unknown paths (404 before any route) are not counted.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["method", "route", "status"]
        self._count = Counter(
            "workledger_http_requests", "HTTP requests answered.", labels, registry=registry
        )
        self._seconds = Histogram(
            "workledger_http_request_seconds",
            "Seconds from request to the start of the response.",
            labels,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap a route's ASGI app to time it."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            began, status = time.perf_counter(), [500]

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    self._observe(scope, status[0], time.perf_counter() - began)
                await send(message)

            await app(scope, receive, sending)

        return timed

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = str(scope.get("path_template") or "unrouted")
        labels = (scope.get("method", ""), route, str(status))
        self._count.labels(*labels).inc()
        self._seconds.labels(*labels).observe(seconds)


def metrics_route(registry: CollectorRegistry) -> Any:
    """The ``GET /metrics`` handler for one registry."""

    @get(
        "/metrics",
        summary="Prometheus metrics (text format 0.0.4)",
        media_type=_MEDIA_TYPE,
        sync_to_thread=False,
    )
    def metrics() -> Response[bytes]:
        return Response(_exposition(registry), media_type=_MEDIA_TYPE)

    return metrics
