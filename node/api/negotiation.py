"""Content negotiation of the FHIR API, at the edge, for every ``/fhir`` request: nothing a client
asks about the format is ignored.

- ``_format``: ``json``, ``application/json``, ``application/fhir+json`` (and the R3 spelling
  ``application/json+fhir``) are served; ``xml``/``application/fhir+xml``/``text/xml`` and
  anything else → ``406`` with an OperationOutcome (this server speaks JSON only, and says so in
  its CapabilityStatement ``format``);
- ``Accept``: a header that admits no JSON type (nor ``*/*``, ``application/*``) → ``406``;
- ``_pretty=true|false``: ``true`` indents the JSON answer; any other value → ``400``;
- ``/fhir/`` (the base URL with a trailing slash) is ``/fhir``: a Bundle POSTed there is a
  transaction, not a redirect.

The routes see ``_format`` and ``_pretty`` as handled control parameters (:data:`CONTROL_PARAMS`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import parse_qsl

from servicekit.outcome import FHIR_JSON, operation_outcome

__all__ = ["FhirNegotiation", "CONTROL_PARAMS", "JSON_FORMATS", "accepts_json"]

CONTROL_PARAMS = frozenset({"_format", "_pretty"})
JSON_FORMATS = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir"}
)
# NDJSON: the Bulk Data output files
_JSON_RANGES = JSON_FORMATS | {
    "*/*",
    "application/*",
    "application/fhir+ndjson",
    "application/ndjson",
}


def accepts_json(accept: str) -> bool:
    """Does an Accept header admit a JSON answer (a JSON type or a wildcard, q > 0)?"""
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media.lower() in _JSON_RANGES and q > 0:
            return True
    return False


async def _refuse(send: Any, status: int, diagnostics: str, code: str) -> None:
    body = json.dumps(operation_outcome(diagnostics, code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", FHIR_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class FhirNegotiation:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/fhir" or path.startswith("/fhir/")):
            await self.app(scope, receive, send)
            return
        if path == "/fhir/":  # the base URL with a trailing slash (clients POST Bundles there)
            scope = {**scope, "path": "/fhir", "raw_path": b"/fhir"}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        formats = [v for k, v in query if k == "_format"]
        for fmt in formats:
            if fmt.strip().lower().split(";")[0] not in JSON_FORMATS:
                await _refuse(
                    send,
                    406,
                    f"_format={fmt!r} is not supported: this server answers application/fhir+json "
                    "only (XML is not implemented)",
                    "not-supported",
                )
                return
        headers = dict(scope.get("headers") or [])
        accept = headers.get(b"accept", b"").decode("latin-1").strip()
        if accept and not formats and not accepts_json(accept):
            await _refuse(
                send,
                406,
                f"Accept {accept!r} admits no format this server produces; it answers "
                "application/fhir+json only (XML is not implemented)",
                "not-supported",
            )
            return
        pretty = [v for k, v in query if k == "_pretty"]
        if any(v not in ("true", "false") for v in pretty):
            await _refuse(send, 400, "_pretty must be true or false", "invalid")
            return
        if pretty and pretty[-1] == "true":
            await self.app(scope, receive, _pretty_sender(send))
            return
        await self.app(scope, receive, send)


def _pretty_sender(send: Any) -> Any:
    """Buffer a JSON answer and send it indented (other answers pass unchanged)."""
    start: dict[str, Any] | None = None
    chunks: list[bytes] = []

    async def sender(message: dict[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        ctype = dict(start.get("headers", [])).get(b"content-type", b"")
        if b"json" in ctype and body:
            with contextlib.suppress(ValueError):
                body = json.dumps(json.loads(body), indent=2, ensure_ascii=False).encode()
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return sender
