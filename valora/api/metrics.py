"""The API's request metrics, built on an injected registry (no organization labels, by design)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

UNMATCHED = "unmatched"


class ApiMetrics:
    """`valora_api_requests_total{route,method,status}` and `valora_api_request_duration_seconds{route,method}`.

    `route` is the route template (`/v1/invoices/{invoice}`), never the raw path, so the label
    set stays small and holds no ids; requests that match no route count as "unmatched".
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "valora_api_requests", "HTTP requests served", ["route", "method", "status"], registry=registry
        )
        self.duration = Histogram(
            "valora_api_request_duration_seconds",
            "Time to serve an HTTP request",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )


class MetricsMiddleware:
    """Pure ASGI middleware: times each HTTP request and counts it by route template and status."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status[0])).inc()
            self.metrics.duration.labels(template, method).observe(time.perf_counter() - started)
