"""Prometheus metrics of one node app (own registry, so several apps can live in one process).

Labels are bounded and PHI-free: the route *template* (``/fhir/{rtype}/{rid}``), never the path
with ids; login failures by grant type and a fixed reason code.

With several worker processes (``ipjms node serve --workers N``) the parent sets
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` aggregates every worker's values.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["NodeMetrics", "MetricsMiddleware"]


@dataclass
class NodeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "ipjms_node_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ipjms_node_http_request_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.login_failures = Counter(
            "ipjms_node_login_failures",
            "Refused token requests by grant type and reason",
            ["grant_type", "reason"],
            registry=self.registry,
        )

    def exposition(self) -> CollectorRegistry:
        """The registry to render: this process's, or all workers' in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return merged
        return self.registry


class MetricsMiddleware:
    def __init__(self, app: Any, metrics: NodeMetrics) -> None:
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
