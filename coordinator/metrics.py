"""The coordinator's Prometheus metrics, served by its HTTP API at ``/metrics``
(servicekit.service_metrics adds the HTTP request metrics there).

- ``ipjms_coordinator_grpc_requests_total{method, code}`` and
  ``ipjms_coordinator_grpc_request_seconds{method}``: every gRPC call (a server interceptor);
- ``ipjms_coordinator_envelopes_streamed_total``: envelopes handed to Inbox streams;
- ``ipjms_coordinator_queue_envelopes{recipient, state}``: queue rows, read at scrape time
  (shared by every replica on the same database).

Labels are method names, gRPC codes, organisation ids and queue states — never payloads or
pseudonyms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["GrpcMetrics", "QueueDepthCollector"]

log = logging.getLogger("ipjms.coordinator")


class GrpcMetrics(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "ipjms_coordinator_grpc_requests",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "ipjms_coordinator_grpc_request_seconds",
            "gRPC call duration by method (Inbox: stream lifetime)",
            ["method"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
        )
        self.streamed = Counter(
            "ipjms_coordinator_envelopes_streamed",
            "Envelopes handed to recipients' Inbox streams",
            registry=registry,
        )

    def _done(self, method: str, context: Any, started: float, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None
        name = code.name if code is not None else ("UNKNOWN" if failed else "OK")
        self.calls.labels(method, name).inc()
        self.latency.labels(method).observe(time.perf_counter() - started)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method).rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: Any) -> Any:
                started, failed = time.perf_counter(), True
                try:
                    reply = inner(request, context)
                    failed = False
                    return reply
                finally:
                    self._done(method, context, started, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: Any) -> Iterator[Any]:
                started, failed = time.perf_counter(), True
                try:
                    for item in inner_stream(request, context):
                        self.streamed.inc()
                        yield item
                    failed = False
                finally:
                    self._done(method, context, started, failed)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class QueueDepthCollector(Collector):
    """Queue rows per recipient and state, read from the database at each scrape."""

    def __init__(self, depths: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ipjms_coordinator_queue_envelopes",
            "Envelopes in the shared queue by recipient and state",
            labels=["recipient", "state"],
        )
        try:
            for recipient, states in self.depths().items():
                for state, count in states.items():
                    family.add_metric([recipient, state], count)
        except Exception as exc:  # the database is briefly unavailable: nothing this scrape
            log.warning("queue depth scrape failed: %s", type(exc).__name__)
        yield family
