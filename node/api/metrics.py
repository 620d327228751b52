"""Prometheus metrics of one node app (own registry, so several apps can live in one process).

Labels are bounded and PHI-free: the route *template* (``/fhir/{rtype}/{rid}``), never the path
with ids; login failures by grant type and a fixed reason code.

With several worker processes (``ipjms node serve --workers N``) the parent sets
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` aggregates every worker's values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from servicekit.service_metrics import MetricsMiddleware, ServiceMetrics

__all__ = ["NodeMetrics", "MetricsMiddleware"]


@dataclass
class NodeMetrics(ServiceMetrics):
    """The shared request metrics (``ipjms_node_http_*``), the node's login failures and the
    time of each step of the exchange (send: pseudonym, collect, consent_wait, routing,
    pack_seal, workflow_write, outbox, coordinator, outbox_sent; import: open, parse, routing,
    proof, link, prepare, validate, write, commit, ack), and which worker runs the features'
    background work."""

    service: str = "node"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.login_failures = Counter(
            "ipjms_node_login_failures",
            "Refused token requests by grant type and reason",
            ["grant_type", "reason"],
            registry=self.registry,
        )
        self.exchange_phase = Histogram(
            "ipjms_node_exchange_phase_seconds",
            "Time of each step of sending (direction=out) and importing (direction=in) an "
            "exchange envelope",
            ["direction", "phase"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        # With --workers N: one series per live worker (label pid), 1 in the one that holds the
        # background lock; and each background task summed over the workers (1 = running once).
        self.background_leader = Gauge(
            "ipjms_node_background_leader",
            "1 in the worker process that runs the features' background work, else 0",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.background_tasks = Gauge(
            "ipjms_node_background_tasks",
            "Background tasks running, by feature and task",
            ["feature", "task"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def observe_exchange_phase(self, direction: str, phase: str, seconds: float) -> None:
        self.exchange_phase.labels(direction, phase).observe(seconds)

    def exposition(self) -> CollectorRegistry:
        """The registry to render: this process's, or all workers' in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return merged
        return self.registry
