"""Refuse oversize request bodies before anything reads them (413 OperationOutcome).

Two checks, because a client may lie about or omit ``Content-Length``: the declared length is
checked up front, and the streamed body is counted as the app reads it.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from servicekit.outcome import FHIR_JSON, PayloadTooLarge

__all__ = ["BodySizeLimit"]

ASGIApp = Any


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_big = PayloadTooLarge(f"request body exceeds the limit of {self.max_bytes} bytes")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length > self.max_bytes:
                response = JSONResponse(
                    too_big.outcome(), status_code=too_big.status, media_type=FHIR_JSON
                )
                await response(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route that reads the body; the app's FhirError handler
                    # turns it into a 413 OperationOutcome before anything is stored.
                    raise PayloadTooLarge(
                        f"request body exceeds the limit of {self.max_bytes} bytes"
                    )
            return message

        await self.app(scope, counting_receive, send)
