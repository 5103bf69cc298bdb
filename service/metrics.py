"""Prometheus metrics (`prometheus-client`), one registry per app so that several apps in
one process (tests, several workers' children) never share counters.

`RequestMetrics` is a plain ASGI middleware (no BaseHTTPMiddleware: it would wrap
`receive` and hide client disconnects from the routes) that counts requests by route
template and status, and times them.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "mae_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "mae_request_seconds", "HTTP request latency", ["route"], buckets=_SECONDS, registry=r
        )
        self.queue_images = Gauge(
            "mae_queue_images", "images waiting for a forward", ["model"], registry=r
        )
        self.queue_wait_seconds = Histogram(
            "mae_queue_wait_seconds",
            "time from queueing to the start of the forward",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_images = Histogram(
            "mae_batch_images", "images per forward", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "mae_batch_requests",
            "requests merged into one forward",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "mae_forward_seconds",
            "time of one forward",
            ["model", "kind"],
            buckets=_SECONDS,
            registry=r,
        )
        self.images = Counter(
            "mae_images", "images through the model", ["model", "kind"], registry=r
        )
        self.images_per_second = Gauge(
            "mae_images_per_second",
            "images per second at the last embedding forward's pace, times the forwards "
            "that run at once (MAE_FORWARD_WORKERS)",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "mae_rejected",
            "requests refused or dropped by the batcher",
            ["model", "reason"],
            registry=r,
        )
        self.oom_splits = Counter(
            "mae_oom_splits",
            "batches split after running out of device memory",
            ["model"],
            registry=r,
        )
        self.ready = Gauge(
            "mae_ready", "1 when /ready answers 200: every model loaded and warm", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: `mae_requests_total{route, status}` and `mae_request_seconds`."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, str(status["code"])).inc()
            self.metrics.request_seconds.labels(label).observe(time.perf_counter() - t0)
