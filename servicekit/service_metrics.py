"""Prometheus metrics for an IPJMS HTTP service (consent registry, coordinator status API):
``install_metrics(app, "consent")`` adds request counts and latency by route *template* (never a
path with ids — labels stay bounded and PHI-free) and serves ``GET /metrics``.

Each app has its own registry (several apps can live in one test process); services add their
own collectors to ``app.state.metrics.registry``. The node extends :class:`ServiceMetrics`
(node/api/metrics.py) and reuses :class:`MetricsMiddleware`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

__all__ = ["ServiceMetrics", "MetricsMiddleware", "install_metrics"]


@dataclass
class ServiceMetrics:
    service: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            f"ipjms_{self.service}_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"ipjms_{self.service}_http_request_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class MetricsMiddleware:
    """Counts each request by method, route template and status, and times it."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)


def install_metrics(app: Any, service: str) -> ServiceMetrics:
    """Count every request of the FastAPI ``app`` and serve ``GET /metrics`` (open, like
    ``/healthz``: it carries no PHI; restrict it at the network level if wanted)."""
    from fastapi import Response

    metrics = ServiceMetrics(service)
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
