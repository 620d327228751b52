"""Domain errors of the coordinator, each naming the gRPC status it maps to (mapped once, in
``coordinator.grpc_service``)."""

from __future__ import annotations

__all__ = ["ExchangeError"]


class ExchangeError(Exception):
    """A request the coordinator refuses. ``code`` is a ``grpc.StatusCode`` name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
