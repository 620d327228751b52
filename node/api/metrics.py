"""Prometheus metrics of one node app (own registry, so several apps can live in one process).

Labels are bounded and PHI-free: the route *template* (``/fhir/{rtype}/{rid}``), never the path
with ids; login failures by grant type and a fixed reason code.

With several worker processes (``ipjms node serve --workers N``) the parent sets
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` aggregates every worker's values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from trust.service_metrics import MetricsMiddleware, ServiceMetrics

__all__ = ["NodeMetrics", "MetricsMiddleware"]


@dataclass
class NodeMetrics(ServiceMetrics):
    """The shared request metrics (``ipjms_node_http_*``) plus the node's login failures."""

    service: str = "node"

    def __post_init__(self) -> None:
        super().__post_init__()
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
