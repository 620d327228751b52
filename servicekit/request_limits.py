"""The edge every IPJMS HTTP app puts in front of its routes: :class:`RequestLimits`, an ASGI
middleware applying :mod:`servicekit.input_checks` once, before any route, dependency or body
parser runs. A refused request gets a 4xx ``OperationOutcome`` and reaches nothing else.

- path: no ``.``/``..`` segments;
- query: length, number of parameters, values per parameter and in all, integer parameters
  within their range;
- body: declared and streamed length (413), then — for every body that is not a form — UTF-8,
  nesting depth and control characters. The checked body is handed to the app unchanged.

``install_request_limits(app, limits)`` adds it; the node, the consent registry and the
coordinator's HTTP API each call it (their settings give ``max_body_bytes``).
"""

from __future__ import annotations

from typing import Any

from servicekit.input_checks import (
    InputLimits,
    InputProblem,
    check_json_body,
    check_path,
    check_query,
)
from servicekit.outcome import FHIR_JSON, operation_outcome

__all__ = ["RequestLimits", "install_request_limits", "InputLimits"]

_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


async def _refuse(problem: InputProblem, send: Any) -> None:
    import json

    body = json.dumps(operation_outcome(problem.diagnostics, code=problem.code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": problem.status,
            "headers": [
                (b"content-type", FHIR_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(self, app: Any, limits: InputLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = check_path(scope.get("raw_path", b"").decode("latin-1") or scope["path"])
        problem = problem or check_path(scope["path"])
        problem = problem or check_query(scope.get("query_string", b""), self.limits)
        if problem is not None:
            await _refuse(problem, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if scope.get("method", "GET") in _NO_BODY and declared in (None, b"0") and not chunked:
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        too_big = InputProblem(413, f"request body exceeds the limit of {limit} bytes")
        if declared is not None and not declared.isdigit():
            await _refuse(InputProblem(400, "Content-Length is not a number"), send)
            return
        if declared is not None and int(declared) > limit:
            await _refuse(too_big, send)
            return
        body, more, passthrough = bytearray(), True, None
        while more:
            message = await receive()
            if message["type"] != "http.request":
                passthrough = message  # the client went away; let the app see it
                break
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > limit:
                await _refuse(too_big, send)
                return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        problem = check_json_body(bytes(body), content_type, self.limits)
        if problem is not None:
            await _refuse(problem, send)
            return
        await self.app(scope, _replay(bytes(body), passthrough, receive), send)


def _replay(body: bytes, first: dict[str, Any] | None, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            if first is not None:
                return first
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await receive()
        return message

    return replayed


def install_request_limits(app: Any, limits: InputLimits) -> None:
    """Put :class:`RequestLimits` in front of every route of the FastAPI ``app`` (call it after
    the app's other middleware, so it is the outermost but for metrics added later)."""
    app.add_middleware(RequestLimits, limits=limits)
    app.state.input_limits = limits
